"""The probes' shared parts: the writer of records and figures, classifier loading, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from flava_zoo.evaluation.results import read_results
from flava_zoo.probes import PROBES, list_probes, probe_module
from flava_zoo.probes.common import Measure, ProbeError, ProbeWriter, load_classifier, pyplot
from flava_zoo.stats import bootstrap_interval

ONE_THREAD = True


def test_writer_appends_records_with_intervals_and_chance(tmp_path):
    writer = ProbeWriter(tmp_path / "r.jsonl", tmp_path / "figures", "m/1", "export:x", {"pretrained": "x"})
    iv = bootstrap_interval(np.r_[np.ones(30), np.zeros(10)] * 100)
    records = writer.write(
        "negation", "test", {"flip_rate": Measure(75.0, iv, chance=50.0), "gap": Measure(0.3, unit="1")}, 40
    )
    back = read_results(tmp_path / "r.jsonl")
    assert [r.metric for r in back] == ["flip_rate", "chance/flip_rate", "gap"] == [r.metric for r in records]
    assert back[0].task == "probe/negation" and back[0].interval["low"] < 75 < back[0].interval["high"]
    assert back[1].value == 50.0 and back[1].interval is None and back[2].unit == "1"
    plt = pyplot()
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    path = writer.figure("negation", "flips", fig, "what flips")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.parent.name == "m_1"
    (entry,) = [json.loads(x) for x in (tmp_path / "figures.jsonl").read_text().splitlines()]
    assert entry == {"model": "m/1", "probe": "negation", "figure": "flips",
                     "path": "figures/m_1/negation_flips.png", "caption": "what flips"}  # fmt: skip


def test_load_classifier_from_a_finetuning_checkpoint(vqa_checkpoint, random_export):
    from PIL import Image

    clf = load_classifier(vqa_checkpoint)
    assert clf.task == "shapes/vqa"
    assert "yes" in clf.label_names and clf.inputs == "multimodal"
    images = [Image.new("RGB", (64, 64), (200, 10 * i, 30)) for i in range(3)]
    logits = clf.logits(images, ["is there a red circle?"] * 3)
    assert logits.shape == (3, len(clf.label_names)) and torch.isfinite(logits).all()
    assert clf.predict(images[:1], ["what colour is the circle?"])[0] in clf.label_names
    with pytest.raises(ProbeError, match="not a fine-tuning checkpoint|is not"):
        load_classifier(random_export / "model.safetensors")


def test_every_registered_probe_has_a_module_with_run():
    for name in list_probes():
        module = probe_module(name)
        assert callable(module.run), name
        assert (module.__doc__ or "").strip(), name
    assert list(PROBES) == list_probes()
    with pytest.raises(ValueError, match="unknown probe 'nope'"):
        probe_module("nope")


def test_probe_cli_lists_and_refuses_unknown(capsys):
    from flava_zoo.cli import main

    assert main(["probe", "list"]) == 0
    assert capsys.readouterr().out.split() == list_probes()
    assert main(["probe", "nope", "--model", "flava-tiny"]) == 2
    assert "unknown probe 'nope'" in capsys.readouterr().err
