"""The worker pool as the daemon needs it: bounded, self-healing, and honest about lost jobs (docs/design.md §5).

`ProcessPoolExecutor` alone has three problems for a daemon. It queues without bound, so a big inbox
would be pickled into memory at once; a worker killed by the OOM killer or a segfault breaks the whole
executor for good (`BrokenProcessPool`); and a stuck job can't be cancelled. `JobPool` keeps its own
queue (at most ``2 × workers`` jobs accepted), hands the executor only as many jobs as there are
workers, so a job's clock starts when a worker really takes it, and replaces a broken executor.

Every job ends in exactly one outcome from `JobPool.collect`: `Finished` with the worker's result, or
`Lost` when its worker died or it ran past the timeout. A lost job is charged to its file only when the loss
can be pinned on it (`Lost.pinned`); the daemon decides whether to try it again. After a crash the suspects
are retried one at a time, so a file that kills workers is caught alone and innocent jobs that shared the
crash are not charged.

A remote backend's executor (`srd.executors.dask_cluster`) speaks the same language: its futures raise
`WorkerLost` where a local pool breaks, and `ClusterUnavailable` when the job was cut off from its cluster,
which is nobody's fault; its `submit` raises `OSError` while the cluster can't take jobs, which keeps them
waiting exactly like local worker processes that can't be started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Sequence
from concurrent.futures import Executor, Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import forkserver
from pathlib import Path
from typing import Any, Protocol

import structlog

from srd.engine.cores import CoreShare
from srd.engine.upscaler import EngineSettings
from srd.executors.job import Job, JobResult
from srd.executors.local import make_pool, process
from srd.interrupts import stop_signals_deferred

log = structlog.get_logger(__name__)

# How long closing a pool may wait for its executor after killing the workers, before it kills the
# forkserver too (a frozen one never reports its children's deaths, and the executor waits for them).
CLOSE_GRACE_S = 2.0


@dataclass(frozen=True)
class Finished:
    """The worker returned a result (which may itself be a failure, e.g. a corrupt image)."""

    token: Hashable
    result: JobResult


@dataclass(frozen=True)
class Lost:
    """The job produced no result: its worker died, or it was stopped after `job_timeout` seconds.

    `pinned` says the loss is this job's own doing: it ran past the timeout, could not be sent, or its worker
    died while no other job was running. A dead worker takes the whole executor down with every running
    job, so with several running none of them can be blamed; they are retried alone to find out
    (`retry_alone`). A job killed only because another job ran past its timeout is known to be innocent:
    neither pinned nor in need of running alone.
    """

    token: Hashable
    reason: str
    pinned: bool = True
    retry_alone: bool = True


Outcome = Finished | Lost


class WorkerLost(Exception):
    """Raised by an executor's future when the worker running the job died (a remote cluster's `BrokenProcessPool`)."""


class ClusterUnavailable(Exception):
    """Raised by an executor's future when the job was cut off from its cluster (scheduler gone, no usable worker).

    Not the job's doing: it is handed back unpinned and waits (the executor refuses jobs until it is back).
    """


class Cluster(Protocol):
    """The remote cluster a pool's executors submit to: described in the status, closed with the pool."""

    def describe(self) -> dict[str, Any]: ...

    def slots(self) -> int:
        """How many jobs its usable workers can run at once now (0 while it has none)."""
        ...

    def wait_connected(self, timeout: float) -> bool: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class StartFailure:
    """Why the worker processes can't be started, and how many tries in a row have failed.

    A try fails when no executor can be built or when handing it a job fails (that is when its worker
    processes are spawned); the count starts again once a job reaches a worker.
    """

    error: str
    errno: int | None
    tries: int


def process_executor_factory(
    workers: int, engine: EngineSettings, model_dirs: Sequence[Path], log_level: str, log_format: str, *,
    max_input_pixels: int | None = None, cores: CoreShare | None = None,
) -> Callable[[], Executor]:
    """A factory of worker pools (see `srd.executors.local.make_pool`), so a broken pool can be replaced.

    Every pool it builds shares `cores` (the pool publishes its running jobs there, see `JobPool`).
    """
    return lambda: make_pool(workers, engine, model_dirs, log_level, log_format, max_input_pixels=max_input_pixels,
                             cores=cores)


def kill_workers(executor: Executor) -> None:
    """Kill an executor's worker processes so that it breaks and can be replaced.

    Python 3.14 has ``ProcessPoolExecutor.kill_workers``; before it, the process table is private.
    """
    killer = getattr(executor, "kill_workers", None)
    if killer is not None:
        killer()
        return
    for proc in list(getattr(executor, "_processes", {}).values()):
        with contextlib.suppress(OSError, ValueError):
            proc.kill()


def kill_forkserver() -> int | None:
    """SIGKILL multiprocessing's forkserver of this process; return its pid (None when none runs).

    Workers are forked by it and their exit statuses reach the executor through it: a forkserver that
    doesn't answer (stopped, swapped out on a dying host) makes joining even killed workers wait forever.
    Killed, it closes those channels and the next pool starts a fresh one. Its pid is private to
    multiprocessing; there is no public handle.
    """
    pid = getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None)
    if pid is None:
        return None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return int(pid)


@dataclass
class _Running:
    token: Hashable
    job: Job
    started: float
    limit: float | None
    shared: bool = False  # another job ran at some moment of this one's run


@dataclass(frozen=True)
class RunningJob:
    """A job a worker holds now, for the status file."""

    token: Hashable
    source: Path
    elapsed_s: float
    limit_s: float | None


class JobPool:
    """Runs jobs in a replaceable executor with bounded intake, crash recovery and a per-job timeout.

    Args:
        workers: Jobs run at once (the executor's size).
        factory: Builds a fresh executor (initially and after each crash).
        run: The function the executor runs for a job (picklable): `process` for local workers, the render
            function for a cluster (whose executors load and store around it); tests pass their own.
        on_start: Called with a job's token just before a worker takes it, so the daemon journals
            ``start`` for jobs that really start (a job waiting in the queue costs no attempt).
        wake: Called from the executor's thread when a job ends, to cut the owner's sleep short.
        job_timeout: Seconds a job may run before its worker is killed, for jobs submitted without a limit
            of their own; None for no limit.
        clock: Monotonic clock (tests drive it).
        cluster: The remote cluster the executors use (None: this machine's processes).
        cores: Where the pool publishes how many jobs its workers hold, so that each job takes its share of
            the cores (`srd.engine.cores`); None for workers with a fixed thread count.
    """

    def __init__(
        self,
        workers: int,
        factory: Callable[[], Executor],
        *,
        run: Callable[[Any], Any] = process,
        on_start: Callable[[Hashable], None] = lambda token: None,
        wake: Callable[[], None] = lambda: None,
        job_timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        cluster: Cluster | None = None,
        cores: CoreShare | None = None,
    ) -> None:
        self.workers = workers
        self.cluster = cluster
        self._cores = cores or CoreShare()
        self.capacity = 2 * workers
        self._factory = factory
        self._run = run
        self._on_start = on_start
        self._wake = wake
        self._timeout = job_timeout
        self._clock = clock
        self._executor: Executor | None = None
        self._start_failure: StartFailure | None = None
        self._start_errors_logged: set[str] = set()  # during the current run of failed starts
        self._waiting: deque[tuple[Hashable, Job, bool]] = deque()
        self._limits: dict[Hashable, float | None] = {}
        self._running: dict[Future[JobResult], _Running] = {}
        self._suspects: set[Hashable] = set()
        # Jobs whose submission failed as the executor broke: already journaled, so not started again.
        self._restart_without_charge: set[Hashable] = set()
        self.rebuilds = 0
        self._start_executor()

    # -- intake --------------------------------------------------------------------------------------------

    def has_room(self) -> bool:
        """Whether `submit` may be called: intake is bounded so a big inbox isn't loaded at once."""
        return len(self._waiting) + len(self._running) < self.capacity

    def submit(self, token: Hashable, job: Job, *, suspect: bool = False, time_limit: float | None = None) -> None:
        """Queue a job; `suspect` marks a retry after a crash, run alone and before other work.

        `time_limit` is this job's limit in seconds (default: the pool's `job_timeout`).
        """
        self._limits[token] = time_limit if time_limit is not None else self._timeout
        if suspect:
            self._suspects.add(token)
            behind = next((i for i, item in enumerate(self._waiting) if item[0] not in self._suspects),
                          len(self._waiting))
            self._waiting.insert(behind, (token, job, suspect))
        else:
            self._waiting.append((token, job, suspect))
        self._fill()

    def __len__(self) -> int:
        """Jobs accepted and not yet collected."""
        return len(self._waiting) + len(self._running)

    @property
    def running(self) -> int:
        return len(self._running)

    def running_jobs(self) -> list[RunningJob]:
        """The jobs workers hold now, with how long they have run and their limit."""
        now = self._clock()
        return [RunningJob(r.token, r.job.source, now - r.started, r.limit) for r in self._running.values()]

    @property
    def healthy(self) -> bool:
        """False while the worker processes can't be started (see `start_failure`)."""
        return self._start_failure is None

    @property
    def start_failure(self) -> StartFailure | None:
        """Why the last tries to start worker processes failed; None once a job reached a worker."""
        return self._start_failure

    @property
    def start_error(self) -> str | None:
        """The error of `start_failure`, for the status file."""
        return self._start_failure.error if self._start_failure is not None else None

    def describe(self) -> dict[str, Any]:
        """The backend for the status file: its kind and, for a cluster, its scheduler and workers."""
        return self.cluster.describe() if self.cluster is not None else {"kind": "local", "workers": self.workers}

    def withdraw(self, tokens: Iterable[Hashable]) -> list[Hashable]:
        """Take back those of `tokens` still waiting for a worker; return them (running ones are not stopped)."""
        wanted = set(tokens)
        withdrawn = [item[0] for item in self._waiting if item[0] in wanted]
        self._waiting = deque(item for item in self._waiting if item[0] not in wanted)
        for token in withdrawn:
            self._suspects.discard(token)
            self._limits.pop(token, None)
            self._restart_without_charge.discard(token)
        return withdrawn

    # -- outcomes ------------------------------------------------------------------------------------------

    def collect(self) -> list[Outcome]:
        """Return the outcomes available now, replace a broken executor, and start waiting jobs."""
        outcomes: list[Outcome] = []
        broken = False
        alone = len(self._running) == 1
        for future in [f for f in self._running if f.done()]:
            running = self._running.pop(future)
            self._suspects.discard(running.token)
            self._limits.pop(running.token, None)
            error = future.exception()
            if error is None:
                outcomes.append(Finished(running.token, future.result()))
            elif isinstance(error, BrokenProcessPool):
                broken = True
                outcomes.append(Lost(running.token, "worker process died (killed, out of memory, or crashed)",
                                     pinned=alone))
            elif isinstance(error, WorkerLost):  # the cluster has already replaced the worker
                # Judged on the whole run, not on this collect: a cluster's futures fail one by one, so a job lost
                # with another in the same worker death may be collected after it, seemingly alone.
                outcomes.append(Lost(running.token, f"worker died: {error}", pinned=not running.shared))
            elif isinstance(error, ClusterUnavailable):
                outcomes.append(Lost(running.token, f"cluster unavailable: {error}", pinned=False, retry_alone=False))
            else:  # the job could not be sent or its result not returned (e.g. unpicklable)
                outcomes.append(Lost(running.token, f"{type(error).__name__}: {error}"))
        outcomes.extend(self._enforce_timeout())
        if broken:
            self._rebuild()
        self._fill()
        self._cores.publish(len(self._running))
        return outcomes

    def _enforce_timeout(self) -> list[Outcome]:
        now = self._clock()
        late = [f for f, r in self._running.items() if r.limit is not None and now - r.started > r.limit]
        if not late:
            return []
        # Kill the whole executor: it doesn't say which worker holds which job. The late jobs are lost; the
        # others are innocent, and are handed back too (not re-queued here), so that their owner can clear
        # what their killed workers left half-written before it submits them again.
        outcomes: list[Outcome] = []
        for future in late:
            running = self._running.pop(future)
            self._suspects.discard(running.token)
            self._limits.pop(running.token, None)
            log.error("job_timed_out", src=str(running.job.source), inbox=_inbox_of(running.job),
                      limit_s=round(running.limit or 0, 1))
            outcomes.append(Lost(running.token, f"stuck: timed out after {running.limit:g} s"))
        for running in self._running.values():
            self._suspects.discard(running.token)
            self._limits.pop(running.token, None)
            outcomes.append(Lost(running.token, "interrupted: another job's worker was killed at its time limit",
                                 pinned=False, retry_alone=False))
        self._running.clear()
        self._replace_executor(kill=True)
        return outcomes

    def _fill(self) -> None:
        retried = False
        while self._waiting and self._executor is not None:
            limit = 1 if self._suspects else self.workers
            if self.cluster is not None:
                # Like the local pool, hand over only jobs a worker can take now: a job's time limit runs from
                # its hand-over, and one queued at a cluster without enough workers would run out waiting.
                limit = min(limit, self.cluster.slots())
            if len(self._running) >= limit:
                return
            token, job, _ = self._waiting[0]
            if self._suspects and token not in self._suspects:
                return  # suspects run alone until they are cleared
            self._waiting.popleft()
            if token in self._restart_without_charge:
                self._restart_without_charge.discard(token)
            else:
                self._on_start(token)
            try:
                # A Ctrl-C waits until the worker this may start, and the job, are on the pool's books.
                # Counted before the worker can see the job, so that it starts with its share, not the whole machine.
                self._cores.publish(len(self._running) + 1)
                with stop_signals_deferred():
                    future = self._executor.submit(self._run, job)
                    self._running[future] = _Running(token, job, self._clock(), self._limits.get(token, self._timeout))
            # Submitting spawns the worker processes, so this is where they fail to start (out of file
            # descriptors or processes, an interpreter they can't execute). A submit racing the executor's own
            # breakdown (a worker just died) can also fail, with OSError('handle is closed'), and one whose
            # forkserver died (killed, OOM) with EOFError when the forkserver's answer never comes. Either way the
            # executor is replaced and the job tried once more on it; if that fails too, it waits for the next
            # `collect` or `ensure_executor`: retrying on at once would spin as long as the cause lasts.
            except (BrokenProcessPool, RuntimeError, OSError, EOFError) as exc:
                self._waiting.appendleft((token, job, False))
                self._restart_without_charge.add(token)
                self._note_start_failure(exc)
                self._replace_executor(kill=True)
                if retried:
                    return
                retried = True
                continue
            self._start_failure = None
            if len(self._running) > 1:
                for running in self._running.values():
                    running.shared = True
            future.add_done_callback(lambda _f: self._wake())

    def _rebuild(self) -> None:
        # Kill the broken executor's surviving workers: CPython only SIGTERMs them, which workers ignore,
        # so a busy one would finish (and write) a job already reported lost, and the executor's manager
        # thread would wait for it, which at exit hangs the daemon's shutdown.
        log.warning("pool_rebuilt", reason="broken process pool", rebuilds=self.rebuilds + 1)
        self._replace_executor(kill=True)

    def _replace_executor(self, *, kill: bool) -> None:
        old, self._executor = self._executor, None
        if old is not None:
            if kill:
                kill_workers(old)
            old.shutdown(wait=False, cancel_futures=True)
        self.rebuilds += 1
        self._start_executor()

    def _start_executor(self) -> None:
        try:
            self._executor = self._factory()
        except OSError as exc:  # e.g. out of processes; retried by `ensure_executor`
            self._note_start_failure(exc)

    def _note_start_failure(self, error: BaseException) -> None:
        """Count a failed start; log it once per distinct error (the owner retries it every poll)."""
        text = f"{type(error).__name__}: {error}" if not isinstance(error, OSError) else str(error)
        previous = self._start_failure
        if previous is None:
            self._start_errors_logged.clear()
        if text not in self._start_errors_logged:  # causes can alternate from try to try
            self._start_errors_logged.add(text)
            log.error("pool_start_failed", error=text)
        self._start_failure = StartFailure(text, getattr(error, "errno", None),
                                           1 if previous is None else previous.tries + 1)

    def ensure_executor(self) -> None:
        """Retry building an executor after a failed start, and hand it the waiting jobs."""
        if self._executor is None:
            self._start_executor()
        self._fill()

    # -- shutdown ------------------------------------------------------------------------------------------

    def drain(self, deadline: float, wait: Callable[[float], None]) -> list[Outcome]:
        """Stop starting jobs and collect the running ones until they finish or `deadline` passes.

        Jobs still waiting are dropped: their sources stay in the inbox and the next start finds them.
        Returns the outcomes collected; any job still running at the deadline is abandoned with its
        worker (the ledger keeps it as started, so the next start retries it).
        """
        self._waiting.clear()
        outcomes: list[Outcome] = []
        while self._running and self._clock() < deadline:
            outcomes.extend(self.collect())
            if self._running:
                wait(min(0.05, max(0.0, deadline - self._clock())))
        if self._running:
            log.warning("drain_timeout_abandoning", jobs=len(self._running))
        return outcomes

    def close(self, grace_s: float = CLOSE_GRACE_S) -> None:
        """Shut the executor down, killing its workers (used after `drain`, so none has work worth waiting for).

        Asking idle workers to exit is not enough: one whose sibling was killed while holding the call
        queue's lock waits for that lock forever, and CPython's remedy, SIGTERM, is one workers ignore.
        Bounded: if the executor has not shut down `grace_s` after the kill, the forkserver is killed too.
        """
        executor, self._executor = self._executor, None
        if executor is not None:
            workers = list(getattr(executor, "_processes", {}).values())  # shutdown forgets them
            kill_workers(executor)
            closer = threading.Thread(target=executor.shutdown, kwargs={"wait": True, "cancel_futures": True},
                                      name="srd-pool-close", daemon=True)
            closer.start()
            deadline = time.monotonic() + grace_s
            closer.join(grace_s)
            # A worker whose death was never reported would also hold up the interpreter's exit, which joins it.
            if closer.is_alive() or not _reaped(workers, deadline):
                log.error("pool_close_stuck_killing_forkserver", waited_s=grace_s, forkserver=kill_forkserver())
                closer.join(grace_s)
                _reaped(workers, time.monotonic() + grace_s)
        self._running.clear()
        self._waiting.clear()
        self._limits.clear()
        if self.cluster is not None:
            self.cluster.close()


def _reaped(workers: Sequence[Any], deadline: float) -> bool:
    """Whether every worker process's exit has been collected by `deadline` (a monotonic time)."""
    for worker in workers:
        with contextlib.suppress(ValueError, AssertionError):  # closed, or not a child of this process
            worker.join(max(0.0, deadline - time.monotonic()))
    return all(getattr(worker, "exitcode", 0) is not None for worker in workers)


def _inbox_of(job: Job) -> str | None:
    """The inbox a daemon job came from (its `source_root`); None for `srd process`."""
    return str(job.source_root) if job.source_root is not None else None
