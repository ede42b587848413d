"""The config's metrics listener and per-inbox hooks: their settings and parsing (docs/design.md §9).

Kept apart from `srd.config` so it needs nothing from it: `parse_metrics` and `parse_hook` report problems
through the same `add(where, message)` the rest of the config uses.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

DEFAULT_HOOK_TIMEOUT_S = 30.0


class Problems(Protocol):
    def add(self, where: str, message: str) -> None: ...


@dataclass(frozen=True)
class MetricsSettings:
    """Where the Prometheus listener (`/metrics`, `/healthz`, `/readyz`) binds."""

    host: str
    port: int

    @property
    def listen(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Hook:
    """What to do when a file is done or failed: a command (argv, never a shell) and/or a webhook URL."""

    command: tuple[str, ...] | None = None
    webhook: str | None = None
    timeout: float = DEFAULT_HOOK_TIMEOUT_S  # each command run, each webhook attempt


def parse_listen(text: str) -> tuple[str, int] | None:
    """``host:port`` or ``[v6]:port`` with a literal IP address; None if it is not one."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)  # a name would resolve at bind time, perhaps to a public address
    except ValueError:
        return None
    return host, int(port)


def parse_metrics(data: Any, problems: Problems) -> MetricsSettings | None:
    """The ``metrics:`` section (absent or null: no listener)."""
    if data is None:
        return None
    if not isinstance(data, Mapping) or set(data) != {"listen"}:
        problems.add("metrics", "expected a mapping with 'listen' (host:port, e.g. 127.0.0.1:9464)")
        return None
    listen = data["listen"]
    parsed = parse_listen(listen) if isinstance(listen, str) else None
    if parsed is None:
        problems.add("metrics.listen", f"expected an IP address and port such as 127.0.0.1:9464 or [::1]:9464, "
                                       f"got {listen!r}")
        return None
    return MetricsSettings(*parsed)


def parse_hook(data: Any, where: str, problems: Problems) -> Hook | None:
    """An ``on_done`` / ``on_failed`` section: ``command`` (a list), ``webhook`` (an http(s) URL), ``timeout``."""
    if data is None:
        return None
    known = {"command", "webhook", "timeout"}
    if not isinstance(data, Mapping) or not data or set(data) - known:
        problems.add(where, "expected a mapping with 'command' (a list: program and arguments) and/or 'webhook' "
                            "(a URL), and optionally 'timeout' (seconds)")
        return None
    command = data.get("command")
    if command is not None and (not isinstance(command, list) or not command
                                or not all(isinstance(arg, str) and arg for arg in command)):
        problems.add(f"{where}.command", "expected a non-empty list of strings: the program and its arguments "
                                         "(no shell runs it)")
        return None
    webhook = data.get("webhook")
    if webhook is not None and (not isinstance(webhook, str) or urlsplit(webhook).scheme not in ("http", "https")
                                or not urlsplit(webhook).hostname):
        problems.add(f"{where}.webhook", "expected an http:// or https:// URL")
        return None
    if webhook is not None and "@" in urlsplit(webhook).netloc:
        # urllib would take 'user:pass@host' for the host name; a token belongs in the path or query instead.
        problems.add(f"{where}.webhook", "a user name or password in the URL (user:pass@host) is not supported; "
                                         "put the receiver's token in the URL's path or query")
        return None
    if command is None and webhook is None:
        problems.add(where, "give a 'command', a 'webhook' or both")
        return None
    timeout = data.get("timeout", DEFAULT_HOOK_TIMEOUT_S)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not math.isfinite(timeout) \
            or timeout <= 0:
        problems.add(f"{where}.timeout", "expected a positive number of seconds")
        return None
    return Hook(tuple(command) if command is not None else None, webhook, float(timeout))
