"""The factory: every kind of name (architecture, zoo tag over a real HTTP server on
127.0.0.1, export folder, flava-zoo ``.ckpt``) resolves once, and create_model,
create_model_and_transforms, get_tokenizer and get_transform work for each alike."""

from __future__ import annotations

import functools
import json
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

import flava_zoo
from flava_zoo import factory
from flava_zoo.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_KEY
from flava_zoo.tokenizer import FlavaTokenizer
from flava_zoo.zoo.cli import main as zoo_main

zoo = flava_zoo.zoo
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "circle", "blue", "square"]
KINDS = ("architecture", "zoo", "export", "checkpoint")


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(autouse=True)
def isolated(isolated_zoo):
    """Every test here gets its own zoo home and the built-in registry (conftest)."""
    yield


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A flava-tiny at 32 px with a 10-token vocabulary, exported with its tokenizer."""
    torch.manual_seed(0)
    model = flava_zoo.create_model("flava-tiny", image_size=32, text__vocab_size=len(VOCAB))
    tokenizer = FlavaTokenizer({t: i for i, t in enumerate(VOCAB)}, max_length=16)
    export = tmp_path_factory.mktemp("export") / "tiny"
    flava_zoo.save_pretrained(model, export, tokenizer=tokenizer, transform={"mean": [0.5] * 3, "std": [0.25] * 3})
    return model, tokenizer, export


@pytest.fixture
def names(trained, tmp_path):
    """One name of each kind, all for the same trained model (but the architecture)."""
    model, tokenizer, export = trained
    root = tmp_path / "www"
    (root / "zoo").mkdir(parents=True)
    for file in export.iterdir():
        (root / "zoo" / file.name).write_bytes(file.read_bytes())
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root)))
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_port}/zoo"
    registry = root / "zoo" / "registry.json"
    assert zoo_main(["publish", str(root / "zoo"), "--url-base", base, "--name", "flava-tiny.factory",
                     "-o", str(registry), "--license", "MIT"]) == 0
    zoo.add_registry(f"{base}/registry.json")
    ckpt = tmp_path / "run" / "last.ckpt"
    ckpt.parent.mkdir()
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            CHECKPOINT_KEY: {
                "format": CHECKPOINT_FORMAT,
                "module": "flava_zoo.downstream.FinetuneModule",
                "model_config": model.config.to_dict(),
                "tokenizer": tokenizer.to_dict(),
                "transform": {"image_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3},
                "task": "shapes_color",
                "label_names": None,
                "lineage": {"pretrained": str(export), "step": 3, "epoch": 0},
            },
        },
        ckpt,
    )
    yield {"architecture": "flava-tiny", "zoo": "flava-tiny.factory", "export": str(export), "checkpoint": str(ckpt)}
    httpd.shutdown()
    httpd.server_close()


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("kind", KINDS)
def test_create_model_and_transforms_for_every_kind(kind, names, trained):
    model, _, _ = trained
    source = flava_zoo.resolve_model(names[kind])
    assert source.kind == kind and source.pretrained == (kind != "architecture")
    net, train_tf, eval_tf = flava_zoo.create_model_and_transforms(names[kind])
    image = torch.rand(3, 50, 70)
    if kind == "architecture":
        assert net.config.image.image_size == 64 and eval_tf(image).shape == (3, 64, 64)
        assert not same_state(net, model)
        return
    assert same_state(net, model)
    assert eval_tf(image).shape == (3, 32, 32) and train_tf(image).shape == (3, 32, 32)
    # the stored statistics, not the defaults: a constant 0.5 image normalises to zero
    assert torch.allclose(eval_tf(torch.full((3, 40, 40), 0.5)), torch.zeros(3, 32, 32), atol=1e-6)
    assert torch.equal(flava_zoo.get_transform(names[kind])(image), eval_tf(image))


@pytest.mark.parametrize("kind", ["zoo", "export", "checkpoint"])
def test_get_tokenizer_for_every_kind_that_has_one(kind, names):
    tokenizer = flava_zoo.get_tokenizer(names[kind])
    assert tokenizer("a red circle")["input_ids"].tolist() == [[2, 5, 6, 7, 3]]
    assert tokenizer.vocab_size == len(VOCAB)
    assert flava_zoo.get_tokenizer(names[kind], max_length=4).to_dict()["max_length"] == 4


def test_an_architecture_has_no_tokenizer_and_says_so(names):
    with pytest.raises(ValueError, match="flava-tiny: an architecture name has no vocabulary"):
        flava_zoo.get_tokenizer("flava-tiny")
    assert factory.load_tokenizer("flava-tiny") is None


def test_overrides_reach_the_model_and_its_transforms(names):
    net, _, eval_tf = flava_zoo.create_model_and_transforms("flava-tiny", image_size=48)
    assert net.config.image.image_size == 48 and eval_tf(torch.rand(3, 60, 60)).shape == (3, 48, 48)
    assert flava_zoo.create_model(names["export"], gradient_checkpointing=True).config.gradient_checkpointing


def test_origins_and_lineage(names):
    assert flava_zoo.resolve_model("flava-tiny").origin == "random init (flava-tiny)"
    assert flava_zoo.resolve_model(names["zoo"]).origin == "zoo:flava-tiny.factory"
    export = flava_zoo.resolve_model(names["export"])
    assert export.origin == str(export.path.resolve())
    ckpt = flava_zoo.resolve_model(names["checkpoint"])
    assert ckpt.origin.startswith("checkpoint ") and ckpt.lineage["step"] == 3
    assert ckpt.tokenizer_origin == f"the vocabulary stored in {ckpt.location}"


def test_unknown_names_fail_once_with_the_resolvers_message(tmp_path):
    with pytest.raises(ValueError, match=r"unknown model 'flava-tny'; did you mean \['flava-tiny'"):
        flava_zoo.create_model_and_transforms("flava-tny")
    with pytest.raises(ValueError, match="no pretrained weights called 'flava-tiny.nope'"):
        flava_zoo.get_transform("flava-tiny.nope")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        flava_zoo.get_tokenizer(tmp_path / "missing.ckpt")


def test_every_entry_point_resolves_through_the_one_resolver(names, monkeypatch):
    """create_model, create_model_and_transforms, get_tokenizer and get_transform (and the
    downstream data's attach_model) all read a name through factory.resolve_model."""
    from flava_zoo.downstream.data import TaskData

    seen: list[str] = []
    real = factory.resolve_model

    def spy(name, pretrained=False):
        if not isinstance(name, factory.ModelSource):
            seen.append(str(name))
        return real(name, pretrained)

    monkeypatch.setattr(factory, "resolve_model", spy)
    name = names["export"]
    factory.create_model(name)
    factory.create_model_and_transforms(name)
    factory.get_tokenizer(name)
    factory.get_transform(name)
    assert seen == [name] * 4
    data = TaskData(task="text_classification", image_size=32)
    data.attach_model(name, vocab_size=len(VOCAB))
    assert seen == [name] * 5 and data.tokenizer.vocab_size == len(VOCAB)


def test_the_model_layer_knows_nothing_of_zoo_checkpoint_or_factory():
    import flava_zoo.models.registry as registry

    assert not hasattr(registry, "create_model")
    text = json.dumps(sorted(vars(registry)))
    assert "zoo" not in text and "checkpoint" not in text and "factory" not in text
