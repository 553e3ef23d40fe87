"""Unimodal towers from the world: Hugging Face BERT into ``TextEncoder``, torchvision ViT into
``ImageEncoder``.

BERT is post-LayerNorm, so the text tower that receives it must be configured with
``text.norm_first=False`` (see :func:`text_config_from_bert`); torchvision's ViT is
pre-LayerNorm like ours and maps one to one (its LayerNorm eps is 1e-6).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from ..config import ImageEncoderConfig, TextEncoderConfig
from ..weights import load_state_dict_file

BERT_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def text_config_from_bert(config: Mapping) -> TextEncoderConfig:
    """The :class:`TextEncoderConfig` that holds a BERT checkpoint with this ``config.json``."""
    act = config.get("hidden_act", "gelu")
    if act != "gelu":
        raise ValueError(f"BERT hidden_act {act!r} is not supported (only exact 'gelu')")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(
            "only absolute position embeddings are supported (position_embedding_type)"
        )
    return TextEncoderConfig(
        vocab_size=config["vocab_size"],
        max_position_embeddings=config.get("max_position_embeddings", 512),
        type_vocab_size=config.get("type_vocab_size", 2),
        pad_token_id=config.get("pad_token_id", 0),
        hidden_size=config["hidden_size"],
        num_layers=config["num_hidden_layers"],
        num_heads=config["num_attention_heads"],
        intermediate_size=config["intermediate_size"],
        layer_norm_eps=config.get("layer_norm_eps", 1e-12),
        norm_first=False,
    )


def convert_bert_state_dict(state: Mapping[str, Tensor], num_layers: int) -> dict[str, Tensor]:
    """Map ``BertModel`` keys (with or without the ``bert.`` prefix) to ``TextEncoder`` keys.

    The pooler and any task head are dropped; separate query, key and value projections
    are concatenated into the fused ``qkv``.
    """
    state = {k.removeprefix("bert."): v for k, v in state.items()}
    out = {
        "embeddings.word.weight": state["embeddings.word_embeddings.weight"],
        "embeddings.position.weight": state["embeddings.position_embeddings.weight"],
        "embeddings.segment.weight": state["embeddings.token_type_embeddings.weight"],
        "embeddings.norm.weight": state["embeddings.LayerNorm.weight"],
        "embeddings.norm.bias": state["embeddings.LayerNorm.bias"],
    }
    for i in range(num_layers):
        src, dst = f"encoder.layer.{i}.", f"encoder.blocks.{i}."
        for kind in ("weight", "bias"):
            out[dst + f"attn.qkv.{kind}"] = torch.cat(
                [state[src + f"attention.self.{n}.{kind}"] for n in ("query", "key", "value")]
            )
            out[dst + f"attn.proj.{kind}"] = state[src + f"attention.output.dense.{kind}"]
            out[dst + f"norm1.{kind}"] = state[src + f"attention.output.LayerNorm.{kind}"]
            out[dst + f"mlp.fc1.{kind}"] = state[src + f"intermediate.dense.{kind}"]
            out[dst + f"mlp.fc2.{kind}"] = state[src + f"output.dense.{kind}"]
            out[dst + f"norm2.{kind}"] = state[src + f"output.LayerNorm.{kind}"]
    return out


def load_bert_into_text_encoder(encoder: torch.nn.Module, folder: str | Path) -> None:
    """Load a Hugging Face BERT folder (``config.json`` + safetensors or ``.bin``) into ``encoder``."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} does not exist: not a Hugging Face BERT folder")
    expected = text_config_from_bert(json.loads(config_path.read_text()))
    have = encoder.config
    for field in (
        "vocab_size",
        "hidden_size",
        "num_layers",
        "num_heads",
        "intermediate_size",
        "norm_first",
    ):
        if getattr(have, field) != getattr(expected, field):
            raise ValueError(
                f"{config_path}: text.{field} is {getattr(expected, field)} in the checkpoint but "
                f"{getattr(have, field)} in the model; build it with text_config_from_bert()"
            )
    weights = next((folder / n for n in BERT_WEIGHT_FILES if (folder / n).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"{folder} holds none of {BERT_WEIGHT_FILES}")
    converted = convert_bert_state_dict(load_state_dict_file(weights), expected.num_layers)
    encoder.load_state_dict(converted, strict=True)


def image_config_from_torchvision_vit(
    state: Mapping[str, Tensor], num_heads: int
) -> ImageEncoderConfig:
    """The :class:`ImageEncoderConfig` of a torchvision ``VisionTransformer`` state dict."""
    conv = state["conv_proj.weight"]
    hidden, channels, patch = conv.shape[0], conv.shape[1], conv.shape[2]
    num_tokens = state["encoder.pos_embedding"].shape[1]
    grid = int(round((num_tokens - 1) ** 0.5))
    layers = len({k.split(".")[2] for k in state if k.startswith("encoder.layers.")})
    return ImageEncoderConfig(
        image_size=grid * patch,
        patch_size=patch,
        num_channels=channels,
        hidden_size=hidden,
        num_layers=layers,
        num_heads=num_heads,
        intermediate_size=state["encoder.layers.encoder_layer_0.mlp.0.weight"].shape[0],
        layer_norm_eps=1e-6,
    )


def convert_torchvision_vit_state_dict(
    state: Mapping[str, Tensor], num_layers: int
) -> dict[str, Tensor]:
    """Map torchvision ``VisionTransformer`` keys to ``ImageEncoder`` keys (the head is dropped)."""
    out = {
        "patch_embed.proj.weight": state["conv_proj.weight"],
        "patch_embed.proj.bias": state["conv_proj.bias"],
        "cls_token": state["class_token"],
        "pos_embed": state["encoder.pos_embedding"],
        "norm.weight": state["encoder.ln.weight"],
        "norm.bias": state["encoder.ln.bias"],
    }
    for i in range(num_layers):
        src, dst = f"encoder.layers.encoder_layer_{i}.", f"encoder.blocks.{i}."
        out[dst + "attn.qkv.weight"] = state[src + "self_attention.in_proj_weight"]
        out[dst + "attn.qkv.bias"] = state[src + "self_attention.in_proj_bias"]
        out[dst + "attn.proj.weight"] = state[src + "self_attention.out_proj.weight"]
        out[dst + "attn.proj.bias"] = state[src + "self_attention.out_proj.bias"]
        for kind in ("weight", "bias"):
            out[dst + f"norm1.{kind}"] = state[src + f"ln_1.{kind}"]
            out[dst + f"norm2.{kind}"] = state[src + f"ln_2.{kind}"]
            out[dst + f"mlp.fc1.{kind}"] = state[src + f"mlp.0.{kind}"]
            out[dst + f"mlp.fc2.{kind}"] = state[src + f"mlp.3.{kind}"]
    return out


def load_torchvision_vit_into_image_encoder(encoder: torch.nn.Module, path: str | Path) -> None:
    """Load a torchvision ViT state dict file into ``encoder``; the mask token keeps its init."""
    state = load_state_dict_file(path)
    cfg = encoder.config
    want = convert_torchvision_vit_state_dict(state, cfg.num_layers)
    own = encoder.state_dict()
    for key, value in want.items():
        if own[key].shape != value.shape:
            raise ValueError(
                f"{path}: {key} has shape {tuple(value.shape)} but the image tower expects "
                f"{tuple(own[key].shape)}; build it with image_config_from_torchvision_vit()"
            )
    missing = set(own) - set(want)
    if missing != {"mask_token"}:
        raise ValueError(f"{path}: unexpected layout, tensors not provided: {sorted(missing)[:5]}")
    encoder.load_state_dict(want, strict=False)
