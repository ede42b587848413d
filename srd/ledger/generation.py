"""Writing a new generation: the old one (`Base`) with the changes of some layers folded in.

The old generation's record lines are copied as byte ranges, not parsed: only the changed records are encoded,
so folding 10,000 changes into 1,000,000 entries costs the copy of the files, not a million JSON calls.
Every file is written with little dirty data at a time (see `writeback`); then all of them are fsynced, and the
folder too, before the caller makes the generation current.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from srd.ledger.base import (
    COLUMNS,
    ENTRIES_FILE,
    GENERATION_FORMAT,
    INDEX_FILE,
    INODE_MASK,
    OWNERS_FILE,
    STATE_CODES,
    Base,
    column_checksum,
    column_json,
    entry_columns,
    name_hash,
    optional_hash,
    slot_hash,
)
from srd.ledger.records import Cached, Owner, Row, stored_record
from srd.ledger.tables import Layer, Slot
from srd.ledger.writeback import PacedFile

GENERATION_PREFIX = "gen-"
_COPY_CHUNK = 4 * 1024 * 1024
_dumps = json.JSONEncoder(separators=(",", ":")).encode


def generation_name(seq: int) -> str:
    """A fresh folder name for the generation holding records up to `seq`."""
    return f"{GENERATION_PREFIX}{seq:012d}-{secrets.token_hex(4)}"


def write_generation(folder: Path, base: Base, layers: list[Layer], seq: int) -> None:
    """Write `base` with `layers` (oldest first) folded in, as the generation of records up to `seq`, into the
    new folder `folder`, durably.

    Raises:
        OSError: A write failed (the folder may be left half-written; nothing refers to it).
    """
    entries: dict[str, Row | None] = {}
    owners: dict[str, Owner] = {}
    hashes: dict[Slot, Cached | None] = {}
    for layer in layers:
        entries.update(layer.entries)
        owners.update(layer.owners)
        hashes.update(layer.hashes)
    folder.mkdir()
    inboxes = list(base.inboxes)
    columns = {
        "entries": _write_entries(folder, base, entries, inboxes),
        "owners": _write_owners(folder, base, owners),
        "hashes": _merge_hashes(base, hashes),
    }
    checksums = {}
    for table, table_columns in columns.items():
        for name, column in table_columns.items():
            data = _bytes_of(column)
            checksums[f"{table}.{name}"] = column_checksum(data)
            _write_file(folder / f"{table}.{name}.json", column_json(data))
    index = {"format": GENERATION_FORMAT, "seq": seq, "inboxes": inboxes,
             "columns": {f"{table}.{name}": [COLUMNS[table][name], list(column.shape)]
                         for table, table_columns in columns.items() for name, column in table_columns.items()},
             "checksums": checksums,
             "record_sizes": {name: (folder / name).stat().st_size for name in (ENTRIES_FILE, OWNERS_FILE)}}
    _write_file(folder / INDEX_FILE, [json.dumps(index, indent=1).encode()])
    # Made durable together, after all are written: the first fsync commits every file's metadata at once. One
    # fsync per file, each a filesystem commit that the loop's next journal fsync waited for, made 20 of them.
    for path in folder.iterdir():
        _fsync(path, os.O_RDONLY)
    _fsync(folder, os.O_RDONLY | os.O_DIRECTORY)


def _bytes_of(column: np.ndarray) -> memoryview:
    """The column's bytes without a copy: ``tobytes`` of a million stat-cache lines' hashes (32 MB) held the
    interpreter, and so the daemon's loop, for 20 ms."""
    return np.ascontiguousarray(column).reshape(-1).view(np.uint8).data


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_entries(folder: Path, base: Base, changes: dict[str, Row | None], inboxes: list[str]) -> dict[str, Any]:
    codes = {inbox: code for code, inbox in enumerate(inboxes)}
    dropped = []
    added: list[tuple[int, bytes, Row]] = []
    for key, row in changes.items():
        found = base.find(key)
        if found is not None:
            dropped.append(found[0])
        if row is not None:
            if row.inbox not in codes:
                codes[row.inbox] = len(inboxes)
                inboxes.append(row.inbox)
            added.append((name_hash(key), (_dumps(stored_record(key, row)) + "\n").encode(), row))
    added.sort(key=lambda item: item[0])
    derived = np.array([entry_columns(item[2]) for item in added], dtype=np.uint64).reshape(len(added), 3)
    new: dict[str, np.ndarray] = {
        "hash": np.array([item[0] for item in added], dtype=np.uint64),
        "state": np.array([STATE_CODES[item[2].state] for item in added], dtype=np.uint8),
        "inbox": np.array([codes[item[2].inbox] for item in added], dtype=np.uint16),
        "updated": np.array([item[2].updated_ts for item in added], dtype=np.float64),
        "slot": derived[:, 0].copy(),
        "output": derived[:, 1].copy(),
        "settled": derived[:, 2].astype(np.uint8),
    }
    lines = [item[1] for item in added]
    old = base.entries
    assert base.folder is not None or not len(old["hash"])
    source = None if base.folder is None else base.folder / ENTRIES_FILE
    offsets = _write_merged(folder / ENTRIES_FILE, source, old["hash"], old["offset"], dropped, new["hash"], lines)
    return _merged_columns(old, new, dropped, offsets, ("hash", "state", "inbox", "updated", "slot", "output",
                                                         "settled"))


def _write_owners(folder: Path, base: Base, changes: dict[str, Owner]) -> dict[str, Any]:
    dropped = []
    added: list[tuple[int, bytes, int, int]] = []
    for output, owner in changes.items():
        position = _owner_position(base, output)
        if position is not None:
            dropped.append(position)
        line = (_dumps([output, owner.inbox, owner.source, owner.key]) + "\n").encode()
        added.append((name_hash(output), line, slot_hash((owner.inbox, owner.source)), optional_hash(owner.key)))
    added.sort(key=lambda item: item[0])
    new = {"output": np.array([item[0] for item in added], dtype=np.uint64),
           "slot": np.array([item[2] for item in added], dtype=np.uint64),
           "key": np.array([item[3] for item in added], dtype=np.uint64)}
    old = base.owners
    source = None if base.folder is None else base.folder / OWNERS_FILE
    offsets = _write_merged(folder / OWNERS_FILE, source, old["output"], old["offset"], dropped, new["output"],
                            [item[1] for item in added])
    merged = _merged_columns(old, new, dropped, offsets, ("output", "slot", "key"))
    merged["by_slot"] = np.argsort(merged["slot"], kind="stable").astype(np.uint32)
    return merged


def _owner_position(base: Base, output: str) -> int | None:
    column, wanted = base.owners["output"], name_hash(output)
    position = int(np.searchsorted(column, np.uint64(wanted)))
    while position < len(column) and int(column[position]) == wanted:
        if base._owner_line(position)[0] == output:
            return position
        position += 1
    return None


def _merge_hashes(base: Base, changes: dict[Slot, Cached | None]) -> dict[str, Any]:
    old = base.hashes
    changed = np.array(sorted({slot_hash(slot) for slot in changes}), dtype=np.uint64)
    keep = ~np.isin(old["slot"], changed)
    latest: dict[int, Cached] = {}
    for slot, value in changes.items():
        if value is not None:
            latest[slot_hash(slot)] = value
    items = sorted(latest.items())
    new = {
        "slot": np.array([h for h, _ in items], dtype=np.uint64),
        "size": np.array([v[0] for _, v in items], dtype=np.int64),
        "mtime": np.array([v[1] for _, v in items], dtype=np.int64),
        "ino": np.array([v[2] & INODE_MASK for _, v in items], dtype=np.uint64),
        "ctime": np.array([v[3] for _, v in items], dtype=np.int64),
        "sha": np.frombuffer(b"".join(v[4] for _, v in items), dtype=np.uint8).reshape(len(items), 32),
    }
    order = np.argsort(np.concatenate([old["slot"][keep], new["slot"]]), kind="stable")
    return {name: np.concatenate([old[name][keep], new[name]])[order] for name in COLUMNS["hashes"]}


def _write_merged(target: Path, source: Path | None, old_hash: np.ndarray, old_offset: np.ndarray,
                  dropped: list[int], new_hash: np.ndarray, new_lines: list[bytes]) -> np.ndarray:
    """Write the old file's lines less those at `dropped`, with `new_lines` (sorted by `new_hash`) put in hash
    order after the old lines of equal hash; return the offsets of the kept old lines, then the new ones."""
    drops = sorted(dropped)
    inserts = np.searchsorted(old_hash, new_hash, side="right")
    events = sorted([(int(at), 0, index) for index, at in enumerate(inserts)] + [(at, 1, -1) for at in drops])
    src = None if source is None else os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    size = 0 if src is None else os.fstat(src).st_size
    bounds = np.append(old_offset, np.uint64(size)).astype(np.int64)
    new_offsets = np.empty(len(new_lines), dtype=np.int64)
    kept_offsets = np.empty(len(old_offset), dtype=np.int64)
    try:
        with PacedFile(target) as out:
            cursor = 0  # the next old line to copy
            for at, kind, index in events:
                cursor = _copy_lines(src, out, bounds, cursor, at, kept_offsets)
                if kind == 0:
                    new_offsets[index] = out.tell()
                    out.write(new_lines[index])
                else:
                    cursor = at + 1
            _copy_lines(src, out, bounds, cursor, len(old_offset), kept_offsets)
            out.finish()
    finally:
        if src is not None:
            os.close(src)
    keep = np.ones(len(old_offset), dtype=bool)
    keep[drops] = False
    return np.concatenate([kept_offsets[keep], new_offsets])


def _copy_lines(src: int | None, out: PacedFile, bounds: np.ndarray, start: int, end: int,
                kept_offsets: np.ndarray) -> int:
    """Copy the old lines `start` to `end` (exclusive), noting where each lands; return `end`."""
    if end <= start:
        return max(start, end)
    assert src is not None
    kept_offsets[start:end] = bounds[start:end] - bounds[start] + out.tell()
    position, stop = int(bounds[start]), int(bounds[end])
    while position < stop:
        chunk = os.pread(src, min(_COPY_CHUNK, stop - position), position)
        if not chunk:
            raise OSError(f"{src}: the old generation file is shorter than its index")
        out.write(chunk)
        position += len(chunk)
    return end


def _merged_columns(old: dict[str, np.ndarray], new: dict[str, np.ndarray], dropped: list[int],
                    offsets: np.ndarray, names: tuple[str, ...]) -> dict[str, Any]:
    keep = np.ones(len(old["offset"]), dtype=bool)
    keep[sorted(dropped)] = False
    first = names[0]
    order = np.argsort(np.concatenate([old[first][keep], new[first]]), kind="stable")
    merged = {name: np.concatenate([old[name][keep], new[name]])[order] for name in names}
    merged["offset"] = offsets.astype(np.uint64)[order]
    return merged


def _write_file(path: Path, parts: Iterable[bytes]) -> None:
    with PacedFile(path) as out:
        for part in parts:
            out.write(part)
        out.finish()
