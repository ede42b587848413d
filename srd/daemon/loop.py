"""The daemon: one loop that turns inbox hints into jobs, and job outcomes into ledger records.

See docs/design.md §2, §4 and §5.

Threads only produce hints (watchers), wake-ups (the pool) and file-system work (the offloader: the
settle tracker's stats, hashes and headers, and the source steps — moves to the failed folder, archive
copies, deletes — so that a huge file or a hung share can't stall the loop); everything that decides or
records — settling, ledger, status — happens in this loop, so none of it needs locks.
Signal handlers only set flags, which the loop reads at least every `MAX_SLEEP_S`.

`Daemon` is the loop, its signals, reload and supervision; what happens to each file is `lifecycle.py`'s.
"""

from __future__ import annotations

import functools
import os
import queue
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from srd.config import Config, Inbox, load_config
from srd.daemon.claim import ClaimTiming, InboxClaims
from srd.daemon.claimguard import ClaimGuard, HeartbeatToken
from srd.daemon.context import Context
from srd.daemon.disposal import StepToken
from srd.daemon.inboxes import (
    CheckedProfile,
    Counters,
    InboxRuntime,
    check_profiles,
    inbox_id,
    prepare_folders,
    restart_counters,
    start_watchers,
)
from srd.daemon.lifecycle import Lifecycle, SettleToken, recover_unfinished
from srd.daemon.notify import Notifier
from srd.daemon.offload import Offloader
from srd.daemon.pools import PoolBuilder, default_pool, pool_settings
from srd.daemon.probe import ReadToken
from srd.daemon.settle import SettleTracker
from srd.daemon.signals import Signals
from srd.daemon.status import STATUS_REFRESH_S, write_status
from srd.daemon.statusdoc import inbox_documents
from srd.daemon.telemetry import Telemetry
from srd.daemon.watch import FoundFiles, Hint, InboxWatcher
from srd.errors import ConfigError, ExitCode, OutputError, SrdError, StartupError, describe_os_error
from srd.fs import safefs
from srd.ledger import Ledger, LedgerError, LedgerUnwritableError
from srd.logs import configure_logging

log = structlog.get_logger(__name__)

MAX_SLEEP_S = 0.25
# Hints taken per loop step: a startup scan of a NAS library queues one per file, and taking them all in one
# step held the loop (claim heartbeats, status, finished jobs) for over 30 s at 100,000 files.
HINTS_PER_STEP = 2000
SUPERVISE_EVERY_S = 1.0
STATUS_EVERY_S = 1.0
# Threads reading files off the loop, and how many of them one inbox may hold (a hung share holds no more).
# Each inbox may hold OFFLOAD_PER_INBOX threads (one hung share holds no more); threads start only as
# work needs them, so there are enough for several hung shares to leave the other inboxes theirs.
OFFLOAD_THREADS = 16
OFFLOAD_PER_INBOX = 2
# How long the daemon's exit waits to remove its claim files (a hung share's claim is left to go stale).
CLAIM_RELEASE_WAIT_S = 2.0

WatcherBuilder = Callable[[int, Inbox, Callable[[Hint | FoundFiles], None]], InboxWatcher]


class Daemon:
    """Watches the configured inboxes until SIGTERM/SIGINT; SIGHUP reloads the config.

    Built running by `Daemon.start`: it holds the ledger lock, its claims, its pool and its watchers from the
    first moment; `close` gives them back.
    """

    def __init__(self, ctx: Context, files: Lifecycle, claims: ClaimGuard, telemetry: Telemetry, *,
                 hints: queue.SimpleQueue[Hint | FoundFiles | None], config_path: Path | None, notifier: Notifier,
                 sleep: Callable[[float], None], watcher_builder: WatcherBuilder, drain_timeout: float) -> None:
        self._ctx = ctx
        self._telemetry = telemetry
        self._files = files
        self._claims = claims
        self._hints = hints
        self.config_path = config_path
        self.notifier = notifier
        self._sleep = sleep
        self._watcher_builder = watcher_builder
        self._drain_timeout = drain_timeout
        self._state = "running"
        self._started_wall = time.time()
        self._last_status: dict[str, Any] | None = None
        self._status_written = float("-inf")
        self._status_failing = False
        self._last_reload_error: str | None = None
        self._exit = ExitCode.OK  # what `run` returns: another code where the daemon stops itself
        self._state_dir_lost = False  # its files are no longer ours: nothing more is written there

    @classmethod
    def start(
        cls,
        config: Config,
        *,
        config_path: Path | None = None,
        signals: Signals | None = None,
        notifier: Notifier | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        pool_builder: PoolBuilder = default_pool,
        watcher_builder: WatcherBuilder | None = None,
        offloader: Offloader | None = None,
        drain_timeout: float = 30.0,
    ) -> Daemon:
        """Take the ledger lock, recover from a crash, build the pool and start watching (no loop yet).

        Args:
            config: The validated configuration.
            config_path: Where SIGHUP re-reads it from (None: the built-in defaults).
            signals: The flags the signal handlers set (`Signals.install`); none installed by default.
            notifier: sd_notify channel (default: from the environment; a no-op outside systemd).
            clock: Monotonic clock for settling, timers and the drain deadline.
            sleep: Used only while draining.
            pool_builder: Builds the job pool (tests inject one with a fake executor).
            watcher_builder: Builds an inbox watcher.
            offloader: Runs file reads off the loop (tests inject one that runs them at once).
            drain_timeout: Seconds SIGTERM waits for running jobs before abandoning them.

        Raises:
            LockedError: Another instance owns the state directory, or another daemon an inbox.
            ModelError: A profile's model is missing or corrupt.
            StartupError: A folder, the state directory or a watch could not be created or opened.
        """
        started = clock()
        notifier = notifier or Notifier.from_env()
        signals = signals or Signals()
        hints: queue.SimpleQueue[Hint | FoundFiles | None] = queue.SimpleQueue()
        build_watcher = watcher_builder or (lambda i, inbox, sink: InboxWatcher(i, inbox, sink))
        offload = offloader or Offloader(OFFLOAD_THREADS, OFFLOAD_PER_INBOX, lambda: hints.put(None))
        claims = InboxClaims(config.state_dir, ClaimTiming(config.claim_stale_seconds))
        try:
            with notifier.slow_start_step("opening the ledger", stop_asked=lambda: signals.stop is not None):
                ledger = Ledger.open(config.state_dir)
            with ExitStack() as undo:  # on any error, give back what was taken, in reverse order
                undo.callback(log.info, "daemon_stopped")
                undo.callback(notifier.close)
                undo.callback(claims.release_all, wait_s=CLAIM_RELEASE_WAIT_S)
                undo.callback(offload.close)
                undo.callback(_close_ledger, ledger)
                checked = check_profiles(config)
                prepare_folders(config, clean=True)
                for configured in config.inboxes:
                    claims.acquire(configured.path)
                ctx = Context(config, ledger, offload, clock, {}, signals=signals, started=started)
                ctx.runtimes = _new_runtimes(ctx, config, checked, build_watcher, hints.put)
                telemetry = Telemetry.start(config, ctx.events)
                undo.callback(telemetry.close)
                undo.callback(_stop_watchers, ctx)
                unwritable = None
                try:
                    recover_unfinished(ctx)
                except LedgerUnwritableError as exc:
                    unwritable = exc
                guard = ClaimGuard(claims, offload)
                files = Lifecycle(ctx, guard, pool_builder, lambda: hints.put(None))
                undo.callback(files.pool.close)
                if unwritable is not None:
                    files.pauses.recovery_pending = True
                    files.state_unwritable(unwritable)
                start_watchers(ctx.runtimes.values())
                undo.pop_all()
        except OSError as exc:
            raise StartupError(f"cannot start: {describe_os_error(exc)}") from exc
        return cls(ctx, files, guard, telemetry, hints=hints, config_path=config_path, notifier=notifier, sleep=sleep,
                   watcher_builder=build_watcher, drain_timeout=drain_timeout)

    @property
    def config(self) -> Config:
        return self._ctx.config

    @property
    def ledger(self) -> Ledger:
        return self._ctx.ledger

    # -- running -------------------------------------------------------------------------------------------

    def run(self) -> ExitCode:
        """Run until asked to stop, then drain and close; returns the exit status (OK after a clean drain)."""
        try:
            self._write_status(force=True)  # so /healthz answers 200 from the moment srd says it is ready
            self.notifier.ready(status=self._status_line(self.status()))
            log.info("daemon_ready", pid=os.getpid(), inboxes=len(self._ctx.runtimes), workers=self.config.workers)
            self._loop()
            self._shutdown()
        finally:
            self.close()
        return self._exit

    def _shutdown(self) -> None:
        files = self._files
        self._state = "stopping"
        self.notifier.stopping()
        log.info("daemon_stopping", signal=self._ctx.signals.stop, running=files.pool.running)
        self._write_status(force=True)
        for runtime in self._ctx.runtimes.values():
            runtime.watcher.stop()
        if self._state_dir_lost:
            return  # no drain: nothing can be recorded now; the files in flight stay in their inboxes
        deadline = self._ctx.clock() + self._drain_timeout
        for outcome in files.pool.drain(deadline, self._sleep):
            files.finish(outcome)
        while files.disposal.out and self._ctx.clock() < deadline:  # a move under way is journaled, not rescanned
            self._take_offloaded()
            self._sleep(0.02)
        files.abandon_active()  # abandoned by the drain: our doing, not the files'

    def close(self) -> None:
        """Stop watchers and workers, write the final status, release the ledger lock (once)."""
        if self._state == "stopped":
            return
        _stop_watchers(self._ctx)
        self._ctx.offload.close()
        self._claims.inbox_claims.release_all(wait_s=CLAIM_RELEASE_WAIT_S)
        self._files.pool.close()
        self._state = "stopped"
        self._write_status(force=True)
        self._telemetry.close()
        _close_ledger(self._ctx.ledger)
        self.notifier.close()
        log.info("daemon_stopped")

    # -- the loop ------------------------------------------------------------------------------------------

    def _loop(self) -> None:
        now = self._ctx.clock()
        next_supervise = now
        next_status = now
        next_reconcile = now + self.config.reconcile_interval
        while self._ctx.signals.stop is None and self._exit is ExitCode.OK:
            self.step()
            now = self._ctx.clock()
            if now >= next_supervise:
                next_supervise = now + SUPERVISE_EVERY_S
                self._supervise()
            if now >= next_status:
                next_status = now + STATUS_EVERY_S
                self._write_status()
            if now >= next_reconcile:
                next_reconcile = now + self.config.reconcile_interval
                log.info("reconcile_scan_requested", step_retries=len(self._files.disposal.retries))
                for runtime in self._ctx.runtimes.values():
                    runtime.watcher.request_scan()
                self._files.disposal.retry(self._claims.paused)
            self._wait()

    def step(self) -> None:
        """One pass of the loop without waiting: reload if asked, take hints, settle, collect, dispatch."""
        files = self._files
        if self._ctx.signals.reload:
            self._ctx.signals.reload = False
            self._reload()
        try:
            files.keep_claims()
            self._take_hints()
            files.writers.recheck_due()
            files.poll_trackers()
            self._take_offloaded()
            for outcome in files.pool.collect():
                files.finish(outcome)
            files.replace_stale_pool()
            files.dispatch()
        except LedgerUnwritableError as exc:
            # Any other ledger write (a stat-cache batch): it changed nothing, so pausing is all there is to do.
            files.state_unwritable(exc)

    def _wait(self) -> None:
        """Sleep until a hint or a wake-up arrives, the next settle deadline, or `MAX_SLEEP_S`."""
        files = self._files
        if files.backlog and files.pool.has_room() and not files.pool_stale:
            return
        timeout = MAX_SLEEP_S
        now = self._ctx.clock()
        for runtime in self._ctx.runtimes.values():
            deadline = runtime.tracker.next_deadline()
            if deadline is not None:
                timeout = min(timeout, max(0.0, deadline - now))
        try:
            hint = self._hints.get(timeout=timeout)
        except queue.Empty:
            return
        self._take(hint)

    def _take_hints(self) -> None:
        taken = 0
        while taken < HINTS_PER_STEP:
            try:
                hint = self._hints.get_nowait()
            except queue.Empty:
                return
            taken += self._take(hint)

    def _take(self, hint: Hint | FoundFiles | None) -> int:
        """Take what a watcher (or a wake-up) put in the queue; returns the number of files it hinted."""
        if isinstance(hint, FoundFiles):
            try:
                self.found(hint)
            finally:
                hint.taken()
            return len(hint.files)
        if hint is not None:
            self.hint(hint)
        return 1

    def found(self, found: FoundFiles) -> None:
        """Take a scan's files of one folder: each in the version srd finished is dropped here, in a tight loop
        over plain names (a restart sees every photo ever processed); the others are hinted one by one."""
        runtime = next((r for r in self._ctx.runtimes.values() if r.index == found.inbox), None)
        if runtime is None or runtime.inbox.path != found.root:
            return  # from a watcher stopped by a reload
        prefix = found.prefix
        for name, version in self._files.not_finished_as_is(runtime, prefix, found.files):
            self.hint(Hint(found.inbox, found.root / (prefix + name), version))

    def hint(self, hint: Hint) -> None:
        """Take one hint from a watcher (tests call this directly)."""
        runtime = next((r for r in self._ctx.runtimes.values() if r.index == hint.inbox), None)
        if runtime is None or runtime.inbox.path not in hint.path.parents:
            return  # from a watcher stopped by a reload
        if hint.gone:
            self._files.gone(hint.path)  # no longer waits for its turn (a new file there hints anew)
            return
        self._files.moved_on(hint.path, hint.signature)
        if hint.signature is not None and (runtime.handled.get(hint.path) == hint.signature
                                           or self._files.finished_before(runtime, hint.path, hint.signature)):
            return
        runtime.tracker.hint(hint.path)

    def _take_offloaded(self) -> None:
        """Hand each finished off-loop call to its owner: settle stats, a file's read, a source step, a claim."""
        for done in self._ctx.offload.collect():
            token = done.token
            if isinstance(token, SettleToken):
                self._files.settled(token, done)
            elif isinstance(token, StepToken):
                self._files.disposal.done(token.step, done)
            elif isinstance(token, HeartbeatToken):
                self._claims.heartbeat_back(token, done)
            elif isinstance(token, ReadToken):
                self._files.read_back(token, done)

    def _supervise(self) -> None:
        self._check_state_dir()
        pool = self._files.pool
        healthy = pool.healthy
        for runtime in self._ctx.runtimes.values():
            try:
                runtime.watcher.supervise()
            # A watcher that can't be restarted must not stop the others; withholding WATCHDOG=1 lets
            # systemd restart the whole daemon if it stays broken.
            except Exception:
                log.exception("watcher_supervision_failed", inbox=str(runtime.inbox.path))
                healthy = False
        pool.ensure_executor()
        self._files.pauses.retry_outboxes()
        self._files.pauses.supervise_models()
        self._files.retry_state_dir()
        if healthy and self.notifier.watchdog_interval_s() is not None:
            self.notifier.watchdog()

    def _check_state_dir(self) -> None:
        """Stop where the state directory was removed or replaced under us: its lock no longer keeps a second
        srd out, and what this one records would be lost. (systemd's restart then opens the folder anew.)"""
        why = self._ctx.ledger.lost()
        if why is None:
            return
        log.error("state_dir_lost_stopping", state_dir=str(self.config.state_dir), reason=why,
                  advice="the ledger was removed or replaced while srd ran; srd stops at once, without waiting "
                         "for running jobs (their files stay in the inbox), so that no two instances share the "
                         "inboxes and nothing more is written over what is there now")
        self._ctx.ledger.abandon()
        self._state_dir_lost = True
        self._exit = ExitCode.ERROR

    # -- reload --------------------------------------------------------------------------------------------

    def _reload(self) -> None:
        """Re-read the config and apply it as one step, or keep the running one and log why.

        Everything the new config needs (its models, its folders, its watches) is prepared while the old
        runtimes keep running; only then are they swapped. A config that parses but can't be applied (a
        folder that can't be created, a read-only filesystem, a missing model) changes nothing.
        """
        ctx, claims = self._ctx, self._claims.inbox_claims
        self.notifier.reloading()
        self._state = "reloading"
        log.info("config_reloading", config=str(self.config_path) if self.config_path else "defaults")
        claimed: list[Path] = []
        try:
            new = load_config(self.config_path)
            checked = check_profiles(new)
            if new.state_dir != self.config.state_dir:
                raise ConfigError(["state_dir can't change while running; restart srd"], new.source)
            prepare_folders(new, clean=False)
            claimed = self._claims.claim_new_inboxes(new)
            runtimes = _new_runtimes(ctx, new, checked, self._watcher_builder, self._hints.put)
            start_watchers(runtimes.values())  # the new watches overlap the old ones: no event is missed
        except (SrdError, OSError) as exc:
            for path in claimed:
                claims.release(path)
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
        ctx.config = new
        self._last_reload_error = None
        configure_logging(new.log_level, new.log_format)
        _stop_watchers(ctx)
        for gone in claims.held - {inbox.path for inbox in new.inboxes}:
            claims.release(gone)
        ctx.runtimes = runtimes
        self._files.backlog.keep_only(lambda item: item[0] in ctx.runtimes)
        self._files.requeue_superseded()
        if new.metrics != old.metrics:
            log.warning("metrics_listener_unchanged", listen=old.metrics.listen if old.metrics else None,
                        reason="the metrics listener changes at the next start of srd")
        if new.claim_stale_seconds != old.claim_stale_seconds:
            log.warning("claim_stale_seconds_unchanged", running=old.claim_stale_seconds,
                        reason="claim timing changes at the next start of srd")
        if pool_settings(old) != pool_settings(new):
            self._files.pool_stale = True  # replaced once the running jobs are done
        self._state = "running"
        log.info("config_reloaded", config=new.source, inboxes=len(new.inboxes), pool_restart=self._files.pool_stale)
        self.notifier.ready(status=self._status_line(self.status()))

    # -- status --------------------------------------------------------------------------------------------

    def _status_line(self, status: dict[str, Any]) -> str:
        """sd_notify's STATUS=, from the status document `status` and the pauses."""
        ctx, files = self._ctx, self._files
        done = sum(c.done for c in ctx.counters.values())
        failed = sum(c.failed for c in ctx.counters.values())
        running = files.pool.running
        # As `srd status` counts it: a job handed to the pool is waiting until a worker takes it.
        queued = sum(inbox["queued"] + inbox["settling"] + inbox["in_flight"] for inbox in status["inboxes"]) - running
        unhealthy = [r.inbox.path.name for r in ctx.runtimes.values() if not r.watcher.healthy]
        blocked = [b.outbox.name for b in files.pauses.outboxes.values()]
        blocked += [str(folder) for folders in files.pauses.folders.values() for folder in folders]
        modelless = [ctx.runtimes[key].inbox.path.name for key in files.pauses.models if key in ctx.runtimes]
        unclaimed = [ctx.runtimes[key].inbox.path.name for key in self._claims.paused if key in ctx.runtimes]
        text = f"{running} running, {queued} waiting, {done} done, {failed} failed"
        text += f"; inbox unavailable: {', '.join(unhealthy)}" if unhealthy else ""
        text += "; state_dir unwritable, paused" if files.pauses.state_dir is not None else ""
        text += f"; inbox claim not held, paused: {', '.join(unclaimed)}" if unclaimed else ""
        text += f"; model unavailable, paused: {', '.join(modelless)}" if modelless else ""
        return text + (f"; outbox unwritable: {', '.join(blocked)}" if blocked else "")

    def status(self) -> dict[str, Any]:
        """The document written to ``status.json``."""
        ctx, files = self._ctx, self._files
        inboxes = inbox_documents(ctx, files, self._claims, self._state)
        state_block = files.pauses.state_dir
        return {
            "pid": os.getpid(),
            "state": self._state,
            "started_at": datetime.fromtimestamp(self._started_wall, UTC).isoformat(timespec="seconds"),
            "config": self.config.source,
            "last_reload_error": self._last_reload_error,
            "workers": self.config.workers,
            "pool": {
                "running": files.pool.running,
                "accepted": len(files.pool),
                "rebuilds": files.pool.rebuilds,
                "start_error": files.pool.start_error,
            },
            "executor": files.pool.describe(),
            "ledger": ctx.ledger.counts(),
            "state_dir": state_block.describe() if state_block is not None else {"state": "ok"},
            "inboxes": inboxes,
        }

    def _write_status(self, *, force: bool = False) -> None:
        if self._state_dir_lost:
            return  # the folder may be another srd's by now
        status = self.status()
        clock = self._ctx.clock
        stamped = {**status, "uptime_s": round(clock() - self._ctx.started, 1),
                   "updated_at": datetime.now(UTC).isoformat(timespec="seconds")}
        self._telemetry.publish(stamped)  # every time: its freshness is what /healthz reads
        # Unchanged, it is still rewritten now and then: its age is how `srd status` tells a daemon that can't
        # write it (a full state dir) or has stopped turning its loop from one that has nothing new to say.
        fresh = clock() - self._status_written < STATUS_REFRESH_S
        if not force and status == self._last_status and fresh:
            return
        self._last_status = status
        try:
            write_status(self.config.state_dir, stamped)
        except (OSError, OutputError) as exc:
            # Only monitoring reads it; a state dir that takes no writes is handled where the ledger is.
            if not self._status_failing:
                log.warning("status_write_failed", path=str(self.config.state_dir), error=str(exc))
            self._status_failing = True
            self._last_status = None  # write it as soon as it can be
        else:
            self._status_written = clock()
            if self._status_failing:
                log.info("status_write_recovered", path=str(self.config.state_dir))
            self._status_failing = False
        if self._state == "running":
            self.notifier.status(self._status_line(status))


def _new_runtimes(ctx: Context, config: Config, checked: dict[str, CheckedProfile], build_watcher: WatcherBuilder,
                  sink: Callable[[Hint | FoundFiles | None], None]) -> dict[str, InboxRuntime]:
    """Runtimes for `config`, watchers not started; an inbox whose profile is unchanged keeps its memory.

    Also starts the counters of inboxes not counted yet (`restart_counters`).
    """
    old = ctx.runtimes
    runtimes: dict[str, InboxRuntime] = {}
    counters = ctx.counters
    seeds = restart_counters(ctx.ledger) if any(inbox_id(i) not in counters for i in config.inboxes) else {}
    for index, inbox in enumerate(config.inboxes):
        key = inbox_id(inbox)
        watcher = build_watcher(index, inbox, sink)
        tracker = SettleTracker(max(inbox.settle_seconds, 0.01), clock=ctx.clock,
                                stat=functools.partial(safefs.lstat, inbox.path))
        profile = checked[inbox.profile]
        runtime = InboxRuntime(index, inbox, profile.profile, profile.fingerprint, tracker, watcher)
        if key in old and old[key].fingerprint == runtime.fingerprint:
            runtime.handled = old[key].handled
        runtimes[key] = runtime
        counters.setdefault(key, seeds.get(key) or Counters())
    return runtimes


def _stop_watchers(ctx: Context) -> None:
    for runtime in ctx.runtimes.values():
        runtime.watcher.stop()


def _close_ledger(ledger: Ledger) -> None:
    try:
        ledger.close()
    except LedgerError as exc:  # the last stat-cache batch is lost: those files are hashed again
        log.warning("ledger_close_failed", error=str(exc))
