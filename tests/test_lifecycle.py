"""The daemon's life cycle under faults of its own processes: a frozen forkserver at shutdown, a job timeout
that takes innocent jobs down with it, a daemon frozen long enough to lose its inbox claims, and two daemons
claiming one inbox at the same instant. Real `srd run` processes, real signals."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from daemon_helpers import DaemonProcess, descendants_of, make_image, wait_for, write_config

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
