"""The shapes world's ground truth for the probes: object masks and boxes, mentions, token offsets."""

from __future__ import annotations

import numpy as np

from flava_zoo.data.shapes import Mention, Scene, ShapesWorld
from flava_zoo.tokenizer import FlavaTokenizer


def test_masks_are_disjoint_and_cover_the_drawn_object() -> None:
    world = ShapesWorld(image_size=64)
    for index in range(40):
        scene = world.scene("train", index)
        masks = world.object_masks(scene)
        image = np.asarray(world.render(scene), dtype=np.float32)
        empty = np.asarray(world.render(Scene(objects=(), background=scene.background)), dtype=np.float32)
        changed = np.abs(image - empty).max(-1) > 30
        assert masks.shape == (len(scene.objects), 64, 64)
        assert int(masks.sum(0).max()) <= 1  # disjoint
        for obj, mask, box in zip(scene.objects, masks, world.object_boxes(scene)):
            assert mask.sum() > 10
            # the mask is where the object was drawn over the background
            assert changed[mask].mean() > 0.9, (index, obj)
            x0, y0, x1, y1 = box
            assert mask[y0:y1, x0:x1].sum() == mask.sum()
            assert x0 <= obj.x * 64 <= x1 and y0 <= obj.y * 64 <= y1
        background = ~masks.any(0)
        assert background.mean() > 0.4 and changed[background].mean() < 0.05


def test_mentions_name_present_objects_only() -> None:
    world = ShapesWorld()
    scene = world.scene("test", 3)  # a small red triangle, a small blue diamond, a large yellow triangle
    text = "a small blue diamond below a small red triangle, but no green star and two triangles"
    found = world.mentions(text, scene)
    assert [(text[m.start : m.end], m.object_index) for m in found] == [
        ("small blue diamond", 1),
        ("small red triangle", 0),
    ]
    assert world.mentions("a large red triangle", scene) == []  # wrong size: not this object
    assert world.mentions("is there a red triangle?", scene) == [Mention(11, 23, 0)]
    for index in range(30):  # every primary caption names every object
        s = world.scene("train", index)
        named = {m.object_index for m in world.mentions(world.caption("train", index), s)}
        assert named == set(range(len(s.objects)))


def test_token_offsets_follow_the_tokenization() -> None:
    world = ShapesWorld()
    tok = FlavaTokenizer.train(world.corpus("train", max_scenes=200), vocab_size=200)
    text = "a small blue diamond below a small red triangle"
    offsets = tok.token_offsets([text])[0]
    ids = tok([text])["input_ids"][0]
    assert len(offsets) == len(ids)
    assert offsets[0] == (0, 0) and offsets[-1] == (0, 0)  # [CLS], [SEP]
    words = [text[a:b] for a, b in offsets[1:-1]]
    assert "".join(w for w in words) == text.replace(" ", "")
