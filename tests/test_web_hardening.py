"""`srd web` against the faults an outside attack found (issue #15): DNS rebinding, stalled uploads, start-up
errors, outbox files served as documents, temps a killed server left, and password guessing.

Each test runs a real `srd web` process (no daemon: none of this needs one) and speaks HTTP to it.
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import make_image, srd_command, wait_for, write_config
from web_helpers import Client, WebProcess, free_port

from srd.web.auth import hash_password

pytestmark = pytest.mark.e2e

PASSWORD = "correct horse battery staple"


def _config(root: Path, **web: Any) -> Path:
    return write_config(root, web=web)


def _uploads_left(inbox: Path) -> list[str]:
    return [p.name for p in inbox.iterdir() if p.name.startswith(".srd-upload-")]


def test_requests_for_a_foreign_host_name_are_refused_before_any_handler(tmp_path: Path) -> None:
    """A rebound name (Host: attacker.example) gets 421 for the page, the API and an upload, and nothing is
    stored; the listen address, localhost and a name in web.allowed_hosts are served."""
    config = _config(tmp_path, allowed_hosts=["srd.example.com", "Photos.Example.org"])
    web = WebProcess(config)
    try:
        client = Client(web.port)
        port = web.port
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "srd.example.com", f"SRD.example.com:{port}",
                     "photos.example.org"):  # names compare case-insensitively, as DNS does
            assert client.get("/", {"host": host}).status == 200, host
        rebound = {"host": f"attacker.example:{port}", "origin": f"http://attacker.example:{port}"}
        for path in ("/", "/api/files", "/static/app.js"):
            reply = client.get(path, rebound)
            assert reply.status == 421, path
            assert b"csrf" not in reply.body.lower()
        image = make_image(Path("r.png"), seed=401)
        assert client.upload([("rebound.png", image)], headers=rebound).status == 421
        assert not (tmp_path / "in" / "rebound.png").exists()
    finally:
        web.stop()


def _trickle(port: int, csrf: str, pause_s: float, result: dict[str, Any]) -> None:
    """An upload whose body comes 10 bytes at a time, `pause_s` apart, until the server answers."""
    boundary = "trickle"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="slow.png"\r\n\r\n').encode()
    request = (f"POST /api/upload?inbox=0 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
               f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: 10000000\r\n"
               f"X-CSRF-Token: {csrf}\r\nCookie: srd_csrf={csrf}\r\n\r\n").encode() + head
    body = make_image(Path("s.png"), (64, 64), seed=402)
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request + body[:512])
        sock.settimeout(pause_s)
        answer = b""
        try:
            while time.monotonic() - start < 25:
                try:
                    data = sock.recv(4096)
                    if not data:
                        break  # the server closed the connection: its whole answer is in
                    answer += data
                except TimeoutError:
                    if answer:
                        continue
                    sock.sendall(b"0123456789")
        except OSError:
            pass
    result["answer"] = answer.decode("latin-1")
    result["seconds"] = time.monotonic() - start


def test_stalled_and_trickling_uploads_are_cut_and_free_their_slots(tmp_path: Path) -> None:
    """Four uploads trickling 10 B at a time hold every upload slot only until the rate check cuts them (408,
    their temps removed); an upload that sends nothing more is cut after the idle time; then uploads work."""
    config = _config(tmp_path, upload_idle_timeout_s=1.5, upload_min_bytes_per_s=2000)
    inbox = tmp_path / "in"
    web = WebProcess(config)
    try:
        client = Client(web.port)
        csrf = client.csrf()
        results: list[dict[str, Any]] = [{} for _ in range(4)]
        threads = [threading.Thread(target=_trickle, args=(web.port, csrf, 0.3, results[i])) for i in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(0.8)
        busy = client.upload([("during.png", make_image(Path("d.png"), seed=403))])
        assert busy.status == 503 and "busy" in busy.json()["error"]
        for thread in threads:
            thread.join(timeout=30)
        for result in results[:4]:
            assert result["answer"].startswith("HTTP/1.1 408") and "too slowly" in result["answer"], result
            assert result["seconds"] < 10
        idle: dict[str, Any] = {}
        _trickle(web.port, csrf, 60, idle)
        assert idle["answer"].startswith("HTTP/1.1 408") and "stalled" in idle["answer"]
        assert client.upload([("after.png", make_image(Path("a.png"), seed=404))]).status == 200
        assert _uploads_left(inbox) == []
    finally:
        web.stop()


def _start(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*srd_command(), "web", "--config", str(config), *args], capture_output=True, text=True,
                          timeout=30)


def test_start_up_faults_are_one_line_and_the_documented_exit_code(tmp_path: Path) -> None:
    """A port in use or an address not of this host: exit 10 with one line naming it, and no web_listening
    line; a port out of range: a usage error, exit 2; never a traceback."""
    config = _config(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        in_use = _start(config, "--port", str(taken.getsockname()[1]))
    assert in_use.returncode == 10, in_use.stderr
    assert "web listener" in in_use.stderr and "in use" in in_use.stderr
    assert "web_listening" not in in_use.stderr
    foreign = _start(config, "--listen", "192.0.2.1", "--port", str(free_port()))
    assert foreign.returncode == 10 and "192.0.2.1" in foreign.stderr
    for port in ("99999", "0"):
        bad = _start(config, "--port", port)
        assert bad.returncode == 2 and f"--port {port}" in bad.stderr
    for run in (in_use, foreign, bad):
        assert "Traceback" not in run.stderr


def test_outbox_files_are_never_served_as_a_document(tmp_path: Path) -> None:
    """An HTML or SVG file someone put in an outbox downloads as an attachment, typed as bytes; an image is
    served inline; every file carries nosniff and a sandboxing CSP."""
    config = _config(tmp_path)
    outbox = tmp_path / "in-out"
    outbox.mkdir()
    (outbox / "evil.html").write_text("<script src='/outbox/0/x.js'></script>")
    (outbox / "evil.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>")
    (outbox / "fine.png").write_bytes(make_image(Path("f.png"), seed=405))
    web = WebProcess(config)
    try:
        client = Client(web.port)
        for name in ("evil.html", "evil.svg"):
            reply = client.get(f"/outbox/0/{name}")
            assert reply.status == 200
            assert reply.headers["content-type"] == "application/octet-stream"
            assert reply.headers["content-disposition"].startswith("attachment")
        image = client.get("/outbox/0/fine.png")
        assert image.headers["content-type"] == "image/png" and "content-disposition" not in image.headers
        for reply in (image, client.get("/outbox/0/evil.html")):
            assert reply.headers["x-content-type-options"] == "nosniff"
            assert reply.headers["content-security-policy"].startswith("sandbox")
    finally:
        web.stop()


def test_upload_temps_a_killed_server_left_are_removed_at_start_and_live_ones_kept(tmp_path: Path) -> None:
    """At start, an upload temp no process owns is removed, even one only seconds old (a crash restarted by
    systemd); the temp of another `srd web`'s upload in progress, and the daemon's own temps, stay."""
    config = _config(tmp_path)
    inbox = tmp_path / "in"
    crashed, daemons = inbox / ".srd-upload-0123456789abcdef.part", inbox / ".srd-tmp-daemon.png"
    for path in (crashed, daemons):
        path.write_bytes(b"partial")
        os.utime(path, (time.time() - 5, time.time() - 5))
    first = WebProcess(config)
    try:
        client = Client(first.port)
        csrf = client.csrf()
        boundary = "live"
        with socket.create_connection(("127.0.0.1", first.port), timeout=10) as upload:
            upload.sendall((f"POST /api/upload?inbox=0 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: 100000\r\n"
                            f"X-CSRF-Token: {csrf}\r\nCookie: srd_csrf={csrf}\r\n\r\n--{boundary}\r\n"
                            'Content-Disposition: form-data; name="files"; filename="live.png"\r\n\r\n').encode()
                           + make_image(Path("l.png"), seed=406)[:100])
            live = wait_for(lambda: [n for n in _uploads_left(inbox) if n != crashed.name], 10, "the live temp")
            old = time.time() - 10
            os.utime(inbox / live[0], (old, old))  # as old as the crashed one: only its owner tells them apart
            second = WebProcess(config)
            second.stop()
            assert _uploads_left(inbox) == live
    finally:
        first.stop()
    assert not crashed.exists() and daemons.exists()


def test_password_guessing_is_logged_and_held_back(tmp_path: Path) -> None:
    """Wrong passwords (HTTP Basic or the form) are logged with the client and never the password; after three
    in a row the client gets 429 with Retry-After, even with the right one, until the wait is over."""
    config = _config(tmp_path, password_hash=hash_password(PASSWORD))
    web = WebProcess(config)
    try:
        client = Client(web.port)
        for i in range(3):
            wrong = base64.b64encode(f":guess{i}".encode()).decode()
            assert client.get("/api/files", {"authorization": f"Basic {wrong}"}).status == 401
        right = {"authorization": "Basic " + base64.b64encode(f":{PASSWORD}".encode()).decode()}
        held = client.get("/api/files", right)
        assert held.status == 429 and int(held.headers["retry-after"]) >= 1
        time.sleep(int(held.headers["retry-after"]))
        assert client.get("/api/files", right).status == 200
    finally:
        web.stop()
    log = "".join(web.lines)
    assert log.count("web_login_failed") == 3 and '"via": "basic"' in log and "127.0.0.1" in log
    assert "guess" not in log and PASSWORD not in log


def test_a_name_that_is_not_utf8_is_stored_readable_not_a_server_error(tmp_path: Path) -> None:
    """A file name in bytes that are not UTF-8 (a script's Latin-1) is stored with U+FFFD in their place, the
    rest kept; the server answers 200 and logs no traceback."""
    config = _config(tmp_path)
    web = WebProcess(config)
    try:
        client = Client(web.port)
        boundary = "rawname"
        body = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="'.encode()
                + "Ünï.png".encode("latin-1") + b'"\r\n\r\n' + make_image(Path("n.png"), seed=407)
                + f"\r\n--{boundary}--\r\n".encode())
        reply = client.request("POST", "/api/upload?inbox=0", body, {
            "content-type": f"multipart/form-data; boundary={boundary}", "x-csrf-token": client.csrf()})
        assert reply.status == 200, reply.body
        assert reply.json()["stored"][0]["name"] == "\ufffdn\ufffd.png"
        assert (tmp_path / "in" / "\ufffdn\ufffd.png").is_file()
    finally:
        web.stop()
    assert "Traceback" not in "".join(web.lines)
