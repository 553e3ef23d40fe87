"""The README's evaluation commands run as printed, in a fresh folder.

Each block after a ``<!-- readme-test: NAME -->`` marker is read from README.md and every
``flava-zoo`` line in it runs in-process. The Lightning commands get tiny-size overrides
appended (a few scenes, two steps), which change how much runs, not what; the model folder
``quickstart_out`` is a tiny export made here instead of a five-minute quickstart.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import torch
from PIL import Image

from flava_zoo.cli import main

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")

ROOT = Path(__file__).resolve().parents[1]
SIZES = [
    "--data.init_args.train_size=16",
    "--data.init_args.val_size=8",
    "--data.init_args.test_size=12",
    "--data.init_args.batch_size=4",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]
FIT = ["--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1",
       "--trainer.callbacks.init_args.every_n_train_steps=1"]  # fmt: skip


def readme_block(name: str) -> list[str]:
    """The ``flava-zoo`` lines of the README block after ``<!-- readme-test: name -->``."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    marker = f"<!-- readme-test: {name} -->"
    assert marker in text, f"README.md has no {marker}"
    block = text.split(marker, 1)[1].split("```", 2)[1]
    lines = [line.strip() for line in block.splitlines()[1:] if line.strip().startswith("flava-zoo ")]
    assert lines, f"the README block {name!r} has no flava-zoo command"
    return lines


@pytest.fixture
def fresh_folder(tmp_path, monkeypatch):
    """A working folder holding what the README assumes: the recipes, a pretrained export
    ``quickstart_out`` (tiny, with its vocabulary and heads), images and a caption list."""
    from flava_zoo.data import ShapesWorld
    from flava_zoo.data.datamodules import shapes_tokenizer
    from flava_zoo.training import FlavaPretrainModule

    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    torch.manual_seed(0)
    export = FlavaPretrainModule(model="flava-tiny", stage="multimodal").export(tmp_path / "quickstart_out")
    shapes_tokenizer(ShapesWorld(seed=0, sizes={"train": 200}), max_length=48).save(export)
    (tmp_path / "my_images").mkdir()
    for name, colour in (("a.png", (220, 20, 20)), ("b.png", (20, 20, 220))):
        Image.new("RGB", (64, 64), colour).save(tmp_path / "my_images" / name)
    (tmp_path / "captions.txt").write_text("a red circle\na blue square\n")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path
    torch.set_num_threads(threads)


def test_readme_evaluation_commands_run(fresh_folder):
    for line in readme_block("evaluate"):
        argv = shlex.split(line)[1:]
        if argv[0] in ("fit", "validate", "test", "predict"):
            argv += SIZES + (FIT if argv[0] == "fit" else [])
        assert main(argv) == 0, line
    assert (fresh_folder / "runs" / "shapes_memes" / "predictions.jsonl").is_file()
    assert (fresh_folder / "runs" / "probe_shapes_classification" / "predictions.jsonl").is_file()
    assert any((fresh_folder / "embeddings").iterdir())


def test_readme_evaluate_predictions_command_runs(tmp_path, monkeypatch):
    import json

    from flava_zoo.evaluation.submissions import write_memes_submission

    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data" / "hateful_memes"
    (data / "img").mkdir(parents=True)
    memes = [(1, 0), (2, 1), (3, 1), (4, 0)]
    for meme_id, _ in memes:
        Image.new("RGB", (8, 8)).save(data / "img" / f"{meme_id:05d}.png")
    (data / "dev_seen.jsonl").write_text("".join(
        json.dumps({"id": i, "img": f"img/{i:05d}.png", "label": y, "text": "x"}) + "\n" for i, y in memes))
    out = tmp_path / "runs" / "hateful_memes" / "submission"
    out.mkdir(parents=True)
    write_memes_submission({1: 0.1, 2: 0.9, 3: 0.4, 4: 0.2}, data / "dev_seen.jsonl", out)
    (line,) = readme_block("evaluate-predictions")
    assert main(shlex.split(line)[1:]) == 0


def test_readme_probe_commands_run(fresh_folder):
    """Every probe command of the README runs as printed (with --n 10: a few items), on the
    fine-tuned classifiers the block's own fit lines make; then the report."""
    import json
    import shutil

    stage = fresh_folder / "quickstart_out.run" / "stages" / "text"
    shutil.copytree(fresh_folder / "quickstart_out", stage)  # stands in for the quickstart's stage 2
    lines = readme_block("probes")
    probes = [line for line in lines if line.startswith("flava-zoo probe ") and " report " not in line]
    assert {shlex.split(line)[2] for line in probes} == set(__import__("flava_zoo.probes").probes.PROBES)
    for line in lines:
        argv = shlex.split(line)[1:]
        if argv[0] == "fit":
            argv += SIZES + FIT
        elif argv[1] != "report":
            argv += ["--n", "10", "--quiet"]
        assert main(argv) == 0, line
    written = {json.loads(x)["task"] for x in (fresh_folder / "probes" / "results.jsonl").read_text().splitlines()}
    assert written == {f"probe/{name}" for name in __import__("flava_zoo.probes").probes.PROBES}
    assert (fresh_folder / "probes" / "report" / "report.html").stat().st_size > 10_000


def test_readme_filter_commands_run(fresh_folder):
    """The README's filter lines run as printed (the shapes one on 40 scenes), and the
    pretraining fit reads the kept indices and the weak captions."""
    import json
    import shutil

    from flava_zoo.data import ShapesWorld

    world = ShapesWorld(sizes={"train": 10})
    rows = []
    for i in range(10):
        world.image("train", i).save(fresh_folder / f"{i}.png")
        rows.append(json.dumps({"image": f"{i}.png", "caption": world.caption("train", i)}))
    (fresh_folder / "pairs.jsonl").write_text("\n".join(rows) + "\n")
    # stage 2 of the recipe's chain, stood in for by the fresh folder's flava-tiny export
    shutil.copytree(fresh_folder / "quickstart_out", fresh_folder / "runs" / "shapes_text" / "export")
    tiny = ["--data.init_args.train_size=40", "--data.init_args.val_size=8", "--data.init_args.batch_size=4",
            "--model.init_args.model=flava-tiny", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false", *FIT]  # fmt: skip
    for line in readme_block("filter"):
        argv = shlex.split(line)[1:]
        if argv[0] == "fit":
            argv += tiny
        elif "--shapes" in argv:
            argv += ["--train-size", "40", "--quiet"]
        else:
            argv += ["--quiet"]
        assert main(argv) == 0, line
    assert len((fresh_folder / "pairs_kept.jsonl").read_text().splitlines()) == 7
    assert len(json.loads((fresh_folder / "keep.json").read_text())["indices"]) == 28
    assert (fresh_folder / "runs" / "shapes_multimodal" / "export" / "config.json").is_file()
