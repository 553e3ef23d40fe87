"""The interactions probe: EMAP (Hessel & Lee 2020) and modality ablation, on classifiers
whose interactions are known by construction."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from flava_zoo.evaluation.results import read_results
from flava_zoo.probes import interactions as I
from flava_zoo.probes.common import Classifier, load_classifier

ONE_THREAD = True


def test_auroc_matches_scikit_learn_with_ties_and_is_nan_on_one_class():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.normal(size=200) + labels, 1)  # rounding makes ties
    assert I.auroc(scores, labels) == pytest.approx(metrics.roc_auc_score(labels, scores), abs=1e-12)
    assert I.auroc(np.r_[1.0, 1.0, 2.0], np.r_[0, 1, 1]) == pytest.approx(0.75)
    assert np.isnan(I.auroc(scores[:5], np.ones(5)))


def _solid(a: int, b: int) -> Image.Image:
    return Image.new("RGB", (8, 8), (200 if a > 0 else 40, 30 * b + 60, 0))


def _sign(image: Image.Image) -> float:
    return 1.0 if image.getpixel((0, 0))[0] > 128 else -1.0


def test_emap_is_exact_for_an_additive_classifier_and_removes_a_pure_interaction():
    # 16 items, every (image sign a, text sign b) combination 4 times: balanced, so the
    # additive projection of a * b is exactly constant.
    signs = [(a, b) for a in (1, -1) for b in (1, -1)] * 4
    images = [_solid(a, k % 3) for k, (a, _) in enumerate(signs)]
    texts = ["plus" if b > 0 else "minus" for _, b in signs]
    seen_sizes = set()

    def additive(ims, txs):
        seen_sizes.update(im.size for im in ims)
        g = torch.tensor([_sign(im) * 1.5 + im.getpixel((0, 0))[1] / 100 for im in ims])
        h = torch.tensor([0.7 if t == "plus" else -0.4 for t in txs]) + torch.tensor([len(t) / 10 for t in txs])
        return torch.stack([torch.zeros_like(g), g + h], 1)

    grid = I.logit_grid(additive, images, texts, batch_size=7)
    assert grid.shape == (16, 16, 2)
    assert torch.allclose(grid[3, 5], additive([images[3]], [texts[5]])[0])  # image i, text j
    labels = (additive(images, texts)[:, 1] > 0).long().numpy()
    result = I.measure(additive, images, texts, labels, (I.ACCURACY, I.AUROC), seed=1, batch_size=5)
    assert torch.allclose(result.logits["emap"], result.logits["full"], atol=1e-9)
    assert result.scores["accuracy"]["full"].estimate == result.scores["accuracy"]["emap"].estimate == 100
    assert result.shares["accuracy"].estimate == pytest.approx(0.0)
    assert result.shares["auroc"].low == result.shares["auroc"].high == pytest.approx(0.0)
    assert result.differences["auroc"]["interaction_gap"].estimate == pytest.approx(0.0)
    assert seen_sizes == {(8, 8)}  # the blank image has the items' size

    def product(ims, txs):
        b = torch.tensor([1.0 if t == "plus" else -1.0 for t in txs])
        return torch.stack([torch.zeros(len(ims)), torch.tensor([_sign(im) for im in ims]) * b], 1)

    labels = np.array([int(a * b > 0) for a, b in signs])
    result = I.measure(product, images, texts, labels, (I.AUROC, I.ACCURACY), seed=0)
    auroc = result.scores["auroc"]
    assert auroc["full"].estimate == 100.0
    assert auroc["emap"].estimate == auroc["image_only"].estimate == auroc["text_only"].estimate == 50.0
    assert torch.allclose(result.logits["emap"], torch.zeros(16, 2, dtype=torch.float64), atol=1e-12)
    assert result.shares["auroc"].estimate == pytest.approx(100.0)
    assert result.differences["auroc"]["drop/text_blank"].estimate == 50.0  # "" is "minus": constant
    # shuffles are read off the grid at a derangement: no item keeps its own image or text
    full, shuffled = result.logits["full"], result.logits["image_shuffle"]
    assert result.chance == {"auroc": 50.0, "accuracy": 50.0}
    assert not torch.equal(full, shuffled)


def _text_only_classifier(tokenizer):
    """flava-tiny (one layer per stack, 64 wide) + a linear head, trained 60 steps on memes-like texts
    with label = "the text says 'no'", each training image blanked (half the batch) or an
    unrelated shapes scene (the other half): the image carries nothing about the label."""
    from flava_zoo import create_model
    from flava_zoo.data.shapes import ShapesMemes, ShapesWorld
    from flava_zoo.models.heads import ClassificationHead
    from flava_zoo.transforms import image_transform

    torch.manual_seed(0)
    world, transform = ShapesWorld(seed=0, image_size=64), image_transform(64)
    train = ShapesMemes(world, "train")
    texts = [train.annotation(i)["text"] for i in range(512)]
    labels = torch.tensor([int("no" in t.split()) for t in texts])
    scenes = torch.stack([transform(world.image("train", 1000 + i)) for i in range(64)])
    blank = transform(I.blank_image(64))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = create_model(
                "flava-tiny", text__vocab_size=tokenizer.vocab_size, projection_dim=64,
                **{f"{part}__{key}": value for part in ("image", "text", "multimodal")
                   for key, value in (("num_layers", 1), ("hidden_size", 64), ("intermediate_size", 128))},
            )  # fmt: skip
            self.head = ClassificationHead(64, 2, dropout=0.0)

        def forward(self, batch):
            m = self.backbone
            image = m.encode_image(batch["pixel_values"])
            return self.head(m.fuse(image, m.encode_text(batch["input_ids"], batch["attention_mask"])).cls)

    net = Net()
    enc = tokenizer(texts, max_length=40)
    opt = torch.optim.AdamW(net.parameters(), 2e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(60):
        idx = torch.randint(0, len(texts), (32,), generator=gen)
        pixels = scenes[torch.randint(0, len(scenes), (32,), generator=gen)]
        pixels[:16] = blank
        batch = {"pixel_values": pixels, "input_ids": enc["input_ids"][idx], "attention_mask": enc["attention_mask"][idx]}
        loss = nn.functional.cross_entropy(net(batch), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    clf = Classifier(forward=net, tokenizer=tokenizer, transform=transform, label_names=["other", "negation"])
    return clf, world


def test_a_text_only_label_has_no_interaction_and_ignores_image_ablation(shapes_tokenizer):
    from flava_zoo.data.shapes import ShapesMemes

    clf, world = _text_only_classifier(shapes_tokenizer)
    test = ShapesMemes(world, "test")
    items = [test[i] for i in range(24)]
    images, texts = [x["image"] for x in items], [x["text"] for x in items]
    labels = [int("no" in t.split()) for t in texts]
    assert 0 < sum(labels) < 24
    grid = I.classifier_grid(clf, images, texts, batch_size=64)
    result = I.measure(clf.logits, images, texts, labels, (I.ACCURACY,), seed=0, grid=grid)
    acc, diffs = result.scores["accuracy"], result.differences["accuracy"]
    assert acc["full"].estimate >= 95.0  # it learned the text rule
    # Tolerance: one item of 24 (4.2 points) for every comparison below.
    tol = 100 / 24 + 1e-9
    assert abs(diffs["interaction_gap"].estimate) <= tol
    assert abs(result.shares["accuracy"].estimate) <= 100 * tol / (acc["full"].estimate - result.chance["accuracy"])
    assert abs(diffs["drop/image_blank"].estimate) <= tol and abs(diffs["drop/image_shuffle"].estimate) <= tol
    assert diffs["drop/text_shuffle"].estimate >= 15.0  # while the text matters
    # the logits themselves: images move them by far less than texts do
    assert grid.std(0).mean() < 0.01 * grid.std(1).mean()


def _colour_claims(world, split: str, n: int, seed: int):
    """Memes-like items restricted to existence claims by colour: "there is a red star" is
    true (label 1) iff some object in the scene is red; false claims name a colour absent
    from the scene, true ones an object's colour (half each). Neither the text nor the
    image alone gives the label."""
    rng = random.Random(seed)
    images, texts, labels = [], [], []
    for k in range(n):
        scene = world.scene(split, k)
        present = {o.colour for o in scene.objects}
        if rng.random() < 0.5:
            colour, label = rng.choice(scene.objects).colour, 1
        else:
            colour, label = rng.choice([c for c in world.COLOURS if c not in present]), 0
        images.append(world.render(scene))
        texts.append(f"there is a {colour} {rng.choice(world.SHAPES)}")
        labels.append(label)
    return images, texts, np.array(labels)


class _Bilinear(nn.Module):
    """Per-pixel colour detectors max-pooled over the image (``v``), a bag of word vectors
    for the text (``u``), logit ``<u, v>``: a model that can only learn the task through the
    product of the two modalities."""

    def __init__(self, vocab: int, hidden: int = 16, k: int = 8):
        super().__init__()
        self.pixel = nn.Sequential(nn.Linear(3, hidden), nn.ReLU(), nn.Linear(hidden, k))
        self.words = nn.Embedding(vocab, k)
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, batch):
        v = self.pixel(batch["pixel_values"].flatten(2).transpose(1, 2)).amax(1)
        keep = batch["attention_mask"].float()[..., None]
        u = (self.words(batch["input_ids"]) * keep).sum(1) / keep.sum(1)
        logit = (u * v).sum(-1) + self.bias
        return torch.stack([-logit / 2, logit / 2], -1)


def test_a_model_that_learned_the_memes_like_task_scores_clearly_above_its_emap(shapes_tokenizer):
    from flava_zoo.data.shapes import ShapesWorld
    from flava_zoo.transforms import image_transform

    world, transform = ShapesWorld(seed=0, image_size=24), image_transform(24)
    images, texts, labels = _colour_claims(world, "train", 600, seed=0)
    pixels = torch.stack([transform(im) for im in images])
    enc, targets = shapes_tokenizer(texts, max_length=40), torch.as_tensor(labels)
    torch.manual_seed(0)
    model = _Bilinear(shapes_tokenizer.vocab_size)
    opt = torch.optim.Adam(model.parameters(), 2e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        idx = torch.randint(0, len(images), (32,), generator=gen)
        batch = {"pixel_values": pixels[idx], "input_ids": enc["input_ids"][idx], "attention_mask": enc["attention_mask"][idx]}
        loss = nn.functional.cross_entropy(model(batch), targets[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    clf = Classifier(forward=model, tokenizer=shapes_tokenizer, transform=transform, label_names=["false", "true"])
    images, texts, labels = _colour_claims(world, "test", 64, seed=1)
    grid = I.classifier_grid(clf, images, texts)
    result = I.measure(clf.logits, images, texts, labels, (I.AUROC,), seed=0, grid=grid)
    auroc, gap = result.scores["auroc"], result.differences["auroc"]["interaction_gap"]
    assert auroc["full"].estimate >= 80.0  # it learned the task
    assert gap.estimate >= 20.0 and gap.low > 10.0  # and EMAP loses a clear part of it
    assert result.shares["auroc"].estimate >= 50.0 and result.shares["auroc"].low > 25.0
    assert auroc["image_shuffle"].estimate < auroc["full"].low and auroc["text_shuffle"].estimate < auroc["full"].low


def test_cli_on_a_memes_checkpoint_and_the_tower_cache(memes_checkpoint, random_export, tmp_path, capsys):
    from flava_zoo.cli import main
    from flava_zoo.data.shapes import ShapesMemes, ShapesWorld

    out = tmp_path / "probe"
    args = ["probe", "interactions", "--model", str(random_export), "--n", "8", "--out", str(out), "--quiet"]
    assert main(args) == 1
    assert "needs a fine-tuned classifier" in capsys.readouterr().err
    assert main([*args, "--classifier", str(memes_checkpoint)]) == 0
    records = {r.metric: r for r in read_results(out / "results.jsonl")}
    for cond in ("full", "emap", "image_only", "text_only", *I.ABLATIONS):
        for metric in ("auroc", "accuracy"):
            assert np.isfinite(records[f"{cond}/{metric}"].value) and records[f"{cond}/{metric}"].interval
    assert records["chance/full/auroc"].value == 50.0
    assert records["chance/full/accuracy"].value == 62.5  # 5 of the first 8 test claims are false
    full = records["full/auroc"]
    assert full.task == "probe/interactions" and full.split == "test" and full.num_samples == 8
    assert full.hyperparameters["fusion_passes"] == 64 and full.hyperparameters["tower_cache"] is True
    # the share is written only when full is above chance beyond its interval
    assert ("interaction_share/auroc" in records) == (full.interval["low"] > 50.0)
    assert records["interaction_gap/auroc"].value == pytest.approx(full.value - records["emap/auroc"].value)
    assert len(list((out / "figures").glob("*/interactions_auroc.png"))) == 1
    # the tower cache gives the logits of the whole classifier, pair by pair
    clf = load_classifier(memes_checkpoint)
    test = ShapesMemes(ShapesWorld(seed=0, image_size=64), "test")
    images, texts = [test[i]["image"] for i in range(3)], [test[i]["text"] for i in range(3)]
    cached = I.classifier_grid(clf, images, texts, batch_size=4)
    whole = I.classifier_grid(clf, images, texts, batch_size=4, cache_towers=False)
    by_pair = I.logit_grid(clf.logits, images, texts, batch_size=2)
    assert torch.allclose(cached, by_pair, atol=1e-4) and torch.allclose(whole, by_pair, atol=1e-4)


def test_clear_errors_for_a_wrong_classifier_and_too_few_items(tmp_path):
    from flava_zoo.data.shapes import ShapesWorld
    from flava_zoo.probes.common import ProbeContext, ProbeError, ProbeWriter

    writer = ProbeWriter(tmp_path / "r.jsonl", tmp_path / "figures", "m", "x")

    def ctx(**fields):
        clf = Classifier(forward=lambda b: torch.zeros(1, 2), tokenizer=None, transform=None, label_names=["a", "b"], **fields)
        return ProbeContext(model=None, world=ShapesWorld(), writer=writer, classifier=clf, n=4)

    with pytest.raises(ProbeError, match="trained on shapes/vqa or shapes/memes"):
        I.run(ctx(task="glue/sst2"), None)
    with pytest.raises(ProbeError, match="reads text inputs only"):
        I.run(ctx(task="shapes/memes", inputs="text"), None)
    with pytest.raises(ProbeError, match="has no label 'false'"):
        I.run(ctx(task="shapes/memes"), None)
    with pytest.raises(ProbeError, match="at least 2 items"):
        I.measure(lambda ims, txs: torch.zeros(len(ims), 2), [_solid(1, 0)], ["plus"], [1])
    assert not (tmp_path / "r.jsonl").exists()


def test_a_late_fusion_classifier_runs_without_the_tower_cache(shapes_tokenizer):
    from flava_zoo.downstream import FinetuneModule
    from flava_zoo.transforms import image_transform

    def wrap(module):
        return Classifier(forward=module.forward, tokenizer=shapes_tokenizer, transform=image_transform(64),
                          label_names=["false", "true"], task="shapes/memes")  # fmt: skip

    size = {"text__vocab_size": shapes_tokenizer.vocab_size}
    fused = FinetuneModule(model="flava-tiny", model_overrides=size, inputs="multimodal", num_classes=2)
    late = FinetuneModule(model="flava-tiny", model_overrides=size, inputs="multimodal", num_classes=2,
                          late_fusion=True, head_hidden=16)  # fmt: skip
    assert I._fused_module(wrap(fused)) is fused.eval()
    assert I._fused_module(wrap(late.eval())) is None  # its head reads [u; v; u*v], not the fusion token
