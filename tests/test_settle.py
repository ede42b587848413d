"""Tests for srd.daemon.settle: files are released only when quiet and stable, and every path gets an outcome."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from srd.daemon.settle import FIRST_LOOK_S, PollResult, ReadyFile, SettleTracker
from srd.fs.fileversion import FileVersion

SETTLE = 2.0


class FakeClock:
    """Monotonic clock that only moves when the test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _write(path: Path, data: bytes, *, mtime_ns: int) -> None:
    """Append `data` and set an explicit mtime: real writes within one clock tick may keep the same mtime."""
    with path.open("ab") as fh:
        fh.write(data)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def _ready_paths(result: PollResult) -> list[Path]:
    return [r.path for r in result.ready]


def test_file_written_in_chunks_is_ready_only_when_quiet_and_stable(tmp_path: Path, clock: FakeClock) -> None:
    """Each write's hint restarts the quiet period; afterwards a first stat records and a second, settle_s
    later, confirms."""
    tracker = SettleTracker(SETTLE, clock=clock)
    path = tmp_path / "photo.jpg"
    for n in range(4):
        _write(path, b"x" * 1000, mtime_ns=n * 10**9)
        tracker.hint(path)
        clock.advance(SETTLE * 0.9)
        assert not tracker.poll(), "a stat after a write only records; the next write's hint discards it"

    assert len(tracker.pending_paths()) == 1
    clock.advance(SETTLE - 0.01)
    assert not tracker.poll(), "the confirming stat comes a full settle_s after the first"
    clock.advance(0.01)
    result = tracker.poll()
    assert result.ready == [ReadyFile(path, FileVersion.of(path.stat()))] and result.ready[0].version.size == 4000
    assert len(tracker.pending_paths()) == 0
    assert tracker.next_deadline() is None


def test_a_file_that_stopped_changing_is_ready_settle_s_after_its_last_hint_not_twice_that(
    tmp_path: Path, clock: FakeClock
) -> None:
    """The first stat follows the last hint closely, so the quiet period and the two stats' interval
    overlap: ready FIRST_LOOK_S + settle_s after the hint, not 2 × settle_s."""
    tracker = SettleTracker(SETTLE, clock=clock)
    path = tmp_path / "dropped.jpg"
    _write(path, b"x" * 10, mtime_ns=10**9)
    tracker.hint(path)
    clock.advance(FIRST_LOOK_S)
    assert not tracker.poll()
    assert tracker.next_deadline() == pytest.approx(clock.now + SETTLE)
    clock.advance(SETTLE)
    assert _ready_paths(tracker.poll()) == [path]


def _grow_same_mtime(path: Path) -> None:
    _write(path, b"b" * 20, mtime_ns=10**9)


def _touch_same_size(path: Path) -> None:
    os.utime(path, ns=(5 * 10**9, 5 * 10**9))


@pytest.mark.parametrize("change", [_grow_same_mtime, _touch_same_size], ids=["size", "mtime"])
def test_a_change_between_the_two_stats_restarts_the_wait(
    tmp_path: Path, clock: FakeClock, change: Callable[[Path], None]
) -> None:
    """A size change alone (a remote writer that produces no events) or an mtime change alone (a same-size
    rewrite) between the two stats starts the wait over."""
    tracker = SettleTracker(SETTLE, clock=clock)
    path = tmp_path / "big.tif"
    _write(path, b"a" * 10, mtime_ns=10**9)
    tracker.hint(path)
    clock.advance(SETTLE)
    assert not tracker.poll()
    change(path)
    clock.advance(SETTLE)
    assert not tracker.poll(), "changed since the first stat: not ready"
    clock.advance(SETTLE)
    assert _ready_paths(tracker.poll()) == [path]


def test_a_chmod_between_the_two_stats_does_not_restart_the_wait(tmp_path: Path, clock: FakeClock) -> None:
    """A chmod (or an xattr, a hard link) moves only the ctime: no byte was written. A file whose permissions a
    cron job reset every second waited for ever; it is ready, in its latest version."""
    tracker = SettleTracker(SETTLE, clock=clock)
    path = tmp_path / "photo.jpg"
    _write(path, b"a" * 10, mtime_ns=10**9)
    tracker.hint(path)
    clock.advance(SETTLE)
    assert not tracker.poll()
    path.chmod(0o600)
    clock.advance(SETTLE)
    [ready] = tracker.poll().ready
    assert ready.path == path and ready.version == FileVersion.of(path.stat())


def test_vanished_file_is_reported_and_dropped(tmp_path: Path, clock: FakeClock) -> None:
    """A file deleted or moved away before it settled is reported once, then no longer tracked."""
    tracker = SettleTracker(SETTLE, clock=clock)
    path = tmp_path / "gone.jpg"
    _write(path, b"x", mtime_ns=10**9)
    tracker.hint(path)
    clock.advance(SETTLE)
    tracker.poll()
    path.unlink()
    clock.advance(SETTLE)
    result = tracker.poll()
    assert result.vanished == [path]
    assert not result.ready and not result.rejected
    assert len(tracker.pending_paths()) == 0


def test_forgotten_path_produces_no_outcome(tmp_path: Path, clock: FakeClock) -> None:
    """forget() is the owner's own decision, so the path silently leaves the tracker."""
    tracker = SettleTracker(SETTLE, clock=clock)
    path = tmp_path / "moved.jpg"
    _write(path, b"x", mtime_ns=10**9)
    tracker.hint(path)
    tracker.forget(path)
    clock.advance(10 * SETTLE)
    assert not tracker.poll()
    assert tracker.next_deadline() is None


def test_zero_byte_file_waits_longer_but_is_eventually_ready(tmp_path: Path, clock: FakeClock) -> None:
    """An empty file is held for empty_file_settle_s after its last hint, then released as zero-byte."""
    tracker = SettleTracker(SETTLE, clock=clock, empty_file_settle_s=10.0)
    path = tmp_path / "placeholder.jpg"
    path.touch()
    tracker.hint(path)
    for _ in range(4):
        clock.advance(SETTLE)
        assert not tracker.poll(), "a non-empty file would be ready by now; an empty one must wait"
    assert tracker.next_deadline() == pytest.approx(clock.now + SETTLE)
    clock.advance(SETTLE)
    result = tracker.poll()
    assert [(r.path, r.version.size) for r in result.ready] == [(path, 0)]


def test_zero_byte_file_that_gets_content_settles_normally(tmp_path: Path, clock: FakeClock) -> None:
    """Content arriving during the empty-file wait switches back to the normal settle rule."""
    tracker = SettleTracker(SETTLE, clock=clock, empty_file_settle_s=60.0)
    path = tmp_path / "late.jpg"
    path.touch()
    tracker.hint(path)
    clock.advance(SETTLE)
    tracker.poll()
    _write(path, b"data", mtime_ns=7 * 10**9)
    clock.advance(SETTLE)
    assert not tracker.poll()
    clock.advance(SETTLE)
    assert [(r.path, r.version.size) for r in tracker.poll().ready] == [(path, 4)]


def test_fifo_is_rejected_without_blocking(tmp_path: Path, clock: FakeClock) -> None:
    """Opening a FIFO with no writer blocks forever; the tracker must only stat it and reject it."""
    tracker = SettleTracker(SETTLE, clock=clock)
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    tracker.hint(fifo)
    clock.advance(SETTLE)
    results: list[PollResult] = []
    worker = threading.Thread(target=lambda: results.append(tracker.poll()), daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "poll() blocked on a FIFO"
    [result] = results
    assert [r.path for r in result.rejected] == [fifo]
    assert "fifo" in result.rejected[0].reason
    assert len(tracker.pending_paths()) == 0


def test_directory_is_rejected(tmp_path: Path, clock: FakeClock) -> None:
    """A directory hinted by mistake gets a reason rather than waiting forever."""
    tracker = SettleTracker(SETTLE, clock=clock)
    folder = tmp_path / "album.jpg"
    folder.mkdir()
    tracker.hint(folder)
    clock.advance(SETTLE)
    result = tracker.poll()
    assert [(r.path, r.reason) for r in result.rejected] == [(folder, "not a regular file: directory")]


def test_unstattable_file_is_rejected_with_the_reason(tmp_path: Path, clock: FakeClock) -> None:
    """A stat error other than 'not found' (permissions, a dead NAS) is reported, not retried silently."""

    def failing_stat(path: Path) -> os.stat_result:
        raise PermissionError(13, "Permission denied", str(path))

    tracker = SettleTracker(SETTLE, clock=clock, stat=failing_stat)
    path = tmp_path / "locked.jpg"
    tracker.hint(path)
    clock.advance(SETTLE)
    result = tracker.poll()
    assert [(r.path, r.reason) for r in result.rejected] == [(path, "cannot stat: Permission denied")]


def test_next_deadline_tracks_the_earliest_pending_work(tmp_path: Path, clock: FakeClock) -> None:
    """next_deadline is exactly when poll() next has something to do, across hints, stats and forgets."""
    tracker = SettleTracker(SETTLE, clock=clock)
    assert tracker.next_deadline() is None
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    _write(a, b"a", mtime_ns=10**9)
    _write(b, b"b", mtime_ns=10**9)
    start = clock.now

    tracker.hint(a)
    clock.advance(0.05)
    tracker.hint(b)
    assert tracker.next_deadline() == start + FIRST_LOOK_S

    clock.advance(0.05)
    tracker.hint(a)  # a's quiet period restarts at start + 0.1, so b is now first
    assert tracker.next_deadline() == start + 0.05 + FIRST_LOOK_S

    clock.now = start + 0.05 + FIRST_LOOK_S
    assert not tracker.poll()  # b's first stat
    assert tracker.next_deadline() == start + 0.1 + FIRST_LOOK_S  # a's first stat

    tracker.forget(a)
    assert tracker.next_deadline() == start + 0.05 + FIRST_LOOK_S + SETTLE  # b's confirming stat
    clock.now = tracker.next_deadline()  # type: ignore[assignment]
    assert _ready_paths(tracker.poll()) == [b]
    assert tracker.next_deadline() is None


def test_invalid_settings_are_refused(clock: FakeClock) -> None:
    """A zero settle time would release files mid-write; an empty-file wait shorter than it makes no sense."""
    with pytest.raises(ValueError):
        SettleTracker(0, clock=clock)
    with pytest.raises(ValueError):
        SettleTracker(SETTLE, clock=clock, empty_file_settle_s=SETTLE / 2)


def test_a_split_poll_drops_stats_that_a_hint_or_forget_overtook_and_waits_for_its_answers(
        tmp_path: Path, clock: FakeClock) -> None:
    """The daemon takes the stats on another thread (`due`, `look`, `resolve`): a path hinted again while
    its stat was out is judged from a fresh pair of stats, not the old answer; a forgotten one is dropped;
    and while the answers are out, the tracker asks for no second stat of the same paths."""
    tracker = SettleTracker(SETTLE, clock=clock)
    paths = {name: tmp_path / name for name in ("steady.png", "rewritten.png", "deleted.png")}
    for path in paths.values():
        _write(path, b"x" * 100, mtime_ns=10**9)
        tracker.hint(path)
    clock.advance(FIRST_LOOK_S)
    assert not tracker.resolve(tracker.look(tracker.due())), "first stats only record"
    clock.advance(SETTLE)
    looks = tracker.due()
    assert sorted(look.path.name for look in looks) == sorted(paths)
    assert tracker.due() == [] and tracker.next_deadline() is None, "nothing is asked twice while answers are out"
    answers = tracker.look(looks)
    _write(paths["rewritten.png"], b"more", mtime_ns=2 * 10**9)
    tracker.hint(paths["rewritten.png"])  # its answer is now stale
    tracker.forget(paths["deleted.png"])
    result = tracker.resolve(answers)
    assert _ready_paths(result) == [paths["steady.png"]] and not result.vanished and not result.rejected
    assert len(tracker.pending_paths()) == 1
    clock.advance(FIRST_LOOK_S)
    tracker.poll()
    clock.advance(SETTLE)
    assert _ready_paths(tracker.poll()) == [paths["rewritten.png"]]
