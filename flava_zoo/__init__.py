"""flava-zoo: FLAVA-style multimodal models, staged pretraining, recipes, a model zoo and benchmarks."""

__version__ = "0.2.0"

from .checkpoint import load_pretrained, save_pretrained
from .config import FlavaConfig, FusionEncoderConfig, ImageEncoderConfig, TextEncoderConfig
from .models import FlavaModel, create_model, get_config, list_models, register_model
from .zoo import list_pretrained

__all__ = [
    "FlavaConfig",
    "FlavaModel",
    "FusionEncoderConfig",
    "ImageEncoderConfig",
    "TextEncoderConfig",
    "__version__",
    "create_model",
    "get_config",
    "list_models",
    "list_pretrained",
    "load_pretrained",
    "register_model",
    "save_pretrained",
]
