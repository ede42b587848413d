"""systemd service notifications (sd_notify) without a dependency (docs/design.md §9).

The protocol is one datagram of ``KEY=value`` lines to the AF_UNIX socket named by ``$NOTIFY_SOCKET``; a
leading ``@`` names a socket in the abstract namespace. Outside systemd the variable is unset and every call
is a no-op, so the daemon calls these unconditionally.

Notifications are advisory: a failed send must never take the daemon down, so errors are logged (once per
run of failures) and reported as a False return value.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping

import structlog

log = structlog.get_logger(__name__)


class Notifier:
    """Sends state changes to the service manager.

    Args:
        address: Value of ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace); None disables.
        watchdog_usec: Value of ``$WATCHDOG_USEC`` if the watchdog is enabled for this process, else None.
    """

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self._address = _socket_address(address) if address else None
        self._watchdog_usec = watchdog_usec
        self._socket: socket.socket | None = None
        self._failing = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """Build a notifier from systemd's environment variables.

        ``$WATCHDOG_USEC`` is ignored when ``$WATCHDOG_PID`` names another process (it was meant for a parent
        that exec'd us without clearing it), and when it isn't a positive integer.
        """
        env = os.environ if environ is None else environ
        usec: int | None = None
        pid = env.get("WATCHDOG_PID")
        if pid is None or pid == str(os.getpid()):
            try:
                usec = int(env.get("WATCHDOG_USEC", ""))
            except ValueError:
                usec = None
            if usec is not None and usec <= 0:
                usec = None
        return cls(env.get("NOTIFY_SOCKET") or None, usec)

    @property
    def enabled(self) -> bool:
        """Whether a notification socket is configured."""
        return self._address is not None

    def watchdog_interval_s(self) -> float | None:
        """Return how often to call `watchdog` (half the timeout, as systemd recommends), or None if off."""
        return None if self._watchdog_usec is None else self._watchdog_usec / 2_000_000

    def send(self, **fields: object) -> bool:
        """Send ``KEY=value`` assignments in one datagram; keys are upper-cased (``status=`` → ``STATUS=``).

        Newlines in values are replaced by spaces, since each line is one assignment.

        Returns:
            True if the datagram was sent; False when disabled or the send failed.
        """
        return self.send_raw("\n".join(_assignment(key, value) for key, value in fields.items()))

    def send_raw(self, message: str) -> bool:
        """Send `message` as is; see `send` for the return value."""
        if self._address is None:
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.sendto(message.encode(), self._address)
        except OSError as exc:
            if not self._failing:
                log.warning("sd_notify_failed", socket=_display(self._address), error=str(exc))
                self._failing = True
            return False
        if self._failing:
            log.info("sd_notify_recovered", socket=_display(self._address))
            self._failing = False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Tell systemd that startup (or a reload) is complete, optionally with a status line."""
        return self.send(READY=1) if status is None else self.send(READY=1, STATUS=status)

    def status(self, text: str) -> bool:
        """Set the free-form status line shown by ``systemctl status``."""
        return self.send(STATUS=text)

    def watchdog(self) -> bool:
        """Keep the watchdog alive; call only while the loop, observers and pool are healthy."""
        return self.send(WATCHDOG=1)

    def stopping(self) -> bool:
        """Tell systemd that shutdown has begun (draining may take a while)."""
        return self.send(STOPPING=1)

    def reloading(self) -> bool:
        """Tell systemd that a reload has begun; `ready` ends it.

        ``MONOTONIC_USEC`` is required with ``Type=notify-reload`` so that systemd can tell this reload from
        an earlier one; it must come from CLOCK_MONOTONIC, which ``time.monotonic`` does not promise.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send(RELOADING=1, MONOTONIC_USEC=usec)

    @contextlib.contextmanager
    def slow_start_step(self, what: str, *, stop_asked: Callable[[], bool] = lambda: False, every_s: float = 10.0,
                        limit_s: float = 3600.0) -> Iterator[None]:
        """Keep systemd from killing a start-up step that takes longer than ``TimeoutStartSec`` (90 s by default).

        While the block runs, a thread asks every `every_s` seconds for three times that much more time
        (``EXTEND_TIMEOUT_USEC``) and shows `what` with the seconds it has taken as the status line. Opening a
        ledger of a million photos written by an older srd migrates it once (one to two minutes); without this,
        systemd killed that start, and every restart began the migration again. It stops asking once
        `stop_asked()` (systemd applies the extension to a stop as well, which would then wait for the step) and
        after `limit_s`, so a step that hangs still ends in systemd's timeout.
        """
        if self._address is None:
            yield
            return
        done = threading.Event()

        def extend() -> None:
            started = time.monotonic()
            while time.monotonic() - started < limit_s and not stop_asked():
                self.send(EXTEND_TIMEOUT_USEC=int(3 * every_s * 1_000_000),
                          STATUS=f"{what} ({time.monotonic() - started:.0f} s)")
                if done.wait(every_s):
                    return

        thread = threading.Thread(target=extend, name="srd-start-timeout", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def close(self) -> None:
        """Close the socket; a later send opens a new one."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _assignment(key: str, value: object) -> str:
    text = str(value).replace("\n", " ")
    return f"{key.upper()}={text}"


def _socket_address(value: str) -> str:
    return "\0" + value[1:] if value.startswith("@") else value


def _display(address: str) -> str:
    return "@" + address[1:] if address.startswith("\0") else address
