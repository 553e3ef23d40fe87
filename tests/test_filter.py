"""``flava-zoo filter`` and weak captions: the kept share by score, manifests the data
modules read, noisy captions at exactly the requested rate."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from flava_zoo.cli import main
from flava_zoo.data.noise import KeptPairs, NoisyCaptions, read_kept_indices
from flava_zoo.data.shapes import ShapesPairs, ShapesWorld
from flava_zoo.data.sources import PairManifest
from flava_zoo.filtering import FilterError, keep_best

ONE_THREAD = True


def test_keep_best_keeps_the_share_with_the_highest_scores():
    scores = [0.1, 0.9, 0.5, 0.5, -0.2, 0.7, 0.5, 0.0, 0.3, 0.8]
    assert keep_best(scores, 0.3) == [1, 5, 9]
    assert keep_best(scores, 0.5) == [1, 2, 3, 5, 9]  # ties: the earlier rows
    assert keep_best(scores, 1.0) == list(range(10))
    assert keep_best(scores, 0.01) == [1]  # at least one
    for bad in (0.0, 1.5, -1):
        with pytest.raises(FilterError, match="--keep must be in"):
            keep_best(scores, bad)


def test_noisy_captions_at_the_requested_rate():
    world = ShapesWorld(sizes={"train": 1000})
    pairs = ShapesPairs(world, "train")
    noisy = NoisyCaptions(pairs, 0.3, seed=1, text_of=lambda j: world.caption("train", j))
    assert len(noisy.noisy_indices) == 300 and len(noisy) == 1000
    assert NoisyCaptions(pairs, 0.3, seed=1, text_of=lambda j: world.caption("train", j)).noisy_indices == noisy.noisy_indices
    assert NoisyCaptions(pairs, 0.3, seed=2, text_of=lambda j: world.caption("train", j)).noisy_indices != noisy.noisy_indices
    swapped = sum(noisy.text(i) != world.caption("train", i) for i in range(1000))
    assert swapped >= 295  # a donor may share the exact caption text, rarely
    i = noisy.noisy_indices[0]
    item = noisy[i]
    assert item["noisy"] and item["text"] == noisy.text(i) and item["index"] == i
    clean = next(j for j in range(1000) if not noisy.is_noisy(j))
    assert noisy[clean]["text"] == world.caption("train", clean) and not noisy[clean]["noisy"]
    assert NoisyCaptions(pairs, 0.0).noisy_indices == []
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        NoisyCaptions(pairs, 1.2)


def _manifest(folder: Path, kind: str, n: int = 10) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    world = ShapesWorld(sizes={"train": n})
    rows = []
    for i in range(n):
        world.image("train", i).save(folder / f"{i}.png")
        rows.append({"image": f"{i}.png", "caption": world.caption("train", i), "id": i})
    path = folder / f"pairs.{kind}"
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, ["image", "caption", "id"])
            writer.writeheader()
            writer.writerows(rows)
    return path


@pytest.mark.parametrize("kind", ["jsonl", "csv"])
def test_filter_writes_a_manifest_of_the_best_rows(tmp_path, random_export, kind):
    manifest = _manifest(tmp_path / "data", kind)
    out = tmp_path / f"kept.{kind}"
    assert main(["filter", "--model", str(random_export), "--manifest", str(manifest), "--keep", "0.7",
                 "--out", str(out), "--quiet"]) == 0  # fmt: skip
    scores = [json.loads(x) for x in (tmp_path / f"kept.{kind}.scores.jsonl").read_text().splitlines()]
    assert len(scores) == 10 and sum(s["kept"] for s in scores) == 7
    threshold = min(s["score"] for s in scores if s["kept"])
    assert all(s["score"] <= threshold for s in scores if not s["kept"])
    kept = PairManifest(out, image_root=manifest.parent, captions="first")
    original = PairManifest(manifest, captions="first")
    kept_rows = [i for i, s in enumerate(scores) if s["kept"]]
    assert kept._images == [original._images[i] for i in kept_rows]
    assert kept._captions == [original._captions[i] for i in kept_rows]
    if kind == "jsonl":  # lines unchanged
        lines = manifest.read_text().splitlines()
        assert out.read_text().splitlines() == [lines[i] for i in kept_rows]


def test_filter_refuses_bad_settings(tmp_path, random_export, capsys):
    manifest = _manifest(tmp_path / "data", "jsonl", n=3)
    base = ["filter", "--model", str(random_export), "--manifest", str(manifest), "--quiet"]
    assert main([*base, "--keep", "0", "--out", str(tmp_path / "k.jsonl")]) == 1
    assert "--keep must be in (0, 1]" in capsys.readouterr().err
    assert main([*base, "--keep", "0.5", "--out", str(tmp_path / "k.csv")]) == 1
    assert "must have the manifest's extension .jsonl" in capsys.readouterr().err
    assert main([*base, "--keep", "0.5", "--out", str(manifest)]) == 1
    assert "is the input manifest" in capsys.readouterr().err
    (manifest.parent / "1.png").unlink()
    assert main([*base, "--keep", "0.5", "--out", str(tmp_path / "k.jsonl")]) == 1
    assert f"{manifest}:2: image {manifest.parent / '1.png'} cannot be read" in capsys.readouterr().err


def test_filter_on_the_shapes_world_feeds_the_pretraining_data(tmp_path, random_export, capsys):
    from flava_zoo.data.datamodules import ShapesPretrainData

    out = tmp_path / "keep.json"
    assert main(["filter", "--model", str(random_export), "--shapes", "--train-size", "40", "--caption-noise", "0.25",
                 "--keep", "0.5", "--out", str(out), "--quiet"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    summary = json.loads(out.read_text())
    assert len(summary["indices"]) == 20 and summary["noisy"] == 10
    assert f"of which the filter removed {summary['noisy_removed']}" in printed
    assert read_kept_indices(out, 40) == summary["indices"]
    with pytest.raises(ValueError, match="written for 40 training scenes"):
        read_kept_indices(out, 50)
    with pytest.raises(ValueError, match="written for caption_noise=0.25, the data has caption_noise=0.1"):
        ShapesPretrainData(stage="multimodal", train_size=40, val_size=8, caption_noise=0.1, keep=str(out),
                           tokenizer=str(random_export)).dataset("train")  # fmt: skip
    data = ShapesPretrainData(stage="multimodal", train_size=40, val_size=8, caption_noise=0.25, keep=str(out),
                              tokenizer=str(random_export))  # fmt: skip
    train = data.dataset("train")
    assert isinstance(train, KeptPairs) and len(train) == 20
    assert [train[k]["index"] for k in range(3)] == summary["indices"][:3]
    noisy = sum(train[k]["noisy"] for k in range(20))
    assert noisy == 10 - summary["noisy_removed"]
    assert len(data.dataset("val")) == 8  # evaluation pairs stay clean and whole
