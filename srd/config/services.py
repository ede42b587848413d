"""The sections for the processes beside the pipeline: where jobs run (`executor`) and `srd web`'s settings.

The daemon's own `metrics` section and the inboxes' hooks are parsed by `srd.observability`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from srd.config.fields import Problems, parse_fields
from srd.config.schema import EXECUTOR_KINDS, ExecutorSettings, WebSettings
from srd.config.sections import resolve_path


def parse_executor(data: Any, base: Path, problems: Problems) -> ExecutorSettings:
    if data is None:
        return ExecutorSettings()
    if not isinstance(data, Mapping):
        problems.add("executor", "expected a mapping such as {kind: dask, scheduler: tcp://127.0.0.1:8786}")
        return ExecutorSettings()
    for key in data:
        if key not in ("kind", "scheduler", "tls"):
            problems.add(f"executor.{key}", "unknown key (known: kind, scheduler, tls)")
    kind = data.get("kind", "local")
    if kind not in EXECUTOR_KINDS:
        problems.add("executor.kind", f"must be one of {', '.join(EXECUTOR_KINDS)}")
        return ExecutorSettings()
    scheduler = data.get("scheduler")
    if kind == "local":
        if scheduler is not None or data.get("tls") is not None:
            problems.add("executor", "scheduler and tls apply only to kind: dask")
        return ExecutorSettings()
    if not isinstance(scheduler, str) or not scheduler.startswith(("tcp://", "tls://")):
        problems.add("executor.scheduler", "expected the scheduler's address, tcp://host:port or tls://host:port")
        return ExecutorSettings()
    tls = data.get("tls")
    if tls is None:
        if scheduler.startswith("tls://"):
            problems.add("executor.tls", "a tls:// scheduler needs {ca_file, cert, key}")
        return ExecutorSettings(kind, scheduler)
    if not isinstance(tls, Mapping) or set(tls) != {"ca_file", "cert", "key"} or not all(
            isinstance(v, str) for v in tls.values()):
        problems.add("executor.tls", "expected {ca_file, cert, key}: the CA's and this client's certificate and key")
        return ExecutorSettings()
    if not scheduler.startswith("tls://"):
        problems.add("executor.scheduler", "with tls, the address must be tls://host:port")
    paths = tuple(resolve_path(tls[k], base) for k in ("ca_file", "cert", "key"))
    return ExecutorSettings(kind, scheduler, (paths[0], paths[1], paths[2]))


def parse_web(data: Any, problems: Problems) -> WebSettings:
    scalars = {k: v for k, v in data.items() if k != "allowed_hosts"} if isinstance(data, Mapping) else data
    parsed = parse_fields(WebSettings, scalars, "web", problems, skip=("allowed_hosts",))
    if parsed is None:
        return WebSettings()
    hosts = data.get("allowed_hosts", []) if isinstance(data, Mapping) else []
    if not isinstance(hosts, list) or not all(isinstance(h, str) and h for h in hosts):
        problems.add("web.allowed_hosts", "expected a list of host names (e.g. [srd.example.com])")
        hosts = []
    settings = WebSettings(**parsed.values, allowed_hosts=tuple(h.lower() for h in hosts))
    if not 0 < settings.port < 65536:
        problems.add("web.port", "must be between 1 and 65535")
    for name in ("max_file_bytes", "max_request_bytes", "max_files_per_upload", "upload_min_bytes_per_s"):
        value = getattr(settings, name)
        if value is not None and value < 1:
            problems.add(f"web.{name}", "must be at least 1")
    if settings.upload_idle_timeout_s <= 0:
        problems.add("web.upload_idle_timeout_s", "must be above 0")
    if settings.password_hash is not None and not settings.password_hash.startswith("scrypt$"):
        problems.add("web.password_hash", "expected the output of 'srd web --hash-password' (scrypt$…)")
    return settings
