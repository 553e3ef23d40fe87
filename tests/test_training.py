"""Pretraining from the command line: recipes parse and run, stages chain, resume, NaN stop."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from flava_zoo.cli import main
from flava_zoo.training import FlavaPretrainModule

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))
SHAPES = {p.stem.removeprefix("shapes_"): p for p in RECIPES if p.name.startswith("shapes_")}
SMALL_DATA = [
    "--data.init_args.train_size=128",
    "--data.init_args.val_size=32",
    "--data.init_args.batch_size=8",
]


def fit_args(recipe: Path, tmp: Path, steps: int = 2) -> list[str]:
    return [
        "fit", "--config", str(recipe), *SMALL_DATA,
        f"--trainer.max_steps={steps}", "--trainer.val_check_interval=2", "--trainer.limit_val_batches=2",
        f"--trainer.default_root_dir={tmp}", "--trainer.enable_progress_bar=false",
        f"--trainer.callbacks.init_args.dirpath={tmp}/checkpoints",
    ]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_recipe_parses(recipe, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(recipe), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"].startswith("flava_zoo.")
    assert printed["data"]["class_path"].startswith("flava_zoo.")


def test_three_shapes_stages_chain_through_exports(tmp_path):
    """Each shapes recipe runs a few steps; each stage starts from the previous export."""
    previous = None
    for stage in ("image", "text", "multimodal"):
        export = tmp_path / stage / "export"
        args = fit_args(SHAPES[stage], tmp_path / stage) + [f"--model.init_args.export_dir={export}"]
        args.append(f"--model.init_args.init_from={previous}" if previous else "--model.init_args.init_from=null")
        main(args)
        assert (export / "model.safetensors").is_file() and (export / "config.json").is_file()
        if stage != "image":
            assert (export / "vocab.txt").is_file()
        previous = export
    # the text stage froze the image tower: its weights equal stage 1's
    from safetensors.torch import load_file

    image = load_file(tmp_path / "image" / "export" / "model.safetensors")
    text = load_file(tmp_path / "text" / "export" / "model.safetensors")
    multimodal = load_file(tmp_path / "multimodal" / "export" / "model.safetensors")
    key = "image_encoder.encoder.blocks.0.attn.qkv.weight"
    assert torch.equal(image[key], text[key])
    assert not torch.equal(text[key], multimodal[key])
    tkey = "text_encoder.encoder.blocks.0.attn.qkv.weight"
    assert not torch.equal(image[tkey], text[tkey])
    # each export carries the heads its stage trained, and only those
    heads = {s: load_file(tmp_path / s / "export" / "heads.safetensors") for s in ("image", "text", "multimodal")}
    assert {k.split(".")[0] for k in heads["image"]} == {"mim_head"}
    assert {k.split(".")[0] for k in heads["text"]} == {"mlm_head"}
    assert {k.split(".")[0] for k in heads["multimodal"]} == {"itm_head", "mmm_text_head", "mmm_image_head"}


def test_an_export_with_heads_restarts_a_stage_with_them(tmp_path):
    """init_from an export folder loads its heads too; a folder without heads loads the backbone."""
    from flava_zoo.checkpoint import load_head_state, save_pretrained
    from flava_zoo.training import FlavaPretrainModule

    torch.manual_seed(1)
    first = FlavaPretrainModule(model="flava-tiny", stage="multimodal")
    with torch.no_grad():
        first.objective.itm_head.classifier.bias.copy_(torch.tensor([0.25, -0.5]))
    folder = first.export(tmp_path / "export")
    saved = load_head_state(folder, "itm_head")
    assert torch.equal(saved["classifier.bias"], torch.tensor([0.25, -0.5]))
    with pytest.raises(ValueError, match="holds no 'mlm_head'"):
        load_head_state(folder, "mlm_head")  # the multimodal stage does not train MLM

    torch.manual_seed(2)
    second = FlavaPretrainModule(model="flava-tiny", stage="multimodal", init_from=str(folder))
    for name, value in first.objective.state_dict().items():
        if name.startswith(("model.", "itm_head.", "mmm_")):
            assert torch.equal(second.objective.state_dict()[name], value), name

    save_pretrained(first.model, folder)  # re-exported without heads: the old heads go
    assert not (folder / "heads.safetensors").exists()
    with pytest.raises(FileNotFoundError, match="holds no pretraining heads"):
        load_head_state(folder, "itm_head")
    torch.manual_seed(2)
    third = FlavaPretrainModule(model="flava-tiny", stage="multimodal", init_from=str(folder))
    key = "model.fusion_encoder.layers.encoder.blocks.0.attn.qkv.weight"
    assert torch.equal(third.objective.state_dict()[key], first.objective.state_dict()[key])
    assert not torch.equal(third.objective.itm_head.classifier.bias, first.objective.itm_head.classifier.bias)


def test_freezing_and_learning_rate_groups():
    module = FlavaPretrainModule(
        stage="multimodal", freeze=["text"], lr_multipliers={"image": 0.1}, loss_weights={"itm": 0.0}
    )
    model = module.model
    assert not any(p.requires_grad for p in model.text_encoder.parameters())
    assert all(p.requires_grad for p in model.image_encoder.parameters())
    assert not any(p.requires_grad for p in module.objective.itm_head.parameters())
    module.train()
    assert not model.text_encoder.training and model.image_encoder.training
    from flava_zoo.training.optim import param_groups

    groups = param_groups(module.objective, 1e-3, 0.1, {"model.image_encoder": 0.1})
    by_name = {n: g for g in groups for n in g["param_names"]}
    assert by_name["model.image_encoder.encoder.blocks.0.attn.qkv.weight"]["lr"] == pytest.approx(1e-4)
    assert by_name["model.image_encoder.encoder.blocks.0.attn.qkv.weight"]["weight_decay"] == 0.1
    assert by_name["model.image_encoder.encoder.blocks.0.norm1.weight"]["weight_decay"] == 0.0
    assert by_name["model.image_encoder.pos_embed"]["weight_decay"] == 0.0
    assert by_name["model.logit_scale"]["weight_decay"] == 0.0
    assert by_name["model.fusion_encoder.image_proj.bias"]["weight_decay"] == 0.0
    assert not any(n.startswith("model.text_encoder") for n in by_name)
    with pytest.raises(ValueError, match="freeze: unknown tower"):
        FlavaPretrainModule(freeze=["vision"])
    with pytest.raises(ValueError, match="stage must be one of"):
        FlavaPretrainModule(stage="video")


def test_warmup_cosine_schedule():
    from flava_zoo.training.optim import warmup_cosine

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, warmup_steps=4, total_steps=12)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(1.0) and lrs[8] == pytest.approx(0.5)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))


def test_warmup_stable_decay_schedule_holds_the_peak_until_the_last_decay_steps():
    from flava_zoo.training.optim import warmup_cosine

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, warmup_steps=2, total_steps=12, min_ratio=0.1, decay_steps=4)
    lrs = []
    for _ in range(13):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:2] == pytest.approx([0.5, 1.0])
    assert lrs[2:8] == pytest.approx([1.0] * 6)  # stable until step 8 = 12 - 4
    assert lrs[10] == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the decay
    assert lrs[12] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(lrs[8:12], lrs[9:13]))
    # decay_steps longer than the run after warm-up: the plain warm-up + cosine
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    plain = warmup_cosine(opt, 4, 12).lr_lambdas[0]
    assert [warmup_cosine(opt, 4, 12, decay_steps=100).lr_lambdas[0](s) for s in range(12)] == [
        plain(s) for s in range(12)
    ]
    with pytest.raises(ValueError, match="decay_steps must be non-negative"):
        warmup_cosine(opt, 4, 12, decay_steps=-1)


def test_pretraining_module_holds_the_peak_rate_until_its_decay_steps(tmp_path):
    import lightning as L

    from flava_zoo.data.datamodules import ShapesPretrainData
    from flava_zoo.training import FlavaPretrainModule

    rates = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            rates.append(trainer.optimizers[0].param_groups[0]["lr"])

    module = FlavaPretrainModule(stage="multimodal", lr=1e-3, warmup_steps=1, decay_steps=2)
    data = ShapesPretrainData(stage="multimodal", train_size=64, val_size=8, batch_size=8)
    trainer = L.Trainer(
        max_steps=6, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        default_root_dir=tmp_path, callbacks=[Record()],
    )
    trainer.fit(module, datamodule=data)
    # warm-up of one step, the held peak, then a cosine over the last 2 steps (4 and 5)
    assert rates == pytest.approx([1e-3] * 5 + [0.5e-3])


def test_non_finite_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from flava_zoo.models import pretraining

    real_forward = pretraining.FlavaForPretraining.forward
    calls = {"n": 0}

    def poisoned(self, batch):
        out = real_forward(self, batch)
        calls["n"] += 1
        if calls["n"] == 4:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(pretraining.FlavaForPretraining, "forward", poisoned)
    args = fit_args(SHAPES["image"], tmp_path, steps=10) + [
        "--trainer.limit_val_batches=0", "--model.init_args.export_dir=null",
        "--trainer.callbacks.init_args.every_n_train_steps=1", "--model.init_args.max_skipped_steps=0",
    ]  # 0: stop at the first non-finite loss (by default up to 10 in a row are skipped)
    with pytest.raises(FloatingPointError, match="non-finite training loss at step 3"):
        main(args)
    last = next(tmp_path.rglob("last.ckpt"))
    assert torch.load(last, weights_only=True)["global_step"] == 3


def test_killed_run_resumes_at_the_step_it_reached(tmp_path):
    """SIGKILL a real training process, then ``--ckpt_path last`` continues from its step."""
    log_dir = tmp_path / "run"
    base = [sys.executable, "-m", "flava_zoo.cli"] + fit_args(SHAPES["image"], log_dir, steps=10_000) + [
        "--trainer.limit_val_batches=0", "--model.init_args.export_dir=null",
        "--trainer.callbacks.init_args.every_n_train_steps=2",
        "--trainer.logger=CSVLogger", f"--trainer.logger.save_dir={log_dir}", "--trainer.logger.name=csv",
        "--trainer.logger.version=0", "--trainer.log_every_n_steps=1",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(base, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    reached = 0
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            lasts = list(log_dir.rglob("last.ckpt"))
            if lasts:
                try:
                    reached = torch.load(lasts[0], weights_only=True)["global_step"]
                except Exception:
                    reached = 0
                if reached >= 4:
                    break
            if proc.poll() is not None:
                pytest.fail(f"training process exited early with code {proc.returncode}")
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert reached >= 4, "no checkpoint appeared in time"
    # the process may have saved again between the read above and the kill
    reached = torch.load(next(log_dir.rglob("last.ckpt")), weights_only=True)["global_step"]
    resume = [a if not a.startswith("--trainer.max_steps") else f"--trainer.max_steps={reached + 2}" for a in base]
    resume[resume.index("--trainer.logger.version=0")] = "--trainer.logger.version=1"
    subprocess.run(resume + ["--ckpt_path", "last"], cwd=tmp_path, env=env, check=True, capture_output=True)
    final = torch.load(next(log_dir.rglob("last.ckpt")), weights_only=True)
    assert final["global_step"] == reached + 2
    with open(log_dir / "csv" / "version_1" / "metrics.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert steps and min(steps) >= reached - 1  # the resumed run logged only steps after the checkpoint


def test_multimodal_steps_under_ddp_with_two_cpu_processes(tmp_path):
    """A real 2-process DDP run (gloo) of the multimodal recipe through the console entry point."""
    export = tmp_path / "export"
    args = [sys.executable, "-m", "flava_zoo.cli"] + fit_args(SHAPES["multimodal"], tmp_path, steps=3) + [
        "--trainer.strategy=ddp", "--trainer.accelerator=cpu", "--trainer.devices=2",
        "--trainer.limit_val_batches=0", "--model.init_args.init_from=null",
        f"--model.init_args.export_dir={export}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "distributed_backend=gloo" in result.stderr + result.stdout
    assert (export / "model.safetensors").is_file()
