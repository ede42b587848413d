"""What the daemon keeps per configured inbox: its watcher, settle tracker and memory, and its counters."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from srd.config import Config, Inbox, Profile
from srd.daemon.fileevents import failure_reason
from srd.daemon.settle import SettleTracker
from srd.daemon.status import read_status
from srd.daemon.watch import InboxWatcher
from srd.engine.pipeline import StageContext
from srd.errors import ModelError, SrdError
from srd.fs.atomic import clean_stale_temps
from srd.fs.fileversion import FileVersion
from srd.ledger import Entry, Ledger, State

log = structlog.get_logger(__name__)


def inbox_id(inbox: Inbox) -> str:
    """The ledger's id for an inbox: its path, so entries survive reordering the config."""
    return str(inbox.path)


@dataclass
class InboxRuntime:
    """One configured inbox at work; a reload replaces it (keeping `handled` when its profile is unchanged)."""

    index: int
    inbox: Inbox
    profile: Profile
    fingerprint: str
    tracker: SettleTracker
    watcher: InboxWatcher
    handled: dict[Path, FileVersion] = field(default_factory=dict)  # the file versions decided already
    settling: bool = False  # a batch of the tracker's stats is out in the offloader

    @property
    def inbox_id(self) -> str:
        return inbox_id(self.inbox)


@dataclass
class Counters:
    done: int = 0
    failed: int = 0
    duplicates: int = 0
    skipped: int = 0
    last_error: dict[str, str] | None = None
    failed_by_reason: dict[str, int] = field(default_factory=dict)  # by `failure_reason`
    last_success: str | None = None  # ISO 8601 UTC

    def count_failure(self, reason: str | None) -> None:
        self.failed += 1
        kind = failure_reason(reason)
        self.failed_by_reason[kind] = self.failed_by_reason.get(kind, 0) + 1

    def count_success(self) -> None:
        self.done += 1
        self.last_success = datetime.now(UTC).isoformat(timespec="seconds")

    def raise_to(self, published: dict[str, Any]) -> None:
        """No count below what an inbox's entry in a status document (the last run's) said."""
        self.done = max(self.done, _count(published.get("done")))
        self.duplicates = max(self.duplicates, _count(published.get("duplicates")))
        self.skipped = max(self.skipped, _count(published.get("skipped")))
        by_reason = published.get("failed_by_reason")
        for reason, count in (by_reason.items() if isinstance(by_reason, dict) else ()):
            self.failed_by_reason[reason] = max(self.failed_by_reason.get(reason, 0), _count(count))
        self.failed = max(self.failed, _count(published.get("failed")), sum(self.failed_by_reason.values()))
        last = published.get("last_success")
        if isinstance(last, str) and (self.last_success is None or last > self.last_success):
            self.last_success = last  # both ISO 8601 UTC to the second: they sort as text
        if self.last_error is None and isinstance(published.get("last_error"), dict):
            self.last_error = published["last_error"]


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def restart_counters(ledger: Ledger) -> dict[str, Counters]:
    """Per inbox id, the counters a starting daemon takes up: what the ledger holds, raised to what the
    last run published in ``status.json``.

    The ledger alone can say less than the last run counted: it keeps one entry per content and profile, so
    the same bytes failed in two inboxes count once (for the later inbox), a retried failure no longer counts
    as failed, and duplicates and skips are not in it at all. Counters that went down at a restart would
    read as a reset to Prometheus.
    """
    counters = ledger_counters(ledger)
    try:
        last_run = read_status(ledger.state_dir) or {}
    except SrdError as exc:  # damaged or unreadable: the ledger's counts still hold
        log.warning("last_status_unreadable", error=str(exc))
        last_run = {}
    for published in last_run.get("inboxes", []):
        if isinstance(published.get("path"), str):
            counters.setdefault(published["path"], Counters()).raise_to(published)
    return counters


def ledger_counters(ledger: Ledger) -> dict[str, Counters]:
    """Per inbox id, the done and failed counts (failures by reason), the last success and the latest failure
    as the ledger holds them.

    The daemon starts its counters here, so `srd status` and the metrics after a restart agree with the
    ledger instead of counting from zero.
    """
    counters: dict[str, Counters] = {}
    latest_success: dict[str, float] = {}
    for inbox, (done, stamp) in ledger.done_by_inbox().items():
        counters.setdefault(inbox, Counters()).done = done
        latest_success[inbox] = stamp
    latest_failure: dict[str, Entry] = {}
    for entry in ledger.in_state(State.FAILED):  # failures are few: reading their reasons costs little
        counters.setdefault(entry.inbox, Counters()).count_failure(entry.error)
        if entry.inbox not in latest_failure or entry.updated_ts >= latest_failure[entry.inbox].updated_ts:
            latest_failure[entry.inbox] = entry
    for inbox, entry in latest_failure.items():
        counters[inbox].last_error = {"time": entry.updated_at, "source": str(Path(inbox) / entry.source),
                                      "reason": entry.error or ""}
    for inbox, stamp in latest_success.items():
        counters[inbox].last_success = datetime.fromtimestamp(stamp, UTC).isoformat(timespec="seconds")
    return counters


@dataclass(frozen=True)
class CheckedProfile:
    """A profile whose models passed their check, pinned to the bytes checked (`Pipeline.pinned`), and the
    fingerprint those bytes give it."""

    profile: Profile
    fingerprint: str


def check_profiles(config: Config) -> dict[str, CheckedProfile]:
    """Every profile an inbox uses, its models checked (`StageContext.check`) and pinned, with its fingerprint.

    A missing or unfit model must stop the daemon (or reject a reload) here: found only inside the workers, it
    would fail every file and move them all to the failed folder. Pinned, a model file replaced afterwards is
    refused by the workers instead of run under a fingerprint that names other weights.

    Raises:
        ModelError: A profile's model is missing, its sha256 differs from its manifest's, or it fails its check run.
    """
    context = StageContext(config.engine, config.model_dirs)
    checked = {}
    for name in sorted({inbox.profile for inbox in config.inboxes}):
        profile = config.profiles[name]
        try:
            for spec in profile.pipeline.models(context):
                context.check(spec)
        except ModelError as exc:  # say where, as `srd config check` does
            raise type(exc)(f"profile {name!r}: {exc}") from exc
        pinned = replace(profile, pipeline=profile.pipeline.pinned(context))
        checked[name] = CheckedProfile(pinned, pinned.pipeline.fingerprint(context))
    return checked


def prepare_folders(config: Config, *, clean: bool) -> None:
    """Create output folders; at startup also purge temp files a crash left there.

    Only at startup are all temp files stale (we hold the lock and no worker runs yet); on a reload,
    running jobs are writing theirs.
    """
    for inbox in config.inboxes:
        for folder in (inbox.outbox, inbox.failed, inbox.archive):
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
                if not clean:
                    continue
                removed = clean_stale_temps(folder, recursive=True)
                if removed:
                    log.info("stale_temps_cleaned", folder=str(folder), count=len(removed))


def start_watchers(runtimes: Iterable[InboxRuntime]) -> None:
    """Start every runtime's watcher, or none: on an error the ones already started are stopped again."""
    started: list[InboxRuntime] = []
    try:
        for runtime in runtimes:
            runtime.watcher.start()
            started.append(runtime)
    except BaseException:
        for runtime in started:
            runtime.watcher.stop()
        raise
