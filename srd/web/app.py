"""The Starlette application of `srd web`: pages, the upload endpoint, the state API and result downloads."""

from __future__ import annotations

import base64
import binascii
import hashlib
import html
import re
import secrets
import threading
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
from srd.web.auth import Sessions, check_password, same_secret
from srd.web.board import Board
from srd.web.downloads import NotServed, open_result
from srd.web.intake import Stored, UploadLimits, UploadRefused
from srd.web.receiver import UploadReceiver

log = structlog.get_logger(__name__)

SESSION_COOKIE = "srd_session"
CSRF_COOKIE = "srd_csrf"
CSRF_HEADER = "x-csrf-token"
# Uploads at once: each holds a temp file open; more wait for a free slot instead of piling up.
UPLOAD_SLOTS = 4
_SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' blob:; object-src 'none'; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
}
_OPEN_PATHS = ("/login", "/static/")
_SHA256 = re.compile("[0-9a-f]{64}")


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

    # --- who may do what -------------------------------------------------------------------------------

    def authorized(self, request: Request) -> bool:
        if self.web.password_hash is None:
            return True
        if self.sessions.valid(request.cookies.get(SESSION_COOKIE)):
            return True
        password = _basic_password(request.headers.get("authorization"))
        return password is not None and self.password_ok(password)

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
        good = isinstance(password, str) and await run_in_threadpool(self.password_ok, password)
        if not good:
            log.warning("web_login_failed", client=request.client.host if request.client else None)
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
        data["result_url"] = f"/outbox/{view.inbox}/{view.result}" if view.result else None
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
            async for chunk in request.stream():
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
        headers = {"content-length": str(download.size), "cache-control": "private, no-cache"}
        if request.query_params.get("download") is not None:
            headers["content-disposition"] = _attachment(download.name)
        return StreamingResponse(download.chunks(), media_type=download.media_type, headers=headers)

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
        if not path.startswith(_OPEN_PATHS) and not await run_in_threadpool(self._web.authorized, request):
            if path.startswith(("/api/", "/outbox/")):
                response: Response = JSONResponse({"error": "log in first"}, 401,
                                                  headers={"www-authenticate": 'Basic realm="srd"'})
            else:
                response = RedirectResponse("/login", 303)
        else:
            response = await call_next(request)
        response.headers.update(_SECURITY_HEADERS)
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
    return Starlette(routes=routes, middleware=[Middleware(_Guard, web=web)])
