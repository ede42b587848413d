"""The daemon's life cycle under faults of its own processes: a frozen forkserver at shutdown, a job timeout
that takes innocent jobs down with it, a daemon frozen long enough to lose its inbox claims, and two daemons
claiming one inbox at the same instant. Real `srd run` processes, real signals."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from daemon_helpers import DaemonProcess, decoded_size, descendants_of, make_image, read_status, wait_for, write_config

from srd.atomic import TEMP_PREFIX

SIZE = (24, 32)


def _children(pid: int) -> list[int]:
    return [child for child in descendants_of(pid) if _parent(child) == pid]


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _forkserver_of(daemon_pid: int) -> int | None:
    for child in _children(daemon_pid):
        with contextlib.suppress(OSError):
            if b"multiprocessing.forkserver" in Path(f"/proc/{child}/cmdline").read_bytes():
                return child
    return None


def test_sigterm_exits_within_the_drain_bound_while_the_forkserver_is_frozen(tmp_path: Path) -> None:
    """A forkserver that stops answering (SIGSTOP) never reports its workers' deaths, and shutting the pool
    down waited for them forever. SIGTERM must still end the daemon soon after the drain bound, with exit 0,
    killing the frozen forkserver and saying so."""
    config = write_config(tmp_path)
    daemon = DaemonProcess(config, drain_timeout=3)
    forkserver = None
    try:
        daemon.wait_ready()
        (tmp_path / "in" / "a.png").write_bytes(make_image(Path("x.png"), SIZE, 1))
        daemon.wait_event("file_processed", timeout=30)
        forkserver = wait_for(lambda: _forkserver_of(daemon.pid), 10, "the daemon's forkserver")
        os.kill(forkserver, signal.SIGSTOP)
        began = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        code = daemon.proc.wait(timeout=3 + 20)  # drain bound + the pool's close grace + a loaded machine
        took = time.monotonic() - began
        daemon._reader.join(timeout=5)
        assert code == 0, daemon.log_tail()
        assert took < 3 + 20
        killed = daemon.events("pool_close_stuck_killing_forkserver")
        assert killed and killed[0]["forkserver"] == forkserver, daemon.log_tail()
        assert daemon.events("daemon_stopped")
    finally:
        if forkserver is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(forkserver, signal.SIGCONT)
        if daemon.proc.poll() is None:
            daemon.proc.kill()


def _workers_of(daemon_pid: int) -> list[int]:
    forkserver = _forkserver_of(daemon_pid)
    return _children(forkserver) if forkserver is not None else []


def _running(state: Path) -> set[str]:
    inboxes = read_status(state).get("inboxes") or []
    return {job["source"] for inbox in inboxes for job in inbox.get("running", [])}


def test_jobs_killed_with_a_timed_out_one_lose_their_temps_at_once_and_are_retried_uncharged(tmp_path: Path) -> None:
    """One job past its time limit kills the whole executor. A job that shared it (its worker killed too,
    halfway through writing its output) must not leave its temp in the outbox until the next restart: it is
    cleaned up at once, retried (not alone) without a strike, and completes; nothing is failed."""
    config = write_config(tmp_path, workers=2, job_timeout_min_seconds=6)
    inbox, outbox, state = tmp_path / "in", tmp_path / "in-out", tmp_path / "state"
    daemon = DaemonProcess(config)
    stopped: list[int] = []
    try:
        daemon.wait_ready()
        for n in (1, 2):  # two jobs at once: the executor starts both its workers
            (inbox / f"warm{n}.png").write_bytes(make_image(Path("x.png"), SIZE, n))
        daemon.wait_event("file_processed", timeout=30, count=2)
        stopped = wait_for(lambda: len(_workers_of(daemon.pid)) == 2 and _workers_of(daemon.pid), 10,
                           "two worker processes")
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        (inbox / "stuck.png").write_bytes(make_image(Path("x.png"), SIZE, 3))
        wait_for(lambda: "stuck.png" in _running(state), 20, "stuck.png running\n" + daemon.log_tail())
        (inbox / "innocent.png").write_bytes(make_image(Path("x.png"), SIZE, 4))
        wait_for(lambda: "innocent.png" in _running(state), 20, "innocent.png running\n" + daemon.log_tail())
        half_written = outbox / f"{TEMP_PREFIX}innocent.png.0123456789ab"  # what its frozen worker had written
        half_written.write_bytes(b"\x89PNG half")

        timed_out = daemon.wait_event("job_timed_out", timeout=30)
        assert [event["src"] for event in timed_out] == [str(inbox / "stuck.png")]
        wait_for(lambda: not half_written.exists(), 10, "the innocent job's temp to be removed\n" + daemon.log_tail())
        retried = {event["src"]: event for event in daemon.wait_event("job_lost_retrying", timeout=10, count=2)}
        innocent = retried[str(inbox / "innocent.png")]
        assert innocent["pinned"] is False and innocent["strikes"] == 0, innocent
        assert retried[str(inbox / "stuck.png")]["pinned"] is True
        wait_for(lambda: (outbox / "innocent.png").exists() and (outbox / "stuck.png").exists(), 30,
                 "both outputs\n" + daemon.log_tail())
        assert decoded_size(outbox / "innocent.png") == (2 * SIZE[0], 2 * SIZE[1])
        started = [e for e in daemon.events("file_started") if e["src"] == str(inbox / "innocent.png")]
        assert [e["solo"] for e in started] == [False, False]  # its retry did not have to run alone
        assert not (tmp_path / "in-failed").exists() or not any((tmp_path / "in-failed").iterdir())
        assert daemon.stop() == 0
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        if daemon.proc.poll() is None:
            daemon.proc.kill()
