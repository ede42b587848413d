"""Exit codes: one table (README, `srd --help`, `ExitCode`), each code produced by the real command for its case."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from daemon_helpers import ESPCN_X2, REPO, make_image, srd

from srd.errors import ExitCode
from srd.ledger import JOURNAL_NAME, Ledger

# End to end: each test runs the real srd command in a subprocess.
pytestmark = pytest.mark.e2e

# Produced by a real command in another test file (a signal to a running process).
ELSEWHERE = {
    ExitCode.INTERRUPTED: "test_oneshot.py::test_ctrl_c_stops_the_batch_and_leaves_no_half_written_file",
    ExitCode.TERMINATED: "test_train.py::test_sigterm_saves_and_exits_143 (needs the 'train' extra)",
    ExitCode.UNHEALTHY: "test_status_cli.py::test_check_exit_codes_healthy_unhealthy_not_running",
}


def _image(tmp: Path, name: str = "a.png") -> Path:
    path = tmp / name
    path.write_bytes(make_image(path))
    return path


def _config(tmp: Path) -> Path:
    config = tmp / "srd.yaml"
    inbox = f"{{path: {tmp / 'inbox'}, outbox: {tmp / 'out'}, failed: {tmp / 'failed'}}}"
    config.write_text(f"state_dir: {tmp / 'state'}\ninboxes: [{inbox}]\n")
    return config


def _ok(tmp: Path) -> list[str]:
    return ["process", str(_image(tmp)), "--out", str(tmp / "big"), "-m", str(ESPCN_X2)]


def _files_failed(tmp: Path) -> list[str]:
    (tmp / "junk.png").write_bytes(b"junk")
    return ["process", str(_image(tmp)), str(tmp / "junk.png"), "--out", str(tmp / "big"), "-m", str(ESPCN_X2)]


def _usage(tmp: Path) -> list[str]:
    return ["process", str(_image(tmp)), "--out", str(tmp), "-m", str(ESPCN_X2)]


def _not_running(tmp: Path) -> list[str]:
    return ["status", "-c", str(_config(tmp))]


def _model(tmp: Path) -> list[str]:
    return ["process", str(_image(tmp)), "--out", str(tmp / "big"), "-m", "nosuch"]


def _output(tmp: Path) -> list[str]:
    (tmp / "plain-file").write_text("a file where the output folder should go")
    return ["process", str(_image(tmp)), "--out", str(tmp / "plain-file" / "big"), "-m", str(ESPCN_X2)]


def _locked(tmp: Path) -> list[str]:
    config = _config(tmp)
    Ledger.open(tmp / "state")  # held by this test process until it ends, as a running daemon holds it
    return ["ledger", "forget", "abc", "-c", str(config)]


def _ledger(tmp: Path) -> list[str]:
    config = _config(tmp)
    with Ledger.open(tmp / "state") as ledger:
        ledger.record_start("ab" * 32, "fp", inbox=str(tmp / "inbox"), source="a.png")
    with (tmp / "state" / JOURNAL_NAME).open("ab") as journal:  # another writer's lines, whole but not records
        journal.write(b"another writer's line\n{\"also\": \"not a record\"}\n")
    return ["ledger", "check", "-c", str(config)]


def _error(tmp: Path) -> list[str]:
    config = _config(tmp)
    Ledger.open(tmp / "state").close()
    return ["ledger", "show", "nosuch", "-c", str(config)]


def _startup(tmp: Path) -> list[str]:
    return ["ledger", "list", "-c", str(_config(tmp))]  # srd has never run with this state_dir


SITUATIONS: dict[ExitCode, Callable[[Path], list[str]]] = {
    ExitCode.OK: _ok,
    ExitCode.FILES_FAILED: _files_failed,
    ExitCode.USAGE: _usage,
    ExitCode.NOT_RUNNING: _not_running,
    ExitCode.MODEL: _model,
    ExitCode.OUTPUT: _output,
    ExitCode.LOCKED: _locked,
    ExitCode.ERROR: _error,
    ExitCode.LEDGER: _ledger,
    ExitCode.STARTUP: _startup,
}


@pytest.mark.parametrize("code", list(SITUATIONS), ids=lambda code: code.name)
def test_each_exit_code_is_what_the_real_command_returns_in_its_situation(code: ExitCode, tmp_path: Path) -> None:
    done = srd(*SITUATIONS[code](tmp_path), timeout=120)
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr


def test_every_exit_code_is_checked_somewhere() -> None:
    assert set(SITUATIONS) | set(ELSEWHERE) == set(ExitCode)


def test_readme_and_help_show_the_one_exit_code_table() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| (\d+) \| (.+?) \|$", section, re.MULTILINE))
    assert rows == {str(code.value): code.meaning for code in ExitCode}
    shown = srd("--help").stdout
    for code in ExitCode:
        assert re.search(rf"^\s+{code.value}\s+{re.escape(code.meaning)}$", shown, re.MULTILINE), code

