"""From results records to a leaderboard: FLAVA's Table 4 layout in Markdown, CSV and a chart.

Per task the headline metric of each model, in percent (the unit of every record; old
records without a unit are converted when read); a group's average is the mean of its tasks; the macro average is the mean of the group
averages (vision, language, multimodal), as FLAVA's Table 4 computes it. An average over a
group with a missing task is ``n/a`` unless ``partial`` is asked for, in which case it is the
mean of the tasks present and is marked. A leaderboard built with ``averages=False`` shows the
tasks alone; tasks with a ``chance`` level add a chance column.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..evaluation.results import PERCENT, ResultRecord
from .suite import GROUPS, TaskSpec

__all__ = ["UNIT", "Average", "Leaderboard", "Score", "aggregate", "to_csv", "to_markdown_table", "write_chart"]

UNIT = PERCENT
"""The unit of every number of a leaderboard (and of the records it is built from)."""


@dataclasses.dataclass(frozen=True)
class Score:
    """One model's headline number on one task (``None``: not available, ``note`` says why)."""

    value: float | None
    num_samples: int | None = None
    record: ResultRecord | None = None
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Average:
    """A mean over ``count`` of ``expected`` entries; ``partial`` when it stands on fewer
    entries than expected (or on partial averages)."""

    value: float | None
    count: int
    expected: int
    partial: bool = False


@dataclasses.dataclass
class Leaderboard:
    """Scores, group averages and macro averages of ``models`` over ``tasks``."""

    models: list[str]
    tasks: list[TaskSpec]
    scores: dict[tuple[str, str], Score]
    group_averages: dict[tuple[str, str], Average]
    overall: dict[str, Average]
    averages: bool = True

    @property
    def has_chance(self) -> bool:
        """Whether some task states its chance level (the tables then show a chance column)."""
        return any(t.chance is not None for t in self.tasks)

    @property
    def groups(self) -> list[str]:
        present = {t.group for t in self.tasks}
        return [g for g in GROUPS if g in present]

    def rows(self) -> list[tuple[str, str, str, str, list[float | None], list[bool]]]:
        """Table rows in display order: ``(group, label, metric, kind, values, partial flags)``
        with ``kind`` ``task``, ``group`` or ``overall``."""
        out = []
        for group in self.groups:
            for task in (t for t in self.tasks if t.group == group):
                values = [self.scores[(m, task.name)].value for m in self.models]
                out.append((group, task.name, task.metric, "task", values, [False] * len(values)))
            if not self.averages:
                continue
            avgs = [self.group_averages[(m, group)] for m in self.models]
            out.append((group, f"{group} average", "", "group", [a.value for a in avgs], [a.partial for a in avgs]))
        if not self.averages:
            return out
        overall = [self.overall[m] for m in self.models]
        out.append(("all", "macro average", "", "overall", [a.value for a in overall], [a.partial for a in overall]))
        return out


def _mean(values: Sequence[float | None], partial: bool, inner_partial: bool = False) -> Average:
    present = [v for v in values if v is not None]
    if not present or (len(present) < len(values) and not partial):
        return Average(None, len(present), len(values))
    value = math.fsum(present) / len(present)
    return Average(value, len(present), len(values), len(present) < len(values) or inner_partial)


def aggregate(
    records: Iterable[ResultRecord],
    models: Sequence[str],
    tasks: Sequence[TaskSpec],
    keys: Mapping[tuple[str, str], str] | None = None,
    partial: bool = False,
    notes: Mapping[tuple[str, str], str] | None = None,
    averages: bool = True,
) -> Leaderboard:
    """Build the leaderboard of ``models`` x ``tasks`` from ``records``.

    A score is the value of the record of (model, task name, task split, task metric), in
    percent, times the task's ``scale`` (default 1); with ``keys`` only records whose
    ``config_hash`` is the cell's key count (older configurations are ignored); when several
    match, the latest wins. A record in another unit than ``%`` is not mixed in: its cell is
    n/a with a note. ``notes`` explain missing cells. ``averages=False``: the tables show the
    tasks alone (the averages are still computed).
    """
    latest: dict[tuple[str, str, str, str], ResultRecord] = {}
    for r in records:
        if keys is not None and keys.get((r.model, r.task)) != r.config_hash:
            continue
        k = (r.model, r.task, r.split, r.metric)
        if k not in latest or r.timestamp >= latest[k].timestamp:
            latest[k] = r
    scores: dict[tuple[str, str], Score] = {}
    for m in models:
        for t in tasks:
            r = latest.get((m, t.name, t.split, t.metric))
            if r is None:
                note = (notes or {}).get((m, t.name), "not run")
                scores[(m, t.name)] = Score(None, note=note)
            elif r.unit != UNIT:
                note = f"recorded in unit {r.unit!r}, not {UNIT!r}"
                scores[(m, t.name)] = Score(None, r.num_samples, r, note=note)
            else:
                scores[(m, t.name)] = Score(r.value * t.scale, r.num_samples, r)
    group_averages: dict[tuple[str, str], Average] = {}
    overall: dict[str, Average] = {}
    groups = [g for g in GROUPS if any(t.group == g for t in tasks)]
    for m in models:
        for g in groups:
            group_averages[(m, g)] = _mean([scores[(m, t.name)].value for t in tasks if t.group == g], partial)
        avgs = [group_averages[(m, g)] for g in groups]
        overall[m] = _mean([a.value for a in avgs], partial, any(a.partial for a in avgs))
    return Leaderboard(list(models), list(tasks), scores, group_averages, overall, averages)


# ------------------------------------------------------------------------------ outputs
def _fmt(value: float | None, partial: bool = False, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}" + ("*" if partial else "")


def to_markdown_table(board: Leaderboard, digits: int = 1) -> str:
    """The table: tasks as rows (grouped, with group and macro averages), models as columns,
    numbers in percent (the header says so); the best number of each row in bold (when one
    model alone has it); a chance column last when some task states its chance level."""
    chance = {t.name: t.chance for t in board.tasks} if board.has_chance else None
    head = f"| group | task | metric ({UNIT}) | " + " | ".join(f"`{m}`" for m in board.models) + " |"
    sep = "|---|---|---|" + "---:|" * len(board.models)
    if chance is not None:
        head, sep = head + " chance |", sep + "---:|"
    lines = [head, sep]
    for group, label, metric, kind, values, partial in board.rows():
        shown = [v for v in values if v is not None]
        best = max(shown) if len(shown) > 1 and shown.count(max(shown)) == 1 else None
        cells = []
        for v, p in zip(values, partial):
            text = _fmt(v, p, digits)
            cells.append(f"**{text}**" if best is not None and v == best else text)
        name = label if kind == "task" else f"*{label}*"
        if chance is not None:
            cells.append(_fmt(chance.get(label), digits=digits) if kind == "task" else "")
        lines.append(f"| {group if kind != 'overall' else ''} | {name} | {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def to_csv(board: Leaderboard) -> str:
    """The rows of the Markdown table, unrounded (6 significant digits), with a ``unit``
    column (``%``): an empty cell is n/a, a trailing ``*`` marks a partial average."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    chance = {t.name: t.chance for t in board.tasks} if board.has_chance else None
    writer.writerow(["group", "task", "metric", "split", "unit", *board.models, *(["chance"] if chance is not None else [])])
    splits = {t.name: t.split for t in board.tasks}
    for group, label, metric, kind, values, partial in board.rows():
        cells = ["" if v is None else f"{v:.6g}" + ("*" if p else "") for v, p in zip(values, partial)]
        if chance is not None:
            level = chance.get(label) if kind == "task" else None
            cells.append("" if level is None else f"{level:.6g}")
        writer.writerow([group, label, metric, splits.get(label, "") if kind == "task" else "", UNIT, *cells])
    return buf.getvalue()


def write_chart(board: Leaderboard, path: str | Path, title: str = "") -> Path | None:
    """A grouped bar chart (one bar per model, per task and average) as PNG; ``None`` (with a
    message) when matplotlib is not installed (``pip install 'flava-zoo[bench]'``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[bench] matplotlib is not installed: no chart (pip install 'flava-zoo[bench]')")
        return None
    rows = board.rows()
    n_models = len(board.models)
    width = 0.8 / max(1, n_models)
    fig, ax = plt.subplots(figsize=(max(8.0, 1.1 * len(rows) + 2), 4.8), dpi=110)
    colours = plt.get_cmap("tab10")
    for i, model in enumerate(board.models):
        xs, heights, hatches = [], [], []
        for j, (_, _, _, _, values, partial) in enumerate(rows):
            x = j + (i - (n_models - 1) / 2) * width
            if values[i] is None:
                ax.text(x, 0.5, "n/a", rotation=90, ha="center", va="bottom", fontsize=6, color="grey")
                continue
            xs.append(x)
            heights.append(values[i])
            hatches.append("//" if partial[i] else "")
        bars = ax.bar(xs, heights, width, label=model, color=colours(i % 10), edgecolor="white", linewidth=0.5)
        for bar, hatch in zip(bars, hatches):
            bar.set_hatch(hatch)
    labels = [label if kind == "task" else label.replace(" average", "\naverage") for _, label, _, kind, _, _ in rows]
    ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize=8)
    boundaries = [j + 0.5 for j, row in enumerate(rows[:-1]) if row[3] != "task"]
    for b in boundaries:
        ax.axvline(b, color="grey", linewidth=0.6, linestyle=":")
    ax.set_ylabel(f"score ({UNIT})")
    ax.set_title(title or "leaderboard", fontsize=10)
    ax.legend(fontsize=7, ncol=min(n_models, 5), loc="upper center", bbox_to_anchor=(0.5, -0.32), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def summary(board: Leaderboard) -> dict[str, Any]:
    """The macro averages as a plain dict (for printing and tests)."""
    return {
        m: {
            **{g: board.group_averages[(m, g)].value for g in board.groups},
            "overall": board.overall[m].value,
        }
        for m in board.models
    }
