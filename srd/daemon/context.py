"""What every part of the running daemon shares: the config, the ledger, the inboxes at work, the clock.

Only the loop's thread uses it, so it needs no lock. A reload replaces `config` and `runtimes` in place,
so every part sees the new ones at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from srd.config import Config
from srd.daemon.fileevents import FileEvents
from srd.daemon.inboxes import Counters, InboxRuntime
from srd.daemon.offload import Offloader
from srd.daemon.signals import Signals
from srd.daemon.sourcefile import SourceFile
from srd.ledger import Ledger


@dataclass(eq=False)
class Context:
    config: Config
    ledger: Ledger
    offload: Offloader
    clock: Callable[[], float]
    runtimes: dict[str, InboxRuntime]
    counters: dict[str, Counters] = field(default_factory=dict)
    signals: Signals = field(default_factory=Signals)
    started: float = 0.0  # the clock when this daemon started
    events: FileEvents = field(default_factory=FileEvents)  # each file's outcome, once the ledger holds it

    def remember(self, file: SourceFile) -> None:
        """This version of the file is decided: no second look until it changes."""
        runtime = self.runtimes.get(file.inbox_id)
        if runtime is not None:
            runtime.handled[file.path] = file.version

    def unremember(self, inbox_key: str, path: Path) -> None:
        runtime = self.runtimes.get(inbox_key)
        if runtime is not None:
            runtime.handled.pop(path, None)

    def hint(self, inbox_key: str, path: Path) -> None:
        """Let the file settle again (without forgetting it was decided: an unchanged version stays so)."""
        runtime = self.runtimes.get(inbox_key)
        if runtime is not None:
            runtime.tracker.hint(path)

    def rehint(self, inbox_key: str, path: Path) -> None:
        """Judge the file afresh once it settles again."""
        self.unremember(inbox_key, path)
        self.hint(inbox_key, path)

    def forget_source(self, inbox_key: str, root: Path, path: Path) -> None:
        """Drop a file that left the inbox from the ledger's stat cache, which would otherwise only grow."""
        self.ledger.forget_hash(inbox_key, PurePosixPath(path.relative_to(root).as_posix()))

    def note_error(self, inbox_key: str, path: Path, reason: str) -> None:
        self.counters[inbox_key].last_error = {
            "time": datetime.now(UTC).isoformat(timespec="seconds"), "source": str(path), "reason": reason,
        }
