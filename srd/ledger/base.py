"""One compacted generation of the ledger (format 3): its records as JSON lines on disk, read on demand, and
the compact sorted arrays that find them, which is all the daemon holds in memory for it.

A generation is a folder ``gen-<seq>-<token>`` of the state directory, written once and never changed:

- ``entries.jsonl``: one stored entry per line (`stored_record`), in the order of ``entries.hash``.
- ``owners.jsonl``: one ``[output, inbox, source, key]`` per line, in the order of ``owners.output``.
- ``index.json``: ``{"format", "seq", "inboxes", "columns": {name: [dtype, shape]}}``.
- ``<table>.<column>.json``: each column of the index as one JSON string, the column's little-endian bytes in
  base64 (a column parses in one call: 1,000,000 JSON records would take seconds).

In memory, per entry: a 64-bit hash of its key, its line's offset, its state, its inbox (as a number) and its
update time (35 bytes); per stat-cache line: a 64-bit hash of (inbox, path), size, mtime_ns, inode, ctime_ns and
the sha256 (72 bytes); per output owner: 64-bit hashes of the output path and of its (inbox, source), and its
line's offset (24 bytes, plus 4 for their order by source). A hash only finds a line; the line's own key, path
or source is compared before it counts, so two names sharing a hash are still told apart. The stat cache keeps
no paths at all: a hash that collided would still need the same size, mtime, inode and ctime to be trusted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import mmap
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from srd.ledger.errors import REPAIR_HINT, LedgerError
from srd.ledger.records import Cached, Owner, Row, row_of

GENERATION_FORMAT = 3
ENTRIES_FILE = "entries.jsonl"
OWNERS_FILE = "owners.jsonl"
INDEX_FILE = "index.json"
STATES = ("started", "done", "failed", "retry")
STATE_CODES = {state: code for code, state in enumerate(STATES)}

# Each table's columns and their types (the stat cache's sha256 is 32 bytes a line).
COLUMNS: dict[str, dict[str, str]] = {
    "entries": {"hash": "<u8", "offset": "<u8", "state": "u1", "inbox": "<u2", "updated": "<f8"},
    "hashes": {"slot": "<u8", "size": "<i8", "mtime": "<i8", "ino": "<i8", "ctime": "<i8", "sha": "u1"},
    "owners": {"output": "<u8", "offset": "<u8", "slot": "<u8", "by_slot": "<u4"},
}
_READ_AHEAD = 1024  # bytes read for a record line; most are shorter
_CODEC_SLICE = 1 << 20  # base64 characters per decode call (a multiple of 4)


def name_hash(text: str) -> int:
    """The 64-bit hash the index finds a key, a path or a source by."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def slot_hash(slot: tuple[str, str]) -> int:
    """The hash of an (inbox, source) pair."""
    return name_hash(f"{slot[0]}\0{slot[1]}")


def damaged_record(message: str) -> LedgerError:
    """The error for a record line that is not what the index says, with the way out."""
    return LedgerError(f"{message}; {REPAIR_HINT}")


def read_line(fd: int, offset: int, path: Path) -> bytes:
    """The line of file `fd` that starts at `offset`, without its newline.

    Raises:
        LedgerError: No whole line starts there: the file was cut short or edited.
    """
    before = min(offset, 1)  # the byte before a line is the previous line's newline
    chunk = os.pread(fd, _READ_AHEAD, offset - before)
    if before and chunk[:1] != b"\n":
        if chunk:
            raise damaged_record(f"ledger generation file {path} has no record starting at byte {offset}, where "
                                 "its index puts one (the file was edited)")
        raise damaged_record(f"ledger generation file {path} ends inside a record at byte {offset}")
    chunk = chunk[before:]
    end = chunk.find(b"\n")
    while end < 0:
        more = os.pread(fd, 64 * 1024, offset + len(chunk))
        if not more:
            raise damaged_record(f"ledger generation file {path} ends inside a record at byte {offset}")
        chunk += more
        end = chunk.find(b"\n")
    return chunk[:end]


def read_column(path: Path) -> bytes:
    """The bytes of a column file: one JSON string of base64 (which has no escapes, so it is read as it is).

    Decoded a slice at a time: a compaction loads the new generation in a thread, and one call on a column of
    a million entries would hold the interpreter (and the daemon's loop) for tens of milliseconds.
    """
    text = path.read_bytes()
    if len(text) < 2 or text[:1] != b'"' or text[-1:] != b'"':
        raise ValueError(f"{path.name} is not a JSON string")
    inner = memoryview(text)[1:-1]
    return b"".join(binascii.a2b_base64(inner[start:start + _CODEC_SLICE])
                    for start in range(0, len(inner), _CODEC_SLICE))


def column_json(data: bytes) -> list[bytes]:
    """A column's bytes as the parts of its file (see `read_column`), encoded a slice at a time."""
    step = _CODEC_SLICE // 4 * 3
    return [b'"', *(base64.b64encode(data[start:start + step]) for start in range(0, len(data), step)), b'"']


class Base:
    """A generation as loaded: sorted index arrays in memory, records read from its files when asked for.

    Immutable once loaded, so a compaction thread may read it while the loop queries it.
    """

    def __init__(self, folder: Path | None, seq: int, inboxes: list[str], columns: dict[str, dict[str, Any]]) -> None:
        self.folder = folder
        self.seq = seq
        self.inboxes = inboxes
        self.entries = columns["entries"]
        self.hashes = columns["hashes"]
        self.owners = columns["owners"]
        # Owners in the order of their (inbox, source) hash, for `owners_of_slot` (stored: a sort takes time).
        self.owners_by_slot = self.owners["by_slot"]
        self.sizes = (len(self.entries["hash"]), len(self.owners["output"]), len(self.hashes["slot"]))
        self._entries_fd = self._owners_fd = -1
        # For error messages, joined once: `checked_owner` runs on every line when `check` reads them all.
        self._entries_path, self._owners_path = (Path(name) if folder is None else folder / name
                                                 for name in (ENTRIES_FILE, OWNERS_FILE))
        if folder is not None:
            self._entries_fd = os.open(folder / ENTRIES_FILE, os.O_RDONLY | os.O_CLOEXEC)
            self._owners_fd = os.open(folder / OWNERS_FILE, os.O_RDONLY | os.O_CLOEXEC)

    @classmethod
    def empty(cls) -> Base:
        """The base of a ledger never compacted (or still in an older format)."""
        columns = {table: {name: np.zeros((0, 32) if name == "sha" else 0, dtype=dtype)
                           for name, dtype in spec.items()} for table, spec in COLUMNS.items()}
        return cls(None, 0, [], columns)

    @classmethod
    def load(cls, folder: Path) -> Base:
        """Load the index of the generation in `folder`.

        Raises:
            OSError: A file can't be read (FileNotFoundError: one is missing).
            LedgerError: A file is not what this srd writes.
        """
        try:
            index = json.loads((folder / INDEX_FILE).read_bytes())
            if index["format"] != GENERATION_FORMAT:
                raise ValueError(f"unsupported generation format {index['format']!r}")
            columns: dict[str, dict[str, Any]] = {}
            for table, spec in COLUMNS.items():
                columns[table] = {}
                for name, dtype in spec.items():
                    stored_dtype, shape = index["columns"][f"{table}.{name}"]
                    if stored_dtype != dtype:
                        raise ValueError(f"column {table}.{name} has type {stored_dtype}, not {dtype}")
                    raw = read_column(folder / f"{table}.{name}.json")
                    columns[table][name] = np.frombuffer(raw, dtype=dtype).reshape(shape)
                lengths = {len(column) for column in columns[table].values()}
                if len(lengths) != 1:
                    raise ValueError(f"the columns of {table} differ in length")
            inboxes = [str(inbox) for inbox in index["inboxes"]]
            seq = int(index["seq"])
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            raise LedgerError(f"ledger generation {folder} is unreadable: {exc}") from exc
        return cls(folder, seq, inboxes, columns)

    def close(self) -> None:
        """Close the record files (reads after this fail)."""
        for fd in (self._entries_fd, self._owners_fd):
            if fd >= 0:
                os.close(fd)
        self._entries_fd = self._owners_fd = -1

    def release(self) -> None:
        """Close the record files and free the index a column at a time (reads after this fail).

        Freeing a million entries' columns at once takes tens of milliseconds with the interpreter held; run
        in a thread of its own, this lets the loop in between columns.
        """
        self.close()
        self.owners_by_slot = self.owners_by_slot[:0]
        for table in (self.entries, self.owners, self.hashes):
            while table:
                table.popitem()

    # -- entries --------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.entries["hash"])

    def find(self, key: str) -> tuple[int, Row] | None:
        """The index position and row of the entry stored under `key`, if there is one."""
        if not self.sizes[0]:
            return None
        for position in self._positions(self.entries["hash"], name_hash(key)):
            stored_key, row = self._entry(position)
            if stored_key == key:
                return position, row
        return None

    def state_counts(self) -> Counter[str]:
        """Entries per state value."""
        counts = np.bincount(self.entries["state"], minlength=len(STATES))
        return Counter({state: int(counts[code]) for code, state in enumerate(STATES)})

    def entries_in_state(self, state: str) -> Iterator[tuple[str, Row]]:
        """The (key, row) of every entry in `state`, read from disk (for the few started or failed ones)."""
        for position in np.flatnonzero(self.entries["state"] == STATE_CODES[state]):
            yield self._entry(int(position))

    def iter_entries(self) -> Iterator[tuple[str, Row]]:
        """Every entry, streamed from its file in index order (opened now, so a later swap doesn't matter)."""
        if self.folder is None:
            return iter(())
        return _stream_entries(open(self.folder / ENTRIES_FILE, "rb"))

    def _entry(self, position: int) -> tuple[str, Row]:
        assert self.folder is not None
        line = read_line(self._entries_fd, int(self.entries["offset"][position]), self.folder / ENTRIES_FILE)
        return self.checked_entry(line, position)

    def checked_entry(self, line: bytes, position: int) -> tuple[str, Row]:
        """The (key, row) `line` holds, if it is the entry the index has at `position` (its key's hash, its state).

        Raises:
            LedgerError: The line is not a record, or not that one.
        """
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise TypeError("not an object")
            if name_hash(record["key"]) != int(self.entries["hash"][position]):
                raise ValueError("its key is not the one the index has there")
            row = row_of(record)
            if STATE_CODES[row.state] != int(self.entries["state"][position]):
                raise ValueError(f"it says {row.state!r}, the index says {STATES[self.entries['state'][position]]!r}")
            return record["key"], row
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise damaged_record(f"ledger generation file {self._entries_path} has a damaged record: "
                                 f"{exc}") from exc

    # -- owners ---------------------------------------------------------------------------------------

    def owner(self, output: str) -> Owner | None:
        """The owner this generation records for `output`."""
        if not self.sizes[1]:
            return None
        for position in self._positions(self.owners["output"], name_hash(output)):
            stored_output, owner = self._owner_line(position)
            if stored_output == output:
                return owner
        return None

    def owners_of_slot(self, slot: tuple[str, str]) -> list[tuple[str, Owner]]:
        """The (output, owner) pairs whose owner is the source `slot`."""
        if not self.sizes[1]:
            return []
        column, wanted = self.owners["slot"], np.uint64(slot_hash(slot))
        start = int(np.searchsorted(column, wanted, side="left", sorter=self.owners_by_slot))
        found = []
        while start < len(column) and column[self.owners_by_slot[start]] == wanted:
            output, owner = self._owner_line(int(self.owners_by_slot[start]))
            if (owner.inbox, owner.source) == slot:
                found.append((output, owner))
            start += 1
        return found

    def owners_with_key(self, key: str) -> list[tuple[str, Owner]]:
        """The (output, owner) pairs whose owner holds `key` (a scan of the owners' file: for `forget`)."""
        if self.folder is None or not len(self.owners["output"]):
            return []
        needle = json.dumps(key).encode() + b"]"
        found = []
        path = self.folder / OWNERS_FILE
        with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            at = data.find(needle)
            while at >= 0:
                start = data.rfind(b"\n", 0, at) + 1
                end = data.find(b"\n", at)
                output, owner = _owner_of(bytes(data[start:end]), path)
                if owner.key == key:
                    found.append((output, owner))
                at = data.find(needle, end)
        return found

    def iter_owners(self) -> Iterator[tuple[str, Owner]]:
        """Every (output, owner), streamed from its file in index order."""
        if self.folder is None:
            return iter(())
        return _stream_owners(open(self.folder / OWNERS_FILE, "rb"), self.folder / OWNERS_FILE)

    def _owner_line(self, position: int) -> tuple[str, Owner]:
        assert self.folder is not None
        return self.checked_owner(read_line(self._owners_fd, int(self.owners["offset"][position]),
                                            self.folder / OWNERS_FILE), position)

    def checked_owner(self, line: bytes, position: int) -> tuple[str, Owner]:
        """The owner line `line` holds, if it is the one the index has at `position` (its output's and its
        source's hashes).

        Raises:
            LedgerError: The line is not an owner line, or not that one.
        """
        path = self._owners_path
        output, owner = _owner_of(line, path)
        if (name_hash(output) != int(self.owners["output"][position])
                or slot_hash((owner.inbox, owner.source)) != int(self.owners["slot"][position])):
            raise damaged_record(f"ledger generation file {path} has a damaged owner line: its output or source "
                                 "is not the one the index has there")
        return output, owner

    # -- stat cache -----------------------------------------------------------------------------------

    def cached(self, slot: tuple[str, str]) -> Cached | None:
        """The stat-cache line of `slot` (by its hash alone: see the module's docstring)."""
        if not self.sizes[2]:
            return None
        column = self.hashes["slot"]
        position = int(np.searchsorted(column, np.uint64(slot_hash(slot))))
        if position == len(column) or int(column[position]) != slot_hash(slot):
            return None
        return self.cached_at(position)

    def cached_at(self, position: int) -> Cached:
        """The stat-cache line at index `position`."""
        hashes = self.hashes
        return (int(hashes["size"][position]), int(hashes["mtime"][position]), int(hashes["ino"][position]),
                int(hashes["ctime"][position]), hashes["sha"][position].tobytes())

    @staticmethod
    def _positions(column: np.ndarray, wanted: int) -> Iterator[int]:
        position = int(np.searchsorted(column, np.uint64(wanted), side="left"))
        while position < len(column) and int(column[position]) == wanted:
            yield position
            position += 1


def _stream_entries(file: Any) -> Iterator[tuple[str, Row]]:
    with file:
        for number, line in enumerate(file, 1):
            try:
                record = json.loads(line)
                yield record["key"], row_of(record)
            except (ValueError, KeyError, TypeError) as exc:
                raise LedgerError(f"ledger generation file {file.name}: line {number}: damaged ({exc})") from exc


def _stream_owners(file: Any, path: Path) -> Iterator[tuple[str, Owner]]:
    with file:
        for line in file:
            yield _owner_of(line.rstrip(b"\n"), path)


def _owner_of(line: bytes, path: Path) -> tuple[str, Owner]:
    try:
        output, inbox, source, key = json.loads(line)
        if not all(isinstance(text, str) for text in (output, inbox, source)) or not isinstance(key, str | None):
            raise TypeError("not [output, inbox, source, key]")
    except (ValueError, TypeError) as exc:
        raise damaged_record(f"ledger generation file {path} has a damaged owner line: {exc}") from exc
    return output, Owner(inbox, source, key)
