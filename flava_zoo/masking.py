"""Collate-time maskers for masked language modelling (MLM) and masked image modelling (MIM).

Each masker owns a ``torch.Generator`` seeded in its constructor, so masks are reproducible
and independent of the global RNG (and of whatever else consumes it, such as data
augmentation). Inside a ``DataLoader`` worker the generator is re-seeded once from
``(seed, worker id)`` so workers do not all produce the same masks; with
non-persistent workers this sequence restarts every epoch, so prefer
``persistent_workers=True``. :meth:`MLMMasker.reseed` / :meth:`BlockMasker.reseed` restart it
from ``(seed, *key)`` instead: the pretraining data modules key every batch by
``(epoch, batch, rank)``, so masks survive a resume and do not depend on the workers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info

IGNORE_INDEX = -100
"""Label value at positions that carry no MLM loss (``torch.nn.CrossEntropyLoss`` default)."""


_MASK64 = 2**64 - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix_seed(*parts: int) -> int:
    """A 63-bit seed mixed from non-negative integers (each taken modulo 2**64) by chained
    SplitMix64: distinct tuples give unrelated streams, the same tuple the same seed on every
    platform; a few microseconds, cheap enough for every sample."""
    state = len(parts)
    for part in parts:
        part = int(part)
        if part < 0:
            raise ValueError(f"seed parts must be non-negative integers, got {parts}")
        state = _splitmix64(state ^ (part & _MASK64))
    return state >> 1


class _SeededSampler:
    """Holds the private generator and re-seeds it once per DataLoader worker."""

    def __init__(self, seed: int) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed)
        self._worker_id: int | None = None
        self._uniforms: list[float] = []

    def _rng(self) -> torch.Generator:
        info = get_worker_info()
        if info is not None and info.id != self._worker_id:
            self._worker_id = info.id
            self._generator.manual_seed((self.seed * 1_000_003 + info.id + 1) % 2**63)
            self._uniforms.clear()
        return self._generator

    def reseed(self, *key: int) -> None:
        """Restart the generator from ``(seed, *key)`` (e.g. ``(epoch, batch, rank)``), so the
        next masks depend on that key only: not on the worker, nor on the masks drawn before.
        :class:`~flava_zoo.data.resume.ResumableDataLoader` batches carry such a key, which
        makes their masks the same after a resume (and for any ``num_workers``)."""
        info = get_worker_info()
        self._worker_id = info.id if info is not None else None
        self._generator.manual_seed(mix_seed(self.seed, *key))
        self._uniforms.clear()

    def _uniform(self, generator: torch.Generator) -> float:
        """One float in [0, 1) from the generator, drawn in chunks to keep Python loops fast."""
        if not self._uniforms:
            self._uniforms = torch.rand(256, generator=generator, dtype=torch.float64).tolist()
        return self._uniforms.pop()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_generator"] = self._generator.get_state()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        generator = torch.Generator()
        generator.set_state(state["_generator"])
        self.__dict__.update(state, _generator=generator)


class MLMMasker(_SeededSampler):
    """BERT-style token masking: select ~``probability`` of the maskable tokens of each row.

    Of the selected tokens, ``mask_fraction`` become ``[MASK]``, ``random_fraction`` become a
    random non-special token and the rest stay as they are; all of them are predicted.
    Special tokens, padding and positions where ``attention_mask`` is 0 are never selected.
    Every row that has at least one maskable token gets at least one selected token (one is
    picked uniformly when the coin flips select none), so the MLM loss of a row is never empty.

    Args:
        vocab_size: size of the text vocabulary.
        mask_token_id: id of ``[MASK]``.
        special_token_ids: ids never selected and never used as random replacements.
        pad_token_id: padding id, treated as special.
        probability: chance that a maskable token is selected.
        mask_fraction: share of selected tokens replaced by ``[MASK]``.
        random_fraction: share of selected tokens replaced by a random token.
        seed: seed of the masker's own generator.
    """

    def __init__(
        self,
        vocab_size: int,
        mask_token_id: int,
        special_token_ids: Iterable[int],
        pad_token_id: int = 0,
        probability: float = 0.15,
        mask_fraction: float = 0.8,
        random_fraction: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        if vocab_size <= 0:
            raise ValueError(f"vocab_size must be positive, got {vocab_size}")
        special = {int(token) for token in special_token_ids} | {int(pad_token_id)}
        special.add(int(mask_token_id))
        for name, token in [("mask_token_id", mask_token_id), ("pad_token_id", pad_token_id)]:
            if not 0 <= token < vocab_size:
                raise ValueError(f"{name} {token} is outside the vocabulary (size {vocab_size})")
        outside = sorted(token for token in special if not 0 <= token < vocab_size)
        if outside:
            raise ValueError(
                f"special_token_ids {outside} are outside the vocabulary (size {vocab_size})"
            )
        if not 0 < probability <= 1:
            raise ValueError(f"probability must be in (0, 1], got {probability}")
        if mask_fraction < 0 or random_fraction < 0 or mask_fraction + random_fraction > 1:
            raise ValueError(
                "mask_fraction and random_fraction must be non-negative and sum to at most 1, "
                f"got {mask_fraction} and {random_fraction}"
            )
        self.vocab_size = vocab_size
        self.mask_token_id = int(mask_token_id)
        self.pad_token_id = int(pad_token_id)
        self.special_token_ids = frozenset(special)
        self.probability = probability
        self.mask_fraction = mask_fraction
        self.random_fraction = random_fraction
        self._special = torch.tensor(sorted(special), dtype=torch.long)
        keep = torch.ones(vocab_size, dtype=torch.bool)
        keep[self._special] = False
        self._replacements = keep.nonzero().flatten()
        if random_fraction > 0 and len(self._replacements) == 0:
            raise ValueError("random_fraction > 0 but every vocabulary id is a special token")

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, **kwargs: Any) -> MLMMasker:
        """Build from any object with ``vocab_size``, ``mask_token_id``, ``special_token_ids``
        and ``pad_token_id`` attributes (such as ``FlavaTokenizer``); ``kwargs`` set the rest.
        """
        fields = ("vocab_size", "mask_token_id", "special_token_ids", "pad_token_id")
        values: dict[str, Any] = {}
        for field in fields:
            if field in kwargs:
                continue
            if not hasattr(tokenizer, field):
                raise TypeError(f"{type(tokenizer).__name__} has no attribute {field!r}")
            values[field] = getattr(tokenizer, field)
        return cls(**values, **kwargs)

    def __call__(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask a ``(batch, length)`` batch; returns ``(masked_input_ids, labels)``.

        ``labels`` holds the original id at selected positions and ``-100`` elsewhere.
        The inputs are not modified.
        """
        if input_ids.ndim != 2:
            raise ValueError(
                f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}"
            )
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} does not match "
                f"input_ids shape {tuple(input_ids.shape)}"
            )
        generator = self._rng()
        ids = input_ids.cpu()
        maskable = ~torch.isin(ids, self._special.to(ids.dtype))
        if attention_mask is not None:
            maskable &= attention_mask.cpu().bool()

        shape = ids.shape
        selected = (torch.rand(shape, generator=generator) < self.probability) & maskable
        fallback_scores = torch.rand(shape, generator=generator).masked_fill(~maskable, -1.0)
        empty_rows = ~selected.any(dim=1) & maskable.any(dim=1)
        fallback = torch.zeros_like(selected)
        fallback[torch.arange(shape[0]), fallback_scores.argmax(dim=1)] = True
        selected |= fallback & empty_rows[:, None]

        action = torch.rand(shape, generator=generator)
        to_mask = selected & (action < self.mask_fraction)
        to_random = (
            selected
            & (action >= self.mask_fraction)
            & (action < self.mask_fraction + self.random_fraction)
        )
        picks = torch.randint(len(self._replacements), shape, generator=generator)
        random_tokens = self._replacements[picks].to(ids.dtype)

        masked = ids.clone()
        masked[to_mask] = self.mask_token_id
        masked[to_random] = random_tokens[to_random]
        labels = torch.where(selected, ids, torch.full_like(ids, IGNORE_INDEX))
        return masked.to(input_ids.device), labels.to(input_ids.device)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(vocab_size={self.vocab_size}, probability={self.probability}, "
            f"mask_fraction={self.mask_fraction}, random_fraction={self.random_fraction}, "
            f"seed={self.seed})"
        )


class BlockMasker(_SeededSampler):
    """BEiT-style block-wise patch masking for masked image modelling.

    Rectangles with an area of ``min_block_patches`` to ``max_block_patches`` patches and a
    log-uniform aspect ratio in ``[min_aspect, max_aspect]`` are placed at random, each
    adding its not-yet-masked patches, until ``round(mask_ratio * H * W)`` patches are
    masked. A rectangle is only kept if it does not overshoot that target; when
    ``max_attempts`` rectangles in a row fail, masking stops a little short of the target
    (except for the first rectangle, which is then kept anyway so a mask is never empty).
    Rectangles are always kept whole, so every connected masked region has at least
    ``min_block_patches`` patches.

    On small grids the block sizes are clamped: ``max_block_patches`` to the target count
    and ``min_block_patches`` to ``max_block_patches`` (a 4x4 grid at 40% masks 6 patches
    as one 6-patch block), and rectangle sides to the grid.

    Args:
        grid_size: patches per side, or ``(height, width)``.
        mask_ratio: fraction of patches to mask, in (0, 1).
        min_block_patches: smallest rectangle area.
        max_block_patches: largest rectangle area (default: the target count).
        min_aspect: smallest height/width ratio of a rectangle.
        max_aspect: largest height/width ratio (default ``1 / min_aspect``).
        seed: seed of the masker's own generator.
        max_attempts: rectangles tried in a row before giving up on reaching the target.
    """

    def __init__(
        self,
        grid_size: int | tuple[int, int],
        mask_ratio: float = 0.4,
        min_block_patches: int = 16,
        max_block_patches: int | None = None,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
        seed: int = 0,
        max_attempts: int = 10,
    ) -> None:
        super().__init__(seed)
        height, width = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
        if height <= 0 or width <= 0:
            raise ValueError(f"grid_size must be positive, got {grid_size}")
        if not 0 < mask_ratio < 1:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        if min_block_patches < 1:
            raise ValueError(f"min_block_patches must be at least 1, got {min_block_patches}")
        if max_block_patches is not None and max_block_patches < min_block_patches:
            raise ValueError(
                f"max_block_patches {max_block_patches} is smaller than "
                f"min_block_patches {min_block_patches}"
            )
        max_aspect = 1 / min_aspect if max_aspect is None and min_aspect > 0 else max_aspect
        if min_aspect <= 0 or max_aspect is None or max_aspect < min_aspect:
            raise ValueError(
                f"aspect ratios must satisfy 0 < min_aspect <= max_aspect, "
                f"got {min_aspect} and {max_aspect}"
            )
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        self.height, self.width = int(height), int(width)
        self.num_patches = self.height * self.width
        self.mask_ratio = mask_ratio
        self.num_masking_patches = max(1, round(mask_ratio * self.num_patches))
        upper = self.num_masking_patches if max_block_patches is None else max_block_patches
        self.max_block_patches = min(upper, self.num_masking_patches)
        self.min_block_patches = min(min_block_patches, self.max_block_patches)
        self.min_aspect, self.max_aspect = float(min_aspect), float(max_aspect)
        self.max_attempts = max_attempts

    def _rectangle(self, generator: torch.Generator) -> tuple[int, int]:
        low, high = self.min_block_patches, self.max_block_patches
        area = low + (high - low) * self._uniform(generator)
        log_low, log_high = math.log(self.min_aspect), math.log(self.max_aspect)
        aspect = math.exp(log_low + (log_high - log_low) * self._uniform(generator))
        rows = min(max(round(math.sqrt(area * aspect)), 1), self.height)
        cols = min(max(math.ceil(area / rows), 1), self.width)
        rows = min(max(rows, math.ceil(area / cols)), self.height)
        return rows, cols

    def sample(self) -> torch.Tensor:
        """One mask of shape ``(height, width)``, ``True`` where a patch is masked."""
        generator = self._rng()
        mask = np.zeros((self.height, self.width), dtype=bool)
        count = 0
        while count < self.num_masking_patches:
            remaining = self.num_masking_patches - count
            for _ in range(self.max_attempts):
                rows, cols = self._rectangle(generator)
                top = int(self._uniform(generator) * (self.height - rows + 1))
                left = int(self._uniform(generator) * (self.width - cols + 1))
                window = mask[top : top + rows, left : left + cols]
                added = rows * cols - int(np.count_nonzero(window))
                if 0 < added <= remaining:
                    window[...] = True
                    count += added
                    break
            else:
                if count == 0:
                    window[...] = True
                    count = int(np.count_nonzero(mask))
                    continue
                break
        return torch.from_numpy(mask)

    def __call__(self, batch_size: int) -> torch.Tensor:
        """``batch_size`` masks flattened row-major to ``(batch_size, height * width)``."""
        if batch_size < 0:
            raise ValueError(f"batch_size must be non-negative, got {batch_size}")
        if batch_size == 0:
            return torch.zeros(0, self.num_patches, dtype=torch.bool)
        return torch.stack([self.sample().flatten() for _ in range(batch_size)])

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(grid_size=({self.height}, {self.width}), "
            f"mask_ratio={self.mask_ratio}, min_block_patches={self.min_block_patches}, "
            f"max_block_patches={self.max_block_patches}, seed={self.seed})"
        )
