"""Downstream metrics against hand-computed values: the official VQA normalisation and
accuracy, the GLUE metrics and score, Hateful Memes AUROC / accuracy, SNLI-VE accuracy."""

from __future__ import annotations

import math

import pytest
import torch

from flava_zoo.evaluation.metrics import (
    GLUE_SCORE_TASKS,
    VQAAccuracy,
    binary_auroc_and_accuracy,
    glue_metrics,
    glue_predictions,
    glue_score,
    memes_metrics,
    normalize_vqa_answer,
    snli_ve_metrics,
    vqa_accuracy,
)


# ---------------------------------------------------------------------- VQA normalisation
@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("Two", "2"),  # number words to digits, after lower-casing
        ("none", "0"),
        ("ten", "10"),
        ("eleven", "eleven"),  # only zero..ten are mapped
        ("yes.", "yes"),  # a period not followed by a digit goes
        ("3.5", "3.5"),  # one followed by a digit stays
        ("u.s.a.", "usa"),
        ("the dog", "dog"),  # articles go wherever they are
        ("A cat and an owl", "cat and owl"),
        ("1,000", "1000"),  # a digit-comma-digit deletes (not spaces) all punctuation
        ("red,blue", "red blue"),  # otherwise a mark not next to a space becomes a space
        ("red, blue", "red blue"),  # and one next to a space is deleted
        ("black/white", "black white"),
        ("dont", "don't"),  # apostrophe-less contractions are restored
        ("don't", "don't"),  # the apostrophe is not punctuation to vqaEval.py
        ("it's", "it's"),
        ("its", "its"),  # not in the contractions table: "its" and "it's" stay apart
        ("  yes\n", "yes"),
        ("What's up?", "what's up"),
    ],
)
def test_normalize_vqa_answer(raw: str, normalised: str) -> None:
    assert normalize_vqa_answer(raw) == normalised


def test_normalisation_keeps_the_official_period_count_quirk() -> None:
    # vqaEval.py passes re.UNICODE (32) as sub()'s count: at most 32 periods are dropped
    assert normalize_vqa_answer("." * 40) == "." * 8


def _humans(matching: str, k: int, other: str = "cat") -> list[str]:
    return [matching] * k + [other] * (10 - k)


@pytest.mark.parametrize(
    ("k", "expected"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)]
)
def test_vqa_accuracy_leave_one_out(k: int, expected: float) -> None:
    # e.g. 2 matches: 2 subsets drop a match (1/3 each), 8 keep both (2/3 each): (2/3 + 16/3) / 10
    assert vqa_accuracy("dog", _humans("dog", k)) == pytest.approx(expected)


def test_vqa_accuracy_normalisation_edge_cases() -> None:
    # (tests/test_vqa_official.py has the cases where vqaEval.py a013f00 differs from 2017's)
    assert vqa_accuracy("Two", _humans("2", 3)) == pytest.approx(0.9)
    # humans all identical: nothing is normalised, not even the prediction (2017: 1.0)
    assert vqa_accuracy("yes.", ["yes"] * 10) == 0.0
    assert vqa_accuracy("the dog", _humans("dog", 4)) == 1.0
    assert vqa_accuracy("1,000", _humans("1000", 1)) == pytest.approx(0.3)
    assert vqa_accuracy("its", _humans("it's", 4)) == 0.0
    assert vqa_accuracy("dont", _humans("don't", 2)) == pytest.approx(0.6)
    # humans who all said "two" are not digit-normalised: a prediction "2" does not match
    assert vqa_accuracy("2", ["two"] * 10) == 0.0
    # disagreeing humans are normalised like the prediction
    assert vqa_accuracy("yes", _humans("yes.", 3)) == pytest.approx(0.9)
    assert vqa_accuracy("yes", ["yes."] * 10) == 0.0
    # "yes!" -> "yes " (the mark is spaced) -> "yes" (processDigitArticle re-joins the words);
    # the 2017 evaluator skipped that second step for humans and gave 0.0
    assert vqa_accuracy("yes", _humans("yes!", 3)) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="non-empty list"):
        vqa_accuracy("yes", [])


def test_vqa_accuracy_metric_accumulates_and_refuses_zero_samples() -> None:
    metric = VQAAccuracy()
    with (
        pytest.raises(ValueError, match="no samples"),
        pytest.warns(UserWarning, match="before the ``update``"),
    ):
        metric.compute()
    # ten identical humans "2": the prediction is not normalised, "Two" scores 0 (2017: 1)
    metric.update(["dog", "Two", "2"], [_humans("dog", 1), _humans("2", 10), _humans("2", 10)])
    metric.update(["cat"], [_humans("dog", 2, other="cat")])  # 8 humans said cat
    assert float(metric.compute()) == pytest.approx((0.3 + 0.0 + 1.0 + 1.0) / 4)
    with pytest.raises(ValueError, match="2 predictions but 1 lists"):
        metric.update(["a", "b"], [["a"]])


# ---------------------------------------------------------------------------------- GLUE
PREDS = torch.tensor([1, 1, 0, 0, 1, 0])
LABELS = torch.tensor([1, 0, 0, 0, 1, 1])  # TP 2, FP 1, TN 2, FN 1


def test_matthews_accuracy_f1_against_hand_values() -> None:
    cola = glue_metrics("cola")
    cola.update(PREDS, LABELS)
    # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (4 - 1) / sqrt(3*3*3*3)
    assert float(cola.compute()["matthews_corrcoef"]) == pytest.approx(1 / 3)
    mrpc = glue_metrics("mrpc")
    mrpc.update(PREDS, LABELS)
    values = {k: float(v) for k, v in mrpc.compute().items()}
    assert values == pytest.approx({"accuracy": 4 / 6, "f1": 2 * 2 / (2 * 2 + 1 + 1)})
    # F1 of the positive class 1 (that of class 0 would be 2*3 / (2*3 + 0 + 2) = 3/4)
    skewed = glue_metrics("qqp")
    skewed.update(torch.tensor([1, 1, 1, 0]), torch.tensor([1, 0, 0, 0]))  # TP 1, FP 2, FN 0
    assert float(skewed.compute()["f1"]) == pytest.approx(2 / (2 + 2))


def test_pearson_and_spearman_against_hand_values() -> None:
    stsb = glue_metrics("stsb")
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    y = torch.tensor([2.0, 5.0, 4.0, 9.0])
    stsb.update(x, y)
    values = stsb.compute()
    # deviations x: -1.5 -.5 .5 1.5, y: -3 0 -1 4; sum xy 10, sum x^2 5, sum y^2 26
    assert float(values["pearson"]) == pytest.approx(10 / math.sqrt(5 * 26), abs=1e-6)
    # ranks of y: 1 3 2 4; sum d^2 = 2; 1 - 6*2 / (4*(16-1))
    assert float(values["spearman"]) == pytest.approx(0.8, abs=1e-6)


def test_mnli_accuracy_is_micro_and_predictions_from_logits() -> None:
    metrics = glue_metrics("mnli_mismatched")
    logits = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0]])
    preds = glue_predictions("mnli", logits)
    assert preds.tolist() == [0, 1, 1, 2]
    metrics.update(preds, torch.tensor([0, 1, 1, 1]))
    assert float(metrics.compute()["accuracy"]) == pytest.approx(3 / 4)
    assert glue_predictions("stsb", torch.tensor([[4.5], [0.5]])).tolist() == [4.5, 0.5]
    with pytest.raises(
        ValueError,
        match=r"mnli needs head outputs of shape \(N, 3\) \(entailment, neutral, contradiction\), got \(4, 2\)",
    ):
        glue_predictions("mnli", logits[:, :2])
    with pytest.raises(ValueError, match="unknown GLUE task"):
        glue_metrics("squad")


def _full_results() -> dict[str, dict[str, float]]:
    results = {task: {"accuracy": 0.8} for task in GLUE_SCORE_TASKS}
    results["cola"] = {"matthews_corrcoef": 0.5}
    results["mrpc"] = {"accuracy": 0.8, "f1": 0.9, "loss": 12.0}  # extra metrics are ignored
    results["qqp"] = {"accuracy": 0.9, "f1": 0.7}
    results["stsb"] = {"pearson": 0.86, "spearman": 0.84}
    results["wnli"] = {"accuracy": 0.3}
    return results


def test_glue_score_arithmetic() -> None:
    # cola .5, sst2 .8, mrpc .85, qqp .8, stsb .85, mnli-m .8, mnli-mm .8, qnli .8, rte .8, wnli .3
    expected = (0.5 + 0.8 + 0.85 + 0.8 + 0.85 + 0.8 + 0.8 + 0.8 + 0.8 + 0.3) / 10
    assert glue_score(_full_results()) == pytest.approx(expected)
    partial = {k: v for k, v in _full_results().items() if k != "wnli"}
    with pytest.raises(ValueError, match=r"missing \['wnli'\]"):
        glue_score(partial)
    assert glue_score(partial, require_all_tasks=False) == pytest.approx((expected * 10 - 0.3) / 9)
    bad = _full_results()
    del bad["stsb"]["spearman"]
    with pytest.raises(ValueError, match="stsb result lacks its official metric 'spearman'"):
        glue_score(bad)
    with pytest.raises(ValueError, match=r"unknown GLUE score entries \['mnli'\]"):
        glue_score({**_full_results(), "mnli": {"accuracy": 0.8}})


# ---------------------------------------------------------------- memes, visual entailment
def test_memes_auroc_and_accuracy_by_hand() -> None:
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8])
    labels = torch.tensor([0, 0, 1, 1])
    # positive-negative pairs ranked right: 0.35>0.1, 0.8>0.1, 0.8>0.4 (not 0.35>0.4): 3 / 4
    out = binary_auroc_and_accuracy(scores, labels)
    assert out == pytest.approx({"auroc": 0.75, "accuracy": 0.75})
    logits = torch.logit(scores)  # the same ranking as logits
    assert binary_auroc_and_accuracy(logits, labels) == pytest.approx(out)
    streaming = memes_metrics()
    streaming.update(scores[:2], labels[:2])
    streaming.update(scores[2:], labels[2:])
    assert float(streaming.compute()["auroc"]) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="both classes"):
        binary_auroc_and_accuracy(scores, torch.ones(4))
    with pytest.raises(ValueError, match="no samples"):
        binary_auroc_and_accuracy(torch.zeros(0), torch.zeros(0))


def test_snli_ve_accuracy() -> None:
    metric = snli_ve_metrics()
    metric.update(torch.tensor([0, 1, 2, 2, 0]), torch.tensor([0, 1, 2, 1, 1]))
    assert float(metric.compute()["accuracy"]) == pytest.approx(3 / 5)
