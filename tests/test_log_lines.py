"""The daemon's log as a person reads it: a start line per file, the inbox on every per-file line, and no
repeated lines at each restart for duplicates kept from an earlier run (a real `srd run`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from daemon_helpers import DaemonProcess, inbox_config, make_image, wait_for, write_config

# End to end: each test runs a real srd daemon (srd run) on real folders.
pytestmark = pytest.mark.e2e

SIZE = (24, 32)


def test_each_file_has_a_start_line_and_every_line_about_a_file_names_its_inbox(tmp_path: Path) -> None:
    config = write_config(tmp_path, [inbox_config(tmp_path, "a"), inbox_config(tmp_path, "b")])
    (tmp_path / "a" / "one.png").write_bytes(make_image(Path("one.png"), SIZE, 1))
    (tmp_path / "b" / "two.png").write_bytes(make_image(Path("two.png"), SIZE, 2))
    (tmp_path / "b" / "bad.png").write_bytes(b"not a picture")
    daemon = DaemonProcess(config)
    try:
        daemon.wait_event("file_processed", timeout=60, count=2)
        daemon.wait_event("file_failed", timeout=60)
    finally:
        assert daemon.stop() == 0
    started = {record["src"]: record for record in daemon.events("file_started")}
    assert set(started) >= {str(tmp_path / "a" / "one.png"), str(tmp_path / "b" / "two.png")}
    assert all(record["level"] == "info" for record in started.values())
    assert started[str(tmp_path / "b" / "two.png")]["inbox"] == str(tmp_path / "b")
    about_files = [record for name in ("file_started", "file_processed", "file_failed", "job_failed")
                   for record in daemon.events(name)]
    assert len(about_files) >= 5
    for record in about_files:
        assert record.get("inbox") == str(Path(record["src"]).parent), record


def test_a_duplicate_kept_in_the_inbox_is_reported_once_not_at_every_restart(tmp_path: Path) -> None:
    config = write_config(tmp_path, log={"level": "debug", "format": "json"})
    picture = make_image(Path("a.png"), SIZE, 3)
    (tmp_path / "in" / "a.png").write_bytes(picture)
    first = DaemonProcess(config)
    try:
        first.wait_event("file_processed", timeout=60)
        (tmp_path / "in" / "copy.png").write_bytes(picture)  # the same content under another name: kept
        reported = first.wait_event("duplicate", timeout=60)[0]
        assert reported["level"] == "info" and reported["src"].endswith("copy.png")
    finally:
        assert first.stop() == 0
    second = DaemonProcess(config)
    try:
        again = wait_for(lambda: [r for r in second.events("duplicate") if r["src"].endswith("copy.png")], 60,
                         "the restarted daemon to judge the kept duplicate\n" + second.log_tail())
    finally:
        assert second.stop() == 0
    assert [record["level"] for record in again] == ["debug"]
