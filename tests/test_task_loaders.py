"""Loaders of the official downstream formats, run on tiny fixture files written in those
formats: GLUE TSVs, VQAv2 JSON, SNLI-VE and Hateful Memes JSONL, Karpathy-split JSON, CIFAR
python pickles and ImageFolder trees."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flava_zoo.data.shapes import ShapesEntailment
from flava_zoo.data.tasks import (
    GLUE_TASKS,
    IGNORE_INDEX,
    SNLI_VE_LABELS,
    Cifar,
    GlueTask,
    HatefulMemes,
    KarpathyRetrieval,
    SnliVE,
    TaskDataError,
    VQAv2,
    build_answer_vocab,
    check_head,
    image_folder,
)
from flava_zoo.evaluation.retrieval import retrieval_recall


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _tsv(*rows: tuple[str, ...]) -> str:
    return "".join("\t".join(row) + "\n" for row in rows)


def _image(path: Path, mode: str = "RGB", size: tuple[int, int] = (8, 6)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = {"RGB": (200, 10, 10), "L": 128, "RGBA": (0, 0, 255, 0)}[mode]
    Image.new(mode, size, colour).save(path)
    return path


# ---------------------------------------------------------------------------------- GLUE
MNLI_COLUMNS = (
    "index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
    "sentence1_parse", "sentence2_parse", "sentence1", "sentence2",
)  # fmt: skip
STSB_COLUMNS = (
    "index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2",
)  # fmt: skip


def _mnli_row(i: int, s1: str, s2: str, *labels: str) -> tuple[str, ...]:
    return (
        str(i),
        "31193",
        f"{i}n",
        "government",
        "( ( x ) )",
        "( y )",
        "(ROOT x)",
        "(ROOT y)",
        s1,
        s2,
        *labels,
    )


def write_glue(root: Path) -> Path:
    """All nine GLUE tasks, two labelled rows per train / dev file and a test file each, laid
    out and headed as the GLUE download script writes them."""
    # CoLA: train / dev without a header (source, label, original label, sentence).
    _write(root / "CoLA/train.tsv", _tsv(
        ("gj04", "1", "", "Our friends won't buy this analysis, let alone the next one we propose."),
        ("gj04", "0", "*", 'He said "that the book.'),
    ))  # fmt: skip
    _write(root / "CoLA/dev.tsv", _tsv(
        ("gj04", "1", "", "The sailors rode the breeze clear of the rocks."),
        ("gj04", "0", "*", "The more we study verbs, the crazier they get get."),
    ))  # fmt: skip
    _write(
        root / "CoLA/test.tsv",
        _tsv(
            ("index", "sentence"), ("0", "Bill whistled past the house."), ("1", "The car honked.")
        ),
    )
    _write(root / "SST-2/train.tsv", _tsv(
        ("sentence", "label"), ("hide new secretions from the parental units ", "0"), ("the greatest musicians ", "1")
    ))  # fmt: skip
    _write(
        root / "SST-2/dev.tsv",
        _tsv(
            ("sentence", "label"),
            ("it 's a charming journey . ", "1"),
            ("unflinchingly bleak ", "0"),
        ),
    )
    _write(
        root / "SST-2/test.tsv",
        _tsv(
            ("index", "sentence"),
            ("0", "uneasy mishmash of styles and genres ."),
            ("1", "a gorgeous film ."),
        ),
    )
    mrpc_header = ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String")
    mrpc_rows = [
        ("1", "702876", "702977", "Amrozi accused his brother .", "Referring to him as only \" the witness \" ."),
        ("0", "2108705", "2108831", "Yucaipa owned Dominick 's .", "Yucaipa bought Dominick 's in 1995 ."),
    ]  # fmt: skip
    for split in ("train", "dev"):  # the official header starts with a byte-order mark
        _write(root / f"MRPC/{split}.tsv", "\ufeff" + _tsv(mrpc_header, *mrpc_rows))
    _write(
        root / "MRPC/test.tsv",
        _tsv(
            ("index", *mrpc_header[1:]),
            ("0", "1089874", "1089925", "PCCW 's chief .", "Current Chief ."),
        ),
    )
    qqp_header = ("id", "qid1", "qid2", "question1", "question2", "is_duplicate")
    qqp_rows = [
        ("133273", "213221", "213222", "How is the life of a math student?", "Which level is enough?", "0"),
        ("402555", "536040", "536041", "How do I control my horny emotions?", "How do you control your horniness?", "1"),
    ]  # fmt: skip
    for split in ("train", "dev"):
        _write(root / f"QQP/{split}.tsv", _tsv(qqp_header, *qqp_rows))
    _write(
        root / "QQP/test.tsv",
        _tsv(
            ("id", "question1", "question2"),
            ("0", "Why do rockets look white?", "Why are rockets white?"),
        ),
    )
    stsb_rows = [
        ("0", "main-captions", "MSRvid", "2012test", "0001", "none", "none", "A plane is taking off.", "An air plane is taking off.", "5.000"),
        ("1", "main-captions", "MSRvid", "2012test", "0004", "none", "none", "A man is playing a flute.", "A man is playing a flute.", "3.800"),
    ]  # fmt: skip
    for split in ("train", "dev"):
        _write(root / f"STS-B/{split}.tsv", _tsv((*STSB_COLUMNS, "score"), *stsb_rows))
    _write(root / "STS-B/test.tsv", _tsv(STSB_COLUMNS, stsb_rows[0][:-1]))
    _write(root / "MNLI/train.tsv", _tsv(
        (*MNLI_COLUMNS, "label1", "gold_label"),
        _mnli_row(0, "Conceptually cream skimming has two basic dimensions.", "Product and geography are what make cream skimming work.", "neutral", "neutral"),
        _mnli_row(1, "you know during the season", "You lose the things.", "entailment", "entailment"),
    ))  # fmt: skip
    for split, genre_word in (("dev_matched", "matched"), ("dev_mismatched", "mismatched")):
        _write(root / f"MNLI/{split}.tsv", _tsv(
            (*MNLI_COLUMNS, "label1", "label2", "label3", "label4", "label5", "gold_label"),
            _mnli_row(0, f"The new rights are nice enough ({genre_word})", "Everyone really likes the newest benefits", *["neutral"] * 5, "neutral"),
            _mnli_row(1, "This site includes a list", "The Government Executive articles", *["contradiction"] * 5, "contradiction"),
        ))  # fmt: skip
    for split in ("test_matched", "test_mismatched"):
        _write(
            root / f"MNLI/{split}.tsv",
            _tsv(MNLI_COLUMNS, _mnli_row(0, "Hierbas, ans seco.", "Hierbas is a name.")),
        )
    for name, labels in (
        ("QNLI", ("not_entailment", "entailment")),
        ("RTE", ("not_entailment", "entailment")),
    ):
        first = ("question", "sentence") if name == "QNLI" else ("sentence1", "sentence2")
        rows = [("0", "When did the third Digimon series begin?", "Unlike the two seasons before it.", labels[0]),
                ("1", "Which missile batteries often have individual launchers?", "When MANPADS is operated.", labels[1])]  # fmt: skip
        for split in ("train", "dev"):
            _write(root / f"{name}/{split}.tsv", _tsv(("index", *first, "label"), *rows))
        _write(
            root / f"{name}/test.tsv",
            _tsv(
                ("index", *first),
                ("0", "What organization is devoted to Jihad?", "For some decades prior."),
            ),
        )
    wnli_rows = [("0", "I stuck a pin through a carrot. It had a hole.", "The carrot had a hole.", "1"),
                 ("1", "John couldn't see the stage with Billy in front of him.", "John is so short.", "0")]  # fmt: skip
    for split in ("train", "dev"):
        _write(
            root / f"WNLI/{split}.tsv",
            _tsv(("index", "sentence1", "sentence2", "label"), *wnli_rows),
        )
    _write(
        root / "WNLI/test.tsv",
        _tsv(
            ("index", "sentence1", "sentence2"),
            ("0", "Maude and Dora had seen the trains.", "Horses ran away."),
        ),
    )
    return root


# Expected (train) labels of each task's two rows.
GLUE_TRAIN_LABELS = {
    "cola": [1, 0], "sst2": [0, 1], "mrpc": [1, 0], "qqp": [0, 1], "stsb": [5.0, 3.8],
    "mnli": [1, 0], "qnli": [1, 0], "rte": [1, 0], "wnli": [1, 0],
}  # fmt: skip


@pytest.fixture(scope="module")
def glue_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_glue(tmp_path_factory.mktemp("glue"))


def test_glue_table_covers_the_nine_tasks() -> None:
    assert sorted(GLUE_TASKS) == sorted(GLUE_TRAIN_LABELS)
    assert GLUE_TASKS["cola"].metrics == ("matthews_corrcoef",)
    assert set(GLUE_TASKS["mrpc"].metrics) == set(GLUE_TASKS["qqp"].metrics) == {"accuracy", "f1"}
    assert (
        GLUE_TASKS["stsb"].metrics == ("pearson", "spearman") and GLUE_TASKS["stsb"].num_labels == 1
    )
    assert GLUE_TASKS["mnli"].num_labels == 3
    assert {"dev_matched", "dev_mismatched", "test_matched", "test_mismatched"} <= set(
        GLUE_TASKS["mnli"].files
    )


@pytest.mark.parametrize("task", sorted(GLUE_TASKS))
def test_glue_train_dev_and_test(glue_root: Path, task: str) -> None:
    spec = GLUE_TASKS[task]
    train = GlueTask(glue_root, task, "train")
    assert len(train) == 2
    assert [train[i]["label"] for i in range(2)] == pytest.approx(GLUE_TRAIN_LABELS[task])
    sample = train[0]
    assert set(sample) == {"text", "text_pair", "label", "index"}
    assert isinstance(sample["text"], str) and sample["text"]
    assert (sample["text_pair"] is None) == (spec.pair_column is None)
    assert isinstance(sample["label"], float if spec.is_regression else int)
    dev_split = "dev_matched" if task == "mnli" else "dev"
    assert (
        len(GlueTask(glue_root / spec.directory, task, dev_split)) == 2
    )  # a task directory works too
    test_split = "test_matched" if task == "mnli" else "test"
    test = GlueTask(
        glue_root / spec.directory / spec.files[test_split], task, test_split
    )  # or the file
    assert len(test) >= 1 and not test.is_labelled
    assert all(test[i]["label"] is None for i in range(len(test)))


def test_glue_official_quirks(glue_root: Path) -> None:
    cola = GlueTask(glue_root, "cola", "train")
    # headerless: the first line is a sample; QUOTE_NONE: a lone quote is text
    assert cola[0]["text"].startswith("Our friends")
    assert cola[1]["text"] == 'He said "that the book.'
    assert GlueTask(glue_root, "cola", "test")[0]["text"] == "Bill whistled past the house."
    mrpc = GlueTask(glue_root, "mrpc", "train")  # header behind a byte-order mark
    assert mrpc[0]["text_pair"] == 'Referring to him as only " the witness " .'
    matched = GlueTask(glue_root, "mnli", "dev_matched")
    mismatched = GlueTask(glue_root, "mnli", "dev_mismatched")
    assert "(matched)" in matched[0]["text"] and "(mismatched)" in mismatched[0]["text"]
    assert [matched[i]["label"] for i in range(2)] == [1, 2]  # neutral, contradiction
    assert GLUE_TASKS["mnli"].label_names == ShapesEntailment.LABELS


def test_glue_errors_name_file_line_and_field(tmp_path: Path, glue_root: Path) -> None:
    with pytest.raises(FileNotFoundError, match="RTE/dev.tsv"):
        GlueTask(tmp_path, "rte", "dev")
    with pytest.raises(ValueError, match="unknown GLUE task 'mnli_m'"):
        GlueTask(glue_root, "mnli_m", "dev")
    with pytest.raises(ValueError, match="not 'dev'"):
        GlueTask(glue_root, "mnli", "dev")
    bad = _write(
        tmp_path / "rte_bad_label.tsv",
        _tsv(
            ("index", "sentence1", "sentence2", "label"),
            ("0", "a", "b", "entailment"),
            ("1", "c", "d", "maybe"),
        ),
    )
    with pytest.raises(
        TaskDataError, match=r"rte_bad_label.tsv, line 3, field 'label': 'maybe' is not one of"
    ):
        GlueTask(bad, "rte", "train")
    short = _write(
        tmp_path / "sst_short.tsv",
        _tsv(("sentence", "label"), ("good film", "1"), ("no label here",)),
    )
    with pytest.raises(
        TaskDataError, match=r"sst_short.tsv, line 3: expected 2 tab-separated fields"
    ):
        GlueTask(short, "sst2", "train")
    no_column = _write(
        tmp_path / "qnli_cols.tsv", _tsv(("index", "question", "label"), ("0", "q", "entailment"))
    )
    with pytest.raises(TaskDataError, match=r"qnli_cols.tsv, line 1: no column 'sentence'"):
        GlueTask(no_column, "qnli", "train")
    unlabelled_dev = _write(
        tmp_path / "wnli_dev.tsv", _tsv(("index", "sentence1", "sentence2"), ("0", "a", "b"))
    )
    with pytest.raises(TaskDataError, match="no column 'label'"):
        GlueTask(unlabelled_dev, "wnli", "dev")
    cola_label = _write(tmp_path / "cola.tsv", _tsv(("gj04", "2", "", "A sentence.")))
    with pytest.raises(
        TaskDataError, match=r"cola.tsv, line 1, field 'label': '2' is not a class index in 0..1"
    ):
        GlueTask(cola_label, "cola", "train")
    sts = _write(
        tmp_path / "sts.tsv",
        _tsv((*STSB_COLUMNS, "score"), ("0", "g", "f", "y", "1", "n", "n", "a", "b", "7.5")),
    )
    with pytest.raises(
        TaskDataError, match=r"line 2, field 'score': '7.5' is not a similarity score"
    ):
        GlueTask(sts, "stsb", "train")
    header_only = _write(tmp_path / "empty.tsv", _tsv(("sentence", "label")))
    with pytest.raises(ValueError, match="has no samples"):
        GlueTask(header_only, "sst2", "dev")
    with pytest.raises(TaskDataError, match="the file is empty"):
        GlueTask(_write(tmp_path / "nothing.tsv", ""), "sst2", "dev")


def test_check_head_reports_label_set_mismatch(glue_root: Path) -> None:
    mnli = GlueTask(glue_root, "mnli", "train")
    check_head(mnli, 3)
    with pytest.raises(
        ValueError,
        match=r"3 labels \(entailment, neutral, contradiction\) but the head has 2 outputs",
    ):
        check_head(mnli, 2)
    check_head(GlueTask(glue_root, "stsb", "train"), 1)


# --------------------------------------------------------------------------------- VQAv2
def _answers(*answers: str) -> list[dict[str, object]]:
    return [
        {"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)
    ]


def write_vqa(root: Path) -> tuple[Path, Path, Path]:
    questions = {
        "info": {"description": "This is v2.0 of the VQA dataset."},
        "task_type": "Open-Ended",
        "data_type": "mscoco",
        "license": {"name": "Creative Commons Attribution 4.0 International License"},
        "data_subtype": "val2014",
        "questions": [
            {"image_id": 42, "question": "What color is the bus?", "question_id": 420},
            {"image_id": 42, "question": "How many dogs?", "question_id": 421},
            {"image_id": 7, "question": "Is it sunny?", "question_id": 70},
        ],
    }
    annotations = {
        "info": questions["info"],
        "license": questions["license"],
        "data_subtype": "val2014",
        "annotations": [
            {"question_type": "what color is the", "multiple_choice_answer": "red", "image_id": 42,
             "answer_type": "other", "question_id": 420,
             "answers": _answers(*["red"] * 6, "Red.", "dark red", "dark red", "maroon")},
            {"question_type": "how many", "multiple_choice_answer": "2", "image_id": 42,
             "answer_type": "number", "question_id": 421,
             "answers": _answers(*["2"] * 4, "two", "two", "3", "3", "3", "2 dogs")},
            {"question_type": "is it", "multiple_choice_answer": "yes", "image_id": 7,
             "answer_type": "yes/no", "question_id": 70, "answers": _answers(*["yes"] * 10)},
        ],
    }  # fmt: skip
    q = _write(root / "v2_OpenEnded_mscoco_val2014_questions.json", json.dumps(questions))
    a = _write(root / "v2_mscoco_val2014_annotations.json", json.dumps(annotations))
    images = root / "val2014"
    _image(images / "COCO_val2014_000000000042.jpg")
    _image(images / "COCO_val2014_000000000007.jpg", "L")
    return q, a, images


def test_vqa_answer_vocab_is_most_frequent_normalised(tmp_path: Path) -> None:
    _, annotations, _ = write_vqa(tmp_path)
    # counts after normalisation: yes 10, red 7 ("Red." -> "red"), 2 6 ("two" -> "2"), 3 3, ...
    vocab = build_answer_vocab(annotations, top_k=4)
    assert vocab == ["yes", "red", "2", "3"]
    assert build_answer_vocab(annotations)[4:] == [
        "dark red",
        "2 dogs",
        "maroon",
    ]  # ties: alphabetical


def test_vqa_samples_and_soft_targets(tmp_path: Path) -> None:
    questions, annotations, images = write_vqa(tmp_path)
    vocab = ["yes", "2", "red", "3", "dark red"]
    with pytest.warns(
        UserWarning,
        match=r"2 of 30 human answers \(6.7%\) are outside the 5-answer vocabulary; 0 of 3",
    ):
        data = VQAv2(questions, annotations, images, answer_vocab=vocab)
    assert len(data) == 3 and data.num_labels == 5 and data.num_oov_answers == 2
    sample = data[0]
    assert set(sample) == {"image", "question", "question_id", "image_id", "answers", "answer", "label",
                           "target", "question_type", "answer_type", "index"}  # fmt: skip
    assert sample["image"].size == (8, 6) and sample["image"].mode == "RGB"
    assert sample["question"] == "What color is the bus?" and sample["question_id"] == 420
    assert sample["answers"][6] == "Red." and len(sample["answers"]) == 10  # raw, for the metric
    assert sample["answer"] == "red" and sample["label"] == 2
    expected = torch.tensor([0.0, 0.0, 1.0, 0.0, 2 / 3])  # red x7 -> 1, dark red x2 -> 2/3
    torch.testing.assert_close(sample["target"], expected)
    count = data[1]  # 2 x4 + two x2 = 6 -> 1; 3 x3 -> 1
    torch.testing.assert_close(count["target"], torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0]))
    assert data[2]["image"].mode == "RGB"  # grayscale JPEG through to_rgb

    with pytest.warns(UserWarning, match="2 of 3 questions"):
        loo = VQAv2(
            questions,
            annotations,
            images,
            answer_vocab=["red", "dark red", "maroon"],
            soft_score="leave_one_out",
        )
    torch.testing.assert_close(loo[0]["target"], torch.tensor([1.0, 0.6, 0.3]))
    assert loo[1]["label"] == IGNORE_INDEX and loo.num_untargeted == 2


def test_vqa_without_annotations_and_with_a_transform(tmp_path: Path) -> None:
    questions, _, images = write_vqa(tmp_path)
    data = VQAv2(
        questions, None, images, ["yes", "2"], transform=lambda im: torch.zeros(3, *im.size[::-1])
    )
    assert data.num_labels == 2
    sample = data[1]
    assert sample["label"] is None and sample["answers"] is None and sample["target"] is None
    assert sample["image"].shape == (3, 6, 8)


def test_vqa_errors(tmp_path: Path) -> None:
    questions, annotations, images = write_vqa(tmp_path)
    broken = json.loads(questions.read_text())
    del broken["questions"][1]["image_id"]
    bad_q = _write(tmp_path / "bad_questions.json", json.dumps(broken))
    with pytest.raises(
        TaskDataError, match=r"bad_questions.json, field 'questions\[1\].image_id': missing"
    ):
        VQAv2(bad_q, None, images)
    bad_ann = json.loads(annotations.read_text())
    bad_ann["annotations"][2]["question_id"] = 999
    bad_a = _write(tmp_path / "bad_annotations.json", json.dumps(bad_ann))
    with pytest.raises(
        TaskDataError, match=r"field 'annotations\[2\].question_id': question_id 999 is not in"
    ):
        VQAv2(questions, bad_a, images)
    syntax = _write(tmp_path / "syntax.json", '{"questions": [\n{"image_id": 1,}\n]}')
    with pytest.raises(TaskDataError, match=r"syntax.json, line 2: not valid JSON"):
        VQAv2(syntax, None, images)
    empty = _write(
        tmp_path / "empty.json", json.dumps({"data_subtype": "val2014", "questions": []})
    )
    with pytest.raises(ValueError, match="has no samples"):
        VQAv2(empty, None, images)
    with pytest.warns(
        UserWarning, match=r"1 answer_vocab entries are not normalised .* 'Red' -> 'red'"
    ):
        VQAv2(questions, None, images, ["red", "Red"])
    with pytest.raises(ValueError, match="repeats answers"):
        VQAv2(questions, None, images, ["red", "red"])
    data = VQAv2(questions, None, tmp_path / "nowhere")
    with pytest.raises(
        FileNotFoundError, match=r"COCO_val2014_000000000042.jpg \(question_id 420 in"
    ):
        data[0]


# ------------------------------------------------------------------------------- SNLI-VE
def _snli_line(flickr_id: str, hypothesis: str, gold: str) -> str:
    return json.dumps({
        "annotator_labels": [gold], "captionID": f"{flickr_id}.jpg#0", "gold_label": gold,
        "pairID": f"{flickr_id}.jpg#0r1e", "sentence1": "A child in a pink dress is climbing up stairs.",
        "sentence1_binary_parse": "( x )", "sentence1_parse": "(ROOT x)",
        "sentence2": hypothesis, "sentence2_binary_parse": "( y )", "sentence2_parse": "(ROOT y)",
        "Flickr30K_ID": flickr_id,
    })  # fmt: skip


def test_snli_ve(tmp_path: Path) -> None:
    images = tmp_path / "flickr30k_images"
    _image(images / "1000092795.jpg", "L")
    lines = [
        _snli_line("1000092795", "A child is climbing.", "entailment"),
        _snli_line("1000092795", "The child is going home.", "neutral"),
        _snli_line("1000092795", "-", "-"),
        _snli_line("1000092795", "A dog sleeps.", "contradiction"),
    ]
    path = _write(tmp_path / "snli_ve_dev.jsonl", "\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match="skipped 1 pairs without a gold label"):
        data = SnliVE(path, images)
    assert len(data) == 3 and data.num_skipped == 1
    assert [data[i]["label"] for i in range(3)] == [0, 1, 2]
    assert SNLI_VE_LABELS == ShapesEntailment.LABELS
    sample = data[2]
    assert sample["text"] == sample["hypothesis"] == "A dog sleeps."
    assert sample["image"].mode == "RGB"

    bad = _write(
        tmp_path / "bad.jsonl",
        lines[0] + "\n" + _snli_line("1000092795", "Maybe.", "unsure") + "\n",
    )
    with pytest.raises(
        TaskDataError, match=r"bad.jsonl, line 2, field 'gold_label': 'unsure' is not one of"
    ):
        SnliVE(bad, images)
    record = json.loads(lines[0])
    del record["sentence2"]
    missing = _write(tmp_path / "missing.jsonl", lines[0] + "\n\n" + json.dumps(record) + "\n")
    with pytest.raises(TaskDataError, match=r"missing.jsonl, line 3, field 'sentence2': missing"):
        SnliVE(missing, images)


# ------------------------------------------------------------------------- Hateful Memes
def test_hateful_memes(tmp_path: Path) -> None:
    _image(tmp_path / "img/42953.png", "RGBA")
    _image(tmp_path / "img/23058.png")
    train = _write(tmp_path / "train.jsonl", "\n".join([
        json.dumps({"id": 42953, "img": "img/42953.png", "label": 0, "text": "its their character not their color that matters"}),
        json.dumps({"id": 23058, "img": "img/23058.png", "label": 1, "text": "don't be afraid to love again"}),
    ]) + "\n")  # fmt: skip
    data = HatefulMemes(train, tmp_path)
    assert len(data) == 2 and data.num_labels == 2
    sample = data[0]
    assert set(sample) == {"image", "text", "label", "id", "index"}
    assert sample["label"] == 0 and sample["id"] == 42953
    assert sample["image"].mode == "RGB" and sample["image"].getpixel((0, 0)) == (
        255,
        255,
        255,
    )  # transparent -> white
    test = _write(
        tmp_path / "test_unseen.jsonl",
        json.dumps({"id": 23058, "img": "img/23058.png", "text": "x"}) + "\n",
    )
    assert HatefulMemes(test, tmp_path)[0]["label"] is None

    mixed = _write(
        tmp_path / "mixed.jsonl",
        train.read_text() + json.dumps({"id": 1, "img": "img/1.png", "text": "x"}) + "\n",
    )
    with pytest.raises(
        TaskDataError, match=r"mixed.jsonl, line 3, field 'label': this line lacks a label"
    ):
        HatefulMemes(mixed, tmp_path)
    bad_label = _write(
        tmp_path / "bad_label.jsonl",
        json.dumps({"id": 1, "img": "img/1.png", "text": "x", "label": 2}) + "\n",
    )
    with pytest.raises(TaskDataError, match=r"line 1, field 'label': 2 is not 0 or 1"):
        HatefulMemes(bad_label, tmp_path)
    not_json = _write(tmp_path / "not_json.jsonl", train.read_text() + "{oops\n")
    with pytest.raises(TaskDataError, match=r"not_json.jsonl, line 3: not valid JSON"):
        HatefulMemes(not_json, tmp_path)
    with pytest.raises(ValueError, match="has no samples"):
        HatefulMemes(_write(tmp_path / "blank.jsonl", "\n"), tmp_path)
    with pytest.raises(FileNotFoundError, match="dev_seen.jsonl does not exist"):
        HatefulMemes(tmp_path / "dev_seen.jsonl", tmp_path)


# --------------------------------------------------------------------- Karpathy retrieval
def _karpathy_image(
    i: int, split: str, n_captions: int = 5, coco: bool = False
) -> dict[str, object]:
    sentences = [
        {"tokens": ["image", str(i), "caption", str(k)], "raw": f"Image {i}, caption {k}.", "imgid": i, "sentid": 5 * i + k}
        for k in range(n_captions)
    ]  # fmt: skip
    entry: dict[str, object] = {
        "sentids": [s["sentid"] for s in sentences],
        "imgid": i,
        "sentences": sentences,
        "split": split,
    }
    if coco:
        entry.update(filepath="val2014", filename=f"COCO_val2014_{i:012d}.jpg", cocoid=i)
    else:
        entry["filename"] = f"{1000 + i}.jpg"
    return entry


def test_karpathy_flickr_five_captions_and_retrieval(tmp_path: Path) -> None:
    entries = [
        _karpathy_image(0, "train"),
        *[_karpathy_image(i, "test") for i in (1, 2, 3)],
        _karpathy_image(4, "val"),
    ]
    path = _write(
        tmp_path / "dataset_flickr30k.json", json.dumps({"images": entries, "dataset": "flickr30k"})
    )
    for i in range(5):
        _image(tmp_path / "flickr30k-images" / f"{1000 + i}.jpg")
    test = KarpathyRetrieval(path, tmp_path / "flickr30k-images", "test")
    assert len(test) == 3 and len(test.texts) == 15
    assert test.text_to_image.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    assert test.texts[5] == "Image 2, caption 0." and test.images[0].name == "1001.jpg"
    assert test[1]["text"] == "Image 2, caption 0." and test[1]["index"] == 1
    pairs = test.pairs()
    assert len(pairs) == 15 and pairs[7]["index"] == 1 and pairs[7]["text"] == "Image 2, caption 2."
    assert pairs[7]["image"].mode == "RGB"

    # Crafted similarity (images x captions); ties broken by a small increasing term.
    sim = torch.arange(15, dtype=torch.float32).repeat(3, 1) * 1e-3
    sim[0, 0:5] += 1.0  # image 0: its own captions first
    sim[1, 5:10] += 0.5  # image 1: a caption of image 0 first, its own next
    sim[1, 0] = 0.9
    sim[2, 10:15] = -1.0  # image 2: its captions last, ranks 11-15
    recall = retrieval_recall(sim, text_to_image=test.text_to_image)
    assert recall["image_to_text_R@1"] == pytest.approx(100 / 3)
    assert recall["image_to_text_R@5"] == pytest.approx(200 / 3)
    assert recall["image_to_text_R@10"] == pytest.approx(200 / 3)
    assert recall["text_to_image_R@1"] == pytest.approx(
        100 * 10 / 15
    )  # image 2's captions rank it last
    assert recall["text_to_image_R@5"] == pytest.approx(100.0)


def test_karpathy_coco_layout_restval_and_extra_captions(tmp_path: Path) -> None:
    entries = [
        _karpathy_image(0, "train", coco=True),
        _karpathy_image(1, "restval", 6, coco=True),
        _karpathy_image(2, "test", coco=True),
    ]
    path = _write(
        tmp_path / "dataset_coco.json", json.dumps({"images": entries, "dataset": "coco"})
    )
    train = KarpathyRetrieval(path, tmp_path, "train")
    assert len(train) == 2 and len(train.texts) == 11  # restval included, all six captions kept
    assert train.images[1] == tmp_path / "val2014" / "COCO_val2014_000000000001.jpg"
    assert len(KarpathyRetrieval(path, tmp_path, "train", include_restval=False)) == 1
    capped = KarpathyRetrieval(path, tmp_path, "train", max_captions_per_image=5)
    assert capped.text_to_image.tolist() == [0] * 5 + [1] * 5
    with pytest.raises(ValueError, match="has no samples"):
        KarpathyRetrieval(path, tmp_path, "val")
    with pytest.raises(FileNotFoundError, match="COCO_val2014_000000000002.jpg"):
        KarpathyRetrieval(path, tmp_path, "test")[0]
    entries[2]["sentences"][1] = {"tokens": []}
    bad = _write(tmp_path / "bad.json", json.dumps({"images": entries}))
    with pytest.raises(TaskDataError, match=r"field 'images\[2\].sentences\[1\].raw': missing"):
        KarpathyRetrieval(bad, tmp_path, "test")


# --------------------------------------------------------------------------------- CIFAR
def _pickle(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))  # as the official (Python 2) files


def _cifar_batch(
    n: int, labels_key: bytes, labels: list[int], offset: int, **extra: list[int]
) -> dict[bytes, object]:
    k = np.arange(3072)
    data = (
        np.tile((k // 1024) * 100 + (k % 1024) % 50, (n, 1)) + offset
    ) % 256  # plane*100 + column
    batch: dict[bytes, object] = {b"batch_label": b"training batch", labels_key: labels,
                                  b"data": data.astype(np.uint8), b"filenames": [b"x.png"] * n}  # fmt: skip
    batch.update({k.encode(): v for k, v in extra.items()})
    return batch


def test_cifar10_python_batches(tmp_path: Path) -> None:
    root = tmp_path / "cifar-10-batches-py"
    names = [
        b"airplane",
        b"automobile",
        b"bird",
        b"cat",
        b"deer",
        b"dog",
        b"frog",
        b"horse",
        b"ship",
        b"truck",
    ]
    _pickle(
        root / "batches.meta", {b"num_cases_per_batch": 2, b"label_names": names, b"num_vis": 3072}
    )
    for i in range(1, 6):
        _pickle(root / f"data_batch_{i}", _cifar_batch(2, b"labels", [i, 9 - i], offset=i))
    _pickle(root / "test_batch", _cifar_batch(3, b"labels", [0, 1, 2], offset=0))
    train = Cifar(tmp_path, train=True)
    assert len(train) == 10 and train.num_labels == 10 and train.label_names[3] == "cat"
    sample = train[2]  # first image of data_batch_2
    assert sample["label"] == 2 and sample["index"] == 2
    pixels = np.asarray(sample["image"])
    assert pixels.shape == (32, 32, 3)
    # channel-major rows: red plane first, then green, then blue
    assert pixels[0, 0].tolist() == [2, 102, 202]
    assert pixels[0, 1, 0] == 3 and pixels[1, 0, 0] == 34
    test = Cifar(
        root, train=False, transform=lambda im: torch.zeros(1)
    )  # the batches directory works too
    assert len(test) == 3 and test[1]["label"] == 1 and test[1]["image"].shape == (1,)
    with pytest.raises(ValueError, match="coarse labels exist only for CIFAR-100"):
        Cifar(tmp_path, coarse=True)
    os.remove(root / "data_batch_4")
    with pytest.raises(FileNotFoundError, match="data_batch_4"):
        Cifar(tmp_path)


def test_cifar100_fine_and_coarse(tmp_path: Path) -> None:
    root = tmp_path / "cifar-100-python"
    fine = [f"fine{i}".encode() for i in range(100)]
    coarse = [f"coarse{i}".encode() for i in range(20)]
    _pickle(root / "meta", {b"fine_label_names": fine, b"coarse_label_names": coarse})
    _pickle(
        root / "train",
        _cifar_batch(4, b"fine_labels", [0, 99, 50, 7], 0, coarse_labels=[4, 19, 0, 3]),
    )
    _pickle(root / "test", _cifar_batch(1, b"fine_labels", [5], 0, coarse_labels=[2]))
    data = Cifar(tmp_path, train=True)
    assert data.variant == "cifar100" and data.num_labels == 100 and data[1]["label"] == 99
    coarse_data = Cifar(tmp_path, train=True, coarse=True)
    assert coarse_data.num_labels == 20 and coarse_data[1]["label"] == 19
    assert coarse_data.label_names[19] == "coarse19"
    _pickle(root / "test", {b"data": np.zeros((1, 3072), np.uint8)})
    with pytest.raises(TaskDataError, match=r"cifar-100-python/test, field 'fine_labels': missing"):
        Cifar(tmp_path, train=False)
    _pickle(root / "test", _cifar_batch(1, b"fine_labels", [100], 0, coarse_labels=[2]))
    with pytest.raises(TaskDataError, match="labels outside 0..99"):
        Cifar(tmp_path, train=False)


class _Exploit:
    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (os.getcwd, ())  # harmless, but a global a CIFAR file never names


def test_cifar_unpickler_refuses_foreign_globals(tmp_path: Path) -> None:
    root = tmp_path / "cifar-10-batches-py"
    _pickle(root / "batches.meta", {b"label_names": [b"a"], b"payload": _Exploit()})
    with pytest.raises(
        TaskDataError,
        match=r"batches.meta: refusing to load global posix.getcwd|refusing to load global nt.getcwd",
    ):
        Cifar(tmp_path)


# --------------------------------------------------------------------------- ImageFolder
def test_image_folder(tmp_path: Path) -> None:
    _image(tmp_path / "train/cat/1.png", "RGBA")
    _image(tmp_path / "train/dog/2.jpg", "L")
    _image(tmp_path / "train/dog/3.jpg")
    data = image_folder(tmp_path / "train")
    assert len(data) == 3 and data.label_names == ["cat", "dog"] and data.num_labels == 2
    sample = data[1]
    assert (
        set(sample) == {"image", "label", "index"}
        and sample["label"] == 1
        and sample["image"].mode == "RGB"
    )
    with pytest.raises(FileNotFoundError, match="image folder directory .*/val does not exist"):
        image_folder(tmp_path / "val")
    (tmp_path / "flat").mkdir()
    _image(tmp_path / "flat/1.png")
    with pytest.raises(ValueError, match="has no samples: it holds no class directories"):
        image_folder(tmp_path / "flat")
    (tmp_path / "train/bird").mkdir()
    (tmp_path / "train/bird/notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"class directories \['bird'\] have no samples"):
        image_folder(tmp_path / "train")
