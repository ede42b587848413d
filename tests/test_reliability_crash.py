"""Crash loop: SIGKILL the daemon, or its workers, at random moments while files keep arriving.

The short version runs in CI; ``SRD_LONG=1`` (or ``scripts/reliability.py``) runs the long one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon_helpers import ESPCN_X2
from reliability_harness import crash_loop, scaled

pytestmark = pytest.mark.skipif(not ESPCN_X2.is_file(), reason=f"needs the zoo model {ESPCN_X2}")


def test_daemon_killed_at_random_moments_loses_duplicates_and_half_writes_nothing(tmp_path: Path) -> None:
    """While inputs keep arriving, SIGKILL the daemon (workers die with it) at random moments and restart
    it each time; afterwards every input has exactly one output, byte-identical to a clean run's, no temp
    file remains anywhere, and the ledger agrees with the outbox."""
    figures = crash_loop(tmp_path, files=scaled(24, 300), kills=scaled(6, 60), target="daemon", seed=11)
    assert figures.problems == {}
    assert figures.audit["outputs"] == figures.files and figures.audit["failed"] == 0
    assert figures.kills_mid_job >= 1, "no kill landed while a job ran: the test proved nothing"


def test_workers_killed_at_random_moments_lose_duplicate_and_half_write_nothing(tmp_path: Path) -> None:
    """While inputs keep arriving, SIGKILL a random worker of a running daemon again and again (as the OOM
    killer would): the daemon survives, retries the lost jobs, and the result audits clean (one output per
    input, identical to a clean run; no temp file left, not even the killed workers' half-written ones)."""
    figures = crash_loop(tmp_path, files=scaled(24, 300), kills=scaled(6, 60), target="worker", seed=12)
    assert figures.problems == {}
    assert figures.audit["outputs"] == figures.files and figures.audit["failed"] == 0
    assert figures.kills_mid_job >= 1, "no kill landed while a job ran: the test proved nothing"
