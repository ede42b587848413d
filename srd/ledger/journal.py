"""Replaying the journal: its records in ``seq`` order on top of a snapshot, with a torn last line dropped and
any other damage refused (or, for `check_ledger` and `repair_ledger`, listed and skipped)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from srd.ledger.errors import REPAIR_HINT, LedgerError
from srd.ledger.files import SNAPSHOT_NAME
from srd.ledger.tables import Tables

log = structlog.get_logger(__name__)


class _Gap(Exception):
    """A journal record that does not follow from what was loaded before it."""


@dataclass
class Replay:
    """What `replay` read.

    Attributes:
        applied: Records applied.
        records: Records in the journal, those the snapshot already held included (what compaction counts).
        good_size: The byte length of the journal's intact part.
        file_size: The file's length.
        dropped: The lines a tolerant replay could not use, kept for the record.
    """

    applied: int = 0
    records: int = 0
    good_size: int = 0
    file_size: int = 0
    dropped: list[bytes] = field(default_factory=list)


def replay(path: Path, tables: Tables, snapshot_seq: int, *, read_only: bool,
           problems: list[str] | None = None) -> Replay:
    """Apply the journal records newer than the snapshot (which holds those up to `snapshot_seq`) to `tables`.

    A line that is not a whole record is damage, not a torn write, unless it is the unterminated last
    one: a write of srd's is one line ending in its newline, so only a write cut short lacks it. With
    `problems`, damage is listed there and skipped instead of refused.

    Raises:
        FileNotFoundError: There is no journal (only when not `read_only`: the owner creates it first).
        LedgerError: A record is damaged or does not continue what came before (without `problems`).
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if not read_only:
            raise
        data = b""
    lines = data.split(b"\n")
    # What follows the last newline is empty, or a record whose write never completed (or, read-only
    # beside a running owner, is being written).
    tail = lines.pop()
    result = Replay(good_size=len(data) - len(tail), file_size=len(data))
    if tail and not read_only:
        log.warning("ledger_torn_record_dropped", path=str(path), line=len(lines) + 1, size=len(tail))
    previous_seq = -1  # every journal srd writes counts up, line by line
    for number, line in enumerate(lines, 1):
        try:
            rec = json.loads(line)
            seq = rec["seq"]
            if not isinstance(seq, int) or isinstance(seq, bool):
                raise TypeError("seq is not an integer")
            if seq <= previous_seq:
                raise _Gap(f"seq {seq} after seq {previous_seq}: a repeated or older record")
            previous_seq = seq
            if rec.get("op") == "snapshot" and seq > snapshot_seq:
                held = f"holds seq {snapshot_seq}" if snapshot_seq else "is missing or could not be read"
                raise _Gap(f"it continues a snapshot with seq {seq}, but {path.parent / SNAPSHOT_NAME} {held}")
            if seq <= snapshot_seq:
                result.records += 1
                continue
            if seq != tables.seq + 1:
                if problems is None or seq <= tables.seq:
                    # A repeated or older record (a journal appended to itself, a restored copy) would
                    # undo later changes: never applied, not even by `repair`.
                    raise _Gap(f"seq {seq} follows {tables.seq}: it does not continue what came before")
                problems.append(f"{path}: line {number}: seq {seq} follows {tables.seq}: records are missing "
                                "before it (it is kept)")
            tables.apply(rec)
        except (ValueError, KeyError, TypeError, AttributeError, _Gap) as exc:
            what = str(exc) if isinstance(exc, _Gap) else f"not a ledger record ({exc})"
            message = f"{path}: line {number}: {what}"
            if problems is None:
                raise LedgerError(f"{message}; {REPAIR_HINT}") from exc
            problems.append(message)
            result.dropped.append(line)
            continue
        tables.seq = max(tables.seq, seq)
        result.records += 1
        result.applied += 1
    if tail and problems is not None and not read_only:
        problems.append(f"{path}: line {len(lines) + 1}: unterminated (a write cut short), dropped")
        result.dropped.append(tail)
    return result
