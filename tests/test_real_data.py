"""Real-data readers and DataModules on tiny files in the official formats."""

from __future__ import annotations

import csv
import datetime
import io
import json
import re
import sys
import tarfile
import time
import warnings
from pathlib import Path

import lightning as L
import PIL.Image
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader

from flava_zoo.data.collate import PretrainCollator
from flava_zoo.data.real import (
    ImageFolderDataModule,
    MultiSourceDataModule,
    PairsDataModule,
    TextCorpusDataModule,
    WebDatasetPairsDataModule,
)
from flava_zoo.data.sources import (
    BadSampleError,
    DataSkipWarning,
    ImageFolderImages,
    MultiSourceBatches,
    PairManifest,
    TextCorpus,
    webdataset_pairs,
    weighted_schedule,
)
from flava_zoo.tokenizer import FlavaTokenizer
from flava_zoo.transforms import image_transform

CAPTIONS = ["a red square", "a square that is red", "a blue circle", "a ghost", "a broken picture"]
TEXTS = ["the first document", "a second document", "a third one", "the fourth line"]
# (image, captions, what goes wrong) - one row per manifest line, in order
ROWS = [
    ("a.png", ["a red square", "a square that is red"], None),
    ("sub/c.png", ["a blue circle"], None),
    ("missing.png", ["a ghost"], "does not exist"),
    ("b.png", ["   "], "empty caption"),
    ("broken.png", ["a broken picture"], "cannot read image"),
]
TRANSFORM = image_transform(64)


def png_bytes(colour: tuple[int, int, int], size: tuple[int, int] = (48, 40)) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def make_images(root: Path) -> Path:
    """a.png, b.png, sub/c.png, a corrupt broken.png, a non-image and a hidden image."""
    (root / "sub").mkdir(parents=True)
    (root / ".hidden").mkdir()
    (root / "a.png").write_bytes(png_bytes((255, 0, 0)))
    (root / "b.png").write_bytes(png_bytes((0, 255, 0)))
    (root / "sub" / "c.png").write_bytes(png_bytes((0, 0, 255)))
    (root / ".hidden" / "d.png").write_bytes(png_bytes((9, 9, 9)))
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (root / "notes.txt").write_text("not an image")
    return root


def write_manifest(root: Path, fmt: str, rows=ROWS) -> tuple[Path, list[int]]:
    """The rows as a JSONL / CSV / TSV manifest; returns its path and each row's line."""
    path = root / f"pairs.{fmt}"
    if fmt == "jsonl":
        lines = []
        for image, caps, _ in rows:
            record = (
                {"image": image, "captions": caps}
                if len(caps) > 1
                else {"image": image, "caption": caps[0]}
            )
            lines.append(json.dumps(record))
        path.write_text("\n".join(lines) + "\n")
        return path, list(range(1, len(rows) + 1))
    delimiter = "\t" if fmt == "tsv" else ","
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(["image", "caption"])
        for image, caps, _ in rows:
            writer.writerow([image, "||".join(caps)])
    return path, list(range(2, len(rows) + 2))


def make_shard(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def good_shard(path: Path, index: int, count: int = 3) -> Path:
    members = []
    for i in range(count):
        key = f"s{index}_{i:03d}"
        members += [
            (f"{key}.png", png_bytes((index * 40, i * 60, 100))),
            (f"{key}.txt", f"a red square {i}".encode()),
        ]
    return make_shard(path, members)


def sources_of(samples: list) -> list:
    return [None if s is None else s["source"] for s in samples]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tokenizer")
    FlavaTokenizer.train(CAPTIONS + TEXTS, vocab_size=200, max_length=32).save(path)
    return path


@pytest.fixture
def one_thread():
    """A tiny model gains nothing from a second thread, and a busy 2-core machine loses a lot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def images(tmp_path) -> Path:
    return make_images(tmp_path / "images")


@pytest.fixture
def corpus(tmp_path) -> list[Path]:
    txt = tmp_path / "corpus.txt"
    txt.write_text("the first document\n\n  a second document  \n")
    jsonl = tmp_path / "corpus.jsonl"
    jsonl.write_text(
        '{"text": "a third one"}\n{"text": ""}\n\n{"text": "the fourth line", "id": 4}\n'
    )
    return [txt, jsonl]


# ----------------------------------------------------------------------------- manifests


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "tsv"])
def test_pair_manifest_skips_and_counts_bad_rows(images, fmt, tokenizer_dir):
    path, lines = write_manifest(images, fmt)
    dataset = PairManifest(path, transform=TRANSFORM)
    assert len(dataset) == len(ROWS)
    with pytest.warns(DataSkipWarning) as record:
        samples = [dataset[i] for i in range(len(dataset))]
    messages = [str(w.message) for w in record if w.category is DataSkipWarning]
    for (_, caps, problem), line, sample in zip(ROWS, lines, samples):
        if problem is None:
            assert sample["source"] == f"{path}:{line}"
            assert sample["text"] in caps
            assert sample["image"].shape == (3, 64, 64)
        else:
            assert sample is None
            assert any(m.startswith(f"{path}:{line}: ") and problem in m for m in messages), (
                messages
            )
    tokenizer = FlavaTokenizer.from_pretrained(tokenizer_dir)
    batch = PretrainCollator(tokenizer)(samples)
    assert batch["num_skipped"] == 3
    assert batch["pixel_values"].shape == (2, 3, 64, 64)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_pair_manifest_strict_raises_naming_file_and_line(images, fmt):
    path, lines = write_manifest(images, fmt)
    dataset = PairManifest(path, transform=TRANSFORM, strict=True)
    assert dataset[0] is not None
    for index in (2, 3, 4):
        with pytest.raises(BadSampleError, match=re.escape(f"{path}:{lines[index]}: ")):
            dataset[index]


def test_pair_manifest_caption_modes(images):
    path, _ = write_manifest(images, "jsonl")
    first = PairManifest(path, transform=TRANSFORM, captions="first")
    assert {first[0]["text"] for _ in range(5)} == {"a red square"}
    torch.manual_seed(0)
    randomly = PairManifest(path, transform=TRANSFORM)
    assert {randomly[0]["text"] for _ in range(30)} == set(ROWS[0][1])
    every = PairManifest(path, transform=TRANSFORM, captions="all")
    assert len(every) == 6 and every.num_images == 5
    assert [every[i]["text"] for i in range(3)] == [
        "a red square",
        "a square that is red",
        "a blue circle",
    ]
    columns = images / "columns.csv"
    columns.write_text(
        "image,caption_1,caption_2\na.png,a red square,a square that is red\nb.png,a green one,\n"
    )
    multi = PairManifest(
        columns, transform=TRANSFORM, caption_key=["caption_1", "caption_2"], captions="all"
    )
    assert [multi[i]["text"] for i in range(len(multi))] == [
        "a red square",
        "a square that is red",
        "a green one",
    ]


@pytest.mark.parametrize(
    ("name", "content", "where", "field"),
    [
        (
            "missing_key.jsonl",
            '{"image": "a.png", "caption": "x"}\n{"image": "b.png"}\n',
            ":2:",
            "'caption'",
        ),
        ("missing_image.jsonl", '{"caption": "x"}\n', ":1:", "'image'"),
        (
            "bad_json.jsonl",
            '{"image": "a.png", "caption": "x"}\n\n{"image": \n',
            ":3:",
            "not valid JSON",
        ),
        ("no_column.csv", "path,caption\na.png,x\n", ":1:", "'image'"),
        ("short_row.csv", "image,caption\na.png,x\nb.png\n", ":3:", "'caption'"),
        ("empty_path.tsv", "image\tcaption\n\tx\n", ":2:", "'image'"),
    ],
)
def test_manifest_validation_names_file_line_and_field(tmp_path, name, content, where, field):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError, match=re.escape(str(path) + where) + ".*" + re.escape(field)):
        PairManifest(path)


# ----------------------------------------------------------------------------- unimodal


def test_image_folder_skips_corrupt_files(images):
    dataset = ImageFolderImages(images, transform=TRANSFORM)
    assert [p.relative_to(images).as_posix() for p in dataset.files] == [
        "a.png",
        "b.png",
        "broken.png",
        "sub/c.png",
    ]
    with pytest.warns(
        DataSkipWarning,
        match=re.escape(f"{images / 'broken.png'}: skipped sample: cannot read image"),
    ):
        samples = [dataset[i] for i in range(len(dataset))]
    assert samples[2] is None and set(samples[0]) == {"image", "source"}
    batch = PretrainCollator()(samples)
    assert batch["num_skipped"] == 1 and batch["pixel_values"].shape == (3, 3, 64, 64)
    with pytest.raises(BadSampleError, match="broken.png"):
        ImageFolderImages(images, transform=TRANSFORM, strict=True)[2]


def test_text_corpus_reads_txt_and_jsonl(corpus, tmp_path):
    txt, jsonl = corpus
    dataset = TextCorpus([txt, jsonl])
    assert len(dataset) == 5
    with pytest.warns(DataSkipWarning, match=re.escape(f"{jsonl}:2: skipped sample: empty text")):
        samples = [dataset[i] for i in range(len(dataset))]
    assert sources_of(samples) == [f"{txt}:1", f"{txt}:3", f"{jsonl}:1", None, f"{jsonl}:4"]
    assert [s["text"] for s in samples if s] == [
        "the first document",
        "a second document",
        "a third one",
        "the fourth line",
    ]
    with pytest.raises(BadSampleError, match=re.escape(f"{jsonl}:2")):
        TextCorpus(jsonl, strict=True)[1]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(ValueError, match=re.escape(f"{bad}:2: missing field 'text'")):
        TextCorpus(bad)


# ----------------------------------------------------------------------------- webdataset


def broken_shard(path: Path) -> Path:
    return make_shard(
        path,
        [
            ("k0.png", png_bytes((255, 0, 0))),
            ("k0.txt", b"a red square"),
            ("k1.png", png_bytes((0, 0, 255))),
            ("k1.json", json.dumps({"captions": ["a blue circle", "a circle"]}).encode()),
            ("k2.png", b"garbage, not a png"),
            ("k2.txt", b"a broken picture"),
            ("k3.txt", b"a caption without an image"),
            ("k4.png", png_bytes((0, 255, 0))),
            ("k4.txt", b"  "),
        ],
    )


def test_webdataset_skips_broken_members(tmp_path):
    shard = str(broken_shard(tmp_path / "broken-000.tar"))
    pipeline = webdataset_pairs(shard, transform=TRANSFORM, captions="first", rank=0, world_size=1)
    with pytest.warns(DataSkipWarning) as record:
        samples = list(pipeline)
    assert sources_of(samples) == [f"{shard}:k0", f"{shard}:k1", None, None, None]
    assert [s["text"] for s in samples[:2]] == ["a red square", "a blue circle"]
    messages = " | ".join(str(w.message) for w in record)
    for key, reason in [
        ("k2", "cannot decode image"),
        ("k3", "no image member"),
        ("k4", "empty caption"),
    ]:
        assert f"{shard}:{key}: skipped sample: {reason}" in messages
    assert (
        PretrainCollator()(
            [{k: v for k, v in s.items() if k != "text"} if s else None for s in samples]
        )["num_skipped"]
        == 3
    )
    strict = webdataset_pairs(shard, transform=TRANSFORM, strict=True, rank=0, world_size=1)
    with pytest.raises(BadSampleError, match=re.escape(f"{shard}:k2")):
        list(strict)

    truncated = tmp_path / "truncated-000.tar"
    truncated.write_bytes(good_shard(tmp_path / "whole.tar", 0).read_bytes()[: 512 * 5 + 88])
    with pytest.warns(DataSkipWarning, match=f"unreadable shard data.*{re.escape(str(truncated))}"):
        assert sources_of(list(webdataset_pairs(str(truncated), rank=0, world_size=1))) == [
            f"{truncated}:s0_000"
        ]
    with pytest.raises(tarfile.ReadError):
        list(webdataset_pairs(str(truncated), strict=True, rank=0, world_size=1))


def test_webdataset_splits_shards_over_ranks_and_workers(tmp_path, monkeypatch):
    shards = [str(good_shard(tmp_path / f"train-{i:03d}.tar", i)) for i in range(4)]
    seen = {}
    for rank in range(2):
        for worker in range(2):
            monkeypatch.setenv("RANK", str(rank))
            monkeypatch.setenv("WORLD_SIZE", "2")
            monkeypatch.setenv("WORKER", str(worker))
            monkeypatch.setenv("NUM_WORKERS", "2")
            seen[rank, worker] = set(sources_of(list(webdataset_pairs(shards, shuffle_buffer=4))))
    everything = [s for part in seen.values() for s in part]
    assert len(everything) == len(set(everything)) == 12
    assert {s.split(":")[0] for s in seen[1, 0]} == {shards[1]}

    monkeypatch.delenv("WORKER")
    monkeypatch.delenv("NUM_WORKERS")
    loader = DataLoader(webdataset_pairs(shards), batch_size=None, num_workers=2)
    from_workers = [sample["source"] for sample in loader]
    assert sorted(from_workers) == sorted(seen[1, 0] | seen[1, 1])

    with pytest.raises(ValueError, match="1 webdataset shard.*2 ranks"):
        webdataset_pairs(shards[:1])
    monkeypatch.setenv("WORKER", "1")
    monkeypatch.setenv("NUM_WORKERS", "2")
    with pytest.raises(ValueError, match="worker 1 would get none"):
        list(webdataset_pairs(shards[:2]))


# ----------------------------------------------------------------------------- mixing


def collate_sources(samples: list) -> list[str]:
    return [s["source"] for s in samples]


def letter_sources() -> list[list[dict]]:
    return [[{"source": f"A{i}"} for i in range(100)], [{"source": f"B{i}"} for i in range(50)]]


def test_multi_source_weights_seeds_ranks_and_workers():
    def stream(**kwargs) -> list[list[str]]:
        options = dict(
            batch_sizes=4, collate_fn=collate_sources, num_batches=200, rank=0, world_size=1
        )
        return list(MultiSourceBatches(letter_sources(), [3.0, 1.0], **(options | kwargs)))

    batches = stream()
    assert all(len({name[0] for name in batch}) == 1 for batch in batches)
    share = sum(batch[0][0] == "A" for batch in batches) / len(batches)
    assert 0.67 < share < 0.83
    assert stream() == batches and stream(seed=1) != batches
    assert weighted_schedule([3, 1], 8, "round_robin") == [0, 0, 1, 0, 0, 0, 1, 0]

    mixed = MultiSourceBatches(
        letter_sources(), [3.0, 1.0], 4, collate_sources, 200, rank=0, world_size=1
    )
    assert list(mixed) == batches and list(mixed) != batches  # the second iteration is epoch 1

    ranks = [stream(rank=r, world_size=2) for r in range(2)]
    assert [b[0][0] for b in ranks[0]] == [
        b[0][0] for b in ranks[1]
    ]  # same kind of batch at each step
    first_pass = [[n for b in r for n in b if n[0] == "A"][:50] for r in ranks]
    assert not set(first_pass[0]) & set(first_pass[1])
    assert len(set(first_pass[0]) | set(first_pass[1])) == 100

    workers = MultiSourceBatches(
        letter_sources(), [3.0, 1.0], 4, collate_sources, 200, rank=0, world_size=1
    )
    assert list(DataLoader(workers, batch_size=None, num_workers=2)) == batches


def _rank_worker(rank: int, init_file: str, root: str) -> None:
    """One of 2 gloo ranks: mixed batches with the rank taken from the process group."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=2,
        timeout=datetime.timedelta(seconds=30),
    )
    try:
        shards = sorted(str(p) for p in Path(root).glob("train-*.tar"))
        sources = [letter_sources()[0], webdataset_pairs(shards)]
        batches = MultiSourceBatches(sources, [1.0, 1.0], 2, collate_sources, 6, "round_robin")
        (Path(root) / f"rank{rank}.json").write_text(json.dumps(list(batches)))
    finally:
        dist.destroy_process_group()


def test_multi_source_gives_ranks_distinct_data_under_a_process_group(tmp_path):
    shards = [str(good_shard(tmp_path / f"train-{i:03d}.tar", i)) for i in range(4)]
    context = mp.start_processes(
        _rank_worker,
        args=(str(tmp_path / "init"), str(tmp_path)),
        nprocs=2,
        join=False,
        start_method="fork" if sys.platform.startswith("linux") else "spawn",
    )
    deadline = time.monotonic() + 60
    try:
        while not context.join(timeout=0.2):
            assert time.monotonic() < deadline, "the 2 ranks did not finish in 60 s"
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [b[0][0] for b in ranks[0]] == [b[0][0] for b in ranks[1]] == list("A/A/A/")
    names = [[n for b in r for n in b] for r in ranks]
    assert not set(names[0]) & set(names[1])
    assert {n.split(":")[0] for n in names[0] if n[0] != "A"} == {shards[0], shards[2]}
    assert len([n for r in names for n in r if n[0] != "A"]) == 12  # every pair read once


# ----------------------------------------------------------------------------- DataModules


def test_datamodules_yield_pretraining_batches(images, corpus, tmp_path, tokenizer_dir):
    manifest, _ = write_manifest(images, "jsonl", ROWS[:2] + ROWS[:2])
    common = dict(image_size=64, patch_size=16, batch_size=2)
    pairs = next(
        iter(PairsDataModule(str(manifest), str(tokenizer_dir), **common).train_dataloader())
    )
    assert {"pixel_values", "image_mask", "input_ids", "masked_input_ids", "mlm_labels"} <= set(
        pairs
    )
    assert pairs["image_mask"].shape == (2, 16)
    text = next(
        iter(
            TextCorpusDataModule(
                [str(p) for p in corpus], str(tokenizer_dir), batch_size=2
            ).train_dataloader()
        )
    )
    assert "pixel_values" not in text and text["mlm_labels"].shape == text["input_ids"].shape
    folder = ImageFolderDataModule(str(images), **common)
    assert set(next(iter(folder.train_dataloader()))) == {
        "num_skipped",
        "pixel_values",
        "image_mask",
    }
    assert folder.val_dataloader() == []

    shards = [str(good_shard(tmp_path / f"wds-{i}.tar", i)) for i in range(2)]
    streamed = WebDatasetPairsDataModule(
        shards, str(tokenizer_dir), num_workers=2, batches_per_epoch=4, shuffle_buffer=4, **common
    )
    batches = list(streamed.train_dataloader())
    assert len(batches) == 4 and all(b["pixel_values"].shape == (2, 3, 64, 64) for b in batches)


def test_multi_source_datamodule_trains_flava_tiny(
    images, corpus, tmp_path, tokenizer_dir, one_thread
):
    from flava_zoo.training import FlavaPretrainModule

    manifest, _ = write_manifest(images, "jsonl")
    shard = str(good_shard(tmp_path / "wds-0.tar", 0))
    data = MultiSourceDataModule(
        sources=[
            {"kind": "pairs", "manifest": str(manifest), "batch_size": 4},
            {"kind": "webdataset", "urls": shard, "shuffle_buffer": 2},
            {"kind": "text", "files": [str(p) for p in corpus]},
            {"kind": "images", "root": str(images)},
        ],
        tokenizer=str(tokenizer_dir),
        image_size=64,
        max_length=32,  # flava-tiny has 64 text positions; the default 77 is refused at setup
        batch_size=2,
        schedule="round_robin",
        batches_per_epoch=4,
    )
    with pytest.warns(DataSkipWarning):
        kinds = [
            tuple(sorted({"pixel_values", "input_ids"} & set(b))) for b in data.train_dataloader()
        ]
    assert kinds == [
        ("input_ids", "pixel_values"),
        ("input_ids", "pixel_values"),
        ("input_ids",),
        ("pixel_values",),
    ]
    vocab_size = FlavaTokenizer.from_pretrained(tokenizer_dir).vocab_size
    module = FlavaPretrainModule(
        model="flava-tiny",
        model_overrides={"text.vocab_size": vocab_size},
        stage="multimodal",
        loss_weights={"mim": 1.0, "mlm": 1.0},
        warmup_steps=1,
    )
    trainer = L.Trainer(
        max_steps=4,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataSkipWarning)
        trainer.fit(module, datamodule=data)
    assert trainer.global_step == 4
    assert (
        trainer.callback_metrics["data/skipped_samples"] >= 2
    )  # the pairs batch: 4 of 5 rows, 3 bad
