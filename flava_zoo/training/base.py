"""The one LightningModule base of flava-zoo: :class:`FlavaTask` owns the optimiser and the
learning-rate schedule of every module (pretraining and every downstream task), described by
one dataclass, :class:`OptimizerConfig`.

A module keeps its optimiser settings as flat init arguments (``lr``, ``weight_decay``,
``betas``, ``warmup_steps``, ``min_lr_ratio``, and where it has them ``decay_steps``,
``lr_multipliers``, ``layer_decay``, ``backbone_lr_multiplier``), so recipes set them under
``model.init_args`` and LightningCLI lists them; :meth:`FlavaTask.optimizer_config` reads them
into an :class:`OptimizerConfig`, and a module says only which parameters get which rate
multiplier (:meth:`FlavaTask.lr_multipliers`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import lightning as L
import torch

from .guard import nonfinite_guard
from .optim import param_groups, warmup_cosine

__all__ = ["OPTIMIZER_HPARAMS", "FlavaTask", "OptimizerConfig"]


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW and its warm-up + cosine schedule (:func:`~flava_zoo.training.optim.warmup_cosine`)."""

    lr: float = 1e-4
    """Peak learning rate (of parameters with multiplier 1)."""
    weight_decay: float = 0.01
    """AdamW weight decay; never on norms, biases, embeddings and special tokens."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    warmup_steps: int = 50
    """Linear warm-up from 0 over this many steps; a cosine decay follows."""
    min_lr_ratio: float = 0.0
    """The cosine ends at ``lr * min_lr_ratio``."""
    decay_steps: int | None = None
    """Decay over only the last ``decay_steps`` steps, holding the peak rate until then."""
    lr_multipliers: Mapping[str, float] = field(default_factory=dict)
    """Parameter-name prefix -> learning-rate multiplier (per tower, layer decay); the
    longest matching prefix wins."""

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be non-negative, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be non-negative, got {self.warmup_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.decay_steps is not None and self.decay_steps < 0:
            raise ValueError(f"decay_steps must be non-negative, got {self.decay_steps}")


_SETTINGS = tuple(f.name for f in fields(OptimizerConfig) if f.name != "lr_multipliers")

OPTIMIZER_HPARAMS = ("lr", "lr_multipliers", "weight_decay", "betas", "warmup_steps", "min_lr_ratio",
                     "decay_steps", "layer_decay", "backbone_lr_multiplier")
"""Init arguments that shape the optimiser and its schedule (those a module has): given anew
on resume, they take effect (:meth:`FlavaTask.on_train_start`)."""


def _plain(value: Any) -> Any:
    """``value`` with tuples as lists and mappings as dicts, to compare saved and given hparams."""
    if isinstance(value, dict) or hasattr(value, "items"):
        return {k: _plain(v) for k, v in dict(value).items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class FlavaTask(L.LightningModule):
    """Base of every flava-zoo LightningModule: AdamW parameter groups, the warm-up + cosine
    schedule, optimiser settings given anew on resume, and the non-finite guard
    (:mod:`flava_zoo.training.guard`) around each optimiser step.

    Subclasses save their init arguments (``save_hyperparameters``), among them the
    optimiser settings (see the module docstring), and override :meth:`lr_multipliers` for
    per-part rates. A module that is never fitted sets :attr:`fit_refusal`.
    """

    fit_refusal: str | None = None
    """Why this module cannot be fitted (``flava-zoo fit`` is refused with it), or ``None``."""

    # ------------------------------------------------------------------ settings
    def lr_multipliers(self) -> dict[str, float]:
        """Parameter-name prefix -> learning-rate multiplier (names as in
        ``self.named_parameters()``); none by default."""
        return {}

    def optimizer_config(self) -> OptimizerConfig:
        """The optimiser settings, from this module's init arguments."""
        hp = self.hparams
        given = {name: hp[name] for name in _SETTINGS if name in hp}
        if "betas" in given:
            given["betas"] = tuple(given["betas"])
        return OptimizerConfig(**given, lr_multipliers=self.lr_multipliers())

    def _groups(self, config: OptimizerConfig) -> list[dict]:
        groups = param_groups(self, config.lr, config.weight_decay, config.lr_multipliers)
        for group in groups:
            group.pop("param_names")
        return groups

    def _total_steps(self) -> int:
        trainer = self._trainer
        total = trainer.estimated_stepping_batches if trainer is not None else 1000
        return int(total) if total != float("inf") else 100_000

    def configure_optimizers(self):
        """AdamW over the trainable parameters (no decay on norms, biases, embeddings; a rate
        per :meth:`lr_multipliers` prefix) and the warm-up + cosine schedule, stepped per step."""
        if self.fit_refusal:
            raise ValueError(self.fit_refusal)
        config = self.optimizer_config()
        optimizer = torch.optim.AdamW(self._groups(config), lr=config.lr, betas=config.betas)
        scheduler = warmup_cosine(
            optimizer, config.warmup_steps, self._total_steps(), config.min_lr_ratio, config.decay_steps
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -------------------------------------------------------------------- resume
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Remember the resumed checkpoint's optimiser settings (see :meth:`on_train_start`)."""
        saved = checkpoint.get("hyper_parameters") or {}
        self._resumed_hparams = {k: saved.get(k) for k in OPTIMIZER_HPARAMS if k in saved}

    def on_train_start(self) -> None:
        """On resume, make optimiser settings given anew take effect.

        Lightning restores the optimizer's ``param_groups`` (``lr``, ``initial_lr``,
        ``weight_decay``, ``betas``) and the scheduler's ``base_lrs`` from the checkpoint, so a
        run resumed with ``--model.init_args.lr=X`` would silently train at the old rate while
        its new checkpoints record X. When any of :data:`OPTIMIZER_HPARAMS` differs from the
        checkpoint's, the groups and the schedule are rebuilt from this run's values at the
        restored step (the schedule's shape always follows this run's ``warmup_steps``,
        ``decay_steps``, ``min_lr_ratio`` and length), and a warning names what changed.
        """
        saved = getattr(self, "_resumed_hparams", None)
        self._resumed_hparams = None
        if not saved:
            return
        changed = {
            k: (saved[k], self.hparams.get(k)) for k in saved if _plain(saved[k]) != _plain(self.hparams.get(k))
        }
        if not changed:
            return
        self._apply_optimizer_config()
        from lightning.pytorch.utilities import rank_zero_warn

        what = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items())
        rank_zero_warn(
            f"resumed at step {self.global_step} with new optimizer hyperparameters ({what}): "
            "the optimizer and the learning-rate schedule now use them"
        )

    def _apply_optimizer_config(self) -> None:
        """Set the restored optimizer's groups and scheduler to this run's settings."""
        config = self.optimizer_config()
        optimizer = self.optimizers(use_pl_optimizer=False)
        fresh = self._groups(config)
        if len(fresh) != len(optimizer.param_groups):
            raise ValueError(
                f"cannot resume: the learning-rate multipliers now give {len(fresh)} parameter "
                f"groups, the checkpoint's optimizer has {len(optimizer.param_groups)}"
            )
        for group, new in zip(optimizer.param_groups, fresh):
            group.update(initial_lr=new["lr"], weight_decay=new["weight_decay"], betas=config.betas,
                         lr_multiplier=new["lr_multiplier"])  # fmt: skip
        schedulers = self.lr_schedulers()
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
            if scheduler is None:
                continue
            scheduler.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
            lrs = [base * factor(scheduler.last_epoch) for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
            for group, lr in zip(optimizer.param_groups, lrs):
                group["lr"] = lr
            scheduler._last_lr = lrs

    # -------------------------------------------------------------------- guard
    def on_before_optimizer_step(self, optimizer) -> None:
        """Skip an update whose loss or gradients are not finite, or stop the run after
        ``max_skipped_steps`` in a row (:mod:`flava_zoo.training.guard`; a module that trains
        reports its loss with ``nonfinite_guard(self).observe_loss(loss)``)."""
        nonfinite_guard(self).before_optimizer_step(self, optimizer)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        """Lightning's step, then stop before any checkpoint if it made a weight or its
        optimizer state non-finite."""
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        nonfinite_guard(self).after_optimizer_step(self, optimizer)
