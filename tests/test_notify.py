"""Tests for srd.daemon.notify: real datagrams reach a real socket, and nothing happens outside systemd."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from srd.daemon.notify import Notifier


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A datagram socket bound to a file, as systemd provides it."""
    address = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    yield address, sock
    sock.close()


@pytest.fixture
def abstract_socket() -> Iterator[tuple[str, socket.socket]]:
    """A datagram socket in the abstract namespace, named with a leading '@' as in $NOTIFY_SOCKET."""
    name = f"srd-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    yield "@" + name, sock
    sock.close()


def _receive(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.split("\n"))


def _all_received(sock: socket.socket, quiet_s: float) -> list[dict[str, str]]:
    """Every datagram waiting, and those that come until the socket has been quiet for `quiet_s`."""
    sock.settimeout(quiet_s)
    received = []
    with contextlib.suppress(TimeoutError):
        while True:
            received.append(_receive(sock))
    return received


@pytest.mark.parametrize("which", ["path_socket", "abstract_socket"])
def test_messages_reach_the_socket(which: str, request: pytest.FixtureRequest) -> None:
    """READY, STATUS, WATCHDOG, STOPPING and RELOADING+MONOTONIC_USEC arrive as one datagram each."""
    address, sock = request.getfixturevalue(which)
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address})
    assert notifier.enabled

    assert notifier.ready("watching 2 inboxes")
    assert _receive(sock) == {"READY": "1", "STATUS": "watching 2 inboxes"}
    assert notifier.status("3 queued\n1 failed")
    assert _receive(sock) == {"STATUS": "3 queued 1 failed"}
    assert notifier.watchdog()
    assert _receive(sock) == {"WATCHDOG": "1"}
    assert notifier.stopping()
    assert _receive(sock) == {"STOPPING": "1"}

    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    message = _receive(sock)
    assert message["RELOADING"] == "1"
    assert before <= int(message["MONOTONIC_USEC"]) <= after
    notifier.close()


def test_send_raw_passes_the_message_through(path_socket: tuple[str, socket.socket]) -> None:
    """send_raw is the escape hatch for assignments the helpers don't cover."""
    address, sock = path_socket
    notifier = Notifier(address)
    assert notifier.send_raw("EXTEND_TIMEOUT_USEC=5000000")
    assert sock.recv(4096) == b"EXTEND_TIMEOUT_USEC=5000000"


def test_without_notify_socket_everything_is_a_no_op() -> None:
    """Outside systemd the daemon calls the same methods; they do nothing and report it."""
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert notifier.ready("x") is False
    assert notifier.watchdog() is False
    assert notifier.watchdog_interval_s() is None


def test_send_failure_is_logged_once_not_raised(tmp_path: Path) -> None:
    """A missing socket must not crash the daemon or flood the log: one warning per outage, then recovery."""
    address = str(tmp_path / "late.sock")
    notifier = Notifier(address)
    with capture_logs() as logs:
        assert notifier.ready() is False
        assert notifier.watchdog() is False
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(address)
        try:
            assert notifier.watchdog() is True
        finally:
            sock.close()
    assert [entry["event"] for entry in logs] == ["sd_notify_failed", "sd_notify_recovered"]


def test_watchdog_interval_is_half_the_timeout() -> None:
    """systemd recommends pinging at half of WATCHDOG_USEC."""
    notifier = Notifier.from_env({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "30000000"})
    assert notifier.watchdog_interval_s() == 15.0


def test_watchdog_meant_for_another_process_is_ignored() -> None:
    """WATCHDOG_PID naming another process means the timeout isn't ours to honour."""
    other = Notifier.from_env({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)})
    ours = Notifier.from_env({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())})
    assert other.watchdog_interval_s() is None
    assert ours.watchdog_interval_s() == 15.0


@pytest.mark.parametrize("value", ["", "0", "-5", "soon"])
def test_invalid_watchdog_usec_disables_the_watchdog(value: str) -> None:
    """A malformed or non-positive WATCHDOG_USEC is treated as no watchdog rather than crashing startup."""
    assert Notifier.from_env({"WATCHDOG_USEC": value}).watchdog_interval_s() is None


def test_a_slow_start_step_keeps_asking_for_more_time_until_it_ends(
        path_socket: tuple[str, socket.socket]) -> None:
    """Opening a big ledger can take longer than systemd's start timeout: while it runs, srd asks for more time
    (three intervals' worth, at each interval) with a status line; after it, nothing more is sent."""
    address, sock = path_socket
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address})
    with notifier.slow_start_step("opening the ledger", every_s=0.2):
        time.sleep(0.7)
    received = _all_received(sock, quiet_s=0.5)
    assert 3 <= len(received) <= 5
    assert {message["EXTEND_TIMEOUT_USEC"] for message in received} == {"600000"}
    assert received[0]["STATUS"] == "opening the ledger (0 s)"
    assert all(message["STATUS"].startswith("opening the ledger (") for message in received)


def test_a_slow_start_step_stops_asking_after_its_limit(path_socket: tuple[str, socket.socket]) -> None:
    """A step that hangs must still end in systemd's start timeout: the requests stop after the limit."""
    address, sock = path_socket
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address})
    with notifier.slow_start_step("opening the ledger", every_s=0.1, limit_s=0.25):
        time.sleep(0.8)
    received = _all_received(sock, quiet_s=0.3)
    assert 2 <= len(received) <= 4


def test_a_slow_start_step_stops_asking_once_a_stop_is_asked_for(path_socket: tuple[str, socket.socket]) -> None:
    """systemd applies a time extension to a stop as well: after SIGTERM, srd must not keep a `systemctl stop`
    waiting for the rest of a migration."""
    address, sock = path_socket
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address})
    stop = threading.Event()
    with notifier.slow_start_step("opening the ledger", stop_asked=stop.is_set, every_s=0.1):
        time.sleep(0.35)
        stop.set()
        time.sleep(0.5)
    received = _all_received(sock, quiet_s=0.3)
    assert 3 <= len(received) <= 5, received  # about 0.35 s of requests, none in the 0.5 s after the stop
