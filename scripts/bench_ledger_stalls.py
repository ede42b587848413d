"""Where the loop's slow calls come from while the ledger compacts: per call type and per step of the swap.

Runs the loop of `bench_ledger.py` (2,000 × record_start, get, cached_hash, outputs_of, record_done with
``compact_after: 500``, so that compactions run throughout) on a copy of a ledger already in the current
format, and times each call that starts, runs during or ends a compaction; and, inside them, the loop's
fsyncs, the start of a compaction and its end (`_finish_compaction`, of which `_shorten_journal` is part).
The calls made while no compaction runs are the baseline ("all calls, no compaction running").
Make the ledger once with ``bench_ledger.py``'s snapshot and one ``Ledger.open`` (which migrates it).

Example::

    python scripts/bench_ledger_stalls.py --state /tmp/ledger-1m --entries 1000000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from srd.fs.fileversion import FileVersion
from srd.ledger import Ledger, make_key
from srd.ledger.store import Store
from srd.logs import configure_logging

FINGERPRINT = "0123456789abcdef"  # as bench_ledger.py writes it
# The baseline, from the same run: every call made while no compaction was under way.
IDLE = "  all calls, no compaction running"


class Timings:
    """Durations by name, and the ledger whose compaction state tags the loop's fsyncs."""

    def __init__(self) -> None:
        self.seconds: dict[str, list[float]] = defaultdict(list)
        self.ledger: Ledger | None = None

    def instrument(self) -> None:
        """Time the loop's fsyncs and the compaction steps of `Store` (this process only)."""
        real_fsync, loop = os.fsync, threading.main_thread()

        def fsync(fd: Any) -> None:
            started = time.perf_counter()
            real_fsync(fd)
            if threading.current_thread() is loop:
                busy = self.ledger is not None and self.ledger.compacting
                self.seconds[f"  fsync on the loop ({'compacting' if busy else 'idle'})"].append(
                    time.perf_counter() - started)

        os.fsync = fsync
        for name in ("_start_compaction", "_finish_compaction", "_shorten_journal"):
            setattr(Store, name, self._timed(name, getattr(Store, name)))

    def _timed(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def timed(store: Store, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return method(store, *args, **kwargs)
            finally:
                self.seconds[f"  {name}"].append(time.perf_counter() - started)
        return timed

    def summary(self) -> dict[str, dict[str, float]]:
        calls = sorted(d for name, ds in self.seconds.items() if not name.startswith(" ") for d in ds)
        return {name: _stats(ds) for name, ds in sorted({**self.seconds, "all calls": calls}.items())}


def _stats(durations: list[float]) -> dict[str, float]:
    ordered = sorted(durations)
    return {"n": len(ordered), "max_ms": round(1000 * ordered[-1], 1),
            "p99_ms": round(1000 * ordered[int(len(ordered) * 0.99)], 1),
            "over_50ms": sum(d > 0.05 for d in ordered)}


def calls_of(ledger: Ledger, i: int, entries: int) -> list[tuple[str, Callable[[], object]]]:
    """The loop's calls of round `i`, by name."""
    sha = hashlib.sha256(f"new-{i}".encode()).hexdigest()
    old = hashlib.sha256(f"photo-{i * 397 % entries}".encode()).hexdigest()
    return [
        ("record_start", lambda: ledger.record_start(sha, FINGERPRINT, inbox="bench", source=f"new/{i}.jpg")),
        ("get", lambda: ledger.get(make_key(old, FINGERPRINT))),
        ("cached_hash", lambda: ledger.cached_hash("bench", f"new/{i}.jpg", FileVersion(1, 2, 3, 4))),
        ("outputs_of", lambda: ledger.outputs_of("bench", f"new/{i}.jpg")),
        ("record_done", lambda: ledger.record_done(make_key(sha, FINGERPRINT), output=Path(f"/o/{i}.jpg"),
                                                   output_size=1)),
    ]


def run_loop(state: Path, entries: int, rounds: int, timings: Timings) -> None:
    ledger = Ledger.open(state, compact_after=500)
    timings.ledger = ledger
    for i in range(rounds):
        for name, call in calls_of(ledger, i, entries):
            before = ledger.compacting
            started = time.perf_counter()
            call()
            took = time.perf_counter() - started
            if before or ledger.compacting:  # the call that takes a finished compaction counts too
                timings.seconds[name].append(took)
            else:
                timings.seconds[IDLE].append(took)
    ledger.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--state", type=Path, required=True, help="a ledger in the current format (copied)")
    parser.add_argument("--entries", type=int, required=True, help="how many entries bench_ledger.py wrote")
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args()
    configure_logging("warning", "json")
    timings = Timings()
    timings.instrument()
    with tempfile.TemporaryDirectory(prefix="srd-bench-stalls-", dir=args.state.parent) as tmp:
        state = Path(tmp) / "state"
        shutil.copytree(args.state, state)
        os.sync()  # the copy's gigabyte written out now, not under the first compaction's writes
        run_loop(state, args.entries, args.rounds, timings)
    print(json.dumps(timings.summary(), indent=1))


if __name__ == "__main__":
    main()
