"""Does the classifier need both modalities at once? Modality ablation and EMAP.

Runs a fine-tuned two-input classifier (``--classifier``: shapes VQA, memes-like or visual
entailment) on ``N`` test items of the shapes world (default 200, ``--split test``) and
reports, in the task's metric (accuracy; for the memes-like task AUROC of the class-1
logit margin, and accuracy; VQA accuracy is exact match of the top answer):

* ``full/<metric>``: the model's score on the true pairs, ``f(i, i)``;
* ``emap/<metric>``: the score of its empirical multimodally-additive projection (EMAP,
  Hessel & Lee, EMNLP 2020). With ``f(i, j)`` the logits of image ``i`` with text ``j``
  over all ``N x N`` pairs, per logit::

      f_hat(i, i) = mean_j f(i, j) + mean_k f(k, i) - mean_{k,j} f(k, j)

  the least-squares projection of ``f``, over all ``N x N`` pairs, onto functions
  ``g(image) + h(text)``. A model
  whose outputs are a sum of an image term and a text term has ``f_hat == f``: the same
  score. What EMAP loses is what needs the two inputs together;
* ``image_only/<metric>`` and ``text_only/<metric>``: the two unimodal parts of EMAP alone,
  ``mean_j f(i, j)`` (the text averaged out) and ``mean_k f(k, i)`` (the image averaged out);
* modality ablation: ``image_blank`` (every image replaced by one constant image whose
  every pixel is FLAVA's normalisation mean colour, RGB (123, 117, 104): zeros, to within
  the 1/255 rounding, after the default transform), ``image_shuffle`` (item ``i``'s text with
  item ``d(i)``'s image, ``d`` a random derangement drawn with ``--seed``: no item keeps its
  own image), ``text_blank`` (the empty string: only ``[CLS] [SEP]``) and ``text_shuffle``
  (item ``i``'s image with item ``d'(i)``'s text), each scored against item ``i``'s label,
  and ``drop/<ablation>/<metric> = full - ablated`` (percentage points);
* ``interaction_gap/<metric> = full - emap`` (percentage points) and the share of the
  score above chance that needs interaction::

      interaction_share = 100 * (full - emap) / (full - chance)

  not clipped: about 0 for an additive model, 100 when EMAP is at chance, negative when the
  projection scores higher than the model (it can: EMAP is fitted to the logits, not the
  labels), above 100 when it scores below chance. It is reported only when ``full`` is
  above chance beyond doubt, the lower end of its 95% interval above chance: near chance
  the denominator is noise and the ratio unbounded (a memes-like accuracy of 57 [51, 64]
  against a chance of 54.5 gave 620%). Bootstrap resamples where ``full`` is at or below
  chance are left out of its interval.

Chance: the majority label's share of the ``N`` items for accuracy (a constant answer), 50
for AUROC. Intervals: 95% percentile bootstrap over the ``N`` items (1,000 resamples,
``--seed``); the items are resampled jointly for every difference and for the share, and the
chance level is held at its value on all items. The shuffled scores are read off the same
``N x N`` grid as EMAP. Labels are matched to the classifier's label set by name.

Cost: ``N^2`` fusion passes (40,000 at ``N = 200``) plus ``2 N`` for the blanked inputs. For a
fine-tuning checkpoint of ``flava-zoo fit`` (a fusion-encoder classifier) the image and text
towers run once per item and only the fusion encoder and head run per pair; any other
classifier runs ``N^2`` full forward passes. Memory: ``N^2 x classes`` logits (VQA's 21
answers at ``N = 200``: 7 MB in float64).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..stats import Interval, bootstrap_interval
from ..transforms import FLAVA_MEAN
from .common import Classifier, Measure, ProbeContext, ProbeError, batched, pyplot

__all__ = [
    "ABLATIONS",
    "DEFAULT_N",
    "METRICS",
    "SUMMARY",
    "TASKS",
    "InteractionResult",
    "Metric",
    "add_arguments",
    "auroc",
    "blank_image",
    "classifier_grid",
    "derangement",
    "emap",
    "interaction_share",
    "logit_grid",
    "measure",
    "run",
]

SUMMARY = "modality ablation and EMAP: how much of the score needs both modalities?"
DEFAULT_N = 200
RESAMPLES = 1000
ABLATIONS = ("image_blank", "image_shuffle", "text_blank", "text_shuffle")
"""The modality ablations, in the order they are reported."""


# ----------------------------------------------------------------------------- metrics
def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for ``labels`` (1 positive, 0 negative), in
    [0, 1]: over every (positive, negative) pair, the mean of ``[s_pos > s_neg] + 0.5
    [s_pos == s_neg]`` (the Mann-Whitney statistic); NaN when one class is missing.
    Hand-written on numpy (two ``searchsorted`` calls) rather than scikit-learn's
    ``roc_auc_score``: it runs in every bootstrap resample, where a one-class resample must
    give NaN (left out by :func:`~flava_zoo.stats.bootstrap_interval`) instead of raising,
    at a fraction of the cost; the test checks it against scikit-learn's."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(labels) > 0.5
    pos, neg = scores[positive], np.sort(scores[~positive])
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    below = np.searchsorted(neg, pos, side="left")
    tied = np.searchsorted(neg, pos, side="right") - below
    return float((below.sum() + 0.5 * tied.sum()) / (len(pos) * len(neg)))


@dataclass(frozen=True)
class Metric:
    """A task metric over per-item rows, so it can be bootstrapped.

    ``kind`` ``"accuracy"``: a row is ``100 * [argmax logits == label]``, the value their mean,
    chance the majority label's share (percent). ``kind`` ``"auroc"`` (two classes): a row is
    ``(logit_1 - logit_0, label)``, the value ``100 * AUROC`` (:func:`auroc`: the class-1
    probability ranks as its logit margin does), chance 50.
    """

    name: str
    kind: str

    def rows(self, logits: Tensor, labels: np.ndarray) -> np.ndarray:
        """Per-item rows ``(N, k)`` of ``logits`` ``(N, classes)`` against ``labels`` ``(N,)``."""
        logits = torch.as_tensor(logits, dtype=torch.float64)
        labels = np.asarray(labels)
        if self.kind == "accuracy":
            correct = logits.argmax(-1).numpy() == labels
            return (correct.astype(np.float64) * 100.0)[:, None]
        if self.kind == "auroc":
            if logits.shape[1] != 2:
                raise ProbeError(f"AUROC needs a two-class head; this one has {logits.shape[1]} outputs")
            margin = (logits[:, 1] - logits[:, 0]).numpy()
            return np.stack([margin, labels.astype(np.float64)], axis=1)
        raise ValueError(f"unknown metric kind {self.kind!r}")

    def value(self, rows: np.ndarray) -> float:
        """The metric (percent) of ``rows``."""
        if self.kind == "accuracy":
            return float(rows[:, 0].mean())
        return 100.0 * auroc(rows[:, 0], rows[:, 1])

    def chance(self, labels: np.ndarray) -> float:
        """The score at chance on items with these ``labels`` (percent)."""
        if self.kind == "auroc":
            return 50.0
        _, counts = np.unique(np.asarray(labels), return_counts=True)
        return float(100.0 * counts.max() / counts.sum())


ACCURACY = Metric("accuracy", "accuracy")
AUROC = Metric("auroc", "auroc")

METRICS: dict[str, tuple[Metric, ...]] = {
    "shapes/vqa": (ACCURACY,),
    "shapes/memes": (AUROC, ACCURACY),
    "shapes/visual_entailment": (ACCURACY,),
}
"""Each task's metrics, its primary one (the interaction share's) first."""

TASKS: dict[str, tuple[str, str]] = {
    "shapes/vqa": ("ShapesVQA", "question"),
    "shapes/memes": ("ShapesMemes", "text"),
    "shapes/visual_entailment": ("ShapesEntailment", "hypothesis"),
}
"""The tasks this probe scores: task name -> (shapes dataset class, its text field)."""


# -------------------------------------------------------------------------- the grid
ScoreFn = Callable[[Sequence[Any], Sequence[str]], Tensor]
"""``score_fn(images, texts) -> (B, classes)`` logits of aligned image and text batches."""


def blank_image(size: int | tuple[int, int]) -> Image.Image:
    """The image-blank input: every pixel FLAVA's normalisation mean colour (RGB 123, 117,
    104), which the default transform maps to zeros to within the 1/255 rounding."""
    side = (size, size) if isinstance(size, int) else size
    colour = tuple(int(round(255 * m)) for m in FLAVA_MEAN)
    return Image.new("RGB", side, colour)


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random permutation of ``range(n)`` without fixed points (``n >= 2``), by
    rejection: a random permutation is one with probability about 1/e."""
    if n < 2:
        raise ProbeError(f"shuffling needs at least 2 items, got --n {n}")
    while True:
        perm = rng.permutation(n)
        if not np.any(perm == np.arange(n)):
            return perm


def logit_grid(score_fn: ScoreFn, images: Sequence[Any], texts: Sequence[str], batch_size: int = 64,
               progress: Any = None) -> Tensor:  # fmt: skip
    """``(N, N, classes)`` logits ``f[i, j]`` of image ``i`` with text ``j``: every pair
    through ``score_fn``, ``batch_size`` pairs at a time (``N^2`` forward passes)."""
    n = len(images)
    if len(texts) != n:
        raise ValueError(f"{n} images but {len(texts)} texts")
    pairs = [(i, j) for i in range(n) for j in range(n)]
    out = []
    for chunk in batched(pairs, batch_size):
        out.append(torch.as_tensor(score_fn([images[i] for i, _ in chunk], [texts[j] for _, j in chunk])).float())
        if progress is not None:
            progress.update(len(chunk))
    return torch.cat(out).reshape(n, n, -1)


def _fused_module(clf: Classifier) -> Any:
    """The :class:`~flava_zoo.downstream.FinetuneModule` behind ``clf`` when it is a
    fusion-encoder classifier (its towers can run once per item), else ``None`` (a
    late-fusion head reads the two embeddings, not the fusion encoder: it runs as given)."""
    modules = sys.modules.get("flava_zoo.downstream.modules")  # loaded if clf is one: no import
    owner = getattr(clf.forward, "__self__", None)
    if (
        modules is not None
        and isinstance(owner, modules.FinetuneModule)
        and owner.hparams.get("inputs") == "multimodal"
        and not owner.hparams.get("late_fusion")
        and owner.head is not None
        and owner.model.fusion_encoder is not None
    ):
        return owner
    return None


def _pair_indices(n: int, batch_size: int, device: Any) -> Any:
    """Image and text indices ``(i, j)`` of every pair, image-major, ``batch_size`` at a time."""
    flat = torch.arange(n * n, device=device)
    for lo in range(0, n * n, batch_size):
        idx = flat[lo : lo + batch_size]
        yield idx // n, idx % n


@torch.no_grad()
def classifier_grid(clf: Classifier, images: Sequence[Any], texts: Sequence[str], batch_size: int = 64,
                    progress: Any = None, cache_towers: bool = True) -> Tensor:  # fmt: skip
    """:func:`logit_grid` of ``clf``, each input prepared once: the ``N`` images transformed
    and the ``N`` texts tokenized together (padded to the longest of them; padding is
    masked), then ``clf.forward`` on every pair. For a fusion-encoder fine-tuning checkpoint
    (and ``cache_towers``) the towers too run once per image and per text, and only fusion
    and head per pair. The logits are those of :meth:`Classifier.logits` on each pair to
    float rounding, at a fraction of the cost."""
    from ..models.encoders import EncoderOutput

    n = len(images)
    if len(texts) != n:
        raise ValueError(f"{n} images but {len(texts)} texts")
    pixels = torch.cat([clf.batch(chunk, None)["pixel_values"] for chunk in batched(list(images), batch_size)])
    enc = clf.batch(None, list(texts))
    module = None if not cache_towers else _fused_module(clf)
    out = []
    if module is None:
        for ii, jj in _pair_indices(n, batch_size, pixels.device):
            batch = {"pixel_values": pixels[ii], **{k: v[jj] for k, v in enc.items()}}
            out.append(torch.as_tensor(clf.forward(batch)).float().cpu())
            if progress is not None:
                progress.update(len(ii))
        return torch.cat(out).reshape(n, n, -1)
    model = module.model
    image_state = torch.cat([model.encode_image(chunk).prenorm_state for chunk in pixels.split(batch_size)])
    ids, mask, types = enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids")
    text_state = torch.cat(
        [
            model.encode_text(
                ids[lo : lo + batch_size], mask[lo : lo + batch_size],
                None if types is None else types[lo : lo + batch_size],
            ).prenorm_state
            for lo in range(0, n, batch_size)
        ]
    )  # fmt: skip
    for ii, jj in _pair_indices(n, batch_size, pixels.device):
        image = EncoderOutput(image_state[ii], image_state[ii])
        text = EncoderOutput(text_state[jj], text_state[jj], mask[jj])
        out.append(module.head(model.fuse(image, text).cls).float().cpu())
        if progress is not None:
            progress.update(len(ii))
    return torch.cat(out).reshape(n, n, -1)


def emap(grid: Tensor) -> Tensor:
    """The EMAP logits ``(N, classes)`` of a grid ``f[i, j]`` (image ``i``, text ``j``):
    ``f_hat(i, i) = mean_j f(i, j) + mean_k f(k, i) - mean_{k,j} f(k, j)``, per logit."""
    grid = grid.double()
    return grid.mean(1) + grid.mean(0) - grid.mean((0, 1))


def interaction_share(full: float, projected: float, chance: float) -> float:
    """``100 * (full - projected) / (full - chance)``; NaN when ``full <= chance``."""
    if not full - chance > 0:
        return float("nan")
    return 100.0 * (full - projected) / (full - chance)


# ---------------------------------------------------------------------- measurement
@dataclass
class InteractionResult:
    """What :func:`measure` found: per metric and condition its score with interval
    (``scores[metric][condition]``; conditions ``full``, ``emap``, ``image_only``,
    ``text_only`` and :data:`ABLATIONS`), the drops ``full - ablated`` and the interaction
    gap ``full - emap`` (``differences[metric][name]``, percentage points), the share
    (``shares[metric]``, ``None`` when ``full`` is at chance), the chance levels, and the
    raw logits (``logits[condition]``, ``(N, classes)``)."""

    n: int
    scores: dict[str, dict[str, Interval]] = field(default_factory=dict)
    differences: dict[str, dict[str, Interval]] = field(default_factory=dict)
    shares: dict[str, Interval | None] = field(default_factory=dict)
    chance: dict[str, float] = field(default_factory=dict)
    logits: dict[str, Tensor] = field(default_factory=dict)


def _joint_interval(metric: Metric, parts: Sequence[np.ndarray], combine: Callable[..., float], seed: int) -> Interval:
    """Bootstrap interval of ``combine(metric on part 0, metric on part 1, ...)``, the parts'
    rows resampled jointly (the same items in every part)."""
    widths = [p.shape[1] for p in parts]
    rows = np.hstack(parts)

    def statistic(r: np.ndarray) -> float:
        values, lo = [], 0
        for w in widths:
            values.append(metric.value(r[:, lo : lo + w]))
            lo += w
        return combine(*values)

    return bootstrap_interval(rows, statistic, resamples=RESAMPLES, seed=seed)


def _score_interval(metric: Metric, rows: np.ndarray, seed: int) -> Interval:
    """Bootstrap interval of the metric on ``rows`` (vectorised for a mean)."""
    if metric.kind == "accuracy":
        return bootstrap_interval(rows[:, 0], resamples=RESAMPLES, seed=seed)
    return _joint_interval(metric, [rows], lambda v: v, seed)


def _difference_interval(metric: Metric, a: np.ndarray, b: np.ndarray, seed: int) -> Interval:
    """Bootstrap interval of ``metric(a) - metric(b)``, the items resampled jointly."""
    if metric.kind == "accuracy":
        return bootstrap_interval(a[:, 0] - b[:, 0], resamples=RESAMPLES, seed=seed)
    return _joint_interval(metric, [a, b], lambda x, y: x - y, seed)


def _batched_logits(score_fn: ScoreFn, images: Sequence[Any], texts: Sequence[str], batch_size: int) -> Tensor:
    out = []
    for lo in range(0, len(images), batch_size):
        out.append(torch.as_tensor(score_fn(images[lo : lo + batch_size], texts[lo : lo + batch_size])).float())
    return torch.cat(out)


def measure(
    score_fn: ScoreFn,
    images: Sequence[Any],
    texts: Sequence[str],
    labels: Sequence[int],
    metrics: Sequence[Metric] = (ACCURACY,),
    *,
    seed: int = 0,
    batch_size: int = 64,
    grid: Tensor | None = None,
    progress: Any = None,
) -> InteractionResult:
    """Modality ablation and EMAP of ``score_fn`` (``(images, texts) -> (B, classes)``
    logits) on ``N`` items ``(images[i], texts[i], labels[i])``, scored with ``metrics``
    (the module docstring has every formula). ``grid``: the ``(N, N, classes)`` logits of
    every pair when already computed (:func:`classifier_grid`), else :func:`logit_grid`."""
    n = len(images)
    if not (n == len(texts) == len(labels)):
        raise ValueError(f"{n} images, {len(texts)} texts and {len(labels)} labels: one each per item")
    if n < 2:
        raise ProbeError(f"EMAP and shuffling need at least 2 items, got --n {n}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    image_perm, text_perm = derangement(n, rng), derangement(n, rng)
    if grid is None:
        grid = logit_grid(score_fn, images, texts, batch_size, progress)
    if grid.shape[:2] != (n, n):
        raise ValueError(f"the grid is {tuple(grid.shape)}, expected ({n}, {n}, classes)")
    grid = grid.double()
    ar = torch.arange(n)
    logits = {
        "full": grid[ar, ar],
        "emap": emap(grid),
        "image_only": grid.mean(1),
        "text_only": grid.mean(0),
        "image_blank": _batched_logits(score_fn, [blank_image(images[0].size)] * n, list(texts), batch_size).double(),
        "image_shuffle": grid[torch.as_tensor(image_perm), ar],
        "text_blank": _batched_logits(score_fn, list(images), [""] * n, batch_size).double(),
        "text_shuffle": grid[ar, torch.as_tensor(text_perm)],
    }
    result = InteractionResult(n=n, logits=logits)
    for metric in metrics:
        rows = {cond: metric.rows(value, labels) for cond, value in logits.items()}
        if not np.isfinite(metric.value(rows["full"])):
            raise ProbeError(f"{metric.name} is undefined on these {n} items (one class only): raise --n")
        chance = metric.chance(labels)
        result.chance[metric.name] = chance
        result.scores[metric.name] = {cond: _score_interval(metric, r, seed) for cond, r in rows.items()}
        diffs = {"interaction_gap": _difference_interval(metric, rows["full"], rows["emap"], seed)}
        for ablation in ABLATIONS:
            diffs[f"drop/{ablation}"] = _difference_interval(metric, rows["full"], rows[ablation], seed)
        result.differences[metric.name] = diffs
        result.shares[metric.name] = None
        if result.scores[metric.name]["full"].low > chance:
            try:
                result.shares[metric.name] = _joint_interval(
                    metric, [rows["full"], rows["emap"]], lambda a, b, c=chance: interaction_share(a, b, c), seed
                )
            except ValueError:  # at chance on every resample: no share, as on all items
                pass
    return result


# ------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The probe's options: the shapes split to take the items from, and the tower cache."""
    parser.add_argument("--split", default="test", choices=("val", "test", "test_novel"),
                        help="the shapes split of the N items (default: test)")  # fmt: skip
    parser.add_argument("--no-tower-cache", dest="no_tower_cache", action="store_true",
                        help="run every pair through the whole classifier, towers included (N^2 full passes)")  # fmt: skip


def _label_names(dataset: Any) -> list[str]:
    """The names of a shapes task dataset's labels, in label order."""
    if hasattr(dataset, "answer_vocabulary"):
        return list(dataset.answer_vocabulary())
    if hasattr(dataset, "LABELS"):
        return list(dataset.LABELS)
    from ..tasks.memes import SHAPES_MEMES_LABELS

    return list(SHAPES_MEMES_LABELS)


def _items(ctx: ProbeContext, clf: Classifier, split: str, n: int) -> tuple[list[Any], list[str], np.ndarray]:
    """``n`` items of the classifier's shapes task: PIL images, texts, and labels as indices
    of the classifier's own label set (matched by name)."""
    from ..data import shapes

    cls_name, text_key = TASKS[str(clf.task)]
    dataset = getattr(shapes, cls_name)(ctx.world, split)
    if n > len(dataset):
        raise ProbeError(f"--n {n}: the {split} split has {len(dataset)} items")
    names = _label_names(dataset)
    missing = sorted(set(names) - set(clf.label_names))
    if missing:
        raise ProbeError(f"--classifier {clf.name} has no label {missing[0]!r} of {clf.task}: another label set")
    index = {name: clf.label_names.index(name) for name in names}
    images, texts, labels = [], [], []
    for i in range(n):
        item = dataset[i]
        images.append(item["image"])
        texts.append(item[text_key])
        labels.append(index[names[int(item["label"])]])
    return images, texts, np.asarray(labels)


def _figure(ctx: ProbeContext, result: InteractionResult, metric: Metric, task: str, split: str) -> None:
    plt = pyplot()
    conds = ["full", "emap", "image_only", "text_only", *ABLATIONS]
    scores = result.scores[metric.name]
    values = [scores[c].estimate for c in conds]
    low = [scores[c].estimate - scores[c].low for c in conds]
    high = [scores[c].high - scores[c].estimate for c in conds]
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#2ca02c", "#7f7f7f", "#7f7f7f", "#9467bd", "#9467bd"]
    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    ax.bar(range(len(conds)), values, yerr=[low, high], color=colours, capsize=3)
    ax.axhline(result.chance[metric.name], color="k", linestyle="--", linewidth=1, label="chance")
    ax.set_xticks(range(len(conds)), [c.replace("_", "\n") for c in conds], fontsize=8)
    ax.set_ylabel(f"{metric.name} (%)")
    share = result.shares[metric.name]
    share_text = "undefined (full not above chance)" if share is None else f"{share:.1f}%"
    ax.set_title(f"{task} {split}, N={result.n}: interaction share {share_text}", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    ctx.writer.figure(
        "interactions", metric.name, fig,
        f"{metric.name} of the classifier on {task} ({split}, N={result.n}): the full model, its "
        "EMAP projection, EMAP's unimodal parts, and the image / text blanked or shuffled; 95% "
        "bootstrap intervals; dashed: chance",
    )  # fmt: skip


def run(ctx: ProbeContext, args: argparse.Namespace) -> list[Any]:
    """Score ``--classifier`` on ``N`` items of its shapes task: full, EMAP, unimodal parts,
    the four ablations, their drops and the interaction share; one bar chart per metric."""
    clf = ctx.need_classifier("interactions", list(TASKS))
    task = clf.task
    if task not in TASKS:
        raise ProbeError(
            f"--classifier {clf.name} does not say which shapes task it was trained on; "
            f"probe interactions scores {', '.join(TASKS)}"
        )
    if clf.inputs != "multimodal":
        raise ProbeError(f"--classifier {clf.name} reads {clf.inputs} inputs only: interactions needs both")
    split = getattr(args, "split", "test")
    n = ctx.items(DEFAULT_N)
    images, texts, labels = _items(ctx, clf, split, n)
    cached = not getattr(args, "no_tower_cache", False) and _fused_module(clf) is not None
    if not ctx.quiet:
        how = "fusion + head passes (towers once per item)" if cached else "full forward passes"
        print(f"probe interactions: {n * n:,} {how} for N={n}, plus {2 * n} with a blanked input", file=sys.stderr)
    bar = ctx.progress(n * n, "interactions: pairs")
    try:
        grid = classifier_grid(clf, images, texts, ctx.batch_size, bar, cache_towers=cached)
    finally:
        bar.close()
    metrics = METRICS[task]
    result = measure(clf.logits, images, texts, labels, metrics, seed=ctx.seed, batch_size=ctx.batch_size, grid=grid)
    hyper = {"n": n, "split": split, "task": task, "fusion_passes": n * n, "tower_cache": cached,
             "blank_image": "FLAVA mean colour", "blank_text": "", "resamples": RESAMPLES}  # fmt: skip
    records: list[Any] = []
    for metric in metrics:
        m, chance = metric.name, result.chance[metric.name]
        measures = {
            f"{cond}/{m}": Measure(iv.estimate, iv, chance=chance) for cond, iv in result.scores[m].items()
        }
        measures.update({f"{name}/{m}": Measure(iv.estimate, iv) for name, iv in result.differences[m].items()})
        share = result.shares[m]
        if share is not None:
            measures[f"interaction_share/{m}"] = Measure(share.estimate, share)
        elif not ctx.quiet:
            print(f"probe interactions: full {m} is not above chance beyond its 95% interval: no interaction share",
                  file=sys.stderr)
        records += ctx.writer.write("interactions", split, measures, n, hyper)
    _figure(ctx, result, metrics[0], task, split)
    return records
