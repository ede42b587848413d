"""A file's recorded outcome, told to whoever listens: the metrics (histograms) and the inbox's hooks.

Published by the loop only after the ledger holds the outcome, so a listener can never change or delay it;
a listener that raises is logged and the others still hear (docs/design.md §9).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from srd.config import Inbox

log = structlog.get_logger(__name__)

# The reason label of failures, from the failure's text: the first class whose words it contains (a label
# per distinct message would give Prometheus a series per file).
_REASON_CLASSES = (
    ("too_large", ("max_input_bytes", "max_input_pixels")),
    ("not_an_image", ("not an image",)),
    ("corrupt", ("corrupt",)),
    ("truncated", ("truncated", "writer never finished")),
    ("crashed", ("deaths pinned",)),
)


def failure_reason(text: str | None) -> str:
    """The coarse class of a failure (too_large, not_an_image, corrupt, truncated, crashed, error)."""
    for name, words in _REASON_CLASSES:
        if text and any(word in text for word in words):
            return name
    return "error"


@dataclass(frozen=True)
class FileOutcome:
    """One file's end: `status` "done" (with its output) or "failed" (with its reason and failed-folder copy)."""

    status: str
    inbox: Inbox
    source: Path
    output: Path | None
    reason: str | None = None
    seconds: float | None = None
    megapixels: float | None = None  # of the input as decoded


Listener = Callable[[FileOutcome], None]


class FileEvents:
    """The listeners to every file's outcome; `publish` never raises."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def publish(self, outcome: FileOutcome) -> None:
        for listener in self._listeners:
            try:
                listener(outcome)
            except Exception:  # a listener's bug must not stop the loop, nor the other listeners
                log.exception("file_outcome_listener_failed", src=str(outcome.source), status=outcome.status)
