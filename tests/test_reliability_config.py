"""Config and permissions: bad configs and layouts are refused up front; permission problems give clear
errors, never a crash loop; outputs get the permissions the umask asks for."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import daemon_helpers
import pytest
import yaml
from daemon_helpers import ESPCN_X2, DaemonProcess, files_under, running, srd, wait_for
from reliability_harness import image_bytes, make_layout, status_of, tmpfs

# End to end: each test runs the real srd command or daemon in a subprocess.
pytestmark = pytest.mark.e2e

SIZE = (24, 32)


def test_an_invalid_config_is_refused_with_every_error_and_its_location(tmp_path: Path) -> None:
    """`srd config check` and `srd run` both refuse (exit 2) a config with six different mistakes and name
    every one with its location; `run` starts nothing (no state directory appears)."""
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({
        "state_dir": str(tmp_path / "state"),
        "workers": 0,
        "colour": "blue",
        "profiles": {"p": {"stages": [{"upscale": {"model": str(ESPCN_X2), "scale": 99}}]}},
        "inboxes": [{"path": "in", "outbox": "in/out", "failed": "failed", "profile": "nope", "mode": "sometimes"}],
    }))
    expected = ["at 'workers'", "at 'colour'", "at 'profiles.p.stages[0].upscale.scale'", "at 'inboxes[0].profile'",
                "at 'inboxes[0].mode'", "at 'inboxes[0].outbox'"]
    for command in (["config", "check", str(config)], ["run", "--config", str(config)]):
        result = srd(*command)
        assert result.returncode == 2, (command, result.stderr)
        assert "Traceback" not in result.stderr
        for location in expected:
            assert location in result.stderr, (command, location, result.stderr)
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("layout_case", [
    "outbox inside inbox", "failed inside inbox", "inbox inside outbox", "outbox linked into inbox",
    "state inside inbox",
])
def test_layouts_that_would_feed_output_back_as_input_are_refused(tmp_path: Path, layout_case: str) -> None:
    """An outbox or failed folder inside an inbox (also through a symlink), an inbox inside the outbox, or
    the state directory inside an inbox would make srd eat its own output: `srd run` refuses to start and
    names the offending key."""
    inbox = {"path": str(tmp_path / "in"), "outbox": str(tmp_path / "out"), "failed": str(tmp_path / "failed"),
             "profile": "p"}
    top = {"state_dir": str(tmp_path / "state")}
    (tmp_path / "in").mkdir()
    key = {"outbox inside inbox": "inboxes[0].outbox", "failed inside inbox": "inboxes[0].failed",
           "inbox inside outbox": "inboxes[0].outbox", "outbox linked into inbox": "inboxes[0].outbox",
           "state inside inbox": "state_dir"}[layout_case]
    if layout_case == "outbox inside inbox":
        inbox["outbox"] = str(tmp_path / "in" / "results")
    elif layout_case == "failed inside inbox":
        inbox["failed"] = str(tmp_path / "in" / "failed")
    elif layout_case == "inbox inside outbox":
        inbox["path"] = str(tmp_path / "out" / "in")
        (tmp_path / "out" / "in").mkdir(parents=True)
    elif layout_case == "outbox linked into inbox":
        (tmp_path / "in" / "results").mkdir()
        (tmp_path / "out").symlink_to(tmp_path / "in" / "results")
    else:
        top["state_dir"] = str(tmp_path / "in" / ".srd")
    config = tmp_path / "srd.yaml"
    config.write_text(yaml.safe_dump({**top, "profiles": {"p": {"stages": [
        {"upscale": {"model": str(ESPCN_X2), "scale": 2}}]}}, "inboxes": [inbox]}))
    result = srd("run", "--config", str(config))
    assert result.returncode == 2, result.stderr
    assert f"at '{key}'" in result.stderr, result.stderr


def test_an_unreadable_input_gives_one_clear_error_and_the_rest_proceed(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A file the daemon may not read (mode 000; the daemon runs without root's DAC override, as a service
    user would) is reported once with the reason, in the log and in status, is not retried in a loop
    while the inbox is polled, and doesn't stop the good files."""
    if shutil.which("setpriv") is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv to run the daemon without CAP_DAC_OVERRIDE")
    plain = daemon_helpers.srd_command
    monkeypatch.setattr(daemon_helpers, "srd_command",
                        lambda: ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", *plain()])
    layout = make_layout(tmp_path, inbox={"mode": "poll", "poll_interval": 0.1})
    locked = layout.inbox / "locked.png"
    locked.write_bytes(image_bytes(".png", SIZE, 1))
    locked.chmod(0)
    (layout.inbox / "fine.png").write_bytes(image_bytes(".png", SIZE, 2))
    daemon = DaemonProcess(layout.config)
    try:
        skipped = daemon.wait_event("file_skipped")[0]
        daemon.wait_event("file_processed")
        time.sleep(1.5)  # fifteen polls
        assert daemon.proc.poll() is None
        status = status_of(layout)
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
    assert skipped["src"].endswith("locked.png") and "Permission denied" in skipped["error"]
    assert len(daemon.events("file_skipped")) == 1
    assert status is not None and "Permission denied" in status["inboxes"][0]["last_error"]["reason"]
    assert set(files_under(layout.outbox)) == {"fine.png"} and files_under(layout.failed) == {}
    assert locked.exists()


def test_a_read_only_outbox_is_reported_without_a_crash_loop_and_recovers(tmp_path: Path) -> None:
    """An outbox on a read-only filesystem: the daemon stays up (no restart loop), keeps the inputs, says
    why in the log and in `srd status`, and once the filesystem is writable again processes them."""
    with tmpfs(tmp_path / "ro", "2m") as mount:
        (mount / "out").mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        layout = make_layout(tmp_path, inbox={"outbox": str(mount / "out")})
        with running(layout.config) as daemon:
            for i in range(3):
                (layout.inbox / f"p{i}.png").write_bytes(image_bytes(".png", SIZE, i))
            paused = daemon.wait_event("outbox_unwritable_paused")[0]
            assert "Read-only file system" in paused["error"]
            status = ("status", "--config", str(layout.config))
            shown = wait_for(lambda: "outbox unwritable" in (out := srd(*status).stdout) and out, 10,
                             "srd status to show the outbox problem")
            assert "Read-only file system" in shown and "unhealthy" in shown
            time.sleep(1.0)
            assert daemon.proc.poll() is None
            assert all((layout.inbox / f"p{i}.png").exists() for i in range(3))
            assert files_under(layout.failed) == {}
            subprocess.run(["mount", "-o", "remount,rw", str(mount)], check=True)
            daemon.wait_event("outbox_writable_resumed", timeout=10)
            wait_for(lambda: set(files_under(mount / "out")) == {"p0.png", "p1.png", "p2.png"}, 20, "outputs")
            assert daemon.stop() == 0
        assert len(daemon.events("daemon_ready")) == 1 and daemon.events("file_failed") == []


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_and_reason_files_get_the_permissions_the_umask_asks_for(tmp_path: Path, umask: int) -> None:
    """Outputs and failure reports are created 0666 & ~umask (not mkstemp's 0600, not world-writable)."""
    layout = make_layout(tmp_path)
    (layout.inbox / "ok.png").write_bytes(image_bytes(".png", SIZE, 1))
    (layout.inbox / "bad.png").write_bytes(b"not an image")
    previous = os.umask(umask)
    try:
        daemon = DaemonProcess(layout.config)
    finally:
        os.umask(previous)
    try:
        daemon.wait_event("file_processed")
        daemon.wait_event("file_failed")
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
    want = 0o666 & ~umask
    assert stat.S_IMODE((layout.outbox / "ok.png").stat().st_mode) == want
    assert stat.S_IMODE((layout.failed / "bad.png.error.json").stat().st_mode) == want
    report = json.loads((layout.failed / "bad.png.error.json").read_text())
    assert report["reason"].startswith("not an image")
