"""winoground: two captions with the same words in a different order, two images; does the
model match each caption to its image (Thrush et al., "Winoground", CVPR 2022)?

An item is a 2x2 matrix of scores ``s(C, I)`` of captions C0, C1 against images I0, I1,
where C0 describes I0 and C1 describes I1. Per item (Thrush et al.'s definitions):

* text score = ``s(C0, I0) > s(C1, I0)`` and ``s(C1, I1) > s(C0, I1)`` (each image picks its
  caption), chance 25%;
* image score = ``s(C0, I0) > s(C0, I1)`` and ``s(C1, I1) > s(C1, I0)`` (each caption picks
  its image), chance 25%;
* group score = both, chance 1/6 = 16.67% (of the 24 orderings of four distinct random
  scores, 4 satisfy both).

Scores are the percentage of items that pass, with 95% bootstrap intervals over items,
for two scorers: the ITM head's match probability (``itm_*``, when the model has an ITM
head) and the contrastive cosine (``cosine_*``). A model without any compositional
understanding is at or *below* chance: a caption-only bias (a caption scored higher whatever
the image) fails the text score every time.

Shapes items (default): from ``test`` scenes with two objects A, B of different colours and
different shapes, C0 = ``"a large red circle left of a small blue square"`` (the captions'
noun phrases and A's relation to B), I0 the scene, and three swaps, each its own metrics
(``colour_swap/...``, ``shape_swap/...``, ``relation_swap/...``; ``all/...`` pools them):

* colour swap: C1 exchanges the two colour words, I1 repaints A and B with each other's colour;
* shape swap: C1 exchanges the two shape words, I1 redraws A and B as each other's shape;
* relation swap: C1 names B first (``"a small blue square left of a large red circle"``),
  I1 exchanges A's and B's positions.

Swaps that would create a held-out colour-shape combination, repeat one already in the
scene, or move an object off the image or onto a third one are skipped. N items per kind
(200 by default), the first that qualify in ``test`` order.

User items: ``--jsonl FILE``, one JSON object a line with the official Winoground fields
``id``, ``caption_0``, ``caption_1``, ``image_0``, ``image_1`` (image paths relative to the
file; a name without a suffix, as in the official ``examples.jsonl``, is looked up as
``images/<name>.png`` beside it) and optionally ``tag``: metrics ``all/...`` and, per tag,
``tag=<tag>/...``; the records' split is the file's name. ``--n`` takes the first N lines.

Figure ``scores`` (``scores_<file name>`` for ``--jsonl``): text, image and group scores per kind and scorer, with intervals and
the chance levels. Cost: 4 ITM forward passes and 4 embeddings per item.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.shapes import Scene, ShapeObject, relation
from ..stats import bootstrap_interval
from .common import Measure, ProbeContext, ProbeError, pyplot

__all__ = [
    "CHANCE",
    "KINDS",
    "WinogroundItem",
    "add_arguments",
    "read_jsonl",
    "run",
    "score_matrices",
    "shapes_items",
    "swap",
    "winoground_scores",
]

KINDS: tuple[str, ...] = ("colour", "shape", "relation")
"""The shapes swap kinds."""

CHANCE: dict[str, float] = {"text_score": 25.0, "image_score": 25.0, "group_score": 100.0 / 6.0}
"""Each score of four distinct random scores, in percent."""

REQUIRED_FIELDS: tuple[str, ...] = ("id", "caption_0", "caption_1", "image_0", "image_1")
"""The fields every line of a ``--jsonl`` file must have (the official Winoground names)."""

DEFAULT_N = 200
_SEPARATION = 0.9
"""Centres at least this share of the two radii apart (the world's own placement rule)."""


@dataclass(frozen=True)
class WinogroundItem:
    """One 2x2 item: ``caption_0`` describes ``image_0`` and ``caption_1`` ``image_1`` (PIL
    images); ``tag`` groups items in the records (the swap kind, or the file's ``tag``)."""

    id: str
    caption_0: str
    caption_1: str
    image_0: Any
    image_1: Any
    tag: str = ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The probe's options: a user file, the swap kinds, the scorers."""
    parser.add_argument("--jsonl", default=None, help="a Winoground-style JSONL of 2x2 items (id, caption_0, caption_1, image_0, image_1[, tag]); default: shapes swaps")
    parser.add_argument("--kinds", default=",".join(KINDS), help="shapes swap kinds, comma-separated: colour, shape, relation")
    parser.add_argument("--scorers", default="itm,cosine", help="itm (ITM match probability) and/or cosine (contrastive), comma-separated")


# ------------------------------------------------------------------------------ scores
def winoground_scores(scores: Any) -> dict[str, np.ndarray]:
    """Per-item text, image and group scores (1.0 / 0.0) of an ``(N, 2, 2)`` array of
    ``s[caption, image]`` (Thrush et al. 2022): text = ``s00 > s10 and s11 > s01``, image =
    ``s00 > s01 and s11 > s10``, group = text and image. Ties fail."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 3 or s.shape[1:] != (2, 2):
        raise ValueError(f"scores must be (items, 2 captions, 2 images), got shape {s.shape}")
    text = (s[:, 0, 0] > s[:, 1, 0]) & (s[:, 1, 1] > s[:, 0, 1])
    image = (s[:, 0, 0] > s[:, 0, 1]) & (s[:, 1, 1] > s[:, 1, 0])
    return {"text_score": text.astype(np.float64), "image_score": image.astype(np.float64),
            "group_score": (text & image).astype(np.float64)}  # fmt: skip


def score_matrices(ctx: ProbeContext, items: Sequence[WinogroundItem], scorer: str) -> np.ndarray:
    """The ``(N, 2, 2)`` scores ``s[caption, image]`` of ``items`` by ``scorer``: ``itm`` (the
    ITM head's match probability of the fused pair) or ``cosine`` (of the normalised
    contrastive embeddings)."""
    images = [im for it in items for im in (it.image_0, it.image_1)]
    captions = [c for it in items for c in (it.caption_0, it.caption_1)]
    n = len(items)
    if scorer == "cosine":
        ie = ctx.embed(images=images).reshape(n, 2, -1)
        te = ctx.embed(texts=captions).reshape(n, 2, -1)
        return torch.einsum("ncd,nid->nci", te, ie).numpy()
    if scorer == "itm":
        pair_images = [it_im for it in items for _ in range(2) for it_im in (it.image_0, it.image_1)]
        pair_texts = [c for it in items for c in (it.caption_0, it.caption_1) for _ in range(2)]
        return ctx.itm_probability(pair_images, pair_texts).reshape(n, 2, 2).numpy()
    raise ProbeError(f"--scorers: unknown scorer {scorer!r}; scorers: itm, cosine")


# ------------------------------------------------------------------------ shapes items
def _phrase(obj: ShapeObject) -> str:
    return f"{obj.size} {obj.colour} {obj.shape}"


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _describe(a: ShapeObject, b: ShapeObject) -> str:
    """``"a large red circle left of a small blue square"``: A, its relation to B, B."""
    return f"{_article(_phrase(a))} {relation(a, b)} {_article(_phrase(b))}"


def _fits(objects: Sequence[ShapeObject], moved: Sequence[int]) -> bool:
    for i in moved:
        o = objects[i]
        if not (o.radius <= o.x <= 1 - o.radius and o.radius <= o.y <= 1 - o.radius):
            return False
        for j, p in enumerate(objects):
            if j != i and j not in moved and (o.x - p.x) ** 2 + (o.y - p.y) ** 2 < (_SEPARATION * (o.radius + p.radius)) ** 2:
                return False
    return True


def swap(scene: Scene, i: int, j: int, kind: str, heldout: frozenset[tuple[str, str]] = frozenset()) -> tuple[str, str, Scene] | None:
    """The swap ``kind`` of objects ``i`` (A) and ``j`` (B) of ``scene``: ``(C0, C1, I1's
    scene)``, or ``None`` when it does not apply (A and B share a colour or a shape, the
    swap makes a combination of ``heldout`` or one already in the scene, or an exchanged
    position leaves the image or lands on a third object)."""
    a, b = scene.objects[i], scene.objects[j]
    if a.colour == b.colour or a.shape == b.shape:
        return None
    c0 = _describe(a, b)
    if kind == "colour":
        a1, b1 = replace(a, colour=b.colour), replace(b, colour=a.colour)
        c1 = _describe(a1, b1)
    elif kind == "shape":
        a1, b1 = replace(a, shape=b.shape), replace(b, shape=a.shape)
        c1 = _describe(a1, b1)
    elif kind == "relation":
        a1, b1 = replace(a, x=b.x, y=b.y), replace(b, x=a.x, y=a.y)
        c1 = _describe(b1, a1)  # B now stands where A stood: relation(b1, a1) == relation(a, b)
    else:
        raise ProbeError(f"--kinds: unknown swap kind {kind!r}; kinds: {', '.join(KINDS)}")
    objects = list(scene.objects)
    objects[i], objects[j] = a1, b1
    combos = [o.combination for o in objects]
    if len(set(combos)) != len(combos) or any(c in heldout for c in (a1.combination, b1.combination)):
        return None
    if kind == "relation" and not _fits(objects, (i, j)):
        return None
    return c0, c1, replace(scene, objects=tuple(objects))


def shapes_items(world: Any, kind: str, n: int, split: str = "test") -> list[WinogroundItem]:
    """The first ``n`` swap items of ``kind`` over the scenes of ``split``, one per scene
    (its first object pair, in scene order, that :func:`swap` accepts)."""
    items: list[WinogroundItem] = []
    for index in range(world.split_size(split)):
        scene = world.scene(split, index)
        k = len(scene.objects)
        for i, j in ((i, j) for i in range(k) for j in range(k) if i != j):
            out = swap(scene, i, j, kind, world.heldout_combinations)
            if out is not None:
                c0, c1, scene1 = out
                items.append(WinogroundItem(f"{split}/{index}/{i}{j}", c0, c1, world.render(scene), world.render(scene1), kind))
                break
        if len(items) == n:
            return items
    if not items:
        raise ProbeError(f"no {kind} swap applies to any scene of {split}")
    return items


# --------------------------------------------------------------------------- user files
def _resolve_image(folder: Path, value: str) -> Path | None:
    path = folder / value
    if path.is_file():
        return path
    if not Path(value).suffix:
        for candidate in (folder / "images" / f"{value}.png", folder / f"{value}.png"):
            if candidate.is_file():
                return candidate
    return None


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                yield lineno, line


def read_jsonl(path: str | Path, limit: int | None = None, load: Callable[[Path], Any] | None = None) -> list[WinogroundItem]:
    """The items of a Winoground-style JSONL file (see the module doc), the first ``limit``
    when given. Every line is checked: a :class:`ProbeError` names the file, the line and the
    field that is missing, empty, of the wrong type, or an image that cannot be found or read."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise ProbeError(f"--jsonl {path}: no such file")
    load = load or (lambda p: Image.open(p).convert("RGB"))
    items: list[WinogroundItem] = []
    for lineno, line in _lines(path):
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ProbeError(f"{where}: not JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise ProbeError(f"{where}: a line must be a JSON object, got {type(row).__name__}")
        for name in REQUIRED_FIELDS:
            if name not in row:
                raise ProbeError(f"{where}: field {name!r} is missing (fields: {', '.join(REQUIRED_FIELDS)})")
            value = row[name]
            if name == "id" and not isinstance(value, (int, str)) or name != "id" and not isinstance(value, str):
                raise ProbeError(f"{where}: field {name!r} must be a {'string or integer' if name == 'id' else 'string'}, got {value!r}")
            if isinstance(value, str) and not value.strip():
                raise ProbeError(f"{where}: field {name!r} is empty")
        tag = row.get("tag", "")
        if not isinstance(tag, str):
            raise ProbeError(f"{where}: field 'tag' must be a string, got {tag!r}")
        images = []
        for name in ("image_0", "image_1"):
            found = _resolve_image(path.parent, row[name])
            if found is None:
                raise ProbeError(f"{where}: field {name!r}: no image {row[name]!r} under {path.parent}")
            try:
                images.append(load(found))
            except OSError as e:
                raise ProbeError(f"{where}: field {name!r}: cannot read {found}: {e}") from None
        items.append(WinogroundItem(str(row["id"]), row["caption_0"], row["caption_1"], images[0], images[1], tag))
        if limit is not None and len(items) >= limit:
            break
    if not items:
        raise ProbeError(f"--jsonl {path}: no items")
    return items


# ---------------------------------------------------------------------------------- run
def _names(value: str, allowed: Sequence[str], option: str) -> list[str]:
    names = [v.strip() for v in str(value).split(",") if v.strip()]
    for v in names:
        if v not in allowed:
            raise ProbeError(f"{option}: unknown value {v!r}; one of {', '.join(allowed)}")
    if not names:
        raise ProbeError(f"{option} names nothing")
    return names


def _measures(per_item: Mapping[str, np.ndarray], prefix: str, seed: int) -> dict[str, Measure]:
    return {
        f"{prefix}_{score}": Measure(float(v.mean() * 100), bootstrap_interval(v * 100, seed=seed), CHANCE[score])
        for score, v in per_item.items()
    }


def _figure(ctx: ProbeContext, measures: Mapping[str, Measure], groups: Sequence[str], scorers: Sequence[str], title: str, name: str) -> None:
    plt = pyplot()
    scores = list(CHANCE)
    fig, axes = plt.subplots(1, len(scorers), figsize=(1.5 + 2.2 * len(groups) * len(scorers) / 2, 3.2), squeeze=False)
    width = 0.8 / len(scores)
    for ax, scorer in zip(axes[0], scorers):
        x = np.arange(len(groups))
        for k, (score, colour) in enumerate(zip(scores, ("#4477aa", "#ee6677", "#228833"))):
            ms = [measures[f"{g}/{scorer}_{score}"] for g in groups]
            v = np.array([m.value for m in ms])
            err = [v - [m.interval.low for m in ms], [m.interval.high for m in ms] - v]  # type: ignore[union-attr]
            ax.bar(x + (k - 1) * width, v, width, yerr=err, capsize=2, color=colour, label=score.replace("_", " "))
            ax.axhline(CHANCE[score], color=colour, linestyle="dashed", linewidth=0.8)
        ax.set_xticks(x)
        ax.set_xticklabels(groups, rotation=20, fontsize=8)
        ax.set_ylim(0, 100)
        ax.set_title(f"{scorer} ({title})", fontsize=9)
        ax.set_ylabel("%")
    axes[0][0].legend(fontsize=7)
    ctx.writer.figure(
        "winoground", name, fig,
        f"Winoground text, image and group scores ({title}) per group and scorer, 95% bootstrap "
        "intervals; dashed: chance (25, 25, 16.7).",
    )  # fmt: skip


def run(ctx: ProbeContext, args: argparse.Namespace) -> list[Any]:
    """Score the shapes swaps (or ``--jsonl``'s items) with each scorer and write the
    text, image and group scores per kind (or tag) and pooled."""
    scorers = _names(getattr(args, "scorers", "itm,cosine"), ("itm", "cosine"), "--scorers")
    if "itm" in scorers and ctx.itm_head() is None:
        if scorers == ["itm"]:
            raise ProbeError(f"{ctx.model.name} has no image-text matching head: use --scorers cosine")
        scorers = [s for s in scorers if s != "itm"]
    jsonl = getattr(args, "jsonl", None)
    if jsonl:
        items = read_jsonl(jsonl, limit=ctx.n)
        split = Path(jsonl).name
        tags = sorted({it.tag for it in items if it.tag})
        groups = {"all": list(range(len(items)))} | {f"tag={t}": [k for k, it in enumerate(items) if it.tag == t] for t in tags}
        hyper: dict[str, Any] = {"n": len(items), "scorers": ",".join(scorers), "file": str(jsonl)}
        title = split
    else:
        kinds = _names(getattr(args, "kinds", ",".join(KINDS)), KINDS, "--kinds")
        n = ctx.items(DEFAULT_N)
        items, groups = [], {}
        for kind in kinds:
            made = shapes_items(ctx.world, kind, n)
            groups[f"{kind}_swap"] = list(range(len(items), len(items) + len(made)))
            items += made
        groups = {"all": list(range(len(items)))} | groups
        split = "test"
        hyper = {"n": n, "kinds": ",".join(kinds), "scorers": ",".join(scorers), "seed": ctx.seed}
        title = "shapes swaps"
    per_item = {scorer: winoground_scores(score_matrices(ctx, items, scorer)) for scorer in scorers}
    measures: dict[str, Measure] = {}
    records: list[Any] = []
    for group, idx in groups.items():
        group_measures: dict[str, Measure] = {}
        for scorer in scorers:
            group_measures |= _measures({k: v[idx] for k, v in per_item[scorer].items()}, f"{group}/{scorer}", ctx.seed)
        records += ctx.writer.write("winoground", split, group_measures, len(idx), hyper)
        measures |= group_measures
    _figure(ctx, measures, list(groups), scorers, title, f"scores_{split}" if jsonl else "scores")
    return records
