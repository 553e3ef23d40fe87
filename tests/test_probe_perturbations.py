"""The perturbation probes: negation, occlusion, subquestions, and the shapes world's
entailed question pairs and ground-truth answerer they read."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image

from flava_zoo.data.shapes import Scene, ShapesVQA, ShapesWorld
from flava_zoo.evaluation.results import read_results
from flava_zoo.probes import run_probe
from flava_zoo.probes.common import Classifier, ProbeContext, ProbeError, ProbeWriter
from flava_zoo.probes.negation import negate_question
from flava_zoo.probes.occlusion import hide, targets_and_distractors
from flava_zoo.probes.subquestions import RULES

ONE_THREAD = True


# ------------------------------------------------------------------- shapes ground truth
def test_answer_reads_every_generated_question_and_edited_scenes() -> None:
    world = ShapesWorld()
    for split in ("train", "test", "test_novel"):
        vqa = ShapesVQA(world, split)
        for i in range(150):
            ann = vqa.annotation(i)
            assert vqa.answer(ann["question"], world.scene(split, i)) == ann["answer"], (split, i)
    vqa = ShapesVQA(world, "test")
    scene = world.scene("test", 9)  # one object: a large blue square
    assert [(o.colour, o.shape, o.size) for o in scene.objects] == [("blue", "square", "large")]
    empty = hide(scene, 0)
    assert vqa.answer("what colour is the square?", scene) == "blue"
    assert vqa.answer("what colour is the square?", empty) is None  # no referent left
    assert vqa.answer("is there a blue square?", empty) == "no"
    assert vqa.answer("how many objects are there?", empty) == "zero"
    assert vqa.answer("how many squares are there?", scene) == "one"
    three = world.scene("test", 1)  # a green cross, a blue diamond, a green square
    objs = three.objects
    assert len(objs) == 3 and len({o.shape for o in objs}) == 3
    assert targets_and_distractors(vqa, "how many objects are there?", three) == ([0, 1, 2], [])
    assert targets_and_distractors(vqa, f"what colour is the {objs[1].shape}?", three) == ([1], [0, 2])
    absent = next(c for c in world.seen_combinations if c not in {o.combination for o in objs})
    assert targets_and_distractors(vqa, f"is there a {absent[0]} {absent[1]}?", three) == ([], [0, 1, 2])
    with pytest.raises(ValueError, match="not a question of the shapes VQA templates"):
        vqa.answer("is there no blue square?", scene)


def test_entailed_pairs_are_true_by_ground_truth() -> None:
    world = ShapesWorld()
    rules_seen = set()
    for split in ("test", "test_novel"):
        vqa = ShapesVQA(world, split)
        for i in range(150):
            scene = world.scene(split, i)
            pairs = vqa.entailed_pairs(i)
            assert pairs and pairs == vqa.entailed_pairs(i)  # deterministic
            present = {o.combination for o in scene.objects}
            for p in pairs:
                assert p["rule"] in RULES and p["index"] == i
                assert vqa.answer(p["question"], scene) == p["answer"], p
                assert vqa.answer(p["sub_question"], scene) == p["sub_answer"], p
                assert p["sub_question_type"] == "exists" and p["sub_answer"] == ("no" if p["rule"].endswith("absent") else "yes")
                colour, shape = p["sub_question"].removeprefix("is there ").split(" ", 1)[1].rstrip("?").split()
                # no held-out combination is asked about unless the scene holds it
                assert (colour, shape) in present or (colour, shape) not in world.heldout_combinations
                rules_seen.add(p["rule"])
    assert rules_seen == set(RULES)
    pairs = ShapesVQA(world, "test").entailed_pairs(9)  # a large blue square alone
    assert pairs[0] == {
        "question": "what colour is the square?", "answer": "blue", "question_type": "colour",
        "sub_question": "is there a blue square?", "sub_answer": "yes", "sub_question_type": "exists",
        "rule": "colour=>exists", "index": 9,
    }  # fmt: skip
    assert [p["rule"] for p in pairs][:5] == list(RULES[:5])
    assert [p["rule"] for p in pairs].count("count=>absent") == 5  # five shapes are absent


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(steps):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def test_hiding_an_object_changes_exactly_its_pixels() -> None:
    world = ShapesWorld(image_size=64)
    checked = 0
    for i in range(30):
        scene = world.scene("test", i)
        image = np.asarray(world.render(scene), dtype=np.int16)
        masks = world.object_masks(scene)
        for k, obj in enumerate(scene.objects):
            hidden = hide(scene, k)
            assert hidden.background == scene.background
            assert hidden.objects == tuple(o for j, o in enumerate(scene.objects) if j != k)
            diff = (np.asarray(world.render(hidden), dtype=np.int16) != image).any(-1)
            alone = world.object_masks(Scene(objects=(obj,), background=scene.background))[0]
            assert not (diff & ~_dilate(alone, 2)).any(), (i, k)  # nothing outside the object moves
            assert diff[masks[k]].mean() > 0.95, (i, k)  # its visible pixels are gone
            checked += 1
    assert checked > 50


# ---------------------------------------------------------------- rule-based negation
@pytest.mark.parametrize(
    ("question", "negated"),
    [
        ("Is there a dog?", "Is there no dog?"),
        ("Are there any people?", "Are there no people?"),
        ("Is there snow on the ground?", "Is there no snow on the ground?"),
        ("Is it raining?", "Is it not raining?"),
        ("Do you see a cat?", "Do you not see a cat?"),
        ("Is this a kitchen?", "Is this not a kitchen?"),
        ("Is this man happy?", "Is this man not happy?"),
        ("Is the man wearing a hat?", "Is the man not wearing a hat?"),
        ("Is the bus red?", "Is the bus not red?"),
        ("Are the lights on?", "Are the lights not on?"),
        ("Is the building tall?", "Is the building not tall?"),
        ("Does the dog have a collar?", "Does the dog not have a collar?"),
        ("is  the dog sleeping on the bed?", "is the dog not sleeping on the bed?"),
        ("Is the red car parked?", None),  # a two-word subject: declined
        ("Is the man's shirt red?", None),
        ("Is there only one dog?", None),
        ("Isn't it sunny?", None),  # negative already
        ("Is there no milk?", None),
        ("What color is the bus?", None),
        ("Is this building old?", "Is this building not old?"),
    ],
)
def test_negate_question(question, negated) -> None:
    assert negate_question(question) == negated


# ------------------------------------------------------------------- oracle classifier
class _Oracle:
    """A shapes-VQA "classifier" known by construction: it recognises each rendered image
    (by its bytes) as its scene and answers from the ground truth ("is there no X?" too);
    ``blind`` answers every question as of an empty scene (ignores the image)."""

    def __init__(self, world: ShapesWorld, n: int, blind: bool = False) -> None:
        self.world, self.vqa, self.blind = world, ShapesVQA(world, "test"), blind
        self.labels = self.vqa.answer_vocabulary()
        self.scenes: list[Scene] = []
        self.by_bytes: dict[bytes, int] = {}
        for i in range(n):
            scene = world.scene("test", i)
            for s in (scene, *(hide(scene, k) for k in range(len(scene.objects)))):
                self.by_bytes.setdefault(world.render(s).tobytes(), len(self.scenes))
                self.scenes.append(s)
        self.texts: list[str] = []

    def transform(self, image: Image.Image) -> torch.Tensor:
        return torch.tensor([self.by_bytes[image.tobytes()]])

    def tokenizer(self, texts, max_length=None):
        self.texts += list(texts)
        return {"input_ids": torch.arange(len(self.texts) - len(texts), len(self.texts))[:, None]}

    def forward(self, batch):
        out = torch.zeros(len(batch["input_ids"]), len(self.labels))
        for row, (s, t) in enumerate(zip(batch["pixel_values"][:, 0].tolist(), batch["input_ids"][:, 0].tolist())):
            scene = self.scenes[s]
            if self.blind:
                scene = Scene(objects=(), background=scene.background)
            question = self.texts[t]
            if question.startswith("is there no "):
                answer = {"yes": "no", "no": "yes"}[self.vqa.answer(question.replace(" no ", " a ", 1), scene)]
            else:
                answer = self.vqa.answer(question, scene) or "no"  # no referent: some answer
            out[row, self.labels.index(answer)] = 1.0
        return out

    def classifier(self) -> Classifier:
        return Classifier(forward=self.forward, tokenizer=self.tokenizer, transform=self.transform,
                          label_names=self.labels, task="shapes/vqa", name="oracle")  # fmt: skip


def _context(tmp_path, classifier, n, model=None) -> ProbeContext:
    writer = ProbeWriter(tmp_path / "results.jsonl", tmp_path / "figures", "oracle", "test")
    return ProbeContext(model=model, world=ShapesWorld(image_size=64), writer=writer, classifier=classifier, n=n, quiet=True)


def _values(records) -> dict[str, float]:
    return {r.metric: r.value for r in records}


def test_an_oracle_uses_the_evidence_and_a_blind_model_does_not(tmp_path) -> None:
    from flava_zoo.probes import negation, occlusion, subquestions

    world = ShapesWorld(image_size=64)
    oracle = _Oracle(world, 80)
    args = argparse.Namespace(split="test", kinds="questions")
    got = _values(occlusion.run(_context(tmp_path, oracle.classifier(), 80), args))
    assert got["evidence/all"] == got["target_changed/all"] == got["distractor_unchanged/all"] == 100.0
    assert got["accuracy/all"] == got["target_hidden_accuracy/all"] == 100.0 and got["chance/evidence/all"] == 0.0
    assert {"evidence/colour", "evidence/exists", "evidence/size"} <= set(got)
    got = _values(subquestions.run(_context(tmp_path, oracle.classifier(), 80), args))
    assert got["consistency"] == got["main_accuracy"] == got["sub_accuracy"] == 100.0
    assert got["chance/consistency"] == 50.0
    got = _values(negation.run(_context(tmp_path, oracle.classifier(), 80), args))
    assert got["question/consistency"] == got["question/both_correct"] == 100.0
    assert got["question/outside_yes_no"] == 0.0
    blind = _Oracle(world, 80, blind=True)
    got = _values(occlusion.run(_context(tmp_path, blind.classifier(), 80), args))
    assert got["evidence/all"] == 0.0 and got["target_changed/all"] == 0.0
    got = _values(negation.run(_context(tmp_path, blind.classifier(), 80), args))
    assert got["question/consistency"] == 100.0 and got["question/accuracy"] < 75  # flips, but blind
    figures = [json.loads(x)["figure"] for x in (tmp_path / "figures.jsonl").read_text().splitlines()]
    assert {"evidence", "changes", "consistency", "rates"} <= set(figures)


# ------------------------------------------------------------------- a random model
def test_a_random_model_sits_at_chance_on_negation_and_occlusion(tmp_path, random_export) -> None:
    from flava_zoo.inference import load_inference_model
    from flava_zoo.probes import negation

    gen = torch.Generator().manual_seed(0)
    labels = ShapesVQA(ShapesWorld(), "test").answer_vocabulary()
    model = load_inference_model(str(random_export), device="cpu")
    coin = Classifier(forward=lambda batch: torch.randn(len(batch["input_ids"]), len(labels), generator=gen),
                      tokenizer=model.tokenizer, transform=model.transform, label_names=labels, task="shapes/vqa")  # fmt: skip
    ctx = _context(tmp_path, coin, 400, model=model)
    records = negation.run(ctx, argparse.Namespace(split="test", kinds="captions,questions"))
    got = _values(records)
    for metric in ("caption/contrastive_drop", "caption/itm_paired", "question/consistency",
                   "question/accuracy", "question/accuracy_negated"):  # fmt: skip
        # 400 items: one standard error is 2.5 points; 8 is over three
        assert abs(got[metric] - 50.0) < 8.0, (metric, got[metric])
        assert got[f"chance/{metric}"] == 50.0
    by_metric = {r.metric: r for r in records}
    iv = by_metric["caption/contrastive_drop"].interval
    assert iv["low"] < got["caption/contrastive_drop"] < iv["high"] and by_metric["caption/itm_flip"].unit == "%"
    assert by_metric["caption/similarity_gap"].unit == "1"
    # the coin's answers move as often whatever is hidden: no evidence use
    from flava_zoo.probes import occlusion

    got = _values(occlusion.run(_context(tmp_path, coin, 400), argparse.Namespace(split="test")))
    assert abs(got["evidence/all"]) < 10.0 and got["chance/evidence/all"] == 0.0
    assert got["target_changed/all"] > 50 and got["distractor_unchanged/all"] < 50


# --------------------------------------------------------------------- files and CLI
def _write_vqav2(root) -> tuple[str, str, str]:
    """A tiny VQAv2 val split in the official format: five yes/no questions (four the rules
    negate) and one 'other'."""
    rows = [
        (1, "Is there a dog?", "yes", "yes/no"), (1, "Is the man wearing a hat?", "no", "yes/no"),
        (2, "Is it raining?", "no", "yes/no"), (2, "Is the red car parked?", "yes", "yes/no"),
        (2, "Does the dog have a collar?", "yes", "yes/no"), (1, "What color is the bus?", "red", "other"),
    ]  # fmt: skip
    meta = {"info": {}, "license": {}, "task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": "val2014"}
    questions = [{"image_id": im, "question": q, "question_id": 100 + k} for k, (im, q, _, _) in enumerate(rows)]
    annotations = [
        {"question_id": 100 + k, "image_id": im, "question_type": "is", "answer_type": kind, "multiple_choice_answer": a,
         "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1} for j in range(10)]}
        for k, (im, _, a, kind) in enumerate(rows)
    ]  # fmt: skip
    root.mkdir()
    (root / "q.json").write_text(json.dumps({**meta, "questions": questions}))
    (root / "a.json").write_text(json.dumps({**meta, "annotations": annotations}))
    (root / "val2014").mkdir()
    for im in (1, 2):
        Image.new("RGB", (64, 64), (40 * im, 90, 200)).save(root / "val2014" / f"COCO_val2014_{im:012d}.jpg")
    return str(root / "q.json"), str(root / "a.json"), str(root / "val2014")


def test_negation_on_vqav2_files(tmp_path, random_export, vqa_checkpoint) -> None:
    q, a, images = _write_vqav2(tmp_path / "vqa")
    records = run_probe("negation", model=str(random_export), classifier=str(vqa_checkpoint), kinds="vqav2",
                        vqav2_questions=q, vqav2_annotations=a, images=images, out=str(tmp_path / "out"))  # fmt: skip
    by_metric = {r.metric: r for r in records}
    assert by_metric["question/negatable"].value == pytest.approx(80.0)  # four of five yes/no
    assert by_metric["question/negatable"].num_samples == 5 and by_metric["question/consistency"].num_samples == 4
    assert {r.split for r in records} == {"q"}
    with pytest.raises(ProbeError, match="--vqav2-annotations"):
        run_probe("negation", model=str(random_export), classifier=str(vqa_checkpoint), kinds="vqav2",
                  vqav2_questions=q, images=images, out=str(tmp_path / "out"))  # fmt: skip


def test_cli_runs_the_three_probes(tmp_path, random_export, vqa_checkpoint, capsys) -> None:
    from flava_zoo.cli import main

    common = ["--model", str(random_export), "--classifier", str(vqa_checkpoint), "--n", "12", "--out", str(tmp_path), "--quiet"]
    for probe in ("negation", "occlusion", "subquestions"):
        assert main(["probe", probe, *common]) == 0, probe
    tasks = {r.task for r in read_results(tmp_path / "results.jsonl")}
    assert tasks == {"probe/negation", "probe/occlusion", "probe/subquestions"}
    metrics = {r.metric for r in read_results(tmp_path / "results.jsonl")}
    assert {"caption/itm_paired", "question/consistency", "evidence/all", "main_accuracy", "sub_accuracy"} <= metrics
    assert main(["probe", "occlusion", "--model", str(random_export), "--out", str(tmp_path)]) == 1
    assert "needs a fine-tuned classifier" in capsys.readouterr().err
    assert main(["probe", "negation", "--model", str(random_export), "--kinds", "nope", "--out", str(tmp_path)]) == 1
    assert "unknown kind 'nope'" in capsys.readouterr().err
    assert main(["probe", "subquestions", *common[:4], "--n", "5000", "--out", str(tmp_path)]) == 1
    assert "more than the 2000 scenes" in capsys.readouterr().err
