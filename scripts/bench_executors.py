"""Benchmark the executor backends: the local process pool against Dask with as many worker processes.

Both run the same jobs through the daemon's `JobPool` (a local worker reads and writes the files itself;
for Dask this process reads and writes them and ships the bytes). The Dask cluster is a real ``dask
scheduler`` and ``dask worker --nworkers N --nthreads 1`` on loopback, started and stopped by this script.
Rounds alternate between the backends so a change of load hits both; medians are compared. Reported:
wall times and jobs/s, Dask's overhead (relative, and per task in ms: the extra wall time per job per
worker slot) on photo-sized jobs and on tiny ones (where the overhead is nearly all there is), and the
bytes shipped per photo job (the pickled task with its source bytes, the pickled result with its output).

The jobs are photo-sized: the Set14 images of ../shared/datasets/bench resized to `--size` and saved as
JPEG, upscaled ×2 by the zoo ESPCN. The machine is shared: run it when it is idle, and say so if not.

Example::

    python scripts/bench_executors.py --workers 2 --output /tmp/bench_executors.json
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
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
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


def shipped_bytes(config: Config, job: Job) -> dict[str, int]:
    """What crosses the network for one job, pickled as Dask sends it: the task (with the source) and the result."""
    context = StageContext(config.worker_engine(), config.model_dirs)
    content = load_source(job)
    models = tuple(context.sha256(spec) for spec in job.profile.pipeline.models(context))
    task = RenderTask(Job(job.source, job.out_dir, job.profile, job.max_input_pixels, content=content),
                      config.worker_engine(), config.model_dirs, models)
    rendered = render(task.job, content.data, context)
    return {"source_bytes": len(content.data), "task_pickled": len(pickle.dumps(task, protocol=5)),
            "output_bytes": len(rendered.data), "result_pickled": len(pickle.dumps(rendered, protocol=5))}


def measure(pools: dict[str, JobPool], configs: dict[str, Config], inputs: list[Path], root: Path,
            rounds: int) -> dict[str, list[float]]:
    """Wall seconds of each round per backend, the backends alternating so a change of load hits both."""
    walls: dict[str, list[float]] = {name: [] for name in pools}
    for name, pool in pools.items():  # models loaded in every worker before any clock starts
        run_all(pool, jobs_for(configs[name], inputs[:2 * pool.workers], root / "warm"))
    for _ in range(rounds):
        for name, pool in pools.items():
            walls[name].append(run_all(pool, jobs_for(configs[name], inputs, root / "out")))
    return walls


def compare(walls: dict[str, list[float]], jobs: int, workers: int) -> dict[str, Any]:
    """Median wall per backend, Dask's relative overhead, and its extra time per task per worker slot."""
    local, dask = statistics.median(walls["local"]), statistics.median(walls["dask"])
    return {"local_wall_s": [round(w, 2) for w in walls["local"]], "dask_wall_s": [round(w, 2) for w in walls["dask"]],
            "local_jobs_per_s": round(jobs / local, 2), "dask_jobs_per_s": round(jobs / dask, 2),
            "dask_overhead_pct": round(100 * (dask / local - 1), 1),
            "per_task_overhead_ms": round(1000 * (dask - local) * workers / jobs, 1),
            "local_s_per_job_per_worker": round(local * workers / jobs, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=24, help="photo-sized jobs per round")
    parser.add_argument("--tiny-jobs", type=int, default=96, help="tiny jobs per round (for the per-task overhead)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, nargs=2, default=(1024, 768), metavar=("WIDTH", "HEIGHT"))
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="srd-bench-executors-"))
    (root / "in").mkdir()
    pools: dict[str, JobPool] = {}
    try:
        photos = make_inputs(root / "in", args.jobs, tuple(args.size))
        tiny_folder = root / "tiny"
        tiny_folder.mkdir()
        tiny = make_inputs(tiny_folder, args.tiny_jobs, (32, 24))
        with dask_cluster(args.workers, root) as address:
            configs = {"local": write_config(root, args.workers, None),
                       "dask": write_config(root, args.workers, address)}
            pools = {name: build_pool(Backend.of(config)) for name, config in configs.items()}
            cluster = pools["dask"].cluster
            assert cluster is not None
            wait_for_workers(cluster, args.workers)
            photo_walls = measure(pools, configs, photos, root, args.rounds)
            tiny_walls = measure(pools, configs, tiny, root, args.rounds)
        shipped = shipped_bytes(configs["local"], jobs_for(configs["local"], photos[:1], root / "probe")[0])
    finally:
        for pool in pools.values():
            pool.close()
        shutil.rmtree(root, ignore_errors=True)
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg_after": os.getloadavg()},
        "workers": args.workers, "rounds": args.rounds,
        "photo": {"jobs": args.jobs, "size": list(args.size), **compare(photo_walls, args.jobs, args.workers)},
        "tiny": {"jobs": args.tiny_jobs, "size": [32, 24], **compare(tiny_walls, args.tiny_jobs, args.workers)},
        "shipped_per_photo_job": shipped,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
