"""The representation probes: ``embeddings`` (clusters, alignment, uniformity, modality gap)
and ``grounding`` (2 vs 2 probe of attribute words), on embeddings whose answer is known
and as command-line smokes on the random flava-tiny export."""

from __future__ import annotations

import itertools
import json
import math
import re

import numpy as np
import pytest

from flava_zoo.data.shapes import ShapesWorld
from flava_zoo.evaluation.results import read_results
from flava_zoo.probes import embeddings as E
from flava_zoo.probes import grounding as G
from flava_zoo.probes.common import ProbeContext, ProbeWriter

ONE_THREAD = True


def _onehot(codes, k, rng, noise=0.05):
    return np.eye(k)[codes] * 3.0 + noise * rng.normal(size=(len(codes), k))


# --------------------------------------------------------------------------- embeddings
def test_vectorised_nmi_and_ari_equal_scikit_learn():
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 80)
    assign = np.where(rng.random(80) < 0.6, labels, rng.integers(0, 4, 80))
    picks = np.vstack([np.arange(80), rng.integers(0, 80, (6, 80)), np.zeros((1, 80), int)])
    nmi, ari = E.bootstrap_cluster_scores(assign, labels, picks)
    for p, got_nmi, got_ari in zip(picks, nmi, ari):
        assert got_nmi == pytest.approx(100 * normalized_mutual_info_score(labels[p], assign[p]), abs=1e-9)
        assert got_ari == pytest.approx(100 * adjusted_rand_score(labels[p], assign[p]), abs=1e-9)
    assert nmi[-1] == 100.0 and ari[-1] == 100.0  # one item repeated: one class each, as scikit-learn


def test_clusters_by_shape_score_100_for_shape_and_near_chance_for_colour():
    rng = np.random.default_rng(1)
    shape, colour = rng.integers(0, 6, 150), rng.integers(0, 7, 150)
    emb = _onehot(shape, 6, rng)
    by_shape = E.clustering_measures(emb, shape, n_init=2, seed=0, name="image/shape")
    by_colour = E.clustering_measures(emb, colour, n_init=2, seed=0, name="image/colour")
    nmi, ari = by_shape["nmi/image/shape"], by_shape["ari/image/shape"]
    assert nmi.value == pytest.approx(100) and ari.value == pytest.approx(100)
    assert nmi.interval.low == pytest.approx(100) and abs(nmi.chance) < 5 and abs(ari.chance) < 3
    assert by_colour["nmi/image/colour"].value < 10 and abs(by_colour["ari/image/colour"].value) < 5


def test_uninformative_embeddings_score_at_their_measured_chance():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 6, 300)
    m = E.clustering_measures(rng.normal(size=(300, 16)), labels, n_init=1, seed=0, name="x")
    nmi, ari = m["nmi/x"], m["ari/x"]
    assert 0 < nmi.chance < 5 and abs(nmi.value - nmi.chance) < 3
    assert nmi.interval.method == "bootstrap_debiased" and nmi.interval.low <= nmi.value <= nmi.interval.high
    assert abs(ari.value) < 3 and abs(ari.chance) < 1


def test_debiased_interval_keeps_the_spread_around_the_estimate():
    rng = np.random.default_rng(6)
    resampled = 3.0 + rng.normal(size=4000)  # resamples running 2 above an estimate of 1
    iv = E.debiased_interval(1.0, resampled, 50)
    expected = np.quantile(resampled - resampled.mean() + 1.0, [0.025, 0.975])
    assert (iv.low, iv.high) == pytest.approx(tuple(expected)) and iv.low < 1.0 < iv.high
    assert iv.method == "bootstrap_debiased" and iv.n == 50 and iv.resamples == 4000
    assert E.debiased_interval(1.0, resampled, 50, bounds=(0.0, 100.0)).low == 0.0


def test_alignment_uniformity_and_gap_on_known_geometry():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1500, 3))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    assert np.all(E.alignment(x, x) == 0)
    # uniform on S^2: x.y is uniform on [-1, 1], so E exp(-2 |x-y|^2) = e^-4 sinh(4) / 4
    assert E.uniformity(x) == pytest.approx(math.log((1 - math.exp(-8)) / 8), abs=0.03)
    assert E.uniformity(np.repeat(x[:1], 10, 0)) == pytest.approx(0.0)
    shift = np.array([0.3, -0.4, 0.0])
    assert E.modality_gap(x, x + shift) == pytest.approx(0.5)
    assert E.alignment(x, x + shift) == pytest.approx(np.full(1500, 0.25))
    m = E.geometry_measures(x[:200], x[:200], seed=0)
    assert m["alignment"].value == 0 and m["modality_gap"].value == pytest.approx(0, abs=1e-12)
    uni = m["uniformity/image"]
    assert uni.unit == "1" and uni.interval.low < uni.value < uni.interval.high and uni.chance is None
    weights = np.ones((1, 200))
    assert E.uniformity(x[:200], weights)[0] == pytest.approx(uni.value)


def test_run_clusters_the_items_with_their_own_labels(tmp_path, monkeypatch):
    """A fake model whose image embedding is the caption's shape and whose text embedding is
    its colour: run() must pair each item with its own labels."""
    world = ShapesWorld()
    rng = np.random.default_rng(4)

    def fake(ctx, images, texts):
        def code(names, text):
            return next(k for k, name in enumerate(names) if re.search(rf"\b{name}\b", text))

        shapes = [code(world.SHAPES, t) for t in texts]
        colours = [code(world.COLOURS, t) for t in texts]
        return {"image": _onehot(shapes, 7, rng), "text": _onehot(colours, 7, rng)}

    monkeypatch.setattr(E, "embed_sets", fake)
    writer = ProbeWriter(tmp_path / "results.jsonl", tmp_path / "figures", "fake", "fake")
    ctx = ProbeContext(model=None, world=world, writer=writer, n=90, seed=0)
    records = E.run(ctx, type("Args", (), {"n_init": 1})())
    value = {r.metric: r.value for r in records}
    assert value["nmi/image/shape"] == pytest.approx(100) and value["nmi/text/colour"] == pytest.approx(100)
    for crossed in ("nmi/image/colour", "nmi/text/shape"):  # independent of the other attribute
        assert value[crossed] - value[f"chance/{crossed}"] < 12, (crossed, value[crossed], value[f"chance/{crossed}"])
    assert "nmi/fused/shape" not in value and value["alignment"] > 0
    figures = [json.loads(x)["figure"] for x in (tmp_path / "figures.jsonl").read_text().splitlines()]
    assert figures == ["clusters", "pca"]


def test_embeddings_cli_on_the_random_export(random_export, tmp_path, capsys):
    from flava_zoo.cli import main

    out = tmp_path / "out"
    args = ["probe", "embeddings", "--model", str(random_export), "--n", "40", "--n-init", "1",
            "--out", str(out), "--quiet", "--label", "random"]  # fmt: skip
    assert main(args) == 0
    records = read_results(out / "results.jsonl")
    metrics = {r.metric: r for r in records}
    expected = {f"{s}/{m}/{a}" for s in ("nmi", "ari") for m in E.MODALITIES for a in E.ATTRIBUTES}
    expected |= {"alignment", "uniformity/image", "uniformity/text", "modality_gap"}
    assert expected <= set(metrics) and {f"chance/{x}" for x in expected if x[:3] in ("nmi", "ari")} <= set(metrics)
    assert "chance/alignment" not in metrics and metrics["modality_gap"].unit == "1"
    assert all(r.task == "probe/embeddings" and r.num_samples == 40 for r in records)
    assert 0 <= metrics["alignment"].value <= 4 and metrics["uniformity/text"].value <= 0
    assert (out / "figures" / "random" / "embeddings_pca.png").is_file()
    assert main(["probe", "embeddings", "--model", str(random_export), "--n", "5", "--out", str(out)]) == 1
    assert "at least 10 items" in capsys.readouterr().err


# ---------------------------------------------------------------------------- grounding
def test_visual_targets_are_measured_from_the_renderings():
    world = ShapesWorld()
    colours = G.visual_targets(world, "colour")
    assert list(colours) == list(world.COLOURS)
    assert np.argmax(colours["red"]) == 0 and np.argmax(colours["green"]) == 1 and np.argmax(colours["blue"]) == 2
    shapes = G.visual_targets(world, "shape")
    assert all(v.shape == (G.SILHOUETTE_SIDE**2,) for v in shapes.values())
    distances = [np.abs(shapes[a] - shapes[b]).sum() for a, b in itertools.combinations(shapes, 2)]
    assert min(distances) > 1.0  # every silhouette differs, square and diamond included
    with pytest.raises(ValueError, match="unknown attribute 'size'"):
        G.visual_targets(world, "size")


def test_contexts_use_the_worlds_words_and_are_shared_by_every_word():
    world = ShapesWorld()
    vocabulary = set(world.vocabulary())
    for attribute, words in (("colour", world.COLOURS), ("shape", world.SHAPES)):
        templates = G.contexts(world, attribute, 12, seed=0)
        assert len(set(templates)) > 5 and templates == G.contexts(world, attribute, 12, seed=0)
        for before, after in templates:
            for word in words:
                assert set(re.findall(r"[a-z']+|[^\sa-z']", before + word + after)) <= vocabulary


def test_two_vs_two_on_known_features():
    world = ShapesWorld()
    targets = G.visual_targets(world, "colour")
    rng = np.random.default_rng(5)
    mix = rng.normal(size=(3, 32))
    grounded = {w: (v @ mix)[None] + 0.01 * rng.normal(size=(10, 32)) for w, v in targets.items()}
    scores = G.two_vs_two(grounded, targets, alpha=1.0)
    assert scores.shape == (21, 10) and scores.mean() == 100
    noise = {w: rng.normal(size=(30, 32)) for w in targets}
    assert 35 < G.two_vs_two(noise, targets, alpha=1.0).mean() < 65
    same = {w: np.ones((4, 8)) for w in targets}
    assert np.all(G.two_vs_two(same, targets, alpha=1.0) == 50)


def test_grounding_cli_compares_with_a_text_only_model(random_export, tmp_path, capsys):
    from flava_zoo.cli import main

    out = tmp_path / "out"
    args = ["probe", "grounding", "--model", str(random_export), "--label", "mm", "--n", "5",
            "--text-only", str(random_export), "--text-only-label", "txt", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(args) == 0
    records = read_results(out / "results.jsonl")
    by = {(r.model, r.metric): r for r in records}
    for attribute, pairs in (("colour", 21), ("shape", 15)):
        mm, txt = by[("mm", f"2v2/{attribute}")], by[("txt", f"2v2/{attribute}")]
        assert mm.value == txt.value and mm.num_samples == pairs and by[("mm", f"chance/2v2/{attribute}")].value == 50
        assert by[("mm", f"difference/{attribute}")].value == 0 and by[("mm", f"p_value/{attribute}")].value == 1
        assert txt.lineage["role"] == "text-only"
    assert (out / "figures" / "mm" / "grounding_2v2.png").is_file()
    bad = ["probe", "grounding", "--model", str(random_export), "--n", "2", "--text-only",
           str(tmp_path / "nowhere"), "--out", str(out), "--quiet"]  # fmt: skip
    assert main(bad) == 1
    assert "--text-only" in capsys.readouterr().err
