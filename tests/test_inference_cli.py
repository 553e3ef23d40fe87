"""``flava-zoo embed`` and ``flava-zoo score`` on a tiny exported model, called in-process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import flava_zoo
from flava_zoo.cli import main
from flava_zoo.downstream.base import load_itm_head
from flava_zoo.models.heads import ITMHead
from flava_zoo.tokenizer import FlavaTokenizer
from flava_zoo.transforms import image_transform

CAPTIONS = [
    "a red square on grey",
    "a blue circle",
    "two green triangles",
    "a yellow star at the top",
]


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """flava-tiny with random weights, an ITM head and a vocab.txt, as an export folder."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("export") / "flava-tiny"
    model = flava_zoo.create_model("flava-tiny")
    head = ITMHead(model.config.multimodal.hidden_size)
    torch.nn.init.normal_(head.classifier.weight, std=0.5)  # so the probabilities are not all 0.5
    flava_zoo.save_pretrained(model, folder, heads={"itm_head": head})
    FlavaTokenizer.train(CAPTIONS * 3, vocab_size=120).save(folder)
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    (root / "nested").mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.jpg", "nested/c.png"):
        array = rng.integers(0, 255, size=(48 + len(name), 80, 3), dtype=np.uint8)
        PIL.Image.fromarray(array).save(root / name)
    (root / "notes.txt").write_text("not an image")
    return root


def _reference(export: Path, image_paths: list[Path], captions: list[str]):
    """What the model gives directly: its normalised embeddings and encoder outputs."""
    model = flava_zoo.create_model(export).eval()
    tok = FlavaTokenizer.from_pretrained(export)
    transform = image_transform(image_size=model.config.image.image_size)
    pixels = torch.stack([transform(PIL.Image.open(p).convert("RGB")) for p in image_paths])
    enc = tok(captions, max_length=min(tok.max_length, model.config.text.max_position_embeddings))
    with torch.no_grad():
        image = model.encode_image(pixels)
        text = model.encode_text(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    return model, image, text


def test_embed_folder_and_caption_list(tmp_path: Path, export: Path, images: Path, capsys) -> None:
    captions = tmp_path / "captions.txt"
    captions.write_text(f"{CAPTIONS[0]}\n\n{CAPTIONS[1]}\n{CAPTIONS[2]}\n")
    out = tmp_path / "emb"
    args = ["embed", "--model", str(export), "--images", str(images), "--captions", str(captions),
            "--out", str(out), "--device", "cpu", "--batch-size", "2", "--quiet"]  # fmt: skip
    assert main(args) == 0
    assert "embedded 3 images and 3 captions (128-d, normalised)" in capsys.readouterr().out
    tensors = load_file(out / "embeddings.safetensors")
    assert set(tensors) == {"image", "text"}
    assert tensors["image"].shape == (3, 128) and tensors["text"].shape == (3, 128)
    assert tensors["image"].dtype == torch.float32 and tensors["text"].dtype == torch.float32
    assert torch.allclose(tensors["image"].norm(dim=1), torch.ones(3), atol=1e-5)
    with safe_open(out / "embeddings.safetensors", "pt") as f:
        assert f.metadata()["model"] == str(export)
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert [(r["modality"], r["row"], r["id"]) for r in index] == [
        ("image", 0, "a.png"), ("image", 1, "b.jpg"), ("image", 2, "nested/c.png"),
        ("text", 0, "captions.txt:1"), ("text", 1, "captions.txt:3"), ("text", 2, "captions.txt:4"),
    ]  # fmt: skip
    assert index[2]["path"] == str(images / "nested/c.png") and index[4]["caption"] == CAPTIONS[1]
    # rows are the model's own embeddings, batching aside
    _, image, text = _reference(
        export, [images / "a.png", images / "b.jpg", images / "nested/c.png"], CAPTIONS[:3]
    )
    torch.testing.assert_close(tensors["image"], image.embedding, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(tensors["text"], text.embedding, atol=1e-5, rtol=1e-4)
    # an existing output is refused without --force
    assert main(args) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0


def test_embed_manifest_as_npy(tmp_path: Path, export: Path, images: Path) -> None:
    manifest = tmp_path / "pairs.jsonl"
    manifest.write_text(
        json.dumps({"image": "a.png", "captions": [CAPTIONS[0], CAPTIONS[3]]})
        + "\n"
        + json.dumps({"image": "nested/c.png", "caption": CAPTIONS[2]})
        + "\n"
    )
    out = tmp_path / "npy"
    assert main(["embed", "--model", str(export), "--manifest", str(manifest), "--image-root", str(images),
                 "--out", str(out), "--format", "npy", "--device", "cpu", "--quiet"]) == 0  # fmt: skip
    image, text = np.load(out / "image_embeddings.npy"), np.load(out / "text_embeddings.npy")
    assert image.shape == (2, 128) and text.shape == (3, 128) and image.dtype == np.float32
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    texts = [r for r in index if r["modality"] == "text"]
    assert [(r["caption"], r["image_row"], r["id"]) for r in texts] == [
        (CAPTIONS[0], 0, "pairs.jsonl:1"), (CAPTIONS[3], 0, "pairs.jsonl:1"), (CAPTIONS[2], 1, "pairs.jsonl:2"),
    ]  # fmt: skip


def test_embed_skips_an_unreadable_image_unless_strict(
    tmp_path: Path, export: Path, images: Path, capsys
) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "good.png").write_bytes((images / "a.png").read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    args = ["embed", "--model", str(export), "--images", str(folder), "--device", "cpu", "--quiet"]
    with pytest.warns(UserWarning, match="broken.png: skipped: cannot read image"):
        assert main([*args, "--out", str(tmp_path / "out")]) == 0
    assert "1 unreadable images skipped" in capsys.readouterr().out
    assert load_file(tmp_path / "out/embeddings.safetensors")["image"].shape == (1, 128)
    index = [json.loads(line) for line in (tmp_path / "out/index.jsonl").read_text().splitlines()]
    assert [(r["row"], r["id"]) for r in index] == [(0, "good.png")]
    assert main([*args, "--out", str(tmp_path / "strict"), "--strict"]) == 1
    assert "broken.png: cannot read image" in capsys.readouterr().err


def test_embed_usage_errors(tmp_path: Path, export: Path, images: Path, capsys) -> None:
    assert main(["embed", "--model", str(export), "--out", str(tmp_path / "x")]) == 2
    assert main(["embed", "--model", "flava-tiny", "--captions", str(tmp_path / "missing.txt"),
                 "--out", str(tmp_path / "x"), "--device", "cpu"]) == 1  # fmt: skip
    assert "does not exist" in capsys.readouterr().err
    captions = tmp_path / "c.txt"
    captions.write_text("a caption\n")
    with pytest.warns(UserWarning, match="weights are random"):
        code = main(["embed", "--model", "flava-tiny", "--captions", str(captions), "--out", str(tmp_path / "x"),
                     "--device", "cpu"])  # fmt: skip
    assert code == 1 and "has no tokenizer" in capsys.readouterr().err


def test_score_matches_the_model_and_its_itm_head(
    tmp_path: Path, export: Path, images: Path, capsys
) -> None:
    paths = [images / "a.png", images / "b.jpg", images / "a.png"]
    captions = [CAPTIONS[0], CAPTIONS[1], CAPTIONS[3]]
    out = tmp_path / "scores.jsonl"
    args = [
        "score",
        "--model",
        str(export),
        "--device",
        "cpu",
        "--out",
        str(out),
        "--batch-size",
        "2",
        "--quiet",
    ]
    for path, caption in zip(paths, captions):
        args += ["--image", str(path), "--caption", caption]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "cosine" in printed and "itm" in printed and CAPTIONS[3] in printed
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["caption"] for r in rows] == captions and [r["pair"] for r in rows] == [0, 1, 2]
    model, image, text = _reference(export, paths, captions)
    cosine = (image.embedding * text.embedding).sum(-1)
    head = load_itm_head(export, model.config.multimodal.hidden_size).eval()
    with torch.no_grad():
        itm = head(model.fuse(image, text).cls).softmax(-1)[:, 1]
    assert [r["cosine"] for r in rows] == pytest.approx(cosine.tolist(), abs=1e-5)
    assert [r["itm_probability"] for r in rows] == pytest.approx(itm.tolist(), abs=1e-5)
    assert all(0.0 <= r["itm_probability"] <= 1.0 for r in rows)
    assert len({round(r["itm_probability"], 4) for r in rows}) > 1
    # --out exists: refused; a manifest gives each image with each of its captions
    assert main(args) == 1 and "refusing to overwrite" in capsys.readouterr().err
    manifest = tmp_path / "pairs.tsv"
    manifest.write_text(f"image\tcaption\na.png\t{CAPTIONS[0]}||{CAPTIONS[3]}\n")
    assert main(["score", "--model", str(export), "--manifest", str(manifest), "--image-root", str(images),
                 "--device", "cpu", "--quiet", "--no-itm"]) == 0  # fmt: skip
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 3 and "n/a" in lines[1] and f"{rows[0]['cosine']:7.4f}" in lines[1]


def test_score_usage_errors(export: Path, images: Path, capsys) -> None:
    assert main(["score", "--model", str(export), "--image", str(images / "a.png")]) == 2
    assert "give one caption per image" in capsys.readouterr().err
    assert main(["score", "--model", str(export), "--image", str(images / "zzz.png"), "--caption", "x",
                 "--device", "cpu"]) == 1  # fmt: skip
    assert "zzz.png does not exist" in capsys.readouterr().err
