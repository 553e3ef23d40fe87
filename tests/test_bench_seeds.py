"""Seeded leaderboards: the interval and significance arithmetic on known records (checked
against scipy), the seeded suite format, keys, folders and resume, probe cells, the cost
columns read from what the runner records, the PNG, and a tiny seeded suite run end to end."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import re
from pathlib import Path

import lightning  # noqa: F401 - imported here, not inside the first cell's timing
import pytest
import yaml

from flava_zoo.bench import aggregate, cell_key, parse_suite
from flava_zoo.bench.cli import main as bench_main
from flava_zoo.bench.leaderboard import (
    cost_table,
    count_tests,
    lessons,
    model_costs,
    seeds_and_items,
    to_csv,
    to_markdown_table,
    write_chart,
)
from flava_zoo.bench.runner import cost_path, plan, run_suite
from flava_zoo.bench.suite import SuiteError, TaskSpec
from flava_zoo.evaluation.results import ResultRecord, read_results
from flava_zoo.stats import t_quantile

ONE_THREAD = True
"""One intra-op thread per process for this module's tests (tests/conftest.py)."""


def record(model: str, task: str, metric: str, value: float, seed: int, key: str = "k") -> ResultRecord:
    return ResultRecord(model=model, model_source="test", task=task, split="test", metric=metric, value=value,
                        num_samples=500, config_hash=key, package_version="0", git_commit="abc",
                        timestamp="2025-01-01T00:00:00+00:00", lineage={"seed": seed})  # fmt: skip


TASKS = [
    TaskSpec("vqa", "multimodal", "vqa_accuracy", chance=9.5),
    TaskSpec("memes", "multimodal", "auroc", chance=50.0),
]
VALUES = {  # model -> task -> values of seeds 0, 1, 2
    "merged": {"vqa": [46.0, 47.0, 48.0], "memes": [60.0, 62.0, 64.0]},
    "co_attention": {"vqa": [40.0, 41.0, 42.0], "memes": [58.0, 66.0, 62.0]},
}


def _records(seeds=(0, 1, 2)) -> list[ResultRecord]:
    return [record(m, t, TASKS[i].metric, v[s], s) for m, by in VALUES.items()
            for i, (t, v) in enumerate(by.items()) for s in seeds]  # fmt: skip


def _board(seeds=(0, 1, 2)):
    return aggregate(_records(seeds), list(VALUES), TASKS, baseline="merged")


def test_interval_and_significance_arithmetic_on_known_records():
    stats = pytest.importorskip("scipy.stats")
    board = _board()
    vqa = board.scores[("merged", "vqa")]
    half = t_quantile(0.975, 2) * 1.0 / math.sqrt(3)  # sd 1 over 3 seeds, t with 2 dof
    assert half == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert (vqa.value, vqa.interval.low, vqa.interval.high) == pytest.approx((47.0, 47.0 - half, 47.0 + half))
    assert vqa.values == (46.0, 47.0, 48.0) and vqa.seeds == (0, 1, 2) and vqa.interval.method == "t"

    co = board.scores[("co_attention", "vqa")]
    expected = stats.ttest_ind([40, 41, 42], [46, 47, 48], equal_var=False).pvalue
    assert co.p == pytest.approx(expected, rel=1e-6) and co.p < 0.05 and co.mark == "▼"
    memes = board.scores[("co_attention", "memes")]
    expected = stats.ttest_ind([58, 66, 62], [60, 62, 64], equal_var=False).pvalue
    assert memes.p == pytest.approx(expected, rel=1e-6) and memes.p > 0.05 and memes.mark == ""
    assert board.scores[("merged", "vqa")].p is None  # the baseline is not tested against itself

    # the multimodal average: per seed the mean of its tasks, then the t interval over seeds
    avg = board.group_averages[("merged", "multimodal")]
    assert avg.values == (53.0, 54.5, 56.0) and avg.value == pytest.approx(54.5)
    sd = math.sqrt(((53 - 54.5) ** 2 + (56 - 54.5) ** 2) / 2)
    assert avg.interval.high - 54.5 == pytest.approx(t_quantile(0.975, 2) * sd / math.sqrt(3))
    assert board.overall["merged"].values == avg.values and board.overall["merged"].seeds == (0, 1, 2)
    odd = aggregate([r for r in _records() if not (r.task == "memes" and r.lineage["seed"] == 0)], list(VALUES), TASKS)
    assert odd.group_averages[("merged", "multimodal")].interval is None  # tasks with other seeds: no per-seed mean

    table = to_markdown_table(board)
    assert table.splitlines()[0] == "| group | task | metric (%) | `merged` (baseline) | `co_attention` | chance |"
    row = next(line for line in table.splitlines() if "| vqa |" in line)
    assert row == (f"| multimodal | vqa | vqa_accuracy | **47.0 [{47 - half:.1f}, {47 + half:.1f}]** | "
                   f"41.0 [{41 - half:.1f}, {41 + half:.1f}]▼ | 9.5 |")  # fmt: skip
    assert "62.0 [" in next(line for line in table.splitlines() if "| memes |" in line)
    assert "▲" not in table

    rows = {r[1]: r for r in csv.reader(io.StringIO(to_csv(board)))}
    assert rows["task"][5:9] == ["merged", "merged_low", "merged_high", "merged_n"]
    assert [float(x) for x in rows["vqa"][5:8]] == pytest.approx([47.0, 47 - half, 47 + half], rel=1e-5)
    assert rows["vqa"][8] == "3"

    said = lessons(board)
    assert len(said) == 1  # one significant difference, one sentence
    assert said[0].startswith("- `co_attention` is below `merged` on `vqa` (vqa_accuracy): 41.0 [")
    assert said[0].endswith(f"Welch p = {co.p:.3f}.")
    text = " ".join(seeds_and_items(board))
    assert "Seeds: 0, 1, 2" in text and "Welch's two-sided t-test" in text and "`vqa` 500" in text
    assert "commits" not in text  # every record from one commit
    later = aggregate([*(board.scores[k].record for k in board.scores), dataclasses.replace(
        board.scores[("merged", "vqa")].record, lineage={"seed": 3}, git_commit="def")], list(VALUES), TASKS)  # fmt: skip
    assert "2 commits" in " ".join(seeds_and_items(later)) and later.scores[("merged", "vqa")].seeds == (2, 3)


def test_contrasts_test_pairs_beside_the_baseline():
    """A ``contrasts`` pair is tested on every row as the baseline is; the count of tests says
    how many significant rows chance alone would give."""
    stats = pytest.importorskip("scipy.stats")
    values = {**VALUES, "noisy": {"vqa": [30.0, 31.0, 32.0], "memes": [60.0, 62.0, 64.0]},
              "filtered": {"vqa": [36.0, 37.0, 38.0], "memes": [61.0, 62.0, 63.0]}}  # fmt: skip
    records = [record(m, t, TASKS[i].metric, v[s], s) for m, by in values.items()
               for i, (t, v) in enumerate(by.items()) for s in (0, 1, 2)]  # fmt: skip
    board = aggregate(records, list(values), TASKS, baseline="merged")
    said = lessons(board, contrasts=[("filtered", "noisy")])
    on_vqa = [s for s in said if s.startswith("- `filtered` is above `noisy` on `vqa`")]
    expected = stats.ttest_ind([36, 37, 38], [30, 31, 32], equal_var=False).pvalue
    assert len(on_vqa) == 1 and on_vqa[0].endswith(f"Welch p = {expected:.3f}.")
    assert not any("`filtered` is above `noisy` on `memes`" in s for s in said)  # not significant
    assert said == lessons(board) + on_vqa + [s for s in said if "`noisy` on the" in s]  # baseline ones first
    # rows: vqa, memes, multimodal average, macro average; 3 models against merged + 1 contrast
    assert count_tests(board) == 3 * 4 and count_tests(board, [("filtered", "noisy")]) == 4 * 4
    assert count_tests(_board(seeds=(0,))) == 0
    extra = [record("far", "vqa", "vqa_accuracy", 90.0 + s / 10, s) for s in (0, 1, 2)]
    extra += [record("far", "memes", "auroc", 60.0, s) for s in (0, 1, 2)]
    far = aggregate([*records, *extra], [*values, "far"], TASKS, baseline="merged")
    assert any(x.startswith("- `far` is above `merged` on `vqa`") and x.endswith("Welch p < 0.001.") for x in lessons(far))


def test_one_seed_gives_no_interval_and_no_marks():
    board = _board(seeds=(0,))
    assert board.scores[("co_attention", "vqa")].interval is None and board.scores[("co_attention", "vqa")].mark == ""
    assert "| 40.0 |" in to_markdown_table(board) and "[" not in to_markdown_table(board)
    assert "no interval and no significance test" in " ".join(seeds_and_items(board))
    assert lessons(board) == ["No design lesson is drawn: one seed gives no significance test."]


def test_chart_has_one_axis_per_metric_kind(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    tasks = [*TASKS, TaskSpec("tr", "multimodal", "image_to_text_R@1"),
             TaskSpec("share", "probes", "interaction_share/auroc", probe="interactions")]  # fmt: skip
    records = [record(m, "tr", "image_to_text_R@1", 10.0 + s, s) for m in VALUES for s in (0, 1, 2)]
    records += [record(m, "share", "interaction_share/auroc", 20.0 + s, s) for m in VALUES for s in (0, 1, 2)]
    records += [r for k, score in _board().scores.items() for r in [score.record] if r is not None]
    board = aggregate(records, list(VALUES), tasks, baseline="merged")
    seen = {}
    original = plt.Figure.savefig

    def spy(fig, path, *args, **kwargs):
        seen["titles"] = [ax.get_title() for ax in fig.axes]
        seen["error_bars"] = sum(len(ax.containers) for ax in fig.axes)
        seen["chance_lines"] = sum(1 for ax in fig.axes for c in ax.collections if c.get_linestyle()[0][1])  # dashed
        return original(fig, path, *args, **kwargs)

    plt.Figure.savefig = spy
    try:
        path = write_chart(board, tmp_path / "board.png", "t")
    finally:
        plt.Figure.savefig = original
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert seen["titles"] == ["accuracy-like", "AUROC", "R@K", "averages", "probe interactions"]
    assert seen["error_bars"] > 0 and seen["chance_lines"] == 2  # vqa's and memes' chance; tr states none


# ------------------------------------------------------------------------------ suites
def _suite_dict(tmp: Path) -> dict:
    return {
        "name": "seeded",
        "seeds": [0, 1],
        "baseline": "tiny",
        "results": str(tmp / "results.jsonl"),
        "leaderboard": str(tmp / "leaderboard"),
        "work_dir": str(tmp / "work"),
        "overrides": ["--data.init_args.test_size=8", "--data.init_args.batch_size=4"],
        "models": [{"name": "tiny", "source": "flava-tiny-shapes"}],
        "tasks": [
            {"name": "retrieval", "group": "multimodal", "recipe": "recipes/zeroshot/shapes_retrieval.yaml",
             "metric": "image_to_text_R@1"},
            {"name": "gap", "probe": "compositional", "metric": "gap/image_to_text_R@5", "split": "test_vs_test_novel",
             "options": {"n": 8, "parts": "retrieval"}},
        ],
    }  # fmt: skip


def _pretrained(tmp: Path) -> dict:
    data = _suite_dict(tmp)
    data["models"].append({"name": "pre", "pretrain": {
        "stages": ["multimodal"], "overrides": {"fusion": "merged"}, "steps": {"multimodal": 1}, "batch_size": 4}})
    data["tasks"].insert(1, {"name": "memes", "group": "multimodal", "recipe": "recipes/finetune/shapes_memes.yaml",
                             "metric": "auroc", "overrides": ["--trainer.max_steps=2"]})
    data["tasks"].append({"name": "share", "probe": "interactions", "classifier_task": "memes",
                          "metric": "interaction_share/auroc", "options": {"n": 8}})
    return data  # fmt: skip


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda d: d.update(seeds=[0, 0]), "seeds"),
        (lambda d: d.update(seeds=[-1]), "seeds"),
        (lambda d: d.update(seeds=[]), "seeds"),
        (lambda d: d.update(baseline="nope"), "baseline"),
        (lambda d: d.update(contrasts=[["random", "nope"]]), "contrasts[0]"),
        (lambda d: d.update(contrasts=[["random", "random"]]), "contrasts[0]"),
        (lambda d: d.update(contrasts="random"), "contrasts"),
        (lambda d: d["tasks"][1].update(probe="nope"), "tasks[1].probe"),
        (lambda d: d["tasks"][1].update(classifier_task="retrieval"), "tasks[1].classifier_task"),
        (lambda d: d["tasks"][1]["options"].update(seed=3), "tasks[1].options.seed"),
        (lambda d: d["tasks"][1].update(group="vision"), "tasks[1].group"),
    ],
)
def test_seeded_suite_errors_name_the_field(tmp_path, change, field):
    data = _suite_dict(tmp_path)
    change(data)
    with pytest.raises(SuiteError, match=re.escape(f"suite.yaml: {field}: ")):
        parse_suite(data, tmp_path / "suite.yaml")


def test_seeds_key_folder_command_and_resume(tmp_path):
    suite = parse_suite(_pretrained(tmp_path), tmp_path / "suite.yaml")
    assert suite.seeds == (0, 1) and suite.seeded and suite.baseline == "tiny"
    keys = suite.cell_keys()
    assert len(keys) == 2 * 2 * 4 and len(set(keys.values())) == len(keys)  # every (model, task, seed) its own

    unseeded = parse_suite({k: v for k, v in _suite_dict(tmp_path).items() if k != "seeds"}, tmp_path / "s.yaml")
    assert unseeded.seeds == (0,) and not unseeded.seeded
    m, t = unseeded.models[0], unseeded.tasks[0]
    assert unseeded.cell_keys()[("tiny", "retrieval", 0)] == cell_key(m, t)  # old suites keep their keys
    assert all("seed_everything" not in " ".join(c) for j in plan(unseeded).jobs for c in j.commands)

    work = plan(suite)
    labels = [j.label for j in work.jobs]
    assert labels[:2] == ["pretrain pre: multimodal stage (1 steps of batch 4, seed 0)",
                          "pretrain pre: multimodal stage (1 steps of batch 4, seed 1)"]  # fmt: skip
    assert "tiny x retrieval (seed 1)" in labels and "pre x share (seed 0)" in labels
    by_label = {j.label: j for j in work.jobs}
    stage = by_label[labels[1]]
    assert stage.folder.parent == tmp_path / "work" / "pretrain" / "seed1"
    assert "--seed_everything=1" in stage.commands[0]
    cell = by_label["pre x memes (seed 1)"]
    assert cell.folder == tmp_path / "work" / "cells" / "pre" / "seed1" / "memes"
    assert all("--seed_everything=1" in c for c in cell.commands) and cell.deps == [stage.key]
    probe = by_label["pre x share (seed 1)"]
    assert probe.commands == [] and probe.deps == [stage.key, cell.key]  # after its classifier's cell
    assert probe.probe["options"]["classifier"] == str(cell.folder.resolve() / "checkpoints" / "last.ckpt")
    assert probe.probe["options"]["seed"] == 1 and probe.probe["options"]["label"] == "pre"
    assert probe.probe["model"].endswith("export")

    # resume: a (model, task, seed) cell recorded under its key is not run again, the others are
    done = record("tiny", "retrieval", "image_to_text_R@1", 1.0, 0, keys[("tiny", "retrieval", 0)])
    from flava_zoo.evaluation.results import append_results

    append_results(suite.results, [done])
    again = [j.label for j in plan(suite).jobs]
    assert "tiny x retrieval (seed 0)" not in again and "tiny x retrieval (seed 1)" in again
    one = [j.label for j in plan(suite.select(seeds=[1])).jobs]
    assert all("seed 0" not in label for label in one) and "tiny x retrieval (seed 1)" in one
    only_probe = suite.select(tasks=["share"])
    assert [t.name for t in only_probe.tasks] == ["share", "memes"]  # its classifier's task comes along


def test_cost_columns_from_the_runners_lines(tmp_path):
    suite = parse_suite(_pretrained(tmp_path), tmp_path / "suite.yaml")
    pre = [suite.model("pre").with_seed(s) for s in (0, 1)]
    keys = suite.cell_keys()
    lines = [
        {"kind": "stage", "key": pre[0].pretrain.final.key, "wall_s": 10.0, "samples": 400, "parameters": 1000,
         "peak_memory_mib": 300.0, "memory": "peak RSS (VmHWM, reset at the job's start)"},
        {"kind": "stage", "key": pre[1].pretrain.final.key, "wall_s": 20.0, "samples": 400, "parameters": 1000,
         "peak_memory_mib": 320.0, "memory": "peak RSS (VmHWM, reset at the job's start)"},
        {"kind": "cell", "key": keys[("pre", "memes", 1)], "wall_s": 5.0, "parameters": 1000, "peak_memory_mib": 400.0},
        {"kind": "cell", "key": keys[("tiny", "retrieval", 0)], "wall_s": 1.0, "parameters": 900, "peak_memory_mib": 100.0},
    ]  # fmt: skip
    costs = model_costs(suite, lines)
    assert costs["pre"]["pretrain_wall_s"].estimate == 15.0 and costs["pre"]["pretrain_wall_s"].n == 2
    assert costs["pre"]["samples_per_s"].estimate == pytest.approx((40.0 + 20.0) / 2)
    assert costs["pre"]["peak_memory_mib"].estimate == pytest.approx((300.0 + 400.0) / 2)  # seed 1: its cell's peak
    assert costs["pre"]["parameters"].estimate == 1000
    assert costs["tiny"]["parameters"].estimate == 900 and costs["tiny"]["pretrain_wall_s"] is None
    table = cost_table(suite, lines)
    assert table[0].startswith("| model | parameters | pretraining wall time (s) |")
    assert "| `tiny` | 900 | – | – | 100.0 |" in table
    assert "VmHWM" in table[-1]


# --------------------------------------------------------------------------- end to end
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_tiny_seeded_suite_runs_resumes_and_builds(tmp_path, capsys):
    path = tmp_path / "suite.yaml"
    data = _suite_dict(tmp_path)  # an architecture: random weights drawn from each seed
    data["tasks"][0] = {"name": "memes", "group": "multimodal", "recipe": "recipes/finetune/shapes_memes.yaml",
                        "metric": "auroc", "chance": 50.0,
                        "overrides": ["--trainer.max_steps=2", "--data.init_args.train_size=8",
                                      "--trainer.limit_val_batches=0", "--model.init_args.warmup_steps=1"]}
    data["tasks"].append({"name": "full", "probe": "interactions", "classifier_task": "memes", "metric": "full/auroc",
                          "options": {"n": 6}})  # fmt: skip
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert bench_main(["run", str(path), "--no-chart"]) == 0
    records = read_results(tmp_path / "results.jsonl")
    tasks = ("memes", "gap", "full")
    assert {(r.task, r.lineage["seed"]) for r in records} == {(t, s) for t in tasks for s in (0, 1)}
    cells = tmp_path / "work" / "cells" / "tiny"
    assert (cells / "seed1" / "gap" / "results.jsonl").is_file()
    memes = sorted(r.model_source for r in records if r.task == "memes" and r.metric == "auroc")
    assert len(memes) == 2 and "seed0" in memes[0] and "seed1" in memes[1]  # one fine-tuning per seed
    probe = next(r for r in records if r.task == "full" and r.lineage["seed"] == 1 and r.metric == "full/auroc")
    assert str(cells / "seed1" / "memes" / "checkpoints" / "last.ckpt") in str(probe.lineage.get("classifier"))
    # the probe on an architecture reads the vocabulary the shapes recipes train for it
    assert (cells / "seed0" / "gap" / "tokenizer" / "vocab.txt").is_file()
    lines = [json.loads(x) for x in cost_path(tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 6 and all(x["parameters"] > 0 and x["peak_memory_mib"] > 0 for x in lines)

    md = (tmp_path / "leaderboard.md").read_text()
    assert "Seeds: 0, 1 (2 runs per cell" in md and "## Cost" in md and "| `tiny` |" in md
    assert "| probes | gap | gap/image_to_text_R@5 |" in md and "| probes | full | full/auroc |" in md
    assert "## Design lessons" in md.split("## Cost")[1]  # the lessons close the document

    suite = parse_suite(data, path)
    assert run_suite(suite).ran == 0  # everything recorded: resumed, nothing runs
    capsys.readouterr()
    assert bench_main(["build", str(path)]) == 0
    assert (tmp_path / "leaderboard.png").read_bytes()[:4] == b"\x89PNG"
