"""One file's way through the daemon, as a state machine read top to bottom (docs/design.md §2, §4, §5).

    settled ─► considered ─┬─► nothing (decided already, a duplicate, the same file again) ─► disposed
                           └─► submitted ─► running ─┬─► finished ─► disposed (kept, archived, deleted)
                                                     ├─► failed ───► disposed (failed folder, with a reason)
                                                     └─► lost ─────► submitted again (alone), or failed

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

This module takes a file from settled to running, and hands each outcome to `outcomes.py` (finished,
failed, lost); both end in `disposal.py` (kept, archived, deleted, failed folder). What makes files wait
without judging them (a full outbox or state dir, a slow writer, an inbox claim that is not trusted) is
in `pauses.py` and `claimguard.py`.
"""

from __future__ import annotations

import functools
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from structlog.contextvars import bound_contextvars

from srd.daemon.backlog import Backlog
from srd.daemon.claimguard import ClaimGuard
from srd.daemon.context import Context
from srd.daemon.disposal import Disposal, source_step
from srd.daemon.inboxes import InboxRuntime
from srd.daemon.jobtime import job_time_limit
from srd.daemon.offload import Done
from srd.daemon.outbox import BLOCKING_ERRNOS, REFUSED_FOLDER_ERRNOS, OutboxBlock
from srd.daemon.outcomes import Outcomes
from srd.daemon.pauses import Pauses, SlowWriters
from srd.daemon.pools import PoolBuilder
from srd.daemon.probe import OffLoopReads, ReadToken
from srd.daemon.settle import Look, ReadyFile
from srd.daemon.sourcefile import SourceFile, Work
from srd.daemon.superseded import remove_superseded
from srd.daemon.targets import choose_target
from srd.errors import ImageError, OutputError, describe_os_error
from srd.executors.job import Content, Job
from srd.executors.pool import Outcome
from srd.fs import safefs
from srd.fs.fileversion import FileVersion
from srd.fs.outputmark import mark_value, marked_for
from srd.fs.sources import link_or_copy
from srd.ledger import Entry, LedgerError, LedgerUnwritableError, State, make_key, source_step_done

log = structlog.get_logger(__name__)

# Bounds how long one pass may spend deciding about files before serving events.
CONSIDER_BUDGET_S = 0.2


@dataclass(frozen=True, eq=False)
class SettleToken:
    """An off-loop batch of one inbox's settle stats; `runtime` is matched by identity (a reload replaces it)."""

    runtime: InboxRuntime
    looks: list[Look]


def recover_unfinished(ctx: Context) -> None:
    """After a crash: pin the last daemon's death on the file it ran alone, if it did; close entries a crash
    left started whose source is gone; the rest are retried (alone) when scanned."""
    ledger = ctx.ledger
    for entry in ledger.pin_solo_deaths():
        log.warning("death_pinned_on_file", inbox=entry.inbox, src=str(entry.source), strikes=entry.strikes,
                    max_attempts=ctx.config.max_attempts,
                    reason="the daemon died while this file was being retried alone")
    for entry in ledger.unfinished():
        runtime = ctx.runtimes.get(entry.inbox)
        if runtime is None:
            continue  # that inbox is no longer configured; keep the entry for when it returns
        source = runtime.inbox.path / entry.source
        if not os.path.lexists(source) and runtime.watcher.root.is_dir():
            ledger.record_failed(entry.key, error="source vanished before processing finished")
            log.warning("unfinished_source_gone", src=str(source), inbox=entry.inbox, attempts=entry.attempts)
        else:
            log.info("unfinished_will_retry", src=str(source), inbox=entry.inbox, attempts=entry.attempts)


class Lifecycle:
    """The files between settling and their outcome: the backlog, the jobs and their pool, and the pauses.

    Builds its pool at once, so a `Lifecycle` always has one (the pool's start hook journals ``start``).
    """

    def __init__(self, ctx: Context, claims: ClaimGuard, pool_builder: PoolBuilder,
                 wake: Callable[[], None]) -> None:
        self._ctx = ctx
        self._claims = claims
        self._pool_builder = pool_builder
        self._wake = wake
        self.backlog = Backlog()
        self.active: dict[str, Work] = {}  # submitted jobs by key: no more than the pool has room for
        self.running_since: dict[str, str] = {}  # key → when a worker took the job (ISO 8601 UTC), for status
        self._deferred: dict[Path, str] = {}  # files waiting for a job on the same path or content to end
        self._held_back: set[Path] = set()  # those of them hashed already, waiting for the same content's job
        self._solo: set[str] = set()  # keys of submitted jobs that the pool runs alone (suspects)
        self._unstarted: set[str] = set()  # running jobs whose start record could not be written
        self.reads = OffLoopReads(ctx.offload, lambda: self.pool.capacity)
        self.disposal = Disposal(ctx)
        self.pauses = Pauses(ctx)
        self.writers = SlowWriters(ctx)
        self._outcomes = Outcomes(ctx, self.disposal, self.pauses, self.writers, self.active,
                                  lambda work, suspect: self._submit(work, suspect=suspect))
        self.pool_stale = False  # a reload changed the pool's settings: replaced once its jobs are done
        self.pool = pool_builder(ctx.config, self._journal_start, wake)

    # -- settled -------------------------------------------------------------------------------------------

    def poll_trackers(self) -> None:
        """Send each inbox's due settle stats off the loop, one batch per inbox at a time."""
        for runtime in self._ctx.runtimes.values():
            if runtime.watcher.state == "missing" or runtime.settling:
                continue  # its files can't be judged now; the rescan on its return, or the batch out, will
            looks = runtime.tracker.due()
            if looks:
                runtime.settling = True
                self._ctx.offload.submit(runtime.inbox_id, SettleToken(runtime, looks),
                                         functools.partial(runtime.tracker.look, looks))

    def settled(self, token: SettleToken, done: Done) -> None:
        """Judge a batch of settle stats; a batch of a runtime that a reload replaced is dropped (the new
        watcher's first scan hinted all its files afresh)."""
        runtime = token.runtime
        runtime.settling = False
        key = runtime.inbox_id
        if self._ctx.runtimes.get(key) is not runtime:
            return
        if done.error is not None:  # `look` catches OSError; anything else is a bug, not a file's fault
            log.error("settle_stats_failed", inbox=key, error=repr(done.error))
            for look in token.looks:
                runtime.tracker.hint(look.path)  # so that none of them waits forever
            return
        result = runtime.tracker.resolve(done.value)
        for ready in result.ready:
            self.backlog.append((key, ready))
        for path in result.vanished:
            self.writers.forget(path)
            runtime.handled.pop(path, None)
            self._ctx.forget_source(runtime.inbox_id, runtime.inbox.path, path)
        for rejected in result.rejected:
            log.info("path_not_processed", src=str(rejected.path), inbox=key, reason=rejected.reason)

    def read_back(self, token: ReadToken, done: Done) -> None:
        """A file's read is done: back to the front of the backlog, to be decided now."""
        request = self.reads.finished(token, done)
        if request is not None:
            self.backlog.appendleft(request)

    # -- considered ----------------------------------------------------------------------------------------

    def dispatch(self) -> None:
        """Consider backlog files while the pool has room, nothing pauses intake, and the pass has time."""
        ctx = self._ctx
        budget_end = ctx.clock() + CONSIDER_BUDGET_S
        while (self.backlog and self.pool.has_room() and not self.pool_stale and self.pauses.state_dir is None
               and ctx.clock() < budget_end):
            key, ready = self.backlog.popleft()
            runtime = ctx.runtimes.get(key)
            if runtime is None or runtime.watcher.state == "missing":
                continue  # gone from the config, or its share is away: the rescan on its return brings it back
            if self._claims.untrusted(key, runtime.inbox.path):
                self._claims.pause(key, self._withdraw)
                self._claims.paused[key].add(ready.path)  # another daemon may own it now: wait for the claim
                continue
            block = self.pauses.block_for(key, runtime.inbox, ready.path)
            if block is not None:
                block.waiting.add(ready.path)  # its outbox (folder) refuses writes, or its model is away: wait for it
                continue
            try:
                with bound_contextvars(inbox=key):  # every line about this file names its inbox
                    self._consider(runtime, ready)
            except LedgerUnwritableError as exc:
                self.backlog.appendleft((key, ready))
                self.state_unwritable(exc)
            except FileNotFoundError:
                continue  # gone again before we got to it; nothing to do
            except OSError as exc:
                on_outbox = _under(exc.filename, runtime.inbox.outbox)
                if exc.errno in BLOCKING_ERRNOS and on_outbox:
                    refused = Path(exc.filename) if exc.errno in REFUSED_FOLDER_ERRNOS else None
                    self.pauses.block_outbox(key, runtime.inbox.outbox, ready.path, str(exc), exc.errno, refused)
                    continue
                # Another refusal of an outbox path: no verdict on this version of the file, so the next scan
                # tries it again.
                self._skip(runtime, key, ready, exc, remember=not on_outbox)
            except (ImageError, OutputError) as exc:
                self._skip(runtime, key, ready, exc)
            finally:
                self.reads.discard(ready.path)  # a read `_consider` had no use for this time

    def _consider(self, runtime: InboxRuntime, ready: ReadyFile) -> None:
        """Decide what to do with a settled file: nothing, a duplicate, a retry, a new job, or give up."""
        ctx, ledger = self._ctx, self._ctx.ledger
        file = SourceFile.settled(runtime.inbox_id, runtime.inbox, ready)
        path = file.path
        # No new stat here (the inbox may be on a share that hangs): every decision either reads the file off
        # the loop and compares its version, or ends in a source step that does; a file that changed since it
        # settled also sends a hint and settles again.
        signature = file.version
        if self._decided(runtime, ready):
            return  # decided already, or its source step is under way (and hints it again if it changed)
        if any(work.file.path == path for work in self.active.values()):
            self._deferred[path] = runtime.inbox_id
            return
        if signature.size > ctx.config.max_input_bytes:
            # Refused from its size alone: hashing it would read it all (a sparse file can claim terabytes).
            limit = ctx.config.max_input_bytes
            reason = f"file is {signature.size} bytes, over the limit of {limit} (max_input_bytes)"
            self.disposal.fail(file, runtime.profile, None, reason, record=False)
            return
        sha256 = ledger.cached_hash(runtime.inbox_id, file.rel, signature)
        # This very version was judged before (in this run or an earlier one); one only held back while the same
        # content ran from another path was hashed, not judged.
        seen_before = sha256 is not None and path not in self._held_back
        self._held_back.discard(path)
        probe = None
        if sha256 is None:
            probe = self.reads.probe(file, ready, need_hash=True)
            if probe is None:
                return  # being read off the loop; it comes back when the hash is known
            if probe.signature != signature:
                runtime.tracker.hint(path)
                return
            assert probe.sha256 is not None
            sha256 = probe.sha256
            ledger.remember_hash(runtime.inbox_id, file.rel, signature, sha256)
        key = make_key(sha256, runtime.fingerprint)
        if key in self.active:
            self._deferred[path] = runtime.inbox_id  # same content in flight from another path
            self._held_back.add(path)
            return
        entry = ledger.get(key)
        own_outputs = ledger.outputs_of(runtime.inbox_id, file.rel)
        if key in own_outputs.values():
            self._already_done(runtime, file, entry)
            return
        if entry is not None and entry.state == State.DONE:
            if own_outputs and seen_before:
                # The stat cache says that this very version, which has an output of its own, holds content done
                # for another source: a file whose content changed has a new version, so only a wrong cache line
                # says that. Its own output is not replaced on that word: the line is forgotten and the file
                # hashed when it settles again.
                log.warning("stat_cache_distrusted", src=str(path), inbox=runtime.inbox_id)
                ledger.forget_hash(runtime.inbox_id, file.rel)
                runtime.tracker.hint(path)
                return
            if self._duplicate(runtime, file, entry, refresh=bool(own_outputs), seen_before=seen_before):
                return
            # This file needs the picture and the earlier output can't give it (removed, or no longer what srd
            # wrote): processed again, for this file.
            ledger.forget(key)
            entry = None
        unfinished = entry is not None and entry.state == State.STARTED  # a crash cut its last start short
        # Retried alone only once this daemon has lived config.crash_retry_after_seconds (see there).
        if unfinished and ctx.clock() - ctx.started < ctx.config.crash_retry_after_seconds:
            runtime.tracker.hint(path)  # judged again once it has settled again
            return
        if unfinished and entry is not None and entry.strikes >= ctx.config.max_attempts:
            reason = (f"gave up after {entry.strikes} deaths pinned on this file: its worker died, or the daemon "
                      "died while it was being retried alone")
            self.disposal.fail(file, runtime.profile, key, reason, record=True)
            return
        probe = probe or self.reads.probe(file, ready, need_hash=False)
        if probe is None:
            return  # its header is being read off the loop
        if probe.signature != signature:
            runtime.tracker.hint(path)  # changed since it settled: let it settle again
            return
        target = choose_target(ledger, runtime, file.rel, key=key, head=probe.head, in_flight=self._in_flight())
        if target is None:
            log.warning("output_exists_skipped", src=str(path), collision=runtime.inbox.collision)
            runtime.handled[path] = signature
            ctx.counters[runtime.inbox_id].skipped += 1
            return
        work = Work(file, runtime.profile, runtime.fingerprint, sha256, key, target, probe.pixels)
        # Nobody knows whether the daemon's death was this file's doing: run it alone to find out.
        self._submit(work, suspect=unfinished, content=probe.content)

    def _skip(self, runtime: InboxRuntime, key: str, ready: ReadyFile, exc: Exception, *,
              remember: bool = True) -> None:
        # The file can't be read now; remember this version of it so the loop doesn't spin, and let its
        # next change or a restart bring it back (`remember`: else the next reconcile scan does).
        log.error("file_skipped", src=str(ready.path), inbox=key, error=str(exc))
        if remember:
            runtime.handled[ready.path] = ready.version
        self._ctx.note_error(key, ready.path, str(exc))

    def _decided(self, runtime: InboxRuntime, ready: ReadyFile) -> bool:
        """Whether this version of the file was decided already, or its source step is under way."""
        return runtime.handled.get(ready.path) == ready.version or ready.path in self.disposal.out

    def waiting(self) -> tuple[dict[Path, str], dict[str, int]]:
        """The files waiting, each once: those settled and queued, being read, or held by a pause (an outbox, an
        outbox folder or a model away: path → inbox id), less one whose job is out (running) or that is decided
        already (a scan queued it again while its job ran); and per inbox id, its files still settling that are
        neither."""
        running = {work.file.path for work in self.active.values()}
        runtimes = self._ctx.runtimes
        queued = {ready.path: key for key, ready in [*self.backlog, *self.reads.reading.values()]
                  if ready.path not in running and key in runtimes and not self._decided(runtimes[key], ready)}
        queued.update((path, key) for key, path in self.pauses.held() if key in runtimes and path not in running)
        busy = running | queued.keys()
        settling = {key: sum(1 for path in runtime.tracker.pending_paths() if path not in busy)
                    for key, runtime in self._ctx.runtimes.items()}
        return queued, settling

    def _in_flight(self) -> set[Path]:
        return {work.target for work in self.active.values()}

    def not_finished_as_is(self, runtime: InboxRuntime, prefix: str, files: list[tuple[str, FileVersion]]
                           ) -> list[tuple[str, FileVersion]]:
        """Those of one folder's `files` (names below `prefix`, POSIX, with the versions a scan saw) that are not,
        in this very version, ones srd finished for their path with the output in place and the source step
        done: the common case of `finished_before`, asked of every file a restart scan sees, a folder at a time,
        with no path object or `Entry` built for a finished one.

        A file returned is only "not shown this quickly" (a duplicate, say): it then takes `finished_before`.
        """
        keys = self._ctx.ledger.finished_keys(runtime.inbox_id, [prefix + name for name, _ in files],
                                              [version for _, version in files], runtime.fingerprint)
        out, root = self.disposal.out, runtime.inbox.path
        return [file for file, key in zip(files, keys, strict=True)
                if key is None or key in self.active or (out and Path(f"{root}/{prefix}{file[0]}") in out)]

    def finished_before(self, runtime: InboxRuntime, path: Path, version: FileVersion) -> bool:
        """Whether a file a scan saw is, in this very version, one srd finished: its output holds its content
        and no source step is left (what `_consider` would decide, without the settle wait, the path's entry
        in `runtime.handled`, or a loop pass of its own).

        A restart over a NAS library sees every photo ever processed again; this keeps each at a few ledger
        lookups and no per-path memory. A file being written has a new version, so it never matches.
        """
        ledger = self._ctx.ledger
        rel = str(path)[len(str(runtime.inbox.path)) + 1:]  # below the root (`Loop.hint` checked); no Path parsing
        sha256 = ledger.cached_hash(runtime.inbox_id, rel, version)
        if sha256 is None:
            return False
        key = make_key(sha256, runtime.fingerprint)
        if key in self.active or path in self.disposal.out:
            return False
        if key not in ledger.outputs_of(runtime.inbox_id, rel).values():
            return False
        entry = ledger.get(key)
        own_job = (entry is not None and entry.state == State.DONE and entry.inbox == runtime.inbox_id
                   and entry.source.as_posix() == rel)
        if own_job:
            return entry is not None and source_step_done(entry.disposition)
        return source_step(runtime.inbox.on_success, entry.losses if entry is not None else ()) == "keep"

    def _already_done(self, runtime: InboxRuntime, file: SourceFile, entry: Entry | None) -> None:
        """An output srd wrote for this path holds this content's picture: at most the source step is left."""
        own_job = (entry is not None and entry.state == State.DONE and entry.inbox == runtime.inbox_id
                   and entry.source == file.rel)
        losses = entry.losses if entry is not None else ()
        if own_job and entry is not None and not source_step_done(entry.disposition):
            # A crash (or a late write) postponed the source step.
            self.disposal.dispose(file, entry.key, losses)
        elif not own_job and runtime.inbox.on_success != "keep":
            # A duplicate's output: its source step isn't journaled, and the file still being here says
            # it did not happen (or failed); do it now.
            self.disposal.dispose(file, None, losses)
        else:
            runtime.handled[file.path] = file.version

    def _duplicate(self, runtime: InboxRuntime, file: SourceFile, entry: Entry, *, refresh: bool,
                   seen_before: bool) -> bool:
        """This content is done under another name: link its output here (``duplicates: link``, or always
        when this path has an output of its own from earlier content, which would otherwise stay stale, or when
        the earlier output is in another inbox's outbox, where whoever reads this outbox would never see it).

        Returns False, doing nothing, where a link is needed but the earlier output is not there as srd wrote it
        (a consumer took it, or put another file in its place): the file is then processed as new. Skipping
        needs no earlier output: the content was given to a reader of this very outbox.

        A duplicate kept in the inbox (``duplicates: skip``, ``on_success: keep``) comes back at every start;
        it was counted and logged the first time (`seen_before`), so it is only logged at debug level then.
        """
        ledger = self._ctx.ledger
        output_root = next((i.outbox for i in self._ctx.config.inboxes if entry.output is not None
                            and entry.output.is_relative_to(i.outbox)), None)
        link = runtime.inbox.duplicates == "link" or refresh or output_root != runtime.inbox.outbox
        if link and (output_root is None or not _as_written(output_root, entry)):
            log.info("duplicate_output_gone_processing", src=str(file.path), same_as=str(entry.source),
                     output=str(entry.output))
            return False
        if not seen_before:
            self._ctx.counters[runtime.inbox_id].duplicates += 1
        how, target = "skipped", None
        if link:
            assert output_root is not None and entry.output is not None
            target = choose_target(ledger, runtime, file.rel, key=None, head=b"", in_flight=self._in_flight(),
                                   suffix=entry.output.suffix)
            if target is not None:
                if not _same_file(entry.output, target):
                    how = link_or_copy(output_root, entry.output, runtime.inbox.outbox, target, replace=True)
                ledger.record_output(target, inbox=runtime.inbox_id, source=file.rel, key=entry.key)
                remove_superseded(ledger, runtime.inbox.outbox, runtime.inbox_id, file.rel, target, self._in_flight())
        report = log.debug if seen_before and how == "skipped" else log.info
        report("duplicate", src=str(file.path), same_as=str(entry.source), output=str(entry.output), action=how,
               **({"to": str(target)} if target is not None else {}))
        self.disposal.dispose(file, None, entry.losses, said_before=seen_before)
        return True

    # -- submitted, running --------------------------------------------------------------------------------

    def _submit(self, work: Work, *, suspect: bool = False, content: Content | None = None) -> None:
        """Hand a file to the pool; `content` is its bytes as hashed, with that hash, shipped instead of read
        and hashed again (retries and files too big to keep read it where the job runs)."""
        config = self._ctx.config
        self.active[work.key] = work
        if suspect:
            self._solo.add(work.key)
        job = Job(work.file.path, work.target.parent, work.profile, config.max_input_pixels, target=work.target,
                  source_root=work.file.inbox.path, output_root=work.file.inbox.outbox,
                  max_input_bytes=config.max_input_bytes, content=content, source_version=work.file.version,
                  output_mark=mark_value(work.file.inbox_id, work.file.rel))
        self.pool.submit(work.key, job, suspect=suspect, time_limit=self._time_limit(work))

    def _time_limit(self, work: Work) -> float:
        """The configured `job_timeout`, or one derived from the image's pixels (the largest allowed if unknown)."""
        config = self._ctx.config
        if config.job_timeout is not None:
            return config.job_timeout
        pixels = work.pixels if work.pixels is not None else config.max_input_pixels
        return job_time_limit(work.profile, pixels, floor=config.job_timeout_min_seconds)

    def _journal_start(self, key: Any) -> None:
        """Pool hook: a worker is about to take this job, so its start (and attempt) becomes durable now.

        If the state dir refuses the record, the job runs anyway (the pool can't take it back) and its start
        is recorded with its outcome, once the state dir takes writes again.
        """
        work = self.active[key]
        self.running_since[key] = datetime.now(UTC).isoformat(timespec="seconds")
        # A big photo can take minutes: say when it starts, not only when it is done.
        log.info("file_started", src=str(work.file.path), inbox=work.file.inbox_id, profile=work.profile.name,
                 pixels=work.pixels, solo=key in self._solo)
        try:
            self._ctx.ledger.record_start(work.sha256, work.fingerprint, inbox=work.file.inbox_id,
                                          source=work.file.rel, target=work.target, solo=key in self._solo)
        except LedgerUnwritableError as exc:
            self._unstarted.add(key)
            self.state_unwritable(exc)

    # -- outcome -------------------------------------------------------------------------------------------

    def finish(self, outcome: Outcome) -> None:
        """Record a job's outcome (`outcomes.py`), unless its inbox's claim is not trusted: then it waits."""
        key = outcome.token
        assert isinstance(key, str)  # the pool hands back the work key it was given
        work = self.active[key]
        inbox = work.file.inbox
        if inbox.path in self._claims.inbox_claims.held and self._claims.untrusted(work.file.inbox_id, inbox.path):
            # Recording it would move, delete or fail a source that another daemon may own now.
            self._claims.pause(work.file.inbox_id, self._withdraw)
            self._claims.parked.setdefault(work.file.inbox_id, []).append(outcome)
            self.running_since.pop(key, None)  # no longer running: it waits for the claim
            return
        with bound_contextvars(inbox=work.file.inbox_id):  # every line about this file names its inbox
            try:
                self._finish_work(key, outcome)
            except OSError as exc:
                # Recording an outcome touches the outbox, the inbox and failed folder (a path too long, a
                # share gone): one file's trouble, never the daemon's. Left as it is, the next scan retries it.
                self.active.pop(key, None)
                self.running_since.pop(key, None)
                self._solo.discard(key)
                log.error("outcome_not_recorded", src=str(work.file.path), error=str(exc))
                self._ctx.note_error(work.file.inbox_id, work.file.path,
                                     f"its result could not be recorded: {exc}")

    def _finish_work(self, key: str, outcome: Outcome) -> None:
        work = self.active.pop(key)
        self.running_since.pop(key, None)
        solo = work.key in self._solo
        self._solo.discard(work.key)
        try:
            if work.key in self._unstarted:
                self._ctx.ledger.record_start(work.sha256, work.fingerprint, inbox=work.file.inbox_id,
                                              source=work.file.rel, target=work.target, solo=solo)
                self._unstarted.discard(work.key)
            self._outcomes.record(work, outcome)
        except LedgerUnwritableError as exc:
            # Each record is all or nothing and comes before the step it allows, so the outcome can be
            # handled again from the start once the state dir takes writes; until then its work stays active.
            self.active[work.key] = work
            if solo:
                self._solo.add(work.key)
            self.pauses.parked.append(outcome)
            self.state_unwritable(exc).waiting.add(work.file.path)
            return
        self._release_deferred()

    def _release_deferred(self) -> None:
        """Hint the files that waited for a job on their path or content to end."""
        for path, inbox_key in list(self._deferred.items()):
            self._ctx.hint(inbox_key, path)
        self._deferred.clear()

    def abandon_active(self) -> None:
        """At shutdown, after the drain: the jobs still active were cut short by us, not by their files."""
        ledger = self._ctx.ledger
        for work in self.active.values():
            entry = ledger.get(work.key)
            if entry is not None and entry.state == State.STARTED:
                try:
                    ledger.record_interrupted(work.key)
                except LedgerError as exc:  # the next start may then charge it one strike too many
                    log.warning("interruption_not_recorded", src=str(work.file.path), error=str(exc))

    # -- pauses --------------------------------------------------------------------------------------------

    def state_unwritable(self, exc: LedgerUnwritableError) -> OutboxBlock:
        """Pause: the state dir refused a ledger write (see `Pauses.state_unwritable`); returns the pause."""
        return self.pauses.state_unwritable(exc)

    def retry_state_dir(self) -> None:
        """Once the state dir takes writes again: journal start-up's recovery if it is pending, then the
        outcomes that waited."""
        if not self.pauses.state_dir_recovered():
            return
        try:
            if self.pauses.recovery_pending:
                recover_unfinished(self._ctx)
                self.pauses.recovery_pending = False
        except LedgerUnwritableError as exc:
            self.state_unwritable(exc)
            return
        parked, self.pauses.parked = self.pauses.parked, []
        for outcome in parked:
            self.finish(outcome)

    def keep_claims(self) -> None:
        """Heartbeat the inbox claims, and pause or resume each inbox as its claim is trusted or not."""
        self._claims.keep(self._ctx.runtimes, self._withdraw, self.finish)

    def _withdraw(self, inbox_key: str) -> set[Path]:
        """Take back the inbox's jobs that no worker has taken yet; returns their files."""
        return {work.file.path for work in self._take_back(lambda work: work.file.inbox_id == inbox_key)}

    def requeue_superseded(self) -> None:
        """After a reload: the jobs no worker has taken yet whose inbox now has another profile are taken back,
        and their files judged again under it, rather than run under the old profile and then done again; those
        of an inbox the reload removed are taken back and dropped."""
        runtimes = self._ctx.runtimes

        def superseded(work: Work) -> bool:
            runtime = runtimes.get(work.file.inbox_id)
            return runtime is None or runtime.fingerprint != work.fingerprint

        taken = self._take_back(superseded)
        for work in taken:
            if work.file.inbox_id in runtimes:
                self._ctx.rehint(work.file.inbox_id, work.file.path)
        if taken:
            self._release_deferred()  # files that waited for those jobs
            log.info("queued_jobs_requeued", jobs=len(taken), reason="their inbox's profile changed, or it was removed")

    def moved_on(self, path: Path, version: FileVersion | None) -> None:
        """A watcher's sign that the file at `path` may have changed (an event, or a scan that saw `version`): a
        job no worker has taken yet for a version written over since is taken back (the file settles again)."""
        if self._take_back(lambda work: work.file.path == path
                           and (version is None or not version.unwritten_since(work.file.version))):
            self._release_deferred()

    def gone(self, path: Path) -> None:
        """The watcher saw the file at `path` go (deleted, moved away): it leaves the queue, and a job no worker has
        taken yet for it is taken back (one already running puts no output in place: `Job.source_version`)."""
        self.backlog.discard(path)
        if self._take_back(lambda work: work.file.path == path):
            self._release_deferred()

    def _take_back(self, which: Callable[[Work], bool]) -> list[Work]:
        """Take back the jobs `which` selects that no worker has taken yet."""
        tokens = [token for token, work in self.active.items() if which(work)]
        withdrawn = self.pool.withdraw(tokens) if tokens else []
        works = []
        for token in withdrawn:
            assert isinstance(token, str)  # the pool hands back the work keys it was given
            works.append(self.active.pop(token))
            self._solo.discard(token)
        return works

    def replace_stale_pool(self) -> None:
        """A reload changed the pool's settings: replace it once its jobs are done."""
        if self.pool_stale and len(self.pool) == 0:
            try:
                pool = self._pool_builder(self._ctx.config, self._journal_start, self._wake)
            except OSError as exc:  # e.g. out of processes: keep the old pool and try again next pass
                log.error("pool_replace_failed", error=describe_os_error(exc))
                return
            self.pool.close()
            self.pool = pool
            self.pool_stale = False
            log.info("pool_replaced", workers=self._ctx.config.workers)


def _under(filename: Any, folder: Path) -> bool:
    """Whether an OSError's filename lies in `folder` (the error concerns the outbox, not the input)."""
    if not filename:
        return False
    path = Path(os.fsdecode(filename))
    return path == folder or folder in path.parents


def _as_written(outbox: Path, entry: Entry) -> bool:
    """Whether the output srd wrote for `entry` (below `outbox`) is still there as written: a regular file of the
    size recorded, and, where the filesystem keeps srd's mark, marked for the entry's source."""
    assert entry.output is not None
    try:
        st = safefs.lstat(outbox, entry.output)
    except (OSError, ValueError):
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_size != entry.output_size:
        return False
    mark = marked_for(outbox, entry.output)
    return mark is None or mark == (entry.inbox, entry.source.as_posix())


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
