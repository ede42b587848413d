"""The daemon's signals: SIGTERM/SIGINT drain and exit, SIGHUP reloads. Handlers only set flags, which the
loop reads at least every `loop.MAX_SLEEP_S` (docs/design.md §2, §9)."""

from __future__ import annotations

import signal
from types import FrameType


class Signals:
    """The flags the handlers set. Installed before the daemon starts, so a SIGTERM during start-up is kept."""

    def __init__(self) -> None:
        self.stop: int | None = None  # the stop signal's number, once one arrived
        self.reload = False

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop = signum

    def _on_reload(self, signum: int, frame: FrameType | None) -> None:
        self.reload = True

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)
