"""`check_ledger` and `repair_ledger`: the way out of a damaged ledger."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog

from srd.fs.atomic import open_atomic
from srd.ledger.errors import LedgerUnwritableError
from srd.ledger.files import JOURNAL_NAME, LOCK_NAME, SNAPSHOT_NAME, acquire_lock, reading, require_state_dir
from srd.ledger.ledger import DEFAULT_COMPACT_AFTER, Ledger

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class RepairReport:
    """What `repair_ledger` found and did.

    Attributes:
        problems: Each piece of damage found, with its file and line.
        counts: Entries per state after the repair.
        dropped_to: The files the unusable journal and generation lines were saved in (none if there were none).
    """

    problems: tuple[str, ...]
    counts: dict[str, int]
    dropped_to: tuple[Path, ...]


def check_ledger(state_dir: Path) -> RepairReport:
    """Read the ledger without locking or changing anything and list every problem a load would refuse.

    Safe beside a running daemon. A write cut short at the very end of the journal is not listed: the
    next start drops it by design (and beside a running daemon it may be a write in progress).

    Raises:
        StateDirError: `state_dir` is missing or can't be read.
        LedgerVersionError: The snapshot was written by a newer srd.
    """
    require_state_dir(state_dir)
    for _ in range(3):  # the owner may compact between our reads, as in `Ledger.open(read_only=True)`
        snapshot = _snapshot_file(state_dir)
        ledger = Ledger(Path(state_dir), None, compact_after=DEFAULT_COMPACT_AFTER, clock=time.time)
        with reading(state_dir):
            damage = ledger.load_listing_damage()
        if not damage.problems or _snapshot_file(state_dir) == snapshot:  # no compaction came between
            break
    return RepairReport(damage.problems, ledger.counts(), ())


def _snapshot_file(state_dir: Path) -> bytes | None:
    """The snapshot file's bytes (a compaction replaces it before it touches the journal)."""
    try:
        return (Path(state_dir) / SNAPSHOT_NAME).read_bytes()
    except OSError:
        return None


def repair_ledger(state_dir: Path) -> RepairReport:
    """Rebuild a damaged ledger from every intact record; the daemon must be stopped (the lock is taken).

    The snapshot (or, if it is lost or unreadable, the previous one) is loaded, keeping every record line of
    its generation that agrees with the index (`salvage`), and every journal line that is a whole, valid
    record is applied in order, whatever its neighbours; the result is written as a new generation. Lines
    that cannot be used are saved in the state directory as ``<file>.dropped-<time>`` (``journal.jsonl``,
    ``entries.jsonl``, ``owners.jsonl``) and listed in the report; an entry whose line was lost is unknown
    (its file is processed again). A healthy ledger is left as it is.

    Raises:
        LockedError: A daemon (or another command) holds the state directory.
        StateDirError: There is no state directory, or it can't be read.
        LedgerUnwritableError: The state directory can't be locked or written.
        LedgerVersionError: The snapshot was written by a newer srd: nothing is changed.
    """
    state_dir = Path(state_dir)
    require_state_dir(state_dir)
    try:
        lock_fd = acquire_lock(state_dir / LOCK_NAME)
    except OSError as exc:
        raise LedgerUnwritableError(f"cannot lock {state_dir}: {exc.strerror or exc}", errno=exc.errno) from exc
    ledger = Ledger(state_dir, lock_fd, compact_after=DEFAULT_COMPACT_AFTER, clock=time.time)
    try:
        with reading(state_dir):
            damage = ledger.load_listing_damage()
        dropped_to: list[Path] = []
        if damage.problems:
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            if damage.snapshot_damaged:
                # Set aside rather than kept as the previous snapshot, which may be the good one.
                os.replace(state_dir / SNAPSHOT_NAME, state_dir / f"{SNAPSHOT_NAME}.damaged-{stamp}")
            for name, lines in ((JOURNAL_NAME, damage.dropped), *damage.generation_dropped.items()):
                if lines:
                    dropped_to.append(state_dir / f"{name}.dropped-{stamp}")
                    with open_atomic(dropped_to[-1]) as out:
                        out.write(b"".join(line + b"\n" for line in lines))
            ledger.compact()
            log.warning("ledger_repaired", state_dir=str(state_dir), problems=len(damage.problems),
                        dropped_lines=len(damage.dropped) + sum(map(len, damage.generation_dropped.values())),
                        entries=len(ledger))
        return RepairReport(damage.problems, ledger.counts(), tuple(dropped_to))
    finally:
        ledger.close()
