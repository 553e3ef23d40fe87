"""The model zoo: pretrained weights by name, downloaded once, verified, converted on load.

>>> import flava_zoo
>>> flava_zoo.zoo.list_pretrained()                              # doctest: +SKIP
['flava-base.facebook', 'flava-base.torchmultimodal']
>>> model = flava_zoo.create_model("flava-base.facebook")        # doctest: +SKIP
>>> tokenizer = flava_zoo.get_tokenizer("flava-base.facebook")   # doctest: +SKIP
>>> transform = flava_zoo.get_transform("flava-base.facebook")   # doctest: +SKIP

The zoo knows its entries only; :mod:`flava_zoo.factory` (above it) tells a zoo tag from an
architecture, an export folder or a checkpoint, and for zoo tags calls :func:`load_model`
and :func:`load_tokenizer` and reads the entry's transform settings.

Entries come from the registry shipped in the package, then from ``FLAVA_ZOO_REGISTRY``,
then from :func:`add_registry`; see :mod:`flava_zoo.zoo.registry` for the format,
:mod:`flava_zoo.zoo.download` for caching and integrity, :mod:`flava_zoo.zoo.publish` for
publishing a model trained here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..weights import REPAIR_HINTS
from .convert import PretrainedWeights, convert, torchmultimodal_to_transformers
from .download import (
    ChecksumError,
    ContentError,
    DownloadError,
    FileSpec,
    OfflineError,
    VerifyResult,
    cache_path,
    home,
    is_offline,
    kind_of,
)
from .download import download as download_file
from .download import forget as forget_file
from .download import verify as verify_file
from .publish import publish
from .registry import FORMATS, Registry, ZooEntry, env_sources, read_registry

_REGISTRY: Registry | None = None
ROLE_KINDS = {"weights": "weights", "heads": "weights", "vocab": "text", "config": "json"}
"""What each file role must be (:func:`flava_zoo.zoo.download.content_problem`) before the
digest of its first download is recorded; other roles go by the file's suffix."""


def role_kind(role: str, spec: FileSpec) -> str | None:
    """The content kind a file of ``role`` is checked as (by its suffix for unknown roles)."""
    return ROLE_KINDS.get(role) or kind_of(spec.name)


def registry() -> Registry:
    """The process-wide registry: packaged entries, then ``FLAVA_ZOO_REGISTRY``'s, then added ones."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = Registry(env_sources())
    return _REGISTRY


def reset_registry() -> None:
    """Forget added registries and re-read ``FLAVA_ZOO_REGISTRY`` on next use."""
    global _REGISTRY
    _REGISTRY = None


def add_registry(path_or_url: str | os.PathLike) -> list[str]:
    """Add a registry file (path, ``file://`` or ``http(s)://`` URL); returns its entry names."""
    return registry().add(path_or_url)


def list_pretrained(pattern: str = "*") -> list[str]:
    """Names (``arch.tag``) of the pretrained weights matching a shell-style ``pattern``."""
    return registry().names(pattern)


def get_entry(name: str) -> ZooEntry:
    """The zoo entry ``arch.tag``; a bare architecture gives its default weights."""
    if "." not in name:
        return registry().default_for(name)
    return registry().get(name)


def download(
    name: str,
    roles: list[str] | None = None,
    *,
    force: bool = False,
    progress: bool = True,
    root: str | os.PathLike | None = None,
) -> dict[str, Path]:
    """Download (or find in the cache) the files of ``name``; returns their paths by role."""
    entry = get_entry(name)
    wanted = roles if roles is not None else list(entry.files)
    missing = [r for r in wanted if r not in entry.files]
    if missing:
        raise ValueError(f"{entry.name} has no file(s) {missing}; it has {sorted(entry.files)}")
    return {
        role: download_file(
            entry.files[role],
            force=force,
            progress=progress,
            root=root,
            kind=role_kind(role, entry.files[role]),
        )
        for role in wanted
    }


def verify(name: str, *, root: str | os.PathLike | None = None) -> dict[str, VerifyResult]:
    """Hash every cached file of ``name`` in full against its expected digest (never downloads)."""
    entry = get_entry(name)
    return {
        role: verify_file(spec, root=root, kind=role_kind(role, spec))
        for role, spec in entry.files.items()
    }


def forget(
    name: str, roles: list[str] | None = None, *, root: str | os.PathLike | None = None
) -> dict[str, str | None]:
    """Drop the digests recorded at the first download of ``name``'s files (all, or
    ``roles``); returns the digest dropped per role (``None`` where none was recorded).
    The next download or verify checks each file's content and records its digest anew."""
    entry = get_entry(name)
    wanted = roles if roles is not None else list(entry.files)
    missing = [r for r in wanted if r not in entry.files]
    if missing:
        raise ValueError(f"{entry.name} has no file(s) {missing}; it has {sorted(entry.files)}")
    return {role: forget_file(entry.files[role], root=root) for role in wanted}


def repair_hint(path: str | os.PathLike) -> str:
    """For a file of the zoo cache: a sentence naming the command that fetches it again
    (``flava-zoo zoo download NAME --force``, with the entry's name where a registry entry
    holds the file); ``""`` for any other file."""
    try:
        resolved = Path(path).resolve()
        if not resolved.is_relative_to((home() / "files").resolve()):
            return ""
    except OSError:
        return ""
    try:
        names = [
            entry.name
            for entry in (registry().get(n) for n in registry().names())
            if any(cache_path(spec).resolve() == resolved for spec in entry.files.values())
        ]
    except Exception:  # a hint must never hide the error it decorates
        names = []
    name = names[0] if names else "NAME"
    return f" It is a cached download: fetch it again with `flava-zoo zoo download {name} --force`."


if repair_hint not in REPAIR_HINTS:
    REPAIR_HINTS.append(repair_hint)  # unreadable cached weights name the command that heals them


def load_weights(
    name: str, *, progress: bool = True, with_heads: bool = True, **overrides: Any
) -> PretrainedWeights:
    """Download, verify and convert the weights of ``name`` into our layout (heads apart).

    ``with_heads=False`` skips a separately published heads file (the backbone alone).
    """
    entry = get_entry(name)
    roles = [r for r in ("weights", "config") + (("heads",) if with_heads else ()) if r in entry.files]
    paths = download(entry.name, roles, progress=progress)
    return convert(entry, paths, **overrides)


def load_model(name: str, pretrained: bool = True, *, progress: bool = True, **overrides: Any):
    """A :class:`~flava_zoo.FlavaModel` with the pretrained weights of ``name``, loaded strictly.

    ``name`` is ``arch.tag`` or a bare architecture (its default weights). ``overrides``
    change config fields that leave the weights' shapes alone (``gradient_checkpointing``,
    dropouts...). With ``pretrained=False`` the entry's config is built with random weights.
    :func:`flava_zoo.create_model` calls this for ``arch.tag`` names.
    """
    from ..models.flava import FlavaModel

    if not pretrained:
        from .convert import entry_config

        entry = get_entry(name)
        paths = (
            download(entry.name, ["config"])
            if "config" in entry.files and entry.config is None
            else {}
        )
        config = entry_config(entry, paths)
        return FlavaModel(config.replace(**overrides) if overrides else config)
    weights = load_weights(name, progress=progress, with_heads=False, **overrides)
    with torch.device("meta"):
        model = FlavaModel(weights.config)
    dtypes = {k: v.dtype for k, v in model.state_dict().items()}
    state = {}
    for key, value in weights.state_dict.items():
        dtype = dtypes.get(key, value.dtype)
        state[key] = value.to(dtype=dtype) if value.dtype != dtype else value
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        raise ValueError(f"{weights.entry.name}: weights do not fit the model: {err}") from None
    return model


def load_pretraining_heads(name: str, *, progress: bool = True) -> dict[str, torch.Tensor]:
    """The pretraining-head tensors that come with ``name`` (MLM, MIM, ITM, MMM, codebook),
    under the source's names (``itm_head.classifier.weight`` for a flava-zoo export's
    ``heads.safetensors``); empty for entries that carry none."""
    return load_weights(name, progress=progress).heads


def load_tokenizer(name: str, **kwargs: Any):
    """The :class:`~flava_zoo.tokenizer.FlavaTokenizer` of ``name`` (downloads its vocabulary)."""
    from ..tokenizer import FlavaTokenizer

    entry = get_entry(name)
    if entry.tokenizer is None:
        raise ValueError(f"{entry.name} names no tokenizer vocabulary")
    vocab = download(entry.name, [entry.tokenizer["vocab"]], progress=False)[
        entry.tokenizer["vocab"]
    ]
    options = {k: entry.tokenizer[k] for k in ("lowercase", "max_length") if k in entry.tokenizer}
    return FlavaTokenizer.from_vocab_file(vocab, **{**options, **kwargs})


def image_transform(name: str, train: bool = False):
    """The evaluation (or training) image transform with the entry's size, mean and std."""
    from .. import transforms

    entry = get_entry(name)
    settings = dict(entry.transform or {})
    kwargs: dict[str, Any] = {"image_size": int(settings.get("image_size", 224)), "train": train}
    for key in ("mean", "std"):
        if key in settings:
            kwargs[key] = tuple(settings[key])
    return transforms.image_transform(**kwargs)


__all__ = [
    "FORMATS",
    "ROLE_KINDS",
    "ChecksumError",
    "ContentError",
    "DownloadError",
    "FileSpec",
    "OfflineError",
    "PretrainedWeights",
    "Registry",
    "VerifyResult",
    "ZooEntry",
    "add_registry",
    "cache_path",
    "download",
    "download_file",
    "forget",
    "forget_file",
    "get_entry",
    "home",
    "image_transform",
    "is_offline",
    "list_pretrained",
    "load_model",
    "load_pretraining_heads",
    "load_tokenizer",
    "load_weights",
    "publish",
    "read_registry",
    "registry",
    "repair_hint",
    "reset_registry",
    "role_kind",
    "torchmultimodal_to_transformers",
    "verify",
    "verify_file",
]
