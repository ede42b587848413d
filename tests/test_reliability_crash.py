"""Crash loop: SIGKILL the daemon, or its workers, at random moments while files keep arriving.

The short version runs in CI; ``SRD_LONG=1`` (or ``scripts/reliability.py``) runs the long one.
"""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import Executor, Future
from pathlib import Path

import pytest
from daemon_helpers import DaemonProcess, running, wait_for
from reliability_harness import (
    crash_loop,
    image_bytes,
    make_layout,
    scaled,
    status_of,
    worker_pids,
)

from srd.config import default_profile
from srd.executors.job import Job, JobResult
from srd.executors.pool import JobPool
from srd.fs.atomic import is_temp_name

# End to end: each test runs a real srd daemon (srd run) on real folders.
pytestmark = pytest.mark.e2e


def test_daemon_killed_at_random_moments_loses_duplicates_and_half_writes_nothing(tmp_path: Path) -> None:
    """While inputs keep arriving, SIGKILL the daemon (workers die with it) at random moments and restart
    it each time; afterwards every input has exactly one output, byte-identical to a clean run's, no temp
    file remains anywhere, and the ledger agrees with the outbox."""
    figures = crash_loop(tmp_path, files=scaled(24, 300), kills=scaled(6, 60), target="daemon", seed=11)
    assert figures.problems == {}
    assert figures.audit["outputs"] == figures.files and figures.audit["failed"] == 0
    assert figures.kills_mid_job >= 1, "no kill landed while a job ran: the test proved nothing"


def test_workers_killed_at_random_moments_lose_duplicate_and_half_write_nothing(tmp_path: Path) -> None:
    """While inputs keep arriving, SIGKILL a random worker of a running daemon again and again (as the OOM
    killer would): the daemon survives, retries the lost jobs, and the result audits clean (one output per
    input, identical to a clean run; no temp file left, not even the killed workers' half-written ones)."""
    figures = crash_loop(tmp_path, files=scaled(24, 300), kills=scaled(6, 60), target="worker", seed=12)
    assert figures.problems == {}
    assert figures.audit["outputs"] == figures.files and figures.audit["failed"] == 0
    assert figures.kills_mid_job >= 1, "no kill landed while a job ran: the test proved nothing"


def test_a_worker_killed_while_writing_leaves_no_temp_file_in_the_running_daemons_outbox(tmp_path: Path) -> None:
    """SIGKILL a worker at the moment its temp output appears (mid-write): the daemon deletes that orphan
    temp itself, without waiting for a restart that may be months away, retries the job, and the outbox
    ends with just the complete outputs."""
    layout = make_layout(tmp_path)
    daemon = DaemonProcess(layout.config)
    killed_mid_write: list[str] = []  # temp names present when the workers were killed
    try:
        daemon.wait_ready()
        for attempt in range(3):  # the kill may land just after the rename: then try with another file
            (layout.inbox / f"big{attempt}.png").write_bytes(image_bytes(".png", (1200, 1600), attempt))
            killed_mid_write.append(_kill_workers_mid_write(layout.outbox, daemon.pid))
            daemon.wait_event("file_processed", count=attempt + 1, timeout=90)
            if daemon.events("orphan_temp_removed"):
                break
        assert daemon.events("orphan_temp_removed"), "no kill landed mid-write in three tries\n" + daemon.log_tail()
        outputs = sorted(e.name for e in os.scandir(layout.outbox))
        assert outputs == [f"big{i}.png" for i in range(len(outputs))]  # while the daemon still runs
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
    removed = [Path(e["path"]).name for e in daemon.events("orphan_temp_removed")]
    assert removed and set(removed) <= set(killed_mid_write)


def _kill_workers_mid_write(outbox: Path, daemon_pid: int) -> str:
    """Kill the workers as soon as a temp file shows in `outbox`; return its name.

    Whether the write had finished by then is for the daemon's log to say: it removes a temp it finds
    orphaned at once, sometimes before this process could look again.
    """
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        temps = [e.name for e in os.scandir(outbox) if is_temp_name(e.name)] if outbox.is_dir() else []
        if temps:
            for pid in worker_pids(daemon_pid):
                os.kill(pid, signal.SIGKILL)
            return temps[0]
    raise AssertionError("never saw a temp file in the outbox")


class _ClosedHandleExecutor(Executor):
    """An executor caught mid-breakdown: submit fails as CPython's does when a worker has just died."""

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[override]
        raise OSError("handle is closed")

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass


class _InlineExecutor(Executor):
    def submit(self, fn, /, *args, **kwargs):  # type: ignore[override]
        future: Future[JobResult] = Future()
        future.set_result(JobResult(args[0].source, ok=True))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass


def test_a_submit_racing_a_dying_worker_rebuilds_the_pool_instead_of_killing_the_daemon() -> None:
    """Found by the long worker-kill loop: ProcessPoolExecutor.submit, spawning a replacement for a
    worker that had just been killed, raised OSError('handle is closed') out of the daemon's loop. The
    pool must treat it as a broken executor: rebuild, and run the job on the new one without charging an
    attempt."""
    executors: list[Executor] = [_ClosedHandleExecutor(), _InlineExecutor()]
    started: list[str] = []
    pool = JobPool(1, lambda: executors.pop(0), on_start=started.append)
    pool.submit("a", Job(Path("a.png"), Path("out"), default_profile(), 1))
    outcomes = pool.collect()
    assert [(type(o).__name__, o.token) for o in outcomes] == [("Finished", "a")]
    assert pool.rebuilds == 1 and started == ["a"]


def test_killing_one_worker_also_stops_its_busy_siblings_so_shutdown_never_hangs(tmp_path: Path) -> None:
    """With two jobs running, SIGKILL one worker: the other worker (whose job is lost with the broken
    pool) must die too, at once, rather than finish a job already reported lost while the executor waits
    for it (workers ignore the SIGTERM CPython sends); both files are then processed and SIGTERM stops
    the daemon promptly. Found by a worker-kill loop whose daemon hung on stop."""
    layout = make_layout(tmp_path, workers=2, max_attempts=10)
    with running(layout.config) as daemon:
        for i in range(2):
            (layout.inbox / f"slow{i}.jpg").write_bytes(image_bytes(".jpg", (1500, 2000), i))  # ~2.5 s each
        wait_for(lambda: (s := status_of(layout)) is not None and s["pool"]["running"] == 2, 20, "two jobs")
        workers = worker_pids(daemon.pid)
        assert len(workers) == 2
        time.sleep(0.3)
        os.kill(workers[0], signal.SIGKILL)
        wait_for(lambda: not _alive(workers[1]), 1.5, "the busy sibling to be killed with the broken pool")
        daemon.wait_event("file_processed", count=2, timeout=90)
        started = time.monotonic()
        assert daemon.stop(timeout=20) == 0
        assert time.monotonic() - started < 10


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
