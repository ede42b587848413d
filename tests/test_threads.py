"""The whole machine on one photo: a lone job runs its tiles on every core, a full pool one tile per job."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_pool import FakeExecutor
from test_pool import job as named_job

from srd.config import ExecutorSettings, default_profile, load_config
from srd.engine.cores import CoreShare, shared_count, usable_cores
from srd.engine.lanes import run_in_lanes
from srd.engine.registry import resolve_model
from srd.engine.upscaler import EngineSettings, Upscaler
from srd.executors.backend import Backend, build_pool
from srd.executors.job import Job, JobResult
from srd.executors.local import process
from srd.executors.pool import Finished, JobPool, process_executor_factory

TILED = EngineSettings(tile=64, tile_pad=16, threads=1)


def test_the_share_of_cores_follows_the_running_jobs() -> None:
    running = shared_count()
    share = CoreShare(4, running)
    seen = []
    for jobs in (0, 1, 2, 3, 4, 9):
        share.publish(jobs)
        seen.append(share.lanes())
    assert seen == [4, 4, 2, 1, 1, 1]
    assert CoreShare(1, running).lanes() == 1  # a fixed thread count: one tile at a time whatever runs


def test_a_shrinking_budget_stops_new_pieces_until_the_running_ones_fit() -> None:
    """A second job arriving mid-photo: from the next tile on, no tile starts beside another one."""
    lock = threading.Lock()
    in_flight = 0
    started_beside: dict[int, int] = {}  # item → pieces running when it started (itself included)
    lanes_used: dict[int, int] = {}
    both_first = threading.Barrier(2, timeout=10)  # items 0 and 1 can only pass it by running at the same time
    asked = 0

    def budget() -> int:
        nonlocal asked
        asked += 1
        return 2 if asked <= 3 else 1  # the other job arrives as the fourth piece is about to start

    def work(item: int, lane: int) -> None:
        nonlocal in_flight
        with lock:
            in_flight += 1
            started_beside[item] = in_flight
            lanes_used[item] = lane
        if item < 2:
            both_first.wait()
        time.sleep(0.01)
        with lock:
            in_flight -= 1

    widest = run_in_lanes(range(8), work, budget, most=2)

    assert widest == 2
    assert started_beside[1] == 2
    assert lanes_used[0] != lanes_used[1]  # each lane has its own session: never two pieces on one
    assert [started_beside[item] for item in range(3, 8)] == [1] * 5


def test_an_error_in_a_piece_is_raised_after_the_running_pieces_end() -> None:
    finished: list[int] = []

    def work(item: int, lane: int) -> None:
        if item == 1:
            raise ValueError("bad tile")
        time.sleep(0.05)
        finished.append(item)

    with pytest.raises(ValueError, match="bad tile"):
        run_in_lanes(range(6), work, lambda: 2, most=2)
    assert 0 in finished  # the piece running beside the failing one was not abandoned half-written


@pytest.fixture(scope="module")
def edsr_lite_x2():
    return resolve_model("edsr-lite", 2)


def test_parallel_tiles_give_the_same_picture_as_one_tile_at_a_time(photo: np.ndarray, edsr_lite_x2) -> None:
    serial = Upscaler(edsr_lite_x2, TILED, CoreShare(1))
    parallel = Upscaler(edsr_lite_x2, TILED, CoreShare(2))

    one_at_a_time = serial.upscale(photo)
    two_at_a_time = parallel.upscale(photo)

    assert (serial.cores.widest, parallel.cores.widest) == (1, 2)
    assert two_at_a_time.shape == one_at_a_time.shape == (photo.shape[0] * 2, photo.shape[1] * 2, 3)
    assert np.abs(two_at_a_time.astype(int) - one_at_a_time.astype(int)).max() <= 1
    assert np.mean(two_at_a_time == one_at_a_time) > 0.999


def _backend(cores: int) -> Backend:
    return Backend(ExecutorSettings(), 2, TILED, (), "warning", "json", 100_000_000, cores)


def _jobs(folder: Path, photo: np.ndarray, count: int) -> list[Job]:
    (folder / "out").mkdir(parents=True)
    jobs = []
    for i in range(count):
        source = folder / f"photo{i}.png"
        cv2.imwrite(str(source), photo)
        jobs.append(Job(source, folder / "out", default_profile(), 100_000_000))
    return jobs


def _run(pool: JobPool, jobs: list[Job], first: int = 0) -> list[int]:
    """Submit `jobs` (tokens from `first` on) and wait for them; the tiles each ran at once."""
    for i, job in enumerate(jobs, first):
        pool.submit(i, job)
    wanted = range(first, first + len(jobs))
    outcomes: dict[object, Finished] = {}
    deadline = time.monotonic() + 120
    while not all(i in outcomes for i in wanted) and time.monotonic() < deadline:
        for outcome in pool.collect():
            assert isinstance(outcome, Finished), outcome
            assert outcome.result.ok, outcome.result.error
            outcomes[outcome.token] = outcome
        time.sleep(0.02)
    return [outcomes[i].result.tile_threads for i in wanted]


def hold_or_process(job: Job) -> JobResult:
    """Runs in a real worker: a job named hold* keeps its worker busy until a file named 'release' appears."""
    if job.source.name.startswith("hold"):
        while not (job.source.parent / "release").exists():
            time.sleep(0.02)
        return JobResult(job.source, ok=True)
    return process(job)


@pytest.mark.e2e
@pytest.mark.parametrize("cores", [2, 1], ids=["shared cores: two tiles at once", "a fixed thread count: one"])
def test_a_lone_job_on_a_two_worker_pool_runs_as_many_tiles_at_once_as_its_cores(
    tmp_path: Path, photo: np.ndarray, cores: int
) -> None:
    pool = build_pool(_backend(cores=cores))
    try:
        assert _run(pool, _jobs(tmp_path, photo, 1)) == [cores]
    finally:
        pool.close()


@pytest.mark.e2e
def test_a_job_beside_another_runs_one_tile_at_a_time(tmp_path: Path, photo: np.ndarray) -> None:
    cores = CoreShare(2, shared_count())
    factory = process_executor_factory(2, TILED, (), "warning", "json", cores=cores)
    pool = JobPool(2, factory, run=hold_or_process, cores=cores)
    try:
        pool.submit("held", Job(tmp_path / "hold", tmp_path, default_profile(), 1))
        assert _run(pool, _jobs(tmp_path / "full", photo, 1)) == [1]
        (tmp_path / "release").touch()
        deadline = time.monotonic() + 30
        while pool.running and time.monotonic() < deadline:
            pool.collect()
            time.sleep(0.02)
        assert _run(pool, _jobs(tmp_path / "alone", photo, 1), first=1) == [2]
    finally:
        pool.close()


def test_the_pool_counts_a_job_before_its_worker_can_see_it_and_uncounts_it_when_collected() -> None:
    running = shared_count()
    seen_at_submit: list[int] = []
    executor = FakeExecutor()
    original_submit = executor.submit

    def submit(fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen_at_submit.append(running.value)  # what a worker taking this job would read
        return original_submit(fn, *args, **kwargs)

    executor.submit = submit  # type: ignore[method-assign]
    pool = JobPool(2, lambda: executor, cores=CoreShare(2, running))
    for name in ("a", "b", "c"):
        pool.submit(name, named_job(name))
    assert seen_at_submit == [1, 2] and running.value == 2
    executor.complete("a")
    pool.collect()  # c takes a's worker
    assert seen_at_submit == [1, 2, 2] and running.value == 2
    executor.complete("b")
    pool.collect()
    assert running.value == 1  # c alone now: its next tile may use both cores
    executor.complete("c")
    pool.collect()
    assert running.value == 0


def test_jobs_share_the_cores_unless_threads_per_worker_fixes_them(tmp_path: Path) -> None:
    shared, fixed = tmp_path / "shared.yaml", tmp_path / "fixed.yaml"
    shared.write_text("workers: 2\n")
    fixed.write_text("workers: 2\nthreads_per_worker: 3\n")

    by_default, configured = Backend.of(load_config(shared)), Backend.of(load_config(fixed))

    assert (by_default.cores, by_default.engine.threads) == (usable_cores(), 1)  # one OpenCV thread per tile
    assert (configured.cores, configured.engine.threads) == (1, 3)  # as before: one tile, 3 OpenCV threads
