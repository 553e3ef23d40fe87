"""Exact resume: a run killed mid-epoch and resumed from ``last.ckpt`` trains on the batches
(images, texts and masks) the uninterrupted run trains on, and hyperparameters given anew on
resume take effect."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import lightning as L
import PIL.Image
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from flava_zoo.cli import main
from flava_zoo.data.datamodules import ShapesPretrainData
from flava_zoo.data.real import ImageFolderDataModule, PairsDataModule, TextCorpusDataModule
from flava_zoo.tokenizer import FlavaTokenizer
from flava_zoo.training import FlavaPretrainModule
from flava_zoo.training.optim import warmup_cosine

ROOT = Path(__file__).resolve().parents[1]
WORDS = "a red blue green square circle triangle left right of the small large".split()


ONE_THREAD = True
"""One intra-op thread per process for this module's tests (tests/conftest.py)."""


class Hashes(Callback):
    """Record ``(global_step, sha1 of every tensor of the batch)`` before each step."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, str]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        digest = hashlib.sha1()
        for key in sorted(batch):
            value = batch[key]
            if isinstance(value, torch.Tensor):
                digest.update(key.encode())
                digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        self.seen.append((trainer.global_step, digest.hexdigest()))


class Killed(RuntimeError):
    pass


class KillAt(Callback):
    """Die (as a SIGKILL would, without saving) when step ``step`` is about to run."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise Killed(f"killed at step {self.step}")


def _fit(module_fn, data_fn, root: Path, steps: int, every: int, kill: int | None = None,
         ckpt_path: str | None = None, val: bool = False) -> list[tuple[int, str]]:
    L.seed_everything(0)
    hashes = Hashes()
    callbacks = [hashes, ModelCheckpoint(dirpath=root, save_last=True, every_n_train_steps=every)]
    if kill is not None:
        callbacks.append(KillAt(kill))
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        default_root_dir=root,
        limit_val_batches=1 if val else 0,
        val_check_interval=3 if val else None,
        num_sanity_val_steps=0,
    )
    data = data_fn()
    if kill is None:
        trainer.fit(module_fn(data), datamodule=data, ckpt_path=ckpt_path)
    else:
        with pytest.raises(Killed):
            trainer.fit(module_fn(data), datamodule=data, ckpt_path=ckpt_path)
    return hashes.seen


def assert_resumes_exactly(tmp_path: Path, module_fn, data_fn, steps: int, kill: int,
                           val: bool = False) -> None:
    """A run of ``steps`` steps against one killed at ``kill`` (checkpointed at ``kill``) and
    resumed from ``last.ckpt``: the same batch at every step."""
    full = _fit(module_fn, data_fn, tmp_path / "full", steps, every=kill, val=val)
    first = _fit(module_fn, data_fn, tmp_path / "cut", steps, every=kill, kill=kill, val=val)
    last = tmp_path / "cut" / "last.ckpt"
    assert last.is_file()
    resumed = _fit(module_fn, data_fn, tmp_path / "cut", steps, every=kill, ckpt_path=str(last),
                   val=val)
    assert [s for s, _ in full] == list(range(steps))
    assert first == full[: kill + 1]  # the batch of step ``kill`` was drawn, then the run died
    assert [s for s, _ in resumed] == list(range(kill, steps))
    assert resumed == full[kill:]  # before the fix: the batches of steps 0, 1, ... again
    assert len({h for _, h in full}) == steps  # and the batches do differ from step to step


def shapes_module(data) -> FlavaPretrainModule:
    stage = data.hparams.stage
    vocab = {} if data.tokenizer is None else {"text.vocab_size": data.tokenizer.vocab_size}
    return FlavaPretrainModule(model="flava-tiny", model_overrides=vocab, stage=stage,
                               warmup_steps=1)


@pytest.mark.parametrize(
    ("stage", "kill"),
    [("image", 6), ("text", 3), ("multimodal", 5)],
)
def test_shapes_stage_resumes_mid_epoch_with_the_same_batches(tmp_path, stage, kill):
    """4 batches an epoch: kills inside epoch 0 and 1; random captions and masks included."""

    def data():
        return ShapesPretrainData(stage=stage, train_size=16, val_size=4, batch_size=4,
                                  vocab_size=128, max_length=24, captions="random")

    assert_resumes_exactly(tmp_path, shapes_module, data, steps=9, kill=kill,
                           val=stage == "multimodal")


def test_shapes_resume_with_worker_processes(tmp_path):
    """Two persistent workers: the same batches (masks do not depend on the worker either)."""

    def data():
        return ShapesPretrainData(stage="text", train_size=16, val_size=4, batch_size=4,
                                  vocab_size=128, max_length=24, num_workers=2)

    assert_resumes_exactly(tmp_path, shapes_module, data, steps=8, kill=5)


def test_shapes_resume_at_an_epoch_boundary(tmp_path):
    def data():
        return ShapesPretrainData(stage="image", train_size=16, val_size=4, batch_size=4)

    assert_resumes_exactly(tmp_path, shapes_module, data, steps=6, kill=4)


# ----------------------------------------------------------------------------- real data


def _png(path: Path, colour: tuple[int, int, int]) -> None:
    buffer = io.BytesIO()
    PIL.Image.new("RGB", (40, 36), colour).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())


@pytest.fixture
def real_files(tmp_path):
    """Twelve images, a JSONL manifest with two captions each, a text corpus, a tokenizer."""
    images = tmp_path / "images"
    images.mkdir()
    rows, texts = [], []
    for i in range(12):
        _png(images / f"{i:02d}.png", (20 * i, 255 - 20 * i, (77 * i) % 256))
        words = [WORDS[(i * 7 + k) % len(WORDS)] for k in range(5)]
        rows.append({"image": f"{i:02d}.png", "captions": [" ".join(words), " ".join(words[::-1])]})
        texts.append(" ".join(words + words[:i % 4]))
    manifest = images / "pairs.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(texts) + "\n")
    tokenizer = tmp_path / "tokenizer"
    FlavaTokenizer.train(texts, vocab_size=100, max_length=24).save(tokenizer)
    return {"images": images, "manifest": manifest, "corpus": corpus, "tokenizer": tokenizer}


def real_module(stage: str, **kwargs):
    def build(data) -> FlavaPretrainModule:
        tokenizer = getattr(data, "tokenizer", None)
        vocab = {} if tokenizer is None else {"text.vocab_size": tokenizer.vocab_size}
        return FlavaPretrainModule(model="flava-tiny", model_overrides=vocab, stage=stage,
                                   warmup_steps=1, **kwargs)

    return build


@pytest.mark.parametrize("kind", ["pairs", "images", "text"])
def test_real_data_resumes_mid_epoch_with_the_same_batches(tmp_path, real_files, kind):
    """Augmented crops, random captions and masks of pair manifests, image folders and text
    corpora: 3 batches an epoch, killed inside the second epoch."""
    files = real_files
    common = dict(batch_size=4, num_workers=0)
    image = dict(image_size=64, patch_size=16, augment=True)

    def data():
        if kind == "pairs":
            return PairsDataModule(str(files["manifest"]), str(files["tokenizer"]), max_length=24,
                                   captions="random", **image, **common)
        if kind == "images":
            return ImageFolderDataModule(str(files["images"]), **image, **common)
        return TextCorpusDataModule(str(files["corpus"]), str(files["tokenizer"]), max_length=24,
                                    **common)

    stage = {"pairs": "multimodal", "images": "image", "text": "text"}[kind]
    assert_resumes_exactly(tmp_path, real_module(stage), data, steps=7, kill=4)


def test_loader_position_is_in_the_checkpoint(tmp_path):
    """Lightning stores the loader's position (no 'not resumable' warning on resume)."""
    root = tmp_path / "run"

    def data():
        return ShapesPretrainData(stage="image", train_size=16, val_size=4, batch_size=4)

    _fit(shapes_module, data, root, steps=6, every=6)
    state = torch.load(root / "last.ckpt", weights_only=False)
    loader = state["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert loader == [{"epoch": 1, "batches": 2, "batch_size": 4}]
    with pytest.warns() as record:
        _fit(shapes_module, data, root, steps=8, every=6, ckpt_path=str(root / "last.ckpt"))
    assert not [w for w in record if "not resumable" in str(w.message)]


# ----------------------------------------------------------------------------- streams


class Rows(Callback):
    """Record a hash of each sample (row of ``pixel_values`` / ``input_ids``) and its epoch."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, str]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        columns = [batch[k] for k in ("pixel_values", "input_ids") if k in batch]
        for row in zip(*columns):
            digest = hashlib.sha1(b"".join(t.contiguous().numpy().tobytes() for t in row))
            self.seen.append((trainer.current_epoch, trainer.global_step, digest.hexdigest()))


def _fit_rows(data_fn, module_fn, root: Path, steps: int, kill: int | None = None,
              ckpt_path: str | None = None, every: int = 1) -> list[tuple[int, int, str]]:
    L.seed_everything(0)
    rows = Rows()
    callbacks = [rows, ModelCheckpoint(dirpath=root, save_last=True, every_n_train_steps=every)]
    if kill is not None:
        callbacks.append(KillAt(kill))
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=callbacks, default_root_dir=root, limit_val_batches=0)
    data = data_fn()
    if kill is None:
        trainer.fit(module_fn(data), datamodule=data, ckpt_path=ckpt_path)
    else:
        with pytest.raises(Killed):
            trainer.fit(module_fn(data), datamodule=data, ckpt_path=ckpt_path)
    return [r for r in rows.seen if kill is None or r[1] < kill]


def assert_stream_resumes_without_repeats(tmp_path, data_fn, module_fn, steps, kill, epoch):
    """Killed at ``kill`` (inside ``epoch``) and resumed: no sample of that epoch twice, and
    the samples the uninterrupted run read in it (a sample is told by its pixels and tokens:
    give the sources fixed captions)."""
    full = _fit_rows(data_fn, module_fn, tmp_path / "full", steps, every=kill)
    cut = _fit_rows(data_fn, module_fn, tmp_path / "cut", steps, kill=kill, every=kill)
    resumed = _fit_rows(data_fn, module_fn, tmp_path / "cut", steps, every=kill,
                        ckpt_path=str(tmp_path / "cut" / "last.ckpt"))
    assert {s for _, s, _ in resumed} == set(range(kill, steps))
    read = [h for e, _, h in cut + resumed if e == epoch]
    assert len(read) == len(set(read))  # before the fix: the epoch's first samples again
    assert sorted(read) == sorted(h for e, _, h in full if e == epoch)


def _shard(path: Path, index: int, count: int) -> str:
    import tarfile

    with tarfile.open(path, "w") as tar:
        for i in range(count):
            buffer = io.BytesIO()
            PIL.Image.new("RGB", (40, 36), (index * 90, i * 40, 100)).save(buffer, format="PNG")
            for name, data in ((f"s{index}_{i:03d}.png", buffer.getvalue()),
                               (f"s{index}_{i:03d}.txt", f"a red square {index} {i}".encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return str(path)


@pytest.mark.parametrize("batches_per_epoch", [None, 5])
def test_webdataset_resume_repeats_no_sample_of_the_epoch(tmp_path, real_files,
                                                          batches_per_epoch):
    from flava_zoo.data.real import WebDatasetPairsDataModule

    shards = [_shard(tmp_path / f"train-{i}.tar", i, 6) for i in range(2)]

    def data():
        return WebDatasetPairsDataModule(shards, str(real_files["tokenizer"]), image_size=64,
                                         augment=False, batch_size=2, max_length=24,
                                         shuffle_buffer=4, batches_per_epoch=batches_per_epoch)

    # epochs of 6 / 5 batches: killed inside the second, which the resumed run finishes
    steps, kill = (12, 8) if batches_per_epoch is None else (10, 7)
    assert_stream_resumes_without_repeats(tmp_path, data, real_module("multimodal"), steps,
                                          kill=kill, epoch=1)


def test_multi_source_resume_repeats_no_sample_of_the_epoch(tmp_path, real_files):
    from flava_zoo.data.real import MultiSourceDataModule

    files = real_files

    def data():
        return MultiSourceDataModule(
            sources=[{"kind": "pairs", "manifest": str(files["manifest"]), "captions": "first"},
                     {"kind": "text", "files": str(files["corpus"]), "batch_size": 3}],
            tokenizer=str(files["tokenizer"]), image_size=64, augment=False, batch_size=2,
            max_length=24, schedule="round_robin", batches_per_epoch=5,
        )

    module = real_module("multimodal", loss_weights={"mlm": 1.0})  # text-only batches: MLM
    assert_stream_resumes_without_repeats(tmp_path, data, module, steps=10, kill=7, epoch=1)


# ----------------------------------------------------------------------------- hyperparameters


def _cli_args(tmp: Path, steps: int, lr: float, mult: float = 0.5, decay: float = 0.05) -> list[str]:
    return [
        "fit", "--config", str(ROOT / "recipes/pretrain/shapes_image.yaml"),
        "--data.init_args.train_size=32", "--data.init_args.val_size=8",
        "--data.init_args.batch_size=4",
        f"--trainer.max_steps={steps}", "--trainer.limit_val_batches=0",
        f"--trainer.default_root_dir={tmp}", "--trainer.enable_progress_bar=false",
        "--trainer.logger=false",
        f"--trainer.callbacks.init_args.dirpath={tmp}/checkpoints",
        "--trainer.callbacks.init_args.every_n_train_steps=2",
        f"--model.init_args.lr={lr}", "--model.init_args.warmup_steps=1",
        f"--model.init_args.lr_multipliers={{image: {mult}}}", f"--model.init_args.weight_decay={decay}",
        "--model.init_args.min_lr_ratio=0.1", "--model.init_args.export_dir=null",
    ]


def test_optimizer_hyperparameters_given_on_resume_take_effect(tmp_path, monkeypatch):
    """``fit --ckpt_path last --model.init_args.lr=X`` (and new ``lr_multipliers`` and
    ``weight_decay``): the optimizer and the schedule use them (Lightning would restore the
    checkpoint's groups and rates), and the saved hparams say what ran."""
    monkeypatch.chdir(tmp_path)
    assert main(_cli_args(tmp_path, 2, 1e-3)) == 0
    before = torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=False)
    assert before["hyper_parameters"]["lr"] == 1e-3
    resume = _cli_args(tmp_path, 4, 4e-3, mult=0.25, decay=0.01) + ["--ckpt_path", "last"]
    with pytest.warns(UserWarning, match=r"new optimizer hyperparameters \(lr 0.001 -> 0.004, lr_mult"):
        assert main(resume) == 0
    after = torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=False)
    assert after["global_step"] == 4
    hparams = after["hyper_parameters"]
    assert (hparams["lr"], hparams["lr_multipliers"], hparams["weight_decay"]) == (
        4e-3, {"image": 0.25}, 0.01)
    groups = after["optimizer_states"][0]["param_groups"]
    scheduler = after["lr_schedulers"][0]
    mults = sorted({g["lr_multiplier"] for g in groups})
    assert mults == [0.25, 1.0]
    assert sorted({g["weight_decay"] for g in groups}) == [0.0, 0.01]
    for group, base in zip(groups, scheduler["base_lrs"]):
        assert group["initial_lr"] == pytest.approx(4e-3 * group["lr_multiplier"])
        assert base == pytest.approx(4e-3 * group["lr_multiplier"])
    # the rate in use follows the (new) schedule from the new peak, not the checkpoint's
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=4e-3)
    factor = warmup_cosine(optimizer, 1, 4, 0.1).lr_lambdas[0](4)
    assert 0.1 <= factor < 1
    for group, last in zip(groups, scheduler["_last_lr"]):
        assert last == pytest.approx(4e-3 * group["lr_multiplier"] * factor)
        assert group["lr"] == pytest.approx(last)


def test_hyperparameters_given_on_resume_from_a_checkpoint_file_take_effect(tmp_path, monkeypatch):
    """As with ``last``: an explicit checkpoint file does not put its hyperparameters back in
    place of the ones given on the command line."""
    monkeypatch.chdir(tmp_path)
    assert main(_cli_args(tmp_path, 2, 1e-3)) == 0
    saved = tmp_path / "checkpoints" / "step2.ckpt"
    (tmp_path / "checkpoints" / "last.ckpt").rename(saved)
    with pytest.warns(UserWarning, match="new optimizer hyperparameters"):
        assert main(_cli_args(tmp_path, 4, 4e-3) + ["--ckpt_path", str(saved)]) == 0
    after = torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=False)
    assert after["global_step"] == 4 and after["hyper_parameters"]["lr"] == 4e-3
    groups = after["optimizer_states"][0]["param_groups"]
    assert [g["initial_lr"] for g in groups] == pytest.approx([4e-3 * g["lr_multiplier"] for g in groups])
