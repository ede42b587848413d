"""One compacted generation of the ledger (format 3): its records as JSON lines on disk, read on demand, and
the compact sorted arrays that find them, which is all the daemon holds in memory for it.

A generation is a folder ``gen-<seq>-<token>`` of the state directory, written once and never changed:

- ``entries.jsonl``: one stored entry per line (`stored_record`), in the order of ``entries.hash``.
- ``owners.jsonl``: one ``[output, inbox, source, key]`` per line, in the order of ``owners.output``.
- ``index.json``: ``{"format", "seq", "inboxes", "columns": {name: [dtype, shape]}}``.
- ``<table>.<column>.json``: each column of the index as one JSON string, the column's little-endian bytes in
  base64 (a column parses in one call: 1,000,000 JSON records would take seconds).

In memory, per entry: 64-bit hashes of its key, of its (inbox, source) and of its output, its line's offset, its
state, whether its source step is done, its inbox (as a number) and its update time (52 bytes); per stat-cache
line: a 64-bit hash of (inbox, path), size, mtime_ns, inode, ctime_ns and the sha256 (72 bytes); per output
owner: 64-bit hashes of the output path, of its (inbox, source) and of its key, and its line's offset (32 bytes,
plus 4 for their order by source).

A hash mostly only finds a line; the line's own key, path or source is compared before it counts, so two names
sharing a hash are still told apart. Two checks trust hashes alone, since they are asked of every photo of a
library at each start: the stat cache, which keeps no paths at all (a hash that collided would still need the
same size, mtime, inode and ctime to be trusted), and `finished_output` with `owned_by`, which tell from the
columns that a source's content is done and its output still its own (a false yes needs two 64-bit hashes of
that very source's entries and owners to collide).

Generations of format 3 lack the hashes of an entry's source and output, its source step and an owner's key; they
are computed from the record files when such a generation is loaded (`derived`), and the next compaction writes
them down.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import mmap
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from srd.ledger.errors import REPAIR_HINT, LedgerError
from srd.ledger.records import Cached, Owner, Row, row_of, source_step_done

GENERATION_FORMAT = 4
_FORMATS_READ = (3, GENERATION_FORMAT)
ENTRIES_FILE = "entries.jsonl"
OWNERS_FILE = "owners.jsonl"
INDEX_FILE = "index.json"
STATES = ("started", "done", "failed", "retry")
STATE_CODES = {state: code for code, state in enumerate(STATES)}
_DONE = STATE_CODES["done"]
NO_NAME = 0  # the hash column's value for no output (an entry) or no key (an owner)

# Each table's columns and their types (the stat cache's sha256 is 32 bytes a line).
COLUMNS: dict[str, dict[str, str]] = {
    "entries": {"hash": "<u8", "offset": "<u8", "state": "u1", "inbox": "<u2", "updated": "<f8", "slot": "<u8",
                "output": "<u8", "settled": "u1"},
    "hashes": {"slot": "<u8", "size": "<i8", "mtime": "<i8", "ino": "<u8", "ctime": "<i8", "sha": "u1"},
    "owners": {"output": "<u8", "offset": "<u8", "slot": "<u8", "by_slot": "<u4", "key": "<u8"},
}
# The columns a format 3 generation lacks, computed from its record lines when it is loaded.
_DERIVED = {"entries": ("slot", "output", "settled"), "owners": ("key",)}
# Format 3 kept inode numbers signed, which failed every compaction once a file's was 2**63 or more (SMB
# shares pass on Windows file ids, whose top bits are a sequence number); its column is read as unsigned.
_FORMAT_3_TYPES = {"hashes.ino": "<i8"}
# Inode numbers are stored modulo 2**64: the "unknown" -1 of stat-cache lines older than inodes (`records`)
# becomes 2**64 - 1, which no stat returns either.
INODE_MASK = (1 << 64) - 1
_READ_AHEAD = 1024  # bytes read for a record line; most are shorter
_CODEC_SLICE = 1 << 20  # base64 characters per decode call (a multiple of 4)


def name_hash(text: str) -> int:
    """The 64-bit hash the index finds a key, a path or a source by."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def slot_hash(slot: tuple[str, str]) -> int:
    """The hash of an (inbox, source) pair."""
    return name_hash(f"{slot[0]}\0{slot[1]}")


def optional_hash(name: str | None) -> int:
    """`name_hash` of an output or key that may be absent (`NO_NAME`)."""
    return NO_NAME if name is None else name_hash(name)


def entry_columns(row: Row) -> tuple[int, int, int]:
    """The index's slot, output and settled columns for an entry."""
    return slot_hash((row.inbox, row.source)), optional_hash(row.output), int(source_step_done(row.disposition))


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


def read_column(path: Path) -> memoryview:
    """The bytes of a column file: one JSON string of base64 (which has no escapes, so it is read as it is).

    Decoded a slice at a time: a compaction loads the new generation in a thread, and one call on a column of
    a million entries would hold the interpreter (and the daemon's loop) for tens of milliseconds. Decoded into
    memory mapped for it alone, which goes back to the system when the column is freed: from the C heap, a
    generation's 8 MB columns would stay with the process after each compaction (the allocator keeps blocks
    that large once one was freed), and a daemon at a million photos grew by ~100 MB per compaction.
    """
    text = path.read_bytes()
    if len(text) < 2 or text[:1] != b'"' or text[-1:] != b'"':
        raise ValueError(f"{path.name} is not a JSON string")
    inner = memoryview(text)[1:-1]
    column = mmap.mmap(-1, max(len(inner) // 4 * 3, 1))
    size = 0
    for start in range(0, len(inner), _CODEC_SLICE):
        part = binascii.a2b_base64(inner[start:start + _CODEC_SLICE])
        column[size:size + len(part)] = part
        size += len(part)
    return memoryview(column)[:size]


def column_json(data: bytes | memoryview) -> Iterator[bytes]:
    """A column's bytes as the parts of its file (see `read_column`), encoded a slice at a time as they are
    written: each slice holds the interpreter for about a millisecond, and the write after it lets it go."""
    step = _CODEC_SLICE // 4 * 3
    yield b'"'
    for start in range(0, len(data), step):
        yield base64.b64encode(data[start:start + step])
    yield b'"'


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
        # Some columns were computed at load (an older format): the store writes the generation anew.
        self.derived = False
        # The record files' sizes as written (from the index; None for an older format).
        self.record_sizes: dict[str, Any] | None = None
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
            IndexDamage: Its index is not what this srd wrote (its record files may be intact: `reindex`).
        """
        index = read_index(folder)
        older = index["format"] < GENERATION_FORMAT
        if not older and not isinstance(index.get("record_sizes"), dict):
            raise IndexDamage(f"ledger generation {folder} is unreadable: its index has no record sizes")
        columns = {table: load_table(folder, table, index) for table in COLUMNS}
        if older:
            _derive_columns(folder, columns)
        try:
            base = cls(folder, int(index["seq"]), [str(inbox) for inbox in index["inboxes"]], columns)
        except (ValueError, KeyError, TypeError) as exc:
            raise IndexDamage(f"ledger generation {folder}'s index is damaged: {exc}") from exc
        base.derived = older
        base.record_sizes = None if older else index.get("record_sizes")
        return base

    def check_record_sizes(self) -> None:
        """Refuse a record file cut short or grown since it was written now, rather than at the first read of a
        line past the change, which may come hours into a run (`check` and `repair` read every line instead).

        Raises:
            LedgerError: A record file's size is not the one the index recorded.
        """
        if self.record_sizes is None:
            return
        for path, fd in ((self._entries_path, self._entries_fd), (self._owners_path, self._owners_fd)):
            written = self.record_sizes.get(path.name)
            if written != os.fstat(fd).st_size:
                raise damaged_record(f"ledger generation file {path} holds {os.fstat(fd).st_size} bytes, but "
                                     f"{written} were written")

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

    def finished_output(self, key_hash: int, slot: int) -> int | None:
        """The output hash of the done entry whose key hashes to `key_hash`, if its source hashes to `slot`, its
        source step is done and it has an output: the index columns alone, no record read (see the module)."""
        entries = self.entries
        for position in self._positions(entries["hash"], key_hash):
            output = int(entries["output"][position])
            if (entries["state"][position] == _DONE and int(entries["slot"][position]) == slot
                    and entries["settled"][position] and output != NO_NAME):
                return output
        return None

    def finished_outputs(self, key_hashes: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """`finished_output` of many entries at once (`NO_NAME` for no)."""
        entries = self.entries
        positions, found, repeated = _lookup(entries["hash"], key_hashes)
        outputs = np.zeros(len(key_hashes), dtype=np.uint64)
        at = positions[found]
        yes = (entries["state"][at] == _DONE) & (entries["slot"][at] == slots[found]) & (entries["settled"][at] != 0)
        outputs[found] = np.where(yes, entries["output"][at], np.uint64(NO_NAME))
        for i in np.flatnonzero(repeated):  # two keys share a hash: each is looked at
            outputs[i] = self.finished_output(int(key_hashes[i]), int(slots[i])) or NO_NAME
        return outputs

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
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise damaged_record(f"ledger generation file {self._entries_path} has a damaged record: "
                                 f"{exc}") from exc
        if STATE_CODES[row.state] != int(self.entries["state"][position]):
            contradiction = f"it says {row.state!r}, the index says {STATES[self.entries['state'][position]]!r}"
        elif entry_columns(row) != tuple(int(self.entries[name][position]) for name in _DERIVED["entries"]):
            contradiction = "its source, output or source step is not what the index has there"
        else:
            return record["key"], row
        raise IndexDisagrees(f"ledger generation file {self._entries_path} has a record its index contradicts: "
                             f"{contradiction}; {REPAIR_HINT}", (record["key"], row))

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

    def owned_by(self, output: int, slot: int, key_hash: int) -> bool:
        """Whether the output hashing to `output` is owned by the source hashing to `slot` with the key hashing to
        `key_hash`: the index columns alone (see the module)."""
        owners = self.owners
        return any(int(owners["slot"][position]) == slot and int(owners["key"][position]) == key_hash
                   for position in self._positions(owners["output"], output))

    def all_owned_by(self, outputs: np.ndarray, slots: np.ndarray, key_hashes: np.ndarray) -> np.ndarray:
        """`owned_by` of many outputs at once."""
        owners = self.owners
        positions, found, repeated = _lookup(owners["output"], outputs)
        owned = np.zeros(len(outputs), dtype=bool)
        at = positions[found]
        owned[found] = (owners["slot"][at] == slots[found]) & (owners["key"][at] == key_hashes[found])
        for i in np.flatnonzero(repeated):
            owned[i] = self.owned_by(int(outputs[i]), int(slots[i]), int(key_hashes[i]))
        return owned

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
        if name_hash(output) != int(self.owners["output"][position]):
            raise damaged_record(f"ledger generation file {path} has a damaged owner line: its output is not the "
                                 "one the index has there")
        if (slot_hash((owner.inbox, owner.source)) != int(self.owners["slot"][position])
                or optional_hash(owner.key) != int(self.owners["key"][position])):
            raise IndexDisagrees(f"ledger generation file {path} has an owner line its index contradicts: its "
                                 f"source or key is not the one the index has there; {REPAIR_HINT}", (output, owner))
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

    def cached_shas(self, slots: np.ndarray, versions: Sequence[tuple[int, int, int, int]]) -> list[bytes | None]:
        """For many stat-cache lines at once, by their slots' hashes: the sha256 of each whose line holds that
        version (size, mtime_ns, inode, ctime_ns), else None."""
        hashes = self.hashes
        positions, found, _ = _lookup(hashes["slot"], slots)  # `cached` too takes the first line of a hash
        at = positions[found]
        same = np.zeros(len(slots), dtype=bool)
        if len(at):
            wanted = [versions[int(i)] for i in np.flatnonzero(found)]
            size, mtime, ctime = (np.array([version[field] for version in wanted], dtype=np.int64)
                                  for field in (0, 1, 3))
            ino = np.array([version[2] & INODE_MASK for version in wanted], dtype=np.uint64)
            same[found] = ((hashes["size"][at] == size) & (hashes["mtime"][at] == mtime)
                           & (hashes["ino"][at] == ino) & (hashes["ctime"][at] == ctime))
        shas: list[bytes | None] = [None] * len(slots)
        for i in np.flatnonzero(same):
            shas[i] = hashes["sha"][positions[i]].tobytes()
        return shas

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


class IndexDisagrees(LedgerError):
    """A record line that is the one the index points to (its key or output agrees), but whose other fields the
    index contradicts. The daemon refuses it like any damage; `check` lists it and `repair` keeps the line, the
    human-readable truth, and writes the index anew from it."""

    def __init__(self, message: str, value: Any) -> None:
        super().__init__(message)
        self.value = value


class IndexDamage(LedgerError):
    """A generation's index files are not what srd wrote; its record files may still be whole."""


def read_index(folder: Path) -> dict[str, Any]:
    """A generation's ``index.json``, in a format this srd reads.

    Raises:
        OSError: It can't be read (FileNotFoundError: it is missing).
        IndexDamage: It is not what this srd writes.
    """
    try:
        index = json.loads((folder / INDEX_FILE).read_bytes())
        if index["format"] not in _FORMATS_READ:
            raise ValueError(f"unsupported generation format {index['format']!r}")
        return dict(index)
    except (ValueError, KeyError, TypeError) as exc:
        raise IndexDamage(f"ledger generation {folder} is unreadable: {exc}") from exc


def column_checksum(data: bytes | memoryview) -> str:
    """What ``index.json`` records of a column's bytes, to tell an intact column from a damaged one."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def load_table(folder: Path, table: str, index: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """The columns of one table of the generation in `folder` (those its format has), each checked against the
    checksum the index holds for it (format 4).

    Raises:
        OSError: A file can't be read (FileNotFoundError: one is missing).
        IndexDamage: A column is not what this srd wrote.
    """
    index = read_index(folder) if index is None else index
    older = index["format"] < GENERATION_FORMAT
    columns: dict[str, np.ndarray] = {}
    try:
        for name, dtype in COLUMNS[table].items():
            column = f"{table}.{name}"
            if older and name in _DERIVED.get(table, ()):
                continue
            stored_dtype, shape = index["columns"][column]
            expected = _FORMAT_3_TYPES.get(column, dtype) if older else dtype
            if stored_dtype != expected:
                raise ValueError(f"column {column} has type {stored_dtype}, not {expected}")
            raw = read_column(folder / f"{column}.json")
            if not older and column_checksum(raw) != index["checksums"][column]:
                raise ValueError(f"column {column} is not what was written (its checksum differs)")
            columns[name] = np.frombuffer(raw, dtype=stored_dtype).view(dtype).reshape(shape)
        if len({len(values) for values in columns.values()}) != 1:
            raise ValueError(f"the columns of {table} differ in length")
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise IndexDamage(f"ledger generation {folder} is unreadable: {exc}") from exc
    return columns


def _lookup(column: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where each of `wanted` first is in the sorted `column`: the positions, whether each is there, and whether
    the next position holds it too (two names sharing a hash)."""
    positions = np.searchsorted(column, wanted)
    if not len(column):
        none = np.zeros(len(wanted), dtype=bool)
        return positions, none, none
    clipped = np.minimum(positions, len(column) - 1)
    found = (positions < len(column)) & (column[clipped] == wanted)
    following = np.minimum(clipped + 1, len(column) - 1)
    repeated = found & (clipped + 1 < len(column)) & (column[following] == wanted)
    return positions, found, repeated


def _derive_columns(folder: Path, columns: dict[str, dict[str, Any]]) -> None:
    """Compute the columns a format 3 generation lacks (`_DERIVED`) from its record files, one pass over each.

    A line that is not the record its index puts there keeps zeros, which match nothing: the damage is refused
    when that record is read, and listed by `srd ledger check`, as before the columns existed.
    """
    entries, owners = columns["entries"], columns["owners"]
    slots, outputs, settled = (np.zeros(len(entries["hash"]), dtype=COLUMNS["entries"][name])
                               for name in ("slot", "output", "settled"))
    for position, record in _indexed_lines(folder / ENTRIES_FILE, entries["offset"]):
        with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError):
            if isinstance(record, dict) and name_hash(record["key"]) == int(entries["hash"][position]):
                slots[position], outputs[position], settled[position] = entry_columns(row_of(record))
    entries.update(slot=slots, output=outputs, settled=settled)
    keys = np.zeros(len(owners["output"]), dtype=COLUMNS["owners"]["key"])
    for position, record in _indexed_lines(folder / OWNERS_FILE, owners["offset"]):
        with contextlib.suppress(ValueError, TypeError, IndexError):
            if name_hash(record[0]) == int(owners["output"][position]):
                keys[position] = optional_hash(record[3])
    owners["key"] = keys


def _indexed_lines(path: Path, offsets: np.ndarray) -> Iterator[tuple[int, Any]]:
    """Each line of `path` that starts where the index puts a record, parsed: its index position and value."""
    at = 0
    with open(path, "rb") as file:
        for line in file:
            position = int(np.searchsorted(offsets, np.uint64(at)))  # the offsets grow with the position
            at += len(line)
            if position == len(offsets) or int(offsets[position]) != at - len(line):
                continue
            try:
                value = json.loads(line)
            except ValueError:
                continue
            yield position, value


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
