"""The ``flava-zoo`` command's own conventions: help with one line per command, ``--version``,
no spurious LightningCLI warning, and modules that own their optimiser refusing
``--optimizer``."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest

import flava_zoo
from flava_zoo.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_every_command_with_one_line(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert set(lines) == set(COMMANDS)
    assert all(len(line.split()) > 2 for line in lines.values())
    assert main([]) == 2  # no command: the same help, on stderr


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"flava-zoo {flava_zoo.__version__}"


def test_no_spurious_lightning_cli_warning_and_optimizer_is_refused(monkeypatch, tmp_path, capsys):
    """Under the console script sys.argv holds the command line too; LightningCLI would warn
    that its args parameter is meant for Python. And --optimizer would replace the module's
    own AdamW groups and schedule: refused with a message saying what to set."""
    monkeypatch.setattr(sys, "argv", ["flava-zoo", "fit", "--optimizer", "SGD"])
    recipe = ROOT / "recipes" / "finetune" / "shapes_vqa.yaml"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(["fit", "--config", str(recipe), f"--trainer.default_root_dir={tmp_path}",
                     "--optimizer", "SGD", "--optimizer.lr=0.1"])  # fmt: skip
    assert code == 1
    assert "FinetuneModule builds its own optimiser" in capsys.readouterr().err
    assert not [w for w in caught if "args parameter" in str(w.message)]
    assert sys.argv == ["flava-zoo", "fit", "--optimizer", "SGD"]  # untouched: DDP launches ranks from it


@pytest.mark.parametrize("command", ["fit", "test"])
def test_lightning_command_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "--ckpt_path" in capsys.readouterr().out
