"""Disk full: the outbox lives on a small tmpfs that fills up (mounted by the test; CI runs as root)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from daemon_helpers import DaemonProcess, OutboxWatcher, files_under, wait_for
from reliability_harness import (
    audit,
    image_bytes,
    make_layout,
    record_figures,
    reference_outputs,
    status_of,
    tmpfs,
)

# End to end: each test runs a real srd daemon (srd run) on real folders.
pytestmark = pytest.mark.e2e


def test_a_full_outbox_keeps_inputs_never_shows_partial_output_and_resumes_by_itself(tmp_path: Path) -> None:
    """The outbox filesystem fills up mid-batch: no truncated output ever appears (a reader polling the
    outbox sees only complete images), every input stays in the inbox (none is sent to the failed
    folder), status reports the outbox as unwritable with the reason, and when space returns the daemon
    finishes the batch by itself with outputs identical to a clean run's."""
    with tmpfs(tmp_path / "small", "4m") as small:
        layout = make_layout(tmp_path, inbox={"outbox": str(small / "out"), "settle_seconds": 0.2})
        inputs = {f"photo{i:02d}.png": image_bytes(".png", (120, 160), i) for i in range(12)}
        expected = reference_outputs(layout, inputs)
        per_output = max(len(b) for b in expected.values())
        filler = small / "filler"
        with filler.open("wb") as fh:  # leave room for about three outputs
            fh.truncate(0)
            free = os.statvfs(small).f_bavail * os.statvfs(small).f_frsize
            fh.write(b"\0" * (free - 3 * per_output - per_output // 2))
        outbox = layout.outbox
        reader = OutboxWatcher(outbox, set(inputs))
        daemon = DaemonProcess(layout.config)
        try:
            daemon.wait_ready()
            for name, data in inputs.items():
                (layout.inbox / name).write_bytes(data)
            daemon.wait_event("outbox_unwritable_paused", timeout=30)
            status = wait_for(lambda: (s := status_of(layout)) and s["inboxes"][0]["outbox_state"]["state"]
                              == "unwritable" and s, 10, "status to report the full outbox")
            inbox_status = status["inboxes"][0]
            assert inbox_status["health"] == "unhealthy"
            assert "No space left on device" in inbox_status["outbox_state"]["error"]
            written = set(files_under(outbox))
            assert 0 < len(written) < len(inputs)
            assert all((layout.inbox / name).exists() for name in inputs)
            assert files_under(layout.failed) == {}
            filler.unlink()  # space returns
            daemon.wait_event("outbox_writable_resumed", timeout=15)
            wait_for(lambda: set(files_under(outbox)) == set(inputs), 30, "the rest of the batch\n" + daemon.log_tail())
            wait_for(lambda: (s := status_of(layout)) and s["inboxes"][0]["outbox_state"]["state"] == "ok", 10,
                     "status to report the outbox as ok again")
            assert daemon.stop() == 0
        finally:
            problems = reader.stop()
            if daemon.proc.poll() is None:
                daemon.proc.kill()
        assert problems == []
        assert all((layout.inbox / name).read_bytes() == data for name, data in inputs.items())
        result = audit(layout, expected)
        assert result.problems == {}, result.problems
        assert daemon.events("file_failed") == []
        record_figures("disk_full", written_before_full=len(written), waited_for_space=len(inputs) - len(written),
                       partial_outputs_seen=len(problems), **result.figures())
