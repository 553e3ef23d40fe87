"""flava-zoo: FLAVA-style multimodal models, staged pretraining, recipes, a model zoo and benchmarks."""

from .checkpoint import load_pretrained, save_pretrained
from .config import FlavaConfig, FusionEncoderConfig, ImageEncoderConfig, TextEncoderConfig
from .factory import (
    ModelSource,
    create_model,
    create_model_and_transforms,
    get_tokenizer,
    get_transform,
    resolve_model,
)
from .models import FlavaModel, get_config, list_models, register_model
from .version import __version__
from .zoo import list_pretrained

__all__ = [
    "FlavaConfig",
    "FlavaModel",
    "FusionEncoderConfig",
    "ImageEncoderConfig",
    "ModelSource",
    "TextEncoderConfig",
    "__version__",
    "create_model",
    "create_model_and_transforms",
    "get_config",
    "get_tokenizer",
    "get_transform",
    "list_models",
    "list_pretrained",
    "load_pretrained",
    "register_model",
    "resolve_model",
    "save_pretrained",
]
