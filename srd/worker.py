"""Code that runs inside worker processes: one `StageContext` per process, models loaded once.

Pools must use the `forkserver` or `spawn` start method: forking a process that runs watcher
threads can copy held locks into the child.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from srd.engine.upscaler import EngineSettings
from srd.job import Job, JobResult, run_job
from srd.logs import configure_logging
from srd.pipeline import StageContext

_context: StageContext | None = None


def init_worker(engine: EngineSettings, model_dirs: Sequence[Path], log_level: str, log_format: str) -> None:
    """Pool initializer: set up logging and this process's stage context."""
    global _context
    configure_logging(log_level, log_format)
    _context = StageContext(engine, model_dirs)


def process(job: Job) -> JobResult:
    """Run one job in this worker (models load on first use and stay loaded)."""
    assert _context is not None, "init_worker was not called in this process"
    return run_job(job, _context)


def make_pool(
    workers: int, engine: EngineSettings, model_dirs: Sequence[Path], log_level: str = "info", log_format: str = "auto"
) -> ProcessPoolExecutor:
    """A process pool whose workers are ready to `process` jobs."""
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("forkserver"),
        initializer=init_worker,
        initargs=(engine, tuple(model_dirs), log_level, log_format),
    )
