"""Model code: the towers, the fusion encoder, heads and the registry of named sizes."""

from .encoders import EncoderOutput, ImageEncoder, TextEncoder
from .flava import FlavaModel, FlavaOutput
from .fusion import FusionEncoder, FusionOutput
from .heads import ClassificationHead, ITMHead, MaskedPredictionHead, Pooler
from .layers import AttentionRecorder, record_attention
from .registry import build_model, get_config, list_models, register_model

__all__ = [
    "AttentionRecorder",
    "ClassificationHead",
    "EncoderOutput",
    "FlavaModel",
    "FlavaOutput",
    "FusionEncoder",
    "FusionOutput",
    "ITMHead",
    "ImageEncoder",
    "MaskedPredictionHead",
    "Pooler",
    "TextEncoder",
    "build_model",
    "get_config",
    "list_models",
    "record_attention",
    "register_model",
]
