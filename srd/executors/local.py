"""Code that runs inside worker processes: one `StageContext` per process, models loaded once.

Pools must use the `forkserver` or `spawn` start method: forking a process that runs watcher
threads can copy held locks into the child.
"""

from __future__ import annotations

import multiprocessing
import os
import select
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import forkserver
from pathlib import Path

from srd.engine.cores import CoreShare
from srd.engine.pipeline import StageContext
from srd.engine.upscaler import EngineSettings
from srd.executors.job import Job, JobResult
from srd.executors.render import run_job
from srd.imaging.decoderlimits import set_decoder_limits
from srd.logs import configure_logging

_context: StageContext | None = None


def init_worker(
    parent_pid: int, engine: EngineSettings, model_dirs: Sequence[Path], log_level: str, log_format: str,
    cores: CoreShare | None = None,
) -> None:
    """Pool initializer: die with the parent and the forkserver, leave signals to the parent, set up logging, models.

    If the parent is SIGKILLed, its workers would otherwise live on: they hold both ends of their
    call queue (so they never see EOF) and keep the forkserver alive. Worse, one busy with a job
    would still write its output while a restarted daemon retries the same file. A thread blocked
    on the parent's pidfd kills this worker the moment the parent is gone.
    """
    global _context
    # Its forkserver too: once that is gone, the executor reads this worker as dead (its exit status came through
    # the forkserver) and the job it holds is retried elsewhere, so this worker must not finish it as well.
    for pid in {parent_pid, os.getppid()}:
        threading.Thread(target=_die_with, args=(pid,), name="srd-die-with-parent", daemon=True).start()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # A reload sent to the whole process group (`kill -HUP -PGID`) is the daemon's to handle; its default
    # action would kill the worker and charge the death to the file it was working on.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    configure_logging(log_level, log_format)
    _context = StageContext(engine, model_dirs, cores)


def _die_with(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        os.kill(os.getpid(), signal.SIGKILL)
    except (OSError, AttributeError):  # no pidfd (old kernel, not Linux): poll instead
        while True:
            time.sleep(1)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os.kill(os.getpid(), signal.SIGKILL)
            except PermissionError:
                pass
    else:
        select.select([fd], [], [])
        os.kill(os.getpid(), signal.SIGKILL)


def process(job: Job) -> JobResult:
    """Run one job in this worker (models load on first use and stay loaded)."""
    assert _context is not None, "init_worker was not called in this process"
    return run_job(job, _context)


def _start_helpers_deaf_to_hangups() -> None:
    """Start multiprocessing's forkserver (and with it the resource tracker) now, with SIGHUP ignored.

    An ignored signal stays ignored across fork and exec, so they and every worker forked from them
    outlive a reload sent to the daemon's whole process group (``kill -HUP -PGID``), which by default
    would kill them: the pool would break and the death be charged to the file being processed.
    Dispositions can only be changed from the main thread; elsewhere the helpers start lazily as usual.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a reload arriving in this instant is lost
    try:
        forkserver.ensure_running()
    finally:
        signal.signal(signal.SIGHUP, previous)


def make_pool(
    workers: int, engine: EngineSettings, model_dirs: Sequence[Path], log_level: str = "info", log_format: str = "auto",
    *, max_input_pixels: int | None = None, cores: CoreShare | None = None,
) -> ProcessPoolExecutor:
    """A process pool whose workers are ready to `process` jobs.

    `cores` is the share of the machine each worker's job may use (see `srd.engine.cores`); it reaches the
    workers as they start, because its shared count can't travel with a job.

    With `max_input_pixels`, OpenCV's own decoders in the workers refuse larger images too (the
    second line behind the header check). The forkserver hands workers the environment it was
    started with, so the limit in force is the one set before the first pool of this process.
    """
    if max_input_pixels is not None:
        set_decoder_limits(max_input_pixels)
    _start_helpers_deaf_to_hangups()
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("forkserver"),
        initializer=init_worker,
        initargs=(os.getpid(), engine, tuple(model_dirs), log_level, log_format, cores),
    )
