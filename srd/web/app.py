"""The Starlette application of `srd web`: pages, the upload endpoint, the state API and result downloads."""

from __future__ import annotations

import base64
import binascii
import hashlib
import html
import re
import secrets
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from string import Template
from typing import Any
from urllib.parse import quote, urlsplit

import anyio
import structlog
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import ClientDisconnect, Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from srd.config import Config
from srd.daemon.scan import IgnoreRules
from srd.web.auth import Backoff, Sessions, check_password, same_secret
from srd.web.board import Board
from srd.web.downloads import NotServed, open_result
from srd.web.hosts import HostCheck
from srd.web.intake import Stored, UploadLimits, UploadRefused
from srd.web.receiver import UploadReceiver

log = structlog.get_logger(__name__)

SESSION_COOKIE = "srd_session"
CSRF_COOKIE = "srd_csrf"
CSRF_HEADER = "x-csrf-token"
# Uploads at once: each holds a temp file open; beyond them an upload is answered 503 "busy".
UPLOAD_SLOTS = 4
# Results shown in the page; anything else in an outbox (HTML, SVG, scripts) is only ever downloaded.
_INLINE_TYPES = {"image/png", "image/jpeg", "image/webp", "image/gif", "image/avif", "image/bmp", "image/tiff"}
# On every file sent: even if a browser renders one as a document, it gets no script and no origin.
_FILE_CSP = "sandbox; default-src 'none'; img-src 'self'; style-src 'unsafe-inline'"

_SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' blob:; object-src 'none'; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
}
_OPEN_PATHS = ("/login", "/static/")
_SHA256 = re.compile("[0-9a-f]{64}")


@dataclass(frozen=True)
class Access:
    """May this request go on; if not and `retry_after_s` > 0, its client guessed wrong too often lately."""

    granted: bool
    retry_after_s: float = 0.0


def _page(name: str, **values: str) -> str:
    text = resources.files("srd.web").joinpath("static", name).read_text(encoding="utf-8")
    return Template(text).substitute({key: html.escape(value) for key, value in values.items()})


class WebApp:
    """Holds what every request shares: the config, the board, the sessions and the upload slots."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.web = config.web
        self.board = Board(config)
        self.sessions = Sessions()
        self.limits = UploadLimits(max_file_bytes=self.web.max_file_bytes or config.max_input_bytes,
                                   max_input_pixels=config.max_input_pixels)
        self.rules = [IgnoreRules(inbox.ignore) for inbox in config.inboxes]
        self.slots = anyio.Semaphore(UPLOAD_SLOTS)
        # sha256 of the last password that passed scrypt, so HTTP Basic clients don't pay scrypt per request.
        self._known_good: str | None = None
        # One scrypt check at a time: each takes 16 MB, and a flood of wrong passwords must not add them up
        # (it also makes guessing no faster with more connections).
        self._scrypt = threading.Lock()
        self.backoff = Backoff()

    # --- who may do what -------------------------------------------------------------------------------

    def access(self, request: Request) -> Access:
        if self.web.password_hash is None or self.sessions.valid(request.cookies.get(SESSION_COOKIE)):
            return Access(True)
        password = _basic_password(request.headers.get("authorization"))
        if password is None:
            return Access(False)
        return self.try_password(password, _client(request), "basic")

    def try_password(self, password: str, client: str, via: str) -> Access:
        """Check a password from `client`, unless it is still held back by its earlier wrong ones."""
        wait = self.backoff.wait_s(client)
        if wait > 0:
            return Access(False, wait)
        if self.password_ok(password):
            self.backoff.succeeded(client)
            return Access(True)
        failures = self.backoff.failed(client)
        log.warning("web_login_failed", client=client, via=via, failures_in_a_row=failures)
        return Access(False)

    def password_ok(self, password: str) -> bool:
        assert self.web.password_hash is not None
        digest = _sha256(password)
        if self._known_good is not None and same_secret(digest, self._known_good):
            return True
        with self._scrypt:
            if not check_password(password, self.web.password_hash):
                return False
        self._known_good = digest
        return True

    def csrf_ok(self, request: Request, given: str | None) -> bool:
        """Double-submit check: the token a page put in the header or form equals its cookie, and a
        browser's Origin, when sent, is this server (a cross-site form can do neither)."""
        origin = request.headers.get("origin")
        if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
            return False
        cookie = request.cookies.get(CSRF_COOKIE)
        return cookie is not None and same_secret(given, cookie)

    # --- pages -----------------------------------------------------------------------------------------

    async def index(self, request: Request) -> Response:
        options = "".join(
            f'<option value="{i}">{html.escape(inbox.path.name or str(inbox.path))} · profile '
            f"{html.escape(inbox.profile)}</option>" for i, inbox in enumerate(self.config.inboxes))
        token = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(24)
        text = _page("index.html", csrf=token, max_file_bytes=str(self.limits.max_file_bytes),
                     max_files=str(self.web.max_files_per_upload), logout=self._logout_hidden())
        response = HTMLResponse(text.replace("<!--inbox-options-->", options))
        self._set_csrf(response, token)
        return response

    async def file_page(self, request: Request) -> Response:
        inbox, sha256 = int(request.path_params["inbox"]), request.path_params["sha256"]
        if inbox >= len(self.config.inboxes) or not _SHA256.fullmatch(sha256):
            return PlainTextResponse("no such file", 404)
        token = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(24)
        response = HTMLResponse(_page("file.html", csrf=token, inbox=str(inbox), sha256=sha256,
                                      logout=self._logout_hidden()))
        self._set_csrf(response, token)
        return response

    async def login_page(self, request: Request) -> Response:
        token = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(24)
        failed = "" if request.query_params.get("failed") is None else "Wrong password."
        response = HTMLResponse(_page("login.html", csrf=token, failed=failed))
        self._set_csrf(response, token)
        return response

    async def login(self, request: Request) -> Response:
        form = await request.form(max_files=0, max_fields=4, max_part_size=4096)
        token = form.get("csrf")
        password = form.get("password")
        if not self.csrf_ok(request, token if isinstance(token, str) else None):
            return PlainTextResponse("refused: reload the page and try again", 403)
        if self.web.password_hash is None:
            return RedirectResponse("/", 303)
        access = await run_in_threadpool(self.try_password, password if isinstance(password, str) else "",
                                         _client(request), "form")
        if access.retry_after_s > 0:
            return _too_many(access.retry_after_s)
        if not access.granted:
            return RedirectResponse("/login?failed=1", 303)
        response = RedirectResponse("/", 303)
        response.set_cookie(SESSION_COOKIE, self.sessions.start(), httponly=True, samesite="strict",
                            secure=self.web.secure_cookies)
        return response

    async def logout(self, request: Request) -> Response:
        form = await request.form(max_files=0, max_fields=4, max_part_size=4096)
        token = form.get("csrf")
        if not self.csrf_ok(request, token if isinstance(token, str) else None):
            return PlainTextResponse("refused: reload the page and try again", 403)
        self.sessions.end(request.cookies.get(SESSION_COOKIE))
        response = RedirectResponse("/login", 303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    def _logout_hidden(self) -> str:
        return "" if self.web.password_hash is not None else "hidden"

    def _set_csrf(self, response: Response, token: str) -> None:
        # Readable by the page's script (it copies it into a header); SameSite keeps other sites from sending it.
        response.set_cookie(CSRF_COOKIE, token, samesite="strict", secure=self.web.secure_cookies)

    # --- API -------------------------------------------------------------------------------------------

    async def files(self, request: Request) -> Response:
        views = await run_in_threadpool(self.board.recent)
        daemon = await run_in_threadpool(self.board.daemon)
        return JSONResponse({"daemon": daemon, "files": [self._file_json(view) for view in views]})

    async def one_file(self, request: Request) -> Response:
        inbox, sha256 = int(request.path_params["inbox"]), request.path_params["sha256"]
        view = await run_in_threadpool(self.board.file, inbox, sha256)
        daemon = await run_in_threadpool(self.board.daemon)
        if view is None:
            return JSONResponse({"daemon": daemon, "file": None}, 404)
        return JSONResponse({"daemon": daemon, "file": self._file_json(view)})

    def _file_json(self, view: Any) -> dict[str, Any]:
        data = view.as_json()
        data["result_url"] = f"/outbox/{view.inbox}/{quote(view.result)}" if view.result else None
        data["page_url"] = f"/files/{view.inbox}/{view.sha256}"
        return data

    async def upload(self, request: Request) -> Response:
        if not self.csrf_ok(request, request.headers.get(CSRF_HEADER)):
            return _refusal("refused: the page's security token is missing or stale; reload the page", 403)
        try:
            inbox = int(request.query_params.get("inbox", "0"))
        except ValueError:
            inbox = -1
        if not 0 <= inbox < len(self.config.inboxes):
            return _refusal("no such inbox", 404)
        content_type = request.headers.get("content-type", "")
        boundary = _boundary(content_type)
        if boundary is None:
            return _refusal("expected a multipart/form-data upload", 415)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.web.max_request_bytes:
            return _refusal(f"the upload is over the limit of {self.web.max_request_bytes} bytes", 413)
        if self.slots.value == 0:
            return _refusal("busy with other uploads; try again in a moment", 503)
        async with self.slots:
            return await self._receive(request, inbox, boundary)

    async def _receive(self, request: Request, inbox: int, boundary: bytes) -> Response:
        folder = self.config.inboxes[inbox].path

        def stored(item: Stored) -> None:
            self.board.note_upload(inbox, item.sha256, item.name)
            log.info("web_upload_stored", inbox=str(folder), name=item.name, bytes=item.size)

        receiver = UploadReceiver(boundary, folder, self.rules[inbox], self.limits, self.web.max_files_per_upload,
                                  stored)
        received = 0
        try:
            async for chunk in _paced(request, self.web.upload_idle_timeout_s, self.web.upload_min_bytes_per_s):
                received += len(chunk)
                if received > self.web.max_request_bytes:
                    raise UploadRefused(f"the upload is over the limit of {self.web.max_request_bytes} bytes", 413)
                await run_in_threadpool(receiver.feed, chunk)
            await run_in_threadpool(receiver.close)
        except UploadRefused as exc:
            await run_in_threadpool(receiver.abort)
            log.info("web_upload_refused", inbox=str(folder), reason=str(exc))
            return _refusal(str(exc), exc.status, self._stored_json(inbox, receiver.stored))
        except ClientDisconnect:
            await run_in_threadpool(receiver.abort)
            return _refusal("the upload was broken off", 400)
        except OSError as exc:
            await run_in_threadpool(receiver.abort)
            log.warning("web_upload_failed", inbox=str(folder), error=str(exc))
            return _refusal(f"the inbox refused the file: {exc.strerror or exc}", 507,
                            self._stored_json(inbox, receiver.stored))
        except BaseException:
            await run_in_threadpool(receiver.abort)
            raise
        if not receiver.stored:
            return _refusal("the upload held no file", 400)
        return JSONResponse({"stored": self._stored_json(inbox, receiver.stored)})

    def _stored_json(self, inbox: int, stored: list[Stored]) -> list[dict[str, Any]]:
        return [{"name": item.name, "size": item.size, "sha256": item.sha256,
                 "page_url": f"/files/{inbox}/{item.sha256}", "inbox": inbox} for item in stored]

    async def result(self, request: Request) -> Response:
        inbox = int(request.path_params["inbox"])
        if inbox >= len(self.config.inboxes):
            return PlainTextResponse("not found", 404)
        try:
            download = await run_in_threadpool(open_result, self.config.inboxes[inbox].outbox,
                                               request.path_params["path"])
        except NotServed:
            return PlainTextResponse("not found", 404)
        headers = {"content-length": str(download.size), "cache-control": "private, no-cache",
                   "content-security-policy": _FILE_CSP}
        inline = download.media_type in _INLINE_TYPES
        if request.query_params.get("download") is not None or not inline:
            headers["content-disposition"] = _attachment(download.name)
        media_type = download.media_type if inline else "application/octet-stream"
        return StreamingResponse(download.chunks(), media_type=media_type, headers=headers)

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        media = {"app.js": "text/javascript", "file.js": "text/javascript", "common.js": "text/javascript",
                 "style.css": "text/css"}
        if name not in media:
            return PlainTextResponse("not found", 404)
        body = resources.files("srd.web").joinpath("static", name).read_bytes()
        return Response(body, media_type=media[name], headers={"cache-control": "no-cache"})


def _refusal(message: str, status: int, stored: list[dict[str, Any]] | None = None) -> JSONResponse:
    # Closing the connection is what stops the rest of a refused body from being read (uvicorn would
    # otherwise drain it to keep the connection alive, however long it is).
    return JSONResponse({"error": message, "stored": stored or []}, status, headers={"connection": "close"})


async def _paced(request: Request, idle_s: float, min_rate: int) -> AsyncIterator[bytes]:
    """The body's chunks, cut (`UploadRefused`, 408) when none comes for `idle_s`, or when after `idle_s` they
    have come slower than `min_rate` bytes a second on average: a trickle must not hold an upload slot."""
    start = time.monotonic()
    received = 0
    chunks = request.stream().__aiter__()
    while True:
        try:
            with anyio.fail_after(idle_s):
                chunk = await chunks.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise UploadRefused(f"the upload stalled: nothing arrived for {idle_s:g} s", 408) from None
        received += len(chunk)
        elapsed = time.monotonic() - start
        if elapsed > idle_s and received < min_rate * elapsed:
            raise UploadRefused(f"the upload came too slowly (under {min_rate} bytes a second)", 408)
        yield chunk


def _too_many(wait_s: float) -> Response:
    seconds = max(1, round(wait_s + 0.5))
    return PlainTextResponse(f"too many wrong passwords: try again in {seconds} s", 429,
                             headers={"retry-after": str(seconds)})


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _boundary(content_type: str) -> bytes | None:
    kind, _, params = content_type.partition(";")
    if kind.strip().lower() != "multipart/form-data":
        return None
    for param in params.split(";"):
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary" and value:
            return value.strip('"').encode("latin-1")
    return None


def _basic_password(header: str | None) -> str | None:
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[2]


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _attachment(name: str) -> str:
    ascii_name = name.encode("ascii", "replace").decode().replace('"', "_").replace("?", "_")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name)}"


class _Guard(BaseHTTPMiddleware):
    """Authentication for every path but the login page and static files, and the security headers."""

    def __init__(self, app: Any, web: WebApp) -> None:
        super().__init__(app)
        self._web = web

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        path = request.url.path
        access = Access(True) if path.startswith(_OPEN_PATHS) else await run_in_threadpool(self._web.access, request)
        if access.retry_after_s > 0:
            response: Response = _too_many(access.retry_after_s)
        elif not access.granted:
            if path.startswith(("/api/", "/outbox/")):
                response = JSONResponse({"error": "log in first"}, 401,
                                                  headers={"www-authenticate": 'Basic realm="srd"'})
            else:
                response = RedirectResponse("/login", 303)
        else:
            response = await call_next(request)
        for name, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)  # a file response's stricter CSP stays
        return response


def build_app(config: Config) -> Starlette:
    web = WebApp(config)
    routes = [
        Route("/", web.index),
        Route("/files/{inbox:int}/{sha256:str}", web.file_page),
        Route("/login", web.login_page, methods=["GET"]),
        Route("/login", web.login, methods=["POST"]),
        Route("/logout", web.logout, methods=["POST"]),
        Route("/api/files", web.files),
        Route("/api/files/{inbox:int}/{sha256:str}", web.one_file),
        Route("/api/upload", web.upload, methods=["POST"]),
        Route("/outbox/{inbox:int}/{path:path}", web.result),
        Route("/static/{name:str}", web.static),
    ]
    return Starlette(routes=routes, middleware=[
        Middleware(HostCheck, listen=config.web.listen, allowed_hosts=config.web.allowed_hosts),
        Middleware(_Guard, web=web)])
