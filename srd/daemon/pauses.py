"""What makes files wait without costing them anything: a folder that refuses writes, a model that can't be had,
and a slow writer.

A full or read-only outbox pauses its inbox, an outbox folder srd will not enter (a symlink, a file in its place)
pauses the files bound for it, a full or read-only state dir pauses the daemon (docs/design.md §4), a model file
that no longer holds the bytes checked (replaced, removed or broken without a reload) pauses the inboxes that use
it until the file is back or a reload checks the new one, and a file that is still being written goes back to
settling after a growing back-off (§3, "Slow writers"). None of them is the file's fault.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import structlog

from srd.config import Config, Inbox, Profile
from srd.daemon.context import Context
from srd.daemon.outbox import OutboxBlock
from srd.engine.pipeline import StageContext
from srd.errors import ModelError
from srd.executors.pool import Outcome
from srd.ledger import LedgerUnwritableError

log = structlog.get_logger(__name__)

MODEL_RECHECK_S = 5.0


class Pauses:
    """The outboxes (per inbox id), outbox folders and the state dir that refuse writes, and what waits for them."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self.outboxes: dict[str, OutboxBlock] = {}
        # Per inbox id, the outbox folders srd refused to enter, by folder: only the files bound for one wait.
        self.folders: dict[str, dict[Path, OutboxBlock]] = {}
        self.models: dict[str, ModelBlock] = {}  # per inbox id
        self._model_context: tuple[Config, StageContext] | None = None
        # The state dir refuses writes (full, read-only): nothing new starts, and the outcomes that could not
        # be recorded wait in `parked` (their work stays active) until a probe says it takes writes again.
        self.state_dir: OutboxBlock | None = None
        self.parked: list[Outcome] = []
        self.recovery_pending = False  # start-up's crash recovery could not be journaled yet

    def state_unwritable(self, exc: LedgerUnwritableError) -> OutboxBlock:
        """Pause: the state dir refused a ledger write. Like a full outbox, it is nobody's file's fault."""
        if self.state_dir is None:
            state_dir = self._ctx.config.state_dir
            self.state_dir = OutboxBlock.start(state_dir, str(exc), exc.errno or 0, self._ctx.clock())
            log.error("state_dir_unwritable_paused", state_dir=str(state_dir), error=str(exc))
        return self.state_dir

    def state_dir_recovered(self) -> bool:
        """Whether the state dir takes writes again; if so, the pause is over (the caller resumes its work)."""
        block = self.state_dir
        if block is None or not block.recovered(self._ctx.clock()):
            return False
        self.state_dir = None
        log.info("state_dir_writable_resumed", state_dir=str(block.outbox), parked=len(self.parked),
                 paused_s=round(self._ctx.clock() - block.since, 1))
        return True

    def block_for(self, inbox_key: str, inbox: Inbox, path: Path) -> OutboxBlock | ModelBlock | None:
        """What the inbox file `path` waits for before it is judged, if anything: its inbox's outbox or model, or
        the outbox folder its output goes to (or one above it)."""
        block = self.outboxes.get(inbox_key) or self.models.get(inbox_key)
        folders = self.folders.get(inbox_key)
        if block is not None or not folders:
            return block
        output_folder = inbox.outbox / path.parent.relative_to(inbox.path)
        return next((block for folder, block in folders.items() if output_folder.is_relative_to(folder)), None)

    def held(self) -> Iterator[tuple[str, Path]]:
        """(inbox id, path) of each file an outbox, an outbox folder or a model holds back."""
        blocks: list[tuple[str, OutboxBlock | ModelBlock]] = [
            *self.outboxes.items(), *self.models.items(),
            *((key, block) for key, folders in self.folders.items() for block in folders.values())]
        for key, block in blocks:
            for path in block.waiting:
                yield key, path

    def block_outbox(self, inbox_key: str, outbox: Path, path: Path, reason: str, code: int,
                     refused_folder: Path | None = None) -> None:
        """Make `path` wait: the outbox refused its output. With `refused_folder` (a folder srd would not enter,
        a symlink or a file in its place) only the files bound for that folder wait; else the whole inbox."""
        if refused_folder is None:
            block = self.outboxes.get(inbox_key)
            if block is None:
                block = self.outboxes[inbox_key] = OutboxBlock.start(outbox, reason, code, self._ctx.clock())
                log.error("outbox_unwritable_paused", inbox=inbox_key, outbox=str(outbox), error=reason)
        else:
            folders = self.folders.setdefault(inbox_key, {})
            block = folders.get(refused_folder)
            if block is None:
                block = folders[refused_folder] = OutboxBlock.start(outbox, reason, code, self._ctx.clock(),
                                                                    refused_folder)
                log.error("outbox_folder_unwritable_paused", inbox=inbox_key, folder=str(refused_folder),
                          error=reason)
        block.waiting.add(path)
        self._ctx.unremember(inbox_key, path)
        self._ctx.note_error(inbox_key, path, reason)

    def retry_outboxes(self) -> None:
        """Let the files of each outbox and outbox folder that takes writes again go on."""
        now = self._ctx.clock()
        for key, block in list(self.outboxes.items()):
            if block.recovered(now):
                del self.outboxes[key]
                log.info("outbox_writable_resumed", inbox=key, outbox=str(block.outbox), waiting=len(block.waiting),
                         paused_s=round(now - block.since, 1))
                self._resume(key, block)
        for key, folders in list(self.folders.items()):
            for folder, block in list(folders.items()):
                if block.recovered(now):
                    del folders[folder]
                    log.info("outbox_folder_writable_resumed", inbox=key, folder=str(folder),
                             waiting=len(block.waiting), paused_s=round(now - block.since, 1))
                    self._resume(key, block)
            if not folders:
                del self.folders[key]

    def _resume(self, inbox_key: str, block: OutboxBlock) -> None:
        runtime = self._ctx.runtimes.get(inbox_key)
        if runtime is not None:
            for path in block.waiting:
                runtime.tracker.hint(path)

    def block_model(self, inbox_key: str, path: Path | None, reason: str) -> None:
        """Pause the inbox: its profile's model is not as it was checked (`reason`); `path`: a file sent back by a
        worker that could not load the model (None: found by `supervise_models`)."""
        block = self.models.get(inbox_key)
        if block is None:
            block = self.models[inbox_key] = ModelBlock(reason, self._ctx.clock())
            log.error("model_unavailable_paused", inbox=inbox_key, error=reason)
        if path is not None:
            block.waiting.add(path)
            self._ctx.unremember(inbox_key, path)
            self._ctx.note_error(inbox_key, path, reason)

    def supervise_models(self) -> None:
        """Pause each inbox whose model file no longer holds the bytes its profile is pinned to (replaced, removed
        or broken without a reload), at once rather than when a worker next has to load it; resume each paused one
        whose file holds them again (put back, or a reload checked and pinned the new one). A file is stat'ed
        each time and hashed again only when its stat changed."""
        now = self._ctx.clock()
        for key, runtime in self._ctx.runtimes.items():
            block = self.models.get(key)
            if block is not None and not block.due(now):
                continue
            problem = self._model_problem(runtime.profile)
            if block is None and problem is not None:
                self.block_model(key, None, problem)
            elif block is not None and problem is None:
                del self.models[key]
                log.info("model_available_resumed", inbox=key, waiting=len(block.waiting),
                         paused_s=round(now - block.since, 1))
                for path in block.waiting:
                    runtime.tracker.hint(path)
        for key in [key for key in self.models if key not in self._ctx.runtimes]:
            del self.models[key]  # gone from the config

    def _model_problem(self, profile: Profile) -> str | None:
        """Why a model of `profile` is not in its file with the bytes it is pinned to; None when all are (the
        context keeps the hashes by file version, until a reload brings another config)."""
        config = self._ctx.config
        if self._model_context is None or self._model_context[0] is not config:
            self._model_context = (config, StageContext(config.engine, config.model_dirs))
        context = self._model_context[1]
        try:
            for spec in profile.pipeline.models(context):
                context.verify(spec)
        except ModelError as exc:
            return str(exc)
        except OSError as exc:
            return f"{exc.filename}: {exc.strerror}"
        return None


@dataclass
class ModelBlock:
    """One inbox paused for its model: why, since when, and the inputs waiting for it."""

    reason: str
    since: float
    since_wall: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    waiting: set[Path] = field(default_factory=set)
    checked_at: float = 0.0

    def due(self, now: float) -> bool:
        """Whether to look at the model files again (each look may hash a changed file: not on every loop turn)."""
        if now - self.checked_at < MODEL_RECHECK_S:
            return False
        self.checked_at = now
        return True

    def describe(self) -> dict[str, object]:
        return {"state": "unavailable", "since": self.since_wall, "error": self.reason, "waiting": len(self.waiting)}


class SlowWriters:
    """Files that decoded as truncated while recently modified: when each is looked at again, and the
    back-off each got last time."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._rechecks: list[tuple[float, str, Path]] = []  # (recheck at, inbox id, path)
        self._backoff: dict[Path, float] = {}

    def waited(self, path: Path) -> bool:
        return path in self._backoff

    def next_wait(self, path: Path, *, settle_seconds: float, cap: float) -> float:
        """How long the file waits this time: twice the last wait (from 2 × `settle_seconds`, up to `cap`)."""
        delay = min(cap, max(2 * settle_seconds, 1.0, 2 * self._backoff.get(path, 0.0)))
        self._backoff[path] = delay
        return delay

    def recheck_after(self, inbox_key: str, path: Path, delay: float) -> None:
        """Let the file settle again `delay` seconds from now."""
        heapq.heappush(self._rechecks, (self._ctx.clock() + delay, inbox_key, path))

    def forget(self, path: Path) -> None:
        self._backoff.pop(path, None)

    def recheck_due(self) -> None:
        now = self._ctx.clock()
        while self._rechecks and self._rechecks[0][0] <= now:
            _, key, path = heapq.heappop(self._rechecks)
            self._ctx.hint(key, path)
