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
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..evaluation.results import ResultRecord, append_results, read_results
from .environment import git_state, machine
from .suite import ModelSpec, StageSpec, Suite, TaskSpec, cell_key, recipe_value

__all__ = ["Job", "RunSummary", "plan", "run_suite", "runs_log_path"]


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

    def payload(self, threads: int, verbose: bool) -> dict[str, Any]:
        return {"commands": self.commands, "folder": str(self.folder), "threads": threads,
                "verbose": verbose, "marker": self.kind == "stage"}  # fmt: skip


@dataclasses.dataclass
class Plan:
    """What a run will do: jobs in start order, and the cells it will not run."""

    jobs: list[Job]
    done: list[tuple[str, str]]
    skipped: dict[tuple[str, str], str]
    keys: dict[tuple[str, str], str]


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
    return suite.work_dir / "pretrain" / f"{stage.stage}-{stage.key}"


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
        "fit", "--config", str(stage.recipe),
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
    return [args + list(stage.args)]


def cell_folder(suite: Suite, model: ModelSpec, task: TaskSpec) -> Path:
    return suite.work_dir / "cells" / model.name / task.name


def cell_commands(suite: Suite, model: ModelSpec, task: TaskSpec) -> list[list[str]]:
    """``fit`` then ``test`` (from the fine-tuned ``last`` checkpoint), or ``test`` alone."""
    assert task.recipe is not None
    folder = cell_folder(suite, model, task).resolve()
    common = [
        "--config", str(task.recipe),
        f"--model.init_args.model={model_reference(suite, model)}",
        f"--model.init_args.results={folder / 'records.jsonl'}",
        f"--trainer.default_root_dir={folder}",
        "--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
    ]  # fmt: skip
    if model.overrides:
        common.append(f"--model.init_args.model_overrides={json.dumps(model.overrides, sort_keys=True)}")
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
    """``(model, task, key)`` of the cells whose headline record is in the results file."""
    if not suite.results.is_file():
        return set()
    headline = {t.name: (t.split, t.metric) for t in suite.tasks}
    return {
        (r.model, r.task, r.config_hash)
        for r in read_results(suite.results)
        if headline.get(r.task) == (r.split, r.metric)
    }


def plan(suite: Suite) -> Plan:
    """The jobs still to run: unfinished cells whose data is on disk, and the pretraining
    stages they need that have not finished. Stages come first, then cells model by model."""
    done = done_cells(suite)
    keys = {(m.name, t.name): cell_key(m, t) for m in suite.models for t in suite.tasks}
    stage_jobs: dict[str, Job] = {}
    cell_jobs: dict[tuple[str, str], Job] = {}
    finished: list[tuple[str, str]] = []
    skipped: dict[tuple[str, str], str] = {}
    for model in suite.models:
        for task in suite.tasks:
            key = keys[(model.name, task.name)]
            if (model.name, task.name, key) in done:
                finished.append((model.name, task.name))
                continue
            missing = task.missing_data()
            if missing:
                skipped[(model.name, task.name)] = f"data not on disk: {missing[0]}"
                continue
            missing = model.missing_data()
            if missing:
                skipped[(model.name, task.name)] = f"model not on disk: {missing[0]}"
                continue
            deps = []
            if model.pretrain is not None:
                for stage in model.pretrain.stages:
                    if stage.key not in stage_jobs and not stage_done(suite, stage):
                        stage_jobs[stage.key] = Job(
                            kind="stage", key=stage.key, label=f"pretrain {model.name}: {stage.label}",
                            folder=stage_folder(suite, stage), commands=stage_commands(suite, stage),
                            deps=[stage.previous.key] if stage.previous is not None else [],
                            model=model.name, stage=stage.stage,
                        )  # fmt: skip
                    if stage.key in stage_jobs:
                        deps = [stage.key]
            same = cell_jobs.get((model.name, task.key))
            if same is not None:  # another task with the same recipe and overrides: one run
                same.tasks.append(task.name)
                same.label += f" + {task.name}"
                continue
            cell_jobs[(model.name, task.key)] = Job(
                kind="cell", key=key, label=f"{model.name} x {task.name}", folder=cell_folder(suite, model, task),
                commands=cell_commands(suite, model, task), deps=deps, model=model.name, tasks=[task.name],
            )  # fmt: skip
    stages = list(stage_jobs.values())
    for job in stages:
        job.deps = [d for d in job.deps if d in stage_jobs]
    return Plan(stages + list(cell_jobs.values()), finished, skipped, keys)


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
            for argv in payload["commands"]:
                print("+ flava-zoo " + " ".join(argv), flush=True)
                code = run_lightning(list(argv))
                if code:
                    error = f"flava-zoo {argv[0]} exited with status {code}"
                    break
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
    if not error and payload["marker"]:
        (folder / "done.json").write_text(json.dumps({"finished": _now(), "commands": payload["commands"]}, indent=1))
    return {"ok": not error, "error": error[:500], "wall_s": time.perf_counter() - start,
            "cpu_s": time.process_time() - cpu}  # fmt: skip


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
    print(f"[bench] suite {suite.name}: {len(suite.models)} models x {len(suite.tasks)} tasks; "
          f"{len(work.done)} cells finished earlier, {len(work.skipped)} without their data or model on disk, "
          f"to run: {n_stages} pretraining stages and {n_cells} cell runs "
          f"({jobs} job{'s' if jobs > 1 else ''} x {threads} thread{'s' if threads > 1 else ''})", file=out, flush=True)  # fmt: skip
    for (m, t), why in work.skipped.items():
        print(f"[bench] skip {m} x {t}: {why}", file=out)
    summary = RunSummary(skipped_done=len(work.done), skipped_data=len(work.skipped))
    summary.entries += [{"kind": "cell", "model": m, "task": t, "key": work.keys[(m, t)], "status": "skipped",
                         "error": why} for (m, t), why in work.skipped.items()]  # fmt: skip
    if dry_run:
        for job in work.jobs:
            print(f"[bench] would run {job.label}:", file=out)
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
        executor.shutdown(wait=not interrupted, cancel_futures=True)
        log.update(summary, start, finished=not interrupted)
    progress.say(f"finished: {summary.ran} ran, {summary.failed} failed, in {summary.wall_s / 60:.1f} min")
    return summary


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
    summary.entries.append(entry)
    if summary.log is not None:
        summary.log.update(summary)
    progress.ended(job, result, detail)


def _adopt(suite: Suite, job: Job) -> str:
    """Copy a cell's records into the results file under the suite's names and the cell key,
    once per task the cell stands for."""
    assert job.model is not None and job.tasks
    path = job.folder / "records.jsonl"
    if not path.is_file():
        raise ValueError(f"{job.label}: the cell wrote no results records ({path})")
    raw = read_results(path)
    shown = []
    for name in job.tasks:
        task = suite.task(name)
        records = adopted(raw, job.model, name, job.key)
        append_results(suite.results, records)
        headline = [r for r in records if (r.split, r.metric) == (task.split, task.metric)]
        if not headline:
            have = sorted({f"{r.split}/{r.metric}" for r in records})
            raise ValueError(f"{job.label}: no record of {name}'s headline metric {task.split}/{task.metric}; "
                             f"the cell recorded {have}")  # fmt: skip
        shown.append(f"{task.metric} {headline[-1].value * task.scale:.1f}")
    return ": " + ", ".join(shown)


def adopted(records: Sequence[ResultRecord], model: str, task: str, key: str) -> list[ResultRecord]:
    """``records`` renamed to a suite's model and task, with the cell's key."""
    return [dataclasses.replace(r, model=model, task=task, config_hash=key) for r in records]
