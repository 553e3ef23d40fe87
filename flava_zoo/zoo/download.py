"""Fetching weight files into a local cache: atomic, resumable, locked and checksummed.

A :class:`FileSpec` names one file by URL (``http(s)://``, ``file://`` or a plain path) or
by Hugging Face Hub id (``repo``, ``filename``, ``revision``), with its sha256 and size
where known. :func:`download` puts it in the cache and returns the path:

- the cache lives under ``$FLAVA_ZOO_HOME``, else ``$XDG_CACHE_HOME/flava-zoo``, else
  ``~/.cache/flava-zoo``; a file's place follows from its source alone;
- bytes go to ``NAME.part`` and are renamed into place only once complete and checked, so
  a reader never sees half a file; a ``.part`` left by a dropped connection (or a killed
  process) is resumed with an HTTP ``Range`` request;
- transient failures (connection errors, HTTP 408/429/5xx) are retried with exponential
  backoff; other HTTP errors (404, 403...) fail at once;
- the whole file's sha256 is checked; a mismatch deletes the ``.part`` and raises
  :class:`ChecksumError` with both digests. Where the registry gives no digest, the first
  download's digest is recorded in ``trust.json`` (trust on first use) and every later
  download or :func:`verify` is checked against it; ``force=True`` fetches again and
  replaces that record, :func:`forget` drops it;
- before a first-use digest is recorded, the file is checked to be what it claims
  (:func:`content_problem`): a safetensors header parses and its tensors end where the file
  does, a torch zip's central directory reads, a legacy pickle starts with its protocol
  byte, a text file is UTF-8 without NUL bytes, a JSON file parses; an HTML page (a login
  or error page) or a ``text/html`` answer is refused. A file that fails is deleted and
  nothing is recorded, so a bad answer is never cached;
- a DNS failure is not retried (it is not transient); network errors suggest
  ``FLAVA_ZOO_OFFLINE=1``;
- an exclusive ``fcntl`` lock on ``NAME.lock`` makes concurrent fetches of one file (threads
  or processes) end with one good copy: the second waits and then finds the file cached;
- ``FLAVA_ZOO_OFFLINE=1`` never touches the network and names the missing path.

Hub ids go through ``huggingface_hub`` when it is installed (``pip install flava-zoo[hub]``:
it handles authentication and mirrors), else through the plain resolve URL. Everything else
is hand-written on ``urllib`` rather than delegated, so that ranges, resumption, atomic
renames, locking and digests behave exactly as described and are tested against a real
HTTP server.

This module needs only the standard library (and huggingface_hub for Hub ids), so a
process that only fetches files never pays for importing torch.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..filecheck import (  # noqa: F401  (re-exported: the zoo's names for them)
    KINDS,
    TEXT_SUFFIXES,
    WEIGHT_SUFFIXES,
    content_problem,
    kind_of,
)

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no cross-process lock
    fcntl = None  # type: ignore[assignment]

ENV_HOME = "FLAVA_ZOO_HOME"
ENV_OFFLINE = "FLAVA_ZOO_OFFLINE"
HF_ENDPOINT = "https://huggingface.co"
CHUNK = 1 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SAFE = re.compile(r"[^A-Za-z0-9._-]")
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class DownloadError(RuntimeError):
    """A file could not be fetched (HTTP error, too many failed attempts, bad size)."""


class ChecksumError(DownloadError):
    """A file's sha256 is not the one expected; both digests are in the message."""

    def __init__(self, message: str, expected: str, actual: str) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class OfflineError(DownloadError):
    """``FLAVA_ZOO_OFFLINE`` is set and the file is not in the cache."""


class ContentError(DownloadError):
    """A file is not what its role says (an HTML page, random or truncated bytes...)."""


@dataclass(frozen=True)
class FileSpec:
    """One file of a zoo entry: where to get it and, where known, its sha256 and size.

    ``url`` is ``http(s)://``, ``file://`` or a plain path. ``hub`` is a Hugging Face Hub
    repository id with ``filename`` and ``revision``; when both are given the Hub is used
    through ``huggingface_hub`` if installed, and ``url`` otherwise.
    """

    url: str | None = None
    hub: str | None = None
    filename: str | None = None
    revision: str = "main"
    sha256: str | None = None
    size: int | None = None

    def __post_init__(self) -> None:
        if not self.url and not self.hub:
            raise ValueError("a file needs a 'url' or a 'hub' repository id")
        if self.hub and not self.filename:
            raise ValueError(f"hub file {self.hub!r} needs a 'filename'")
        if self.sha256 is not None and not _SHA256.match(self.sha256):
            raise ValueError(f"sha256 must be 64 lowercase hex digits, got {self.sha256!r}")
        if self.size is not None and (
            isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0
        ):
            raise ValueError(f"size must be a non-negative integer, got {self.size!r}")

    @property
    def source(self) -> str:
        """The file's identity: ``hf://REPO@REVISION/FILENAME`` for a Hub file, else its URL."""
        if self.hub:
            return f"hf://{self.hub}@{self.revision}/{self.filename}"
        return str(self.url)

    @property
    def name(self) -> str:
        """The file's base name."""
        if self.hub:
            return Path(str(self.filename)).name
        return Path(urllib.parse.urlparse(str(self.url)).path or str(self.url)).name

    @classmethod
    def from_dict(cls, data: Any, where: str = "file") -> FileSpec:
        """Build from a registry's JSON object; errors name ``where`` and the field."""
        if isinstance(data, str):
            data = {"url": data}
        if not isinstance(data, Mapping):
            raise ValueError(
                f"{where} must be an object or a URL string, got {type(data).__name__}"
            )
        known = {"url", "hub", "filename", "revision", "sha256", "size"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {unknown}; valid: {sorted(known)}")
        try:
            return cls(
                **{k: v for k, v in data.items() if v is not None or k in ("sha256", "size")}
            )
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        """The registry JSON form (unknown digest and size kept as ``null``)."""
        out: dict[str, Any] = {}
        if self.hub:
            out.update(hub=self.hub, filename=self.filename, revision=self.revision)
        if self.url:
            out["url"] = self.url
        out.update(sha256=self.sha256, size=self.size)
        return out


@dataclass
class VerifyResult:
    """What :func:`verify` found for one file: ``status`` is ``ok``, ``missing``, ``mismatch``
    (its sha256 is not the expected one) or ``invalid`` (the registry pins no digest and the
    file is not what it claims to be, see :func:`content_problem`; ``detail`` says why, and
    no digest is recorded for it)."""

    spec: FileSpec
    path: Path
    status: str
    expected: str | None = None
    actual: str | None = None
    trust: str | None = None
    """Where ``expected`` came from: ``registry`` or ``first use``."""
    detail: str | None = None
    """Why an ``invalid`` file was refused."""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def home() -> Path:
    """The cache root: ``$FLAVA_ZOO_HOME``, else ``$XDG_CACHE_HOME/flava-zoo``, else ``~/.cache/flava-zoo``."""
    if os.environ.get(ENV_HOME):
        return Path(os.environ[ENV_HOME]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "flava-zoo"


def is_offline() -> bool:
    """Whether ``FLAVA_ZOO_OFFLINE`` is set to 1, true, yes or on."""
    return os.environ.get(ENV_OFFLINE, "").strip().lower() in ("1", "true", "yes", "on")


def _scheme(url: str) -> str:
    scheme = urllib.parse.urlparse(url).scheme.lower()
    return scheme if scheme in ("http", "https", "file") else ""


def local_path(url: str) -> Path:
    """The filesystem path of a ``file://`` URL or a plain path."""
    if _scheme(url) == "file":
        parsed = urllib.parse.urlparse(url)
        return Path(urllib.request.url2pathname(parsed.path))
    return Path(url).expanduser()


def _safe(part: str) -> str:
    part = _SAFE.sub("_", part)
    return "_" if part in ("", ".", "..") else part


def cache_path(spec: FileSpec, root: Path | None = None) -> Path:
    """Where ``spec`` lives in the cache; it depends only on the file's source."""
    base = (root or home()) / "files"
    if spec.hub:
        parts = ["hf", *spec.hub.split("/"), spec.revision, *str(spec.filename).split("/")]
        return base.joinpath(*map(_safe, parts))
    url = str(spec.url)
    if _scheme(url) in ("http", "https"):
        parsed = urllib.parse.urlparse(url)
        parts = [parsed.netloc, *[p for p in parsed.path.split("/") if p]]
        if parsed.query:
            parts[-1] += "-" + hashlib.sha256(parsed.query.encode()).hexdigest()[:8]
        return base.joinpath(*map(_safe, parts))
    resolved = str(local_path(url).resolve())
    key = hashlib.sha256(resolved.encode()).hexdigest()[:16]
    return base / "local" / key / _safe(Path(resolved).name)


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``PATH.lock`` (``fcntl.flock``; threads and processes).

    The lock file stays behind: removing it would let a third process lock a new inode
    while a second still waits on the old one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a+b") as handle:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# --- trust on first use -------------------------------------------------------------------


def _trust_file(root: Path) -> Path:
    return root / "trust.json"


def trusted_digest(source: str, root: Path | None = None) -> str | None:
    """The sha256 recorded at the first download of ``source``, if any."""
    records = _read_json(_trust_file(root or home())) or {}
    record = records.get(source)
    return record.get("sha256") if isinstance(record, dict) else None


def _record_trust(source: str, digest: str, size: int, root: Path, replace: bool = False) -> None:
    path = _trust_file(root)
    with file_lock(path):
        records = _read_json(path) or {}
        record = {"sha256": digest, "size": size, "first_seen": _now()}
        old = records.get(source)
        if replace and isinstance(old, dict) and old.get("sha256") != digest:
            print(
                f"flava-zoo: {source}: replacing the digest recorded at first download "
                f"({old.get('sha256')}) with {digest} (download --force)",
                file=sys.stderr,
            )
            records[source] = record
        else:
            records.setdefault(source, record)
        _write_json(path, records)


def forget(spec: FileSpec, *, root: str | os.PathLike | None = None) -> str | None:
    """Drop the digest recorded at the first download of ``spec`` (``trust.json``) and the
    check record of its cached copy, so that the next download or :func:`verify` checks
    the file's content and records its digest anew. Returns the digest dropped, if any.

    A digest pinned by the registry cannot be forgotten: it is not recorded here.
    """
    cache_root = Path(root) if root is not None else home()
    path = _trust_file(cache_root)
    with file_lock(path):
        records = _read_json(path) or {}
        record = records.pop(spec.source, None)
        if record is not None:
            _write_json(path, records)
    _meta_path(cache_path(spec, cache_root)).unlink(missing_ok=True)
    return record.get("sha256") if isinstance(record, dict) else None


def _expected(spec: FileSpec, root: Path) -> tuple[str | None, str | None]:
    if spec.sha256:
        return spec.sha256, "registry"
    digest = trusted_digest(spec.source, root)
    return (digest, "first use") if digest else (None, None)


# --- what a file claims to be: flava_zoo.filecheck (below the zoo: weights.py uses it too) ---

# --- progress ------------------------------------------------------------------------------


class _Progress:
    """tqdm when importable, else a line at start and end; nothing when disabled."""

    def __init__(self, enabled: bool, total: int | None, initial: int, label: str) -> None:
        self.bar = None
        self.enabled = enabled
        self.label = label
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            size = f" ({total / 2**20:.1f} MiB)" if total else ""
            print(f"downloading {label}{size}", file=sys.stderr)
            return
        self.bar = tqdm(
            total=total,
            initial=initial,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=label,
            leave=False,
        )

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self, done: bool) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and done:
            print(f"downloaded {self.label}", file=sys.stderr)


# --- fetchers ------------------------------------------------------------------------------


def _user_agent() -> str:
    try:
        from importlib.metadata import version

        return f"flava-zoo/{version('flava-zoo')} python-urllib"
    except Exception:  # not installed (e.g. run from a source tree)
        return "flava-zoo python-urllib"


def _retry_after(err: urllib.error.HTTPError) -> float | None:
    value = err.headers.get("Retry-After") if err.headers else None
    try:
        return min(float(value), 60.0) if value is not None else None
    except ValueError:
        return None


def _content_range_start(value: str | None) -> int | None:
    match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", value or "")
    return int(match.group(1)) if match else None


def _is_dns_failure(err: BaseException) -> bool:
    """Whether ``err`` is a failed name lookup (``socket.gaierror`` inside a ``URLError``)."""
    reason = err.reason if isinstance(err, urllib.error.URLError) else err
    return isinstance(reason, socket.gaierror)


def _network_failure(url: str, err: BaseException, attempts: int) -> DownloadError:
    """The error for a request that never got an HTTP answer; it suggests offline mode."""
    hint = f"if this machine is offline, set {ENV_OFFLINE}=1 to use only what is cached"
    dns_hint = hint[0].upper() + hint[1:]
    if _is_dns_failure(err):
        host = urllib.parse.urlparse(url).hostname
        reason = err.reason if isinstance(err, urllib.error.URLError) else err
        return DownloadError(
            f"GET {url} failed: cannot resolve host {host!r} ({reason}); not retried. {dns_hint}"
        )
    if isinstance(err, urllib.error.HTTPError):
        return DownloadError(f"GET {url} failed after {attempts} attempts: {err}")
    return DownloadError(f"GET {url} failed after {attempts} attempts: {err}; {hint}")


def _fetch_http(
    url: str,
    part: Path,
    *,
    progress: bool,
    retries: int,
    backoff: float,
    timeout: float,
) -> str | None:
    """Download ``url`` into ``part``, resuming what ``part`` already holds; returns the
    answer's ``Content-Type``."""
    validator_file = part.with_name(part.name + ".validator")
    failures = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": _user_agent(), "Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
            validator = validator_file.read_text() if validator_file.exists() else ""
            if validator:
                headers["If-Range"] = validator
        bar: _Progress | None = None
        wait: float | None = None
        try:
            request = urllib.request.Request(url, headers=headers)
            with urllib.request.urlopen(request, timeout=timeout) as response:
                resumed = have > 0 and response.status == 206
                if resumed and _content_range_start(response.headers.get("Content-Range")) != have:
                    raise http.client.HTTPException("server resumed at the wrong offset")
                if not resumed:
                    have = 0
                content_type = response.headers.get("Content-Type")
                validator = response.headers.get("ETag") or response.headers.get("Last-Modified")
                if validator and not validator.startswith("W/"):
                    validator_file.write_text(validator)
                length = response.headers.get("Content-Length")
                total = have + int(length) if length is not None else None
                bar = _Progress(progress, total, have, Path(part.name).stem)
                with open(part, "ab" if resumed else "wb") as handle:
                    while chunk := response.read(CHUNK):
                        handle.write(chunk)
                        bar.update(len(chunk))
                if total is not None and part.stat().st_size < total:
                    raise http.client.IncompleteRead(b"", total - part.stat().st_size)
            bar.close(done=True)
            bar = None
            validator_file.unlink(missing_ok=True)
            return content_type
        except urllib.error.HTTPError as err:
            err.close()
            if err.code == 416 and have:
                part.unlink(missing_ok=True)  # the partial file is not a prefix any more
                last: Exception = err
            elif err.code in _RETRY_STATUS:
                last, wait = err, _retry_after(err)
            else:
                raise DownloadError(f"GET {url} failed: HTTP {err.code} {err.reason}") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
            if _is_dns_failure(err):
                raise _network_failure(url, err, failures + 1) from None
            last = err
        finally:
            if bar is not None:
                bar.close(done=False)
        failures += 1
        if failures > retries:
            raise _network_failure(url, last, failures) from None
        time.sleep(wait if wait is not None else backoff * 2 ** (failures - 1))


def _fetch_local(url: str, part: Path, *, progress: bool) -> None:
    source = local_path(url)
    if not source.is_file():
        raise DownloadError(f"{url}: no such file {source}")
    bar = _Progress(progress, source.stat().st_size, 0, source.name)
    try:
        with open(source, "rb") as src, open(part, "wb") as dst:
            while chunk := src.read(CHUNK):
                dst.write(chunk)
                bar.update(len(chunk))
    finally:
        bar.close(done=True)


def _hub_download_fn() -> Callable[..., str] | None:
    """``huggingface_hub.hf_hub_download`` when installed (the ``hub`` extra), else ``None``."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        return None
    return hf_hub_download


def _fetch_hub(spec: FileSpec, target: Path, fetch: Callable[..., str], force: bool) -> Path:
    """Fetch through huggingface_hub into the folder of ``target`` (its own atomic, resumable
    download with its own progress bar); return the path, moved to ``NAME.part``."""
    local_dir = target.parents[len(Path(str(spec.filename)).parts) - 1]
    kwargs: dict[str, Any] = {
        "repo_id": spec.hub,
        "filename": spec.filename,
        "revision": spec.revision,
        "local_dir": str(local_dir),
    }
    if force:
        kwargs["force_download"] = True
    try:
        path = Path(fetch(**kwargs))
    except Exception as err:  # huggingface_hub raises many types; name the file
        raise DownloadError(f"{spec.source}: huggingface_hub download failed: {err}") from err
    part = target.with_name(target.name + ".part")
    if path.resolve() != target.resolve():
        shutil.copyfile(path, part)
    else:
        os.replace(path, part)
    return part


# --- public API ------------------------------------------------------------------------------


def _meta_path(target: Path) -> Path:
    return target.with_name(target.name + ".meta.json")


def _write_meta(target: Path, spec: FileSpec, digest: str, trust: str) -> None:
    stat = target.stat()
    _write_json(
        _meta_path(target),
        {
            "source": spec.source,
            "sha256": digest,
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "trust": trust,
            "checked": _now(),
        },
    )


def _corrupt(target: Path, spec: FileSpec, expected: str, actual: str, trust: str) -> ChecksumError:
    return ChecksumError(
        f"cached file {target} is corrupted: its sha256 is {actual}, expected {expected} "
        f"({'from the registry' if trust == 'registry' else 'recorded at first download'}; "
        f"source {spec.source}). Delete it or download again with force=True "
        "(`flava-zoo zoo download NAME --force`).",
        expected,
        actual,
    )


def _resolve_kind(spec: FileSpec, kind: str | None) -> str | None:
    return kind_of(spec.name) if kind == "auto" else kind


def _check_cached(target: Path, spec: FileSpec, root: Path, kind: str | None) -> None:
    """Trust a cached file whose size and mtime match the record of its last full check;
    otherwise hash it again and compare with the expected digest (with none known, check
    its content before recording its digest)."""
    expected, trust = _expected(spec, root)
    meta = _read_json(_meta_path(target)) or {}
    stat = target.stat()
    unchanged = meta.get("size") == stat.st_size and meta.get("mtime_ns") == stat.st_mtime_ns
    if unchanged and (expected is None or meta.get("sha256") == expected):
        return
    actual = sha256_file(target)
    if expected is not None and actual != expected:
        raise _corrupt(target, spec, expected, actual, str(trust))
    if expected is None:
        problem = content_problem(target, kind, name=spec.name)
        if problem:
            raise ContentError(
                f"cached file {target} (source {spec.source}) is not a {kind} file: {problem}; "
                "its digest was not recorded. Download it again with force=True "
                "(`flava-zoo zoo download NAME --force`)."
            )
        _record_trust(spec.source, actual, stat.st_size, root)
    _write_meta(target, spec, actual, trust or "first use")


def download(
    spec: FileSpec,
    *,
    root: str | os.PathLike | None = None,
    force: bool = False,
    progress: bool = True,
    retries: int = 4,
    backoff: float = 0.5,
    timeout: float = 60.0,
    kind: str | None = "auto",
) -> Path:
    """Return the cached path of ``spec``, downloading and checking it first if needed.

    ``root`` overrides the cache root (default :func:`home`); ``force`` fetches again even
    when cached (and replaces a digest recorded at first use; a registry's digest still
    holds); ``retries`` extra attempts follow transient failures after ``backoff``,
    ``2 * backoff``, ... seconds (or the server's ``Retry-After``); a DNS failure is not
    retried. ``kind`` (one of :data:`KINDS`; ``"auto"``: by the file's suffix, see
    :func:`kind_of`; ``None``: no check) is what the file must be before a first-use
    digest is recorded (:func:`content_problem`). Raises :class:`OfflineError`,
    :class:`ChecksumError`, :class:`ContentError` or :class:`DownloadError`.
    """
    kind = _resolve_kind(spec, kind)
    cache_root = Path(root) if root is not None else home()
    target = cache_path(spec, cache_root)
    offline = is_offline()
    if offline and force:
        raise OfflineError(f"{ENV_OFFLINE} is set: cannot download {spec.source} again")
    if offline and not target.is_file():
        raise OfflineError(
            f"{ENV_OFFLINE} is set and {spec.source} is not in the cache: expected it at {target}"
        )
    with file_lock(target):
        if target.is_file() and not force:
            _check_cached(target, spec, cache_root, kind)
            return target
        if offline:  # another process removed it meanwhile
            raise OfflineError(f"{ENV_OFFLINE} is set and {target} is missing")
        part = target.with_name(target.name + ".part")
        if force:
            part.unlink(missing_ok=True)
        hub = _hub_download_fn() if spec.hub else None
        content_type: str | None = None
        if hub is not None:
            part = _fetch_hub(spec, target, hub, force)
        elif spec.hub and not spec.url:
            raise DownloadError(
                f"{spec.source} needs huggingface_hub (pip install 'flava-zoo[hub]') or a 'url'"
            )
        elif _scheme(str(spec.url)) in ("http", "https"):
            content_type = _fetch_http(
                str(spec.url),
                part,
                progress=progress,
                retries=retries,
                backoff=backoff,
                timeout=timeout,
            )
        else:
            _fetch_local(str(spec.url), part, progress=progress)
        actual = sha256_file(part)
        size = part.stat().st_size
        expected, trust = _expected(spec, cache_root)
        replace = force and trust == "first use"
        if replace:  # --force: the record of the first use is what is being repaired
            expected, trust = None, None
        if expected is not None and actual != expected:
            problem = content_problem(part, kind, name=spec.name, content_type=content_type)
            _discard(part)
            raise ChecksumError(
                f"{spec.source}: sha256 mismatch: expected {expected} "
                f"({'registry' if trust == 'registry' else 'recorded at first download'}), "
                f"got {actual}; the download was deleted"
                + (f" ({problem})" if problem else "")
                + (
                    ". If the file changed upstream on purpose, download it again with "
                    "force=True (`flava-zoo zoo download NAME --force`) or drop the record "
                    "(`flava-zoo zoo forget NAME`)"
                    if trust == "first use"
                    else ""
                ),
                expected,
                actual,
            )
        if spec.size is not None and size != spec.size:
            _discard(part)
            raise DownloadError(f"{spec.source}: expected {spec.size} bytes, got {size}; deleted")
        if expected is None:
            problem = content_problem(part, kind, name=spec.name, content_type=content_type)
            if problem:
                _discard(part)
                raise ContentError(
                    f"{spec.source} is not a {kind} file: {problem}. The download was deleted "
                    "and no digest recorded"
                    + (f"; the cached copy {target} was kept" if target.is_file() else "")
                    + ". Check the URL, or the credentials the server wants."
                )
        os.replace(part, target)
        if expected is None:
            _record_trust(spec.source, actual, size, cache_root, replace=replace)
        _write_meta(target, spec, actual, trust or "first use")
        return target


def _discard(part: Path) -> None:
    """Delete a rejected download and its resume validator (a bad body is never resumed)."""
    part.unlink(missing_ok=True)
    part.with_name(part.name + ".validator").unlink(missing_ok=True)


def verify(
    spec: FileSpec, *, root: str | os.PathLike | None = None, kind: str | None = "auto"
) -> VerifyResult:
    """Hash the cached copy of ``spec`` in full and compare it with the registry's digest,
    or with the one recorded at its first download. Never downloads. Unless the registry
    pins its digest, the file's content is also checked as ``kind`` (see :func:`download`):
    one that fails is ``invalid`` (a bad answer recorded by an older flava-zoo, say) and,
    with no digest recorded yet, nothing is recorded."""
    kind = _resolve_kind(spec, kind)
    cache_root = Path(root) if root is not None else home()
    target = cache_path(spec, cache_root)
    expected, trust = _expected(spec, cache_root)
    if not target.is_file():
        return VerifyResult(spec, target, "missing", expected, None, trust)
    with file_lock(target):
        actual = sha256_file(target)
    if trust != "registry":
        problem = content_problem(target, kind, name=spec.name)
        if problem:
            return VerifyResult(spec, target, "invalid", expected, actual, trust, detail=problem)
    if expected is None:
        _record_trust(spec.source, actual, target.stat().st_size, cache_root)
        expected, trust = actual, "first use"
    if actual != expected:
        return VerifyResult(spec, target, "mismatch", expected, actual, trust)
    _write_meta(target, spec, actual, str(trust))
    return VerifyResult(spec, target, "ok", expected, actual, trust)


def read_text(url: str, *, timeout: float = 30.0, retries: int = 2) -> str:
    """Read a small text resource (a registry) from a URL or path; no caching, no digest."""
    if _scheme(url) not in ("http", "https"):
        path = local_path(url)
        if not path.is_file():
            raise FileNotFoundError(f"no such file {path}")
        return path.read_text(encoding="utf-8")
    failures = 0
    while True:
        try:
            request = urllib.request.Request(url, headers={"User-Agent": _user_agent()})
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.read().decode("utf-8")
        except urllib.error.HTTPError as err:
            err.close()
            if err.code not in _RETRY_STATUS:
                raise DownloadError(f"GET {url} failed: HTTP {err.code} {err.reason}") from None
            last: Exception = err
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
            if _is_dns_failure(err):
                raise _network_failure(url, err, failures + 1) from None
            last = err
        failures += 1
        if failures > retries:
            raise _network_failure(url, last, failures) from None
        time.sleep(0.5 * 2 ** (failures - 1))
