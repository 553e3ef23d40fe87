"""The late-fusion head: a dual encoder (fusion: none) answers fusion tasks through an MLP over
[u; v; u * v] of its two embeddings; on a fused model the same head leaves the fusion unused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flava_zoo.cli import main
from flava_zoo.downstream.base import late_fusion_features
from flava_zoo.evaluation.results import read_results

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")
ONE_THREAD = True
RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def _args(tmp: Path, *extra: str) -> list[str]:
    return [
        "--config", str(RECIPES / "finetune" / "shapes_memes.yaml"), f"--trainer.default_root_dir={tmp}",
        "--trainer.max_steps=3", "--trainer.limit_val_batches=0", "--trainer.precision=32",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        f"--trainer.callbacks.init_args.dirpath={tmp / 'checkpoints'}",
        "--data.init_args.train_size=24", "--data.init_args.val_size=8", "--data.init_args.test_size=12",
        "--data.init_args.batch_size=4", f"--model.init_args.results={tmp / 'results.jsonl'}", *extra,
    ]  # fmt: skip


def test_features_are_concatenation_and_product():
    u, v = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, -1.0]])
    assert late_fusion_features(u, v).tolist() == [[1.0, 2.0, 3.0, -1.0, 3.0, -2.0]]
    with pytest.raises(ValueError, match="differ in shape"):
        late_fusion_features(u, v[:, :1])


def test_a_dual_encoder_is_scored_on_a_fusion_task(tmp_path):
    dual = ["--model.init_args.model_overrides={fusion: none}"]
    with pytest.raises(ValueError, match="late_fusion=true"):
        main(["fit", *_args(tmp_path / "refused", *dual)])
    extra = [*dual, "--model.init_args.late_fusion=true", "--model.init_args.head_hidden=64"]
    assert main(["fit", *_args(tmp_path, *extra)]) == 0
    assert main(["test", *_args(tmp_path, *extra), "--ckpt_path", "last"]) == 0
    records = {r.metric: r for r in read_results(tmp_path / "results.jsonl")}
    assert {"auroc", "accuracy"} <= set(records) and records["auroc"].num_samples == 12
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    head = {k: v.shape for k, v in ckpt["state_dict"].items() if k.startswith("head.")}
    proj = ckpt["flava_zoo"]["model_config"]["projection_dim"]
    assert any(shape == (64, 3 * proj) for shape in head.values()), head


def test_on_a_fused_model_the_fusion_encoder_is_left_out():
    from flava_zoo.downstream import FinetuneModule

    torch.manual_seed(0)
    module = FinetuneModule(model="flava-tiny", late_fusion=True, head_hidden=32, inputs="multimodal", num_classes=2)
    cfg = module.model.config
    batch = {
        "pixel_values": torch.randn(3, 3, 64, 64),
        "input_ids": torch.randint(5, cfg.text.vocab_size, (3, 6)),
        "attention_mask": torch.ones(3, 6, dtype=torch.long),
    }
    module(batch).sum().backward()
    assert all(p.grad is None for p in module.model.fusion_encoder.parameters())
    assert all(p.grad is not None for p in module.head.parameters())
    assert module.model.image_projection.weight.grad is not None  # the embeddings are the features
    assert module.feature_dim(module.features("multimodal")) == 3 * cfg.projection_dim
    assert module.unused_modules(module.features("multimodal")) == [module.model.fusion_encoder]
    assert module.features("image") == "image"  # only multimodal tasks change
