"""Load: a large batch dropped into the inbox at once."""

from __future__ import annotations

from pathlib import Path

import pytest
from reliability_harness import load_run, scaled

# End to end: each test runs a real srd daemon (srd run) on real folders.
pytestmark = pytest.mark.e2e

# The daemon holds per-file state (settle entries, ledger records, stat cache) but never the images:
# a few hundred bytes per file on top of the interpreter and OpenCV (~150 MiB measured).
DAEMON_RSS_BOUND_MIB = 300
WORKER_RSS_BOUND_MIB = 400


def test_a_batch_dropped_at_once_is_processed_completely_in_bounded_memory(tmp_path: Path) -> None:
    """A folder of many files renamed into the inbox in one go: every file gets its output (a sample
    byte-identical to a clean run), none lost or doubled, the ledger agrees, and neither the daemon nor a
    worker grows beyond a fixed bound (the pool's intake is bounded; images are never queued in memory)."""
    figures = load_run(tmp_path, files=scaled(300, 2000))
    assert figures.problems == {}
    assert figures.audit["outputs"] == figures.files
    assert 0 < figures.peak_daemon_rss_mib < DAEMON_RSS_BOUND_MIB, figures  # 0 would mean /proc wasn't read
    assert 0 < figures.peak_process_rss_mib < WORKER_RSS_BOUND_MIB, figures
