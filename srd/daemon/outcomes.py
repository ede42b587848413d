"""What a job's outcome makes of its file: finished, failed, lost (retried or failed), or left to wait
(a slow writer, an outbox refusing writes). The states after `lifecycle.py`'s "running" (docs/design.md §4, §5).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import structlog

from srd.config import Profile
from srd.daemon.context import Context
from srd.daemon.disposal import Disposal
from srd.daemon.fileevents import FileOutcome
from srd.daemon.outbox import BLOCKING_ERRNOS, REFUSED_FOLDER_ERRNOS
from srd.daemon.pauses import Pauses, SlowWriters
from srd.daemon.sourcefile import Work
from srd.daemon.superseded import remove_superseded
from srd.engine.pipeline import Upscale
from srd.executors.job import JobResult
from srd.executors.pool import Finished, Lost, Outcome
from srd.fs import safefs
from srd.fs.atomic import temp_files_of
from srd.fs.sources import report_path
from srd.ledger import KEPT_CHANGED, State, make_key

log = structlog.get_logger(__name__)


class Outcomes:
    """Records job outcomes. `resubmit(work, suspect)` hands a lost job back to the pool."""

    def __init__(self, ctx: Context, disposal: Disposal, pauses: Pauses, writers: SlowWriters,
                 active: Mapping[str, Work], resubmit: Callable[[Work, bool], None]) -> None:
        self._ctx = ctx
        self._disposal = disposal
        self._pauses = pauses
        self._writers = writers
        self._active = active
        self._resubmit = resubmit

    def record(self, work: Work, outcome: Outcome) -> None:
        if isinstance(outcome, Finished) and outcome.result.ok:
            self._succeeded(work, outcome)
        elif isinstance(outcome, Finished) and outcome.result.out_of_memory:
            # Like a worker killed by the OOM killer: retried alone (the pool runs retries one at a time).
            self._lost(work, Lost(outcome.token, outcome.result.error or "out of memory"))
        elif isinstance(outcome, Finished) and outcome.result.truncated and self._wait_for_writer(work, outcome.result):
            pass
        elif isinstance(outcome, Finished) and outcome.result.model_unavailable:
            self._model_unavailable(work, outcome.result.error or "model unavailable")
        elif isinstance(outcome, Finished) and outcome.result.source_changed:
            self._source_changed(work)
        elif isinstance(outcome, Finished) and outcome.result.output_errno in BLOCKING_ERRNOS:
            self._output_refused(work, outcome.result.error or "output refused", outcome.result.output_errno)
        elif isinstance(outcome, Finished):
            self._failed_result(work, outcome.result.error or "unknown error", outcome.result.sha256)
        else:
            self._lost(work, outcome)

    # -- finished ------------------------------------------------------------------------------------------

    def _succeeded(self, work: Work, outcome: Finished) -> None:
        ctx, ledger, file = self._ctx, self._ctx.ledger, work.file
        self._writers.forget(file.path)
        self._clear_earlier_failure(work)
        result = outcome.result
        assert result.output is not None and result.sha256 is not None
        key = work.key
        if result.sha256 != work.sha256:
            # The file changed between our hash and the worker's read: record what was really processed.
            # The file's newer versions, if any, come back through events or the next scan.
            ledger.forget(key)
            key = make_key(result.sha256, work.fingerprint)
            existing = ledger.get(key)
            if existing is not None and existing.state == State.DONE:
                ledger.forget(key)
            ledger.record_start(result.sha256, work.fingerprint, inbox=file.inbox_id, source=file.rel)
        output_size = (result.output_bytes if result.output_bytes is not None
                       else safefs.lstat(file.inbox.outbox, result.output).st_size)
        changed = result.sha256 != work.sha256
        # A job submitted before a reload changed the inbox's profile: done under the old fingerprint, which is
        # not the file's last word. Its source stays, and it is judged again under the current profile.
        superseded = self._superseded(work)
        # Keeping the source touches nothing, so what was done with it can share the `done` record (one
        # fsync fewer); archiving or deleting it must wait until `done` is durable.
        on_success = "keep" if changed or superseded else self._disposal.on_success(file, result.losses)
        if changed:
            disposition: str | None = KEPT_CHANGED
        elif on_success != "keep":
            disposition = None
        else:
            disposition = self._disposal.keep(file)
        ledger.record_done(key, output=result.output, output_size=output_size, disposition=disposition,
                           losses=result.losses)
        remove_superseded(ledger, file.inbox.outbox, file.inbox_id, file.rel, result.output,
                          {other.target for other in self._active.values()})
        ctx.counters[file.inbox_id].count_success()
        model, scale = _upscale_summary(work.profile)
        log.info("file_processed", src=str(file.path), out=str(result.output), profile=work.profile.name,
                 model=model, scale=scale, in_size=result.input_size, out_size=result.output_size,
                 bytes=output_size, tile_threads=result.tile_threads, ms=result.milliseconds,
                 **({"losses": list(result.losses)} if result.losses else {}))
        width, height = result.input_size or (0, 0)
        ctx.events.publish(FileOutcome("done", file.inbox, file.path, result.output, seconds=result.milliseconds / 1000,
                                       megapixels=width * height / 1e6))
        if changed or superseded:
            if superseded:
                log.info("profile_changed_while_running", src=str(file.path), profile=work.profile.name,
                         then=work.fingerprint, now=self._ctx.runtimes[file.inbox_id].fingerprint)
            ctx.rehint(file.inbox_id, file.path)  # its newer content, or its current profile, when it settles
        elif on_success != "keep":
            self._disposal.dispose(file, key, result.losses)

    def _superseded(self, work: Work) -> bool:
        """Whether a reload has given the work's inbox another fingerprint since the work was submitted."""
        runtime = self._ctx.runtimes.get(work.file.inbox_id)
        return runtime is not None and runtime.fingerprint != work.fingerprint

    def _clear_earlier_failure(self, work: Work) -> None:
        """A source that failed before and has now been processed: drop its stale reason file and failed
        ledger entries, which would otherwise still say it is broken."""
        ledger, file = self._ctx.ledger, work.file
        report = report_path(file.inbox.failed / file.rel)
        if not safefs.lexists(file.inbox.failed, report):
            return  # the common case, at the cost of one stat; the ledger scan below is rare
        stale = [e.key for e in ledger.in_state(State.FAILED) if e.inbox == file.inbox_id and e.source == file.rel]
        for key in stale:
            ledger.forget(key)
        try:
            safefs.unlink(file.inbox.failed, report)
        except OSError as exc:
            log.warning("stale_failure_report_remove_failed", path=str(report), error=str(exc))
            return
        log.info("earlier_failure_cleared", src=str(file.path), report=str(report), ledger_entries=len(stale))

    # -- waiting, not judged -------------------------------------------------------------------------------

    def _wait_for_writer(self, work: Work, result: JobResult) -> bool:
        """Put a truncated file that may still be being written back to settle after a growing back-off.

        A slow writer (a camera over Wi-Fi, a stalled copy, a download that pauses) can stop for longer
        than any fixed wait; its half-written file is no verdict on the file. So a truncated file waits,
        each time twice as long (from ``2 × settle_seconds`` up to ``settle_max_backoff_seconds``), as long
        as it was last modified less than ``settle_max_backoff_seconds`` ago. One that stayed unmodified
        that long will not be completed: it fails, with that said (returns False when nothing waited).
        """
        file = work.file
        path = file.path
        cap = file.inbox.settle_max_backoff_seconds
        # From the version that settled, not a new stat (the inbox may be on a share that hangs): a writer that
        # went on since sends a hint, and the file settles again as a new version.
        modified_s_ago = time.time() - file.version.mtime_ns / 1e9
        if modified_s_ago > cap:
            waited = self._writers.waited(path)
            self._writers.forget(path)
            if not waited:
                return False
            log.warning("file_incomplete_gave_up", src=str(path), reason=result.error,
                        modified_s_ago=round(modified_s_ago, 1), cap_s=cap)
            self._failed_result(work, f"{result.error}; unchanged for {round(modified_s_ago)} s, longer than "
                                f"settle_max_backoff_seconds ({cap:g} s): the writer never finished it",
                                result.sha256)
            return True
        delay = self._writers.next_wait(path, settle_seconds=file.inbox.settle_seconds, cap=cap)
        self._ctx.ledger.forget(work.key)  # not an attempt: the file wasn't all there yet
        self._ctx.unremember(file.inbox_id, path)
        self._writers.recheck_after(file.inbox_id, path, delay)
        log.warning("file_incomplete_waiting", src=str(path), reason=result.error, retry_in_s=delay,
                    modified_s_ago=round(modified_s_ago, 1))
        return True

    def _output_refused(self, work: Work, reason: str, code: int) -> None:
        """The outbox refused the output (full, read-only …): not the file's fault, so it costs no attempt
        and stays in the inbox; the inbox pauses until the outbox takes writes again."""
        self._ctx.ledger.forget(work.key)
        refused = work.target.parent if code in REFUSED_FOLDER_ERRNOS else None  # a folder on the way is not one
        self._pauses.block_outbox(work.file.inbox_id, work.file.inbox.outbox, work.file.path, reason, code, refused)

    def _source_changed(self, work: Work) -> None:
        """The file was renamed, deleted, replaced or written to after it settled, and the job put no output in
        place: no verdict on it (and no output under a name the file no longer has). Whatever is at its path
        now is judged afresh; a file renamed within the inbox comes in under its new name."""
        self._ctx.ledger.forget(work.key)
        self._ctx.rehint(work.file.inbox_id, work.file.path)
        log.info("source_changed_before_output", src=str(work.file.path))

    def _model_unavailable(self, work: Work, reason: str) -> None:
        """The worker could not have the model as it was checked: not the file's fault, so it costs no attempt and
        stays in the inbox; the inbox pauses until the model is back (`Pauses.supervise_models`)."""
        self._ctx.ledger.forget(work.key)
        self._pauses.block_model(work.file.inbox_id, work.file.path, reason)

    # -- failed --------------------------------------------------------------------------------------------

    def _failed_result(self, work: Work, reason: str, processed_sha: str | None) -> None:
        if processed_sha is not None and processed_sha != work.sha256:
            # It was rewritten under us; judge the new content on its own when it settles.
            self._ctx.ledger.forget(work.key)
            self._ctx.rehint(work.file.inbox_id, work.file.path)
            return
        # A worker that couldn't read the file at all may have found it gone (deleted, its share unmounted):
        # not the file's fault, and the step, which looks again, then records nothing.
        self._disposal.fail(work.file, work.profile, work.key, reason, record=True,
                            report_if_gone=processed_sha is not None)

    # -- lost ----------------------------------------------------------------------------------------------

    def _lost(self, work: Work, outcome: Lost) -> None:
        ctx, ledger = self._ctx, self._ctx.ledger
        self._remove_orphan_temps(work)
        entry = ledger.get(work.key)
        started = entry is not None and entry.state == State.STARTED
        if ctx.signals.stop is not None:
            log.warning("job_interrupted", src=str(work.file.path), reason=outcome.reason)
            if started:
                ledger.record_interrupted(work.key)
            return  # stays started; the next start retries it
        if started and outcome.pinned:
            entry = ledger.record_strike(work.key)
        strikes = entry.strikes if entry is not None else 0
        max_attempts = ctx.config.max_attempts
        if strikes >= max_attempts:
            self._disposal.fail(work.file, work.profile, work.key,
                                f"{outcome.reason}; gave up after {strikes} deaths pinned on this file", record=True)
            return
        log.warning("job_lost_retrying", src=str(work.file.path), reason=outcome.reason, pinned=outcome.pinned,
                    attempts=entry.attempts if entry is not None else 1, strikes=strikes,
                    max_attempts=max_attempts)
        self._resubmit(work, outcome.retry_alone)

    def _remove_orphan_temps(self, work: Work) -> None:
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
                safefs.unlink(work.file.inbox.outbox, temp)
            except (OSError, ValueError) as exc:
                log.warning("orphan_temp_remove_failed", path=str(temp), error=str(exc))
                continue
            log.info("orphan_temp_removed", path=str(temp), src=str(work.file.path))


def _upscale_summary(profile: Profile) -> tuple[str | None, float | None]:
    ups = [s for s in profile.pipeline.stages if isinstance(s, Upscale)]
    if not ups:
        return None, None
    scale = 1.0
    for stage in ups:
        scale *= stage.scale
    return ",".join(s.model for s in ups), scale
