"""Keep non-finite values out of the weights, the optimizer state and the checkpoints.

One implementation for every training module: :class:`~flava_zoo.training.base.FlavaTask`,
the base of :class:`FlavaPretrainModule` and of every downstream module, calls
:func:`nonfinite_guard` in the two optimiser hooks, and a module that trains in one more::

    def training_step(self, batch, batch_idx):
        loss = ...
        nonfinite_guard(self).observe_loss(loss)        # no device sync here
        return loss

    def on_before_optimizer_step(self, optimizer):      # after backward, before clipping
        nonfinite_guard(self).before_optimizer_step(self, optimizer)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        nonfinite_guard(self).after_optimizer_step(self, optimizer)

Before each optimizer step the loss (every micro-batch of an accumulated step) and every
gradient are checked; under DDP the decision is all-reduced, so every rank does the same.
A bad update is **skipped**: the gradients are dropped, so AdamW leaves the weights and
its state untouched (the learning-rate schedule and ``global_step`` advance as for any
step), and ``train/skipped_steps`` counts it. More than ``max_skipped_steps`` consecutive
skips stop the run with :class:`FloatingPointError` before anything is applied. After the
step the updated weights and their optimizer state are checked too (a finite gradient can
still overflow ``exp_avg_sq`` or an update); a non-finite one stops the run before the
checkpoint callbacks run, so every checkpoint the run writes is finite.

The advice printed on a stop is ``--ckpt_path last`` with a lower
``--model.init_args.lr``: a resumed run applies optimiser settings given anew to the
restored optimizer and schedule (:meth:`~flava_zoo.training.base.FlavaTask.on_train_start`),
so the lower rate takes effect. Under a ``16-mixed`` gradient scaler non-finite gradients are the
scaler's business (it skips the step and lowers its scale); only a non-finite loss counts.
In manual optimisation ``on_before_optimizer_step`` still guards every ``opt.step()``;
the post-step check needs the ``optimizer_step`` override (automatic optimisation).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["DEFAULT_MAX_SKIPPED_STEPS", "NonFiniteGuard", "nonfinite_guard"]

DEFAULT_MAX_SKIPPED_STEPS = 10
"""Consecutive skipped updates tolerated before the run stops."""

RESUME_ADVICE = (
    "resume with --ckpt_path last and a lower --model.init_args.lr (the resumed run uses the "
    "new rate); if its first updates are skipped again, the weights were already too far off "
    "when that checkpoint was written: start again without --ckpt_path at a lower rate"
)


def _unwrap(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer behind a Lightning ``LightningOptimizer``."""
    return getattr(optimizer, "optimizer", optimizer)


def _all_finite(tensors: list[Tensor]) -> list[bool]:
    """Per tensor: all its values finite (one device sync for the lot).

    One fused ``torch._foreach_norm`` over all tensors instead of an ``isfinite().all()`` per
    tensor (two small ops each, some 800 per step of flava-tiny: 9% of its multimodal step;
    the fused norms cost about a seventh of that). A norm is finite exactly when every value
    is, except that finite values near the dtype's maximum can overflow it: such a tensor is
    checked again value by value, so the answer stays exact.
    """
    if not tensors:
        return []
    norms = torch.stack([n.float() for n in torch._foreach_norm(tensors)]).isfinite().tolist()
    return [ok or bool(torch.isfinite(t).all()) for ok, t in zip(norms, tensors)]


def _names(module: torch.nn.Module) -> dict[int, str]:
    return {id(p): n for n, p in module.named_parameters()}


def _shown(names: list[str], limit: int = 3) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


class NonFiniteGuard:
    """Per-module state of the non-finite check (see the module docstring).

    Args:
        max_skipped_steps: consecutive skipped updates tolerated; one more stops the run
            (``0``: stop at the first non-finite loss or gradient).
    """

    def __init__(self, max_skipped_steps: int = DEFAULT_MAX_SKIPPED_STEPS) -> None:
        if max_skipped_steps < 0:
            raise ValueError(f"max_skipped_steps must be non-negative, got {max_skipped_steps}")
        self.max_skipped_steps = int(max_skipped_steps)
        self.skipped_steps = 0
        """Updates skipped by this process so far."""
        self.consecutive = 0
        self.first_bad_step: int | None = None
        self._loss_ok: Tensor | None = None

    def observe_loss(self, loss: Tensor) -> None:
        """Remember whether this micro-batch's loss is finite (checked at the optimizer step)."""
        ok = torch.isfinite(loss.detach()).all()
        self._loss_ok = ok if self._loss_ok is None else self._loss_ok & ok

    def before_optimizer_step(self, module: Any, optimizer: Any) -> bool:
        """Check the loss and the gradients; drop the gradients of a bad update (the
        optimizer then skips every parameter) or stop the run. Returns whether the update
        goes ahead."""
        trainer = module.trainer
        optimizer = _unwrap(optimizer)
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        loss_ok = True if self._loss_ok is None else bool(self._loss_ok)
        self._loss_ok = None
        scaler = getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
        grads_ok = _all_finite([p.grad for p in params]) if scaler is None else []
        local_ok = loss_ok and all(grads_ok)
        ok = trainer.strategy.reduce_boolean_decision(local_ok, all=True)
        if ok:
            self.consecutive, self.first_bad_step = 0, None
            module.log("train/skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False)
            return True
        step = trainer.global_step
        optimizer.zero_grad(set_to_none=True)  # AdamW skips parameters without gradients
        self.skipped_steps += 1
        self.consecutive += 1
        if self.first_bad_step is None:
            self.first_bad_step = step
        module.log("train/skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False)
        if not loss_ok:
            what = "training loss"
        elif not local_ok:
            names = _names(module)
            bad = [names.get(id(p), "?") for p, fine in zip(params, grads_ok) if not fine]
            what = f"gradients (the loss was finite; {len(bad)} of {len(params)} tensors: {_shown(bad)})"
        else:
            what = "loss or gradients on another process"
        if self.consecutive > self.max_skipped_steps:
            streak = (
                f"{self.consecutive} consecutive updates skipped since step {self.first_bad_step}, "
                f"more than max_skipped_steps={self.max_skipped_steps}; the weights are those of step "
                f"{self.first_bad_step}"
            )
            raise FloatingPointError(
                f"non-finite {what} at step {step} ({streak}); the run stops before applying it, so the "
                f"weights, the optimizer state and every checkpoint it wrote are finite: {RESUME_ADVICE}"
            )
        from lightning.pytorch.utilities import rank_zero_warn

        rank_zero_warn(
            f"non-finite {what} at step {step}: update skipped ({self.consecutive} in a row, at most "
            f"{self.max_skipped_steps}; {self.skipped_steps} in this run)"
        )
        return False

    def after_optimizer_step(self, module: Any, optimizer: Any) -> None:
        """Stop the run, before any checkpoint of this step is written, when the update made
        a weight or its optimizer state non-finite (the loss and gradients were finite)."""
        optimizer = _unwrap(optimizer)
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        tensors, owners = [], []
        for p in params:
            tensors.append(p.detach())
            owners.append((p, "weight"))
            for key, value in optimizer.state.get(p, {}).items():
                if torch.is_tensor(value) and value.is_floating_point():
                    tensors.append(value)
                    owners.append((p, key))
        flags = _all_finite(tensors)
        local_ok = all(flags)
        if module.trainer.strategy.reduce_boolean_decision(local_ok, all=True):
            return
        names = _names(module)
        bad = [f"{names.get(id(p), '?')} ({kind})" for (p, kind), fine in zip(owners, flags) if not fine]
        where = f"{len(bad)} tensors: {_shown(bad)}" if bad else "on another process"
        raise FloatingPointError(
            f"the update of step {module.trainer.global_step} made weights or optimizer state non-finite "
            f"({where}) although the loss and gradients were finite; the run stops before saving it, so "
            f"every checkpoint it wrote is finite: {RESUME_ADVICE}"
        )


def nonfinite_guard(module: Any) -> NonFiniteGuard:
    """The module's :class:`NonFiniteGuard`, made on first use with the module's
    ``max_skipped_steps`` hyperparameter (default :data:`DEFAULT_MAX_SKIPPED_STEPS`)."""
    guard = module.__dict__.get("_nonfinite_guard")
    if guard is None:
        hparams = getattr(module, "hparams", {})
        limit = hparams.get("max_skipped_steps") if hasattr(hparams, "get") else None
        guard = NonFiniteGuard(DEFAULT_MAX_SKIPPED_STEPS if limit is None else limit)
        module.__dict__["_nonfinite_guard"] = guard
    return guard
