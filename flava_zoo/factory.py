"""From a name to a model, its tokenizer and its image transform: the one place a name is read.

A name is one of four kinds, told apart once by :func:`resolve_model`:

- ``architecture``: a registered size (``flava-tiny``); random weights, or with
  ``pretrained=True`` the zoo's default weights for it (then it resolves as ``zoo``);
- ``zoo``: an ``arch.tag`` of the model zoo (``flava-base.facebook``);
- ``export``: a folder written by :func:`flava_zoo.save_pretrained` (an export caught
  between its renames is put back first);
- ``checkpoint``: a Lightning ``.ckpt`` written by a flava-zoo run, which stores its model
  config, tokenizer, transform settings and lineage.

The answer is a :class:`ModelSource`, which :func:`create_model`,
:func:`create_model_and_transforms`, :func:`get_tokenizer`, :func:`get_transform`, the
downstream modules, their data and the inference commands all consume, so every kind of name
works everywhere alike. This module sits above :mod:`flava_zoo.models` (the architecture
registry), :mod:`flava_zoo.zoo` (pretrained weights) and :mod:`flava_zoo.checkpoint`
(exports and training checkpoints); none of them imports it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import FlavaConfig
from .models.flava import FlavaModel
from .models.registry import build_model, get_config, list_models
from .tokenizer import FlavaTokenizer

KINDS = ("architecture", "zoo", "export", "checkpoint")
"""What a model name can be; see the module docstring."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from, as :func:`resolve_model` read its name: what to build, how
    its weights load, where its tokenizer is and what its images must look like."""

    kind: str
    """One of :data:`KINDS`."""
    name: str
    """The name as given."""
    location: str
    """The architecture (``architecture``), the zoo entry ``arch.tag`` (``zoo``), or the
    resolved folder or file (``export``, ``checkpoint``)."""
    transform: Mapping[str, Any] = field(default_factory=dict)
    """Stored image settings (``image_size``, ``mean``, ``std``); what is missing comes from
    the model config and :mod:`flava_zoo.transforms`' defaults."""
    tokenizer: Mapping[str, Any] | None = None
    """Where the vocabulary is: ``{"folder": PATH}``, ``{"stored": TOKENIZER_DICT}`` (a
    checkpoint's) or ``{"zoo": "arch.tag"}``; ``None`` when the source has none."""
    lineage: Mapping[str, Any] | None = None
    """A checkpoint's stored lineage (pretrained source, step, epoch); ``None`` otherwise."""

    @property
    def path(self) -> Path | None:
        """The folder or ``.ckpt`` file, for the ``export`` and ``checkpoint`` kinds."""
        return Path(self.location) if self.kind in ("export", "checkpoint") else None

    @property
    def pretrained(self) -> bool:
        """Whether the model gets trained weights (every kind but ``architecture``)."""
        return self.kind != "architecture"

    @property
    def origin(self) -> str:
        """Where the weights come from, in the words results records use."""
        if self.kind == "export":
            return self.location
        if self.kind == "checkpoint":
            return f"checkpoint {self.location}"
        if self.kind == "zoo":
            return f"zoo:{self.location}"
        return f"random init ({self.location})"

    @property
    def tokenizer_origin(self) -> str:
        """Where :func:`load_tokenizer` reads the vocabulary from, in words (``"none"``)."""
        if self.tokenizer is None:
            return "none"
        if "folder" in self.tokenizer:
            return f"{self.tokenizer['folder']}/vocab.txt"
        if "stored" in self.tokenizer:
            return f"the vocabulary stored in {self.location}"
        return f"the vocabulary of {self.tokenizer['zoo']}"

    def config(self, **overrides: Any) -> FlavaConfig:
        """The model config (``overrides`` applied by field name); for a zoo entry whose config
        is a file, that small file is downloaded (or found in the cache)."""
        if self.kind == "architecture":
            return get_config(self.location, **overrides)
        if self.kind == "export":
            from .checkpoint import read_config

            config = read_config(self.location)
        elif self.kind == "checkpoint":
            from .checkpoint import checkpoint_description

            config = FlavaConfig.from_dict(checkpoint_description(self.location)["model_config"])
        else:
            from . import zoo
            from .zoo.convert import entry_config

            entry = zoo.get_entry(self.location)
            needs_file = entry.config is None and "config" in entry.files
            paths = zoo.download(entry.name, ["config"], progress=False) if needs_file else {}
            config = entry_config(entry, paths)
        return config.replace(**overrides) if overrides else config


def resolve_model(name: str | Path | ModelSource, pretrained: bool = False) -> ModelSource:
    """Read ``name`` once: an export folder, a ``.ckpt`` file, a zoo ``arch.tag`` or a
    registered architecture (with ``pretrained``, its default zoo weights). Nothing is
    downloaded; unknown names raise ``ValueError`` with close matches, a missing ``.ckpt``
    ``FileNotFoundError``."""
    if isinstance(name, ModelSource):
        return name
    from .checkpoint import _locate

    text = str(name)
    path = _locate(Path(text))
    if path.is_dir():
        return _export_source(text, path)
    if path.suffix == ".ckpt":
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        return _checkpoint_source(text, path)
    arch, _, tag = text.partition(".")
    if tag or pretrained:
        from . import zoo

        entry = zoo.get_entry(text)
        tokenizer = {"zoo": entry.name} if entry.tokenizer is not None else None
        return ModelSource("zoo", text, entry.name, dict(entry.transform or {}), tokenizer)
    if arch not in list_models():
        get_config(arch)  # raises the registry's error, with close matches
    return ModelSource("architecture", text, arch)


def _export_source(name: str, path: Path) -> ModelSource:
    from .checkpoint import CONFIG_NAME, VOCAB_NAME

    record_path = path / CONFIG_NAME
    transform: dict[str, Any] = {}
    if record_path.is_file():
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{record_path} is not valid JSON: {err}") from err
        if isinstance(record, dict) and isinstance(record.get("transform"), Mapping):
            transform = dict(record["transform"])
    tokenizer = {"folder": str(path)} if (path / VOCAB_NAME).is_file() else None
    return ModelSource("export", name, str(path.resolve()), transform, tokenizer)


def _checkpoint_source(name: str, path: Path) -> ModelSource:
    from .checkpoint import checkpoint_description

    info = checkpoint_description(path)
    stored = info.get("tokenizer")
    return ModelSource(
        "checkpoint",
        name,
        str(path.resolve()),
        dict(info.get("transform") or {}),
        {"stored": stored} if stored is not None else None,
        dict(info.get("lineage") or {}),
    )


def create_model(name: str | Path | ModelSource, pretrained: bool = False, **overrides: Any) -> FlavaModel:
    """Build a :class:`~flava_zoo.FlavaModel` from any kind of name (see the module docstring).

    An architecture gets random weights unless ``pretrained`` (its default zoo weights); a
    zoo tag, an export folder and a checkpoint always load theirs (nothing is downloaded for
    the last two). ``overrides`` set config fields by name (``fusion="co_attention"``,
    ``image_size=128``, ``text__num_layers=4``) before any weights load; for trained weights
    they may change only what leaves the weights' shapes alone.
    """
    source = resolve_model(name, pretrained)
    if source.kind == "architecture":
        return build_model(source.location, **overrides)
    if source.kind == "export":
        from .checkpoint import load_pretrained

        return load_pretrained(source.location, **overrides)
    if source.kind == "checkpoint":
        from .checkpoint import load_from_training_checkpoint

        return load_from_training_checkpoint(source.location, **overrides)
    from . import zoo

    return zoo.load_model(source.location, **overrides)


def load_tokenizer(source: str | Path | ModelSource, **settings: Any) -> FlavaTokenizer | None:
    """The tokenizer of ``source`` (``None`` when it has no vocabulary: an architecture, an
    export or checkpoint written without one). ``settings`` (``lowercase``, ``max_length``)
    replace the stored ones."""
    source = resolve_model(source)
    where = source.tokenizer
    if where is None:
        return None
    if "zoo" in where:
        from . import zoo

        return zoo.load_tokenizer(where["zoo"], **settings)
    if "folder" in where:
        tokenizer = FlavaTokenizer.from_pretrained(where["folder"])
    else:
        tokenizer = FlavaTokenizer.from_dict(where["stored"])
    return FlavaTokenizer.from_dict({**tokenizer.to_dict(), **settings}) if settings else tokenizer


def get_tokenizer(name: str | Path | ModelSource, **settings: Any) -> FlavaTokenizer:
    """The tokenizer that belongs to ``name`` (zoo vocabulary, an export's ``vocab.txt`` or a
    checkpoint's stored vocabulary); ``ValueError`` when ``name`` has none."""
    source = resolve_model(name)
    tokenizer = load_tokenizer(source, **settings)
    if tokenizer is None:
        hint = (
            "an architecture name has no vocabulary"
            if source.kind == "architecture"
            else f"the {source.kind} at {source.location} carries no vocabulary"
        )
        raise ValueError(
            f"{source.name}: {hint}; use a folder with vocab.txt "
            "(flava_zoo.tokenizer.FlavaTokenizer.from_pretrained) or a model exported with one"
        )
    return tokenizer


def transform_settings(source: str | Path | ModelSource, image_size: int | None = None) -> dict[str, Any]:
    """The image settings of ``source`` (``image_size``, ``mean``, ``std``): the stored ones,
    the rest from its config and the FLAVA statistics; ``image_size`` replaces the size."""
    from .transforms import FLAVA_MEAN, FLAVA_STD

    source = resolve_model(source)
    stored = dict(source.transform)
    size = image_size or stored.get("image_size") or source.config().image.image_size
    return {
        "image_size": int(size),
        "mean": [float(v) for v in stored.get("mean", FLAVA_MEAN)],
        "std": [float(v) for v in stored.get("std", FLAVA_STD)],
    }


def get_transform(name: str | Path | ModelSource, train: bool = False, image_size: int | None = None) -> Any:
    """The image transform of ``name`` (evaluation, or training with ``train=True``): its
    stored size, mean and std (see :func:`transform_settings`)."""
    from .transforms import image_transform

    settings = transform_settings(name, image_size)
    return image_transform(
        image_size=settings["image_size"],
        train=train,
        mean=tuple(settings["mean"]),
        std=tuple(settings["std"]),
    )


def create_model_and_transforms(
    name: str | Path | ModelSource, pretrained: bool = False, **overrides: Any
) -> tuple[FlavaModel, Any, Any]:
    """``(model, train_transform, eval_transform)`` for ``name``, after open_clip: the
    transforms take the model's image size (``image_size`` overrides included)."""
    source = resolve_model(name, pretrained)
    model = create_model(source, **overrides)
    size = model.config.image.image_size
    return model, get_transform(source, train=True, image_size=size), get_transform(source, image_size=size)


__all__ = [
    "KINDS",
    "ModelSource",
    "create_model",
    "create_model_and_transforms",
    "get_tokenizer",
    "get_transform",
    "load_tokenizer",
    "resolve_model",
    "transform_settings",
]
