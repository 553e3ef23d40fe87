"""What produced a leaderboard: the machine, the commit, the load it ran under."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["git_state", "machine"]


def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (else what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine() -> dict[str, Any]:
    """CPU model, cores, memory, accelerators, library versions, and the load average."""
    import torch

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(terse=True),
    }
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def describe_machine(info: dict[str, Any]) -> str:
    """One line for a report header."""
    parts = [f"{info.get('cpu', 'unknown CPU')}, {info.get('cores', '?')} cores"]
    if "memory_gib" in info:
        parts.append(f"{info['memory_gib']} GiB RAM")
    if "gpu" in info:
        parts.append(info["gpu"])
    parts.append(f"Python {info.get('python', '?')}, torch {info.get('torch', '?')}")
    return ", ".join(parts)


def git_state(path: str | Path | None = None) -> dict[str, Any]:
    """``{"commit": short HEAD or None, "dirty": changed or new files not committed?}`` of the
    checkout at ``path``."""
    cwd = str(path) if path is not None else None

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "--short", "HEAD")
    status = git("status", "--porcelain") if commit else None
    return {"commit": commit, "dirty": bool(status)}
