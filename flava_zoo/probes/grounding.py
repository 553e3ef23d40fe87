"""Lexical grounding: does the text tower know what its attribute words look like?

After Yun et al. (EMNLP 2021, "Does vision-and-language pretraining improve lexical
grounding?"): a linear probe reads a visual property off the text tower's representation
of a word, and a tower pretrained with images is compared with one pretrained on text
alone (``--text-only MODEL``; for the quickstart, its stage-2 export
``OUTPUT.run/stages/text``). Without ``--text-only`` only ``--model`` is reported.

The property and the word must not be the same thing: with one token per colour a probe
over the seven colour words can memorise them. So the probe generalises to words it was not
trained on (the leave-two-out "2 vs 2" test of Mitchell et al., Science 2008):

* each word's **visual target** is measured from the world's renderings: for a colour the
  mean RGB (/255) of the visible pixels of a large object of that colour (averaged over
  the shapes); for a shape its silhouette (the visible mask of a large centred object,
  block-averaged to 16 x 16);
* each word is read in ``--n`` template sentences (default 40; the captions' phrasings:
  ``"a small red star on the left"``, ``"the star is red"``, ``"there is no red star"``, ...; the
  other slots filled at random with ``--seed``, the same fills for every word of an
  attribute); its feature is the text tower's last hidden state at the word's tokens
  (mean over word pieces);
* for every pair of words (a, b) of an attribute, a ridge regression (scikit-learn
  ``Ridge``, ``alpha = --alpha``, on standardised features) is fitted from the features of
  the *other* words' contexts to their targets; for each context t it predicts p_a and p_b
  from "a" and "b" in context t, and the item is right when
  ||p_a - v_a|| + ||p_b - v_b|| < ||p_a - v_b|| + ||p_b - v_a|| (one half on a tie).

Metrics ``2v2/colour`` (over the 21 colour-word pairs) and ``2v2/shape`` (15 pairs): percent
right over pairs and contexts; chance 50 (a probe that cannot tell the two held-out words
apart). The item is a word pair (its score the mean over the contexts): contexts of one
pair share the held-out words and are far from independent, so the percentile-bootstrap
interval (1,000 resamples) runs over pairs, and ``num_samples`` counts pairs. Pairs share
words too, so even that interval says how the score varies over these words' pairs, not
over new words. Size words are left out: with two of them no word is left to train on.
With ``--text-only``, the same items for that model (its own records, named by
``--text-only-label``) and ``difference/<attribute>`` = model - text-only in percentage
points with a paired bootstrap interval over the pairs and its p-value
(``p_value/<attribute>``, unit "1").

Figure: the 2 vs 2 accuracy of each model by attribute, with intervals and chance.

Cost: one text-tower pass over 13 x N sentences per model and 36 ridge fits: about 20 s of
CPU for flava-tiny at the default N = 40, with the text-only model (most of it imports).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..stats import DEFAULT_RESAMPLES, bootstrap_interval, paired_bootstrap
from .common import Measure, ProbeContext, ProbeError, pyplot, require

PROBE = "grounding"
SUMMARY = "linear probe of attribute words in the text tower: text-only vs multimodal"
DEFAULT_CONTEXTS = 40
ATTRIBUTES = ("colour", "shape")
SILHOUETTE_SIDE = 16
_POSITIONS = ("on the left", "on the right", "at the top", "at the bottom", "in the centre",
              "in the top left", "in the bottom right")  # fmt: skip
_RELATIONS = ("left of", "right of", "above", "below")

__all__ = [
    "add_arguments",
    "contexts",
    "run",
    "two_vs_two",
    "visual_targets",
    "word_features",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The probe's own options: the text-only model to compare with and the ridge penalty
    (``--n`` is the number of contexts per word)."""
    parser.add_argument("--text-only", dest="text_only", default=None,
                        help="a text-only-pretrained model to compare with (export folder, zoo tag, .ckpt), "
                             "e.g. the quickstart's OUTPUT.run/stages/text")  # fmt: skip
    parser.add_argument("--text-only-label", dest="text_only_label", default=None,
                        help="its name in the records (default: --text-only)")
    parser.add_argument("--alpha", type=float, default=10.0, help="ridge penalty of the probe (default 10)")


# --------------------------------------------------------------------- visual targets
def visual_targets(world: Any, attribute: str) -> dict[str, np.ndarray]:
    """Each word's visual property, measured from :meth:`ShapesWorld.render`: a colour's
    mean RGB (/255) over the visible pixels of large centred objects of every shape, a
    shape's silhouette (visible mask of a large centred object, block-averaged to
    ``SILHOUETTE_SIDE`` squared cells), on a flat grey background."""
    from PIL import Image

    from ..data.shapes import Background, Scene, ShapeObject

    background = Background((128, 128, 128), (128, 128, 128), 0.0, 0)

    def scene(shape: str, colour: str) -> Scene:
        return Scene((ShapeObject(shape, colour, "large", 0.5, 0.5),), background)

    if attribute == "colour":
        out = {}
        for colour in world.COLOURS:
            pixels = []
            for shape in world.SHAPES:
                s = scene(shape, colour)
                pixels.append(np.asarray(world.render(s), dtype=np.float64)[world.object_masks(s)[0]])
            out[colour] = np.concatenate(pixels).mean(0) / 255.0
        return out
    if attribute == "shape":
        out = {}
        for shape in world.SHAPES:
            mask = world.object_masks(scene(shape, world.COLOURS[0]))[0].astype(np.float32)
            small = Image.fromarray(mask * 255.0).resize((SILHOUETTE_SIDE, SILHOUETTE_SIDE), Image.BOX)
            out[shape] = np.asarray(small, dtype=np.float64).ravel() / 255.0
        return out
    raise ProbeError(f"unknown attribute {attribute!r}; attributes: {', '.join(ATTRIBUTES)}")


# -------------------------------------------------------------------------- contexts
def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def contexts(world: Any, attribute: str, count: int, seed: int) -> list[tuple[str, str]]:
    """``count`` templates for the words of ``attribute``: ``(before, after)`` so the
    sentence is ``before + word + after``; the other slots (sizes, the other attribute,
    positions, relations) are drawn with ``seed``, the same for every word."""
    rng = np.random.default_rng([seed, ATTRIBUTES.index(attribute)])

    def pick(seq: Sequence[str]) -> str:
        return str(seq[int(rng.integers(len(seq)))])

    out = []
    for k in range(count):
        size, position, relation = pick(world.SIZES), pick(_POSITIONS), pick(_RELATIONS)
        other = _article(f"{pick(world.SIZES)} {pick(world.COLOURS)} {pick(world.SHAPES)}")
        if attribute == "colour":
            shape = pick(world.SHAPES)
            templates = [
                (f"{_article(size)} ", f" {shape} {position}"),
                ("there is no ", f" {shape}"),
                (f"the {shape} is ", ""),
                ("the ", f" object is {_article(shape)}"),
                ("there is nothing ", ""),
                (f"{_article(size)} ", f" {shape} {relation} {other}"),
            ]
        else:
            colour = pick(world.COLOURS)
            templates = [
                (f"{_article(size)} {colour} ", f" {position}"),
                (f"there is no {colour} ", ""),
                ("the ", f" is {colour}"),
                (f"the {colour} object is a ", ""),
                (f"{_article(size)} {colour} ", f" {relation} {other}"),
            ]
        out.append(templates[k % len(templates)])
    return out


@torch.no_grad()
def word_features(model: Any, words: Sequence[str], templates: Sequence[tuple[str, str]], batch_size: int = 64) -> dict[str, np.ndarray]:
    """Per word, ``(len(templates), D)``: the text tower's last hidden state at the word's
    tokens (their mean) in each template, from ``model`` (an
    :class:`~flava_zoo.inference.InferenceModel`)."""
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise ProbeError(f"{model.name} has no tokenizer: give --tokenizer (a folder with vocab.txt)")
    out = {}
    for word in words:
        texts = [before + word + after for before, after in templates]
        spans = [(len(before), len(before) + len(word)) for before, _ in templates]
        rows = []
        for lo in range(0, len(texts), batch_size):
            chunk = texts[lo : lo + batch_size]
            states = model.encode_texts(chunk).last_hidden_state.float().cpu()
            offsets = tokenizer.token_offsets(chunk, max_length=model.max_length)
            for i, (offs, (start, end)) in enumerate(zip(offsets, spans[lo : lo + batch_size])):
                picks = [t for t, (a, b) in enumerate(offs) if b > a and a >= start and b <= end]
                if not picks:
                    raise ProbeError(f"{model.name}: no token of {word!r} in {chunk[i]!r} (truncated?)")
                rows.append(states[i, picks].mean(0).numpy())
        out[word] = np.stack(rows).astype(np.float64)
    return out


# ----------------------------------------------------------------------- the probe
def two_vs_two(features: Mapping[str, np.ndarray], targets: Mapping[str, np.ndarray], alpha: float) -> np.ndarray:
    """``(pairs, T)``: for word pair a < b (in ``features``' order) and context t, 100 when
    the ridge probe trained on the other words places a and b on their own targets
    (||p_a - v_a|| + ||p_b - v_b|| < ||p_a - v_b|| + ||p_b - v_a||), 50 on a tie, else 0.
    ``features``: word -> ``(T, D)``, the same T contexts for every word; ``targets``:
    word -> vector."""
    linear = require("sklearn.linear_model")
    preprocessing = require("sklearn.preprocessing")
    words = list(features)
    if len(words) < 4:
        raise ProbeError(f"the 2 vs 2 test needs at least 4 words (2 held out, 2 to train on), got {len(words)}")
    scores = []
    for a, b in itertools.combinations(words, 2):
        train = [w for w in words if w not in (a, b)]
        x = np.concatenate([features[w] for w in train])
        y = np.concatenate([np.repeat(targets[w][None], len(features[w]), 0) for w in train])
        scaler = preprocessing.StandardScaler().fit(x)
        probe = linear.Ridge(alpha=alpha).fit(scaler.transform(x), y)
        pa, pb = probe.predict(scaler.transform(features[a])), probe.predict(scaler.transform(features[b]))
        va, vb = targets[a][None], targets[b][None]
        match = np.linalg.norm(pa - va, axis=1) + np.linalg.norm(pb - vb, axis=1)
        swap = np.linalg.norm(pa - vb, axis=1) + np.linalg.norm(pb - va, axis=1)
        scores.append(np.where(np.isclose(match, swap, rtol=1e-9, atol=1e-12), 50.0, np.where(match < swap, 100.0, 0.0)))
    return np.stack(scores)


def _scores(model: Any, world: Any, count: int, seed: int, alpha: float, batch_size: int) -> dict[str, np.ndarray]:
    out = {}
    for attribute in ATTRIBUTES:
        words = world.COLOURS if attribute == "colour" else world.SHAPES
        feats = word_features(model, words, contexts(world, attribute, count, seed), batch_size)
        out[attribute] = two_vs_two(feats, visual_targets(world, attribute), alpha)
    return out


def _measures(scores: Mapping[str, np.ndarray], seed: int) -> dict[str, Measure]:
    return {
        f"2v2/{a}": Measure(float(s.mean()), bootstrap_interval(s.mean(1), resamples=DEFAULT_RESAMPLES, seed=seed), 50.0)
        for a, s in scores.items()
    }


def _figure(ctx: ProbeContext, results: Sequence[tuple[str, Mapping[str, Measure]]]) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    width = 0.8 / len(results)
    x = np.arange(len(ATTRIBUTES))
    for j, (label, measures) in enumerate(results):
        ms = [measures[f"2v2/{a}"] for a in ATTRIBUTES]
        errors = [[max(0.0, m.value - m.interval.low) for m in ms], [max(0.0, m.interval.high - m.value) for m in ms]]
        ax.bar(x + (j - (len(results) - 1) / 2) * width, [m.value for m in ms], width, yerr=errors, capsize=3, label=label)
    ax.axhline(50.0, color="black", linestyle="--", linewidth=1, label="chance")
    ax.set_xticks(x, ATTRIBUTES)
    ax.set_ylim(0, 105)
    ax.set_ylabel("2 vs 2 accuracy (%)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ctx.writer.figure(PROBE, "2v2", fig, "Held-out word pairs: can a ridge probe of the text tower's word states "
                      "place two unseen attribute words on their own rendered colour / silhouette? "
                      "Bars: 95% bootstrap over items; dashed: chance")


def run(ctx: ProbeContext, args: argparse.Namespace) -> list[Any]:
    """Score ``--model`` (and ``--text-only`` when given) with the 2 vs 2 test; write the
    records, the difference and the figure."""
    count = ctx.items(DEFAULT_CONTEXTS)
    alpha = float(getattr(args, "alpha", 10.0))
    if not alpha > 0:
        raise ProbeError(f"--alpha must be positive, got {alpha}")
    text_only = getattr(args, "text_only", None)
    hyper = {"contexts": count, "alpha": alpha, "seed": ctx.seed, "resamples": DEFAULT_RESAMPLES,
             "layer": "last", "silhouette_side": SILHOUETTE_SIDE, "text_only": text_only}  # fmt: skip
    scores = _scores(ctx.model, ctx.world, count, ctx.seed, alpha, ctx.batch_size)
    measures = _measures(scores, ctx.seed)
    records: list[Any] = []
    for a in ATTRIBUTES:
        records += ctx.writer.write(PROBE, "test", {f"2v2/{a}": measures[f"2v2/{a}"]}, len(scores[a]), hyper)
    results = [(ctx.writer.model, measures)]
    if text_only:
        from ..inference import load_inference_model

        try:
            other = load_inference_model(str(text_only), device=str(ctx.model.device))
        except (ValueError, OSError) as e:  # InferenceError and unknown names are ValueErrors
            raise ProbeError(f"--text-only {text_only}: {e}") from None
        label = getattr(args, "text_only_label", None) or str(text_only)
        source = other.source.origin if other.source is not None else str(text_only)
        writer = dataclasses.replace(ctx.writer, model=label, model_source=source,
                                     lineage={"pretrained": source, "role": "text-only"}, written=[])  # fmt: skip
        other_scores = _scores(other, ctx.world, count, ctx.seed, alpha, ctx.batch_size)
        other_measures = _measures(other_scores, ctx.seed)
        for a in ATTRIBUTES:
            records += writer.write(PROBE, "test", {f"2v2/{a}": other_measures[f"2v2/{a}"]}, len(other_scores[a]), hyper)
            interval, p = paired_bootstrap(scores[a].mean(1), other_scores[a].mean(1), resamples=DEFAULT_RESAMPLES, seed=ctx.seed)
            diff = {f"difference/{a}": Measure(interval.estimate, interval, 0.0),
                    f"p_value/{a}": Measure(p, unit="1")}  # fmt: skip
            records += ctx.writer.write(PROBE, "test", diff, len(scores[a]), {**hyper, "text_only_label": label})
        results.append((label, other_measures))
    _figure(ctx, results)
    return records
