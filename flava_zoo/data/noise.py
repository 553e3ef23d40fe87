"""Weak image-text pairs, as scraped web data has: captions swapped at a set rate.

:class:`NoisyCaptions` wraps a pair dataset: exactly ``round(rate * n)`` of its items (chosen
by a seeded permutation) carry the caption of another item instead of their own, so the
pair is wrong while image and caption stay in-distribution (the noise a contrastive filter
has to find). :class:`KeptPairs` keeps the items a filter chose (``flava-zoo filter``).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

__all__ = ["KeptPairs", "NoisyCaptions", "read_kept_indices"]


class NoisyCaptions(Dataset):
    """``dataset`` (items with a ``"text"``) with ``rate`` of its captions swapped.

    The noisy items are the first ``round(rate * n)`` of a permutation seeded by ``seed``; a
    noisy item ``i`` takes the caption of item ``(i + 1 + r) % n`` for a seeded ``r`` in
    ``[0, n - 1)``, never its own. ``text_of(j)`` reads item ``j``'s caption without loading
    its image (default: ``dataset[j]["text"]``). Items gain ``"noisy"``: whether their pair
    is wrong.
    """

    def __init__(
        self,
        dataset: Any,
        rate: float,
        seed: int = 0,
        text_of: Callable[[int], str] | None = None,
    ) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"caption noise rate must be in [0, 1], got {rate}")
        n = len(dataset)
        if rate > 0 and n < 2:
            raise ValueError(f"caption noise needs at least two items to swap captions, got {n}")
        self.dataset = dataset
        self.rate = rate
        self.seed = seed
        self.text_of = text_of or (lambda j: dataset[j]["text"])
        rng = random.Random(f"caption-noise-{seed}-{n}")
        order = list(range(n))
        rng.shuffle(order)
        count = int(math.floor(rate * n + 0.5))
        self._donor = {i: (i + 1 + rng.randrange(n - 1)) % n for i in sorted(order[:count])}

    @property
    def noisy_indices(self) -> list[int]:
        """The items whose caption belongs to another item, sorted."""
        return sorted(self._donor)

    def is_noisy(self, index: int) -> bool:
        """Whether item ``index`` carries another item's caption."""
        return int(index) in self._donor

    def text(self, index: int) -> str:
        """Item ``index``'s caption after the swap, without loading its image."""
        donor = self._donor.get(int(index))
        return self.text_of(int(index) if donor is None else donor)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.dataset[index])
        donor = self._donor.get(int(index))
        if donor is not None:
            item["text"] = self.text_of(donor)
        item["noisy"] = donor is not None
        return item


def read_kept_indices(path: str | Path, size: int, **settings: Any) -> list[int]:
    """The scene indices of a ``flava-zoo filter --shapes`` output (``{"indices": [...]}``),
    checked: integers in ``[0, size)``, no repeats, written for ``size`` training scenes and
    for the data's ``settings`` (``caption_noise``, ``noise_seed``, ``world_seed``: the
    filter scored those pairs; other ones would train on a selection made for other data).
    Errors name the file and the field."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"keep file {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None
    indices = data.get("indices") if isinstance(data, dict) else None
    if not isinstance(indices, list) or not indices:
        raise ValueError(f"{path}: expected a JSON object with a non-empty list 'indices'")
    for k, i in enumerate(indices):
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < size:
            raise ValueError(f"{path}: indices[{k}] = {i!r} is not a scene index in [0, {size})")
    if len(set(indices)) != len(indices):
        raise ValueError(f"{path}: 'indices' repeats a scene")
    if isinstance(data.get("train_size"), int) and data["train_size"] != size:
        raise ValueError(f"{path} was written for {data['train_size']} training scenes, the data has {size}")
    for name, value in settings.items():
        if name in data and data[name] != value:
            raise ValueError(
                f"{path} was written for {name}={data[name]!r}, the data has {name}={value!r}: "
                "filter the same pairs the data trains on"
            )
    return list(indices)


class KeptPairs(Dataset):
    """The items of ``dataset`` at ``indices`` (a filter's choice), in that order.

    Hand-written rather than :class:`torch.utils.data.Subset`: that class defines
    ``__getitems__``, which the data loader calls with the resumable sampler's keys
    (:mod:`flava_zoo.data.resume`, not plain integers) and which does not pass them to the
    wrapped dataset's ``__getitem__``."""

    def __init__(self, dataset: Any, indices: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: Any) -> Any:
        return self.dataset[self.indices[index]]
