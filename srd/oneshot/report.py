"""What a one-shot run tells its user: failures as they happen, progress with rate and ETA, a summary.

Three audiences: a person at a terminal (a redrawn progress line), a log or CI (a progress line every
`NON_TTY_EVERY_S` seconds), and a script (``--json``: one JSON object per file on stdout). ``--quiet``
keeps only the failure lines and the summary; otherwise what an output leaves out of its source (frames,
transparency, metadata) is said in a note line.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from srd.executors.job import JobResult
from srd.terminal import printable

NON_TTY_EVERY_S = 30.0
_REDRAW_EVERY_S = 0.2
_BAR = 20


@dataclass(frozen=True)
class ReportOptions:
    quiet: bool = False
    json: bool = False


class Reporter:
    """Collects results and shows them as `options` ask.

    Args:
        total: Files in the run (skipped ones included).
        options: ``--quiet`` / ``--json``.
        err: Where people read (stderr).
        out: Where scripts read (stdout, ``--json`` only).
        clock: Monotonic clock.
    """

    def __init__(self, total: int, options: ReportOptions, *, err: TextIO | None = None, out: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total = total
        self.options = options
        self._err = err or sys.stderr
        self._out = out or sys.stdout
        self._clock = clock
        self._tty = self._err.isatty()
        self._started = clock()
        # Off a terminal the first line comes after a while, not at the start.
        self._last_drawn = float("-inf") if self._tty else self._started
        self._line_shown = False
        self._current = ""
        self.processed = 0
        self.failed = 0
        self.unchanged = 0  # inputs that are srd's own outputs, left as they are

    @property
    def done(self) -> int:
        return self.processed + self.failed + self.unchanged

    def starting(self, source: Path) -> None:
        """A worker took `source`."""
        self._current = source.name
        self.tick()

    def result(self, result: JobResult, input_bytes: int | None = None) -> None:
        """One file is finished, written or failed; `input_bytes` is its size before the run."""
        if result.ok:
            self.processed += 1
            if result.losses and not self.options.quiet:
                self._clear_line()
                for loss in result.losses:
                    print(f"srd: note: {printable(str(result.source))}: {printable(loss)}", file=self._err, flush=True)
        else:
            self.failed += 1
            self._clear_line()
            print(f"srd: failed: {printable(str(result.source))}: {printable(result.error or '')}", file=self._err,
                  flush=True)
        if self.options.json:
            print(json.dumps(_as_record(result, input_bytes)), file=self._out, flush=True)
        self.tick()

    def left_unchanged(self, source: Path, reason: str) -> None:
        """An input srd leaves as it is (its own output): counted in the summary, not a failure, one line only
        with ``--json`` (a rerun over a finished folder would otherwise print a line per file)."""
        self.unchanged += 1
        if self.options.json:
            record = _as_record(JobResult(source, False, error=reason), None) | {"status": "skipped"}
            print(json.dumps(record), file=self._out, flush=True)
        self.tick()

    def tick(self) -> None:
        """Show progress if it is due (called on every event and while waiting)."""
        if self.options.quiet or self.total == 0:
            return
        now = self._clock()
        if now - self._last_drawn < (_REDRAW_EVERY_S if self._tty else NON_TTY_EVERY_S):
            return
        self._last_drawn = now
        if self._tty:
            filled = _BAR * self.done // self.total
            line = f"[{'#' * filled}{'.' * (_BAR - filled)}] {self._progress_text(now)}  {self._current[:30]}"
            self._err.write("\r\x1b[K" + line)
            self._line_shown = True
        else:
            self._err.write(f"srd: {self._progress_text(now)}\n")
        self._err.flush()

    def _progress_text(self, now: float) -> str:
        elapsed = now - self._started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        if self.done == 0 or rate == 0:
            return f"{self.done}/{self.total}  -- files/s  ETA --"
        eta = (self.total - self.done) / rate
        return f"{self.done}/{self.total}  {_rate_text(rate)}  ETA {_duration(eta)}"

    def _clear_line(self) -> None:
        if self._line_shown:
            self._err.write("\r\x1b[K")
            self._line_shown = False

    def summary(self) -> None:
        """The closing line, always shown (``--quiet`` included)."""
        self._clear_line()
        elapsed = self._clock() - self._started
        rate = f", {_rate_text(self.done / elapsed)}" if elapsed > 0 and self.done else ""
        # Inputs left when the run stopped early (srd couldn't run, Ctrl-C) are counted, never left out.
        left = f", {self.total - self.done} not processed" if self.done < self.total else ""
        unchanged = (f", {self.unchanged} skipped (already srd's outputs; --reprocess to upscale them again)"
                     if self.unchanged else "")
        print(f"srd: {self.processed} processed, {self.failed} failed{unchanged}{left} in {_duration(elapsed)}{rate}",
              file=self._err, flush=True)


def _rate_text(per_second: float) -> str:
    return f"{per_second:.2f} files/s" if per_second >= 0.1 else f"{1 / per_second:.0f} s/file"


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _as_record(result: JobResult, input_bytes: int | None) -> dict[str, object]:
    return {
        "source": str(result.source),
        "output": None if result.output is None else str(result.output),
        "status": "ok" if result.ok else "failed",
        "reason": result.error,
        "ms": result.milliseconds,
        "input_size": result.input_size,
        "output_size": result.output_size,
        "input_bytes": input_bytes,
        "output_bytes": _size_of(result.output) if result.output is not None else None,
        "losses": list(result.losses),
    }


def _size_of(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None
