"""Image-text retrieval: rank captions for each image and images for each caption by the
similarity of their embeddings, scored by recall at K both ways
(:func:`flava_zoo.evaluation.retrieval.retrieval_recall`)."""

from __future__ import annotations

from typing import Any

from .spec import Source, TaskSpec, register

__all__ = ["IMAGES_KEYS", "RETRIEVAL"]

IMAGES_KEYS = {"image": "image", "index": "index"}
"""The keys of a retrieval split's images (one sample per image, captions apart)."""

_KEYS = {"image": "image", "text": "text", "index": "index"}


def _karpathy_split(split: str) -> dict[str, Any]:
    """A Karpathy JSON holds every split; a test split of another name reads ``test``."""
    return {"split": split if split in ("train", "val", "test") else "test"}

RETRIEVAL = register(
    TaskSpec(
        name="retrieval",
        inputs="multimodal",
        shapes=Source(
            "shapes", "flava_zoo.data.shapes:ShapesPairs", keys=_KEYS, labels=(),
            defaults={"captions_per_image": 1}, train_defaults={"captions_per_image": "random"},
        ),
        official=(
            Source("karpathy", "flava_zoo.data.tasks:KarpathyRetrieval", keys=_KEYS, labels=(),
                   split_arg=_karpathy_split,
                   train_view="pairs"),
        ),
        targets=None,
        head=None,
        loss=None,
        modes=("retrieval",),
    )
)  # fmt: skip
"""Shapes caption pairs (five captions a scene), or the COCO / Flickr30K Karpathy splits."""
