"""Named model sizes: the architecture registry.

Architectures register a config builder under a name (``flava-base``); :func:`get_config`
gives its :class:`FlavaConfig` and :func:`build_model` a :class:`FlavaModel` with random
weights. Pretrained weights are addressed as ``arch.tag`` (``flava-base.facebook``), after
timm, but that is the zoo's and the factory's business (:func:`flava_zoo.create_model`):
this module knows nothing of either. The registry is the test matrix: tests are
parametrised over :func:`list_models`.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from typing import Any

from ..config import FlavaConfig, FusionEncoderConfig, ImageEncoderConfig, TextEncoderConfig
from .flava import FlavaModel

_MODELS: dict[str, Callable[[], FlavaConfig]] = {}


def register_model(name: str) -> Callable[[Callable[[], FlavaConfig]], Callable[[], FlavaConfig]]:
    """Decorator: register a zero-argument function returning the :class:`FlavaConfig` of ``name``."""

    def wrap(fn: Callable[[], FlavaConfig]) -> Callable[[], FlavaConfig]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        if "." in name:
            raise ValueError(f"architecture names may not contain '.', got {name!r} ('.' separates the tag)")
        _MODELS[name] = fn
        return fn

    return wrap


def list_models(pattern: str = "*") -> list[str]:
    """Registered architecture names matching a shell-style ``pattern``, sorted."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def _unknown(name: str) -> ValueError:
    close = difflib.get_close_matches(name, list(_MODELS), n=3, cutoff=0.4)
    hint = f"did you mean {close}? " if close else ""
    return ValueError(f"unknown model {name!r}; {hint}available: {list_models()}")


def get_config(name: str, **overrides: Any) -> FlavaConfig:
    """The config of architecture ``name`` with ``overrides`` applied by field name."""
    arch = name.split(".", 1)[0]
    if arch not in _MODELS:
        raise _unknown(name)
    config = _MODELS[arch]()
    return config.replace(**overrides) if overrides else config


def build_model(name: str, **overrides: Any) -> FlavaModel:
    """A :class:`FlavaModel` of architecture ``name`` with random weights (``overrides``
    as for :func:`get_config`)."""
    return FlavaModel(get_config(name, **overrides))


@register_model("flava-tiny")
def flava_tiny() -> FlavaConfig:
    """About 2M parameters at 64 px with 16 px patches (a 4x4 grid): CPU tests and the
    quickstart, well under a second per multimodal step of 64 pairs on two cores."""
    return FlavaConfig(
        image=ImageEncoderConfig(
            image_size=64, patch_size=16, hidden_size=128, num_layers=4, num_heads=4,
            intermediate_size=512,
        ),
        text=TextEncoderConfig(
            vocab_size=1024, max_position_embeddings=64, hidden_size=128, num_layers=4,
            num_heads=4, intermediate_size=512,
        ),
        multimodal=FusionEncoderConfig(hidden_size=128, num_layers=2, num_heads=4, intermediate_size=512),
        projection_dim=128,
    )


@register_model("flava-tiny-shapes")
def flava_tiny_shapes() -> FlavaConfig:
    """flava-tiny with a 2-layer text tower and a 1-layer fusion encoder: the quickstart's
    model. The shapes world's language (some 60 words, one clause pattern per object) needs
    no deeper text tower; per stage-3 step it learned as much as flava-tiny at 0.65 of the
    step's time (benchmarks/results/learning_speed.md)."""
    config = flava_tiny()
    config.text.num_layers = 2
    config.multimodal.num_layers = 1
    return config


@register_model("flava-small")
def flava_small() -> FlavaConfig:
    """ViT-S/16 image tower, a MiniLM-L6-shaped text tower (384 wide, 6 layers), 4-layer fusion."""
    return FlavaConfig(
        image=ImageEncoderConfig(hidden_size=384, num_layers=12, num_heads=6, intermediate_size=1536),
        text=TextEncoderConfig(hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536),
        multimodal=FusionEncoderConfig(hidden_size=384, num_layers=4, num_heads=6, intermediate_size=1536),
        projection_dim=384,
    )


@register_model("flava-base")
def flava_base() -> FlavaConfig:
    """FLAVA-full: ViT-B/16 at 224 px, BERT-base text tower, 6-layer 768-wide fusion, 768-d space."""
    return FlavaConfig()


@register_model("flava-large")
def flava_large() -> FlavaConfig:
    """ViT-L/14 image tower, BERT-large text tower, 8-layer 1024-wide fusion."""
    return FlavaConfig(
        image=ImageEncoderConfig(
            patch_size=14, hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096
        ),
        text=TextEncoderConfig(hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096),
        multimodal=FusionEncoderConfig(hidden_size=1024, num_layers=8, num_heads=16, intermediate_size=4096),
        projection_dim=1024,
    )
