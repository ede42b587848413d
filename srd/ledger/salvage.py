"""Reading a generation's record files line by line against its index, for `srd ledger check` and `repair`:
every line where the index puts one and agrees with it is intact; the rest is damage, listed.

The daemon reads records one at a time where the index says they are, and refuses the ledger on the first one
that is not what the index says (`Base.checked_entry`, `Base.checked_owner`); this applies the same checks to
every line, so whatever the daemon would refuse on is listed here. A line that agrees with the index but is
not where it says (an edit before it shifted it) is kept: its content is intact.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from srd.ledger.base import COLUMNS, ENTRIES_FILE, OWNERS_FILE, Base, IndexDisagrees, name_hash
from srd.ledger.errors import REPAIR_HINT, LedgerError
from srd.ledger.records import Row
from srd.ledger.tables import Tables

_LISTED_PER_FILE = 20  # problems listed one by one per file; the rest are counted


@dataclass
class Salvage:
    """What survived of a damaged generation.

    Attributes:
        tables: Its intact entries and owners (in a layer) and its stat cache (in an otherwise empty base).
        problems: Each piece of damage, with its file and line or byte.
        dropped: Per record file, the lines that could not be used.
    """

    tables: Tables
    problems: list[str]
    dropped: dict[str, list[bytes]]


@dataclass
class _Scan:
    kept: list[Any] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    dropped: list[bytes] = field(default_factory=list)


def salvage(base: Base) -> Salvage | None:
    """Check every record line of `base` against its index; None if all are intact and where it says.

    Raises:
        OSError: A record file can't be read.
    """
    if base.folder is None:
        return None
    entries = _scan(base.folder / ENTRIES_FILE, base.entries["offset"], base.entries["hash"], base.checked_entry,
                    lambda value: value["key"])
    owners = _scan(base.folder / OWNERS_FILE, base.owners["offset"], base.owners["output"], base.checked_owner,
                   lambda value: value[0])
    if not entries.problems and not owners.problems:
        return None
    stat_cache_only = Base(None, base.seq, list(base.inboxes), {
        "entries": {name: base.entries[name][:0] for name in COLUMNS["entries"]},
        "owners": {name: base.owners[name][:0] for name in COLUMNS["owners"]},
        "hashes": {name: np.array(column) for name, column in base.hashes.items()},
    })
    rows: dict[str, Row] = dict(entries.kept)
    tables = Tables.from_legacy(rows, {}, base.seq, owners.kept, latest_claim_wins=False, base=stat_cache_only)
    return Salvage(tables, entries.problems + owners.problems,
                   {ENTRIES_FILE: entries.dropped, OWNERS_FILE: owners.dropped})


def _scan(path: Path, offsets: np.ndarray, hashes: np.ndarray, check: Callable[[bytes, int], Any],
          name_of: Callable[[Any], str]) -> _Scan:
    """Each line of `path` checked against the index position at its offset (or, if none is there, the one
    its name hashes to); the index positions no intact line matched are reported lost."""
    data = path.read_bytes()
    at = {int(offset): position for position, offset in enumerate(offsets)}
    unmatched = set(range(len(offsets)))
    scan = _Scan()
    offset = 0
    lines = data.split(b"\n")
    tail = lines.pop()
    moved: list[int] = []  # the line numbers of the current run of intact lines not where the index says
    for number, line in enumerate(lines, 1):
        try:
            position, kept = _intact(line, at.get(offset), hashes, unmatched, check, name_of)
            if position == at.get(offset):
                _report_moved(path, moved, scan.problems)
            else:
                moved.append(number)
            scan.kept.append(kept)
            unmatched.discard(position)
        except LedgerError as exc:
            _report_moved(path, moved, scan.problems)
            reason = str(exc).removeprefix(f"ledger generation file {path} ").removesuffix(f"; {REPAIR_HINT}")
            if isinstance(exc, IndexDisagrees):  # the record the index points to, which the index contradicts
                scan.problems.append(f"{path}: line {number} (byte {offset}): {reason}; the line is kept and the "
                                     "index written anew from it")
                scan.kept.append(exc.value)
                unmatched.discard(at.get(offset, -1))
            else:
                scan.problems.append(f"{path}: line {number} (byte {offset}): {reason}, dropped")
                scan.dropped.append(line)
        offset += len(line) + 1
    _report_moved(path, moved, scan.problems)
    if tail:
        scan.problems.append(f"{path}: line {len(lines) + 1} (byte {offset}): the file ends inside this record "
                             "(cut short), dropped")
        scan.dropped.append(tail)
    if unmatched:
        scan.problems.append(f"{path}: {len(unmatched)} of the {len(offsets)} records its index names are lost")
    if len(scan.problems) > _LISTED_PER_FILE + 1:
        hidden = len(scan.problems) - _LISTED_PER_FILE
        scan.problems[_LISTED_PER_FILE:] = [f"{path}: ... and {hidden} more problems"]
    return scan


def _report_moved(path: Path, moved: list[int], problems: list[str]) -> None:
    """List a run of intact lines that an edit before them moved (and empty it)."""
    if moved:
        lines = f"line {moved[0]}" if len(moved) == 1 else f"lines {moved[0]} to {moved[-1]}"
        problems.append(f"{path}: {lines}: not where the index puts them (an edit before them moved them); they "
                        "agree with the index, so they are kept")
        moved.clear()


def _intact(line: bytes, here: int | None, hashes: np.ndarray, unmatched: set[int],
            check: Callable[[bytes, int], Any], name_of: Callable[[Any], str]) -> tuple[int, Any]:
    """The index position whose record `line` is, and what `check` makes of it: the one the index puts at the
    line's offset (`here`), or else one an edit before it moved it from.

    Raises:
        LedgerError: It is no record of the index (the reason it is not the one at `here`, if there is one).
    """
    refused = None
    if here is not None:
        try:
            return here, check(line, here)
        except LedgerError as exc:
            refused = exc
    try:
        position = _moved_position(line, hashes, unmatched, check, name_of)
    except LedgerError:
        if refused is not None:
            raise refused from None
        raise
    return position, check(line, position)


def _moved_position(line: bytes, hashes: np.ndarray, unmatched: set[int], check: Callable[[bytes, int], Any],
                    name_of: Callable[[Any], str]) -> int:
    """The not yet matched index position whose record `line` is, wherever it stands in the file."""
    try:
        wanted = np.uint64(name_hash(name_of(json.loads(line))))
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise LedgerError(f"not a record ({exc})") from exc
    position = int(np.searchsorted(hashes, wanted, side="left"))
    while position < len(hashes) and hashes[position] == wanted:
        if position in unmatched:
            try:
                check(line, position)
                return position
            except LedgerError:
                pass
        position += 1
    raise LedgerError("no record of the index is this one (an added or repeated line)")
