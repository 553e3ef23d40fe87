"""What a file claims to be: the content checks that catch an HTML login page, a truncated
download or random bytes saved under a weights, text or JSON name.

The zoo checks every download with :func:`content_problem` before it records the file's
digest; :func:`flava_zoo.weights.load_state_dict_file` uses it to say what is wrong with a
file it cannot read. It imports nothing of flava-zoo, so both can.
"""

from __future__ import annotations

import codecs
import json
import os
import zipfile
from pathlib import Path

CHUNK = 1 << 20
"""Bytes read at a time when a text file is checked."""


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
TEXT_SUFFIXES = (".txt", ".model", ".vocab", ".merges")
KINDS = ("weights", "text", "json")
"""What :func:`content_problem` checks: ``weights`` (safetensors, a torch zip or a legacy
torch pickle, by the file's suffix), ``text`` (UTF-8, no NUL) and ``json``."""
_HTML_STARTS = (b"<!doctype html", b"<html", b"<head", b"<body", b"<!--", b"<?xml")
_MAX_SAFETENSORS_HEADER = 100 << 20


def kind_of(name: str) -> str | None:
    """The kind :func:`content_problem` checks for a file called ``name`` (by its suffix);
    ``None`` for a suffix it knows nothing about."""
    suffix = Path(name).suffix.lower()
    if suffix in WEIGHT_SUFFIXES:
        return "weights"
    if suffix in TEXT_SUFFIXES:
        return "text"
    if suffix == ".json":
        return "json"
    return None


def _head(path: Path, n: int = 64) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(n)


def _looks_like_html(head: bytes) -> bool:
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return start.startswith(_HTML_STARTS)


def _safetensors_problem(path: Path, size: int) -> str | None:
    if size < 8:
        return f"it has {size} bytes, fewer than a safetensors header needs"
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        if length > size - 8 or length > _MAX_SAFETENSORS_HEADER:
            return (
                f"its safetensors header claims {length} bytes but the file has {size}: "
                "not a safetensors file"
            )
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        return f"its safetensors header is not JSON ({err})"
    if not isinstance(header, dict):
        return "its safetensors header is not a JSON object"
    end = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        ):
            return f"its safetensors header gives tensor {key!r} no valid data_offsets"
        end = max(end, offsets[1])
    if 8 + length + end != size:
        return (
            f"its safetensors header says the tensors end at byte {8 + length + end} but the "
            f"file has {size} bytes ({'truncated' if size < 8 + length + end else 'trailing bytes'})"
        )
    return None


def _torch_problem(path: Path, head: bytes) -> str | None:
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError) as err:
            return f"its zip central directory cannot be read ({err}): truncated?"
        if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            return "it is a zip archive without the data.pkl of a torch checkpoint"
        return None
    if len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return None
    return "it is neither a torch zip archive (PK...) nor a pickle (protocol byte \\x80)"


def _text_problem(path: Path) -> str | None:
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            nul = chunk.find(b"\x00")
            if nul >= 0:
                return f"it has a NUL byte at offset {offset + nul}: not text"
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as err:
                return f"it is not UTF-8 text (bad byte at offset {offset + err.start})"
            offset += len(chunk)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return "it is not UTF-8 text (it ends inside a character)"
    return None


def content_problem(
    path: str | os.PathLike,
    kind: str | None,
    *,
    name: str | None = None,
    content_type: str | None = None,
) -> str | None:
    """Why the file at ``path`` is not a ``kind`` file (see :data:`KINDS`), or ``None``.

    ``name`` (default: the path's) picks the weights format by suffix: ``.safetensors``
    must parse and end where its header says; anything else must be a torch zip whose
    central directory reads or a pickle starting with its protocol byte. ``content_type``
    is the HTTP answer's; ``text/html`` is refused for every kind, as is an HTML body and
    an empty file. ``kind=None`` checks nothing. The reason names what came back (the
    first bytes, the content type).
    """
    if kind is None:
        return None
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS} or None, got {kind!r}")
    path = Path(path)
    size = path.stat().st_size
    head = _head(path)
    seen = f"first bytes {head[:32]!r}" + (f", Content-Type {content_type}" if content_type else "")
    mime = (content_type or "").split(";")[0].strip().lower()
    if _looks_like_html(head):
        return f"it is an HTML page (a login or error page?), not a {kind} file ({seen})"
    if mime in ("text/html", "application/xhtml+xml"):
        return f"the server answered Content-Type {content_type}, not a {kind} file ({seen})"
    if size == 0:
        return f"the file is empty, not a {kind} file" + (
            f" (Content-Type {content_type})" if content_type else ""
        )
    if kind == "weights":
        if Path(name or path.name).suffix.lower() == ".safetensors":
            problem = _safetensors_problem(path, size)
        else:
            problem = _torch_problem(path, head)
    else:
        problem = _text_problem(path)
        if problem is None and kind == "json":
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except ValueError as err:
                problem = f"it is not JSON ({err})"
    return f"{problem} ({seen}, {size} bytes)" if problem else None


__all__ = ["KINDS", "TEXT_SUFFIXES", "WEIGHT_SUFFIXES", "content_problem", "kind_of"]
