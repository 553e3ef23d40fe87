"""LightningDataModules for pretraining on real data: manifests, shards, corpora, image folders.

Each module reads one kind of source from :mod:`flava_zoo.data.sources`;
:class:`MultiSourceDataModule` mixes several by weight, one source per batch, as FLAVA
mixes its unimodal and paired datasets. All of them collate with :class:`PretrainCollator`,
:class:`MLMMasker` and :class:`BlockMasker` exactly as
:class:`~flava_zoo.data.datamodules.ShapesPretrainData` does, so their batches feed
:class:`~flava_zoo.training.FlavaPretrainModule` unchanged. Bad samples are skipped,
replaced by another readable sample of the same rank (so a batch keeps its size and DDP
ranks contribute equal rows to the contrastive all-gather; see
:class:`~flava_zoo.data.sources.ReplaceUnreadable`) and counted (``num_skipped`` in every
batch, logged each epoch by the module) or, with ``strict=True``, stop the run at once.

Resume (``--ckpt_path last``): the training loaders' positions are in every checkpoint.
Map-style datasets are read through :func:`~flava_zoo.data.resume.resumable_loader`, so a
resumed run trains on exactly the batches (samples, crops, captions, masks) the
uninterrupted run would have; streams (webdataset, :class:`MultiSourceBatches`) are wrapped
in :class:`~flava_zoo.data.resume.ResumableStream`, which re-reads the resumed epoch's
stream and drops what the killed run trained on, so no sample of that epoch repeats.

Distinct data per DDP rank: map-style datasets get Lightning's ``DistributedSampler``;
webdataset shards are split whole over ranks, then workers; :class:`MultiSourceBatches`
slices every source by rank itself.
"""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset, IterableDataset

from ..tokenizer import FlavaTokenizer
from ..transforms import image_transform
from .collate import PretrainCollator, pretrain_collator
from .resume import ResumableStream, ResumableStreamLoader, resumable_loader, trainer_progress
from .sources import (
    DEFAULT_CAPTION_SEPARATOR,
    ImageFolderImages,
    MultiSourceBatches,
    PairManifest,
    TextCorpus,
    default_num_batches,
    distributed_info,
    expand_shards,
    replace_unreadable,
    webdataset_pairs,
)

SOURCE_KINDS: dict[str, tuple[set[str], set[str]]] = {
    "pairs": (
        {"manifest"},
        {"image_root", "image_key", "caption_key", "caption_separator", "captions"},
    ),
    "webdataset": ({"urls"}, {"shuffle_buffer", "captions"}),
    "text": ({"files"}, {"text_key"}),
    "images": ({"root"}, set()),
}
"""Kinds of :class:`MultiSourceDataModule` sources: (required keys, optional keys)."""
COMMON_SOURCE_KEYS = {"kind", "weight", "batch_size", "name"}
"""Keys every source may set besides its kind's own."""


def load_tokenizer(folder: str | None, needed_by: str) -> FlavaTokenizer:
    """The tokenizer saved in ``folder``; a clear error when a text source has none."""
    if not folder:
        raise ValueError(f"{needed_by} reads text and needs a tokenizer folder (tokenizer=...)")
    return FlavaTokenizer.from_pretrained(folder)


def _current_epoch(module: L.LightningDataModule) -> int:
    trainer = getattr(module, "trainer", None)
    return int(trainer.current_epoch) if trainer is not None else 0


def _stream_loader(
    module: L.LightningDataModule, batches: MultiSourceBatches, workers: int
) -> ResumableStreamLoader:
    """Training loader of whole batches whose position is checkpointed: a resumed epoch
    drops the batches the killed run trained on (:class:`ResumableStream`)."""
    loader = ResumableStreamLoader(
        ResumableStream(batches),
        batch_size=None,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    loader.progress = trainer_progress(module)
    return loader


class _RealData(L.LightningDataModule):
    """Shared loaders: map-style datasets shuffled for training, iterable ones as they come."""

    collate: PretrainCollator

    def dataset(self, split: str) -> Dataset | None:
        """The dataset of ``split`` (``train`` or ``val``), ``None`` when not configured."""
        raise NotImplementedError

    def _loader(self, dataset: Dataset, train: bool, num_workers: int | None = None) -> DataLoader:
        workers = self.hparams.num_workers if num_workers is None else num_workers
        dataset = replace_unreadable(dataset)  # a bad sample never shrinks a rank's batch
        if not isinstance(dataset, IterableDataset):  # resumable mid-epoch (data/resume.py)
            return resumable_loader(
                dataset,
                batch_size=self.hparams.batch_size,
                shuffle=train,
                num_workers=workers,
                collate_fn=self.collate,
                drop_last=train,
            )
        if train:  # a resumed epoch skips the samples already trained on (ResumableStream)
            dataset = ResumableStream(dataset, self.hparams.batch_size, _current_epoch(self))
        loader = (ResumableStreamLoader if train else DataLoader)(
            dataset,
            batch_size=self.hparams.batch_size,
            num_workers=workers,
            collate_fn=self.collate,
            drop_last=train,
            persistent_workers=workers > 0,
        )
        if train:
            loader.progress = trainer_progress(self)
        return loader

    def train_dataloader(self) -> DataLoader:
        """Training batches (shuffled; the last incomplete batch is dropped)."""
        return self._loader(self.dataset("train"), train=True)

    def val_dataloader(self) -> DataLoader | list:
        """Validation batches in order (none without a validation source)."""
        dataset = self.dataset("val")
        return [] if dataset is None else self._loader(dataset, train=False)


class PairsDataModule(_RealData):
    """Image-caption pairs from JSONL / CSV / TSV manifests (see :class:`PairManifest`).

    Args:
        train_manifest: training manifest.
        tokenizer: folder of a saved :class:`FlavaTokenizer` (``vocab.txt``).
        val_manifest: validation manifest (read with the first caption of each image).
        image_root: folder image paths are relative to (default: each manifest's folder).
        image_key: image path field / column.
        caption_key: caption field(s) / column(s); default ``captions``, else ``caption``.
        caption_separator: splits a CSV / TSV caption cell into several captions.
        captions: training captions: ``random`` (one per image per access) or ``all`` (one
            sample per caption).
        image_size: model input side in pixels.
        patch_size: the model's patch size (the image masker works on its grid).
        augment: random resized crops for training (FLAVA's scale 0.9-1); else resize + centre crop.
        batch_size: samples per batch.
        num_workers: data-loader worker processes.
        max_length: text length cap in tokens.
        mlm_probability: fraction of text tokens selected for MLM / MMM-text.
        mask_ratio: fraction of image patches masked for MIM / MMM-image.
        mask_seed: seed of the maskers' generators.
        strict: stop at the first bad sample instead of skipping it.
    """

    def __init__(
        self,
        train_manifest: str,
        tokenizer: str,
        val_manifest: str | None = None,
        image_root: str | None = None,
        image_key: str = "image",
        caption_key: str | list[str] | None = None,
        caption_separator: str | None = DEFAULT_CAPTION_SEPARATOR,
        captions: str = "random",
        image_size: int = 224,
        patch_size: int = 16,
        augment: bool = True,
        batch_size: int = 64,
        num_workers: int = 0,
        max_length: int = 77,
        mlm_probability: float = 0.15,
        mask_ratio: float = 0.4,
        mask_seed: int = 0,
        strict: bool = False,
    ) -> None:
        super().__init__()
        if captions not in ("random", "all"):
            raise ValueError(f"captions must be 'random' or 'all', got {captions!r}")
        self.save_hyperparameters()
        self.tokenizer = load_tokenizer(tokenizer, "PairsDataModule")
        self.collate = pretrain_collator(
            self.tokenizer,
            image_size,
            patch_size,
            max_length,
            mlm_probability,
            mask_ratio,
            mask_seed,
        )

    def dataset(self, split: str) -> PairManifest | None:
        """The manifest dataset of ``split`` (``train`` or ``val``)."""
        hp = self.hparams
        path = {"train": hp.train_manifest, "val": hp.val_manifest}[split]
        if path is None:
            return None
        train = split == "train"
        return PairManifest(
            path,
            image_root=hp.image_root,
            transform=image_transform(hp.image_size, train=train and hp.augment),
            strict=hp.strict,
            caption_key=hp.caption_key,
            image_key=hp.image_key,
            captions=hp.captions if train else "first",
            caption_separator=hp.caption_separator,
        )


class TextCorpusDataModule(_RealData):
    """Text-only batches for MLM from ``.txt`` / ``.jsonl`` corpora (see :class:`TextCorpus`).

    Args:
        train_files: training corpus file(s).
        tokenizer: folder of a saved :class:`FlavaTokenizer`.
        val_files: validation corpus file(s).
        text_key: text field of JSONL records.
        batch_size: samples per batch.
        num_workers: data-loader worker processes.
        max_length: text length cap in tokens.
        mlm_probability: fraction of tokens selected for MLM.
        mask_seed: seed of the masker's generator.
        strict: stop at the first empty text instead of skipping it.
    """

    def __init__(
        self,
        train_files: str | list[str],
        tokenizer: str,
        val_files: str | list[str] | None = None,
        text_key: str = "text",
        batch_size: int = 64,
        num_workers: int = 0,
        max_length: int = 77,
        mlm_probability: float = 0.15,
        mask_seed: int = 0,
        strict: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.tokenizer = load_tokenizer(tokenizer, "TextCorpusDataModule")
        self.collate = pretrain_collator(
            self.tokenizer,
            max_length=max_length,
            mlm_probability=mlm_probability,
            mask_seed=mask_seed,
        )

    def dataset(self, split: str) -> TextCorpus | None:
        """The corpus of ``split`` (``train`` or ``val``)."""
        files = {"train": self.hparams.train_files, "val": self.hparams.val_files}[split]
        return (
            None if files is None else TextCorpus(files, self.hparams.text_key, self.hparams.strict)
        )


class ImageFolderDataModule(_RealData):
    """Image-only batches for MIM from folders of images (see :class:`ImageFolderImages`).

    Args:
        train_root: folder of training images (searched at any depth).
        val_root: folder of validation images.
        image_size: model input side in pixels.
        patch_size: the model's patch size.
        augment: random resized crops for training.
        batch_size: samples per batch.
        num_workers: data-loader worker processes.
        mask_ratio: fraction of patches masked for MIM.
        mask_seed: seed of the masker's generator.
        strict: stop at the first corrupt image instead of skipping it.
    """

    def __init__(
        self,
        train_root: str,
        val_root: str | None = None,
        image_size: int = 224,
        patch_size: int = 16,
        augment: bool = True,
        batch_size: int = 64,
        num_workers: int = 0,
        mask_ratio: float = 0.4,
        mask_seed: int = 0,
        strict: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.collate = pretrain_collator(
            None, image_size, patch_size, mask_ratio=mask_ratio, mask_seed=mask_seed
        )

    def dataset(self, split: str) -> ImageFolderImages | None:
        """The image folder of ``split`` (``train`` or ``val``)."""
        hp = self.hparams
        root = {"train": hp.train_root, "val": hp.val_root}[split]
        if root is None:
            return None
        transform = image_transform(hp.image_size, train=split == "train" and hp.augment)
        return ImageFolderImages(root, transform=transform, strict=hp.strict)


class WebDatasetPairsDataModule(_RealData):
    """Image-caption pairs streamed from webdataset tar shards (see :func:`webdataset_pairs`).

    Shards are split whole over DDP ranks, then over each rank's workers. Fewer shards than
    ranks is an error; when a rank has fewer shards than ``num_workers``, its loader uses one
    worker per shard (with a warning). Without ``batches_per_epoch`` an epoch is one pass
    over the rank's shards, so ranks only stay in step (as DDP needs) when shards divide
    evenly and hold equal samples; with it, every rank yields exactly that many training
    batches, cycling its shards as needed (the safe choice for DDP). Validation is one pass.

    Args:
        train_urls: training shards: a brace pattern (``shards/train-{000..099}.tar``) or a list.
        tokenizer: folder of a saved :class:`FlavaTokenizer`.
        val_urls: validation shards.
        image_size: model input side in pixels.
        patch_size: the model's patch size.
        augment: random resized crops for training.
        batch_size: samples per batch.
        num_workers: data-loader worker processes per rank.
        max_length: text length cap in tokens.
        mlm_probability: fraction of text tokens selected for MLM / MMM-text.
        mask_ratio: fraction of image patches masked for MIM / MMM-image.
        mask_seed: seed of the maskers' generators.
        strict: stop at the first broken shard member instead of skipping it.
        shuffle_buffer: training samples shuffled in a buffer of this size (shards are
            shuffled too, per epoch).
        captions: ``random`` or ``first`` caption of a ``json`` member's ``captions`` list.
        batches_per_epoch: fixed training epoch length per rank (see above).
        seed: seed of the shard and sample shuffles.
    """

    def __init__(
        self,
        train_urls: str | list[str],
        tokenizer: str,
        val_urls: str | list[str] | None = None,
        image_size: int = 224,
        patch_size: int = 16,
        augment: bool = True,
        batch_size: int = 64,
        num_workers: int = 0,
        max_length: int = 77,
        mlm_probability: float = 0.15,
        mask_ratio: float = 0.4,
        mask_seed: int = 0,
        strict: bool = False,
        shuffle_buffer: int = 1000,
        captions: str = "random",
        batches_per_epoch: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.tokenizer = load_tokenizer(tokenizer, "WebDatasetPairsDataModule")
        self.collate = pretrain_collator(
            self.tokenizer,
            image_size,
            patch_size,
            max_length,
            mlm_probability,
            mask_ratio,
            mask_seed,
        )

    def _workers(self, urls: str | list[str], world_size: int) -> int:
        per_rank = len(expand_shards(urls)) // world_size
        workers = self.hparams.num_workers
        if per_rank and workers > per_rank:
            warnings.warn(
                f"{per_rank} webdataset shard(s) per rank for num_workers={workers}: "
                f"using {per_rank} worker(s) so that none is idle",
                stacklevel=3,
            )
            return per_rank
        return workers

    def train_dataloader(self) -> DataLoader:
        """Training batches: shuffled shards and samples; a fixed length with ``batches_per_epoch``."""
        hp = self.hparams
        rank, world_size = distributed_info()
        pipeline = webdataset_pairs(
            hp.train_urls,
            transform=image_transform(hp.image_size, train=hp.augment),
            shuffle_buffer=hp.shuffle_buffer,
            strict=hp.strict,
            captions=hp.captions,
            seed=hp.seed,
            rank=rank,
            world_size=world_size,
        )
        workers = self._workers(hp.train_urls, world_size)
        if hp.batches_per_epoch is None:
            shards = len(expand_shards(hp.train_urls))
            if shards % world_size:
                warnings.warn(
                    f"{shards} webdataset shards do not divide evenly over {world_size} ranks: "
                    "ranks will see different numbers of batches, which DDP cannot handle; "
                    "set batches_per_epoch",
                    stacklevel=2,
                )
            return self._loader(pipeline, train=True, num_workers=workers)
        batches = MultiSourceBatches(
            [pipeline],
            [1.0],
            hp.batch_size,
            self.collate,
            hp.batches_per_epoch,
            seed=hp.seed,
            rank=rank,
            world_size=world_size,
            epoch=_current_epoch(self),
            names=[str(hp.train_urls)],
        )
        return _stream_loader(self, batches, workers)

    def val_dataloader(self) -> DataLoader | list:
        """Validation batches: one pass, shards and samples in order, first captions."""
        hp = self.hparams
        if hp.val_urls is None:
            return []
        rank, world_size = distributed_info()
        pipeline = webdataset_pairs(
            hp.val_urls,
            transform=image_transform(hp.image_size, train=False),
            strict=hp.strict,
            captions="first",
            rank=rank,
            world_size=world_size,
        )
        return self._loader(
            pipeline, train=False, num_workers=self._workers(hp.val_urls, world_size)
        )


class MultiSourceDataModule(L.LightningDataModule):
    """Mix unimodal and paired sources by weight, each batch from one source (FLAVA's sampling).

    A source is a dict with ``kind`` and the kind's fields, plus optional ``weight`` (default
    1), ``batch_size`` (default the module's) and ``name``:

    - ``{"kind": "pairs", "manifest": ..., "image_root", "image_key", "caption_key",
      "caption_separator", "captions"}`` (:class:`PairManifest`);
    - ``{"kind": "webdataset", "urls": ..., "shuffle_buffer", "captions"}`` (:func:`webdataset_pairs`);
    - ``{"kind": "text", "files": ..., "text_key"}`` (:class:`TextCorpus`);
    - ``{"kind": "images", "root": ...}`` (:class:`ImageFolderImages`).

    Batches come from :class:`MultiSourceBatches`: the source of each step is drawn by weight
    from a schedule seeded by ``(seed, epoch)`` and shared by all DDP ranks, while each rank
    reads its own slice of every source (webdataset shards split whole over ranks and
    workers), so ranks get distinct data but the same kind of batch at each step. An image-
    only batch trains MIM, a text-only one MLM, a paired one the multimodal losses: in
    ``stage="multimodal"`` give ``mim`` and ``mlm`` positive ``loss_weights``, and under DDP use
    ``strategy="ddp_find_unused_parameters_true"`` (a unimodal step leaves a tower unused).

    An epoch is ``batches_per_epoch`` batches per rank; by default, with only map-style
    sources, as many as one pass over every source takes. Validation (``val_sources``, same
    format) draws ``val_batches`` batches with the same weights, unshuffled, the same every time.

    Args:
        sources: the training sources (see above).
        tokenizer: folder of a saved :class:`FlavaTokenizer` (needed by text-bearing sources).
        val_sources: validation sources.
        image_size: model input side in pixels.
        patch_size: the model's patch size.
        augment: random resized crops for training images.
        batch_size: samples per batch (a source's ``batch_size`` overrides it).
        num_workers: data-loader worker processes per rank.
        max_length: text length cap in tokens.
        mlm_probability: fraction of text tokens selected for MLM / MMM-text.
        mask_ratio: fraction of image patches masked for MIM / MMM-image.
        mask_seed: seed of the maskers' generators.
        strict: stop at the first bad sample instead of skipping it.
        schedule: ``random`` (seeded draws by weight) or ``round_robin`` (smooth weighted
            round-robin, exact shares).
        seed: seed of the schedule, the per-source permutations and the shard shuffles.
        batches_per_epoch: training batches per epoch on each rank (required with webdataset sources).
        val_batches: validation batches per rank (default like ``batches_per_epoch``).
    """

    def __init__(
        self,
        sources: list[dict[str, Any]],
        tokenizer: str | None = None,
        val_sources: list[dict[str, Any]] | None = None,
        image_size: int = 224,
        patch_size: int = 16,
        augment: bool = True,
        batch_size: int = 64,
        num_workers: int = 0,
        max_length: int = 77,
        mlm_probability: float = 0.15,
        mask_ratio: float = 0.4,
        mask_seed: int = 0,
        strict: bool = False,
        schedule: str = "random",
        seed: int = 0,
        batches_per_epoch: int | None = None,
        val_batches: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.sources = [self._check_source(i, s, "sources") for i, s in enumerate(sources)]
        if not self.sources:
            raise ValueError("MultiSourceDataModule needs at least one source")
        self.val_sources = [
            self._check_source(i, s, "val_sources") for i, s in enumerate(val_sources or [])
        ]
        text = any(s["kind"] != "images" for s in self.sources + self.val_sources)
        self.tokenizer = load_tokenizer(tokenizer, "MultiSourceDataModule") if text else None
        self.collate = pretrain_collator(
            self.tokenizer,
            image_size,
            patch_size,
            max_length,
            mlm_probability,
            mask_ratio,
            mask_seed,
        )

    @staticmethod
    def _check_source(index: int, spec: dict[str, Any], field: str) -> dict[str, Any]:
        where = f"{field}[{index}]"
        if not isinstance(spec, dict) or spec.get("kind") not in SOURCE_KINDS:
            kind = spec.get("kind") if isinstance(spec, dict) else spec
            raise ValueError(f"{where}: kind must be one of {sorted(SOURCE_KINDS)}, got {kind!r}")
        required, optional = SOURCE_KINDS[spec["kind"]]
        missing = sorted(required - set(spec))
        if missing:
            raise ValueError(f"{where} ({spec['kind']}): missing field(s) {missing}")
        unknown = sorted(set(spec) - required - optional - COMMON_SOURCE_KEYS)
        if unknown:
            raise ValueError(
                f"{where} ({spec['kind']}): unknown field(s) {unknown}; "
                f"valid: {sorted(required | optional | COMMON_SOURCE_KEYS)}"
            )
        weight = spec.get("weight", 1.0)
        if not isinstance(weight, (int, float)) or weight < 0:
            raise ValueError(f"{where}: weight must be a non-negative number, got {weight!r}")
        return dict(spec)

    def _build(self, spec: dict[str, Any], train: bool, rank: int, world_size: int) -> Dataset:
        hp = self.hparams
        kind = spec["kind"]
        transform = image_transform(hp.image_size, train=train and hp.augment)
        if kind == "pairs":
            return PairManifest(
                spec["manifest"],
                image_root=spec.get("image_root"),
                transform=transform,
                strict=hp.strict,
                caption_key=spec.get("caption_key"),
                image_key=spec.get("image_key", "image"),
                captions=spec.get("captions", "random") if train else "first",
                caption_separator=spec.get("caption_separator", DEFAULT_CAPTION_SEPARATOR),
            )
        if kind == "webdataset":
            shards = len(expand_shards(spec["urls"]))
            workers = max(1, hp.num_workers)
            if shards < world_size * workers:
                raise ValueError(
                    f"webdataset source {spec['urls']!r} has {shards} shard(s), fewer than "
                    f"{world_size} rank(s) x {workers} worker(s): every worker needs a whole shard"
                )
            return webdataset_pairs(
                spec["urls"],
                transform=transform,
                shuffle_buffer=spec.get("shuffle_buffer", 1000) if train else 0,
                strict=hp.strict,
                captions=spec.get("captions", "random") if train else "first",
                seed=hp.seed,
                rank=rank,
                world_size=world_size,
            )
        if kind == "text":
            return TextCorpus(spec["files"], spec.get("text_key", "text"), hp.strict)
        return ImageFolderImages(spec["root"], transform=transform, strict=hp.strict)

    def batches(self, split: str = "train") -> MultiSourceBatches:
        """The mixed batch stream of ``split`` (``train`` or ``val``) for this rank."""
        hp = self.hparams
        train = split == "train"
        specs = self.sources if train else self.val_sources
        rank, world_size = distributed_info()
        datasets = [self._build(spec, train, rank, world_size) for spec in specs]
        sizes = [int(spec.get("batch_size", hp.batch_size)) for spec in specs]
        num_batches = hp.batches_per_epoch if train else hp.val_batches or hp.batches_per_epoch
        if num_batches is None:
            num_batches = default_num_batches(datasets, sizes, world_size)
        names = [
            spec.get("name") or f"{split} source {i} ({spec['kind']})"
            for i, spec in enumerate(specs)
        ]
        return MultiSourceBatches(
            datasets,
            [float(spec.get("weight", 1.0)) for spec in specs],
            sizes,
            self.collate,
            num_batches,
            schedule=hp.schedule,
            seed=hp.seed,
            shuffle=train,
            rank=rank,
            world_size=world_size,
            epoch=_current_epoch(self) if train else 0,
            advance_epoch=train,
            names=names,
        )

    def _loader(self, split: str) -> DataLoader:
        workers = self.hparams.num_workers
        if split == "train":  # a resumed epoch skips the batches already trained on
            return _stream_loader(self, self.batches(split), workers)
        return DataLoader(
            self.batches(split),
            batch_size=None,
            num_workers=workers,
            persistent_workers=workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Mixed training batches, ``batches_per_epoch`` per epoch."""
        return self._loader("train")

    def val_dataloader(self) -> DataLoader | list:
        """Mixed validation batches (none without ``val_sources``)."""
        return self._loader("val") if self.val_sources else []
