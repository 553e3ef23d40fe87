"""Downloads against a real HTTP server on 127.0.0.1: caching, resume, errors, checksums,
trust on first use, offline mode, concurrent fetches and verification of the cache."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from flava_zoo.zoo.cli import main as zoo_main
from flava_zoo.zoo.download import (
    ChecksumError,
    DownloadError,
    FileSpec,
    OfflineError,
    cache_path,
    download,
    verify,
)

dl = importlib.import_module("flava_zoo.zoo.download")  # the module, not zoo.download()
PAYLOAD = bytes(range(256)) * 1200  # 300 KiB
PICKLED = b"\x80\x02" + PAYLOAD  # passes the first-use check of a .bin (a pickle's protocol byte)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class ServerState:
    root: Path
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    drop_once: dict[str, int] = field(default_factory=dict)
    """path -> bytes of the body to send before dropping the connection (once)."""
    fail: dict[str, list[int]] = field(default_factory=dict)
    """path -> HTTP statuses to answer, one per request, before serving the file."""
    delay: float = 0.0
    """seconds to sleep per 16 KiB of body (to make downloads overlap)."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def gets(self, path: str) -> list[str | None]:
        """The Range headers of the GET requests for ``path``."""
        return [rng for method, p, rng in self.requests if method == "GET" and p == path]


class Handler(BaseHTTPRequestHandler):
    """Static files with Range, If-Range, ETag, HEAD, and faults on demand."""

    def log_message(self, *args) -> None:
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        state: ServerState = self.server.state  # type: ignore[attr-defined]
        path = self.path.split("?")[0]
        with state.lock:
            state.requests.append((self.command, path, self.headers.get("Range")))
            statuses = state.fail.get(path) if body else None
            status = statuses.pop(0) if statuses else None
            drop = state.drop_once.pop(path, None) if body else None
        if status is not None:
            self.send_response(status)
            self.send_header("Retry-After", "0")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        file = state.root / path.lstrip("/")
        if not file.is_file():
            self.send_error(404, "Not Found")
            return
        data = file.read_bytes()
        etag = f'"{sha(data)[:16]}"'
        start = 0
        rng = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if rng and (if_range is None or if_range == etag):
            start = int(re.match(r"bytes=(\d+)-$", rng).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("ETag", etag)
        self.send_header("X-Repo-Commit", "0" * 40)  # what huggingface_hub expects of a Hub
        self.end_headers()
        if not body:
            return
        rest = data[start:]
        if drop is not None:
            self.wfile.write(rest[:drop])
            self.wfile.flush()
            self.close_connection = True
            return
        for i in range(0, len(rest), 16384):
            self.wfile.write(rest[i : i + 16384])
            if state.delay:
                time.sleep(state.delay)


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.state = ServerState(root)  # type: ignore[attr-defined]
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_port}"  # type: ignore[attr-defined]
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("FLAVA_ZOO_HOME", str(home))
    monkeypatch.delenv("FLAVA_ZOO_OFFLINE", raising=False)
    monkeypatch.delenv("FLAVA_ZOO_REGISTRY", raising=False)
    from flava_zoo import zoo

    zoo.reset_registry()
    yield home
    zoo.reset_registry()


def put(server, name: str, data: bytes = PAYLOAD) -> str:
    path = server.state.root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return f"{server.url}/{name}"


def standalone(body: str) -> str:
    """A script that loads download.py by path (stdlib only: no torch import in children).

    Its package and the package root are stand-in namespace modules over the real folders,
    so its relative import of ``flava_zoo.filecheck`` (stdlib only too) loads that file alone,
    not ``flava_zoo/__init__.py`` and torch."""
    zoo_dir = str(Path(dl.__file__).parent)
    return textwrap.dedent(
        f"""
        import importlib.util, sys, types
        for name, folder in (("flava_zoo", {str(Path(zoo_dir).parent)!r}), ("flava_zoo.zoo", {zoo_dir!r})):
            package = types.ModuleType(name)
            package.__path__ = [folder]
            sys.modules[name] = package
        spec = importlib.util.spec_from_file_location("flava_zoo.zoo.download", {dl.__file__!r})
        dl = importlib.util.module_from_spec(spec)
        sys.modules["flava_zoo.zoo.download"] = dl
        spec.loader.exec_module(dl)
        assert "torch" not in sys.modules
        """
    ) + textwrap.dedent(body)


def leftovers(target: Path) -> list[str]:
    """Temporary files left beside a cache target (the lock file is meant to stay)."""
    return sorted(
        p.name for p in target.parent.glob("*") if p.name.endswith((".part", ".validator", ".tmp"))
    )


def test_download_caches_and_checks(server, cache_home):
    url = put(server, "w/model.bin")
    spec = FileSpec(url=url, sha256=sha(PAYLOAD), size=len(PAYLOAD))
    path = download(spec, progress=False)
    assert path == cache_path(spec) and path.is_relative_to(cache_home)
    assert path.read_bytes() == PAYLOAD
    assert server.state.gets("/w/model.bin") == [None]
    again = download(spec, progress=False)
    assert again == path and len(server.state.requests) == 1  # served from the cache
    meta = json.loads(path.with_name(path.name + ".meta.json").read_text())
    assert meta["sha256"] == sha(PAYLOAD) and meta["trust"] == "registry"
    assert leftovers(path) == []


def test_default_cache_is_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("FLAVA_ZOO_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert dl.home() == tmp_path / "xdg" / "flava-zoo"


def test_resume_after_dropped_connection(server):
    url = put(server, "big.bin")
    server.state.drop_once["/big.bin"] = 100_000
    spec = FileSpec(url=url, sha256=sha(PAYLOAD))
    path = download(spec, progress=False, backoff=0.01)
    assert path.read_bytes() == PAYLOAD
    assert server.state.gets("/big.bin") == [None, "bytes=100000-"]
    assert leftovers(path) == []


def test_resume_starts_over_when_the_file_changed(server):
    """A .part from an older version of the file is not resumed: If-Range gets the new one whole."""
    url = put(server, "changed.bin")
    spec = FileSpec(url=url, sha256=sha(PAYLOAD))
    target = cache_path(spec)
    target.parent.mkdir(parents=True)
    target.with_name(target.name + ".part").write_bytes(b"stale" * 1000)
    target.with_name(target.name + ".part.validator").write_text('"an-old-etag"')
    assert download(spec, progress=False).read_bytes() == PAYLOAD
    assert server.state.gets("/changed.bin") == ["bytes=5000-"]  # asked, got 200 in full


def test_404_fails_at_once_and_leaves_nothing(server):
    spec = FileSpec(url=f"{server.url}/missing.bin")
    with pytest.raises(DownloadError, match=r"HTTP 404 .*|404") as err:
        download(spec, progress=False, backoff=0.01)
    assert "missing.bin" in str(err.value) and "404" in str(err.value)
    assert server.state.gets("/missing.bin") == [None]  # not retried
    target = cache_path(spec)
    assert not target.exists() and leftovers(target) == []


def test_transient_errors_are_retried_with_backoff(server):
    url = put(server, "flaky.bin")
    server.state.fail["/flaky.bin"] = [503]
    path = download(FileSpec(url=url, sha256=sha(PAYLOAD)), progress=False, backoff=0.01)
    assert path.read_bytes() == PAYLOAD
    assert len(server.state.gets("/flaky.bin")) == 2


def test_gives_up_after_the_retries(server):
    url = put(server, "down.bin")
    server.state.fail["/down.bin"] = [503, 500, 502]
    with pytest.raises(DownloadError, match="after 2 attempts.*HTTP Error 500"):
        download(FileSpec(url=url), progress=False, retries=1, backoff=0.01)
    assert len(server.state.gets("/down.bin")) == 2


def test_checksum_mismatch_deletes_the_download(server):
    url = put(server, "bad.bin")
    wrong = "0" * 64
    spec = FileSpec(url=url, sha256=wrong)
    with pytest.raises(ChecksumError) as err:
        download(spec, progress=False)
    message = str(err.value)
    assert wrong in message and sha(PAYLOAD) in message and url in message
    assert err.value.expected == wrong and err.value.actual == sha(PAYLOAD)
    target = cache_path(spec)
    assert not target.exists() and leftovers(target) == []


def test_offline_never_touches_the_network(server, monkeypatch):
    url = put(server, "o.bin")
    spec = FileSpec(url=url, sha256=sha(PAYLOAD))
    monkeypatch.setenv("FLAVA_ZOO_OFFLINE", "1")
    with pytest.raises(OfflineError) as err:
        download(spec, progress=False)
    assert str(cache_path(spec)) in str(err.value) and url in str(err.value)
    assert server.state.requests == []
    monkeypatch.delenv("FLAVA_ZOO_OFFLINE")
    download(spec, progress=False)
    monkeypatch.setenv("FLAVA_ZOO_OFFLINE", "1")
    assert download(spec, progress=False).read_bytes() == PAYLOAD  # the cache still works
    assert len(server.state.requests) == 1


def test_trust_on_first_use(server, cache_home):
    url = put(server, "tofu.bin", PICKLED)
    spec = FileSpec(url=url)  # the registry knows no digest
    path = download(spec, progress=False)
    trust = json.loads((cache_home / "trust.json").read_text())
    assert trust[url]["sha256"] == sha(PICKLED)
    assert verify(spec).status == "ok"
    # The file changes upstream; a fresh download is checked against the first digest.
    path.unlink()
    changed = b"\x80\x02" + PAYLOAD[::-1]
    put(server, "tofu.bin", changed)
    with pytest.raises(ChecksumError, match="recorded at first download") as err:
        download(spec, progress=False)
    assert sha(PICKLED) in str(err.value) and sha(changed) in str(err.value)
    assert not path.exists()


def test_local_paths_and_file_urls(tmp_path):
    source = tmp_path / "shared" / "w.safetensors"
    source.parent.mkdir()
    source.write_bytes(PAYLOAD)
    for url in (str(source), source.as_uri()):
        path = download(FileSpec(url=url, sha256=sha(PAYLOAD)), progress=False)
        assert path.read_bytes() == PAYLOAD and path != source
    with pytest.raises(DownloadError, match="no such file"):
        download(FileSpec(url=str(tmp_path / "nope.bin")), progress=False)


def test_hub_id_without_huggingface_hub_uses_the_url(server, monkeypatch):
    monkeypatch.setattr(dl, "_hub_download_fn", lambda: None)
    url = put(server, "facebook/flava-full/resolve/main/vocab.txt", b"[PAD]\n")
    spec = FileSpec(hub="facebook/flava-full", filename="vocab.txt", url=url)
    path = download(spec, progress=False)
    assert path.read_bytes() == b"[PAD]\n"
    assert path.parts[-5:] == ("hf", "facebook", "flava-full", "main", "vocab.txt")
    with pytest.raises(DownloadError, match="huggingface_hub"):
        download(FileSpec(hub="facebook/flava-full", filename="other.txt"), progress=False)


def test_hub_id_through_huggingface_hub(server, cache_home):
    """The real huggingface_hub client, pointed at the local server with HF_ENDPOINT."""
    pytest.importorskip("huggingface_hub")
    put(server, "facebook/flava-full/resolve/main/vocab.txt", PAYLOAD)
    script = standalone(
        f"""
        spec = dl.FileSpec(hub="facebook/flava-full", filename="vocab.txt", sha256="{sha(PAYLOAD)}")
        print(dl.download(spec, progress=False))
        """
    )
    env = {**os.environ, "HF_ENDPOINT": server.url, "HF_HUB_DISABLE_TELEMETRY": "1"}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    path = Path(out.stdout.strip().splitlines()[-1])
    assert path.read_bytes() == PAYLOAD and path.is_relative_to(cache_home)
    assert server.state.gets("/facebook/flava-full/resolve/main/vocab.txt") == [None]


def test_concurrent_downloads_end_with_one_good_copy(server, cache_home):
    url = put(server, "shared.bin")
    server.state.delay = 0.05  # about 1 s per download, so the two surely overlap
    script = standalone(
        f"""
        print(dl.download(dl.FileSpec(url="{url}", sha256="{sha(PAYLOAD)}"), progress=False))
        """
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in results]
    paths = {out.strip().splitlines()[-1] for out, _ in results}
    assert len(paths) == 1
    path = Path(paths.pop())
    assert path.read_bytes() == PAYLOAD
    assert server.state.gets("/shared.bin") == [None]  # the second process waited, then found it
    assert leftovers(path) == []


def test_concurrent_threads_share_the_lock(server):
    url = put(server, "threads.bin")
    server.state.delay = 0.005
    spec = FileSpec(url=url, sha256=sha(PAYLOAD))
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(download(spec, progress=False)))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and len(set(results)) == 1
    assert len(server.state.gets("/threads.bin")) == 1


def write_registry(tmp_path: Path, url: str, sha256: str | None) -> Path:
    registry = tmp_path / "registry.json"
    entry = {
        "architecture": "flava-tiny",
        "format": "flava-zoo",
        "license": "MIT",
        "config": {},
        "files": {"weights": {"url": url, "sha256": sha256, "size": None}},
    }
    registry.write_text(json.dumps({"format_version": 1, "models": {"flava-tiny.dl": entry}}))
    return registry


@pytest.mark.parametrize("pinned", [True, False], ids=["registry-digest", "first-use"])
def test_verify_catches_a_corrupted_cache(server, tmp_path, capsys, pinned):
    url = put(server, "v.bin", PICKLED)
    registry = write_registry(tmp_path, url, sha(PICKLED) if pinned else None)
    assert (
        zoo_main(["--registry", str(registry), "download", "flava-tiny.dl", "--no-progress"]) == 0
    )
    assert zoo_main(["--registry", str(registry), "verify", "flava-tiny.dl"]) == 0
    assert ": ok (" in capsys.readouterr().out
    path = cache_path(FileSpec(url=url))
    data = bytearray(path.read_bytes())
    data[1234] ^= 0xFF  # same size: only the digest can tell
    path.write_bytes(bytes(data))
    assert zoo_main(["--registry", str(registry), "verify"]) == 1
    err = capsys.readouterr().err
    assert (
        "CORRUPTED" in err and str(path) in err and sha(PICKLED) in err and sha(bytes(data)) in err
    )
    # Loading notices too: the file changed since its last check, so it is hashed again.
    with pytest.raises(ChecksumError, match="corrupted"):
        download(FileSpec(url=url, sha256=sha(PICKLED) if pinned else None), progress=False)
    # --force fetches a good copy again.
    assert (
        zoo_main(
            ["--registry", str(registry), "download", "flava-tiny.dl", "--force", "--no-progress"]
        )
        == 0
    )
    assert path.read_bytes() == PICKLED


def test_file_spec_validation():
    with pytest.raises(ValueError, match="url.*hub"):
        FileSpec()
    with pytest.raises(ValueError, match="sha256"):
        FileSpec(url="x", sha256="ABC")
    with pytest.raises(ValueError, match="files.weights: unknown field"):
        FileSpec.from_dict({"url": "x", "md5": "y"}, "files.weights")
