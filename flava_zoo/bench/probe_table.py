"""Every probe on a set of models, and the Markdown table of their records.

``run_all`` runs each probe of :data:`flava_zoo.probes.PROBES` on each model (an export
folder or a name, with the classifiers the probes that query a task need), appending to one
results file; a (model, probe, classifier) already in the file is not run again, so an
interrupted run resumes. ``write_table`` turns the records into ``probes_shapes.md``: per
probe, each metric with its value and 95% interval per model, and the chance level.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._provenance import describe_machine, git_state, machine
from ..evaluation.results import ResultRecord, read_results

__all__ = ["CLASSIFIER_TASKS", "ProbeModel", "run_all", "write_table"]

CLASSIFIER_TASKS: dict[str, tuple[tuple[str | None, ...], ...]] = {
    "compositional": (("vqa", None),),
    "negation": (("vqa", None),),
    "occlusion": (("vqa",),),
    "subquestions": (("vqa",),),
    "interactions": (("memes",), ("vqa",)),
}
"""Per probe, its runs: each run takes the first classifier task of its tuple that the model
has (``None``: without a classifier; a run with no match is skipped). Probes not listed run
once, without a classifier."""


@dataclass
class ProbeModel:
    """A model of the table: its label, what ``--model`` names, its classifiers by task
    (``{"vqa": "path/last.ckpt", "memes": ...}``) and probe options of its own
    (``{"grounding": {"text_only": "quickstart_out.run/stages/text"}}``)."""

    label: str
    model: str
    tokenizer: str | None = None
    classifiers: dict[str, str] = field(default_factory=dict)
    options: dict[str, dict[str, Any]] = field(default_factory=dict)


def _done(results: Path) -> set[tuple[str, str, str]]:
    if not results.is_file():
        return set()
    return {
        (r.model, r.task, str(r.lineage.get("classifier", ""))) for r in read_results(results)
    }


def run_all(
    models: Sequence[ProbeModel],
    out: str | Path,
    probes: Sequence[str] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    log: Any = print,
) -> Path:
    """Run ``probes`` (default: all) on ``models`` into ``out/results.jsonl`` (figures under
    ``out/figures``); ``options[probe]`` adds a probe's own options. Returns the results file."""
    from ..probes import list_probes, run_probe

    out = Path(out)
    results = out / "results.jsonl"
    done = _done(results)
    for probe in probes or list_probes():
        for m in models:
            for choices in CLASSIFIER_TASKS.get(probe, ((None,),)):
                task = next((t for t in choices if t is None or t in m.classifiers), False)
                if task is False:
                    log(f"{probe} on {m.label}: no {' or '.join(map(str, choices))} classifier given, skipped")
                    continue
                clf = m.classifiers[task] if task else None
                key = (m.label, f"probe/{probe}", str(Path(clf).resolve()) if clf else "")
                if key in done:
                    log(f"{probe} on {m.label}{f' ({task})' if task else ''}: in {results} already")
                    continue
                start = time.perf_counter()
                records = run_probe(
                    probe, model=m.model, tokenizer=m.tokenizer, classifier=clf, label=m.label,
                    out=str(out), **{**dict((options or {}).get(probe, {})), **m.options.get(probe, {})},
                )
                done.add(key)
                log(f"{probe} on {m.label}{f' ({task})' if task else ''}: {len(records)} records "
                    f"in {time.perf_counter() - start:.0f} s")
    return results


def _cell(record: ResultRecord | None) -> str:
    if record is None:
        return "–"
    iv = record.interval
    unit = "" if record.unit in ("%", "1") else f" {record.unit}"
    digits = 1 if record.unit == "%" else 3
    text = f"{record.value:.{digits}f}"
    if iv and iv.get("method") != "none":
        text += f" [{iv['low']:.{digits}f}, {iv['high']:.{digits}f}]"
    return text + unit


def _classifier_task(record: ResultRecord) -> str:
    """The task of the classifier a record's probe queried (``""``: none)."""
    return str(record.lineage.get("classifier_task") or ("?" if record.lineage.get("classifier") else ""))


HEADLINES: dict[str, tuple[tuple[str, str], ...]] = {
    "compositional": (("test_vs_test_novel", "gap/image_to_text_R@1"), ("test_vs_test_novel", "gap/shape_accuracy"),
                      ("test_vs_test_novel", "gap/vqa_accuracy")),
    "memorisation": (("test", "gap/top_minus_bottom"),),
    "negation": (("test", "caption/contrastive_drop"), ("test", "caption/itm_paired"), ("test", "question/consistency")),
    "occlusion": (("test", "evidence/all"),),
    "subquestions": (("test", "consistency"),),
    "interactions": (("test", "full/auroc"), ("test", "emap/auroc"), ("test", "interaction_share/auroc"),
                     ("test", "full/accuracy"), ("test", "emap/accuracy"), ("test", "interaction_share/accuracy")),
    "relevance": (("test", "pointing_game/attention"), ("test", "specificity/attention"), ("test", "pointing_game/relevance")),
    "embeddings": (("test", "nmi/image/shape"), ("test", "nmi/image/colour"), ("test", "modality_gap")),
    "grounding": (("test", "2v2/colour"), ("test", "2v2/shape")),
    "winoground": (("test", "all/cosine_group_score"), ("test", "all/itm_group_score")),
}
"""Per probe, the (split, metric) rows of the headline table: the number that answers its question."""

_Key = tuple[str, str, str, str]  # task, classifier task, split, metric


def _rows(records: Sequence[ResultRecord]) -> tuple[list[_Key], dict[tuple[_Key, str], ResultRecord]]:
    """Row keys in the order the probes wrote them (chance rows left out), and each model's
    latest record per row."""
    order: dict[_Key, None] = {}
    cells: dict[tuple[_Key, str], ResultRecord] = {}
    for r in records:
        key = (r.task, _classifier_task(r), r.split, r.metric)
        if not r.metric.startswith("chance/"):
            order.setdefault(key, None)
        cells[(key, r.model)] = r
    return list(order), cells


def _chance(key: _Key, models: Sequence[str], cells: Mapping[tuple[_Key, str], ResultRecord]) -> str:
    task, clf, split, metric = key
    values = [cells.get(((task, clf, split, f"chance/{metric}"), m)) for m in models]
    shown = list(dict.fromkeys(_cell(v) for v in values if v is not None))
    return " / ".join(shown) if shown else "–"


def _line(key: _Key, models: Sequence[str], cells: Mapping[tuple[_Key, str], ResultRecord], probe: bool) -> str:
    task, clf, split, metric = key
    head = f"| {task.split('/', 1)[1]} " if probe else ""
    values = " | ".join(_cell(cells.get((key, m))) for m in models)
    return f"{head}| {clf or '–'} | {split} | {metric} | {values} | {_chance(key, models, cells)} |"


def write_table(
    results: str | Path,
    path: str | Path,
    models: Sequence[str],
    commands: Sequence[str] = (),
    notes: Sequence[str] = (),
    title: str = "Probes on the shapes world",
) -> Path:
    """The Markdown table of the probe records in ``results``: first the headline rows of
    each probe (:data:`HEADLINES`), then one section per probe with every (classifier, split,
    metric) row in the order the probe wrote them; one column per model of ``models``
    (value [95% interval]) and the chance level; the machine, the commits and the
    ``commands`` that made it."""
    records = [r for r in read_results(results) if r.task.startswith("probe/")]
    keys, cells = _rows(records)
    order = [f"probe/{p}" for p in _probe_order()]
    keys.sort(key=lambda k: order.index(k[0]) if k[0] in order else len(order))
    commits = sorted({r.git_commit[:7] if r.git_commit else "unknown" for r in records})
    methods = sorted({str(r.interval.get("method")) for r in records if r.interval})
    state = git_state(Path(__file__).resolve().parent)
    lines = [f"# {title}", ""]
    lines += [f"Machine (where this table was written, after the run): {describe_machine(machine())}.", "",
              f"Records made at commit {', '.join(commits)}"
              f"{' (the working tree had uncommitted changes when this table was written)' if state.get('dirty') else ''}; "
              f"{len(records)} records.", ""]
    if commands:
        lines += ["Made with:", "", "```bash", *commands, "```", ""]
    lines += list(notes) + ([""] if notes else [])
    lines += [f"Each cell: value [95% interval]; percent unless the metric says otherwise (unit 1: a "
              f"similarity or a coefficient). Interval methods in these records: {', '.join(methods) or 'none'} "
              "(see each probe's `flava-zoo probe NAME --help`). `classifier`: the fine-tuned classifier "
              "the probe queried (each model's own, fine-tuned with the same recipe).", ""]
    columns = " | ".join(models)
    rule = "|" + "---|" * (5 + len(models))
    lines += ["## Headlines", "", f"| probe | classifier | split | metric | {columns} | chance |", rule]
    for key in keys:
        if (key[2], key[3]) in HEADLINES.get(key[0].split("/", 1)[1], ()):
            lines.append(_line(key, models, cells, probe=True))
    lines.append("")
    for task in dict.fromkeys(k[0] for k in keys):
        lines += [f"## {task.split('/', 1)[1]}", "", f"| classifier | split | metric | {columns} | chance |",
                  "|" + "---|" * (4 + len(models))]
        lines += [_line(k, models, cells, probe=False) for k in keys if k[0] == task]
        lines.append("")
    path = Path(path)
    path.write_text("\n".join(lines))
    return path


def _probe_order() -> list[str]:
    from ..probes import list_probes

    return list_probes()
