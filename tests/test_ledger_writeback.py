"""The compaction's writer: its files are whole, and never more than a little of them waits unwritten."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from srd.ledger import Ledger, make_key, writeback
from srd.ledger.writeback import PacedFile

FP = "edsr-x4:cafe"


@pytest.fixture
def pushed(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[tuple[int, int]]]:
    """The ranges each file had written back, by file name (small limits, so that small files show it)."""
    monkeypatch.setattr(writeback, "DIRTY_LIMIT", 4096)
    monkeypatch.setattr(writeback, "_BUFFER", 1024)
    ranges: dict[str, list[tuple[int, int]]] = {}
    real = writeback.write_back

    def recording(fd: int, offset: int, length: int) -> None:
        ranges.setdefault(Path(os.readlink(f"/proc/self/fd/{fd}")).name, []).append((offset, length))
        real(fd, offset, length)

    monkeypatch.setattr(writeback, "write_back", recording)
    return ranges


def _assert_bounded(ranges: list[tuple[int, int]], size: int, largest_write: int) -> None:
    """Consecutive ranges from the start, none longer than the limit plus one write: that is all the dirty data
    there ever was, and what follows the last range is less than the limit."""
    end = 0
    for offset, length in ranges:
        assert offset == end, f"range at {offset} leaves {offset - end} bytes out"
        assert length < writeback.DIRTY_LIMIT + max(largest_write, writeback._BUFFER)
        end = offset + length
    assert size - end < writeback.DIRTY_LIMIT + max(largest_write, writeback._BUFFER)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads file names from /proc")
def test_a_paced_file_holds_what_was_written_and_pushes_it_out_as_it_goes(
        tmp_path: Path, pushed: dict[str, list[tuple[int, int]]]) -> None:
    parts = [bytes([i % 251]) * (10 + (i * 977) % 9000) for i in range(200)]  # small and large writes
    path = tmp_path / "records"
    with PacedFile(path) as out:
        written = 0
        for part in parts:
            assert out.tell() == written
            out.write(part)
            written += len(part)
        assert out.tell() == written
        out.finish()
    assert path.read_bytes() == b"".join(parts)
    assert len(pushed["records"]) > 50
    _assert_bounded(pushed["records"], path.stat().st_size, max(map(len, parts)))


def test_a_paced_file_refuses_to_overwrite(tmp_path: Path) -> None:
    (tmp_path / "records").write_bytes(b"old")
    with pytest.raises(FileExistsError):
        PacedFile(tmp_path / "records")
    assert (tmp_path / "records").read_bytes() == b"old"


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads file names from /proc")
def test_a_compaction_writes_every_generation_file_paced(
        tmp_path: Path, pushed: dict[str, list[tuple[int, int]]]) -> None:
    """Guards the loop's fsync: no file of a new generation is written in one burst at its closing fsync."""
    with Ledger.open(tmp_path) as ledger:
        for i in range(300):
            sha = hashlib.sha256(str(i).encode()).hexdigest()
            entry = ledger.record_start(sha, FP, inbox="nas", source=f"a/{i}.jpg")
            ledger.record_done(entry.key, output=Path(f"/out/a/{i}.jpg"), output_size=i)
        ledger.compact()
        key = make_key(hashlib.sha256(b"7").hexdigest(), FP)
        assert ledger.get(key).output == Path("/out/a/7.jpg")
    generation = tmp_path / json.loads((tmp_path / "ledger.json").read_text())["generation"]
    big = [path for path in generation.iterdir() if path.stat().st_size > 2 * writeback.DIRTY_LIMIT]
    assert len(big) >= 2  # the records of entries and of owners at least
    for path in big:
        _assert_bounded(pushed.get(path.name, []), path.stat().st_size, writeback._BUFFER)
        assert pushed[path.name], f"{path.name} was written without being pushed out"


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads file names from /proc")
def test_every_file_of_a_new_generation_is_durable_before_the_snapshot_names_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The files are fsynced in one pass after all are written (not each as it closes); that pass, and the
    folder's fsync, must still come before the snapshot file is replaced."""
    from srd.ledger import compaction

    events: list[str] = []
    real_fsync, real_replace_snapshot = os.fsync, compaction.write_bytes_atomic

    def fsync(fd: int) -> None:
        real_fsync(fd)
        events.append(os.readlink(f"/proc/self/fd/{fd}"))

    def replace_snapshot(path: Path, data: bytes) -> None:
        if path.name == "ledger.json":
            events.append("snapshot replaced")
        real_replace_snapshot(path, data)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(compaction, "write_bytes_atomic", replace_snapshot)
    with Ledger.open(tmp_path) as ledger:
        for i in range(50):
            ledger.record_start(hashlib.sha256(str(i).encode()).hexdigest(), FP, inbox="nas", source=f"{i}.jpg")
        events.clear()
        ledger.compact()
    generation = tmp_path / json.loads((tmp_path / "ledger.json").read_text())["generation"]
    before = events[:events.index("snapshot replaced")]
    files = sorted(path.name for path in generation.iterdir())
    assert len(files) >= 20  # the two record files, the index and every column
    assert sorted(Path(name).name for name in before if Path(name).parent == generation) == files
    assert str(generation) in before
