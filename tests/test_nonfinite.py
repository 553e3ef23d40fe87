"""A non-finite value never reaches the weights, the optimizer state or a checkpoint.

Faults are injected into real tiny runs of the shapes recipes through ``flava_zoo.cli.main``:
non-finite gradients with a finite loss, a NaN loss, a finite gradient whose square
overflows AdamW's ``exp_avg_sq``, and a learning rate so large that the gradients overflow.
A bad update is skipped (counted in ``train/skipped_steps``) or the run stops; every
checkpoint is finite and the printed advice (``--ckpt_path last`` with a lower rate) resumes.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
import torch

from flava_zoo.cli import main

pytestmark = pytest.mark.filterwarnings(
    "ignore:LightningCLI's args parameter:UserWarning", "ignore:non-finite:UserWarning"
)

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT / "recipes" / "pretrain" / "shapes_image.yaml"
VQA = ROOT / "recipes" / "finetune" / "shapes_vqa.yaml"
NAN = float("nan")


ONE_THREAD = True
"""One intra-op thread per process for this module's tests (tests/conftest.py)."""


def pretrain_args(tmp: Path, steps: int, *extra: str) -> list[str]:
    return [
        "fit", "--config", str(IMAGE),
        "--data.init_args.train_size=128", "--data.init_args.val_size=8", "--data.init_args.batch_size=8",
        f"--trainer.max_steps={steps}", "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", f"--trainer.default_root_dir={tmp}",
        f"--trainer.callbacks.init_args.dirpath={tmp}/checkpoints", "--trainer.callbacks.init_args.every_n_train_steps=1",
        "--model.init_args.export_dir=null", "--model.init_args.warmup_steps=1",
        "--trainer.logger=CSVLogger", f"--trainer.logger.save_dir={tmp}", "--trainer.logger.name=csv",
        "--trainer.log_every_n_steps=1", *extra,
    ]  # fmt: skip


def finite_checkpoint(path: Path) -> dict:
    """Load a checkpoint and assert every floating tensor in its weights and optimizer state is finite."""
    ckpt = torch.load(path, weights_only=True)
    bad = [k for k, v in ckpt["state_dict"].items() if v.is_floating_point() and not torch.isfinite(v).all()]
    for opt in ckpt["optimizer_states"]:
        for pid, state in opt["state"].items():
            bad += [f"{pid}.{k}" for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point()
                    and not torch.isfinite(v).all()]  # fmt: skip
    assert not bad, f"{path.name} holds non-finite tensors: {bad[:5]}"
    return ckpt


def adam_steps(ckpt: dict) -> int:
    """Updates AdamW applied (its per-parameter step count; all parameters train together)."""
    steps = {int(s["step"]) for s in ckpt["optimizer_states"][0]["state"].values()}
    assert len(steps) == 1, steps
    return steps.pop()


def logged(tmp: Path, name: str) -> list[float]:
    values = []
    for path in sorted((tmp / "csv").glob("version_*/metrics.csv")):
        with open(path) as f:
            values += [float(r[name]) for r in csv.DictReader(f) if r.get(name)]
    return values


class Faults:
    """Patch the pretraining objective: ``grad`` steps get non-finite (or ``grad_value``)
    gradients on one parameter with a finite loss; ``loss`` steps get a NaN loss."""

    def __init__(self, monkeypatch, grad=(), loss=(), grad_value=NAN):
        from flava_zoo.models import pretraining

        self.grad, self.loss, self.calls = set(grad), set(loss), 0
        real = pretraining.FlavaForPretraining.forward
        faults = self

        def forward(objective, batch):
            out = real(objective, batch)
            if not objective.training:
                return out
            step, faults.calls = faults.calls, faults.calls + 1
            if step in faults.loss:
                out.loss = out.loss * NAN
            if step in faults.grad:
                param = next(p for p in objective.parameters() if p.requires_grad)
                handle = []
                handle.append(param.register_hook(lambda g: (handle[0].remove(), torch.full_like(g, grad_value))[1]))
            return out

        monkeypatch.setattr(pretraining.FlavaForPretraining, "forward", forward)


@pytest.mark.parametrize("fault", ["grad", "loss", "loss-accumulated"])
def test_a_non_finite_update_is_skipped_and_the_run_goes_on(tmp_path, monkeypatch, fault):
    """Non-finite gradients with a finite loss, or a NaN loss, at step 2: that update is
    skipped, the run reaches its last step, and the checkpoint is finite. With gradient
    accumulation a NaN loss in one micro-batch (the first of step 2) skips that step."""
    accumulated = fault == "loss-accumulated"
    Faults(monkeypatch, **{fault.removesuffix("-accumulated"): [4 if accumulated else 2]})
    main(pretrain_args(tmp_path, 5, f"--trainer.accumulate_grad_batches={2 if accumulated else 1}"))
    ckpt = finite_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 5
    assert adam_steps(ckpt) == 4  # the schedule and global_step advanced; the weights did not move
    assert max(logged(tmp_path, "train/skipped_steps")) == 1.0


def test_too_many_skips_stop_the_run_and_the_printed_advice_resumes_at_a_lower_rate(tmp_path, monkeypatch):
    """Non-finite gradients from step 2 on with max_skipped_steps=2: the third skip stops the
    run before anything is applied; every checkpoint is finite; resuming with --ckpt_path last
    and a lower rate, as the message says, trains on at the new rate."""
    faults = Faults(monkeypatch, grad=range(2, 100))
    args = pretrain_args(tmp_path, 8, "--model.init_args.max_skipped_steps=2", "--model.init_args.lr=2e-3")
    with pytest.raises(FloatingPointError, match="non-finite gradients .*at step 4") as stop:
        main(args)
    advice = str(stop.value)
    assert "3 consecutive updates skipped since step 2" in advice
    assert "--ckpt_path last" in advice and "lower --model.init_args.lr" in advice
    for path in (tmp_path / "checkpoints").glob("*.ckpt"):
        finite_checkpoint(path)
    ckpt = finite_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 4 and adam_steps(ckpt) == 2

    faults.grad = set()  # the cause is gone (a lower rate)
    main(args + ["--model.init_args.lr=1e-4", "--ckpt_path", "last"])
    ckpt = finite_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 8 and adam_steps(ckpt) == 6
    assert ckpt["lr_schedulers"][0]["base_lrs"] == pytest.approx([1e-4] * len(ckpt["lr_schedulers"][0]["base_lrs"]))
    assert all(g["initial_lr"] == pytest.approx(1e-4) for g in ckpt["optimizer_states"][0]["param_groups"])


def test_an_update_that_overflows_the_optimizer_state_stops_before_it_is_saved(tmp_path, monkeypatch):
    """A finite gradient of 1e30 without clipping overflows AdamW's exp_avg_sq: the run stops
    after that step and before its checkpoint, so last.ckpt is the finite step before."""
    faults = Faults(monkeypatch, grad=[2], grad_value=1e30)
    args = pretrain_args(tmp_path, 5, "--trainer.gradient_clip_val=null")
    with pytest.raises(FloatingPointError, match=r"update of step 2 made .*\(exp_avg_sq\)"):
        main(args)
    ckpt = finite_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 2
    faults.grad = set()
    main(args + ["--ckpt_path", "last"])
    assert finite_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 5


def test_a_huge_learning_rate_stops_with_finite_checkpoints_and_the_advice_recovers(tmp_path):
    """The issue's run: lr=100 makes the gradients overflow after an update or a few. Every
    further update is skipped until the run stops; no checkpoint holds a non-finite tensor.
    Resuming at a lower rate skips again (the weights where the skips began are too far off), and the message's
    second advice, a fresh start at a lower rate, trains."""
    args = pretrain_args(tmp_path, 20, "--model.init_args.lr=100")
    # the first overflowing update depends on the CPU's kernels (step 1 on AVX2, step 3 with
    # AVX512): the run stops at the 11th consecutive skip, wherever the skips began
    pattern = r"non-finite gradients .*at step (\d+) \(11 consecutive updates skipped since step (\d+), more than max_skipped_steps=10"
    with pytest.raises(FloatingPointError, match=pattern) as raised:
        main(args)
    found = re.search(pattern, str(raised.value))
    stop, since = int(found[1]), int(found[2])
    assert stop == since + 10
    paths = list((tmp_path / "checkpoints").glob("*.ckpt"))
    assert paths
    for path in paths:
        finite_checkpoint(path)
    resume = args + ["--model.init_args.lr=1e-3", "--model.init_args.max_skipped_steps=1", "--ckpt_path", "last"]
    with pytest.raises(FloatingPointError, match=f"since step {stop}.* start again without --ckpt_path at a lower rate"):
        main(resume)
    assert finite_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == stop + 1
    fresh = tmp_path / "fresh"
    main(pretrain_args(fresh, 3, "--model.init_args.lr=1e-3"))
    assert adam_steps(finite_checkpoint(fresh / "checkpoints" / "last.ckpt")) == 3


def test_finetuning_skips_a_nan_loss_and_resumes_at_a_lower_rate(tmp_path, monkeypatch):
    """FinetuneModule has the same guard: a NaN loss at step 1 of the VQA recipe is skipped;
    the checkpoint is finite, and --ckpt_path last with a new rate resumes at that rate."""
    from flava_zoo.downstream import FinetuneModule

    real = FinetuneModule.loss
    calls = {"n": 0}

    def loss(self, logits, batch):
        value = real(self, logits, batch)
        if self.training:
            calls["n"] += 1
            if calls["n"] == 2:
                return value * NAN
        return value

    monkeypatch.setattr(FinetuneModule, "loss", loss)
    args = [
        "fit", "--config", str(VQA), "--data.init_args.train_size=16", "--data.init_args.val_size=8",
        "--data.init_args.test_size=8", "--data.init_args.batch_size=4", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", f"--trainer.default_root_dir={tmp_path}",
        "--trainer.max_steps=3", "--trainer.limit_val_batches=0", "--trainer.logger=false",
        "--trainer.callbacks.init_args.every_n_train_steps=1",
        f"--trainer.callbacks.init_args.dirpath={tmp_path / 'checkpoints'}",
    ]  # fmt: skip
    main(args)
    ckpt = finite_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 3 and adam_steps(ckpt) == 2
    main(args + ["--trainer.max_steps=5", "--model.init_args.lr=1e-5", "--ckpt_path", "last"])
    ckpt = finite_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 5 and adam_steps(ckpt) == 4
    groups = ckpt["optimizer_states"][0]["param_groups"]
    assert [g["initial_lr"] for g in groups] == pytest.approx([1e-5 * g["lr_multiplier"] for g in groups])
    assert ckpt["lr_schedulers"][0]["base_lrs"] == pytest.approx([g["initial_lr"] for g in groups])


def test_retrieval_finetuning_skips_a_nan_loss(tmp_path, monkeypatch):
    """RetrievalModule shares the downstream guard: a NaN contrastive loss at step 1 is
    skipped and the checkpoint stays finite."""
    from flava_zoo import losses

    real = losses.contrastive_loss
    calls = {"n": 0}

    def contrastive(*args, **kwargs):
        calls["n"] += 1
        value = real(*args, **kwargs)
        return value * NAN if calls["n"] == 2 else value

    monkeypatch.setattr(losses, "contrastive_loss", contrastive)
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "finetune" / "shapes_retrieval.yaml"
    main([
        "fit", "--config", str(recipe), "--data.init_args.train_size=16", "--data.init_args.val_size=8",
        "--data.init_args.test_size=8", "--data.init_args.batch_size=4", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", f"--trainer.default_root_dir={tmp_path}",
        "--trainer.max_steps=3", "--trainer.limit_val_batches=0", "--trainer.logger=false",
        "--trainer.callbacks.init_args.every_n_train_steps=1",
        f"--trainer.callbacks.init_args.dirpath={tmp_path / 'checkpoints'}",
    ])  # fmt: skip
    ckpt = finite_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 3 and adam_steps(ckpt) == 2


def test_a_bad_update_on_another_process_is_skipped_here_too():
    """Under DDP the decision is all-reduced: when another rank saw a non-finite loss or
    gradient (the strategy's reduced decision is False), this rank skips the same update,
    and stops at the same count, though everything here is finite."""
    from types import SimpleNamespace

    from flava_zoo.training.guard import NonFiniteGuard

    layer = torch.nn.Linear(2, 1)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1)
    before = [p.detach().clone() for p in layer.parameters()]
    decisions, logs = [], {}

    def reduce_boolean_decision(decision, all=True):
        decisions.append((decision, all))
        return False

    trainer = SimpleNamespace(
        strategy=SimpleNamespace(reduce_boolean_decision=reduce_boolean_decision), global_step=7,
        lr_scheduler_configs=[], optimizers=[optimizer], precision_plugin=None,
    )  # fmt: skip
    module = SimpleNamespace(trainer=trainer, hparams={}, named_parameters=layer.named_parameters,
                             log=lambda name, value, **kw: logs.update({name: value}))  # fmt: skip
    guard = NonFiniteGuard(max_skipped_steps=2)
    for _ in range(2):
        loss = layer(torch.ones(1, 2)).sum()
        guard.observe_loss(loss)
        loss.backward()
        if guard.before_optimizer_step(module, optimizer):
            optimizer.step()
        else:
            assert all(p.grad is None for p in layer.parameters())
            optimizer.step()  # as Lightning does: AdamW leaves parameters without gradients alone
    assert decisions == [(True, True), (True, True)] and logs["train/skipped_steps"] == 2.0
    assert all(torch.equal(a, b) for a, b in zip(before, layer.parameters())) and not optimizer.state
    layer(torch.ones(1, 2)).sum().backward()
    with pytest.raises(FloatingPointError, match="another process at step 7"):
        guard.before_optimizer_step(module, optimizer)


def test_under_a_gradient_scaler_overflowing_gradients_are_left_to_the_scaler():
    """16-mixed: the GradScaler skips steps with overflowing gradients and lowers its scale,
    so those do not count as skipped steps here; a non-finite loss still does."""
    from types import SimpleNamespace

    from flava_zoo.training.guard import NonFiniteGuard

    layer = torch.nn.Linear(2, 1)
    optimizer = torch.optim.AdamW(layer.parameters())
    trainer = SimpleNamespace(
        strategy=SimpleNamespace(reduce_boolean_decision=lambda decision, all=True: decision), global_step=0,
        lr_scheduler_configs=[], optimizers=[optimizer], precision_plugin=SimpleNamespace(scaler=object()),
    )  # fmt: skip
    module = SimpleNamespace(trainer=trainer, hparams={}, named_parameters=layer.named_parameters,
                             log=lambda *a, **k: None)  # fmt: skip
    guard = NonFiniteGuard(max_skipped_steps=0)
    loss = layer(torch.ones(1, 2)).sum()
    guard.observe_loss(loss)
    (loss * 1e39).backward()  # a scaled loss whose gradients overflow
    assert not torch.isfinite(layer.weight.grad).all()
    assert guard.before_optimizer_step(module, optimizer) and guard.skipped_steps == 0
    guard.observe_loss(loss * NAN)
    with pytest.raises(FloatingPointError, match="non-finite training loss"):
        guard.before_optimizer_step(module, optimizer)
