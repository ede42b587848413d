"""Benchmark `srd ledger check` on a compacted ledger of N done entries, against a read-only open of the same
ledger (what `srd ledger list` starts with), in interleaved rounds: check reads every record line of the
generation against its index, the open reads only the index.

Example::

    python scripts/bench_check.py --entries 100000 --rounds 3
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from srd.ledger import JOURNAL_NAME, Ledger, check_ledger, make_key
from srd.ledger.files import journal_line
from srd.ledger.records import Row, stored_record
from srd.logs import configure_logging


def write_ledger(state_dir: Path, entries: int) -> None:
    """A journal of `entries` done entries, written at once, then compacted into a generation."""
    state_dir.mkdir()
    now = time.time()
    with (state_dir / JOURNAL_NAME).open("wb") as journal:
        for i in range(entries):
            key = make_key(f"{i:064x}", "0123456789abcdef")
            row = Row("photos", f"photos/{i:07d}.jpg", "done", 1, now, now, f"/srv/outbox/photos/{i:07d}.png", i,
                      None, None, None, 0, False)
            journal.write(journal_line({"seq": i + 1, "op": "put", "entry": stored_record(key, row)}))
    with Ledger.open(state_dir) as ledger:
        ledger.compact()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    configure_logging("warning", "json")
    with tempfile.TemporaryDirectory() as tmp:
        state_dir = Path(tmp) / "state"
        write_ledger(state_dir, args.entries)
        timings: dict[str, list[float]] = {"check": [], "open read-only": []}
        for _ in range(args.rounds):
            started = time.perf_counter()
            report = check_ledger(state_dir)
            timings["check"].append(time.perf_counter() - started)
            assert not report.problems, report.problems
            started = time.perf_counter()
            Ledger.open(state_dir, read_only=True).close()
            timings["open read-only"].append(time.perf_counter() - started)
        for what, seconds in timings.items():
            print(f"{what:>15}: {args.entries} entries, best {min(seconds):.3f} s, "
                  f"rounds {', '.join(f'{s:.3f}' for s in seconds)}")


if __name__ == "__main__":
    main()
