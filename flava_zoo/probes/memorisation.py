"""memorisation: is the model right where a test item looks like something it was trained on?

For each test item, the cosine similarity of its **nearest training neighbour**: the
largest cosine between the item's normalised contrastive image embedding
(``model.encode_image(...).embedding``, the space the model retrieves in) and those of a
pool of training images (the first ``--train-size`` scenes of ``train``). Against it, whether
the model is right on the item:

* without ``--classifier``: zero-shot retrieval hit@1 within the N test items (the item's
  image ranks its own primary caption first among the N captions, by cosine); chance 1/N;
* with ``--classifier`` trained on ``shapes/vqa`` (the scene's VQA question, chance as in
  the compositional probe: ``1 / |answers of its type|`` averaged) or ``shapes/memes`` (the
  scene's true-or-false claim, chance 50%): the classifier's answer.

Metrics (percent unless said; 95% percentile-bootstrap intervals over test items; for the
gap and the correlations, the median split and the coefficient are recomputed on each
resample of all items):

* ``accuracy`` over all items; ``accuracy_top_half`` / ``accuracy_bottom_half``: on the half
  of the items with the most / least similar nearest neighbour (split at the median rank);
* ``gap/top_minus_bottom``: their difference in points, 0 at chance and for a model whose
  correctness does not depend on resemblance to training data;
* ``spearman_x100``, ``point_biserial_x100`` (unit 1, 100 x the coefficient): Spearman's rank
  correlation and the point-biserial (Pearson) correlation of nearest-neighbour similarity
  with correctness (``scipy.stats``); 0 at chance. Not written with fewer than 5 right or
  5 wrong items (:data:`MIN_PER_OUTCOME`: the interval would mean nothing);
* ``nn_similarity_mean`` (unit 1): the mean nearest-neighbour cosine.

A positive gap says the model is right mostly on items close to its training data:
memorisation (or simply easier items near the training distribution: compare with
``--split test_novel``, whose items each hold a combination never trained on).

Figure ``nn_similarity_<split>``: accuracy per quartile of nearest-neighbour similarity, with
intervals and chance. :func:`memorisation_probe` runs the analysis on any training and test
scenes and any scorer (the test builds near-duplicates of training scenes with it).

Cost: ``--train-size`` + N images embedded (1,000 + 200 by default: seconds for flava-tiny).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..data.shapes import Scene, ShapesMemes, ShapesVQA
from ..stats import DEFAULT_LEVEL, DEFAULT_RESAMPLES, Interval, bootstrap_interval
from .common import Measure, ProbeContext, ProbeError, pyplot, require
from .compositional import retrieval_hits, vqa_chance

__all__ = [
    "CLASSIFIER_TASKS",
    "MemorisationResult",
    "add_arguments",
    "memorisation_measures",
    "memorisation_probe",
    "nearest_neighbours",
    "run",
]

CLASSIFIER_TASKS: tuple[str, ...] = ("shapes/vqa", "shapes/memes")
"""The tasks a ``--classifier`` may have been trained on."""

DEFAULT_N = 200
DEFAULT_TRAIN_SIZE = 1000
MIN_PER_OUTCOME = 5
"""The correlations are written only with at least this many right and this many wrong
items: with fewer, most resamples hold one or none of the rarer outcome and the bootstrap
interval means nothing (a random model right on 2 of 200 items got [4.9, 15.4])."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The probe's options: the training pool's size and the test split."""
    parser.add_argument("--train-size", dest="train_size", type=int, default=DEFAULT_TRAIN_SIZE,
                        help=f"training scenes in the neighbour pool (default {DEFAULT_TRAIN_SIZE})")  # fmt: skip
    parser.add_argument("--split", default="test", choices=("val", "test", "test_novel"), help="the test items' split")


@dataclass
class MemorisationResult:
    """Per test item: ``similarity`` (its nearest training neighbour's cosine), ``neighbour``
    (that neighbour's index in the training pool) and ``correct`` (1.0 / 0.0); ``measures``
    as written; ``records`` the results records."""

    similarity: np.ndarray
    neighbour: np.ndarray
    correct: np.ndarray
    measures: dict[str, Measure]
    records: list[Any]


def nearest_neighbours(train: torch.Tensor, test: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``test``, the largest cosine with a row of ``train`` and that row's
    index (both sets of embeddings are normalised here, so cosine = dot product)."""
    train = torch.nn.functional.normalize(train.float(), dim=-1)
    test = torch.nn.functional.normalize(test.float(), dim=-1)
    best, index = (test @ train.T).max(dim=1)
    return best.numpy().astype(np.float64), index.numpy()


def _halves(similarity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the most and of the least similar half (stable order; the top gets the
    extra item of an odd count)."""
    order = np.argsort(-similarity, kind="stable")
    cut = (len(order) + 1) // 2
    return order[:cut], order[cut:]


def _gap(rows: np.ndarray) -> float:
    top, bottom = _halves(rows[:, 0])
    if len(bottom) == 0:
        return float("nan")
    return float(rows[top, 1].mean() - rows[bottom, 1].mean()) * 100.0


def _correlation_interval(x: np.ndarray, y: np.ndarray, estimate: float, ranks: bool, seed: int) -> Interval:
    """Percentile-bootstrap interval of 100 x Pearson's r of ``x`` and ``y`` (of their
    average ranks, ``scipy.stats.rankdata``, for Spearman's rho), the resamples drawn as
    :func:`~flava_zoo.stats.bootstrap_interval` draws them. Vectorised over the resamples
    here because calling ``scipy.stats.spearmanr`` once per resample costs seconds for 1,000
    of them; resamples where either variable is constant (r undefined) are dropped."""
    stats = require("scipy.stats")
    n = len(x)
    picks = np.random.default_rng(seed).integers(0, n, size=(DEFAULT_RESAMPLES, n))
    a, b = x[picks], y[picks]
    if ranks:
        a, b = stats.rankdata(a, axis=1), stats.rankdata(b, axis=1)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    denominator = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    valid = denominator > 0
    r = (a * b).sum(axis=1)[valid] / denominator[valid] * 100.0
    if len(r) == 0:
        raise ProbeError("the correlation is undefined on every bootstrap resample")
    low, high = np.quantile(r, [(1 - DEFAULT_LEVEL) / 2, (1 + DEFAULT_LEVEL) / 2])
    return Interval(estimate, float(low), float(high), DEFAULT_LEVEL, "bootstrap", n, DEFAULT_RESAMPLES)


def memorisation_measures(similarity: Any, correct: Any, chance: float | None, seed: int = 0) -> dict[str, Measure]:
    """The probe's measures (see the module doc) of per-item nearest-neighbour
    ``similarity`` and ``correct`` (1 / 0); ``chance`` is the scorer's accuracy at chance, in
    percent (``None`` if unknown)."""
    stats = require("scipy.stats")
    sim = np.asarray(similarity, dtype=np.float64)
    ok = np.asarray(correct, dtype=np.float64)
    if sim.shape != ok.shape or sim.ndim != 1 or len(sim) < 2:
        raise ProbeError(f"memorisation needs at least 2 test items with one similarity and one correctness each, got {sim.shape} and {ok.shape}")
    top, bottom = _halves(sim)
    rows = np.stack([sim, ok], axis=1)
    out = {
        "accuracy": Measure(float(ok.mean() * 100), bootstrap_interval(ok * 100, seed=seed), chance),
        "accuracy_top_half": Measure(float(ok[top].mean() * 100), bootstrap_interval(ok[top] * 100, seed=seed), chance),
        "accuracy_bottom_half": Measure(float(ok[bottom].mean() * 100), bootstrap_interval(ok[bottom] * 100, seed=seed), chance),
        "gap/top_minus_bottom": Measure(_gap(rows), bootstrap_interval(rows, _gap, seed=seed), 0.0),
    }
    if min(ok.sum(), len(ok) - ok.sum()) >= MIN_PER_OUTCOME and sim.std() > 0:
        spearman = float(stats.spearmanr(sim, ok).statistic) * 100.0
        point_biserial = float(stats.pointbiserialr(ok, sim).statistic) * 100.0
        out["spearman_x100"] = Measure(spearman, _correlation_interval(sim, ok, spearman, True, seed), 0.0, unit="1")
        out["point_biserial_x100"] = Measure(point_biserial, _correlation_interval(sim, ok, point_biserial, False, seed), 0.0, unit="1")
    out["nn_similarity_mean"] = Measure(float(sim.mean()), bootstrap_interval(sim, seed=seed), unit="1")
    return out


def _figure(ctx: ProbeContext, sim: np.ndarray, ok: np.ndarray, chance: float | None, split: str) -> None:
    plt = pyplot()
    order = np.argsort(sim, kind="stable")
    bins = [b for b in np.array_split(order, 4) if len(b)]
    values, lows, highs, labels = [], [], [], []
    for b in bins:
        iv = bootstrap_interval(ok[b] * 100, seed=ctx.seed)
        values.append(iv.estimate)
        lows.append(iv.estimate - iv.low)
        highs.append(iv.high - iv.estimate)
        labels.append(f"{sim[b].min():.3f}-{sim[b].max():.3f}")
    fig, ax = plt.subplots(figsize=(4.6, 3.2))
    x = np.arange(len(bins))
    ax.bar(x, values, 0.7, yerr=[lows, highs], capsize=3, color="#4477aa")
    if chance is not None:
        ax.axhline(chance, color="k", linestyle="dashed", linewidth=1, label="chance")
        ax.legend(fontsize=7)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=7, rotation=15)
    ax.set_xlabel("nearest training neighbour's cosine (quartiles)", fontsize=8)
    ax.set_ylabel("% right")
    ax.set_ylim(0, 100)
    ax.set_title(f"correctness vs nearest-neighbour similarity ({split})", fontsize=9)
    ctx.writer.figure(
        "memorisation", f"nn_similarity_{split}", fig,
        f"Accuracy on {split} items per quartile of their nearest training neighbour's contrastive "
        "cosine, 95% bootstrap intervals; dashed: chance.",
    )  # fmt: skip


def memorisation_probe(
    ctx: ProbeContext,
    train_scenes: Sequence[Scene],
    test_scenes: Sequence[Scene],
    scorer: Callable[[Sequence[Scene], list[Any]], Any],
    *,
    chance: float | None = None,
    split: str = "custom",
    embed: Callable[[list[Any]], torch.Tensor] | None = None,
    hyperparameters: dict[str, Any] | None = None,
) -> MemorisationResult:
    """Render ``train_scenes`` and ``test_scenes`` with ``ctx.world``, embed them (``embed``:
    PIL images -> ``(N, D)``; default the model's contrastive image embeddings), find each
    test item's nearest training neighbour, score the test items with ``scorer(scenes,
    images)`` (one truthy value per item: is the model right?), write the measures (split
    ``split``) and the figure, and return everything."""
    if not train_scenes or not test_scenes:
        raise ProbeError("memorisation needs training scenes and test scenes")
    space = "contrastive image embedding" if embed is None else "given"
    embed = embed or (lambda images: ctx.embed(images=images))
    train_images = [ctx.world.render(s) for s in train_scenes]
    test_images = [ctx.world.render(s) for s in test_scenes]
    sim, neighbour = nearest_neighbours(embed(train_images), embed(test_images))
    correct = np.asarray(scorer(test_scenes, test_images), dtype=np.float64).reshape(-1)
    if len(correct) != len(test_scenes):
        raise ProbeError(f"the scorer gave {len(correct)} values for {len(test_scenes)} test scenes")
    measures = memorisation_measures(sim, correct, chance, ctx.seed)
    hyper = {"n": len(test_scenes), "train_size": len(train_scenes), "embedding": space, "seed": ctx.seed}
    records = ctx.writer.write("memorisation", split, measures, len(test_scenes), {**hyper, **(hyperparameters or {})})
    _figure(ctx, sim, correct, chance, split)
    return MemorisationResult(sim, neighbour, correct, measures, records)


def _retrieval_scorer(ctx: ProbeContext, split: str) -> Callable[[Sequence[Scene], list[Any]], np.ndarray]:
    """Hit@1 of image-to-text retrieval among the test items' primary captions."""

    def score(scenes: Sequence[Scene], images: list[Any]) -> np.ndarray:
        texts = [ctx.world.caption(split, i) for i in range(len(scenes))]
        sim = ctx.embed(images=images) @ ctx.embed(texts=texts).T
        return retrieval_hits(sim, 1)["image_to_text"]

    return score


def _classifier_scorer(ctx: ProbeContext, split: str, n: int) -> tuple[Callable[[Sequence[Scene], list[Any]], np.ndarray], float]:
    """The classifier's correctness on the test scenes' VQA questions or memes claims, and its chance."""
    clf = ctx.need_classifier("memorisation", CLASSIFIER_TASKS)
    if clf.task == "shapes/memes":
        notes = [ShapesMemes(ctx.world, split).annotation(i) for i in range(n)]
        texts, answers, chance = [a["text"] for a in notes], [clf.label_names[a["label"]] for a in notes], 50.0
    else:
        notes = [ShapesVQA(ctx.world, split).annotation(i) for i in range(n)]
        texts, answers = [a["question"] for a in notes], [a["answer"] for a in notes]
        chance = vqa_chance([a["question_type"] for a in notes])

    def score(scenes: Sequence[Scene], images: list[Any]) -> np.ndarray:
        predicted: list[str] = []
        for lo in range(0, len(images), ctx.batch_size):
            predicted += clf.predict(images[lo : lo + ctx.batch_size], texts[lo : lo + ctx.batch_size])
        return np.array([p == a for p, a in zip(predicted, answers)], dtype=np.float64)

    return score, chance


def run(ctx: ProbeContext, args: argparse.Namespace) -> list[Any]:
    """Nearest-neighbour similarity to the training pool against correctness on the test split."""
    n = ctx.items(DEFAULT_N)
    split = getattr(args, "split", "test")
    train_size = int(getattr(args, "train_size", DEFAULT_TRAIN_SIZE))
    if train_size < 1:
        raise ProbeError(f"--train-size must be at least 1, got {train_size}")
    for name, size in (("train", train_size), (split, n)):
        if ctx.world.split_size(name) < size:
            raise ProbeError(f"split {name} has {ctx.world.split_size(name)} scenes, fewer than the {size} asked for")
    if n < 2:
        raise ProbeError("--n must be at least 2")
    train = [ctx.world.scene("train", i) for i in range(train_size)]
    test = [ctx.world.scene(split, i) for i in range(n)]
    if ctx.classifier is not None:
        scorer, chance = _classifier_scorer(ctx, split, n)
        how = f"classifier {ctx.classifier.task}"
    else:
        scorer, chance, how = _retrieval_scorer(ctx, split), 100.0 / n, "zero-shot image-to-text hit@1"
    return memorisation_probe(ctx, train, test, scorer, chance=chance, split=split, hyperparameters={"correct": how}).records

