"""The Dask backend end to end: a real `dask scheduler` and two `dask worker` processes on loopback, `srd run`.

Each test checks that every file gets exactly one output, byte-identical to what the local backend's worker
code writes for the same profile, and that nothing goes to failed/, while workers are SIGKILLed, the
scheduler is killed and restarted, or a worker has a different model file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from daemon_helpers import (
    ESPCN_X2,
    descendants_of,
    files_under,
    make_image,
    read_status,
    running,
    srd,
    wait_for,
    write_config,
)

from srd.config import load_config
from srd.engine.pipeline import StageContext
from srd.executors.dask_worker import WORKER_ENVIRONMENT
from srd.executors.job import Job
from srd.executors.render import run_job

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[1]
FILES = 64
# Far above a worker's own footprint (about 90 MB idle), far below an 8000x8000 decode and render.
# (Dask pauses a worker at 80% of it and its nanny kills it at 95%.)
POISON_MEMORY_LIMIT = "600MB"
INNOCENTS = 48


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _dask(*args: str, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """`dask scheduler|worker …` from this interpreter, with srd importable in its processes."""
    environ = {**os.environ, "PYTHONPATH": str(REPO), **WORKER_ENVIRONMENT, **(env or {})}
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "dask", *args], stdout=out, stderr=out, env=environ,
                                start_new_session=True)


class Cluster:
    """A scheduler and its workers (each a nanny and its worker process) on free loopback ports."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.scheduler: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []

    def start_scheduler(self, env: dict[str, str] | None = None) -> None:
        self.scheduler = _dask("scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--no-dashboard",
                               log=self.root / "scheduler.log", env=env)

    def start_worker(self, *options: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        worker = _dask("worker", self.address, "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard",
                       "--preload", "srd.executors.dask_worker", *options,
                       log=self.root / f"worker{len(self.workers)}.log", env=env)
        self.workers.append(worker)
        return worker

    def worker_processes(self) -> list[int]:
        """Pids of the live worker processes (the nannies' children that run tasks)."""
        pids = []
        for nanny in self.workers:
            for child in descendants_of(nanny.pid):
                with contextlib.suppress(OSError):
                    if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                        pids.append(child)
        return pids

    def kill_scheduler(self) -> None:
        assert self.scheduler is not None
        self.scheduler.kill()
        self.scheduler.wait()

    def stop(self) -> None:
        for proc in [*self.workers, *([self.scheduler] if self.scheduler else [])]:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    started = Cluster(tmp_path)
    started.start_scheduler()
    try:
        yield started
    finally:
        started.stop()


def _setup(root: Path, address: str, count: int = FILES,
           size: tuple[int, int] = (96, 128)) -> tuple[Path, dict[str, bytes]]:
    """A config on the Dask backend using the zoo ESPCN ×2 by name, `count` images of `size` ready to drop in
    its inbox, and the outputs the local backend's worker code writes for them (by name)."""
    models = root / "models"
    models.mkdir()
    shutil.copy(ESPCN_X2, models / ESPCN_X2.name)
    config = write_config(root, stages=[{"upscale": {"model": "ESPCN", "scale": 2}}], workers=2,
                          model_dirs=[str(models)], executor={"kind": "dask", "scheduler": address})
    loaded = load_config(config)
    reference = root / "reference"
    (reference / "out").mkdir(parents=True)
    context = StageContext(loaded.worker_engine(), loaded.model_dirs)
    expected = {}
    for i in range(count):
        name = f"p{i:03d}.png"
        source = root / "in" / name
        (reference / name).write_bytes(make_image(source, size, seed=i))
        result = run_job(Job(reference / name, reference / "out", loaded.profiles["test"], loaded.max_input_pixels),
                         context)
        assert result.ok and result.output is not None, result.error
        expected[name] = result.output.read_bytes()
    return config, expected


def _drop_inputs(root: Path) -> None:
    for path in sorted((root / "reference").glob("*.png")):
        (root / "in" / path.name).write_bytes(path.read_bytes())


def _check_outputs(root: Path, expected: dict[str, bytes]) -> None:
    outputs = files_under(root / "in-out")
    assert sorted(outputs) == sorted(expected), "each file has exactly one output, under its own name"
    wrong = [name for name, path in outputs.items() if path.read_bytes() != expected[name]]
    assert not wrong, f"outputs differ from the local backend's: {wrong[:5]}"
    assert files_under(root / "in-failed") == {}


def _done(root: Path) -> int:
    return len(files_under(root / "in-out"))


def test_dask_outputs_match_local_while_workers_are_killed(tmp_path: Path, cluster: Cluster) -> None:
    """64 files through two Dask workers, three of whose worker processes are SIGKILLed mid-batch: every file
    gets exactly one output identical to the local backend's, none fails, and the status shows the backend.
    Images large enough (~0.1 s of work each) that a kill almost always hits a task being rendered."""
    config, expected = _setup(tmp_path, cluster.address, size=(192, 256))
    cluster.start_worker()
    cluster.start_worker()
    with running(config) as daemon:
        wait_for(lambda: len(cluster.worker_processes()) == 2, 30, "two worker processes")
        wait_for(lambda: len(read_status(tmp_path / "state").get("executor", {}).get("workers", [])) == 2, 30,
                 "the daemon to see both workers")
        _drop_inputs(tmp_path)
        for kills, at in enumerate((8, 24, 40)):
            wait_for(lambda at=at: _done(tmp_path) >= at, 60, f"{at} outputs\n" + daemon.log_tail())
            victim = cluster.worker_processes()[kills % 2]
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda victim=victim: victim not in cluster.worker_processes()
                     and len(cluster.worker_processes()) == 2, 30, "the nanny to restart its worker")
        wait_for(lambda: _done(tmp_path) == FILES, 90, "every output\n" + daemon.log_tail())
        status = read_status(tmp_path / "state")
        assert status["executor"]["kind"] == "dask" and status["executor"]["scheduler"] == cluster.address
        assert status["executor"]["connected"] is True
        # Each killed worker is said: in the log, and counted in the status (a worker that keeps dying shows).
        wait_for(lambda: read_status(tmp_path / "state")["executor"].get("workers_left", 0) >= 3, 10,
                 "the status to count the three workers that left")
        assert len(daemon.events("dask_worker_left")) >= 3
        assert daemon.stop() == 0
    _check_outputs(tmp_path, expected)


def test_dask_scheduler_restart_makes_jobs_wait_not_fail(tmp_path: Path, cluster: Cluster) -> None:
    """The scheduler killed mid-batch: the daemon stays up, reports the backend disconnected, loses and fails
    nothing, and finishes the batch once a scheduler (and its workers, which exit with it) are back."""
    config, expected = _setup(tmp_path, cluster.address, count=40)
    cluster.start_worker()
    cluster.start_worker()
    with running(config) as daemon:
        wait_for(lambda: len(read_status(tmp_path / "state").get("executor", {}).get("workers", [])) == 2, 30,
                 "the daemon to see both workers")
        _drop_inputs(tmp_path)
        wait_for(lambda: _done(tmp_path) >= 10, 60, "10 outputs\n" + daemon.log_tail())
        cluster.kill_scheduler()
        wait_for(lambda: read_status(tmp_path / "state").get("executor", {}).get("connected") is False, 20,
                 "the status to show the scheduler lost")
        time.sleep(1.0)
        assert daemon.proc.poll() is None
        assert files_under(tmp_path / "in-failed") == {}
        cluster.start_scheduler()
        cluster.start_worker()
        cluster.start_worker()
        wait_for(lambda: _done(tmp_path) == 40, 90, "every output after the restart\n" + daemon.log_tail())
        cut_off = [event for event in daemon.events("job_lost_retrying") if "cluster unavailable" in event["reason"]]
        assert cut_off and not any(event["pinned"] for event in cut_off), "jobs in flight were handed back unpinned"
        assert daemon.stop() == 0
    _check_outputs(tmp_path, expected)


def test_dask_jobs_wait_for_a_worker_without_running_out_of_time(tmp_path: Path, cluster: Cluster) -> None:
    """A scheduler with no worker (all worker machines down): files wait however long that lasts, none is timed
    out or failed for it (a job's time limit runs only once a worker can take it), and they are processed
    once a worker joins."""
    config, expected = _setup(tmp_path, cluster.address, count=3)
    text = config.read_text()
    config.write_text(text + "job_timeout: 2\n")
    with running(config) as daemon:
        _drop_inputs(tmp_path)
        wait_for(lambda: read_status(tmp_path / "state").get("executor", {}).get("connected") is True, 30,
                 "the daemon connected to the scheduler")
        time.sleep(6.0)  # three times the job timeout with no worker: nothing may time out meanwhile
        assert not daemon.events("job_timed_out") and files_under(tmp_path / "in-failed") == {}
        assert _done(tmp_path) == 0
        cluster.start_worker()
        wait_for(lambda: _done(tmp_path) == 3, 60, "every output once a worker joined\n" + daemon.log_tail())
        assert daemon.stop() == 0
    _check_outputs(tmp_path, expected)


def test_dask_worker_with_a_different_model_refuses(tmp_path: Path, cluster: Cluster) -> None:
    """A worker whose ESPCN ×2 is another file refuses its tasks, which the good worker then renders: no file
    is failed or rendered with the wrong model, and the status names the refusing worker."""
    config, expected = _setup(tmp_path, cluster.address, count=24)
    wrong = tmp_path / "wrong-models"
    wrong.mkdir()
    shutil.copy(ESPCN_X2.with_name("FSRCNN_x2.pb"), wrong / ESPCN_X2.name)
    cluster.start_worker(env={"SRD_MODEL_DIRS": str(wrong)})
    cluster.start_worker()
    with running(config) as daemon:
        wait_for(lambda: len(read_status(tmp_path / "state").get("executor", {}).get("workers", [])) == 2, 30,
                 "the daemon to see both workers")
        _drop_inputs(tmp_path)
        wait_for(lambda: _done(tmp_path) == 24, 90, "every output\n" + daemon.log_tail())
        refusals = daemon.events("dask_worker_refused")
        assert refusals and "different model file" in refusals[0]["reason"]
        workers = wait_for(lambda: [w for w in read_status(tmp_path / "state")["executor"]["workers"]
                                    if w["refused"]], 10, "the status to show the refusing worker")
        assert "different model file" in workers[0]["refused"]
        assert daemon.stop() == 0
    _check_outputs(tmp_path, expected)


def test_dask_job_timeout_stops_the_task_and_restarts_its_worker(tmp_path: Path, cluster: Cluster) -> None:
    """A job past `job_timeout` on a Dask worker is lost as on the local pool: its worker is restarted (a task
    can't be interrupted), it is pinned each time and ends in failed/ after max_attempts, and the small files
    beside it, interrupted or not, still get their outputs."""
    config, expected = _setup(tmp_path, cluster.address, count=3)
    data = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**data, "job_timeout": 3, "max_attempts": 2}))
    slow = tmp_path / "reference-slow" / "slow.png"
    slow.parent.mkdir()
    slow.write_bytes(make_image(slow, (1800, 1800), seed=99))  # over 5 s of ESPCN on one thread
    cluster.start_worker()
    cluster.start_worker()
    with running(config) as daemon:
        wait_for(lambda: len(read_status(tmp_path / "state").get("executor", {}).get("workers", [])) == 2, 30,
                 "the daemon to see both workers")
        (tmp_path / "in" / "slow.png").write_bytes(slow.read_bytes())
        _drop_inputs(tmp_path)
        wait_for(lambda: files_under(tmp_path / "in-failed"), 90, "the slow file in failed/\n" + daemon.log_tail())
        wait_for(lambda: _done(tmp_path) == 3, 60, "the small files' outputs\n" + daemon.log_tail())
        timed_out = [e for e in daemon.events("job_lost_retrying") if "timed out" in e["reason"]]
        assert timed_out and all(e["pinned"] for e in timed_out)
        assert daemon.events("dask_workers_restarting"), "the worker holding the late task was restarted"
        assert daemon.stop() == 0
    assert "slow.png" in files_under(tmp_path / "in-failed")
    outputs = files_under(tmp_path / "in-out")
    assert {name: path.read_bytes() for name, path in outputs.items()} == expected


def test_dask_poison_file_ends_in_failed_and_innocents_are_processed(tmp_path: Path, cluster: Cluster) -> None:
    """A file that kills every worker it reaches (a 190 KB PNG that decodes to 8000×8000, far over the workers'
    memory limit, so their nannies kill them) ends in failed/ with its reason after `max_attempts` deaths pinned on
    it, as on the local backend. The files in flight beside it, even one queued on a worker it killed, are never
    charged a death: each gets exactly one correct output, none is failed, and the daemon keeps running with a
    status that counts them.

    The scheduler allows no failure (``allowed-failures`` 0; Dask's default is 3): each death of the poison's worker
    ends its task in `KilledWorker` at once, so each of srd's attempts costs one worker death, not four."""
    cluster.kill_scheduler()
    cluster.start_scheduler(env={"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"})
    config, expected = _setup(tmp_path, cluster.address, count=INNOCENTS, size=(192, 256))
    data = yaml.safe_load(config.read_text())
    # Three jobs in flight on two one-thread workers: the scheduler queues one behind the poison on its worker.
    config.write_text(yaml.safe_dump({**data, "max_attempts": 2, "workers": 3}))
    ok, poison = cv2.imencode(".png", np.zeros((8000, 8000, 3), np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    assert ok
    for _ in range(2):
        cluster.start_worker("--memory-limit", POISON_MEMORY_LIMIT)
    with running(config) as daemon:
        wait_for(lambda: len(read_status(tmp_path / "state").get("executor", {}).get("workers", [])) == 2, 30,
                 "the daemon to see both workers")
        started = time.monotonic()
        (tmp_path / "in" / "poison.png").write_bytes(poison.tobytes())
        _drop_inputs(tmp_path)
        report = tmp_path / "in-failed" / "poison.png.error.json"
        wait_for(report.exists, 60, "the poison in failed/\n" + daemon.log_tail())
        failed_after = time.monotonic() - started
        wait_for(lambda: _done(tmp_path) == INNOCENTS, 60, "the innocent files' outputs\n" + daemon.log_tail())
        reason = json.loads(report.read_text())["reason"]
        assert "gave up after 2 deaths pinned on this file" in reason, reason
        lost = daemon.events("job_lost_retrying")
        charged = [event for event in lost if event["pinned"] and not event["src"].endswith("poison.png")]
        assert not charged, f"a death was pinned on an innocent file: {charged}"
        deaths = sum(log.read_text().count("exceeded 95% memory budget") for log in tmp_path.glob("worker*.log"))
        print(f"\npoison in failed/ {failed_after:.1f} s after it was dropped, after {deaths} worker deaths; "
              f"srd's retries (file, pinned, strikes): "
              f"{[(Path(event['src']).name, event['pinned'], event['strikes']) for event in lost]}")
        status = wait_for(lambda: (s := json.loads(srd("status", "--json", "--config", str(config)).stdout))
                          and (s["inboxes"][0]["done"], s["inboxes"][0]["failed"]) == (INNOCENTS, 1) and s, 10,
                          "the status to count the outputs and the poison")
        assert status["alive"] and status["executor"]["connected"], status
        assert status["inboxes"][0]["last_error"]["source"].endswith("poison.png")
        assert daemon.stop() == 0
    assert sorted(files_under(tmp_path / "in-failed")) == ["poison.png", "poison.png.error.json"]
    outputs = files_under(tmp_path / "in-out")
    assert {name: path.read_bytes() for name, path in outputs.items()} == expected


def test_srd_process_runs_on_the_dask_backend(tmp_path: Path, cluster: Cluster) -> None:
    """`srd process` with a config on the Dask backend renders on the workers: outputs identical to the local
    backend's, one per input, and the inputs untouched."""
    config, expected = _setup(tmp_path, cluster.address, count=12)
    cluster.start_worker()
    _drop_inputs(tmp_path)
    done = srd("process", str(tmp_path / "in"), "-o", str(tmp_path / "processed"), "--config", str(config),
               "--profile", "test", "--threads", "1", "-j", "2", "--verbose", timeout=120)
    assert done.returncode == 0, done.stderr
    assert "dask_scheduler_connected" in done.stdout + done.stderr
    outputs = files_under(tmp_path / "processed")
    assert {name: path.read_bytes() for name, path in outputs.items()} == expected
    assert sorted(files_under(tmp_path / "in")) == sorted(expected)
