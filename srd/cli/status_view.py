"""`srd status` for a person: a header, one table row per inbox, and each inbox's running files.

Pure formatting of a judged status document (`srd.daemon.status.Assessment`); reading and judging live in
`srd.daemon.status`, so `--json` and `--check` give the same verdict as the table.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from srd.daemon.status import Assessment, Health, StateDirChoice
from srd.terminal import printable

_COLUMNS = ("INBOX", "HEALTH", "WATCH", "SETTLING", "QUEUED", "RUNNING", "DONE", "FAILED", "DUPLICATES",
            "LAST ERROR")


def duration(seconds: float) -> str:
    """A short elapsed time: ``42s``, ``3m05s``, ``2h07m``."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


def _since(iso: str | None, now: datetime) -> str:
    if not iso:
        return "?"
    try:
        return duration((now - datetime.fromisoformat(iso)).total_seconds())
    except ValueError:
        return "?"


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns two spaces apart; the last column is not padded."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join([*(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)), row[-1]]).rstrip()
            for row in rows]


def _last_error(error: dict[str, Any] | None) -> str:
    if not error:
        return "-"
    return f"{error.get('time', '?')} {error.get('source', '?')}: {error.get('reason', '?')}"


def _inbox_row(inbox: dict[str, Any]) -> list[str]:
    health = str(inbox.get("health", "?"))
    if inbox.get("degraded"):
        health += f" (degraded: {inbox['degraded']})"
    # A job handed to the pool waits there until a worker takes it: it is queued, not running, until then.
    in_flight = int(inbox.get("in_flight", 0))
    running = len(inbox["running"]) if "running" in inbox else in_flight
    queued = int(inbox.get("queued", 0)) + in_flight - running
    return [str(inbox.get("path", "?")), health, str(inbox.get("watch", "?")), str(inbox.get("settling", 0)),
            str(queued), str(running), str(inbox.get("done", 0)), str(inbox.get("failed", 0)),
            str(inbox.get("duplicates", 0)), _last_error(inbox.get("last_error"))]


def _header(view: Assessment, now: datetime) -> list[str]:
    status = view.status
    if status is None:
        return [f"srd is {'starting' if view.alive else 'not running'}: {view.reasons[0]}"]
    if not view.alive:
        lines = [f"srd is not running ({view.reasons[0]}); the figures below are from then"]
    else:
        lines = [f"srd is {status.get('state')} (pid {status.get('pid')}, up {_since(status.get('started_at'), now)}, "
                 f"config {status.get('config')}): {view.health.value}"]
        lines += [f"  - {reason}" for reason in view.reasons]
    pool = status.get("pool", {})
    ledger = status.get("ledger") or {}
    lines.append(f"workers {status.get('workers')}, running {pool.get('running', 0)}, pool rebuilds "
                 f"{pool.get('rebuilds', 0)}; ledger entries (per content, not per file): "
                 + ", ".join(f"{n} {state}" for state, n in ledger.items()))
    lines += _executor_lines(status.get("executor") or {})
    if status.get("last_reload_error"):
        lines.append(f"last reload rejected (running the previous config): {status['last_reload_error']}")
    state_dir = status.get("state_dir") or {"state": "ok"}
    if state_dir.get("state") != "ok":
        lines.append(f"state_dir unwritable since {state_dir.get('since')}, "
                     f"processing paused: {state_dir.get('error')}")
    return lines


def _executor_lines(executor: dict[str, Any]) -> list[str]:
    """The Dask backend: its scheduler and each worker's load (nothing for the local pool, shown above)."""
    if executor.get("kind") != "dask":
        return []
    if not executor.get("connected"):
        return [f"executor dask, scheduler {executor.get('scheduler')}: unreachable ({executor.get('error')})"]
    workers = executor.get("workers") or []
    left = f", {executor['workers_left']} left since start (died or restarted)" if executor.get("workers_left") else ""
    lines = [f"executor dask, scheduler {executor.get('scheduler')}: {len(workers)} worker(s){left}"]
    for worker in workers:
        state = f"refused: {worker['refused']}" if worker.get("refused") else (
            f"{worker.get('executing', 0)}/{worker.get('nthreads', '?')} busy, {worker.get('memory_mb', '?')} MB")
        lines.append(f"  {worker.get('address')} ({worker.get('name')}): {state}")
    return lines


def render(view: Assessment, where: StateDirChoice, now: datetime | None = None) -> str:
    """The status as text: where it was read, the daemon's state, then the per-inbox table."""
    now = now or datetime.now(UTC)
    lines = [f"state_dir {where.path} (from {where.origin})", *_header(view, now)]
    inboxes = (view.status or {}).get("inboxes") or []
    if not inboxes:
        return "\n".join(printable(line) for line in lines)
    lines.append("")
    lines += _table([_COLUMNS, *(_inbox_row(inbox) for inbox in inboxes)])
    for inbox in inboxes:
        outbox_state = inbox.get("outbox_state") or {"state": "ok"}
        if outbox_state.get("state") != "ok":
            lines.append(f"{inbox['path']}: outbox unwritable since {outbox_state.get('since')}, "
                         f"{outbox_state.get('waiting')} input(s) waiting: {outbox_state.get('error')}")
        for folder in inbox.get("refused_folders") or []:
            lines.append(f"{inbox['path']}: outbox folder {folder.get('folder')} unwritable since "
                         f"{folder.get('since')}, {folder.get('waiting')} input(s) for it waiting (the rest go on): "
                         f"{folder.get('error')}")
        model_state = inbox.get("model_state") or {"state": "ok"}
        if model_state.get("state") != "ok":
            lines.append(f"{inbox['path']}: model unavailable since {model_state.get('since')}, "
                         f"{model_state.get('waiting')} input(s) waiting: {model_state.get('error')}")
        if inbox.get("root_error"):
            lines.append(f"{inbox['path']}: inbox root unusable: {inbox['root_error']}")
        if (inbox.get("claim") or {}).get("reason"):
            lines.append(f"{inbox['path']}: paused: {inbox['claim']['reason']}")
        if inbox.get("stuck_step"):
            lines.append(f"{inbox['path']}: stuck: {inbox['stuck_step']['reason']}")
        for folder, reason in (inbox.get("unreadable") or {}).items():
            lines.append(f"{inbox['path']}: not scanned: {folder}: {reason}")
        running = inbox.get("running") or []
        if running and view.alive:
            jobs = ", ".join(f"{job['source']} ({_since(job.get('since'), now)}{_limit(job)})" for job in running)
            lines.append(f"{inbox['path']}: running {jobs}")
    return "\n".join(printable(line) for line in lines)  # a name can hold no line break or escape


def _limit(job: dict[str, Any]) -> str:
    if job.get("limit_s") is None:
        return ""
    stuck = "; far longer than expected, the worker may be stuck" if job.get("stuck_suspected") else ""
    return f", limit {job['limit_s']} s{stuck}"


def check_line(view: Assessment) -> str:
    """One line for `srd status --check`: the verdict, and why when it is not healthy."""
    if view.health is Health.HEALTHY:
        return "healthy"
    return f"{view.health.value}: " + "; ".join(view.reasons)
