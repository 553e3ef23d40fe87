"""Exports, whole: a defined set of files, replaced as a unit, readable by others.

An export interrupted at any write or rename (each one in turn) leaves the old export or
the new one, never a mix; modes follow the umask; the model card and tokenizer are there;
nothing from an earlier export survives; the quickstart's export loads and stands alone.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import flava_zoo
from flava_zoo import checkpoint
from flava_zoo.checkpoint import (
    CARD_NAME,
    CONFIG_NAME,
    HEADS_NAME,
    TOKENIZER_CONFIG_NAME,
    VOCAB_NAME,
    WEIGHTS_NAME,
    load_pretrained,
    read_config,
    save_pretrained,
)
from flava_zoo.models.heads import ITMHead
from flava_zoo.tokenizer import FlavaTokenizer

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "circle"]
OLD_FILES = {WEIGHTS_NAME, CONFIG_NAME, CARD_NAME, HEADS_NAME, VOCAB_NAME, TOKENIZER_CONFIG_NAME}
NEW_FILES = {WEIGHTS_NAME, CONFIG_NAME, CARD_NAME}


class Crash(OSError):
    """The process dies here."""


@pytest.fixture(scope="module")
def models():
    """Two models whose weights fit only their own config (the text tower's depth differs)."""
    torch.manual_seed(0)
    old = flava_zoo.create_model("flava-tiny")
    new = flava_zoo.create_model("flava-tiny", text__num_layers=2)
    return old, new


def tokenizer() -> FlavaTokenizer:
    return FlavaTokenizer({t: i for i, t in enumerate(VOCAB)}, max_length=16)


def write_old(model, folder: Path) -> Path:
    head = ITMHead(model.config.multimodal.hidden_size)
    return save_pretrained(model, folder, metadata={"which": "old"}, heads={"itm_head": head},
                           tokenizer=tokenizer(), card={"title": "OLD export"})  # fmt: skip


def write_new(model, folder: Path) -> Path:
    return save_pretrained(model, folder, metadata={"which": "new"}, card={"title": "NEW export"})


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def assert_whole(folder: Path, models) -> str:
    """The export at ``folder`` is entirely the old one or entirely the new one; returns which."""
    old, new = models
    config = read_config(folder)
    loaded = load_pretrained(folder)  # strict: the weights fit the config
    which = json.loads((folder / CONFIG_NAME).read_text())["metadata"]["which"]
    expected_model, expected_files = (old, OLD_FILES) if which == "old" else (new, NEW_FILES)
    assert config == expected_model.config, which
    assert same_weights(loaded, expected_model), which
    assert {p.name for p in folder.iterdir()} == expected_files, which
    assert f"{which.upper()} export" in (folder / CARD_NAME).read_text()
    if which == "old":
        assert FlavaTokenizer.from_pretrained(folder).to_dict() == tokenizer().to_dict()
        assert checkpoint.load_head_state(folder, "itm_head")
    return which


def siblings(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir() if p.name != folder.name)


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "rename-aside"])
@pytest.mark.parametrize("hard", [False, True], ids=["exception", "killed"])
def test_an_export_interrupted_anywhere_leaves_the_old_or_the_new(tmp_path, monkeypatch, models, exchange, hard):
    """Break the k-th write, rename or removal of a re-export, for every k: the folder loads as
    the old export or the new one. ``killed``: nothing runs after the crash (no clean-up
    either); ``rename-aside``: no atomic exchange, so the old folder is renamed aside first
    and the crash also strikes between the two renames."""
    seams = {name: getattr(checkpoint, name) for name in ("_write_file", "_rename", "_exchange", "_discard")}
    if not exchange:
        seams["_exchange"] = lambda a, b: False
    outcomes, restored = [], 0
    for k in range(100):
        root = tmp_path / f"k{k}"
        root.mkdir()
        folder = write_old(models[0], root / "export")
        calls = {"n": 0}

        def broken(name, *args, _k=k, _calls=calls):
            _calls["n"] += 1
            if _calls["n"] == _k + 1:
                _calls["broken"] = name
            if _calls["n"] == _k + 1 or (hard and _calls["n"] > _k + 1):
                raise Crash(f"crash at step {_k} ({name})")
            return seams[name](*args)

        for name in seams:
            monkeypatch.setattr(checkpoint, name, lambda *a, _n=name: broken(_n, *a))
        crashed = False
        try:
            write_new(models[1], folder)
        except Crash:
            crashed = True
        monkeypatch.undo()
        if not crashed and calls["n"] <= k:
            break  # every step has been broken once
        restored += not folder.exists()
        outcomes.append(assert_whole(folder, models))
        if not hard and calls["broken"] != "_discard":
            assert siblings(folder) == [], (k, siblings(folder))  # nothing left behind
        # and the next export goes through, and clears whatever the crash left behind
        write_new(models[1], folder)
        assert assert_whole(folder, models) == "new"
        assert siblings(folder) == [], (k, siblings(folder))
    else:
        pytest.fail("the export never completed")
    assert "old" in outcomes and "new" in outcomes, outcomes  # the break points span the swap
    assert len(outcomes) >= 5  # three files written, the swap, the old one removed
    if hard and not exchange:
        assert restored == 1  # killed between the two renames: the reader put the old one back


def test_a_missing_export_is_restored_from_the_copy_set_aside(tmp_path, models):
    """Between the renames the folder is gone and the old one lies aside: reading restores it."""
    folder = write_old(models[0], tmp_path / "export")
    aside = tmp_path / f".export.old-{1}-abc"
    os.rename(folder, aside)
    assert read_config(folder) == models[0].config
    assert same_weights(flava_zoo.create_model(folder), models[0])
    assert folder.is_dir() and not aside.exists()
    assert assert_whole(folder, models) == "old"
    os.rename(folder, aside)  # create_model alone restores it too
    assert same_weights(flava_zoo.create_model(folder), models[0]) and not aside.exists()


def test_file_modes_follow_the_umask(tmp_path, models):
    previous = os.umask(0o022)
    try:
        folder = write_old(models[0], tmp_path / "export")
        write_old(models[0], folder)  # replacing an export keeps the modes too
        assert oct(folder.stat().st_mode & 0o777) == "0o755"
        modes = {p.name: oct(p.stat().st_mode & 0o777) for p in folder.iterdir()}
        assert modes == dict.fromkeys(OLD_FILES, "0o644")
        single = tmp_path / "single.safetensors"
        checkpoint._atomic_write(single, lambda p: save_file({"x": torch.zeros(1)}, p))
        assert oct(single.stat().st_mode & 0o777) == "0o644"
        os.umask(0o027)
        private = write_old(models[0], tmp_path / "private")
        assert oct(private.stat().st_mode & 0o777) == "0o750"
        assert {oct(p.stat().st_mode & 0o777) for p in private.iterdir()} == {"0o640"}
    finally:
        os.umask(previous)


def test_an_export_holds_its_card_tokenizer_and_transform(tmp_path, models):
    model = models[0]
    head = ITMHead(model.config.multimodal.hidden_size)
    facts = {
        "command": "flava-zoo fit --config recipes/pretrain/shapes.yaml",
        "stages": [{"stage": "image", "steps": 100}, {"stage": "multimodal", "steps": 280}],
        "metrics": {"unit": "%", "image_to_text_R@1": 6.25},
    }
    folder = save_pretrained(model, tmp_path / "export", heads={"itm_head": head}, tokenizer=tokenizer(),
                             transform={"image_size": 64}, card=facts)  # fmt: skip
    assert {p.name for p in folder.iterdir()} == OLD_FILES
    assert FlavaTokenizer.from_pretrained(folder).to_dict() == tokenizer().to_dict()
    record = json.loads((folder / CONFIG_NAME).read_text())
    assert record["files"] == sorted(OLD_FILES)
    assert record["transform"]["image_size"] == 64 and len(record["transform"]["mean"]) == 3
    card = (folder / CARD_NAME).read_text()
    count = sum(p.numel() for p in model.parameters())
    for text in (f"{count:,} parameters", "## Architecture", "image encoder", "fusion encoder (merged)",
                 facts["command"], "| image | 100 |", "| multimodal | 280 |", "value (%)",
                 "| image_to_text_R@1 | 6.25 |", "`itm_head`", "8 tokens", '"projection_dim"'):  # fmt: skip
        assert text in card, text
    # a plain save_pretrained still writes a card; the tokenizer may be given as a folder
    plain = save_pretrained(model, tmp_path / "plain", tokenizer=folder)
    assert "No metrics recorded" in (plain / CARD_NAME).read_text()
    assert (plain / VOCAB_NAME).read_text() == (folder / VOCAB_NAME).read_text()


def test_the_pretraining_module_exports_its_training_facts(tmp_path):
    from flava_zoo.training import FlavaPretrainModule

    torch.manual_seed(0)
    module = FlavaPretrainModule(model="flava-tiny", stage="multimodal", lr=5e-4)
    folder = module.export(tmp_path / "export", card={"metrics": {"unit": "%", "R@1": 1.5}})
    card = (folder / CARD_NAME).read_text()
    assert "| multimodal | 0 |" in card and "0.0005" in card and "| R@1 | 1.5 |" in card
    assert "Command:" in card
    assert json.loads((folder / CONFIG_NAME).read_text())["metadata"] == {"stage": "multimodal", "steps": 0}


def test_reexporting_leaves_nothing_of_the_earlier_export(tmp_path, models):
    folder = write_old(models[0], tmp_path / "export")
    (folder / "codebook.safetensors").write_bytes(b"x")  # written beside by save_converted
    write_new(models[0], folder)
    assert {p.name for p in folder.iterdir()} == NEW_FILES  # no stale vocab.txt, heads, codebook
    assert siblings(folder) == []


def test_a_folder_that_is_not_an_export_is_never_replaced(tmp_path, models):
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        save_pretrained(models[0], folder)
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]
    assert siblings(folder) == []


def test_publish_lists_exactly_the_export_files(tmp_path, models):
    from flava_zoo.zoo.publish import make_entry

    folder = write_old(models[0], tmp_path / "export")
    (folder / "registry.json").write_text("{}")  # beside the files on a shared disk: not the export's
    entry = make_entry(folder, ".", name="flava-tiny.t", license="MIT")
    assert {spec["url"] for spec in entry["files"].values()} == OLD_FILES
    assert set(entry["files"]) == {"config", "weights", "heads", "vocab", "tokenizer_config", "card"}
    assert entry["tokenizer"] == {"vocab": "vocab", "lowercase": True, "max_length": 16}
    assert entry["transform"] == json.loads((folder / CONFIG_NAME).read_text())["transform"]
    (folder / "registry.json").unlink()  # (an export never replaces what is not its own)
    entry = make_entry(write_new(models[1], folder), ".", name="flava-tiny.t", license="MIT")
    assert set(entry["files"]) == {"config", "weights", "card"} and "tokenizer" not in entry


def test_the_quickstart_export_stands_alone_and_loads(tmp_path, capsys):
    from flava_zoo.cli import main as cli_main
    from flava_zoo.training.quickstart import run_folder

    out = tmp_path / "qs"
    out.mkdir()  # an output from before 0.2: metrics and stages inside the export folder
    (out / "metrics.json").write_text("{}")
    (out / "stages" / "image").mkdir(parents=True)
    argv = ["quickstart", "--output", str(out), "--image-steps", "1", "--text-steps", "1",
            "--multimodal-steps", "2", "--batch-size", "4", "--eval-pairs", "20", "--no-progress"]  # fmt: skip
    assert cli_main(argv) == 0
    assert "Zero-shot retrieval on 20 held-out shapes-world pairs" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == OLD_FILES  # the export, nothing else
    run = run_folder(out)
    assert run == tmp_path / "qs.run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["unit"] == "%" and metrics["num_pairs"] == 20
    for stage in ("image", "text", "multimodal"):
        assert read_config(run / "stages" / stage), stage
    for stage in ("tokenizer", "text", "multimodal"):  # the image stage's data has no text
        assert (run / "stages" / stage / VOCAB_NAME).is_file(), stage
    card = (out / CARD_NAME).read_text()
    assert "flava-zoo quickstart --output" in card and "| multimodal | 2 |" in card
    assert f"| image_to_text_R@1 | {metrics['image_to_text_R@1']:.4g} |" in card
    model = flava_zoo.create_model(out)
    assert model.config == read_config(run / "stages" / "multimodal")
    assert FlavaTokenizer.from_pretrained(out).to_dict() == FlavaTokenizer.from_pretrained(run / "stages" / "tokenizer").to_dict()


def test_pretraining_refuses_an_export_dir_of_other_files_before_the_first_step(tmp_path):
    """export_dir is checked at setup, so a long run does not fail only when it exports."""
    from flava_zoo.cli import main

    target = tmp_path / "notes"
    target.mkdir()
    (target / "thesis.tex").write_text("keep me")
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "pretrain" / "shapes_image.yaml"
    with pytest.raises(FileExistsError, match="thesis.tex"):
        main(["fit", "--config", str(recipe), "--data.init_args.train_size=16", "--data.init_args.val_size=8",
              "--data.init_args.batch_size=8", "--trainer.max_steps=2", "--trainer.limit_val_batches=0",
              "--trainer.enable_progress_bar=false", "--trainer.logger=false",
              f"--trainer.default_root_dir={tmp_path}", f"--trainer.callbacks.init_args.dirpath={tmp_path}/ck",
              f"--model.init_args.export_dir={target}"])  # fmt: skip
    assert not (tmp_path / "ck").exists() and (target / "thesis.tex").read_text() == "keep me"
