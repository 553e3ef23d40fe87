"""``flava-zoo probe report --results R [R ...] --out DIR``: the records and figures of one or
more models as one self-contained HTML page (``DIR/report.html``).

Each ``R`` is a results file or a folder holding ``results.jsonl`` (the probes' records) and,
when the probes drew any, ``figures.jsonl`` (the figures they saved; paths relative to the
folder). The page has a header naming each model, where its weights came from (source and
lineage), the package versions and git commits its records were made with, and the files
read; then one section per probe: a table whose rows are (split, metric, unit), whose columns
are the models, each cell the value and its interval ``[low, high]`` (hover: the interval's
level and method and the number of items), and a chance column (the ``chance/<metric>``
records); under it the probe's figures side by side, one column per model. Figures are
embedded as base64 ``data:`` URIs, so the page works when moved alone; a small inline script
counts, once the page has loaded, the figures the browser decoded (``data-figures-loaded`` on
``<body>``, against ``data-figures-total``) and marks those that did not load.

When a probe was run twice on a model, the later record (by time stamp) of each metric is
shown. A figure listed in ``figures.jsonl`` whose file is absent is marked in its place (and
in the page's list of problems, and as a :class:`ReportWarning`); the rest is rendered. A
missing results file or folder, a malformed line, or a results file holding no probe records
is a :class:`~flava_zoo.probes.common.ProbeError` naming the file.

Why the standard library builds the HTML (no template engine such as jinja2): the page is a
header, a few tables and figure grids, a few dozen lines of string building; every piece of
text goes through :func:`html.escape` where it is written, so the escaping is visible at each
interpolation rather than depending on a template engine's autoescape setting; and the
``[report]`` extra stays free of a dependency the rest of the package does not need.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import math
import sys
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..evaluation.results import ResultRecord, read_results
from . import PROBES
from .common import FIGURES_FILE, RESULTS_FILE, ProbeError

__all__ = ["REPORT_FILE", "ReportWarning", "build_report", "main"]

REPORT_FILE = "report.html"
"""The page's name inside ``--out``."""

_PROBE_PREFIX = "probe/"
_CHANCE_PREFIX = "chance/"
_MIME = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".svg": "image/svg+xml",
    ".webp": "image/webp",
}
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class ReportWarning(UserWarning):
    """A problem the page is still rendered with (a figure listed but absent, ...); the page
    lists it too."""


@dataclass
class _Figure:
    """One entry of a ``figures.jsonl``: its model, probe, name, caption and file; ``data``
    is the file's ``data:`` URI, ``None`` when the file is absent."""

    model: str
    probe: str
    name: str
    caption: str
    path: Path
    listed_in: Path
    data: str | None = None


@dataclass
class _Inputs:
    """Everything read from the ``--results`` arguments."""

    files: list[Path] = field(default_factory=list)
    records: list[ResultRecord] = field(default_factory=list)
    figures: list[_Figure] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    superseded: int = 0
    ignored: int = 0


def _locate(arg: str | Path) -> tuple[Path, Path | None]:
    """The results file of one ``--results`` argument and its ``figures.jsonl`` (``None``
    when there is none)."""
    path = Path(arg)
    if path.is_dir():
        results = path / RESULTS_FILE
        if not results.is_file():
            raise ProbeError(f"--results {arg}: the folder has no {RESULTS_FILE}")
    elif path.is_file():
        results = path
    else:
        raise ProbeError(f"--results {arg}: no such file or folder")
    figures = results.parent / FIGURES_FILE
    return results, figures if figures.is_file() else None


def _read_figures(path: Path) -> list[_Figure]:
    """The entries of a ``figures.jsonl`` (their files are read later); a malformed line is
    a :class:`ProbeError` naming the file, the line and the field."""
    from .._jsonl import read_jsonl

    out = []
    try:
        for number, entry in read_jsonl(path):
            where = f"{path}, line {number}"
            for key in ("model", "probe", "figure", "path"):
                if not isinstance(entry.get(key), str) or not entry[key]:
                    raise ProbeError(f"{where}: field {key!r} must be a non-empty string")
            caption = entry.get("caption", "")
            if not isinstance(caption, str):
                raise ProbeError(f"{where}: field 'caption' must be a string")
            file = Path(entry["path"])
            out.append(
                _Figure(
                    model=entry["model"],
                    probe=entry["probe"],
                    name=entry["figure"],
                    caption=caption,
                    path=file if file.is_absolute() else path.parent / file,
                    listed_in=path,
                )
            )
    except ProbeError:
        raise
    except ValueError as e:
        raise ProbeError(str(e)) from None
    return out


def _embed(figure: _Figure, problems: list[str]) -> None:
    """Read ``figure``'s file into a ``data:`` URI; an absent or odd file is a problem."""
    if not figure.path.is_file():
        problems.append(
            f"figure {figure.name!r} of {figure.model} ({figure.probe}), listed in "
            f"{figure.listed_in}: {figure.path} does not exist"
        )
        return
    data = figure.path.read_bytes()
    mime = _MIME.get(figure.path.suffix.lower(), "application/octet-stream")
    if mime == "application/octet-stream":
        problems.append(f"figure {figure.path}: unknown image type {figure.path.suffix!r}")
    elif mime == "image/png" and not data.startswith(_PNG_MAGIC):
        problems.append(f"figure {figure.path}: not a PNG file (it will not display)")
    figure.data = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _read(results: Sequence[str | Path]) -> _Inputs:
    """Read every results file and figure list, keeping the latest record of each (model,
    task, classifier task, split, metric, unit) and the last listing of each (model, probe,
    figure)."""
    if not results:
        raise ProbeError("--results: give at least one results file or folder")
    inputs = _Inputs()
    latest: dict[tuple[str, ...], ResultRecord] = {}
    figures: dict[tuple[str, str, str], _Figure] = {}
    for arg in results:
        file, figure_list = _locate(arg)
        try:
            records = read_results(file)
        except (FileNotFoundError, ValueError) as e:
            raise ProbeError(str(e)) from None
        probe_records = [r for r in records if r.task.startswith(_PROBE_PREFIX)]
        if not probe_records:
            raise ProbeError(
                f"{file} holds no probe records ({len(records)} records, none with a task "
                f"'{_PROBE_PREFIX}<name>'): flava-zoo probe NAME --model M writes them"
            )
        inputs.files.append(file)
        inputs.ignored += len(records) - len(probe_records)
        for r in probe_records:
            key = (r.model, r.task, _classifier(r), r.split, r.metric, r.unit)
            if key in latest:
                inputs.superseded += 1
                if _moment(r) < _moment(latest[key]):
                    continue
            latest[key] = r
        if figure_list is not None:
            for figure in _read_figures(figure_list):
                figures[(figure.model, figure.probe, figure.name)] = figure
    inputs.records = list(latest.values())
    inputs.figures = list(figures.values())
    for figure in inputs.figures:
        _embed(figure, inputs.problems)
    return inputs


def _moment(record: ResultRecord) -> datetime:
    return datetime.fromisoformat(record.timestamp.replace("Z", "+00:00"))


def _e(value: Any) -> str:
    """``value`` as HTML text (quotes escaped too, so it may stand in an attribute)."""
    return html.escape(str(value), quote=True)


def _decimals(unit: str, *values: float) -> int | None:
    """The decimals a value and its interval are shown with: one in percent; else three
    significant digits of the largest of them (``None``: scientific notation, for magnitudes
    below 1e-6 or from 1e5)."""
    if unit == "%":
        return 1
    scale = max(abs(v) for v in values)
    if scale == 0:
        return 3
    if scale < 1e-6 or scale >= 1e5:
        return None
    return max(0, 2 - math.floor(math.log10(scale)))


def _number(value: float, decimals: int | None) -> str:
    return f"{value:.2e}" if decimals is None else f"{value:.{decimals}f}"


def _cell(record: ResultRecord | None) -> str:
    """One table cell: ``value [low, high]`` (the same decimals for all three), the
    interval's description on hover."""
    if record is None:
        return '<td class="none">&mdash;</td>'
    iv = record.interval
    hover = [f"n = {record.num_samples}"]
    if iv is not None and iv["method"] == "none":
        hover.append("a single run: no interval")
        iv = None
    elif iv is None:
        hover.append("no interval")
    decimals = _decimals(record.unit, record.value, *((iv["low"], iv["high"]) if iv else ()))
    text = _e(_number(record.value, decimals))
    if iv is not None:
        low, high = _number(iv["low"], decimals), _number(iv["high"], decimals)
        text += f' <span class="iv">[{_e(low)}, {_e(high)}]</span>'
        method = {"bootstrap": "percentile bootstrap over items", "t": "Student's t over runs"}.get(
            iv["method"], f"{iv['method']}"
        )
        extra = f", {iv['resamples']} resamples" if iv.get("resamples") else ""
        hover.append(f"{_level(iv['level'])} interval: {method} (n = {iv['n']}{extra})")
    return f'<td title="{_e("; ".join(hover))}">{text}</td>'


def _level(level: float) -> str:
    percent = 100.0 * level
    return f"{percent:.0f}%" if math.isclose(percent, round(percent)) else f"{percent:g}%"


def _chance(values: Iterable[tuple[str, ResultRecord]]) -> str:
    """The chance column: the one chance value, or each model's when they differ."""
    values = list(values)
    if not values:
        return '<td class="none">&mdash;</td>'
    distinct = {round(r.value, 9) for _, r in values}
    if len(distinct) == 1:
        r = values[0][1]
        return f'<td class="chance">{_e(_number(r.value, _decimals(r.unit, r.value)))}</td>'
    parts = [f"{_e(_number(r.value, _decimals(r.unit, r.value)))} ({_e(model)})" for model, r in values]
    return f'<td class="chance">{"<br>".join(parts)}</td>'


def _models(inputs: _Inputs) -> list[str]:
    """The models in the order they first appear (records, then figures)."""
    seen: dict[str, None] = {}
    for r in inputs.records:
        seen.setdefault(r.model, None)
    for f in inputs.figures:
        seen.setdefault(f.model, None)
    return list(seen)


def _probes(inputs: _Inputs) -> list[str]:
    """The probes with records or figures: registry order first, then any others by name."""
    names = {r.task[len(_PROBE_PREFIX) :] for r in inputs.records} | {f.probe for f in inputs.figures}
    return [p for p in PROBES if p in names] + sorted(names - set(PROBES))


def _distinct(values: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


def _header(inputs: _Inputs, models: list[str]) -> str:
    """The table of models: source, lineage, package version, commits, records, time span."""
    rows = []
    for model in models:
        rs = [r for r in inputs.records if r.model == model]
        sources = _distinct(r.model_source for r in rs)
        lineages = _distinct(json.dumps(r.lineage, sort_keys=True) for r in rs)
        versions = _distinct(r.package_version for r in rs)
        commits = _distinct(r.git_commit or "(none)" for r in rs)
        times = sorted(r.timestamp for r in rs)
        if not times:
            span = ""
        elif times[0] == times[-1]:
            span = _e(times[0])
        else:
            span = f"{_e(times[0])} &ndash; {_e(times[-1])}"
        commit_html = ", ".join(
            f'<code title="{_e(c)}">{_e(c[:12])}</code>' for c in commits
        )
        rows.append(
            "<tr>"
            f'<th class="model">{_e(model)}</th>'
            f"<td>{'<br>'.join(_e(s) for s in sources)}</td>"
            f"<td>{'<br>'.join(f'<code>{_e(x)}</code>' for x in lineages)}</td>"
            f"<td>{', '.join(_e(v) for v in versions)}</td>"
            f"<td>{commit_html}</td>"
            f"<td>{len(rs)}</td>"
            f"<td>{span}</td>"
            "</tr>"
        )
    return (
        '<table class="models"><thead><tr><th>model</th><th>source</th><th>lineage</th>'
        "<th>package version</th><th>git commit</th><th>records</th><th>measured (UTC)</th>"
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _classifier(record: ResultRecord) -> str:
    """The task of the fine-tuned classifier a probe record queried (``""``: none): a probe
    run once per classifier (interactions on VQA and on the memes-like task) keeps both."""
    return str(record.lineage.get("classifier_task") or "")


def _probe_table(probe: str, records: list[ResultRecord], models: list[str]) -> str:
    """The probe's table: rows (classifier, split, metric, unit), one column per model, then
    chance; the classifier column only when a record of the probe queried one."""
    values: dict[tuple[str, str, str, str], dict[str, ResultRecord]] = {}
    chance: dict[tuple[str, str, str, str], dict[str, ResultRecord]] = {}
    for r in records:
        if r.metric.startswith(_CHANCE_PREFIX):
            chance.setdefault((_classifier(r), r.split, r.metric[len(_CHANCE_PREFIX) :], r.unit), {})[r.model] = r
        else:
            values.setdefault((_classifier(r), r.split, r.metric, r.unit), {})[r.model] = r
    with_classifier = any(key[0] for key in values)
    if not values:
        return '<p class="none">No records of this probe (figures only).</p>'
    columns = [m for m in models if any(m in row for row in values.values())]
    head = "".join(f'<th class="model">{_e(m)}</th>' for m in columns)
    body = []
    for key, row in values.items():
        clf, split, metric, unit = key
        c = chance.get(key, {})
        body.append(
            "<tr>" + (f"<td>{_e(clf or '–')}</td>" if with_classifier else "")
            + f"<td>{_e(split)}</td><th>{_e(metric)}</th><td>{_e('' if unit == '1' else unit)}</td>"
            + "".join(_cell(row.get(m)) for m in columns)
            + _chance((m, c[m]) for m in columns if m in c)
            + "</tr>"
        )
    levels = _distinct(
        _level(r.interval["level"]) for r in records if r.interval is not None and r.interval["method"] != "none"
    )
    note = (
        f"Cells: value [{', '.join(levels)} interval]; hover a cell for the interval's method "
        "and the number of items."
        if levels
        else "No intervals were recorded."
    )
    settings = []
    for m in columns:
        for split in _distinct(r.split for r in records if r.model == m):
            hp = _distinct(
                json.dumps(r.hyperparameters, sort_keys=True)
                for r in records
                if r.model == m and r.split == split and r.hyperparameters
            )
            if hp:
                settings.append(f"<li>{_e(m)}, {_e(split)}: <code>{'; '.join(_e(h) for h in hp)}</code></li>")
    details = f"<details><summary>settings</summary><ul>{''.join(settings)}</ul></details>" if settings else ""
    return (
        f'<table class="probe" data-probe="{_e(probe)}"><thead><tr>'
        + ("<th>classifier</th>" if with_classifier else "")
        + "<th>split</th><th>metric</th>"
        f"<th>unit</th>{head}<th>chance</th></tr></thead><tbody>{''.join(body)}</tbody></table>"
        f'<p class="note">{_e(note)}</p>{details}'
    )


def _figure_grid(figures: list[_Figure], models: list[str]) -> str:
    """The probe's figures, one row per figure name, one column per model."""
    if not figures:
        return ""
    columns = [m for m in models if any(f.model == m for f in figures)]
    rows = []
    for name in _distinct(f.name for f in figures):
        cells = []
        for m in columns:
            figure = next((f for f in figures if f.model == m and f.name == name), None)
            if figure is None:
                cells.append('<div class="fig-empty">no such figure</div>')
                continue
            caption = f"<figcaption><b>{_e(m)}</b>: {_e(figure.caption or figure.name)}</figcaption>"
            if figure.data is None:
                cells.append(
                    f'<figure class="fig-slot fig-missing" data-figure="{_e(name)}">'
                    f'<div class="missing">figure missing: {_e(figure.path)}</div>{caption}</figure>'
                )
            else:
                cells.append(
                    f'<figure class="fig-slot" data-figure="{_e(name)}">'
                    f'<img src="{_e(figure.data)}" alt="{_e(name)} of {_e(m)}">{caption}</figure>'
                )
        rows.append(
            f"<h3>{_e(name)}</h3>"
            f'<div class="figures" style="grid-template-columns: repeat({len(columns)}, minmax(0, 1fr))">'
            f"{''.join(cells)}</div>"
        )
    return "".join(rows)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
table.probe td { font-variant-numeric: tabular-nums; }
thead th { background: #f3f3f3; }
table.models td { max-width: 32em; overflow-wrap: anywhere; }
.iv { color: #666; }
.chance { color: #666; font-style: italic; }
.none { color: #999; }
.note { color: #666; font-size: 0.9em; }
.figures { display: grid; gap: 1em; }
figure { margin: 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #444; }
.missing, .fig-broken::after { display: block; padding: 2em 1em; background: #fee; color: #900; border: 1px dashed #900; }
.fig-broken::after { content: "this figure did not load"; }
.fig-broken img { display: none; }
.problems { background: #fff4e5; border: 1px solid #e0a040; padding: 0.5em 1em; }
"""

_SCRIPT = """
window.addEventListener("load", function () {
  var slots = document.querySelectorAll("figure.fig-slot"), loaded = 0;
  for (var i = 0; i < slots.length; i++) {
    var img = slots[i].querySelector("img");
    if (img && img.complete && img.naturalWidth > 0) { loaded++; }
    else if (img) { slots[i].classList.add("fig-broken"); }
  }
  document.body.dataset.figuresLoaded = String(loaded);
  document.body.dataset.figuresTotal = String(slots.length);
});
"""


def _page(inputs: _Inputs) -> str:
    """The whole page."""
    models = _models(inputs)
    sections = []
    for probe in _probes(inputs):
        records = [r for r in inputs.records if r.task == _PROBE_PREFIX + probe]
        figures = [f for f in inputs.figures if f.probe == probe]
        summary = PROBES.get(probe, "")
        sections.append(
            f'<section id="probe-{_e(probe)}"><h2>{_e(probe)}</h2>'
            + (f'<p class="summary">{_e(summary)}</p>' if summary else "")
            + _probe_table(probe, records, models)
            + _figure_grid(figures, models)
            + "</section>"
        )
    notes = []
    if inputs.superseded:
        notes.append(f"{inputs.superseded} records were measured again later; the latest of each is shown.")
    if inputs.ignored:
        notes.append(f"{inputs.ignored} records that are not probe records were left out.")
    problems = (
        '<div class="problems"><b>Problems</b><ul>'
        + "".join(f"<li>{_e(p)}</li>" for p in inputs.problems)
        + "</ul></div>"
        if inputs.problems
        else ""
    )
    total = len(inputs.figures)
    made = datetime.now(timezone.utc).isoformat(timespec="seconds")
    files = "".join(f"<li><code>{_e(f)}</code></li>" for f in inputs.files)
    title = "Probes: " + ", ".join(models)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head>"
        f'<body data-figures-total="{total}">'
        f"<h1>{_e(title)}</h1>{problems}"
        f"{_header(inputs, models)}"
        f'<p class="note">Made {_e(made)} by flava-zoo probe report from:</p><ul>{files}</ul>'
        + "".join(f'<p class="note">{_e(n)}</p>' for n in notes)
        + "".join(sections)
        + f"<script>{_SCRIPT}</script></body></html>\n"
    )


def build_report(results: Sequence[str | Path], out: str | Path) -> Path:
    """Write the HTML page of the probe records and figures of ``results`` (results files or
    folders holding ``results.jsonl`` and ``figures.jsonl``) to ``out/report.html`` (or to
    ``out`` itself when it ends in ``.html``); returns its path. Each problem the page is
    still made with (a figure listed but absent) is also a :class:`ReportWarning`."""
    inputs = _read([results] if isinstance(results, (str, Path)) else list(results))
    out = Path(out)
    page = out if out.suffix.lower() == ".html" else out / REPORT_FILE
    page.parent.mkdir(parents=True, exist_ok=True)
    tmp = page.with_name(f".{page.name}.tmp")
    tmp.write_text(_page(inputs), encoding="utf-8")
    tmp.replace(page)
    for problem in inputs.problems:
        warnings.warn(problem, ReportWarning, stacklevel=2)
    return page


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``flava-zoo probe report``: 0 when the page was written (problems it
    was written with go to stderr), 1 on an error, 2 on bad usage."""
    parser = argparse.ArgumentParser(
        prog="flava-zoo probe report",
        description=(__doc__ or "").split("\n\n")[0],
    )
    parser.add_argument(
        "--results",
        nargs="+",
        required=True,
        metavar="R",
        help=f"results files, or folders holding {RESULTS_FILE} and {FIGURES_FILE} (flava-zoo probe's --out)",
    )
    parser.add_argument("--out", required=True, help=f"folder for {REPORT_FILE} (or the .html file itself)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ReportWarning)
        try:
            page = build_report(args.results, args.out)
        except ProbeError as e:
            print(f"flava-zoo probe report: {e}", file=sys.stderr)
            return 1
    for w in caught:
        print(f"flava-zoo probe report: warning: {w.message}", file=sys.stderr)
    print(page)
    return 0
