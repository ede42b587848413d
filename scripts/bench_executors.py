"""Benchmark the executor backends: the local process pool against Dask with as many worker processes.

Both run the same jobs through the daemon's `JobPool` (the coordinator reads each source and writes each
output in both cases' own way: a local worker reads and writes itself, a Dask job's bytes are shipped).
The Dask cluster is a real ``dask scheduler`` and ``dask worker --nworkers N --nthreads 1`` on loopback,
started and stopped by this script. Reported, per backend: wall time and jobs/s, then Dask's overhead
(relative, and per task in ms: the extra wall time per job per worker slot) and the bytes shipped per job
(the pickled task with its source bytes, and the pickled result with its encoded output).

The jobs are photo-sized: the Set14 images of ../shared/datasets/bench resized to `--size` and saved as
JPEG, upscaled ×2 by the zoo ESPCN. The machine is shared: run it when it is idle, and say so if not.

Example::

    python scripts/bench_executors.py --workers 2 --jobs 32 --output /tmp/bench_executors.json
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2

from srd.config import Config, load_config
from srd.engine.pipeline import StageContext
from srd.executors.backend import Backend, build_pool
from srd.executors.dask_worker import WORKER_ENVIRONMENT, RenderTask
from srd.executors.job import Job, load_source
from srd.executors.pool import Cluster, Finished, JobPool
from srd.executors.render import render

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MODEL = SHARED / "models" / "opencv-zoo" / "ESPCN_x2.pb"
IMAGES = SHARED / "datasets" / "bench" / "Set14"


def make_inputs(folder: Path, count: int, size: tuple[int, int]) -> list[Path]:
    """`count` JPEGs of `size` (width, height) made from the Set14 images, in turn."""
    sources = sorted(IMAGES.glob("*.png"))
    paths = []
    for i in range(count):
        image = cv2.imread(str(sources[i % len(sources)]), cv2.IMREAD_COLOR)
        assert image is not None, sources[i % len(sources)]
        pixels = cv2.resize(image, size, interpolation=cv2.INTER_CUBIC)
        path = folder / f"photo{i:03d}.jpg"
        cv2.imwrite(str(path), pixels, [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(path)
    return paths


def write_config(root: Path, workers: int, scheduler: str | None) -> Config:
    executor = {"kind": "dask", "scheduler": scheduler} if scheduler else {"kind": "local"}
    (root / "srd.yaml").write_text(json.dumps({
        "state_dir": str(root / "state"), "workers": workers, "threads_per_worker": 1, "executor": executor,
        "profiles": {"bench": {"stages": [{"upscale": {"model": str(MODEL), "scale": 2}}],
                               "output": {"format": "same", "quality": 90}}},
        "inboxes": [{"path": str(root / "in"), "outbox": str(root / "out"), "failed": str(root / "failed"),
                     "profile": "bench"}]}))
    return load_config(root / "srd.yaml")


def run_all(pool: JobPool, jobs: list[Job]) -> float:
    """Seconds from the first submit to the last result; every job must succeed."""
    waiting = list(enumerate(jobs))
    done = 0
    started = time.monotonic()
    while done < len(jobs):
        while waiting and pool.has_room():
            token, job = waiting.pop(0)
            pool.submit(token, job)
        for outcome in pool.collect():
            assert isinstance(outcome, Finished) and outcome.result.ok, outcome
            done += 1
        pool.ensure_executor()
        time.sleep(0.002)
    return time.monotonic() - started


def jobs_for(config: Config, inputs: list[Path], out: Path) -> list[Job]:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir()
    profile = config.profiles["bench"]
    return [Job(path, out, profile, config.max_input_pixels) for path in inputs]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def dask_cluster(workers: int, logs: Path) -> Iterator[str]:
    """A scheduler and `workers` single-thread worker processes on loopback; yields the scheduler's address."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(REPO), **WORKER_ENVIRONMENT}
    with (logs / "dask.log").open("ab") as log:
        procs = [subprocess.Popen([sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port",
                                   str(port), "--no-dashboard"], stdout=log, stderr=log, env=env,
                                  start_new_session=True)]
        procs.append(subprocess.Popen([sys.executable, "-m", "dask", "worker", address, "--nworkers", str(workers),
                                       "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard",
                                       "--preload", "srd.executors.dask_worker"],
                                      stdout=log, stderr=log, env=env, start_new_session=True))
    try:
        yield address
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_for_workers(cluster: Cluster, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(cluster.describe().get("workers", [])) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"fewer than {count} Dask workers after {timeout} s: {cluster.describe()}")
        time.sleep(0.2)


def timed(pool: JobPool, jobs: Callable[[], list[Job]], warmup: list[Job]) -> float:
    run_all(pool, warmup)  # models loaded in every worker before the clock starts
    return run_all(pool, jobs())


def shipped_bytes(config: Config, job: Job) -> dict[str, int]:
    """What crosses the network for one job, pickled as Dask sends it: the task (with the source) and the result."""
    context = StageContext(config.worker_engine(), config.model_dirs)
    data, _ = load_source(job)
    models = tuple(context.sha256(spec) for spec in job.profile.pipeline.models(context))
    task = RenderTask(Job(job.source, job.out_dir, job.profile, job.max_input_pixels, data=data),
                      config.worker_engine(), config.model_dirs, models)
    rendered = render(task.job, data, context)
    return {"source_bytes": len(data), "task_pickled": len(pickle.dumps(task, protocol=5)),
            "output_bytes": len(rendered.data), "result_pickled": len(pickle.dumps(rendered, protocol=5))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=32)
    parser.add_argument("--size", type=int, nargs=2, default=(1024, 768), metavar=("WIDTH", "HEIGHT"))
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="srd-bench-executors-"))
    (root / "in").mkdir()
    try:
        inputs = make_inputs(root, args.jobs, tuple(args.size))
        local = write_config(root, args.workers, None)
        pool = build_pool(Backend.of(local))
        try:
            local_s = timed(pool, lambda: jobs_for(local, inputs, root / "out"),
                            jobs_for(local, inputs[:args.workers], root / "warm"))
        finally:
            pool.close()
        with dask_cluster(args.workers, root) as address:
            remote = write_config(root, args.workers, address)
            pool = build_pool(Backend.of(remote))
            try:
                assert pool.cluster is not None
                wait_for_workers(pool.cluster, args.workers)
                dask_s = timed(pool, lambda: jobs_for(remote, inputs, root / "out"),
                               jobs_for(remote, inputs[:args.workers], root / "warm"))
            finally:
                pool.close()
        shipped = shipped_bytes(local, jobs_for(local, inputs[:1], root / "probe")[0])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg": os.getloadavg()},
        "workers": args.workers, "jobs": args.jobs, "size": list(args.size),
        "local": {"wall_s": round(local_s, 2), "jobs_per_s": round(args.jobs / local_s, 2)},
        "dask": {"wall_s": round(dask_s, 2), "jobs_per_s": round(args.jobs / dask_s, 2)},
        "dask_overhead_pct": round(100 * (dask_s / local_s - 1), 1),
        "per_task_overhead_ms": round(1000 * (dask_s - local_s) * args.workers / args.jobs, 1),
        "per_job_s": round(local_s * args.workers / args.jobs, 3),
        "shipped_per_job": shipped,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
