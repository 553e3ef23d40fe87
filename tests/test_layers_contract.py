"""The package's layer order (setup.cfg ``[importlinter]``, README "Layout") holds: no module
imports from a layer above its own, and no package has an import cycle among its modules.

Outside CI a missing import-linter skips the check; under CI (``CI`` set) it fails, so the
contract is never silently unchecked there."""

from __future__ import annotations

import configparser
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports() -> list[str]:
    if importlib.util.find_spec("importlinter") is None:
        message = "import-linter is not installed: pip install -e .[test]"
        if os.environ.get("CI"):
            pytest.fail(f"{message} (CI is set: the layer contract must be checked)")
        pytest.skip(message)
    script = Path(sys.executable).with_name("lint-imports")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"]


def test_the_layer_contract_is_kept():
    run = subprocess.run(
        [*_lint_imports(), str(ROOT / "setup.cfg"), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout


def test_every_module_of_the_package_is_in_a_layer():
    """A new top-level module must be placed in the order, not slip past it."""
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    layers = parser["importlinter:contract:layers"]["layers"].split()
    listed = {name.strip("()") for name in layers if name not in ("|", ":")}
    package = ROOT / "flava_zoo"
    modules = {p.stem for p in package.glob("*.py") if p.stem != "__init__"}
    modules |= {p.parent.name for p in package.glob("*/__init__.py")}
    required = {name for name in layers if name not in ("|", ":") and not name.startswith("(")}
    assert sorted(modules - listed) == []
    assert sorted(required - modules) == []


def test_the_readme_layout_shows_the_same_layers_in_the_same_order():
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    lines = parser["importlinter:contract:layers"]["layers"].strip().splitlines()
    contract = [" ".join(line.replace("(", "").replace(")", "").split()) for line in lines]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    shown = []
    for line in section.splitlines():
        match = re.match(r"^\s?(\d+)  (\S.*?)(?:\s{2,}|$)", line)
        if match:
            assert int(match.group(1)) == len(shown) + 1, line
            names = re.sub(r"\.py\b|/", "", match.group(2))
            shown.append(" ".join(names.split()))
    assert shown == contract
