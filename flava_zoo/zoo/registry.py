"""Zoo entries: named pretrained weights (``arch.tag``, after timm) described as data.

A registry is a JSON file ``{"format_version": 1, "models": {"flava-base.facebook": {...}}}``.
Each entry names its architecture, its files (:class:`~flava_zoo.zoo.download.FileSpec`),
the layout its weights are in (``format``), licence, paper, reported metrics, tokenizer and
image transform settings, and optionally the full model config. The package ships
``registry.json``; more registries (paths or URLs, e.g. one written by
``flava-zoo zoo publish``) come from ``FLAVA_ZOO_REGISTRY`` (separated by ``;``) or
:func:`flava_zoo.zoo.add_registry`. A later registry's entry replaces an earlier one of the
same name, so a team can mirror the official weights.

A file URL may be relative: it is resolved against the registry's own location, so a zoo
folder (registry and files side by side) can move between servers and disks.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import fnmatch
import hashlib
import json
import os
import urllib.parse
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .download import (
    DownloadError,
    FileSpec,
    OfflineError,
    _scheme,
    _write_json,
    home,
    is_offline,
    read_text,
)

FORMAT_VERSION = 1
FORMATS = ("flava-zoo", "transformers", "torchmultimodal")
"""``flava-zoo``: our export (``config.json`` + ``model.safetensors``); ``transformers``:
transformers' FLAVA state dict (``FlavaModel`` or ``FlavaForPreTraining``, heads included);
``torchmultimodal``: torchmultimodal's ``FLAVAModel`` / ``FLAVAForPreTraining`` state dict."""
ENV_REGISTRY = "FLAVA_ZOO_REGISTRY"
PACKAGED = "registry.json"
_FIELDS = {
    "architecture",
    "format",
    "files",
    "description",
    "license",
    "paper",
    "homepage",
    "metrics",
    "tokenizer",
    "transform",
    "config",
    "default",
    "notes",
    "training",
}


@dataclass
class ZooEntry:
    """One named set of pretrained weights and everything needed to use them."""

    name: str
    """``arch.tag``, e.g. ``flava-base.facebook``."""
    architecture: str
    """The registered architecture (``flava-base``); its config is used when ``config`` is absent."""
    format: str
    """The layout of the weights file; one of :data:`FORMATS`."""
    files: dict[str, FileSpec]
    """By role: ``weights`` (always), ``config`` (a ``flava-zoo`` config.json or a
    transformers config.json), ``vocab`` (a BERT ``vocab.txt``)."""
    license: str
    paper: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    homepage: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    """Reported results: ``{"source": "...", "values": {"coco/image_to_text_R@1": 42.7}}``."""
    tokenizer: dict[str, Any] | None = None
    """``{"vocab": "vocab", "lowercase": true, "max_length": 77}``; ``vocab`` names a file role."""
    transform: dict[str, Any] | None = None
    """``{"image_size": 224, "mean": [...], "std": [...], "interpolation": "bicubic"}``."""
    config: dict[str, Any] | None = None
    """A full :class:`~flava_zoo.FlavaConfig` as a dict; overrides the architecture's."""
    default: bool = False
    """The weights ``create_model(arch, pretrained=True)`` picks for the architecture."""
    notes: str = ""
    training: dict[str, Any] | None = None
    registry: str = ""
    """Where this entry was read from."""

    @property
    def tag(self) -> str:
        return self.name.partition(".")[2]

    def to_dict(self) -> dict[str, Any]:
        """The registry JSON form of this entry (without ``name`` and ``registry``)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name in ("name", "registry"):
                continue
            value = getattr(self, f.name)
            if f.name == "files":
                value = {role: spec.to_dict() for role, spec in value.items()}
            if value in (None, "", {}, False) and f.name not in ("license",):
                continue
            out[f.name] = value
        return out


def _resolve_url(url: str, base: str | None) -> str:
    """``url`` made absolute against ``base`` (the registry's own URL or path)."""
    if base is None or _scheme(url) or os.path.isabs(os.path.expanduser(url)):
        return url
    if _scheme(base) in ("http", "https", "file"):
        return urllib.parse.urljoin(base, url)
    return str(Path(base).expanduser().resolve().parent / url)


def parse_entry(name: str, data: Any, source: str, base: str | None = None) -> ZooEntry:
    """Validate one registry entry; every error names the registry, the entry and the field."""
    where = f"{source}: models[{name!r}]"
    if not isinstance(data, Mapping):
        raise ValueError(f"{where} must be an object")
    arch, dot, tag = name.partition(".")
    if not (arch and dot and tag) or "." in tag:
        raise ValueError(
            f"{where}: a zoo name is 'arch.tag' (like flava-base.facebook), got {name!r}"
        )
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; valid: {sorted(_FIELDS)}")
    for required in ("architecture", "format", "files", "license"):
        if required not in data:
            raise ValueError(f"{where}: missing field {required!r}")
    if data["architecture"] != arch:
        raise ValueError(
            f"{where}.architecture is {data['architecture']!r} but the name says {arch!r}"
        )
    if data["format"] not in FORMATS:
        raise ValueError(f"{where}.format must be one of {FORMATS}, got {data['format']!r}")
    if not isinstance(data["files"], Mapping) or "weights" not in data["files"]:
        raise ValueError(f"{where}.files must be an object with at least a 'weights' file")
    files = {}
    for role, spec in data["files"].items():
        spec = FileSpec.from_dict(spec, f"{where}.files.{role}")
        if spec.url:
            spec = dataclasses.replace(spec, url=_resolve_url(spec.url, base))
        files[role] = spec
    tokenizer = data.get("tokenizer")
    if tokenizer is not None:
        if not isinstance(tokenizer, Mapping) or tokenizer.get("vocab") not in files:
            raise ValueError(f"{where}.tokenizer.vocab must name one of the files {sorted(files)}")
    if data["format"] == "flava-zoo" and data.get("config") is None and "config" not in files:
        raise ValueError(f"{where}: a flava-zoo entry needs an inline 'config' or a 'config' file")
    for key in ("paper", "metrics", "transform", "config", "training"):
        if data.get(key) is not None and not isinstance(data[key], Mapping):
            raise ValueError(f"{where}.{key} must be an object")
    return ZooEntry(
        name=name,
        architecture=arch,
        format=data["format"],
        files=files,
        license=str(data["license"]),
        paper=dict(data.get("paper") or {}),
        description=data.get("description", ""),
        homepage=data.get("homepage"),
        metrics=dict(data.get("metrics") or {}),
        tokenizer=dict(tokenizer) if tokenizer is not None else None,
        transform=dict(data["transform"]) if data.get("transform") is not None else None,
        config=dict(data["config"]) if data.get("config") is not None else None,
        default=bool(data.get("default", False)),
        notes=data.get("notes", ""),
        training=data.get("training"),
        registry=source,
    )


def parse_registry(data: Any, source: str, base: str | None = None) -> dict[str, ZooEntry]:
    """Validate a registry document; returns its entries by name."""
    if not isinstance(data, Mapping) or not isinstance(data.get("models"), Mapping):
        raise ValueError(f"{source}: a registry is an object with a 'models' object")
    version = data.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{source}: format_version {version!r} is not supported (this flava-zoo reads {FORMAT_VERSION})"
        )
    return {name: parse_entry(name, entry, source, base) for name, entry in data["models"].items()}


def read_registry(source: str | os.PathLike) -> dict[str, ZooEntry]:
    """Read and validate a registry from a path, ``file://`` or ``http(s)://`` URL.

    A remote registry is fetched on every call and, once it parses and validates, a copy is
    kept in the cache (an HTML login page or a broken registry is never cached). Offline,
    the copy is used (or :class:`~flava_zoo.zoo.download.OfflineError` names what is
    missing); when the server cannot be reached or fails, the copy is used with a warning.
    """
    source = str(source)
    if _scheme(source) not in ("http", "https"):
        return _parse_text(read_text(source), source)
    key = hashlib.sha256(source.encode()).hexdigest()[:16]
    copy = home() / "registries" / f"{key}.json"
    if is_offline():
        if not copy.is_file():
            raise OfflineError(
                f"FLAVA_ZOO_OFFLINE is set and registry {source} was never fetched: expected a copy at {copy}"
            )
        return _parse_text(copy.read_text(encoding="utf-8"), source)
    try:
        text = read_text(source)
        entries = _parse_text(text, source)
    except (DownloadError, ValueError) as err:  # unreachable, or it answered no registry
        if not copy.is_file():
            raise
        message = (
            f"registry {source} could not be read ({err}); using the copy cached at {copy}, "
            f"last fetched {_mtime(copy)}"
        )
        warnings.warn(message, RegistryFallbackWarning, stacklevel=2)
        return _parse_text(copy.read_text(encoding="utf-8"), source)
    copy.parent.mkdir(parents=True, exist_ok=True)
    _write_json(copy, json.loads(text))
    return entries


class RegistryFallbackWarning(UserWarning):
    """A remote registry could not be fetched and its cached copy was used instead."""


def _mtime(path: Path) -> str:
    stamp = datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.timezone.utc)
    return stamp.isoformat(timespec="seconds")


def _parse_text(text: str, source: str) -> dict[str, ZooEntry]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        start = text.lstrip()[:40]
        raise ValueError(
            f"registry {source} is not valid JSON: {err} (it starts with {start!r})"
        ) from None
    return parse_registry(data, source, base=source)


class Registry:
    """Zoo entries from an ordered list of registries; later ones override earlier ones."""

    def __init__(self, sources: list[str] | None = None, packaged: bool = True) -> None:
        self._entries: dict[str, ZooEntry] = {}
        self.sources: list[str] = []
        if packaged:
            text = resources.files(__package__).joinpath(PACKAGED).read_text(encoding="utf-8")
            self._entries.update(parse_registry(json.loads(text), f"flava_zoo/zoo/{PACKAGED}"))
            self.sources.append(f"flava_zoo/zoo/{PACKAGED}")
        for source in sources or []:
            self.add(source)

    def add(self, source: str | os.PathLike) -> list[str]:
        """Read a registry and add its entries; returns their names."""
        entries = read_registry(source)
        self._entries.update(entries)
        self.sources.append(str(source))
        return sorted(entries)

    def names(self, pattern: str = "*") -> list[str]:
        """Entry names matching a shell-style ``pattern``, sorted."""
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def get(self, name: str) -> ZooEntry:
        """The entry called ``name``; ``ValueError`` with close matches otherwise."""
        if name in self._entries:
            return self._entries[name]
        close = difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.4)
        hint = f"did you mean {close}? " if close else ""
        raise ValueError(f"no pretrained weights called {name!r}; {hint}available: {self.names()}")

    def default_for(self, architecture: str) -> ZooEntry:
        """The entry ``create_model(architecture, pretrained=True)`` loads."""
        entries = [e for e in self._entries.values() if e.architecture == architecture]
        if not entries:
            raise ValueError(
                f"no pretrained weights for {architecture!r}; available: {self.names()}"
            )
        defaults = [e for e in entries if e.default]
        return (defaults or sorted(entries, key=lambda e: e.name))[0]


def env_sources() -> list[str]:
    """Registries named by ``FLAVA_ZOO_REGISTRY`` (separated by ``;`` or newlines)."""
    value = os.environ.get(ENV_REGISTRY, "")
    return [s.strip() for s in value.replace("\n", ";").split(";") if s.strip()]


__all__ = [
    "ENV_REGISTRY",
    "FORMATS",
    "Registry",
    "RegistryFallbackWarning",
    "ZooEntry",
    "env_sources",
    "parse_registry",
    "read_registry",
]
