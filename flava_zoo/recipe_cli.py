"""LightningCLI for flava-zoo recipes (``flava-zoo fit|validate|test|predict --config R``).

What it adds to Lightning's own CLI, for ``validate``, ``test`` and ``predict``:

- ``--ckpt_path`` (``last``, ``best`` or a file) must resolve to a checkpoint file; when it
  resolves to none, the command stops with an error naming where it looked (Lightning
  itself warns and evaluates the untrained model). ``fit`` keeps Lightning's behaviour, so a
  requeued run can always pass ``--ckpt_path last``.
- A checkpoint written by a flava-zoo downstream module rebuilds its module from what it
  holds (the model config, heads, tokenizer, transform settings and hyperparameters), not
  from the recipe's ``model`` section, so a model fine-tuned from an export of another shape
  is evaluated as it was trained and nothing the checkpoint holds is downloaded. Only the
  module's ``evaluation_args`` (results and prediction paths) keep the recipe's values.

For every command:

- ``--config`` takes a recipe file or a shipped recipe's name (``shapes_image``,
  ``pretrain/shapes_image``; ``flava-zoo recipes`` lists them; :mod:`flava_zoo.shipped`).
- ``fit`` checks ``init_from`` (and ``init_image_from`` / ``init_text_from``) before anything is
  built: a missing path that a shipped recipe exports to stops with the recipe to run first.
- With ``--trainer.logger=false`` the recipe's ``LearningRateMonitor`` is left out (it has no
  logger to write to, and Lightning would refuse to start).

:func:`run_recipe` / :func:`run_lightning` are the one way a recipe runs: the ``flava-zoo``
command line and the benchmark runner both call them, and neither imports the other.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LightningCLI

__all__ = ["EVALUATION_COMMANDS", "CommandError", "FlavaCLI", "find_checkpoint", "resolve_configs", "run_lightning",
           "run_recipe"]

EVALUATION_COMMANDS = ("validate", "test", "predict")


class CommandError(Exception):
    """A command-line mistake reported as one line and a non-zero exit, not a traceback."""


def _get(obj: Any, key: str, default: Any = None) -> Any:
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _checkpoint_dirs(trainer_cfg: Any) -> list[Path]:
    """The folders the recipe's ``ModelCheckpoint`` callbacks write to."""
    dirs = []
    for cb in _get(trainer_cfg, "callbacks") or []:
        if str(_get(cb, "class_path", "")).endswith("ModelCheckpoint"):
            dirpath = _get(_get(cb, "init_args"), "dirpath")
            if dirpath:
                dirs.append(Path(str(dirpath)))
    return dirs


def _last_checkpoint(trainer_cfg: Any) -> tuple[Path | None, str]:
    """The newest ``last*.ckpt`` where the recipe saves checkpoints, and where it looked."""
    dirs = _checkpoint_dirs(trainer_cfg)
    if dirs:
        candidates = [p for d in dirs for p in d.glob("last*.ckpt")]
        where = ", ".join(str(d.resolve()) for d in dirs)
    else:  # Lightning's default: <default_root_dir>/lightning_logs/version_N/checkpoints
        root = Path(str(_get(trainer_cfg, "default_root_dir") or "."))
        candidates = list(root.glob("**/checkpoints/last*.ckpt"))
        where = f"{root.resolve()}/**/checkpoints"
    candidates = [p for p in candidates if p.is_file()]
    if not candidates:
        return None, where
    return max(candidates, key=lambda p: p.stat().st_mtime), where


def find_checkpoint(ckpt_path: str, trainer_cfg: Any) -> Path:
    """The checkpoint file ``--ckpt_path`` names: ``last`` (the newest ``last*.ckpt`` in the
    recipe's checkpoint folder), ``best`` (the best model the last checkpoint's
    ``ModelCheckpoint`` recorded) or a path. Raises :class:`CommandError` naming where it
    looked when there is no such file."""
    if ckpt_path in ("last", "best"):
        last, where = _last_checkpoint(trainer_cfg)
        if last is None:
            raise CommandError(
                f"--ckpt_path {ckpt_path}: no last*.ckpt in {where}; run `flava-zoo fit` with this "
                "recipe first (its ModelCheckpoint needs save_last: true) or pass a checkpoint file"
            )
        if ckpt_path == "last":
            return last
        from .checkpoint import read_training_checkpoint

        states = read_training_checkpoint(last).get("callbacks") or {}
        monitored = [
            s for k, s in states.items() if "ModelCheckpoint" in str(k) and isinstance(s, dict) and s.get("monitor")
        ]
        if not monitored:
            raise CommandError(
                f"--ckpt_path best: the run that wrote {last} monitored no metric (its "
                "ModelCheckpoint has no monitor), so no checkpoint is the best; pass last or a file"
            )
        best = [Path(s["best_model_path"]) for s in monitored if s.get("best_model_path")]
        best = [p for p in best if p.is_file()]
        if not best:
            raise CommandError(
                f"--ckpt_path best: {last} records no best checkpoint that exists (the recipe's "
                "ModelCheckpoint needs a monitor); pass last or a checkpoint file"
            )
        return best[0]
    path = Path(ckpt_path)
    if path.is_dir():
        raise CommandError(
            f"--ckpt_path {ckpt_path} is a folder: --ckpt_path takes a Lightning checkpoint (.ckpt); "
            "to evaluate an exported folder pass --model.init_args.model=" + str(ckpt_path)
        )
    if not path.is_file():
        raise CommandError(f"--ckpt_path {ckpt_path}: no such file ({path.resolve()})")
    if path.suffix != ".ckpt":
        raise CommandError(
            f"--ckpt_path {ckpt_path} is not a Lightning checkpoint (.ckpt); to evaluate weights "
            "in an exported folder pass --model.init_args.model=<folder>"
        )
    return path


def _import(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


class FlavaCLI(LightningCLI):
    """LightningCLI that evaluates what was trained (see the module docstring)."""

    def _parse_ckpt_path(self) -> None:
        """Leave the parsed configuration as given. Lightning's version replaces the model's
        arguments with a checkpoint's hyperparameters when ``--ckpt_path`` is a file (not for
        ``last``): for ``fit`` that would silently drop a learning rate given on resume while
        the run records it; evaluation commands rebuild the module from the checkpoint in
        :meth:`before_instantiate_classes`."""

    def before_instantiate_classes(self) -> None:
        """Refuse ``--optimizer`` / ``--lr_scheduler`` for a module that builds its own; resolve
        ``--ckpt_path`` of an evaluation command and rebuild the module from it."""
        sub = self.subcommand
        cfg = self.config[sub]
        self._refuse_optimizer_options(cfg)
        self._drop_lr_monitor_without_logger(cfg)
        if sub == "fit":
            self._check_init_from(cfg)
        if sub not in EVALUATION_COMMANDS:
            return
        ckpt_path = cfg.get("ckpt_path")
        if not ckpt_path or ckpt_path == "hpc":
            return
        path = find_checkpoint(str(ckpt_path), cfg.get("trainer"))
        cfg["ckpt_path"] = str(path)
        self._rebuild_from(path, cfg)

    @staticmethod
    def _refuse_optimizer_options(cfg: Any) -> None:
        """LightningCLI's ``--optimizer`` would replace a module's own optimiser (AdamW parameter
        groups without decay on norms and biases, per-tower rates, layer decay) and its
        schedule, with only a warning; flava-zoo's modules refuse it and say what to set."""
        import lightning as L

        given = [key for key in ("optimizer", "lr_scheduler") if cfg.get(key) is not None]
        class_path = str(_get(cfg.get("model"), "class_path", "") or "")
        if not given or not class_path:
            return
        cls = _import(class_path)
        if getattr(cls, "configure_optimizers", None) is L.LightningModule.configure_optimizers:
            return
        raise CommandError(
            f"--{given[0]}: {cls.__name__} builds its own optimiser and schedule (AdamW parameter "
            "groups, per-tower learning rates, warm-up); set them with --model.init_args.lr, "
            "weight_decay, betas, warmup_steps and the like instead"
        )

    @staticmethod
    def _drop_lr_monitor_without_logger(cfg: Any) -> None:
        """``--trainer.logger=false`` asks for no logs: the recipe's ``LearningRateMonitor``
        (which Lightning refuses to run without a logger) is left out with it."""
        trainer = cfg.get("trainer")
        callbacks = _get(trainer, "callbacks")
        if trainer is None or _get(trainer, "logger") is not False or not callbacks:
            return
        kept = [cb for cb in callbacks if not str(_get(cb, "class_path", "")).endswith("LearningRateMonitor")]
        if len(kept) != len(callbacks):
            trainer["callbacks"] = kept

    @staticmethod
    def _check_init_from(cfg: Any) -> None:
        """A later stage's ``init_from`` that does not exist stops ``fit`` before anything is
        built, naming the shipped recipe that writes it when there is one."""
        from .shipped import recipe_exporting_to

        args = _get(cfg.get("model"), "init_args")
        for key in ("init_from", "init_image_from", "init_text_from"):
            value = _get(args, key)
            if not value or Path(str(value)).exists():
                continue
            writer = recipe_exporting_to(str(value))
            if writer is not None:
                raise CommandError(
                    f"--model.init_args.{key}: {value} does not exist: run "
                    f"`flava-zoo fit --config {writer.name}` first (it writes {writer.export_dir or writer.root_dir}) "
                    f"in this folder ({Path.cwd()}), or pass --model.init_args.{key}=<an export or a .ckpt>"
                )
            raise CommandError(
                f"--model.init_args.{key}: {value} does not exist (expected the exported folder or "
                f"Lightning .ckpt of an earlier stage; working directory {Path.cwd()})"
            )

    def _rebuild_from(self, path: Path, cfg: Any) -> None:
        from .checkpoint import CHECKPOINT_KEY, read_training_checkpoint

        try:
            ckpt = read_training_checkpoint(path)
        except ValueError as err:
            raise CommandError(str(err)) from None
        info = ckpt.get(CHECKPOINT_KEY)
        model_cfg = cfg.get("model")
        if not isinstance(info, dict):
            print(
                f"flava-zoo {self.subcommand}: {path} carries no flava-zoo model description; "
                "the model is built from the recipe",
                file=sys.stderr,
            )
            return
        saved_class = _import(info["module"])
        given = str(_get(model_cfg, "class_path", "") or "")
        if given and _import(given) is not saved_class:
            raise CommandError(
                f"{path} holds a {info['module']} checkpoint, but the recipe's model is {given}: "
                "use the recipe the checkpoint was trained with"
            )
        hparams = dict(ckpt.get("hyper_parameters") or {})
        for key in ("_instantiator", "_class_path"):
            hparams.pop(key, None)
        args = saved_class.init_args_from_checkpoint(str(path), hparams)
        given_args = _get(model_cfg, "init_args")
        for name in getattr(saved_class, "evaluation_args", ()):
            value = _get(given_args, name)
            if value is not None:
                args[name] = value
        update = {self.subcommand: {"model": {"class_path": info["module"], "init_args": args}}}
        self.config = self.parser.parse_object(update, self.config)
        lineage = info.get("lineage") or {}
        print(
            f"flava-zoo {self.subcommand}: the model is rebuilt from {path} (step "
            f"{lineage.get('step', '?')}, fine-tuned from {lineage.get('pretrained', '?')}); "
            "the recipe's model section is not used",
            file=sys.stderr,
        )


class SigtermCheckpoint(Callback):
    """Save ``last.ckpt`` when a run is stopped by SIGTERM (a preemption, a job limit).

    Lightning 2.6 turns SIGTERM into a ``SIGTERMException`` at the next batch boundary, a
    ``SystemExit`` without a code (so the process would exit 0 with nothing exported). In
    ``fit`` this callback then saves the whole training state where the recipe's
    ``ModelCheckpoint`` writes (``<dirpath>/last.ckpt``; without one,
    ``<default_root_dir>/checkpoints/last.ckpt``), so ``--ckpt_path last`` resumes it, and
    records the step and the file for :func:`run_lightning`'s message. A run that fails
    after a SIGTERM arrived (data-loader workers killed by the same signal) counts as stopped
    by it too.
    """

    def __init__(self) -> None:
        self.stopped_at: int | None = None
        self.saved: Path | None = None

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        """On a SIGTERM stop of ``fit``, save ``last.ckpt`` (replacing a ``save_last="link"`` link)."""
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if not (isinstance(exception, SIGTERMException) or trainer.received_sigterm):
            return
        self.stopped_at = int(trainer.global_step)
        if trainer.state.fn != "fit":
            return
        dirpath = getattr(trainer.checkpoint_callback, "dirpath", None)
        folder = Path(dirpath) if dirpath else Path(trainer.default_root_dir) / "checkpoints"
        path = folder / "last.ckpt"
        if trainer.is_global_zero and path.is_symlink():
            path.unlink()
        # data-loader workers stopped by the same signal must not interrupt the save (torch's
        # SIGCHLD handler raises in the main process when a worker dies)
        import signal
        import threading

        sigchld = getattr(signal, "SIGCHLD", None)
        quiet = sigchld is not None and threading.current_thread() is threading.main_thread()
        previous = signal.signal(sigchld, signal.SIG_DFL) if quiet else None
        try:
            trainer.save_checkpoint(path)
        finally:
            if quiet:
                signal.signal(sigchld, previous)
        self.saved = path


_NAME_LIKE = re.compile(r"^[A-Za-z0-9_./\\-]+$")


def resolve_configs(argv: Sequence[str]) -> list[str]:
    """``argv`` with each ``--config`` / ``-c`` value that is not a file replaced by the shipped
    recipe of that name (:func:`flava_zoo.shipped.find_recipe`). A value that is neither (and
    looks like a name or a path, not inline YAML) raises :class:`CommandError` saying what is
    shipped."""
    from .shipped import ShippedNotFound, find_recipe

    def resolve(value: str) -> str:
        if Path(value).is_file() or not _NAME_LIKE.match(value):
            return value
        try:
            return str(find_recipe(value))
        except ShippedNotFound as e:
            raise CommandError(f"--config {e}") from None

    out: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("--config", "-c") and i + 1 < len(args):
            out += [arg, resolve(args[i + 1])]
            i += 2
            continue
        if arg.startswith("--config="):
            out.append("--config=" + resolve(arg.partition("=")[2]))
        else:
            out.append(arg)
        i += 1
    return out


def run_recipe(subcommand: str, config: str | Path | None = None, overrides: Sequence[str] = ()) -> int:
    """Run one recipe: ``flava-zoo <subcommand> --config <config> <overrides...>`` in this
    process (``subcommand``: ``fit``, ``validate``, ``test`` or ``predict``; ``config``: a file
    or a shipped recipe's name). Returns the exit status (see :func:`run_lightning`)."""
    if subcommand not in ("fit", *EVALUATION_COMMANDS):
        raise ValueError(f"run_recipe: subcommand must be fit, validate, test or predict, got {subcommand!r}")
    argv = [subcommand, *(["--config", str(config)] if config is not None else []), *overrides]
    return run_lightning(argv)


def run_lightning(argv: list[str]) -> int:
    """Run :class:`FlavaCLI` on ``argv`` (``fit``, ``validate``, ``test``, ``predict`` ...),
    recipe names in ``--config`` resolved (:func:`resolve_configs`); a :class:`CommandError` is printed as one line and returns 1. A run stopped by SIGTERM
    returns 143 (128 + SIGTERM) with a message saying so; ``fit`` first saves ``last.ckpt``
    (:class:`SigtermCheckpoint`) and the message names it and how to resume."""
    import warnings

    import lightning as L
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    command = argv[0] if argv else "lightning"
    stop = SigtermCheckpoint()
    try:
        argv = resolve_configs(argv)
        with warnings.catch_warnings():
            # LightningCLI warns when given args while sys.argv holds some too, as it does
            # under the console script: here the args are that command line. (sys.argv itself
            # must stay as it is: Lightning's DDP launcher starts the other ranks from it.)
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
            FlavaCLI(
                L.LightningModule,
                L.LightningDataModule,
                subclass_mode_model=True,
                subclass_mode_data=True,
                args=argv,
                seed_everything_default=0,
                save_config_kwargs={"overwrite": True},
                trainer_defaults={"callbacks": [stop]},
            )
    except CommandError as err:
        print(f"flava-zoo {command}: {err}", file=sys.stderr)
        return 1
    except BaseException as err:
        if not isinstance(err, SIGTERMException) and stop.stopped_at is None:
            raise
        at = f" at step {stop.stopped_at}" if stop.stopped_at is not None else ""
        if stop.saved is not None:
            done = f"checkpoint saved to {stop.saved}; resume with --ckpt_path last"
        else:
            done = "nothing was saved"
        if not isinstance(err, SIGTERMException):
            done += f" (then {type(err).__name__}: {err})"
        print(f"flava-zoo {command}: stopped by SIGTERM{at}; {done}", file=sys.stderr)
        return 143
    return 0
