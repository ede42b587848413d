"""Tests for srd.engine.fetch against a real HTTP server on 127.0.0.1 serving the real zoo files.

The zoo files are read at test time from the project's shared model folder (never copied into the repo);
set SRD_TEST_ZOO_DIR to point elsewhere.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from srd.engine.fetch import BASE_URL_ENV, fetch_model
from srd.engine.zoo import ZOO, ZooModel, find_zoo
from srd.errors import ModelError

REPO_ROOT = Path(__file__).resolve().parents[1]
ZOO_DIR = Path(os.environ.get("SRD_TEST_ZOO_DIR", REPO_ROOT.parent / "shared" / "models" / "opencv-zoo"))


@dataclass
class Route:
    """What the server answers for one path."""

    body: bytes
    send: int | None = None  # bytes actually sent before closing; None sends the whole body
    declare_length: bool = True  # send Content-Length: len(body)
    stall: bool = False  # after sending, hang until the test ends (a server that stops responding)


class ZooServer:
    """A stdlib HTTP server in a thread; records every requested path."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[str] = []
        self.release = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests.append(self.path)
                route = owner.routes.get(self.path)
                if route is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                if route.declare_length:
                    self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                self.wfile.write(route.body[: route.send])
                self.wfile.flush()
                if route.stall:
                    owner.release.wait(10)
                self.close_connection = True

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)


@pytest.fixture
def server() -> Iterator[ZooServer]:
    srv = ZooServer()
    yield srv
    srv.close()


@pytest.fixture
def fsrcnn() -> tuple[ZooModel, bytes]:
    model = find_zoo("FSRCNN", 2)[0]
    return model, (ZOO_DIR / model.file).read_bytes()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_verifies_and_saves_under_final_name(
    tmp_path: Path, server: ZooServer, fsrcnn: tuple[ZooModel, bytes]
) -> None:
    """A good download lands under the zoo name with the catalogue sha256, reporting progress up to the size."""
    model, data = fsrcnn
    server.routes["/dl/FSRCNN_x2.pb"] = Route(data)
    calls: list[tuple[int, int]] = []
    dest = tmp_path / "models"
    path = fetch_model(model, dest, url=f"{server.base_url}/dl/FSRCNN_x2.pb",
                       progress=lambda n, t: calls.append((n, t)))
    assert path == dest / "FSRCNN_x2.pb"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == model.sha256
    assert _leftovers(dest) == ["FSRCNN_x2.pb"]
    assert calls[-1] == (model.size_bytes, model.size_bytes)
    assert [n for n, _ in calls] == sorted(n for n, _ in calls)


def test_mirror_base_url_from_environment(
    tmp_path: Path, server: ZooServer, fsrcnn: tuple[ZooModel, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SRD_ZOO_BASE_URL redirects downloads to <base>/<file> on a mirror."""
    model, data = fsrcnn
    server.routes["/mirror/FSRCNN_x2.pb"] = Route(data)
    monkeypatch.setenv(BASE_URL_ENV, f"{server.base_url}/mirror/")
    path = fetch_model(model, tmp_path)
    assert server.requests == ["/mirror/FSRCNN_x2.pb"]
    assert path.read_bytes() == data


def test_checksum_mismatch_raises_and_leaves_no_file(
    tmp_path: Path, server: ZooServer, fsrcnn: tuple[ZooModel, bytes]
) -> None:
    """Bytes of the right size but wrong content are rejected with both digests named; nothing is saved."""
    model, data = fsrcnn
    tampered = data[:-1] + bytes([data[-1] ^ 0xFF])
    server.routes["/FSRCNN_x2.pb"] = Route(tampered)
    with pytest.raises(ModelError) as info:
        fetch_model(model, tmp_path, url=f"{server.base_url}/FSRCNN_x2.pb")
    message = str(info.value)
    assert model.sha256 in message and hashlib.sha256(tampered).hexdigest() in message
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("declare_length", [True, False])
def test_wrong_size_raises_and_leaves_no_file(
    tmp_path: Path, server: ZooServer, fsrcnn: tuple[ZooModel, bytes], declare_length: bool
) -> None:
    """A larger file is rejected, from its Content-Length or, without one, once it exceeds the expected size."""
    model, data = fsrcnn
    server.routes["/FSRCNN_x2.pb"] = Route(data + b"<html>appended</html>", declare_length=declare_length)
    with pytest.raises(ModelError, match=f"expected {model.size_bytes}"):
        fetch_model(model, tmp_path, url=f"{server.base_url}/FSRCNN_x2.pb")
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("declare_length", [True, False])
def test_cut_connection_raises_and_leaves_no_file(
    tmp_path: Path, server: ZooServer, fsrcnn: tuple[ZooModel, bytes], declare_length: bool
) -> None:
    """A connection closed after half the file fails with the byte counts, leaving neither file nor temp.

    With Content-Length the client sees a premature EOF; without it the short total gives it away.
    """
    model, data = fsrcnn
    half = len(data) // 2
    server.routes["/FSRCNN_x2.pb"] = Route(data, send=half, declare_length=declare_length)
    with pytest.raises(ModelError, match=rf"cut off after {half} of {model.size_bytes} bytes"):
        fetch_model(model, tmp_path, url=f"{server.base_url}/FSRCNN_x2.pb")
    assert _leftovers(tmp_path) == []


def test_stalled_server_times_out_and_leaves_no_file(
    tmp_path: Path, server: ZooServer, fsrcnn: tuple[ZooModel, bytes]
) -> None:
    """A server that stops sending mid-file fails after timeout_s instead of hanging the daemon."""
    model, data = fsrcnn
    half = len(data) // 2
    server.routes["/FSRCNN_x2.pb"] = Route(data, send=half, stall=True)
    with pytest.raises(ModelError, match=rf"cut off after {half} of {model.size_bytes} bytes: timed out"):
        fetch_model(model, tmp_path, url=f"{server.base_url}/FSRCNN_x2.pb", timeout_s=0.5)
    assert _leftovers(tmp_path) == []


def test_http_error_is_a_model_error(tmp_path: Path, server: ZooServer, fsrcnn: tuple[ZooModel, bytes]) -> None:
    """A 404 (e.g. a moved file upstream) is reported as ModelError with the status and URL."""
    model, _ = fsrcnn
    url = f"{server.base_url}/gone/FSRCNN_x2.pb"
    with pytest.raises(ModelError, match=re.escape(url) + ".*HTTP 404"):
        fetch_model(model, tmp_path, url=url)
    assert _leftovers(tmp_path) == []


def test_present_file_with_right_checksum_is_not_downloaded(
    tmp_path: Path, server: ZooServer, fsrcnn: tuple[ZooModel, bytes]
) -> None:
    """An existing verified file is returned as is, without contacting the server."""
    model, data = fsrcnn
    existing = tmp_path / model.file
    existing.write_bytes(data)
    server.routes["/FSRCNN_x2.pb"] = Route(data)
    assert fetch_model(model, tmp_path, url=f"{server.base_url}/FSRCNN_x2.pb") == existing
    assert server.requests == []


def test_present_file_with_wrong_checksum_is_replaced(
    tmp_path: Path, server: ZooServer, fsrcnn: tuple[ZooModel, bytes]
) -> None:
    """A corrupt local copy of the right size is downloaded again and replaced by the verified file."""
    model, data = fsrcnn
    existing = tmp_path / model.file
    existing.write_bytes(bytes(len(data)))
    server.routes["/FSRCNN_x2.pb"] = Route(data)
    fetch_model(model, tmp_path, url=f"{server.base_url}/FSRCNN_x2.pb")
    assert server.requests == ["/FSRCNN_x2.pb"]
    assert existing.read_bytes() == data
    assert _leftovers(tmp_path) == [model.file]


@pytest.mark.parametrize("url", ["nonsense", "gopher://127.0.0.1/x", "http://127.0.0.1:1/FSRCNN_x2.pb"])
def test_bad_url_or_unreachable_server_is_a_model_error(
    tmp_path: Path, fsrcnn: tuple[ZooModel, bytes], url: str
) -> None:
    """A malformed URL or a refused connection is reported as ModelError, not a bare ValueError/OSError."""
    model, _ = fsrcnn
    with pytest.raises(ModelError, match=re.escape(url)):
        fetch_model(model, tmp_path, url=url, timeout_s=2)
    assert _leftovers(tmp_path) == []


def test_catalogue_hashes_are_well_formed() -> None:
    """Every catalogue sha256 is 64 lowercase hex digits and every size is positive."""
    for model in ZOO:
        assert re.fullmatch(r"[0-9a-f]{64}", model.sha256), model.file
        assert model.size_bytes > 0, model.file


@pytest.mark.parametrize("model", [m for m in ZOO if m.convention != "edsr"], ids=lambda m: m.file)
def test_catalogue_matches_real_zoo_files(model: ZooModel) -> None:
    """Size and sha256 of each non-EDSR entry equal those of the real file (EDSR is not available here)."""
    data = (ZOO_DIR / model.file).read_bytes()
    assert len(data) == model.size_bytes
    assert hashlib.sha256(data).hexdigest() == model.sha256
