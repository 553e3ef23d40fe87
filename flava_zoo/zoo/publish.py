"""Publishing a model trained here: an exported folder becomes a registry entry.

``flava-zoo zoo publish EXPORT_DIR --name flava-tiny.shapes --url-base URL -o registry.json``
hashes exactly the export's files: those its ``config.json`` lists (see
:mod:`flava_zoo.checkpoint`) and any export file put in the folder since (a tokenizer saved
into it), by role: ``config`` (``config.json``), ``weights`` (``model.safetensors``),
``heads`` (``heads.safetensors``, pretraining heads), ``vocab`` (``vocab.txt``),
``tokenizer_config`` (``tokenizer_config.json``; its settings are also inlined as the
entry's ``tokenizer``) and ``card`` (``README.md``, the model card). Anything else in the
folder (a ``registry.json`` written beside the files) is not part of the export and is left
out. The entry holds their URLs under ``URL``, sha256, sizes, the full config, the transform
settings the export stores and the training metadata. Copy the folder's files to ``URL``
(any HTTP server, or a shared disk for a path or ``file://`` base) and the registry file
anywhere users can reach; they then ``add_registry`` it (or list it in
``FLAVA_ZOO_REGISTRY``) and call ``create_model("flava-tiny.shapes")``. A relative ``URL`` (``.``) is resolved against the
registry file's own location, so registry and files can be hosted side by side.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..checkpoint import (
    CARD_NAME,
    CONFIG_NAME,
    HEADS_NAME,
    TOKENIZER_CONFIG_NAME,
    VOCAB_NAME,
    WEIGHTS_NAME,
    default_transform,
    read_config,
)
from .download import _scheme, _write_json, sha256_file
from .registry import FORMAT_VERSION, parse_entry

ROLES = {
    CONFIG_NAME: "config",
    WEIGHTS_NAME: "weights",
    HEADS_NAME: "heads",
    VOCAB_NAME: "vocab",
    TOKENIZER_CONFIG_NAME: "tokenizer_config",
    CARD_NAME: "card",
}
"""The registry role of each file an export may hold."""


def _join(url_base: str, filename: str) -> str:
    if _scheme(url_base) in ("http", "https", "file"):
        return url_base.rstrip("/") + "/" + filename
    if url_base in ("", "."):
        return filename
    return str(Path(url_base).expanduser() / filename)


def make_entry(
    export_dir: str | os.PathLike,
    url_base: str,
    *,
    name: str,
    license: str,
    description: str = "",
    paper: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    default: bool = False,
) -> dict[str, Any]:
    """The registry entry (JSON form) for an exported folder; validated before it is returned."""
    directory = Path(export_dir)
    config = read_config(directory)
    record = json.loads((directory / CONFIG_NAME).read_text())
    # the files config.json lists (all of them must be there), and an export file put in
    # the folder after it was written (a tokenizer saved into it)
    listed = set(record.get("files") or [CONFIG_NAME, WEIGHTS_NAME])
    listed |= {filename for filename in ROLES if (directory / filename).is_file()}
    unknown = sorted(set(listed) - set(ROLES))
    if unknown:
        raise ValueError(f"{directory / CONFIG_NAME} lists files {unknown} that no registry role holds")
    names = {ROLES[filename]: filename for filename in ROLES if filename in listed}
    files = {}
    for role, filename in names.items():
        path = directory / filename
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} does not exist: export the model with flava_zoo.save_pretrained"
            )
        files[role] = {
            "url": _join(url_base, filename),
            "sha256": sha256_file(path),
            "size": path.stat().st_size,
        }
    arch = name.partition(".")[0]
    entry: dict[str, Any] = {
        "architecture": arch,
        "format": "flava-zoo",
        "description": description,
        "license": license,
        "files": files,
        "config": config.to_dict(),
        "transform": dict(record.get("transform") or default_transform(config)),
    }
    if "vocab" in files:
        tokenizer: dict[str, Any] = {"vocab": "vocab", "lowercase": True, "max_length": 77}
        tok_config = directory / TOKENIZER_CONFIG_NAME
        if tok_config.is_file():
            data = json.loads(tok_config.read_text())
            for key in ("lowercase", "max_length"):
                if key in data:
                    tokenizer[key] = data[key]
        entry["tokenizer"] = tokenizer
    if paper:
        entry["paper"] = paper
    if metrics:
        entry["metrics"] = metrics
    if default:
        entry["default"] = True
    if record.get("metadata"):
        entry["training"] = {
            "flava_zoo_version": record.get("flava_zoo_version"),
            **record["metadata"],
        }
    parse_entry(name, entry, "publish")
    return entry


def publish(
    export_dir: str | os.PathLike,
    url_base: str,
    *,
    name: str,
    registry: str | os.PathLike | None = None,
    license: str = "unspecified",
    description: str = "",
    paper: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    default: bool = False,
) -> dict[str, Any]:
    """Make the entry ``name`` (``arch.tag``) for ``export_dir`` and, with ``registry``, add
    it to that registry file (created if absent, other entries kept; written atomically).
    Returns the entry."""
    arch, dot, tag = name.partition(".")
    if not (arch and dot and tag):
        raise ValueError(f"a zoo name is 'arch.tag' (like flava-tiny.shapes), got {name!r}")
    entry = make_entry(
        export_dir,
        url_base,
        name=name,
        license=license,
        description=description,
        paper=paper,
        metrics=metrics,
        default=default,
    )
    if registry is not None:
        path = Path(registry)
        data: dict[str, Any] = {"format_version": FORMAT_VERSION, "models": {}}
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError as err:
                raise ValueError(f"registry {path} is not valid JSON: {err}") from None
            if not isinstance(data.get("models"), dict):
                raise ValueError(f"registry {path} has no 'models' object")
        data["models"][name] = entry
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_json(path, data)
    return entry


__all__ = ["ROLES", "make_entry", "publish"]
