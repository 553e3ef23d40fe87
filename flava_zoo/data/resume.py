"""Exact resume of map-style training data.

A run killed mid-epoch and resumed with ``--ckpt_path last`` must see the batches the
uninterrupted run would have seen, masks included. :func:`resumable_loader` builds the
``DataLoader`` every map-style data module uses; it makes each batch a function of
``(seed, epoch, batch number)`` only, and lets Lightning save and restore its position:

- **Order**: :class:`EpochRandomSampler` shuffles by ``(seed, epoch)`` (Lightning calls its
  ``set_epoch`` every epoch), not by the global RNG, which Lightning does not checkpoint.
  Under DDP Lightning swaps it for its ``DistributedSampler``, also seeded by
  ``(seed, epoch)``.
- **Keys**: :class:`KeyedBatchSampler` yields ``(index, epoch, batch, rank)`` keys;
  :class:`KeyedDataset` reads ``index`` with torch's RNG seeded by ``(seed, epoch, index)``
  (random captions, random crops) and tags the sample with ``(epoch, batch, rank)``, from
  which :class:`~flava_zoo.data.collate.PretrainCollator` re-seeds its maskers
  (:meth:`~flava_zoo.masking.MLMMasker.reseed`). So masks do not depend on ``num_workers``
  nor on the batches drawn before, validation included.
- **Position**: :class:`ResumableDataLoader` implements ``state_dict`` / ``load_state_dict``,
  which Lightning's fit loop stores in every checkpoint (``loops.fit_loop.state_dict.
  combined_loader``) and restores before the first batch of a resumed run: the epoch and the
  batches of it already handed out. The resumed loader skips that many batches of indices
  (without reading them) and continues with the next one.

The seed is Lightning's global seed (``seed_everything``, ``PL_GLOBAL_SEED``), the one its
``DistributedSampler`` uses too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
    get_worker_info,
)

from ..masking import mix_seed

BATCH_KEY = "_batch_key"
"""Sample field holding the ``(epoch, batch, rank)`` key of its batch (read by the collator)."""
_ORDER, _SAMPLE = 0x0D0E, 0x5A3E


def global_seed() -> int:
    """Lightning's global seed (``PL_GLOBAL_SEED``, set by ``seed_everything``), else 0."""
    try:
        return abs(int(os.environ.get("PL_GLOBAL_SEED", 0)))
    except ValueError:
        return 0


class EpochRandomSampler(RandomSampler):
    """A random order of ``data_source`` that depends only on ``(seed, epoch)``.

    A ``RandomSampler`` (so Lightning treats the loader as shuffled and, under DDP, replaces
    it by its seeded ``DistributedSampler``) whose permutation is drawn from a generator seeded
    by ``seed`` and the epoch that ``set_epoch`` set, not from the global RNG.
    """

    def __init__(self, data_source: Any, seed: int = 0) -> None:
        super().__init__(data_source)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` from the next iteration on."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, _ORDER))
        yield from torch.randperm(len(self.data_source), generator=generator).tolist()


class KeyedBatchSampler(BatchSampler):
    """Batches of ``(index, epoch, batch, rank)`` keys; skips the first batches of a resumed epoch.

    ``epoch`` and ``rank`` are read from the sampler (an :class:`EpochRandomSampler` or a
    ``DistributedSampler``; 0 for a sequential one). :meth:`resume_at` makes the next iteration
    of that epoch start at batch ``batch`` (the indices before it are drawn, not read).
    """

    def __init__(self, sampler: Sampler[int], batch_size: int, drop_last: bool) -> None:
        super().__init__(sampler, batch_size, drop_last)
        self.start = 0
        self.start_epoch: int | None = None

    @property
    def epoch(self) -> int:
        """The epoch of the next iteration."""
        return int(getattr(self.sampler, "epoch", 0))

    def resume_at(self, epoch: int, batch: int) -> None:
        """Start the next iteration, if it is of ``epoch``, at batch number ``batch``."""
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        self.start, self.start_epoch = int(batch), int(epoch)

    def first_batch(self) -> int:
        """The batch number the next iteration starts at."""
        return self.start if self.start_epoch == self.epoch else 0

    def __iter__(self) -> Iterator[list[tuple[int, int, int, int]]]:
        epoch, start = self.epoch, self.first_batch()
        self.start, self.start_epoch = 0, None
        rank = int(getattr(self.sampler, "rank", 0))
        batch: list[int] = []
        number = 0
        for index in self.sampler:
            batch.append(int(index))
            if len(batch) == self.batch_size:
                if number >= start:
                    yield [(i, epoch, number, rank) for i in batch]
                number += 1
                batch = []
        if batch and not self.drop_last and number >= start:
            yield [(i, epoch, number, rank) for i in batch]


class KeyedDataset(Dataset):
    """Read ``dataset`` by ``(index, epoch, batch, rank)`` keys (plain indices work too).

    A keyed read runs with torch's CPU RNG seeded by ``(seed, epoch, index)`` (its state is
    restored afterwards), so a sample's random caption or crop is the same whenever that
    sample is read in that epoch; a dict sample gets ``BATCH_KEY = (epoch, batch, rank)``.
    Other attributes are the wrapped dataset's.
    """

    def __init__(self, dataset: Dataset, seed: int = 0) -> None:
        self.dataset = dataset
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: Any) -> Any:
        if not isinstance(key, tuple):
            return self.dataset[key]
        index, epoch, number, rank = key
        state = torch.get_rng_state()  # like torch.random.fork_rng, without its cost per sample
        torch.default_generator.manual_seed(mix_seed(self.seed, epoch, index, _SAMPLE))
        try:
            sample = self.dataset[index]
        finally:
            torch.set_rng_state(state)
        if isinstance(sample, dict):
            sample = {**sample, BATCH_KEY: (epoch, number, rank)}
        return sample

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not set yet (unpickling)
            raise AttributeError(name)
        return getattr(self.dataset, name)


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` over a :class:`KeyedDataset` and a :class:`KeyedBatchSampler` whose
    position Lightning saves in checkpoints and restores on resume.

    ``state_dict()`` is ``{"epoch", "batches", "batch_size"}``: the epoch being read and how
    many of its batches were handed out (map-style loaders have a length, so Lightning does
    not prefetch: handed out means trained on). ``load_state_dict`` makes the next iteration
    continue after them; a saved position at the end of an epoch continues with the next one.
    Build it with :func:`resumable_loader`.
    """

    _epoch = 0
    _consumed = 0

    def __iter__(self) -> Iterator[Any]:
        sampler = self.batch_sampler
        self._epoch = int(getattr(sampler, "epoch", 0))
        self._consumed = sampler.first_batch() if isinstance(sampler, KeyedBatchSampler) else 0
        return self._count(super().__iter__())

    def _count(self, iterator: Iterator[Any]) -> Iterator[Any]:
        for batch in iterator:
            self._consumed += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """The epoch being read and how many of its batches were handed out."""
        size = getattr(self.batch_sampler, "batch_size", None) or 0
        return {"epoch": self._epoch, "batches": self._consumed, "batch_size": int(size)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue after the batches ``state`` says were handed out (see the class docstring)."""
        epoch, batches = int(state.get("epoch", 0)), int(state.get("batches", 0))
        saved_size = int(state.get("batch_size", 0) or 0)
        size = int(getattr(self.batch_sampler, "batch_size", 0) or 0)
        if saved_size and size and saved_size != size:  # keep the samples, not the batch count
            batches = batches * saved_size // size
        if batches >= len(self):
            epoch, batches = epoch + 1, 0
        if isinstance(self.batch_sampler, KeyedBatchSampler):
            self.batch_sampler.resume_at(epoch, batches)
        self._epoch, self._consumed = epoch, batches


def resumable_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    num_workers: int = 0,
    drop_last: bool = False,
    seed: int | None = None,
    **kwargs: Any,
) -> ResumableDataLoader:
    """A :class:`ResumableDataLoader` of map-style ``dataset``: shuffled by
    ``(seed, epoch)`` when ``shuffle`` (``seed`` defaults to :func:`global_seed`), in order
    otherwise; ``kwargs`` go to ``DataLoader`` (``persistent_workers`` defaults to
    ``num_workers > 0``)."""
    seed = global_seed() if seed is None else int(seed)
    keyed = KeyedDataset(dataset, seed)
    sampler = EpochRandomSampler(keyed, seed) if shuffle else SequentialSampler(keyed)
    kwargs.setdefault("persistent_workers", num_workers > 0)
    return ResumableDataLoader(
        keyed,
        batch_sampler=KeyedBatchSampler(sampler, batch_size, drop_last),
        num_workers=num_workers,
        collate_fn=collate_fn,
        **kwargs,
    )


# ----------------------------------------------------------------------------- streams


def set_webdataset_epoch(obj: Any, epoch: int, _seen: set[int] | None = None) -> int:
    """Set the epoch counter of every ``webdataset`` deterministic shard shuffle reachable from
    ``obj`` (through ``.dataset``, ``.sources`` and ``.pipeline``) so that its next pass uses
    ``epoch``; returns how many were set. Without it the counter starts at 0 in every process,
    so a resumed run would read epoch ``e`` in epoch 0's shard order."""
    seen = set() if _seen is None else _seen
    if obj is None or id(obj) in seen or isinstance(obj, (str, bytes, int, float)):
        return 0
    seen.add(id(obj))
    count = 0
    if type(obj).__name__ == "detshuffle" and hasattr(obj, "epoch"):
        obj.epoch = int(epoch) - 1  # ``run`` adds one before shuffling
        return 1
    for name in ("dataset", "sources", "pipeline"):
        child = obj.__dict__.get(name) if hasattr(obj, "__dict__") else None
        for item in child if isinstance(child, (list, tuple)) else [child]:
            count += set_webdataset_epoch(item, epoch, seen)
    return count


class ResumableStream(IterableDataset):
    """An iterable dataset that can start an epoch after the items a killed run consumed.

    ``items_per_batch=None``: ``dataset`` yields whole batches (:class:`MultiSourceBatches`,
    read with ``batch_size=None``), step ``k`` by worker ``k % num_workers``; worker ``w``
    drops its steps before ``start``. Otherwise ``dataset`` yields samples that the
    ``DataLoader`` batches ``items_per_batch`` at a time in each worker, batch ``k`` from
    worker ``k % num_workers``; worker ``w`` drops the samples of its batches before ``start``.
    The dropped items are read (a stream cannot seek), not trained on. Every pass first sets
    the webdataset shard shuffles to this pass's epoch (:func:`set_webdataset_epoch`; a
    :class:`MultiSourceBatches` epoch ``e`` starts at shuffle epoch ``e * 1_000_000``, one more
    per pass over a source), so a resumed epoch reads the stream the killed run read and
    skipping the consumed part repeats no sample. With several workers the first batches
    after a resume come in another order when ``start`` is not a multiple of
    ``num_workers``; with workers whose shards give unequal numbers of batches the worker
    arithmetic is exact only until the first worker runs out.
    """

    def __init__(self, dataset: Any, items_per_batch: int | None = None, epoch: int = 0) -> None:
        self.dataset = dataset
        self.items_per_batch = items_per_batch
        self.epoch = int(getattr(dataset, "epoch", epoch)) if items_per_batch is None else epoch
        self.start = 0

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def resume_at(self, epoch: int, batch: int) -> None:
        """Make the next pass the one of ``epoch``, starting after ``batch`` batches."""
        self.epoch, self.start = int(epoch), int(batch)
        if self.items_per_batch is None and hasattr(self.dataset, "epoch"):
            self.dataset.epoch = int(epoch)

    def __iter__(self) -> Iterator[Any]:
        batched = self.items_per_batch is None
        epoch = int(getattr(self.dataset, "epoch", self.epoch)) if batched else self.epoch
        set_webdataset_epoch(self.dataset, epoch * 1_000_000 if batched else epoch)
        start, self.start = self.start, 0
        self.epoch = epoch + 1
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        mine = max(0, -(-(start - worker) // workers))  # this worker's batches before start
        drop = mine if batched else mine * int(self.items_per_batch)
        for position, item in enumerate(self.dataset):
            if position >= drop:
                yield item


class ResumableStreamLoader(DataLoader):
    """A ``DataLoader`` over a :class:`ResumableStream` whose position Lightning checkpoints.

    ``state_dict()`` is ``{"epoch", "batches"}``: the epoch and the batches of it trained on,
    read from ``progress`` (a callable; the data modules pass the trainer's count, because
    Lightning fetches one batch ahead of a loader without a length) or else counted here.
    ``load_state_dict`` makes the stream's next pass skip them (see :class:`ResumableStream`).
    """

    progress: Callable[[], tuple[int, int] | None] | None = None
    _epoch = 0
    _consumed = 0

    def __iter__(self) -> Iterator[Any]:
        stream = self.dataset
        batched = stream.items_per_batch is None
        self._epoch = int(getattr(stream.dataset, "epoch", stream.epoch)) if batched else stream.epoch
        self._consumed = stream.start
        return self._count(super().__iter__())

    def _count(self, iterator: Iterator[Any]) -> Iterator[Any]:
        for batch in iterator:
            self._consumed += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """The epoch being read and how many of its batches were trained on."""
        known = self.progress() if self.progress is not None else None
        epoch, batches = known if known is not None else (self._epoch, self._consumed)
        return {"epoch": int(epoch), "batches": int(batches)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue after the batches ``state`` says were trained on."""
        epoch, batches = int(state.get("epoch", 0)), int(state.get("batches", 0))
        try:
            length = len(self)
        except TypeError:
            length = None
        if length is not None and batches >= length:
            epoch, batches = epoch + 1, 0
        self.dataset.resume_at(epoch, batches)
        self._epoch, self._consumed = epoch, batches


def trainer_progress(module: Any) -> Callable[[], tuple[int, int] | None]:
    """``(epoch, batches trained on in it)`` of the trainer of ``module`` (a data module), or
    ``None`` outside a fit; for :attr:`ResumableStreamLoader.progress`."""

    def progress() -> tuple[int, int] | None:
        trainer = getattr(module, "trainer", None)
        if trainer is None:
            return None
        return int(trainer.current_epoch), int(
            trainer.fit_loop.epoch_loop.batch_progress.current.processed
        )

    return progress
