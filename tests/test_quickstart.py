"""`flava-zoo quickstart` end to end, with a few steps per stage: files, metrics, reload."""

from __future__ import annotations

import json

import torch

import flava_zoo
from flava_zoo.cli import main as cli_main
from flava_zoo.data.shapes import ShapesWorld
from flava_zoo.tokenizer import FlavaTokenizer
from flava_zoo.training.quickstart import evaluate_retrieval

KEYS = (
    "image_to_text_R@1",
    "image_to_text_R@5",
    "text_to_image_R@1",
    "text_to_image_R@5",
    "chance_R@1",
    "chance_R@5",
    "seconds",
)


def test_quickstart_writes_weights_and_metrics_that_reload(tmp_path, capsys):
    out = tmp_path / "qs"
    argv = ["quickstart", "--output", str(out), "--image-steps", "2", "--text-steps", "2",
            "--multimodal-steps", "3", "--batch-size", "8", "--eval-pairs", "40", "--no-progress"]  # fmt: skip
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert "Zero-shot retrieval on 40 held-out shapes-world pairs" in printed
    assert "stage multimodal: 3 steps in" in printed
    for name in ("model.safetensors", "heads.safetensors", "config.json", "vocab.txt", "README.md"):
        assert (out / name).is_file(), name
    card = (out / "README.md").read_text()
    assert card.startswith("# flava-tiny-shapes pretrained on the shapes world (qs)\n"), card[:200]
    # the export stands alone: the run's metrics (and stages) lie beside it, in qs.run/
    metrics = json.loads((tmp_path / "qs.run" / "metrics.json").read_text())
    assert metrics["unit"] == "%"  # recall and chance in percent
    assert "(recall, %)" in printed
    for key in KEYS:
        assert isinstance(metrics[key], float) and metrics[key] >= 0, key
    assert metrics["chance_R@1"] == 100 / 40 and metrics["chance_R@5"] == 500 / 40
    assert metrics["seconds"] > 0

    # the folder loads back and reproduces the printed metrics
    model = flava_zoo.create_model(out)
    tokenizer = FlavaTokenizer.from_pretrained(out)
    again = evaluate_retrieval(model, tokenizer, ShapesWorld(seed=0), "test", 40)
    for key in KEYS[:4]:
        assert abs(again[key] - metrics[key]) < 1e-6, key
    with torch.no_grad():
        pixels = torch.zeros(1, 3, 64, 64)
        assert model.encode_image(pixels).embedding.shape == (1, model.config.projection_dim)
