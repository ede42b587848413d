"""What the page shows: each recent file's state, read from the ledger and the daemon's status file.

Both are read without any lock, the way `srd ledger list` and `srd status` read them, so the web process
can never hold the daemon up. The ledger is reloaded only when its files changed, and the status file at
most twice a second, however many browsers poll.

A file is known by its inbox and the sha256 of its content, the ledger's own identity: an upload is
followed from the moment it lands (queued), through the daemon's status (running), to its ledger entry
(done with its output, or failed with the reason).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from srd.config import Config
from srd.daemon.status import Health, assess, read_status
from srd.errors import SrdError
from srd.fs import safefs
from srd.ledger import JOURNAL_NAME, SNAPSHOT_NAME, Entry, Ledger, State

STATUS_EVERY_S = 0.5
RECENT_LIMIT = 100


@dataclass(frozen=True)
class FileView:
    """One file as the page shows it. `result` is the output's path below its outbox, for a download link."""

    inbox: int
    sha256: str
    name: str
    state: str  # queued, running, done, failed
    reason: str | None
    result: str | None
    updated: float

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Upload:
    name: str
    at: float


class Board:
    """The read-only view of the daemon's state, shared by every request (thread-safe)."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.time) -> None:
        self._config = config
        self._inbox_index = {str(inbox.path): i for i, inbox in enumerate(config.inboxes)}
        self._clock = clock
        self._lock = threading.Lock()
        self._uploads: dict[tuple[int, str], _Upload] = {}
        self._ledger_signature: tuple[Any, ...] | None = None
        self._entries: dict[tuple[int, str], Entry] = {}
        self._ledger_error: str | None = None
        self._status: dict[str, Any] | None = None
        self._status_read_at = -1.0
        self._daemon = "not running"
        self._status_error: str | None = None

    def note_upload(self, inbox: int, sha256: str, name: str) -> None:
        with self._lock:
            self._uploads[(inbox, sha256)] = _Upload(name, self._clock())

    def daemon(self) -> dict[str, Any]:
        """The daemon's health as `srd status --check` judges it, and why the view may be incomplete."""
        with self._lock:
            self._refresh()
            return {"health": self._daemon, "error": self._status_error or self._ledger_error}

    def recent(self) -> list[FileView]:
        """The most recently changed files of the configured inboxes, newest first."""
        with self._lock:
            self._refresh()
            keys = set(self._entries) | set(self._uploads)
            views = [self._view(key) for key in keys]
        views.sort(key=lambda view: view.updated, reverse=True)
        return views[:RECENT_LIMIT]

    def file(self, inbox: int, sha256: str) -> FileView | None:
        with self._lock:
            self._refresh()
            if (inbox, sha256) not in self._entries and (inbox, sha256) not in self._uploads:
                return None
            return self._view((inbox, sha256))

    def _view(self, key: tuple[int, str]) -> FileView:
        inbox, sha256 = key
        entry = self._entries.get(key)
        upload = self._uploads.get(key)
        name = upload.name if upload is not None else entry.source.as_posix() if entry is not None else sha256[:12]
        running = self._running(inbox)
        if entry is None or entry.state in (State.STARTED, State.RETRY):
            state = "running" if name in running or (entry is not None and entry.source.as_posix() in running) \
                else "queued"
            updated = max(upload.at if upload else 0.0, entry.updated_ts if entry else 0.0)
            return FileView(inbox, sha256, name, state, None, None, updated)
        if entry.state == State.FAILED:
            return FileView(inbox, sha256, name, "failed", entry.error, None, entry.updated_ts)
        return FileView(inbox, sha256, name, "done", None, self._result(inbox, entry), entry.updated_ts)

    def _result(self, inbox: int, entry: Entry) -> str | None:
        if entry.output is None:
            return None
        try:
            return safefs.relative(self._config.inboxes[inbox].outbox, entry.output).as_posix()
        except ValueError:
            return None  # an output outside today's outbox (the config changed): nothing to serve

    def _running(self, inbox: int) -> set[str]:
        if self._status is None:
            return set()
        path = str(self._config.inboxes[inbox].path)
        for block in self._status.get("inboxes", []):
            if block.get("path") == path:
                return {str(job.get("source")) for job in block.get("running", [])}
        return set()

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._status_read_at >= STATUS_EVERY_S:
            self._status_read_at = now
            self._read_status()
            self._read_ledger()

    def _read_status(self) -> None:
        try:
            status = read_status(self._config.state_dir)
        except SrdError as exc:
            self._status, self._status_error, self._daemon = None, str(exc), "unknown"
            return
        verdict = assess(status, state_dir=self._config.state_dir)
        self._status = status if verdict.alive else None
        self._status_error = None
        self._daemon = "not running" if verdict.health == Health.NOT_RUNNING else verdict.health.value

    def _read_ledger(self) -> None:
        signature = _signature(self._config.state_dir)
        if signature == self._ledger_signature:
            return
        if signature is None:  # the daemon has not run with this state_dir yet
            self._ledger_signature, self._entries, self._ledger_error = None, {}, None
            return
        try:
            with Ledger.open(self._config.state_dir, read_only=True) as ledger:
                entries = self._mine(ledger)
        except SrdError as exc:
            self._ledger_error = f"the ledger can't be read: {exc}"
            return
        self._ledger_signature, self._entries, self._ledger_error = signature, entries, None

    def _mine(self, ledger: Ledger) -> dict[tuple[int, str], Entry]:
        """The latest entry of each content in each configured inbox (a profile change makes a second one)."""
        entries: dict[tuple[int, str], Entry] = {}
        for entry in ledger.entries():
            inbox = self._inbox_index.get(entry.inbox)
            if inbox is None:
                continue
            key = (inbox, entry.sha256)
            if key not in entries or entries[key].updated_ts < entry.updated_ts:
                entries[key] = entry
        return entries


def _signature(state_dir: Path) -> tuple[Any, ...] | None:
    """What changes whenever the ledger does: the identity, size and time of its two files."""
    parts: list[Any] = []
    for name in (SNAPSHOT_NAME, JOURNAL_NAME):
        try:
            st = os.stat(state_dir / name)
        except FileNotFoundError:
            parts.append(None)
            continue
        except OSError:
            return None
        parts.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return None if parts == [None, None] else tuple(parts)
