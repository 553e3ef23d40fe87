"""From downloaded files to a :class:`FlavaConfig` and a state dict, per source format.

``flava-zoo``: our export (safetensors). ``transformers``: through
:func:`flava_zoo.interop.convert_transformers_flava_state_dict`. ``torchmultimodal``: its
``FLAVAModel`` / ``FLAVAForPreTraining`` keys are first renamed to transformers' layout (the
two are the same architecture module for module; see :data:`TORCHMULTIMODAL_RENAMES`), then
converted the same way; its heads likewise (:data:`TORCHMULTIMODAL_HEAD_MODULES`).
:func:`export_weights` and :func:`export_torchmultimodal_flava` write a converted checkpoint,
heads under our names, as a flava-zoo export folder. Every weights file is read by
:func:`flava_zoo.weights.load_state_dict_file`, which refuses pickles that would run code.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config import FlavaConfig
from ..weights import load_state_dict_file
from .registry import ZooEntry


@dataclass
class PretrainedWeights:
    """What :func:`flava_zoo.zoo.load_weights` returns: ready for a strict ``load_state_dict``."""

    entry: ZooEntry
    config: FlavaConfig
    state_dict: dict[str, Tensor]
    heads: dict[str, Tensor] = field(default_factory=dict)
    """Pretraining heads (and codebook) under the source's own names, prefix removed."""
    ignored: list[str] = field(default_factory=list)
    filled: list[str] = field(default_factory=list)


# torchmultimodal (2024.4, torchmultimodal/models/flava/{model,image_encoder,transformer}.py,
# modules/encoders/bert_text_encoder.py) -> transformers' FLAVA.
TORCHMULTIMODAL_TOWERS = {
    "image_encoder": "image_model",
    "text_encoder": "text_model",
    "mm_encoder": "multimodal_model",
}
TORCHMULTIMODAL_LAYER = {
    "attention.query": "attention.attention.query",
    "attention.key": "attention.attention.key",
    "attention.value": "attention.attention.value",
    "attention.output": "attention.output.dense",
    "attention_layernorm": "layernorm_before",
    "feedforward_layernorm": "layernorm_after",
    "feedforward.model.0": "intermediate.dense",
    # The MLP is Sequential(Linear, GELU[, Dropout], Linear): index 2 without dropout, 3 with.
    "feedforward.model.2": "output.dense",
    "feedforward.model.3": "output.dense",
}
TORCHMULTIMODAL_RENAMES = {
    "text_encoder.embeddings.layer_norm": "text_model.embeddings.LayerNorm",
    "loss.contrastive_loss.logit_scale": "logit_scale",
}
"""Keys renamed outright; others keep their name under the tower's new prefix."""
TORCHMULTIMODAL_HEADS = ("loss.", "image_codebook.")
# torchmultimodal's FLAVAPretrainingLoss (modules/losses/flava.py) and codebook -> transformers'
# FlavaForPreTraining heads. Each MaskedPredictionLoss holds a MaskedPredictionHead ``cls``
# (dense, layer_norm, decoder, a bias tied to decoder.bias); ITMLoss a pooler and ``cls``
# (TwoWayHead: seq_relationship); DalleVAEEncoder wraps the DALL-E encoder as ``encoder``.
TORCHMULTIMODAL_HEAD_MODULES = {
    "loss.mlm_loss.cls.": "mlm_head.",
    "loss.mim_loss.cls.": "mim_head.",
    "loss.mmm_loss.mlm.cls.": "mmm_text_head.",
    "loss.mmm_loss.mim.cls.": "mmm_image_head.",
    "loss.itm_loss.pooler.": "itm_head.pooler.",
    "loss.itm_loss.cls.seq_relationship.": "itm_head.seq_relationship.",
    "image_codebook.encoder.": "image_codebook.",
}
TORCHMULTIMODAL_HEAD_PARTS = {
    "dense.": "transform.dense.",
    "layer_norm.": "transform.LayerNorm.",
    "decoder.": "decoder.",
}
TORCHMULTIMODAL_HEAD_EPS = 1e-5
"""The LayerNorm epsilon of torchmultimodal's masked-prediction heads (FLAVAPretrainingLoss's
default, which flava_model_for_pretraining keeps); a state dict does not record it."""
_TMM_LAYER_KEY = re.compile(
    r"^(image_encoder|text_encoder|mm_encoder)\.encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$"
)
_TMM_KEEP = (
    "image_to_mm_projection.",
    "text_to_mm_projection.",
    "image_projection.",
    "text_projection.",
)


def torchmultimodal_to_transformers(
    state_dict: Mapping[str, Tensor],
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Rename torchmultimodal FLAVA keys to transformers' ``FlavaModel`` layout.

    Accepts ``FLAVAModel`` keys and ``FLAVAForPreTraining`` keys (under ``model.``, with
    ``loss.*`` heads, ``loss.contrastive_loss.logit_scale`` and ``image_codebook.*``).
    Returns ``(backbone, heads)``; raises ``ValueError`` listing keys outside that layout.
    """
    backbone: dict[str, Tensor] = {}
    heads: dict[str, Tensor] = {}
    unknown: list[str] = []
    for raw_key, tensor in state_dict.items():
        key = raw_key.removeprefix("model.")
        module, _, param = key.rpartition(".")
        if key in TORCHMULTIMODAL_RENAMES:
            backbone[TORCHMULTIMODAL_RENAMES[key]] = tensor
            continue
        if module in TORCHMULTIMODAL_RENAMES:
            backbone[f"{TORCHMULTIMODAL_RENAMES[module]}.{param}"] = tensor
            continue
        if key.startswith(TORCHMULTIMODAL_HEADS):
            heads[key] = tensor
            continue
        if key.startswith(_TMM_KEEP):
            backbone[key] = tensor
            continue
        match = _TMM_LAYER_KEY.match(key)
        if match:
            tower, index, module, param = match.groups()
            if module not in TORCHMULTIMODAL_LAYER:
                unknown.append(raw_key)
                continue
            new = f"{TORCHMULTIMODAL_TOWERS[tower]}.encoder.layer.{index}.{TORCHMULTIMODAL_LAYER[module]}.{param}"
            if new in backbone:
                raise ValueError(
                    f"two keys map to {new!r} (is the MLP deeper than Linear-GELU-Linear?)"
                )
            backbone[new] = tensor
            continue
        tower, _, rest = key.partition(".")
        if tower in TORCHMULTIMODAL_TOWERS and not rest.startswith("encoder."):
            backbone[f"{TORCHMULTIMODAL_TOWERS[tower]}.{rest}"] = tensor
            continue
        unknown.append(raw_key)
    if unknown:
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise ValueError(
            f"{len(unknown)} key(s) are not part of torchmultimodal's FLAVA layout: {unknown[:5]}{more}"
        )
    return backbone, heads


def torchmultimodal_heads_to_transformers(heads: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename torchmultimodal FLAVA heads (the ``heads`` of
    :func:`torchmultimodal_to_transformers`: ``loss.*`` and ``image_codebook.*``) to
    transformers' ``FlavaForPreTraining`` names, for
    :func:`flava_zoo.interop.convert_transformers_flava_heads`. Raises ``ValueError`` listing
    keys outside that layout."""
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, tensor in heads.items():
        new_key = _torchmultimodal_head_key(key)
        if new_key is None:
            unknown.append(key)
        else:
            out[new_key] = tensor
    if unknown:
        raise ValueError(
            f"{len(unknown)} key(s) are not part of torchmultimodal's FLAVA heads: {unknown[:5]}"
        )
    return out


def _torchmultimodal_head_key(key: str) -> str | None:
    for old, new in TORCHMULTIMODAL_HEAD_MODULES.items():
        if not key.startswith(old):
            continue
        rest = key[len(old) :]
        if new.endswith("_head."):  # inside a masked-prediction head, parts are renamed too
            if rest == "bias":
                return new + rest
            for part, renamed in TORCHMULTIMODAL_HEAD_PARTS.items():
                if rest.startswith(part):
                    return new + renamed + rest[len(part) :]
            return None
        return new + rest
    return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"config file {path} is not readable JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a JSON object")
    return data


def entry_config(entry: ZooEntry, paths: Mapping[str, Path]) -> FlavaConfig:
    """The entry's config: inline ``config``, else its ``config`` file (ours or
    transformers'), else the registered architecture's."""
    from ..models.registry import get_config

    if entry.config is not None:
        return FlavaConfig.from_dict(entry.config)
    if "config" in paths:
        data = _read_json(paths["config"])
        if entry.format == "flava-zoo":
            if "config" not in data:
                raise ValueError(
                    f"{paths['config']} has no 'config' field (not a flava-zoo export)"
                )
            return FlavaConfig.from_dict(data["config"])
        if entry.format == "transformers":
            from ..interop import config_from_transformers

            return config_from_transformers(data)
        raise ValueError(
            f"{entry.name}: a {entry.format} config file is not supported; give 'config' inline"
        )
    return get_config(entry.architecture)


def convert(entry: ZooEntry, paths: Mapping[str, Path], **overrides: Any) -> PretrainedWeights:
    """Read the entry's downloaded files and return our config and state dict.

    ``overrides`` are applied to the config (as by :meth:`FlavaConfig.replace`) after the
    weights are mapped, so they may change only what leaves the weights' shapes alone.
    """
    config = entry_config(entry, paths)
    weights = paths["weights"]
    raw = load_state_dict_file(weights)
    ignored: list[str] = []
    filled: list[str] = []
    heads: dict[str, Tensor] = {}
    if entry.format == "flava-zoo":
        state = dict(raw)
        if "heads" in paths:  # an export's heads.safetensors, published beside its weights
            heads = dict(load_state_dict_file(paths["heads"]))
    else:
        from ..interop import convert_transformers_flava_state_dict

        if entry.format == "torchmultimodal":
            raw, heads = torchmultimodal_to_transformers(raw)
            if "logit_scale" not in raw:  # FLAVAModel files keep it in the loss, not here
                raw["logit_scale"] = torch.tensor(float(config.logit_scale_init))
                filled.append("logit_scale")
        try:
            converted = convert_transformers_flava_state_dict(raw, config)
        except ValueError as err:
            raise ValueError(f"{entry.name}: {weights} does not match its config: {err}") from None
        state, ignored = converted.model, converted.ignored
        heads.update(converted.heads)
        filled += converted.filled
    if overrides:
        config = config.replace(**overrides)
    return PretrainedWeights(entry, config, state, heads, ignored, filled)


def _export(
    directory: str | Path,
    fmt: str,
    origin: str,
    config: FlavaConfig,
    state_dict: Mapping[str, Tensor],
    source_heads: Mapping[str, Tensor],
    ignored: list[str],
    filled: list[str],
    heads: list[str] | None,
    mim_target: str | None,
) -> Path:
    from ..interop.heads import (
        MASKED_HEADS,
        ConvertedHeads,
        convert_transformers_flava_heads,
        resolve_mim_target,
        save_converted,
    )

    if fmt == "flava-zoo":  # already our names and our config
        wanted = set(heads) if heads is not None else None
        converted = ConvertedHeads(
            heads={k: v for k, v in source_heads.items() if wanted is None or k.split(".", 1)[0] in wanted}
        )
    else:
        eps = None
        if fmt == "torchmultimodal":
            source_heads = torchmultimodal_heads_to_transformers(source_heads)
            eps = dict.fromkeys(MASKED_HEADS, TORCHMULTIMODAL_HEAD_EPS)
            config = config.replace(head_layer_norm_eps=TORCHMULTIMODAL_HEAD_EPS)  # carried, not only noted
        config = resolve_mim_target(config, source_heads, heads, mim_target)
        converted = convert_transformers_flava_heads(source_heads, config, heads, eps)
    metadata = {
        "converted_from": {"format": fmt, "source": origin},
        "ignored": list(ignored) + converted.ignored,
        "filled": list(filled),
    }
    return save_converted(directory, config, state_dict, converted, metadata)


def export_weights(
    weights: PretrainedWeights,
    directory: str | Path,
    *,
    heads: list[str] | None = None,
    mim_target: str | None = None,
) -> Path:
    """Write converted zoo weights (:func:`flava_zoo.zoo.load_weights`) as a flava-zoo export.

    The folder holds the backbone, the pretraining heads in ``heads.safetensors`` under our
    names (transformers' and torchmultimodal's mapped as :mod:`flava_zoo.interop.heads`
    describes) and the DALL-E codebook as ``codebook.safetensors``, as a pretraining
    export does; :func:`~flava_zoo.create_model`, ``itm_head_from`` and
    ``FlavaPretrainModule(init_from=...)`` read it and ``flava-zoo zoo publish`` ships it.
    ``heads`` and ``mim_target`` are as for
    :func:`~flava_zoo.interop.convert_transformers_flava_checkpoint`. Returns the folder.
    """
    entry = weights.entry
    return _export(
        directory, entry.format, entry.name, weights.config, weights.state_dict, weights.heads,
        weights.ignored, weights.filled, heads, mim_target,
    )  # fmt: skip


def export_torchmultimodal_flava(
    source: str | Path | Mapping[str, Tensor],
    config: FlavaConfig,
    directory: str | Path,
    *,
    heads: list[str] | None = None,
    mim_target: str | None = None,
) -> Path:
    """Convert a torchmultimodal FLAVA checkpoint (a ``FLAVAForPreTraining`` /
    ``FLAVAModel`` state dict, or a file of one) into a flava-zoo export folder, as
    :func:`export_weights` does; torchmultimodal saves no config, so ``config`` gives ours.
    A ``FLAVAModel`` file has no logit scale: it is filled from the config."""
    from ..interop import convert_transformers_flava_state_dict

    if isinstance(source, Mapping):
        raw, origin = dict(source), "a torchmultimodal state dict"
    else:
        raw, origin = load_state_dict_file(source), str(Path(source).resolve())
    backbone, source_heads = torchmultimodal_to_transformers(raw)
    filled = []
    if "logit_scale" not in backbone:
        backbone["logit_scale"] = torch.tensor(float(config.logit_scale_init))
        filled.append("logit_scale")
    converted = convert_transformers_flava_state_dict(backbone, config)
    return _export(
        directory, "torchmultimodal", origin, config, converted.model, source_heads,
        converted.ignored, filled + converted.filled, heads, mim_target,
    )  # fmt: skip


__all__ = [
    "TORCHMULTIMODAL_HEAD_EPS",
    "PretrainedWeights",
    "convert",
    "entry_config",
    "export_torchmultimodal_flava",
    "export_weights",
    "torchmultimodal_heads_to_transformers",
    "torchmultimodal_to_transformers",
]
