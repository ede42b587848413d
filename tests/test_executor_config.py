"""The `executor` config key and how `srd status` judges and shows the Dask backend."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from srd.cli.status_view import render
from srd.config import ExecutorSettings, parse_config
from srd.daemon.status import Health, StateDirChoice, assess, pid_alive
from srd.errors import ConfigError


def _executor(tmp_path: Path, executor: Any) -> ExecutorSettings:
    return parse_config({"executor": executor}, base=tmp_path, source="t.yaml", check_folders=False).executor


def test_executor_defaults_to_local_and_reads_a_dask_scheduler(tmp_path: Path) -> None:
    """No key means the local pool; kind dask takes the scheduler's address and resolves TLS files from the config."""
    assert _executor(tmp_path, None) == ExecutorSettings("local")
    assert _executor(tmp_path, {"kind": "dask", "scheduler": "tcp://127.0.0.1:8786"}) == ExecutorSettings(
        "dask", "tcp://127.0.0.1:8786")
    tls = _executor(tmp_path, {"kind": "dask", "scheduler": "tls://nas:8786",
                               "tls": {"ca_file": "ca.pem", "cert": "srd.pem", "key": "/k/srd.key"}})
    assert tls.tls == (tmp_path / "ca.pem", tmp_path / "srd.pem", Path("/k/srd.key"))


@pytest.mark.parametrize(("executor", "where", "says"), [
    ({"kind": "ray"}, "executor.kind", "must be one of local, dask"),
    ({"kind": "dask"}, "executor.scheduler", "tcp://host:port"),
    ({"kind": "dask", "scheduler": "http://x:8786"}, "executor.scheduler", "tcp://host:port"),
    ({"kind": "dask", "scheduler": "tls://x:8786"}, "executor.tls", "needs {ca_file, cert, key}"),
    ({"kind": "dask", "scheduler": "tcp://x:8786", "tls": {"ca_file": "a", "cert": "b", "key": "c"}},
     "executor.scheduler", "must be tls://"),
    ({"kind": "local", "scheduler": "tcp://x:8786"}, "executor", "only to kind: dask"),
    ({"kind": "dask", "scheduler": "tcp://x:1", "port": 2}, "executor.port", "unknown key"),
])
def test_executor_mistakes_are_named(tmp_path: Path, executor: dict[str, Any], where: str, says: str) -> None:
    """Each mistake in the executor key is reported where it is, with what is expected."""
    with pytest.raises(ConfigError) as error:
        _executor(tmp_path, executor)
    assert any(f"'{where}'" in problem and says in problem for problem in error.value.problems), error.value.problems


@pytest.fixture
def daemon_pid() -> Iterator[int]:
    """A live process whose command line names srd, as `srd status` requires of the daemon's pid."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "srd"])
    deadline = time.monotonic() + 10
    while not pid_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    yield proc.pid
    proc.kill()
    proc.wait()


def _status(pid: int, executor: dict[str, Any]) -> dict[str, Any]:
    return {"pid": pid, "state": "running", "updated_at": datetime.now(UTC).isoformat(), "workers": 2,
            "pool": {"running": 0}, "ledger": {}, "inboxes": [], "executor": executor}


def test_status_names_an_unreachable_scheduler_and_each_workers_load(daemon_pid: int) -> None:
    """A lost scheduler makes the daemon unhealthy with its address and error; connected, each worker's load and
    any refusal is listed."""
    down = assess(_status(daemon_pid, {"kind": "dask", "scheduler": "tcp://nas:8786", "connected": False,
                           "error": "Timed out trying to connect", "workers": []}))
    assert down.health is Health.UNHEALTHY
    assert "Dask scheduler tcp://nas:8786 unreachable: Timed out trying to connect" in down.reasons
    up = assess(_status(daemon_pid, {"kind": "dask", "scheduler": "tcp://nas:8786", "connected": True, "error": None,
                         "workers": [{"address": "tcp://a:1", "name": "a", "nthreads": 1, "executing": 1,
                                      "memory_mb": 300, "refused": None},
                                     {"address": "tcp://b:1", "name": "b", "nthreads": 1, "executing": 0,
                                      "memory_mb": 200, "refused": "different model file"}]}))
    assert up.health is Health.HEALTHY
    text = render(up, StateDirChoice(Path("/s"), "config"))
    assert "executor dask, scheduler tcp://nas:8786: 2 worker(s)" in text
    assert "tcp://a:1 (a): 1/1 busy, 300 MB" in text and "tcp://b:1 (b): refused: different model file" in text
    alone_refusing = assess(_status(daemon_pid, {"kind": "dask", "scheduler": "tcp://nas:8786", "connected": True,
                                     "workers": [{"address": "tcp://b:1", "refused": "different model file"}]}))
    assert alone_refusing.reasons == ("no usable Dask worker at tcp://nas:8786: files wait",)
