"""Pretraining heads of transformers' FLAVA (and, renamed first, torchmultimodal's) to ours.

transformers' ``FlavaForPreTraining`` and flava-zoo's :class:`FlavaForPretraining` have the
same five heads, module for module:

====================================  =====================================
transformers                          flava-zoo (``heads.safetensors``)
====================================  =====================================
``itm_head.pooler.dense.*``           ``itm_head.pooler.dense.*``
``itm_head.seq_relationship.*``       ``itm_head.classifier.*``
``X.transform.dense.*``               ``X.dense.*``
``X.transform.LayerNorm.*``           ``X.norm.*``
``X.decoder.weight``                  ``X.decoder.weight``
``X.decoder.bias`` / ``X.bias``       ``X.decoder.bias`` (one tensor, tied)
``image_codebook.*``                  ``codebook.safetensors`` (DALL-E encoder)
====================================  =====================================

for ``X`` in ``mim_head``, ``mlm_head``, ``mmm_image_head``, ``mmm_text_head``. transformers'
MIM and MMM-image heads predict DALL-E codebook tokens, so they fit only a config with
``mim_target="codebook"`` and ``codebook_size`` equal to the image vocabulary (pixel MIM
regresses ``patch_size**2 * channels`` values instead). A head whose tensors do not have the
shapes ``config`` gives ours is refused, naming both shapes: transformers builds its MMM-image
and MMM-text heads at the image and text towers' widths but applies them to the fusion
encoder's states, so they only ever worked where those widths are equal.

What a state dict cannot say: the heads' LayerNorm epsilon. Ours take the tower's
(``mim_head``, ``mlm_head``) or the fusion encoder's (``mmm_*``) ``layer_norm_eps``;
transformers' MMM heads take the towers', torchmultimodal's heads a fixed ``1e-5``. Such a
difference is reported in :attr:`ConvertedHeads.notes`, never silently assumed away.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import FlavaConfig

HEAD_NAMES = ("itm_head", "mlm_head", "mim_head", "mmm_text_head", "mmm_image_head")
"""Our pretraining heads, by their attribute (and ``heads.safetensors`` prefix) names."""
IMAGE_HEADS = ("mim_head", "mmm_image_head")
"""The heads whose output is the MIM target (codebook tokens in transformers' FLAVA)."""
MASKED_HEADS = ("mim_head", "mlm_head", "mmm_image_head", "mmm_text_head")
CODEBOOK_NAME = "codebook.safetensors"
"""The DALL-E encoder of a converted checkpoint, beside its heads; load it with
:meth:`flava_zoo.image_tokenizer.DalleImageTokenizer.from_file` (``codebook_path``)."""
CODEBOOK_PREFIX = "image_codebook."

# Inside one of transformers' heads: its parameter -> ours.
_MASKED_PARTS = {
    "transform.dense.weight": "dense.weight",
    "transform.dense.bias": "dense.bias",
    "transform.LayerNorm.weight": "norm.weight",
    "transform.LayerNorm.bias": "norm.bias",
    "decoder.weight": "decoder.weight",
    "decoder.bias": "decoder.bias",
    "bias": "decoder.bias",  # the same parameter as decoder.bias (tied); files hold one or both
}
_ITM_PARTS = {
    "pooler.dense.weight": "pooler.dense.weight",
    "pooler.dense.bias": "pooler.dense.bias",
    "seq_relationship.weight": "classifier.weight",
    "seq_relationship.bias": "classifier.bias",
}
_PARTS = {"itm_head": _ITM_PARTS, **{name: _MASKED_PARTS for name in MASKED_HEADS}}


@dataclass
class ConvertedHeads:
    """The result of :func:`convert_transformers_flava_heads`.

    ``heads``: our ``heads.safetensors`` keys (``itm_head.classifier.weight``, ...), loadable
    into :class:`~flava_zoo.models.pretraining.FlavaForPretraining`'s heads with
    ``strict=True``. ``codebook``: the DALL-E encoder in
    :class:`~flava_zoo.image_tokenizer.DalleEncoder`'s names (empty without one).
    ``ignored``: input keys left out (a tied bias's second name). ``skipped``: heads of the
    source not converted, with the reason. ``notes``: what the tensors cannot carry and
    differs (LayerNorm epsilon).
    """

    heads: dict[str, Tensor] = field(default_factory=dict)
    codebook: dict[str, Tensor] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        """The heads converted, in :data:`HEAD_NAMES` order."""
        present = {k.split(".", 1)[0] for k in self.heads}
        return [name for name in HEAD_NAMES if name in present]


class _CodebookSize:
    """Stands in for an image tokenizer where only its vocabulary size matters (shapes)."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    def tokenize(self, pixel_values: Tensor, grid_size: Any) -> Tensor:  # pragma: no cover
        raise RuntimeError("a shape-only stand-in cannot tokenize images")


def pretraining_heads(
    config: FlavaConfig, device: str | torch.device = "meta"
) -> dict[str, nn.Module]:
    """Our pretraining heads for ``config``, by name, built by :class:`FlavaForPretraining`
    itself (so shapes follow it), on ``device`` (``meta``: no memory, for shapes)."""
    from ..models.flava import FlavaModel
    from ..models.pretraining import FlavaForPretraining

    tokenizer = _CodebookSize(config.codebook_size) if config.mim_target == "codebook" else None
    with torch.device(device):
        objective = FlavaForPretraining(FlavaModel(config), image_tokenizer=tokenizer)  # type: ignore[arg-type]
    return {
        name: getattr(objective, name)
        for name in HEAD_NAMES
        if getattr(objective, name) is not None
    }


def expected_head_shapes(config: FlavaConfig) -> dict[str, torch.Size]:
    """Our ``heads.safetensors`` keys and their shapes for ``config``."""
    return {
        f"{name}.{key}": value.shape
        for name, head in pretraining_heads(config).items()
        for key, value in head.state_dict().items()
    }


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def check_head_shapes(
    heads: Mapping[str, Tensor], config: FlavaConfig, source: str = "the checkpoint"
) -> None:
    """Raise ``ValueError`` unless every tensor of ``heads`` (our names) is a key of our heads
    for ``config`` with that key's shape, and every head present is complete; each wrong
    shape is named with both shapes."""
    expected = expected_head_shapes(config)
    unknown = sorted(k for k in heads if k not in expected)
    if unknown:
        raise ValueError(
            f"{len(unknown)} head key(s) of {source} have no place in our heads: {unknown[:5]}"
        )
    wrong = [
        f"{k}: {_shape(v)} in {source} vs {tuple(expected[k])} for this config"
        for k, v in heads.items()
        if v.shape != expected[k]
    ]
    if wrong:
        hint = ""
        if (
            any(k.split(".", 1)[0] in IMAGE_HEADS for k in wrong)
            and config.mim_target != "codebook"
        ):
            hint = (
                f" (mim_target is {config.mim_target!r}: the MIM / MMM-image heads regress "
                "pixels; codebook heads need mim_target='codebook')"
            )
        raise ValueError(f"head shape mismatch: {'; '.join(wrong)}{hint}")
    present = {k.split(".", 1)[0] for k in heads}
    missing = sorted(k for k in expected if k.split(".", 1)[0] in present and k not in heads)
    if missing:
        raise ValueError(f"incomplete head(s) in {source}: missing {missing}")


def _eps_notes(
    config: FlavaConfig, names: Iterable[str], source_eps: Mapping[str, float]
) -> list[str]:
    head = config.head_layer_norm_eps
    ours = {
        "mim_head": head or config.image.layer_norm_eps,
        "mlm_head": head or config.text.layer_norm_eps,
        "mmm_image_head": head or config.multimodal.layer_norm_eps,
        "mmm_text_head": head or config.multimodal.layer_norm_eps,
    }
    return [
        f"{name}: LayerNorm eps {source_eps[name]:g} in the source, {ours[name]:g} here "
        "(not stored in weights; logits differ slightly)"
        for name in names
        if name in source_eps and name in ours and source_eps[name] != ours[name]
    ]


def transformers_head_eps(config: FlavaConfig) -> dict[str, float]:
    """The LayerNorm epsilon of each of transformers' masked-prediction heads, for the
    transformers config that ``config`` was made from: its MIM and MMM-image heads use the
    image config's, its MLM and MMM-text heads the text config's."""
    return {
        "mim_head": config.image.layer_norm_eps,
        "mmm_image_head": config.image.layer_norm_eps,
        "mlm_head": config.text.layer_norm_eps,
        "mmm_text_head": config.text.layer_norm_eps,
    }


def convert_transformers_flava_heads(
    state_dict: Mapping[str, Tensor],
    config: FlavaConfig,
    heads: Iterable[str] | None = None,
    source_eps: Mapping[str, float] | None = None,
) -> ConvertedHeads:
    """Map transformers' FLAVA pretraining heads (and DALL-E codebook) to ours.

    ``state_dict`` is a ``FlavaForPreTraining`` state dict (backbone keys are passed over)
    or the ``heads`` of :class:`~flava_zoo.interop.ConvertedState`. ``heads`` picks which
    of :data:`HEAD_NAMES` to convert; by default every head the source has, except the MIM
    and MMM-image heads when ``config.mim_target`` is ``pixels`` (recorded in ``skipped``).
    ``source_eps``: the source heads' LayerNorm epsilons (default: transformers', read off
    ``config``), compared with ours in ``notes``. Raises ``ValueError`` for a key of a head
    outside this layout, a tied bias whose two copies differ, a missing tensor, or a shape
    that does not fit ``config`` (both shapes named). Tensors are not copied.
    """
    out = ConvertedHeads()
    found: dict[str, dict[str, str]] = {}  # our key -> source key, per head
    unknown: list[str] = []
    codebook_state: dict[str, Tensor] = {}
    for key, tensor in state_dict.items():
        if key.startswith(CODEBOOK_PREFIX):
            codebook_state[key] = tensor
            continue
        name, _, part = key.partition(".")
        if name not in _PARTS:
            continue  # a backbone key
        ours = _PARTS[name].get(part)
        if ours is None:
            unknown.append(key)
            continue
        target = f"{name}.{ours}"
        if target in out.heads:
            first = found[name][target]
            if not torch.equal(out.heads[target], tensor):
                raise ValueError(
                    f"{first!r} and {key!r} are tied (one tensor) but differ in the source"
                )
            if part == "bias":
                out.ignored.append(key)
            else:  # keep the decoder's own name, report its alias
                out.ignored.append(first)
                found[name][target] = key
            continue
        out.heads[target] = tensor
        found.setdefault(name, {})[target] = key
    if unknown:
        raise ValueError(
            f"{len(unknown)} key(s) are not part of transformers' FLAVA heads: {unknown[:5]}"
        )

    wanted = list(heads) if heads is not None else None
    if wanted is not None:
        bad = sorted(set(wanted) - set(HEAD_NAMES))
        if bad:
            raise ValueError(f"unknown head(s) {bad}; choose from {list(HEAD_NAMES)}")
        absent = [name for name in wanted if name not in found]
        if absent:
            raise ValueError(f"the source has no {absent}; it has {sorted(found)}")
    else:
        wanted = list(found)
        if config.mim_target != "codebook":
            for name in IMAGE_HEADS:
                if name in wanted:
                    wanted.remove(name)
                    out.skipped[name] = (
                        "predicts codebook tokens; mim_target is 'pixels' (use mim_target='codebook')"
                    )
    for name in found:
        if name not in wanted and name not in out.skipped:
            out.skipped[name] = "not requested"
    out.heads = {k: v for k, v in out.heads.items() if k.split(".", 1)[0] in wanted}
    out.ignored = [k for k in out.ignored if k.split(".", 1)[0] in wanted]
    check_head_shapes(out.heads, config)
    eps = transformers_head_eps(config) if source_eps is None else source_eps
    out.notes = _eps_notes(config, out.names, eps)

    if codebook_state:
        from ..image_tokenizer import convert_dalle_state_dict, infer_dalle_arch

        out.codebook = convert_dalle_state_dict(codebook_state)
        vocab = infer_dalle_arch(out.codebook)["vocab_size"]
        if any(name in IMAGE_HEADS for name in out.names) and vocab != config.codebook_size:
            raise ValueError(
                f"the image codebook has {vocab} codes but codebook_size is {config.codebook_size}"
            )
    return out


def resolve_mim_target(
    config: FlavaConfig,
    source_heads: Iterable[str],
    heads: Iterable[str] | None = None,
    mim_target: str | None = None,
) -> FlavaConfig:
    """``config`` with the MIM target a conversion writes: ``mim_target`` when given, else
    ``codebook`` when an MIM / MMM-image head is to be converted (``heads``, or by default
    the heads ``source_heads`` names, as keys or names), else ``config``'s own."""
    if mim_target is None:
        names = {k.split(".", 1)[0] for k in (heads if heads is not None else source_heads)}
        mim_target = "codebook" if names & set(IMAGE_HEADS) else config.mim_target
    return config if mim_target == config.mim_target else config.replace(mim_target=mim_target)


_ITM_LAYOUTS = (
    ("objective.itm_head.", {}),  # a flava-zoo pretraining checkpoint
    ("loss.itm_loss.", {"cls.seq_relationship.": "classifier."}),  # torchmultimodal
    ("itm_head.", {"seq_relationship.": "classifier."}),  # ours, a fine-tuning run's, transformers'
)


def itm_head_state(state: Mapping[str, Any]) -> dict[str, Tensor] | None:
    """The ITM head in :class:`~flava_zoo.models.heads.ITMHead`'s names (``pooler.dense.*``,
    ``classifier.*``) from any state dict that holds one: a flava-zoo pretraining checkpoint
    (``objective.itm_head.*``), a fine-tuning one or an export's heads (``itm_head.*``),
    transformers' ``FlavaForPreTraining`` (``itm_head.seq_relationship.*``) or
    torchmultimodal's (``loss.itm_loss.cls.seq_relationship.*``); ``None`` if it holds none."""
    for marker, renames in _ITM_LAYOUTS:
        head = {k.split(marker, 1)[1]: v for k, v in state.items() if marker in k}
        if not head:
            continue
        out = {}
        for key, value in head.items():
            for old, new in renames.items():
                if key.startswith(old):
                    key = new + key[len(old) :]
            out[key] = value
        return out
    return None


def _float_copies(state: Mapping[str, Tensor], like: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().to(dtype=like[k].dtype, copy=True) for k, v in state.items()}


def save_converted(
    directory: str | Path,
    config: FlavaConfig,
    state_dict: Mapping[str, Tensor],
    heads: ConvertedHeads | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write a converted checkpoint as a flava-zoo export folder.

    ``state_dict``: our :class:`FlavaModel` keys (loaded with ``strict=True``); ``heads``: the
    converted heads, written to ``heads.safetensors`` as pretraining exports write theirs,
    and the codebook to :data:`CODEBOOK_NAME`. ``metadata`` goes to ``config.json`` along
    with the converted heads' names, skips and notes. Returns the folder, which
    :func:`~flava_zoo.create_model`, :func:`~flava_zoo.downstream.base.load_itm_head`
    (``itm_head_from``) and ``FlavaPretrainModule(init_from=...)`` read.
    """
    from safetensors.torch import save_file

    from ..checkpoint import _atomic_write, save_pretrained
    from ..models.flava import FlavaModel

    heads = heads or ConvertedHeads()
    with torch.device("meta"):
        model = FlavaModel(config)
    model.load_state_dict(_float_copies(state_dict, model.state_dict()), strict=True, assign=True)
    modules: dict[str, nn.Module] = {}
    if heads.heads:
        check_head_shapes(heads.heads, config)
        for name, head in pretraining_heads(config).items():
            own = {
                k.split(".", 1)[1]: v for k, v in heads.heads.items() if k.split(".", 1)[0] == name
            }
            if own:
                head.load_state_dict(
                    _float_copies(own, head.state_dict()), strict=True, assign=True
                )
                modules[name] = head
    record = {
        **dict(metadata or {}),
        "heads": list(modules),
        "skipped_heads": dict(heads.skipped),
        "notes": list(heads.notes),
    }
    json.dumps(record)  # refuse what config.json could not hold before writing anything
    codebook_state = {}
    if heads.codebook:
        from ..image_tokenizer import DalleEncoder, infer_dalle_arch

        codebook_state = {k: v.detach().float().contiguous() for k, v in heads.codebook.items()}
        with torch.device("meta"):
            encoder = DalleEncoder(**infer_dalle_arch(codebook_state))
        try:
            encoder.load_state_dict(codebook_state, strict=True, assign=True)
        except RuntimeError as err:
            raise ValueError(f"the image codebook is not a DALL-E encoder: {err}") from None
    directory = save_pretrained(model, directory, metadata=record, heads=modules)
    codebook = directory / CODEBOOK_NAME
    if codebook_state:
        _atomic_write(codebook, lambda p: save_file(codebook_state, p, metadata={"format": "pt"}))
    else:  # a previous export's codebook would not belong to these weights
        codebook.unlink(missing_ok=True)
    return directory


__all__ = [
    "CODEBOOK_NAME",
    "HEAD_NAMES",
    "IMAGE_HEADS",
    "ConvertedHeads",
    "check_head_shapes",
    "convert_transformers_flava_heads",
    "expected_head_shapes",
    "itm_head_state",
    "pretraining_heads",
    "resolve_mim_target",
    "save_converted",
    "transformers_head_eps",
]
