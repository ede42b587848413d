"""A source's last state: disposed of by its verdict (kept, archived, deleted, or moved to the failed folder
with its reason), and what each source step did journaled when it comes back (docs/design.md §2, §4).

`sourcestep.py` runs a step in an offload thread; this module is the loop's side of it: until a file's step
is back, the file is not judged again; a step that failed is tried again at the next reconcile scan.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Container, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog
from structlog.contextvars import bound_contextvars

from srd.config import Profile
from srd.daemon.context import Context
from srd.daemon.fileevents import FileOutcome
from srd.daemon.offload import Done
from srd.daemon.sourcefile import SourceFile
from srd.daemon.sourcestep import Action, Found, SourceStep, StepResult, run_step
from srd.ledger import KEPT_CHANGED, State

log = structlog.get_logger(__name__)


def source_step(on_success: str, losses: Sequence[str]) -> str:
    """What becomes of a source whose output left `losses` out of it (`JobResult.losses`): ``on_success``, except
    that such a source is never deleted, since the output does not stand for it (an animation's frames, a scan's
    pages, transparency, metadata would be gone for good): it is kept."""
    return "keep" if on_success == "delete" and losses else on_success


@dataclass(frozen=True)
class StepToken:
    """An off-loop source step."""

    step: SourceStep


class Disposal:
    """Ends a file's life in the inbox by its verdict, through source steps off the loop, and journals them."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        # Steps out in the offloader, with when each was sent: their files wait for them.
        self.out: dict[Path, tuple[SourceStep, float]] = {}
        self.retries: dict[Path, SourceStep] = {}  # steps that failed; tried again at the next reconcile
        # Steps whose last try raised (a failed folder that is a file, a full archive): why, until one succeeds.
        self.failing: dict[Path, tuple[SourceStep, str]] = {}

    def fail(self, file: SourceFile, profile: Profile, key: str | None, reason: str, *, record: bool,
             report_if_gone: bool = True) -> None:
        """Record a failure and send the original to the failed folder with its reason (`key`: None for a
        file refused before it was hashed; `report_if_gone`: see `SourceStep`)."""
        ledger = self._ctx.ledger
        entry = ledger.get(key) if key is not None else None
        if record and key is not None and entry is not None and entry.state == State.STARTED:
            entry = ledger.record_failed(key, error=reason)
        details = {
            "reason": reason,
            "inbox": file.inbox_id,
            "profile": profile.name,
            "sha256": key.split(":", 1)[0] if key is not None else None,
            "attempts": entry.attempts if entry is not None else 0,
            "strikes": entry.strikes if entry is not None else 0,
            "first_attempt": entry.created_at if entry is not None else None,
            "last_attempt": entry.updated_at if entry is not None else None,
        }
        journaled = key if entry is not None and entry.state == State.FAILED else None
        self.start(SourceStep(Action.FAIL, file.inbox_id, file.inbox.path, file.rel, file.version, file.inbox.failed,
                              journaled, details, report_if_gone))

    def on_success(self, file: SourceFile, losses: Sequence[str], *, said_before: bool = False) -> str:
        """`source_step` for this file, saying when a source is kept that ``on_success`` would have deleted (unless
        `said_before`: a duplicate a start looks at again)."""
        step = source_step(file.inbox.on_success, losses)
        if step != file.inbox.on_success:
            (log.debug if said_before else log.warning)(
                "source_kept_not_deleted", src=str(file.path), losses=list(losses),
                reason="its output left out what only the source has")
        return step

    def dispose(self, file: SourceFile, key: str | None, losses: Sequence[str], *, said_before: bool = False) -> None:
        """Apply ``on_success`` (see `on_success`) to a source whose content has an output whose losses are
        `losses`; journal it for ledger entries."""
        on_success = self.on_success(file, losses, said_before=said_before)
        if on_success == "keep":
            disposition = self.keep(file)
            if key is not None:
                self._ctx.ledger.record_disposed(key, disposition)
            return
        action = Action.DELETE if on_success == "delete" else Action.ARCHIVE
        self.start(SourceStep(action, file.inbox_id, file.inbox.path, file.rel, file.version, file.inbox.archive, key))

    def keep(self, file: SourceFile) -> str:
        """``on_success: keep``: nothing to do to the file; this version of it needs no second look."""
        self._ctx.remember(file)
        return "kept"

    def start(self, step: SourceStep) -> None:
        """Send a source step to the offloader; until it is back, its file is not considered again."""
        self.out[step.path] = (step, self._ctx.clock())
        self.retries.pop(step.path, None)
        self._ctx.offload.submit(step.inbox_key, StepToken(step), functools.partial(run_step, step))

    def retry(self, paused: Container[str]) -> None:
        """Try the failed steps again, except in the inboxes in `paused`."""
        retries, self.retries = self.retries, {}
        for path, step in retries.items():
            if step.inbox_key in paused:
                self.retries[path] = step  # another daemon may own the file now: not while paused
            elif path not in self.out:
                self.start(dataclasses.replace(step, retried=True))

    def done(self, step: SourceStep, done: Done) -> None:
        """Journal what a source step did, or keep it for the next reconcile if it failed."""
        ctx = self._ctx
        self.out.pop(step.path, None)
        with bound_contextvars(inbox=step.inbox_key):
            if done.error is not None:
                self._step_failed(step, done.error)
                return
            self.failing.pop(step.path, None)
            result = done.value
            assert isinstance(result, StepResult)
            if result.found is Found.INBOX_MISSING:
                if step.action is Action.FAIL and not step.report_if_gone:
                    self._vanished_before_read(step)  # its read failed because the inbox went with it
                    return
                # A share outage: the file's fate is unknown, so nothing is journaled; the step runs again at
                # the next reconcile, and the rescan on the inbox's return judges the file afresh.
                log.info("source_step_postponed", src=str(step.path), action=str(step.action),
                         reason="inbox missing")
                self.retries[step.path] = step
                return
            if step.action is Action.FAIL:
                self._failed_step_done(step, result)
                return
            if result.found is Found.CHANGED:
                disposition = KEPT_CHANGED
                ctx.rehint(step.inbox_key, step.path)
            else:
                disposition = "gone" if result.found is Found.GONE else {
                    Action.ARCHIVE: "archived", Action.DELETE: "deleted"}[step.action]
                ctx.forget_source(step.inbox_key, step.root, step.path)
            if step.ledger_key is not None:
                ctx.ledger.record_disposed(step.ledger_key, disposition)

    def _failed_step_done(self, step: SourceStep, result: StepResult) -> None:
        ctx = self._ctx
        reason = step.report["reason"]
        if result.found is Found.CHANGED:
            log.warning("file_failed_but_changed", src=str(step.path), reason=reason)
            ctx.rehint(step.inbox_key, step.path)
            return
        if result.found is Found.GONE and not step.report_if_gone:
            self._vanished_before_read(step)
            return
        ctx.forget_source(step.inbox_key, step.root, step.path)
        if step.ledger_key is not None:
            ctx.ledger.record_disposed(step.ledger_key, "failed-folder")
        if not step.retried:
            ctx.counters[step.inbox_key].count_failure(reason)
            self._failed(step, result.moved_to)
        ctx.note_error(step.inbox_key, step.path, reason)
        log.warning("file_failed", src=str(step.path), moved_to=str(result.moved_to), reason=reason,
                    attempts=step.report["attempts"])

    def _vanished_before_read(self, step: SourceStep) -> None:
        """The worker couldn't even read the file because it is gone: deleted, alone or with its inbox, or its
        share unmounted. None of that is the file's fault, so no failure stays recorded (it would be counted,
        and listed as failed, forever); if it comes back, the rescan brings it in again."""
        if step.ledger_key is not None:
            self._ctx.ledger.forget(step.ledger_key)
        self._ctx.unremember(step.inbox_key, step.path)
        log.info("source_vanished_before_read", src=str(step.path))

    def _failed(self, step: SourceStep, moved_to: Path | None) -> None:
        """Tell the listeners, once per failure (a retried step that moves the file later tells no more)."""
        runtime = self._ctx.runtimes.get(step.inbox_key)
        if runtime is not None:
            self._ctx.events.publish(FileOutcome("failed", runtime.inbox, step.path, moved_to,
                                                 reason=step.report["reason"]))

    def _step_failed(self, step: SourceStep, exc: BaseException) -> None:
        """The step could not be done (a full or read-only folder, a name refused): nothing moved. The file
        stays where it is, this version of it is not judged again, and the step is retried at the next
        reconcile; the daemon carries on."""
        ctx = self._ctx
        runtime = ctx.runtimes.get(step.inbox_key)
        if runtime is not None:
            runtime.handled[step.path] = step.version
        self.retries[step.path] = step
        self.failing[step.path] = (step, str(exc))
        retry = "at the next reconcile scan"
        if step.action is Action.FAIL:
            reason = step.report["reason"]
            log.error("failed_folder_write_failed", src=str(step.path), reason=reason, error=str(exc), retry=retry)
            if not step.retried:
                ctx.counters[step.inbox_key].count_failure(reason)
                self._failed(step, None)
            ctx.note_error(step.inbox_key, step.path,
                           f"{reason}; and it could not be moved to the failed folder: {exc}")
            return
        log.error("source_step_failed", src=str(step.path), action=str(step.action), error=str(exc), retry=retry)
        ctx.note_error(step.inbox_key, step.path, f"processed, but {step.action} failed: {exc}")
