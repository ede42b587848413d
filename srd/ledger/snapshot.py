"""The snapshot file ``{"format", "seq", "entries", "hashes", "outputs"}``: decoded straight into rows and
written in chunks, so neither a load nor a compaction needs the whole ledger as dicts or as one string."""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from srd.ledger.errors import LedgerError, LedgerVersionError
from srd.ledger.records import Owner, Row, cache_entry, cache_line, row_of, stored_record
from srd.ledger.tables import Tables

# 2 added "outputs" and the stat cache's inode and ctime; format 1 snapshots still load.
SNAPSHOT_FORMAT = 2
READABLE_FORMATS = (1, 2)
# Entries per write while streaming a snapshot: big enough to keep writes few, small enough to stay light.
_SNAPSHOT_CHUNK = 2048

_dumps = json.JSONEncoder(separators=(",", ":")).encode  # one encoder: json.dumps(…, separators=) builds one per call


def is_newer(snapshot_format: Any) -> bool:
    """Whether a snapshot's format is one a later srd wrote."""
    return type(snapshot_format) is int and snapshot_format > max(READABLE_FORMATS)


def read_snapshot(path: Path) -> Tables:
    """The tables a snapshot file holds.

    Raises:
        FileNotFoundError: There is no such file.
        OSError: It can't be read.
        LedgerVersionError: A newer srd wrote it.
        LedgerError: It is not a snapshot this srd wrote.
    """
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise LedgerError(f"ledger snapshot {path} is unreadable: {exc}") from exc
    try:
        snapshot = json.loads(raw, object_hook=_decode_snapshot_object)
        del raw
        if is_newer(snapshot["format"]):
            raise LedgerVersionError(
                f"ledger snapshot {path} was written by a newer srd (format {snapshot['format']}; this srd "
                f"reads formats {', '.join(map(str, READABLE_FORMATS))}): use that srd version or a later "
                "one; this one neither reads nor repairs it")
        if snapshot["format"] not in READABLE_FORMATS:
            raise ValueError(f"unsupported format {snapshot['format']!r}")
        entries = snapshot["entries"]
        if not all(isinstance(row, Row) for row in entries.values()):
            raise ValueError("an entry is not a ledger record")
        hashes = dict(cache_entry(item) for item in snapshot["hashes"])
        seq = int(snapshot["seq"])
        owners = [(output, Owner(sys.intern(inbox), sys.intern(source), key))
                  for output, inbox, source, key in snapshot.get("outputs", ())]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise LedgerError(f"ledger snapshot {path} is unreadable: {exc}") from exc
    return Tables.from_snapshot(entries, hashes, seq, owners, latest_claim_wins=snapshot["format"] == 1)


def snapshot_chunks(tables: Tables) -> Iterator[bytes]:
    """The snapshot of `tables` as JSON, a few thousand items at a time."""
    yield b'{"format":%d,"seq":%d,"entries":{' % (SNAPSHOT_FORMAT, tables.seq)
    yield from _chunked_json(iter(tables.entries.items()),
                             lambda chunk: _dumps({key: stored_record(key, row) for key, row in chunk}))
    yield b'},"hashes":['
    yield from _chunked_json(iter(tables.hashes.items()), lambda chunk: _dumps(
        [cache_line(slot, value) for slot, value in chunk]))
    yield b'],"outputs":['
    # Only the owners a done entry doesn't already say (links, forgotten keys): loading derives the rest.
    yield from _chunked_json((item for item in tables.owners.items() if not tables.said_by_entry(*item)),
                             lambda chunk: _dumps([[output, *owner] for output, owner in chunk]))
    yield b"]}"


def _decode_snapshot_object(obj: dict[str, Any]) -> Any:
    # json object_hook: turns each entry into a row as soon as it is parsed (the snapshot's other objects
    # have no "state").
    return row_of(obj) if "state" in obj and "key" in obj else obj


def _chunked_json(items: Iterator[Any], encode: Callable[[list[Any]], str]) -> Iterator[bytes]:
    """The JSON `encode` gives for `items` (a list or an object), without its brackets, in comma-joined chunks
    of `_SNAPSHOT_CHUNK` items: one encode call per chunk is far cheaper than one per item."""
    separator = b""
    while chunk := list(itertools.islice(items, _SNAPSHOT_CHUNK)):
        yield separator + encode(chunk)[1:-1].encode()
        separator = b","
