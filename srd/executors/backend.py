"""The job pool a config asks for: local worker processes, or the workers of a Dask scheduler.

The daemon and `srd process` both build their `JobPool` here, from a `Backend` value.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path

from srd.config import Config, ExecutorSettings
from srd.engine.cores import CoreShare, shared_count, usable_cores
from srd.engine.upscaler import EngineSettings
from srd.executors.pool import JobPool, process_executor_factory


@dataclass(frozen=True)
class Backend:
    """What a pool is built from; a reload that changes it replaces the pool.

    `workers` is how many jobs run at once: processes here, or tasks in flight on a Dask cluster. `cores` is
    what local jobs share: a job runs up to cores ÷ running jobs tiles at once (1: one tile at a time, as
    with a fixed `threads_per_worker`). Dask workers keep their own threads.
    """

    executor: ExecutorSettings
    workers: int
    engine: EngineSettings
    model_dirs: tuple[Path, ...]
    log_level: str
    log_format: str
    max_input_pixels: int
    cores: int = 1

    @classmethod
    def of(cls, config: Config) -> Backend:
        """The daemon's backend. Its workers log only warnings and errors: the daemon writes each job's line."""
        return cls(config.executor, config.workers, config.worker_engine(), tuple(config.model_dirs),
                   "debug" if config.log_level == "debug" else "warning", config.log_format, config.max_input_pixels,
                   shared_cores(config.threads_per_worker))


def shared_cores(threads_per_worker: int | None) -> int:
    """The cores a backend's jobs share: all usable ones, unless a fixed thread count per worker is configured."""
    return usable_cores() if threads_per_worker is None else 1


def build_pool(backend: Backend, *, on_start: Callable[[Hashable], None] = lambda token: None,
               wake: Callable[[], None] = lambda: None, job_timeout: float | None = None) -> JobPool:
    """A `JobPool` on `backend` (see `JobPool` for the hooks)."""
    if backend.executor.kind == "dask":
        # Imported here: Dask is the optional extra srd[dask].
        from srd.executors.dask_cluster import DaskConnection, DaskExecutor
        from srd.executors.dask_worker import render_task

        connection = DaskConnection(backend.executor)
        return JobPool(backend.workers,
                       lambda: DaskExecutor(connection, backend.workers, backend.engine, backend.model_dirs),
                       run=render_task, on_start=on_start, wake=wake, job_timeout=job_timeout, cluster=connection)
    cores = CoreShare(backend.cores, shared_count()) if backend.cores > 1 else None
    factory = process_executor_factory(backend.workers, backend.engine, backend.model_dirs, backend.log_level,
                                       backend.log_format, max_input_pixels=backend.max_input_pixels, cores=cores)
    return JobPool(backend.workers, factory, on_start=on_start, wake=wake, job_timeout=job_timeout, cores=cores)
