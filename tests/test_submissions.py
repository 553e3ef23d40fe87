"""Official submission files (VQAv2 results JSON, GLUE server TSVs, Hateful Memes CSV), the
predictions JSONL, and ``flava-zoo evaluate-predictions`` on fixtures in the official formats."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import pytest

from flava_zoo.cli import main
from flava_zoo.data.tasks import GlueTask, HatefulMemes
from flava_zoo.evaluation import submissions as sub
from flava_zoo.evaluation.submissions import Prediction, SubmissionError


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _jsonl(path: Path, records: list[dict]) -> Path:
    return _write(path, "".join(json.dumps(r) + "\n" for r in records))


def _tsv(*rows: tuple[str, ...]) -> str:
    return "".join("\t".join(row) + "\n" for row in rows)


# --------------------------------------------------------------------------------- VQAv2
QUESTION_IDS = [458752000, 458752001, 262148000, 262148002]


def _vqa_questions(tmp_path: Path, subtype: str = "test2015") -> Path:
    questions = [
        {"image_id": qid // 1000, "question": f"What is in picture {i}?", "question_id": qid}
        for i, qid in enumerate(QUESTION_IDS)
    ]
    data = {"info": {"year": 2017, "version": "2.0"}, "task_type": "Open-Ended", "data_type": "mscoco",
            "license": {"name": "CC BY 4.0"}, "data_subtype": subtype, "questions": questions}  # fmt: skip
    return _write(tmp_path / f"v2_OpenEnded_mscoco_{subtype}_questions.json", json.dumps(data))


def _answers(*texts: str) -> list[dict]:
    return [
        {"answer": t, "answer_confidence": "yes", "answer_id": i + 1} for i, t in enumerate(texts)
    ]


def _vqa_annotations(tmp_path: Path) -> Path:
    """Four val questions: ten humans ``red``; three ``yes`` of ten; ten ``red``; two ``2``."""
    anns = [
        (QUESTION_IDS[0], "other", _answers(*["red"] * 10)),
        (QUESTION_IDS[1], "yes/no", _answers(*["yes"] * 3, *["no"] * 7)),
        (QUESTION_IDS[2], "other", _answers(*["red"] * 10)),
        (QUESTION_IDS[3], "number", _answers("2", "2", *["3"] * 8)),
    ]
    data = {"info": {}, "license": {}, "data_subtype": "val2014", "annotations": [
        {"question_type": "what", "multiple_choice_answer": a[0]["answer"], "answers": a,
         "image_id": qid // 1000, "answer_type": kind, "question_id": qid}
        for qid, kind, a in anns
    ]}  # fmt: skip
    return _write(tmp_path / "v2_mscoco_val2014_annotations.json", json.dumps(data))


def test_vqa_results_follow_the_official_format_and_name(tmp_path: Path) -> None:
    questions = _vqa_questions(tmp_path)
    predictions = {qid: f"answer {i}" for i, qid in enumerate(reversed(QUESTION_IDS))}
    path = sub.write_vqa_results(predictions, questions, tmp_path / "out")
    assert path.name == "vqa_OpenEnded_mscoco_test2015_flava-zoo_results.json"
    results = json.loads(path.read_text())
    assert (
        isinstance(results, list) and [set(r) for r in results] == [{"question_id", "answer"}] * 4
    )
    assert [r["question_id"] for r in results] == QUESTION_IDS  # each once, in the file's order
    assert all(isinstance(r["question_id"], int) and isinstance(r["answer"], str) for r in results)
    assert sub.validate_vqa_results(path, questions).ok
    # records from a predictions JSONL work alike; an explicit .json name is kept
    records = [Prediction(qid, "yes", None, {}, i + 1) for i, qid in enumerate(QUESTION_IDS)]
    named = sub.write_vqa_results(records, questions, tmp_path / "mine.json")
    assert named.name == "mine.json" and sub.validate_vqa_results(named, questions).ok
    assert sub.vqa_results_filename(_vqa_questions(tmp_path, "test-dev2015"), "myalg") == (
        "vqa_OpenEnded_mscoco_test-dev2015_myalg_results.json"
    )


def test_vqa_results_refuse_missing_extra_and_repeated_ids(tmp_path: Path) -> None:
    questions = _vqa_questions(tmp_path)
    pairs = [(QUESTION_IDS[0], "a"), (QUESTION_IDS[0], "b"), (QUESTION_IDS[1], "c"), (17, "d")]
    with pytest.raises(SubmissionError) as err:
        sub.write_vqa_results(pairs, questions, tmp_path)
    message = str(err.value)
    assert f"2 of the 4 question ids of {questions} have no entry" in message
    assert f"first: {QUESTION_IDS[2]}, {QUESTION_IDS[3]}" in message
    assert "1 question ids of the predictions are not in" in message and "first: 17" in message
    assert (
        f"1 question ids appear more than once in the predictions (first: {QUESTION_IDS[0]})"
        in message
    )
    assert not list(tmp_path.glob("vqa_*"))
    with pytest.raises(
        SubmissionError, match=r"answer of question 458752000 must be a string, got 3"
    ):
        sub.write_vqa_results({q: 3 for q in QUESTION_IDS}, questions, tmp_path)
    with pytest.raises(ValueError, match="without '_'"):
        sub.write_vqa_results(
            {q: "x" for q in QUESTION_IDS}, questions, tmp_path, alg_name="my_alg"
        )
    path = sub.write_vqa_results({q: "x" for q in QUESTION_IDS}, questions, tmp_path)
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        sub.write_vqa_results({q: "y" for q in QUESTION_IDS}, questions, tmp_path)
    sub.write_vqa_results({q: "y" for q in QUESTION_IDS}, questions, tmp_path, overwrite=True)
    assert json.loads(path.read_text())[0]["answer"] == "y"


def test_vqa_results_validation_names_the_problem(tmp_path: Path) -> None:
    questions = _vqa_questions(tmp_path)
    bad_type = _write(
        tmp_path / "a.json", json.dumps([{"question_id": "458752000", "answer": "x"}])
    )
    with pytest.raises(SubmissionError, match=r"a\.json, field '\[0\]\.question_id': expected int"):
        sub.validate_vqa_results(bad_type, questions)
    not_list = _write(tmp_path / "b.json", json.dumps({"question_id": 1, "answer": "x"}))
    with pytest.raises(SubmissionError, match="must be a JSON list"):
        sub.validate_vqa_results(not_list, questions)
    short = _write(
        tmp_path / "c.json",
        json.dumps([{"question_id": q, "answer": "x"} for q in QUESTION_IDS[:3]]),
    )
    with pytest.raises(
        SubmissionError, match=rf"1 of the 4 question ids .* \(first: {QUESTION_IDS[3]}\)"
    ):
        sub.validate_vqa_results(short, questions)


# ---------------------------------------------------------------------------------- GLUE
MNLI_TEST_COLUMNS = ("index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
                     "sentence1_parse", "sentence2_parse", "sentence1", "sentence2")  # fmt: skip
STSB_TEST_COLUMNS = (
    "index",
    "genre",
    "filename",
    "year",
    "old_index",
    "source1",
    "source2",
    "sentence1",
    "sentence2",
)


def _glue_test_files(root: Path, rows: int = 3) -> Path:
    """Label-less test files of the eleven GLUE submissions, headed as the GLUE download
    script writes them."""
    n = range(rows)
    _write(
        root / "CoLA/test.tsv",
        _tsv(("index", "sentence"), *((str(i), f"Bill whistled {i}.") for i in n)),
    )
    _write(
        root / "SST-2/test.tsv",
        _tsv(("index", "sentence"), *((str(i), f"a gorgeous film {i} .") for i in n)),
    )
    _write(
        root / "MRPC/test.tsv",
        _tsv(
            ("index", "#1 ID", "#2 ID", "#1 String", "#2 String"),
            *((str(i), "1089874", "1089925", f"PCCW {i} .", "Chief .") for i in n),
        ),
    )
    _write(
        root / "QQP/test.tsv",
        _tsv(("id", "question1", "question2"), *((str(i), f"Why {i}?", "Why not?") for i in n)),
    )
    _write(
        root / "STS-B/test.tsv",
        _tsv(
            STSB_TEST_COLUMNS,
            *(
                (
                    str(i),
                    "main-news",
                    "headlines",
                    "2015",
                    "0001",
                    "none",
                    "none",
                    f"A plane {i}.",
                    "A jet.",
                )
                for i in n
            ),
        ),
    )
    for split in ("test_matched", "test_mismatched"):
        _write(
            root / f"MNLI/{split}.tsv",
            _tsv(
                MNLI_TEST_COLUMNS,
                *(
                    (
                        str(i),
                        "31",
                        f"{i}n",
                        "fiction",
                        "( x )",
                        "( y )",
                        "(ROOT x)",
                        "(ROOT y)",
                        f"Hierbas {i}.",
                        "A name.",
                    )
                    for i in n
                ),
            ),
        )
    for name, first in (("QNLI", "question"), ("RTE", "sentence1"), ("WNLI", "sentence1")):
        second = "sentence" if name == "QNLI" else "sentence2"
        _write(
            root / f"{name}/test.tsv",
            _tsv(("index", first, second), *((str(i), f"What {i}?", "Some.") for i in n)),
        )
    _write(
        root / "diagnostic/diagnostic.tsv",
        _tsv(
            ("index", "sentence1", "sentence2"),
            *((str(i), f"The cat sat {i}.", "A cat sat.") for i in n),
        ),
    )
    return root


def test_glue_test_files_read_without_labels(tmp_path: Path) -> None:
    root = _glue_test_files(tmp_path / "glue")
    for name in sub.GLUE_SUBMISSIONS:
        test = sub.read_glue_test(name, root)
        assert len(test) == 3 and not test.is_labelled and test.labels == [None] * 3, name
        assert test.ids == ["0", "1", "2"], name
    ax = GlueTask(root, "mnli", "diagnostic")
    assert ax.path == root / "diagnostic/diagnostic.tsv" and ax[1]["text"] == "The cat sat 1."
    assert ax[1]["text_pair"] == "A cat sat."
    assert GlueTask(root / "QQP/test.tsv", "qqp", "test").ids == [
        "0",
        "1",
        "2",
    ]  # QQP numbers rows in "id"


@pytest.mark.parametrize(
    ("name", "prediction", "expected"),
    [
        ("CoLA", 1, "1"), ("CoLA", "acceptable", "1"), ("SST-2", 0, "0"), ("MRPC", "equivalent", "1"),
        ("QQP", "1", "1"), ("WNLI", "entailment", "1"), ("WNLI", 0, "0"), ("MNLI-m", 1, "neutral"),
        ("MNLI-mm", "contradiction", "contradiction"), ("AX", 0, "entailment"), ("QNLI", 1, "not_entailment"),
        ("RTE", "entailment", "entailment"), ("STS-B", 3.14159, "3.142"), ("STS-B", 0, "0.000"),
        ("rte", 0, "entailment"), ("mnli_mismatched", 2, "contradiction"),
    ],
)  # fmt: skip
def test_glue_server_label_strings(name: str, prediction: object, expected: str) -> None:
    assert sub.glue_server_label(name, prediction) == expected


@pytest.mark.parametrize(
    ("name", "prediction"),
    [
        ("CoLA", 2),
        ("CoLA", "yes"),
        ("RTE", True),
        ("MNLI-m", "not_entailment"),
        ("STS-B", 5.5),
        ("STS-B", "x"),
    ],
)
def test_glue_server_label_refuses_what_the_server_would(name: str, prediction: object) -> None:
    with pytest.raises(ValueError, match=name):
        sub.glue_server_label(name, prediction)


def test_glue_submission_folder_by_the_server_rules(tmp_path: Path) -> None:
    root = _glue_test_files(tmp_path / "glue")
    out = tmp_path / "submission"
    written = []
    for name, spec in sub.GLUE_SUBMISSIONS.items():
        predictions = {
            i: (4.2 if spec.spec.is_regression else i % spec.spec.num_labels) for i in (2, 0, 1)
        }
        with pytest.warns(
            UserWarning, match=rf"3 rows, .* official {name} test set has {spec.test_rows} rows"
        ):
            written.append(sub.write_glue_submission(name, predictions, root, out))
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["CoLA.tsv", "SST-2.tsv", "MRPC.tsv", "STS-B.tsv", "QQP.tsv", "MNLI-m.tsv", "MNLI-mm.tsv",
         "QNLI.tsv", "RTE.tsv", "WNLI.tsv", "AX.tsv"]
    )  # fmt: skip
    assert (
        out / "RTE.tsv"
    ).read_text() == "index\tprediction\n0\tentailment\n1\tnot_entailment\n2\tentailment\n"
    assert (out / "MNLI-m.tsv").read_text().splitlines()[1:] == [
        "0\tentailment",
        "1\tneutral",
        "2\tcontradiction",
    ]
    assert (out / "AX.tsv").read_text().splitlines()[3] == "2\tcontradiction"
    assert (out / "CoLA.tsv").read_text().splitlines()[1:] == ["0\t0", "1\t1", "2\t0"]
    assert (out / "STS-B.tsv").read_text().splitlines()[1:] == ["0\t4.200", "1\t4.200", "2\t4.200"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        checks = sub.validate_glue_submission_dir(out, root)
    assert set(checks) == set(sub.GLUE_SUBMISSIONS) and all(
        c.ok and c.expected == 3 for c in checks.values()
    )
    (out / "WNLI.tsv").unlink()
    with pytest.raises(SubmissionError, match="1 of the 11 GLUE files are missing: WNLI.tsv"):
        sub.validate_glue_submission_dir(out, root)


@pytest.mark.filterwarnings("ignore:.*official .* test set has:UserWarning")
def test_glue_submission_refuses_bad_rows(tmp_path: Path) -> None:
    root = _glue_test_files(tmp_path / "glue")
    with pytest.raises(SubmissionError) as err:
        sub.write_glue_submission("RTE", {0: 0, 1: 1, 7: 1}, root, tmp_path)
    assert "1 of the 3 rows of" in str(err.value) and "(first: '2')" in str(err.value)
    assert "1 rows of the predictions are not in" in str(err.value) and "(first: '7')" in str(
        err.value
    )
    with pytest.raises(
        SubmissionError, match=r"row index 1\): QNLI: 'neutral' is not a class index"
    ):
        sub.write_glue_submission("QNLI", {0: 0, 1: "neutral", 2: 1}, root, tmp_path)
    with pytest.warns(UserWarning, match="clipped 2 similarity scores"):
        path = sub.write_glue_submission("STS-B", {0: -0.5, 1: 2.5, 2: 7.0}, root, tmp_path)
    assert path.read_text().splitlines()[1:] == ["0\t0.000", "1\t2.500", "2\t5.000"]
    with pytest.raises(SubmissionError, match="not a similarity score in"):
        sub.write_glue_submission(
            "STS-B", {0: 1, 1: 2, 2: 9}, root, tmp_path, clip_scores=False, overwrite=True
        )
    bad = _write(
        tmp_path / "x" / "RTE.tsv", "index\tprediction\n0\tentailment\n1\tneutral\n2\tentailment\n"
    )
    with pytest.raises(
        SubmissionError, match=r"RTE\.tsv, line 3, field 'prediction': 'neutral' is not one of"
    ):
        sub.validate_glue_submission(bad, root)
    header = _write(tmp_path / "y" / "RTE.tsv", "id\tlabel\n0\tentailment\n")
    with pytest.raises(SubmissionError, match=r"line 1: the header must be 'index<TAB>prediction'"):
        sub.validate_glue_submission(header, root)
    shuffled = _write(
        tmp_path / "z" / "RTE.tsv",
        "index\tprediction\n1\tentailment\n0\tentailment\n2\tentailment\n",
    )
    with pytest.raises(SubmissionError, match="not in the test file's order: row 1 has index '1'"):
        sub.validate_glue_submission(shuffled, root)


# ------------------------------------------------------------------------- Hateful Memes
MEME_IDS = [42953, 23058, 13894, 37408]


def _memes(tmp_path: Path, labels: list[int] | None = None, name: str = "test_seen.jsonl") -> Path:
    records = []
    for i, meme_id in enumerate(MEME_IDS):
        record = {"id": meme_id, "img": f"img/{meme_id:05d}.png", "text": f"meme text {i}"}
        if labels is not None:
            record["label"] = labels[i]
        records.append(record)
    return _jsonl(tmp_path / name, records)


def _read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="") as f:
        return list(csv.reader(f))


def test_memes_submission_by_the_challenge_rules(tmp_path: Path) -> None:
    test = _memes(tmp_path)
    memes = HatefulMemes(test, tmp_path)
    assert memes.ids == MEME_IDS and not memes.is_labelled and memes.labels == [None] * 4
    records = [
        Prediction(42953, 1, [0.1, 0.9]),  # class probabilities
        Prediction(23058, 0, [2.0, -1.0]),  # logits: softmaxed
        Prediction(13894, "hateful", None, {"proba": 0.55}),
        Prediction(37408, 0.25),  # a bare probability: label by threshold
    ]
    path = sub.write_memes_submission(records, test, tmp_path / "out")
    assert path.name == "test_seen_submission.csv"
    rows = _read_csv(path)
    assert rows[0] == ["id", "proba", "label"]
    assert [int(r[0]) for r in rows[1:]] == MEME_IDS  # every id once, in the file's order
    probas = [float(r[1]) for r in rows[1:]]
    assert all(0.0 <= p <= 1.0 for p in probas) and [r[2] for r in rows[1:]] == ["1", "0", "1", "0"]
    assert probas[0] == pytest.approx(0.9) and probas[1] == pytest.approx(0.0474259, abs=1e-6)
    assert sub.validate_memes_submission(path, test).ok
    # a plain {id: proba} mapping
    other = sub.write_memes_submission({m: 0.6 for m in MEME_IDS}, memes, tmp_path / "plain.csv")
    assert [r[2] for r in _read_csv(other)[1:]] == ["1"] * 4


def test_memes_submission_refuses_bad_predictions(tmp_path: Path) -> None:
    test = _memes(tmp_path)
    with pytest.raises(SubmissionError, match=r"1 of the 4 meme ids .* \(first: 37408\)"):
        sub.write_memes_submission({m: 0.5 for m in MEME_IDS[:3]}, test, tmp_path)
    with pytest.raises(
        SubmissionError, match=r"meme 23058\): proba 1.5 is not a probability in \[0, 1\]"
    ):
        sub.write_memes_submission(
            {m: (1.5 if m == 23058 else 0.5) for m in MEME_IDS}, test, tmp_path
        )
    bad = _write(tmp_path / "bad.csv", "id,proba,label\n42953,0.2,0\n23058,1.2,1\n")
    with pytest.raises(
        SubmissionError, match=r"bad\.csv, line 3, field 'proba': '1.2' is not a probability"
    ):
        sub.validate_memes_submission(bad, test)
    label = _write(tmp_path / "label.csv", "id,proba,label\n42953,0.2,2\n")
    with pytest.raises(SubmissionError, match=r"line 2, field 'label': '2' is not 0 or 1"):
        sub.read_memes_submission(label)
    header = _write(tmp_path / "header.csv", "id,prob,label\n42953,0.2,0\n")
    with pytest.raises(SubmissionError, match="the header must be 'id,proba,label'"):
        sub.read_memes_submission(header)
    repeated = _write(
        tmp_path / "rep.csv",
        "id,proba,label\n" + "".join(f"{m},0.5,1\n" for m in MEME_IDS + [42953]),
    )
    with pytest.raises(
        SubmissionError, match=r"1 meme ids appear more than once .* \(first: 42953\)"
    ):
        sub.validate_memes_submission(repeated, test)


# ------------------------------------------------------------------------ predictions JSONL
def test_read_predictions_and_its_errors(tmp_path: Path) -> None:
    good = _write(
        tmp_path / "p.jsonl",
        '{"id": 1, "prediction": "red", "scores": [0.1, 0.9], "split": "val"}\n\n'
        '{"id": "a", "prediction": 0}\n',
    )
    records = sub.read_predictions(good)
    assert [(r.id, r.prediction, r.scores, r.line) for r in records] == [
        (1, "red", [0.1, 0.9], 1),
        ("a", 0, None, 3),
    ]
    assert records[0].extra == {"split": "val"}
    round_trip = sub.write_predictions(tmp_path / "q.jsonl", records)
    assert [(r.id, r.prediction, r.scores, r.extra) for r in sub.read_predictions(round_trip)] == [
        (r.id, r.prediction, r.scores, r.extra) for r in records
    ]
    for text, message in [
        (
            '{"id": 1, "prediction": 1}\n{"id": 2, "prediction": \n',
            r"p2\.jsonl, line 2: not valid JSON",
        ),
        ('{"prediction": 1}\n', r"line 1, field 'id': missing"),
        ('{"id": 1}\n', r"line 1, field 'prediction': missing"),
        ('{"id": true, "prediction": 1}\n', r"field 'id': expected an int or a non-empty string"),
        (
            '{"id": 1, "prediction": 1, "scores": "high"}\n',
            r"field 'scores': expected a number, a list",
        ),
        ("[1, 2]\n", r"line 1: expected a JSON object, got list"),
        ("\n\n", "holds no predictions"),
    ]:
        with pytest.raises(ValueError, match=message):
            sub.read_predictions(_write(tmp_path / "p2.jsonl", text))


# -------------------------------------------------------------------- evaluate-predictions
def test_evaluate_vqa_predictions_and_results(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    annotations = _vqa_annotations(tmp_path)
    questions = _vqa_questions(tmp_path, "val2014")
    answers = {
        QUESTION_IDS[0]: "red",
        QUESTION_IDS[1]: "yes",
        QUESTION_IDS[2]: "blue",
        QUESTION_IDS[3]: "two",
    }
    preds = _jsonl(
        tmp_path / "preds.jsonl", [{"id": q, "prediction": a} for q, a in answers.items()]
    )
    report_path = tmp_path / "report.json"
    assert main(["evaluate-predictions", str(preds), str(annotations), "--questions", str(questions),
                 "--json", str(report_path)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    # official accuracy per question: 1, 0.9 (3 of 10 humans), 0, 0.6 (2 of 10)
    assert "accuracy" in out and "62.50 %" in out
    report = json.loads(report_path.read_text())
    assert report["metrics"]["accuracy"] == pytest.approx(62.5)
    assert report["metrics"]["accuracy_other"] == pytest.approx(50.0)
    assert report["metrics"]["accuracy_yes/no"] == pytest.approx(90.0)
    assert report["metrics"]["accuracy_number"] == pytest.approx(60.0)
    assert report["unit"] == "percent" and report["num_scored"] == 4
    # the same answers as an official results JSON (written by our writer) score the same
    results = sub.write_vqa_results(answers, questions, tmp_path)
    assert main(["evaluate-predictions", str(results), str(annotations)]) == 0
    assert "62.50 %" in capsys.readouterr().out


def test_evaluate_reports_missing_ids_on_both_sides(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    annotations = _vqa_annotations(tmp_path)
    records = [{"id": QUESTION_IDS[0], "prediction": "red"}, {"id": QUESTION_IDS[1], "prediction": "yes"},
               {"id": 99, "prediction": "cat"}, {"id": 98, "prediction": "dog"}]  # fmt: skip
    preds = _jsonl(tmp_path / "preds.jsonl", records)
    assert main(["evaluate-predictions", str(preds), str(annotations)]) == 1
    captured = capsys.readouterr()
    assert (
        "Traceback" not in captured.err and "not scored: ids missing on either side" in captured.err
    )
    assert (
        f"2 of the 4 question ids of the annotations have no entry in the predictions (first: {QUESTION_IDS[2]}, {QUESTION_IDS[3]})"
        in captured.out
    )
    assert (
        "2 question ids of the predictions are not in the annotations (first: 99, 98)"
        in captured.out
    )
    assert "accuracy" not in captured.out
    assert main(["evaluate-predictions", str(preds), str(annotations), "--allow-missing"]) == 0
    out = capsys.readouterr().out
    assert "scored the 2 of 4 annotated question ids that have a prediction" in out
    assert "95.00 %" in out  # (1 + 0.9) / 2
    repeated = _jsonl(
        tmp_path / "rep.jsonl",
        [{"id": q, "prediction": "red"} for q in QUESTION_IDS + QUESTION_IDS[:1]],
    )
    assert main(["evaluate-predictions", str(repeated), str(annotations), "--allow-missing"]) == 1
    assert "repeated ids" in capsys.readouterr().err


def test_evaluate_memes_glue_and_snli_ve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Hateful Memes: a submission CSV against dev_seen.jsonl
    dev = _memes(tmp_path, labels=[1, 0, 1, 0], name="dev_seen.jsonl")
    csv_path = _write(
        tmp_path / "submission.csv",
        "id,proba,label\n42953,0.9,1\n23058,0.2,0\n13894,0.4,0\n37408,0.6,1\n",
    )
    report = tmp_path / "memes.json"
    assert main(["evaluate-predictions", str(csv_path), str(dev), "--json", str(report)]) == 0
    metrics = json.loads(report.read_text())["metrics"]
    assert metrics["auroc"] == pytest.approx(75.0) and metrics["accuracy"] == pytest.approx(50.0)
    # rows as flava-zoo predict writes them: label names, per-label scores, proba, split
    rows = [(42953, "hateful", 0.9), (23058, "not_hateful", 0.2), (13894, "not_hateful", 0.4)]
    records = [{"id": i, "prediction": p, "scores": {"not_hateful": round(1 - q, 6), "hateful": q}, "proba": q,
                "split": "val"} for i, p, q in rows]  # fmt: skip
    records.append(
        {"id": 37408, "prediction": "hateful", "scores": {"not_hateful": 0.4, "hateful": 0.6}}
    )
    preds = _jsonl(tmp_path / "memes_preds.jsonl", records)
    assert main(["evaluate-predictions", str(preds), str(dev), "--json", str(report)]) == 0
    assert json.loads(report.read_text())["metrics"] == {
        "auroc": pytest.approx(75.0),
        "accuracy": pytest.approx(50.0),
    }
    written = sub.write_memes_submission(
        sub.read_predictions(preds), _memes(tmp_path), tmp_path / "from_preds.csv"
    )
    assert [r[1:] for r in _read_csv(written)[1:]] == [
        ["0.90000000", "1"], ["0.20000000", "0"], ["0.40000000", "0"], ["0.60000000", "1"]
    ]  # fmt: skip
    # the test file has no labels: refused with a clear message
    assert main(["evaluate-predictions", str(csv_path), str(_memes(tmp_path))]) == 1
    assert "has no labels" in capsys.readouterr().err
    # GLUE: an RTE server file against the dev TSV (task from the file name)
    rte_dev = _write(
        tmp_path / "RTE/dev.tsv",
        _tsv(
            ("index", "sentence1", "sentence2", "label"),
            ("0", "a", "b", "entailment"),
            ("1", "c", "d", "not_entailment"),
            ("2", "e", "f", "entailment"),
            ("3", "g", "h", "entailment"),
        ),
    )
    server = _write(
        tmp_path / "sub/RTE.tsv",
        "index\tprediction\n0\tentailment\n1\tentailment\n2\tentailment\n3\tnot_entailment\n",
    )
    assert main(["evaluate-predictions", str(server), str(rte_dev), "--json", str(report)]) == 0
    assert json.loads(report.read_text())["metrics"] == {"accuracy": pytest.approx(50.0)}
    preds = _jsonl(
        tmp_path / "rte.jsonl", [{"id": i, "prediction": p} for i, p in enumerate([0, 1, 0, 0])]
    )
    assert (
        main(
            [
                "evaluate-predictions",
                str(preds),
                str(rte_dev),
                "--glue-task",
                "rte",
                "--json",
                str(report),
            ]
        )
        == 0
    )
    assert json.loads(report.read_text())["metrics"] == {"accuracy": pytest.approx(100.0)}
    # SNLI-VE: predictions keyed by pairID; the "-" pair is not scored
    snli = _jsonl(tmp_path / "snli_ve_dev.jsonl", [
        {"Flickr30K_ID": "1", "sentence2": "A dog runs.", "gold_label": "entailment", "pairID": "1.jpg#0r1e"},
        {"Flickr30K_ID": "1", "sentence2": "A cat runs.", "gold_label": "contradiction", "pairID": "1.jpg#0r1c"},
        {"Flickr30K_ID": "2", "sentence2": "Maybe.", "gold_label": "-", "pairID": "2.jpg#0r1n"},
    ])  # fmt: skip
    ve = _jsonl(tmp_path / "ve.jsonl", [{"id": "1.jpg#0r1e", "prediction": "entailment"},
                                        {"id": "1.jpg#0r1c", "prediction": 1}])  # fmt: skip
    assert main(["evaluate-predictions", str(ve), str(snli), "--json", str(report)]) == 0
    assert json.loads(report.read_text())["metrics"] == {"accuracy": pytest.approx(50.0)}
    assert "1 pairs without a gold label ('-') are not scored" in capsys.readouterr().out


def test_evaluate_bad_usage_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    annotations = _vqa_annotations(tmp_path)
    assert main(["evaluate-predictions", str(tmp_path / "nope.jsonl"), str(annotations)]) == 2
    assert "does not exist" in capsys.readouterr().err
    odd = _write(tmp_path / "preds.txt", "x")
    assert main(["evaluate-predictions", str(odd), str(annotations)]) == 2
    assert "pass --format" in capsys.readouterr().err
    assert main(["evaluate-predictions", str(annotations)]) == 2
    bad = _write(tmp_path / "bad.jsonl", '{"id": 1, "prediction": "x"}\n{"id": 2\n')
    assert main(["evaluate-predictions", str(bad), str(annotations)]) == 1
    err = capsys.readouterr().err
    assert "bad.jsonl, line 2: not valid JSON" in err and "Traceback" not in err
