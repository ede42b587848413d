"""The daemon: one loop that turns inbox hints into jobs, and job outcomes into ledger records.

See docs/design.md §2, §4 and §5.

Threads only produce hints (watchers), wake-ups (the pool) and file-system work (the offloader: the
settle tracker's stats, hashes and headers, and the source steps — moves to the failed folder, archive
copies, deletes — so that a huge file or a hung share can't stall the loop); everything that decides or
records — settling, ledger, status — happens in this loop, so none of it needs locks.
Signal handlers only set flags, which the loop reads at least every `MAX_SLEEP_S`.

Per file: settle → stat-cache or sha256 → ledger lookup under the profile's fingerprint → either
nothing (already done: a duplicate, or the same file again) or: choose an output name → journal
``start``, reserving that name, when a worker takes it → the worker writes the output atomically →
journal ``done`` → keep, archive or delete the source → journal the disposition. A failed file is
moved to the failed folder with a ``.error.json`` beside it. After a crash the ledger's ``start``-without-``done``
entries are retried, alone, when their files are found again. A file becomes poison (failed) only after
``max_attempts`` deaths that can be pinned on it: its worker died while the daemon lived and ran nothing
else, or the daemon died while that file ran alone. A restart of the daemon is not the file's fault.

"Done" is a property of an output path: a file is done when an output srd wrote for its path holds the
picture of its current content under the current profile (the ledger's owner table). Content done under
another name is a duplicate; an output path written again loses its old owner, so no edit, profile switch
or replaced file can leave a stale output standing for a source.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import heapq
import os
import queue
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from types import FrameType
from typing import Any

import structlog
from structlog.contextvars import bound_contextvars

from srd.claim import InboxClaims
from srd.config import Config, Inbox, Profile, load_config
from srd.engine.pipeline import StageContext, Upscale
from srd.errors import ConfigError, ExitCode, ImageError, OutputError, SrdError, StartupError
from srd.executors.backend import Backend, build_pool
from srd.executors.job import Job, JobResult, output_name
from srd.executors.pool import Finished, JobPool, Lost, Outcome, RunningJob
from srd.fs import safefs
from srd.fs.atomic import clean_stale_temps, temp_files_of
from srd.fs.fileversion import FileVersion
from srd.fs.outputmark import mark_output, marked_for
from srd.fs.sources import link_or_copy, numbered_names, report_path
from srd.imaging.imageheader import read_header, sniff_format
from srd.imaging.imageio import output_format_for
from srd.jobtime import SLACK, job_time_limit
from srd.ledger import (
    Entry,
    Ledger,
    LedgerError,
    LedgerUnwritableError,
    State,
    make_key,
)
from srd.logs import configure_logging
from srd.notify import Notifier
from srd.offload import Done, Offloader
from srd.outbox import BLOCKING_ERRNOS, OutboxBlock
from srd.settle import Look, ReadyFile, SettleTracker
from srd.sourcestep import Action, Found, SourceStep, StepResult, run_step
from srd.status import STATUS_REFRESH_S, write_status
from srd.watch import Hint, InboxWatcher

log = structlog.get_logger(__name__)

MAX_SLEEP_S = 0.25
SUPERVISE_EVERY_S = 1.0
STATUS_EVERY_S = 1.0
# Bounds how long one pass may spend deciding about files before serving events.
CONSIDER_BUDGET_S = 0.2
HEAD_BYTES = 64
# A file cut short by the daemon's death is retried alone, and a death during that run is pinned on it; but
# only once this daemon has lived this long. A daemon that dies within its first seconds dies of something
# else (its start-up, a restart loop, an operator's kill), and a file that kills the service still does so
# after the wait.
SOLO_RETRY_AFTER_S = 5.0
# Enough of a file for its image header (dimensions) behind ordinary metadata.
HEADER_BYTES = 256 * 1024
# Threads reading files off the loop, and how many of them one inbox may hold (a hung share holds no more).
# Each inbox may hold OFFLOAD_PER_INBOX threads (one hung share holds no more); threads start only as
# work needs them, so there are enough for several hung shares to leave the other inboxes theirs.
OFFLOAD_THREADS = 16
OFFLOAD_PER_INBOX = 2
# A source step out for longer is stuck (on a share that stops answering): its inbox shows unhealthy.
STEP_STUCK_S = 60.0
# How long the daemon's exit waits to remove its claim files (a hung share's claim is left to go stale).
CLAIM_RELEASE_WAIT_S = 2.0
_READ_CHUNK = 1 << 20

PoolBuilder = Callable[[Config, Callable[[Any], None], Callable[[], None]], JobPool]
WatcherBuilder = Callable[[int, Inbox, Callable[[Hint], None]], InboxWatcher]


@dataclass(frozen=True)
class _Work:
    """One file handed to the pool, with everything its outcome needs even after a reload."""

    inbox_id: str
    inbox: Inbox
    profile: Profile
    fingerprint: str
    source: Path
    rel: PurePosixPath
    signature: FileVersion
    sha256: str
    key: str
    target: Path
    pixels: int | None = None  # from the header; None when it couldn't be read


@dataclass(frozen=True)
class _Probe:
    """What reading a file off the loop found: its hash (when asked for), first bytes and pixel count."""

    sha256: str | None
    head: bytes
    pixels: int | None
    signature: FileVersion  # the file's version as it was read (after hashing, when hashed)


@dataclass(frozen=True)
class _ReadToken:
    """An off-loop read of one version of a file (`probe_file`)."""

    path: Path
    version: FileVersion
    need_hash: bool


@dataclass(frozen=True, eq=False)
class _SettleToken:
    """An off-loop batch of one inbox's settle stats; `runtime` is matched by identity (a reload replaces it)."""

    runtime: _InboxRuntime
    looks: list[Look]


@dataclass(frozen=True, eq=False)
class _StepToken:
    """An off-loop source step."""

    step: SourceStep


@dataclass(frozen=True)
class _HeartbeatToken:
    """An off-loop heartbeat of one inbox's claim."""

    inbox: Path


@dataclass
class _Counters:
    done: int = 0
    failed: int = 0
    duplicates: int = 0
    skipped: int = 0
    last_error: dict[str, str] | None = None


def ledger_counters(ledger: Ledger) -> dict[str, _Counters]:
    """Per inbox id, the done and failed counts and the latest failure as the ledger holds them.

    The daemon starts its counters here, so `srd status` after a restart agrees with the ledger
    instead of counting from zero.
    """
    counters: dict[str, _Counters] = {}
    latest_failure: dict[str, tuple[float, str]] = {}
    for key, inbox, state, updated_ts in ledger.states():
        counter = counters.setdefault(inbox, _Counters())
        if state == State.DONE:
            counter.done += 1
        elif state == State.FAILED:
            counter.failed += 1
            if updated_ts >= latest_failure.get(inbox, (float("-inf"), ""))[0]:
                latest_failure[inbox] = (updated_ts, key)
    for inbox, (_, key) in latest_failure.items():
        entry = ledger.get(key)
        if entry is not None:
            counters[inbox].last_error = {"time": entry.updated_at, "source": str(Path(inbox) / entry.source),
                                          "reason": entry.error or ""}
    return counters


@dataclass
class _InboxRuntime:
    index: int
    inbox: Inbox
    profile: Profile
    fingerprint: str
    tracker: SettleTracker
    watcher: InboxWatcher
    handled: dict[Path, FileVersion] = field(default_factory=dict)
    settling: bool = False  # a batch of the tracker's stats is out in the offloader

    @property
    def inbox_id(self) -> str:
        return inbox_id(self.inbox)


def inbox_id(inbox: Inbox) -> str:
    """The ledger's id for an inbox: its path, so entries survive reordering the config."""
    return str(inbox.path)


def hash_file(root: Path, path: Path) -> tuple[str, bytes, FileVersion]:
    """Hash a file below inbox `root` and return its sha256, first bytes, and version as of the end of the
    read; it is opened through `srd.fs.safefs`, never through a symlink.

    The caller compares that version with the settled one: if they differ, the file changed while
    it was being read and the hash means nothing.
    """
    digest = hashlib.sha256()
    with os.fdopen(safefs.open_regular(root, path)[0], "rb") as fh:
        head = fh.read(HEAD_BYTES)
        digest.update(head)
        while chunk := fh.read(_READ_CHUNK):
            digest.update(chunk)
        st = os.fstat(fh.fileno())
    return digest.hexdigest(), head, FileVersion.of(st)


def read_head(root: Path, path: Path, size: int = HEAD_BYTES) -> tuple[bytes, FileVersion]:
    """The first `size` bytes of a file below inbox `root`, and its version as it was read."""
    with os.fdopen(safefs.open_regular(root, path)[0], "rb") as fh:
        return fh.read(size), FileVersion.of(os.fstat(fh.fileno()))


def probe_file(root: Path, path: Path, *, need_hash: bool) -> _Probe:
    """Read what the loop needs from a file below inbox `root`; runs in an offload thread, never in the loop."""
    sha256 = hashed = None
    if need_hash:
        sha256, _, hashed = hash_file(root, path)
    head, version = read_head(root, path, HEADER_BYTES)
    header = read_header(head)
    return _Probe(sha256, head[:HEAD_BYTES], header.pixels if header is not None else None, hashed or version)


def fingerprints(config: Config) -> dict[str, str]:
    """The pipeline fingerprint of every profile an inbox uses, after verifying their models.

    A missing or corrupt model must stop the daemon (or reject a reload) here: found only inside the
    workers, it would fail every file and move them all to the failed folder.

    Raises:
        ModelError: A profile's model is missing or its sha256 differs from its manifest's.
    """
    context = StageContext(config.engine, config.model_dirs)
    used = sorted({inbox.profile for inbox in config.inboxes})
    for name in used:
        for spec in config.profiles[name].pipeline.models(context):
            context.verify(spec)
    return {name: config.profiles[name].pipeline.fingerprint(context) for name in used}


def default_pool(config: Config, on_start: Callable[[Any], None], wake: Callable[[], None]) -> JobPool:
    return build_pool(Backend.of(config), on_start=on_start, wake=wake)


def _pool_settings(config: Config) -> Backend:
    return Backend.of(config)


def _upscale_summary(profile: Profile) -> tuple[str | None, float | None]:
    ups = [s for s in profile.pipeline.stages if isinstance(s, Upscale)]
    if not ups:
        return None, None
    scale = 1.0
    for stage in ups:
        scale *= stage.scale
    return ",".join(s.model for s in ups), scale


class Daemon:
    """Watches the configured inboxes until SIGTERM/SIGINT; SIGHUP reloads the config.

    Args:
        config: The validated configuration.
        config_path: Where SIGHUP re-reads it from (None: the built-in defaults).
        notifier: sd_notify channel (default: from the environment; a no-op outside systemd).
        clock: Monotonic clock for settling, timers and the drain deadline.
        sleep: Used only while draining.
        pool_builder: Builds the job pool (tests inject one with a fake executor).
        watcher_builder: Builds an inbox watcher.
        offloader: Runs file reads off the loop (tests inject one that runs them at once).
        drain_timeout: Seconds SIGTERM waits for running jobs before abandoning them.
    """

    def __init__(
        self,
        config: Config,
        *,
        config_path: Path | None = None,
        notifier: Notifier | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        pool_builder: PoolBuilder = default_pool,
        watcher_builder: WatcherBuilder | None = None,
        offloader: Offloader | None = None,
        drain_timeout: float = 30.0,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.notifier = notifier or Notifier.from_env()
        self._clock = clock
        self._sleep = sleep
        self._pool_builder = pool_builder
        self._watcher_builder = watcher_builder or (lambda i, inbox, sink: InboxWatcher(i, inbox, sink))
        self._drain_timeout = drain_timeout
        self._hints: queue.SimpleQueue[Hint | None] = queue.SimpleQueue()
        self._runtimes: dict[str, _InboxRuntime] = {}
        self._counters: dict[str, _Counters] = {}
        self._backlog: deque[tuple[str, ReadyFile]] = deque()
        self._active: dict[str, _Work] = {}  # submitted jobs by key: no more than the pool has room for
        self._running_since: dict[str, str] = {}  # key → when a worker took the job (ISO 8601 UTC), for status
        self._deferred: dict[Path, str] = {}
        self._solo: set[str] = set()  # keys of submitted jobs that the pool runs alone (suspects)
        self._claims = InboxClaims(config.state_dir)
        # Inboxes whose claim is not trusted (lost to another daemon, or unconfirmed after a freeze), with the
        # files that wait for it, and the outcomes of their jobs, finished once the claim is confirmed again.
        self._claim_paused: dict[str, set[Path]] = {}
        self._claim_parked: dict[str, list[Outcome]] = {}
        self._offload = offloader or Offloader(OFFLOAD_THREADS, OFFLOAD_PER_INBOX, lambda: self._hints.put(None))
        self._reading: dict[Path, tuple[str, ReadyFile]] = {}  # files being read off the loop, latest request
        self._read: dict[Path, Done] = {}  # finished reads, each taken by the next `_consider` of its file
        # Source steps out in the offloader, with when each was sent: their files wait for them.
        self._steps: dict[Path, tuple[SourceStep, float]] = {}
        self._step_retries: dict[Path, SourceStep] = {}  # steps that failed; tried again at the next reconcile
        self._heartbeats: set[Path] = set()  # inboxes whose claim heartbeat is out in the offloader
        self._blocks: dict[str, OutboxBlock] = {}
        # The state dir refuses writes (full, read-only): nothing new starts, and the outcomes that could not
        # be recorded wait in `_parked` (their work stays active) until a probe says it takes writes again.
        self._state_block: OutboxBlock | None = None
        self._parked: list[Outcome] = []
        self._unstarted: set[str] = set()  # running jobs whose start record could not be written
        self._recovery_pending = False
        self._status_failing = False
        # Files that decoded as truncated while still recently modified: (recheck at, inbox id, path), and
        # the back-off each got last time.
        self._rechecks: list[tuple[float, str, Path]] = []
        self._backoff: dict[Path, float] = {}
        self._stop_signal: int | None = None
        self._reload_requested = False
        self._pool_stale = False
        self._state = "starting"
        self._started_wall = time.time()
        self._started = clock()
        self._last_status: dict[str, Any] | None = None
        self._status_written = float("-inf")
        self._last_reload_error: str | None = None
        self.ledger: Ledger | None = None
        self.pool: JobPool | None = None

    # -- signals -------------------------------------------------------------------------------------------

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop_signal = signum

    def _on_reload_signal(self, signum: int, frame: FrameType | None) -> None:
        self._reload_requested = True

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: drain and exit; SIGHUP: reload. Handlers only set flags."""
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_reload_signal)

    # -- lifecycle -----------------------------------------------------------------------------------------

    def run(self) -> ExitCode:
        """Run until asked to stop; returns the exit status (OK after a clean drain).

        Raises:
            LockedError: Another instance owns the state directory.
            ModelError: A profile's model is missing or corrupt.
        """
        self.start()
        try:
            self.notifier.ready(status=self._status_line())
            log.info("daemon_ready", pid=os.getpid(), inboxes=len(self._runtimes), workers=self.config.workers)
            self._loop()
            self._shutdown()
        finally:
            self.close()
        return ExitCode.OK

    def start(self) -> None:
        """Take the ledger lock, recover from a crash, build the pool and start watching (no loop yet).

        Raises:
            StartupError: A folder, the state directory or a watch could not be created or opened.
        """
        try:
            self.ledger = Ledger.open(self.config.state_dir)
            try:
                self._startup()
            except BaseException:
                self.close()
                raise
        except OSError as exc:
            raise StartupError(f"cannot start: {describe_os_error(exc)}") from exc
        self._state = "running"

    def _startup(self) -> None:
        assert self.ledger is not None
        prints = fingerprints(self.config)
        self._prepare_folders(self.config, clean=True)
        for configured in self.config.inboxes:
            self._claims.acquire(configured.path)
        self._runtimes = self._new_runtimes(self.config, prints)
        try:
            self._recover_unfinished()
        except LedgerUnwritableError as exc:
            self._recovery_pending = True
            self._state_unwritable(exc)
        self.pool = self._pool_builder(self.config, self._journal_start, lambda: self._hints.put(None))
        _start_watchers(self._runtimes.values())

    def _prepare_folders(self, config: Config, *, clean: bool) -> None:
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

    def _new_runtimes(self, config: Config, prints: dict[str, str]) -> dict[str, _InboxRuntime]:
        """Runtimes for `config`, watchers not started; an inbox whose profile is unchanged keeps its memory."""
        old = self._runtimes
        runtimes: dict[str, _InboxRuntime] = {}
        assert self.ledger is not None
        seeds = ledger_counters(self.ledger) if any(inbox_id(i) not in self._counters for i in config.inboxes) else {}
        for index, inbox in enumerate(config.inboxes):
            key = inbox_id(inbox)
            watcher = self._watcher_builder(index, inbox, self._hints.put)
            tracker = SettleTracker(max(inbox.settle_seconds, 0.01), clock=self._clock,
                                    stat=functools.partial(safefs.lstat, inbox.path))
            runtime = _InboxRuntime(index, inbox, config.profiles[inbox.profile], prints[inbox.profile], tracker,
                                    watcher)
            if key in old and old[key].fingerprint == runtime.fingerprint:
                runtime.handled = old[key].handled
            runtimes[key] = runtime
            self._counters.setdefault(key, seeds.get(key) or _Counters())
        return runtimes

    def _recover_unfinished(self) -> None:
        """Pin the last daemon's death on the file it ran alone, if it did; close entries a crash left started
        whose source is gone; the rest are retried (alone) when scanned."""
        assert self.ledger is not None
        for entry in self.ledger.pin_solo_deaths():
            log.warning("death_pinned_on_file", inbox=entry.inbox, src=str(entry.source), strikes=entry.strikes,
                        max_attempts=self.config.max_attempts,
                        reason="the daemon died while this file was being retried alone")
        for entry in self.ledger.unfinished():
            runtime = self._runtimes.get(entry.inbox)
            if runtime is None:
                continue  # that inbox is no longer configured; keep the entry for when it returns
            source = runtime.inbox.path / entry.source
            if not os.path.lexists(source) and runtime.watcher.root.is_dir():
                self.ledger.record_failed(entry.key, error="source vanished before processing finished")
                log.warning("unfinished_source_gone", src=str(source), inbox=entry.inbox, attempts=entry.attempts)
            else:
                log.info("unfinished_will_retry", src=str(source), inbox=entry.inbox, attempts=entry.attempts)

    def _shutdown(self) -> None:
        assert self.pool is not None
        self._state = "stopping"
        self.notifier.stopping()
        log.info("daemon_stopping", signal=self._stop_signal, running=self.pool.running)
        self._write_status(force=True)
        for runtime in self._runtimes.values():
            runtime.watcher.stop()
        deadline = self._clock() + self._drain_timeout
        for outcome in self.pool.drain(deadline, self._sleep):
            self._finish(outcome)
        while self._steps and self._clock() < deadline:  # a move under way is journaled, not left to a rescan
            self._take_offloaded()
            self._sleep(0.02)
        assert self.ledger is not None
        for work in self._active.values():  # abandoned by the drain: our doing, not the file's
            entry = self.ledger.get(work.key)
            if entry is not None and entry.state == State.STARTED:
                try:
                    self.ledger.record_interrupted(work.key)
                except LedgerError as exc:  # the next start may then charge it one strike too many
                    log.warning("interruption_not_recorded", src=str(work.source), error=str(exc))

    def close(self) -> None:
        """Stop watchers and workers, write the final status, release the ledger lock."""
        for runtime in self._runtimes.values():
            runtime.watcher.stop()
        self._offload.close()
        self._claims.release_all(wait_s=CLAIM_RELEASE_WAIT_S)
        if self.pool is not None:
            self.pool.close()
            self.pool = None
        if self.ledger is not None:
            self._state = "stopped"
            self._write_status(force=True)
            try:
                self.ledger.close()
            except LedgerError as exc:  # the last stat-cache batch is lost: those files are hashed again
                log.warning("ledger_close_failed", error=str(exc))
            self.ledger = None
        self.notifier.close()
        log.info("daemon_stopped")

    # -- the loop ------------------------------------------------------------------------------------------

    def _loop(self) -> None:
        assert self.pool is not None
        now = self._clock()
        next_supervise = now
        next_status = now
        next_reconcile = now + self.config.reconcile_interval
        while self._stop_signal is None:
            self.step()
            now = self._clock()
            if now >= next_supervise:
                next_supervise = now + SUPERVISE_EVERY_S
                self._supervise()
            if now >= next_status:
                next_status = now + STATUS_EVERY_S
                self._write_status()
            if now >= next_reconcile:
                next_reconcile = now + self.config.reconcile_interval
                log.info("reconcile_scan_requested", step_retries=len(self._step_retries))
                for runtime in self._runtimes.values():
                    runtime.watcher.request_scan()
                self._retry_steps()
            self._wait()

    def step(self) -> None:
        """One pass of the loop without waiting: reload if asked, take hints, settle, collect, dispatch."""
        assert self.pool is not None
        if self._reload_requested:
            self._reload_requested = False
            self._reload()
        try:
            self._keep_claims()
            self._take_hints()
            self._recheck_incomplete()
            self._poll_trackers()
            self._take_offloaded()
            for outcome in self.pool.collect():
                self._finish(outcome)
            self._replace_stale_pool()
            self._dispatch()
        except LedgerUnwritableError as exc:
            # Any other ledger write (a stat-cache batch): it changed nothing, so pausing is all there is to do.
            self._state_unwritable(exc)

    def _wait(self) -> None:
        """Sleep until a hint or a wake-up arrives, the next settle deadline, or `MAX_SLEEP_S`."""
        assert self.pool is not None
        if self._backlog and self.pool.has_room() and not self._pool_stale:
            return
        timeout = MAX_SLEEP_S
        now = self._clock()
        for runtime in self._runtimes.values():
            deadline = runtime.tracker.next_deadline()
            if deadline is not None:
                timeout = min(timeout, max(0.0, deadline - now))
        try:
            hint = self._hints.get(timeout=timeout)
        except queue.Empty:
            return
        if hint is not None:
            self.hint(hint)

    def _take_hints(self) -> None:
        while True:
            try:
                hint = self._hints.get_nowait()
            except queue.Empty:
                return
            if hint is not None:
                self.hint(hint)

    def hint(self, hint: Hint) -> None:
        """Take one hint from a watcher (tests call this directly)."""
        runtime = self._runtime_by_index(hint.inbox)
        if runtime is None or runtime.inbox.path not in hint.path.parents:
            return  # from a watcher stopped by a reload
        if hint.signature is not None and runtime.handled.get(hint.path) == hint.signature:
            return
        runtime.tracker.hint(hint.path)

    def _runtime_by_index(self, index: int) -> _InboxRuntime | None:
        for runtime in self._runtimes.values():
            if runtime.index == index:
                return runtime
        return None

    def _poll_trackers(self) -> None:
        """Send each inbox's due settle stats off the loop, one batch per inbox at a time."""
        for runtime in self._runtimes.values():
            if runtime.watcher.state == "missing" or runtime.settling:
                continue  # its files can't be judged now; the rescan on its return, or the batch out, will
            looks = runtime.tracker.due()
            if looks:
                runtime.settling = True
                self._offload.submit(runtime.inbox_id, _SettleToken(runtime, looks),
                                     functools.partial(runtime.tracker.look, looks))

    def _settled(self, token: _SettleToken, done: Done) -> None:
        """Judge a batch of settle stats; a batch of a runtime that a reload replaced is dropped (the new
        watcher's first scan hinted all its files afresh)."""
        runtime = token.runtime
        runtime.settling = False
        key = runtime.inbox_id
        if self._runtimes.get(key) is not runtime:
            return
        if done.error is not None:  # `look` catches OSError; anything else is a bug, not a file's fault
            log.error("settle_stats_failed", inbox=key, error=repr(done.error))
            for look in token.looks:
                runtime.tracker.hint(look.path)  # so that none of them waits forever
            return
        result = runtime.tracker.resolve(done.value)
        for ready in result.ready:
            self._backlog.append((key, ready))
        for path in result.vanished:
            self._forget_writer(path)
            runtime.handled.pop(path, None)
            self._forget_source(runtime.inbox_id, runtime.inbox.path, path)
        for rejected in result.rejected:
            log.info("path_not_processed", src=str(rejected.path), inbox=key, reason=rejected.reason)

    def _dispatch(self) -> None:
        assert self.pool is not None
        budget_end = self._clock() + CONSIDER_BUDGET_S
        while (self._backlog and self.pool.has_room() and not self._pool_stale and self._state_block is None
               and self._clock() < budget_end):
            key, ready = self._backlog.popleft()
            runtime = self._runtimes.get(key)
            if runtime is None or runtime.watcher.state == "missing":
                continue  # gone from the config, or its share is away: the rescan on its return brings it back
            if key in self._claim_paused or not self._claims.trusted(runtime.inbox.path):
                self._pause_for_claim(key)
                self._claim_paused[key].add(ready.path)  # another daemon may own it now: wait for the claim
                continue
            if key in self._blocks:
                self._blocks[key].waiting.add(ready.path)  # its outbox refuses writes: wait for it
                continue
            try:
                with bound_contextvars(inbox=key):  # every line about this file names its inbox
                    self._consider(runtime, ready)
            except LedgerUnwritableError as exc:
                self._backlog.appendleft((key, ready))
                self._state_unwritable(exc)
            except FileNotFoundError:
                continue  # gone again before we got to it; nothing to do
            except OSError as exc:
                on_outbox = _under(exc.filename, runtime.inbox.outbox)
                if exc.errno in BLOCKING_ERRNOS and on_outbox:
                    self._block_outbox(key, runtime.inbox.outbox, ready.path, str(exc), exc.errno)
                    continue
                # The outbox refused a path (a sub-folder replaced by a symlink): no verdict on this version of
                # the file, so the next scan tries it again.
                self._skip(runtime, key, ready, exc, remember=not on_outbox)
            except (ImageError, OutputError) as exc:
                self._skip(runtime, key, ready, exc)
            finally:
                self._read.pop(ready.path, None)  # a read `_consider` had no use for this time

    def _take_offloaded(self) -> None:
        """Hand each finished off-loop call to its owner: settle stats, a file's read, a source step."""
        for done in self._offload.collect():
            token = done.token
            if isinstance(token, _SettleToken):
                self._settled(token, done)
            elif isinstance(token, _StepToken):
                self._step_done(token.step, done)
            elif isinstance(token, _HeartbeatToken):
                self._heartbeats.discard(token.inbox)
                if done.error is not None:  # the heartbeat logs what it expects; anything else is a bug
                    log.error("inbox_claim_heartbeat_crashed", inbox=str(token.inbox), error=repr(done.error))
            elif isinstance(token, _ReadToken):
                # Back to the front of the backlog, to be decided now.
                request = self._reading.pop(token.path, None)
                if request is not None:
                    self._read[token.path] = done
                    self._backlog.appendleft(request)

    def _read_off_loop(self, runtime: _InboxRuntime, ready: ReadyFile, *, need_hash: bool) -> _Probe | None:
        """This file's read, if it finished for this version of it; otherwise start it and return None.

        The file comes back through the backlog when its read is done, and `_consider` runs again.

        Raises:
            OSError: The read failed (the file vanished, can't be read …).
        """
        signature = ready.version
        done = self._read.pop(ready.path, None)
        # A read of this same version serves; one with a hash serves a request without.
        if done is not None and done.token.version == signature and (done.token.need_hash or not need_hash):
            if done.error is not None:
                raise done.error
            return done.value
        if ready.path not in self._reading:
            token = _ReadToken(ready.path, signature, need_hash)
            self._offload.submit(runtime.inbox_id, token,
                                 lambda: probe_file(runtime.inbox.path, ready.path, need_hash=need_hash))
        self._reading[ready.path] = (runtime.inbox_id, ready)
        return None

    def _skip(self, runtime: _InboxRuntime, key: str, ready: ReadyFile, exc: Exception, *,
              remember: bool = True) -> None:
        # The file can't be read now; remember this version of it so the loop doesn't spin, and let its
        # next change or a restart bring it back (`remember`: else the next reconcile scan does).
        log.error("file_skipped", src=str(ready.path), inbox=key, error=str(exc))
        if remember:
            runtime.handled[ready.path] = ready.version
        self._note_error(key, ready.path, str(exc))

    def _supervise(self) -> None:
        healthy = self.pool is not None and self.pool.healthy
        for runtime in self._runtimes.values():
            try:
                runtime.watcher.supervise()
            # A watcher that can't be restarted must not stop the others; withholding WATCHDOG=1 lets
            # systemd restart the whole daemon if it stays broken.
            except Exception:
                log.exception("watcher_supervision_failed", inbox=str(runtime.inbox.path))
                healthy = False
        if self.pool is not None:
            self.pool.ensure_executor()
        self._retry_blocked_outboxes()
        self._retry_state_dir()
        if healthy and self.notifier.watchdog_interval_s() is not None:
            self.notifier.watchdog()

    # -- one file ------------------------------------------------------------------------------------------

    def _consider(self, runtime: _InboxRuntime, ready: ReadyFile) -> None:
        """Decide what to do with a settled file: nothing, a duplicate, a retry, a new job, or give up."""
        assert self.ledger is not None and self.pool is not None
        path = ready.path
        # No new stat here (the inbox may be on a share that hangs): every decision either reads the file off
        # the loop and compares its version, or ends in a source step that does; a file that changed since it
        # settled also sends a hint and settles again.
        signature = ready.version
        if runtime.handled.get(path) == signature or path in self._steps:
            return  # decided already, or its source step is under way (and hints it again if it changed)
        if any(work.source == path for work in self._active.values()):
            self._deferred[path] = runtime.inbox_id
            return
        rel = PurePosixPath(path.relative_to(runtime.inbox.path).as_posix())
        if signature.size > self.config.max_input_bytes:
            # Refused from its size alone: hashing it would read it all (a sparse file can claim terabytes).
            limit = self.config.max_input_bytes
            reason = f"file is {signature.size} bytes, over the limit of {limit} (max_input_bytes)"
            self._fail(runtime.inbox_id, runtime.inbox, runtime.profile, path, rel, signature, None, reason,
                       record=False)
            return
        sha256 = self.ledger.cached_hash(runtime.inbox_id, rel, signature)
        seen_before = sha256 is not None  # this very version was judged before (in this run or an earlier one)
        probe = None
        if sha256 is None:
            probe = self._read_off_loop(runtime, ready, need_hash=True)
            if probe is None:
                return  # being read off the loop; it comes back when the hash is known
            if probe.signature != signature:
                runtime.tracker.hint(path)
                return
            assert probe.sha256 is not None
            sha256 = probe.sha256
            self.ledger.remember_hash(runtime.inbox_id, rel, signature, sha256)
        key = make_key(sha256, runtime.fingerprint)
        if key in self._active:
            self._deferred[path] = runtime.inbox_id  # same content in flight from another path
            return
        entry = self.ledger.get(key)
        own_outputs = self.ledger.outputs_of(runtime.inbox_id, rel)
        if key in own_outputs.values():
            self._already_done(runtime, path, rel, signature, entry)
            return
        if entry is not None and entry.state == State.DONE:
            self._duplicate(runtime, path, rel, signature, entry, refresh=bool(own_outputs), seen_before=seen_before)
            return
        unfinished = entry is not None and entry.state == State.STARTED  # a crash cut its last start short
        if unfinished and self._clock() - self._started < SOLO_RETRY_AFTER_S:
            runtime.tracker.hint(path)  # judged again once it has settled again
            return
        if unfinished and entry is not None and entry.strikes >= self.config.max_attempts:
            reason = (f"gave up after {entry.strikes} deaths pinned on this file: its worker died, or the daemon "
                      "died while it was being retried alone")
            self._fail(runtime.inbox_id, runtime.inbox, runtime.profile, path, rel, signature, key, reason,
                       record=True)
            return
        probe = probe or self._read_off_loop(runtime, ready, need_hash=False)
        if probe is None:
            return  # its header is being read off the loop
        if probe.signature != signature:
            runtime.tracker.hint(path)  # changed since it settled: let it settle again
            return
        target = self._choose_target(runtime, rel, key, probe.head)
        if target is None:
            log.warning("output_exists_skipped", src=str(path), collision=runtime.inbox.collision)
            runtime.handled[path] = signature
            self._counters[runtime.inbox_id].skipped += 1
            return
        work = _Work(runtime.inbox_id, runtime.inbox, runtime.profile, runtime.fingerprint, path, rel, signature,
                     sha256, key, target, probe.pixels)
        # Nobody knows whether the daemon's death was this file's doing: run it alone to find out.
        self._submit(work, suspect=unfinished)

    def _submit(self, work: _Work, *, suspect: bool = False) -> None:
        assert self.pool is not None
        self._active[work.key] = work
        if suspect:
            self._solo.add(work.key)
        job = Job(work.source, work.target.parent, work.profile, self.config.max_input_pixels, target=work.target,
                  source_root=work.inbox.path, output_root=work.inbox.outbox,
                  max_input_bytes=self.config.max_input_bytes)
        self.pool.submit(work.key, job, suspect=suspect, time_limit=self._time_limit(work))

    def _time_limit(self, work: _Work) -> float:
        """The configured `job_timeout`, or one derived from the image's pixels (the largest allowed if unknown)."""
        if self.config.job_timeout is not None:
            return self.config.job_timeout
        pixels = work.pixels if work.pixels is not None else self.config.max_input_pixels
        return job_time_limit(work.profile, pixels, floor=self.config.job_timeout_min_seconds)

    def _journal_start(self, key: Any) -> None:
        """Pool hook: a worker is about to take this job, so its start (and attempt) becomes durable now.

        If the state dir refuses the record, the job runs anyway (the pool can't take it back) and its start
        is recorded with its outcome, once the state dir takes writes again.
        """
        assert self.ledger is not None
        work = self._active[key]
        self._running_since[key] = datetime.now(UTC).isoformat(timespec="seconds")
        # A big photo can take minutes: say when it starts, not only when it is done.
        log.info("file_started", src=str(work.source), inbox=work.inbox_id, profile=work.profile.name,
                 pixels=work.pixels, solo=key in self._solo)
        try:
            self.ledger.record_start(work.sha256, work.fingerprint, inbox=work.inbox_id, source=work.rel,
                                     target=work.target, solo=key in self._solo)
        except LedgerUnwritableError as exc:
            self._unstarted.add(key)
            self._state_unwritable(exc)

    def _choose_target(self, runtime: _InboxRuntime, rel: PurePosixPath, key: str | None, head: bytes,
                       suffix: str | None = None) -> Path | None:
        """The output path for `rel` under the collision policy, or None to skip the file.

        A name srd wrote for this same source (or reserved for this job before a crash) is reused; a
        name srd wrote for another source is never overwritten; a name it didn't write follows the
        inbox's ``collision`` setting.
        """
        assert self.ledger is not None
        out_dir = runtime.inbox.outbox / rel.parent
        safefs.make_dirs(runtime.inbox.outbox, out_dir)
        requested = runtime.profile.output.format
        source_format = sniff_format(head)
        if suffix is not None:
            name = Path(rel.name).stem + suffix
        elif source_format is None:
            name = rel.name  # not an image: the job will fail; the name is never used
        else:
            written = output_format_for(source_format, requested, runtime.profile.output.fallback_format)
            name = output_name(rel.name, source_format, written, requested)
        in_flight = {work.target for work in self._active.values()}
        reserved_by_starts = self.ledger.reserved_targets()
        claimed = reserved_by_starts.pop(key, None) if key else None
        if claimed is not None and claimed.parent == out_dir and claimed not in in_flight:
            return claimed
        claimed_elsewhere = set(reserved_by_starts.values())
        for candidate in numbered_names(out_dir, name):
            if candidate in in_flight or candidate in claimed_elsewhere:
                continue
            owner = self.ledger.owner(candidate)
            ours = (runtime.inbox_id, rel.as_posix())
            if owner is not None and (owner.inbox, owner.source) == ours:
                return candidate
            if owner is not None:
                continue
            if marked_for(runtime.inbox.outbox, candidate) == ours:  # srd wrote it for this source; its ledger forgot
                return candidate
            if not safefs.lexists(runtime.inbox.outbox, candidate) or runtime.inbox.collision == "overwrite":
                return candidate
            if runtime.inbox.collision == "skip":
                return None
        raise AssertionError("numbered_names never ends")

    def _already_done(self, runtime: _InboxRuntime, path: Path, rel: PurePosixPath, signature: FileVersion,
                      entry: Entry | None) -> None:
        """An output srd wrote for this path holds this content's picture: at most the source step is left."""
        own_job = (entry is not None and entry.state == State.DONE and entry.inbox == runtime.inbox_id
                   and entry.source == rel)
        if own_job and entry is not None and entry.disposition in (None, "kept-changed"):
            # A crash (or a late write) postponed the source step.
            self._dispose(runtime.inbox, runtime.inbox_id, path, rel, signature, entry.key)
        elif not own_job and runtime.inbox.on_success != "keep":
            # A duplicate's output: its source step isn't journaled, and the file still being here says
            # it did not happen (or failed); do it now.
            self._dispose(runtime.inbox, runtime.inbox_id, path, rel, signature, None)
        else:
            runtime.handled[path] = signature

    def _duplicate(self, runtime: _InboxRuntime, path: Path, rel: PurePosixPath, signature: FileVersion,
                   entry: Entry, *, refresh: bool, seen_before: bool) -> None:
        """This content is done under another name: link its output here (``duplicates: link``, or always
        when this path has an output of its own from earlier content, which would otherwise stay stale).

        A duplicate kept in the inbox (``duplicates: skip``, ``on_success: keep``) comes back at every start;
        it was counted and logged the first time (`seen_before`), so it is only logged at debug level then.
        """
        assert self.ledger is not None
        if not seen_before:
            self._counters[runtime.inbox_id].duplicates += 1
        how = "skipped"
        output_root = next((i.outbox for i in self.config.inboxes if entry.output is not None
                            and entry.output.is_relative_to(i.outbox)), None)
        if ((runtime.inbox.duplicates == "link" or refresh) and output_root is not None and entry.output is not None
                and safefs.lexists(output_root, entry.output)):
            target = self._choose_target(runtime, rel, None, b"", suffix=entry.output.suffix)
            if target is not None:
                if not _same_file(entry.output, target):
                    how = link_or_copy(output_root, entry.output, runtime.inbox.outbox, target, replace=True)
                self.ledger.record_output(target, inbox=runtime.inbox_id, source=rel, key=entry.key)
        elif refresh:
            log.warning("stale_output_left", src=str(path),
                        outputs=sorted(self.ledger.outputs_of(runtime.inbox_id, rel)),
                        reason="the earlier output of this content is gone, so there is nothing to link")
        report = log.debug if seen_before and how == "skipped" else log.info
        report("duplicate", src=str(path), same_as=str(entry.source), output=str(entry.output), action=how)
        self._dispose(runtime.inbox, runtime.inbox_id, path, rel, signature, None)

    # -- outcomes ------------------------------------------------------------------------------------------

    def _finish(self, outcome: Outcome) -> None:
        assert self.ledger is not None and self.pool is not None
        key = outcome.token
        assert isinstance(key, str)  # the pool hands back the work key it was given
        work = self._active[key]
        if work.inbox.path in self._claims.held and (work.inbox_id in self._claim_paused
                                                     or not self._claims.trusted(work.inbox.path)):
            # Recording it would move, delete or fail a source that another daemon may own now.
            self._pause_for_claim(work.inbox_id)
            self._claim_parked.setdefault(work.inbox_id, []).append(outcome)
            self._running_since.pop(key, None)  # no longer running: it waits for the claim
            return
        with bound_contextvars(inbox=work.inbox_id):  # every line about this file names its inbox
            try:
                self._finish_work(key, outcome)
            except OSError as exc:
                # Recording an outcome touches the outbox, the inbox and failed folder (a path too long, a
                # share gone): one file's trouble, never the daemon's. Left as it is, the next scan retries it.
                self._active.pop(key, None)
                self._running_since.pop(key, None)
                self._solo.discard(key)
                log.error("outcome_not_recorded", src=str(work.source), error=str(exc))
                self._note_error(work.inbox_id, work.source, f"its result could not be recorded: {exc}")

    def _finish_work(self, key: str, outcome: Outcome) -> None:
        assert self.ledger is not None
        work = self._active.pop(key)
        self._running_since.pop(key, None)
        solo = work.key in self._solo
        self._solo.discard(work.key)
        try:
            if work.key in self._unstarted:
                self.ledger.record_start(work.sha256, work.fingerprint, inbox=work.inbox_id, source=work.rel,
                                         target=work.target, solo=solo)
                self._unstarted.discard(work.key)
            self._record_outcome(work, outcome)
        except LedgerUnwritableError as exc:
            # Each record is all or nothing and comes before the step it allows, so the outcome can be
            # handled again from the start once the state dir takes writes; until then its work stays active.
            self._active[work.key] = work
            if solo:
                self._solo.add(work.key)
            self._parked.append(outcome)
            self._state_unwritable(exc)
            self._state_block.waiting.add(work.source)  # type: ignore[union-attr]
            return
        for path, key in list(self._deferred.items()):
            runtime = self._runtimes.get(key)
            if runtime is not None:
                runtime.tracker.hint(path)
        self._deferred.clear()

    def _record_outcome(self, work: _Work, outcome: Outcome) -> None:
        if isinstance(outcome, Finished) and outcome.result.ok:
            self._succeeded(work, outcome)
        elif isinstance(outcome, Finished) and outcome.result.out_of_memory:
            # Like a worker killed by the OOM killer: retried alone (the pool runs retries one at a time).
            self._lost(work, Lost(outcome.token, outcome.result.error or "out of memory"))
        elif isinstance(outcome, Finished) and outcome.result.truncated and self._wait_for_writer(work, outcome.result):
            pass
        elif isinstance(outcome, Finished) and outcome.result.output_errno in BLOCKING_ERRNOS:
            self._output_refused(work, outcome.result.error or "output refused", outcome.result.output_errno)
        elif isinstance(outcome, Finished):
            self._failed_result(work, outcome.result.error or "unknown error", outcome.result.sha256)
        else:
            self._lost(work, outcome)

    def _state_unwritable(self, exc: LedgerUnwritableError) -> None:
        """Pause: the state dir refused a ledger write. Like a full outbox, it is nobody's file's fault."""
        if self._state_block is None:
            self._state_block = OutboxBlock.start(self.config.state_dir, str(exc), exc.errno or 0, self._clock())
            log.error("state_dir_unwritable_paused", state_dir=str(self.config.state_dir), error=str(exc))

    def _retry_state_dir(self) -> None:
        block = self._state_block
        if block is None or not block.recovered(self._clock()):
            return
        self._state_block = None
        log.info("state_dir_writable_resumed", state_dir=str(block.outbox), parked=len(self._parked),
                 paused_s=round(self._clock() - block.since, 1))
        try:
            if self._recovery_pending:
                self._recover_unfinished()
                self._recovery_pending = False
        except LedgerUnwritableError as exc:
            self._state_unwritable(exc)
            return
        parked, self._parked = self._parked, []
        for outcome in parked:
            self._finish(outcome)

    def _wait_for_writer(self, work: _Work, result: JobResult) -> bool:
        """Put a truncated file that may still be being written back to settle after a growing back-off.

        A slow writer (a camera over Wi-Fi, a stalled copy, a download that pauses) can stop for longer
        than any fixed wait; its half-written file is no verdict on the file. So a truncated file waits,
        each time twice as long (from ``2 × settle_seconds`` up to ``settle_max_backoff_seconds``), as long
        as it was last modified less than ``settle_max_backoff_seconds`` ago. One that stayed unmodified
        that long will not be completed: it fails, with that said (returns False when nothing waited).
        """
        path = work.source
        cap = work.inbox.settle_max_backoff_seconds
        # From the version that settled, not a new stat (the inbox may be on a share that hangs): a writer that
        # went on since sends a hint, and the file settles again as a new version.
        modified_s_ago = time.time() - work.signature.mtime_ns / 1e9
        if modified_s_ago > cap:
            waited = path in self._backoff
            self._forget_writer(path)
            if not waited:
                return False
            log.warning("file_incomplete_gave_up", src=str(path), reason=result.error,
                        modified_s_ago=round(modified_s_ago, 1), cap_s=cap)
            self._failed_result(work, f"{result.error}; unchanged for {round(modified_s_ago)} s, longer than "
                                f"settle_max_backoff_seconds ({cap:g} s): the writer never finished it",
                                result.sha256)
            return True
        delay = min(cap, max(2 * work.inbox.settle_seconds, 1.0, 2 * self._backoff.get(path, 0.0)))
        self._backoff[path] = delay
        assert self.ledger is not None
        self.ledger.forget(work.key)  # not an attempt: the file wasn't all there yet
        runtime = self._runtimes.get(work.inbox_id)
        if runtime is not None:
            runtime.handled.pop(path, None)
        heapq.heappush(self._rechecks, (self._clock() + delay, work.inbox_id, path))
        log.warning("file_incomplete_waiting", src=str(path), reason=result.error, retry_in_s=delay,
                    modified_s_ago=round(modified_s_ago, 1))
        return True

    def _forget_writer(self, path: Path) -> None:
        self._backoff.pop(path, None)

    def _recheck_incomplete(self) -> None:
        now = self._clock()
        while self._rechecks and self._rechecks[0][0] <= now:
            _, key, path = heapq.heappop(self._rechecks)
            runtime = self._runtimes.get(key)
            if runtime is not None:
                runtime.tracker.hint(path)

    def _clear_earlier_failure(self, work: _Work) -> None:
        """A source that failed before and has now been processed: drop its stale reason file and failed
        ledger entries, which would otherwise still say it is broken."""
        assert self.ledger is not None
        report = report_path(work.inbox.failed / work.rel)
        if not safefs.lexists(work.inbox.failed, report):
            return  # the common case, at the cost of one stat; the ledger scan below is rare
        stale = [e.key for e in self.ledger.entries()
                 if e.state == State.FAILED and e.inbox == work.inbox_id and e.source == work.rel]
        for key in stale:
            self.ledger.forget(key)
        try:
            safefs.unlink(work.inbox.failed, report)
        except OSError as exc:
            log.warning("stale_failure_report_remove_failed", path=str(report), error=str(exc))
            return
        log.info("earlier_failure_cleared", src=str(work.source), report=str(report), ledger_entries=len(stale))

    def _succeeded(self, work: _Work, outcome: Finished) -> None:
        assert self.ledger is not None
        self._forget_writer(work.source)
        self._clear_earlier_failure(work)
        result = outcome.result
        assert result.output is not None and result.sha256 is not None
        key = work.key
        if result.sha256 != work.sha256:
            # The file changed between our hash and the worker's read: record what was really processed.
            # The file's newer versions, if any, come back through events or the next scan.
            self.ledger.forget(key)
            key = make_key(result.sha256, work.fingerprint)
            existing = self.ledger.get(key)
            if existing is not None and existing.state == State.DONE:
                self.ledger.forget(key)
            self.ledger.record_start(result.sha256, work.fingerprint, inbox=work.inbox_id, source=work.rel)
        output_size = safefs.lstat(work.inbox.outbox, result.output).st_size
        changed = result.sha256 != work.sha256
        # Keeping the source touches nothing, so what was done with it can share the `done` record (one
        # fsync fewer); archiving or deleting it must wait until `done` is durable.
        step_after_done = not changed and work.inbox.on_success != "keep"
        if changed:
            disposition: str | None = "kept-changed"
        elif step_after_done:
            disposition = None
        else:
            disposition = self._keep(work.inbox_id, work.source, work.signature)
        mark_output(work.inbox.outbox, result.output, work.inbox_id, work.rel)
        self.ledger.record_done(key, output=result.output, output_size=output_size, disposition=disposition)
        self._counters[work.inbox_id].done += 1
        model, scale = _upscale_summary(work.profile)
        log.info("file_processed", src=str(work.source), out=str(result.output), profile=work.profile.name,
                 model=model, scale=scale, in_size=result.input_size, out_size=result.output_size,
                 bytes=output_size, ms=result.milliseconds)
        if changed:
            self._rehint_path(work.inbox_id, work.source)  # its newer content is judged when it settles
        elif step_after_done:
            self._dispose(work.inbox, work.inbox_id, work.source, work.rel, work.signature, key)

    def _failed_result(self, work: _Work, reason: str, processed_sha: str | None) -> None:
        if processed_sha is not None and processed_sha != work.sha256:
            # It was rewritten under us; judge the new content on its own when it settles.
            assert self.ledger is not None
            self.ledger.forget(work.key)
            self._rehint_path(work.inbox_id, work.source)
            return
        # A worker that couldn't read the file at all may have found it gone (deleted, its share unmounted):
        # not the file's fault, and the step, which looks again, then records nothing.
        self._fail(work.inbox_id, work.inbox, work.profile, work.source, work.rel, work.signature, work.key, reason,
                   record=True, report_if_gone=processed_sha is not None)

    def _remove_orphan_temps(self, work: _Work) -> None:
        """Delete the temp output a killed (or timed-out) worker left half-written.

        Startup cleans temps after a daemon crash, but a worker dying under a running daemon would
        otherwise leave its temp file in the outbox until the next restart, which may be months away.
        A temp shared by name with another running job's target is left for startup to clean.
        """
        orphans = set(temp_files_of(work.target))
        for other in self._active.values():
            if orphans and other.key != work.key and other.target.parent == work.target.parent:
                orphans -= set(temp_files_of(other.target))
        for temp in sorted(orphans):
            try:
                safefs.unlink(work.inbox.outbox, temp)
            except (OSError, ValueError) as exc:
                log.warning("orphan_temp_remove_failed", path=str(temp), error=str(exc))
                continue
            log.info("orphan_temp_removed", path=str(temp), src=str(work.source))

    def _output_refused(self, work: _Work, reason: str, code: int) -> None:
        """The outbox refused the output (full, read-only …): not the file's fault, so it costs no attempt
        and stays in the inbox; the inbox pauses until the outbox takes writes again."""
        assert self.ledger is not None
        self.ledger.forget(work.key)
        self._block_outbox(work.inbox_id, work.inbox.outbox, work.source, reason, code)

    def _block_outbox(self, inbox_key: str, outbox: Path, path: Path, reason: str, code: int) -> None:
        block = self._blocks.get(inbox_key)
        if block is None:
            block = self._blocks[inbox_key] = OutboxBlock.start(outbox, reason, code, self._clock())
            log.error("outbox_unwritable_paused", inbox=inbox_key, outbox=str(outbox), error=reason)
        block.waiting.add(path)
        runtime = self._runtimes.get(inbox_key)
        if runtime is not None:
            runtime.handled.pop(path, None)
        self._note_error(inbox_key, path, reason)

    def _retry_blocked_outboxes(self) -> None:
        now = self._clock()
        for key, block in list(self._blocks.items()):
            if not block.recovered(now):
                continue
            del self._blocks[key]
            log.info("outbox_writable_resumed", inbox=key, outbox=str(block.outbox), waiting=len(block.waiting),
                     paused_s=round(now - block.since, 1))
            runtime = self._runtimes.get(key)
            if runtime is not None:
                for path in block.waiting:
                    runtime.tracker.hint(path)

    def _lost(self, work: _Work, outcome: Lost) -> None:
        assert self.ledger is not None
        self._remove_orphan_temps(work)
        entry = self.ledger.get(work.key)
        started = entry is not None and entry.state == State.STARTED
        if self._stop_signal is not None:
            log.warning("job_interrupted", src=str(work.source), reason=outcome.reason)
            if started:
                self.ledger.record_interrupted(work.key)
            return  # stays started; the next start retries it
        if started and outcome.pinned:
            entry = self.ledger.record_strike(work.key)
        strikes = entry.strikes if entry is not None else 0
        if strikes >= self.config.max_attempts:
            self._fail(work.inbox_id, work.inbox, work.profile, work.source, work.rel, work.signature, work.key,
                       f"{outcome.reason}; gave up after {strikes} deaths pinned on this file", record=True)
            return
        log.warning("job_lost_retrying", src=str(work.source), reason=outcome.reason, pinned=outcome.pinned,
                    attempts=entry.attempts if entry is not None else 1, strikes=strikes,
                    max_attempts=self.config.max_attempts)
        self._submit(work, suspect=outcome.retry_alone)

    def _fail(self, inbox_key: str, inbox: Inbox, profile: Profile, path: Path, rel: PurePosixPath,
              signature: FileVersion, key: str | None, reason: str, *, record: bool,
              report_if_gone: bool = True) -> None:
        """Record a failure and send the original to the failed folder with its reason (`key`: None for a
        file refused before it was hashed; `report_if_gone`: see `SourceStep`)."""
        assert self.ledger is not None
        entry = self.ledger.get(key) if key is not None else None
        if record and key is not None and entry is not None and entry.state == State.STARTED:
            entry = self.ledger.record_failed(key, error=reason)
        details = {
            "reason": reason,
            "inbox": inbox_key,
            "profile": profile.name,
            "sha256": key.split(":", 1)[0] if key is not None else None,
            "attempts": entry.attempts if entry is not None else 0,
            "strikes": entry.strikes if entry is not None else 0,
            "first_attempt": entry.created_at if entry is not None else None,
            "last_attempt": entry.updated_at if entry is not None else None,
        }
        journaled = key if entry is not None and entry.state == State.FAILED else None
        self._start_step(SourceStep(Action.FAIL, inbox_key, inbox.path, rel, signature, inbox.failed, journaled,
                                    details, report_if_gone))

    def _dispose(self, inbox: Inbox, inbox_key: str, path: Path, rel: PurePosixPath, signature: FileVersion,
                 key: str | None) -> None:
        """Apply ``on_success`` to a source whose content has an output; journal it for ledger entries."""
        assert self.ledger is not None
        if inbox.on_success == "keep":
            disposition = self._keep(inbox_key, path, signature)
            if key is not None:
                self.ledger.record_disposed(key, disposition)
            return
        action = Action.DELETE if inbox.on_success == "delete" else Action.ARCHIVE
        self._start_step(SourceStep(action, inbox_key, inbox.path, rel, signature, inbox.archive, key))

    def _keep(self, inbox_key: str, path: Path, signature: FileVersion) -> str:
        """``on_success: keep``: nothing to do to the file; this version of it needs no second look."""
        runtime = self._runtimes.get(inbox_key)
        if runtime is not None:
            runtime.handled[path] = signature
        return "kept"

    # -- source steps (off the loop) -----------------------------------------------------------------------

    def _start_step(self, step: SourceStep) -> None:
        """Send a source step to the offloader; until it is back, its file is not considered again."""
        self._steps[step.path] = (step, self._clock())
        self._step_retries.pop(step.path, None)
        self._offload.submit(step.inbox_key, _StepToken(step), functools.partial(run_step, step))

    def _retry_steps(self) -> None:
        retries, self._step_retries = self._step_retries, {}
        for path, step in retries.items():
            if step.inbox_key in self._claim_paused:
                self._step_retries[path] = step  # another daemon may own the file now: not while paused
            elif path not in self._steps:
                self._start_step(dataclasses.replace(step, retried=True))

    def _step_done(self, step: SourceStep, done: Done) -> None:
        """Journal what a source step did, or keep it for the next reconcile if it failed."""
        assert self.ledger is not None
        self._steps.pop(step.path, None)
        with bound_contextvars(inbox=step.inbox_key):
            if done.error is not None:
                self._step_failed(step, done.error)
                return
            result = done.value
            assert isinstance(result, StepResult)
            if result.found is Found.INBOX_MISSING:
                # A share outage: the file's fate is unknown, so nothing is journaled; the step runs again at
                # the next reconcile, and the rescan on the inbox's return judges the file afresh.
                log.info("source_step_postponed", src=str(step.path), action=str(step.action),
                         reason="inbox missing")
                if step.action is not Action.FAIL or step.report_if_gone:
                    self._step_retries[step.path] = step
                return
            if step.action is Action.FAIL:
                self._failed_step_done(step, result)
                return
            if result.found is Found.CHANGED:
                disposition = "kept-changed"
                self._rehint_path(step.inbox_key, step.path)
            else:
                disposition = "gone" if result.found is Found.GONE else {
                    Action.ARCHIVE: "archived", Action.DELETE: "deleted"}[step.action]
                self._forget_source(step.inbox_key, step.root, step.path)
            if step.ledger_key is not None:
                self.ledger.record_disposed(step.ledger_key, disposition)

    def _failed_step_done(self, step: SourceStep, result: StepResult) -> None:
        assert self.ledger is not None
        reason = step.report["reason"]
        if result.found is Found.CHANGED:
            log.warning("file_failed_but_changed", src=str(step.path), reason=reason)
            self._rehint_path(step.inbox_key, step.path)
            return
        if result.found is Found.GONE and not step.report_if_gone:
            # The worker couldn't even read it because it is gone: deleted, or its share unmounted. Neither is
            # the file's fault; if it comes back (the share returns), the rescan brings it in again.
            if step.ledger_key is not None:
                self.ledger.forget(step.ledger_key)
            runtime = self._runtimes.get(step.inbox_key)
            if runtime is not None:
                runtime.handled.pop(step.path, None)
            log.info("source_vanished_before_read", src=str(step.path))
            return
        self._forget_source(step.inbox_key, step.root, step.path)
        if step.ledger_key is not None:
            self.ledger.record_disposed(step.ledger_key, "failed-folder")
        if not step.retried:
            self._counters[step.inbox_key].failed += 1
        self._note_error(step.inbox_key, step.path, reason)
        log.warning("file_failed", src=str(step.path), moved_to=str(result.moved_to), reason=reason,
                    attempts=step.report["attempts"])

    def _step_failed(self, step: SourceStep, exc: BaseException) -> None:
        """The step could not be done (a full or read-only folder, a name refused): nothing moved. The file
        stays where it is, this version of it is not judged again, and the step is retried at the next
        reconcile; the daemon carries on."""
        runtime = self._runtimes.get(step.inbox_key)
        if runtime is not None:
            runtime.handled[step.path] = step.version
        self._step_retries[step.path] = step
        retry = "at the next reconcile scan"
        if step.action is Action.FAIL:
            reason = step.report["reason"]
            log.error("failed_folder_write_failed", src=str(step.path), reason=reason, error=str(exc), retry=retry)
            if not step.retried:
                self._counters[step.inbox_key].failed += 1
            self._note_error(step.inbox_key, step.path,
                             f"{reason}; and it could not be moved to the failed folder: {exc}")
            return
        log.error("source_step_failed", src=str(step.path), action=str(step.action), error=str(exc), retry=retry)
        self._note_error(step.inbox_key, step.path, f"processed, but {step.action} failed: {exc}")

    def _forget_source(self, inbox_key: str, root: Path, path: Path) -> None:
        """Drop a file that left the inbox from the ledger's stat cache, which would otherwise only grow."""
        assert self.ledger is not None
        self.ledger.forget_hash(inbox_key, PurePosixPath(path.relative_to(root).as_posix()))

    def _rehint_path(self, inbox_key: str, path: Path) -> None:
        runtime = self._runtimes.get(inbox_key)
        if runtime is not None:
            runtime.handled.pop(path, None)
            runtime.tracker.hint(path)

    def _note_error(self, inbox_key: str, path: Path, reason: str) -> None:
        self._counters[inbox_key].last_error = {
            "time": datetime.now(UTC).isoformat(timespec="seconds"), "source": str(path), "reason": reason,
        }

    # -- reload --------------------------------------------------------------------------------------------

    def _reload(self) -> None:
        """Re-read the config and apply it as one step, or keep the running one and log why.

        Everything the new config needs (its models, its folders, its watches) is prepared while the old
        runtimes keep running; only then are they swapped. A config that parses but can't be applied (a
        folder that can't be created, a read-only filesystem, a missing model) changes nothing.
        """
        self.notifier.reloading()
        self._state = "reloading"
        log.info("config_reloading", config=str(self.config_path) if self.config_path else "defaults")
        claimed: list[Path] = []
        try:
            new = load_config(self.config_path)
            prints = fingerprints(new)
            if new.state_dir != self.config.state_dir:
                raise ConfigError(["state_dir can't change while running; restart srd"], new.source)
            self._prepare_folders(new, clean=False)
            claimed = self._claim_new_inboxes(new)
            runtimes = self._new_runtimes(new, prints)
            _start_watchers(runtimes.values())  # the new watches overlap the old ones: no event is missed
        except (SrdError, OSError) as exc:
            for path in claimed:
                self._claims.release(path)
            if isinstance(exc, ConfigError):
                problems = exc.problems
            else:
                problems = [describe_os_error(exc) if isinstance(exc, OSError) else str(exc)]
            self._last_reload_error = "; ".join(problems)
            log.error("config_reload_rejected", problems=problems, keeping=self.config.source)
            self._state = "running"
            self.notifier.ready(status="reload rejected, running the previous config: " + self._last_reload_error)
            return
        old = self.config
        self.config = new
        self._last_reload_error = None
        configure_logging(new.log_level, new.log_format)
        for runtime in self._runtimes.values():
            runtime.watcher.stop()
        for gone in self._claims.held - {inbox.path for inbox in new.inboxes}:
            self._claims.release(gone)
        self._runtimes = runtimes
        self._backlog = deque(item for item in self._backlog if item[0] in self._runtimes)
        if _pool_settings(old) != _pool_settings(new):
            self._pool_stale = True  # replaced once the running jobs are done
        self._state = "running"
        log.info("config_reloaded", config=new.source, inboxes=len(new.inboxes), pool_restart=self._pool_stale)
        self.notifier.ready(status=self._status_line())

    # -- inbox claims --------------------------------------------------------------------------------------

    def _keep_claims(self) -> None:
        """Heartbeat the inbox claims when due, and pause or resume each inbox as its claim is trusted or not.

        An inbox whose claim is not trusted takes no new file, its jobs not yet started are withdrawn, and
        the outcomes of its running jobs wait: another daemon may own its files now, so none of them is
        moved, deleted or failed. Checked at every pass, so a daemon resumed after a freeze pauses before
        it touches a file.
        """
        for inbox in self._claims.due():
            if inbox not in self._heartbeats:  # one at a time per inbox, in its own offload group: a share that
                self._heartbeats.add(inbox)  # hangs holds up its own claim (and inbox) only
                self._offload.submit(str(inbox), _HeartbeatToken(inbox),
                                     functools.partial(self._claims.heartbeat, inbox))
        for key, runtime in self._runtimes.items():
            trusted = self._claims.trusted(runtime.inbox.path)
            if not trusted:
                self._pause_for_claim(key)
            elif key in self._claim_paused:
                self._resume_after_claim(key)
        # An inbox a reload removed while paused stays so: its parked outcomes are recorded as interrupted at
        # shutdown, or finished if a later reload brings it back and claims it.

    def _pause_for_claim(self, key: str) -> None:
        if key in self._claim_paused:
            return
        assert self.pool is not None
        waiting = self._claim_paused[key] = set()
        withdrawn = self.pool.withdraw([token for token, work in self._active.items() if work.inbox_id == key])
        for token in withdrawn:
            assert isinstance(token, str)  # the pool hands back the work keys it was given
            work = self._active.pop(token)
            self._solo.discard(token)
            waiting.add(work.source)
        claim = self._claims.describe(Path(key))
        log.warning("inbox_paused_claim_untrusted", inbox=key, claim=claim["state"], reason=claim["reason"],
                    withdrawn=len(withdrawn))

    def _resume_after_claim(self, key: str) -> None:
        waiting = self._claim_paused.pop(key)
        parked = self._claim_parked.pop(key, [])
        log.info("inbox_resumed_claim_confirmed", inbox=key, waiting=len(waiting), parked=len(parked))
        runtime = self._runtimes[key]
        for path in waiting:
            runtime.tracker.hint(path)
        for outcome in parked:
            self._finish(outcome)

    def _claim_new_inboxes(self, config: Config) -> list[Path]:
        """Claim the inboxes `config` adds; all or none (raises what `InboxClaims.acquire` raises)."""
        claimed: list[Path] = []
        try:
            for inbox in config.inboxes:
                if inbox.path not in self._claims.held:
                    self._claims.acquire(inbox.path)
                    claimed.append(inbox.path)
        except BaseException:
            for path in claimed:
                self._claims.release(path)
            raise
        return claimed

    def _replace_stale_pool(self) -> None:
        if self._pool_stale and self.pool is not None and len(self.pool) == 0:
            try:
                pool = self._pool_builder(self.config, self._journal_start, lambda: self._hints.put(None))
            except OSError as exc:  # e.g. out of processes: keep the old pool and try again next pass
                log.error("pool_replace_failed", error=describe_os_error(exc))
                return
            self.pool.close()
            self.pool = pool
            self._pool_stale = False
            log.info("pool_replaced", workers=self.config.workers)

    # -- status --------------------------------------------------------------------------------------------

    def _status_line(self) -> str:
        done = sum(c.done for c in self._counters.values())
        failed = sum(c.failed for c in self._counters.values())
        running = self.pool.running if self.pool is not None else 0
        queued = len(self._backlog) + len(self._reading) + sum(r.tracker.pending() for r in self._runtimes.values())
        unhealthy = [r.inbox.path.name for r in self._runtimes.values() if not r.watcher.healthy]
        blocked = [b.outbox.name for b in self._blocks.values()]
        unclaimed = [self._runtimes[key].inbox.path.name for key in self._claim_paused if key in self._runtimes]
        text = f"{running} running, {queued} waiting, {done} done, {failed} failed"
        text += f"; inbox unavailable: {', '.join(unhealthy)}" if unhealthy else ""
        text += "; state_dir unwritable, paused" if self._state_block is not None else ""
        text += f"; inbox claim not held, paused: {', '.join(unclaimed)}" if unclaimed else ""
        return text + (f"; outbox unwritable: {', '.join(blocked)}" if blocked else "")

    def status(self) -> dict[str, Any]:
        """The document written to ``status.json``."""
        inboxes = []
        backlog_by_inbox: dict[str, int] = {}
        for key, _ in [*self._backlog, *self._reading.values()]:
            backlog_by_inbox[key] = backlog_by_inbox.get(key, 0) + 1
        in_flight: dict[str, int] = {}
        running: dict[str, list[dict[str, Any]]] = {}
        timing = {job.token: job for job in self.pool.running_jobs()} if self.pool is not None else {}
        for key, work in self._active.items():
            in_flight[work.inbox_id] = in_flight.get(work.inbox_id, 0) + 1
            if key in self._running_since:
                job = {"source": work.rel.as_posix(), "since": self._running_since[key]}
                running.setdefault(work.inbox_id, []).append({**job, **_timing(timing.get(key))})
        oldest: dict[str, tuple[SourceStep, float]] = {}  # per inbox, its step out the longest
        for step, since in self._steps.values():
            if step.inbox_key not in oldest or since < oldest[step.inbox_key][1]:
                oldest[step.inbox_key] = (step, since)
        stuck: dict[str, dict[str, Any]] = {}
        for step, since in oldest.values():
            waited = self._clock() - since
            if waited > STEP_STUCK_S:
                stuck[step.inbox_key] = {"action": str(step.action), "source": step.rel.as_posix(),
                                         "for_s": round(waited), "reason": f"{step.action} of {step.rel} has not "
                                         f"finished for {waited:.0f} s (a share that stops answering?)"}
        for key, runtime in self._runtimes.items():
            counters = self._counters[key]
            watcher = runtime.watcher
            block = self._blocks.get(key)
            inboxes.append({
                "path": key,
                "outbox": str(runtime.inbox.outbox),
                "profile": runtime.inbox.profile,
                "health": self._state if self._state in ("stopping", "stopped") else
                          ("ok" if watcher.healthy and block is None and key not in self._claim_paused
                           and stuck.get(key) is None else "unhealthy"),
                "stuck_step": stuck.get(key),
                "claim": self._claims.describe(runtime.inbox.path),
                "outbox_state": block.describe() if block is not None else {"state": "ok"},
                "watch": watcher.state,
                "mode": watcher.mode,
                "degraded": watcher.degraded,
                "events_lost": watcher.events_lost,
                "settling": runtime.tracker.pending(),
                "queued": backlog_by_inbox.get(key, 0),
                "in_flight": in_flight.get(key, 0),
                "running": sorted(running.get(key, []), key=lambda job: (job["since"], job["source"])),
                "done": counters.done,
                "failed": counters.failed,
                "duplicates": counters.duplicates,
                "skipped": counters.skipped,
                "last_error": counters.last_error,
                "root_error": watcher.root_error,
                "unreadable": watcher.unreadable,
            })
        assert self.ledger is not None
        return {
            "pid": os.getpid(),
            "state": self._state,
            "started_at": datetime.fromtimestamp(self._started_wall, UTC).isoformat(timespec="seconds"),
            "config": self.config.source,
            "last_reload_error": self._last_reload_error,
            "workers": self.config.workers,
            "pool": {
                "running": self.pool.running if self.pool is not None else 0,
                "accepted": len(self.pool) if self.pool is not None else 0,
                "rebuilds": self.pool.rebuilds if self.pool is not None else 0,
                "start_error": self.pool.start_error if self.pool is not None else None,
            },
            "executor": self.pool.describe() if self.pool is not None else {"kind": self.config.executor.kind},
            "ledger": self.ledger.counts(),
            "state_dir": self._state_block.describe() if self._state_block is not None else {"state": "ok"},
            "inboxes": inboxes,
        }

    def _write_status(self, *, force: bool = False) -> None:
        status = self.status()
        # Unchanged, it is still rewritten now and then: its age is how `srd status` tells a daemon that can't
        # write it (a full state dir) or has stopped turning its loop from one that has nothing new to say.
        fresh = self._clock() - self._status_written < STATUS_REFRESH_S
        if not force and status == self._last_status and fresh:
            return
        self._last_status = status
        stamped = {**status, "uptime_s": round(self._clock() - self._started, 1),
                   "updated_at": datetime.now(UTC).isoformat(timespec="seconds")}
        try:
            write_status(self.config.state_dir, stamped)
        except (OSError, OutputError) as exc:
            # Only monitoring reads it; a state dir that takes no writes is handled where the ledger is.
            if not self._status_failing:
                log.warning("status_write_failed", path=str(self.config.state_dir), error=str(exc))
            self._status_failing = True
            self._last_status = None  # write it as soon as it can be
        else:
            self._status_written = self._clock()
            if self._status_failing:
                log.info("status_write_recovered", path=str(self.config.state_dir))
            self._status_failing = False
        if self._state == "running":
            self.notifier.status(self._status_line())


def _start_watchers(runtimes: Iterable[_InboxRuntime]) -> None:
    """Start every runtime's watcher, or none: on an error the ones already started are stopped again."""
    started: list[_InboxRuntime] = []
    try:
        for runtime in runtimes:
            runtime.watcher.start()
            started.append(runtime)
    except BaseException:
        for runtime in started:
            runtime.watcher.stop()
        raise


def describe_os_error(exc: OSError) -> str:
    """One line for an OSError: its reason and the path(s) it concerns."""
    reason = exc.strerror or str(exc)
    paths = [os.fsdecode(name) for name in (exc.filename, exc.filename2) if name]
    return f"{reason}: {' -> '.join(paths)}" if paths else reason


def _timing(job: RunningJob | None) -> dict[str, Any]:
    """A running job's elapsed time and limit for the status file; `stuck_suspected` once it has run 5 ×
    longer than expected."""
    if job is None:
        return {}
    expected = job.limit_s / SLACK if job.limit_s is not None else None
    return {"elapsed_s": round(job.elapsed_s), "limit_s": None if job.limit_s is None else round(job.limit_s),
            "stuck_suspected": expected is not None and job.elapsed_s > 5 * expected}


def _under(filename: Any, folder: Path) -> bool:
    """Whether an OSError's filename lies in `folder` (the error concerns the outbox, not the input)."""
    if not filename:
        return False
    path = Path(os.fsdecode(filename))
    return path == folder or folder in path.parents


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
