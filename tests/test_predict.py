"""``flava-zoo predict``: every downstream module writes one prediction row per example
(or per query), and tasks with an official submission format write it too, checked by that
format's rules (VQAv2 results JSON, the GLUE server's TSVs, Hateful Memes CSV)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from flava_zoo.cli import main

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
TINY = [
    "--data.init_args.train_size=16",
    "--data.init_args.val_size=8",
    "--data.init_args.test_size=12",
    "--data.init_args.batch_size=4",
    *QUIET,
]


ONE_THREAD = True
"""One intra-op thread per process for this module's tests (tests/conftest.py)."""


def fit_args(recipe: Path, tmp: Path) -> list[str]:
    return [
        "--config", str(recipe), f"--trainer.default_root_dir={tmp}", "--trainer.max_steps=2",
        "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1", "--trainer.precision=32",
        "--trainer.callbacks.init_args.every_n_train_steps=1",
        f"--trainer.callbacks.init_args.dirpath={tmp / 'checkpoints'}",
    ]  # fmt: skip


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------------- shapes world
def test_finetuned_classifier_predicts_one_row_per_example(tmp_path):
    args = [*fit_args(RECIPES / "finetune" / "shapes_vqa.yaml", tmp_path), *TINY]
    assert main(["fit", *args]) == 0
    assert main(["predict", *args, "--ckpt_path", "last"]) == 0
    out = rows(tmp_path / "predictions.jsonl")
    assert len(out) == 12 and sorted(r["id"] for r in out) == list(range(12))
    for r in out:
        assert r["split"] == "test" and r["prediction"] in r["scores"]
        assert max(r["scores"], key=r["scores"].get) == r["prediction"]
        assert all(0.0 <= p <= 1.0 for p in r["scores"].values())
    assert not (tmp_path / "submission").exists()  # the shapes world has no official format


def test_linear_probe_saves_its_classifier_and_predicts_with_it(tmp_path, capsys):
    args = ["--config", str(RECIPES / "probe" / "shapes_classification.yaml"), *TINY,
            f"--trainer.default_root_dir={tmp_path}"]  # fmt: skip
    assert main(["test", *args]) == 0
    assert (tmp_path / "probe_classifier.safetensors").is_file()
    assert main(["predict", *args]) == 0
    out = rows(tmp_path / "predictions.jsonl")
    assert len(out) == 12
    assert all(abs(sum(r["scores"].values()) - 1.0) < 1e-4 for r in out)


def test_linear_probe_predict_without_a_classifier_names_the_path(tmp_path):
    args = ["--config", str(RECIPES / "probe" / "shapes_classification.yaml"), *TINY,
            f"--trainer.default_root_dir={tmp_path}"]  # fmt: skip
    with pytest.raises(FileNotFoundError, match="probe_classifier.safetensors.*run `flava-zoo test`"):
        main(["predict", *args])


def test_retrieval_predicts_ranked_top_k_per_query(tmp_path):
    args = ["--config", str(RECIPES / "zeroshot" / "shapes_retrieval.yaml"), *TINY,
            f"--trainer.default_root_dir={tmp_path}", "--model.init_args.predict_top_k=3"]  # fmt: skip
    assert main(["predict", *args]) == 0
    out = rows(tmp_path / "predictions.jsonl")
    images = [r for r in out if r["query"] == "image"]
    texts = [r for r in out if r["query"] == "text"]
    assert len(images) == 12 and len(texts) >= 12
    for r in out:
        assert len(r["prediction"]) == 3 and r["scores"] == sorted(r["scores"], reverse=True)
    assert all(isinstance(r["text"], str) for r in texts)


def test_zero_shot_classification_predicts_class_scores(tmp_path):
    args = ["--config", str(RECIPES / "zeroshot" / "shapes_classification.yaml"), *TINY,
            f"--trainer.default_root_dir={tmp_path}"]  # fmt: skip
    assert main(["predict", *args]) == 0
    out = rows(tmp_path / "predictions.jsonl")
    assert len(out) == 12
    names = set(out[0]["scores"])
    assert len(names) > 1 and all(set(r["scores"]) == names and r["prediction"] in names for r in out)


# ------------------------------------------------------------------ official formats
def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 16), (200, 30, 30)).save(path)


def _tokenizer(tmp_path: Path) -> Path:
    from flava_zoo.tokenizer import FlavaTokenizer

    texts = ["the cat sat on the mat", "what color is the bus", "how many dogs", "is it sunny",
             "its their character not their color", "love again"] * 5  # fmt: skip
    return FlavaTokenizer.train(texts, vocab_size=200, max_length=32).save(tmp_path / "tokenizer")


def official(recipe: str, tmp_path: Path, *data: str) -> list[str]:
    return [*fit_args(RECIPES / "finetune" / recipe, tmp_path), *QUIET, "--model.init_args.model=flava-tiny",
            f"--data.init_args.tokenizer={_tokenizer(tmp_path)}", "--data.init_args.image_size=64",
            "--data.init_args.batch_size=2", "--data.init_args.num_workers=0", "--data.init_args.max_length=32",
            *data]  # fmt: skip


def test_glue_predict_writes_the_server_tsv(tmp_path):
    glue = tmp_path / "glue" / "RTE"
    glue.mkdir(parents=True)
    header = "index\tsentence1\tsentence2\tlabel\n"
    pairs = [("the cat sat", "a cat sat", "entailment"), ("dogs fly", "dogs can not fly", "not_entailment")] * 2
    body = "".join(f"{i}\t{a}\t{b}\t{c}\n" for i, (a, b, c) in enumerate(pairs))
    (glue / "train.tsv").write_text(header + body)
    (glue / "dev.tsv").write_text(header + body)
    (glue / "test.tsv").write_text("index\tsentence1\tsentence2\n10\tthe cat\tthe dog\n11\tit rains\tit is dry\n12\ta\tb\n")
    args = official("glue_rte.yaml", tmp_path, f"--data.init_args.train={{root_or_file: {tmp_path / 'glue'}}}")
    assert main(["fit", *args]) == 0
    test = f"--data.init_args.test={{root_or_file: {tmp_path / 'glue'}, split: test}}"
    assert main(["predict", *args, test, "--ckpt_path", "last"]) == 0
    lines = (tmp_path / "submission" / "RTE.tsv").read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 4
    assert [line.split("\t")[0] for line in lines[1:]] == ["10", "11", "12"]  # the file's own index
    assert all(line.split("\t")[1] in ("entailment", "not_entailment") for line in lines[1:])


def test_vqav2_predict_writes_the_results_json(tmp_path):
    root = tmp_path / "vqa"
    questions = [{"image_id": 42, "question": "What color is the bus?", "question_id": 420},
                 {"image_id": 42, "question": "How many dogs?", "question_id": 421},
                 {"image_id": 7, "question": "Is it sunny?", "question_id": 70}]  # fmt: skip
    answers = {420: ["red"] * 10, 421: ["2"] * 10, 70: ["yes"] * 10}
    root.mkdir()
    meta = {"info": {}, "license": {}, "task_type": "Open-Ended", "data_type": "mscoco"}
    (root / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(
        json.dumps({**meta, "data_subtype": "val2014", "questions": questions}))
    (root / "v2_mscoco_val2014_annotations.json").write_text(json.dumps({**meta, "data_subtype": "val2014", "annotations": [
        {"question_id": q["question_id"], "image_id": q["image_id"], "question_type": "what", "answer_type": "other",
         "multiple_choice_answer": answers[q["question_id"]][0],
         "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                     for i, a in enumerate(answers[q["question_id"]])]}
        for q in questions]}))  # fmt: skip
    test_q = [{"image_id": 42, "question": "Is the bus red?", "question_id": 4200},
              {"image_id": 7, "question": "How many clouds?", "question_id": 700}]  # fmt: skip
    (root / "v2_OpenEnded_mscoco_test2015_questions.json").write_text(
        json.dumps({**meta, "data_subtype": "test2015", "questions": test_q}))
    for name in ("val2014/COCO_val2014_000000000042.jpg", "val2014/COCO_val2014_000000000007.jpg",
                 "test2015/COCO_test2015_000000000042.jpg", "test2015/COCO_test2015_000000000007.jpg"):  # fmt: skip
        _image(root / name)
    split = (f"{{questions_json: {root}/v2_OpenEnded_mscoco_val2014_questions.json, "
             f"annotations_json: {root}/v2_mscoco_val2014_annotations.json, image_dir: {root}/val2014}}")  # fmt: skip
    args = official("vqav2.yaml", tmp_path, f"--data.init_args.train={split}", f"--data.init_args.val={split}",
                    f"--data.init_args.test={split}", "--trainer.val_check_interval=1")  # fmt: skip
    assert main(["fit", *args]) == 0
    test = f"--data.init_args.test={{questions_json: {root}/v2_OpenEnded_mscoco_test2015_questions.json, image_dir: {root}/test2015}}"
    assert main(["predict", *args, test, "--ckpt_path", "last"]) == 0
    (results,) = (tmp_path / "submission").glob("*.json")
    assert results.name == "vqa_OpenEnded_mscoco_test2015_flava-zoo_results.json"
    data = json.loads(results.read_text())
    assert sorted(r["question_id"] for r in data) == [700, 4200]
    assert all(set(r) == {"question_id", "answer"} and r["answer"] in ("red", "2", "yes") for r in data)


def test_hateful_memes_predict_writes_the_submission_csv(tmp_path):
    root = tmp_path / "hm"
    for i in (1, 2, 3, 4):
        _image(root / f"img/{i:05d}.png")
    labelled = "".join(json.dumps({"id": i, "img": f"img/{i:05d}.png", "label": i % 2, "text": "love again"}) + "\n"
                       for i in (1, 2, 3, 4))  # fmt: skip
    (root / "train.jsonl").write_text(labelled)
    (root / "dev_seen.jsonl").write_text(labelled)
    (root / "test_unseen.jsonl").write_text("".join(
        json.dumps({"id": i, "img": f"img/{i:05d}.png", "text": "its their character"}) + "\n" for i in (3, 1)))
    spec = lambda name: f"{{jsonl: {root / name}, image_root: {root}}}"  # noqa: E731
    args = official("hateful_memes.yaml", tmp_path, f"--data.init_args.train={spec('train.jsonl')}",
                    f"--data.init_args.val={spec('dev_seen.jsonl')}", f"--data.init_args.test={spec('dev_seen.jsonl')}")
    assert main(["fit", *args]) == 0
    assert main(["predict", *args, f"--data.init_args.test={spec('test_unseen.jsonl')}", "--ckpt_path", "last"]) == 0
    with (tmp_path / "submission" / "test_unseen_submission.csv").open() as f:
        table = list(csv.reader(f))
    assert table[0] == ["id", "proba", "label"] and [r[0] for r in table[1:]] == ["3", "1"]
    for _, proba, label in table[1:]:
        assert 0.0 <= float(proba) <= 1.0 and label == str(int(float(proba) >= 0.5))


def test_linear_probe_refuses_a_classifier_fitted_on_another_backbone(tmp_path):
    args = ["--config", str(RECIPES / "probe" / "shapes_classification.yaml"), *TINY,
            f"--trainer.default_root_dir={tmp_path}"]  # fmt: skip
    assert main(["test", *args]) == 0
    with pytest.raises(ValueError, match="fitted on the features of"):
        main(["predict", *args, "--model.init_args.model_overrides={fusion: co_attention}"])
