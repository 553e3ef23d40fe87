"""transformers' FLAVA (``FlavaModel``, ``FlavaForPreTraining``) to flava-zoo's :class:`FlavaModel`.

Both are the same architecture: pre-LN ViT and BERT-style towers, a merged fusion encoder
over ``[cls_mm; image states; text states]`` fed with the towers' states before their final
LayerNorm, and projections of the class tokens into one embedding space. The mapping is
therefore exact: rename keys, fuse each layer's separate query/key/value projections into
our one ``qkv`` projection (rows in the order q, k, v), and drop the three tower poolers
(flava-zoo keeps no pooler in the backbone; a head that wants one owns it). Keys of the
pretraining heads and of the DALL-E codebook are returned apart, under transformers' names.

The key mapping needs only torch. Nothing here imports transformers: a transformers config
is read through its ``to_dict()``, a model through its ``state_dict()`` and ``config``.
:func:`convert_transformers_flava_checkpoint` writes a whole checkpoint (backbone, heads
mapped by :mod:`flava_zoo.interop.heads`, codebook) as a flava-zoo export folder.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config import FlavaConfig, FusionEncoderConfig, ImageEncoderConfig, TextEncoderConfig
from ..models.flava import FlavaModel

PREFIX = "flava."
"""``FlavaForPreTraining`` (e.g. facebook/flava-full's ``pytorch_model.bin``) nests the backbone here."""

HEAD_PREFIXES = (
    "mim_head.",
    "mlm_head.",
    "itm_head.",
    "mmm_image_head.",
    "mmm_text_head.",
    "image_codebook.",
)
"""Top-level modules of ``FlavaForPreTraining`` that are not part of the backbone."""

IGNORED = (
    re.compile(r"^(image|text|multimodal)_model\.pooler\.dense\.(weight|bias)$"),
    re.compile(r"^text_model\.embeddings\.(position_ids|token_type_ids)$"),
)
"""Backbone keys with no counterpart: the towers' poolers and constant index buffers."""

# transformers' tower -> our module that holds its transformer stack.
_TOWERS = {
    "image_model": "image_encoder",
    "text_model": "text_encoder",
    "multimodal_model": "fusion_encoder.layers",
}

# Inside one transformer layer: transformers' module -> ours. Query, key and value are fused.
_LAYER = {
    "layernorm_before": "norm1",
    "attention.output.dense": "attn.proj",
    "layernorm_after": "norm2",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}
_QKV = ("query", "key", "value")
_LAYER_KEY = re.compile(
    r"^(image_model|text_model|multimodal_model)\.encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$"
)

# Everything outside the layers: transformers' parameter or module -> ours.
_RENAMES = {
    "logit_scale": "logit_scale",
    "image_projection": "image_projection",
    "text_projection": "text_projection",
    "image_to_mm_projection": "fusion_encoder.image_proj",
    "text_to_mm_projection": "fusion_encoder.text_proj",
    "image_model.embeddings.cls_token": "image_encoder.cls_token",
    "image_model.embeddings.mask_token": "image_encoder.mask_token",
    "image_model.embeddings.position_embeddings": "image_encoder.pos_embed",
    "image_model.embeddings.patch_embeddings.projection": "image_encoder.patch_embed.proj",
    "image_model.layernorm": "image_encoder.norm",
    "text_model.embeddings.word_embeddings": "text_encoder.embeddings.word",
    "text_model.embeddings.position_embeddings": "text_encoder.embeddings.position",
    "text_model.embeddings.token_type_embeddings": "text_encoder.embeddings.segment",
    "text_model.embeddings.LayerNorm": "text_encoder.embeddings.norm",
    "text_model.layernorm": "text_encoder.norm",
    "multimodal_model.cls_token": "fusion_encoder.cls_token",
    "multimodal_model.layernorm": "fusion_encoder.layers.norm",
}

# transformers' FlavaConfig defaults (= FLAVA-full), for the fields a saved config may omit.
_TRANSFORMER_DEFAULTS = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
    "layer_norm_eps": 1e-12,
    "qkv_bias": True,
}
_HF_DEFAULTS: dict[str, dict[str, Any]] = {
    "image_config": {
        **_TRANSFORMER_DEFAULTS,
        "image_size": 224,
        "patch_size": 16,
        "num_channels": 3,
        "vocab_size": 8192,
    },
    "text_config": {
        **_TRANSFORMER_DEFAULTS,
        "vocab_size": 30522,
        "type_vocab_size": 2,
        "max_position_embeddings": 512,
        "pad_token_id": 0,
    },
    "multimodal_config": {**_TRANSFORMER_DEFAULTS, "num_hidden_layers": 6, "use_cls_token": True},
}
_HF_TOP_DEFAULTS = {"projection_dim": 768, "logit_scale_init_value": 2.6592}

# transformers' field -> ours, shared by the three transformer sub-configs.
_TRANSFORMER_FIELDS = {
    "hidden_size": "hidden_size",
    "num_hidden_layers": "num_layers",
    "num_attention_heads": "num_heads",
    "intermediate_size": "intermediate_size",
    "hidden_dropout_prob": "dropout",
    "attention_probs_dropout_prob": "attention_dropout",
    "layer_norm_eps": "layer_norm_eps",
}


@dataclass
class ConvertedState:
    """The result of :func:`convert_transformers_flava_state_dict`.

    ``model``: our :class:`FlavaModel` keys, loadable with ``strict=True``. ``heads``: the
    pretraining-head and codebook tensors (``mlm_head.decoder.weight``,
    ``image_codebook.blocks.input.weight``, ...) under transformers' names, ``flava.`` prefix
    removed; :func:`flava_zoo.interop.convert_transformers_flava_heads` maps them to ours. ``ignored``: the input keys dropped (tower poolers, index buffers). ``filled``:
    our keys absent from the input and set to zeros (only ``image_encoder.mask_token``, for
    transformers image configs with ``mask_token=False``).
    """

    model: dict[str, Tensor]
    heads: dict[str, Tensor] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    filled: list[str] = field(default_factory=list)


def _as_dict(config: Any, what: str) -> dict[str, Any]:
    if isinstance(config, Mapping):
        return dict(config)
    if hasattr(config, "to_dict"):
        return config.to_dict()
    raise TypeError(f"{what} must be a transformers config or a dict, got {type(config).__name__}")


def _square(value: Any, name: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(
                f"{name} {list(value)} is not square; flava-zoo supports square images only"
            )
        value = value[0]
    return int(value)


def _check_supported(name: str, section: Mapping[str, Any]) -> None:
    act = section["hidden_act"]
    if act != "gelu":
        raise ValueError(
            f"{name}.hidden_act {act!r} is not supported: flava-zoo's blocks use exact (erf) GELU, "
            "transformers' 'gelu'"
        )
    if not section["qkv_bias"]:
        raise ValueError(
            f"{name}.qkv_bias False is not supported: flava-zoo's qkv projection has a bias"
        )


def config_from_transformers(hf_config: Any, **overrides: Any) -> FlavaConfig:
    """The :class:`FlavaConfig` equivalent to a transformers ``FlavaConfig`` (object or dict).

    Fields a dict omits take transformers' defaults. ``fusion`` is ``merged``;
    ``codebook_size`` is the image config's ``vocab_size``; a ``pad_token_id`` of ``None``
    becomes 0. ``overrides`` are then applied as by :meth:`FlavaConfig.replace` (e.g.
    ``mim_target="codebook"``). Raises ``ValueError`` naming the field for what flava-zoo
    cannot represent: an activation other than ``gelu``, ``qkv_bias=False``, a multimodal
    encoder without its class token, non-square images or patches.
    """
    data = _as_dict(hf_config, "hf_config")
    sections = {}
    for name, defaults in _HF_DEFAULTS.items():
        given = data.get(name)
        section = {**defaults, **(_as_dict(given, name) if given is not None else {})}
        _check_supported(name, section)
        sections[name] = section
    image, text, mm = (
        sections["image_config"],
        sections["text_config"],
        sections["multimodal_config"],
    )
    if not mm["use_cls_token"]:
        raise ValueError(
            "multimodal_config.use_cls_token False is not supported: the fusion encoder always prepends cls_mm"
        )
    top = {**_HF_TOP_DEFAULTS, **{k: data[k] for k in _HF_TOP_DEFAULTS if k in data}}

    def common(section: Mapping[str, Any]) -> dict[str, Any]:
        return {ours: section[theirs] for theirs, ours in _TRANSFORMER_FIELDS.items()}

    config = FlavaConfig(
        image=ImageEncoderConfig(
            image_size=_square(image["image_size"], "image_config.image_size"),
            patch_size=_square(image["patch_size"], "image_config.patch_size"),
            num_channels=image["num_channels"],
            **common(image),
        ),
        text=TextEncoderConfig(
            vocab_size=text["vocab_size"],
            max_position_embeddings=text["max_position_embeddings"],
            type_vocab_size=text["type_vocab_size"],
            pad_token_id=0 if text["pad_token_id"] is None else text["pad_token_id"],
            **common(text),
        ),
        multimodal=FusionEncoderConfig(**common(mm)),
        fusion="merged",
        projection_dim=top["projection_dim"],
        logit_scale_init=float(top["logit_scale_init_value"]),
        codebook_size=image["vocab_size"],
    )
    return config.replace(**overrides) if overrides else config


def _rename(key: str) -> tuple[str, str | None] | None:
    """Our name for a backbone key (``flava.`` removed), with the q/k/v part it fills, or ``None``."""
    if key in _RENAMES:
        return _RENAMES[key], None
    module, _, param = key.rpartition(".")
    if param in ("weight", "bias") and module in _RENAMES:
        return f"{_RENAMES[module]}.{param}", None
    match = _LAYER_KEY.match(key)
    if match is None:
        return None
    tower, index, module, param = match.groups()
    block = f"{_TOWERS[tower]}.encoder.blocks.{index}"
    if module in _LAYER:
        return f"{block}.{_LAYER[module]}.{param}", None
    prefix, _, part = module.rpartition(".")
    if prefix == "attention.attention" and part in _QKV:
        return f"{block}.attn.qkv.{param}", part
    return None


def _few(keys: list[str], n: int = 5) -> str:
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return f"{keys[:n]}{more}"


def expected_shapes(config: FlavaConfig) -> dict[str, torch.Size]:
    """Names and shapes of our :class:`FlavaModel` state dict for ``config`` (built on the meta device)."""
    with torch.device("meta"):
        model = FlavaModel(config)
    return {k: v.shape for k, v in model.state_dict().items()}


def convert_transformers_flava_state_dict(
    state_dict: Mapping[str, Tensor], config: FlavaConfig
) -> ConvertedState:
    """Map a transformers FLAVA state dict to ours; see :class:`ConvertedState` for the parts.

    Accepts ``FlavaModel`` keys (``text_model.*``, ``image_model.*``, ``multimodal_model.*``,
    the four projections, ``logit_scale``) and the same under ``flava.`` with the pretraining
    heads beside them, as ``FlavaForPreTraining`` saves. Raises ``ValueError`` for keys outside
    that layout, for keys ``config`` has no room for (e.g. a layer past ``num_layers``), for
    missing keys and for shape mismatches. Tensors are not copied unless fused.
    """
    if config.fusion != "merged":
        raise ValueError(
            f"transformers' FLAVA uses merged fusion; config.fusion is {config.fusion!r}"
        )
    model: dict[str, Tensor] = {}
    source: dict[str, str] = {}
    qkv: dict[str, dict[str, Tensor]] = {}
    heads: dict[str, Tensor] = {}
    ignored: list[str] = []
    unknown: list[str] = []
    for raw_key, tensor in state_dict.items():
        key = raw_key.removeprefix(PREFIX)
        if key.startswith(HEAD_PREFIXES):
            heads[key] = tensor
            continue
        if any(pattern.match(key) for pattern in IGNORED):
            ignored.append(raw_key)
            continue
        target = _rename(key)
        if target is None:
            unknown.append(raw_key)
            continue
        name, part = target
        slot = f"{name}[{part}]" if part else name
        if slot in source:
            raise ValueError(f"keys {source[slot]!r} and {raw_key!r} both map to {slot!r}")
        source[slot] = raw_key
        if part:
            qkv.setdefault(name, {})[part] = tensor
        else:
            model[name] = tensor
    if unknown:
        raise ValueError(
            f"{len(unknown)} key(s) are not part of transformers' FLAVA layout: {_few(unknown)}"
        )
    for name, parts in qkv.items():
        missing = [p for p in _QKV if p not in parts]
        if missing:
            raise ValueError(f"{name} needs query, key and value; missing {missing}")
        model[name] = torch.cat([parts[p] for p in _QKV], dim=0)

    expected = expected_shapes(config)
    extra = sorted(set(model) - set(expected))
    if extra:
        raise ValueError(
            f"{len(extra)} converted key(s) have no place in a model with this config "
            f"(too many layers?): {_few(extra)}"
        )
    filled = []
    if "image_encoder.mask_token" not in model:
        model["image_encoder.mask_token"] = torch.zeros(expected["image_encoder.mask_token"])
        filled.append("image_encoder.mask_token")
    missing = sorted(set(expected) - set(model))
    if missing:
        raise ValueError(
            f"{len(missing)} key(s) of our model are missing from the state dict: {_few(missing)}"
        )
    wrong = [
        f"{k}: {tuple(model[k].shape)} vs expected {tuple(s)}"
        for k, s in expected.items()
        if model[k].shape != s
    ]
    if wrong:
        raise ValueError(f"shape mismatch between the state dict and the config: {_few(wrong)}")
    return ConvertedState(model=model, heads=heads, ignored=ignored, filled=filled)


def load_transformers_flava(
    hf_model_or_state_dict: Any, config: FlavaConfig | Any | None = None
) -> FlavaModel:
    """Build our :class:`FlavaModel` from a transformers ``FlavaModel``/``FlavaForPreTraining``
    or its state dict, loading with ``strict=True``; head keys are left out.

    ``config`` is our :class:`FlavaConfig` or a transformers config (object or dict); taken
    from the model when omitted, required for a bare state dict. Weights are copied (the
    source is not shared) in our parameters' dtype (float32). The model is returned in
    training mode, like any freshly built one.
    """
    source = hf_model_or_state_dict
    if isinstance(source, Mapping):
        state_dict = source
        if config is None:
            raise ValueError(
                "a bare state dict needs a config: pass our FlavaConfig or the transformers config"
            )
    else:
        state_dict = source.state_dict()
        if config is None:
            config = source.config
    if not isinstance(config, FlavaConfig):
        config = config_from_transformers(config)
    converted = convert_transformers_flava_state_dict(state_dict, config)
    with torch.device("meta"):
        model = FlavaModel(config)
    dtypes = {k: v.dtype for k, v in model.state_dict().items()}
    weights = {k: v.detach().to(dtype=dtypes[k], copy=True) for k, v in converted.model.items()}
    model.load_state_dict(weights, strict=True, assign=True)
    return model


TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
"""The single-file weights transformers' ``save_pretrained`` writes (safetensors first)."""
TRANSFORMERS_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def read_transformers_checkpoint(folder: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The state dict and config dict of a folder written by transformers' ``save_pretrained``
    (``config.json`` and ``model.safetensors`` or ``pytorch_model.bin``, or their sharded
    form with an index). Pickles are read without running code
    (:func:`flava_zoo.weights.load_state_dict_file`); nothing is downloaded."""
    from ..weights import load_state_dict_file

    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} does not exist: not a transformers checkpoint folder")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_path} is not valid JSON: {err}") from None
    for name in TRANSFORMERS_WEIGHTS:
        if (folder / name).is_file():
            return load_state_dict_file(folder / name), config
    for name in TRANSFORMERS_INDEXES:
        index = folder / name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            state: dict[str, Tensor] = {}
            for shard in shards:
                state.update(load_state_dict_file(folder / shard))
            return state, config
    raise FileNotFoundError(
        f"{folder} holds none of {list(TRANSFORMERS_WEIGHTS + TRANSFORMERS_INDEXES)}"
    )


def convert_transformers_flava_checkpoint(
    source: Any,
    directory: str | Path,
    *,
    heads: list[str] | None = None,
    mim_target: str | None = None,
    **overrides: Any,
) -> Path:
    """Convert a transformers FLAVA checkpoint into a flava-zoo export folder.

    ``source``: a folder written by transformers' ``save_pretrained`` (see
    :func:`read_transformers_checkpoint`), or a ``FlavaForPreTraining`` / ``FlavaModel``.
    The folder gets our backbone (``model.safetensors``), the pretraining heads as
    ``heads.safetensors`` under our names (see :mod:`flava_zoo.interop.heads`), the DALL-E
    codebook as ``codebook.safetensors`` and, when the source folder has a ``vocab.txt``,
    the tokenizer. ``heads`` picks heads (default: all the source has that the config can
    hold). ``mim_target``: default ``codebook`` when MIM / MMM-image heads are converted
    (their output is the image vocabulary), else the config's; ``pixels`` leaves those two
    heads out. ``overrides`` change config fields that leave shapes alone. Raises
    ``ValueError`` for what does not map (a head's shapes, both named). Returns the folder.
    """
    from .heads import convert_transformers_flava_heads, resolve_mim_target, save_converted

    if isinstance(source, (str, os.PathLike)):
        state, hf_config = read_transformers_checkpoint(source)
        origin = str(Path(source).resolve())
    else:
        state, hf_config = source.state_dict(), source.config
        origin = f"a transformers {type(source).__name__} object"
    config = config_from_transformers(hf_config, **overrides)
    converted = convert_transformers_flava_state_dict(state, config)
    config = resolve_mim_target(config, converted.heads, heads, mim_target)
    converted_heads = convert_transformers_flava_heads(converted.heads, config, heads)
    metadata = {
        "converted_from": {"format": "transformers", "source": origin},
        "ignored": converted.ignored + converted_heads.ignored,
        "filled": converted.filled,
    }
    path = save_converted(directory, config, converted.model, converted_heads, metadata)
    if isinstance(source, (str, os.PathLike)) and (Path(source) / "vocab.txt").is_file():
        from ..tokenizer import FlavaTokenizer

        FlavaTokenizer.from_pretrained(source).save(path)
    return path
