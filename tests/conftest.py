"""Shared test helpers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def load_benchmark():
    """Import a script of ``benchmarks/`` by name (``load_benchmark("speed")``); the
    benchmarks are scripts, not a package."""

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(autouse=True, scope="module")
def one_thread(request):
    """Two shared cores: one intra-op thread per process is much faster than two fighting.
    A test module opts in with ``ONE_THREAD = True``; the thread count is restored after it."""
    if not getattr(request.module, "ONE_THREAD", False):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def isolated_zoo(tmp_path, monkeypatch):
    """A zoo of the test's own: ``FLAVA_ZOO_HOME`` in ``tmp_path``, no offline switch, no
    extra registries, the registry cache reset before and after."""
    from flava_zoo import zoo

    monkeypatch.setenv("FLAVA_ZOO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FLAVA_ZOO_OFFLINE", raising=False)
    monkeypatch.delenv("FLAVA_ZOO_REGISTRY", raising=False)
    zoo.reset_registry()
    yield
    zoo.reset_registry()


@pytest.fixture(scope="session")
def shapes_tokenizer():
    """A WordPiece tokenizer of the shapes world's texts (captions, questions, hypotheses)."""
    from flava_zoo.data.shapes import ShapesWorld
    from flava_zoo.tokenizer import FlavaTokenizer

    return FlavaTokenizer.train(ShapesWorld().corpus("train", include_tasks=True, max_scenes=400), vocab_size=256)


@pytest.fixture(scope="session")
def random_export(tmp_path_factory, shapes_tokenizer):
    """An export folder of flava-tiny at random init (seed 0) with the shapes tokenizer and an
    ITM head: the probes' "random model"."""
    from flava_zoo import create_model
    from flava_zoo.checkpoint import save_pretrained
    from flava_zoo.models.heads import ITMHead

    torch.manual_seed(0)
    model = create_model("flava-tiny", text__vocab_size=shapes_tokenizer.vocab_size)
    head = ITMHead(model.config.multimodal.hidden_size)
    folder = tmp_path_factory.mktemp("random_export") / "flava-tiny-random"
    return save_pretrained(model, folder, tokenizer=shapes_tokenizer, heads={"itm_head": head})


def _finetune_checkpoint(tmp_path_factory, task: str) -> Path:
    """A 2-step Lightning fine-tune of flava-tiny on the shapes ``task`` recipe: a real
    FinetuneModule checkpoint (last.ckpt) for the probes' classifier loading."""
    from flava_zoo.cli import main

    tmp = tmp_path_factory.mktemp(f"ft_{task}")
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "finetune" / f"shapes_{task}.yaml"
    args = [
        "fit", "--config", str(recipe), f"--trainer.default_root_dir={tmp}", "--trainer.max_steps=2",
        "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1", "--trainer.precision=32",
        "--trainer.callbacks.init_args.every_n_train_steps=1",
        f"--trainer.callbacks.init_args.dirpath={tmp / 'checkpoints'}",
        "--data.init_args.train_size=16", "--data.init_args.val_size=8", "--data.init_args.test_size=8",
        "--data.init_args.batch_size=4", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(args) == 0
    finally:
        torch.set_num_threads(threads)
    return tmp / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="session")
def vqa_checkpoint(tmp_path_factory):
    """A (barely trained) shapes-VQA FinetuneModule checkpoint."""
    return _finetune_checkpoint(tmp_path_factory, "vqa")


@pytest.fixture(scope="session")
def memes_checkpoint(tmp_path_factory):
    """A (barely trained) shapes memes-like FinetuneModule checkpoint."""
    return _finetune_checkpoint(tmp_path_factory, "memes")
