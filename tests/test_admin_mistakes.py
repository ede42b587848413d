"""What a careless admin or a hostile name does to the commands and the running daemon (found by the second
outside attack): each ends in a clear message and a running daemon, never a traceback or a lost file."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from daemon_helpers import ESPCN_X2, DaemonProcess, make_image, srd, wait_for, write_config

from srd.daemon.status import status_path
from srd.errors import ExitCode
from srd.ledger import Ledger

# End to end: each test runs a real srd daemon (srd run) on real folders.
pytestmark = pytest.mark.e2e

SIZE = (24, 32)


def test_a_config_saved_in_latin_1_is_a_located_problem_and_a_reload_keeps_the_daemon_running(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    good = config.read_bytes()
    daemon = DaemonProcess(config)
    try:
        daemon.wait_ready()
        config.write_bytes(good + "# café\n".encode("latin-1"))
        checked = srd("config", "check", str(config))
        assert checked.returncode == ExitCode.USAGE and "not UTF-8" in checked.stderr, checked.stderr
        shown = srd("status", "--config", str(config))  # still readable: that is when admins need it
        assert shown.returncode == ExitCode.OK and "Traceback" not in shown.stderr, shown.stderr
        os.kill(daemon.pid, signal.SIGHUP)
        daemon.wait_event("config_reload_rejected")
        (tmp_path / "in" / "a.png").write_bytes(make_image(Path("a.png"), SIZE, 1))
        daemon.wait_event("file_processed", timeout=60)
    finally:
        assert daemon.stop() == 0


def test_absurd_numbers_are_refused_by_config_check(tmp_path: Path) -> None:
    config = tmp_path / "srd.yaml"
    config.write_text(f"workers: 99999999999999999999999\nthreads_per_worker: 5000\ninboxes: [{{path: {tmp_path}/in, "
                      f"outbox: {tmp_path}/out, failed: {tmp_path}/failed, settle_seconds: .inf}}]\n")
    checked = srd("config", "check", str(config))
    assert checked.returncode == ExitCode.USAGE, checked.stderr
    for key in ("'workers'", "'threads_per_worker'", "'inboxes[0].settle_seconds'"):
        assert key in checked.stderr, checked.stderr


def test_a_reload_sent_to_the_whole_process_group_costs_the_running_job_nothing(tmp_path: Path) -> None:
    """`kill -HUP -PGID` reaches the workers too; they leave reloads to the daemon instead of dying of it
    (three such deaths would have sent a good file to failed/)."""
    config = write_config(tmp_path, stages=[{"upscale": {"model": "edsr-base", "scale": 2}}])
    daemon = DaemonProcess(config)
    try:
        daemon.wait_ready()
        (tmp_path / "in" / "big.png").write_bytes(make_image(Path("big.png"), (400, 500), 1))
        daemon.wait_event("file_started", timeout=60)
        for _ in range(3):
            os.killpg(daemon.pid, signal.SIGHUP)
            daemon.wait_event("config_reloaded", timeout=30, count=_ + 1)
        daemon.wait_event("file_processed", timeout=300)
        assert daemon.proc.poll() is None
    finally:
        assert daemon.stop() == 0
    assert not daemon.events("job_lost_retrying")


def test_names_cannot_steer_the_terminal(tmp_path: Path) -> None:
    """A hostile file name with a line break and an escape sequence is shown escaped in srd process's
    failure line, never obeyed by the admin's terminal."""
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "evil\n\x1b[31mred.png").write_bytes(b"not a picture")
    done = srd("process", str(photos), "--out", str(tmp_path / "out"), "-m", str(ESPCN_X2), "--quiet")
    assert done.returncode == ExitCode.FILES_FAILED
    assert "\x1b" not in done.stderr and "evil\\x0a\\x1b[31mred.png" in done.stderr, done.stderr


def test_a_damaged_status_file_is_reported_as_damage(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    path = status_path(tmp_path / "state")
    path.parent.mkdir(parents=True)
    for damage in (b"[]", b'{"inboxes": "x"}', b"\xff\xfe", b'{"pid": 1, "inb'):
        path.write_bytes(damage)
        shown = srd("status", "--config", str(config))
        assert shown.returncode == ExitCode.ERROR and "status file" in shown.stderr, (damage, shown.stderr)
        assert "Traceback" not in shown.stderr


def test_an_output_path_beyond_path_max_does_not_stop_the_daemon(tmp_path: Path) -> None:
    """An inbox tree deeper than PATH_MAX (4096 bytes): the file in it either gets its output or fails with
    its reason; the daemon goes on and processes the next file."""
    config = write_config(tmp_path)
    inbox = tmp_path / "in"
    fd = os.open(inbox, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(20):  # 20 times 220 bytes: the full path is longer than 4096
            name = "d" * 220
            os.mkdir(name, dir_fd=fd)
            inner = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        leaf = os.open("deep.png", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(leaf, make_image(Path("deep.png"), SIZE, 1))
        os.close(leaf)
    finally:
        os.close(fd)
    daemon = DaemonProcess(config)
    try:
        daemon.wait_ready()
        wait_for(lambda: daemon.events("file_processed") or daemon.events("file_failed")
                 or daemon.events("outcome_not_recorded") or daemon.events("file_skipped"), 60,
                 "the deep file to be dealt with\n" + daemon.log_tail())
        (inbox / "next.png").write_bytes(make_image(Path("next.png"), SIZE, 2))
        wait_for(lambda: any(e["src"].endswith("next.png") for e in daemon.events("file_processed")), 60,
                 "the next file\n" + daemon.log_tail())
        assert daemon.proc.poll() is None
    finally:
        assert daemon.stop() == 0
        subprocess.run(["rm", "-rf", str(inbox)], check=False)  # shutil.rmtree trips on PATH_MAX too


def test_an_age_beyond_the_calendar_lists_everything_instead_of_a_traceback(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    Ledger.open(tmp_path / "state").close()
    shown = srd("ledger", "list", "--since", "99999999999d", "--config", str(config))
    assert shown.returncode == ExitCode.OK and "Traceback" not in shown.stderr, shown.stderr
    assert shown.stdout.startswith("KEY")


def _with_second_outbox(config: Path, second: Path) -> tuple[int, int]:
    """Give the inbox's `outbox` key a second time, pointing elsewhere; return the lines of both."""
    lines = config.read_text().splitlines(keepends=True)
    first = next(i for i, line in enumerate(lines) if line.lstrip().startswith("outbox:"))
    indent = lines[first][: len(lines[first]) - len(lines[first].lstrip())]
    lines.insert(first + 1, f"{indent}outbox: {second}\n")
    config.write_text("".join(lines))
    return first + 1, first + 2


def test_a_key_given_twice_is_a_located_problem_at_start_and_in_config_check(tmp_path: Path) -> None:
    """Plain YAML keeps the last of two equal keys without a word, so a pasted block silently changed the
    outbox. `config check` and `srd run` now refuse it, naming the key and both lines."""
    config = write_config(tmp_path)
    first, again = _with_second_outbox(config, tmp_path / "elsewhere")
    for command in (["config", "check", str(config)], ["run", "--config", str(config)]):
        done = srd(*command)
        assert done.returncode == ExitCode.USAGE, (command, done.stderr)
        assert "Traceback" not in done.stderr
        assert f"line {again}: key 'outbox' is given again (first at line {first})" in done.stderr, done.stderr
    assert not (tmp_path / "state").exists()


def test_a_reload_with_a_key_given_twice_keeps_the_old_config_running(tmp_path: Path) -> None:
    """SIGHUP with the outbox given twice: old srd took the second one and wrote the next output there; now
    the reload is rejected with the located problem and the next file still goes to the configured outbox."""
    config = write_config(tmp_path)
    daemon = DaemonProcess(config)
    try:
        daemon.wait_ready()
        first, again = _with_second_outbox(config, tmp_path / "elsewhere")
        os.kill(daemon.pid, signal.SIGHUP)
        rejected, = daemon.wait_event("config_reload_rejected")
        assert any(f"line {again}: key 'outbox' is given again (first at line {first})" in problem
                   for problem in rejected["problems"]), rejected
        (tmp_path / "in" / "a.png").write_bytes(make_image(Path("a.png"), SIZE, 1))
        daemon.wait_event("file_processed", timeout=60)
        assert (tmp_path / "in-out" / "a.png").is_file()
        assert not (tmp_path / "elsewhere").exists()
    finally:
        assert daemon.stop() == 0

