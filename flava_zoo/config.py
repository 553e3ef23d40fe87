"""Model configuration: small dataclasses, validated on construction, round-tripped through dicts.

A :class:`FlavaConfig` holds one sub-config per tower (``image``, ``text``) and one for the
fusion encoder (``multimodal``), plus the switches that define the design choices studied
by this package (``fusion``, ``mim_target``). ``FlavaConfig.from_dict(cfg.to_dict()) == cfg``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

FUSION_TYPES = ("merged", "co_attention", "none")
MIM_TARGETS = ("pixels", "codebook")


def _check_heads(name: str, hidden_size: int, num_heads: int) -> None:
    if hidden_size % num_heads:
        raise ValueError(
            f"{name}.hidden_size {hidden_size} is not divisible by {name}.num_heads {num_heads}"
        )


def _check_positive(name: str, **values: float) -> None:
    for key, value in values.items():
        if value <= 0:
            raise ValueError(f"{name}.{key} must be positive, got {value}")


@dataclass
class ImageEncoderConfig:
    """ViT image tower."""

    image_size: int = 224
    """Training resolution; position embeddings interpolate to other sizes at run time."""
    patch_size: int = 16
    num_channels: int = 3
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    dropout: float = 0.0
    attention_dropout: float = 0.0
    layer_norm_eps: float = 1e-12

    def __post_init__(self) -> None:
        _check_positive(
            "image",
            image_size=self.image_size,
            patch_size=self.patch_size,
            num_channels=self.num_channels,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
        )
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image size {self.image_size} is not divisible by patch size {self.patch_size}"
            )
        _check_heads("image", self.hidden_size, self.num_heads)

    @property
    def grid_size(self) -> int:
        """Patches per side at the training resolution."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Patches per image at the training resolution."""
        return self.grid_size**2


@dataclass
class TextEncoderConfig:
    """BERT-style text tower."""

    vocab_size: int = 30522
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    pad_token_id: int = 0
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    dropout: float = 0.0
    attention_dropout: float = 0.0
    layer_norm_eps: float = 1e-12
    norm_first: bool = True
    """Pre-LayerNorm blocks and a final LayerNorm (FLAVA); ``False`` gives BERT's
    post-LayerNorm blocks without a final norm, to hold BERT checkpoints exactly."""

    def __post_init__(self) -> None:
        _check_positive(
            "text",
            vocab_size=self.vocab_size,
            max_position_embeddings=self.max_position_embeddings,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
        )
        _check_heads("text", self.hidden_size, self.num_heads)


@dataclass
class FusionEncoderConfig:
    """The cross-modal transformer over ``[cls_mm; proj(image states); proj(text states)]``."""

    hidden_size: int = 768
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 3072
    dropout: float = 0.0
    attention_dropout: float = 0.0
    layer_norm_eps: float = 1e-12

    def __post_init__(self) -> None:
        _check_positive(
            "multimodal",
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
        )
        _check_heads("multimodal", self.hidden_size, self.num_heads)


_SUBCONFIGS = {
    "image": ImageEncoderConfig,
    "text": TextEncoderConfig,
    "multimodal": FusionEncoderConfig,
}


@dataclass
class FlavaConfig:
    """A whole FLAVA-style model: two towers, a fusion encoder and the shared embedding space."""

    image: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    multimodal: FusionEncoderConfig = field(default_factory=FusionEncoderConfig)
    fusion: str = "merged"
    """``merged`` (FLAVA: one self-attention over both modalities), ``co_attention``
    (ViLBERT-style cross-attending streams) or ``none`` (dual encoder, CLIP-like)."""
    projection_dim: int = 768
    """Width of the shared, L2-normalised image-text embedding space."""
    logit_scale_init: float = math.log(1 / 0.07)
    logit_scale_max: float = math.log(100.0)
    mim_target: str = "pixels"
    """Masked-image-modelling target: ``pixels`` (normalised-pixel regression, MAE-style)
    or ``codebook`` (tokens of a user-supplied dVAE, as FLAVA's DALL-E targets)."""
    codebook_size: int = 8192
    """Vocabulary of the image tokenizer when ``mim_target == "codebook"``."""
    head_layer_norm_eps: float | None = None
    """LayerNorm epsilon of the masked-prediction heads (MIM, MLM, MMM); ``None``: each head
    takes its tower's (MIM, MLM) or the fusion encoder's (MMM). Converted torchmultimodal
    checkpoints set 1e-5, its heads' fixed value, which no weights file records."""
    gradient_checkpointing: bool = False
    """Recompute each transformer block in the backward pass to save activation memory."""

    def __post_init__(self) -> None:
        for name, cls in _SUBCONFIGS.items():
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, _from_dict(cls, value, prefix=name))
            elif not isinstance(value, cls):
                raise TypeError(f"{name} must be a {cls.__name__} or a dict, got {type(value).__name__}")
        if self.fusion not in FUSION_TYPES:
            raise ValueError(f"fusion must be one of {FUSION_TYPES}, got {self.fusion!r}")
        if self.mim_target not in MIM_TARGETS:
            raise ValueError(f"mim_target must be one of {MIM_TARGETS}, got {self.mim_target!r}")
        _check_positive("config", projection_dim=self.projection_dim, codebook_size=self.codebook_size)
        if self.head_layer_norm_eps is not None and not self.head_layer_norm_eps > 0:
            raise ValueError(f"head_layer_norm_eps must be positive or null, got {self.head_layer_norm_eps}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable nested dict; ``FlavaConfig.from_dict`` inverts it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FlavaConfig:
        """Build a config from a (possibly partial) nested dict; unknown keys raise ``ValueError``."""
        return _from_dict(cls, data, prefix="")

    def replace(self, **overrides: Any) -> FlavaConfig:
        """A copy with ``overrides`` applied; see :func:`apply_overrides` for the key forms."""
        return apply_overrides(self, overrides)

    def field_paths(self) -> list[str]:
        """Every settable key as a dotted path: ``fusion``, ``image.image_size``, ..."""
        paths = []
        for f in dataclasses.fields(self):
            if f.name in _SUBCONFIGS:
                paths += [f"{f.name}.{g.name}" for g in dataclasses.fields(getattr(self, f.name))]
            else:
                paths.append(f.name)
        return paths


def _from_dict(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise TypeError(f"config section {prefix or '<root>'} must be a mapping, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f" in section {prefix!r}" if prefix else ""
        raise ValueError(f"unknown config key(s) {unknown}{where}; valid keys: {sorted(names)}")
    return cls(**data)


def apply_overrides(config: FlavaConfig, overrides: dict[str, Any]) -> FlavaConfig:
    """Return a copy of ``config`` with ``overrides`` applied.

    A key is a top-level field (``fusion``), a dotted path (``image.image_size``), the same
    path with ``__`` for the dot (``image__image_size``, usable as a Python keyword), or a
    bare sub-config field name that is unambiguous (``image_size``, ``vocab_size``).
    Unknown or ambiguous keys raise ``ValueError`` naming the candidates.
    """
    data = config.to_dict()
    paths = config.field_paths()
    for key, value in overrides.items():
        path = key.replace("__", ".")
        if path not in paths:
            matches = [p for p in paths if p.split(".")[-1] == path]
            if len(matches) == 1:
                path = matches[0]
            elif len(matches) > 1:
                raise ValueError(f"override key {key!r} is ambiguous; use one of {matches}")
            else:
                import difflib

                close = difflib.get_close_matches(path, paths, n=3, cutoff=0.5)
                hint = f"; did you mean {close}?" if close else f"; valid keys: {paths}"
                raise ValueError(f"unknown override key {key!r}{hint}")
        if "." in path:
            section, name = path.split(".")
            data[section][name] = value
        else:
            data[path] = value
    return FlavaConfig.from_dict(data)
