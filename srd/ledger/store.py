"""How the ledger's tables persist in its state directory: loaded from the snapshot and the journal, changed
only by records appended durably to the journal, and folded into a new snapshot by compaction."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path
from typing import Any

import structlog

from srd.errors import SrdError
from srd.fs.atomic import clean_stale_temps, write_bytes_atomic
from srd.fs.fileversion import FileVersion, version_of
from srd.ledger.base import Base
from srd.ledger.compaction import Compaction, remove_unused_generations
from srd.ledger.errors import REPAIR_HINT, LedgerError, LedgerUnwritableError
from srd.ledger.files import (
    JOURNAL_NAME,
    LOCK_NAME,
    PREVIOUS_SNAPSHOT_NAME,
    SNAPSHOT_NAME,
    journal_line,
    lock_text,
    write_all,
)
from srd.ledger.heap import give_back_free_memory
from srd.ledger.journal import Replay, replay
from srd.ledger.records import Cached, cache_line
from srd.ledger.salvage import Salvage
from srd.ledger.snapshot import NAMING_FORMATS, read_snapshot
from srd.ledger.tables import Tables

log = structlog.get_logger(__name__)

# Stat-cache changes are only an optimisation, so they are batched: a startup scan of a large inbox must not
# cost one fsync per file. Losing a batch in a crash only means hashing those files again.
HASH_BATCH = 1024
# Changes held in the newest layer (dicts, ~200 bytes each) before a compaction folds them into the compact
# base, whatever the journal's length: a first scan of a big inbox remembers a hash per file.
LAYER_LIMIT = 100_000
# Write errors that say "this storage takes no writes now" rather than "this record is bad".
_UNWRITABLE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


def _release(base: Base) -> None:
    """Free a replaced generation's index, then hand the C heap's free pages back to the system: the process
    sat at ~340 MB instead of ~180 MB between compactions at a million entries without it."""
    base.release()
    give_back_free_memory()


class Store:
    """The files of one state directory as the ledger's `Tables`; the owner of its lock is the only writer.

    `append` is durable when it returns: the journal record is written and fsynced before the tables change,
    so a failed write leaves both as they were.
    """

    def __init__(self, state_dir: Path, lock_fd: int | None, *, compact_after: int) -> None:
        """An empty store, to `load`, around an acquired lock (or none: read-only)."""
        self.state_dir = state_dir
        self.read_only = lock_fd is None
        self.tables = Tables()
        # Records in the journal since the last compaction.
        self.journal_records = 0
        # Journal lines a tolerant load (`repair`) could not use, kept for the record.
        self.dropped: list[bytes] = []
        self.snapshot_damaged = False
        # Record lines of the generation a tolerant load could not use, per record file.
        self.generation_dropped: dict[str, list[bytes]] = {}
        self._lock_fd = lock_fd
        self._journal_fd: int | None = None
        self._journal_size = 0
        self._compact_after = compact_after
        self._next_compaction = compact_after
        # Stat-cache changes not yet in the journal: the latest value per file, None for a removal.
        self._pending_hashes: dict[tuple[str, str], Cached | None] = {}
        self._compaction: Compaction | None = None
        # The snapshot is in format 1 or 2: the first compaction migrates it.
        self.legacy = False
        # The snapshot file as this store last left it (None: there is none), for `lost`.
        self._snapshot_seen: FileVersion | None = None
        self.abandoned = False

    def close(self) -> None:
        """Write buffered stat-cache changes, close the journal and release the lock; idempotent."""
        try:
            if self._journal_fd is not None:
                self.sync()
                if self._compaction is not None:
                    self._compaction.wait()
                    self._finish_compaction()
        finally:
            for fd in (self._journal_fd, self._lock_fd):
                if fd is not None:
                    os.close(fd)
            self._journal_fd = self._lock_fd = None
            self.tables.base.close()

    def lost(self) -> str | None:
        """Why the files this store writes are no longer the state directory's, or None: its lock file or
        journal removed or replaced (by hand, or with the whole folder), or the lock, journal or snapshot file
        rewritten by someone else (a backup copied back over them, an edit). Then another srd could take the
        folder, and whatever this one writes next would be lost or would damage what is there."""
        for name, fd in ((LOCK_NAME, self._lock_fd), (JOURNAL_NAME, self._journal_fd)):
            if fd is None:
                continue
            try:
                found = os.stat(self.state_dir / name)
            except FileNotFoundError:
                return f"its {name} file was removed"
            except NotADirectoryError:
                return "the state directory was replaced by a file"
            except OSError:
                return None  # unreadable for now: a write that fails pauses the daemon (`state_unwritable`)
            held = os.fstat(fd)
            if (found.st_dev, found.st_ino) != (held.st_dev, held.st_ino):
                return f"its {name} file was replaced by another"
        if self._lock_fd is not None and os.pread(self._lock_fd, 32, 0) != lock_text():
            return f"its {LOCK_NAME} file was rewritten by another process (it no longer names this one)"
        if self._journal_fd is not None:
            held = os.fstat(self._journal_fd)
            if held.st_size != self._journal_size:
                return f"its {JOURNAL_NAME} file was rewritten by another process ({held.st_size} bytes, not " \
                       f"{self._journal_size})"
        # (An edit of the journal that keeps its length goes unseen: its modification time would tell, but network
        # filesystems update it lazily, and a healthy daemon must never stop for that.)
        # While a compaction runs, its thread replaces the snapshot file itself.
        if self._snapshot_seen is not None and self._compaction is None:
            snapshot = version_of(self.state_dir / SNAPSHOT_NAME)
            if snapshot is None:
                return f"its {SNAPSHOT_NAME} file was removed"
            if snapshot != self._snapshot_seen:
                return f"its {SNAPSHOT_NAME} file was replaced or rewritten by another process"
        return None

    def abandon(self) -> None:
        """Let go of the state directory's files without another write: they are no longer this store's
        (see `lost`). A compaction under way is told not to replace the snapshot file; nothing waits for it."""
        if self._compaction is not None:
            self._compaction.cancel()
        for fd in (self._journal_fd, self._lock_fd):
            if fd is not None:
                os.close(fd)
        self._journal_fd = self._lock_fd = None
        self.abandoned = True

    def sync(self, *, may_compact: bool = True) -> None:
        """Write buffered stat-cache changes to the journal now (e.g. at the end of a scan)."""
        if self._pending_hashes:
            self.append({"op": "cache"}, may_compact=may_compact)

    def load(self, problems: list[str] | None = None) -> None:
        """Read the snapshot and replay the journal; with `problems`, damage is listed there and skipped
        (what `repair` and `check` use) instead of refused."""
        started = time.perf_counter()
        if not self.read_only:
            # With the lock held, any temp file is a leftover of a crashed compaction.
            clean_stale_temps(self.state_dir)
        snapshot_seq = self._read_snapshot(problems)
        journal_path = self.state_dir / JOURNAL_NAME
        if self.read_only:
            self._take(replay(journal_path, self.tables, snapshot_seq, read_only=True, problems=problems))
            return
        self._journal_fd = os.open(journal_path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        replayed = replay(journal_path, self.tables, snapshot_seq, read_only=False, problems=problems)
        self._take(replayed)
        if replayed.good_size < replayed.file_size and problems is None:
            try:
                os.ftruncate(self._journal_fd, replayed.good_size)
                os.fsync(self._journal_fd)
            except OSError as exc:
                raise LedgerError(f"cannot cut the torn tail off {journal_path}: {exc}") from exc
        self._journal_size = replayed.good_size
        self._snapshot_seen = version_of(self.state_dir / SNAPSHOT_NAME)
        if problems is None:
            # Loaded as the snapshot files say (not a newer srd's), so a generation they don't name is a
            # leftover of a crashed compaction, or older than the previous snapshot.
            remove_unused_generations(self.state_dir)
        log.info(
            "ledger_opened",
            state_dir=str(self.state_dir),
            entries=len(self.tables),
            replayed=replayed.applied,
            seq=self.tables.seq,
            ms=round((time.perf_counter() - started) * 1000),
        )
        if problems is None and self.legacy:
            self.compact()  # migrate now, rather than keep the older format's dicts until the journal is long
        elif problems is None and self.tables.base.derived:
            self._start_compaction()  # write down the columns this load computed, in the background
        elif problems is None:
            self._maybe_compact()

    def append(self, record: dict[str, Any], *, may_compact: bool = True) -> None:
        """Write `record`, carrying the buffered stat-cache changes, as one line with one fsync; then apply it.

        One line per write is what makes "only the last line can be torn" true.

        Raises:
            LedgerUnwritableError: The state directory refused the write (full, read-only …); nothing changed.
            LedgerError: Another write error; nothing changed.
        """
        fd = self._require_open()
        seq = self.tables.seq + 1
        line = {"seq": seq, **record}
        if self._pending_hashes:
            line["cache"] = {
                "set": [cache_line(slot, value) for slot, value in self._pending_hashes.items()
                        if value is not None],
                "unset": [list(slot) for slot, value in self._pending_hashes.items() if value is None],
            }
        payload = journal_line(line)
        try:
            write_all(fd, payload)
            os.fsync(fd)
        except OSError as exc:
            self._undo_partial_write(fd)
            message = f"cannot write ledger journal {self.state_dir / JOURNAL_NAME}: {exc}"
            if exc.errno in _UNWRITABLE_ERRNOS:
                raise LedgerUnwritableError(message, errno=exc.errno) from exc
            raise LedgerError(message) from exc
        self.tables.seq = seq
        self._journal_size += len(payload)
        self.journal_records += 1
        self._pending_hashes.clear()
        self.tables.apply(line)
        if may_compact:
            self._maybe_compact()

    def buffer_hash(self, slot: tuple[str, str], value: Cached | None) -> None:
        """Buffer a stat-cache change (None: a removal) for the next record; write it once `HASH_BATCH` wait."""
        self._pending_hashes[slot] = value
        if len(self._pending_hashes) >= HASH_BATCH:
            self.sync()

    def compact(self) -> None:
        """Fold the journal into a new generation and shorten the journal, and wait for it.

        See `Compaction` for the order of the writes, which keeps the ledger loadable to the same state
        after a crash at any point. The snapshot file this replaces is kept as ``ledger.json.prev``.

        Raises:
            LedgerError: The new generation could not be written (the old one and the journal are intact).
        """
        self._require_open()
        if self._compaction is not None:
            self._compaction.wait()
            self._finish_compaction()
        self._start_compaction()
        assert self._compaction is not None
        self._compaction.wait()
        error = self._finish_compaction()
        if error is not None:
            raise LedgerError(f"cannot compact the ledger in {self.state_dir}: {error}") from error

    @property
    def compacting(self) -> bool:
        """Whether a compaction runs in the background now."""
        return self._compaction is not None

    def poll(self) -> None:
        """Take the result of a background compaction that has finished (cheap when none has)."""
        if self._compaction is not None and self._compaction.done():
            self._finish_compaction()

    def _start_compaction(self) -> None:
        # Buffered stat-cache changes are in the frozen layers, so in the new generation; the journal no longer
        # needs them (a crash before it is in place only costs hashing those files again).
        self._pending_hashes.clear()
        frozen = self.tables.freeze()
        self._compaction = Compaction(self.state_dir, self.tables.base, frozen, self.tables.seq, self._journal_size)
        self._compaction.start()

    def _finish_compaction(self) -> Exception | None:
        job, self._compaction = self._compaction, None
        assert job is not None
        # Its thread may have replaced the snapshot file, even where it then failed (a folder fsync after it).
        self._snapshot_seen = version_of(self.state_dir / SNAPSHOT_NAME)
        if job.error is not None or job.base is None:
            # The frozen layers stay (the next compaction folds them too); try again after more records.
            self._next_compaction = self.journal_records + self._compact_after
            log.warning("ledger_compaction_failed", state_dir=str(self.state_dir), error=str(job.error))
            return job.error
        old = self.tables.rebase(job.base, job.folded)
        threading.Thread(target=_release, args=(old,), name="srd-ledger-release", daemon=True).start()
        self.legacy = False
        self._shorten_journal(job.seq, job.journal_cut)
        log.info("ledger_compacted", entries=len(self.tables), seq=job.seq, ms=round(job.seconds * 1000))
        return None

    def _shorten_journal(self, seq: int, cut: int) -> None:
        """Replace the journal by one marker line saying which snapshot it continues and the records written
        after `cut` (those the compaction did not hold), so that a lost snapshot is noticed instead of
        silently starting a new history."""
        fd = self._require_open()
        path = self.state_dir / JOURNAL_NAME
        try:
            tail = os.pread(fd, self._journal_size - cut, cut)
            content = journal_line({"seq": seq, "op": "snapshot"}) + tail
            write_bytes_atomic(path, content)
            new_fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        except (OSError, SrdError) as exc:
            # The old journal is still whole and consistent: its records up to `seq` are skipped when loading.
            log.warning("ledger_journal_not_shortened", path=str(path), error=str(exc))
            return
        os.close(fd)
        self._journal_fd = new_fd
        self._journal_size = len(content)
        self.journal_records = tail.count(b"\n")
        self._next_compaction = self.journal_records + self._compact_after

    def _require_open(self) -> int:
        if self.read_only:
            raise LedgerError(f"ledger {self.state_dir} was opened read-only")
        if self.abandoned:
            raise LedgerError(f"ledger {self.state_dir} was given up: its files are no longer this process's")
        if self._journal_fd is None:
            raise LedgerError(f"ledger {self.state_dir} is closed")
        return self._journal_fd

    def _maybe_compact(self) -> None:
        if self._compaction is not None:
            self.poll()
        elif self.journal_records >= self._next_compaction or len(self.tables.live) >= LAYER_LIMIT:
            self._start_compaction()

    def _undo_partial_write(self, fd: int) -> None:
        # A half-written line followed by later appends would be a corrupt line in the middle, which makes the
        # next load fail. Cutting it off keeps the file equal to what the in-memory state says was committed.
        try:
            os.ftruncate(fd, self._journal_size)
        except OSError as exc:
            log.error("ledger_journal_unrecoverable", path=str(self.state_dir / JOURNAL_NAME), error=str(exc))
            os.close(fd)
            self._journal_fd = None

    def _take(self, replayed: Replay) -> None:
        self.journal_records = replayed.records
        self.dropped = replayed.dropped

    def _read_snapshot(self, problems: list[str] | None) -> int:
        path = self.state_dir / SNAPSHOT_NAME
        previous = self.state_dir / PREVIOUS_SNAPSHOT_NAME
        try:
            self.tables, snapshot_format = self._read_salvaging(path, problems)
            self.legacy = snapshot_format not in NAMING_FORMATS
            return self.tables.seq
        except FileNotFoundError:
            if not previous.exists():
                return 0  # a ledger that was never compacted
            reason = f"ledger snapshot {path} is missing, but {previous.name} exists: a snapshot was lost"
        except LedgerError as exc:
            reason = str(exc)
            self.snapshot_damaged = True
        if problems is None:
            raise LedgerError(reason if REPAIR_HINT in reason else f"{reason}; {REPAIR_HINT}")
        problems.append(reason.removesuffix(f"; {REPAIR_HINT}"))
        try:
            self.tables, snapshot_format = self._read_salvaging(previous, problems)
            self.legacy = snapshot_format not in NAMING_FORMATS
        except (FileNotFoundError, LedgerError) as exc:
            problems.append(f"no usable previous snapshot either ({exc}): starting from the journal alone")
            self.tables = Tables()
            return 0
        problems.append(f"using the previous snapshot {previous} (seq {self.tables.seq}) instead")
        return self.tables.seq

    def _read_salvaging(self, path: Path, problems: list[str] | None) -> tuple[Tables, int]:
        """`read_snapshot`; for a tolerant load (`problems`), with damaged record lines listed and left out."""
        if problems is None:
            return read_snapshot(path)
        salvaged: list[Salvage] = []
        found = read_snapshot(path, salvaged)
        for damage in salvaged:
            problems.extend(damage.problems)
            self.generation_dropped = damage.dropped
        return found

