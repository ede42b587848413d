"""Which pool the daemon runs its jobs in, and when a reload needs a new one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from srd.config import Config
from srd.executors.backend import Backend, build_pool
from srd.executors.pool import JobPool

PoolBuilder = Callable[[Config, Callable[[Any], None], Callable[[], None]], JobPool]


def default_pool(config: Config, on_start: Callable[[Any], None], wake: Callable[[], None]) -> JobPool:
    return build_pool(Backend.of(config), on_start=on_start, wake=wake)


def pool_settings(config: Config) -> Backend:
    """What a running pool was built from: a reload that changes it replaces the pool."""
    return Backend.of(config)
