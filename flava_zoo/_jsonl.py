"""The one JSON-lines reader: results files, run logs and task annotations all read through it.

A low module (it imports nothing of flava_zoo) so that both ``data/`` and ``evaluation/`` can
use it. Every problem is reported the same way: ``"<file>, line <n>: <problem>"``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["JSONLError", "read_jsonl"]


class JSONLError(ValueError):
    """A JSON-lines file with a bad line: the message names the file and the line."""

    def __init__(self, path: str | Path, problem: str, *, line: int | None = None) -> None:
        where = str(path) + (f", line {line}" if line is not None else "")
        super().__init__(f"{where}: {problem}")
        self.path = Path(path)
        self.line = line


def _utf8_problem(path: Path) -> tuple[int | None, str]:
    """Line and description of the first byte of ``path`` that is not UTF-8 (a text stream's
    decode error only knows its position within a buffer, so the bytes are read again)."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        return data[: e.start].count(b"\n") + 1, f"not valid UTF-8 (byte 0x{data[e.start]:02x})"
    return None, "not valid UTF-8"


def read_jsonl(
    path: str | Path, *, error: Callable[..., Exception] = JSONLError
) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` for each non-blank line of a JSON-lines file.

    A line that is not UTF-8, not JSON or not a JSON object raises ``error(path, problem,
    line=number)`` (by default :class:`JSONLError`; a reader with its own ``ValueError``
    subclass of that signature passes it). A missing file raises ``FileNotFoundError``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"JSON-lines file {path} does not exist")
    with path.open(encoding="utf-8") as f:
        lines = enumerate(f, start=1)
        while True:
            try:
                number, line = next(lines)
            except StopIteration:
                return
            except UnicodeDecodeError:
                bad_line, problem = _utf8_problem(path)
                raise error(path, problem, line=bad_line) from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise error(path, f"not valid JSON ({e.msg})", line=number) from e
            if not isinstance(record, dict):
                raise error(
                    path, f"expected a JSON object, got {type(record).__name__}", line=number
                )
            yield number, record
