"""The leaderboard files of a suite: Markdown (with how it was produced), CSV and PNG."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from .._jsonl import read_jsonl
from ..evaluation.results import read_results
from .environment import describe_machine
from .leaderboard import (
    ALPHA,
    Leaderboard,
    aggregate,
    cost_table,
    count_tests,
    lessons,
    read_costs,
    seeds_and_items,
    to_csv,
    to_markdown_table,
    write_chart,
)
from .runner import cost_path, model_reference, runs_log_path
from .suite import Suite, describe_stage_args

__all__ = ["BuildOutput", "build", "read_runs"]


@dataclasses.dataclass
class BuildOutput:
    board: Leaderboard
    markdown: str
    paths: dict[str, Path]


def read_runs(results: str | Path) -> list[dict[str, Any]]:
    """The run log next to a results file (one entry per ``bench run``), oldest first."""
    path = runs_log_path(results)
    if not path.is_file():
        return []
    return [record for _, record in read_jsonl(path)]


def _latest_entries(runs: list[dict[str, Any]], suite_name: str) -> dict[str, tuple[int, dict[str, Any]]]:
    """The latest log entry of each job key, with the index of the run that wrote it."""
    out: dict[str, tuple[int, dict[str, Any]]] = {}
    for i, run in enumerate(runs):
        if run.get("suite") != suite_name:
            continue
        for entry in run.get("work", []):
            out[entry["key"]] = (i, entry)
    return out


def _display_path(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        return os.path.relpath(path, Path.cwd()) if Path(path).is_absolute() else str(path)
    except ValueError:
        return str(path)


def build(
    suite: Suite,
    out: str | Path | None = None,
    partial: bool = False,
    chart: bool = True,
    command: str = "",
) -> BuildOutput:
    """Aggregate the suite's results file into ``<out>.md``, ``<out>.csv`` and ``<out>.png``
    (``out`` defaults to the suite's ``leaderboard``)."""
    records = read_results(suite.results) if suite.results.is_file() else []
    runs = read_runs(suite.results)
    latest = _latest_entries(runs, suite.name)
    keys = suite.cell_keys()  # (model, task, seed) -> key
    notes = {}
    for (m, t, _), key in keys.items():
        if key in latest and latest[key][1]["status"] != "ok":
            entry = latest[key][1]
            notes.setdefault((m, t), entry.get("error") or entry["status"])
    for m in suite.models:
        for t in suite.tasks:
            if not m.runs(t.name):
                notes[(m.name, t.name)] = f"not one of its tasks (the model is scored on {', '.join(m.tasks or ())})"
    board = aggregate(records, [m.name for m in suite.models], list(suite.tasks), keys, partial, notes, suite.averages,
                      suite.baseline)  # fmt: skip
    markdown = render(suite, board, runs, latest, keys, command)
    stem = Path(out) if out is not None else suite.leaderboard
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = {"md": stem.with_name(stem.name + ".md"), "csv": stem.with_name(stem.name + ".csv")}
    paths["md"].write_text(markdown, encoding="utf-8")
    paths["csv"].write_text(to_csv(board), encoding="utf-8")
    if chart:
        png = write_chart(board, stem.with_name(stem.name + ".png"), f"{suite.name}: headline metric per task, group and macro averages")
        if png is not None:
            paths["png"] = png
    return BuildOutput(board, markdown, paths)


def render(
    suite: Suite,
    board: Leaderboard,
    runs: list[dict[str, Any]],
    latest: dict[str, tuple[int, dict[str, Any]]],
    keys: dict[tuple[str, str, int], str],
    command: str = "",
) -> str:
    """The Markdown document: provenance header, the table, models, tasks, missing cells, time."""
    lines = [f"# {suite.title}" if suite.title else f"# Leaderboard: `{suite.name}`", ""]
    stage_keys = [s.key for m in suite.seeded_models() if m.pretrain for s in m.pretrain.stages]
    contributing = sorted({latest[k][0] for k in (*keys.values(), *stage_keys)
                           if k in latest and latest[k][1]["status"] == "ok"})  # fmt: skip
    if contributing:
        last = runs[contributing[-1]]
        state = f"`{last.get('commit')}`" + (" with uncommitted changes" if last.get("dirty") else "")
        load = last.get("machine", {}).get("load_average")
        load_end = last.get("load_average_end")
        wall = sum(runs[i].get("wall_s", 0.0) for i in contributing)
        cpu = sum(runs[i].get("cpu_s", 0.0) for i in contributing)
        stopped = sum(not runs[i].get("finished", True) for i in contributing)
        lines += [
            f"- Command: `{last.get('command') or '(not recorded)'}`"
            + (f" (resuming {len(contributing) - 1} earlier run(s) whose work is kept)" if len(contributing) > 1 else ""),
            f"- Commit: {state}",
            f"- Machine: {describe_machine(last.get('machine', {}))}"
            + (f"; load average {load[0]} when the run started" if load else "")
            + (f", {load_end[0]} when it ended" if load_end else ""),
            f"- Wall time: {wall / 60:.1f} min ({cpu / 60:.1f} min of CPU time in the jobs), "
            f"{last.get('jobs', 1)} job(s) x {last.get('threads', '?')} thread(s); started {last.get('started', '?')}"
            + (f"; {stopped} run(s) stopped before their end" if stopped else ""),
        ]
    else:
        lines.append("- No run of this suite is recorded next to the results file.")
    lines.append(f"- Results: `{_display_path(suite.results)}` (one record per model, task and metric)"
                 + (f"; built with `{command}`" if command else ""))  # fmt: skip
    if suite.description:
        lines += ["", suite.description]
    lines += ["", to_markdown_table(board), "", *seeds_and_items(board), ""]
    if not suite.averages:
        lines.append(
            "Each task shows its headline metric in percent, the unit of every record. "
            + ("The chance column is the score of guessing (stated per task in the suite). " if board.has_chance else "")
            + "The best number of each row is in bold."
        )
    else:
        lines.append(
            "Each task shows its headline metric in percent, the unit of every record (records written before "
            "records stated a unit are read as fractions, times 100, except R@K recall, which was in percent "
            "already); a group's average is the mean of its tasks, and the "
            "macro average the mean of the group averages, as in FLAVA's Table 4. "
            + ("An average marked * is over the tasks that ran. " if any(a.partial for a in board.group_averages.values()) else
               "An average over a group with a missing task is n/a. ")
            + "The best number of each row is in bold."
        )  # fmt: skip
    lines += ["", "## Models", ""]
    for m in suite.models:
        text = f"- `{m.name}`" + (f": {m.description}" if m.description else "")
        if m.pretrain is not None:
            text += ". Pretrained here: " + " → ".join(describe_stage_args(s) for s in m.pretrain.stages)
        else:
            text += f". Weights: `{model_reference(suite, m)}`" + (f", overrides {json.dumps(m.overrides)}" if m.overrides else "")
        lines.append(text)
    lines += ["", "## Tasks", ""]
    for t in suite.tasks:
        how = "fine-tuned, then tested" if t.mode == "fit_test" else "tested (nothing fine-tuned)"
        text = f"- `{t.name}` ({t.group}, `{t.metric}` on `{t.split}`): " + (f"{t.description} " if t.description else "")
        if t.probe is not None:
            text += (f"probe `{t.probe}` ({json.dumps(t.probe_options, sort_keys=True)}) on each model and seed"
                     + (f", querying its fine-tuned `{t.classifier_task}` classifier" if t.classifier_task else ""))  # fmt: skip
        else:
            text += f"`{_display_path(t.recipe)}`, {how}"
        if t.overrides:
            text += "; overrides " + " ".join(f"`{o}`" for o in t.overrides)
        lines.append(text)
    subset = {m.name: m.tasks for m in suite.models if m.tasks is not None}
    missing = [(m, t, s.note) for (m, t), s in board.scores.items()
               if s.value is None and (m not in subset or t in subset[m])]  # fmt: skip
    if missing or subset:
        lines += ["", "## Cells without a number", ""]
        lines += [f"- `{m}`: scored on {', '.join(f'`{t}`' for t in tasks)} only (`tasks` in the suite)"
                  for m, tasks in subset.items()]  # fmt: skip
        lines += [f"- `{m}` x `{t}`: {note}" for m, t, note in missing]
    costs = cost_table(suite, read_costs(cost_path(suite.results)))
    if costs:
        lines += ["", "## Cost", "", *costs]
    timing = _timing(suite, latest, keys)
    if timing:
        lines += ["", "## Time per job (seconds, wall / CPU)" + (f", seed {suite.seeds[0]}" if suite.seeded else ""),
                  "", *timing]  # fmt: skip
    said = lessons(board, contrasts=suite.contrasts)
    lines += ["", "## Design lessons", "", *said]
    n = count_tests(board, suite.contrasts)
    if n and said[0].startswith("- "):
        tested = " and ".join(x for x in ("each model against the baseline" if board.baseline else "",
                                            "each pair of `contrasts`" if suite.contrasts else "") if x)  # fmt: skip
        lines += ["", f"These sentences come from {n} Welch tests (every row, {tested}) at p < {ALPHA}: with no "
                      f"true difference anywhere, about {n * ALPHA:.1f} of them would be significant by chance alone, "
                      "so a lone lesson on one row is weaker evidence than a pattern across rows."]  # fmt: skip
    return "\n".join(lines) + "\n"


def _timing(suite: Suite, latest: dict[str, tuple[int, dict[str, Any]]], keys: dict[tuple[str, str, int], str]) -> list[str]:
    rows = []
    stage_users: dict[str, list[str]] = {}
    first = suite.seeds[0]
    models = [m.with_seed(first if suite.seeded else None) for m in suite.models]
    for m in models:
        for s in m.pretrain.stages if m.pretrain else ():
            stage_users.setdefault(s.key, []).append(m.name)
    header = "| model | pretraining | " + " | ".join(t.name for t in suite.tasks) + " |"
    rows += [header, "|---|---:|" + "---:|" * len(suite.tasks)]
    any_time = False
    for m in models:
        parts = []
        for s in m.pretrain.stages if m.pretrain else ():
            if s.key in latest:
                e = latest[s.key][1]
                shared = len(stage_users[s.key]) > 1
                parts.append(f"{s.stage} {e.get('wall_s', 0):.0f}/{e.get('cpu_s', 0):.0f}" + ("†" if shared else ""))
                any_time = True
        cells = []
        for t in suite.tasks:
            k = keys.get((m.name, t.name, first))  # None: not a cell of this model
            if k in latest and "wall_s" in latest[k][1]:
                e = latest[k][1]
                cells.append(f"{e['wall_s']:.0f}/{e['cpu_s']:.0f}")
                any_time = True
            else:
                cells.append("")
        rows.append(f"| `{m.name}` | {', '.join(parts) or '-'} | " + " | ".join(cells) + " |")
    if not any_time:
        return []
    if any(len(u) > 1 for u in stage_users.values()):
        rows += ["", "† a stage shared by several models (same settings up to it): it ran once."]
    return rows
