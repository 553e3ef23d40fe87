"""Bad input is caught early and named: undecodable manifest lines, data the model cannot
take, and a run stopped by SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import lightning as L
import PIL.Image
import pytest

from flava_zoo.data.collate import PretrainCollator
from flava_zoo.data.real import ImageFolderDataModule, PairsDataModule
from flava_zoo.data.sources import BadSampleError, DataSkipWarning, PairManifest, TextCorpus
from flava_zoo.tokenizer import FlavaTokenizer
from flava_zoo.transforms import image_transform

REPO = Path(__file__).resolve().parents[1]
CAPTIONS = ["a red square", "a blue circle", "a green triangle"]
# one manifest per format; the undecodable byte (0xe9: Latin-1 "é") sits on the second row
MANIFESTS = {
    "jsonl": (
        b'{"image": "a.png", "caption": "a red square"}\n'
        b'{"image": "a.png", "caption": "a caf\xe9 square"}\n'
        b'{"image": "a.png", "caption": "a blue circle"}\n',
        2,
    ),
    "tsv": (
        b"image\tcaption\na.png\ta red square\na.png\ta caf\xe9 square\na.png\ta blue circle\n",
        3,
    ),
    "csv": (
        b'image,caption\na.png,a red square\na.png,"a caf\xe9 square"\na.png,a blue circle\n',
        3,
    ),
}


ONE_THREAD = True
"""One intra-op thread per process for this module's tests (tests/conftest.py)."""


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tokenizer")
    FlavaTokenizer.train(CAPTIONS, vocab_size=100, max_length=32).save(path)
    return path


def write_manifest(root: Path, fmt: str, undecodable: bool = True) -> tuple[Path, int]:
    """A three-row manifest of ``fmt`` whose second row holds a byte that is not UTF-8
    (``undecodable=False``: the same byte as UTF-8)."""
    root.mkdir(parents=True, exist_ok=True)
    PIL.Image.new("RGB", (40, 40), (255, 0, 0)).save(root / "a.png")
    content, bad_line = MANIFESTS[fmt]
    if not undecodable:
        content = content.replace(b"\xe9", "\u00e9".encode())
    path = root / f"pairs.{fmt}"
    path.write_bytes(content)
    return path, bad_line


# ----------------------------------------------------------------------------- undecodable bytes


@pytest.mark.parametrize("fmt", ["jsonl", "tsv", "csv"])
def test_manifest_skips_undecodable_line_naming_file_and_line(tmp_path, fmt, tokenizer_dir):
    path, bad_line = write_manifest(tmp_path, fmt)
    dataset = PairManifest(path, transform=image_transform(64))
    assert len(dataset) == 3
    with pytest.warns(DataSkipWarning) as record:
        samples = [dataset[i] for i in range(len(dataset))]
    messages = [str(w.message) for w in record if w.category is DataSkipWarning]
    assert samples[1] is None and samples[0] is not None and samples[2] is not None
    assert len(messages) == 1
    assert messages[0].startswith(f"{path}:{bad_line}: skipped sample: ")
    assert "not valid UTF-8" in messages[0] and "0xe9" in messages[0]
    batch = PretrainCollator(FlavaTokenizer.from_pretrained(tokenizer_dir))(samples)
    assert batch["num_skipped"] == 1 and batch["pixel_values"].shape[0] == 2


@pytest.mark.parametrize("fmt", ["jsonl", "tsv", "csv"])
def test_strict_manifest_refuses_undecodable_line_naming_file_and_line(tmp_path, fmt):
    path, bad_line = write_manifest(tmp_path, fmt)
    with pytest.raises(ValueError, match=re.escape(f"{path}:{bad_line}: ") + ".*not valid UTF-8"):
        PairManifest(path, strict=True)
    with pytest.raises(BadSampleError):
        PairManifest(path, strict=True)


def test_manifest_with_undecodable_header_is_refused(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_bytes(b"image\tcapti\xf3n\na.png\tx\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:1: the header row is not valid UTF-8")):
        PairManifest(path)


def test_text_corpus_jsonl_skips_undecodable_line(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(b'{"text": "a red square"}\n{"text": "a caf\xe9"}\n{"text": "a blue circle"}\n')
    corpus = TextCorpus(path)
    with pytest.warns(DataSkipWarning, match=re.escape(f"{path}:2: skipped sample: not valid UTF-8")):
        samples = [corpus[i] for i in range(len(corpus))]
    assert [s and s["text"] for s in samples] == ["a red square", None, "a blue circle"]
    with pytest.raises(BadSampleError, match=re.escape(f"{path}:2: not valid UTF-8")):
        TextCorpus(path, strict=True)


def test_pairs_datamodule_trains_past_an_undecodable_row(tmp_path, tokenizer_dir):
    from flava_zoo.training import FlavaPretrainModule

    path, _ = write_manifest(tmp_path, "tsv")
    data = PairsDataModule(str(path), str(tokenizer_dir), image_size=64, batch_size=3, max_length=32)
    module = FlavaPretrainModule(
        model="flava-tiny",
        model_overrides={"text.vocab_size": FlavaTokenizer.from_pretrained(tokenizer_dir).vocab_size},
        stage="multimodal",
        warmup_steps=1,
    )
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataSkipWarning)
        trainer.fit(module, datamodule=data)
    assert trainer.global_step == 1
    assert trainer.callback_metrics["data/skipped_samples"] == 1


# ----------------------------------------------------------------------------- data vs model


def count_steps(module: L.LightningModule) -> list[int]:
    """Record every ``training_step`` call of ``module`` (the batch index) in the returned list."""
    calls: list[int] = []
    step = module.training_step

    def counted(batch, batch_idx):
        calls.append(batch_idx)
        return step(batch, batch_idx)

    module.training_step = counted
    return calls


def _trainer() -> L.Trainer:
    return L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)


def test_pretraining_refuses_max_length_beyond_text_positions_at_setup(tmp_path, tokenizer_dir):
    from flava_zoo.training import FlavaPretrainModule

    path, _ = write_manifest(tmp_path, "jsonl", undecodable=False)
    data = PairsDataModule(str(path), str(tokenizer_dir), image_size=64, batch_size=2)  # max_length 77
    module = FlavaPretrainModule(
        model="flava-tiny",
        model_overrides={"text.vocab_size": FlavaTokenizer.from_pretrained(tokenizer_dir).vocab_size},
        warmup_steps=1,
    )
    steps = count_steps(module)
    trainer = _trainer()
    with pytest.raises(ValueError, match=r"max_length 77 exceeds the text\.max_position_embeddings 64") as err:
        trainer.fit(module, datamodule=data)
    assert "--data.init_args.max_length" in str(err.value) and "flava-tiny" in str(err.value)
    assert steps == [] and trainer.global_step == 0


def test_pretraining_refuses_images_the_model_cannot_take(tmp_path):
    from flava_zoo.training import FlavaPretrainModule

    write_manifest(tmp_path, "jsonl", undecodable=False)
    cases = [
        (dict(image_size=40, patch_size=8), r"image_size 40 is not a multiple of the image\.patch_size 16"),
        (dict(image_size=64, patch_size=8), r"patch_size 8 differs from the image\.patch_size 16"),
    ]
    for settings, message in cases:
        data = ImageFolderDataModule(str(tmp_path), batch_size=1, **settings)
        module = FlavaPretrainModule(model="flava-tiny", stage="image", warmup_steps=1)
        trainer = _trainer()
        with pytest.raises(ValueError, match=message):
            trainer.fit(module, datamodule=data)
        assert trainer.global_step == 0
    # any multiple of the patch size is taken (position embeddings interpolate)
    data = ImageFolderDataModule(str(tmp_path), batch_size=1, image_size=48, patch_size=16)
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(FlavaPretrainModule(model="flava-tiny", stage="image", warmup_steps=1), datamodule=data)
    assert trainer.global_step == 1


def test_downstream_module_refuses_max_length_beyond_text_positions_at_setup():
    from flava_zoo.downstream import FinetuneModule, TaskData

    data = TaskData(task="text_classification", max_length=77, train_size=8, val_size=4, test_size=4,
                    batch_size=4)
    module = FinetuneModule(model="flava-tiny")
    steps = count_steps(module)
    trainer = _trainer()
    with pytest.raises(ValueError, match=r"max_length 77 exceeds the text\.max_position_embeddings 64") as err:
        trainer.fit(module, datamodule=data)
    assert "--data.init_args.max_length" in str(err.value)
    assert steps == [] and trainer.global_step == 0


# ----------------------------------------------------------------------------- SIGTERM

STEP_FILE_CALLBACK = '''
from pathlib import Path

import lightning as L


class StepFile(L.Callback):
    """Write the global step after every training batch (the test polls it)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_end(self, trainer, *args, **kwargs) -> None:
        Path(self.path).write_text(str(trainer.global_step))
'''


def test_sigterm_during_fit_saves_a_checkpoint_and_exits_non_zero(tmp_path):
    from flava_zoo.checkpoint import read_training_checkpoint

    (tmp_path / "stepfile.py").write_text(STEP_FILE_CALLBACK)
    steps, run = tmp_path / "steps", tmp_path / "run"
    overrides = tmp_path / "tiny.yaml"
    overrides.write_text(f"""
trainer:
  max_steps: 100000
  val_check_interval: null
  limit_val_batches: 0
  accelerator: cpu
  logger: false
  enable_progress_bar: false
  enable_model_summary: false
  default_root_dir: {run}
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args:
        dirpath: {run / "checkpoints"}
        save_last: true
        every_n_train_steps: 100000
    - class_path: stepfile.StepFile
      init_args:
        path: {steps}
model:
  init_args:
    export_dir: {run / "export"}
data:
  init_args:
    batch_size: 4
    train_size: 64
    val_size: 8
""")
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "flava_zoo.cli", "fit", "--config",
           str(REPO / "recipes/pretrain/shapes_image.yaml"), "--config", str(overrides)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline = time.monotonic() + 120
        while not (steps.is_file() and steps.read_text().strip() and int(steps.read_text()) >= 3):
            assert proc.poll() is None, f"fit ended before it was stopped:\n{proc.stdout.read()}"
            assert time.monotonic() < deadline, "fit did not reach step 3 in time"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, output
    last = run / "checkpoints" / "last.ckpt"
    match = re.search(
        r"flava-zoo fit: stopped by SIGTERM at step (\d+); checkpoint saved to (\S+); "
        r"resume with --ckpt_path last",
        output,
    )
    assert match, output
    step = int(match.group(1))
    assert step >= 3 and Path(match.group(2)) == last
    ckpt = read_training_checkpoint(last)
    assert ckpt["global_step"] == step
    assert any(k.startswith("objective.model.image_encoder.") for k in ckpt["state_dict"])
    assert not (run / "export").exists()  # the run did not finish: nothing is exported


# ------------------------------------------------------------- official task files
def test_official_task_files_that_are_not_utf8_name_file_and_line(tmp_path):
    """Official files are read whole, not skipped: a non-UTF-8 byte is an error naming the
    file, the line and the byte (JSONL, JSON and GLUE TSV readers alike)."""
    from flava_zoo.data.tasks import GlueTask, HatefulMemes, TaskDataError, VQAv2

    memes = tmp_path / "dev_seen.jsonl"
    memes.write_bytes(b'{"id": 1, "img": "img/1.png", "label": 0, "text": "ok"}\n'
                      b'{"id": 2, "img": "img/2.png", "label": 1, "text": "caf\xe9"}\n')  # fmt: skip
    with pytest.raises(TaskDataError, match=r"dev_seen.jsonl, line 2: not valid UTF-8 \(byte 0xe9\)"):
        HatefulMemes(memes, tmp_path)
    questions = tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json"
    questions.write_bytes(b'{"data_subtype": "val2014",\n "questions": [{"question": "caf\xe9"}]}')
    with pytest.raises(TaskDataError, match="questions.json, line 2: not valid UTF-8"):
        VQAv2(questions, None, tmp_path)
    rte = tmp_path / "RTE"
    rte.mkdir()
    (rte / "dev.tsv").write_bytes(b"index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\t\xff\tb\tentailment\n")
    with pytest.raises(TaskDataError, match=r"dev.tsv, line 3: not valid UTF-8 \(byte 0xff\)"):
        GlueTask(tmp_path, "rte", "dev")
