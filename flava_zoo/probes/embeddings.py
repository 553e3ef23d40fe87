"""Embedding geometry: do the towers' embeddings cluster by what the scene shows?

Three sets of embeddings: the contrastive image embedding (``.embedding``), the contrastive
text embedding of the scene's primary caption, and the fused embedding (the fusion
encoder's class token for the pair, L2-normalised; only for a model with fusion).

Clustering against attributes. k-means (scikit-learn, ``n_clusters`` = the number of
classes, ``--n-init`` restarts, ``random_state = --seed``) of each set, scored against the
ground truth with normalised mutual information (NMI, arithmetic mean of the entropies)
and the adjusted Rand index (ARI), both x100:

* ``shape`` and ``colour`` on N single-object scenes (ShapesClassification's test scenes,
  shapes drawn uniformly), so each image has one shape and one colour;
* ``count`` (1, 2 or 3 objects) on the first N scenes of the test split.

Metrics ``nmi/<modality>/<attribute>`` and ``ari/<modality>/<attribute>``. Their 95%
intervals resample the items with the clustering held fixed (1,000 resamples, NMI and ARI
of the resampled assignments against the resampled labels): they cover the sampling of
the items, not k-means restarts (re-clustering every resample costs 1,000 k-means runs per
number). Resampled NMI and ARI run high (an item drawn twice agrees with itself: the plain
percentile interval of a small NMI misses its own estimate), so the intervals are
percentile intervals of the resamples with their mean shift removed (``bootstrap_debiased``,
the same for the uniformity and the gap): the spread over item samples, around the estimate. Chance is measured: the mean NMI / ARI of the assignments against 20 random
permutations of the labels (about 0 for both).

Geometry (Wang & Isola, ICML 2020; Liang et al., NeurIPS 2022), on the first N test pairs
(image, primary caption), unit "1", intervals by the bootstrap over pairs, no chance level:

* ``alignment`` = mean over pairs of ||f(x) - g(y)||^2 (alpha = 2), f and g the normalised
  image and text embeddings: 0 when every image sits on its caption, at most 4;
* ``uniformity/<modality>`` = log of the mean over pairs of distinct items of
  exp(-2 ||f(x) - f(x')||^2): 0 when all collapse to one point, lower when spread
  (-2.08 for points uniform on the 2-sphere, towards -4 in high dimension);
* ``modality_gap`` = ||mean image embedding - mean text embedding||: 0 when the two clouds
  share a centre, at most 2.

Figures: NMI and ARI bars by attribute and modality with their intervals, and a 2-D PCA
map of the single-object image and text embeddings together, coloured by shape.

Cost: one forward pass per image and caption (and per pair for the fused set) of 2N items
and 9 k-means fits: about 40 s of CPU for flava-tiny at the default N = 500 on a 2-core
machine, imports included. Re-clustering on every resample instead would take 9,000
k-means fits (0.3 s each there at N = 500 with 4 restarts: some 45 minutes).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..stats import DEFAULT_RESAMPLES, Interval, bootstrap_interval
from .common import Measure, ProbeContext, ProbeError, pyplot, require

PROBE = "embeddings"
SUMMARY = "k-means NMI / ARI against attributes, alignment, uniformity, modality gap"
DEFAULT_N = 500
CHANCE_PERMUTATIONS = 20
ATTRIBUTES = ("shape", "colour", "count")
MODALITIES = ("image", "text", "fused")

__all__ = [
    "ATTRIBUTES",
    "MODALITIES",
    "add_arguments",
    "alignment",
    "debiased_interval",
    "bootstrap_cluster_scores",
    "cluster",
    "clustering_measures",
    "geometry_measures",
    "modality_gap",
    "run",
    "uniformity",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The probe's own option: k-means restarts."""
    parser.add_argument("--n-init", dest="n_init", type=int, default=4, help="k-means restarts (default 4)")


# ------------------------------------------------------------------------ clustering
def cluster(embeddings: np.ndarray, n_clusters: int, n_init: int, seed: int) -> np.ndarray:
    """k-means assignments (scikit-learn ``KMeans``) of the rows of ``embeddings``."""
    cluster_module = require("sklearn.cluster")
    km = cluster_module.KMeans(n_clusters=n_clusters, n_init=n_init, random_state=seed)
    return km.fit_predict(np.asarray(embeddings, dtype=np.float64)).astype(np.int64)


def _contingency(assign: np.ndarray, labels: np.ndarray, picks: np.ndarray) -> np.ndarray:
    """``(R, K, C)`` contingency tables of the resamples ``picks`` (``(R, n)`` item indices)."""
    k, c = int(assign.max()) + 1, int(labels.max()) + 1
    codes = assign * c + labels
    flat = (np.arange(len(picks))[:, None] * (k * c) + codes[picks]).ravel()
    return np.bincount(flat, minlength=len(picks) * k * c).reshape(len(picks), k, c).astype(np.float64)


def _xlogx(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x * np.log(np.where(x > 0, x, 1.0)), 0.0)


def bootstrap_cluster_scores(assign: Any, labels: Any, picks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NMI and ARI (x100) of ``assign`` against ``labels`` on every resample of ``picks``.

    From each resample's contingency table ``n_ij`` (rows a_i, columns b_j, n items):
    NMI = I / ((H(a) + H(b)) / 2) with I = sum n_ij/n log(n n_ij / (a_i b_j)) and H the
    entropies (1 when both have one class, as scikit-learn); ARI = (S - E) / ((S_a + S_b)/2
    - E) with S = sum C(n_ij, 2), S_a = sum C(a_i, 2), S_b = sum C(b_j, 2), E = S_a S_b /
    C(n, 2) (1 when the denominator is 0, as scikit-learn). Written on numpy rather than
    calling scikit-learn's scores per resample: all resamples at once from one
    ``bincount`` (9 scores x 1,000 resamples would be 18,000 validated calls); the tests
    check it equals scikit-learn's ``normalized_mutual_info_score`` / ``adjusted_rand_score``.
    """
    assign = np.unique(np.asarray(assign), return_inverse=True)[1].ravel()
    labels = np.unique(np.asarray(labels), return_inverse=True)[1].ravel()
    table = _contingency(assign, labels, np.atleast_2d(picks))
    n = table.sum((1, 2))
    rows, cols = table.sum(2), table.sum(1)
    h_rows = np.log(n) - _xlogx(rows).sum(1) / n
    h_cols = np.log(n) - _xlogx(cols).sum(1) / n
    mi = (_xlogx(table).sum((1, 2)) - _xlogx(rows).sum(1) - _xlogx(cols).sum(1)) / n + np.log(n)
    mi = np.maximum(mi, 0.0)
    norm = (h_rows + h_cols) / 2
    one_class = (h_rows <= 1e-12) & (h_cols <= 1e-12)
    nmi = np.where(one_class, 1.0, mi / np.maximum(norm, np.finfo(np.float64).eps))
    s = (table * (table - 1) / 2).sum((1, 2))
    s_rows, s_cols = (rows * (rows - 1) / 2).sum(1), (cols * (cols - 1) / 2).sum(1)
    expected = s_rows * s_cols / (n * (n - 1) / 2)
    denominator = (s_rows + s_cols) / 2 - expected
    safe = np.where(denominator == 0, 1.0, denominator)
    ari = np.where(denominator == 0, 1.0, (s - expected) / safe)
    return nmi * 100.0, ari * 100.0


def debiased_interval(
    estimate: float, resampled: Any, n: int, level: float = 0.95, bounds: tuple[float, float] | None = None
) -> Interval:
    """Percentile interval of the ``resampled`` values (over ``n`` items) after removing
    their mean shift from ``estimate``: the (1 -+ level)/2 quantiles of
    ``resampled - (mean(resampled) - estimate)``, clipped to ``bounds``.

    Plug-in NMI, ARI, uniformity and norms of means shift on bootstrap resamples (an item
    drawn twice agrees with itself: a resampled NMI runs high), so the plain percentile
    interval of a small NMI lies wholly above its own estimate, and Efron's bias-corrected
    percentiles degenerate there (no resample falls below the estimate). Removing the
    shift keeps the interval's width, the spread over item samples, around the estimate;
    it does not correct the estimate's own small-sample bias. ``method`` is
    ``bootstrap_debiased``."""
    values = np.asarray(resampled, dtype=np.float64)
    shifted = values - (values.mean() - estimate)
    low, high = np.quantile(shifted, [(1 - level) / 2, (1 + level) / 2])
    if bounds is not None:
        low, high = np.clip(low, *bounds), np.clip(high, *bounds)
    return Interval(float(estimate), float(low), float(high), level, "bootstrap_debiased", n, len(values))


def clustering_measures(
    embeddings: np.ndarray, labels: Sequence[Any], *, n_init: int, seed: int, name: str
) -> dict[str, Measure]:
    """``nmi/<name>`` and ``ari/<name>`` (x100) of a k-means clustering of ``embeddings``
    (``n_clusters`` = the number of distinct ``labels``) against ``labels``, with intervals
    over items (assignments fixed) and chance measured on label permutations."""
    metrics = require("sklearn.metrics")
    labels = np.unique(np.asarray(labels), return_inverse=True)[1].ravel()
    n, k = len(labels), int(labels.max()) + 1
    if k < 2:
        raise ProbeError(f"{name}: every item has the same label; clustering scores need two classes")
    assign = cluster(embeddings, k, n_init, seed)
    nmi = 100.0 * metrics.normalized_mutual_info_score(labels, assign)
    ari = 100.0 * metrics.adjusted_rand_score(labels, assign)
    picks = np.random.default_rng(seed).integers(0, n, size=(DEFAULT_RESAMPLES, n))
    nmi_r, ari_r = bootstrap_cluster_scores(assign, labels, picks)
    rng = np.random.default_rng([seed, 1])
    perms = [rng.permutation(labels) for _ in range(CHANCE_PERMUTATIONS)]
    chance_nmi = float(np.mean([100.0 * metrics.normalized_mutual_info_score(p, assign) for p in perms]))
    chance_ari = float(np.mean([100.0 * metrics.adjusted_rand_score(p, assign) for p in perms]))
    return {
        f"nmi/{name}": Measure(float(nmi), debiased_interval(nmi, nmi_r, n, bounds=(0.0, 100.0)), chance_nmi),
        f"ari/{name}": Measure(float(ari), debiased_interval(ari, ari_r, n, bounds=(-100.0, 100.0)), chance_ari),
    }


# -------------------------------------------------------------------------- geometry
def alignment(x: Any, y: Any) -> np.ndarray:
    """Per pair ||x_i - y_i||^2 (Wang & Isola's alignment with alpha = 2; its mean is the
    alignment loss)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return ((x - y) ** 2).sum(1)


def _kernel(x: np.ndarray, t: float = 2.0) -> np.ndarray:
    sq = (x**2).sum(1)
    dist = np.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0)
    kernel = np.exp(-t * dist)
    np.fill_diagonal(kernel, 1.0)
    return kernel


def uniformity(x: Any, weights: np.ndarray | None = None, t: float = 2.0) -> np.ndarray | float:
    """Wang & Isola's uniformity: log of the mean over pairs of distinct items of
    exp(-t ||x_i - x_j||^2) (t = 2).

    With ``weights`` (``(R, n)`` counts of each item in R bootstrap resamples of n items)
    the uniformity of each resample: the mean runs over pairs of distinct positions of the
    resample, sum_ij w_i w_j K_ij minus the n positions paired with themselves, over
    n (n - 1) (an item drawn twice pairs with itself at distance 0, as a resample's pairs
    do). One ``(n, n)`` kernel for all resamples."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if n < 2:
        raise ProbeError("uniformity needs at least two items")
    kernel = _kernel(x, t)
    if weights is None:
        return float(np.log((kernel.sum() - n) / (n * (n - 1))))
    total = ((weights @ kernel) * weights).sum(1)
    return np.log(np.maximum(total - n, 1e-300) / (n * (n - 1)))


def modality_gap(x: Any, y: Any) -> float:
    """||mean(x) - mean(y)||: the distance between the centres of the two embedding clouds
    (Liang et al., "Mind the gap", NeurIPS 2022)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return float(np.linalg.norm(x.mean(0) - y.mean(0)))


def geometry_measures(image: Any, text: Any, seed: int) -> dict[str, Measure]:
    """``alignment``, ``uniformity/image``, ``uniformity/text`` and ``modality_gap`` of
    paired embeddings (row i of ``image`` and of ``text`` is one pair), unit "1", with
    percentile-bootstrap intervals over the pairs (1,000 resamples, one set of resamples
    for all four; shift-removed for the uniformity and the gap, see
    :func:`debiased_interval`)."""
    image, text = np.asarray(image, dtype=np.float64), np.asarray(text, dtype=np.float64)
    n = len(image)
    picks = np.random.default_rng(seed).integers(0, n, size=(DEFAULT_RESAMPLES, n))
    weights = np.stack([np.bincount(p, minlength=n) for p in picks]).astype(np.float64)
    aligned = bootstrap_interval(alignment(image, text), seed=seed)
    out = {"alignment": Measure(aligned.estimate, aligned, unit="1")}
    for name, x in (("image", image), ("text", text)):
        value = float(uniformity(x))
        out[f"uniformity/{name}"] = Measure(value, debiased_interval(value, uniformity(x, weights), n), unit="1")
    gap = modality_gap(image, text)
    resampled = np.linalg.norm(weights @ (image - text) / n, axis=1)
    out["modality_gap"] = Measure(gap, debiased_interval(gap, resampled, n), unit="1")
    return out


# ------------------------------------------------------------------------- the model
@torch.no_grad()
def _fused(ctx: ProbeContext, images: Sequence[Any], texts: Sequence[str]) -> np.ndarray:
    out = []
    for lo in range(0, len(images), ctx.batch_size):
        image = ctx.model.encode_images(images[lo : lo + ctx.batch_size])
        text = ctx.model.encode_texts(texts[lo : lo + ctx.batch_size])
        out.append(F.normalize(ctx.model.model.fuse(image, text).cls.float(), dim=-1).cpu())
    return torch.cat(out).numpy()


def embed_sets(ctx: ProbeContext, images: Sequence[Any], texts: Sequence[str]) -> dict[str, np.ndarray]:
    """The image, text and (with a fusion encoder) fused embeddings of the pairs
    ``(images[i], texts[i])``, as float arrays."""
    out = {
        "image": ctx.embed(images=list(images)).numpy(),
        "text": ctx.embed(texts=list(texts)).numpy(),
    }
    if getattr(ctx.model.model, "fusion_encoder", None) is not None:
        out["fused"] = _fused(ctx, list(images), list(texts))
    return out


def _single_object_items(ctx: ProbeContext, n: int) -> tuple[list[Any], list[str], dict[str, list[str]]]:
    from ..data.shapes import ShapesClassification

    world = ctx.world
    data = ShapesClassification(world, "test", target="shape")
    if n > len(data):
        raise ProbeError(f"--n {n}: the test split has {len(data)} single-object scenes")
    scenes = [data.scene(i) for i in range(n)]
    captions = [world.captions(s, ctx.seed * 1_000_003 + i)[0] for i, s in enumerate(scenes)]
    labels = {"shape": [s.objects[0].shape for s in scenes], "colour": [s.objects[0].colour for s in scenes]}
    return [world.render(s) for s in scenes], captions, labels


def _test_pairs(ctx: ProbeContext, n: int) -> tuple[list[Any], list[str], list[int]]:
    world = ctx.world
    if n > world.split_size("test"):
        raise ProbeError(f"--n {n}: the test split has {world.split_size('test')} scenes")
    scenes = [world.scene("test", i) for i in range(n)]
    return [world.render(s) for s in scenes], [world.caption("test", i) for i in range(n)], [len(s.objects) for s in scenes]


# ------------------------------------------------------------------------- figures
def _bars(ctx: ProbeContext, measures: Mapping[str, Measure], modalities: Sequence[str]) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    width = 0.8 / len(modalities)
    x = np.arange(len(ATTRIBUTES))
    for ax, score in zip(axes, ("nmi", "ari")):
        for j, modality in enumerate(modalities):
            ms = [measures[f"{score}/{modality}/{a}"] for a in ATTRIBUTES]
            values = [m.value for m in ms]
            errors = [[max(0.0, m.value - m.interval.low) for m in ms], [max(0.0, m.interval.high - m.value) for m in ms]]
            ax.bar(x + (j - (len(modalities) - 1) / 2) * width, values, width, yerr=errors, capsize=3, label=modality)
        chance = [measures[f"{score}/{modalities[0]}/{a}"].chance for a in ATTRIBUTES]
        ax.scatter(x, chance, marker="_", s=400, color="black", label="chance", zorder=3)
        ax.set_xticks(x, ATTRIBUTES)
        ax.set_title(f"{score.upper()} x100 (k-means vs attribute)")
    axes[0].legend(fontsize=8)
    ctx.writer.figure(PROBE, "clusters", fig, "k-means NMI and ARI (x100) of each modality's embeddings "
                      "against shape, colour (single-object scenes) and count; bars: 95% bootstrap over items, "
                      "clustering fixed; black: chance (label permutations)")


def _pca_map(ctx: ProbeContext, image: np.ndarray, text: np.ndarray, shapes: Sequence[str]) -> None:
    decomposition = require("sklearn.decomposition")
    plt = pyplot()
    both = np.concatenate([image, text])
    points = decomposition.PCA(n_components=2, random_state=ctx.seed).fit_transform(both)
    names = list(ctx.world.SHAPES)
    palette = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    codes = np.array([names.index(s) for s in shapes])
    for part, marker, label in ((points[: len(image)], "o", "image"), (points[len(image) :], "^", "text")):
        ax.scatter(part[:, 0], part[:, 1], c=[palette(c) for c in codes], marker=marker, s=14, alpha=0.7)
        ax.scatter([], [], marker=marker, color="grey", label=label)
    for k, name in enumerate(names):
        ax.scatter([], [], marker="s", color=palette(k), label=name)
    ax.legend(fontsize=7, ncol=2)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title("image (o) and text (^) embeddings, by shape")
    ctx.writer.figure(PROBE, "pca", fig, "PCA of the image and caption embeddings of single-object scenes "
                      "together (one projection), coloured by shape; circles images, triangles captions")


# ----------------------------------------------------------------------------- run
def run(ctx: ProbeContext, args: argparse.Namespace) -> list[Any]:
    """Embed N single-object scenes and N test pairs, score the clusterings and the
    geometry, write the records and the two figures."""
    n = ctx.items(DEFAULT_N)
    if n < 10:
        raise ProbeError(f"--n {n}: the embeddings probe needs at least 10 items")
    n_init = int(getattr(args, "n_init", 4))
    if n_init < 1:
        raise ProbeError(f"--n-init must be at least 1, got {n_init}")
    images, captions, labels = _single_object_items(ctx, n)
    attribute_sets = embed_sets(ctx, images, captions)
    pair_images, pair_captions, counts = _test_pairs(ctx, n)
    pair_sets = embed_sets(ctx, pair_images, pair_captions)
    modalities = [m for m in MODALITIES if m in attribute_sets]
    measures: dict[str, Measure] = {}
    for modality in modalities:
        for attribute in ATTRIBUTES:
            emb, lab = (pair_sets[modality], counts) if attribute == "count" else (attribute_sets[modality], labels[attribute])
            measures.update(clustering_measures(emb, lab, n_init=n_init, seed=ctx.seed, name=f"{modality}/{attribute}"))
    geometry = geometry_measures(pair_sets["image"], pair_sets["text"], ctx.seed)
    hyper = {"n": n, "n_init": n_init, "seed": ctx.seed, "resamples": DEFAULT_RESAMPLES,
             "chance_permutations": CHANCE_PERMUTATIONS, "modalities": modalities}  # fmt: skip
    records = ctx.writer.write(PROBE, "test", measures, n, hyper)
    records += ctx.writer.write(PROBE, "test", geometry, n, hyper)
    _bars(ctx, measures, modalities)
    _pca_map(ctx, attribute_sets["image"], attribute_sets["text"], labels["shape"])
    return records

