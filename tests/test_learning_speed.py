"""The learning-speed levers and their table: the fused-term schedule, the shapes model, the
retrieval curve, the quickstart's options and the benchmark scripts' smoke runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest

from flava_zoo.data.datamodules import ShapesPretrainData
from flava_zoo.models.registry import get_config
from flava_zoo.training import FlavaPretrainModule

ROOT = Path(__file__).resolve().parents[1]
ONE_THREAD = True
FUSED = {"itm", "mmm_image", "mmm_text"}


def _trainer(steps, callbacks=(), root=None):
    return L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                     num_sanity_val_steps=0, default_root_dir=root, callbacks=list(callbacks))  # fmt: skip


def test_fused_terms_run_on_every_kth_step_and_leave_the_fusion_encoder_alone_between(tmp_path):
    terms, fusion_grads = [], []

    class Record(L.Callback):
        def on_before_optimizer_step(self, trainer, module, optimizer):
            fusion = module.model.fusion_encoder
            fusion_grads.append(any(p.grad is not None for p in fusion.parameters()))

    module = FlavaPretrainModule(stage="multimodal", fused_every=3, warmup_steps=1)
    original = module.objective.forward

    def spy(batch, fused=True):
        out = original(batch, fused=fused)
        terms.append(set(out.terms) - {"loss"})
        return out

    module.objective.forward = spy
    data = ShapesPretrainData(stage="multimodal", train_size=64, val_size=8, batch_size=8, captions="1")
    _trainer(6, [Record()], tmp_path).fit(module, datamodule=data)
    fused_steps = [bool(t & FUSED) for t in terms]
    assert fused_steps == [True, False, False, True, False, False]
    assert fusion_grads == fused_steps
    assert all("contrastive" in t for t in terms)


def test_fused_every_must_be_positive():
    with pytest.raises(ValueError, match="fused_every must be at least 1"):
        FlavaPretrainModule(stage="multimodal", fused_every=0)


def test_flava_tiny_shapes_is_flava_tiny_with_a_shallower_text_tower_and_fusion():
    tiny, shapes = get_config("flava-tiny"), get_config("flava-tiny-shapes")
    assert (shapes.text.num_layers, shapes.multimodal.num_layers) == (2, 1)
    assert shapes.image == tiny.image and shapes.text.hidden_size == tiny.text.hidden_size
    assert tiny.text.num_layers == 4  # flava-tiny itself stays as it was


def test_retrieval_curve_records_every_kth_step_and_the_last(tmp_path):
    from flava_zoo.data.datamodules import shapes_tokenizer
    from flava_zoo.data.shapes import ShapesWorld
    from flava_zoo.training.quickstart import RetrievalCurve

    world = ShapesWorld(seed=0)
    curve = RetrievalCurve(2, shapes_tokenizer(world), world, pairs=20)
    module = FlavaPretrainModule(model="flava-tiny-shapes", stage="multimodal", warmup_steps=1)
    data = ShapesPretrainData(stage="multimodal", train_size=64, val_size=8, batch_size=8, captions="1")
    _trainer(5, [curve], tmp_path).fit(module, datamodule=data)
    assert [p["step"] for p in curve.points] == [2, 4, 5]
    seconds = [p["seconds"] for p in curve.points]
    assert seconds == sorted(seconds) and seconds[0] > 0
    for point in curve.points:
        assert 0 <= point["image_to_text_R@1"] <= 100 and 0 <= point["text_to_image_R@1"] <= 100
    assert module.training  # evaluation hands the module back in train mode
    with pytest.raises(ValueError, match="every must be at least 1"):
        RetrievalCurve(0, None, world, 20)


def test_quickstart_options_come_from_run_and_the_old_spellings_still_work():
    from flava_zoo.training.quickstart import _legacy_spelling, build_parser, run

    parser = build_parser()
    args = parser.parse_args(_legacy_spelling(["--multimodal-steps", "7", "--no-progress", "--fused_every=3"]))
    assert args.multimodal_steps == 7 and args.progress is False and args.fused_every == 3
    import inspect

    assert set(vars(args)) == set(inspect.signature(run).parameters)
    help_text = parser.format_help()
    assert "fused terms" in help_text and "--multimodal_decay_steps" in help_text


def _script(*argv, cwd):
    return subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})  # fmt: skip


def test_learning_speed_script_writes_its_table_in_a_smoke_run(tmp_path):
    done = _script(str(ROOT / "benchmarks" / "learning_speed.py"), "--smoke", "--recipes", "0.2", "default",
                   "--out", str(tmp_path / "ls"), cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    table = (tmp_path / "ls.md").read_text()
    record = json.loads((tmp_path / "ls.json").read_text())
    assert set(record["runs"]) == {"0.2", "default"}
    for name, run in record["runs"].items():
        assert [p["step"] for p in run["metrics"]["curve"]] == [2, 4], name
        assert f"## Recipe {name}: R@1 during stage 3" in table
    assert record["runs"]["0.2"]["arguments"]["model"] == "flava-tiny"
    assert record["machine"]["cpu"]["model"] in table  # the machine is recorded, by name


def test_learning_levers_script_runs_a_curve_from_scratch(tmp_path):
    done = _script(str(ROOT / "benchmarks" / "learning_levers.py"), "curve", "--name", "smoke", "--image-steps", "2",
                   "--text-steps", "2", "--multimodal-steps", "4", "--batch-size", "8", "--eval-every", "2",
                   "--eval-pairs", "20", "--fused-every", "2", "--out", str(tmp_path / "levers"),
                   "--save-stages", str(tmp_path / "stages"), cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    log = json.loads((tmp_path / "levers" / "smoke.json").read_text())
    assert [e["step"] for e in log["evals"]] == [2, 4]
