"""Turn a list of samples into a model batch: stack images, tokenize text, apply the maskers.

Masking happens here, at collate time, with the maskers' own generators, so it runs in the
data-loader workers and is reproducible from the maskers' seeds. Batches of a
:class:`~flava_zoo.data.resume.ResumableDataLoader` carry an ``(epoch, batch, rank)`` key
from which the maskers are re-seeded, so their masks survive a resume exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..masking import BlockMasker, MLMMasker
from .resume import BATCH_KEY


class PretrainCollator:
    """Collate samples (dicts with ``image`` and / or ``text``) into a pretraining batch.

    ``num_skipped`` counts the unreadable samples behind the batch: each ``None`` sample (an
    unreadable one that a dataset gave as is) is dropped and counted, and a replacement
    sample (from :class:`~flava_zoo.data.sources.ReplaceUnreadable`, which the data modules
    read through so that a batch never shrinks and DDP ranks stay equal) adds the
    ``num_skipped`` it carries. Images must already be tensors (datasets apply the transform).
    Output keys: ``pixel_values`` and ``image_mask`` for images; ``input_ids``,
    ``attention_mask``, ``masked_input_ids`` and ``mlm_labels`` for text; any integer
    ``label`` is stacked as ``labels``.
    """

    def __init__(
        self,
        tokenizer: Any | None = None,
        mlm_masker: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
        image_masker: Callable[[int], Tensor] | None = None,
        max_length: int | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.mlm_masker = mlm_masker
        self.image_masker = image_masker
        self.max_length = max_length

    def reseed(self, *key: int) -> None:
        """Restart both maskers from ``(mask seed, *key, masker)``: the masks of a batch then
        depend on its key only (see :mod:`flava_zoo.data.resume`)."""
        for stream, masker in enumerate((self.image_masker, self.mlm_masker)):
            if hasattr(masker, "reseed"):
                masker.reseed(*key, stream)

    def __call__(self, samples: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
        """Collate ``samples``; see the class docstring for the keys."""
        good = [s for s in samples if s is not None]
        if not good:
            raise RuntimeError(
                f"all {len(samples)} samples of a batch were unreadable; see the warnings above"
            )
        replaced = sum(int(s.get("num_skipped", 0)) for s in good)
        batch: dict[str, Any] = {"num_skipped": len(samples) - len(good) + replaced}
        first = good[0]
        key = first.get(BATCH_KEY)  # (epoch, batch, rank) from a ResumableDataLoader
        if key is not None:
            self.reseed(*key)
        if "image" in first:
            images = [s["image"] for s in good]
            if not all(isinstance(im, Tensor) for im in images):
                raise TypeError(
                    "images must be tensors at collate time: give the dataset a transform"
                )
            batch["pixel_values"] = torch.stack(images)
            if self.image_masker is not None:
                batch["image_mask"] = self.image_masker(len(good))
        if "text" in first:
            if self.tokenizer is None:
                raise ValueError("samples carry text but the collator has no tokenizer")
            enc = self.tokenizer([s["text"] for s in good], max_length=self.max_length)
            batch["input_ids"] = enc["input_ids"]
            batch["attention_mask"] = enc["attention_mask"]
            if self.mlm_masker is not None:
                masked, labels = self.mlm_masker(enc["input_ids"], enc["attention_mask"])
                batch["masked_input_ids"] = masked
                batch["mlm_labels"] = labels
        if "label" in first:
            batch["labels"] = torch.as_tensor([s["label"] for s in good])
        return batch


def pretrain_collator(
    tokenizer: Any | None,
    image_size: int | None = None,
    patch_size: int = 16,
    max_length: int = 77,
    mlm_probability: float = 0.15,
    mask_ratio: float = 0.4,
    mask_seed: int = 0,
) -> PretrainCollator:
    """The pretraining collator every data module uses: the tokenizer and an MLM masker when
    there is a tokenizer, a block masker on the patch grid when there is an ``image_size``."""
    image_masker = None
    if image_size is not None:
        if image_size % patch_size:
            raise ValueError(f"image size {image_size} is not divisible by patch size {patch_size}")
        grid = image_size // patch_size
        image_masker = BlockMasker(
            grid,
            mask_ratio=mask_ratio,
            min_block_patches=max(1, min(16, grid * grid // 4)),
            seed=mask_seed,
        )
    mlm_masker = (
        MLMMasker.from_tokenizer(tokenizer, probability=mlm_probability, seed=mask_seed)
        if tokenizer is not None
        else None
    )
    return PretrainCollator(
        tokenizer=tokenizer, mlm_masker=mlm_masker, image_masker=image_masker, max_length=max_length
    )
