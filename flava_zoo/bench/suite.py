"""Benchmark suites: which models meet which tasks, read from YAML and checked field by field.

A suite is a grid of *cells* (model x task). A model is either obtained by pretraining on
the shapes world with the pretraining recipes (``pretrain:``; ``steps``, ``args`` and
``recipes`` may name stages the model skips, so that YAML anchors can share them) or taken as it is
(``source:``: a registered architecture, a zoo ``arch.tag`` or an exported folder). A task
is a downstream recipe (``recipes/finetune``, ``recipes/probe``, ``recipes/zeroshot``) with
command-line overrides, a group (``vision``, ``language``, ``multimodal``: the columns of
FLAVA's Table 4) and the headline metric read from its results records.

Every cell and every pretraining stage has a *key*: the hash of everything that determines
its outcome (the recipe's text included). Finished work is found again by key, so a suite
resumes where it stopped and an edited spec reruns exactly what it changes.

Seeds (``seeds: [0, 1, 2]``, default ``[0]``): every pretraining stage and every cell of a
model runs once per seed, with ``--seed_everything=<seed>`` (weight initialisation, data
order, masking, dropout and every other draw of torch/numpy/random in the run, and the
shapes loaders' sample draws, which follow Lightning's global seed). The shapes *world*
(its scenes, test split and held-out combinations: ``--data.init_args.seed``) is not
changed by the seed, so every seed is scored on the same test items. A suite without
``seeds`` runs as before: no ``--seed_everything`` added, the recipes' own seed, the same keys
and folders. ``baseline``: the model every other is tested against, per task (Welch's t-test
over seeds, :mod:`flava_zoo.bench.leaderboard`); ``contrasts: [[model, against], ...]``:
further pairs the design lessons test (a comparison a question needs that is not against the
baseline, e.g. filtered against noisy data).

Three model fields make the design axes of a leaderboard: ``late_fusion: true`` fine-tunes
the model's multimodal tasks through the late-fusion head (``[u; v; u * v]`` of its two
embeddings into an MLP) instead of the fusion encoder, so a dual encoder is scored on fusion
tasks and a fused model can be compared with its own late-fusion row; ``tasks: [...]`` scores
a model on some tasks only (the others are not its cells); and ``pretrain.filter: {by: MODEL,
keep: SHARE}`` trains the multimodal stage on the best ``SHARE`` of its pairs by the
contrastive score of ``MODEL``'s export (a model listed before, same seed), LAION-style
(:mod:`flava_zoo.filtering`; the filter runs in the stage's job, its ``keep.json`` beside the
stage's export).

A task can also be a *probe* (``probe: interactions``, :mod:`flava_zoo.probes`) run on the
model after its pretraining; ``classifier_task`` names the suite task whose fine-tuned
checkpoint (same model, same seed) the probe queries, ``metric`` and ``split`` the record the
leaderboard shows, ``options`` the probe's own options. Probe tasks are the leaderboard's
insight rows: they are not part of any average.

An example (``benchmarks/suites/shapes.yaml`` is the full one)::

    name: shapes
    seeds: [0, 1, 2]
    baseline: merged
    overrides: [--trainer.limit_val_batches=0]       # every task cell, before its own
    models:
      - name: merged
        pretrain:
          stages: [image, text, multimodal]
          overrides: {fusion: merged}                # model config fields
          loss_weights: {contrastive: 1, itm: 1, mmm_image: 1, mmm_text: 1}
          steps: {image: 150, text: 150, multimodal: 150}
          batch_size: 32
          args: [--data.init_args.train_size=4800]   # every stage, or a dict by stage
      - name: random
        source: flava-tiny
      - name: noisy_filtered                         # noisy captions, the best 70% kept by `merged`
        pretrain:
          stages: [multimodal]
          steps: {multimodal: 150}
          args: [--data.init_args.caption_noise=0.3]
          filter: {by: merged, keep: 0.7}
    tasks:
      - name: vqa
        group: multimodal
        recipe: recipes/finetune/shapes_vqa.yaml
        metric: vqa_accuracy
        overrides: [--trainer.max_steps=60]
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from .. import shipped
from ..evaluation.results import config_hash

__all__ = [
    "FilterSpec",
    "GROUPS",
    "MODES",
    "STAGES",
    "ModelSpec",
    "PretrainSpec",
    "StageSpec",
    "Suite",
    "TaskSpec",
    "LATE_FUSION_HIDDEN",
    "cell_key",
    "find_suite",
    "seed_folder",
    "load_suite",
    "uses_late_fusion",
]

GROUPS = ("vision", "language", "multimodal")
"""Task groups, in the order of FLAVA's Table 4 (vision, NLP, multimodal)."""
STAGES = ("image", "text", "multimodal")
MODES = ("fit_test", "test")
TEST_ONLY_MODULES = ("LinearProbe", "ZeroShotClassifier")
"""Downstream modules that fit nothing by gradient and run with ``flava-zoo test`` alone."""
FUSION_ONLY_KEYS = ("fusion", "multimodal")
"""Config overrides that only change the fusion encoder: the unimodal stages ignore them."""
PROBE_GROUP = "probes"
"""The group of probe tasks: shown after the averages, part of none."""
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
"""What a suite, model or task name may be."""


class SuiteError(ValueError):
    """A suite file that does not follow the format: names the file and the field."""

    def __init__(self, path: str | Path, field: str, problem: str) -> None:
        super().__init__(f"{path}: {field}: {problem}")


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """One pretraining stage as it will run: ``flava-zoo fit`` on ``recipe`` with ``args``."""

    stage: str
    recipe: Path
    recipe_text: str
    steps: int
    batch_size: int
    model_overrides: dict[str, Any]
    loss_weights: dict[str, float] | None
    args: tuple[str, ...]
    previous: StageSpec | None
    seed: int | None = None
    """The run's seed (``--seed_everything``); ``None`` in a suite without ``seeds``."""
    filter: FilterSpec | None = None
    """Train on the pairs another model's contrastive score keeps (``flava-zoo filter``)."""

    @property
    def key(self) -> str:
        """Hash of the stage and of every stage before it (and of the seed, when seeded; and
        of the filter and the model it uses, when filtered)."""
        seeded = {} if self.seed is None else {"seed": self.seed}
        filtered = {} if self.filter is None else {"filter": {"by": self.filter.by_stage.key, "keep": self.filter.keep}}
        return config_hash(
            {
                **seeded,
                **filtered,
                "stage": self.stage,
                "recipe": _digest(self.recipe_text),
                "steps": self.steps,
                "batch_size": self.batch_size,
                "model_overrides": self.model_overrides,
                "loss_weights": self.loss_weights,
                "args": list(self.args),
                "previous": self.previous.key if self.previous else None,
            }
        )

    @property
    def label(self) -> str:
        """How the stage is named in progress lines."""
        seed = "" if self.seed is None else f", seed {self.seed}"
        return f"{self.stage} stage ({self.steps} steps of batch {self.batch_size}{seed})"

    def with_seed(self, seed: int | None) -> StageSpec:
        """This stage and the stages before it, run with ``seed``."""
        previous = self.previous.with_seed(seed) if self.previous is not None else None
        filter_ = None if self.filter is None else self.filter.with_seed(seed)
        return dataclasses.replace(self, seed=seed, previous=previous, filter=filter_)


@dataclasses.dataclass(frozen=True)
class FilterSpec:
    """``pretrain.filter: {by: MODEL, keep: SHARE}``: before the multimodal stage, the final
    export of the suite model ``by`` (same seed) scores the stage's training pairs by the
    cosine of its contrastive embeddings, and the stage trains on the best ``keep`` share
    (:func:`flava_zoo.filtering.filter_shapes`, LAION-style filtering). The pairs scored are
    the ones the stage reads: its world seed, train size, caption noise and noise seed."""

    by: str
    by_stage: StageSpec
    keep: float

    def with_seed(self, seed: int | None) -> FilterSpec:
        """The filter with the ``by`` model run with ``seed``."""
        return dataclasses.replace(self, by_stage=self.by_stage.with_seed(seed))

    def chain(self) -> list[StageSpec]:
        """The ``by`` model's stages, first to last (the filter needs the last one's export)."""
        out: list[StageSpec] = []
        node: StageSpec | None = self.by_stage
        while node is not None:
            out.insert(0, node)
            node = node.previous
        return out


@dataclasses.dataclass(frozen=True)
class PretrainSpec:
    """Pretraining in stages on the recipes ``recipes/pretrain/shapes_<stage>.yaml``."""

    stages: tuple[StageSpec, ...]

    @property
    def final(self) -> StageSpec:
        """The last stage: its export is the model."""
        return self.stages[-1]

    def with_seed(self, seed: int | None) -> PretrainSpec:
        """Every stage run with ``seed``."""
        final = self.stages[-1].with_seed(seed)
        chain: list[StageSpec] = []
        node: StageSpec | None = final
        while node is not None:
            chain.insert(0, node)
            node = node.previous
        return PretrainSpec(tuple(chain))


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A suite model: pretrained by the suite (``pretrain``) or taken from ``source``."""

    name: str
    description: str = ""
    source: str | None = None
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    pretrain: PretrainSpec | None = None
    requires: tuple[Path, ...] = ()
    """Paths that must exist for the model's cells to run (an export made elsewhere, e.g. by
    ``flava-zoo quickstart``); its cells are skipped, not failed, while one is missing."""
    seed: int | None = None
    """The seed this instance runs with (:meth:`with_seed`); ``None``: the suite has no seeds."""
    late_fusion: bool = False
    """Fine-tune the multimodal tasks through the late-fusion head (``[u; v; u * v]`` of the
    two embeddings into an MLP of width :data:`LATE_FUSION_HIDDEN` unless the task sets
    ``head_hidden``, :func:`flava_zoo.downstream.base.late_fusion_features`) instead of the
    fusion encoder: what a dual encoder answers fusion tasks with. Only the cells it changes
    (:func:`uses_late_fusion`) get other keys."""
    tasks: tuple[str, ...] | None = None
    """The suite tasks this model is scored on (``None``: all of them); the others are not its
    cells (``n/a`` in the table, listed once under "Cells without a number", not skipped)."""

    def runs(self, task: str) -> bool:
        """Whether ``task`` is one of this model's cells."""
        return self.tasks is None or task in self.tasks

    def with_seed(self, seed: int | None) -> ModelSpec:
        """The model as run with ``seed`` (its pretraining stages keyed by it)."""
        pretrain = self.pretrain.with_seed(seed) if self.pretrain is not None else None
        return dataclasses.replace(self, seed=seed, pretrain=pretrain)

    def missing_data(self) -> list[Path]:
        """The required paths that do not exist."""
        return [p for p in self.requires if not p.exists()]

    @property
    def key(self) -> str:
        """Hash of what makes the model: its final stage's key, or its source and overrides
        (and its seed, when seeded)."""
        if self.pretrain is not None:
            return config_hash({"pretrain": self.pretrain.final.key})
        seeded = {} if self.seed is None else {"seed": self.seed}
        return config_hash({"source": self.source, "overrides": self.overrides, **seeded})


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """A suite task: a downstream recipe, its overrides and the number the leaderboard shows.

    Records are in percent (their ``unit`` is ``%``; old records without a unit are converted
    when read, see :mod:`flava_zoo.evaluation.results`), so the leaderboard shows the recorded
    value as it is; ``scale`` (default 1) multiplies it for display and is kept for suites that
    want another scale. ``requires``: paths that must exist for the task to run (real
    datasets); a cell whose data is missing is skipped, not failed. ``chance``: the score of
    guessing, in percent, shown beside the models when given.
    """

    name: str
    group: str
    metric: str
    recipe: Path | None = None
    recipe_text: str = ""
    mode: str = "test"
    overrides: tuple[str, ...] = ()
    split: str = "test"
    scale: float = 1.0
    description: str = ""
    requires: tuple[Path, ...] = ()
    chance: float | None = None
    probe: str | None = None
    """A probe of :mod:`flava_zoo.probes` run on the model instead of a recipe."""
    classifier_task: str | None = None
    """The suite task whose fine-tuned checkpoint the probe queries (same model and seed)."""
    probe_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    """The probe's options (``run_probe``'s keyword arguments: ``n``, ``methods``, ...)."""

    @property
    def key(self) -> str:
        """Hash of the recipe's text, the mode and the overrides (a probe: its name, options
        and classifier task)."""
        if self.probe is not None:
            return config_hash({"probe": self.probe, "options": self.probe_options,
                                "classifier_task": self.classifier_task})  # fmt: skip
        return config_hash(
            {
                "recipe": _digest(self.recipe_text),
                "mode": self.mode,
                "overrides": list(self.overrides),
            }
        )

    def missing_data(self) -> list[Path]:
        """The required paths that do not exist."""
        return [p for p in self.requires if not p.exists()]


@dataclasses.dataclass(frozen=True)
class Suite:
    """A parsed suite: models, tasks and where its outputs go."""

    name: str
    path: Path | None
    models: tuple[ModelSpec, ...]
    tasks: tuple[TaskSpec, ...]
    description: str = ""
    results: Path = Path("benchmarks/results/results.jsonl")
    leaderboard: Path = Path("benchmarks/results/leaderboard")
    work_dir: Path = Path("runs/bench")
    averages: bool = True
    """Whether the leaderboard shows group and macro averages (FLAVA's Table 4) or the tasks alone."""
    title: str = ""
    """The leaderboard's heading (default ``Leaderboard: `<name>```)."""
    seeds: tuple[int, ...] = (0,)
    """The seeds every model runs with (one pretraining and one run of each cell per seed)."""
    seeded: bool = False
    """Whether the suite lists ``seeds`` (else: no ``--seed_everything``, keys as before)."""
    baseline: str | None = None
    """The model every other is compared with, per task (Welch's t-test over seeds)."""
    contrasts: tuple[tuple[str, str], ...] = ()
    """``(model, against)`` pairs tested beside the baseline for the design lessons (e.g. a
    filtered data set against the noisy one it was filtered from)."""

    def seeded_models(self) -> list[ModelSpec]:
        """Every (model, seed) instance, model by model: :meth:`ModelSpec.with_seed`."""
        return [m.with_seed(s if self.seeded else None) for m in self.models for s in self.seeds]

    def cell_keys(self) -> dict[tuple[str, str, int], str]:
        """``(model, task, seed) -> key`` of every cell (seed 0 in a suite without seeds)."""
        return {(m.name, t.name, m.seed or 0): cell_key(m, t, self.classifier_of(t)) for m in self.seeded_models()
                for t in self.tasks if m.runs(t.name)}  # fmt: skip

    def classifier_of(self, task: TaskSpec) -> TaskSpec | None:
        """The task whose fine-tuned checkpoint a probe task queries (``None``: none)."""
        return self.task(task.classifier_task) if task.classifier_task else None

    def model(self, name: str) -> ModelSpec:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(f"suite {self.name!r} has no model {name!r}; it has {[m.name for m in self.models]}")

    def task(self, name: str) -> TaskSpec:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(f"suite {self.name!r} has no task {name!r}; it has {[t.name for t in self.tasks]}")

    @property
    def groups(self) -> list[str]:
        """The groups that have tasks, in Table 4 order (probe tasks are in none of them)."""
        present = {t.group for t in self.tasks}
        return [g for g in GROUPS if g in present]

    def select(self, models: Sequence[str] | None = None, tasks: Sequence[str] | None = None,
               seeds: Sequence[int] | None = None) -> Suite:  # fmt: skip
        """The suite restricted to some models, tasks and seeds (unknown names or seeds raise
        ``KeyError``). A probe task keeps the task its classifier comes from."""
        ms = tuple(self.model(n) for n in models) if models else self.models
        ts = tuple(self.task(n) for n in tasks) if tasks else self.tasks
        needed = {t.classifier_task for t in ts if t.classifier_task} - {t.name for t in ts}
        ts += tuple(t for t in self.tasks if t.name in needed)
        ss = tuple(seeds) if seeds else self.seeds
        unknown = [s for s in ss if s not in self.seeds]
        if unknown:
            raise KeyError(f"suite {self.name!r} has no seed {unknown[0]}; it has {list(self.seeds)}")
        return dataclasses.replace(self, models=ms, tasks=ts, seeds=ss)


LATE_FUSION_HIDDEN = 256
"""The hidden width of the late-fusion MLP head where the task's recipe sets no ``head_hidden``."""


def late_fusion_task(task: TaskSpec | None) -> bool:
    """Whether a late-fusion model fine-tunes ``task`` through the late-fusion head: a
    multimodal task that fits (not a probe, not a test-only module)."""
    return task is not None and task.probe is None and task.group == "multimodal" and task.mode == "fit_test"


def uses_late_fusion(model: ModelSpec, task: TaskSpec, classifier: TaskSpec | None = None) -> bool:
    """Whether the cell (``model``, ``task``) runs the late-fusion head: its own fine-tuning,
    or a probe querying the classifier of such a task (``classifier``)."""
    return model.late_fusion and (late_fusion_task(task) or late_fusion_task(classifier))


def cell_key(model: ModelSpec, task: TaskSpec, classifier: TaskSpec | None = None) -> str:
    """The config hash of one cell: its model's and its task's keys (and the model's seed,
    when seeded: the fine-tuning seed; and the late-fusion head, where the cell uses it:
    :func:`uses_late_fusion`, with ``classifier`` the task a probe queries)."""
    seeded = {} if model.seed is None else {"seed": model.seed}
    head = {"late_fusion": LATE_FUSION_HIDDEN} if uses_late_fusion(model, task, classifier) else {}
    return config_hash({"model": model.key, "task": task.key, **seeded, **head})


def seed_folder(seed: int | None) -> str:
    """The work-dir level of a seed: ``seed<k>``, or ``""`` in a suite without seeds."""
    return "" if seed is None else f"seed{seed}"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# ----------------------------------------------------------------------------- loading
def find_suite(name_or_path: str | Path) -> Path:
    """A suite file: ``name_or_path`` itself, or a suite by name (``benchmarks/suites/<name>.yaml``
    under the working directory, else the one shipped with the package:
    :func:`flava_zoo.shipped.find_suite`)."""
    return shipped.find_suite(name_or_path)


def load_suite(path: str | Path, data_root: str | Path | None = None) -> Suite:
    """Read and check a suite file.

    Relative recipe paths are looked up under the working directory, the suite file's
    parent folders, then among the recipes shipped with the package (so ``recipes/...``
    works from any folder, installed or not).
    ``{data_root}`` in task overrides and ``requires`` becomes ``data_root`` (argument, else
    the suite's ``data_root``, else ``data``).
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise SuiteError(path, "(file)", f"not valid YAML: {e}") from e
    return parse_suite(raw, path, data_root)


def parse_suite(raw: Any, path: str | Path | None = None, data_root: str | Path | None = None) -> Suite:
    """A :class:`Suite` from the loaded YAML ``raw`` (``path`` names it in errors)."""
    where = Path(path) if path is not None else Path("<suite>")
    r = _Reader(where)
    top = r.mapping(raw, "(top level)")
    r.only(top, "(top level)", {"name", "description", "data_root", "results", "leaderboard", "work_dir",
                                "overrides", "models", "tasks", "averages", "title", "seeds", "baseline", "contrasts"})  # fmt: skip
    averages = top.get("averages", True)
    if not isinstance(averages, bool):
        raise SuiteError(where, "averages", f"expected true or false, got {averages!r}")
    name = r.name(top.get("name"), "name")
    root = str(data_root if data_root is not None else top.get("data_root", "data"))
    shared = r.strings(top.get("overrides", []), "overrides")
    models = r.sequence(top.get("models"), "models")
    tasks = r.sequence(top.get("tasks"), "tasks")
    earlier: list[ModelSpec] = []  # a filter's ``by`` names a model listed before it
    for i, m in enumerate(models):
        earlier.append(r.model(m, f"models[{i}]", {e.name: e for e in earlier}))
    parsed_models = tuple(earlier)
    parsed_tasks = tuple(r.task(t, f"tasks[{i}]", shared, root) for i, t in enumerate(tasks))
    task_names = [t.name for t in parsed_tasks]
    by_task = {t.name: t for t in parsed_tasks}
    for i, m in enumerate(parsed_models):
        unknown = sorted(set(m.tasks or ()) - set(task_names))
        if unknown:
            raise SuiteError(where, f"models[{i}].tasks", f"{unknown[0]!r} is not a task of the suite; tasks: {task_names}")
        for listed in m.tasks or ():
            clf = by_task[listed].classifier_task
            if clf is not None and clf not in m.tasks:  # type: ignore[operator]
                raise SuiteError(where, f"models[{i}].tasks", f"{listed!r} queries the classifier of {clf!r}: list it too")
        if m.late_fusion:
            for t in parsed_tasks:
                module = str(recipe_value(t.recipe_text, "model.class_path") or "").rsplit(".", 1)[-1]
                if m.runs(t.name) and late_fusion_task(t) and module != "FinetuneModule":
                    raise SuiteError(where, f"models[{i}].late_fusion",
                                     f"task {t.name!r} fine-tunes {module or 'an unknown module'}, which has no "
                                     "late-fusion head (FinetuneModule has)")  # fmt: skip
    for label, items in (("models", parsed_models), ("tasks", parsed_tasks)):
        seen: set[str] = set()
        for i, item in enumerate(items):
            if item.name in seen:
                raise SuiteError(where, f"{label}[{i}].name", f"{item.name!r} is used twice")
            seen.add(item.name)
    by_name = {t.name: t for t in parsed_tasks}
    for i, t in enumerate(parsed_tasks):
        if t.classifier_task is None:
            continue
        source = by_name.get(t.classifier_task)
        if source is None or source.probe is not None or source.mode != "fit_test":
            raise SuiteError(where, f"tasks[{i}].classifier_task",
                             f"{t.classifier_task!r} is not a fine-tuning task of this suite "
                             f"(fine-tuning tasks: {[x.name for x in parsed_tasks if x.mode == 'fit_test' and not x.probe]})")  # fmt: skip
    seeds = top.get("seeds")
    if seeds is not None and (not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds)
                              or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds)):  # fmt: skip
        raise SuiteError(where, "seeds", f"expected a list of distinct non-negative integers, got {seeds!r}")
    baseline = top.get("baseline")
    if baseline is not None and baseline not in {m.name for m in parsed_models}:
        raise SuiteError(where, "baseline", f"{baseline!r} is not a model of the suite; models: {[m.name for m in parsed_models]}")
    names = [m.name for m in parsed_models]
    contrasts = top.get("contrasts", [])
    if not isinstance(contrasts, list):
        raise SuiteError(where, "contrasts", f"expected a list of [model, against] pairs, got {contrasts!r}")
    seen_pairs: set[frozenset[str]] = set()
    for i, pair in enumerate(contrasts):
        if not isinstance(pair, list) or len(pair) != 2 or any(p not in names for p in pair) or pair[0] == pair[1]:
            raise SuiteError(where, f"contrasts[{i}]", f"expected [model, against], two different models of the suite, "
                                                       f"got {pair!r}; models: {names}")  # fmt: skip
        if baseline in pair:
            raise SuiteError(where, f"contrasts[{i}]", f"{pair!r}: every model is tested against the baseline "
                                                       f"{baseline!r} already")  # fmt: skip
        if frozenset(pair) in seen_pairs:
            raise SuiteError(where, f"contrasts[{i}]", f"{pair!r} is tested twice (Welch's test is symmetric)")
        seen_pairs.add(frozenset(pair))
    return Suite(
        name=name,
        path=Path(path) if path is not None else None,
        models=parsed_models,
        tasks=parsed_tasks,
        description=str(top.get("description", "")).strip(),
        results=Path(top.get("results", f"benchmarks/results/results_{name}.jsonl")),
        leaderboard=Path(top.get("leaderboard", f"benchmarks/results/leaderboard_{name}")),
        work_dir=Path(top.get("work_dir", f"runs/bench/{name}")),
        averages=averages,
        title=str(top.get("title", "")).strip(),
        seeds=tuple(seeds) if seeds is not None else (0,),
        seeded=seeds is not None,
        baseline=baseline,
        contrasts=tuple((a, b) for a, b in contrasts),
    )


class _Reader:
    """Field-by-field checks that name the file and the field on failure."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, field: str, problem: str) -> SuiteError:
        return SuiteError(self.path, field, problem)

    def mapping(self, value: Any, field: str) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(field, f"expected a mapping, got {type(value).__name__}")
        return dict(value)

    def sequence(self, value: Any, field: str) -> list[Any]:
        if not isinstance(value, list) or not value:
            raise self.fail(field, "expected a non-empty list")
        return value

    def only(self, value: Mapping[str, Any], field: str, allowed: set[str]) -> None:
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise self.fail(f"{field}.{unknown[0]}" if field != "(top level)" else unknown[0],
                            f"unknown field; expected one of {sorted(allowed)}")  # fmt: skip

    def name(self, value: Any, field: str) -> str:
        if not isinstance(value, str) or not NAME_PATTERN.match(value):
            raise self.fail(field, f"expected a name of letters, digits and _.+- , got {value!r}")
        return value

    def strings(self, value: Any, field: str) -> tuple[str, ...]:
        if isinstance(value, str) or not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(field, f"expected a list of strings (command-line overrides), got {value!r}")
        for v in value:
            if not v.startswith("--"):
                raise self.fail(field, f"{v!r} is not a command-line option (e.g. --trainer.max_steps=50)")
        return tuple(value)

    def positive_int(self, value: Any, field: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self.fail(field, f"expected a positive integer, got {value!r}")
        return value

    def recipe(self, value: Any, field: str) -> tuple[Path, str]:
        if not isinstance(value, str) or not value:
            raise self.fail(field, f"expected a recipe path, got {value!r}")
        given = Path(value)
        if given.is_absolute():
            candidates = [given]
        else:
            roots = [Path.cwd(), *self.path.resolve().parents]
            candidates = [root / given for root in roots]
            with contextlib.suppress(shipped.ShippedNotFound):
                candidates.append(shipped.find_recipe(value))
        for candidate in candidates:
            if candidate.is_file():
                return candidate.resolve(), candidate.read_text(encoding="utf-8")
        raise self.fail(field, f"recipe {value} not found (looked under the working directory, the suite's "
                               "folders and the recipes shipped with flava-zoo)")  # fmt: skip

    # ------------------------------------------------------------------ models
    def model(self, value: Any, field: str, earlier: Mapping[str, ModelSpec] | None = None) -> ModelSpec:
        m = self.mapping(value, field)
        self.only(m, field, {"name", "description", "source", "overrides", "pretrain", "requires", "late_fusion",
                             "tasks"})  # fmt: skip
        name = self.name(m.get("name"), f"{field}.name")
        late_fusion = m.get("late_fusion", False)
        if not isinstance(late_fusion, bool):
            raise self.fail(f"{field}.late_fusion", f"expected true or false, got {late_fusion!r}")
        tasks = m.get("tasks")
        if tasks is not None:
            if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) for t in tasks):
                raise self.fail(f"{field}.tasks", f"expected a non-empty list of task names, got {tasks!r}")
            tasks = tuple(tasks)
        head = {"late_fusion": late_fusion, "tasks": tasks}
        overrides = self.mapping(m.get("overrides", {}), f"{field}.overrides")
        if ("source" in m) == ("pretrain" in m):
            raise self.fail(field, f"model {name!r} needs exactly one of 'source' and 'pretrain'")
        description = str(m.get("description", "")).strip()
        if "source" in m:
            source = m["source"]
            if not isinstance(source, str) or not source:
                raise self.fail(f"{field}.source", f"expected a model name, zoo arch.tag or folder, got {source!r}")
            requires = m.get("requires", [])
            if not isinstance(requires, list) or not all(isinstance(p, str) for p in requires):
                raise self.fail(f"{field}.requires", f"expected a list of paths, got {requires!r}")
            return ModelSpec(name, description, source=source, overrides=overrides,
                             requires=tuple(Path(p) for p in requires), **head)  # fmt: skip
        if "requires" in m:
            raise self.fail(f"{field}.requires", "a model pretrained by the suite requires nothing on disk")
        if overrides:
            raise self.fail(f"{field}.overrides", "a pretrained model takes its overrides under pretrain.overrides")
        pretrain = self.pretrain(m["pretrain"], f"{field}.pretrain", earlier or {})
        return ModelSpec(name, description, pretrain=pretrain, **head)

    def filter(self, value: Any, field: str, stages: list[str], earlier: Mapping[str, ModelSpec]) -> FilterSpec:
        """``{by: MODEL, keep: SHARE}``: ``by`` a model listed before, pretrained by the suite
        up to its multimodal stage; ``keep`` in (0, 1]."""
        f = self.mapping(value, field)
        self.only(f, field, {"by", "keep"})
        if "multimodal" not in stages:
            raise self.fail(field, "a filter chooses the multimodal stage's pairs; this model has no multimodal stage")
        by = f.get("by")
        source = earlier.get(by) if isinstance(by, str) else None
        if source is None:
            raise self.fail(f"{field}.by", f"expected a model listed before this one; got {by!r} (listed before: {sorted(earlier)})")
        if source.pretrain is None or source.pretrain.final.stage != "multimodal":
            raise self.fail(f"{field}.by", f"{by!r} is not pretrained by the suite through a multimodal stage "
                                           "(its contrastive embeddings score the pairs)")  # fmt: skip
        keep = f.get("keep")
        if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0 < keep <= 1:
            raise self.fail(f"{field}.keep", f"expected the share of pairs to keep, in (0, 1], got {keep!r}")
        return FilterSpec(by=by, by_stage=source.pretrain.final, keep=float(keep))

    def pretrain(self, value: Any, field: str, earlier: Mapping[str, ModelSpec] | None = None) -> PretrainSpec:
        p = self.mapping(value, field)
        self.only(p, field, {"stages", "overrides", "loss_weights", "steps", "batch_size", "args", "recipes",
                             "filter"})  # fmt: skip
        stages = p.get("stages", list(STAGES))
        if not isinstance(stages, list) or not stages or any(s not in STAGES for s in stages):
            raise self.fail(f"{field}.stages", f"expected a list from {list(STAGES)}, got {stages!r}")
        if len(set(stages)) != len(stages) or [s for s in STAGES if s in stages] != stages:
            raise self.fail(f"{field}.stages", f"stages run in the order {list(STAGES)}, each once; got {stages}")
        overrides = self.mapping(p.get("overrides", {}), f"{field}.overrides")
        weights = p.get("loss_weights")
        if weights is not None:
            weights = self.mapping(weights, f"{field}.loss_weights")
            for k, v in weights.items():
                if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                    raise self.fail(f"{field}.loss_weights.{k}", f"expected a non-negative number, got {v!r}")
            weights = {k: float(v) for k, v in weights.items()}
            if "multimodal" not in stages:
                raise self.fail(f"{field}.loss_weights", "loss_weights set the multimodal stage's terms; it has none")
        steps = self.mapping(p.get("steps"), f"{field}.steps")
        missing = [s for s in stages if s not in steps]
        if missing or set(steps) - set(STAGES):
            raise self.fail(f"{field}.steps", f"give the steps of the stages {stages}, got {sorted(steps)}")
        batch_size = self.positive_int(p.get("batch_size", 64), f"{field}.batch_size")
        args = p.get("args", [])
        if isinstance(args, Mapping):
            extra = sorted(set(args) - set(STAGES))
            if extra:
                raise self.fail(f"{field}.args.{extra[0]}", f"not a stage; stages are {list(STAGES)}")
            stage_args = {s: self.strings(args.get(s, []), f"{field}.args.{s}") for s in stages}
        else:
            common = self.strings(args, f"{field}.args")
            stage_args = {s: common for s in stages}
        recipes = self.mapping(p.get("recipes", {}), f"{field}.recipes")
        extra = sorted(set(recipes) - set(STAGES))
        if extra:
            raise self.fail(f"{field}.recipes.{extra[0]}", f"not a stage; stages are {list(STAGES)}")
        filter_ = self.filter(p["filter"], f"{field}.filter", stages, earlier or {}) if "filter" in p else None
        out: list[StageSpec] = []
        previous = None
        for stage in stages:
            recipe, text = self.recipe(recipes.get(stage, f"recipes/pretrain/shapes_{stage}.yaml"), f"{field}.recipes.{stage}")
            unimodal = stage != "multimodal"
            stage_overrides = {k: v for k, v in overrides.items() if not (unimodal and _fusion_only(k))}
            previous = StageSpec(
                stage=stage,
                recipe=recipe,
                recipe_text=text,
                steps=self.positive_int(steps[stage], f"{field}.steps.{stage}"),
                batch_size=batch_size,
                model_overrides=stage_overrides,
                loss_weights=weights if stage == "multimodal" else None,
                args=stage_args[stage],
                previous=previous,
                filter=filter_ if stage == "multimodal" else None,
            )
            if previous.filter is not None:
                captions = recipe_value(text, "data.init_args.captions", previous.args)
                if str(captions) != "1":
                    raise self.fail(f"{field}.filter", f"the filter scores each scene's primary caption; the multimodal "
                                                       f"stage reads captions={captions!r} (use captions: '1')")  # fmt: skip
            out.append(previous)
        return PretrainSpec(tuple(out))

    # ------------------------------------------------------------------- tasks
    def task(self, value: Any, field: str, shared: tuple[str, ...], data_root: str) -> TaskSpec:
        t = self.mapping(value, field)
        if "probe" in t:
            return self.probe_task(t, field)
        self.only(t, field, {"name", "group", "recipe", "metric", "mode", "overrides", "split", "scale",
                             "description", "requires", "chance"})  # fmt: skip
        chance = t.get("chance")
        if chance is not None and (isinstance(chance, bool) or not isinstance(chance, (int, float))
                                   or not 0 <= chance <= 100):  # fmt: skip
            raise self.fail(f"{field}.chance", f"expected the chance level in percent (0 to 100), got {chance!r}")
        name = self.name(t.get("name"), f"{field}.name")
        group = t.get("group")
        if group not in GROUPS:
            raise self.fail(f"{field}.group", f"expected one of {list(GROUPS)}, got {group!r}")
        metric = t.get("metric")
        if not isinstance(metric, str) or not metric:
            raise self.fail(f"{field}.metric", f"expected the headline metric's name in the records, got {metric!r}")
        recipe, text = self.recipe(t.get("recipe"), f"{field}.recipe")
        mode = t.get("mode", _default_mode(text))
        if mode not in MODES:
            raise self.fail(f"{field}.mode", f"expected one of {list(MODES)}, got {mode!r}")
        own = self.strings(t.get("overrides", []), f"{field}.overrides")
        overrides = tuple(o.replace("{data_root}", data_root) for o in (*shared, *own))
        scale = t.get("scale", 1.0)  # records are in percent
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale <= 0:
            raise self.fail(f"{field}.scale", f"expected a positive number, got {scale!r}")
        split = t.get("split", "test")
        if not isinstance(split, str) or not split:
            raise self.fail(f"{field}.split", f"expected a split name, got {split!r}")
        requires = t.get("requires", [])
        if not isinstance(requires, list) or not all(isinstance(p, str) for p in requires):
            raise self.fail(f"{field}.requires", f"expected a list of paths, got {requires!r}")
        return TaskSpec(
            name=name,
            group=group,
            metric=metric,
            recipe=recipe,
            recipe_text=text,
            mode=mode,
            overrides=overrides,
            split=split,
            scale=float(scale),
            description=str(t.get("description", "")).strip(),
            requires=tuple(Path(p.replace("{data_root}", data_root)) for p in requires),
            chance=float(chance) if chance is not None else None,
        )


    def probe_task(self, t: dict[str, Any], field: str) -> TaskSpec:
        """A probe task: ``probe``, ``metric``, ``split`` (default ``test``), optional
        ``classifier_task``, ``options``, ``description`` and ``chance``."""
        from ..probes import PROBES

        self.only(t, field, {"name", "probe", "metric", "split", "classifier_task", "options", "description",
                             "chance", "group"})  # fmt: skip
        name = self.name(t.get("name"), f"{field}.name")
        probe = t.get("probe")
        if probe not in PROBES:
            raise self.fail(f"{field}.probe", f"expected one of {sorted(PROBES)}, got {probe!r}")
        if t.get("group", PROBE_GROUP) != PROBE_GROUP:
            raise self.fail(f"{field}.group", f"a probe task is in group {PROBE_GROUP!r} (part of no average)")
        metric = t.get("metric")
        if not isinstance(metric, str) or not metric:
            raise self.fail(f"{field}.metric", f"expected the probe record's metric (e.g. interaction_share/auroc), got {metric!r}")
        split = t.get("split", "test")
        if not isinstance(split, str) or not split:
            raise self.fail(f"{field}.split", f"expected the probe record's split, got {split!r}")
        clf = t.get("classifier_task")
        if clf is not None and (not isinstance(clf, str) or not NAME_PATTERN.match(clf)):
            raise self.fail(f"{field}.classifier_task", f"expected a task name, got {clf!r}")
        options = self.mapping(t.get("options", {}), f"{field}.options")
        reserved = sorted(set(options) & {"model", "classifier", "label", "out", "results", "seed", "quiet"})
        if reserved:
            raise self.fail(f"{field}.options.{reserved[0]}", "set by the runner, not by the suite")
        chance = t.get("chance")
        if chance is not None and (isinstance(chance, bool) or not isinstance(chance, (int, float))):
            raise self.fail(f"{field}.chance", f"expected a number, got {chance!r}")
        return TaskSpec(name=name, group=PROBE_GROUP, metric=metric, split=split, mode="test",
                        description=str(t.get("description", "")).strip(), probe=probe, classifier_task=clf,
                        probe_options=options, chance=float(chance) if chance is not None else None)  # fmt: skip


def _fusion_only(key: str) -> bool:
    head = re.split(r"\.|__", key, maxsplit=1)[0]
    return head in FUSION_ONLY_KEYS


def _default_mode(recipe_text: str) -> str:
    """``test`` for the modules that fit nothing (linear probe, zero-shot) and for recipes
    without a step budget; ``fit_test`` otherwise."""
    recipe = yaml.safe_load(recipe_text) or {}
    class_path = str((recipe.get("model") or {}).get("class_path", ""))
    if class_path.rsplit(".", 1)[-1] in TEST_ONLY_MODULES:
        return "test"
    return "fit_test" if (recipe.get("trainer") or {}).get("max_steps") else "test"


def recipe_value(recipe_text: str, dotted: str, overrides: Sequence[str] = ()) -> Any:
    """The value of ``dotted`` (``trainer.max_steps``) after ``overrides`` (``--a.b=v``, the
    last wins), else in the recipe, else ``None``."""
    for option in reversed(list(overrides)):
        key, sep, value = option[2:].partition("=")
        if sep and key == dotted:
            return yaml.safe_load(value)
    node: Any = yaml.safe_load(recipe_text) or {}
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def describe_stage_args(stage: StageSpec) -> str:
    """A short human description of a stage's settings."""
    parts = [f"{stage.steps} steps", f"batch {stage.batch_size}"]
    if stage.model_overrides:
        parts.append(json.dumps(stage.model_overrides, sort_keys=True))
    if stage.loss_weights:
        on = [k for k, v in sorted(stage.loss_weights.items()) if v > 0]
        parts.append("losses: " + ", ".join(on))
    return f"{stage.stage} ({'; '.join(parts)})"
