"""`srd status` through the real command against a real `srd run`: the table, --json, --check, a broken config."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from daemon_helpers import ESPCN_X2, DaemonProcess, inbox_config, make_image, running, srd, wait_for, write_config

from srd.errors import ExitCode

# End to end: each test runs a real srd daemon (srd run) on real folders.
pytestmark = pytest.mark.e2e

SIZE = (24, 32)
NOT_RUNNING, UNHEALTHY = ExitCode.NOT_RUNNING, ExitCode.UNHEALTHY


def _status_json(*args: str) -> dict:
    result = srd("status", "--json", *args)
    return json.loads(result.stdout)


def test_counters_agree_with_the_ledger_after_a_restart(tmp_path: Path) -> None:
    """done/failed and the last error per inbox survive a restart: they are the ledger's, not counts since start."""
    config = write_config(tmp_path, [inbox_config(tmp_path, settle_max_backoff_seconds=1)])
    inbox = tmp_path / "in"
    for i in range(2):
        (inbox / f"good{i}.png").write_bytes(make_image(Path("x.png"), SIZE, i))
    (inbox / "broken.jpg").write_bytes(make_image(Path("x.jpg"), SIZE, 9)[:200])
    daemon = DaemonProcess(config)
    try:
        daemon.wait_event("file_processed", count=2, timeout=60)
        daemon.wait_event("file_failed", timeout=60)  # a truncated JPEG waits for a slow writer first (1 s cap)
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()

    with running(config, ready_timeout=60) as daemon:
        # Alive, and done re-judging the files kept in the inbox (its start-up scan hints them again).
        status = wait_for(lambda: (s := _status_json("--config", str(config))).get("alive")
                          and (s["inboxes"][0]["settling"], s["inboxes"][0]["queued"]) == (0, 0) and s, 60,
                          "the restarted daemon's status, idle")
        row = status["inboxes"][0]
        assert (row["done"], row["failed"]) == (2, 1), row
        assert (status["ledger"]["done"], status["ledger"]["failed"]) == (2, 1)
        assert row["last_error"]["source"] == str(inbox / "broken.jpg")
        assert "truncated" in row["last_error"]["reason"]
        table = srd("status", "--config", str(config))
        assert table.returncode == 0, table.stderr
        header, values = [line for line in table.stdout.splitlines() if line.startswith(("INBOX", str(inbox)))]
        assert header.split()[:9] == ["INBOX", "HEALTH", "WATCH", "SETTLING", "QUEUED", "RUNNING", "DONE", "FAILED",
                                      "DUPLICATES"]
        assert values.split()[1:9] == ["ok", row["watch"], "0", "0", "0", "2", "1", "0"], values
        assert "broken.jpg" in values and "truncated" in values
        assert daemon.stop() == 0


def test_running_files_are_named_with_their_elapsed_time(tmp_path: Path) -> None:
    """A job in a worker shows in status.json and the table with its file name and how long it has run."""
    slow = [{"denoise": {"strength": 10, "search_window": 45}}, {"upscale": {"model": str(ESPCN_X2), "scale": 2}}]
    config = write_config(tmp_path, stages=slow)
    pixels = np.random.default_rng(0).integers(0, 256, size=(1400, 1400, 3), dtype=np.uint8)
    ok, encoded = cv2.imencode(".png", pixels)
    assert ok
    (tmp_path / "in" / "slow.png").write_bytes(encoded.tobytes())
    daemon = DaemonProcess(config)
    try:
        status = wait_for(lambda: (s := _status_json("--config", str(config))).get("inboxes", [{}])[0].get("running")
                          and s, 60, "the job to show as running")
        job = status["inboxes"][0]["running"][0]
        assert job["source"] == "slow.png" and job["since"]
        table = srd("status", "--config", str(config)).stdout
        row = next(line for line in table.splitlines() if line.startswith(f"{tmp_path / 'in'}  "))
        assert row.split()[4:6] == ["0", "1"], table  # QUEUED 0, RUNNING 1
        line = next(line for line in table.splitlines() if ": running " in line)
        assert line.startswith(str(tmp_path / "in")) and "slow.png (" in line and line.endswith("s)"), table
    finally:
        daemon.kill()


def test_status_works_when_the_config_has_a_syntax_error(tmp_path: Path) -> None:
    """A config broken while the daemon runs: status still reads its state_dir (read from the text) and says so;
    --state-dir needs no config; with no state_dir in the text, the default beside the config is used."""
    config = write_config(tmp_path)
    daemon = DaemonProcess(config)
    try:
        daemon.wait_ready()
        wait_for(lambda: srd("status", "--config", str(config)).returncode == 0, 30, "status to say running")
        config.write_text(config.read_text() + "\nworkers: [1\n")
        assert srd("config", "check", str(config)).returncode == 2
        result = srd("status", "--config", str(config))
        assert result.returncode == 0, result.stdout + result.stderr
        first = result.stdout.splitlines()[0]
        assert first.startswith(f"state_dir {tmp_path / 'state'} (from config {config} is invalid")
        assert "state_dir read from its text" in first
        assert any(line.startswith(str(tmp_path / "in")) for line in result.stdout.splitlines())
        by_flag = _status_json("--state-dir", str(tmp_path / "state"))
        assert by_flag["alive"] and by_flag["state_dir_from"] == "--state-dir"
        assert srd("status", "--check", "--config", str(config)).returncode == 0
    finally:
        daemon.kill()
    no_state_dir = tmp_path / "other" / "srd.yaml"
    no_state_dir.parent.mkdir()
    no_state_dir.write_text("inboxes: [\n")
    result = srd("status", "--config", str(no_state_dir))
    assert result.returncode == NOT_RUNNING
    assert result.stdout.splitlines()[0] == (
        f"state_dir {no_state_dir.parent / '.srd'} (from config {no_state_dir} is invalid (1 problem(s): see "
        "'srd config check'); no state_dir in it, so the default beside it)")


def test_check_exit_codes_healthy_unhealthy_not_running(tmp_path: Path) -> None:
    """--check: 0 while healthy, 7 while an inbox is unavailable, 3 once stopped; one line saying which."""
    config = write_config(tmp_path)
    check = ("status", "--check", "--config", str(config))
    before = srd(*check)
    assert (before.returncode, before.stdout.split(":")[0]) == (NOT_RUNNING, "not running")
    with running(config) as daemon:
        healthy = wait_for(lambda: (r := srd(*check)).returncode == 0 and r, 30, "a healthy check")
        assert healthy.stdout.strip() == "healthy"
        shutil.rmtree(tmp_path / "in")
        unhealthy = wait_for(lambda: (r := srd(*check)).returncode == UNHEALTHY and r, 60, "an unhealthy check")
        assert unhealthy.stdout.startswith(f"unhealthy: inbox {tmp_path / 'in'} unhealthy"), unhealthy.stdout
        (tmp_path / "in").mkdir()
        wait_for(lambda: srd(*check).returncode == 0, 60, "healthy again once the inbox is back")
        assert daemon.stop() == 0
    after = srd(*check)
    assert after.returncode == NOT_RUNNING and after.stdout.startswith("not running: last seen pid")


def test_a_daemon_that_holds_the_state_dir_but_has_no_status_yet_is_starting(tmp_path: Path) -> None:
    """A daemon opening a big ledger (a migration takes minutes) holds the state directory's lock before it
    writes any status: `srd status` says it is starting (unhealthy for --check), not "not running", whether
    there is no status file yet or one left by an earlier run."""
    config = write_config(tmp_path)
    check = ("status", "--check", "--config", str(config))
    with running(config) as daemon:  # an earlier run leaves its status document
        wait_for(lambda: srd(*check).returncode == 0, 30, "a healthy check")
        assert daemon.stop() == 0
    opening = subprocess.Popen(  # takes the lock as `srd run` does, then stays in "opening the ledger"
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from srd.ledger.files import "
         "acquire_lock; acquire_lock(Path(sys.argv[1])); print('locked', flush=True); time.sleep(120)",
         str(tmp_path / "state" / "lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert opening.stdout is not None and opening.stdout.readline().strip() == "locked"
        for status_file in (True, False):
            if not status_file:
                (tmp_path / "state" / "status.json").unlink()
            starting = srd(*check)
            assert starting.returncode == UNHEALTHY, starting.stdout
            assert starting.stdout.startswith(f"unhealthy: pid {opening.pid} holds the state directory"), \
                starting.stdout
            assert f"srd is starting: pid {opening.pid} holds" in srd("status", "--config", str(config)).stdout
    finally:
        opening.kill()
        opening.wait()
    gone = srd(*check)
    assert gone.returncode == NOT_RUNNING and gone.stdout.startswith("not running: no status file"), gone.stdout
    # A live srd-looking process whose pid the lock file names, but which does not hold the lock: not starting.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)  # srd"])
    try:
        (tmp_path / "state" / "lock").write_text(f"{other.pid}\n")
        named = srd(*check)
        assert named.returncode == NOT_RUNNING, named.stdout
    finally:
        other.kill()
        other.wait()
