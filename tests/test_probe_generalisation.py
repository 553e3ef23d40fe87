"""The generalisation probes: compositional (seen vs held-out combinations), memorisation
(nearest training neighbour against correctness) and winoground (swapped 2x2 items)."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from flava_zoo.data.shapes import ShapesVQA, ShapesWorld, relation
from flava_zoo.evaluation.results import read_results
from flava_zoo.evaluation.retrieval import retrieval_recall
from flava_zoo.probes import run_probe
from flava_zoo.probes.common import Classifier, ProbeContext, ProbeError, ProbeWriter
from flava_zoo.probes.compositional import retrieval_hits, vqa_chance
from flava_zoo.probes.memorisation import memorisation_measures, memorisation_probe
from flava_zoo.probes.winoground import read_jsonl, shapes_items, swap, winoground_scores
from flava_zoo.stats import bootstrap_interval, unpaired_bootstrap

ONE_THREAD = True


@pytest.fixture(scope="module")
def random_model(random_export):
    """The random flava-tiny export as an InferenceModel, loaded once."""
    from flava_zoo.inference import load_inference_model

    return load_inference_model(str(random_export), device="cpu")


def _ctx(model, tmp_path, classifier=None, n=None) -> ProbeContext:
    writer = ProbeWriter(tmp_path / "results.jsonl", tmp_path / "figures", "random", "export:random")
    return ProbeContext(model=model, world=ShapesWorld(image_size=64), writer=writer, classifier=classifier, n=n, seed=0)


def _by_metric(records, split=None):
    return {r.metric: r for r in records if split is None or r.split == split}


def _near_chance(record, chance, n):
    """Within 3.5 binomial standard deviations (plus a point) of ``chance`` percent."""
    p = chance / 100
    return abs(record.value - chance) <= 350 * math.sqrt(p * (1 - p) / n) + 1.0


# ------------------------------------------------------------------------ compositional
def test_retrieval_hits_and_the_unpaired_interval():
    sim = torch.randn(30, 30)
    sim[torch.arange(10), torch.arange(10)] += 10.0  # the first ten are hits at 1
    ref = retrieval_recall(sim, ks=(1, 5))
    for k in (1, 5):
        hits = retrieval_hits(sim, k)
        assert hits["image_to_text"].mean() * 100 == pytest.approx(ref[f"image_to_text_R@{k}"])
        assert hits["text_to_image"].mean() * 100 == pytest.approx(ref[f"text_to_image_R@{k}"])
    assert retrieval_hits(sim, 1)["image_to_text"][:10].all()
    rng = np.random.default_rng(0)
    a, b = rng.random(400) < 0.7, rng.random(300) < 0.4  # a true gap of 30 points
    iv = unpaired_bootstrap(a * 100.0, b * 100.0, seed=0)
    assert iv.estimate == pytest.approx(a.mean() * 100 - b.mean() * 100)
    assert 15 < iv.low < 30 < iv.high < 45 and iv.n == 700
    same = unpaired_bootstrap(rng.random(300) < 0.5, rng.random(300) < 0.5, seed=0)
    assert same.low < 0 < same.high
    assert vqa_chance(["exists", "colour"]) == pytest.approx((50 + 100 / 7) / 2)


def test_compositional_random_model_sits_at_chance_with_no_gap(random_export, tmp_path):
    n = 60
    records = run_probe("compositional", str(random_export), n=n, out=str(tmp_path), parts="retrieval,classification")
    chance = {(r.split, r.metric[len("chance/"):]): r.value for r in records if r.metric.startswith("chance/")}
    metrics = ["image_to_text_R@1", "text_to_image_R@1", "image_to_text_R@5", "text_to_image_R@5",
               "shape_accuracy", "colour_accuracy"]  # fmt: skip
    for split in ("test", "test_novel"):
        got = _by_metric(records, split)
        assert sorted(got) == sorted(metrics + [f"chance/{m}" for m in metrics])
        assert chance[(split, "image_to_text_R@1")] == pytest.approx(100 / n)
        assert chance[(split, "image_to_text_R@5")] == pytest.approx(500 / n)
        assert chance[(split, "shape_accuracy")] == pytest.approx(100 / 6)
        assert chance[(split, "colour_accuracy")] == pytest.approx(100 / 7)
        for m in metrics:
            assert _near_chance(got[m], chance[(split, m)], n), (split, m, got[m].value)
            assert got[m].interval["low"] <= got[m].value <= got[m].interval["high"]
    gaps = _by_metric(records, "test_vs_test_novel")
    for m in metrics:
        gap = gaps[f"gap/{m}"]
        assert gap.value == pytest.approx(_by_metric(records, "test")[m].value - _by_metric(records, "test_novel")[m].value)
        assert gap.interval["low"] <= 0 <= gap.interval["high"], (m, gap.interval)
        assert gaps[f"chance/gap/{m}"].value == 0
    figures = [json.loads(x) for x in (tmp_path / "figures.jsonl").read_text().splitlines()]
    assert [f["figure"] for f in figures] == ["splits"] and (tmp_path / figures[0]["path"]).is_file()


def test_compositional_vqa_scores_a_classifier_exactly(random_model, tmp_path):
    """A classifier that always answers "yes" scores the share of "yes" answers on each split."""
    import argparse

    from flava_zoo.probes import compositional

    world = ShapesWorld(image_size=64)
    labels = ShapesVQA(world, "test").answer_vocabulary()

    def always_yes(batch):
        logits = torch.zeros(batch["pixel_values"].shape[0], len(labels))
        logits[:, labels.index("yes")] = 1.0
        return logits

    clf = Classifier(always_yes, random_model.tokenizer, random_model.transform, labels, task="shapes/vqa")
    n = 40
    records = compositional.run(_ctx(random_model, tmp_path, clf, n), argparse.Namespace(parts="vqa"))
    expected = {}
    for split in ("test", "test_novel"):
        notes = [ShapesVQA(world, split).annotation(i) for i in range(n)]
        expected[split] = 100 * np.mean([a["answer"] == "yes" for a in notes])
        got = _by_metric(records, split)
        assert got["vqa_accuracy"].value == pytest.approx(expected[split])
        assert got["chance/vqa_accuracy"].value == pytest.approx(vqa_chance([a["question_type"] for a in notes]))
    assert 0 < expected["test"] < 50
    gap = _by_metric(records, "test_vs_test_novel")["gap/vqa_accuracy"]
    assert gap.value == pytest.approx(expected["test"] - expected["test_novel"])
    clf.task = "shapes/memes"
    with pytest.raises(ProbeError, match="needs a classifier trained on shapes/vqa"):
        compositional.run(_ctx(random_model, tmp_path, clf, n), argparse.Namespace(parts="vqa"))


def test_compositional_refuses_bad_options(random_export, tmp_path):
    with pytest.raises(ProbeError, match="--parts: unknown part 'nope'"):
        run_probe("compositional", str(random_export), n=4, out=str(tmp_path), parts="retrieval,nope")
    with pytest.raises(ProbeError, match="--n 5000 is more than split test"):
        run_probe("compositional", str(random_export), n=5000, out=str(tmp_path))


# --------------------------------------------------------------------------- winoground
def test_winoground_scores_follow_thrush_et_al():
    right = np.array([[[0.9, 0.1], [0.2, 0.8]]])
    text_only = np.array([[[0.9, 0.95], [0.2, 0.99]]])  # each image picks its caption; caption 1 picks image 1 always
    caption_bias = np.array([[[0.9, 0.9], [0.1, 0.1]]])  # caption 0 always wins: text fails, image ties fail
    out = winoground_scores(np.concatenate([right, text_only, caption_bias]))
    assert out["text_score"].tolist() == [1, 1, 0]
    assert out["image_score"].tolist() == [1, 0, 0]
    assert out["group_score"].tolist() == [1, 0, 0]
    noise = winoground_scores(np.random.default_rng(0).random((6000, 2, 2)))
    assert noise["text_score"].mean() == pytest.approx(0.25, abs=0.02)
    assert noise["image_score"].mean() == pytest.approx(0.25, abs=0.02)
    assert noise["group_score"].mean() == pytest.approx(1 / 6, abs=0.02)
    with pytest.raises(ValueError, match="2 captions, 2 images"):
        winoground_scores(np.zeros((3, 2)))


def test_winoground_swaps_exchange_words_and_pixels():
    world = ShapesWorld(image_size=64)
    for kind in ("colour", "shape", "relation"):
        (item,) = shapes_items(world, kind, 1)
        assert sorted(item.caption_0.split()) == sorted(item.caption_1.split()) and item.caption_0 != item.caption_1
        assert np.abs(np.asarray(item.image_0, dtype=int) - np.asarray(item.image_1, dtype=int)).max() > 100
    scene = world.scene("test", next(i for i in range(50) if len(world.scene("test", i).objects) == 2))
    a, b = scene.objects
    c0, c1, swapped = swap(scene, 0, 1, "relation")
    assert (swapped.objects[0].x, swapped.objects[1].y) == (b.x, a.y)
    rel = relation(a, b)
    first, second = c0.split(f" {rel} ")
    assert c1 == f"{second} {rel} {first}" and a.colour in first and b.shape in second
    c0, c1, swapped = swap(scene, 0, 1, "colour")
    assert [o.colour for o in swapped.objects] == [b.colour, a.colour] and c1.count(b.colour) == 1
    same_colour = replace(scene, objects=(a, replace(b, colour=a.colour)))
    assert swap(same_colour, 0, 1, "colour") is None
    assert swap(scene, 0, 1, "shape", heldout=frozenset({(a.colour, b.shape)})) is None


def test_winoground_random_model_is_not_above_chance(random_export, tmp_path):
    records = run_probe("winoground", str(random_export), n=16, out=str(tmp_path))
    got = _by_metric(records)
    for scorer in ("itm", "cosine"):
        for score, chance in (("text_score", 25.0), ("image_score", 25.0), ("group_score", 100 / 6)):
            for group in ("all", "colour_swap", "shape_swap", "relation_swap"):
                r = got[f"{group}/{scorer}_{score}"]
                assert got[f"chance/{group}/{scorer}_{score}"].value == pytest.approx(chance)
                assert r.interval["low"] <= chance, (group, scorer, score, r.value, r.interval)
    assert got["all/cosine_text_score"].num_samples == 48 and got["colour_swap/itm_group_score"].num_samples == 16


def _write_items(tmp_path, lines):
    world = ShapesWorld(image_size=64)
    (tmp_path / "images").mkdir(exist_ok=True)
    for k in range(4):
        world.image("test", k).save(tmp_path / "images" / f"ex_{k // 2}_img_{k % 2}.png")
    path = tmp_path / "examples.jsonl"
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def test_winoground_user_jsonl_and_its_errors(random_export, tmp_path, capsys):
    world = ShapesWorld(image_size=64)
    rows = [
        {"id": 0, "caption_0": world.caption("test", 0), "caption_1": world.caption("test", 1),
         "image_0": "ex_0_img_0", "image_1": "ex_0_img_1", "tag": "Object"},
        {"id": 1, "caption_0": world.caption("test", 2), "caption_1": world.caption("test", 3),
         "image_0": "images/ex_1_img_0.png", "image_1": "images/ex_1_img_1.png", "tag": "Relation"},
    ]  # fmt: skip
    path = _write_items(tmp_path, rows)
    items = read_jsonl(path)
    assert [it.id for it in items] == ["0", "1"] and items[0].image_0.size == (64, 64)
    records = run_probe("winoground", str(random_export), jsonl=str(path), scorers="cosine", out=str(tmp_path / "out"))
    got = _by_metric(records)
    assert {r.split for r in records} == {"examples.jsonl"}
    assert {"all/cosine_group_score", "tag=Object/cosine_text_score", "tag=Relation/cosine_image_score"} <= set(got)
    assert not any("itm" in m for m in got) and got["all/cosine_text_score"].num_samples == 2
    (figure,) = [json.loads(x) for x in (tmp_path / "out" / "figures.jsonl").read_text().splitlines()]
    assert figure["figure"] == "scores_examples.jsonl" and (tmp_path / "out" / figure["path"]).is_file()
    for bad, message in [
        ({**rows[0], "caption_1": ""}, "examples.jsonl:2: field 'caption_1' is empty"),
        ({k: v for k, v in rows[0].items() if k != "image_1"}, "examples.jsonl:2: field 'image_1' is missing"),
        ({**rows[0], "image_0": "ex_9_img_0"}, "examples.jsonl:2: field 'image_0': no image 'ex_9_img_0'"),
        ({**rows[0], "caption_0": 3}, "examples.jsonl:2: field 'caption_0' must be a string"),
        ("{not json", "examples.jsonl:2: not JSON"),
        ([1, 2], "examples.jsonl:2: a line must be a JSON object"),
    ]:
        with pytest.raises(ProbeError, match=message):
            read_jsonl(_write_items(tmp_path, [rows[0], bad]))
    from flava_zoo.cli import main

    common = ["probe", "winoground", "--model", str(random_export), "--out", str(tmp_path / "cli")]
    assert main([*common, "--jsonl", str(tmp_path / "nope.jsonl")]) == 1
    assert "--jsonl " in capsys.readouterr().err
    assert main([*common, "--kinds", "colour,size"]) == 1
    assert "--kinds: unknown value 'size'" in capsys.readouterr().err


# ------------------------------------------------------------------------- memorisation
def _memoriser(world, scenes, labels, classes):
    """A linear classifier on 16x16 pixels fitted to ``labels`` of ``scenes`` until it is
    right on all of them: it can only memorise (the labels are random)."""
    torch.manual_seed(0)

    def features(images):
        x = torch.stack([torch.from_numpy(np.asarray(im.resize((16, 16)), dtype=np.float32)) for im in images])
        return x.reshape(len(images), -1) / 255.0 - 0.5

    x, y = features([world.render(s) for s in scenes]), torch.tensor(labels)
    net = torch.nn.Linear(x.shape[1], classes)
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    with torch.no_grad():
        assert (net(x).argmax(1) == y).all()
    return lambda images: net(features(images)).argmax(1).numpy()


def test_memorisation_shows_the_gap_between_near_duplicates_and_novel_scenes(random_model, tmp_path):
    world = ShapesWorld(image_size=64)
    rng = np.random.default_rng(0)
    train = [world.scene("train", i) for i in range(32)]
    labels = rng.integers(0, 4, size=len(train)).tolist()  # a random function of the scene: only memorisable
    predict = _memoriser(world, train, labels, 4)

    def jitter(scene):
        moved = [replace(o, x=float(np.clip(o.x + rng.uniform(-0.015, 0.015), o.radius, 1 - o.radius)),
                         y=float(np.clip(o.y + rng.uniform(-0.015, 0.015), o.radius, 1 - o.radius)))
                 for o in scene.objects]  # fmt: skip
        return replace(scene, objects=tuple(moved))

    near = [jitter(s) for s in train]
    novel = [world.scene("test", i) for i in range(32)]
    truth = labels + rng.integers(0, 4, size=len(novel)).tolist()
    test = near + novel

    def scorer(scenes, images):
        return predict(images) == np.array(truth)

    result = memorisation_probe(_ctx(random_model, tmp_path), train, test, scorer, chance=25.0, split="near_vs_novel")
    assert result.correct[:32].mean() >= 0.9 and result.correct[32:].mean() <= 0.5
    assert (result.neighbour[:32] == np.arange(32)).mean() >= 0.9  # each near-duplicate's neighbour is its source
    assert result.similarity[:32].mean() > result.similarity[32:].mean()
    m = result.measures
    assert m["accuracy_top_half"].value > m["accuracy_bottom_half"].value + 30
    assert m["gap/top_minus_bottom"].interval.low > 0
    assert m["spearman_x100"].interval.low > 0 and m["point_biserial_x100"].value > 0
    written = {r.metric: r for r in read_results(tmp_path / "results.jsonl")}
    assert written["gap/top_minus_bottom"].split == "near_vs_novel" and written["chance/accuracy"].value == 25.0
    assert written["spearman_x100"].unit == "1"
    assert (tmp_path / "figures" / "random" / "memorisation_nn_similarity_near_vs_novel.png").is_file()


def test_memorisation_measures_without_a_relation_and_the_cli(random_export, tmp_path):
    rng = np.random.default_rng(1)
    sim, correct = rng.random(400), rng.random(400) < 0.5
    m = memorisation_measures(sim, correct, 50.0)
    assert m["gap/top_minus_bottom"].interval.low < 0 < m["gap/top_minus_bottom"].interval.high
    assert m["spearman_x100"].interval.low < 0 < m["spearman_x100"].interval.high
    assert "spearman_x100" not in memorisation_measures(sim, np.ones(400), 50.0)  # undefined: every item right
    four_right = np.r_[np.ones(4), np.zeros(396)]
    assert "point_biserial_x100" not in memorisation_measures(sim, four_right, 50.0)  # too few to bootstrap
    assert "point_biserial_x100" in memorisation_measures(sim, np.r_[np.ones(5), np.zeros(395)], 50.0)
    from scipy import stats

    x, y = sim[:50], (sim[:50] + rng.random(50) > 1.0).astype(float)
    vectorised = memorisation_measures(x, y, 50.0)["point_biserial_x100"]
    reference = bootstrap_interval(np.stack([x, y], 1), lambda r: stats.pearsonr(r[:, 0], r[:, 1]).statistic * 100)
    assert (vectorised.value, vectorised.interval.low, vectorised.interval.high) == pytest.approx(
        (reference.estimate, reference.low, reference.high))
    records = run_probe("memorisation", str(random_export), n=24, train_size=40, out=str(tmp_path))
    got = _by_metric(records)
    assert got["chance/accuracy"].value == pytest.approx(100 / 24)
    assert got["accuracy"].num_samples == 24 and records[0].hyperparameters["train_size"] == 40
    assert _near_chance(got["accuracy"], 100 / 24, 24)
    assert -1 <= got["nn_similarity_mean"].value <= 1
    with pytest.raises(ProbeError, match="--train-size must be at least 1"):
        run_probe("memorisation", str(random_export), n=24, train_size=0, out=str(tmp_path))
