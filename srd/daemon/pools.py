"""Which pool the daemon runs its jobs in, and when a reload needs a new one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from srd.config import Config
from srd.pool import JobPool, process_executor_factory

PoolBuilder = Callable[[Config, Callable[[Any], None], Callable[[], None]], JobPool]


def default_pool(config: Config, on_start: Callable[[Any], None], wake: Callable[[], None]) -> JobPool:
    # Workers log only warnings and errors: the daemon writes the one canonical line per job.
    worker_level = "debug" if config.log_level == "debug" else "warning"
    factory = process_executor_factory(config.workers, config.worker_engine(), config.model_dirs, worker_level,
                                       config.log_format, max_input_pixels=config.max_input_pixels)
    return JobPool(config.workers, factory, on_start=on_start, wake=wake)


def pool_settings(config: Config) -> tuple[Any, ...]:
    """What a running pool was built from: a reload that changes it replaces the pool."""
    return (config.workers, config.worker_engine(), config.model_dirs, config.log_level, config.log_format)
