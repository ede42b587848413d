"""The state-reading commands as a careless admin runs them: a wrong config, a state dir that is missing, a file,
unreadable, or written by a newer srd. Each is a real `srd` command that must end in one line on stderr and the
documented exit code, and change nothing: no traceback, no empty ledger shown for a wrong path, no new folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from daemon_helpers import (
    ESPCN_X2,
    DaemonProcess,
    decoded_size,
    in_flight,
    make_image,
    running,
    srd,
    srd_command,
    wait_for,
    write_config,
)

from srd.daemon.status import status_path
from srd.errors import ExitCode
from srd.ledger import SNAPSHOT_FORMAT, SNAPSHOT_NAME, Ledger, State

# End to end: each test runs the real srd command in a subprocess.
pytestmark = pytest.mark.e2e

LEDGER_COMMANDS = [["ledger", "list"], ["ledger", "check"], ["ledger", "repair"], ["ledger", "show", "ab"],
                   ["ledger", "forget", "ab"], ["ledger", "retry", "ab"]]
# Runs srd as a normal user would be: without root's power to read and write any folder.
WITHOUT_DAC_OVERRIDE = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


def one_error_line(stderr: str) -> str:
    """The single line srd printed on stderr (failing the test if there is a traceback or more lines)."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("srd: error: "), stderr
    return lines[0]


def _as_normal_user(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("setpriv") is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv to run srd without CAP_DAC_OVERRIDE")
    return subprocess.run([*WITHOUT_DAC_OVERRIDE, *srd_command(), *args], capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.mark.parametrize("command", LEDGER_COMMANDS, ids=" ".join)
def test_a_state_dir_that_does_not_exist_is_an_error_and_is_not_created(command: list[str], tmp_path: Path) -> None:
    """A config pointing at a state dir srd never ran with: old srd listed an empty ledger, called it healthy
    (exit 0), called it damaged (repair, exit 8) or created the folder (forget, retry)."""
    config = write_config(tmp_path, state_dir=str(tmp_path / "typo" / "state"))
    done = srd(*command, "--config", str(config))
    assert done.returncode == ExitCode.STARTUP, done.stdout + done.stderr
    assert "does not exist" in one_error_line(done.stderr)
    assert done.stdout == ""
    assert not (tmp_path / "typo").exists()


@pytest.mark.parametrize("command", LEDGER_COMMANDS, ids=" ".join)
def test_a_state_dir_that_is_a_file_is_a_one_line_error(command: list[str], tmp_path: Path) -> None:
    """Old srd: a NotADirectoryError traceback (exit 1, which means "some inputs failed") from list and check."""
    (tmp_path / "state").write_text("not a folder")
    config = write_config(tmp_path)
    done = srd(*command, "--config", str(config))
    assert done.returncode == ExitCode.STARTUP, done.stderr
    assert "not a folder" in one_error_line(done.stderr)
    assert (tmp_path / "state").read_text() == "not a folder"


@pytest.mark.parametrize("command", [["ledger", "list"], ["ledger", "check"], ["ledger", "repair"], ["status"]],
                         ids=" ".join)
def test_a_ledger_the_admin_may_not_read_is_a_one_line_error(command: list[str], tmp_path: Path) -> None:
    """The daemon's state dir, read by a user without the permission: old srd gave a PermissionError traceback
    (list, check, repair) or "status file … unreadable: [Errno 13] …" as exit 7."""
    config = write_config(tmp_path)
    with Ledger.open(tmp_path / "state") as ledger:
        ledger.record_start("ab" * 32, "fp", inbox=str(tmp_path / "in"), source="a.png")
        ledger.compact()
    status_path(tmp_path / "state").write_text(json.dumps({"pid": 1, "inboxes": []}))
    for name in (SNAPSHOT_NAME, status_path(tmp_path / "state").name):
        (tmp_path / "state" / name).chmod(0)
    done = _as_normal_user(*command, "--config", str(config))
    assert done.returncode == ExitCode.STARTUP, done.stderr
    assert "Permission denied" in one_error_line(done.stderr)


def test_status_of_a_state_dir_that_is_a_file_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("not a folder")
    done = srd("status", "--state-dir", str(tmp_path / "state"))
    assert done.returncode == ExitCode.STARTUP, done.stderr
    assert "Not a directory" in one_error_line(done.stderr) and "Errno" not in done.stderr


def _ledger_of_a_newer_srd(tmp_path: Path) -> Path:
    """A state dir whose snapshot says a format after ours: what a later srd would leave behind after a
    downgrade."""
    state = tmp_path / "state"
    with Ledger.open(state) as ledger:
        key = ledger.record_start("ab" * 32, "fp", inbox=str(tmp_path / "in"), source="a.png").key
        ledger.record_done(key, output=tmp_path / "out" / "a.png", output_size=1)
        ledger.compact()
    snapshot = json.loads((state / SNAPSHOT_NAME).read_text())
    (state / SNAPSHOT_NAME).write_text(json.dumps({**snapshot, "format": SNAPSHOT_FORMAT + 1}))
    return state


def _ledger_files(state: Path) -> dict[str, bytes]:
    return {str(path.relative_to(state)): path.read_bytes() for path in state.rglob("*")
            if path.is_file() and path.name != "lock"}  # lock: its taker's pid


@pytest.mark.parametrize("command", [["ledger", "list"], ["ledger", "check"], ["ledger", "repair"], ["run"]],
                         ids=" ".join)
def test_a_ledger_written_by_a_newer_srd_is_refused_and_left_as_it_is(command: list[str], tmp_path: Path) -> None:
    """Old srd called a newer format "damaged" (exit 8) and advised `srd ledger repair`, which set the snapshot
    aside and left an empty ledger: every file would have been processed again. Now every command refuses it
    (exit 7, "any other failure") naming the format, and nothing in the state dir changes."""
    state = _ledger_of_a_newer_srd(tmp_path)
    config = write_config(tmp_path)
    before = _ledger_files(state)
    done = srd(*command, "--config", str(config))
    assert done.returncode == ExitCode.ERROR, done.stdout + done.stderr
    assert f"written by a newer srd (format {SNAPSHOT_FORMAT + 1}" in one_error_line(done.stderr)
    assert _ledger_files(state) == before


def test_retry_into_an_inbox_that_refuses_the_file_is_one_line_and_changes_nothing(tmp_path: Path) -> None:
    """`srd ledger retry` moves the failed file back into its inbox; an inbox the admin may not write gave a
    PermissionError traceback. Now one line (exit 7); the file, its reason file and the entry stay as they were."""
    config = write_config(tmp_path)
    (tmp_path / "in" / "bad.png").write_bytes(b"not a picture")
    daemon = DaemonProcess(config)
    try:
        daemon.wait_event("file_failed", timeout=60)
    finally:
        assert daemon.stop() == 0
    with Ledger.open(tmp_path / "state", read_only=True) as ledger:
        entry, = ledger.entries()
    failed = sorted(path.name for path in (tmp_path / "in-failed").iterdir())
    assert failed == ["bad.png", "bad.png.error.json"]
    (tmp_path / "in").chmod(0o555)
    try:
        done = _as_normal_user("ledger", "retry", entry.key[:12], "--config", str(config))
    finally:
        (tmp_path / "in").chmod(0o755)
    assert done.returncode == ExitCode.ERROR, done.stdout + done.stderr
    assert "Permission denied" in one_error_line(done.stderr) and "nothing was changed" in done.stderr
    assert sorted(path.name for path in (tmp_path / "in-failed").iterdir()) == failed
    assert not (tmp_path / "in" / "bad.png").exists()
    with Ledger.open(tmp_path / "state", read_only=True) as ledger:
        assert ledger.get(entry.key).state == State.FAILED  # type: ignore[union-attr]


def test_an_error_about_a_path_with_a_line_break_stays_one_line(tmp_path: Path) -> None:
    """A state dir named with a line break and an escape sequence: the error shows it escaped, on one line."""
    state = tmp_path / "st\n\x1b[31mate"
    config = write_config(tmp_path, state_dir=str(state))
    done = srd("ledger", "list", "--config", str(config))
    assert done.returncode == ExitCode.STARTUP, done.stderr
    assert "st\\x0a\\x1b[31mate" in one_error_line(done.stderr) and "\x1b" not in done.stderr


def test_a_config_that_cannot_be_read_is_a_config_error_for_every_command(tmp_path: Path) -> None:
    """A config path that is a folder or missing. `srd status` reads what it can of a broken config, but old
    srd also guessed a state dir beside a config it could not read at all, and said "not running" (exit 3)
    about a daemon that may well be running with the state dir that config names."""
    for command in (["config", "check", str(tmp_path)], ["run", "-c", str(tmp_path)], ["status", "-c", str(tmp_path)],
                    ["ledger", "list", "-c", str(tmp_path)], ["process", str(tmp_path), "--out", str(tmp_path / "o"),
                                                              "-c", str(tmp_path)]):
        done = srd(*command)
        assert done.returncode == ExitCode.USAGE, (command, done.stderr)
        assert "Is a directory" in done.stderr and "Traceback" not in done.stderr, (command, done.stderr)
    for command in (["status"], ["status", "--check"], ["ledger", "list"]):
        done = srd(*command, "-c", str(tmp_path / "srd.yml"))  # a typo: the file is srd.yaml
        assert done.returncode == ExitCode.USAGE, (command, done.stdout, done.stderr)
        assert "No such file or directory" in done.stderr, done.stderr


@pytest.mark.parametrize("option", [["--tile", "-5"], ["--tile-pad", "-1"], ["--threads", "0"]], ids=" ".join)
def test_engine_options_out_of_the_configs_bounds_are_refused_before_anything_is_written(
        option: list[str], tmp_path: Path) -> None:
    """`engine.tile: -5` is refused by `config check`, but old srd took `--tile -5` on the command line and ran."""
    image = tmp_path / "a.png"
    image.write_bytes(make_image(image))
    done = srd("process", str(image), "--out", str(tmp_path / "big"), "-m", str(ESPCN_X2), *option)
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert f"argument {option[0]}: must be at least" in done.stderr
    assert not (tmp_path / "big").exists()


@pytest.mark.parametrize("mistake", ["state dir removed", "state dir moved aside", "state dir replaced by a file",
                                     "lock file replaced", "backup copied back over it"])
def test_a_state_dir_removed_or_replaced_under_a_running_daemon_stops_it_at_once(mistake: str, tmp_path: Path) -> None:
    """`rm -rf state`, or a backup restored over it, while srd runs: its lock then no longer keeps a second srd
    out, and what it records goes to files nobody will read, or over the restored ones. Old srd went on as if
    nothing had happened, and a second `srd run` started beside it on the same inboxes. Now it stops (exit 7)
    within seconds, saying why, without waiting for its running job (whose file stays in the inbox) and
    without writing there again; the next start processes the file."""
    config = write_config(tmp_path)
    state, inbox, outbox = tmp_path / "state", tmp_path / "in", tmp_path / "in-out"
    with running(config) as daemon:
        backup = shutil.copytree(state, tmp_path / "backup")
        (inbox / "big.jpg").write_bytes(make_image(Path("big.jpg"), (1500, 2000), 1))  # seconds of work
        wait_for(lambda: in_flight(state) == 1, 30, "the job to start")
        if mistake == "state dir removed":
            shutil.rmtree(state)
        elif mistake == "state dir moved aside":
            state.rename(tmp_path / "state.old")
        elif mistake == "state dir replaced by a file":  # went on through its open files, into the moved folder
            state.rename(tmp_path / "state.old")
            state.write_text("x\n")
        elif mistake == "lock file replaced":
            (state / "lock").unlink()
            (state / "lock").write_text("restored\n")
        else:  # as `cp -a backup/. state/` does: the same files, rewritten in place
            shutil.copytree(backup, state, dirs_exist_ok=True)
        restored = {p.name: p.read_bytes() for p in state.iterdir() if p.is_file()} if state.is_dir() else {}
        stopped = daemon.wait_event("state_dir_lost_stopping", timeout=15)
        asked = time.monotonic()
        assert daemon.stop(timeout=30) == ExitCode.ERROR, daemon.log_tail()
        assert time.monotonic() - asked < 3, "it waited for the running job"
    assert stopped[0]["state_dir"] == str(state)
    assert stopped[0]["reason"].startswith(("its lock file was", "its journal.jsonl file was rewritten",
                                            "the state directory was replaced by a file"))
    if mistake in ("state dir removed", "state dir moved aside"):
        assert not state.exists()  # not made again by the stopping daemon
    elif mistake == "state dir replaced by a file":
        assert state.read_text() == "x\n"
        state.unlink()
    else:  # nothing written over what the admin put there
        assert {p.name: p.read_bytes() for p in state.iterdir() if p.is_file()} == restored
    assert (inbox / "big.jpg").is_file() and list(outbox.iterdir()) == []
    with running(config) as again:  # the folder is srd's again and the file is processed
        again.wait_event("file_processed", timeout=60)
        assert again.stop() == ExitCode.OK
    assert decoded_size(outbox / "big.jpg") == (3000, 4000)
