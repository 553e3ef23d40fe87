"""Tests of the shapes world: determinism, splits, held-out combinations, truthful and
diverse captions, datasets and task labels.

Truth is checked by an independent reader of the generated English (:func:`holds`), not by
the generator's own logic.
"""

from __future__ import annotations

import collections
import random
import re

import numpy as np
import pytest
import torch
from PIL import Image

from flava_zoo.data.shapes import (
    CAPTIONS_PER_SCENE,
    SPLITS,
    Background,
    Scene,
    ShapeObject,
    ShapesCaptionEntailment,
    ShapesClassification,
    ShapesEntailment,
    ShapesImages,
    ShapesMemes,
    ShapesPairs,
    ShapesTexts,
    ShapesVQA,
    ShapesWorld,
)

SMALL = {"train": 3000, "val": 300, "test": 1000, "test_novel": 500}
COLOURS = ShapesWorld.COLOURS
SHAPES = ShapesWorld.SHAPES
PLURALS = {("crosses" if s == "cross" else s + "s"): s for s in SHAPES}
NUMBERS = {"zero": 0, "one": 1, "a": 1, "an": 1, "two": 2, "three": 3}
UNDETERMINABLE_WORDS = (
    "made of",
    "heavy",
    "brand new",
    "about to move",
    "hollow",
    "warm",
    "favourite",
)

C = "(" + "|".join(COLOURS) + ")"
S = "(" + "|".join(SHAPES) + ")"
P = "(" + "|".join(PLURALS) + ")"
REL = "(to the left of|left of|to the right of|right of|above|below|beneath)"
GRID = {
    "in the top left": (0, 0), "at the top": (0, 1), "in the top right": (0, 2),
    "on the left": (1, 0), "in the centre": (1, 1), "on the right": (1, 2),
    "in the bottom left": (2, 0), "at the bottom": (2, 1), "in the bottom right": (2, 2),
}  # fmt: skip


@pytest.fixture(scope="module")
def world() -> ShapesWorld:
    return ShapesWorld(seed=0, sizes=SMALL)


def find(scene: Scene, colour: str, shape: str) -> ShapeObject | None:
    matches = [o for o in scene.objects if o.colour == colour and o.shape == shape]
    return matches[0] if matches else None


def holds(text: str, scene: Scene) -> bool:
    """Whether every checkable statement in ``text`` is true of ``scene``."""
    text = text.rstrip("?")
    objs = scene.objects
    colours = [o.colour for o in objs]
    shapes = [o.shape for o in objs]
    ok = True
    # Negations, removed before the positive checks.
    for colour, shape in re.findall(rf"\bno {C} {S}\b", text):
        ok &= find(scene, colour, shape) is None
    for plural in re.findall(rf"\bno {P}\b", text):
        ok &= PLURALS[plural] not in shapes
    for colour in re.findall(rf"\bnothing {C}\b", text):
        ok &= colour not in colours
    text = re.sub(rf"\bno {C} {S}\b|\bno {P}\b|\bnothing {C}\b", "", text)
    # Every mentioned colour-shape combination exists, with the stated size.
    for size, colour, shape in re.findall(rf"\b(?:(small|large) )?{C} {S}\b", text):
        obj = find(scene, colour, shape)
        ok &= obj is not None and (not size or obj.size == size)
    for word in re.findall(r"[a-z]+", text):
        if word in COLOURS:
            ok &= word in colours
        if word in SHAPES or word in PLURALS:
            ok &= PLURALS.get(word, word) in shapes
    # Relations between named objects.
    pattern = rf"{C} {S} (?:is )?{REL} (?:an? |the )?(?:small |large )?{C} {S}"
    for ca, sa, rel, cb, sb in re.findall(pattern, text):
        a, b = find(scene, ca, sa), find(scene, cb, sb)
        if a is None or b is None:
            return False
        dx, dy = b.x - a.x, b.y - a.y
        if "left" in rel:
            ok &= dx > 0
        elif "right" in rel:
            ok &= dx < 0
        else:
            ok &= dy > 0 if rel == "above" else dy < 0
    # Object counts, counts per shape and per colour.
    for number in re.findall(r"\b(?:there (?:are|is)|^) ?(one|two|three) objects?\b", text):
        ok &= NUMBERS[number] == len(objs)
    if "only one object" in text or "a single object" in text:
        ok &= len(objs) == 1
    for number, noun in re.findall(
        rf"(?:^|there is |there are |, | and )(an?|two|three) ({'|'.join(SHAPES)}|{P[1:-1]})\b",
        text,
    ):
        ok &= shapes.count(PLURALS.get(noun, noun)) == NUMBERS[number]
    for number, colour in re.findall(
        rf"(?:^|there is |there are |, | and )(an?|two|three) {C} shapes?\b", text
    ):
        ok &= colours.count(colour) == NUMBERS[number]
    # Attributes.
    for colour, shape, size in re.findall(rf"\bthe {C} {S} is (small|large)\b", text):
        ok &= find(scene, colour, shape) is not None and find(scene, colour, shape).size == size  # type: ignore[union-attr]
    for shape, colour in re.findall(rf"\bthe {S} is {C}\b", text):
        ok &= shapes.count(shape) == 1 and find(scene, colour, shape) is not None
    for colour, shape in re.findall(rf"\bthe {C} object is an? {S}\b", text):
        ok &= colours.count(colour) == 1 and find(scene, colour, shape) is not None
    # Left-to-right order and the position of a lone object.
    if text.startswith("from left to right: "):
        named = [find(scene, c, s) for c, s in re.findall(rf"{C} {S}", text)]
        ok &= None not in named and [o.x for o in named] == sorted(o.x for o in named)  # type: ignore[union-attr]
    for phrase, (row, col) in GRID.items():
        if text.endswith(phrase):
            ok &= len(objs) == 1 and (int(objs[0].y * 3), int(objs[0].x * 3)) == (row, col)
    return bool(ok)


def to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255


def hand_scene() -> Scene:
    """A large red circle on the left, a small blue square on the right."""
    background = Background(colour_a=(220, 220, 230), colour_b=(230, 220, 210), angle=0.0, noise=0)
    return Scene(
        objects=(
            ShapeObject(shape="circle", colour="red", size="large", x=0.25, y=0.5),
            ShapeObject(shape="square", colour="blue", size="small", x=0.75, y=0.45),
        ),
        background=background,
    )


# ----------------------------------------------------------------------- determinism & splits
def test_same_seed_same_world_other_seed_other_world(world: ShapesWorld) -> None:
    twin, other = ShapesWorld(seed=0, sizes=SMALL), ShapesWorld(seed=1, sizes=SMALL)
    assert twin.heldout_combinations == world.heldout_combinations
    for split in SPLITS:
        for index in (0, 7, 123):
            assert world.scene(split, index) == twin.scene(split, index)
            assert world.image(split, index).tobytes() == twin.image(split, index).tobytes()
            assert world.scene_captions(split, index) == twin.scene_captions(split, index)
    images_differ = sum(
        world.image("train", i).tobytes() != other.image("train", i).tobytes() for i in range(10)
    )
    captions_differ = sum(world.caption("train", i) != other.caption("train", i) for i in range(10))
    assert images_differ == 10 and captions_differ >= 9
    # Scene i is a pure function of (seed, split, i): access order does not matter.
    assert [world.caption("val", i) for i in (5, 3, 5)] == [
        twin.caption("val", 5),
        twin.caption("val", 3),
        twin.caption("val", 5),
    ]


def test_split_sizes() -> None:
    default = ShapesWorld()
    assert {s: default.split_size(s) for s in SPLITS} == {
        "train": 20_000,
        "val": 2_000,
        "test": 2_000,
        "test_novel": 2_000,
    }
    custom = ShapesWorld(sizes={"train": 10, "test_novel": 3})
    assert custom.split_size("train") == 10 and custom.split_size("val") == 2_000
    assert len(ShapesPairs(custom, "train")) == 10
    assert len(ShapesPairs(custom, "train", captions_per_image="all")) == 10 * CAPTIONS_PER_SCENE
    assert len(ShapesTexts(custom, "test_novel")) == 3 * CAPTIONS_PER_SCENE
    nothing_held_out = ShapesWorld(heldout_fraction=0.0)
    assert nothing_held_out.heldout_combinations == frozenset()
    assert nothing_held_out.split_size("test_novel") == 0


def test_errors(world: ShapesWorld) -> None:
    with pytest.raises(ValueError, match=r"unknown split 'tran'.*train, val, test, test_novel"):
        world.scene("tran", 0)
    with pytest.raises(ValueError, match="valid splits"):
        world.split_size("dev")
    with pytest.raises(ValueError, match="valid splits"):
        ShapesPairs(world, "validation")
    with pytest.raises(ValueError, match="valid splits"):
        ShapesWorld(sizes={"training": 5})
    with pytest.raises(IndexError, match=r"index 300 out of range for split 'val' of size 300"):
        world.scene("val", 300)
    with pytest.raises(IndexError, match="'test'.*1000"):
        world.caption("test", -1)
    for dataset in (ShapesImages(world, "val"), ShapesVQA(world, "val"), ShapesMemes(world, "val")):
        with pytest.raises(IndexError, match="'val'"):
            dataset[300]
    with pytest.raises(IndexError, match="'val'"):
        ShapesTexts(world, "val")[300 * CAPTIONS_PER_SCENE]
    with pytest.raises(ValueError, match="captions_per_image"):
        ShapesPairs(world, "val", captions_per_image=2)
    with pytest.raises(ValueError, match="heldout_fraction"):
        ShapesWorld(heldout_fraction=0.9)


# -------------------------------------------------------------------- held-out combinations
def test_heldout_combinations_are_spread_and_never_seen(world: ShapesWorld) -> None:
    heldout = world.heldout_combinations
    n_combos = len(COLOURS) * len(SHAPES)
    assert len(COLOURS) >= 6 and len(SHAPES) >= 5
    assert abs(len(heldout) - 0.15 * n_combos) <= 1
    seen = set(world.seen_combinations)
    for colour in COLOURS:  # every colour and shape keeps several training partners
        assert sum((colour, s) in seen for s in SHAPES) >= len(SHAPES) - 2
    for shape in SHAPES:
        assert sum((c, shape) in seen for c in COLOURS) >= len(COLOURS) - 2
    mention = re.compile("|".join(rf"\b{c} {s}\b" for c, s in heldout))
    for split in ("train", "val", "test"):
        for index in range(world.split_size(split)):
            scene = world.scene(split, index)
            assert not {o.combination for o in scene.objects} & heldout, (split, index)
    tasks = (
        ShapesVQA(world, "train"),
        ShapesEntailment(world, "train"),
        ShapesCaptionEntailment(world, "train"),
        ShapesMemes(world, "train"),
    )
    for index in range(300):  # nor in any text about those scenes
        texts = list(world.scene_captions("train", index))
        texts += [str(v) for task in tasks for v in task.annotation(index).values()]
        assert not any(mention.search(t) for t in texts), texts
    for index in range(world.split_size("test_novel")):
        assert {o.combination for o in world.scene("test_novel", index).objects} & heldout
    novel = ShapesClassification(world, "test_novel")
    assert all(novel.scene(i).objects[0].combination in heldout for i in range(50))


# --------------------------------------------------------------------------------- scenes
def test_scenes_are_well_formed(world: ShapesWorld) -> None:
    counts = collections.Counter()
    for index in range(500):
        scene = world.scene("train", index)
        objs = scene.objects
        counts[len(objs)] += 1
        assert len({o.combination for o in objs}) == len(objs)
        for o in objs:
            assert o.radius <= o.x <= 1 - o.radius and o.radius <= o.y <= 1 - o.radius
        for i, a in enumerate(objs):  # no heavy overlap
            for b in objs[i + 1 :]:
                assert np.hypot(a.x - b.x, a.y - b.y) >= 0.85 * (a.radius + b.radius)
    assert set(counts) == {1, 2, 3} and min(counts.values()) > 50


def test_render(world: ShapesWorld) -> None:
    image = world.image("train", 0)
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (64, 64)
    assert ShapesWorld(image_size=96, sizes=SMALL).image("train", 0).size == (96, 96)
    # The middle of a lone object shows its colour, whatever the background.
    from flava_zoo.data.shapes import _COLOUR_RGB

    corners = []
    checked = 0
    for index in range(200):
        scene = world.scene("train", index)
        pixels = np.asarray(world.render(scene), dtype=float)
        corners.append(pixels[:4, :4].mean(axis=(0, 1)))
        if len(scene.objects) == 1:
            o = scene.objects[0]
            centre = pixels[int(o.y * 64), int(o.x * 64)]
            assert np.abs(centre - _COLOUR_RGB[o.colour]).max() < 30, (index, o)
            checked += 1
    assert checked > 10
    corners = np.stack(corners)
    assert corners.std(axis=0).min() > 8  # backgrounds vary
    assert corners.mean() > 150  # and stay light


# ------------------------------------------------------------------------------- captions
def test_captions_are_true(world: ShapesWorld) -> None:
    for split, n in (("train", 300), ("test_novel", 200)):
        for index in range(n):
            scene = world.scene(split, index)
            captions = world.scene_captions(split, index)
            assert len(captions) == CAPTIONS_PER_SCENE
            assert captions[0] == world.caption(split, index)
            for caption in captions:
                assert holds(caption, scene), (split, index, caption, scene)


def test_truth_checker_catches_false_captions() -> None:
    scene = hand_scene()
    assert holds("a large red circle left of a small blue square", scene)
    assert holds("there is no green triangle", scene)
    assert holds("there are two objects", scene)
    for false in (
        "a large red circle right of a small blue square",
        "a small red circle left of a small blue square",
        "there is no red circle",
        "there are three objects",
        "there are no circles",
        "there is nothing blue",
        "the square is red",
        "a green triangle",
        "the red circle is small",
        "the blue square is left of the red circle",
        "two circles",
    ):
        assert not holds(false, scene), false


def test_hand_checked_captions(world: ShapesWorld) -> None:
    scene = hand_scene()
    seen_relation = False
    for seed in range(40):
        captions = world.captions(scene, seed)
        primary = captions[0]
        assert re.search(
            r"large red circle (to the )?left of a small blue square", primary
        ) or re.search(r"small blue square (to the )?right of a large red circle", primary), primary
        seen_relation |= any(
            re.fullmatch(rf"the (red circle|blue square) is {REL} the (red circle|blue square)", c)
            for c in captions
        )
        assert all(holds(c, scene) for c in captions)
    assert seen_relation
    assert world.captions(scene, 3) == world.captions(scene, random.Random(3))


def test_primary_captions_are_diverse(world: ShapesWorld) -> None:
    for split in ("test", "test_novel"):
        captions = [world.caption(split, i) for i in range(min(1000, world.split_size(split)))]
        counts = collections.Counter(captions)
        duplicated = sum(1 for c in captions if counts[c] > 1) / len(captions)
        print(f"{split}: {duplicated:.1%} of primary captions are shared by another scene")
        assert duplicated < 0.05


def test_corpus_and_vocabulary() -> None:
    small = ShapesWorld(sizes={"train": 40})
    texts = list(small.corpus("train"))
    assert len(texts) == 40 * CAPTIONS_PER_SCENE and all(isinstance(t, str) and t for t in texts)
    with_tasks = list(small.corpus("train", include_tasks=True))
    assert len(with_tasks) > len(texts)
    vocabulary = set(ShapesWorld.vocabulary())
    for text in with_tasks:
        tokens = set(re.findall(r"[a-z']+|[^\sa-z']", text))
        assert tokens <= vocabulary, tokens - vocabulary


# ------------------------------------------------------------------------------- datasets
def test_pairs_images_texts(world: ShapesWorld) -> None:
    pairs = ShapesPairs(world, "val", transform=to_tensor)
    sample = pairs[4]
    assert set(sample) == {"image", "text", "index"}
    assert sample["image"].shape == (3, 64, 64) and sample["image"].dtype == torch.float32
    assert sample["text"] == world.caption("val", 4) and sample["index"] == 4
    raw = ShapesPairs(world, "val")[4]
    assert isinstance(raw["image"], Image.Image)
    every = ShapesPairs(world, "val", captions_per_image="all")
    texts = [every[4 * CAPTIONS_PER_SCENE + k]["text"] for k in range(CAPTIONS_PER_SCENE)]
    assert texts == world.scene_captions("val", 4)
    assert {every[4 * CAPTIONS_PER_SCENE + k]["index"] for k in range(CAPTIONS_PER_SCENE)} == {4}
    torch.manual_seed(0)
    drawn = {ShapesPairs(world, "val", captions_per_image="random")[4]["text"] for _ in range(30)}
    assert len(drawn) > 1 and drawn <= set(texts)
    loader = torch.utils.data.DataLoader(pairs, batch_size=8)
    batch = next(iter(loader))
    assert batch["image"].shape == (8, 3, 64, 64) and len(batch["text"]) == 8

    images = ShapesImages(world, "val")
    sample = images[0]
    assert set(sample) == {"image", "label"} and isinstance(sample["label"], int)
    assert images.class_names() == list(SHAPES)
    scene = hand_scene()  # the large circle wins over the small square
    assert images.label(scene) == SHAPES.index("circle")
    two_large = Scene(
        objects=(
            ShapeObject("star", "red", "large", 0.7, 0.5),
            ShapeObject("cross", "blue", "large", 0.3, 0.5),
        ),
        background=scene.background,
    )
    assert images.label(two_large) == SHAPES.index("cross")  # leftmost of the large ones

    texts_ds = ShapesTexts(world, "val")
    assert texts_ds[2 * CAPTIONS_PER_SCENE + 1] == {"text": world.scene_captions("val", 2)[1]}


def test_classification(world: ShapesWorld) -> None:
    for target, names in (("shape", SHAPES), ("colour", COLOURS)):
        ds = ShapesClassification(world, "train", target=target)
        assert ds.class_names() == list(names)
        labels = collections.Counter()
        for index in range(300):
            sample = ds[index]
            obj = ds.scene(index).objects[0]
            assert sample["label"] == names.index(obj.shape if target == "shape" else obj.colour)
            labels[sample["label"]] += 1
        assert len(labels) == len(names) and min(labels.values()) > 300 / len(names) / 2.5
    shape_ds = ShapesClassification(world, "test")
    colour_prompts = ShapesClassification(world, "test", target="colour").prompts("orange")
    assert "a large orange star" in colour_prompts and len(colour_prompts) == 2 * len(world.SHAPES)
    circle = shape_ds.prompts("circle")
    assert "a small red circle" in circle and len(circle) == 2 * len(world.COLOURS)
    assert all(p.endswith(" circle") for p in circle)


def test_vqa(world: ShapesWorld) -> None:
    vqa = ShapesVQA(world, "train")
    vocabulary = vqa.answer_vocabulary()
    assert len(vocabulary) == len(set(vocabulary))
    for index in range(200):
        sample = vqa[index]
        assert {"image", "question", "answer", "label", "question_type"} <= set(sample)
        assert vocabulary[sample["label"]] == sample["answer"]
    types, yes_no = collections.Counter(), collections.Counter()
    for index in range(2000):
        qa = vqa.annotation(index)
        assert vqa_oracle(qa["question"], world.scene("train", index)) == qa["answer"], qa
        types[qa["question_type"]] += 1
        if qa["answer"] in ("yes", "no"):
            yes_no[qa["answer"]] += 1
    assert len(types) == 5 and min(types.values()) > 250
    assert 0.4 < yes_no["yes"] / sum(yes_no.values()) < 0.6
    # Hand-checked scene: a large red circle left of a small blue square.
    expected = {
        "what colour is the circle?": "red",
        "what colour is the square?": "blue",
        "what shape is the red object?": "circle",
        "what shape is the blue object?": "square",
        "how many objects are there?": "two",
        "how many circles are there?": "one",
        "how many squares are there?": "one",
        "is there a red circle?": "yes",
        "is there a blue square?": "yes",
        "what size is the red circle?": "large",
        "what size is the blue square?": "small",
    }
    asked = set()
    for seed in range(300):
        qa = vqa.example(hand_scene(), random.Random(seed))
        question, answer = qa["question"], qa["answer"]
        if question in expected:
            assert answer == expected[question], question
            asked.add(question)
        elif question.startswith("is there"):
            assert answer == "no", question
        else:
            assert re.fullmatch(r"how many \w+ are there\?", question) and answer == "zero", (
                question
            )
    assert len(asked) == len(expected)


def vqa_oracle(question: str, scene: Scene) -> str:
    objs = scene.objects
    if m := re.fullmatch(rf"what colour is the {S}\?", question):
        (obj,) = [o for o in objs if o.shape == m[1]]
        return obj.colour
    if m := re.fullmatch(rf"what shape is the {C} object\?", question):
        (obj,) = [o for o in objs if o.colour == m[1]]
        return obj.shape
    if question == "how many objects are there?":
        return ["zero", "one", "two", "three"][len(objs)]
    if m := re.fullmatch(rf"how many {P} are there\?", question):
        return ["zero", "one", "two", "three"][sum(o.shape == PLURALS[m[1]] for o in objs)]
    if m := re.fullmatch(rf"is there an? {C} {S}\?", question):
        return "yes" if find(scene, m[1], m[2]) else "no"
    if m := re.fullmatch(rf"what size is the {C} {S}\?", question):
        return find(scene, m[1], m[2]).size  # type: ignore[union-attr]
    raise AssertionError(f"unexpected question {question!r}")


def check_entailment(hypothesis: str, label: int, scene: Scene) -> None:
    undeterminable = any(w in hypothesis for w in UNDETERMINABLE_WORDS)
    if label == 0:
        assert holds(hypothesis, scene) and not undeterminable, hypothesis
    elif label == 1:
        assert holds(hypothesis, scene) and undeterminable, hypothesis
    else:
        assert not holds(hypothesis, scene), hypothesis


def test_visual_and_caption_entailment(world: ShapesWorld) -> None:
    for dataset in (ShapesEntailment(world, "train"), ShapesCaptionEntailment(world, "train")):
        labels = collections.Counter()
        undeterminable_contradictions = 0  # the hypothesis alone does not give the label
        keys = {"premise", "hypothesis", "label", "index"}
        if isinstance(dataset, ShapesEntailment) and not isinstance(
            dataset, ShapesCaptionEntailment
        ):
            keys = {"image", "hypothesis", "label", "index"}
        assert set(dataset[0]) == keys
        for index in range(900):
            sample = dataset.annotation(index)
            scene = world.scene("train", index)
            if isinstance(dataset, ShapesCaptionEntailment):
                assert sample["premise"] == world.caption("train", index)
                assert not re.search(REL, sample["hypothesis"])  # not decidable from the premise
            check_entailment(sample["hypothesis"], sample["label"], scene)
            labels[sample["label"]] += 1
            if sample["label"] == 2 and any(
                w in sample["hypothesis"] for w in UNDETERMINABLE_WORDS
            ):
                undeterminable_contradictions += 1
        assert dataset.LABELS == ("entailment", "neutral", "contradiction")
        assert all(250 < labels[k] < 350 for k in range(3)), labels
        assert undeterminable_contradictions > 10
    hand = ShapesEntailment(world, "train")
    for seed in range(100):
        ex = hand.example(hand_scene(), random.Random(seed))
        check_entailment(ex["hypothesis"], ex["label"], hand_scene())


def test_memes_need_both_modalities(world: ShapesWorld) -> None:
    memes = ShapesMemes(world, "train")
    labels, by_template = [], collections.defaultdict(collections.Counter)
    for index in range(1000):
        sample = memes.annotation(index)
        assert sample["label"] == int(holds(sample["text"], world.scene("train", index))), sample
        labels.append(sample["label"])
        template = re.sub(rf"{C}|{S}|small|large|{REL}", "_", sample["text"])
        by_template[template][sample["label"]] += 1
    assert 0.45 < np.mean(labels) < 0.55
    # Text alone: the best label per template (attributes masked) stays near chance.
    text_only = sum(max(c.values()) for c in by_template.values()) / len(labels)
    assert text_only < 0.62, text_only
    assert set(memes[0]) == {"image", "text", "label", "index"}
