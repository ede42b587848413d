"""Tests for srd.ledger: state survives restarts, crashes and torn writes; one owner per state dir."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path, PurePosixPath

import pytest

from srd.errors import LockedError
from srd.fs.fileversion import FileVersion
from srd.ledger import (
    HASH_BATCH,
    JOURNAL_NAME,
    SNAPSHOT_FORMAT,
    SNAPSHOT_NAME,
    Entry,
    Ledger,
    LedgerError,
    Owner,
    State,
    check_ledger,
    make_key,
    repair_ledger,
)
from srd.ledger.files import journal_line
from srd.ledger.records import Row, stored_record

REPO_ROOT = Path(__file__).resolve().parents[1]
FP = "edsr-x4:cafe"


def _v(size: int, mtime_ns: int, ino: int = 7, ctime_ns: int = 9) -> FileVersion:
    return FileVersion(size, mtime_ns, ino, ctime_ns)


def _sha(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


class FakeClock:
    """Wall clock that only moves when told, so timestamps are exact."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _run_python(code: str, **kwargs: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO_ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,  # type: ignore[arg-type]
    )


def _all(ledger: Ledger) -> dict[str, Entry]:
    return {e.key: e for e in ledger.entries()}


def test_entries_persist_across_reopen_with_all_fields(tmp_path: Path) -> None:
    """Every recorded field, including timestamps and failure reasons, reads back the same after a reopen."""
    clock = FakeClock()
    with Ledger.open(tmp_path, clock=clock) as ledger:
        done = ledger.record_start(_sha(1), FP, inbox="nas", source=PurePosixPath("a/b.jpg"))
        clock.now += 2.5
        ledger.record_done(done.key, output=tmp_path / "out" / "b.png", output_size=1234,
                           losses=("only the first of its 3 frames is in the output",))
        ledger.record_disposed(done.key, "archived")
        failed = ledger.record_start(_sha(2), FP, inbox="local", source="c.png")
        ledger.record_failed(failed.key, error="not an image")
        before = _all(ledger)

    with Ledger.open(tmp_path) as ledger:
        assert _all(ledger) == before
        entry = ledger.lookup(_sha(1), FP)
        assert entry is not None
        assert entry.state is State.DONE
        assert (entry.inbox, entry.source, entry.attempts) == ("nas", PurePosixPath("a/b.jpg"), 1)
        assert (entry.output, entry.output_size, entry.disposition) == (tmp_path / "out" / "b.png", 1234, "archived")
        assert entry.losses == ("only the first of its 3 frames is in the output",)
        assert entry.created_ts == 1_700_000_000.0
        assert entry.updated_ts == 1_700_000_002.5
        assert entry.created_at == "2023-11-14T22:13:20.000+00:00"
        assert ledger.get(failed.key).error == "not an image"  # type: ignore[union-attr]
        assert ledger.counts() == {"started": 0, "done": 1, "failed": 1, "retry": 0}
        assert ledger.lookup(_sha(1), "other-fingerprint") is None


def test_non_utf8_file_name_round_trips(tmp_path: Path) -> None:
    """A source name with undecodable bytes (surrogate-escaped) survives the JSON journal unchanged."""
    name = os.fsdecode(b"caf\xe9.jpg")
    with Ledger.open(tmp_path) as ledger:
        ledger.record_start(_sha(1), FP, inbox="nas", source=name)
        ledger.remember_hash("nas", name, _v(1, 2), sha256=_sha(1))
    with Ledger.open(tmp_path) as ledger:
        assert ledger.lookup(_sha(1), FP).source == PurePosixPath(name)  # type: ignore[union-attr]
        assert ledger.cached_hash("nas", name, _v(1, 2)) == _sha(1)


def test_torn_last_line_is_dropped_and_cut_off(tmp_path: Path) -> None:
    """A half-written last record is ignored, and removed so that later appends don't follow garbage."""
    with Ledger.open(tmp_path) as ledger:
        first = ledger.record_start(_sha(1), FP, inbox="nas", source="1.jpg")
        ledger.record_start(_sha(2), FP, inbox="nas", source="2.jpg")
    journal = tmp_path / JOURNAL_NAME
    data = journal.read_bytes()
    journal.write_bytes(data[: len(data) - 20])

    with Ledger.open(tmp_path) as ledger:
        assert list(_all(ledger)) == [first.key]
        ledger.record_start(_sha(3), FP, inbox="nas", source="3.jpg")
    with Ledger.open(tmp_path) as ledger:
        assert sorted(_all(ledger)) == sorted([first.key, make_key(_sha(3), FP)])


def test_a_complete_but_corrupt_last_line_is_garbage_from_another_writer_not_a_torn_write(tmp_path: Path) -> None:
    """srd writes each record as one line ending in its newline, so a cut-short write lacks the newline; a
    complete line that is not a record was put there by something else and is refused, naming the way out."""
    with Ledger.open(tmp_path) as ledger:
        ledger.record_start(_sha(1), FP, inbox="nas", source="1.jpg")
    for garbage in (b'{"seq": 2, "op"\n', b'hello from another program\n', b'{"note": "no seq"}\n'):
        journal = (tmp_path / JOURNAL_NAME).read_bytes()
        (tmp_path / JOURNAL_NAME).write_bytes(journal + garbage)
        with pytest.raises(LedgerError, match=r"line 2.*srd ledger repair"):
            Ledger.open(tmp_path)
        (tmp_path / JOURNAL_NAME).write_bytes(journal)


def test_corrupt_line_in_the_middle_is_an_error_naming_it(tmp_path: Path) -> None:
    """Damage before the last line would lose history silently, so loading refuses and names the line."""
    with Ledger.open(tmp_path) as ledger:
        for n in range(3):
            ledger.record_start(_sha(n), FP, inbox="nas", source=f"{n}.jpg")
    journal = tmp_path / JOURNAL_NAME
    lines = journal.read_bytes().split(b"\n")
    lines[1] = b"\x00\x00garbage"
    journal.write_bytes(b"\n".join(lines))

    with pytest.raises(LedgerError, match="line 2"):
        Ledger.open(tmp_path)
    # The failed open released the lock.
    with pytest.raises(LedgerError):
        Ledger.open(tmp_path)


def test_journal_that_does_not_continue_the_snapshot_is_an_error(tmp_path: Path) -> None:
    """A gap in sequence numbers (e.g. a stale snapshot restored from backup) is reported, not papered over."""
    with Ledger.open(tmp_path) as ledger:
        ledger.record_start(_sha(1), FP, inbox="nas", source="1.jpg")
        ledger.compact()
        ledger.record_start(_sha(2), FP, inbox="nas", source="2.jpg")
    (tmp_path / SNAPSHOT_NAME).unlink()
    with pytest.raises(LedgerError, match=r"continues a snapshot with seq 1, but .* is missing"):
        Ledger.open(tmp_path)


def test_a_missing_generation_is_named_and_not_called_a_missing_snapshot(tmp_path: Path) -> None:
    """ledger.json is there but the generation it names was removed: check says which, and the journal's
    marker line says its snapshot could not be read (it said the file was missing, which it was not)."""
    with Ledger.open(tmp_path) as ledger:
        ledger.record_start(_sha(1), FP, inbox="nas", source="1.jpg")
        ledger.compact()
        ledger.record_start(_sha(2), FP, inbox="nas", source="2.jpg")
    generation = json.loads((tmp_path / SNAPSHOT_NAME).read_text())["generation"]
    shutil.rmtree(tmp_path / generation)
    problems = check_ledger(tmp_path).problems
    assert any(f"names generation {generation}, which is missing" in problem for problem in problems), problems
    assert any("continues a snapshot with seq 1, but" in problem and "is missing or could not be read" in problem
               for problem in problems), problems


def test_compaction_preserves_entries_and_hashes_and_empties_journal(tmp_path: Path) -> None:
    """After compact() the snapshot alone holds everything, and recording continues normally."""
    with Ledger.open(tmp_path) as ledger:
        for n in range(5):
            entry = ledger.record_start(_sha(n), FP, inbox="nas", source=f"{n}.jpg")
            if n % 2:
                ledger.record_done(entry.key, output=tmp_path / f"{n}.png", output_size=n, losses=("x",) * (n // 2))
            ledger.remember_hash("nas", f"{n}.jpg", _v(n, n * 10), sha256=_sha(n))
        ledger.forget(make_key(_sha(0), FP))
        ledger.forget_hash("nas", "0.jpg")
        before = _all(ledger)
        ledger.compact()
        assert (tmp_path / JOURNAL_NAME).read_text() == '{"seq":8,"op":"snapshot"}\n'  # only the marker
        assert ledger.journal_records == 0
        ledger.record_start(_sha(9), FP, inbox="nas", source="9.jpg")

    with Ledger.open(tmp_path) as ledger:
        after = _all(ledger)
        assert after.pop(make_key(_sha(9), FP)).attempts == 1
        assert after == before
        assert ledger.cached_hash("nas", "3.jpg", _v(3, 30)) == _sha(3)
        assert ledger.cached_hash("nas", "0.jpg", _v(0, 0)) is None


def test_crash_between_snapshot_and_journal_truncation_loses_and_repeats_nothing(tmp_path: Path) -> None:
    """A process killed right after the new snapshot is in place leaves a state that loads exactly once.

    The old journal's records are all in the snapshot; applying them again would either fail the sequence
    check or, for `forget` after `put`, resurrect nothing — the reopened ledger must equal the one that died.
    """
    proc = _run_python(
        f"""
        import os, sys
        from pathlib import Path
        import srd.ledger as L
        from srd.fs.fileversion import FileVersion
        ledger = L.Ledger.open(Path({str(tmp_path)!r}))
        a = ledger.record_start("a" * 64, "fp", inbox="nas", source="a.jpg")
        ledger.record_failed(a.key, error="boom")
        a = ledger.record_start("a" * 64, "fp", inbox="nas", source="a.jpg")
        b = ledger.record_start("b" * 64, "fp", inbox="nas", source="b.jpg")
        ledger.record_done(b.key, output=Path("/out/b.png"), output_size=7)
        c = ledger.record_start("c" * 64, "fp", inbox="nas", source="c.jpg")
        ledger.forget(c.key)
        ledger.remember_hash("nas", "a.jpg", FileVersion(1, 2, 7, 9), sha256="a" * 64)
        import srd.ledger.store
        def die(path, data):
            os._exit(9)
        # What shortens the journal once the snapshot file names the new generation.
        srd.ledger.store.write_bytes_atomic = die
        ledger.compact()
        """
    )
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 9, stderr
    assert (tmp_path / JOURNAL_NAME).stat().st_size > 0, "the simulated crash must leave the old journal"

    with Ledger.open(tmp_path) as ledger:
        entries = _all(ledger)
        assert sorted(entries) == [make_key("a" * 64, "fp"), make_key("b" * 64, "fp")]
        assert entries[make_key("a" * 64, "fp")].attempts == 2
        assert entries[make_key("b" * 64, "fp")].state is State.DONE
        assert ledger.cached_hash("nas", "a.jpg", _v(1, 2)) == "a" * 64
        ledger.record_start("d" * 64, "fp", inbox="nas", source="d.jpg")
    with Ledger.open(tmp_path) as ledger:
        assert len(ledger) == 3


def test_second_open_in_another_process_gets_locked_error_with_pid(tmp_path: Path) -> None:
    """Only one process may own a state dir; the refusal names the holder's pid, and the lock dies with it."""
    holder = _run_python(
        f"""
        import sys
        from pathlib import Path
        from srd.ledger import Ledger
        ledger = Ledger.open(Path({str(tmp_path)!r}))
        print("locked", file=sys.stderr, flush=True)
        sys.stdin.readline()
        """,
        stdin=subprocess.PIPE,
    )
    try:
        # stderr, because structlog's default output goes to stdout.
        assert holder.stderr is not None and holder.stderr.readline().strip() == "locked"
        with pytest.raises(LockedError, match=rf"pid {holder.pid}\b"):
            Ledger.open(tmp_path)
    finally:
        holder.communicate(input="\n", timeout=60)
    with Ledger.open(tmp_path):
        pass


def test_second_open_in_the_same_process_is_refused_until_closed(tmp_path: Path) -> None:
    """flock is per open file, so even this process can't open the same ledger twice at once."""
    with Ledger.open(tmp_path), pytest.raises(LockedError):
        Ledger.open(tmp_path)
    with Ledger.open(tmp_path):
        pass


def test_unfinished_lists_started_without_done_and_restart_counts_attempts(tmp_path: Path) -> None:
    """A start without done/failed (a crash mid-job) is reported after reopen and its retry is counted."""
    with Ledger.open(tmp_path) as ledger:
        crashed = ledger.record_start(_sha(1), FP, inbox="nas", source="1.jpg")
        finished = ledger.record_start(_sha(2), FP, inbox="nas", source="2.jpg")
        ledger.record_done(finished.key, output=tmp_path / "2.png", output_size=1)
    with Ledger.open(tmp_path) as ledger:
        assert [e.key for e in ledger.unfinished()] == [crashed.key]
        again = ledger.record_start(_sha(1), FP, inbox="nas", source="1.jpg")
        assert again.attempts == 2
        assert again.created_ts == crashed.created_ts


def test_state_machine_rejects_invalid_transitions(tmp_path: Path) -> None:
    """Done work can't be restarted by mistake; only failed entries can be retried; unknown keys raise."""
    with Ledger.open(tmp_path) as ledger:
        entry = ledger.record_start(_sha(1), FP, inbox="nas", source="1.jpg")
        with pytest.raises(ValueError):
            ledger.retry(entry.key)
        ledger.record_done(entry.key, output=tmp_path / "1.png", output_size=1)
        with pytest.raises(ValueError, match="already done"):
            ledger.record_start(_sha(1), FP, inbox="nas", source="1.jpg")
        with pytest.raises(ValueError):
            ledger.record_failed(entry.key, error="late")
        with pytest.raises(KeyError):
            ledger.record_done(make_key(_sha(2), FP), output=tmp_path / "2.png", output_size=1)
        with pytest.raises(ValueError, match="relative"):
            ledger.record_start(_sha(3), FP, inbox="nas", source="/abs/3.jpg")


def test_retry_and_forget_persist(tmp_path: Path) -> None:
    """retry() gives a failed entry a fresh attempt budget; forget() removes an entry for good."""
    with Ledger.open(tmp_path) as ledger:
        failed = ledger.record_start(_sha(1), FP, inbox="nas", source="1.jpg")
        ledger.record_failed(failed.key, error="worker killed")
        gone = ledger.record_start(_sha(2), FP, inbox="nas", source="2.jpg")
        retried = ledger.retry(failed.key)
        assert (retried.state, retried.attempts, retried.error) == (State.RETRY, 0, None)
        assert ledger.forget(gone.key) is True
        assert ledger.forget(gone.key) is False
    with Ledger.open(tmp_path) as ledger:
        assert ledger.get(gone.key) is None
        assert ledger.get(failed.key).state is State.RETRY  # type: ignore[union-attr]
        assert ledger.record_start(_sha(1), FP, inbox="nas", source="1.jpg").attempts == 1
        assert ledger.counts() == {"started": 1, "done": 0, "failed": 0, "retry": 0}


def test_stat_cache_round_trip(tmp_path: Path) -> None:
    """A remembered hash is returned after reopen only while size and mtime match, and forget_hash sticks."""
    with Ledger.open(tmp_path) as ledger:
        ledger.remember_hash("nas", "a/1.jpg", _v(10, 111), sha256=_sha(1))
        ledger.remember_hash("nas", "a/2.jpg", _v(20, 222), sha256=_sha(2))
        ledger.forget_hash("nas", "a/2.jpg")
    with Ledger.open(tmp_path) as ledger:
        assert ledger.cached_hash("nas", PurePosixPath("a/1.jpg"), _v(10, 111)) == _sha(1)
        assert ledger.cached_hash("nas", "a/1.jpg", _v(10, 112)) is None
        assert ledger.cached_hash("nas", "a/1.jpg", _v(11, 111)) is None
        assert ledger.cached_hash("other", "a/1.jpg", _v(10, 111)) is None
        assert ledger.cached_hash("nas", "a/2.jpg", _v(20, 222)) is None


def test_stat_cache_records_ride_along_with_the_next_durable_record(tmp_path: Path) -> None:
    """Buffered cache records reach the journal with the next state change; only later ones die with a crash."""
    proc = _run_python(
        f"""
        import os
        from pathlib import Path
        from srd.fs.fileversion import FileVersion
        from srd.ledger import Ledger
        ledger = Ledger.open(Path({str(tmp_path)!r}))
        ledger.remember_hash("nas", "1.jpg", FileVersion(1, 1, 7, 9), sha256="1" * 64)
        ledger.record_start("2" * 64, "fp", inbox="nas", source="2.jpg")
        ledger.remember_hash("nas", "3.jpg", FileVersion(3, 3, 7, 9), sha256="3" * 64)
        os._exit(9)
        """
    )
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 9, stderr
    with Ledger.open(tmp_path) as ledger:
        assert ledger.cached_hash("nas", "1.jpg", _v(1, 1)) == "1" * 64
        assert ledger.cached_hash("nas", "3.jpg", _v(3, 3)) is None
        assert ledger.lookup("2" * 64, "fp") is not None


def test_stat_cache_changes_are_journalled_in_batches_of_one_line(tmp_path: Path) -> None:
    """A scan of many files costs one journal line (and fsync) per HASH_BATCH changes, not one per file."""
    with Ledger.open(tmp_path) as ledger:
        for n in range(HASH_BATCH + 1):
            ledger.remember_hash("nas", f"{n}.jpg", _v(n, n), sha256=_sha(n))
        assert (tmp_path / JOURNAL_NAME).read_bytes().count(b"\n") == 1
        ledger.sync()
        assert (tmp_path / JOURNAL_NAME).read_bytes().count(b"\n") == 2
    with Ledger.open(tmp_path) as ledger:
        assert ledger.cached_hash("nas", f"{HASH_BATCH}.jpg", _v(HASH_BATCH, HASH_BATCH)) == _sha(HASH_BATCH)


def test_failed_journal_write_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If fsync fails the record doesn't count: memory is unchanged and the file carries no stray bytes."""
    with Ledger.open(tmp_path) as ledger:
        kept = ledger.record_start(_sha(1), FP, inbox="nas", source="1.jpg")

        def failing_fsync(fd: int) -> None:
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(os, "fsync", failing_fsync)
        with pytest.raises(LedgerError, match="Input/output error"):
            ledger.record_done(kept.key, output=tmp_path / "1.png", output_size=1)
        monkeypatch.undo()
        assert ledger.get(kept.key).state is State.STARTED  # type: ignore[union-attr]
        ledger.record_start(_sha(2), FP, inbox="nas", source="2.jpg")
    with Ledger.open(tmp_path) as ledger:
        assert ledger.get(kept.key).state is State.STARTED  # type: ignore[union-attr]
        assert len(ledger) == 2


def test_journal_is_compacted_automatically_past_the_threshold(tmp_path: Path) -> None:
    """Long journals are folded into the snapshot on open and while running, so startup stays fast."""
    with Ledger.open(tmp_path, compact_after=1000) as ledger:
        for n in range(5):
            ledger.record_start(_sha(n), FP, inbox="nas", source=f"{n}.jpg")
    assert not (tmp_path / SNAPSHOT_NAME).exists()

    with Ledger.open(tmp_path, compact_after=3) as ledger:
        assert ledger.compacting  # started on open, in the background: the loop goes on meanwhile
        for n in range(5, 8):
            ledger.record_start(_sha(n), FP, inbox="nas", source=f"{n}.jpg")
    assert (tmp_path / SNAPSHOT_NAME).exists()
    with Ledger.open(tmp_path) as ledger:
        assert len(ledger) == 8 and ledger.journal_records == 4  # the marker and the 3 written meanwhile


def _journal_of_done_entries(state_dir: Path, n: int, now: float) -> None:
    """The journal that `record_start` then `record_done` of `n` entries write at time `now`, written at once:
    200,000 durable appends through the API took most of the load-time test's own time."""
    seq = 0
    with (state_dir / JOURNAL_NAME).open("wb") as journal:
        for i in range(n):
            key = make_key(_sha(i), FP)
            started = Row("nas", f"photos/{i:06d}.jpg", "started", 1, now, now, None, None, None, None, None, 0, False)
            done = started._replace(state="done", output=f"/srv/outbox/photos/{i:06d}.png", output_size=i)
            for row in (started, done):
                seq += 1
                journal.write(journal_line({"seq": seq, "op": "put", "entry": stored_record(key, row)}))


def test_a_journal_written_at_once_for_the_load_time_test_is_what_the_api_writes(tmp_path: Path) -> None:
    """`_journal_of_done_entries` stands in for the API in the load-time test only if it writes the same bytes."""
    now = time.time()
    with Ledger.open(tmp_path / "api", clock=lambda: now) as ledger:
        for i in range(3):
            entry = ledger.record_start(_sha(i), FP, inbox="nas", source=f"photos/{i:06d}.jpg")
            ledger.record_done(entry.key, output=Path(f"/srv/outbox/photos/{i:06d}.png"), output_size=i)
    (tmp_path / "direct").mkdir()
    _journal_of_done_entries(tmp_path / "direct", 3, now)
    assert (tmp_path / "direct" / JOURNAL_NAME).read_bytes() == (tmp_path / "api" / JOURNAL_NAME).read_bytes()


@pytest.mark.e2e
def test_load_time_for_100k_entries(tmp_path: Path) -> None:
    """Opening a 100,000-entry ledger stays fast, from the journal and from a snapshot (figures printed).

    The journal of its 200,000 records is written at once (see the test above) rather than appended record
    by record.
    """
    n = 100_000
    _journal_of_done_entries(tmp_path, n, time.time())

    started = time.perf_counter()
    with Ledger.open(tmp_path, compact_after=10 * n) as ledger:
        replay_s = time.perf_counter() - started
        assert len(ledger) == n
        ledger.compact()
    started = time.perf_counter()
    with Ledger.open(tmp_path) as ledger:
        snapshot_s = time.perf_counter() - started
        assert ledger.counts()["done"] == n
    print(f"\n100k entries: open from snapshot {snapshot_s:.2f} s, from a 200k-record journal {replay_s:.2f} s")
    assert snapshot_s < 10
    assert replay_s < 10


def test_done_entries_own_their_outputs_and_the_table_survives_a_reopen(tmp_path: Path) -> None:
    """Only ``done`` entries own outputs; `owner` and `outputs_of` answer from either side, after a reopen
    from the journal and after one from a snapshot alike."""
    out = str(tmp_path / "out" / "b.png")
    with Ledger.open(tmp_path) as ledger:
        done = ledger.record_start(_sha(1), FP, inbox="nas", source="a/b.jpg")
        ledger.record_done(done.key, output=Path(out), output_size=1)
        ledger.record_start(_sha(2), FP, inbox="nas", source="c.jpg", target=tmp_path / "out" / "c.png")
        failed = ledger.record_start(_sha(3), FP, inbox="nas", source="d.jpg")
        ledger.record_failed(failed.key, error="broken")
        expected = ({out: done.key}, Owner("nas", "a/b.jpg", done.key))
        assert (ledger.outputs_of("nas", "a/b.jpg"), ledger.owner(out)) == expected
        assert ledger.owner(tmp_path / "out" / "c.png") is None and ledger.outputs_of("nas", "c.jpg") == {}
    for _ in range(2):
        with Ledger.open(tmp_path) as ledger:
            assert (ledger.outputs_of("nas", "a/b.jpg"), ledger.owner(out)) == expected
            ledger.compact()


def test_a_started_entry_reserves_its_target_until_it_leaves_started_even_across_a_crash(tmp_path: Path) -> None:
    """The output name reserved at `record_start` survives a reopen (a crash) and a compaction while the entry
    is started, and is released by done, failed and forget."""
    with Ledger.open(tmp_path) as ledger:
        keys = [ledger.record_start(_sha(i), FP, inbox="nas", source=f"{i}.jpg", target=tmp_path / f"{i}.png").key
                for i in range(4)]
        ledger.record_start(_sha(9), FP, inbox="nas", source="9.jpg")  # no target: nothing reserved
    with Ledger.open(tmp_path) as ledger:
        assert ledger.reserved_targets() == {k: tmp_path / f"{i}.png" for i, k in enumerate(keys)}
        assert ledger.get(keys[0]).target == tmp_path / "0.png"
        ledger.record_done(keys[0], output=tmp_path / "0.png", output_size=1)
        ledger.record_failed(keys[1], error="broken")
        ledger.forget(keys[2])
        ledger.compact()
    with Ledger.open(tmp_path) as ledger:
        assert ledger.reserved_targets() == {keys[3]: tmp_path / "3.png"}
        assert ledger.get(keys[0]).target is None


def test_records_written_before_targets_existed_still_load(tmp_path: Path) -> None:
    """Journal records without a ``target`` field (srd before it kept reservations in the ledger) load as
    entries with no reservation (for snapshots of that time, see the test of older formats)."""
    with Ledger.open(tmp_path, compact_after=2) as ledger:  # two records in the snapshot, one in the journal
        keys = [ledger.record_start(_sha(i), FP, inbox="nas", source=f"{i}.jpg").key for i in range(3)]
    path = tmp_path / JOURNAL_NAME
    path.write_text(path.read_text().replace(',"target":null', ""))
    assert '"target"' not in path.read_text() and keys[2] in path.read_text()
    with Ledger.open(tmp_path) as ledger:
        assert [ledger.get(k).target for k in keys] == [None] * 3 and ledger.reserved_targets() == {}


def test_a_read_only_view_works_beside_the_owner_and_changes_nothing(tmp_path: Path) -> None:
    """`read_only` needs no lock, so it opens while the owner holds the ledger; it sees the snapshot and the
    journal (a half-written last record, as while the owner appends, is skipped, not cut off), and refuses
    every change."""
    with Ledger.open(tmp_path, compact_after=2) as owner:
        keys = [owner.record_start(_sha(i), FP, inbox="nas", source=f"{i}.jpg").key for i in range(3)]
        owner.compact()  # the one compact_after started may still run in the background: wait for a snapshot
        owner.record_failed(keys[2], error="broken")
        with (tmp_path / JOURNAL_NAME).open("ab") as journal:
            journal.write(b'{"seq":99,"op":"put","ent')  # an append in progress
        files = {name: (tmp_path / name).read_bytes() for name in (SNAPSHOT_NAME, JOURNAL_NAME)}
        with Ledger.open(tmp_path, read_only=True) as view:
            assert sorted(e.key for e in view.entries()) == sorted(keys)
            assert view.get(keys[2]).state is State.FAILED
            for change in (lambda: view.retry(keys[2]), lambda: view.forget(keys[0]),
                           lambda: view.record_start(_sha(7), FP, inbox="nas", source="7.jpg")):
                with pytest.raises(LedgerError, match="read-only"):
                    change()
        assert {name: (tmp_path / name).read_bytes() for name in files} == files


def test_an_output_path_has_one_owner_and_writing_it_again_drops_the_entry_that_held_it(tmp_path: Path) -> None:
    """A done record (or a duplicate's link) on a path another done entry claims drops that entry, also on
    replay; `forget` keeps the path srd's but proves nothing done any more."""
    out = tmp_path / "x.png"
    with Ledger.open(tmp_path) as ledger:
        old = ledger.record_start(_sha(1), FP, inbox="nas", source="x.png")
        ledger.record_done(old.key, output=out, output_size=1)
        new = ledger.record_start(_sha(2), FP, inbox="nas", source="x.png")
        ledger.record_done(new.key, output=out, output_size=2)  # the edit overwrote x.png's output
        assert ledger.get(old.key) is None and ledger.counts()["done"] == 1
        assert ledger.outputs_of("nas", "x.png") == {str(out): new.key}
        other = ledger.record_start(_sha(3), FP, inbox="nas", source="y.png")
        ledger.record_done(other.key, output=tmp_path / "y.png", output_size=3)
        ledger.record_output(out, inbox="nas", source="x.png", key=other.key)  # x.png became a copy of y.png
        assert ledger.get(new.key) is None and ledger.owner(out) == Owner("nas", "x.png", other.key)
    with Ledger.open(tmp_path) as ledger:  # the same from the journal
        assert sorted(_all(ledger)) == [other.key] and ledger.owner(out) == Owner("nas", "x.png", other.key)
        ledger.forget(other.key)
        assert ledger.outputs_of("nas", "x.png") == {str(out): None}
        assert ledger.owner(tmp_path / "y.png") == Owner("nas", "y.png", None)
        ledger.compact()
    with Ledger.open(tmp_path) as ledger:  # and from a snapshot
        assert len(ledger) == 0 and ledger.owner(out) == Owner("nas", "x.png", None)


def test_strikes_count_only_pinned_deaths_and_a_solo_start_is_pinned_when_the_daemon_dies(tmp_path: Path) -> None:
    with Ledger.open(tmp_path) as ledger:
        entry = ledger.record_start(_sha(1), FP, inbox="nas", source="a.jpg", target=tmp_path / "a.png")
        entry = ledger.record_start(_sha(1), FP, inbox="nas", source="a.jpg", target=tmp_path / "a.png")
        assert (entry.attempts, entry.strikes) == (2, 0)  # two starts, no death pinned
        entry = ledger.record_strike(entry.key)
        assert (entry.state, entry.strikes, entry.target) == (State.STARTED, 1, tmp_path / "a.png")
        ledger.record_start(_sha(1), FP, inbox="nas", source="a.jpg", solo=True)
        quiet = ledger.record_start(_sha(2), FP, inbox="nas", source="b.jpg", solo=True)
        ledger.record_interrupted(quiet.key)  # a drain ran out of time: not b's fault
    with Ledger.open(tmp_path) as ledger:  # the daemon died with a.jpg running alone
        pinned = ledger.pin_solo_deaths()
        assert [(e.key, e.strikes, e.solo) for e in pinned] == [(entry.key, 2, False)]
        assert ledger.get(quiet.key).strikes == 0
        ledger.record_failed(entry.key, error="poison")
        assert ledger.retry(entry.key).strikes == 0


def test_ledgers_written_by_older_srd_versions_still_load(tmp_path: Path) -> None:
    """A format 1 snapshot (no owner table, five-field stat-cache lines) and journal records without
    strikes/solo/losses load: each done entry owns its output (an older claim on the same path is dropped as the
    stale kind), the old stat-cache lines are not trusted (inode and ctime unknown), nothing is pinned."""
    def record(n: int, source: str, output: str | None, ts: float) -> dict:
        return {"key": make_key(_sha(n), FP), "sha256": _sha(n), "fingerprint": FP, "inbox": "nas",
                "source": source, "state": "done" if output else "started", "attempts": 3, "created_at": "x",
                "created_ts": ts, "updated_at": "x", "updated_ts": ts, "output": output, "output_size": 1,
                "error": None, "disposition": "kept" if output else None}
    snapshot = {"format": 1, "seq": 3, "entries": {r["key"]: r for r in (
        record(1, "a.png", "/out/a.png", 1.0), record(2, "a.png", "/out/a.png", 2.0))},
        "hashes": [["nas", "a.png", 10, 20, _sha(2)]]}
    (tmp_path / SNAPSHOT_NAME).write_text(json.dumps(snapshot))
    (tmp_path / JOURNAL_NAME).write_text(json.dumps({"seq": 4, "op": "put", "entry": record(3, "b.png", None, 3.0)})
                                         + "\n")
    with Ledger.open(tmp_path) as ledger:
        assert sorted(_all(ledger)) == sorted([make_key(_sha(2), FP), make_key(_sha(3), FP)])
        assert ledger.owner("/out/a.png") == Owner("nas", "a.png", make_key(_sha(2), FP))
        assert ledger.get(make_key(_sha(2), FP)).losses == ()  # type: ignore[union-attr]
        assert ledger.cached_hash("nas", "a.png", _v(10, 20)) is None
        unfinished = ledger.get(make_key(_sha(3), FP))
        assert (unfinished.attempts, unfinished.strikes, unfinished.solo) == (3, 0, False)
        assert ledger.pin_solo_deaths() == []
        ledger.compact()
    snapshot = json.loads((tmp_path / SNAPSHOT_NAME).read_text())
    assert snapshot["format"] == SNAPSHOT_FORMAT and (tmp_path / snapshot["generation"] / "entries.jsonl").is_file()


def _compacted_ledger_of_done_entries(state_dir: Path, n: int) -> list[str]:
    with Ledger.open(state_dir) as ledger:
        keys = []
        for i in range(n):
            entry = ledger.record_start(_sha(i), FP, inbox="in", source=f"{i}.png")
            ledger.record_done(entry.key, output=state_dir.parent / f"out-{i}.png", output_size=i)
            keys.append(entry.key)
        ledger.compact()
    return keys


def test_what_the_daemon_refuses_in_a_generation_check_lists_with_the_same_file_and_byte(tmp_path: Path) -> None:
    """Old srd: a record line the daemon refused on (here: moved by an edit before it) was not seen by check.
    The edit also changed the file's size, which the daemon now refuses at its start (the index records it)."""
    state = tmp_path / "state"
    _compacted_ledger_of_done_entries(state, 6)
    entries_file, = state.glob("gen-*/entries.jsonl")
    lines = entries_file.read_bytes().splitlines(keepends=True)
    entries_file.write_bytes(b"".join([lines[0].replace(b'"output_size":', b'"output_size": '), *lines[1:]]))
    with pytest.raises(LedgerError, match=r"entries\.jsonl holds .* bytes, but .* were written; run 'srd ledger"):
        Ledger.open(state)
    # A space added inside line 1 keeps it a whole, agreeing record: lines 2 to 6 are no longer where the index
    # says, which is what check lists.
    problems = check_ledger(state).problems
    assert any(problem.startswith(f"{entries_file}: lines 2 to 6: not where the index puts them")
               for problem in problems), problems
    assert any(f"{entries_file} holds" in problem for problem in problems), problems  # what the daemon said
    assert "1 of the 6 records" not in "\n".join(problems)  # moved, not lost: repair keeps them


def test_a_damaged_owner_line_is_dropped_by_repair_and_the_done_entry_still_owns_its_output(tmp_path: Path) -> None:
    state = tmp_path / "state"
    keys = _compacted_ledger_of_done_entries(state, 4)
    owners_file, = state.glob("gen-*/owners.jsonl")
    lines = owners_file.read_bytes().splitlines(keepends=True)
    output = json.loads(lines[0])[0]
    owners_file.write_bytes(b"".join([b"XX" + lines[0], *lines[1:]]))
    assert any(f"{owners_file}: line 1 (byte 0)" in problem for problem in check_ledger(state).problems)
    report = repair_ledger(state)
    dropped, = report.dropped_to
    assert dropped.name.startswith("owners.jsonl.dropped-") and dropped.read_bytes() == b"XX" + lines[0]
    assert check_ledger(state).problems == ()
    with Ledger.open(state) as ledger:
        assert {entry.key for entry in ledger.entries()} == set(keys)
        owner = ledger.owner(output)
        assert owner is not None and owner.key in keys


def test_lost_says_when_the_lock_or_journal_at_the_path_is_no_longer_the_one_held(tmp_path: Path) -> None:
    """What the daemon checks every second (`Daemon._check_state_dir`); its own journal replacement at each
    compaction is not a loss."""
    with Ledger.open(tmp_path / "state", compact_after=2) as ledger:
        for n in range(5):
            ledger.record_start(f"{n:064x}", "fp", inbox="in", source=f"{n}.png")
        ledger.compact()
        assert ledger.lost() is None
        journal = tmp_path / "state" / "journal.jsonl"
        journal.rename(tmp_path / "journal.kept")
        assert ledger.lost() == "its journal.jsonl file was removed"
        journal.write_bytes((tmp_path / "journal.kept").read_bytes())
        assert ledger.lost() == "its journal.jsonl file was replaced by another"
    with Ledger.open(tmp_path / "state", read_only=True) as reader:
        assert reader.lost() is None  # a reader holds neither


def test_lost_sees_files_rewritten_in_place_but_never_its_own_compactions(tmp_path: Path) -> None:
    """A backup copied back over the state dir keeps the files' inodes: the journal's size and the snapshot
    file's identity tell. Background compactions (which replace both) are never taken for that."""
    state = tmp_path / "state"
    with Ledger.open(state, compact_after=3) as ledger:
        for n in range(40):
            ledger.record_start(f"{n:064x}", "fp", inbox="in", source=f"{n}.png")
            assert ledger.lost() is None, n
        ledger.compact()
        assert ledger.lost() is None
        snapshot = (state / SNAPSHOT_NAME).read_bytes()
        (state / SNAPSHOT_NAME).write_bytes(snapshot)  # the same bytes, rewritten: another version all the same
        assert ledger.lost() == "its ledger.json file was replaced or rewritten by another process"
    with Ledger.open(state) as ledger:
        (state / "lock").write_text("12345\n")  # in place, as `echo 12345 > lock` does: the same file
        assert ledger.lost() == "its lock file was rewritten by another process (it no longer names this one)"
    with Ledger.open(state) as ledger:
        journal = (state / "journal.jsonl").read_bytes()
        ledger.record_start("ff" * 32, "fp", inbox="in", source="new.png")
        (state / "journal.jsonl").write_bytes(journal)
        assert ledger.lost() is not None and ledger.lost().startswith("its journal.jsonl file was rewritten")
        ledger.abandon()
        with pytest.raises(LedgerError, match="given up"):
            ledger.record_start("ee" * 32, "fp", inbox="in", source="other.png")
    assert (state / "journal.jsonl").read_bytes() == journal  # nothing written after the loss, closing included
