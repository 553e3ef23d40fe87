"""Datasets: the built-in shapes world and its task counterparts."""

from flava_zoo.data.shapes import (
    CAPTIONS_PER_SCENE,
    DEFAULT_SIZES,
    SPLITS,
    Background,
    Scene,
    ShapeObject,
    ShapesCaptionEntailment,
    ShapesClassification,
    ShapesEntailment,
    ShapesImages,
    ShapesMemes,
    ShapesPairs,
    ShapesTexts,
    ShapesVQA,
    ShapesWorld,
    relation,
)

__all__ = [
    "CAPTIONS_PER_SCENE",
    "DEFAULT_SIZES",
    "SPLITS",
    "Background",
    "Scene",
    "ShapeObject",
    "ShapesCaptionEntailment",
    "ShapesClassification",
    "ShapesEntailment",
    "ShapesImages",
    "ShapesMemes",
    "ShapesPairs",
    "ShapesTexts",
    "ShapesVQA",
    "ShapesWorld",
    "relation",
]
