"""Downstream tasks: every shapes recipe fits and tests from the command line, the linear
probe's L2 sweep and feature cache, zero-shot classification on a crafted stub, results
records, official-format data, and the errors for bad input."""

from __future__ import annotations

import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from flava_zoo.cli import main
from flava_zoo.evaluation.results import read_results

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")

ROOT = Path(__file__).resolve().parents[1]
FINETUNE = sorted((ROOT / "recipes" / "finetune").glob("shapes_*.yaml"))
EVAL_ONLY = sorted((ROOT / "recipes" / "zeroshot").glob("shapes_*.yaml"))
PROBE = ROOT / "recipes" / "probe" / "shapes_classification.yaml"
TINY = [
    "--data.init_args.train_size=16",
    "--data.init_args.val_size=8",
    "--data.init_args.test_size=12",
    "--data.init_args.batch_size=4",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]
RECORD_FIELDS = {
    "model", "model_source", "task", "split", "metric", "value", "num_samples", "config_hash",
    "package_version", "git_commit", "timestamp", "unit", "hyperparameters", "lineage",
    "interval",
}  # fmt: skip
COUNTED = {"accuracy", "vqa_accuracy"}
"""Metrics that are a share of the samples: in percent, value * num_samples / 100 is a count."""


ONE_THREAD = True
"""One intra-op thread per process for this module's tests (tests/conftest.py)."""


def fit_args(recipe: Path, tmp: Path) -> list[str]:
    return [
        "--config", str(recipe), *TINY, f"--trainer.default_root_dir={tmp}",
        "--trainer.max_steps=1", "--trainer.val_check_interval=1", "--trainer.limit_val_batches=1",
        "--trainer.callbacks.init_args.every_n_train_steps=1",
        f"--trainer.callbacks.init_args.dirpath={tmp / 'checkpoints'}",
    ]  # fmt: skip


def check_records(path: Path, task: str, metrics: set[str], split: str = "test") -> list:
    records = [r for r in read_results(path) if r.task == task and r.split == split]
    assert {r.metric for r in records} == metrics
    assert len(records) == len(metrics)  # one line per metric
    for r in records:
        assert set(vars(r)) == RECORD_FIELDS
        assert r.num_samples > 0 and np.isfinite(r.value) and len(r.config_hash) == 12
        assert r.unit == "%" and 0.0 <= r.value <= 100.0, (r.metric, r.value)
        if r.metric.removeprefix("itm_rerank_") in COUNTED:  # percent, not a fraction
            count = r.value * r.num_samples / 100
            assert count == pytest.approx(round(count), abs=1e-4), (r.metric, r.value)
    return records


# ------------------------------------------------------------------------------ recipes
EXPECTED = {
    "shapes_vqa": ("shapes/vqa", {"vqa_accuracy"}),
    "shapes_visual_entailment": ("shapes/visual_entailment", {"accuracy"}),
    "shapes_memes": ("shapes/memes", {"auroc", "accuracy"}),
    "shapes_caption_entailment": ("shapes/text_classification", {"accuracy"}),
    "shapes_classification": ("shapes/image_classification", {"accuracy", "mean_per_class_accuracy"}),
    "shapes_retrieval": (  # the recipe re-ranks by ITM: both rankings are recorded
        "shapes/retrieval",
        {f"{p}{d}_R@{k}" for p in ("", "itm_rerank_") for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)},
    ),
}


@pytest.mark.parametrize("recipe", FINETUNE, ids=lambda p: p.stem)
def test_shapes_finetune_recipe_fits_then_tests(recipe, tmp_path, monkeypatch):
    from flava_zoo.downstream.base import DownstreamModule

    logged = {}
    real_log_dict = DownstreamModule.log_dict
    monkeypatch.setattr(DownstreamModule, "log_dict", lambda self, values, *a, **k: logged.update(
        {name: float(v) for name, v in values.items()}) or real_log_dict(self, values, *a, **k))  # fmt: skip
    args = fit_args(recipe, tmp_path)
    main(["fit", *args])
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    main(["test", *args, "--ckpt_path", "last"])
    task, metrics = EXPECTED[recipe.stem]
    (record, *_) = check_records(tmp_path / "results.jsonl", task, metrics)
    assert "fine-tuned" in record.model_source and record.model == "flava-tiny"
    for r in read_results(tmp_path / "results.jsonl"):
        reranked = r.metric.startswith("itm_rerank_")
        assert r.hyperparameters == ({"itm_rerank_k": 8} if reranked else {}), r.metric
        assert logged[f"test/{r.metric}"] == pytest.approx(r.value)  # logged as recorded: in percent
    val = [v for name, v in logged.items() if name.startswith("val/") and name != "val/loss"]
    assert val and all(0.0 <= v <= 100.0 for v in val)


def test_memes_head_starts_from_an_exported_itm_head(tmp_path):
    """itm_head_from copies a pretraining export's ITM head into the memes head, which then
    gives the ITM head's logits; a task that is not a two-class multimodal one refuses it."""
    from flava_zoo.downstream import FinetuneModule
    from flava_zoo.training import FlavaPretrainModule

    torch.manual_seed(0)
    pretrain = FlavaPretrainModule(model="flava-tiny", stage="multimodal")
    with torch.no_grad():
        pretrain.objective.itm_head.classifier.bias.copy_(torch.tensor([0.5, -1.5]))
    folder = pretrain.export(tmp_path / "export")
    module = FinetuneModule(model=str(folder), itm_head_from=str(folder), inputs="multimodal", num_classes=2)
    assert torch.equal(module.head.classifier.bias, torch.tensor([0.5, -1.5]))
    module.eval()
    cls = torch.randn(3, module.feature_dim("multimodal"))
    torch.testing.assert_close(module.head(cls), pretrain.objective.itm_head(cls))

    recipe = ROOT / "recipes" / "finetune" / "shapes_memes.yaml"
    main(["fit", *fit_args(recipe, tmp_path), f"--model.init_args.model={folder}",
          f"--model.init_args.itm_head_from={folder}"])  # fmt: skip
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    with pytest.raises(ValueError, match="two-class head on multimodal inputs"):
        FinetuneModule(model=str(folder), itm_head_from=str(folder), inputs="multimodal", num_classes=3)
    with pytest.raises(FileNotFoundError, match="holds no pretraining heads"):
        FinetuneModule(model="flava-tiny", itm_head_from=str(tmp_path), inputs="multimodal", num_classes=2)


def test_every_shapes_task_has_a_finetune_recipe():
    assert {p.stem for p in FINETUNE} == set(EXPECTED)


@pytest.mark.parametrize("recipe", EVAL_ONLY, ids=lambda p: p.stem)
def test_shapes_zeroshot_recipe_tests_with_itm_reranking(recipe, tmp_path):
    from flava_zoo.models.heads import ITMHead

    torch.manual_seed(0)
    head = {f"objective.itm_head.{k}": v for k, v in ITMHead(128).state_dict().items()}
    torch.save({"state_dict": head}, tmp_path / "pretrain.ckpt")  # a pretraining checkpoint's ITM head
    results = tmp_path / "scores.jsonl"
    main(["test", "--config", str(recipe), *TINY, f"--trainer.default_root_dir={tmp_path}",
          f"--model.init_args.results={results}", "--model.init_args.itm_rerank_k=3",
          f"--model.init_args.itm_head_from={tmp_path / 'pretrain.ckpt'}"])  # fmt: skip
    assert results.is_file() and not (tmp_path / "results.jsonl").exists()
    task = "shapes/retrieval" if "retrieval" in recipe.stem else "shapes/image_classification"
    records = read_results(results)
    assert records and all(r.task == task and r.model_source == "random init (flava-tiny)" for r in records)
    if "retrieval" in recipe.stem:
        plain = {f"{d}_R@{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)}
    else:
        plain = {"accuracy", "mean_per_class_accuracy"}
    # the embedding ranking keeps the plain names; the ITM re-ranked results have their own
    check_records(results, task, plain | {f"itm_rerank_{m}" for m in plain})
    for r in records:
        reranked = r.metric.startswith("itm_rerank_")
        assert r.hyperparameters == ({"itm_rerank_k": 3} if reranked else {}), r.metric


def test_linear_probe_recipe_caches_features(tmp_path, monkeypatch):
    """The shipped probe recipe runs; a second run reads every split's features from the cache."""
    from flava_zoo.downstream import LinearProbe

    calls = []
    real = LinearProbe.extract
    monkeypatch.setattr(LinearProbe, "extract", lambda self, batch: calls.append(1) or real(self, batch))
    logged = {}
    real_log = LinearProbe.log
    monkeypatch.setattr(LinearProbe, "log", lambda self, name, value, *a, **k: logged.update({name: float(value)})
                        or real_log(self, name, value, *a, **k))  # fmt: skip
    args = ["test", "--config", str(PROBE), *TINY, f"--trainer.default_root_dir={tmp_path}",
            "--model.init_args.max_iter=30", "--model.init_args.l2_grid=[0.01]", "--model.init_args.refine_steps=0"]  # fmt: skip
    main(args)
    assert len(calls) == 4 + 2 + 3  # train 16, val 8, test 12 samples in batches of 4
    assert len(list((tmp_path / "feature_cache").glob("*.pt"))) == 3
    main(args)
    assert len(calls) == 9  # the second run reads every split from the cache
    records = read_results(tmp_path / "results.jsonl")
    assert [r.metric for r in records] == ["accuracy", "mean_per_class_accuracy"] * 2
    assert all(set(vars(r)) == RECORD_FIELDS and r.num_samples == 12 for r in records)
    assert records[0].value == records[2].value and records[0].config_hash == records[2].config_hash
    for r in records:
        assert r.unit == "%" and 0.0 <= r.value <= 100.0
        # the chosen L2 strength is a selected hyperparameter, not a metric
        assert r.hyperparameters == {"l2": 0.01}
    assert set(logged) == {"test/accuracy", "test/mean_per_class_accuracy"}  # no test/l2
    assert logged["test/accuracy"] == pytest.approx(records[-2].value)  # logged in percent too


# -------------------------------------------------------------------------- linear probe
def test_feature_pooling_cls_mean_and_embedding():
    """``mean`` leaves text padding out, ``embedding`` is the tower's contrastive embedding."""
    from flava_zoo.downstream import LinearProbe

    probe = LinearProbe(model="flava-tiny", pooling="mean")
    ids = torch.randint(5, 1000, (2, 7))
    am = torch.ones_like(ids)
    am[0, 4:] = 0
    batch = {"pixel_values": torch.randn(2, 3, 64, 64), "input_ids": ids, "attention_mask": am}
    with torch.no_grad():
        text = probe.model.encode_text(ids, am)
        mean = probe.encode(batch, "text", "mean")
        torch.testing.assert_close(mean[0], text.last_hidden_state[0, :4].mean(0))
        torch.testing.assert_close(mean[1], text.last_hidden_state[1].mean(0))
        torch.testing.assert_close(probe.encode(batch, "text", "cls"), text.last_hidden_state[:, 0])
        torch.testing.assert_close(probe.encode(batch, "image", "embedding"),
                                   probe.model.encode_image(batch["pixel_values"]).embedding)
        fused = probe.encode(batch, "multimodal", "mean")
        assert fused.shape == (2, probe.model.config.multimodal.hidden_size)
    with pytest.raises(ValueError, match="no contrastive embedding"):
        probe.encode(batch, "multimodal", "embedding")
    with pytest.raises(ValueError, match="pooling must be one of"):
        LinearProbe(model="flava-tiny", pooling="max")


def test_l2_sweep_chooses_on_validation_and_separates_separable_features():
    from flava_zoo.downstream.linear_probe import run_probe

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=g) * 4

    def split(n):
        y = torch.arange(n) % 4
        return centres[y] + torch.randn(n, 16, generator=g), y

    result = run_probe(split(200), split(80), split(120), num_classes=4, grid=[1e-4, 1e-2, 1.0], refine_steps=2)
    assert result.metrics["accuracy"] > 0.99 and result.metrics["mean_per_class_accuracy"] > 0.99
    assert len(result.val_accuracy) == 3 + 2 * 2  # the grid, then two refinement rounds
    best = max(result.val_accuracy.values())
    assert result.val_accuracy[result.l2] == best
    assert result.l2 == max(l2 for l2, acc in result.val_accuracy.items() if acc == best)  # ties: stronger L2


def test_l2_sweep_follows_the_validation_split():
    """Train labels are pure noise apart from one informative feature; a validation set where
    only strong regularisation generalises makes the sweep pick it."""
    from flava_zoo.downstream.linear_probe import sweep_l2

    g = torch.Generator().manual_seed(1)
    x = torch.randn(60, 40, generator=g)
    y = (x[:, 0] > 0).long()
    flip = torch.rand(60, generator=g) < 0.2
    y_noisy = torch.where(flip, 1 - y, y)
    xv = torch.randn(400, 40, generator=g)
    yv = (xv[:, 0] > 0).long()
    l2, scores = sweep_l2((x, y_noisy), (xv, yv), 2, grid=[1e-6, 1e-1], refine_steps=0)
    assert scores[1e-1] > scores[1e-6] and l2 == 1e-1


# ---------------------------------------------------------------------------- zero-shot
class _StubTokenizer:
    """Each text becomes the ids of its words in a fixed vocabulary."""

    words = ["a", "photo", "of", "cat", "dog", "bird"]

    def __call__(self, texts):
        ids = [[self.words.index(w) for w in t.split()] for t in texts]
        width = max(map(len, ids))
        out = torch.zeros(len(ids), width, dtype=torch.long)
        for i, row in enumerate(ids):
            out[i, : len(row)] = torch.tensor(row)
        return {"input_ids": out, "attention_mask": (out >= 0).long()}


class _StubModel:
    """Text embedding = normalised bag of words over the class words; no learning involved."""

    def encode_text(self, ids, attention_mask=None, token_type_ids=None):
        emb = torch.zeros(ids.shape[0], 3)
        for c in range(3):
            emb[:, c] = (ids == 3 + c).float().sum(1)
        return SimpleNamespace(embedding=torch.nn.functional.normalize(emb + 1e-3, dim=-1))


def test_zero_shot_classification_on_a_crafted_stub():
    from flava_zoo.downstream.zero_shot import class_embeddings, itm_rerank, zero_shot_logits

    templates = ["a {}", "a photo of a {}"]
    classes = class_embeddings(_StubModel(), _StubTokenizer(), ["cat", "dog", "bird"],
                               lambda name: [t.format(name) for t in templates])  # fmt: skip
    assert classes.shape == (3, 3) and torch.allclose(classes.norm(dim=1), torch.ones(3))
    images = torch.tensor([[0.0, 0.1, 1.0], [1.0, 0.2, 0.0], [0.1, 1.0, 0.3]])
    logits = zero_shot_logits(images, classes)
    assert logits.argmax(1).tolist() == [2, 0, 1]
    # ITM re-ranking of the top 2: a match score that prefers the runner-up flips the order
    reranked = itm_rerank(logits, 2, lambda rows, cols: (cols == logits.topk(2).indices[rows, 1]).float() * 10)
    assert reranked.argmax(1).tolist() == logits.topk(2).indices[:, 1].tolist()
    assert (reranked.topk(2).indices.sort(1).values == logits.topk(2).indices.sort(1).values).all()


# ------------------------------------------------------------------------- bad input
def test_label_set_that_does_not_match_the_head_is_an_error(tmp_path):
    recipe = ROOT / "recipes" / "finetune" / "shapes_vqa.yaml"
    with pytest.raises(ValueError, match=r"shapes/vqa has 21 labels \(no, yes, red.*but the head has 3 outputs"):
        main(["fit", *fit_args(recipe, tmp_path), "--model.init_args.num_classes=3"])


def test_empty_split_is_an_error(tmp_path):
    recipe = ROOT / "recipes" / "finetune" / "shapes_memes.yaml"
    with pytest.raises(ValueError, match="shapes/memes test split has no samples"):
        main(["test", *fit_args(recipe, tmp_path), "--data.init_args.test_size=0"])


def test_tokenizer_larger_than_the_model_vocabulary_is_an_error(tmp_path):
    recipe = ROOT / "recipes" / "finetune" / "shapes_memes.yaml"
    with pytest.raises(ValueError, match="has 25[0-9] tokens but the model's text embedding has vocab_size 100"):
        main(["fit", *fit_args(recipe, tmp_path), "--model.init_args.model_overrides={text__vocab_size: 100}"])


def test_unlabelled_split_and_unknown_fields_are_errors(tmp_path):
    from flava_zoo.downstream import TaskData

    glue = _write_glue(tmp_path)
    dm = TaskData(task="text_classification", source="glue", glue_task="rte",
                  train={"root_or_file": str(glue)}, test={"split": "test"}, tokenizer=str(_tokenizer_dir(tmp_path)))  # fmt: skip
    batch = next(iter(dm.loader(dm.dataset("val"), "val")))
    assert batch["input_ids"].shape[0] == 3 and batch["token_type_ids"].max() == 1  # sentence pairs
    with pytest.raises(ValueError, match="has no label"):
        next(iter(dm.test_dataloader()))
    bad = TaskData(task="memes", source="hateful_memes", train={"jsonl": "x.jsonl", "image_folder": "img"})
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['image_folder'\] for HatefulMemes"):
        bad.dataset("train")
    with pytest.raises(ValueError, match="does not feed vqa"):
        TaskData(task="vqa", source="snli_ve")


# ------------------------------------------------------------------- official formats
def _tokenizer_dir(tmp_path: Path) -> Path:
    from flava_zoo.tokenizer import FlavaTokenizer

    folder = tmp_path / "tokenizer"
    if not folder.is_dir():
        texts = ["the cat sat on the mat", "a dog is not a cat", "birds can fly", "it rains today"] * 5
        FlavaTokenizer.train(texts, vocab_size=200).save(folder)
    return folder


def _write_glue(tmp_path: Path) -> Path:
    root = tmp_path / "glue"
    rows = [("the cat sat", "a cat sat", "entailment"), ("dogs fly", "dogs can not fly", "not_entailment"),
            ("it rains", "it is dry", "not_entailment"), ("birds fly", "birds can fly", "entailment")]  # fmt: skip
    (root / "RTE").mkdir(parents=True)
    header = "index\tsentence1\tsentence2\tlabel\n"
    (root / "RTE" / "train.tsv").write_text(header + "".join(f"{i}\t{a}\t{b}\t{c}\n" for i, (a, b, c) in enumerate(rows)))
    (root / "RTE" / "dev.tsv").write_text(header + "".join(f"{i}\t{a}\t{b}\t{c}\n" for i, (a, b, c) in enumerate(rows[:3])))
    (root / "RTE" / "test.tsv").write_text("index\tsentence1\tsentence2\n0\tthe cat\tthe dog\n")
    mnli = root / "MNLI"
    mnli.mkdir()
    cols = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2"
    labels = ("entailment", "neutral", "contradiction")

    def mnli_file(name, n, extra_cols):
        lines = [cols + extra_cols + "\tgold_label"]
        for i in range(n):
            a, b, _ = rows[i % 4]
            gold = labels[i % 3]
            extra = "\t" + gold if extra_cols else ""
            lines.append(f"{i}\t0\t0\tfiction\t-\t-\t-\t-\t{a}\t{b}\t{gold}{extra}")
        (mnli / name).write_text("\n".join(lines) + "\n")

    mnli_file("train.tsv", 8, "\tlabel1")
    mnli_file("dev_matched.tsv", 5, "\tlabel1")
    mnli_file("dev_mismatched.tsv", 4, "\tlabel1")
    return root


def test_glue_mnli_fine_tunes_and_records_both_dev_sets(tmp_path):
    glue = _write_glue(tmp_path)
    results = tmp_path / "glue.jsonl"
    args = [
        "--model=flava_zoo.downstream.FinetuneModule", "--model.init_args.layer_decay=0.7",
        f"--model.init_args.results={results}",
        "--data=flava_zoo.downstream.TaskData", "--data.init_args.task=text_classification",
        "--data.init_args.source=glue", "--data.init_args.glue_task=mnli",
        f"--data.init_args.train={{root_or_file: {glue}}}", f"--data.init_args.tokenizer={_tokenizer_dir(tmp_path)}",
        "--data.init_args.batch_size=4", "--trainer.max_steps=2", "--trainer.logger=false",
        "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", f"--trainer.default_root_dir={tmp_path}",
    ]  # fmt: skip
    main(["fit", *args])
    main(["test", *args])
    recs = read_results(results)
    assert {(r.split, r.metric, r.num_samples) for r in recs} == {("dev_matched", "accuracy", 5), ("dev_mismatched", "accuracy", 4)}
    from flava_zoo.downstream.cli import glue_scores

    scores = glue_scores(recs)
    assert set(scores) == {"mnli_matched", "mnli_mismatched"}


def _write_cifar10(root: Path) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def batch(n, seed):
        labels = [i % 10 for i in range(n)]
        data = np.zeros((n, 3, 32, 32), np.uint8)
        for i, y in enumerate(labels):  # class y: a bright band at row 3 * y
            data[i, :, 3 * y : 3 * y + 3] = 250
        data = (data + rng.integers(0, 20, data.shape)).clip(0, 255).astype(np.uint8)
        return {b"data": data.reshape(n, -1), b"labels": labels}

    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch(10, i), f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch(10, 9), f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    return root


def test_cifar10_probe_holds_out_validation_from_train(tmp_path):
    root = _write_cifar10(tmp_path / "cifar")
    results = tmp_path / "probe.jsonl"
    main([
        "test", "--model=flava_zoo.downstream.LinearProbe", "--model.init_args.max_iter=50",
        "--model.init_args.l2_grid=[0.01,1.0]", f"--model.init_args.results={results}",
        "--data=flava_zoo.downstream.TaskData", "--data.init_args.task=image_classification",
        "--data.init_args.source=cifar10", f"--data.init_args.train={{root: {root}}}",
        f"--data.init_args.test={{root: {root}}}", "--data.init_args.val_from_train=0.2",
        "--data.init_args.batch_size=25", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}",
    ])  # fmt: skip
    recs = read_results(results)
    assert {r.metric for r in recs} == {"accuracy"}  # CIFAR reports top-1 only
    assert recs[0].task == "cifar10" and recs[0].num_samples == 10


def test_layer_decay_multipliers_rise_with_depth():
    from flava_zoo import create_model
    from flava_zoo.downstream import layer_decay_multipliers

    model = create_model("flava-tiny")
    m = layer_decay_multipliers(model, 0.5, "multimodal")
    assert m["model.image_encoder"] == pytest.approx(0.5**8)  # 4 tower + 1 + 2 fusion layers + head
    assert m["model.image_encoder.encoder.blocks.3"] == pytest.approx(0.5**4)
    assert m["model.fusion_encoder.layers.encoder.blocks.1"] == pytest.approx(0.5**1)
    text = layer_decay_multipliers(model, 0.5, "text")
    assert text["model.text_encoder.encoder.blocks.3"] == pytest.approx(0.5) and "model.fusion_encoder" not in text


# -------------------------------------------------------------------- names and units
def test_test_split_names_say_what_was_evaluated():
    from flava_zoo.downstream import TaskData

    coco = {"image_dir": "data/coco/val2014"}
    vqa = TaskData(task="vqa", source="vqav2", test={
        "questions_json": "data/vqav2/v2_OpenEnded_mscoco_val2014_questions.json",
        "annotations_json": "data/vqav2/v2_mscoco_val2014_annotations.json", **coco})  # fmt: skip
    assert vqa.test_split_names == ["val2014"]  # not "test": the val2014 annotations were evaluated
    dev = TaskData(task="vqa", source="vqav2", test={
        "questions_json": "v2_OpenEnded_mscoco_test-dev2015_questions.json", "annotations_json": None, **coco})  # fmt: skip
    assert dev.test_split_names == ["test-dev2015"]
    memes = TaskData(task="memes", source="hateful_memes", test={"jsonl": "hm/dev_seen.jsonl", "image_root": "hm"})
    assert memes.test_split_names == ["dev_seen"]
    ve = TaskData(task="visual_entailment", source="snli_ve", test={"jsonl": "snli_ve_test.jsonl", "image_dir": "i"})
    assert ve.test_split_names == ["test"]
    assert TaskData(task="image_classification", source="cifar10", test={"root": "c"}).test_split_names == ["test"]
    imagenet = TaskData(task="image_classification", source="image_folder", test={"root": "data/imagenet/val"})
    assert imagenet.test_split_names == ["val_as_test"]  # "val" names the validation split
    named = TaskData(task="retrieval", source="karpathy", test={"json_path": "k.json", "image_root": "i", "split": "test"})
    assert named.test_split_names == ["test"]
    listed = TaskData(task="memes", source="hateful_memes", test=[
        {"jsonl": "dev_seen.jsonl", "image_root": "hm"}, {"jsonl": "dev_unseen.jsonl", "image_root": "hm"},
        {"jsonl": "dev_seen.jsonl", "image_root": "hm", "name": "seen_again"}, {"jsonl": "dev_seen.jsonl", "image_root": "hm"}])  # fmt: skip
    assert listed.test_split_names == ["dev_seen", "dev_unseen", "seen_again", "dev_seen_1"]
    glue = TaskData(task="text_classification", source="glue", glue_task="mnli")
    assert glue.test_split_names == ["dev_matched", "dev_mismatched"]
    assert TaskData(task="memes").test_split_names == ["test"]  # shapes keeps its own names
    assert TaskData(task="memes", test_split="test_novel").test_split_names == ["test_novel"]


def _glue_records(path: Path, tasks: dict[str, dict[str, float]], unit: bool = True) -> None:
    import json

    from flava_zoo.evaluation.results import append_results, make_records

    for entry, metrics in tasks.items():
        task, split = entry, "dev"
        if entry.startswith("mnli"):
            task, split = "mnli", "dev_" + entry.removeprefix("mnli_")
        append_results(path, make_records(metrics, model="m", model_source="s", task=f"glue/{task}",
                                          split=split, num_samples=10, repo=path.parent))  # fmt: skip
    if not unit:  # as written before records stated a unit: fractions
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        for line in lines:
            del line["unit"], line["hyperparameters"], line["lineage"]
            line["value"] /= 100
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def _all_glue(value: float = 80.0) -> dict[str, dict[str, float]]:
    from flava_zoo.evaluation.metrics import GLUE_SCORE_TASKS

    out = {t: {"accuracy": value} for t in GLUE_SCORE_TASKS}
    out["cola"] = {"matthews_corrcoef": 50.0}
    out["mrpc"] = {"accuracy": 80.0, "f1": 90.0}
    out["qqp"] = {"accuracy": 90.0, "f1": 70.0}
    out["stsb"] = {"pearson": 86.0, "spearman": 84.0}
    return out


def test_glue_score_with_missing_tasks_names_them_and_exits_1(tmp_path, capsys):
    results = tmp_path / "glue.jsonl"
    _glue_records(results, {k: v for k, v in _all_glue().items() if k in ("cola", "sst2", "mnli_matched")})
    assert main(["glue-score", "--results", str(results)]) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert "7 of 10 tasks have no records" in err
    for missing in ("mrpc", "qqp", "stsb", "mnli_mismatched", "qnli", "rte", "wnli"):
        assert missing in err
    assert "matthews_corrcoef 50.00" in out and "GLUE score" not in out
    assert main(["glue-score", "--results", str(results), "--partial"]) == 0
    assert "GLUE score 70.00 % (partial: 3 of 10 tasks)" in capsys.readouterr().out  # (50 + 80 + 80) / 3
    assert main(["glue-score", "--results", str(tmp_path / "none.jsonl")]) == 1
    out, err = capsys.readouterr()
    assert "none.jsonl does not exist" in err and "Traceback" not in out + err


def test_glue_score_is_in_percent_and_reads_old_records(tmp_path, capsys):
    # cola 50, sst2 80, mrpc 85, qqp 80, stsb 85, mnli-m 80, mnli-mm 80, qnli 80, rte 80, wnli 80
    expected = (50 + 80 + 85 + 80 + 85 + 80 + 80 + 80 + 80 + 80) / 10
    new, old = tmp_path / "new.jsonl", tmp_path / "old.jsonl"
    _glue_records(new, _all_glue())
    _glue_records(old, _all_glue(), unit=False)
    for path in (new, old):
        assert main(["glue-score", "--results", str(path)]) == 0
        out = capsys.readouterr().out
        assert f"GLUE score {expected:.2f} %" in out and "pearson 86.00" in out


def test_old_records_are_read_by_the_rule_in_the_leaderboard(tmp_path):
    """Old records (no unit) are read by the rule: recall kept, everything else x100."""
    import json

    from flava_zoo.bench import aggregate
    from flava_zoo.bench.suite import TaskSpec

    lines = [
        {"model": "m", "model_source": "s", "task": t, "split": "test", "metric": metric, "value": value,
         "num_samples": 10, "config_hash": "k", "package_version": "0", "git_commit": None,
         "timestamp": "2025-01-01T00:00:00+00:00"}
        for t, metric, value in (("probe", "accuracy", 0.5), ("ir", "text_to_image_R@1", 12.0))
    ]  # fmt: skip
    path = tmp_path / "old.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    board = aggregate(read_results(path), ["m"], [TaskSpec("probe", "vision", "accuracy"),
                                                   TaskSpec("ir", "multimodal", "text_to_image_R@1")])  # fmt: skip
    assert board.scores[("m", "probe")].value == 50.0 and board.scores[("m", "ir")].value == 12.0


def test_shapes_retrieval_primary_captions_one_per_scene():
    from flava_zoo.data.shapes import CAPTIONS_PER_SCENE
    from flava_zoo.downstream import TaskData

    every = TaskData(task="retrieval", source="shapes", train_size=0, val_size=0, test_size=6)
    primary = TaskData(task="retrieval", source="shapes", train_size=0, val_size=0, test_size=6,
                       retrieval_captions="primary")  # fmt: skip
    _, all_texts, all_index = every.retrieval_split("test")
    _, texts, index = primary.retrieval_split("test")
    assert len(all_texts) == 6 * CAPTIONS_PER_SCENE and index.tolist() == list(range(6))
    # the primary caption is the first of each scene's five
    assert texts == [all_texts[i * CAPTIONS_PER_SCENE] for i in range(6)]
    assert all(all_index[i * CAPTIONS_PER_SCENE] == i for i in range(6))
    with pytest.raises(ValueError, match="retrieval_captions must be 'all' or 'primary'"):
        TaskData(task="retrieval", source="shapes", retrieval_captions="first")
    with pytest.raises(ValueError, match="is for the shapes world"):
        TaskData(task="retrieval", source="karpathy", retrieval_captions="primary",
                 test={"json_path": "k.json", "image_root": "i", "split": "test"})  # fmt: skip
