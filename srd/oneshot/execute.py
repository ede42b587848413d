"""Run a one-shot batch through the daemon's `JobPool`: the one execution path for both.

The pool replaces a broken executor, so a worker killed by the OOM killer or a signal costs only the
jobs it held: they are retried alone (``suspect`` mode) up to ``max_attempts`` times, then fail with the
reason, and the rest of the batch goes on. `job_timeout` is honoured the same way.

A worker killed after the rename that put its output in place, but before it reported, has done the job.
That job counts as processed: in place the input *is* its output, and a retry would upscale it again (the
retry's own check of the input's version would refuse it); elsewhere the output would be reported missing.
"""

from __future__ import annotations

import errno
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import structlog

from srd.errors import WorkerStartError
from srd.executors.backend import Backend, build_pool
from srd.executors.job import Job, JobResult
from srd.executors.pool import Finished, JobPool
from srd.fs.atomic import temp_files_of
from srd.fs.fileversion import FileVersion, version_of

log = structlog.get_logger(__name__)

# Linux's CLOCK_REALTIME_COARSE (not named by `time`): the clock file timestamps are taken from, so a file
# written after a reading of it never has an earlier ctime (the precise clock can run up to a tick ahead).
_REALTIME_COARSE = 5
CONNECT_WAIT_S = 10.0  # how long a run waits for its Dask scheduler before it gives up
_POLL_S = 0.5  # how often the loop looks at the pool without a wake-up (timeouts, progress)
# Tries (up to two per poll) to start the worker processes before the run gives up: enough to ride out a
# moment without free processes, few enough that a lasting cause ends the run within about a second.
_START_TRIES = 4
# What to change, by the errno of the failure to start the workers.
_START_HINTS = {
    errno.EMFILE: "raise the open-files limit (ulimit -n)",
    errno.ENFILE: "the system is out of open files; close some programs",
    errno.EAGAIN: "raise the process limit (ulimit -u) or free memory",
    errno.ENOMEM: "free memory",
}


@dataclass(frozen=True)
class PoolSettings:
    backend: Backend
    job_timeout: float | None
    max_attempts: int


def run_batch(
    jobs: Sequence[Job],
    settings: PoolSettings,
    *,
    on_start: Callable[[Job], None],
    on_result: Callable[[Job, JobResult], None],
    on_idle: Callable[[], None],
) -> None:
    """Run every job; each ends in exactly one `on_result` call (a lost worker becomes a failed result).

    However the batch ends (done, Ctrl-C, an error), the workers are stopped first and then the temp
    files that killed or timed-out workers left beside the targets are removed: no half-written file stays.
    """
    if not jobs:
        return
    woken = threading.Event()
    attempts: Counter[int] = Counter()
    handed_out: dict[int, _Attempt] = {}  # token → its latest attempt

    def started(token: object) -> None:
        assert isinstance(token, int)
        attempts[token] += 1
        target = jobs[token].target
        assert target is not None
        handed_out[token] = _Attempt(time.clock_gettime_ns(_REALTIME_COARSE), version_of(target))
        on_start(jobs[token])

    backend = replace(settings.backend, workers=min(settings.backend.workers, len(jobs)))
    pool = build_pool(backend, on_start=started, wake=woken.set, job_timeout=settings.job_timeout)
    if pool.cluster is not None and not pool.cluster.wait_connected(CONNECT_WAIT_S):
        pool.close()
        raise WorkerStartError(f"the Dask scheduler {backend.executor.scheduler} can't be reached: "
                               f"{pool.cluster.describe().get('error')}; start it, then run the command again")
    waiting = deque(range(len(jobs)))
    try:
        while waiting or len(pool):
            while waiting and pool.has_room():
                index = waiting.popleft()
                pool.submit(index, jobs[index])
            woken.wait(_POLL_S)
            woken.clear()
            for outcome in pool.collect():
                token = outcome.token
                assert isinstance(token, int)
                job = jobs[token]
                if isinstance(outcome, Finished):
                    on_result(job, outcome.result)
                elif _output_landed(job, handed_out[token]):
                    log.warning("job_lost_after_output_landed", src=str(job.source), reason=outcome.reason)
                    on_result(job, JobResult(job.source, True, output=job.target))
                elif attempts[token] < settings.max_attempts:
                    log.warning("job_lost_retrying", src=str(job.source), reason=outcome.reason,
                                attempts=attempts[token], max_attempts=settings.max_attempts)
                    pool.submit(token, job, suspect=True)
                else:
                    reason = f"{outcome.reason}; gave up after {attempts[token]} attempt(s)"
                    on_result(job, JobResult(job.source, False, error=reason))
            pool.ensure_executor()
            _give_up_if_workers_cannot_start(pool)
            on_idle()
    finally:
        pool.close()
        _remove_leftover_temps(jobs)


@dataclass(frozen=True)
class _Attempt:
    started_ns: int  # `_REALTIME_COARSE` when it was handed out
    target_before: FileVersion | None  # the target then (the input itself, in place)


def _output_landed(job: Job, attempt: _Attempt) -> bool:
    """Whether a lost job's output is in place: its target was replaced by a rename (a new inode) since the
    attempt was handed out.

    A foreign writer replacing the target in that same moment can't be told apart; in place its file is
    then not processed either way.
    """
    assert job.target is not None
    now = version_of(job.target)
    before = attempt.target_before
    return now is not None and (before is None or now.ino != before.ino) and now.ctime_ns >= attempt.started_ns


def _give_up_if_workers_cannot_start(pool: JobPool) -> None:
    """Raise `WorkerStartError` once the pool's workers have failed to start `_START_TRIES` times in a row.

    The inputs not yet processed stay unprocessed: the run ends with an error, never with success.
    """
    failure = pool.start_failure
    if failure is None or failure.tries < _START_TRIES:
        return
    hint = _START_HINTS.get(failure.errno or 0,
                            f"check that this user can execute the Python interpreter ({sys.executable}) "
                            "and start processes")
    raise WorkerStartError(f"worker processes can't be started after {failure.tries} tries ({failure.error}); "
                           f"{hint}, then run the command again")


def _remove_leftover_temps(jobs: Sequence[Job]) -> None:
    """Delete the temp files killed workers left beside the targets (nothing writes them any more)."""
    for job in jobs:
        assert job.target is not None
        for temp in temp_files_of(job.target):
            try:
                temp.unlink()
            except FileNotFoundError:
                continue  # two targets sharing a long name prefix list the same temp
            except OSError as exc:
                log.warning("orphan_temp_remove_failed", path=str(temp), error=str(exc))
                continue
            log.info("orphan_temp_removed", path=str(temp), src=str(job.source))
