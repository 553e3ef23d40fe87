"""Relevance: where does the fusion encoder look when the text names an object?

For every object a text names (the shapes world's mentions, e.g. "large red circle"), the
probe reads two maps over the image patches from the fusion encoder, for the object's
token (the shape word's token, ``--token shape``, or the mean over the mention's tokens,
``--token mention``):

* attention: the probabilities of that text token's query over the patch keys, averaged
  over heads and fusion layers (merged fusion: its self-attention rows over the patch
  columns, the multimodal and image class columns left out; co-attention: the text
  stream's cross-attention over the image stream's patches);
* relevance (Chefer, Gur and Wolf, ICCV 2021, "Generic attention-model explainability for
  interpreting bi-modal and encoder-decoder transformers"): R = I, then for every fusion
  layer R <- R + mean_heads(max(0, dy/dA * A)) @ R over the fused sequence
  [cls_mm; image cls; patches; text] (co-attention: each block's two self-attentions, then
  its two cross-attentions, as blocks of one matrix), with y the ITM head's match logit of
  the (image, text) pair; the map is R's row of the object's token over the patch columns.
  The last fusion layer's text rows never reach y, so relevance needs two fusion layers
  and an ITM head; ``--methods auto`` drops it (and says so) where either is missing. Only
  evidence for a match counts (the clamp), so an ITM head that was not trained to match
  gives a flat map there, which scores chance.

Pointing game (patch level): a hit when the map's most relevant patch overlaps the named
object's visible mask (ties share the credit: the hit is the covered fraction of the tied
patches, so a constant map scores exactly chance). Chance for an item is the share of the
patches the object overlaps; the records give each method's hit rate (%, 95% bootstrap
interval over mentions, which cluster by scene) and the mean chance.

That chance is a floor, not the score of a model that ignores the words: attention is drawn
to objects at all (a randomly initialised flava-tiny scores about 45% against a chance of
about 20%, because any salient patch is often the named object's). Hence ``specificity``:
per mention in a scene that names two or more objects, the hit on the named object minus the
mean hit on it of the maps of the scene's other named objects (percentage points; 0 for a
map that does not depend on which object the word names, positive when the word finds its
own object).

Texts: ``--text caption`` (default) scores every mention in the primary caption of each of
the first N scenes of ``--split``; ``--text phrase`` one short text per visible object
("the large red circle"). A model without fusion (fusion='none') has no text-to-patch map:
the probe refuses it. Figures: ``--figures K`` scenes with the image and the named object's
box, its attention map and its relevance map over the image, one colour per patch.

Validation (tests/test_probe_relevance.py): a randomly initialised flava-tiny's specificity
interval holds 0 for both methods; a small model whose first fusion layer was trained with
attention supervision points (attention far above chance, specificity above 0) and its
consistently patch-permuted twin falls to chance. That checks the probe's plumbing; it does not
show that a model trained on a task alone comes to point (the tiny task-trained models tried
stayed at chance on their tasks), nor that relevance rises above chance for any model (the
tested model's ITM head did not learn its task and its relevance map is flat).

Cost: one forward and one backward of the model per batch of (image, text) pairs; N=200
scenes of flava-tiny take a few seconds on a CPU.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..models import record_attention
from ..stats import bootstrap_interval
from .common import Measure, ProbeError, batched, pyplot

SUMMARY = "attention and gradient relevance of object words over patches; pointing game"

METHODS = ("attention", "relevance")
DEFAULT_N = 200


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The probe's own options: split, texts, token choice, methods, figures."""
    parser.add_argument("--split", default="test", help="shapes split of the scenes (default: test)")
    parser.add_argument(
        "--text", default="caption", choices=("caption", "phrase"),
        help="caption: every object named in each scene's primary caption; phrase: 'the SIZE COLOUR SHAPE' per object",
    )  # fmt: skip
    parser.add_argument(
        "--token", default="shape", choices=("shape", "mention"),
        help="the object's token: the shape word's (default) or the mean over the mention's tokens",
    )  # fmt: skip
    parser.add_argument(
        "--methods", default="auto",
        help="comma-separated attention,relevance; auto: both where the model allows relevance (default)",
    )  # fmt: skip
    parser.add_argument("--figures", type=int, default=4, help="scenes in the overlay figure (0: none)")


@dataclass(frozen=True)
class Item:
    """One pointing-game trial: text ``pair`` (an index into the (image, text) pairs) names
    object ``object_index`` of scene ``scene_index`` with the tokens at ``tokens``."""

    pair: int
    scene_index: int
    object_index: int
    tokens: tuple[int, ...]
    word: str


def patch_coverage(mask: np.ndarray, patch_size: int) -> np.ndarray:
    """The fraction of each patch covered by the boolean ``(side, side)`` ``mask``, as a flat
    ``(grid * grid,)`` array in the patch embedding's row-major order."""
    side = mask.shape[0]
    if mask.shape[1] != side or side % patch_size:
        raise ProbeError(f"mask of shape {mask.shape} does not tile into {patch_size}-pixel patches")
    g = side // patch_size
    return mask.reshape(g, patch_size, g, patch_size).mean(axis=(1, 3)).reshape(-1)


def pointing_hit(scores: np.ndarray, coverage: np.ndarray) -> float:
    """The pointing game's hit for one map: 1 when the highest-scoring patch overlaps the
    object (``coverage > 0``), else 0; with tied maxima, the overlapping fraction of the
    tied patches (a random tie-break's expected hit), so a constant map scores chance."""
    scores = np.asarray(scores, dtype=np.float64)
    top = scores.max()
    tied = scores >= top - 1e-9 * max(1.0, abs(top))
    return float((coverage[tied] > 0).mean())


def token_positions(text: str, start: int, end: int, offsets: Sequence[tuple[int, int]], mode: str) -> tuple[int, ...]:
    """The token positions of the mention ``text[start:end]``: those of its last word (the
    shape word) with ``mode="shape"``, all of its tokens with ``mode="mention"``."""
    if mode == "shape":
        start = text.rfind(" ", start, end) + 1
    return tuple(i for i, (a, b) in enumerate(offsets) if b > a and a < end and b > start)


def _fusion_layers(recorder: Any, fusion: str) -> list[list[tuple[str, Tensor]]]:
    """The recorded fusion attention maps grouped into the updates of Chefer's rule: one
    group per merged layer; per co-attention block its self-attentions, then its
    cross-attentions (each pair reads the same states, so each pair is one update)."""
    calls = [(n, p) for n, p in recorder.calls if n.startswith("fusion_encoder.")]
    if fusion == "merged":
        return [[c] for c in calls]
    groups: list[list[tuple[str, Tensor]]] = []
    for k in range(0, len(calls), 4):
        block = calls[k : k + 4]
        groups.append([c for c in block if c[0].endswith("self_attn")])
        groups.append([c for c in block if c[0].endswith("cross_attn")])
    return groups


def _placement(name: str, image_len: int) -> tuple[int, int]:
    """Row and column offsets of a co-attention map in the fused sequence."""
    text_rows = ".streams.text." in name
    cross = name.endswith("cross_attn")
    row = image_len if text_rows else 0
    col = (0 if text_rows else image_len) if cross else row
    return row, col


def fusion_maps(
    net: Any, head: Any, batch: dict[str, Tensor], relevance: bool
) -> tuple[Tensor, Tensor | None]:
    """Attention and (with ``relevance``) Chefer relevance of every text token over the
    patches: two ``(B, L, P)`` tensors, ``L`` the fused text length (the batch's longest),
    ``P`` the patches. ``net`` a FlavaModel with fusion, ``head`` its ITM head (the gradient
    target: the match logit; needed only for relevance)."""
    fusion = net.config.fusion
    pixels = batch["pixel_values"]
    with torch.enable_grad() if relevance else torch.no_grad(), record_attention(net) as rec:
        if relevance:
            pixels = pixels.detach().requires_grad_(True)
        image = net.encode_image(pixels)
        text = net.encode_text(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        fused = net.fuse(image, text)
        image_len = 1 + fused.num_image_tokens
        groups = _fusion_layers(rec, fusion)
        maps = [p for group in groups for _, p in group]
        target = head(fused.cls)[:, 1].sum() if relevance else None
        grads = torch.autograd.grad(target, maps, allow_unused=True) if relevance else None
    patches = slice(2, image_len)
    if fusion == "merged":
        rows = [p[:, :, image_len:, patches] for p in maps]
    else:
        rows = [p[:, :, :, patches] for n, p in (c for g in groups for c in g) if n.endswith("text.cross_attn")]
    attention = torch.stack([r.detach().float().mean(1) for r in rows]).mean(0)
    if not relevance:
        return attention, None
    b, length = pixels.shape[0], attention.shape[1]
    total = image_len + length
    eye = torch.eye(total, dtype=torch.float32, device=pixels.device)
    r = eye.expand(b, total, total).clone()
    grad_of = {id(p): g for p, g in zip(maps, grads)}
    for group in groups:
        update = torch.zeros_like(r)
        for name, p in group:
            g = grad_of[id(p)]
            cam = (p.detach().float() * (0 if g is None else g.float())).clamp(min=0).mean(1)
            if fusion == "merged":
                update += cam
            else:
                row, col = _placement(name, image_len)
                update[:, row : row + cam.shape[1], col : col + cam.shape[2]] += cam
        r = r + update @ r
    return attention, r[:, image_len:, patches]


def _items(world: Any, tokenizer: Any, split: str, n: int, text_mode: str, token_mode: str, max_length: int):
    """The (scene index, text) pairs and the pointing-game items over them."""
    size = world.split_size(split)
    if n > size:
        raise ProbeError(f"--n {n} is larger than split {split!r} ({size} scenes)")
    pairs: list[tuple[int, str]] = []
    for i in range(n):
        scene = world.scene(split, i)
        if text_mode == "caption":
            pairs.append((i, world.caption(split, i)))
        else:
            pairs += [(i, f"the {o.size} {o.colour} {o.shape}") for o in scene.objects]
    offsets = tokenizer.token_offsets([t for _, t in pairs], max_length=max_length)
    items: list[Item] = []
    for k, ((i, text), offs) in enumerate(zip(pairs, offsets)):
        scene = world.scene(split, i)
        masks = world.object_masks(scene)
        for m in world.mentions(text, scene):
            tokens = token_positions(text, m.start, m.end, offs, token_mode)
            if tokens and masks[m.object_index].any():
                items.append(Item(k, i, m.object_index, tokens, text[m.start : m.end]))
    if not items:
        raise ProbeError(f"no object is named in the first {n} texts of split {split!r}")
    return pairs, items


def _methods(option: str, net: Any, head: Any) -> list[str]:
    """The methods to run: ``--methods`` checked against what the model allows."""
    layers = net.config.multimodal.num_layers
    why = None
    if head is None:
        why = "the model has no ITM head (its match logit is the gradient target)"
    elif layers < 2:
        why = f"the fusion encoder has {layers} layer (its last layer's text rows never reach the match logit)"
    if option == "auto":
        if why is not None:
            print(f"probe relevance: attention only: {why}", file=sys.stderr)
            return ["attention"]
        return list(METHODS)
    methods = [m.strip() for m in option.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ProbeError(f"--methods {option!r}: choose from auto, {', '.join(METHODS)} (comma-separated)")
    if "relevance" in methods and why is not None:
        raise ProbeError(f"--methods relevance: {why}; use --methods attention")
    return methods


def score(ctx: Any, split: str = "test", n: int = DEFAULT_N, text: str = "caption", token: str = "shape",
          methods: Sequence[str] = METHODS) -> dict[str, Any]:
    """The pointing game on ``ctx`` (a :class:`~flava_zoo.probes.common.ProbeContext`):
    per-item ``hits[method]`` (0..1), ``other_hits[method]`` (the mean hit on the item's
    object of the maps of the scene's other named objects; NaN where the scene names no
    other), ``chance`` (the share of patches each object overlaps), the ``items``, their
    ``pairs``, ``coverage`` and the per-item maps ``maps[method]`` ``(items, grid, grid)``."""  # fmt: skip
    im = ctx.model
    net = im.model
    if net.fusion_encoder is None:
        raise ProbeError(
            f"{im.name} has fusion='none' (a dual encoder): no text token attends to patches; "
            "the relevance probe needs a fusion encoder"
        )
    if im.tokenizer is None:
        raise ProbeError(f"{im.name} has no tokenizer: give --tokenizer")
    head = ctx.itm_head()
    cfg = net.config.image
    grid = cfg.image_size // cfg.patch_size
    world = ctx.world
    pairs, items = _items(world, im.tokenizer, split, n, text, token, im.max_length)
    by_pair: dict[int, list[int]] = {}
    for j, it in enumerate(items):
        by_pair.setdefault(it.pair, []).append(j)
    maps = {m: np.zeros((len(items), grid * grid)) for m in methods}
    wanted = sorted(by_pair)
    bar = ctx.progress(len(wanted), "relevance")
    for chunk in batched(wanted, ctx.batch_size):
        images = [world.image(split, pairs[k][0]) for k in chunk]
        enc = im.tokenizer([pairs[k][1] for k in chunk], max_length=im.max_length)
        batch = {k: v.to(im.device) for k, v in enc.items()}
        batch["pixel_values"] = torch.stack([im.transform(x) for x in images]).to(im.device)
        attention, relevance = fusion_maps(net, head, batch, "relevance" in methods)
        found = {"attention": attention, "relevance": relevance}
        for row, k in enumerate(chunk):
            for j in by_pair[k]:
                for m in methods:
                    maps[m][j] = found[m][row, list(items[j].tokens)].mean(0).cpu().numpy()
        bar.update(len(chunk))
    bar.close()
    coverage = {}
    for it in items:
        if it.scene_index not in coverage:
            coverage[it.scene_index] = world.object_masks(world.scene(split, it.scene_index))
    cover = np.stack([patch_coverage(coverage[it.scene_index][it.object_index], cfg.patch_size) for it in items])
    hits = {m: np.array([pointing_hit(s, c) for s, c in zip(maps[m], cover)]) for m in methods}
    others: dict[int, list[int]] = {}
    for j, it in enumerate(items):
        others.setdefault(it.scene_index, []).append(j)
    rivals = [[k for k in others[it.scene_index] if items[k].object_index != it.object_index] for it in items]
    other_hits = {
        m: np.array([np.mean([pointing_hit(maps[m][k], cover[j]) for k in ks]) if ks else np.nan
                     for j, ks in enumerate(rivals)])
        for m in methods
    }  # fmt: skip
    return {
        "hits": hits,
        "other_hits": other_hits,
        "chance": (cover > 0).mean(1),
        "items": items,
        "pairs": pairs,
        "coverage": cover.reshape(len(items), grid, grid),
        "maps": {m: v.reshape(len(items), grid, grid) for m, v in maps.items()},
    }


def _figure(ctx: Any, split: str, result: dict[str, Any], methods: Sequence[str], count: int) -> None:
    """The overlay figure: per scene, the image with the named object's box, then each
    method's map of the object's token upsampled over the image."""
    plt = pyplot()
    world = ctx.world
    seen: set[int] = set()
    rows = []
    for j, it in enumerate(result["items"]):
        if it.scene_index not in seen:
            seen.add(it.scene_index)
            rows.append(j)
        if len(rows) == count:
            break
    fig, axes = plt.subplots(len(rows), 1 + len(methods), figsize=(2.4 * (1 + len(methods)), 2.5 * len(rows)),
                             squeeze=False)  # fmt: skip
    side = world.image_size
    for r, j in enumerate(rows):
        it = result["items"][j]
        scene = world.scene(split, it.scene_index)
        image = np.asarray(world.render(scene))
        x0, y0, x1, y1 = world.object_boxes(scene)[it.object_index]
        for c, title in enumerate(["image", *methods]):
            ax = axes[r, c]
            ax.imshow(image, extent=(0, side, side, 0))
            if c:
                ax.imshow(result["maps"][title][j], extent=(0, side, side, 0), cmap="jet", alpha=0.5,
                          interpolation="nearest")  # fmt: skip
            ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="white", linewidth=1.5))
            ax.set_title(f"'{it.word}'" if c == 0 else title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    ctx.writer.figure(
        "relevance", "overlays", fig,
        f"fusion {', '.join(methods)} of the object's token over the patches (box: the named object), {split}",
    )  # fmt: skip


def run(ctx: Any, args: argparse.Namespace) -> list[Any]:
    """Score the pointing game for each method and write one record per method (with its
    interval and the mean chance); save the overlay figure."""
    net = ctx.model.model
    if net.fusion_encoder is None:
        raise ProbeError(
            f"{ctx.model.name} has fusion='none' (a dual encoder): no text token attends to patches; "
            "the relevance probe needs a fusion encoder"
        )
    methods = _methods(getattr(args, "methods", "auto"), net, ctx.itm_head())
    split = getattr(args, "split", "test")
    n = ctx.items(DEFAULT_N)
    result = score(ctx, split, n, getattr(args, "text", "caption"), getattr(args, "token", "shape"), methods)
    chance = float(result["chance"].mean() * 100)
    measures = {
        f"pointing_game/{m}": Measure(
            float(result["hits"][m].mean() * 100),
            bootstrap_interval(result["hits"][m] * 100, resamples=1000, seed=ctx.seed),
            chance=chance,
        )
        for m in methods
    }
    for m in methods:
        diff = (result["hits"][m] - result["other_hits"][m]) * 100
        diff = diff[~np.isnan(diff)]
        if len(diff):
            iv = bootstrap_interval(diff, resamples=1000, seed=ctx.seed)
            measures[f"specificity/{m}"] = Measure(float(diff.mean()), iv, chance=0.0)
    hyper = {
        "n": n, "split": split, "text": getattr(args, "text", "caption"), "token": getattr(args, "token", "shape"),
        "methods": list(methods), "items": len(result["items"]), "fusion": net.config.fusion,
        "gradient_target": "itm match logit" if "relevance" in methods else None,
    }  # fmt: skip
    records = ctx.writer.write("relevance", split, measures, len(result["items"]), hyper)
    figures = int(getattr(args, "figures", 4))
    if figures > 0:
        _figure(ctx, split, result, methods, figures)
    return records
