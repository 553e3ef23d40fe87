"""Data-loading speed: samples/s of one DataLoader worker's pipeline for flava-tiny pretraining.

Answers "is the data pipeline fast enough not to starve training?": each source runs as a
worker runs it (in this process, ``num_workers=0``, one torch thread), one untimed batch,
then ``batches`` timed ones:

* ``shapes``: :class:`~flava_zoo.data.datamodules.ShapesPretrainData`, multimodal stage
  (render, transform, draw a caption, tokenise, mask text and image patches);
* ``webdataset``: :class:`~flava_zoo.data.real.WebDatasetPairsDataModule` over tar shards
  written first to a temporary folder from shapes images (JPEG, quality 90) and captions:
  read, decode, random resized crop, shuffle buffer, tokenise, mask. The shards sit in the
  page cache: no disk or network time is included.
"""

from __future__ import annotations

import io
import json
import statistics
import tarfile
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

__all__ = ["measure_data", "time_batches", "write_shards"]

MODEL = "flava-tiny"


def time_batches(batches: Iterable[Any], warmup: int, count: int) -> dict[str, Any]:
    """Pull ``warmup`` untimed then ``count`` timed batches; samples/s over the timed ones."""
    iterator = iter(batches)
    for _ in range(warmup):
        next(iterator)
    walls, samples = [], 0
    for _ in range(count):
        t0 = time.perf_counter()
        batch = next(iterator)
        walls.append(time.perf_counter() - t0)
        samples += int(batch["pixel_values"].shape[0])
    return {"batches": count, "samples": samples, "samples_per_s": round(samples / sum(walls), 1),
            "ms_per_batch_median": round(1e3 * statistics.median(walls), 2)}


def write_shards(world: Any, folder: Path, samples: int, shards: int) -> list[str]:
    """Webdataset tar shards of the first ``samples`` training scenes of ``world``: a ``jpg``
    member (quality 90) and a ``json`` member with the scene's captions per sample."""
    if not 1 <= shards <= samples <= world.split_size("train"):
        raise ValueError(f"need 1 <= shards ({shards}) <= samples ({samples}) <= the world's train split")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(shards):
        path = folder / f"shapes-{s:04d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(s, samples, shards):
                buffer = io.BytesIO()
                world.image("train", i).save(buffer, format="JPEG", quality=90)
                meta = json.dumps({"captions": world.scene_captions("train", i)}).encode()
                for name, data in ((f"{i:07d}.jpg", buffer.getvalue()), (f"{i:07d}.json", meta)):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        paths.append(str(path))
    return paths


def measure_data(batch: int, batches: int, train_size: int, wds_samples: int, shards: int = 4) -> list[dict[str, Any]]:
    """One row per data source (shapes, webdataset) at ``flava-tiny``'s image and patch size."""
    import flava_zoo
    from flava_zoo.data.datamodules import ShapesPretrainData
    from flava_zoo.data.real import WebDatasetPairsDataModule

    cfg = flava_zoo.get_config(MODEL)
    size, patch, max_length = cfg.image.image_size, cfg.image.patch_size, min(48, cfg.text.max_position_embeddings)
    if (batches + 1) * batch > train_size:
        raise ValueError(f"{(batches + 1) * batch} shapes samples needed but the train size is {train_size}")
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # what PyTorch gives each DataLoader worker
    try:
        shapes = ShapesPretrainData(stage="multimodal", image_size=size, patch_size=patch, train_size=train_size,
                                    val_size=max(batch, 16), batch_size=batch, num_workers=0, max_length=max_length)
        rows = [dict(time_batches(shapes.train_dataloader(), 1, batches),
                     source="shapes world (render, transform, tokenise, mask)")]
        with tempfile.TemporaryDirectory(prefix="flava_speed_") as tmp:
            paths = write_shards(shapes.world, Path(tmp) / "shards", min(wds_samples, train_size), shards)
            shapes.tokenizer.save(Path(tmp) / "tokenizer")
            wds = WebDatasetPairsDataModule(paths, str(Path(tmp) / "tokenizer"), image_size=size, patch_size=patch,
                                            batch_size=batch, num_workers=0, max_length=max_length,
                                            shuffle_buffer=256, batches_per_epoch=batches + 1)
            rows.append(dict(time_batches(wds.train_dataloader(), 1, batches),
                             source=f"webdataset shards ({len(paths)} jpg tars: read, decode, crop, tokenise, mask)"))
    finally:
        torch.set_num_threads(before)
    return rows
