"""What the perturbation probes (``negation``, ``occlusion``, ``subquestions``) share: rates
with bootstrap intervals, a classifier queried in batches, yes/no readouts and the bar
figure of rates against their chance levels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..stats import bootstrap_interval
from .common import Classifier, Measure, ProbeContext, ProbeError

__all__ = ["bar_figure", "classify", "rate", "scene_count", "yes_no"]


def rate(per_item: Sequence[float] | np.ndarray, seed: int, chance: float | None = None, unit: str = "%") -> Measure:
    """The mean of per-item values already in the measure's unit (``correct * 100`` for a
    rate), with its 95% percentile-bootstrap interval over the items (1,000 resamples,
    ``seed``) and ``chance``."""
    values = np.asarray(per_item, dtype=np.float64)
    if len(values) == 0:
        raise ValueError("a rate needs at least one item")
    interval = bootstrap_interval(values, resamples=1000, seed=seed)
    return Measure(float(values.mean()), interval, chance=chance, unit=unit)


def classify(ctx: ProbeContext, classifier: Classifier, images: Sequence[Any], texts: Sequence[str], desc: str) -> torch.Tensor:
    """The classifier's ``(N, classes)`` logits of (image, text) pairs, ``ctx.batch_size`` at a
    time, with a progress bar."""
    out = []
    bar = ctx.progress(len(texts), desc)
    for lo in range(0, len(texts), ctx.batch_size):
        hi = lo + ctx.batch_size
        out.append(classifier.logits(list(images[lo:hi]), list(texts[lo:hi])))
        bar.update(len(texts[lo:hi]))
    bar.close()
    return torch.cat(out) if out else torch.zeros(0, len(classifier.label_names))


def yes_no(logits: torch.Tensor, label_names: Sequence[str], probe: str) -> tuple[np.ndarray, np.ndarray]:
    """The yes/no reading of VQA logits: ``(says_yes, outside)``, where ``says_yes`` is whether
    the ``yes`` logit beats the ``no`` logit (the answer restricted to the two a yes/no question
    allows) and ``outside`` whether the unrestricted top answer is neither."""
    names = list(label_names)
    if "yes" not in names or "no" not in names:
        raise ProbeError(f"probe {probe} needs a VQA classifier whose answers include 'yes' and 'no'")
    y, n = names.index("yes"), names.index("no")
    top = logits.argmax(-1)
    says_yes = (logits[:, y] > logits[:, n]).numpy()
    outside = ((top != y) & (top != n)).numpy()
    return says_yes, outside


def scene_count(ctx: ProbeContext, split: str, n: int, probe: str) -> int:
    """``n`` scenes of ``split``, refused with a clear error when the split has fewer."""
    size = ctx.world.split_size(split)
    if n > size:
        raise ProbeError(f"probe {probe}: --n {n} is more than the {size} scenes of split {split!r}")
    return n


def vqa_items(ctx: ProbeContext, args: Any, probe: str, default_n: int = 300) -> tuple[Classifier, str, Any, int, Any]:
    """What the VQA perturbation probes start from: the shapes-VQA classifier, the split
    (``--split``), its :class:`~flava_zoo.data.shapes.ShapesVQA`, the number of scenes and
    the probe's seeded generator."""
    import random

    from ..data.shapes import ShapesVQA

    clf = ctx.need_classifier(probe, ["shapes/vqa"])
    split = str(getattr(args, "split", "test") or "test")
    try:
        vqa = ShapesVQA(ctx.world, split)
    except ValueError as e:
        raise ProbeError(f"--split: {e}") from None
    n = scene_count(ctx, split, ctx.items(default_n), probe)
    return clf, split, vqa, n, random.Random(f"{probe}/{ctx.seed}")


def bar_figure(ctx: ProbeContext, probe: str, name: str, measures: Mapping[str, Measure], caption: str, ylabel: str = "%") -> None:
    """One bar per measure (value, 95% interval as an error bar, its chance level as a short
    dashed line over the bar), saved through ``ctx.writer.figure``."""
    from .common import pyplot

    plt = pyplot()
    names = list(measures)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(names) + 1.5), 3.4))
    x = np.arange(len(names))
    values = [measures[k].value for k in names]
    low = [measures[k].value - measures[k].interval.low if measures[k].interval else 0.0 for k in names]
    high = [measures[k].interval.high - measures[k].value if measures[k].interval else 0.0 for k in names]
    ax.bar(x, values, yerr=[low, high], capsize=3, color="#4c78a8")
    for i, k in enumerate(names):
        if measures[k].chance is not None:
            ax.hlines(measures[k].chance, i - 0.4, i + 0.4, colors="#d62728", linestyles="dashed",
                      label="chance" if i == min(j for j, m in enumerate(names) if measures[m].chance is not None) else None)  # fmt: skip
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.axhline(0, color="black", linewidth=0.6)
    if any(m.chance is not None for m in measures.values()):
        ax.legend(fontsize=8)
    ax.set_title(f"{probe}: {name}", fontsize=9)
    ctx.writer.figure(probe, name, fig, caption)
