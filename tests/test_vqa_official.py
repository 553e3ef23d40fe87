"""The VQA accuracy of the current official evaluator (GT-Vision-Lab/VQA,
``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` at a013f00, "Fixed processing answers
bug") against hand-computed values, every case where it differs from the 2017 evaluator, and
the VQAv2 soft targets built from it."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from PIL import Image

from flava_zoo.data.tasks import VQAv2, build_answer_vocab
from flava_zoo.evaluation.metrics import (
    VQAAccuracy,
    _process_digit_article,
    _process_punctuation,
    normalize_vqa_answer,
    strip_vqa_answer,
    vqa_human_answer_forms,
    vqa_leave_one_out_score,
    vqa_score,
)


# --------------------------------------------------------------- reference control flows
def _by_records_a013f00(prediction: str, answers: list[str]) -> float:
    """The per-question loop of ``evaluate`` at a013f00, on answer records as in the official
    annotation files (records differ by ``answer_id``), modified in place as that code does."""
    records = [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
               for i, a in enumerate(answers)]  # fmt: skip
    for record in records:
        record["answer"] = record["answer"].replace("\n", " ").replace("\t", " ").strip()
    predicted = prediction.replace("\n", " ").replace("\t", " ").strip()
    if len({r["answer"] for r in records}) > 1:
        for record in records:
            record["answer"] = _process_digit_article(_process_punctuation(record["answer"]))
        predicted = _process_digit_article(_process_punctuation(predicted))
    accs = []
    for left_out in records:
        others = [r for r in records if r != left_out]
        accs.append(min(1.0, sum(r["answer"] == predicted for r in others) / 3))
    return sum(accs) / len(accs)


def _by_records_2017(prediction: str, answers: list[str]) -> float:
    """The same loop before a013f00: only the prediction is stripped and fully normalised; the
    humans, unstripped, pass the punctuation step alone, and only when not all identical."""
    records = [{"answer": a, "answer_id": i + 1} for i, a in enumerate(answers)]
    text = prediction.replace("\n", " ").replace("\t", " ").strip()
    predicted = _process_digit_article(_process_punctuation(text))
    if len({r["answer"] for r in records}) > 1:
        for record in records:
            record["answer"] = _process_punctuation(record["answer"])
    accs = []
    for left_out in records:
        others = [r for r in records if r != left_out]
        accs.append(min(1.0, sum(r["answer"] == predicted for r in others) / 3))
    return sum(accs) / len(accs)


# ------------------------------------------------- where a013f00 and the 2017 code differ
ISSUE_HUMANS = ["2", "2", "two", "Two", "two ", "two", "Two", "two ", "two", "two"]

DIFFERENCES = [
    # (prediction, human answers, a013f00, 2017)
    # disagreeing humans are normalised too: all ten become "2"
    ("two", ISSUE_HUMANS, 1.0, 0.6),
    ("2", ["two"] * 3 + ["three"] * 7, 0.9, 0.0),  # digits
    ("yes", ["Yes"] * 8 + ["yes"] * 2, 1.0, 0.6),  # lower-casing
    ("dog", ["a dog"] * 8 + ["dog"] * 2, 1.0, 0.6),  # articles
    ("don't", ["dont"] * 8 + ["don't"] * 2, 1.0, 0.6),  # contractions
    ("yes", ["yes!"] * 3 + ["no"] * 7, 0.9, 0.0),  # "yes " re-joined to "yes"
    # identical humans: the prediction is no longer normalised
    ("Two", ["2"] * 10, 0.0, 1.0),
    ("two", ["2"] * 10, 0.0, 1.0),
    ("yes.", ["yes"] * 10, 0.0, 1.0),
    ("YES", ["yes"] * 10, 0.0, 1.0),
    ("the dog", ["dog"] * 10, 0.0, 1.0),
    ("two\t", ["two"] * 10, 1.0, 0.0),  # stripped only, so it matches the humans' "two"
    # humans are stripped before the identity test
    ("yes", ["yes\n"] * 10, 1.0, 0.0),
    ("Yes", ["yes"] * 9 + [" yes"], 0.0, 1.0),  # identical once stripped: "Yes" stays "Yes"
]

ORDINARY = [
    # (prediction, human answers, score under both evaluators)
    ("yes.", ["yes"] * 9 + ["no"], 1.0),  # punctuation
    ("Two", ["2"] * 3 + ["3"] * 7, 0.9),  # digits, after lower-casing
    ("a dog", ["dog"] * 2 + ["cat"] * 8, 0.6),  # articles
    ("dont", ["don't"] + ["no"] * 9, 0.3),  # contractions
    ("1,000", ["1000"] * 4 + ["100"] * 6, 1.0),  # a comma between digits is deleted
    ("1000", ["1,000"] * 3 + ["2"] * 7, 0.9),
    ("3.5", ["3.5"] * 2 + ["3"] * 8, 0.6),  # a period before a digit stays
    ("its", ["it's"] * 4 + ["no"] * 6, 0.0),  # no apostrophe is added to "its"
    ("  yes\n", ["yes"] * 10, 1.0),
    ("cat", ["dog"] * 10, 0.0),
]


@pytest.mark.parametrize(("prediction", "humans", "current", "old"), DIFFERENCES)
def test_scores_where_a013f00_differs_from_2017(
    prediction: str, humans: list[str], current: float, old: float
) -> None:
    assert vqa_score(prediction, humans) == pytest.approx(current)
    assert _by_records_a013f00(prediction, humans) == pytest.approx(current)
    assert _by_records_2017(prediction, humans) == pytest.approx(old)


@pytest.mark.parametrize(("case", "expected"), [(c[:2], c[2]) for c in ORDINARY])
def test_ordinary_scores(case: tuple[str, list[str]], expected: float) -> None:
    prediction, humans = case
    assert vqa_score(prediction, humans) == pytest.approx(expected)
    assert _by_records_a013f00(prediction, humans) == pytest.approx(expected)
    assert _by_records_2017(prediction, humans) == pytest.approx(expected)


def test_issue_example_and_identical_humans() -> None:
    assert vqa_score("two", ISSUE_HUMANS) == 1.0
    assert vqa_score("2", ISSUE_HUMANS) == 1.0
    assert vqa_score("Two", ["2"] * 10) == 0.0
    assert vqa_score("2", ["2"] * 10) == 1.0


@pytest.mark.parametrize(
    ("k", "expected"),
    [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (9, 1.0), (10, 1.0)],
)
def test_leave_one_out_mean(k: int, expected: float) -> None:
    # 3 matches: 3 left-out humans leave 2 (2/3 each), 7 leave 3 (1 each): (2 + 7) / 10
    assert vqa_leave_one_out_score(k, 10) == pytest.approx(expected)
    assert vqa_score("dog", ["dog"] * k + ["cat"] * (10 - k)) == pytest.approx(expected)


def test_leave_one_out_other_sizes_and_errors() -> None:
    assert vqa_leave_one_out_score(1, 1) == 0.0  # the only human left out: nobody matches
    assert vqa_score("a", ["a"]) == 0.0 == _by_records_a013f00("a", ["a"])
    assert vqa_leave_one_out_score(3, 3) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="11 matches of 10"):
        vqa_leave_one_out_score(11, 10)
    with pytest.raises(ValueError, match="non-empty list"):
        vqa_score("yes", [])
    with pytest.raises(ValueError, match="non-empty list"):
        vqa_score("yes", "yes")


def test_the_steps() -> None:
    assert strip_vqa_answer(" Two\t\n") == "Two"  # no lower-casing in the strip step
    assert strip_vqa_answer("red\tcar") == "red car"
    assert vqa_human_answer_forms(["2", "two "]) == (["2", "2"], True)
    assert vqa_human_answer_forms(["Two", "Two "]) == (["Two", "Two"], False)
    assert normalize_vqa_answer("Two ") == "2"


def test_agrees_with_the_record_loop_on_random_answers() -> None:
    pool = ["2", "two", "Two", "two ", " 2", "yes", "Yes", "yes.", "yes!", "no", "a dog",
            "dog", "the dog", "dont", "don't", "1,000", "1000", "red\n", "red", "3.5"]  # fmt: skip
    rng = random.Random(0)
    for _ in range(400):
        width = rng.randint(1, 4)
        humans = [rng.choice(pool[:width] if rng.random() < 0.3 else pool) for _ in range(10)]
        prediction = rng.choice(pool)
        assert vqa_score(prediction, humans) == pytest.approx(
            _by_records_a013f00(prediction, humans)
        ), (prediction, humans)


def test_vqa_accuracy_metric_is_the_mean_fraction() -> None:
    metric = VQAAccuracy()
    metric.update(["two", "Two", "dog"], [ISSUE_HUMANS, ["2"] * 10, ["dog"] * 2 + ["cat"] * 8])
    value = float(metric.compute())
    assert value == pytest.approx((1.0 + 0.0 + 0.6) / 3) and 0.0 <= value <= 1.0


# --------------------------------------------------------------------- VQAv2 soft targets
def _write_vqa(root: Path, answers: list[list[str]]) -> tuple[Path, Path, Path]:
    questions = {
        "info": {"description": "This is v2.0 of the VQA dataset."},
        "task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": "val2014",
        "questions": [{"image_id": 1, "question": f"Question {i}?", "question_id": 10 + i}
                      for i in range(len(answers))],
    }  # fmt: skip
    annotations = {
        "data_subtype": "val2014",
        "annotations": [
            {"question_type": "how many", "multiple_choice_answer": a[0], "image_id": 1,
             "answer_type": "other", "question_id": 10 + i,
             "answers": [{"answer": t, "answer_confidence": "yes", "answer_id": j + 1}
                         for j, t in enumerate(a)]}
            for i, a in enumerate(answers)
        ],
    }  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    q = root / "v2_OpenEnded_mscoco_val2014_questions.json"
    q.write_text(json.dumps(questions), encoding="utf-8")
    a = root / "v2_mscoco_val2014_annotations.json"
    a.write_text(json.dumps(annotations), encoding="utf-8")
    images = root / "val2014"
    images.mkdir(exist_ok=True)
    Image.new("RGB", (4, 4), (0, 128, 0)).save(images / "COCO_val2014_000000000001.jpg")
    return q, a, images


HUMANS = [
    ISSUE_HUMANS,  # disagreeing: all ten "2"
    ["two"] * 10,  # identical, unnormalised
    ["red", "red", "Red.", "blue", "blue", "blue", "blue", "blue", "blue", "blue"],
    ["blue"] * 6 + ["green"] * 2 + ["teal"] * 2,
]


def test_min_count_targets_by_hand(tmp_path: Path) -> None:
    q, a, images = _write_vqa(tmp_path, HUMANS)
    # normalised counts: 2 20, blue 13, red 3, green 2, teal 2; top 4 drops teal (ties go
    # alphabetically: green before teal)
    vocab = build_answer_vocab(a, top_k=4)
    assert vocab == ["2", "blue", "red", "green"]
    with pytest.warns(UserWarning, match=r"2 of 40 human answers .* 0 of 4 questions"):
        data = VQAv2(q, a, images, answer_vocab=vocab)
    assert data.num_oov_answers == 2  # teal x2, outside the vocabulary: no target
    targets = [data[i]["target"] for i in range(4)]
    # min(n / 3, 1) of normalised counts
    torch.testing.assert_close(targets[0], torch.tensor([1.0, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(targets[1], torch.tensor([1.0, 0.0, 0.0, 0.0]))  # "two" -> "2"
    torch.testing.assert_close(targets[2], torch.tensor([0.0, 1.0, 1.0, 0.0]))  # red x3
    torch.testing.assert_close(targets[3], torch.tensor([0.0, 1.0, 0.0, 2 / 3]))
    assert [data[i]["label"] for i in range(4)] == [0, 0, 2, 1]


def test_leave_one_out_targets_are_the_official_scores(tmp_path: Path) -> None:
    q, a, images = _write_vqa(tmp_path, HUMANS)
    vocab = ["2", "blue", "red", "green", "teal", "two"]
    with pytest.warns(UserWarning, match="1 answer_vocab entries are not normalised"):
        data = VQAv2(q, a, images, answer_vocab=vocab, soft_score="leave_one_out")
    targets = [data[i]["target"] for i in range(4)]
    # by hand: 10 matches -> 1; 3 -> 0.9; 7 -> 1; 6 -> 1; 2 -> 0.6; the ten identical "two"
    # are compared unnormalised: "2" gets 0, the unnormalised entry "two" gets 1
    expected = [
        [1.0, 0.0, 0.0, 0.0, 0.0, 1.0],  # "two" normalises to "2" here: the humans disagree
        [0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
        [0.0, 1.0, 0.9, 0.0, 0.0, 0.0],
        [0.0, 1.0, 0.0, 0.6, 0.6, 0.0],
    ]
    for target, row in zip(targets, expected):
        torch.testing.assert_close(target, torch.tensor(row))
    for i, target in enumerate(targets):  # each entry's official accuracy as a prediction
        official = [vqa_score(v, HUMANS[i]) for v in vocab]
        torch.testing.assert_close(target, torch.tensor(official))

    normalised_only = VQAv2(
        q, a, images, answer_vocab=["2", "blue", "red", "green", "teal"],
        soft_score="leave_one_out",
    )  # fmt: skip
    assert not normalised_only[1]["target"].any() and normalised_only.num_untargeted == 1
