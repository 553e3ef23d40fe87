"""compositional: does the model compose a colour and a shape it has only seen apart?

The shapes world holds some colour-shape combinations out of every ``train``, ``val`` and
``test`` scene and text; every ``test_novel`` scene contains one of them. The probe measures
the same quantities, with the same number of items N, on ``test`` (seen combinations) and on
``test_novel`` (held-out ones):

* zero-shot retrieval over the first N image-caption pairs of the split (primary captions,
  one per image): ``image_to_text_R@K`` and ``text_to_image_R@K`` for K = 1, 5, the share of
  queries whose match ranks in the top K by contrastive cosine. Chance: ``K / N``;
* zero-shot classification of the single object of the first N
  :class:`~flava_zoo.data.shapes.ShapesClassification` images, by shape (``shape_accuracy``,
  chance 1/6) and by colour (``colour_accuracy``, chance 1/7): the nearest class embedding
  (the mean of the class's prompt embeddings, :func:`~flava_zoo.downstream.zero_shot.class_embeddings`);
* with ``--classifier`` (a shapes-VQA fine-tuning checkpoint), ``vqa_accuracy`` on the first
  N :class:`~flava_zoo.data.shapes.ShapesVQA` questions of each split. Chance: the mean over
  questions of ``1 / |answers of its type|`` (colour 7, shape 6, count 4, exists 2, size 2):
  a guess among the right kind of answer.

Each metric's **generalisation gap** is ``seen - novel`` in percentage points (records of
split ``test_vs_test_novel``, metric ``gap/<metric>``; 0 at chance), with a 95% interval
from an unpaired bootstrap: both splits are resampled independently (1,000 times) and the
interval is the 2.5th and 97.5th percentiles of the difference of the resampled means. A
gap whose interval excludes 0 means the model does worse on held-out combinations than on
seen ones: it memorised combinations rather than composing attributes, with one caveat for
the classification gaps: the held-out split's classes are not those of the seen one (its
single objects carry only held-out combinations, so some colours are absent from it and
each colour comes with few shapes), and a gap can come from that class mix alone. Compare
the per-split accuracies with their chance levels before reading a classification gap.
Per-split values carry their own percentile-bootstrap intervals over items.

Figure ``splits``: each metric on both splits with its interval and its chance level.

Cost: 4 N images and N captions embedded per split (N = 200 by default: seconds on a CPU
for flava-tiny), plus N classifier calls per split with ``--classifier``.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..data.shapes import ShapesClassification, ShapesPairs, ShapesVQA, ShapesWorld
from ..downstream.zero_shot import class_embeddings
from ..stats import bootstrap_interval, unpaired_bootstrap
from .common import Measure, ProbeContext, ProbeError, batched, pyplot

__all__ = [
    "SPLITS",
    "VQA_TASKS",
    "add_arguments",
    "retrieval_hits",
    "run",
    "vqa_chance",
]

SPLITS: tuple[str, str] = ("test", "test_novel")
"""The seen and the held-out split."""

GAP_SPLIT = "test_vs_test_novel"
"""The split name of the gap records."""

VQA_TASKS: tuple[str, ...] = ("shapes/vqa",)
"""The task a ``--classifier`` must have been trained on."""

DEFAULT_N = 200

_ANSWERS_PER_TYPE = {
    "colour": len(ShapesWorld.COLOURS),
    "shape": len(ShapesWorld.SHAPES),
    "count": 4,
    "exists": 2,
    "size": len(ShapesWorld.SIZES),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The probe's own option: which parts to run."""
    parser.add_argument(
        "--parts",
        default="retrieval,classification,vqa",
        help="comma-separated parts: retrieval, classification, vqa (vqa runs only with --classifier)",
    )


def retrieval_hits(similarity: torch.Tensor, k: int) -> dict[str, np.ndarray]:
    """Per-query hits at ``k`` (1.0 / 0.0) for a square ``(images, texts)`` similarity whose
    diagonal holds the matches: ``image_to_text`` (row ``i``'s own text in its top ``k``) and
    ``text_to_image``. Their means are :func:`~flava_zoo.evaluation.retrieval.retrieval_recall`'s
    ``R@k`` (divided by 100); this returns the per-item values the bootstrap needs, which
    ``retrieval_recall`` does not."""
    sim = similarity.float().cpu()
    n = sim.shape[0]
    if sim.ndim != 2 or sim.shape[1] != n:
        raise ValueError(f"retrieval_hits needs a square similarity, got {tuple(sim.shape)}")
    own = torch.arange(n)
    k = min(k, n)
    i2t = (sim.topk(k, dim=1).indices == own[:, None]).any(dim=1)
    t2i = (sim.T.topk(k, dim=1).indices == own[:, None]).any(dim=1)
    return {"image_to_text": i2t.double().numpy(), "text_to_image": t2i.double().numpy()}


def vqa_chance(question_types: Sequence[str]) -> float:
    """Chance VQA accuracy in percent: the mean over questions of ``100 / |answers of the
    question's type|`` (a uniform guess among colours, shapes, counts zero to three, yes/no or
    sizes)."""
    if not question_types:
        raise ValueError("no questions")
    return float(np.mean([100.0 / _ANSWERS_PER_TYPE[t] for t in question_types]))


def _retrieval(ctx: ProbeContext, split: str, n: int) -> dict[str, tuple[np.ndarray, float]]:
    """Per-item R@1 / R@5 hits (in percent) of the first ``n`` pairs of ``split``, with chance."""
    data = ShapesPairs(ctx.world, split)
    samples = [data[i] for i in range(n)]
    images = ctx.embed(images=[s["image"] for s in samples])
    texts = ctx.embed(texts=[s["text"] for s in samples])
    sim = images @ texts.T
    out: dict[str, tuple[np.ndarray, float]] = {}
    for k in (1, 5):
        for direction, hits in retrieval_hits(sim, k).items():
            out[f"{direction}_R@{k}"] = (hits * 100.0, 100.0 * min(k, n) / n)
    return out


def _classification(ctx: ProbeContext, split: str, n: int) -> dict[str, tuple[np.ndarray, float]]:
    """Per-item zero-shot shape and colour correctness (in percent) on ``split``, with chance."""
    out: dict[str, tuple[np.ndarray, float]] = {}
    model = ctx.model
    tokenizer = model._need_tokenizer()
    for target in ("shape", "colour"):
        data = ShapesClassification(ctx.world, split, target=target)
        names = data.class_names()
        classes = class_embeddings(
            model.model,
            lambda texts: tokenizer(list(texts), max_length=model.max_length),
            names,
            data.prompts,
            device=model.device,
        ).float().cpu()
        samples = [data[i] for i in range(n)]
        embeddings = ctx.embed(images=[s["image"] for s in samples])
        predicted = (embeddings @ classes.T).argmax(dim=1).numpy()
        labels = np.array([s["label"] for s in samples])
        out[f"{target}_accuracy"] = ((predicted == labels) * 100.0, 100.0 / len(names))
    return out


def _vqa(ctx: ProbeContext, split: str, n: int) -> dict[str, tuple[np.ndarray, float]]:
    """Per-question correctness (in percent) of the ``--classifier`` on ``split``, with chance."""
    clf = ctx.need_classifier("compositional", VQA_TASKS)
    data = ShapesVQA(ctx.world, split)
    samples = [data[i] for i in range(n)]
    predicted: list[str] = []
    for chunk in batched(samples, ctx.batch_size):
        predicted += clf.predict([s["image"] for s in chunk], [s["question"] for s in chunk])
    correct = np.array([p == s["answer"] for p, s in zip(predicted, samples)], dtype=np.float64)
    return {"vqa_accuracy": (correct * 100.0, vqa_chance([s["question_type"] for s in samples]))}


def _figure(ctx: ProbeContext, per_split: Mapping[str, Mapping[str, tuple[Measure, np.ndarray]]]) -> None:
    plt = pyplot()
    metrics = list(per_split[SPLITS[0]])
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(metrics), 3.4))
    x = np.arange(len(metrics))
    width = 0.38
    for j, (split, colour) in enumerate(zip(SPLITS, ("#4477aa", "#ee6677"))):
        ms = [per_split[split][m][0] for m in metrics]
        values = np.array([m.value for m in ms])
        low = np.array([m.interval.low for m in ms])  # type: ignore[union-attr]
        high = np.array([m.interval.high for m in ms])  # type: ignore[union-attr]
        label = "seen (test)" if split == "test" else "held-out (test_novel)"
        ax.bar(x + (j - 0.5) * width, values, width, yerr=[values - low, high - values], capsize=3,
               color=colour, label=label)  # fmt: skip
    for i, m in enumerate(metrics):
        chance = per_split[SPLITS[0]][m][0].chance
        ax.hlines(chance, i - 0.45, i + 0.45, colors="k", linestyles="dashed", linewidth=1,
                  label="chance" if i == 0 else None)  # fmt: skip
    ax.set_xticks(x)
    ax.set_xticklabels(metrics, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7)
    ax.set_title("seen vs held-out colour-shape combinations", fontsize=9)
    ctx.writer.figure(
        "compositional", "splits", fig,
        "Each metric on seen (test) and held-out (test_novel) combinations, 95% bootstrap "
        "intervals; dashed: chance.",
    )  # fmt: skip


def _parts(args: argparse.Namespace) -> list[str]:
    parts = [p.strip() for p in str(getattr(args, "parts", "retrieval,classification,vqa")).split(",") if p.strip()]
    unknown = [p for p in parts if p not in ("retrieval", "classification", "vqa")]
    if unknown or not parts:
        raise ProbeError(f"--parts: unknown part {unknown[0]!r}; parts: retrieval, classification, vqa"
                         if unknown else "--parts names no part")  # fmt: skip
    return parts


def run(ctx: ProbeContext, args: argparse.Namespace) -> list[Any]:
    """Measure every part on ``test`` and ``test_novel`` with the same N, then the gaps."""
    n = ctx.items(DEFAULT_N)
    parts = _parts(args)
    if not ctx.world.heldout_combinations:
        raise ProbeError("the shapes world holds no combination out (heldout_fraction 0): no test_novel split")
    for split in SPLITS:
        if ctx.world.split_size(split) < n:
            raise ProbeError(f"--n {n} is more than split {split}'s {ctx.world.split_size(split)} scenes")
    if "vqa" in parts and ctx.classifier is not None:
        ctx.need_classifier("compositional", VQA_TASKS)
    hyper = {"n": n, "parts": ",".join(parts), "seed": ctx.seed}
    per_split: dict[str, dict[str, tuple[Measure, np.ndarray]]] = {}
    records: list[Any] = []
    for split in SPLITS:
        values: dict[str, tuple[np.ndarray, float]] = {}
        if "retrieval" in parts:
            values.update(_retrieval(ctx, split, n))
        if "classification" in parts:
            values.update(_classification(ctx, split, n))
        if "vqa" in parts and ctx.classifier is not None:
            values.update(_vqa(ctx, split, n))
        per_split[split] = {
            name: (Measure(float(v.mean()), bootstrap_interval(v, seed=ctx.seed), chance), v)
            for name, (v, chance) in values.items()
        }
        records += ctx.writer.write("compositional", split, {k: m for k, (m, _) in per_split[split].items()}, n, hyper)
    gaps = {
        f"gap/{name}": Measure(
            float(seen.mean() - per_split[SPLITS[1]][name][1].mean()),
            unpaired_bootstrap(seen, per_split[SPLITS[1]][name][1], seed=ctx.seed),
            chance=0.0,
        )
        for name, (_, seen) in per_split[SPLITS[0]].items()
    }
    records += ctx.writer.write("compositional", GAP_SPLIT, gaps, 2 * n, hyper)
    _figure(ctx, per_split)
    return records
