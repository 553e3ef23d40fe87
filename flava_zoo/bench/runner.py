"""Run a suite: pretraining stages, then every (model, task) cell, through the recipes' CLI.

Each job's commands are ``flava-zoo`` command lines (printed by ``--dry-run`` as they would be
typed); they run in-process through :func:`flava_zoo.recipe_cli.run_lightning`, the one way a
recipe runs, which sits below both this module and :mod:`flava_zoo.cli` (neither imports the
other).

Each pretraining stage is ``flava-zoo fit`` on its recipe and exports to
``<work_dir>/pretrain/<stage>-<key>/export``; a stage that finished (``done.json``) is
reused by every model whose stages up to it are the same, in this run and the next. Each
cell is ``flava-zoo fit`` then ``test`` (fine-tuning recipes) or ``test`` alone (probes,
zero-shot) on the model's export, in ``<work_dir>/cells/<model>/<task>``, with its output
there in ``log.txt``. A cell's records are copied into the suite's results file under the
suite's model and task names and the cell's key as ``config_hash``; a cell with records for
its key (and headline metric) is finished and skipped by later runs.

Seeds (``seeds:`` in the suite): every stage and cell runs once per seed with
``--seed_everything=<seed>``, in ``<work_dir>/pretrain/seed<k>/...`` and
``<work_dir>/cells/<model>/seed<k>/<task>``; the seed is in every key (so resuming skips the
(model, seed, task) cells already recorded) and in each adopted record's ``lineage["seed"]``.
A probe task (``probe:``) runs :func:`flava_zoo.probes.run_probe` on the model's export (its
``classifier_task``'s fine-tuned ``last.ckpt``, same model and seed, as the classifier) after
that cell, writing into its cell folder; its records are adopted like a recipe's. A model given
as an architecture has no vocabulary of its own: its probes get the one the shapes recipes
train for it (written to ``<cell>/tokenizer``).

Cost: each pretraining stage and each cell appends a line to ``<results>.cost.jsonl``
(:func:`cost_path`): its key, kind, seed, wall time, samples seen (steps x batch size, for a
stage) and samples/s, the model's parameter count (``model.parameters()`` of the export or
architecture; ``null`` for a zoo tag, which is not loaded) and the job's peak memory: on a GPU
``torch.cuda.max_memory_allocated`` (reset at the job's start), on a CPU the resident set's
high-water mark ``VmHWM`` of the process running it, reset through ``/proc/self/clear_refs``
at the job's start (where Linux refuses the reset, ``resource.getrusage`` ``ru_maxrss``, the
process's peak so far); the line says which, and the commit it ran at. The leaderboard's cost
columns are read from it (:func:`flava_zoo.bench.leaderboard.model_costs`).

Jobs run one at a time in this process, or in ``jobs`` worker processes (each with
``threads`` torch threads): on two cores two single-threaded workers beat one two-threaded
process on these small models. Every run appends a line to ``<results>.runs.jsonl``: the
command, the commit, the machine, and each job's status and time.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import json
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..evaluation.results import ResultRecord, append_results, read_results
from .environment import git_state, machine
from .suite import (
    LATE_FUSION_HIDDEN,
    ModelSpec,
    StageSpec,
    Suite,
    TaskSpec,
    recipe_value,
    seed_folder,
    uses_late_fusion,
)

__all__ = ["Job", "RunSummary", "cost_path", "plan", "run_suite", "runs_log_path"]

PROBE_RESULTS = "results.jsonl"
"""The file a probe cell's records go to, in its folder (``run_probe(out=folder)``)."""


def cost_path(results: str | Path) -> Path:
    """Where the cost lines of a results file live: ``<results stem>.cost.jsonl``."""
    results = Path(results)
    return results.with_name(results.name.removesuffix(".jsonl") + ".cost.jsonl")


def runs_log_path(results: str | Path) -> Path:
    """Where the run log of a results file lives: ``<results stem>.runs.jsonl``."""
    results = Path(results)
    return results.with_name(results.name.removesuffix(".jsonl") + ".runs.jsonl")


@dataclasses.dataclass
class Job:
    """A pretraining stage or a cell: the ``flava-zoo`` commands to run in ``folder``."""

    kind: str
    key: str
    label: str
    folder: Path
    commands: list[list[str]]
    deps: list[str] = dataclasses.field(default_factory=list)
    model: str | None = None
    tasks: list[str] = dataclasses.field(default_factory=list)
    stage: str | None = None
    seed: int | None = None
    probe: dict[str, Any] | None = None
    """A probe cell's ``run_probe`` call: ``name`` and keyword arguments."""
    samples: int | None = None
    """Training samples a stage sees (steps x batch size): its samples/s."""
    reference: str | None = None
    """The model the job trains or evaluates (what its parameters are counted on)."""
    filter: list[str] | None = None
    """``flava-zoo filter`` arguments run before the commands (a filtered stage's pairs)."""

    def payload(self, threads: int, verbose: bool) -> dict[str, Any]:
        """What :func:`execute` needs (plain data: it crosses to worker processes)."""
        return {"commands": self.commands, "folder": str(self.folder), "threads": threads,
                "verbose": verbose, "marker": self.kind == "stage", "probe": self.probe,
                "reference": self.reference, "filter": self.filter}  # fmt: skip


@dataclasses.dataclass
class Plan:
    """What a run will do: jobs in start order, and the cells it will not run."""

    jobs: list[Job]
    done: list[tuple[str, str, int]]
    skipped: dict[tuple[str, str, int], str]
    keys: dict[tuple[str, str, int], str]


@dataclasses.dataclass
class RunSummary:
    """What a run did."""

    ran: int = 0
    failed: int = 0
    skipped_done: int = 0
    skipped_data: int = 0
    wall_s: float = 0.0
    entries: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    log: _RunLog | None = None

    @property
    def ok(self) -> bool:
        return self.failed == 0


class _RunLog:
    """This run's line in the run log, rewritten (atomically) after every job, so that a run
    killed from outside still leaves what it did and for how long; ``finished`` stays false
    when the run did not reach its end."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self.header = header
        self.start = time.perf_counter()
        self.before = path.read_text(encoding="utf-8") if path.is_file() else ""
        if self.before and not self.before.endswith("\n"):
            self.before += "\n"

    def update(self, summary: RunSummary, start: float | None = None, finished: bool | None = None) -> None:
        if start is not None:
            self.start = start
        if finished is not None:
            self.header["finished"] = finished
        summary.wall_s = time.perf_counter() - self.start
        with contextlib.suppress(OSError):
            self.header["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
        line = {**self.header, "wall_s": round(summary.wall_s, 1),
                "cpu_s": round(sum(e.get("cpu_s", 0.0) for e in summary.entries), 1), "work": summary.entries}  # fmt: skip
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(self.before + json.dumps(line) + "\n", encoding="utf-8")
        tmp.replace(self.path)


# ------------------------------------------------------------------------------ planning
def stage_folder(suite: Suite, stage: StageSpec) -> Path:
    """``<work_dir>/pretrain[/seed<k>]/<stage>-<key>``."""
    return suite.work_dir / "pretrain" / seed_folder(stage.seed) / f"{stage.stage}-{stage.key}"


def _seed_args(seed: int | None) -> list[str]:
    return [] if seed is None else [f"--seed_everything={seed}"]


def stage_done(suite: Suite, stage: StageSpec) -> bool:
    folder = stage_folder(suite, stage)
    return (folder / "done.json").is_file() and (folder / "export" / "config.json").is_file()


def model_reference(suite: Suite, model: ModelSpec) -> str:
    """What a cell passes as ``--model.init_args.model``: the final stage's export, or the
    source (an existing folder made absolute)."""
    if model.pretrain is not None:
        return str((stage_folder(suite, model.pretrain.final) / "export").resolve())
    assert model.source is not None
    path = Path(model.source)
    return str(path.resolve()) if path.is_dir() else model.source


def stage_commands(suite: Suite, stage: StageSpec) -> list[list[str]]:
    """``flava-zoo fit`` on the stage's recipe, starting from the previous stage's export."""
    folder = stage_folder(suite, stage).resolve()
    text = stage.recipe_text
    args = [
        "fit", "--config", str(stage.recipe), *_seed_args(stage.seed),
        f"--trainer.default_root_dir={folder}",
        f"--trainer.max_steps={stage.steps}",
        "--trainer.limit_val_batches=0",
        "--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        f"--model.init_args.export_dir={folder / 'export'}",
        f"--model.init_args.warmup_steps={max(1, stage.steps // 10)}",
        f"--data.init_args.batch_size={stage.batch_size}",
    ]  # fmt: skip
    if _single_checkpoint_callback(text):
        args += [f"--trainer.callbacks.init_args.dirpath={folder / 'checkpoints'}",
                 f"--trainer.callbacks.init_args.every_n_train_steps={stage.steps}"]  # fmt: skip
    if stage.previous is not None:
        previous = (stage_folder(suite, stage.previous) / "export").resolve()
        args.append(f"--model.init_args.init_from={previous}")
        if stage.previous.stage != "image":
            # go on with the vocabulary the text tower was trained with
            args.append(f"--data.init_args.tokenizer={previous}")
    else:
        args.append("--model.init_args.init_from=null")
    if stage.model_overrides:
        args.append(f"--model.init_args.model_overrides={json.dumps(stage.model_overrides, sort_keys=True)}")
    if stage.loss_weights is not None:
        args.append(f"--model.init_args.loss_weights={json.dumps(stage.loss_weights, sort_keys=True)}")
    if stage.filter is not None:
        args.append(f"--data.init_args.keep={filter_output(suite, stage)}")
    return [args + list(stage.args)]


def filter_output(suite: Suite, stage: StageSpec) -> Path:
    """Where a filtered stage's kept scene indices go: ``keep.json`` in its folder."""
    return (stage_folder(suite, stage) / "keep.json").resolve()


def filter_arguments(suite: Suite, stage: StageSpec) -> list[str]:
    """``flava-zoo filter --shapes`` on the pairs the stage reads (the world seed, train size,
    caption noise and noise seed of its recipe and arguments), scored by the final export of
    the filter's ``by`` model."""
    assert stage.filter is not None

    import inspect

    from ..data.datamodules import ShapesPretrainData

    defaults = inspect.signature(ShapesPretrainData).parameters

    def data(name: str) -> Any:
        value = recipe_value(stage.recipe_text, f"data.init_args.{name}", stage.args)
        return defaults[name].default if value is None else value

    by = (stage_folder(suite, stage.filter.by_stage) / "export").resolve()
    return ["--model", str(by), "--shapes", "--keep", str(stage.filter.keep), "--out", str(filter_output(suite, stage)),
            "--caption-noise", str(data("caption_noise")), "--noise-seed", str(data("noise_seed")),
            "--train-size", str(data("train_size")), "--world-seed", str(data("seed"))]  # fmt: skip


def cell_folder(suite: Suite, model: ModelSpec, task: TaskSpec) -> Path:
    """``<work_dir>/cells/<model>[/seed<k>]/<task>``."""
    return suite.work_dir / "cells" / model.name / seed_folder(model.seed) / task.name


def classifier_checkpoint(suite: Suite, model: ModelSpec, task: TaskSpec) -> Path:
    """The fine-tuned ``last.ckpt`` a probe task's classifier comes from: in the folder of
    the first suite task run by the same job as its ``classifier_task``."""
    assert task.classifier_task is not None
    source = suite.task(task.classifier_task)
    first = next(t for t in suite.tasks if t.probe is None and t.key == source.key)
    return (cell_folder(suite, model, first) / "checkpoints" / "last.ckpt").resolve()


def probe_call(suite: Suite, model: ModelSpec, task: TaskSpec) -> dict[str, Any]:
    """The ``run_probe`` call of a probe cell: the model's export, the classifier, the
    suite's model name as the label, the cell folder as ``out``, the seed (0 unseeded)."""
    assert task.probe is not None
    options: dict[str, Any] = {**task.probe_options, "label": model.name,
                               "out": str(cell_folder(suite, model, task).resolve()), "seed": model.seed or 0}  # fmt: skip
    if task.classifier_task is not None:
        options["classifier"] = str(classifier_checkpoint(suite, model, task))
    reference = model_reference(suite, model)
    from ..factory import resolve_model

    with contextlib.suppress(ValueError, OSError):
        if "tokenizer" not in options and resolve_model(reference).kind == "architecture":
            options["tokenizer"] = str(cell_folder(suite, model, task).resolve() / "tokenizer")
            return {"name": task.probe, "model": reference, "options": options, "shapes_tokenizer": True}
    return {"name": task.probe, "model": reference, "options": options}


def cell_commands(suite: Suite, model: ModelSpec, task: TaskSpec) -> list[list[str]]:
    """``fit`` then ``test`` (from the fine-tuned ``last`` checkpoint), or ``test`` alone."""
    assert task.recipe is not None
    folder = cell_folder(suite, model, task).resolve()
    common = [
        "--config", str(task.recipe), *_seed_args(model.seed),
        f"--model.init_args.model={model_reference(suite, model)}",
        f"--model.init_args.results={folder / 'records.jsonl'}",
        f"--trainer.default_root_dir={folder}",
        "--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
    ]  # fmt: skip
    if model.overrides:
        common.append(f"--model.init_args.model_overrides={json.dumps(model.overrides, sort_keys=True)}")
    if uses_late_fusion(model, task):
        common.append("--model.init_args.late_fusion=true")
        if recipe_value(task.recipe_text, "model.init_args.head_hidden", task.overrides) is None:
            common.append(f"--model.init_args.head_hidden={LATE_FUSION_HIDDEN}")  # an MLP, as CLIP-style baselines
    if task.mode == "test":
        return [["test", *common, *task.overrides]]
    if not _single_checkpoint_callback(task.recipe_text):
        raise ValueError(
            f"{task.recipe}: task {task.name!r} fits then tests, which needs one ModelCheckpoint "
            "callback (save_last: true), the last of the recipe's trainer.callbacks"
        )
    steps = recipe_value(task.recipe_text, "trainer.max_steps", task.overrides)
    common += [f"--trainer.callbacks.init_args.dirpath={folder / 'checkpoints'}"]
    if isinstance(steps, int) and steps > 0:
        common.append(f"--trainer.callbacks.init_args.every_n_train_steps={steps}")
    common += list(task.overrides)
    return [["fit", *common], ["test", *common, "--ckpt_path", "last"]]


def _single_checkpoint_callback(recipe_text: str) -> bool:
    """Whether the recipe has one ``ModelCheckpoint`` and it is the last callback: the one
    ``--trainer.callbacks.init_args.*`` options set (they apply to the last in the list)."""
    callbacks = recipe_value(recipe_text, "trainer.callbacks")
    if isinstance(callbacks, dict):
        callbacks = [callbacks]
    if not isinstance(callbacks, list) or not callbacks:
        return False
    checkpoints = [c for c in callbacks if str(c.get("class_path", "")).endswith("ModelCheckpoint")]
    return len(checkpoints) == 1 and checkpoints[0] is callbacks[-1]


def done_cells(suite: Suite) -> set[tuple[str, str, str]]:
    """``(model, task, key)`` of the cells whose headline record is in the results file (the
    key holds the seed: each (model, seed, task) is found again on its own)."""
    if not suite.results.is_file():
        return set()
    headline = {t.name: (t.split, t.metric) for t in suite.tasks}
    return {
        (r.model, r.task, r.config_hash)
        for r in read_results(suite.results)
        if headline.get(r.task) == (r.split, r.metric)
    }


def plan(suite: Suite) -> Plan:
    """The jobs still to run: unfinished cells (per model and seed) whose data is on disk, and
    the pretraining stages they need that have not finished. Stages come first, then cells
    model by model, seed by seed; a probe cell after the cell whose classifier it queries."""
    done = done_cells(suite)
    keys = suite.cell_keys()
    stage_jobs: dict[str, Job] = {}
    cell_jobs: dict[tuple[str, int | None, str], Job] = {}
    finished: list[tuple[str, str, int]] = []
    skipped: dict[tuple[str, str, int], str] = {}
    ordered = [t for t in suite.tasks if t.probe is None] + [t for t in suite.tasks if t.probe is not None]
    for model in suite.seeded_models():
        seed = model.seed or 0
        for task in ordered:
            if not model.runs(task.name):
                continue
            key = keys[(model.name, task.name, seed)]
            cell = (model.name, task.name, seed)
            if (model.name, task.name, key) in done:
                finished.append(cell)
                continue
            missing = task.missing_data()
            if missing:
                skipped[cell] = f"data not on disk: {missing[0]}"
                continue
            missing = model.missing_data()
            if missing:
                skipped[cell] = f"model not on disk: {missing[0]}"
                continue
            deps = []
            if model.pretrain is not None:
                deps = _stage_jobs(suite, model.name, model.seed, model.pretrain.stages, stage_jobs)
            if task.probe is not None:
                job = _probe_job(suite, model, task, key, deps, cell_jobs, skipped)
                if job is not None:
                    cell_jobs[(model.name, model.seed, task.key)] = job
                continue
            same = cell_jobs.get((model.name, model.seed, task.key))
            if same is not None:  # another task with the same recipe and overrides: one run
                same.tasks.append(task.name)
                same.label += f" + {task.name}"
                continue
            seed_label = "" if model.seed is None else f" (seed {model.seed})"
            cell_jobs[(model.name, model.seed, task.key)] = Job(
                kind="cell", key=key, label=f"{model.name} x {task.name}{seed_label}",
                folder=cell_folder(suite, model, task), commands=cell_commands(suite, model, task), deps=deps,
                model=model.name, tasks=[task.name], seed=model.seed, reference=model_reference(suite, model),
            )  # fmt: skip
    stages = list(stage_jobs.values())
    for job in stages:
        job.deps = [d for d in job.deps if d in stage_jobs]
    return Plan(stages + list(cell_jobs.values()), finished, skipped, keys)


def _stage_jobs(suite: Suite, name: str, seed: int | None, stages: Sequence[StageSpec],
                stage_jobs: dict[str, Job]) -> list[str]:  # fmt: skip
    """Add the unfinished ``stages`` (and those of the models their filters use) to
    ``stage_jobs``; return the dependency a cell of the last stage waits for."""
    deps: list[str] = []
    for stage in stages:
        filter_deps: list[str] = []
        if stage.filter is not None:
            filter_deps = _stage_jobs(suite, stage.filter.by, seed, stage.filter.chain(), stage_jobs)
        if stage.key not in stage_jobs and not stage_done(suite, stage):
            stage_jobs[stage.key] = Job(
                kind="stage", key=stage.key, label=f"pretrain {name}: {stage.label}",
                folder=stage_folder(suite, stage), commands=stage_commands(suite, stage),
                deps=([stage.previous.key] if stage.previous is not None else []) + filter_deps,
                model=name, stage=stage.stage, seed=seed, samples=stage.steps * stage.batch_size,
                reference=str((stage_folder(suite, stage) / "export").resolve()),
                filter=filter_arguments(suite, stage) if stage.filter is not None else None,
            )  # fmt: skip
        if stage.key in stage_jobs:
            deps = [stage.key]
    return deps


def _probe_job(suite: Suite, model: ModelSpec, task: TaskSpec, key: str, deps: list[str],
               cell_jobs: dict[tuple[str, int | None, str], Job],
               skipped: dict[tuple[str, str, int], str]) -> Job | None:  # fmt: skip
    """A probe cell's job, after its classifier's cell when that runs too; ``None`` (and a
    reason in ``skipped``) when its classifier is neither to run nor on disk."""
    deps = list(deps)
    if task.classifier_task is not None:
        source = suite.task(task.classifier_task)
        clf_job = cell_jobs.get((model.name, model.seed, source.key))
        if clf_job is not None:
            deps.append(clf_job.key)
        elif not classifier_checkpoint(suite, model, task).is_file():
            skipped[(model.name, task.name, model.seed or 0)] = (
                f"classifier not on disk: {classifier_checkpoint(suite, model, task)} (its {source.name} cell is "
                "recorded but its folder is gone; remove its records to rerun it)"
            )
            return None
    seed_label = "" if model.seed is None else f" (seed {model.seed})"
    return Job(kind="cell", key=key, label=f"{model.name} x {task.name}{seed_label}",
               folder=cell_folder(suite, model, task), commands=[], deps=deps, model=model.name,
               tasks=[task.name], seed=model.seed, probe=probe_call(suite, model, task),
               reference=model_reference(suite, model))  # fmt: skip


# ----------------------------------------------------------------------------- execution
class _CurrentStderr:
    """A stream that writes to whatever ``sys.stderr`` is now (a job's log while it runs)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _quiet_lightning() -> None:
    """Lightning's info lines off, its warnings into the running job's log. Lightning sets
    its loggers' levels and handlers when imported, so import it first."""
    import lightning.pytorch  # noqa: F401

    for name in ("lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.WARNING)
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.setStream(_CurrentStderr())  # type: ignore[arg-type]


def _worker_init() -> None:
    _quiet_lightning()


def execute(payload: dict[str, Any]) -> dict[str, Any]:
    """Run one job's commands in a fresh folder (module level: worker processes call it).

    Output goes to ``folder/log.txt`` unless ``verbose``. Returns ``ok``, ``error`` (the
    exception, or the last line of the log), ``wall_s`` and ``cpu_s`` (this process's CPU
    time, all threads).
    """
    import torch

    from ..recipe_cli import run_lightning

    folder = Path(payload["folder"])
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    log_path = folder / "log.txt"
    threads = torch.get_num_threads()
    torch.set_num_threads(int(payload["threads"]))
    memory = _PeakMemory()
    start, cpu = time.perf_counter(), time.process_time()
    error = ""
    argv: list[str] = []
    with open(log_path, "w", encoding="utf-8") as log, contextlib.ExitStack() as stack:
        if not payload["verbose"]:
            stack.enter_context(contextlib.redirect_stdout(log))
            stack.enter_context(contextlib.redirect_stderr(log))
        stack.enter_context(warnings.catch_warnings())
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter", category=UserWarning)
        try:
            if payload.get("filter"):
                from ..filtering import main as filter_main

                argv = list(payload["filter"]) + (["--device", "cuda"] if torch.cuda.is_available() else [])
                print("+ flava-zoo filter " + " ".join(argv), flush=True)
                code = filter_main(argv)
                if code:
                    raise RuntimeError(f"flava-zoo filter exited with status {code}")
            for argv in payload["commands"]:
                print("+ flava-zoo " + " ".join(argv), flush=True)
                code = run_lightning(list(argv))
                if _TERMINATED.is_set():  # Lightning turns our SIGTERM interrupt into its own exit
                    raise KeyboardInterrupt("SIGTERM")
                if code:
                    error = f"flava-zoo {argv[0]} exited with status {code}"
                    break
            probe = payload.get("probe")
            if probe and probe.get("shapes_tokenizer"):
                # an architecture has no vocabulary: the one the shapes recipes train for it
                # (world seed 0, 48 tokens), the same function the fine-tuning data uses
                from ..downstream.data import _shapes_tokenizer

                _shapes_tokenizer(0, 48).save(probe["options"]["tokenizer"])
            if probe:
                from ..probes import run_probe

                print(f"+ run_probe({probe['name']!r}, model={probe['model']!r}, **{probe['options']!r})", flush=True)
                run_probe(probe["name"], model=probe["model"], quiet=True, **probe["options"])
        except KeyboardInterrupt:
            raise
        except SystemExit as e:
            if e.code not in (0, None):
                error = f"flava-zoo {argv[0]}: command-line error (status {e.code})"
        except BaseException as e:  # noqa: BLE001 - a failed cell must not stop the suite
            traceback.print_exc()
            error = f"{type(e).__name__}: {e}"
        finally:
            torch.set_num_threads(threads)
    if error and "command-line error" in error:
        last = [line for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
        if last:
            error += f": {last[-1].strip()}"
    if not error and payload["marker"] and not (folder / "export" / "config.json").is_file():
        error = "the stage ended without exporting its weights (stopped by a signal?)"
    wall, cpu_s = time.perf_counter() - start, time.process_time() - cpu
    peak = memory.peak()
    if not error and payload["marker"]:
        done = {"finished": _now(), "commands": payload["commands"]}
        if payload.get("filter"):
            done["filter"] = payload["filter"]
        (folder / "done.json").write_text(json.dumps(done, indent=1))
    parameters = count_parameters(payload.get("reference")) if not error else None
    return {"ok": not error, "error": error[:500], "wall_s": wall, "cpu_s": cpu_s, "parameters": parameters,
            **peak}  # fmt: skip


class _PeakMemory:
    """A job's peak memory: ``torch.cuda.max_memory_allocated`` on a GPU (reset here), else
    the process's resident high-water mark ``VmHWM`` (reset here through
    ``/proc/self/clear_refs``; where that is refused, ``resource.getrusage``'s ``ru_maxrss``,
    the process's peak so far)."""

    def __init__(self) -> None:
        import torch

        self.cuda = torch.cuda.is_available()
        self.reset = False
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            return
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")
            self.reset = True

    def peak(self) -> dict[str, Any]:
        """``peak_memory_mib`` and ``memory`` (how it was measured)."""
        import resource

        import torch

        if self.cuda:
            return {"peak_memory_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1),
                    "memory": "torch.cuda.max_memory_allocated"}  # fmt: skip
        if self.reset:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                text = Path("/proc/self/status").read_text()
                kib = int(text.split("VmHWM:", 1)[1].split()[0])
                return {"peak_memory_mib": round(kib / 1024, 1), "memory": "peak RSS (VmHWM, reset at the job's start)"}
        return {"peak_memory_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "memory": "peak RSS of the process so far (getrusage ru_maxrss)"}  # fmt: skip


def count_parameters(reference: str | None) -> int | None:
    """The parameter count (``model.parameters()``, shared tensors once) of an export folder
    or a registered architecture; ``None`` for anything else (a zoo tag is not loaded here)."""
    if not reference:
        return None
    from ..factory import create_model, resolve_model

    try:
        if resolve_model(reference).kind not in ("export", "architecture"):
            return None
        return sum(p.numel() for p in create_model(reference).parameters())
    except (OSError, ValueError, KeyError):
        return None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _executor(jobs: int, old: Any = None) -> Any:
    """Worker processes for ``jobs`` > 1 (replacing ``old``, a broken pool), else in-process."""
    if old is not None:
        old.shutdown(wait=False, cancel_futures=True)
    if jobs > 1:
        return cf.ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                                      initializer=_worker_init)  # fmt: skip
    _quiet_lightning()
    return _Inline()


class _Inline:
    """An executor that runs each job in this process when submitted."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> cf.Future:
        future: cf.Future = cf.Future()
        try:
            future.set_result(fn(*args))
        except BaseException as e:  # KeyboardInterrupt included: surfaced by result()
            future.set_exception(e)
        return future

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


class Progress:
    """Prints which job runs, what finished (with its time and headline number) and what remains."""

    def __init__(self, total: int, stream: Any = None) -> None:
        self.total = total
        self.finished = 0
        self.failed = 0
        self.start = time.perf_counter()
        self.stream = stream or sys.stdout

    def _elapsed(self) -> str:
        s = int(time.perf_counter() - self.start)
        return f"{s // 60}:{s % 60:02d}"

    def say(self, text: str) -> None:
        print(f"[bench {self._elapsed()}] {text}", file=self.stream, flush=True)

    def started(self, job: Job, running: Sequence[Job], waiting: int) -> None:
        self.say(f"start  {job.label}  ({self.finished}/{self.total} done, {len(running)} running, {waiting} waiting)")

    def ended(self, job: Job, result: dict[str, Any], detail: str = "") -> None:
        self.finished += 1
        if result["ok"]:
            self.say(f"done   {job.label} in {result['wall_s']:.0f} s{detail}  [{self.finished}/{self.total}]")
        else:
            self.failed += 1
            self.say(f"FAILED {job.label} after {result['wall_s']:.0f} s: {result['error']}  [{self.finished}/{self.total}]")


def run_suite(
    suite: Suite,
    jobs: int = 1,
    threads: int | None = None,
    verbose: bool = False,
    dry_run: bool = False,
    command: str = "",
    stream: Any = None,
) -> RunSummary:
    """Run what the suite still lacks (see the module docstring); returns what happened."""
    out = stream or sys.stdout
    work = plan(suite)
    threads = threads or max(1, (os.cpu_count() or 1) // max(1, jobs))
    n_stages = sum(j.kind == "stage" for j in work.jobs)
    n_cells = len(work.jobs) - n_stages
    seeds = f" x {len(suite.seeds)} seeds" if suite.seeded else ""
    print(f"[bench] suite {suite.name}: {len(suite.models)} models x {len(suite.tasks)} tasks{seeds}; "
          f"{len(work.done)} cells finished earlier, {len(work.skipped)} without their data or model on disk, "
          f"to run: {n_stages} pretraining stages and {n_cells} cell runs "
          f"({jobs} job{'s' if jobs > 1 else ''} x {threads} thread{'s' if threads > 1 else ''})", file=out, flush=True)  # fmt: skip
    for (m, t, seed), why in work.skipped.items():
        print(f"[bench] skip {m} x {t}{f' (seed {seed})' if suite.seeded else ''}: {why}", file=out)
    summary = RunSummary(skipped_done=len(work.done), skipped_data=len(work.skipped))
    summary.entries += [{"kind": "cell", "model": m, "task": t, "seed": seed, "key": work.keys[(m, t, seed)],
                         "status": "skipped", "error": why} for (m, t, seed), why in work.skipped.items()]  # fmt: skip
    if dry_run:
        for job in work.jobs:
            print(f"[bench] would run {job.label}:", file=out)
            if job.filter:
                print("    flava-zoo filter " + " ".join(job.filter), file=out)
            for argv in job.commands:
                print("    flava-zoo " + " ".join(argv), file=out)
        return summary
    if not work.jobs:
        return summary
    started_at, start = _now(), time.perf_counter()
    env = {"machine": machine(), **git_state(Path(suite.path).parent if suite.path else None)}
    progress = Progress(len(work.jobs), out)
    interrupted = False
    log = _RunLog(runs_log_path(suite.results), {
        "suite": suite.name, "command": command, "started": started_at, "jobs": jobs, "threads": threads, **env,
    })  # fmt: skip
    summary.log = log
    log.update(summary, start, finished=False)
    executor: Any = _executor(jobs)
    pending = list(work.jobs)
    running: dict[cf.Future, Job] = {}
    stack = contextlib.ExitStack()
    _TERMINATED.clear()
    stack.enter_context(_terminate_as_interrupt())
    status: dict[str, str] = {}
    retried: set[str] = set()
    try:
        while pending or running:
            for job in list(pending):
                if len(running) >= max(1, jobs):
                    break
                failed_dep = next((d for d in job.deps if status.get(d) == "failed"), None)
                if failed_dep is not None:
                    pending.remove(job)
                    result = {"ok": False, "error": "its model's pretraining failed", "wall_s": 0.0, "cpu_s": 0.0}
                    _finish(suite, job, result, status, summary, progress)
                    continue
                if all(status.get(d) == "ok" for d in job.deps):
                    pending.remove(job)
                    progress.started(job, list(running.values()), len(pending))
                    try:
                        future = executor.submit(execute, job.payload(threads, verbose))
                    except BrokenProcessPool:
                        executor = _executor(jobs, executor)
                        future = executor.submit(execute, job.payload(threads, verbose))
                    running[future] = job
            if not running:
                continue
            finished, _ = cf.wait(list(running), return_when=cf.FIRST_COMPLETED)
            broken = False
            for future in finished:
                job = running.pop(future)
                try:
                    result = future.result()
                    if _TERMINATED.is_set():
                        raise KeyboardInterrupt("SIGTERM")
                except KeyboardInterrupt:
                    raise
                except BrokenProcessPool:
                    # a worker died (killed from outside, or out of memory): the pool is gone
                    broken = True
                    if job.key not in retried:
                        retried.add(job.key)
                        progress.say(f"worker process died while running {job.label}: it will run again")
                        pending.insert(0, job)
                        continue
                    result = {"ok": False, "error": "its worker process died twice (killed, or out of memory?)",
                              "wall_s": 0.0, "cpu_s": 0.0}  # fmt: skip
                except BaseException as e:  # noqa: BLE001 - a crashed job fails alone
                    result = {"ok": False, "error": f"{type(e).__name__}: {e}", "wall_s": 0.0, "cpu_s": 0.0}
                _finish(suite, job, result, status, summary, progress)
            if broken:
                for future, job in list(running.items()):  # the rest of the broken pool's jobs
                    future.cancel()
                    if job.key not in retried:
                        retried.add(job.key)
                        pending.insert(0, job)
                running.clear()
                executor = _executor(jobs, executor)
    except KeyboardInterrupt:
        interrupted = True
        progress.say("interrupted: finished cells are kept; run again to resume")
        raise
    finally:
        stack.close()
        if interrupted:
            _stop_workers(executor)
        executor.shutdown(wait=not interrupted, cancel_futures=True)
        log.update(summary, start, finished=not interrupted)
    progress.say(f"finished: {summary.ran} ran, {summary.failed} failed, in {summary.wall_s / 60:.1f} min")
    return summary


_TERMINATED = threading.Event()
"""Set by SIGTERM during :func:`run_suite` (checked after each job and each command)."""


def terminated() -> bool:
    """Whether the last :func:`run_suite` was stopped by SIGTERM (exit status 143, not 130)."""
    return _TERMINATED.is_set()


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, a scheduler's time limit) stops a run as Ctrl-C does: finished cells
    kept, the log closed, the worker processes stopped (else they would train on, orphaned).
    Only in the main thread, where Python delivers signals; the old handler comes back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        _TERMINATED.set()  # for the in-process path, where Lightning catches the interrupt
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _stop_workers(executor: Any) -> None:
    """Terminate a process pool's workers: ``shutdown(cancel_futures=True)`` cancels the jobs
    not started but lets running ones go on. ``ProcessPoolExecutor`` has no public way to stop
    them before Python 3.14 (``terminate_workers``), hence its process table here."""
    stop = getattr(executor, "terminate_workers", None)
    if callable(stop):
        stop()
        return
    processes = list((getattr(executor, "_processes", None) or {}).values())
    for process in processes:
        with contextlib.suppress(OSError, AttributeError):
            process.terminate()
    deadline = time.monotonic() + 10  # Lightning stops a fit at the next batch; then no longer
    for process in processes:
        with contextlib.suppress(OSError, AttributeError, ValueError):
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()


def _finish(suite: Suite, job: Job, result: dict[str, Any], status: dict[str, str], summary: RunSummary,
            progress: Progress) -> None:  # fmt: skip
    """Record a finished job: adopt a cell's records into the suite's results file."""
    detail = ""
    if result["ok"] and job.kind == "cell":
        try:
            detail = _adopt(suite, job)
        except (OSError, ValueError) as e:
            result = {**result, "ok": False, "error": str(e)}
    status[job.key] = "ok" if result["ok"] else "failed"
    summary.ran += 1
    summary.failed += not result["ok"]
    entry = {"kind": job.kind, "model": job.model, "key": job.key, "status": status[job.key],
             "wall_s": round(result["wall_s"], 1), "cpu_s": round(result["cpu_s"], 1), "error": result["error"]}  # fmt: skip
    entry.update({"tasks": job.tasks} if job.kind == "cell" else {"stage": job.stage})
    if job.seed is not None:
        entry["seed"] = job.seed
    summary.entries.append(entry)
    if result["ok"]:
        _record_cost(suite, job, result, summary.log.header.get("commit") if summary.log is not None else None)
    if summary.log is not None:
        summary.log.update(summary)
    progress.ended(job, result, detail)


def _record_cost(suite: Suite, job: Job, result: dict[str, Any], commit: str | None) -> None:
    """Append the job's cost line to :func:`cost_path` (see the module docstring)."""
    wall = float(result["wall_s"])
    line = {"suite": suite.name, "kind": job.kind, "key": job.key, "model": job.model, "seed": job.seed,
            "stage": job.stage, "tasks": job.tasks, "wall_s": round(wall, 3), "samples": job.samples,
            "samples_per_s": round(job.samples / wall, 3) if job.samples and wall > 0 else None,
            "parameters": result.get("parameters"), "peak_memory_mib": result.get("peak_memory_mib"),
            "memory": result.get("memory"), "commit": commit,
            "timestamp": _now()}  # fmt: skip
    path = cost_path(suite.results)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


def _adopt(suite: Suite, job: Job) -> str:
    """Copy a cell's records into the results file under the suite's names and the cell key,
    once per task the cell stands for, with the seed in each record's ``lineage["seed"]``."""
    assert job.model is not None and job.tasks
    path = job.folder / (PROBE_RESULTS if job.probe else "records.jsonl")
    if not path.is_file():
        raise ValueError(f"{job.label}: the cell wrote no results records ({path})")
    raw = read_results(path)
    shown = []
    for name in job.tasks:
        task = suite.task(name)
        records = adopted(raw, job.model, name, job.key, job.seed)
        append_results(suite.results, records)
        headline = [r for r in records if (r.split, r.metric) == (task.split, task.metric)]
        if not headline:
            have = sorted({f"{r.split}/{r.metric}" for r in records if not r.metric.startswith("chance/")})
            shown = ", ".join(have[:8]) + (f" and {len(have) - 8} more" if len(have) > 8 else "")
            why = " (a probe leaves out a metric it cannot define, e.g. a share when the score is at chance)" if job.probe else ""
            raise ValueError(f"{job.label}: no record of {name}'s headline metric {task.split}/{task.metric}{why}; "
                             f"the cell recorded {shown}")  # fmt: skip
        shown.append(f"{task.metric} {headline[-1].value * task.scale:.1f}")
    return ": " + ", ".join(shown)


def adopted(records: Sequence[ResultRecord], model: str, task: str, key: str,
            seed: int | None = None) -> list[ResultRecord]:  # fmt: skip
    """``records`` renamed to a suite's model and task, with the cell's key (and the seed in
    ``lineage["seed"]``, when seeded)."""
    extra = {} if seed is None else {"seed": seed}
    return [dataclasses.replace(r, model=model, task=task, config_hash=key, lineage={**r.lineage, **extra})
            for r in records]  # fmt: skip
