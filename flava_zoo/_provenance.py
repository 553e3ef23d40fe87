"""Where a number came from: the machine, the git commit, and a canonical config hash.

The lowest module of the package (it imports nothing of flava_zoo), so that results records,
the bench runner, the speed benchmarks and the data caches all describe their provenance the
same way: one machine record, one commit record, one hash.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

__all__ = [
    "CONFIG_HASH_DIGITS",
    "config_hash",
    "cpu_info",
    "describe_machine",
    "git_commit",
    "git_state",
    "load_average",
    "machine",
]

CONFIG_HASH_DIGITS = 12
"""Hex digits of :func:`config_hash` (48 bits: no collisions among a project's configs)."""

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
"""The /proc/cpuinfo flags that decide matmul speed in fp32 and bf16."""


def cpu_info() -> dict[str, Any]:
    """The CPU model (``/proc/cpuinfo``, else :mod:`platform`), logical CPUs, the flags of
    :data:`CPU_FLAGS`, and torch's CPU capability when torch is imported."""
    model, flags = "", set()
    try:
        text = Path("/proc/cpuinfo").read_text()
        m = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
        model = m.group(1).strip() if m else ""
        f = re.search(r"^flags\s*:\s*(.+)$", text, re.MULTILINE)
        flags = set(f.group(1).split()) if f else set()
    except OSError:
        pass
    info: dict[str, Any] = {
        "model": model or platform.processor() or platform.machine() or "unknown CPU",
        "logical_cpus": os.cpu_count(),
    }
    info.update({flag: flag in flags for flag in CPU_FLAGS})
    try:
        import torch

        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except (ImportError, AttributeError):
        pass
    return info


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def machine(device: str | None = None) -> dict[str, Any]:
    """This machine: CPU (:func:`cpu_info`), memory, OS, Python, torch and its thread count,
    the GPU when CUDA is available (or ``device`` is ``cuda``), and the load average now."""
    import torch

    info: dict[str, Any] = {
        "cpu": cpu_info(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(terse=True),
    }
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    if torch.cuda.is_available() and device in (None, "cuda"):
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = (
            f"{props.name}, {props.total_memory / 2**30:.0f} GiB, capability "
            f"{props.major}.{props.minor}, CUDA {torch.version.cuda}"
        )
    info["load_average"] = load_average()
    return info


def describe_machine(info: dict[str, Any]) -> str:
    """One line for a report header from a :func:`machine` record (older records, whose
    ``cpu`` is a plain string, read too)."""
    cpu = info.get("cpu", "unknown CPU")
    if isinstance(cpu, dict):
        flags = [f for f in CPU_FLAGS if cpu.get(f)]
        cores = cpu.get("logical_cpus", "?")
        cpu = f"{cpu.get('model', 'unknown CPU')} ({', '.join(flags) or 'no AVX2'})"
    else:
        cores = info.get("cores", "?")
    parts = [f"{cpu}, {cores} logical CPUs"]
    if "threads" in info:
        parts.append(f"{info['threads']} torch threads")
    if "memory_gib" in info:
        parts.append(f"{info['memory_gib']} GiB RAM")
    if "gpu" in info:
        parts.append(info["gpu"])
    parts.append(f"Python {info.get('python', '?')}, torch {info.get('torch', '?')}")
    return ", ".join(parts)


def _git(cwd: str | None, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state(path: str | Path | None = None) -> dict[str, Any]:
    """``{"commit": full HEAD or None, "dirty": tracked files changed?}`` of the git checkout
    holding ``path`` (default: the working directory). ``dirty`` is None outside git."""
    cwd = str(path) if path is not None else None
    if cwd is not None and not Path(cwd).is_dir():
        return {"commit": None, "dirty": None}
    commit = _git(cwd, "rev-parse", "HEAD") or None
    if commit is None:
        return {"commit": None, "dirty": None}
    status = _git(cwd, "status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def git_commit(path: str | Path | None = None) -> str | None:
    """The full HEAD commit of :func:`git_state` (None outside git or without git)."""
    return git_state(path)["commit"]


def _canonical(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    raise TypeError(f"config_hash cannot serialise {type(obj).__name__}: {obj!r}")


def config_hash(obj: Any) -> str:
    """First :data:`CONFIG_HASH_DIGITS` hex digits of the SHA-256 of ``obj`` as canonical JSON
    (sorted keys, no whitespace). Dataclasses, paths, enums and sets are accepted, nested
    anywhere; anything else raises ``TypeError`` rather than hashing an unstable ``repr``."""
    text = json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_canonical
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:CONFIG_HASH_DIGITS]
