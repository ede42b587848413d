"""The job pool: bounded intake, crash recovery with real worker processes, isolation of suspects, timeouts."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest
from daemon_helpers import wait_for
from reliability_harness import worker_pids

from srd.config import default_profile
from srd.engine.upscaler import EngineSettings
from srd.executors.job import Job, JobResult
from srd.executors.local import make_pool
from srd.executors.pool import Finished, JobPool, Lost, WorkerLost

# End to end: each test starts real worker processes (a pool, or the srd command).
pytestmark = pytest.mark.e2e


def job(name: str) -> Job:
    return Job(Path(name), Path("out"), default_profile(), 1)


def scripted(job: Job) -> JobResult:
    """Runs in a real worker: the file name says what to do (ok, die, sleep-SECONDS)."""
    name = job.source.name
    if name.startswith("die"):
        os._exit(1)
    if name.startswith("sleep-"):
        time.sleep(float(name.split("-", 1)[1]))
    return JobResult(job.source, ok=True, output=Path("out") / name, sha256="0" * 64)


def real_factory(workers: int):
    return lambda: ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("forkserver"))


class FakeExecutor(Executor):
    """Holds submitted jobs until the test completes them, so concurrency is observable without timing."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Future[JobResult], Job]] = []

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[override]
        future: Future[JobResult] = Future()
        future.set_running_or_notify_cancel()
        self.jobs.append((future, args[0]))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass

    def complete(self, name: str) -> None:
        for future, submitted in self.jobs:
            if submitted.source.name == name and not future.done():
                future.set_result(JobResult(submitted.source, ok=True))
                return
        raise AssertionError(f"{name} is not running")

    def running(self) -> list[str]:
        return [j.source.name for f, j in self.jobs if not f.done()]


def collect_until(pool: JobPool, count: int, timeout: float = 30) -> list:
    outcomes: list = []

    def enough() -> bool:
        outcomes.extend(pool.collect())
        return len(outcomes) >= count

    wait_for(enough, timeout, f"{count} outcomes", interval=0.02)
    return outcomes


def test_intake_is_bounded_and_a_job_is_started_only_when_a_worker_takes_it() -> None:
    """At most 2 × workers jobs are accepted; the executor gets one per worker, and `on_start` (the
    ledger's start record, which costs an attempt) runs only then."""
    fake = FakeExecutor()
    started: list[str] = []
    pool = JobPool(2, lambda: fake, on_start=started.append)
    for name in "abcd":
        assert pool.has_room()
        pool.submit(name, job(name))
    assert not pool.has_room() and len(pool) == 4
    assert fake.running() == ["a", "b"] and started == ["a", "b"]
    fake.complete("a")
    outcomes = pool.collect()
    assert [(type(o), o.token) for o in outcomes] == [(Finished, "a")]
    assert fake.running() == ["b", "c"] and started == ["a", "b", "c"]
    assert pool.has_room()


def test_suspects_after_a_crash_run_alone_and_first() -> None:
    """Retries after a crash run one at a time ahead of other work, so a file that kills workers is caught
    alone rather than costing innocent neighbours their attempts."""
    fake = FakeExecutor()
    pool = JobPool(2, lambda: fake)
    pool.submit("x", job("x"))
    pool.submit("s1", job("s1"), suspect=True)
    pool.submit("s2", job("s2"), suspect=True)
    assert fake.running() == ["x"]  # the suspects wait for the running job and then go alone
    fake.complete("x")
    pool.collect()
    assert fake.running() == ["s1"]
    fake.complete("s1")
    pool.collect()
    assert fake.running() == ["s2"]
    pool.submit("y", job("y"))
    assert fake.running() == ["s2"]
    fake.complete("s2")
    pool.collect()
    assert fake.running() == ["y"]


def test_a_dying_worker_is_reported_lost_and_the_pool_is_rebuilt() -> None:
    """A real worker killed mid-job (os._exit, as the OOM killer would) breaks the executor: the job is
    reported lost, a new executor is built, and later jobs run normally."""
    pool = JobPool(1, real_factory(1), run=scripted)
    try:
        pool.submit("die", job("die"))
        outcome, = collect_until(pool, 1)
        assert isinstance(outcome, Lost) and "died" in outcome.reason
        assert pool.rebuilds == 1 and pool.healthy
        pool.submit("ok", job("ok"))
        outcome, = collect_until(pool, 1)
        assert isinstance(outcome, Finished) and outcome.result.ok
    finally:
        pool.close()


def test_a_broken_executor_loses_every_running_job_with_one_rebuild() -> None:
    """Every job running in a broken executor is lost (each costs an attempt), and one rebuild serves all."""
    executors: list[FakeExecutor] = []

    def factory() -> FakeExecutor:
        executors.append(FakeExecutor())
        return executors[-1]

    pool = JobPool(2, factory)
    pool.submit("a", job("a"))
    pool.submit("b", job("b"))
    pool.submit("c", job("c"))
    for future, _ in executors[0].jobs:
        future.set_exception(BrokenProcessPool("a child process terminated abruptly"))
    outcomes = pool.collect()
    assert sorted((type(o).__name__, o.token) for o in outcomes) == [("Lost", "a"), ("Lost", "b")]
    assert pool.rebuilds == 1 and len(executors) == 2
    assert executors[1].running() == ["c"]


def test_a_cluster_worker_death_is_pinned_only_on_a_job_that_ran_alone_throughout() -> None:
    """A cluster's futures fail one by one: two jobs lost in one worker death may reach two collects, the second
    seemingly alone. Neither is charged, since neither ran alone; a job that did, from start to loss, is."""
    fake = FakeExecutor()
    pool = JobPool(2, lambda: fake)
    pool.submit("poison", job("poison"))
    pool.submit("innocent", job("innocent"))
    (poison, _), (innocent, _) = fake.jobs
    poison.set_exception(WorkerLost("1 Dask worker died running it"))
    assert [(o.token, o.pinned) for o in pool.collect() if isinstance(o, Lost)] == [("poison", False)]
    innocent.set_exception(WorkerLost("1 Dask worker died running it"))
    assert [(o.token, o.pinned) for o in pool.collect() if isinstance(o, Lost)] == [("innocent", False)]
    pool.submit("poison", job("poison"), suspect=True)
    fake.jobs[-1][0].set_exception(WorkerLost("1 Dask worker died running it"))
    assert [(o.token, o.pinned) for o in pool.collect() if isinstance(o, Lost)] == [("poison", True)]


def test_a_stuck_job_is_killed_at_the_timeout_and_innocent_jobs_are_handed_back_unpinned() -> None:
    """Past `job_timeout` the stuck job's worker is killed (the executor can't cancel a running call): the
    job is lost and pinned, while a job that shared the executor comes back lost too, neither pinned nor to
    be run alone, so its owner can clean up after its worker and submit it again; the new executor runs it."""
    now = [0.0]
    started: list[str] = []
    pool = JobPool(2, real_factory(2), run=scripted, job_timeout=1.0, clock=lambda: now[0], on_start=started.append)
    try:
        pool.submit("stuck", job("sleep-60"))
        now[0] = 0.5
        pool.submit("innocent", job("sleep-0.2"))
        now[0] = 1.2
        outcomes = sorted(pool.collect(), key=lambda o: o.token)
        assert [(type(o), o.token, o.pinned, o.retry_alone) for o in outcomes] == [
            (Lost, "innocent", False, False), (Lost, "stuck", True, True)]
        assert "timed out" in outcomes[1].reason and "time limit" in outcomes[0].reason
        assert len(pool) == 0 and pool.rebuilds == 1
        pool.submit("innocent", job("sleep-0.2"))
        outcome, = collect_until(pool, 1)
        assert isinstance(outcome, Finished) and outcome.token == "innocent"
        assert started == ["stuck", "innocent", "innocent"]
    finally:
        pool.close()


def test_drain_finishes_running_jobs_and_drops_waiting_ones() -> None:
    """On shutdown, jobs in workers finish within the deadline; queued ones are left for the next start."""
    fake = FakeExecutor()
    now = [0.0]
    pool = JobPool(1, lambda: fake, clock=lambda: now[0])
    pool.submit("a", job("a"))
    pool.submit("b", job("b"))

    def wait(seconds: float) -> None:
        fake.complete("a")
        now[0] += seconds

    outcomes = pool.drain(deadline=5.0, wait=wait)
    assert [o.token for o in outcomes] == ["a"]
    assert len(pool) == 0 and fake.running() == []


def test_withdraw_takes_back_only_jobs_no_worker_has_started() -> None:
    """An inbox paused for its claim takes back its queued jobs; a running one is not stopped, and the
    others keep their places."""
    fake = FakeExecutor()
    started: list[str] = []
    pool = JobPool(1, lambda: fake, on_start=started.append)
    pool.submit("a", job("a"))
    pool.submit("b", job("b"))
    assert pool.withdraw(["a", "b", "unknown"]) == ["b"]
    assert fake.running() == ["a"] and len(pool) == 1
    fake.complete("a")
    assert [o.token for o in pool.collect()] == ["a"]
    assert started == ["a"] and len(pool) == 0


def test_closing_a_pool_whose_idle_worker_died_holding_the_queue_lock_returns_promptly() -> None:
    """Found by the worker-kill loop, whose daemon then never exited: idle workers wait for work one at a
    time, the one reading the call queue holding its lock. SIGKILL that one and its sibling never gets the
    lock to read the stop sentinel; CPython's remedy, SIGTERM, is one srd workers ignore, and with no job
    running the daemon never sees the pool break. Closing must still end at once."""
    before = set(worker_pids(os.getpid()))
    pool = JobPool(2, lambda: make_pool(2, EngineSettings(), ()), run=scripted)
    workers: list[int] = []
    try:
        pool.submit("a", job("sleep-0.3"))
        pool.submit("b", job("sleep-0.3"))
        collect_until(pool, 2)
        workers = sorted(set(worker_pids(os.getpid())) - before)
        # The reader blocks in the pipe read, its sibling on the lock (a futex).
        readers = wait_for(lambda: [p for p in workers if "pipe" in Path(f"/proc/{p}/wchan").read_text()], 5,
                           f"a worker of {workers} blocked reading the call queue")
        assert len(workers) == 2 and len(readers) == 1
        os.kill(readers[0], signal.SIGKILL)
        time.sleep(0.5)
        closer = threading.Thread(target=pool.close, daemon=True)
        closer.start()
        closer.join(15)
        assert not closer.is_alive(), "close() hung"
    finally:
        for pid in workers:  # let a failed run end instead of hanging pytest's exit
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class _CtrlCWhileStartingWorkers(ProcessPoolExecutor):
    """A real pool that gets a Ctrl-C just as a submit starts its worker process."""

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[override]
        os.kill(os.getpid(), signal.SIGINT)
        return super().submit(fn, *args, **kwargs)


def test_ctrl_c_while_a_worker_starts_waits_until_the_pool_knows_the_worker_and_its_job() -> None:
    # Cut short, the submit would leave a worker the pool can't kill, which later fails to start with a
    # traceback on the shared stderr, and a job that is neither running nor waiting.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # also when pytest runs with it ignored
    try:
        pool = JobPool(1, lambda: _CtrlCWhileStartingWorkers(1, mp_context=multiprocessing.get_context("forkserver")),
                       run=scripted)
        executor = pool._executor
        assert isinstance(executor, _CtrlCWhileStartingWorkers)
        try:
            with contextlib.suppress(KeyboardInterrupt):
                pool.submit("a", job("sleep-30"))
                raise AssertionError("the Ctrl-C was lost")
            assert pool.running == 1 and len(pool) == 1
            workers = list(executor._processes.values())
            assert len(workers) == 1
        finally:
            pool.close()
        assert all(worker.exitcode is not None for worker in workers)  # killed and reaped
    finally:
        signal.signal(signal.SIGINT, previous)
