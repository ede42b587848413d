"""Worker processes that can't start: `srd process` ends with one error line and exit 7 within seconds, never
with success and never by looping; the pool logs each distinct start error once and reports itself unhealthy."""

from __future__ import annotations

import json
import os
import pwd
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import Executor
from pathlib import Path

import cv2
import numpy as np
import pytest
from daemon_helpers import make_image, read_status, running, srd, wait_for, write_config
from structlog.testing import capture_logs

from srd.config import default_profile
from srd.errors import ExitCode
from srd.executors.job import Job
from srd.executors.pool import JobPool

# End to end: each test starts real worker processes (a pool, or the srd command).
pytestmark = pytest.mark.e2e

# A real `srd process` whose pool can't be built: the resource tracker's pipe broke (as when the helpers
# can't execute the interpreter), which is a BrokenPipeError that has nothing to do with stdout.
_BROKEN_HELPERS = """
import srd.executors.pool
def broken(*args, **kwargs):
    raise BrokenPipeError(32, "Broken pipe")
srd.executors.pool.make_pool = broken
from srd.cli.main import main
main()
"""


def _inputs(folder: Path, count: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        cv2.imwrite(str(folder / f"p{index}.png"), (rng.random((24, 32, 3)) * 255).astype("uint8"))
    return folder


def _with_open_files_limit(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    return apply


def test_process_under_a_tiny_open_files_limit_ends_with_one_error_line_and_exit_7(tmp_path: Path) -> None:
    inbox = _inputs(tmp_path / "in")
    done = subprocess.run([sys.executable, "-c", "from srd.cli.main import main; main()", "process", str(inbox),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=90,
                          preexec_fn=_with_open_files_limit(15))
    assert done.returncode == ExitCode.ERROR, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("srd: error:")]
    assert len(errors) == 1 and "Too many open files" in errors[0] and "ulimit -n" in errors[0], done.stderr
    assert done.stderr.count('"pool_start_failed"') == 1, done.stderr  # once per distinct error, not per try
    assert "2 not processed" in done.stderr
    assert not list((tmp_path / "out").glob("*.png"))


def test_a_broken_pipe_to_a_helper_is_an_error_exit_not_success(tmp_path: Path) -> None:
    inbox = _inputs(tmp_path / "in", count=1)
    done = subprocess.run([sys.executable, "-c", _BROKEN_HELPERS, "process", str(inbox / "p0.png"),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=90)
    assert done.returncode == ExitCode.ERROR, done.stderr
    assert "worker processes can't be started" in done.stderr and "Broken pipe" in done.stderr
    assert "1 not processed" in done.stderr


def test_stdout_closed_by_its_reader_is_still_success() -> None:
    """The one BrokenPipeError that is no failure (`srd models list | head -0`) keeps exit 0."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before srd writes a byte
    try:
        done = subprocess.run([sys.executable, "-c", "from srd.cli.main import main; main()", "models", "list"],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)
    assert done.returncode == ExitCode.OK and "srd: error" not in done.stderr, done.stderr


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_process_as_another_user_ends_every_named_input_or_exits_with_an_error() -> None:
    """The attack's repro: a service account runs `srd process` on one named input (here its helpers can't start:
    they re-execute an interpreter it may not reach)."""
    nobody = pwd.getpwnam("nobody")
    work = Path(tempfile.mkdtemp(prefix="srd-setpriv-", dir="/tmp"))  # pytest's tmp_path is root's alone
    try:
        _run_as(nobody, work)
    finally:
        shutil.rmtree(work)


def _run_as(nobody: pwd.struct_passwd, work: Path) -> None:
    _inputs(work, count=1)
    work.chmod(0o777)
    (work / "p0.png").chmod(0o644)
    probe = subprocess.run(["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
                            sys.executable, "-c", "import srd, cv2"], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"this user can't run srd at all here: {probe.stderr[-200:]}")
    done = subprocess.run(["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
                           sys.executable, "-c", "from srd.cli.main import main; main()", "process",
                           str(work / "p0.png"), "--out", str(work / "out")],
                          capture_output=True, text=True, timeout=120, cwd=work,
                          env={**os.environ, "HOME": str(work)})
    written = list((work / "out").glob("*.png")) if (work / "out").is_dir() else []
    # Every named input ends written, failed with a reason (exit 1) or unprocessed with an error (exit 7).
    assert (done.returncode, len(written)) in {(0, 1), (ExitCode.FILES_FAILED, 0), (ExitCode.ERROR, 0)}, done.stderr
    if done.returncode == ExitCode.ERROR:
        assert "srd: error: worker processes can't be started" in done.stderr, done.stderr
    elif done.returncode == ExitCode.FILES_FAILED:
        assert "p0.png" in done.stderr, done.stderr


class _RefusingExecutor(Executor):
    """Builds, but can't spawn workers: every submit fails as it does when the process runs out of descriptors."""

    submits = 0

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[override]
        type(self).submits += 1
        raise OSError(24, "Too many open files")

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass


def test_a_pool_whose_workers_cannot_start_logs_once_stays_unhealthy_and_does_not_spin() -> None:
    def failing_factory() -> Executor:
        raise OSError(11, "Resource temporarily unavailable")

    with capture_logs() as logs:
        pool = JobPool(1, failing_factory)  # a failed first start is reported, not raised
        for _ in range(5):
            pool.ensure_executor()
    assert not pool.healthy and pool.start_failure is not None and pool.start_failure.tries == 6
    assert [entry["event"] for entry in logs].count("pool_start_failed") == 1

    with capture_logs() as logs:
        pool = JobPool(1, _RefusingExecutor)
        pool.submit("a", Job(Path("a.png"), Path("out"), default_profile(), 1))
        for _ in range(3):
            pool.ensure_executor()
    assert _RefusingExecutor.submits == 8  # two tries per call: a failing submit is not retried in a loop
    assert not pool.healthy and pool.start_failure is not None and pool.start_failure.errno == 24
    assert [entry["event"] for entry in logs].count("pool_start_failed") == 1
    assert len(pool) == 1  # the job still waits: nothing was dropped


# Loaded at start-up by every interpreter that has the folder on PYTHONPATH: the daemon's pools can't be built
# while the flag file exists (as when the host is out of processes), and can once it is gone.
_NO_WORKERS_WHILE_FLAGGED = """
import errno, os, pathlib
import srd.executors.pool
_real = srd.executors.pool.make_pool
def make_pool(*args, **kwargs):
    if pathlib.Path(os.environ["SRD_TEST_NO_WORKERS_FLAG"]).exists():
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
    return _real(*args, **kwargs)
srd.executors.pool.make_pool = make_pool
"""


def test_daemon_whose_workers_cannot_start_keeps_running_unhealthy_logs_once_and_recovers(tmp_path: Path) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_NO_WORKERS_WHILE_FLAGGED)
    flag = tmp_path / "no-workers"
    flag.touch()
    config = write_config(tmp_path)
    paths = [path for path in os.environ.get("PYTHONPATH", "").split(os.pathsep) if path]
    env = {"PYTHONPATH": os.pathsep.join([*paths, str(hook)]), "SRD_TEST_NO_WORKERS_FLAG": str(flag)}
    with running(config, env=env) as daemon:
        (tmp_path / "in" / "a.png").write_bytes(make_image(Path("a.png")))
        daemon.wait_event("pool_start_failed")
        check = wait_for(lambda: (done := srd("status", "--check", "--config", str(config))).returncode
                         == ExitCode.UNHEALTHY and done, 20, "status --check to report the pool")
        assert "worker processes can't be started" in check.stdout + check.stderr
        time.sleep(3)  # several supervision passes retry the pool meanwhile
        assert daemon.proc.poll() is None, daemon.log_tail()
        assert len(daemon.events("pool_start_failed")) == 1, daemon.log_tail()  # once per distinct error
        assert "Traceback" not in daemon.log_tail(200)
        assert not list((tmp_path / "in-out").glob("*.png"))
        flag.unlink()
        wait_for(lambda: list((tmp_path / "in-out").glob("a*.png")), 30,
                 "the image once workers start\n" + daemon.log_tail() + json.dumps(read_status(tmp_path / "state")))
        wait_for(lambda: srd("status", "--check", "--config", str(config)).returncode == ExitCode.OK, 20,
                 "status --check healthy again")
        assert daemon.stop() == 0
