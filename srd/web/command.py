"""`srd web`: serve the upload page (needs the `web` extra), or make a password hash for its config."""

from __future__ import annotations

import argparse
import getpass
import socket
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import structlog

from srd.config import load_config
from srd.errors import SrdError, StartupError, UsageError, describe_os_error
from srd.logs import configure_logging

log = structlog.get_logger(__name__)


def add_commands(subparsers: Any) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add ``web`` to the CLI's subparsers; return its handler by name."""
    web = subparsers.add_parser(
        "web", help="serve a web page to upload images into an inbox and watch them being processed",
        description="Serve the upload page (the 'web' extra). It runs beside 'srd run', which does the work: it "
                    "writes uploads into an inbox atomically and reads the ledger, the status file and the outboxes. "
                    "Listens on the config's web.listen:web.port (default 127.0.0.1:8080).")
    web.add_argument("--config", "-c", type=Path,
                     help="YAML config (the same file 'srd run' uses); without it, the defaults: the inbox ./inbox "
                          "and no password")
    web.add_argument("--listen", help="address to listen on (default: web.listen)")
    web.add_argument("--port", type=int, help="port to listen on (default: web.port)")
    web.add_argument("--hash-password", action="store_true",
                     help="read a password (prompted, or one line on stdin) and print the hash to put in the config's "
                          "web.password_hash")
    return {"web": run_web}


def run_web(args: argparse.Namespace) -> int:
    from srd.web.auth import hash_password

    if args.hash_password:
        password = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
        if not password:
            raise UsageError("an empty password protects nothing")
        print(hash_password(password))
        return 0
    if args.port is not None and not 0 < args.port < 65536:
        raise UsageError(f"--port {args.port}: must be between 1 and 65535")
    config = load_config(args.config, check_folders=False)
    web = replace(config.web, listen=args.listen or config.web.listen,
                  port=args.port if args.port is not None else config.web.port)
    config = replace(config, web=web)
    configure_logging(config.log_level, config.log_format)
    try:
        import uvicorn

        from srd.web.app import build_app
        from srd.web.intake import purge_stale_uploads
    except ImportError as exc:
        raise SrdError(f"the web UI needs the 'web' extra: pip install 'srd[web]' ({exc})") from exc
    listener = _bind(web.listen, web.port)
    for inbox in config.inboxes:  # temps an `srd web` killed mid-upload left
        purge_stale_uploads(inbox.path, web.upload_idle_timeout_s)
    log.info("web_listening", url=f"http://{web.listen}:{web.port}/", auth=web.password_hash is not None)
    # uvicorn's access log is off: srd logs uploads itself, and request lines may carry file names users chose.
    server = uvicorn.Server(uvicorn.Config(build_app(config), access_log=False, log_level="warning",
                                           proxy_headers=True, server_header=False))
    server.run(sockets=[listener])
    return 0


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so a failure is one clear line and exit 10, as for the metrics one."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                            flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(2048)
        except BaseException:
            sock.close()
            raise
    except OSError as exc:
        raise StartupError(f"web listener {host}:{port} can't be opened: {describe_os_error(exc)}") from exc
    return sock
