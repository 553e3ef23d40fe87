"""Unreadable samples never change a rank's batch size (issue 13, part 1).

The global contrastive loss all-gathers embeddings, which needs every rank to contribute the
same number of rows. A real 2-process DDP run (gloo, forked: ``strategy="ddp_fork"``) over a
pair manifest with a corrupt image, a missing image and an empty caption must finish: each
bad sample is replaced by another readable one of the dataset, so every step has full,
equal batches on both ranks, a finite loss, and the bad samples are still counted in
``data/skipped_samples``. Before the replacement, the rank holding a bad sample had one row
fewer and the gather aborted the job (``gloo::EnforceNotMet``: data size mismatch).
"""

from __future__ import annotations

import datetime
import io
import json
import math
import sys
import tarfile
import warnings
from pathlib import Path

import lightning as L
import PIL.Image
import pytest
import torch

from flava_zoo.data.collate import PretrainCollator
from flava_zoo.data.real import ImageFolderDataModule, PairsDataModule, WebDatasetPairsDataModule
from flava_zoo.data.sources import (
    DataSkipWarning,
    MultiSourceBatches,
    PairManifest,
    ReplaceUnreadable,
    replace_unreadable_stream,
)
from flava_zoo.tokenizer import FlavaTokenizer
from flava_zoo.transforms import image_transform

WORLD_SIZE = 2
BATCH = 4
ROWS = 16  # 8 per rank: 2 steps of 4
BAD = {1: "corrupt", 4: "missing", 7: "empty caption"}  # odd count: some step must be uneven
CAPTIONS = ["a red square", "a blue circle", "a green triangle", "a small cross"]


ONE_THREAD = True
"""One intra-op thread per process for this module's tests (tests/conftest.py)."""


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tokenizer")
    FlavaTokenizer.train(CAPTIONS, vocab_size=100, max_length=16).save(path)
    return path


def write_pairs(root: Path) -> Path:
    """A JSONL manifest of ``ROWS`` pairs whose rows ``BAD`` cannot be read."""
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for row in range(ROWS):
        name = f"img{row}.png"
        if BAD.get(row) == "corrupt":
            (root / name).write_bytes(b"not a png at all")
        elif BAD.get(row) != "missing":
            PIL.Image.new("RGB", (20, 20), (row * 15, 255 - row * 15, 80)).save(root / name)
        caption = "" if BAD.get(row) == "empty caption" else CAPTIONS[row % len(CAPTIONS)]
        lines.append(json.dumps({"image": name, "caption": caption}))
    path = root / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


class BatchSizeProbe(L.Callback):
    """Gather every rank's local batch size at each step; record it, the loss and the counts."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.steps: list[dict] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        local = torch.tensor(int(batch["pixel_values"].shape[0]))
        gathered = pl_module.all_gather(local).reshape(-1).tolist()
        self.steps.append(
            {
                "local": int(local),
                "texts": int(batch["input_ids"].shape[0]),
                "gathered": gathered,
                "num_skipped": int(batch["num_skipped"]),
            }
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.steps[-1]["loss"] = float(loss)

    def on_train_end(self, trainer, pl_module) -> None:
        skipped = float(trainer.callback_metrics["data/skipped_samples"])
        record = {"steps": self.steps, "skipped_samples": skipped}
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def test_ddp_pairs_with_unreadable_samples_keep_equal_batches(tmp_path, tokenizer_dir):
    from lightning.pytorch.strategies import DDPStrategy

    from flava_zoo.training import FlavaPretrainModule

    if not sys.platform.startswith("linux"):
        pytest.skip("forked DDP workers (ddp_fork) need Linux")
    manifest = write_pairs(tmp_path / "data")
    data = PairsDataModule(
        str(manifest),
        str(tokenizer_dir),
        image_size=32,
        batch_size=BATCH,
        max_length=16,
        augment=False,
    )
    module = FlavaPretrainModule(
        model="flava-tiny",
        model_overrides={
            "text.vocab_size": FlavaTokenizer.from_pretrained(tokenizer_dir).vocab_size,
            "image.image_size": 32,
        },
        stage="multimodal",
        loss_weights={"contrastive": 1.0, "itm": 1.0},
        warmup_steps=1,
    )
    trainer = L.Trainer(
        max_steps=2,
        accelerator="cpu",
        devices=WORLD_SIZE,
        strategy=DDPStrategy(start_method="fork", timeout=datetime.timedelta(seconds=60)),
        callbacks=[BatchSizeProbe(tmp_path)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataSkipWarning)
        trainer.fit(module, datamodule=data)

    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD_SIZE)]
    for record in records:
        assert len(record["steps"]) == 2
        for step in record["steps"]:
            assert step["gathered"] == [BATCH] * WORLD_SIZE, record["steps"]
            assert step["local"] == step["texts"] == BATCH
            assert math.isfinite(step["loss"])
    # every bad row is read once per epoch (DistributedSampler: no padding for 16 rows over 2
    # ranks) and replaced by a readable one, so the ranks' counts add up to the bad rows
    assert sum(s["num_skipped"] for r in records for s in r["steps"]) == len(BAD)
    assert sum(r["skipped_samples"] for r in records) == len(BAD)


# ----------------------------------------------------------------------------- single process


def test_replace_unreadable_takes_the_ranks_next_index_and_counts(tmp_path, tokenizer_dir):
    dataset = PairManifest(write_pairs(tmp_path), transform=image_transform(32, train=False))
    wrapped = ReplaceUnreadable(dataset, stride=WORLD_SIZE)
    assert len(wrapped) == ROWS
    with pytest.warns(DataSkipWarning, match="not a recognised image format"):
        replaced = wrapped[1]
    assert replaced["source"] == dataset[3]["source"] and replaced["num_skipped"] == 1
    assert "num_skipped" not in wrapped[0]
    collate = PretrainCollator(FlavaTokenizer.from_pretrained(tokenizer_dir))
    with pytest.warns(DataSkipWarning):
        batch = collate([wrapped[i] for i in (0, 1, 4, 7)])
    assert batch["pixel_values"].shape[0] == batch["input_ids"].shape[0] == 4
    assert batch["num_skipped"] == 3


def test_replace_unreadable_gives_up_after_bounded_tries():
    class AllBad(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 10

        def __getitem__(self, index):
            return None

    with pytest.raises(RuntimeError, match="no readable sample in 3 tries"):
        ReplaceUnreadable(AllBad(), stride=2, max_tries=3)[0]
    stream = replace_unreadable_stream(iter([None, None, None, {"text": "x"}]), "s", max_tries=3)
    with pytest.raises(RuntimeError, match="3 unreadable samples in a row"):
        next(stream)


def test_replace_unreadable_stream_carries_the_count_to_the_next_sample():
    samples = [{"text": "a"}, None, None, {"text": "b"}, {"text": "c"}, None]
    out = list(replace_unreadable_stream(iter(samples), "stream"))
    assert [s["text"] for s in out] == ["a", "b", "c"]
    assert [s.get("num_skipped", 0) for s in out] == [0, 2, 0]


def test_multi_source_batches_replace_within_the_ranks_stream(tmp_path, tokenizer_dir):
    dataset = PairManifest(write_pairs(tmp_path), transform=image_transform(32, train=False))
    collate = PretrainCollator(FlavaTokenizer.from_pretrained(tokenizer_dir))
    for rank in range(WORLD_SIZE):
        batches = MultiSourceBatches(
            [dataset], [1.0], BATCH, collate, 2, shuffle=False, rank=rank, world_size=WORLD_SIZE
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DataSkipWarning)
            out = list(batches)
        assert [b["pixel_values"].shape[0] for b in out] == [BATCH, BATCH]
        # rank 0 reads rows 0, 2, ..., 14 (bad: 4); rank 1 rows 1, 3, ..., 15 (bad: 1, 7)
        assert sum(b["num_skipped"] for b in out) == (1 if rank == 0 else 2)


def write_shard(path: Path, count: int = 8, bad: tuple[int, ...] = (2, 5)) -> Path:
    """A webdataset shard of ``count`` pairs whose members ``bad`` hold an undecodable image."""
    with tarfile.open(path, "w") as tar:
        for i in range(count):
            image = io.BytesIO()
            PIL.Image.new("RGB", (20, 20), (i * 30, 0, 200)).save(image, format="PNG")
            png = b"garbage, not a png" if i in bad else image.getvalue()
            for name, data in ((f"k{i:02d}.png", png), (f"k{i:02d}.txt", CAPTIONS[i % 4].encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("batches_per_epoch", [None, 3])
def test_webdataset_batches_stay_full_and_count_bad_members(
    tmp_path, tokenizer_dir, batches_per_epoch
):
    shard = str(write_shard(tmp_path / "pairs-000.tar"))
    data = WebDatasetPairsDataModule(
        shard,
        str(tokenizer_dir),
        image_size=32,
        batch_size=3,
        max_length=16,
        shuffle_buffer=0,
        batches_per_epoch=batches_per_epoch,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataSkipWarning)
        batches = list(data.train_dataloader())
    # one pass: 6 readable pairs = 2 full batches (before: 3, 3 and a 2-row one, the
    # trailing 2-row batch dropped); fixed epoch: 3 full batches cycling the shard
    assert [b["pixel_values"].shape[0] for b in batches] == [3] * (batches_per_epoch or 2)
    assert all(b["input_ids"].shape[0] == 3 for b in batches)
    assert sum(b["num_skipped"] for b in batches) == (2 if batches_per_epoch is None else 3)


def test_image_folder_batches_stay_full(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    for i in range(6):
        PIL.Image.new("RGB", (20, 20), (i * 40, 0, 0)).save(root / f"im{i}.png")
    (root / "im2.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    data = ImageFolderDataModule(str(root), image_size=32, batch_size=3, augment=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataSkipWarning)
        batches = list(data.train_dataloader())
    assert [b["pixel_values"].shape[0] for b in batches] == [3, 3]
    assert sum(b["num_skipped"] for b in batches) == 1
