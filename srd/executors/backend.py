"""The job pool a config asks for: local worker processes, or the workers of a Dask scheduler."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from srd.config import Config
from srd.executors.pool import JobPool, process_executor_factory


def build_pool(config: Config, on_start: Callable[[Hashable], None], wake: Callable[[], None]) -> JobPool:
    """A `JobPool` on `config.executor`'s backend, with `config.workers` jobs running at once."""
    if config.executor.kind == "dask":
        # Imported here: Dask is the optional extra srd[dask].
        from srd.executors.dask_cluster import DaskConnection, dask_executor_factory
        from srd.executors.dask_worker import render_task

        connection = DaskConnection(config.executor)
        return JobPool(config.workers, dask_executor_factory(config, connection), run=render_task, on_start=on_start,
                       wake=wake, cluster=connection)
    # Workers log only warnings and errors: the daemon writes the one canonical line per job.
    worker_level = "debug" if config.log_level == "debug" else "warning"
    factory = process_executor_factory(config.workers, config.worker_engine(), config.model_dirs, worker_level,
                                       config.log_format, max_input_pixels=config.max_input_pixels)
    return JobPool(config.workers, factory, on_start=on_start, wake=wake)


def pool_settings(config: Config) -> tuple[Any, ...]:
    """What a pool is built from: a reload that changes it replaces the pool."""
    return (config.executor, config.workers, config.worker_engine(), config.model_dirs, config.log_level,
            config.log_format)
