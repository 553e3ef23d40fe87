"""Exported weights: one folder with ``config.json``, ``model.safetensors`` and, for a
pretrained model, ``heads.safetensors`` (its pretraining heads: ITM, MLM, MIM, MMM).

This is the format the quickstart writes, the zoo publishes and :func:`create_model` reads
back. Safetensors cannot run code on load, unlike a pickle.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from .config import FlavaConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
HEADS_NAME = "heads.safetensors"


def _atomic_write(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_pretrained(
    model: Any,
    directory: str | Path,
    metadata: dict[str, Any] | None = None,
    heads: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` (a :class:`FlavaModel`) to ``directory``; each file is written atomically.

    ``metadata`` (JSON-serialisable) is stored beside the config, e.g. the training recipe.
    ``heads`` maps a head's name (``itm_head``, ``mlm_head``, ...) to its module; they go to
    ``heads.safetensors`` as ``NAME.PARAMETER`` keys (read back by :func:`load_head_state`).
    Returns the folder.
    """
    from . import __version__

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    _atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(state, p, metadata={"format": "pt"}))
    head_state = {
        f"{name}.{key}": value.detach().contiguous().cpu()
        for name, head in (heads or {}).items()
        if head is not None
        for key, value in head.state_dict().items()
    }
    if head_state:
        _atomic_write(directory / HEADS_NAME, lambda p: save_file(head_state, p, metadata={"format": "pt"}))
    else:  # a previous export's heads would not belong to these weights
        (directory / HEADS_NAME).unlink(missing_ok=True)
    record = {
        "architecture": "flava",
        "flava_zoo_version": __version__,
        "config": model.config.to_dict(),
        "metadata": metadata or {},
    }
    _atomic_write(directory / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(record, indent=2)))
    return directory


def read_config(directory: str | Path) -> FlavaConfig:
    """Read the :class:`FlavaConfig` of an exported folder."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: not an exported flava-zoo folder")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if "config" not in record:
        raise ValueError(f"{path} has no 'config' field")
    return FlavaConfig.from_dict(record["config"])


def load_pretrained(directory: str | Path, strict: bool = True, **overrides: Any) -> Any:
    """Build the model an exported folder describes and load its weights.

    ``overrides`` may change only settings that leave the weights' shapes alone (for
    example ``fusion`` cannot change, ``gradient_checkpointing`` can).
    """
    from .models.flava import FlavaModel

    directory = Path(directory)
    config = read_config(directory)
    if overrides:
        config = config.replace(**overrides)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} does not exist")
    model = FlavaModel(config)
    model.load_state_dict(load_file(str(weights)), strict=strict)
    return model


def load_head_state(directory: str | Path, name: str) -> dict[str, Any]:
    """The state dict of pretraining head ``name`` (e.g. ``itm_head``) from an exported folder's
    ``heads.safetensors``; a clear error when the folder has no such file or head."""
    path = Path(directory) / HEADS_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: the folder holds no pretraining heads (exports written by "
            "flava-zoo pretraining carry them)"
        )
    state = load_file(str(path))
    prefix = f"{name}."
    head = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not head:
        names = sorted({k.split(".", 1)[0] for k in state})
        raise ValueError(f"{path} holds no {name!r}; it has {names}")
    return head


# ------------------------------------------------------------- training checkpoints
CHECKPOINT_KEY = "flava_zoo"
"""Key of a Lightning checkpoint under which a flava-zoo module stores what rebuilds it."""

CHECKPOINT_FORMAT = 1


def is_training_checkpoint(name: str | Path) -> bool:
    """Whether ``name`` is a file that looks like a Lightning checkpoint (``.ckpt``)."""
    path = Path(str(name))
    return path.suffix == ".ckpt" and path.is_file()


def read_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """The whole Lightning checkpoint dict at ``path``, read without running code
    (``torch.load(weights_only=True)``, memory-mapped so a large file costs little)."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"refusing to load {path}: it holds more than tensors and plain data ({err})") from None
    except (RuntimeError, EOFError) as err:
        raise ValueError(f"{path} is not a readable checkpoint: {err}") from err
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path} is not a Lightning checkpoint (it holds a {type(ckpt).__name__})")
    return ckpt


def checkpoint_description(path: str | Path, ckpt: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a flava-zoo training checkpoint says about itself (``checkpoint[CHECKPOINT_KEY]``):
    ``module`` (class path), ``model_config``, ``tokenizer`` (vocabulary and settings, or
    ``None``), ``transform`` (image settings), ``task``, ``label_names`` and ``lineage``
    (pretrained source, step, epoch). Raises ``ValueError`` for a checkpoint without it."""
    ckpt = read_training_checkpoint(path) if ckpt is None else ckpt
    info = ckpt.get(CHECKPOINT_KEY)
    if not isinstance(info, dict) or "model_config" not in info:
        raise ValueError(
            f"{path} carries no flava-zoo model description (no {CHECKPOINT_KEY!r} entry): it was "
            "written by another program or by flava-zoo before 0.2; evaluate it with the recipe's "
            "model, or fine-tune again"
        )
    return info


def load_from_training_checkpoint(path: str | Path, prefix: str = "model.", **overrides: Any) -> Any:
    """The :class:`FlavaModel` a flava-zoo training checkpoint holds: built from its stored
    config, then its ``prefix``-ed weights loaded. Nothing is downloaded."""
    from .config import FlavaConfig
    from .models.flava import FlavaModel

    ckpt = read_training_checkpoint(path)
    info = checkpoint_description(path, ckpt)
    config = FlavaConfig.from_dict(info["model_config"])
    if overrides:
        config = config.replace(**overrides)
    model = FlavaModel(config)
    state = {k[len(prefix):]: v for k, v in ckpt.get("state_dict", {}).items() if k.startswith(prefix)}
    if not state:
        raise ValueError(f"{path} holds no weights under {prefix!r}")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{path}: its weights do not fit its stored config: {err}") from None
    return model
