"""Downloads that never cache a bad file: a server on 127.0.0.1 answering an HTML login page,
random bytes or a truncated safetensors body for a file whose digest nobody knows (trust on
first use), the repair commands (``download --force``, ``forget``), a remote registry that is
down while its copy is cached, and network errors that suggest ``FLAVA_ZOO_OFFLINE=1``."""

from __future__ import annotations

import hashlib
import json
import random
import threading
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as safetensors_save

from flava_zoo import zoo
from flava_zoo.weights import load_state_dict_file
from flava_zoo.zoo.cli import main as zoo_main
from flava_zoo.zoo.download import (
    ContentError,
    DownloadError,
    FileSpec,
    cache_path,
    download,
    verify,
)
from flava_zoo.zoo.registry import RegistryFallbackWarning, read_registry

NAME = "flava-tiny.faults"
GOOD = safetensors_save({"w": torch.arange(64, dtype=torch.float32), "b": torch.ones(3)})
LOGIN = b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Log in</body></html>\n"
RANDOM = random.Random(0).randbytes(4096)
UNRESOLVABLE = "http://flava-zoo-test.invalid"  # .invalid never resolves (RFC 6761)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Routes:
    answers: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    """path -> (body, Content-Type)."""
    requests: list[str] = field(default_factory=list)


class Handler(BaseHTTPRequestHandler):
    """Answers each path with the body and Content-Type it is given, whatever they are."""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        routes: Routes = self.server.routes  # type: ignore[attr-defined]
        routes.requests.append(self.path)
        if self.path not in routes.answers:
            self.send_error(404, "Not Found")
            return
        body, content_type = routes.answers[self.path]
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def start_server() -> ThreadingHTTPServer:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.routes = Routes()  # type: ignore[attr-defined]
    httpd.url = f"http://127.0.0.1:{httpd.server_port}"  # type: ignore[attr-defined]
    threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    return httpd


def stop_server(httpd: ThreadingHTTPServer) -> None:
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def server():
    httpd = start_server()
    yield httpd
    stop_server(httpd)


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("FLAVA_ZOO_HOME", str(home))
    monkeypatch.delenv("FLAVA_ZOO_OFFLINE", raising=False)
    monkeypatch.delenv("FLAVA_ZOO_REGISTRY", raising=False)
    zoo.reset_registry()
    yield home
    zoo.reset_registry()


def serve(server, path: str, body: bytes, content_type: str = "application/octet-stream") -> str:
    server.routes.answers[path] = (body, content_type)
    return server.url + path


def registry_for(tmp_path: Path, files: dict[str, str]) -> Path:
    """A registry with one entry, NAME, whose files have no sha256 (trust on first use)."""
    entry = {
        "architecture": "flava-tiny",
        "format": "flava-zoo",
        "license": "MIT",
        "config": {},
        "files": {role: {"url": url, "sha256": None, "size": None} for role, url in files.items()},
    }
    path = tmp_path / "registry.json"
    path.write_text(json.dumps({"format_version": 1, "models": {NAME: entry}}))
    return path


def trust_records(home: Path) -> dict:
    path = home / "trust.json"
    return json.loads(path.read_text()) if path.exists() else {}


def leftovers(target: Path) -> list[str]:
    if not target.parent.exists():
        return []
    return sorted(
        p.name for p in target.parent.iterdir() if p.name.endswith((".part", ".validator", ".tmp"))
    )


FAULTS = {
    # filename, body, Content-Type, what the error must say came back
    "html-login-page": ("pytorch_model.bin", LOGIN, "text/html; charset=utf-8", "text/html"),
    "html-content-type": ("model.safetensors", GOOD, "text/html", "text/html"),
    "random-bytes": ("model.safetensors", RANDOM, "application/octet-stream", "safetensors header"),
    "truncated-safetensors": (
        "model.safetensors",
        GOOD[:-40],
        "application/octet-stream",
        "truncated",
    ),
    "random-bytes-bin": ("pytorch_model.bin", RANDOM, "application/octet-stream", "first bytes"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_bad_answer_is_never_cached_or_trusted(server, tmp_path, cache_home, capsys, fault):
    filename, body, content_type, said = FAULTS[fault]
    url = serve(server, f"/w/{filename}", body, content_type)
    registry = registry_for(tmp_path, {"weights": url})
    args = ["--registry", str(registry)]
    assert zoo_main([*args, "download", NAME, "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert url in err and said in err and "no digest recorded" in err
    target = cache_path(FileSpec(url=url))
    assert not target.exists() and leftovers(target) == []
    assert url not in trust_records(cache_home)
    # A second try asks the server again (nothing was cached) and fails the same way.
    assert zoo_main([*args, "download", NAME, "--no-progress"]) == 1
    assert len(server.routes.requests) == 2
    # The server is fixed: --force (or a plain download) fetches the good file and trusts it.
    capsys.readouterr()
    good = GOOD if filename.endswith(".safetensors") else b"\x80\x02" + RANDOM
    serve(server, f"/w/{filename}", good)
    assert zoo_main([*args, "download", NAME, "--force", "--no-progress"]) == 0
    assert target.read_bytes() == good
    assert trust_records(cache_home)[url]["sha256"] == sha(good)
    assert zoo_main([*args, "verify", NAME]) == 0


def test_the_error_names_the_url_and_the_first_bytes(server):
    url = serve(server, "/w/model.safetensors", LOGIN, "text/html")
    with pytest.raises(ContentError) as err:
        download(FileSpec(url=url), progress=False)
    message = str(err.value)
    assert url in message and "HTML" in message and "<!DOCTYPE html>" in message
    assert "Content-Type text/html" in message


@pytest.mark.parametrize(
    "body, content_type, said",
    [
        (b"[PAD]\n[UNK]\x00\x00\x00", "text/plain", "NUL"),
        (b"[PAD]\n\xff\xfe[UNK]\n", "text/plain", "UTF-8"),
        (LOGIN, "text/html", "HTML"),
    ],
    ids=["nul", "not-utf8", "html"],
)
def test_a_vocabulary_is_checked_as_text(server, tmp_path, cache_home, body, content_type, said):
    weights = serve(server, "/w/model.safetensors", GOOD)
    vocab = serve(server, "/w/vocab.txt", body, content_type)
    zoo.add_registry(registry_for(tmp_path, {"weights": weights, "vocab": vocab}))
    with pytest.raises(ContentError, match=said) as err:
        zoo.download(NAME, ["vocab"], progress=False)
    assert vocab in str(err.value)
    assert not cache_path(FileSpec(url=vocab)).exists()
    assert vocab not in trust_records(cache_home)
    serve(server, "/w/vocab.txt", b"[PAD]\n[UNK]\n", "text/plain")
    assert zoo.download(NAME, ["vocab"], progress=False)["vocab"].read_bytes() == b"[PAD]\n[UNK]\n"


def cache_badly(url: str, body: bytes, home: Path) -> Path:
    """What an older flava-zoo left behind: a bad answer cached and recorded as trusted."""
    target = cache_path(FileSpec(url=url))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(body)
    home.mkdir(parents=True, exist_ok=True)
    (home / "trust.json").write_text(
        json.dumps({url: {"sha256": sha(body), "size": len(body), "first_seen": "then"}})
    )
    return target


def test_force_heals_a_bad_file_recorded_at_first_use(server, tmp_path, cache_home, capsys):
    url = serve(server, "/w/model.safetensors", GOOD)
    target = cache_badly(url, LOGIN, cache_home)
    registry = registry_for(tmp_path, {"weights": url})
    args = ["--registry", str(registry)]
    # verify no longer calls it ok; loading names the file and the command that repairs it.
    assert zoo_main([*args, "verify", NAME]) == 1
    err = capsys.readouterr().err
    assert "INVALID" in err and str(target) in err and f"zoo download {NAME} --force" in err
    with pytest.raises(ValueError) as loading:
        load_state_dict_file(zoo.download(NAME, ["weights"], progress=False)["weights"])
    message = str(loading.value)
    assert str(target) in message and f"flava-zoo zoo download {NAME} --force" in message
    assert "HTML" in message
    # --force fetches again and replaces the record made at first use.
    assert zoo_main([*args, "download", NAME, "--force", "--no-progress"]) == 0
    assert target.read_bytes() == GOOD
    assert trust_records(cache_home)[url]["sha256"] == sha(GOOD)
    assert torch.equal(load_state_dict_file(target)["b"], torch.ones(3))
    assert zoo_main([*args, "verify", NAME]) == 0


def test_a_truncated_cached_file_names_itself_on_load(server, tmp_path, cache_home):
    url = serve(server, "/w/model.safetensors", GOOD)
    target = cache_badly(url, GOOD[:-40], cache_home)
    zoo.add_registry(registry_for(tmp_path, {"weights": url}))
    with pytest.raises(ValueError) as err:
        load_state_dict_file(target)
    message = str(err.value)
    assert str(target) in message and "truncated" in message
    assert f"flava-zoo zoo download {NAME} --force" in message


def test_forget_drops_a_record(server, tmp_path, cache_home, capsys):
    url = serve(server, "/w/model.safetensors", GOOD)
    registry = registry_for(tmp_path, {"weights": url})
    args = ["--registry", str(registry)]
    assert zoo_main([*args, "download", NAME, "--no-progress"]) == 0
    assert trust_records(cache_home)[url]["sha256"] == sha(GOOD)
    capsys.readouterr()
    assert zoo_main([*args, "forget", NAME]) == 0
    assert sha(GOOD) in capsys.readouterr().out
    assert url not in trust_records(cache_home)
    # The file changes upstream on purpose: with the record gone the new one is accepted.
    newer = safetensors_save({"w": torch.zeros(8)})
    serve(server, "/w/model.safetensors", newer)
    cache_path(FileSpec(url=url)).unlink()
    assert zoo_main([*args, "download", NAME, "--no-progress"]) == 0
    assert trust_records(cache_home)[url]["sha256"] == sha(newer)
    assert zoo_main([*args, "forget", NAME, "--role", "weights"]) == 0
    assert zoo_main([*args, "forget", NAME]) == 0
    assert "no digest recorded" in capsys.readouterr().out


def test_an_unreachable_registry_uses_its_cached_copy(tmp_path, cache_home, capsys):
    httpd = start_server()
    weights = serve(httpd, "/zoo/model.safetensors", GOOD)
    registry = registry_for(tmp_path, {"weights": weights}).read_text()
    registry_url = serve(httpd, "/zoo/registry.json", registry.encode(), "application/json")
    assert zoo_main(["--registry", registry_url, "download", NAME, "--no-progress"]) == 0
    path = cache_path(FileSpec(url=weights))
    capsys.readouterr()
    stop_server(httpd)  # connection refused from now on
    zoo.reset_registry()
    with pytest.warns(RegistryFallbackWarning, match="using the copy cached") as warned:
        assert zoo_main(["--registry", registry_url, "download", NAME, "--no-progress"]) == 0
    assert registry_url in str(warned[0].message)
    assert str(path) in capsys.readouterr().out
    zoo.reset_registry()
    with pytest.warns(RegistryFallbackWarning):
        zoo.add_registry(registry_url)
    assert load_state_dict_file(zoo.download(NAME, progress=False)["weights"])["w"].shape == (64,)


def test_a_registry_answering_html_is_not_cached(server, cache_home):
    registry_url = serve(server, "/zoo/registry.json", LOGIN, "text/html")
    with pytest.raises(ValueError, match="not valid JSON.*DOCTYPE"):
        read_registry(registry_url)
    assert not (cache_home / "registries").exists()


@pytest.fixture
def attempts(monkeypatch):
    """Counts the requests urllib is asked to make."""
    calls: list[str] = []
    real = urllib.request.urlopen

    def counting(request, *args, **kwargs):
        calls.append(getattr(request, "full_url", request))
        return real(request, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", counting)
    return calls


def test_a_dns_failure_is_tried_once_and_suggests_offline_mode(attempts):
    url = f"{UNRESOLVABLE}/w/model.safetensors"
    with pytest.raises(DownloadError) as err:
        download(FileSpec(url=url), progress=False, backoff=0.01)
    message = str(err.value)
    assert "FLAVA_ZOO_OFFLINE=1" in message and url in message
    assert "flava-zoo-test.invalid" in message
    assert len(attempts) == 1
    attempts.clear()
    with pytest.raises(DownloadError, match="FLAVA_ZOO_OFFLINE=1"):
        read_registry(f"{UNRESOLVABLE}/registry.json")
    assert len(attempts) == 1


def test_connection_refused_suggests_offline_mode():
    httpd = start_server()
    url = f"{httpd.url}/w/model.safetensors"
    stop_server(httpd)
    with pytest.raises(DownloadError, match="after 2 attempts.*FLAVA_ZOO_OFFLINE=1") as err:
        download(FileSpec(url=url), progress=False, retries=1, backoff=0.01)
    assert url in str(err.value)


def test_good_files_of_every_kind_pass(server, cache_home, tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "zip.bin")
    torch.save({"w": torch.ones(2)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    for name in ("zip.bin", "legacy.pt"):
        url = serve(server, f"/w/{name}", (tmp_path / name).read_bytes())
        assert download(FileSpec(url=url), progress=False).is_file()
        assert verify(FileSpec(url=url)).status == "ok"
    url = serve(server, "/w/config.json", b'{"a": 1}', "application/json")
    assert download(FileSpec(url=url), progress=False).read_bytes() == b'{"a": 1}'
    url = serve(server, "/w/broken.json", b'{"a": ', "application/json")
    with pytest.raises(ContentError, match="not JSON"):
        download(FileSpec(url=url), progress=False)
    url = serve(server, "/w/cut.bin", (tmp_path / "zip.bin").read_bytes()[:-30])
    with pytest.raises(ContentError, match="central directory"):
        download(FileSpec(url=url), progress=False)
