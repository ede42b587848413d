"""A generation's index is checked against what was written (a checksum per column, the record files' sizes):
damage is refused at the start, listed by `srd ledger check`, and `repair` rebuilds the index from the record
files, which hold all of it but the stat cache (outside attack, session 11: swapped stat-cache rows passed check
and made the daemon overwrite another file's output)."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from srd.fs.fileversion import FileVersion
from srd.ledger import SNAPSHOT_NAME, Ledger, LedgerError, check_ledger, make_key, repair_ledger

FP = "edsr-x2:beef"
N = 40


def _sha(n: int) -> str:
    return hashlib.sha256(f"photo {n}".encode()).hexdigest()


def _version(n: int) -> FileVersion:
    return FileVersion(100 + n, 10**18 + n, 1000 + n, 10**18 + n)


def _ledger(state: Path) -> Path:
    """A compacted ledger of N finished photos; returns its generation."""
    with Ledger.open(state, compact_after=10_000) as ledger:
        for n in range(N):
            ledger.remember_hash("in", f"p{n}.png", _version(n), _sha(n))
            key = ledger.record_start(_sha(n), FP, inbox="in", source=f"p{n}.png").key
            ledger.record_done(key, output=Path(f"/out/p{n}.png"), output_size=n, disposition="kept")
        ledger.compact()
    return state / json.loads((state / SNAPSHOT_NAME).read_text())["generation"]


def _finished(ledger: Ledger) -> list[str | None]:
    return ledger.finished_keys("in", [f"p{n}.png" for n in range(N)], [_version(n) for n in range(N)], FP)


def _edit_column(generation: Path, column: str, change: str) -> None:
    path = generation / f"{column}.json"
    index = json.loads((generation / "index.json").read_text())
    dtype, shape = index["columns"][column]
    values = np.frombuffer(base64.b64decode(json.loads(path.read_text())), dtype=dtype).reshape(shape).copy()
    if change == "swap":
        values[[0, 1]] = values[[1, 0]]
    else:
        values[:] = 0
    path.write_text(json.dumps(base64.b64encode(values.tobytes()).decode()))


@pytest.mark.parametrize(("column", "change", "stat_cache_kept"), [
    ("hashes.sha", "swap", False),  # what the attack did: two files' content hashes exchanged
    ("hashes.mtime", "zero", False),
    ("entries.state", "zero", True),
    ("owners.key", "swap", True),
])
def test_a_damaged_column_is_refused_listed_and_rebuilt_by_repair(tmp_path: Path, column: str, change: str,
                                                                  stat_cache_kept: bool) -> None:
    state = tmp_path / "state"
    generation = _ledger(state)
    with Ledger.open(state) as ledger:
        before = _finished(ledger)
    assert all(before)
    _edit_column(generation, column, change)
    with pytest.raises(LedgerError, match=f"column {column} is not what was written.*srd ledger repair"):
        Ledger.open(state)
    problems = check_ledger(state).problems
    assert any(f"column {column} is not what was written" in problem for problem in problems), problems
    repair_ledger(state)
    assert not check_ledger(state).problems
    with Ledger.open(state) as ledger:
        assert ledger.counts()["done"] == N  # every entry kept: the index came from the record lines
        assert all(ledger.owner(f"/out/p{n}.png") is not None for n in range(N))
        # Without a trustworthy stat cache, no file counts as finished on its word: each is hashed once more.
        assert _finished(ledger) == (before if stat_cache_kept else [None] * N)
        assert (ledger.cached_hash("in", "p0.png", _version(0)) is not None) == stat_cache_kept


@pytest.mark.parametrize("record_file", ["entries.jsonl", "owners.jsonl"])
def test_a_record_file_cut_short_is_refused_at_the_start_not_hours_into_a_run(tmp_path: Path, record_file: str) -> None:
    state = tmp_path / "state"
    generation = _ledger(state)
    path = generation / record_file
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(LedgerError, match=f"{record_file} holds .* bytes, but .* were written"):
        Ledger.open(state)
    assert any(record_file in problem for problem in check_ledger(state).problems)
    repair_ledger(state)
    assert not check_ledger(state).problems
    with Ledger.open(state) as ledger:
        kept = ledger.counts()["done"] if record_file == "entries.jsonl" else N
        assert 0 < kept < N if record_file == "entries.jsonl" else kept == N
        answers = _finished(ledger)
        for n, key in enumerate(answers):  # a file whose record was lost is not finished, never wrongly so
            entry = ledger.get(make_key(_sha(n), FP))
            owner = ledger.owner(f"/out/p{n}.png")
            assert key is None or (entry is not None and owner is not None and owner.key == key)


def _edit_index(generation: Path, change: dict) -> None:
    index = json.loads((generation / "index.json").read_text())
    index.update(change)
    (generation / "index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("column", ["entries.state", "entries.settled", "owners.key"])
def test_where_a_consistent_looking_index_contradicts_the_records_repair_keeps_the_records(
        tmp_path: Path, column: str) -> None:
    """A column changed with its checksum made to match (a bug, or an edit): the record lines, the readable truth
    an admin may edit, are kept, and the index is written anew from them; nothing is dropped."""
    state = tmp_path / "state"
    generation = _ledger(state)
    _edit_column(generation, column, "zero")
    index = json.loads((generation / "index.json").read_text())
    raw = base64.b64decode(json.loads((generation / f"{column}.json").read_text()))
    checksum = hashlib.blake2b(raw, digest_size=16).hexdigest()
    _edit_index(generation, {"checksums": {**index["checksums"], column: checksum}})
    problems = check_ledger(state).problems
    assert problems and all("dropped" not in problem for problem in problems), problems
    repair_ledger(state)
    assert not check_ledger(state).problems
    with Ledger.open(state) as ledger:
        assert ledger.counts()["done"] == N and all(_finished(ledger))


def test_a_wrong_record_size_in_the_index_is_listed_and_repaired_not_a_dead_end(tmp_path: Path) -> None:
    """The daemon refuses a record file whose size is not the one its index recorded; check and repair must see
    the same, or the admin is told to repair what repair calls healthy."""
    state = tmp_path / "state"
    generation = _ledger(state)
    sizes = json.loads((generation / "index.json").read_text())["record_sizes"]
    _edit_index(generation, {"record_sizes": {**sizes, "entries.jsonl": sizes["entries.jsonl"] + 1}})
    with pytest.raises(LedgerError, match="were written"):
        Ledger.open(state)
    assert any("were written" in problem for problem in check_ledger(state).problems)
    repair_ledger(state)
    with Ledger.open(state) as ledger:
        assert ledger.counts()["done"] == N and all(_finished(ledger))
