"""The shapes world: a small visual-language world generated deterministically from a seed.

Every recipe in the zoo runs on it without downloads. A scene holds one to three objects,
each with a shape, a colour, a size and a position, drawn on a softly tinted, gradient,
slightly noisy background (so the background is no shortcut). Scene ``i`` of split ``s`` is
a pure function of ``(seed, s, i)``: datasets are map-style, need no storage and no state
shared between workers.

Some colour-shape combinations are held out: they never appear in a ``train``, ``val`` or
``test`` scene, nor in any text about those scenes, and every ``test_novel`` scene has at
least one of them. This tells generalisation (composing a colour and a shape seen apart)
from memorisation.

Captions are lowercase, without a final full stop, and describe the scene truthfully:
enumerations with sizes, spatial relations, positions, counts and negations. The
caption sets are read under a closed-world convention: the primary caption names every
object, so what it does not name is absent.

From the same scenes come small counterparts of the task families: image-only, text-only
and paired corpora (:class:`ShapesImages`, :class:`ShapesTexts`, :class:`ShapesPairs`),
image classification with class names for zero-shot prompts (:class:`ShapesClassification`),
VQA (:class:`ShapesVQA`), visual entailment (:class:`ShapesEntailment`), caption-pair
entailment (:class:`ShapesCaptionEntailment`) and a hateful-memes-like task whose label
needs both modalities (:class:`ShapesMemes`).
"""

from __future__ import annotations

import colorsys
import math
import random
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

__all__ = [
    "CAPTIONS_PER_SCENE",
    "DEFAULT_SIZES",
    "SPLITS",
    "Background",
    "Mention",
    "Scene",
    "ShapeObject",
    "ShapesCaptionEntailment",
    "ShapesClassification",
    "ShapesEntailment",
    "ShapesImages",
    "ShapesMemes",
    "ShapesPairs",
    "ShapesTexts",
    "ShapesVQA",
    "ShapesWorld",
    "relation",
]

SPLITS: tuple[str, ...] = ("train", "val", "test", "test_novel")
"""Split names; ``test_novel`` scenes each contain a held-out colour-shape combination."""

DEFAULT_SIZES: dict[str, int] = {"train": 20_000, "val": 2_000, "test": 2_000, "test_novel": 2_000}

CAPTIONS_PER_SCENE = 5
"""Number of captions :meth:`ShapesWorld.captions` returns; the first is the primary one."""

_COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "orange": (247, 129, 20),
    "yellow": (240, 206, 28),
    "green": (44, 160, 44),
    "cyan": (23, 190, 207),
    "blue": (38, 72, 214),
    "purple": (140, 58, 186),
}
_SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star", "cross")
_PLURAL = {"cross": "crosses"}
_RADIUS = {"small": 0.10, "large": 0.17}
"""Object radius as a fraction of the image side."""

_NUMBER = ("zero", "one", "two", "three")
_POSITIONS = (
    ("in the top left", "at the top", "in the top right"),
    ("on the left", "in the centre", "on the right"),
    ("in the bottom left", "at the bottom", "in the bottom right"),
)
_RELATION_WORDS = {
    "left of": ("left of", "to the left of"),
    "right of": ("right of", "to the right of"),
    "above": ("above",),
    "below": ("below", "beneath"),
}
_OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
_PREFIXES = ("", "a picture of ", "an image of ", "there is ")
_UNDETERMINABLE = (
    "made of wood",
    "made of glass",
    "very heavy",
    "brand new",
    "about to move",
    "hollow inside",
    "warm to the touch",
    "someone's favourite",
)
"""Predicates an image cannot confirm nor refute: the neutral class of the entailment tasks."""

_GRADIENT_ANGLES = 32
"""Background gradient directions (multiples of 2 pi / 32)."""

# Scene, caption and task streams of the per-index random generators.
_SCENE, _CAPTIONS, _VQA, _VISUAL_ENTAILMENT, _CAPTION_ENTAILMENT, _MEMES, _CLASSIFICATION = range(7)
_ENTAILED_PAIRS = 7
"""The stream of :meth:`ShapesVQA.entailed_pairs` (a stream of its own: the others are unchanged)."""


@dataclass(frozen=True)
class ShapeObject:
    """One object. ``x`` and ``y`` are its centre as fractions of the image side (y down)."""

    shape: str
    colour: str
    size: Literal["small", "large"]
    x: float
    y: float

    @property
    def radius(self) -> float:
        """Radius as a fraction of the image side."""
        return _RADIUS[self.size]

    @property
    def combination(self) -> tuple[str, str]:
        """``(colour, shape)``."""
        return (self.colour, self.shape)


@dataclass(frozen=True)
class Background:
    """A linear gradient between two light tints plus one of the world's noise textures."""

    colour_a: tuple[int, int, int]
    colour_b: tuple[int, int, int]
    angle: float
    noise: int


@dataclass(frozen=True)
class Scene:
    """Objects in drawing order (later ones are drawn on top) and the background.

    The colour-shape combinations of a scene's objects are distinct, so ``"the red circle"``
    always names one object.
    """

    objects: tuple[ShapeObject, ...]
    background: Background

    def __post_init__(self) -> None:
        object.__setattr__(self, "objects", tuple(self.objects))


@dataclass(frozen=True)
class Mention:
    """Where a text names an object of a scene: characters ``text[start:end]`` (the noun
    phrase's size, colour and shape words, e.g. ``"large red circle"`` or ``"red circle"``)
    name ``scene.objects[object_index]``."""

    start: int
    end: int
    object_index: int


def relation(a: ShapeObject, b: ShapeObject) -> str:
    """Where ``a`` is relative to ``b`` along the axis of their larger offset.

    One of ``"left of"``, ``"right of"``, ``"above"``, ``"below"``.
    """
    dx, dy = b.x - a.x, b.y - a.y
    if abs(dx) >= abs(dy):
        return "left of" if dx > 0 else "right of"
    return "above" if dy > 0 else "below"


def _plural(shape: str) -> str:
    return _PLURAL.get(shape, shape + "s")


def _join(parts: Sequence[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _np(obj: ShapeObject, size: bool = True) -> str:
    """Indefinite noun phrase: ``"a large red circle"``."""
    words = f"{obj.size} {obj.colour} {obj.shape}" if size else f"{obj.colour} {obj.shape}"
    return _article(words)


def _ref(obj: ShapeObject) -> str:
    """Definite reference: ``"the red circle"`` (unique within a scene)."""
    return f"the {obj.colour} {obj.shape}"


def _count_phrase(n: int, noun: str, plural: str) -> str:
    return _article(noun) if n == 1 else f"{_NUMBER[n]} {plural}"


def _position(obj: ShapeObject) -> str:
    row = min(int(obj.y * 3), 2)
    col = min(int(obj.x * 3), 2)
    return _POSITIONS[row][col]


# Only ``Random.random()`` is used: its stream is the one Python guarantees across versions.
def _randint(rng: random.Random, n: int) -> int:
    """Uniform integer in ``[0, n)``."""
    return min(int(rng.random() * n), n - 1)


def _choice(rng: random.Random, seq: Sequence[Any]) -> Any:
    return seq[_randint(rng, len(seq))]


def _permutation(rng: random.Random, n: int) -> list[int]:
    order = list(range(n))
    for i in range(n - 1, 0, -1):
        j = _randint(rng, i + 1)
        order[i], order[j] = order[j], order[i]
    return order


class ShapesWorld:
    """A deterministic synthetic visual-language world.

    Args:
        seed: world seed; scenes, held-out combinations and noise textures derive from it.
        image_size: side of the rendered square RGB images, in pixels.
        sizes: number of scenes per split, overriding :data:`DEFAULT_SIZES` for the given keys.
        heldout_fraction: fraction of colour-shape combinations held out of
            ``train``/``val``/``test``. With ``0`` nothing is held out and ``test_novel`` is empty.
    """

    COLOURS: tuple[str, ...] = tuple(_COLOUR_RGB)
    SHAPES: tuple[str, ...] = _SHAPES
    SIZES: tuple[str, ...] = ("small", "large")
    SPLITS: tuple[str, ...] = SPLITS

    def __init__(
        self,
        seed: int = 0,
        image_size: int = 64,
        sizes: dict[str, int] | None = None,
        heldout_fraction: float = 0.15,
    ) -> None:
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if image_size < 16:
            raise ValueError(f"image_size must be at least 16 pixels, got {image_size}")
        if not 0.0 <= heldout_fraction <= 0.5:
            raise ValueError(f"heldout_fraction must be in [0, 0.5], got {heldout_fraction}")
        self.seed = int(seed)
        self.image_size = int(image_size)
        self.heldout_fraction = heldout_fraction
        self._sizes = dict(DEFAULT_SIZES)
        for split, size in (sizes or {}).items():
            self._check_split(split)
            if size < 0:
                raise ValueError(f"size of split {split!r} must be non-negative, got {size}")
            self._sizes[split] = int(size)

        self.heldout_combinations: frozenset[tuple[str, str]] = self._choose_heldout()
        """``(colour, shape)`` pairs never seen in train/val/test; each test_novel scene has one."""
        combos = [(c, s) for c in self.COLOURS for s in self.SHAPES]
        self.seen_combinations: tuple[tuple[str, str], ...] = tuple(
            c for c in combos if c not in self.heldout_combinations
        )
        """Combinations allowed in train/val/test, in a fixed order."""
        self._all_combinations = tuple(combos)
        self._heldout_sorted = tuple(c for c in combos if c in self.heldout_combinations)
        if not self._heldout_sorted:
            self._sizes["test_novel"] = 0

        rng = np.random.default_rng([self.seed, 0xBAC6, 0, 0])
        side = self.image_size
        # Rendering works on (rows, columns * 3) arrays: numpy is fast on their long rows.
        # Noise textures carry the +0.5 that makes the final cast to uint8 round.
        self._noise = [
            np.clip(rng.normal(0.0, 3.5, (side, side * 3)), -8, 8).astype(np.float32) + 0.5
            for _ in range(8)
        ]
        self._channel = np.tile(np.arange(3), side)
        grid = (np.arange(side, dtype=np.float32) + 0.5) / side - 0.5
        gx, gy = np.repeat(grid, 3)[None, :], grid[:, None]
        self._gradients = [
            np.clip(0.5 + math.cos(angle) * gx + math.sin(angle) * gy, 0.0, 1.0)
            for angle in (2 * math.pi * k / _GRADIENT_ANGLES for k in range(_GRADIENT_ANGLES))
        ]
        self._sprites: dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray, int]] = {}

    # ----------------------------------------------------------------- splits & randomness
    def _check_split(self, split: str) -> int:
        try:
            return SPLITS.index(split)
        except ValueError:
            raise ValueError(
                f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}"
            ) from None

    def split_size(self, split: str) -> int:
        """Number of scenes in ``split``."""
        self._check_split(split)
        return self._sizes[split]

    def _check_index(self, split: str, index: int) -> int:
        split_id = self._check_split(split)
        size = self._sizes[split]
        if not 0 <= index < size:
            raise IndexError(f"index {index} out of range for split {split!r} of size {size}")
        return split_id

    def rng(self, split: str, index: int, stream: int = 0) -> random.Random:
        """The generator for scene ``index`` of ``split``; each consumer uses its own ``stream``.

        Seeded with an integer that encodes ``(seed, split, index, stream)`` one-to-one.
        """
        split_id = self._check_index(split, index)
        return random.Random((((self.seed << 3 | split_id) << 40 | int(index)) << 8) | stream)

    def _choose_heldout(self) -> frozenset[tuple[str, str]]:
        """Spread held-out pairs over colours and shapes so each keeps training partners."""
        n_colours, n_shapes = len(self.COLOURS), len(self.SHAPES)
        n = round(self.heldout_fraction * n_colours * n_shapes)
        if n == 0:
            return frozenset()
        per_colour = math.ceil(n / n_colours)
        per_shape = math.ceil(n / n_shapes)
        rng = random.Random(f"heldout-{self.seed}")
        chosen: list[tuple[str, str]] = []
        colour_count = dict.fromkeys(self.COLOURS, 0)
        shape_count = dict.fromkeys(self.SHAPES, 0)
        for k in _permutation(rng, n_colours * n_shapes):
            colour, shape = self.COLOURS[k // n_shapes], self.SHAPES[k % n_shapes]
            if colour_count[colour] < per_colour and shape_count[shape] < per_shape:
                chosen.append((colour, shape))
                colour_count[colour] += 1
                shape_count[shape] += 1
                if len(chosen) == n:
                    break
        return frozenset(chosen)

    # ---------------------------------------------------------------------------- scenes
    def scene(self, split: str, index: int) -> Scene:
        """Scene ``index`` of ``split``: objects with distinct colour-shape pairs.

        Scenes have one, two or three objects with probabilities 0.15, 0.40, 0.45. In
        ``test_novel`` they have two or three (one held-out object in context): a lone
        held-out object has too few distinct descriptions for retrieval, and single novel
        objects are the ``test_novel`` split of :class:`ShapesClassification`.
        """
        rng = self.rng(split, index, _SCENE)
        novel = split == "test_novel"
        u = rng.random() * (0.85 if novel else 1.0) + (0.15 if novel else 0.0)
        n = 1 if u < 0.15 else (2 if u < 0.55 else 3)
        return self._sample_scene(rng, n, novel)

    def _sample_scene(self, rng: random.Random, n: int, novel: bool) -> Scene:
        pool = self._all_combinations if novel else self.seen_combinations
        combos: list[tuple[str, str]] = []
        if novel:
            combos.append(_choice(rng, self._heldout_sorted))
        while len(combos) < n:
            combo = _choice(rng, pool)
            if combo not in combos:
                combos.append(combo)
        if novel and n > 1:
            combos.insert(_randint(rng, n), combos.pop(0))
        sizes = ["large" if rng.random() < 0.5 else "small" for _ in range(n)]
        positions = self._place(rng, sizes)
        objects = tuple(
            ShapeObject(shape=s, colour=c, size=z, x=x, y=y)  # type: ignore[arg-type]
            for (c, s), z, (x, y) in zip(combos, sizes, positions)
        )
        return Scene(objects=objects, background=self._sample_background(rng))

    @staticmethod
    def _place(rng: random.Random, sizes: list[str]) -> list[tuple[float, float]]:
        """Rejection-sample centres whose bounding circles overlap at most slightly."""
        margin = 0.02
        while True:
            placed: list[tuple[float, float, float]] = []
            for size in sizes:
                r = _RADIUS[size]
                lo, hi = r + margin, 1.0 - r - margin
                for _ in range(60):
                    x, y = lo + (hi - lo) * rng.random(), lo + (hi - lo) * rng.random()
                    if all(
                        (x - px) ** 2 + (y - py) ** 2 >= (0.9 * (r + pr)) ** 2
                        for px, py, pr in placed
                    ):
                        placed.append((x, y, r))
                        break
                else:
                    break
            if len(placed) == len(sizes):
                return [(round(x, 4), round(y, 4)) for x, y, _ in placed]

    def _sample_background(self, rng: random.Random) -> Background:
        hue = rng.random()
        sat = 0.06 + 0.24 * rng.random()
        val = 0.80 + 0.15 * rng.random()
        hue_b = (hue + 0.3 * (rng.random() - 0.5)) % 1.0
        sat_b = 0.06 + 0.24 * rng.random()
        val_b = 0.80 + 0.15 * rng.random()
        colour_a = tuple(round(255 * v) for v in colorsys.hsv_to_rgb(hue, sat, val))
        colour_b = tuple(round(255 * v) for v in colorsys.hsv_to_rgb(hue_b, sat_b, val_b))
        return Background(
            colour_a=colour_a,  # type: ignore[arg-type]
            colour_b=colour_b,  # type: ignore[arg-type]
            angle=2 * math.pi * _randint(rng, _GRADIENT_ANGLES) / _GRADIENT_ANGLES,
            noise=_randint(rng, len(self._noise)),
        )

    # ------------------------------------------------------------------------- rendering
    def render(self, scene: Scene) -> Image.Image:
        """Draw ``scene`` as an RGB image of side ``image_size``.

        Objects are composited from anti-aliased sprites (drawn once per world at 4x and
        downscaled) at the nearest pixel, so rendering is a few small numpy operations.
        """
        side = self.image_size
        bg = scene.background
        gradient = self._gradients[
            round(bg.angle / (2 * math.pi) * _GRADIENT_ANGLES) % _GRADIENT_ANGLES
        ]
        a = np.asarray(bg.colour_a, dtype=np.float32)
        b = np.asarray(bg.colour_b, dtype=np.float32)
        out = gradient * (b - a)[self._channel]
        out += a[self._channel]
        out += self._noise[bg.noise]
        for obj in scene.objects:
            premult, transparency, half = self._sprite(obj.shape, obj.colour, obj.size)
            top = round(obj.y * side - half - 0.5)
            left = round(obj.x * side - half - 0.5)
            y0, x0 = max(top, 0), max(left, 0)
            y1, x1 = min(top + premult.shape[0], side), min(left + premult.shape[1] // 3, side)
            sy, sx = slice(y0 - top, y1 - top), slice(3 * (x0 - left), 3 * (x1 - left))
            region = out[y0:y1, 3 * x0 : 3 * x1]
            region *= transparency[sy, sx]
            region += premult[sy, sx]
        np.clip(out, 0, 255, out=out)
        return Image.frombuffer("RGB", (side, side), out.astype(np.uint8), "raw", "RGB", 0, 1)

    def _sprite(self, shape: str, colour: str, size: str) -> tuple[np.ndarray, np.ndarray, int]:
        """Premultiplied colour, transparency and centre offset of one object, cached."""
        key = (shape, colour, size)
        sprite = self._sprites.get(key)
        if sprite is not None:
            return sprite
        ss = 4
        r = _RADIUS[size] * self.image_size
        half = math.ceil(1.05 * r) + 2
        big = (2 * half + 1) * ss
        layer, mask = Image.new("RGB", (big, big)), Image.new("L", (big, big))
        draw_layer, draw_mask = ImageDraw.Draw(layer), ImageDraw.Draw(mask)
        fill = _COLOUR_RGB[colour]
        outline = tuple(int(0.45 * v) for v in fill)
        width = max(ss, round(ss * self.image_size / 64))
        c, rr = big / 2, r * ss
        if shape == "circle":
            box = (c - 0.92 * rr, c - 0.92 * rr, c + 0.92 * rr, c + 0.92 * rr)
            draw_layer.ellipse(box, fill=fill, outline=outline, width=width)
            draw_mask.ellipse(box, fill=255)
        else:
            points = _polygon(shape, c, c, rr)
            draw_layer.polygon(points, fill=fill, outline=outline, width=width)
            draw_mask.polygon(points, fill=255)
        # The layer is black outside the object: premultiplied alpha.
        premult = np.asarray(layer.reduce(ss), dtype=np.float32).reshape(big // ss, -1)
        alpha = np.repeat(np.asarray(mask.reduce(ss), dtype=np.float32) / 255.0, 3, axis=1)
        sprite = (premult, 1.0 - alpha, half)
        self._sprites[key] = sprite
        return sprite

    def image(self, split: str, index: int) -> Image.Image:
        """The rendered image of scene ``index`` of ``split``."""
        return self.render(self.scene(split, index))

    # ------------------------------------------------------------------ ground truth
    def object_masks(self, scene: Scene) -> np.ndarray:
        """Visible pixels of each object: a boolean ``(objects, side, side)`` array, in the
        order of ``scene.objects``, at the rendered image's resolution.

        A pixel belongs to an object when the object's anti-aliased coverage there is at
        least one half and no object drawn later covers it by one half (later objects are
        on top), so the masks are disjoint and match what :meth:`render` draws.
        """
        side = self.image_size
        masks = np.zeros((len(scene.objects), side, side), dtype=bool)
        for k, obj in enumerate(scene.objects):
            _, transparency, half = self._sprite(obj.shape, obj.colour, obj.size)
            cover = (1.0 - transparency[:, ::3]) >= 0.5
            top = round(obj.y * side - half - 0.5)
            left = round(obj.x * side - half - 0.5)
            y0, x0 = max(top, 0), max(left, 0)
            y1, x1 = min(top + cover.shape[0], side), min(left + cover.shape[1], side)
            region = cover[y0 - top : y1 - top, x0 - left : x1 - left]
            masks[:k, y0:y1, x0:x1] &= ~region
            masks[k, y0:y1, x0:x1] = region
        return masks

    def object_boxes(self, scene: Scene) -> list[tuple[int, int, int, int]]:
        """Each object's box ``(x0, y0, x1, y1)`` in pixels (``x1``, ``y1`` exclusive) around
        its visible pixels (:meth:`object_masks`); ``(0, 0, 0, 0)`` for a hidden object."""
        boxes = []
        for mask in self.object_masks(scene):
            ys, xs = np.nonzero(mask)
            if len(xs) == 0:
                boxes.append((0, 0, 0, 0))
            else:
                boxes.append((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
        return boxes

    def mentions(self, text: str, scene: Scene) -> list[Mention]:
        """The spans of ``text`` that name an object of ``scene`` by its colour and shape
        (with its size when the text gives it), in text order.

        Every generated caption and question names objects so (``"a large red circle"``,
        ``"the red circle"``, ``"is there a red circle?"``); a colour-shape pair the scene
        does not hold (``"there is no green star"``) names nothing and is not a mention.
        Plurals are not mentions (``"two circles"`` names no one object).
        """
        by_combination = {o.combination: k for k, o in enumerate(scene.objects)}
        out = []
        for match in _MENTION.finditer(text):
            k = by_combination.get((match["colour"], match["shape"]))
            if k is None:
                continue
            size = match["size"]
            if size is not None and size != scene.objects[k].size:
                continue
            out.append(Mention(match.start(), match.end(), k))
        return out

    # -------------------------------------------------------------------------- captions
    def captions(self, scene: Scene, rng: random.Random | int | None = None) -> list[str]:
        """:data:`CAPTIONS_PER_SCENE` true captions of ``scene``, the primary one first.

        The primary caption names every object with its size, colour and shape, plus their
        relations (or the position of a lone object); the others are an enumeration, a count,
        a negation and an attribute or relation statement. ``rng`` (a generator or an int
        seed; ``None`` means 0) picks templates and paraphrases; the canonical captions of
        scene ``i`` of a split are :meth:`scene_captions`.
        """
        if not isinstance(rng, random.Random):
            rng = random.Random(0 if rng is None else rng)
        return [
            self._primary(scene, rng),
            self._enumeration(scene, rng),
            self._count_caption(scene, rng),
            self._negation(scene, rng),
            self._attribute(scene, rng),
        ]

    def scene_captions(self, split: str, index: int) -> list[str]:
        """The captions of scene ``index`` of ``split``; the first equals :meth:`caption`."""
        return self.captions(self.scene(split, index), self.rng(split, index, _CAPTIONS))

    def caption(self, split: str, index: int) -> str:
        """The primary caption of scene ``index`` of ``split``, used for image-text pairs."""
        return self._primary(self.scene(split, index), self.rng(split, index, _CAPTIONS))

    def corpus(
        self, split: str, include_tasks: bool = False, max_scenes: int | None = None
    ) -> Iterator[str]:
        """Every caption of every scene of ``split`` (of its first ``max_scenes`` scenes when
        given); with ``include_tasks`` also VQA questions and answers, entailment hypotheses
        and meme texts (for a tokenizer vocabulary).
        """
        vqa, entailment, memes = (
            ShapesVQA(self, split),
            ShapesEntailment(self, split),
            ShapesMemes(self, split),
        )
        count = self.split_size(split) if max_scenes is None else min(max_scenes, self.split_size(split))
        for index in range(count):
            yield from self.scene_captions(split, index)
            if include_tasks:
                qa = vqa.annotation(index)
                yield qa["question"]
                yield qa["answer"]
                yield entailment.annotation(index)["hypothesis"]
                yield memes.annotation(index)["text"]

    @classmethod
    def vocabulary(cls) -> list[str]:
        """Every word and punctuation mark any generated text may use, sorted.

        Texts split into these tokens with ``re.findall(r"[a-z']+|[^\\sa-z']", text)``.
        """
        words: set[str] = set(cls.COLOURS) | set(cls.SHAPES) | set(cls.SIZES)
        words |= {_plural(s) for s in cls.SHAPES} | set(_NUMBER)
        texts = [
            *(p for row in _POSITIONS for p in row),
            *(w for ws in _RELATION_WORDS.values() for w in ws),
            *_PREFIXES,
            *_UNDETERMINABLE,
            *_TEMPLATE_WORDS,
        ]
        for text in texts:
            words.update(re.findall(r"[a-z']+|[^\sa-z']", text))
        return sorted(words)

    def _primary(self, scene: Scene, rng: random.Random) -> str:
        objs = scene.objects
        prefix = _choice(rng, _PREFIXES)
        if len(objs) == 1:
            return f"{prefix}{_np(objs[0])} {_position(objs[0])}"
        order = [objs[i] for i in _permutation(rng, len(objs))]
        a, b = order[0], order[1]
        text = f"{prefix}{_np(a)} {_rel_words(rng, a, b)} {_np(b)}"
        if len(order) == 3:
            c = order[2]
            anchor = a if rng.random() < 0.5 else b
            text += f", and {_np(c)} {_rel_words(rng, c, anchor)} {_ref(anchor)}"
        return text

    def _enumeration(self, scene: Scene, rng: random.Random) -> str:
        objs = list(scene.objects)
        style = _randint(rng, 3) if len(objs) > 1 else 2
        if style == 0:
            ordered = sorted(objs, key=lambda o: o.x)
            return "from left to right: " + _join([_np(o) for o in ordered])
        order = [objs[i] for i in _permutation(rng, len(objs))]
        phrases = _join([_np(o) for o in order])
        if style == 1:
            return f"{_NUMBER[len(objs)]} objects: {phrases}"
        return phrases if len(objs) > 1 else f"a single object, {phrases}"

    def _count_caption(self, scene: Scene, rng: random.Random) -> str:
        objs = scene.objects
        style = _randint(rng, 3)
        if style == 0:
            if len(objs) == 1:
                return "there is only one object"
            return f"there are {_NUMBER[len(objs)]} objects"
        key = "shape" if style == 1 else "colour"
        counts: dict[str, int] = {}
        for obj in objs:
            counts[getattr(obj, key)] = counts.get(getattr(obj, key), 0) + 1
        if key == "shape":
            parts = [_count_phrase(n, s, _plural(s)) for s, n in counts.items()]
        else:
            parts = [_count_phrase(n, f"{c} shape", f"{c} shapes") for c, n in counts.items()]
        lead = "there is " if next(iter(counts.values())) == 1 else "there are "
        return (lead if len(objs) == 1 or rng.random() < 0.5 else "") + _join(parts)

    def _absent_combination(self, scene: Scene, rng: random.Random) -> tuple[str, str]:
        """A seen (never held-out) colour-shape combination not in ``scene``."""
        present = {o.combination for o in scene.objects}
        while True:
            combo = _choice(rng, self.seen_combinations)
            if combo not in present:
                return combo

    def _negation(self, scene: Scene, rng: random.Random) -> str:
        style = _randint(rng, 4)
        present_shapes = {o.shape for o in scene.objects}
        present_colours = {o.colour for o in scene.objects}
        if style == 2:
            shape = _choice(rng, [s for s in self.SHAPES if s not in present_shapes])
            return f"there are no {_plural(shape)}"
        if style == 3:
            colour = _choice(rng, [c for c in self.COLOURS if c not in present_colours])
            return f"there is nothing {colour}"
        colour, shape = self._absent_combination(scene, rng)
        if style == 0:
            return f"there is no {colour} {shape}"
        obj = _choice(rng, scene.objects)
        return f"{_np(obj, size=False)} but no {colour} {shape}"

    def _attribute(self, scene: Scene, rng: random.Random) -> str:
        objs = scene.objects
        if len(objs) > 1 and rng.random() < 0.5:
            i, j = _permutation(rng, len(objs))[:2]
            a, b = objs[i], objs[j]
            return f"{_ref(a)} is {_rel_words(rng, a, b)} {_ref(b)}"
        obj = _choice(rng, objs)
        shapes = [o.shape for o in objs]
        colours = [o.colour for o in objs]
        options = [f"{_ref(obj)} is {obj.size}"]
        if shapes.count(obj.shape) == 1:
            options.append(f"the {obj.shape} is {obj.colour}")
        if colours.count(obj.colour) == 1:
            options.append(f"the {obj.colour} object is {_article(obj.shape)}")
        return _choice(rng, options)


_MENTION = re.compile(
    rf"\b(?:(?P<size>{'|'.join(_RADIUS)}) )?(?P<colour>{'|'.join(_COLOUR_RGB)}) "
    rf"(?P<shape>{'|'.join(_SHAPES)})\b(?!s\b|es\b)"
)


_SINGULAR = {_plural(s): s for s in _SHAPES}
_VQA_QUESTION = re.compile(
    rf"what colour is the (?P<colour_of>{'|'.join(_SHAPES)})\?"
    rf"|what shape is the (?P<shape_of>{'|'.join(_COLOUR_RGB)}) object\?"
    rf"|what size is the (?P<size_colour>{'|'.join(_COLOUR_RGB)}) (?P<size_shape>{'|'.join(_SHAPES)})\?"
    rf"|is there an? (?P<exists_colour>{'|'.join(_COLOUR_RGB)}) (?P<exists_shape>{'|'.join(_SHAPES)})\?"
    rf"|how many (?P<count_of>objects|{'|'.join(_SINGULAR)}) are there\?"
)
"""The questions of :class:`ShapesVQA`'s templates (read back by :meth:`ShapesVQA.answer`)."""


def _rel_words(rng: random.Random, a: ShapeObject, b: ShapeObject) -> str:
    return _choice(rng, _RELATION_WORDS[relation(a, b)])


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        h = 0.8 * r
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        # Equilateral, pointing up, centred on its bounding box.
        r = 1.1 * r
        angles = (-90.0, 30.0, 150.0)
        pts = [
            (cx + r * math.cos(math.radians(t)), cy + r * math.sin(math.radians(t))) for t in angles
        ]
        shift = 0.25 * r
        return [(x, y + shift) for x, y in pts]
    if shape == "diamond":
        return [(cx, cy - r), (cx + 0.72 * r, cy), (cx, cy + r), (cx - 0.72 * r, cy)]
    if shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else 0.45 * r
            t = math.radians(-90 + 36 * k)
            pts.append((cx + rad * math.cos(t), cy + 0.05 * r + rad * math.sin(t)))
        return pts
    if shape == "cross":
        a, w = 0.92 * r, 0.32 * r
        return [
            (cx - w, cy - a), (cx + w, cy - a), (cx + w, cy - w), (cx + a, cy - w),
            (cx + a, cy + w), (cx + w, cy + w), (cx + w, cy + a), (cx - w, cy + a),
            (cx - w, cy + w), (cx - a, cy + w), (cx - a, cy - w), (cx - w, cy - w),
        ]  # fmt: skip
    raise ValueError(f"unknown shape {shape!r}")


# --------------------------------------------------------------------------------- claims
# A claim is a statement about a scene with a known truth value; the entailment, VQA-free
# text tasks and memes are built from them.


def _true_claim(world: ShapesWorld, scene: Scene, kind: str, rng: random.Random) -> str:
    objs = scene.objects
    obj = _choice(rng, objs)
    if kind == "exists":
        return f"there is {_np(obj, size=False)}"
    if kind == "absent":
        colour, shape = world._absent_combination(scene, rng)
        return f"there is no {colour} {shape}"
    if kind == "count":
        return (
            "there is one object" if len(objs) == 1 else f"there are {_NUMBER[len(objs)]} objects"
        )
    if kind == "size":
        return f"{_ref(obj)} is {obj.size}"
    if kind == "colour":
        obj = _choice(rng, _unique_shape_objects(scene))
        return f"the {obj.shape} is {obj.colour}"
    if kind == "relation":
        i, j = _permutation(rng, len(objs))[:2]
        return f"{_ref(objs[i])} is {_rel_words(rng, objs[i], objs[j])} {_ref(objs[j])}"
    if kind == "undeterminable":
        return f"{_ref(obj)} is {_choice(rng, _UNDETERMINABLE)}"
    raise ValueError(f"unknown claim kind {kind!r}")


def _false_claim(world: ShapesWorld, scene: Scene, kind: str, rng: random.Random) -> str:
    objs = scene.objects
    obj = _choice(rng, objs)
    if kind == "exists":
        colour, shape = world._absent_combination(scene, rng)
        return f"there is {_article(f'{colour} {shape}')}"
    if kind == "absent":
        return f"there is no {obj.colour} {obj.shape}"
    if kind == "count":
        n = _choice(rng, [k for k in (1, 2, 3) if k != len(objs)])
        return "there is one object" if n == 1 else f"there are {_NUMBER[n]} objects"
    if kind == "size":
        return f"{_ref(obj)} is {'small' if obj.size == 'large' else 'large'}"
    if kind == "colour":
        obj = _choice(rng, _unique_shape_objects(scene))
        colour = _choice(
            rng,
            [
                c
                for c in world.COLOURS
                if c != obj.colour and (c, obj.shape) not in world.heldout_combinations
            ],
        )
        return f"the {obj.shape} is {colour}"
    if kind == "relation":
        i, j = _permutation(rng, len(objs))[:2]
        words = _choice(rng, _RELATION_WORDS[_OPPOSITE[relation(objs[i], objs[j])]])
        return f"{_ref(objs[i])} is {words} {_ref(objs[j])}"
    if kind == "undeterminable":
        colour, shape = world._absent_combination(scene, rng)
        return f"the {colour} {shape} is {_choice(rng, _UNDETERMINABLE)}"
    raise ValueError(f"unknown claim kind {kind!r}")


def _unique_shape_objects(scene: Scene) -> list[ShapeObject]:
    shapes = [o.shape for o in scene.objects]
    return [o for o in scene.objects if shapes.count(o.shape) == 1]


def _claim_kinds(scene: Scene, relations: bool) -> list[str]:
    kinds = ["exists", "absent", "count", "size"]
    if _unique_shape_objects(scene):
        kinds.append("colour")
    if relations and len(scene.objects) > 1:
        kinds.append("relation")
    return kinds


# Words used by templates outside the tables above (kept in sync by a test).
_TEMPLATE_WORDS = (
    "a an the and but no of is are there only object objects shape shapes single nothing",
    "from left to right : ,",
    "what colour shape size how many ? yes",
)


# ------------------------------------------------------------------------------ datasets
class _ShapesDataset(Dataset):
    """Map-style dataset over the scenes of one split."""

    def __init__(
        self, world: ShapesWorld, split: str, transform: Callable[[Image.Image], Any] | None = None
    ) -> None:
        world._check_split(split)
        self.world = world
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return self.world.split_size(self.split)

    def _check(self, index: int) -> int:
        index = int(index)
        self.world._check_index(self.split, index)
        return index

    def _image(self, scene: Scene) -> Any:
        image = self.world.render(scene)
        return self.transform(image) if self.transform is not None else image

    def __repr__(self) -> str:
        return f"{type(self).__name__}(split={self.split!r}, size={len(self)})"


class _TaskDataset(_ShapesDataset):
    """A task over the split's scenes: an image plus annotations from :meth:`example`."""

    _stream: int

    def example(self, scene: Scene, rng: random.Random) -> dict[str, Any]:
        raise NotImplementedError

    def annotation(self, index: int) -> dict[str, Any]:
        """Sample ``index`` without its image (cheap: nothing is rendered)."""
        index = self._check(index)
        scene = self.world.scene(self.split, index)
        return {
            **self.example(scene, self.world.rng(self.split, index, self._stream)),
            "index": index,
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        annotation = self.annotation(index)
        scene = self.world.scene(self.split, annotation["index"])
        return {"image": self._image(scene), **annotation}


class ShapesPairs(_ShapesDataset):
    """Image-text pairs: ``{"image", "text", "index"}``, ``index`` being the scene index.

    ``captions_per_image``: ``1`` pairs each image with its primary caption; ``"all"`` yields
    every caption as its own sample (``CAPTIONS_PER_SCENE`` times as many samples, sample ``j``
    is scene ``j // CAPTIONS_PER_SCENE``); ``"random"`` draws one of the captions per access
    with torch's generator (augmentation; the only non-deterministic mode).
    """

    def __init__(
        self,
        world: ShapesWorld,
        split: str,
        transform: Callable[[Image.Image], Any] | None = None,
        captions_per_image: int | Literal["all", "random"] = 1,
    ) -> None:
        super().__init__(world, split, transform)
        if captions_per_image not in (1, "all", "random"):
            raise ValueError(
                f"captions_per_image must be 1, 'all' or 'random', got {captions_per_image!r}"
            )
        self.captions_per_image = captions_per_image

    def __len__(self) -> int:
        n = self.world.split_size(self.split)
        return n * CAPTIONS_PER_SCENE if self.captions_per_image == "all" else n

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.captions_per_image == "all":
            if not 0 <= index < len(self):
                raise IndexError(
                    f"index {index} out of range for {self.split!r} pairs of size {len(self)}"
                )
            scene_index, k = divmod(int(index), CAPTIONS_PER_SCENE)
        else:
            scene_index, k = self._check(index), 0
        scene = self.world.scene(self.split, scene_index)
        rng = self.world.rng(self.split, scene_index, _CAPTIONS)
        if self.captions_per_image == 1:
            text = self.world._primary(scene, rng)
        else:
            if self.captions_per_image == "random":
                k = int(torch.randint(CAPTIONS_PER_SCENE, ()).item())
            text = self.world.captions(scene, rng)[k]
        return {"image": self._image(scene), "text": text, "index": scene_index}


class ShapesImages(_ShapesDataset):
    """Images for image-only pretraining and linear probes: ``{"image", "label"}``.

    ``label`` is the index in :attr:`ShapesWorld.SHAPES` of the shape of the most salient
    object: the largest one, ties broken by the leftmost. See :meth:`class_names`.
    """

    def label(self, scene: Scene) -> int:
        """Index of the shape of the largest object, the leftmost among equals."""
        target = min(scene.objects, key=lambda o: (o.size != "large", o.x))
        return self.world.SHAPES.index(target.shape)

    def __getitem__(self, index: int) -> dict[str, Any]:
        scene = self.world.scene(self.split, self._check(index))
        return {"image": self._image(scene), "label": self.label(scene)}

    def class_names(self) -> list[str]:
        return list(self.world.SHAPES)


class ShapesTexts(_ShapesDataset):
    """Text-only corpus for masked language modelling: ``{"text"}``, every caption of every
    scene (sample ``j`` is caption ``j % CAPTIONS_PER_SCENE`` of scene ``j // CAPTIONS_PER_SCENE``).
    """

    def __init__(self, world: ShapesWorld, split: str) -> None:
        super().__init__(world, split)

    def __len__(self) -> int:
        return self.world.split_size(self.split) * CAPTIONS_PER_SCENE

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(
                f"index {index} out of range for {self.split!r} texts of size {len(self)}"
            )
        scene_index, k = divmod(int(index), CAPTIONS_PER_SCENE)
        return {"text": self.world.scene_captions(self.split, scene_index)[k]}


class ShapesClassification(_ShapesDataset):
    """Single-object image classification, with class names for zero-shot prompts.

    Sample: ``{"image", "label", "index"}``; ``target`` is ``"shape"`` (labels index
    :attr:`ShapesWorld.SHAPES`) or ``"colour"`` (:attr:`ShapesWorld.COLOURS`). Classes are
    drawn uniformly. Scenes are its own (one object each), not the split's scenes; in
    ``test_novel`` the object always has a held-out colour-shape combination.
    """

    PROMPT_TEMPLATE: str = "a {size} {colour} {shape}"
    """The captions' own noun phrase; prompts fill it with every value of the open attributes."""

    def __init__(
        self,
        world: ShapesWorld,
        split: str,
        transform: Callable[[Image.Image], Any] | None = None,
        target: Literal["shape", "colour"] = "shape",
    ) -> None:
        super().__init__(world, split, transform)
        if target not in ("shape", "colour"):
            raise ValueError(f"target must be 'shape' or 'colour', got {target!r}")
        self.target = target

    def class_names(self) -> list[str]:
        return list(self.world.SHAPES if self.target == "shape" else self.world.COLOURS)

    def prompts(self, class_name: str) -> list[str]:
        """Zero-shot prompts for ``class_name``: the captions' noun phrase with every value of
        the attributes the class leaves open (``"a small red circle"``, ``"a large red
        circle"``, ...; for a colour, ``"a small orange star"``, ...), averaged like CLIP's
        prompt ensembles. Pretraining captions always name size, colour and shape together;
        generic templates around a bare class name (``"a picture of a circle"``) are phrases
        the text tower never saw, and scored lower: on the quickstart model 17.8% shape
        accuracy with four of them, 19.6% with both kinds, 24.2% with these alone."""
        w = self.world
        if self.target == "colour":
            fills = [{"size": z, "colour": class_name, "shape": s} for s in w.SHAPES for z in w.SIZES]
        else:
            fills = [{"size": z, "colour": c, "shape": class_name} for c in w.COLOURS for z in w.SIZES]
        return [self.PROMPT_TEMPLATE.format(**f) for f in fills]

    def scene(self, index: int) -> Scene:
        rng = self.world.rng(self.split, self._check(index), _CLASSIFICATION)
        novel = self.split == "test_novel"
        pool = self.world._heldout_sorted if novel else self.world.seen_combinations
        key = 1 if self.target == "shape" else 0
        classes = sorted({combo[key] for combo in pool}, key=self.class_names().index)
        cls = _choice(rng, classes)
        colour, shape = _choice(rng, [c for c in pool if c[key] == cls])
        size = "large" if rng.random() < 0.5 else "small"
        ((x, y),) = self.world._place(rng, [size])
        obj = ShapeObject(shape=shape, colour=colour, size=size, x=x, y=y)  # type: ignore[arg-type]
        return Scene(objects=(obj,), background=self.world._sample_background(rng))

    def __getitem__(self, index: int) -> dict[str, Any]:
        scene = self.scene(index)
        obj = scene.objects[0]
        label = self.class_names().index(obj.shape if self.target == "shape" else obj.colour)
        return {"image": self._image(scene), "label": label, "index": int(index)}


class ShapesVQA(_TaskDataset):
    """Visual question answering: ``{"image", "question", "answer", "label", "question_type"}``.

    Question types, drawn uniformly among those that apply to the scene: ``colour`` ("what
    colour is the circle?", asked of a shape unique in the scene), ``shape`` ("what shape is
    the red object?", of a unique colour), ``count`` ("how many objects are there?", "how many
    circles are there?" possibly zero), ``exists`` ("is there a red circle?", yes/no balanced),
    ``size`` ("what size is the red circle?"). ``label`` indexes :meth:`answer_vocabulary`.
    """

    _stream = _VQA

    def answer_vocabulary(self) -> list[str]:
        w = self.world
        return ["no", "yes", *w.COLOURS, *w.SHAPES, *_NUMBER, *w.SIZES]

    def example(self, scene: Scene, rng: random.Random) -> dict[str, Any]:
        """Question, answer, answer label and question type for ``scene``."""
        objs = scene.objects
        shapes = [o.shape for o in objs]
        colours = [o.colour for o in objs]
        kinds = ["count", "exists", "size"]
        if any(shapes.count(s) == 1 for s in shapes):
            kinds.append("colour")
        if any(colours.count(c) == 1 for c in colours):
            kinds.append("shape")
        kind = _choice(rng, sorted(kinds))
        if kind == "colour":
            obj = _choice(rng, [o for o in objs if shapes.count(o.shape) == 1])
            question, answer = f"what colour is the {obj.shape}?", obj.colour
        elif kind == "shape":
            obj = _choice(rng, [o for o in objs if colours.count(o.colour) == 1])
            question, answer = f"what shape is the {obj.colour} object?", obj.shape
        elif kind == "count":
            if rng.random() < 0.5:
                question, answer = "how many objects are there?", _NUMBER[len(objs)]
            else:
                shape = _choice(rng, self.world.SHAPES)
                question, answer = (
                    f"how many {_plural(shape)} are there?",
                    _NUMBER[shapes.count(shape)],
                )
        elif kind == "exists":
            if rng.random() < 0.5:
                colour, shape = _choice(rng, objs).combination
                answer = "yes"
            else:
                colour, shape = self.world._absent_combination(scene, rng)
                answer = "no"
            question = f"is there {_article(f'{colour} {shape}')}?"
        else:
            obj = _choice(rng, objs)
            question, answer = f"what size is {_ref(obj)}?", obj.size
        label = self.answer_vocabulary().index(answer)
        return {"question": question, "answer": answer, "label": label, "question_type": kind}

    def answer(self, question: str, scene: Scene) -> str | None:
        """The true answer to ``question`` about ``scene``, for any question of this
        generator's templates and any scene (also one built by hand, e.g. with an object
        removed); ``None`` when the question's presupposition fails ("what colour is the
        circle?" with no circle, or two). Raises ``ValueError`` for another question.

        The probes use it as the ground truth of questions asked about edited scenes
        (:mod:`flava_zoo.probes.occlusion`) and of entailed sub-questions.
        """
        objs = scene.objects
        q = _VQA_QUESTION.fullmatch(question)
        if q is None:
            raise ValueError(f"not a question of the shapes VQA templates: {question!r}")
        if q["colour_of"]:
            found = [o for o in objs if o.shape == q["colour_of"]]
            return found[0].colour if len(found) == 1 else None
        if q["shape_of"]:
            found = [o for o in objs if o.colour == q["shape_of"]]
            return found[0].shape if len(found) == 1 else None
        if q["size_colour"]:
            combination = (q["size_colour"], q["size_shape"])
            found = [o for o in objs if o.combination == combination]
            return found[0].size if len(found) == 1 else None
        if q["exists_colour"]:
            combination = (q["exists_colour"], q["exists_shape"])
            return "yes" if any(o.combination == combination for o in objs) else "no"
        if q["count_of"] == "objects":
            return _NUMBER[len(objs)] if len(objs) < len(_NUMBER) else None
        shape = _SINGULAR[q["count_of"]]
        n = sum(o.shape == shape for o in objs)
        return _NUMBER[n] if n < len(_NUMBER) else None

    def entailed_pairs(self, index: int) -> list[dict[str, Any]]:
        """Question pairs of scene ``index`` where the main question's true answer implies the
        sub-question's (SQuINT-style consistency, Selvaraju et al. CVPR 2020), both worded
        with this generator's own templates and both true of the scene.

        Each pair: ``{"question", "answer", "question_type", "sub_question", "sub_answer",
        "sub_question_type", "rule", "index"}``. Rules, in this order:

        - ``colour=>exists``: "what colour is the circle?" red => "is there a red circle?" yes
          (for each object whose shape is unique in the scene);
        - ``colour=>absent``: the same => "is there a blue circle?" no (another colour, the
          circle being unique);
        - ``shape=>exists``: "what shape is the red object?" circle => "is there a red circle?"
          yes (each object of a unique colour);
        - ``shape=>absent``: the same => "is there a red square?" no;
        - ``size=>exists``: "what size is the red circle?" large => "is there a red circle?" yes
          (each object);
        - ``count=>absent``: "how many stars are there?" zero => "is there a green star?" no
          (each shape absent from the scene).

        The other colour or shape of a negative sub-question is drawn (stream
        ``_ENTAILED_PAIRS`` of the scene's generator) among the seen combinations, so no
        held-out combination appears in a question the scene does not force.
        """
        index = self._check(index)
        scene = self.world.scene(self.split, index)
        rng = self.world.rng(self.split, index, _ENTAILED_PAIRS)
        w = self.world
        seen = set(w.seen_combinations)
        objs = scene.objects
        shapes = [o.shape for o in objs]
        colours = [o.colour for o in objs]
        pairs: list[dict[str, Any]] = []

        def add(rule: str, main: tuple[str, str, str], sub: tuple[str, str, str]) -> None:
            pairs.append({
                "question": main[0], "answer": main[1], "question_type": main[2],
                "sub_question": sub[0], "sub_answer": sub[1], "sub_question_type": sub[2],
                "rule": rule, "index": index,
            })  # fmt: skip

        def exists(colour: str, shape: str, answer: str) -> tuple[str, str, str]:
            return (f"is there {_article(f'{colour} {shape}')}?", answer, "exists")

        unique_shape = [o for o in objs if shapes.count(o.shape) == 1]
        unique_colour = [o for o in objs if colours.count(o.colour) == 1]
        for o in unique_shape:
            main = (f"what colour is the {o.shape}?", o.colour, "colour")
            add("colour=>exists", main, exists(o.colour, o.shape, "yes"))
        for o in unique_shape:
            main = (f"what colour is the {o.shape}?", o.colour, "colour")
            others = [c for c in w.COLOURS if c != o.colour and (c, o.shape) in seen]
            add("colour=>absent", main, exists(_choice(rng, others), o.shape, "no"))
        for o in unique_colour:
            main = (f"what shape is the {o.colour} object?", o.shape, "shape")
            add("shape=>exists", main, exists(o.colour, o.shape, "yes"))
        for o in unique_colour:
            main = (f"what shape is the {o.colour} object?", o.shape, "shape")
            others = [s for s in w.SHAPES if s != o.shape and (o.colour, s) in seen]
            add("shape=>absent", main, exists(o.colour, _choice(rng, others), "no"))
        for o in objs:
            main = (f"what size is {_ref(o)}?", o.size, "size")
            add("size=>exists", main, exists(o.colour, o.shape, "yes"))
        for shape in w.SHAPES:
            if shape not in shapes:
                main = (f"how many {_plural(shape)} are there?", _NUMBER[0], "count")
                colour = _choice(rng, [c for c in w.COLOURS if (c, shape) in seen])
                add("count=>absent", main, exists(colour, shape, "no"))
        return pairs


class ShapesEntailment(_TaskDataset):
    """Visual entailment: image premise + text hypothesis -> ``LABELS[label]``.

    Sample: ``{"image", "hypothesis", "label"}``; labels are drawn uniformly. The image is
    read as a closed world (what is not drawn is absent):

    - entailment: a true statement (existence, absence, object count, size, colour of a
      shape, relation);
    - contradiction: a false statement of the same kinds, or a presupposition failure
      ("the green star is made of wood" with no green star);
    - neutral: an undeterminable predicate ("made of wood", "very heavy", ...) of an object
      that is present.

    Undeterminable predicates appear in both neutral and contradiction, so the hypothesis
    alone does not give the label.
    """

    LABELS: tuple[str, ...] = ("entailment", "neutral", "contradiction")
    relations = True
    _stream = _VISUAL_ENTAILMENT

    def example(self, scene: Scene, rng: random.Random) -> dict[str, Any]:
        """Hypothesis and label for ``scene``, without the premise."""
        label = _randint(rng, 3)
        if label == 1:
            hypothesis = _true_claim(self.world, scene, "undeterminable", rng)
        else:
            kinds = _claim_kinds(scene, self.relations)
            if label == 2:
                kinds.append("undeterminable")
            kind = _choice(rng, kinds)
            claim = _true_claim if label == 0 else _false_claim
            hypothesis = claim(self.world, scene, kind, rng)
        return {"hypothesis": hypothesis, "label": label}


class ShapesCaptionEntailment(ShapesEntailment):
    """GLUE-like sentence-pair entailment: ``{"premise", "hypothesis", "label"}``.

    The premise is the scene's primary caption, which names every object with its size,
    colour and shape; labels are defined as in :class:`ShapesEntailment`, reading the
    premise as exhaustive. Relation hypotheses are left out, since the premise states only
    some relations.
    """

    relations = False
    _stream = _CAPTION_ENTAILMENT

    def __init__(self, world: ShapesWorld, split: str) -> None:
        super().__init__(world, split)

    def annotation(self, index: int) -> dict[str, Any]:
        annotation = super().annotation(index)
        return {"premise": self.world.caption(self.split, annotation["index"]), **annotation}

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.annotation(index)


class ShapesMemes(_TaskDataset):
    """A hateful-memes-like task: ``{"image", "text", "label"}``, label 1 if the text is
    true of the image, 0 if false, about 50/50.

    Texts are claims (existence, absence, size, colour of a shape, relation) whose true and
    false forms come from the same templates and vocabulary, so neither the text alone nor the
    image alone predicts the label.
    """

    _stream = _MEMES

    def example(self, scene: Scene, rng: random.Random) -> dict[str, Any]:
        label = int(rng.random() < 0.5)
        kinds = [k for k in _claim_kinds(scene, relations=True) if k != "count"]
        kind = _choice(rng, kinds)
        claim = _true_claim if label == 1 else _false_claim
        return {"text": claim(self.world, scene, kind, rng), "label": label}
