"""Readers for real data: pair manifests, webdataset shards, text corpora and image folders.

Every reader yields the sample dicts that :class:`~flava_zoo.data.collate.PretrainCollator`
takes (``image`` and / or ``text``, plus ``source``: where the sample came from, as
``file:line`` or ``shard:key``). A bad sample (a missing or corrupt image, an empty caption or
text, a manifest or corpus line that is not UTF-8, a broken shard member) becomes ``None``
with a :class:`DataSkipWarning` naming its source and the reason. The data modules read through :class:`ReplaceUnreadable` /
:func:`replace_unreadable_stream` (and :class:`MultiSourceBatches` replaces the same way), so
a bad sample is replaced by another readable sample of the same rank and never changes a
batch's size (DDP ranks must contribute equal rows to the contrastive all-gather); the
collator counts the replaced samples (``num_skipped``), and the training module logs the count
each epoch. With ``strict=True`` the reader raises :class:`BadSampleError`, naming the same
source, at once.

:class:`MultiSourceBatches` mixes several readers into one stream of whole batches, each
batch from one source picked by weight, with distinct data on every DDP rank and worker.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import PIL.Image
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from ..transforms import to_rgb

if TYPE_CHECKING:
    import webdataset as wds

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
"""File extensions read as images (case-insensitive)."""
CAPTION_MODES = ("random", "first", "all")
"""``random``: one caption drawn per access; ``first``: the first non-empty one; ``all``: one
sample per caption."""
DEFAULT_CAPTION_SEPARATOR = "||"
"""Separates several captions in one CSV / TSV cell (it does not occur in ordinary prose)."""
SCHEDULES = ("random", "round_robin")

_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError)

Sample = dict[str, Any]


class DataSkipWarning(UserWarning):
    """A bad sample was skipped; the message names its source and the reason."""


class BadSampleError(ValueError):
    """A bad sample met with ``strict=True``; the message names its source and the reason."""


def _skip(source: str, reason: str, strict: bool, error: BaseException | None = None) -> None:
    """Raise for ``strict`` readers, else warn and return ``None`` (the skipped sample)."""
    if strict:
        raise BadSampleError(f"{source}: {reason}") from error
    warnings.warn(f"{source}: skipped sample: {reason}", DataSkipWarning, stacklevel=3)
    return None


def _utf8_error(text: str) -> str | None:
    """Why ``text`` (read with ``errors="surrogateescape"``) is not valid UTF-8, else ``None``.

    Undecodable bytes come through as lone surrogates U+DC80-U+DCFF, which cannot be encoded
    back to UTF-8: the first one names the byte and its position (1-based, in characters).
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        byte = ord(text[error.start]) - 0xDC00
        shown = f"byte 0x{byte:02x}" if 0x80 <= byte <= 0xFF else f"character {text[error.start]!r}"
        return f"not valid UTF-8 ({shown} at character {error.start + 1})"
    return None


def decode_image(data: bytes) -> PIL.Image.Image:
    """Decode encoded image bytes fully (so truncated files fail here) into RGB."""
    with PIL.Image.open(io.BytesIO(data)) as image:
        image.load()
        return to_rgb(image)


def _image_error(error: BaseException) -> str:
    if isinstance(error, PIL.UnidentifiedImageError):
        return "not a recognised image format"
    return f"{type(error).__name__}: {error}"


def _read_image(path: Path, source: str, strict: bool) -> PIL.Image.Image | None:
    if not path.is_file():
        return _skip(source, f"image {path} does not exist", strict)
    try:
        return decode_image(path.read_bytes())
    except _IMAGE_ERRORS as error:
        return _skip(source, f"cannot read image {path}: {_image_error(error)}", strict, error)


def distributed_info(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """This process's ``(rank, world_size)``.

    Explicit arguments win; then an initialised ``torch.distributed`` process group; then the
    ``RANK`` and ``WORLD_SIZE`` environment variables (torchrun, webdataset's convention);
    else ``(0, 1)``.
    """
    if rank is None or world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            found = torch.distributed.get_rank(), torch.distributed.get_world_size()
        elif "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            found = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        else:
            found = 0, 1
        rank = found[0] if rank is None else rank
        world_size = found[1] if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a world of size {world_size}")
    return rank, world_size


def _worker_info() -> tuple[int, int]:
    """``(worker id, number of workers)`` of the current DataLoader worker, ``(0, 1)`` outside one."""
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def _check_captions_mode(captions: str) -> None:
    if captions not in CAPTION_MODES:
        raise ValueError(f"captions must be one of {CAPTION_MODES}, got {captions!r}")


def _pick_caption(captions: Sequence[str], mode: str) -> str:
    """One non-empty caption (``""`` when there is none): the first, or one drawn with torch's RNG."""
    usable = [c for c in captions if c]
    if not usable:
        return ""
    if mode == "first" or len(usable) == 1:
        return usable[0]
    return usable[int(torch.randint(len(usable), ()))]


class PairManifest(Dataset):
    """Image-caption pairs listed in a JSONL, CSV or TSV manifest (by file extension).

    - **JSONL** (``.jsonl``): one JSON object a line (blank lines ignored). The image field
      holds a path; a caption field holds a string or a list of strings.
    - **CSV** (``.csv``) and **TSV** (``.tsv``): a header row, then one row per image. TSV is
      plain tab-separated text without quoting (as web-crawl dumps are); CSV follows RFC 4180
      quoting. A caption cell may hold several captions separated by ``caption_separator``
      (``||``), and ``caption_key`` may list several caption columns (COCO-style
      ``caption_1``, ``caption_2``, ...); empty cells are ignored.

    Image paths are relative to ``image_root`` (default: the manifest's folder) unless
    absolute. The manifest is validated when the dataset is built: an unparsable line, a
    missing field or column, or an empty image path raises ``ValueError`` naming file, line
    and field. Images are only opened when a sample is read: a missing or corrupt image, or
    a row without a non-empty caption, gives ``None`` and a :class:`DataSkipWarning` naming
    ``file:line`` (``strict=False``), or raises :class:`BadSampleError` (``strict=True``).
    A line (JSONL) or row (CSV / TSV) holding bytes that are not UTF-8 is kept as a bad
    sample: reading it gives ``None`` and a :class:`DataSkipWarning` naming ``file:line``
    and the byte, so the collator counts it; with ``strict=True`` the dataset is refused
    when built (:class:`BadSampleError`, a ``ValueError``, naming ``file:line``). A header
    row that is not UTF-8 always raises ``ValueError``.

    Samples: ``{"image": transform(RGB PIL image), "text": str, "source": "file:line"}``;
    without a transform the image stays a PIL image.

    Args:
        path: the manifest file.
        image_root: folder image paths are relative to.
        transform: applied to each RGB PIL image (e.g. :func:`~flava_zoo.transforms.image_transform`).
        strict: raise on a bad sample instead of skipping it.
        caption_key: caption field(s); default ``captions`` where present, else ``caption``.
        image_key: image path field.
        captions: ``random`` (one caption per access, drawn with torch's RNG), ``first``
            (deterministic, for evaluation) or ``all`` (one sample per caption).
        caption_separator: splits a CSV / TSV caption cell into several captions; ``None``
            keeps each cell whole. JSONL strings are never split.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        image_root: str | os.PathLike | None = None,
        transform: Callable[[PIL.Image.Image], Any] | None = None,
        strict: bool = False,
        caption_key: str | Sequence[str] | None = None,
        image_key: str = "image",
        captions: str = "random",
        caption_separator: str | None = DEFAULT_CAPTION_SEPARATOR,
    ) -> None:
        _check_captions_mode(captions)
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"manifest {self.path} does not exist")
        self.image_root = Path(image_root) if image_root is not None else self.path.parent
        self.transform = transform
        self.strict = strict
        self.captions = captions
        self.image_key = image_key
        self.caption_keys = [caption_key] if isinstance(caption_key, str) else caption_key
        self.caption_separator = caption_separator
        self._images: list[str] = []
        self._captions: list[tuple[str, ...]] = []
        self._lines: list[int] = []
        self._bad: dict[int, str] = {}
        suffix = self.path.suffix.lower()
        if suffix == ".jsonl":
            self._read_jsonl()
        elif suffix in (".csv", ".tsv"):
            self._read_table("\t" if suffix == ".tsv" else ",")
        else:
            raise ValueError(
                f"manifest {self.path}: unsupported extension {suffix!r} (use .jsonl, .csv or .tsv)"
            )
        if not self._images:
            raise ValueError(f"manifest {self.path} lists no images")
        self._index = (
            [(row, j) for row, caps in enumerate(self._captions) for j in range(len(caps))]
            if captions == "all"
            else None
        )

    def _add(self, line: int, image: Any, captions: list[str]) -> None:
        if not isinstance(image, str) or not image.strip():
            raise ValueError(
                f"{self.path}:{line}: field {self.image_key!r} must be a non-empty path, got {image!r}"
            )
        self._images.append(image.strip())
        self._captions.append(tuple(c.strip() for c in captions) or ("",))
        self._lines.append(line)

    def _add_bad(self, line: int, reason: str) -> None:
        """Keep an undecodable line as a bad row (strict: refuse the manifest now)."""
        if self.strict:
            raise BadSampleError(f"{self.path}:{line}: {reason}")
        self._bad[len(self._images)] = reason
        self._images.append("")
        self._captions.append(("",))
        self._lines.append(line)

    def _read_jsonl(self) -> None:
        with self.path.open(encoding="utf-8-sig", errors="surrogateescape") as handle:
            for line, raw in enumerate(handle, 1):
                if not raw.strip():
                    continue
                undecodable = _utf8_error(raw)
                if undecodable is not None:
                    self._add_bad(line, undecodable)
                    continue
                try:
                    record = json.loads(raw)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{self.path}:{line}: not valid JSON: {error}") from error
                if not isinstance(record, dict):
                    raise ValueError(
                        f"{self.path}:{line}: expected a JSON object, got {type(record).__name__}"
                    )
                keys = self.caption_keys or ["captions" if "captions" in record else "caption"]
                for key in [self.image_key, *keys]:
                    if key not in record:
                        raise ValueError(f"{self.path}:{line}: missing field {key!r}")
                captions: list[str] = []
                for key in keys:
                    value = record[key]
                    values = value if isinstance(value, list) else [value]
                    for item in values:
                        if item is not None and not isinstance(item, str):
                            raise ValueError(
                                f"{self.path}:{line}: field {key!r} must hold strings, "
                                f"got {type(item).__name__}"
                            )
                        captions.append(item or "")
                self._add(line, record[self.image_key], captions)

    def _read_table(self, delimiter: str) -> None:
        quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
        with self.path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
            reader = csv.reader(handle, delimiter=delimiter, quoting=quoting)
            header = next(reader, None)
            if header is None:
                raise ValueError(f"{self.path}: empty manifest, expected a header row")
            undecodable = _utf8_error(delimiter.join(header))
            if undecodable is not None:
                raise ValueError(f"{self.path}:1: the header row is {undecodable}")
            header = [name.strip() for name in header]
            keys = self.caption_keys or ["captions" if "captions" in header else "caption"]
            for key in [self.image_key, *keys]:
                if key not in header:
                    raise ValueError(
                        f"{self.path}:1: missing column {key!r} in the header (columns: {header})"
                    )
            image_col = header.index(self.image_key)
            caption_cols = [header.index(key) for key in keys]
            end = reader.line_num
            for row in reader:
                line, end = end + 1, reader.line_num
                if not row or not any(cell.strip() for cell in row):
                    continue
                undecodable = None
                for col, cell in enumerate(row):
                    error = _utf8_error(cell)
                    if error is not None:
                        name = header[col] if col < len(header) else f"#{col + 1}"
                        undecodable = f"column {name!r} is {error}"
                        break
                if undecodable is not None:
                    self._add_bad(line, undecodable)
                    continue
                if len(row) < len(header):
                    raise ValueError(
                        f"{self.path}:{line}: missing field {header[len(row)]!r} "
                        f"(row has {len(row)} of {len(header)} columns)"
                    )
                if len(row) > len(header):
                    raise ValueError(
                        f"{self.path}:{line}: row has {len(row)} fields, the header {len(header)}"
                    )
                captions = []
                for col in caption_cols:
                    cell = row[col]
                    parts = cell.split(self.caption_separator) if self.caption_separator else [cell]
                    captions += [part for part in parts if part.strip()]
                self._add(line, row[image_col], captions)

    @property
    def num_images(self) -> int:
        """Rows (images) in the manifest."""
        return len(self._images)

    def __len__(self) -> int:
        return len(self._index) if self._index is not None else len(self._images)

    def __getitem__(self, index: int) -> Sample | None:
        row, which = self._index[index] if self._index is not None else (index, None)
        source = f"{self.path}:{self._lines[row]}"
        if row in self._bad:
            return _skip(source, self._bad[row], self.strict)
        captions = self._captions[row]
        text = captions[which] if which is not None else _pick_caption(captions, self.captions)
        if not text:
            return _skip(source, "empty caption", self.strict)
        image = _read_image(self.image_root / self._images[row], source, self.strict)
        if image is None:
            return None
        if self.transform is not None:
            image = self.transform(image)
        return {"image": image, "text": text, "source": source}


class ImageFolderImages(Dataset):
    """Every image file under ``root`` (any depth, sorted; hidden files and folders ignored).

    Samples: ``{"image": transform(RGB PIL image), "source": path}``. A corrupt file gives
    ``None`` and a :class:`DataSkipWarning` (``strict=False``) or :class:`BadSampleError`.

    Args:
        root: the folder.
        transform: applied to each RGB PIL image.
        strict: raise on a corrupt image instead of skipping it.
        extensions: file extensions read as images (case-insensitive).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Callable[[PIL.Image.Image], Any] | None = None,
        strict: bool = False,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist")
        wanted = {ext.lower() for ext in extensions}
        self.files = sorted(
            path
            for path in self.root.rglob("*")
            if path.suffix.lower() in wanted
            and not any(part.startswith(".") for part in path.relative_to(self.root).parts)
            and path.is_file()
        )
        if not self.files:
            raise ValueError(f"image folder {self.root} holds no images ({sorted(wanted)})")
        self.transform = transform
        self.strict = strict

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Sample | None:
        path = self.files[index]
        image = _read_image(path, str(path), self.strict)
        if image is None:
            return None
        if self.transform is not None:
            image = self.transform(image)
        return {"image": image, "source": str(path)}


class TextCorpus(Dataset):
    """Text-only samples for MLM from ``.txt`` and ``.jsonl`` files.

    A ``.txt`` file holds one document (or sentence) per non-blank line. A ``.jsonl`` file
    holds one JSON object per non-blank line with the text under ``text_key``; an unparsable
    line or a missing field raises ``ValueError`` naming file, line and field when the
    corpus is built, an empty text is skipped (``None`` + :class:`DataSkipWarning`) or raises
    (``strict=True``) when read. A line that is not UTF-8 is skipped the same way when read,
    naming ``file:line``; a strict corpus refuses an undecodable JSONL line when built
    (:class:`BadSampleError`). Only byte offsets are kept in memory; lines are read on access.

    Samples: ``{"text": str, "source": "file:line"}``.

    Args:
        paths: one file or several.
        text_key: the text field of JSONL records.
        strict: raise on an empty or undecodable text instead of skipping it.
    """

    def __init__(
        self,
        paths: str | os.PathLike | Sequence[str | os.PathLike],
        text_key: str = "text",
        strict: bool = False,
    ) -> None:
        files = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        if not files:
            raise ValueError("TextCorpus needs at least one file")
        self.files = [Path(p) for p in files]
        self.text_key = text_key
        self.strict = strict
        file_ids: list[int] = []
        offsets: list[int] = []
        lines: list[int] = []
        for file_id, path in enumerate(self.files):
            suffix = path.suffix.lower()
            if suffix not in (".txt", ".jsonl"):
                raise ValueError(
                    f"text corpus {path}: unsupported extension {suffix!r} (use .txt or .jsonl)"
                )
            if not path.is_file():
                raise FileNotFoundError(f"text corpus {path} does not exist")
            offset = 0
            with path.open("rb") as handle:
                for line, raw in enumerate(handle, 1):
                    if raw.strip():
                        if suffix == ".jsonl":
                            text = self._decode(path, line, raw)
                            if text is not None:
                                self._parse(path, line, text)
                        file_ids.append(file_id)
                        offsets.append(offset)
                        lines.append(line)
                    offset += len(raw)
        if not offsets:
            raise ValueError(f"text corpus {[str(p) for p in self.files]} holds no text")
        self._file_ids = np.asarray(file_ids, dtype=np.int32)
        self._offsets = np.asarray(offsets, dtype=np.int64)
        self._lines = np.asarray(lines, dtype=np.int64)

    def _decode(self, path: Path, line: int, raw: bytes) -> str | None:
        """``raw`` as text (a UTF-8 BOM dropped); ``None`` when it is not UTF-8, or in a
        strict corpus :class:`BadSampleError` naming ``file:line``."""
        try:
            return raw.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            if self.strict:
                raise BadSampleError(f"{path}:{line}: not valid UTF-8: {error}") from error
            return None

    def _parse(self, path: Path, line: int, raw: str | bytes) -> str:
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{path}:{line}: not valid JSON: {error}") from error
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{line}: expected a JSON object, got {type(record).__name__}")
        if self.text_key not in record:
            raise ValueError(f"{path}:{line}: missing field {self.text_key!r}")
        text = record[self.text_key]
        if text is not None and not isinstance(text, str):
            raise ValueError(
                f"{path}:{line}: field {self.text_key!r} must be a string, got {type(text).__name__}"
            )
        return text or ""

    def __len__(self) -> int:
        return len(self._offsets)

    def __getitem__(self, index: int) -> Sample | None:
        path = self.files[self._file_ids[index]]
        line = int(self._lines[index])
        source = f"{path}:{line}"
        with path.open("rb") as handle:
            handle.seek(int(self._offsets[index]))
            raw = handle.readline()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            return _skip(source, f"not valid UTF-8: {error}", self.strict, error)
        if path.suffix.lower() == ".jsonl":
            text = self._parse(path, line, text)
        text = text.strip()
        if not text:
            return _skip(source, "empty text", self.strict)
        return {"text": text, "source": source}


# ----------------------------------------------------------------------------- webdataset

WDS_IMAGE_KEYS = tuple(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)
"""Shard member extensions read as the image, in order of preference."""


class _SplitByRank:
    """webdataset node splitter over a rank fixed when the pipeline is built.

    The same slicing as ``wds.split_by_node``, but the rank is captured in the main process,
    so it holds in DataLoader workers under any start method (Lightning's DDP launcher does
    not set ``RANK``, and a spawned worker has no process group).
    """

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size

    def __call__(self, src: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        yield from islice(src, self.rank, None, self.world_size)


def _split_by_worker(src: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """webdataset worker splitter that refuses to leave a worker without a shard."""
    from webdataset.utils import pytorch_worker_info

    _, _, worker, num_workers = pytorch_worker_info()
    shards = list(src)
    if num_workers > len(shards):
        raise ValueError(
            f"this rank has {len(shards)} webdataset shard(s) for {num_workers} data-loader "
            f"workers, so worker {worker} would get none: use at most {len(shards)} worker(s) "
            "or split the data into more shards (at least world_size * num_workers)"
        )
    yield from islice(shards, worker, None, num_workers)


def _wds_handler(strict: bool) -> Callable[[BaseException], bool]:
    return _reraise if strict else _warn_and_continue


def _reraise(error: BaseException) -> bool:
    raise error


def _warn_and_continue(error: BaseException) -> bool:
    details = ", ".join(str(arg) for arg in error.args if arg is not None)
    warnings.warn(
        f"webdataset: skipped unreadable shard data ({type(error).__name__}: {details})",
        DataSkipWarning,
        stacklevel=2,
    )
    return True


class _PairDecoder:
    """Pipeline stage: raw shard samples -> pair samples, ``None`` for a broken member."""

    def __init__(
        self,
        transform: Callable[[PIL.Image.Image], Any] | None,
        strict: bool,
        captions: str,
        image_keys: Sequence[str],
    ) -> None:
        self.transform = transform
        self.strict = strict
        self.captions = captions
        self.image_keys = tuple(image_keys)

    def __call__(self, src: Iterator[dict[str, Any]]) -> Iterator[Sample | None]:
        for sample in src:
            yield self.decode(sample)

    def _caption(self, sample: dict[str, Any], source: str) -> str | None:
        try:
            if "txt" in sample:
                return sample["txt"].decode("utf-8").strip()
            if "json" in sample:
                meta = json.loads(sample["json"])
                value = (
                    meta.get("captions", meta.get("caption")) if isinstance(meta, dict) else None
                )
                values = value if isinstance(value, list) else [value]
                if not all(isinstance(v, str) for v in values):
                    return _skip(
                        source,
                        "json member has no 'caption' string or 'captions' list",
                        self.strict,
                    )
                return _pick_caption([v.strip() for v in values], self.captions)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            return _skip(source, f"unreadable caption member: {error}", self.strict, error)
        return _skip(
            source, f"no txt or json caption member (members: {_members(sample)})", self.strict
        )

    def decode(self, sample: dict[str, Any]) -> Sample | None:
        """One raw sample (member extension -> bytes) to a pair sample, or ``None``."""
        source = f"{sample.get('__url__')}:{sample.get('__key__')}"
        key = next((k for k in self.image_keys if k in sample), None)
        if key is None:
            return _skip(source, f"no image member (members: {_members(sample)})", self.strict)
        text = self._caption(sample, source)
        if text is None:
            return None
        if not text:
            return _skip(source, "empty caption", self.strict)
        try:
            image = decode_image(sample[key])
        except _IMAGE_ERRORS as error:
            return _skip(
                source,
                f"cannot decode image member {key!r}: {_image_error(error)}",
                self.strict,
                error,
            )
        if self.transform is not None:
            image = self.transform(image)
        return {"image": image, "text": text, "source": source}


def _members(sample: dict[str, Any]) -> list[str]:
    return sorted(k for k in sample if not k.startswith("__"))


def expand_shards(urls: str | Sequence[str]) -> list[str]:
    """Shard URLs from a brace pattern (``data/shard-{000..009}.tar``) or a list of them."""
    from webdataset.shardlists import expand_urls

    shards = (
        expand_urls(urls)
        if isinstance(urls, str)
        else [u for url in urls for u in expand_urls(url)]
    )
    if not shards:
        raise ValueError(f"no webdataset shards in {urls!r}")
    for shard in shards:
        if "://" not in shard and not shard.startswith("pipe:") and not Path(shard).is_file():
            raise FileNotFoundError(f"webdataset shard {shard} does not exist")
    return shards


def webdataset_pairs(
    urls: str | Sequence[str],
    transform: Callable[[PIL.Image.Image], Any] | None = None,
    shuffle_buffer: int = 0,
    strict: bool = False,
    captions: str = "random",
    seed: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    image_keys: Sequence[str] = WDS_IMAGE_KEYS,
) -> wds.WebDataset:
    """Image-caption pairs streamed from webdataset tar shards (a ``wds.WebDataset``).

    A sample is the shard members sharing a key: an image (``jpg``, ``png``, ``webp``, ...,
    decoded to RGB PIL then ``transform``) and a caption, from ``txt`` or from ``json``
    (``"caption"``: a string, or ``"captions"``: a list, one picked by ``captions``).
    Samples: ``{"image", "text", "source": "shard:key"}``.

    Shards are split whole: first over DDP ranks (``rank`` / ``world_size``, default
    :func:`distributed_info` at call time), then over the DataLoader workers of each rank, so
    every rank and worker reads distinct shards. Fewer shards than ranks raises
    ``ValueError`` here; fewer shards on a rank than its workers raises ``ValueError`` when
    iterated. Ranks only see the same number of samples when shards divide evenly; give the
    pipeline a fixed epoch (:class:`MultiSourceBatches`, or ``.with_epoch``) otherwise.

    A broken member (undecodable image, missing or empty caption, no image) yields ``None``
    with a :class:`DataSkipWarning` naming shard and key. Unreadable tar data (a truncated
    shard) gets a :class:`DataSkipWarning` naming the shard and the rest of that shard is
    skipped; its lost samples cannot be counted. With ``strict=True`` a broken member raises
    :class:`BadSampleError` and unreadable tar data its own error (``tarfile.ReadError``).

    Args:
        urls: shard paths or URLs, or a brace pattern.
        transform: applied to each RGB PIL image.
        shuffle_buffer: samples shuffled in a buffer of this size (0: no sample or shard
            shuffling, for evaluation); shards are then also shuffled, per epoch.
        strict: raise on a broken member instead of skipping it.
        captions: ``random`` or ``first`` (for ``json`` members with several captions).
        seed: seed of the shard and sample shuffles.
        rank: this process's DDP rank.
        world_size: number of DDP processes.
        image_keys: member extensions read as the image, in order of preference.
    """
    import webdataset as wds

    if captions not in ("random", "first"):
        raise ValueError(f"captions must be 'random' or 'first' for webdataset, got {captions!r}")
    shards = expand_shards(urls)
    rank, world_size = distributed_info(rank, world_size)
    if len(shards) < world_size:
        raise ValueError(
            f"{len(shards)} webdataset shard(s) cannot be split over {world_size} ranks: every "
            "rank needs at least one whole shard; split the data into more shards"
        )
    dataset = wds.WebDataset(
        shards,
        handler=_wds_handler(strict),
        shardshuffle=len(shards) if shuffle_buffer > 0 else False,
        detshuffle=True,
        seed=seed,
        nodesplitter=_SplitByRank(rank, world_size),
        workersplitter=_split_by_worker,
        empty_check=False,
    )
    if shuffle_buffer > 0:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed)
    return dataset.compose(_PairDecoder(transform, strict, captions, image_keys))


# ----------------------------------------------------------------------------- replacing bad samples

MAX_REPLACEMENT_TRIES = 64
"""Samples tried, the bad one included, before giving up on replacing an unreadable sample."""
SKIPPED_KEY = "num_skipped"
"""Key of a replacement sample holding how many unreadable samples it stands for."""


def _mark_skipped(sample: Sample, skipped: int) -> Sample:
    """``sample`` standing for ``skipped`` more unreadable samples (a copy; as is when 0)."""
    if not skipped:
        return sample
    return {**sample, SKIPPED_KEY: int(sample.get(SKIPPED_KEY, 0)) + skipped}


def first_readable(candidates: Iterator[Sample | None], what: str, max_tries: int) -> Sample:
    """The first readable (not ``None``) sample of ``candidates``, counting the bad ones
    before it under ``num_skipped``; ``RuntimeError`` when none of ``max_tries`` is readable."""
    skipped = 0
    for sample in islice(candidates, max_tries):
        if sample is not None:
            return _mark_skipped(sample, skipped)
        skipped += 1
    raise RuntimeError(
        f"{what}: no readable sample in {skipped} tries (the bad sample and its replacements); "
        "see the skipped-sample warnings above: most of this data cannot be read"
    )


class ReplaceUnreadable(Dataset):
    """A map-style dataset whose unreadable samples are replaced, so batches keep their size.

    Why replace rather than drop: a dropped sample made one DDP rank's batch a row shorter
    than the others', and the global contrastive loss, which all-gathers equal-sized
    embeddings from every rank, then aborted the job (gloo: data size mismatch). Padding the
    gather and masking the pad rows would have to be taught to every collective and every
    per-row loss (contrastive, ITM negatives, the masked losses, metrics logged with
    ``sync_dist``); a replacement keeps every batch full, so all of them stay unchanged and
    every rank contributes the same rows each step by construction.

    Reading index ``i`` gives ``dataset[i]`` when readable, else the first readable of
    ``dataset[(i + k * stride) % len]`` for ``k = 1, 2, ...``: deterministic, at most
    ``max_tries`` reads, then ``RuntimeError``. With ``stride`` the world size, that is the
    next index of the rank's shard under an unshuffled ``DistributedSampler`` (ranks take
    ``r, r + W, ...``); shuffled, a fixed other sample (possibly one read elsewhere this
    epoch, which is harmless). A replacement carries ``num_skipped``: the bad samples it
    stands for, which :class:`~flava_zoo.data.collate.PretrainCollator` adds to the batch's
    ``num_skipped``, so skipped samples are still counted and logged. Each bad read still
    warns (:class:`DataSkipWarning`); strict readers raise before any replacement.

    Args:
        dataset: a map-style dataset whose bad samples are ``None``.
        stride: index step between tries (default: the world size, :func:`distributed_info`).
        max_tries: samples read at most per index, the bad one included.
    """

    def __init__(
        self, dataset: Dataset, stride: int | None = None, max_tries: int = MAX_REPLACEMENT_TRIES
    ) -> None:
        if max_tries < 1:
            raise ValueError(f"max_tries must be positive, got {max_tries}")
        self.dataset = dataset
        self.stride = distributed_info()[1] if stride is None else int(stride)
        if self.stride < 1:
            raise ValueError(f"stride must be positive, got {stride}")
        self.max_tries = max_tries

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Sample:
        n = len(self.dataset)
        candidates = (self.dataset[(index + k * self.stride) % n] for k in range(n))
        return first_readable(candidates, f"{type(self.dataset).__name__}[{index}]", self.max_tries)

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not set yet (unpickling)
            raise AttributeError(name)
        return getattr(self.dataset, name)


def replace_unreadable_stream(
    samples: Iterator[Sample | None], name: str, max_tries: int = MAX_REPLACEMENT_TRIES
) -> Iterator[Sample]:
    """The readable samples of a stream, each unreadable one replaced by the next readable.

    The stream version of :class:`ReplaceUnreadable` (webdataset shards: the next sample of
    the same rank's and worker's shards): the next readable sample carries ``num_skipped``,
    the bad ones just before it. ``max_tries`` bad samples in a row raise ``RuntimeError``.
    Bad samples at the very end of a finite stream have no sample to carry their count (they
    were warned about).
    """
    skipped = 0
    for sample in samples:
        if sample is None:
            skipped += 1
            if skipped >= max_tries:
                raise RuntimeError(
                    f"{name}: {skipped} unreadable samples in a row; see the skipped-sample "
                    "warnings above: most of this data cannot be read"
                )
            continue
        yield _mark_skipped(sample, skipped)
        skipped = 0


class ReplaceUnreadableStream(IterableDataset):
    """An iterable dataset (webdataset shards) read through :func:`replace_unreadable_stream`.

    Args:
        dataset: an iterable dataset whose bad samples are ``None``.
        name: names the source in errors.
        max_tries: unreadable samples in a row that raise ``RuntimeError``.
    """

    def __init__(
        self, dataset: Any, name: str = "stream", max_tries: int = MAX_REPLACEMENT_TRIES
    ) -> None:
        self.dataset = dataset
        self.name = name
        self.max_tries = max_tries

    def __iter__(self) -> Iterator[Sample]:
        return replace_unreadable_stream(iter(self.dataset), self.name, self.max_tries)


def replace_unreadable(dataset: Any, max_tries: int = MAX_REPLACEMENT_TRIES) -> Dataset:
    """``dataset`` read so that an unreadable sample is replaced, never dropped: a map-style
    one through :class:`ReplaceUnreadable` (stride: the world size now), an iterable one
    through :class:`ReplaceUnreadableStream`; one already wrapped is returned as is."""
    if isinstance(dataset, (ReplaceUnreadable, ReplaceUnreadableStream)):
        return dataset
    if isinstance(dataset, IterableDataset):
        return ReplaceUnreadableStream(dataset, type(dataset).__name__, max_tries)
    return ReplaceUnreadable(dataset, max_tries=max_tries)


# ----------------------------------------------------------------------------- mixing


def _endless(dataset: Any, name: str) -> Iterator[Any]:
    """Iterate an iterable dataset again and again (an empty pass raises)."""
    while True:
        count = 0
        for sample in dataset:
            count += 1
            yield sample
        if count == 0:
            raise ValueError(f"source {name} yielded no samples on this rank / worker")


def weighted_schedule(
    weights: Sequence[float],
    num_batches: int,
    schedule: str = "random",
    seed: int = 0,
    epoch: int = 0,
) -> list[int]:
    """Which source each of ``num_batches`` batches comes from.

    ``random``: independent draws with probability proportional to ``weights`` from a
    generator seeded by ``(seed, epoch)``. ``round_robin``: smooth weighted round-robin, the
    same every epoch, each source's share within one batch of its weight at every prefix.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    w = torch.as_tensor(weights, dtype=torch.float64)
    if w.ndim != 1 or len(w) == 0 or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {list(weights)}")
    if schedule == "random":
        generator = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**63)
        return torch.multinomial(w, num_batches, replacement=True, generator=generator).tolist()
    total, current, order = float(w.sum()), [0.0] * len(w), []
    for _ in range(num_batches):
        current = [c + float(x) for c, x in zip(current, w)]
        pick = max(range(len(current)), key=current.__getitem__)
        current[pick] -= total
        order.append(pick)
    return order


class MultiSourceBatches(IterableDataset):
    """Whole batches from several datasets, each batch from one source chosen by weight.

    Each batch holds samples of one source only, so it is image-only, text-only or paired and
    the pretraining objective computes the losses that fit it (FLAVA samples its datasets
    the same way). Use it in a ``DataLoader`` with ``batch_size=None``.

    - **Schedule**: the source of every step comes from :func:`weighted_schedule`, seeded by
      ``(seed, epoch)`` but not by rank, so all DDP ranks take the same kind of batch at the
      same step (DDP then sees the same parameters used on every rank, and the contrastive
      all-gather meets paired batches everywhere).
    - **Map-style sources** are read through a per-epoch permutation (seeded by seed, source,
      epoch and pass; identity with ``shuffle=False``) of which rank ``r`` takes items
      ``r, r + world_size, ...`` (``len // world_size`` of them, equal on all ranks); the
      stream wraps to a fresh permutation when a source runs out. A batch is a fixed slice
      of that stream, so the data do not depend on ``num_workers``.
    - **Iterable sources** (:func:`webdataset_pairs`) split their own shards over ranks and
      workers and are iterated endlessly, each worker taking the next samples of its shards.
    - **Workers**: step ``k`` is built by worker ``k % num_workers``; the DataLoader's
      round-robin over workers yields the steps in order.
    - **Epochs**: iteration ``i`` uses epoch ``epoch + i`` (``advance_epoch=False`` repeats
      ``epoch``: fixed validation batches). Keep workers persistent so the count survives.
    - **Unreadable samples** never shrink a batch (see :class:`ReplaceUnreadable` for why): a
      map-style one is replaced by the next readable item of the rank's slice of the same
      permutation (wrapping within the pass), an iterable one by the next readable sample of
      the stream; at most ``max_tries`` reads each, then ``RuntimeError``. The replacement
      carries ``num_skipped``, which the collator adds up.

    Args:
        sources: the datasets (samples: dicts or ``None``).
        weights: relative share of each source's batches.
        batch_sizes: samples per batch, one for all or one per source.
        collate_fn: list of samples -> batch (e.g. :class:`PretrainCollator`).
        num_batches: batches per epoch on each rank.
        schedule: ``random`` or ``round_robin`` (see :func:`weighted_schedule`).
        seed: seed of the schedule and the permutations.
        shuffle: permute map-style sources (off for evaluation).
        rank: this process's DDP rank (default :func:`distributed_info`).
        world_size: number of DDP processes.
        epoch: the first epoch.
        advance_epoch: move to the next epoch on every iteration.
        names: source names for messages.
        max_tries: samples read at most to replace an unreadable one, the bad one included.
    """

    def __init__(
        self,
        sources: Sequence[Any],
        weights: Sequence[float],
        batch_sizes: int | Sequence[int],
        collate_fn: Callable[[list[Any]], Any],
        num_batches: int,
        schedule: str = "random",
        seed: int = 0,
        shuffle: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
        epoch: int = 0,
        advance_epoch: bool = True,
        names: Sequence[str] | None = None,
        max_tries: int = MAX_REPLACEMENT_TRIES,
    ) -> None:
        if len(sources) == 0 or len(weights) != len(sources):
            raise ValueError(f"need one weight per source, got {len(weights)} for {len(sources)}")
        sizes = [batch_sizes] * len(sources) if isinstance(batch_sizes, int) else list(batch_sizes)
        if len(sizes) != len(sources) or min(sizes) < 1:
            raise ValueError(f"batch_sizes must be positive, one per source, got {batch_sizes}")
        if num_batches < 1:
            raise ValueError(f"num_batches must be positive, got {num_batches}")
        if max_tries < 1:
            raise ValueError(f"max_tries must be positive, got {max_tries}")
        self.max_tries = max_tries
        weighted_schedule(weights, 1, schedule)  # validates weights and schedule
        self.sources = list(sources)
        self.weights = [float(w) for w in weights]
        self.batch_sizes = sizes
        self.collate_fn = collate_fn
        self.num_batches = num_batches
        self.schedule = schedule
        self.seed = seed
        self.shuffle = shuffle
        self.rank, self.world_size = distributed_info(rank, world_size)
        self.epoch = epoch
        self.advance_epoch = advance_epoch
        self.names = list(names) if names is not None else [f"#{i}" for i in range(len(sources))]
        for name, source in zip(self.names, self.sources):
            if not isinstance(source, IterableDataset) and len(source) < self.world_size:
                raise ValueError(
                    f"source {name} has {len(source)} samples, fewer than the {self.world_size} ranks"
                )

    def __len__(self) -> int:
        return self.num_batches

    def _permutation(self, source: int, epoch: int, npass: int) -> torch.Tensor:
        n = len(self.sources[source])
        if not self.shuffle:
            return torch.arange(n)
        key = ((self.seed * 1_000_003 + source) * 1_000_003 + epoch) * 1_000_003 + npass
        return torch.randperm(n, generator=torch.Generator().manual_seed(key % 2**63))

    def __iter__(self) -> Iterator[Any]:
        epoch = self.epoch
        if self.advance_epoch:
            self.epoch += 1
        order = weighted_schedule(self.weights, self.num_batches, self.schedule, self.seed, epoch)
        worker, num_workers = _worker_info()
        seen = [0] * len(self.sources)
        streams: dict[int, Iterator[Any]] = {}
        perms: dict[int, tuple[int, torch.Tensor]] = {}
        for step, source in enumerate(order):
            count = seen[source]
            seen[source] += 1
            if step % num_workers != worker:
                continue
            size = self.batch_sizes[source]
            dataset = self.sources[source]
            if isinstance(dataset, IterableDataset):
                if source not in streams:
                    streams[source] = replace_unreadable_stream(
                        _endless(dataset, self.names[source]), self.names[source], self.max_tries
                    )
                samples = [next(streams[source]) for _ in range(size)]
            else:
                per_rank = len(dataset) // self.world_size
                samples = []
                for position in range(count * size, (count + 1) * size):
                    npass, offset = divmod(position, per_rank)
                    if perms.get(source, (None,))[0] != npass:
                        perms[source] = (npass, self._permutation(source, epoch, npass))
                    perm = perms[source][1]
                    candidates = (  # this rank's next items of the pass replace a bad one
                        dataset[int(perm[self.rank + (offset + k) % per_rank * self.world_size])]
                        for k in range(per_rank)
                    )
                    samples.append(
                        first_readable(candidates, f"source {self.names[source]}", self.max_tries)
                    )
            yield self.collate_fn(samples)


def default_num_batches(sources: Sequence[Any], batch_sizes: Sequence[int], world_size: int) -> int:
    """Batches per epoch that read each map-style source about once on each rank."""
    total = 0
    for dataset, size in zip(sources, batch_sizes):
        if isinstance(dataset, IterableDataset):
            raise ValueError("streaming (webdataset) sources have no length: set batches_per_epoch")
        total += max(1, math.ceil(len(dataset) // world_size / size))
    return total
