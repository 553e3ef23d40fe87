"""The suite fields behind the leaderboard's design axes: ``late_fusion`` (a model's
multimodal tasks through the late-fusion head), ``tasks`` (a model scored on some tasks only)
and ``pretrain.filter`` (the multimodal stage trained on the pairs another model's contrastive
score keeps): their checks, keys, commands and plans, and a tiny suite with all three run
end to end."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import lightning  # noqa: F401 - imported here, not inside the first cell's timing
import pytest
import torch
import yaml

from flava_zoo.bench import parse_suite
from flava_zoo.bench.cli import main as bench_main
from flava_zoo.bench.runner import cell_commands, filter_arguments, plan, run_suite, stage_folder
from flava_zoo.bench.suite import LATE_FUSION_HIDDEN, SuiteError
from flava_zoo.evaluation.results import read_results

ONE_THREAD = True
"""One intra-op thread per process for this module's tests (tests/conftest.py)."""

NOISY_ARGS = ["--data.init_args.train_size=8", "--data.init_args.val_size=4", "--data.init_args.caption_noise=0.5",
              "--data.init_args.noise_seed=3"]  # fmt: skip


def _suite(tmp: Path) -> dict:
    stage = {"stages": ["multimodal"], "overrides": {"fusion": "merged"},
             "loss_weights": {"contrastive": 1, "itm": 0, "mmm_image": 0, "mmm_text": 0},
             "steps": {"multimodal": 1}, "batch_size": 4, "args": list(NOISY_ARGS)}  # fmt: skip
    return {
        "name": "axes",
        "results": str(tmp / "results.jsonl"),
        "leaderboard": str(tmp / "leaderboard"),
        "work_dir": str(tmp / "work"),
        "overrides": ["--data.init_args.test_size=8", "--data.init_args.batch_size=4"],
        "models": [
            {"name": "noisy", "pretrain": stage},
            {"name": "filtered", "pretrain": {**copy.deepcopy(stage), "filter": {"by": "noisy", "keep": 0.5}}},
            {"name": "dual", "source": "flava-tiny", "overrides": {"fusion": "none"}, "late_fusion": True},
            {"name": "text_only", "source": "flava-tiny", "tasks": ["entailment"]},
        ],
        "tasks": [
            {"name": "retrieval", "group": "multimodal", "recipe": "recipes/zeroshot/shapes_retrieval.yaml",
             "metric": "image_to_text_R@1"},
            {"name": "memes", "group": "multimodal", "recipe": "recipes/finetune/shapes_memes.yaml", "metric": "auroc",
             "overrides": ["--trainer.max_steps=2", "--data.init_args.train_size=8", "--trainer.limit_val_batches=0",
                           "--model.init_args.warmup_steps=1"]},
            {"name": "entailment", "group": "language", "recipe": "recipes/finetune/shapes_caption_entailment.yaml",
             "metric": "accuracy",
             "overrides": ["--trainer.max_steps=2", "--data.init_args.train_size=8", "--trainer.limit_val_batches=0",
                           "--model.init_args.warmup_steps=1"]},
        ],
    }  # fmt: skip


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda d: d["models"][2].update(late_fusion="yes"), "models[2].late_fusion"),
        (lambda d: d["models"][3].update(tasks=[]), "models[3].tasks"),
        (lambda d: d["models"][3].update(tasks=["glue"]), "models[3].tasks"),
        (lambda d: d["models"][1]["pretrain"]["filter"].update(by="nobody"), "models[1].pretrain.filter.by"),
        (lambda d: d["models"][1]["pretrain"]["filter"].update(by="dual"), "models[1].pretrain.filter.by"),
        (lambda d: d["models"][1]["pretrain"]["filter"].update(keep=0), "models[1].pretrain.filter.keep"),
        (lambda d: d["models"][1]["pretrain"]["filter"].update(keep=1.5), "models[1].pretrain.filter.keep"),
        (lambda d: d["models"][1]["pretrain"]["filter"].update(share=0.5), "models[1].pretrain.filter.share"),
        # ``by`` must be listed before the filtered model (its stages are known when it is read)
        (lambda d: d["models"].reverse(), "models[2].pretrain.filter.by"),
        # the filter scores primary captions: a stage reading others would train on other pairs
        (lambda d: d["models"][1]["pretrain"]["args"].append("--data.init_args.captions=random"),
         "models[1].pretrain.filter"),
        # a probe needs the task whose classifier it queries
        (lambda d: (d["tasks"].append({"name": "share", "probe": "interactions", "classifier_task": "memes",
                                       "metric": "interaction_share/auroc"}),
                    d["models"][3].update(tasks=["share"])), "models[3].tasks"),
        # the late-fusion head is FinetuneModule's: a multimodal fit of another module has none
        (lambda d: d["tasks"].append({"name": "ft_retrieval", "group": "multimodal", "metric": "text_to_image_R@1",
                                      "recipe": "recipes/finetune/shapes_retrieval.yaml"}), "models[2].late_fusion"),
        (lambda d: d.update(contrasts=[["filtered", "noisy"], ["noisy", "filtered"]]), "contrasts[1]"),
        (lambda d: d.update(baseline="noisy", contrasts=[["filtered", "noisy"]]), "contrasts[0]"),
    ],
)
def test_axis_fields_are_checked(tmp_path, change, field):
    data = _suite(tmp_path)
    change(data)
    with pytest.raises(SuiteError) as err:
        parse_suite(data, tmp_path / "axes.yaml")
    assert str(err.value).startswith(f"{tmp_path / 'axes.yaml'}: {field}: ")


def test_late_fusion_goes_to_multimodal_fine_tuning_only(tmp_path):
    data = _suite(tmp_path)
    data["tasks"].append({"name": "interactions", "probe": "interactions", "classifier_task": "memes",
                          "metric": "interaction_share/auroc"})  # fmt: skip
    suite = parse_suite(data, tmp_path / "axes.yaml")
    dual = suite.model("dual")
    flag, mlp = "--model.init_args.late_fusion=true", f"--model.init_args.head_hidden={LATE_FUSION_HIDDEN}"
    commands = {t.name: cell_commands(suite, dual, t) for t in suite.tasks if t.probe is None}
    assert all(flag in argv and mlp in argv for argv in commands["memes"]) and len(commands["memes"]) == 2  # fit, test
    assert not any(flag in argv or mlp in argv for argv in commands["entailment"] + commands["retrieval"])
    # the same weights without the head: the cells the head changes get other keys, no others
    data["models"][2].pop("late_fusion")
    plain = parse_suite(data, tmp_path / "axes.yaml")
    assert plain.model("dual").key == dual.key
    assert not any(flag in argv for argv in cell_commands(plain, plain.model("dual"), plain.task("memes")))
    before, after = plain.cell_keys(), suite.cell_keys()
    changed = {t for (m, t, _), k in after.items() if m == "dual" and before[(m, t, 0)] != k}
    assert changed == {"memes", "interactions"}  # its fine-tuning, and the probe that queries it
    # a recipe that sets its own head keeps it
    data["models"][2]["late_fusion"] = True
    data["tasks"][1]["overrides"].append("--model.init_args.head_hidden=32")
    own = parse_suite(data, tmp_path / "axes.yaml")
    argv = cell_commands(own, own.model("dual"), own.task("memes"))[0]
    assert flag in argv and mlp not in argv and argv[-1] == "--model.init_args.head_hidden=32"


def test_tasks_subset_plans_and_keys_only_those_cells(tmp_path):
    suite = parse_suite(_suite(tmp_path), tmp_path / "axes.yaml")
    assert {t for m, t, _ in suite.cell_keys() if m == "text_only"} == {"entailment"}
    labels = [j.label for j in plan(suite).jobs if j.model == "text_only"]
    assert labels == ["text_only x entailment"]
    assert not any(c[0] == "text_only" for c in plan(suite).skipped)  # not its cells: not skipped either


def test_filter_keys_its_model_and_share_and_waits_for_it(tmp_path):
    data = _suite(tmp_path)
    suite = parse_suite(data, tmp_path / "axes.yaml")
    noisy, filtered = suite.model("noisy").pretrain.final, suite.model("filtered").pretrain.final
    assert filtered.filter.by_stage.key == noisy.key and filtered.key != noisy.key
    other = copy.deepcopy(data)
    other["models"][1]["pretrain"]["filter"]["keep"] = 0.7
    assert parse_suite(other).model("filtered").pretrain.final.key != filtered.key
    other = copy.deepcopy(data)
    other["models"][0]["pretrain"]["steps"]["multimodal"] = 2  # another scoring model: another filtered stage
    assert parse_suite(other).model("filtered").pretrain.final.key != filtered.key

    args = filter_arguments(suite, filtered)
    assert args[:2] == ["--model", str((stage_folder(suite, noisy) / "export").resolve())]
    assert args[2] == "--shapes"  # a flag; options and values follow
    pairs = dict(zip(args[3::2], args[4::2], strict=True))
    assert {k: pairs[k] for k in ("--caption-noise", "--noise-seed", "--train-size", "--keep")} == {
        "--caption-noise": "0.5", "--noise-seed": "3", "--train-size": "8", "--keep": "0.5"}  # fmt: skip

    # only the filtered model selected: the scoring model's stage runs first, then the filter
    out = io.StringIO()
    run_suite(suite.select(models=["filtered"]), dry_run=True, stream=out)
    assert "    flava-zoo filter --model " in out.getvalue()  # the dry run shows the filter step
    jobs = {j.key: j for j in plan(suite.select(models=["filtered"])).jobs}
    assert noisy.key in jobs and jobs[filtered.key].deps == [noisy.key]
    assert jobs[filtered.key].filter == args
    assert f"--data.init_args.keep={stage_folder(suite, filtered).resolve() / 'keep.json'}" in jobs[filtered.key].commands[0]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_tiny_axes_suite_runs_end_to_end(tmp_path):
    data = _suite(tmp_path)
    data["tasks"] = data["tasks"][1:]  # memes and entailment: the fine-tuned heads
    path = tmp_path / "axes.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert bench_main(["run", str(path), "--no-chart"]) == 0
    records = read_results(tmp_path / "results.jsonl")
    cells = {(r.model, r.task) for r in records}
    assert cells == {(m, t) for m in ("noisy", "filtered", "dual") for t in ("memes", "entailment")} | {
        ("text_only", "entailment")}  # fmt: skip

    suite = parse_suite(data, path)
    filtered = suite.model("filtered").pretrain.final
    kept = json.loads((stage_folder(suite, filtered) / "keep.json").read_text())
    assert len(kept["indices"]) == 4 and kept["caption_noise"] == 0.5 and kept["noise_seed"] == 3
    log = (stage_folder(suite, filtered) / "log.txt").read_text()
    assert log.index("+ flava-zoo filter") < log.index("+ flava-zoo fit")

    # the dual encoder's memes classifier was fine-tuned through the late-fusion head
    ckpt = next((tmp_path / "work" / "cells" / "dual" / "memes" / "checkpoints").glob("last*.ckpt"))
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["hyper_parameters"]["late_fusion"] is True
    md = (tmp_path / "leaderboard.md").read_text()
    assert "- `text_only`: scored on `entailment` only (`tasks` in the suite)" in md
    assert "`text_only` x `memes`" not in md  # not a missing cell: not one of its cells


def test_gpu_variant_scales_every_model_once_and_parses(tmp_path):
    """benchmarks/gpu_leaderboard.py derives its suite from the CPU one: same models, tasks and
    seeds; steps scaled once per model (YAML anchors share one object between models)."""
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("gpu_leaderboard", root / "benchmarks" / "gpu_leaderboard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    raw = yaml.safe_load((root / "benchmarks" / "suites" / "shapes.yaml").read_text())
    cpu = parse_suite(raw)
    gpu = parse_suite(module.derive(raw, 2, 128))
    assert [m.name for m in gpu.models] == [m.name for m in cpu.models] and gpu.seeds == cpu.seeds
    assert [t.name for t in gpu.tasks] == [t.name for t in cpu.tasks]
    for c, g in zip(cpu.models, gpu.models, strict=True):
        if c.pretrain is None:
            continue
        assert [s.steps * 2 for s in c.pretrain.stages] == [s.steps for s in g.pretrain.stages]
        assert {s.batch_size for s in g.pretrain.stages} == {128}
        assert g.late_fusion == c.late_fusion and g.tasks == c.tasks
        assert (g.pretrain.final.filter is None) == (c.pretrain.final.filter is None)
    assert cpu.model("merged").pretrain.final.steps == 700  # the CPU suite is left as it is
    assert gpu.results.name == "results_shapes_gpu.jsonl" and gpu.work_dir.name == "shapes_gpu"
    def steps(suite):
        return [int(o.split("=")[1]) for o in suite.task("vqa").overrides if o.startswith("--trainer.max_steps=")]

    assert steps(gpu) == [2 * steps(cpu)[0]]
    smoke = module.smoke(module.derive(raw, 2, 128))
    parsed = parse_suite(smoke)
    assert [m.name for m in parsed.models] == ["random_init"] and [t.name for t in parsed.tasks] == ["caption_entailment"]
