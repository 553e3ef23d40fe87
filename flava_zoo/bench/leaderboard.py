"""From results records to a leaderboard: FLAVA's Table 4 layout in Markdown, CSV and a chart.

Per task the headline metric of each model, in percent (the unit of every record; old
records without a unit are converted when read); a group's average is the mean of its tasks; the macro average is the mean of the group
averages (vision, language, multimodal), as FLAVA's Table 4 computes it. An average over a
group with a missing task is ``n/a`` unless ``partial`` is asked for, in which case it is the
mean of the tasks present and is marked. A leaderboard built with ``averages=False`` shows the
tasks alone; tasks with a ``chance`` level add a chance column.

Seeds: a cell is the mean over the seeds that recorded it, with Student's t 95% interval
(``n - 1`` degrees of freedom, :func:`flava_zoo.stats.t_interval`); an average is the mean
of its tasks' means, its interval the t interval of the per-seed averages (when every task
has every seed). Against the suite's ``baseline`` model, each other model's cell is tested
by Welch's two-sided t-test over seeds (:func:`flava_zoo.stats.welch_test`); it is marked
``▲`` (above) or ``▼`` (below) only where p < 0.05. With one seed there is no interval and
no test (nothing is marked). :func:`lessons` turns each significant difference into one
sentence. Probe tasks (group ``probes``) are shown after the averages and are part of none.
Cost columns (:func:`model_costs`) come from the runner's cost lines
(:func:`flava_zoo.bench.runner.cost_path`).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .._jsonl import read_jsonl
from ..evaluation.results import PERCENT, ResultRecord
from ..stats import Interval, t_interval, welch_test
from .suite import GROUPS, PROBE_GROUP, Suite, TaskSpec

__all__ = ["ALPHA", "UNIT", "Average", "Leaderboard", "Score", "aggregate", "cost_table", "lessons", "metric_kind",
           "model_costs", "seeds_and_items", "count_tests", "to_csv", "to_markdown_table", "write_chart"]  # fmt: skip

ALPHA = 0.05
"""The significance level of the marks and of the design lessons (Welch's t-test, two-sided)."""
ABOVE, BELOW = "▲", "▼"
TEST_NOTE = (f"{ABOVE} / {BELOW}: above / below the baseline model on that row, Welch's two-sided t-test over "
             f"seeds (unequal variances, Welch-Satterthwaite degrees of freedom) at p < {ALPHA}; unmarked: "
             "not significant, or fewer than two seeds.")  # fmt: skip

UNIT = PERCENT
"""The unit of every number of a leaderboard (and of the records it is built from)."""


@dataclasses.dataclass(frozen=True)
class Score:
    """One model's headline number on one task (``None``: not available, ``note`` says why):
    the mean over ``seeds`` of their ``values``, its t ``interval`` (``None`` for one seed);
    ``p`` the Welch p-value against the baseline and ``mark`` ``▲``/``▼`` where p < 0.05."""

    value: float | None
    num_samples: int | None = None
    record: ResultRecord | None = None
    note: str = ""
    values: tuple[float, ...] = ()
    seeds: tuple[int, ...] = ()
    interval: Interval | None = None
    p: float | None = None
    mark: str = ""
    unit: str = UNIT
    commits: tuple[str, ...] = ()
    """The git commits its records ran at (a table assembled from several resumed runs)."""


@dataclasses.dataclass(frozen=True)
class Average:
    """A mean over ``count`` of ``expected`` entries; ``partial`` when it stands on fewer
    entries than expected (or on partial averages). ``values``: the per-seed averages of
    ``seeds`` (when every entry has the same seeds), with their t ``interval``, ``p`` and
    ``mark`` as for a :class:`Score`."""

    value: float | None
    count: int
    expected: int
    partial: bool = False
    values: tuple[float, ...] = ()
    interval: Interval | None = None
    p: float | None = None
    mark: str = ""
    seeds: tuple[int, ...] = ()


@dataclasses.dataclass
class Leaderboard:
    """Scores, group averages and macro averages of ``models`` over ``tasks``."""

    models: list[str]
    tasks: list[TaskSpec]
    scores: dict[tuple[str, str], Score]
    group_averages: dict[tuple[str, str], Average]
    overall: dict[str, Average]
    averages: bool = True
    baseline: str | None = None
    seeds: tuple[int, ...] = ()
    """Every seed some record of the board came from."""

    @property
    def has_chance(self) -> bool:
        """Whether some task states its chance level (the tables then show a chance column)."""
        return any(t.chance is not None for t in self.tasks)

    @property
    def groups(self) -> list[str]:
        """The Table 4 groups that have tasks, in order (probe tasks are in none)."""
        present = {t.group for t in self.tasks}
        return [g for g in GROUPS if g in present]

    def table(self) -> list[tuple[str, str, str, str, list[Score | Average]]]:
        """Table rows in display order: ``(group, label, metric, kind, cells)`` with ``kind``
        ``task``, ``group``, ``overall`` or ``probe`` (after the averages)."""
        out: list[tuple[str, str, str, str, list[Score | Average]]] = []
        for group in self.groups:
            for task in (t for t in self.tasks if t.group == group):
                out.append((group, task.name, task.metric, "task", [self.scores[(m, task.name)] for m in self.models]))
            if self.averages:
                out.append((group, f"{group} average", "", "group", [self.group_averages[(m, group)] for m in self.models]))
        if self.averages and self.groups:
            out.append(("all", "macro average", "", "overall", [self.overall[m] for m in self.models]))
        for task in (t for t in self.tasks if t.group == PROBE_GROUP):
            out.append((PROBE_GROUP, task.name, task.metric, "probe", [self.scores[(m, task.name)] for m in self.models]))
        return out

    def rows(self) -> list[tuple[str, str, str, str, list[float | None], list[bool]]]:
        """:meth:`table` as numbers: ``(group, label, metric, kind, values, partial flags)``."""
        return [(g, label, metric, kind, [c.value for c in cells], [isinstance(c, Average) and c.partial for c in cells])
                for g, label, metric, kind, cells in self.table()]  # fmt: skip


def _mean(cells: Sequence[Score | Average], partial: bool, inner_partial: bool = False) -> Average:
    present = [c for c in cells if c.value is not None]
    if not present or (len(present) < len(cells) and not partial):
        return Average(None, len(present), len(cells))
    value = math.fsum(c.value for c in present) / len(present)  # type: ignore[misc]
    per_seed: tuple[float, ...] = ()
    interval = None
    seed_sets = {c.seeds for c in present}
    if len(present) == len(cells) and len(seed_sets) == 1 and seed_sets != {()}:
        per_seed = tuple(math.fsum(col) / len(col) for col in zip(*(c.values for c in present)))
        interval = t_interval(per_seed) if len(per_seed) > 1 else None
    seeds = next(iter(seed_sets)) if per_seed else ()
    return Average(value, len(present), len(cells), len(present) < len(cells) or inner_partial, per_seed, interval,
                   seeds=seeds)  # fmt: skip


def _tested(cell: Score | Average, base: Score | Average, alpha: float) -> Score | Average:
    """``cell`` with its Welch p-value against ``base`` and its mark (p < ``alpha``)."""
    if cell.value is None or base.value is None or len(cell.values) < 2 or len(base.values) < 2:
        return cell
    _, p = welch_test(cell.values, base.values)
    mark = "" if p >= alpha else (ABOVE if cell.value > base.value else BELOW)
    return dataclasses.replace(cell, p=p, mark=mark)


def aggregate(
    records: Iterable[ResultRecord],
    models: Sequence[str],
    tasks: Sequence[TaskSpec],
    keys: Mapping[tuple[Any, ...], str] | None = None,
    partial: bool = False,
    notes: Mapping[tuple[str, str], str] | None = None,
    averages: bool = True,
    baseline: str | None = None,
    alpha: float = ALPHA,
) -> Leaderboard:
    """Build the leaderboard of ``models`` x ``tasks`` from ``records``.

    A score is the mean over seeds of the record of (model, task name, task split, task
    metric), in percent, times the task's ``scale`` (default 1), with its t interval. With
    ``keys`` only records whose ``config_hash`` is the cell's key count (older
    configurations are ignored): ``(model, task) -> key`` (the seed then read from each
    record's ``lineage["seed"]``, default 0) or ``(model, task, seed) -> key``
    (:meth:`flava_zoo.bench.suite.Suite.cell_keys`). When several records match one
    (model, task, seed), the latest wins. A record in another unit than ``%`` is not mixed in
    (its cell is n/a with a note), except on a probe task, which shows its record's unit.
    ``notes`` explain missing cells. ``averages=False``: the tables show the tasks alone (the
    averages are still computed). ``baseline``: the model the others are tested against
    (Welch's t-test, p < ``alpha``).
    """
    accepted: dict[tuple[str, str], dict[str, int | None]] = {}
    for k, key in (keys or {}).items():
        accepted.setdefault((k[0], k[1]), {})[key] = k[2] if len(k) > 2 else None
    latest: dict[tuple[str, str, str, str, int], ResultRecord] = {}
    for r in records:
        if keys is not None:
            seeds = accepted.get((r.model, r.task), {})
            if r.config_hash not in seeds:
                continue
            seed = seeds[r.config_hash]
        else:
            seed = None
        if seed is None:
            seed = int(r.lineage.get("seed", 0)) if isinstance(r.lineage.get("seed", 0), int) else 0
        k = (r.model, r.task, r.split, r.metric, seed)
        if k not in latest or r.timestamp >= latest[k].timestamp:
            latest[k] = r
    by_cell: dict[tuple[str, str, str, str], dict[int, ResultRecord]] = {}
    for (m, t, split, metric, seed), r in latest.items():
        by_cell.setdefault((m, t, split, metric), {})[seed] = r
    scores: dict[tuple[str, str], Score] = {}
    all_seeds: set[int] = set()
    for m in models:
        for t in tasks:
            found = by_cell.get((m, t.name, t.split, t.metric), {})
            if not found:
                note = (notes or {}).get((m, t.name), "not run")
                scores[(m, t.name)] = Score(None, note=note)
                continue
            seeds = tuple(sorted(found))
            rs = [found[s] for s in seeds]
            units = {r.unit for r in rs}
            if t.group != PROBE_GROUP and units != {UNIT}:
                note = f"recorded in unit {sorted(units - {UNIT})[0]!r}, not {UNIT!r}"
                scores[(m, t.name)] = Score(None, rs[-1].num_samples, rs[-1], note=note)
                continue
            if len(units) > 1:
                scores[(m, t.name)] = Score(None, rs[-1].num_samples, rs[-1], note=f"records in several units {sorted(units)}")
                continue
            values = tuple(r.value * t.scale for r in rs)
            all_seeds.update(seeds)
            samples = {r.num_samples for r in rs}
            scores[(m, t.name)] = Score(
                math.fsum(values) / len(values), max(samples), rs[-1], values=values, seeds=seeds,
                interval=t_interval(values) if len(values) > 1 else None, unit=rs[0].unit,
                commits=tuple(sorted({r.git_commit or "unknown" for r in rs})),
            )  # fmt: skip
    group_averages: dict[tuple[str, str], Average] = {}
    overall: dict[str, Average] = {}
    groups = [g for g in GROUPS if any(t.group == g for t in tasks)]
    for m in models:
        for g in groups:
            group_averages[(m, g)] = _mean([scores[(m, t.name)] for t in tasks if t.group == g], partial)
        avgs = [group_averages[(m, g)] for g in groups]
        overall[m] = _mean(avgs, partial, any(a.partial for a in avgs))
    if baseline is not None and baseline in models:
        for m in models:
            if m == baseline:
                continue
            for t in tasks:
                scores[(m, t.name)] = _tested(scores[(m, t.name)], scores[(baseline, t.name)], alpha)  # type: ignore[assignment]
            for g in groups:
                group_averages[(m, g)] = _tested(group_averages[(m, g)], group_averages[(baseline, g)], alpha)  # type: ignore[assignment]
            overall[m] = _tested(overall[m], overall[baseline], alpha)  # type: ignore[assignment]
    return Leaderboard(list(models), list(tasks), scores, group_averages, overall, averages,
                       baseline if baseline in models else None, tuple(sorted(all_seeds)))  # fmt: skip


# ------------------------------------------------------------------------------ outputs
def _fmt(value: float | None, partial: bool = False, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}" + ("*" if partial else "")


def _cell_text(cell: Score | Average, digits: int = 1) -> str:
    """``mean [low, high]`` with the mark (``▲``/``▼``) and ``*`` for a partial average."""
    text = _fmt(cell.value, digits=digits)
    if cell.value is not None and cell.interval is not None:
        text += f" [{cell.interval.low:.{digits}f}, {cell.interval.high:.{digits}f}]"
    if isinstance(cell, Average) and cell.partial and cell.value is not None:
        text += "*"
    return text + cell.mark


def to_markdown_table(board: Leaderboard, digits: int = 1) -> str:
    """The table: tasks as rows (grouped, with group and macro averages, then the probe rows),
    models as columns, each cell the mean over seeds with its 95% t interval in brackets and
    ``▲``/``▼`` where it differs significantly from the baseline; numbers in percent (the
    header says so; a probe row in another unit names it); the best mean of each row in bold
    (when one model alone has it); a chance column last when some task states its chance
    level."""
    chance = {t.name: t.chance for t in board.tasks} if board.has_chance else None
    head = f"| group | task | metric ({UNIT}) | " + " | ".join(
        f"`{m}`" + (" (baseline)" if m == board.baseline else "") for m in board.models) + " |"  # fmt: skip
    sep = "|---|---|---|" + "---:|" * len(board.models)
    if chance is not None:
        head, sep = head + " chance |", sep + "---:|"
    lines = [head, sep]
    for group, label, metric, kind, cells in board.table():
        shown = [c.value for c in cells if c.value is not None]
        best = max(shown) if len(shown) > 1 and shown.count(max(shown)) == 1 else None
        texts = []
        for c in cells:
            text = _cell_text(c, digits)
            texts.append(f"**{text}**" if best is not None and c.value == best else text)
        units = {c.unit for c in cells if isinstance(c, Score) and c.value is not None}
        if kind == "probe" and units and units != {UNIT}:
            metric = f"{metric} ({', '.join(sorted(units))})"
        name = label if kind in ("task", "probe") else f"*{label}*"
        if chance is not None:
            texts.append(_fmt(chance.get(label), digits=digits) if kind in ("task", "probe") else "")
        lines.append(f"| {group if kind != 'overall' else ''} | {name} | {metric} | " + " | ".join(texts) + " |")
    return "\n".join(lines)


def to_csv(board: Leaderboard) -> str:
    """The rows of the Markdown table, unrounded (6 significant digits), with a ``unit``
    column: per model its mean, the interval's ``_low`` and ``_high`` (empty for one seed)
    and ``_n`` (the seeds it stands on); an empty mean is n/a, a trailing ``*`` marks a
    partial average."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    chance = {t.name: t.chance for t in board.tasks} if board.has_chance else None
    per_model = [name for m in board.models for name in (m, f"{m}_low", f"{m}_high", f"{m}_n")]
    writer.writerow(["group", "task", "metric", "split", "unit", *per_model, *(["chance"] if chance is not None else [])])
    splits = {t.name: t.split for t in board.tasks}
    for group, label, metric, kind, cells in board.table():
        out = []
        unit = UNIT
        for c in cells:
            if c.value is None:
                out += ["", "", "", ""]
                continue
            if isinstance(c, Score):
                unit = c.unit
            partial = "*" if isinstance(c, Average) and c.partial else ""
            iv = c.interval
            out += [f"{c.value:.6g}{partial}", "" if iv is None else f"{iv.low:.6g}", "" if iv is None else f"{iv.high:.6g}",
                    str(len(c.values) or 1)]  # fmt: skip
        if chance is not None:
            level = chance.get(label) if kind in ("task", "probe") else None
            out.append("" if level is None else f"{level:.6g}")
        writer.writerow([group, label, metric, splits.get(label, "") if kind in ("task", "probe") else "", unit, *out])
    return buf.getvalue()


def metric_kind(task: TaskSpec) -> str:
    """The axis a task's metric is drawn on: ``probe <name>`` (a probe task: one axis per
    probe, e.g. the interaction share, the pointing game, the compositional gap), ``AUROC``,
    ``R@K`` (retrieval recall) or ``accuracy-like`` (accuracy, VQA accuracy, F1,
    correlations x 100)."""
    if task.group == PROBE_GROUP:
        return f"probe {task.probe}" if task.probe else "probe"
    if "auroc" in task.metric.lower():
        return "AUROC"
    if "R@" in task.metric:
        return "R@K"
    return "accuracy-like"


def write_chart(board: Leaderboard, path: str | Path, title: str = "") -> Path | None:
    """Bar charts as one PNG, one axis per metric kind (:func:`metric_kind`; the averages on
    an axis of their own): one bar per model and row, the mean over seeds, with error bars
    (the 95% t interval) where there are several seeds, and each task's chance level as a
    dashed line across its bars. ``None`` (with a message) when matplotlib is not installed
    (``pip install 'flava-zoo[bench]'``); matplotlib is the plotting library of the bench
    extra, nothing here is hand-drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[bench] matplotlib is not installed: no chart (pip install 'flava-zoo[bench]')")
        return None
    by_name = {t.name: t for t in board.tasks}
    panels: dict[str, list[tuple[str, str, list[Score | Average]]]] = {}
    for _, label, _, kind, cells in board.table():
        axis = metric_kind(by_name[label]) if kind in ("task", "probe") else "averages"
        panels.setdefault(axis, []).append((label, kind, cells))
    order = [k for k in ("accuracy-like", "AUROC", "R@K", "averages") if k in panels]
    order += [k for k in panels if k not in order]  # the probes, in the table's order
    n_models = len(board.models)
    width = 0.8 / max(1, n_models)
    widths = [max(2.0, 0.9 * len(panels[k]) + 1.0) for k in order]
    fig, axes = plt.subplots(1, len(order), figsize=(sum(widths) + 1.5, 4.8), dpi=110, squeeze=False,
                             gridspec_kw={"width_ratios": widths})  # fmt: skip
    palette = "tab10" if len(board.models) <= 10 else "tab20"  # one colour per model
    colours = plt.get_cmap(palette)
    ncolours = colours.N
    chance_drawn = False
    for ax, kind in zip(axes[0], order):
        rows = panels[kind]
        for i, model in enumerate(board.models):
            xs, heights, errors, hatches = [], [], [[], []], []
            for j, (_, _, cells) in enumerate(rows):
                c = cells[i]
                x = j + (i - (n_models - 1) / 2) * width
                if c.value is None:
                    ax.text(x, 0.0, "n/a", rotation=90, ha="center", va="bottom", fontsize=6, color="grey")
                    continue
                xs.append(x)
                heights.append(c.value)
                low, high = (c.interval.low, c.interval.high) if c.interval is not None else (c.value, c.value)
                errors[0].append(c.value - low)
                errors[1].append(high - c.value)
                hatches.append("//" if isinstance(c, Average) and c.partial else "")
            bars = ax.bar(xs, heights, width, yerr=errors, capsize=2, label=model if kind == order[0] else None,
                          color=colours(i % ncolours), edgecolor="white", linewidth=0.5,
                          error_kw={"elinewidth": 0.8, "ecolor": "black"})  # fmt: skip
            for bar, hatch in zip(bars, hatches):
                bar.set_hatch(hatch)
        for j, (label, row_kind, _) in enumerate(rows):
            task = by_name.get(label)
            if row_kind in ("task", "probe") and task is not None and task.chance is not None:
                ax.hlines(task.chance, j - 0.45, j + 0.45, colors="black", linestyles="--", linewidth=0.9,
                          label="chance" if not chance_drawn else None)  # fmt: skip
                chance_drawn = True
        ax.set_xticks(range(len(rows)), [label.replace(" average", "\naverage") for label, _, _ in rows],
                      rotation=30, ha="right", fontsize=8)  # fmt: skip
        ax.set_title(kind, fontsize=9)
        probe_metrics = sorted({by_name[label].metric for label, row_kind, _ in rows if row_kind == "probe"})
        ax.set_ylabel(", ".join(probe_metrics) if probe_metrics else f"{kind} ({UNIT})", fontsize=8)
        if not probe_metrics:  # percentages: an interval past 0 or 100 (few seeds) is cut at the frame
            ax.set_ylim(-5, 105)
        ax.grid(axis="y", alpha=0.3)
    seeds = f"; mean over {len(board.seeds)} seeds, 95% t intervals" if len(board.seeds) > 1 else ""
    fig.suptitle((title or "leaderboard") + seeds, fontsize=10)
    fig.legend(fontsize=7, ncol=min(n_models + 1, 6), loc="lower center", frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def seeds_and_items(board: Leaderboard) -> list[str]:
    """Markdown lines stating the seeds, the test items of each task and the test."""
    n = len(board.seeds)
    if n > 1:
        lines = [f"Seeds: {', '.join(map(str, board.seeds))} ({n} runs per cell; each seed drives the model's "
                 "pretraining and its fine-tuning: `--seed_everything`). A cell is the mean over seeds with its 95% "
                 f"Student's t interval (n - 1 degrees of freedom) in brackets. {TEST_NOTE}"]  # fmt: skip
        if board.baseline is None:
            lines[0] += " The suite names no `baseline`: nothing is tested."
    else:
        lines = [f"Seeds: {n and board.seeds[0]} (one run per cell): no interval and no significance test; nothing "
                 "is marked."]  # fmt: skip
    items = []
    for t in board.tasks:
        counts = sorted({s.num_samples for m in board.models if (s := board.scores[(m, t.name)]).num_samples})
        if counts:
            items.append(f"`{t.name}` {'/'.join(f'{c:,}' for c in counts)}")
    if items:
        lines.append("Test items per task (the records' `num_samples`): " + ", ".join(items) + ".")
    commits = sorted({c for s in board.scores.values() for c in s.commits})
    if len(commits) > 1:
        lines.append(f"The records come from {len(commits)} commits (runs resumed at different times; each "
                     "record names its own): " + ", ".join(f"`{c[:10]}`" for c in commits) + ".")  # fmt: skip
    return lines


def lessons(board: Leaderboard, digits: int = 1, contrasts: Sequence[tuple[str, str]] = ()) -> list[str]:
    """One sentence per significant difference from the baseline (task, average and probe
    rows), e.g. "`co_attention` is below `merged` on `vqa` (vqa_accuracy): 41.2 [38.0, 44.4] vs
    46.8 [45.1, 48.5], Welch p = 0.01."; then one per significant difference of each
    ``contrasts`` pair ``(model, against)`` (the suite's ``contrasts``: comparisons a design
    question needs beside the baseline, e.g. a filtered data set against the noisy one); none
    where nothing is significant (one line says so)."""
    if len(board.seeds) < 2:
        return ["No design lesson is drawn: one seed gives no significance test."]
    if board.baseline is None and not contrasts:
        return ["No design lesson is drawn: the suite names no baseline."]
    pairs = _tested_pairs(board, contrasts)
    out = []
    for model, against in pairs:
        for _, label, metric, _kind, cells in board.table():
            base = cells[board.models.index(against)]
            c = cells[board.models.index(model)]
            if against != board.baseline:
                c = _tested(c, base, ALPHA)
            if not c.mark or c.p is None:
                continue
            where = f"`{label}` ({metric})" if metric else f"the {label}"
            side = "above" if c.mark == ABOVE else "below"
            out.append(f"- `{model}` is {side} `{against}` on {where}: {_cell_text(dataclasses.replace(c, mark=''), digits)}"
                       f" vs {_cell_text(dataclasses.replace(base, mark=''), digits)}, Welch p {_p_clause(c.p)}.")  # fmt: skip
    if not out:
        against = f"`{board.baseline}`" if board.baseline is not None else "the contrasted models"
        return [f"No difference from {against} is significant at p < {ALPHA} (Welch's t-test over "
                f"{len(board.seeds)} seeds): no design lesson is drawn."]  # fmt: skip
    return out


def _tested_pairs(board: Leaderboard, contrasts: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """``(model, against)``: each model against the baseline, then each contrast on the board."""
    pairs = [(m, board.baseline) for m in board.models if board.baseline is not None and m != board.baseline]
    return pairs + [(m, a) for m, a in contrasts if m in board.models and a in board.models]


def count_tests(board: Leaderboard, contrasts: Sequence[tuple[str, str]] = ()) -> int:
    """How many Welch tests :func:`lessons` ran (cells with two or more seeds on both sides):
    at p < 0.05 about one in twenty of them is significant by chance alone."""
    pairs = _tested_pairs(board, contrasts)
    n = 0
    for model, against in pairs:
        for *_, cells in board.table():
            c, base = cells[board.models.index(model)], cells[board.models.index(against)]
            n += c.value is not None and base.value is not None and len(c.values) >= 2 and len(base.values) >= 2
    return n


def _p_clause(p: float) -> str:
    """``< 0.001`` or ``= 0.012``: what follows "p" in a sentence."""
    return "< 0.001" if p < 0.001 else f"= {p:.3f}"


# ------------------------------------------------------------------------------- cost
COST_COLUMNS = (("parameters", "parameters"), ("pretrain_wall_s", "pretraining wall time (s)"),
                ("samples_per_s", "pretraining samples/s"), ("peak_memory_mib", "peak memory (MiB)"))  # fmt: skip
"""The cost columns: field -> heading."""


def read_costs(path: str | Path) -> list[dict[str, Any]]:
    """The runner's cost lines (:func:`flava_zoo.bench.runner.cost_path`), oldest first; none
    when the file does not exist."""
    path = Path(path)
    return [line for _, line in read_jsonl(path)] if path.is_file() else []


def model_costs(suite: Suite, lines: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Interval | None]]:
    """Per model, each cost column over its seeds (mean and t interval; ``None``: not recorded).

    Per (model, seed), from the latest line of each job key: pretraining wall time = the sum
    of its stages' wall times (a stage shared with other models counts for each of them:
    it is part of each one's pretraining), samples/s = the stages' samples over that time,
    parameters = the final stage's count (a model taken as it is: any of its cells'), peak
    memory = the largest of its stages' and cells' peaks (each line says how it was
    measured)."""
    latest = {str(line.get("key")): line for line in lines}
    cell_keys = suite.cell_keys()
    out: dict[str, dict[str, Interval | None]] = {}
    for model in suite.models:
        per: dict[str, list[float]] = {k: [] for k, _ in COST_COLUMNS}
        for instance in (model.with_seed(s if suite.seeded else None) for s in suite.seeds):
            seed = instance.seed or 0
            cells = [latest[k] for (m, _, s), k in cell_keys.items() if m == model.name and s == seed and k in latest]
            stages = [latest.get(st.key) for st in instance.pretrain.stages] if instance.pretrain else []
            if instance.pretrain is not None and all(stages):
                wall = math.fsum(float(x["wall_s"]) for x in stages)  # type: ignore[index]
                samples = sum(int(x.get("samples") or 0) for x in stages)  # type: ignore[union-attr]
                per["pretrain_wall_s"].append(wall)
                if wall > 0 and samples:
                    per["samples_per_s"].append(samples / wall)
            params = stages[-1].get("parameters") if stages and stages[-1] else next(
                (c.get("parameters") for c in cells if c.get("parameters")), None)  # fmt: skip
            if params:
                per["parameters"].append(float(params))
            peaks = [float(x["peak_memory_mib"]) for x in [*stages, *cells] if x and x.get("peak_memory_mib") is not None]
            if peaks:
                per["peak_memory_mib"].append(max(peaks))
        out[model.name] = {k: (t_interval(v) if v else None) for k, v in per.items()}
    return out


def cost_table(suite: Suite, lines: Sequence[Mapping[str, Any]]) -> list[str]:
    """The cost table in Markdown (one row per model: each column's mean [95% t interval]
    over seeds), with how memory was measured; ``[]`` when nothing was recorded."""
    costs = model_costs(suite, lines)
    if not any(v is not None for c in costs.values() for v in c.values()):
        return []
    rows = ["| model | " + " | ".join(h for _, h in COST_COLUMNS) + " |", "|---|" + "---:|" * len(COST_COLUMNS)]
    for m in suite.models:
        cells = []
        for k, _ in COST_COLUMNS:
            iv = costs[m.name][k]
            if iv is None:
                cells.append("–")
            elif k == "parameters":
                cells.append(f"{iv.estimate:,.0f}")
            else:
                cells.append(f"{iv.estimate:.1f}" + (f" [{iv.low:.1f}, {iv.high:.1f}]" if iv.method == "t" else ""))
        rows.append(f"| `{m.name}` | " + " | ".join(cells) + " |")
    methods = sorted({str(x["memory"]) for x in lines if x.get("memory")})
    rows += ["", "Pretraining wall time: the sum over the model's stages (a stage shared by several models counts "
             "for each); samples/s: the stages' training samples (steps x batch) over that time; peak memory: the "
             "largest over the model's stages and cells, measured as " + ("; ".join(methods) or "recorded") + "."]  # fmt: skip
    return rows


def summary(board: Leaderboard) -> dict[str, Any]:
    """The macro averages as a plain dict (for printing and tests)."""
    return {
        m: {
            **{g: board.group_averages[(m, g)].value for g in board.groups},
            "overall": board.overall[m].value,
        }
        for m in board.models
    }
