"""Evaluate what was trained: ``test`` / ``validate`` / ``predict`` with ``--ckpt_path``
rebuild the module from the checkpoint (model config, head, tokenizer, lineage), not from
the recipe's ``model``; download nothing the checkpoint holds; and fail when the checkpoint
path names no file."""

from __future__ import annotations

import functools
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from flava_zoo import zoo
from flava_zoo.checkpoint import checkpoint_description
from flava_zoo.cli import main
from flava_zoo.evaluation.results import read_results

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")

ROOT = Path(__file__).resolve().parents[1]
VQA = ROOT / "recipes" / "finetune" / "shapes_vqa.yaml"
MEMES = ROOT / "recipes" / "finetune" / "shapes_memes.yaml"
TINY = [
    "--data.init_args.train_size=16",
    "--data.init_args.val_size=8",
    "--data.init_args.test_size=12",
    "--data.init_args.batch_size=4",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


ONE_THREAD = True
"""One intra-op thread per process for this module's tests (tests/conftest.py)."""


def run_args(recipe: Path, tmp: Path) -> list[str]:
    return [
        "--config", str(recipe), *TINY, f"--trainer.default_root_dir={tmp}",
        "--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1",
        "--trainer.callbacks.init_args.every_n_train_steps=1",
        f"--trainer.callbacks.init_args.dirpath={tmp / 'checkpoints'}",
    ]  # fmt: skip


def co_attention_export(folder: Path) -> Path:
    """A pretraining export whose shape differs from the recipe's flava-tiny (co-attention
    fusion: other parameter names and shapes)."""
    from flava_zoo.training import FlavaPretrainModule

    torch.manual_seed(0)
    module = FlavaPretrainModule(model="flava-tiny", stage="multimodal", model_overrides={"fusion": "co_attention"})
    return module.export(folder)


def test_test_rebuilds_a_model_of_another_shape_from_its_checkpoint(tmp_path):
    export = co_attention_export(tmp_path / "export")
    args = run_args(VQA, tmp_path)
    assert main(["fit", *args, f"--model.init_args.model={export}"]) == 0
    last = tmp_path / "checkpoints" / "last.ckpt"
    info = checkpoint_description(last)
    assert info["model_config"]["fusion"] == "co_attention"
    assert info["tokenizer"]["vocab"][:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert info["transform"]["image_size"] == 64 and info["task"] == "shapes/vqa"
    assert info["lineage"]["pretrained"] == str(export.resolve()) and info["lineage"]["step"] == 2

    shutil.rmtree(export)  # the checkpoint alone must be enough
    assert main(["test", *args, "--ckpt_path", "last"]) == 0  # the recipe still says flava-tiny
    records = [r for r in read_results(tmp_path / "results.jsonl") if r.split == "test"]
    assert {r.metric for r in records} == {"vqa_accuracy"}
    for r in records:
        assert r.model == str(export)
        assert r.lineage["checkpoint"] == str(last.resolve())
        assert r.lineage["pretrained"] == str(export.resolve()) and r.lineage["step"] == 2
        assert str(export.resolve()) in r.model_source and str(last.resolve()) in r.model_source
        assert r.unit == "%" and 0.0 <= r.value <= 100.0


def test_missing_checkpoint_is_an_error_naming_where_it_looked(tmp_path, capsys):
    args = run_args(VQA, tmp_path)
    assert main(["test", *args, "--ckpt_path", "last"]) == 1
    err = capsys.readouterr().err
    assert "no last*.ckpt in" in err and str((tmp_path / "checkpoints").resolve()) in err
    assert main(["validate", *args, "--ckpt_path", str(tmp_path / "nope.ckpt")]) == 1
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "results.jsonl").exists()  # no record of an untrained model


def test_checkpoint_of_another_task_is_refused(tmp_path):
    args = run_args(VQA, tmp_path)
    assert main(["fit", *args]) == 0
    last = str(tmp_path / "checkpoints" / "last.ckpt")
    with pytest.raises(ValueError, match="trained on 'shapes/vqa'.*'shapes/memes'"):
        main(["test", *run_args(MEMES, tmp_path / "memes"), "--ckpt_path", last])


# ------------------------------------------------------------------- nothing downloads
@pytest.fixture
def counting_server(tmp_path):
    """A static HTTP server on 127.0.0.1 over tmp_path/www that counts GET requests."""
    root = tmp_path / "www"
    root.mkdir()
    requests: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield root, f"http://127.0.0.1:{httpd.server_port}", requests
    httpd.shutdown()
    httpd.server_close()


def test_test_from_a_checkpoint_makes_no_request_for_a_zoo_model(tmp_path, monkeypatch, counting_server):
    from flava_zoo import create_model
    from flava_zoo.data import ShapesWorld
    from flava_zoo.data.datamodules import shapes_tokenizer
    from flava_zoo.zoo.cli import main as zoo_main

    root, base, requests = counting_server
    monkeypatch.setenv("FLAVA_ZOO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FLAVA_ZOO_OFFLINE", raising=False)
    export = tmp_path / "export"
    torch.manual_seed(0)
    from flava_zoo import save_pretrained

    save_pretrained(create_model("flava-tiny"), export)
    shapes_tokenizer(ShapesWorld(seed=0, sizes={"train": 200}), max_length=64).save(export)
    (root / "zoo").mkdir()
    for file in export.iterdir():
        (root / "zoo" / file.name).write_bytes(file.read_bytes())
    registry = root / "zoo" / "registry.json"
    assert zoo_main(["publish", str(export), "--url-base", f"{base}/zoo", "--name", "flava-tiny.served",
                     "-o", str(registry), "--license", "MIT"]) == 0  # fmt: skip
    monkeypatch.setenv("FLAVA_ZOO_REGISTRY", f"{base}/zoo/registry.json")
    zoo.reset_registry()
    try:
        args = [*run_args(VQA, tmp_path), "--model.init_args.model=flava-tiny.served"]
        assert main(["fit", *args]) == 0
        assert requests, "fitting from the zoo tag fetched its files"
        requests.clear()
        shutil.rmtree(tmp_path / "home")  # an empty cache: any need would be a download
        zoo.reset_registry()
        assert main(["test", *args, "--ckpt_path", "last"]) == 0
        assert requests == []
    finally:
        zoo.reset_registry()
    (record,) = [r for r in read_results(tmp_path / "results.jsonl") if r.split == "test"]
    assert record.model == "flava-tiny.served" and record.lineage["pretrained"] == "zoo:flava-tiny.served"


def test_ckpt_path_of_the_wrong_kind_is_an_error_that_says_what_to_pass(tmp_path, capsys):
    args = run_args(VQA, tmp_path)
    assert main(["fit", *args]) == 0
    assert main(["test", *args, "--ckpt_path", "best"]) == 1  # the recipe monitors nothing
    assert "monitored no metric" in capsys.readouterr().err
    export = co_attention_export(tmp_path / "export")
    assert main(["test", *args, "--ckpt_path", str(export)]) == 1
    assert f"--model.init_args.model={export}" in capsys.readouterr().err
    assert main(["test", *args, "--ckpt_path", str(export / "model.safetensors")]) == 1
    assert "not a Lightning checkpoint" in capsys.readouterr().err
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    assert main(["test", *args, "--ckpt_path", str(junk)]) == 1
    assert str(junk) in capsys.readouterr().err


def test_an_untrained_head_is_labelled_so(tmp_path, capsys):
    assert main(["test", *run_args(VQA, tmp_path)]) == 0  # no --ckpt_path, no fit
    assert "head was never trained" in capsys.readouterr().err
    (record,) = [r for r in read_results(tmp_path / "results.jsonl") if r.split == "test"]
    assert record.lineage["head"] == "untrained"


def test_retrieval_records_count_each_directions_queries(tmp_path):
    recipe = ROOT / "recipes" / "zeroshot" / "shapes_retrieval.yaml"
    assert main(["test", "--config", str(recipe), *TINY, f"--trainer.default_root_dir={tmp_path}"]) == 0
    records = read_results(tmp_path / "results.jsonl")
    images = {r.num_samples for r in records if r.metric.startswith("image_to_text")}
    texts = {r.num_samples for r in records if r.metric.startswith("text_to_image")}
    assert images == {12} and len(texts) == 1 and texts != images


def test_embed_reads_a_fine_tuning_checkpoint(tmp_path):
    from PIL import Image

    args = run_args(VQA, tmp_path)
    assert main(["fit", *args]) == 0
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (64, 64), (200, 0, 0)).save(tmp_path / "imgs" / "a.png")
    (tmp_path / "captions.txt").write_text("a red circle\n")
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert main(["embed", "--model", str(last), "--images", str(tmp_path / "imgs"),
                 "--captions", str(tmp_path / "captions.txt"), "--out", str(tmp_path / "emb"), "--quiet"]) == 0  # fmt: skip
    assert (tmp_path / "emb" / "index.jsonl").is_file()


def test_glue_score_refuses_to_average_two_models(tmp_path, capsys):
    from flava_zoo.evaluation.results import append_results, make_records

    path = tmp_path / "results.jsonl"
    for model, task in (("model-a", "glue/sst2"), ("model-b", "glue/rte")):
        append_results(path, make_records({"accuracy": 80.0}, model=model, model_source=model, task=task,
                                          split="dev", num_samples=10))  # fmt: skip
    assert main(["glue-score", "--results", str(path), "--partial"]) == 1
    assert "model-a, model-b" in capsys.readouterr().err
    assert main(["glue-score", "--results", str(path), "--partial", "--model", "model-a"]) == 0
