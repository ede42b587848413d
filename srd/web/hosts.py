"""Refuse requests addressed to a host name srd was not told about: the defence against DNS rebinding.

A web page on another site can point its own name at 127.0.0.1 and then read and upload as if it were
local, because the browser takes it for that site's origin. Its requests still carry the site's name in
``Host``, so only IP addresses (the origin is then srd itself), ``localhost``, the listen address and
`web.allowed_hosts` (a reverse proxy's public name) are served; anything else gets 421 before any handler.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

_LOCAL_NAMES = ("localhost",)


def host_name(header: str) -> str:
    """The name in a Host header without its port, lower case (``[::1]:8080`` gives ``::1``)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostCheck:
    """ASGI middleware: HTTP requests whose Host is not an allowed one are answered 421 and go no further."""

    def __init__(self, app: ASGIApp, listen: str, allowed_hosts: tuple[str, ...]) -> None:
        self._app = app
        self._allowed = {*_LOCAL_NAMES, listen.lower(), *(name.lower().rstrip(".") for name in allowed_hosts)}

    def allowed(self, header: str | None) -> bool:
        if not header:
            return False
        name = host_name(header).rstrip(".")
        return _is_ip(name) or name in self._allowed or name.endswith(".localhost")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers: dict[bytes, Any] = dict(scope["headers"])
            host = headers.get(b"host")
            if not self.allowed(host.decode("latin-1") if host is not None else None):
                response = PlainTextResponse(
                    "refused: this server answers only to its own address (add the name to web.allowed_hosts)",
                    421, headers={"connection": "close"})
                await response(scope, receive, send)
                return
        await self._app(scope, receive, send)
