"""Reading weight files safely: safetensors, or a pickle through ``torch.load(weights_only=True)``.

Every weight file flava-zoo reads goes through :func:`load_state_dict_file`, so no file can
run code on load: a pickle that needs anything beyond tensors and plain containers is
refused with an error naming the file. A file that is not weights at all (an HTML page
saved by mistake, truncated or random bytes) is named with what is wrong with it and, for a
file of the zoo cache, the command that fetches it again.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from .filecheck import content_problem

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
REPAIR_HINTS: list[Callable[[Path], str]] = []
"""Functions that, for an unreadable file, return a sentence saying how to get it again
(``""`` when they know nothing of it). The zoo adds its own
(:func:`flava_zoo.zoo.repair_hint`), so this module need not import the zoo."""


def _repair_hint(path: Path) -> str:
    return "".join(hint(path) for hint in REPAIR_HINTS)


def _not_weights(path: Path) -> bool:
    """Whether ``path`` is plainly no torch file (so a pickle refusal would mislead)."""
    try:
        return content_problem(path, "weights") is not None
    except OSError:
        return False


def _refusal_detail(err: Exception) -> str:
    for line in str(err).splitlines():
        if "GLOBAL" in line or "Unsupported" in line:
            return f" ({line.strip()})"
    return ""


def _unreadable(path: Path, err: Exception) -> ValueError:
    """A ``ValueError`` naming ``path``, what is wrong with its bytes and how to repair it."""
    try:
        problem = content_problem(path, "weights")
    except OSError:
        problem = None
    detail = problem or str(err).strip() or type(err).__name__
    return ValueError(f"{path} is not a readable weights file: {detail}.{_repair_hint(path)}")


def load_state_dict_file(path: str | Path) -> dict[str, Any]:
    """Load a state dict (or a Lightning checkpoint dict) from ``path`` without running code.

    ``.safetensors`` files load with safetensors; anything else with
    ``torch.load(weights_only=True)``. A pickle that would need arbitrary code is refused
    with a ``ValueError`` naming the file and the offending global; a file that is not
    weights at all (HTML, truncated, random bytes) with one naming the file, what is wrong
    and, for a cached download, ``flava-zoo zoo download NAME --force``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such weights file: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as err:  # SafetensorError is not importable by a stable name
            raise _unreadable(path, err) from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if _not_weights(path):
            raise _unreadable(path, err) from None
        raise ValueError(
            f"refusing to load {path}: unpickling it would run arbitrary code, not just "
            "rebuild tensors. Re-save its state_dict() as .safetensors (or with torch.save) "
            f"in an environment you trust.{_refusal_detail(err)}"
        ) from None
    except (RuntimeError, EOFError) as err:
        raise _unreadable(path, err) from err
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} does not hold a state dict (it holds a {type(obj).__name__})")
    return dict(obj)
