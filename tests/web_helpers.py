"""A real `srd web` process and a small HTTP client for it (cookies, CSRF header, multipart uploads)."""

from __future__ import annotations

import http.client
import json
import os
import secrets
import socket
import subprocess
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

from daemon_helpers import srd_command, wait_for


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class WebProcess:
    """`srd web --config …` on a free port, its stderr collected (to check what it logs)."""

    def __init__(self, config: Path) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([*srd_command(), "web", "--config", str(config), "--port", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait_for(self._answers, 20, "srd web to answer\n" + "".join(self.lines))

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def _answers(self) -> bool:
        assert self.proc.poll() is None, "srd web exited:\n" + "".join(self.lines)
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self._reader.join(timeout=5)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """Speaks to one `srd web` like a browser would: keeps its cookies and sends the page's CSRF token."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, body: bytes | Iterable[bytes] | None = None,
                headers: dict[str, str] | None = None) -> Reply:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        sent = {"cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items()), **(headers or {})}
        try:
            connection.request(method, path, body=body, headers=sent,
                               encode_chunked=body is not None and not isinstance(body, bytes))
            response = connection.getresponse()
            reply = Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        finally:
            connection.close()
        for header in (v for k, v in response.getheaders() if k.lower() == "set-cookie"):
            for name, morsel in SimpleCookie(header).items():
                self.cookies[name] = morsel.value
        return reply

    def get(self, path: str, headers: dict[str, str] | None = None) -> Reply:
        return self.request("GET", path, headers=headers)

    def csrf(self) -> str:
        if "srd_csrf" not in self.cookies:
            self.get("/")
        return self.cookies["srd_csrf"]

    def upload(self, files: list[tuple[str, bytes]], inbox: int = 0, *, csrf: bool = True,
               headers: dict[str, str] | None = None) -> Reply:
        boundary, body = multipart(files)
        sent = {"content-type": f"multipart/form-data; boundary={boundary}"}
        if csrf:
            sent["x-csrf-token"] = self.csrf()
        sent.update(headers or {})
        return self.request("POST", f"/api/upload?inbox={inbox}", body, sent)


def multipart(files: list[tuple[str, bytes]]) -> tuple[str, bytes]:
    """A multipart/form-data body with each (file name, content) as a ``files`` part."""
    boundary = "srdtest" + secrets.token_hex(8)
    body = b""
    for name, content in files:
        body += (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
                 "Content-Type: application/octet-stream\r\n\r\n").encode() + content + b"\r\n"
    return boundary, body + f"--{boundary}--\r\n".encode()


def streamed_part(name: str, head: bytes, total: int, sent: list[int]) -> tuple[str, Iterator[bytes]]:
    """A multipart body of one file `total` bytes long, made as it is sent; `sent` counts the bytes taken."""
    boundary = "srdtest" + secrets.token_hex(8)

    def chunks() -> Iterator[bytes]:
        yield (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n\r\n').encode()
        yield head
        sent[0] += len(head)
        block = os.urandom(1 << 20)
        while sent[0] < total:
            yield block
            sent[0] += len(block)
        yield f"\r\n--{boundary}--\r\n".encode()

    return boundary, chunks()
