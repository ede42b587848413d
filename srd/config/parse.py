"""`parse_config`: a parsed YAML document → a `Config`, with every problem reported at once."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from srd.config.fields import Problems, check_value, parse_fields
from srd.config.folders import check_folders_timeboxed
from srd.config.schema import (
    DEFAULT_CLAIM_STALE_S,
    DEFAULT_PROFILE,
    LOG_FORMATS,
    MAX_CLAIM_STALE_S,
    MIN_CLAIM_STALE_S,
    Config,
    Profile,
    default_profile,
    default_workers,
)
from srd.config.sections import check_upscale_models, parse_inbox, parse_profile, resolve_path
from srd.config.services import parse_executor, parse_web
from srd.engine.pipeline import Upscale
from srd.engine.runtime import ONNX_ENGINES
from srd.engine.runtime_choice import device_problem, runtime_problem, visible_gpus
from srd.engine.upscaler import CHROMA_INTERPOLATIONS, EngineSettings
from srd.errors import ConfigError
from srd.imaging.imageio import DEFAULT_MAX_INPUT_BYTES
from srd.observability import parse_metrics

MAX_PROCESSES = 1024

_TOP_LEVEL = {
    "state_dir", "workers", "threads_per_worker", "max_input_pixels", "max_input_bytes", "max_attempts",
    "job_timeout", "job_timeout_min_seconds", "reconcile_interval", "claim_stale_seconds",
    "crash_retry_after_seconds", "model_dirs", "engine", "profiles", "inboxes", "log", "web", "metrics", "executor",
}


def _default_workers(engine: EngineSettings, threads: int | None) -> int:
    """One worker per GPU where the engine is told to use CUDA ('cuda': each worker takes the next GPU;
    'cuda:N': the one GPU), else as many as fit the cores."""
    if engine.device == "cuda":
        return max(1, visible_gpus())
    if engine.device.startswith("cuda:"):
        return 1
    return default_workers(threads)


def parse_config(data: Any, *, base: Path, source: str, check_models: bool = False,
                 check_folders: bool = True) -> Config:
    """Build a `Config` from parsed YAML; raises ConfigError listing every problem.

    With `check_models`, every profile's models must also be found (the daemon and `config check`
    want that; a one-shot run that overrides the model does not). Without `check_folders`, the folders'
    layout is not checked: nothing on the disk is looked at, so `srd status`, which needs only the
    state_dir, answers even while a share that holds an inbox stops answering.
    """
    problems = Problems()
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(["the top level must be a mapping"], source)
    for key in data:
        if key not in _TOP_LEVEL:
            problems.add(str(key), f"unknown key (known: {', '.join(sorted(_TOP_LEVEL))})")

    def number(key: str, kind: type, default: Any, minimum: float, maximum: float = math.inf) -> Any:
        value = data.get(key, default)
        good, value, expected = check_value(value, kind | None if default is None else kind)
        if not good:
            problems.add(key, f"expected {expected}, got {data.get(key)!r}")
            return default
        if value is not None and value < minimum:
            problems.add(key, f"must be at least {minimum}")
            return default
        if value is not None and value > maximum:
            problems.add(key, f"must be at most {maximum}")
            return default
        return value

    engine_fields = parse_fields(EngineSettings, data.get("engine"), "engine", problems, skip=("threads",))
    engine = EngineSettings(**(engine_fields.values if engine_fields else {}))
    # Each worker is a process and each thread an inference thread: beyond this, a typo, not a machine.
    # None (the default): jobs share the cores by how many run (see srd.engine.cores); a number fixes it.
    threads = number("threads_per_worker", int, None, 1, MAX_PROCESSES)
    workers = number("workers", int, _default_workers(engine, threads), 1, MAX_PROCESSES)
    max_pixels = number("max_input_pixels", int, 100_000_000, 1)
    max_bytes = number("max_input_bytes", int, DEFAULT_MAX_INPUT_BYTES, 1)
    max_attempts = number("max_attempts", int, 3, 1)
    job_timeout = number("job_timeout", float, None, 1)
    job_timeout_min = number("job_timeout_min_seconds", float, 120.0, 1)
    reconcile = number("reconcile_interval", float, 300.0, 1)
    crash_retry_after = number("crash_retry_after_seconds", float, 5.0, 1, 600)
    claim_stale = number("claim_stale_seconds", float, DEFAULT_CLAIM_STALE_S, MIN_CLAIM_STALE_S, MAX_CLAIM_STALE_S)
    state_dir = data.get("state_dir", ".srd")
    if not isinstance(state_dir, str):
        problems.add("state_dir", "expected a path string")
        state_dir = ".srd"
    model_dirs_data = data.get("model_dirs", [])
    if not isinstance(model_dirs_data, list) or not all(isinstance(p, str) for p in model_dirs_data):
        problems.add("model_dirs", "expected a list of folder paths")
        model_dirs_data = []

    if engine.onnx_engine not in ONNX_ENGINES:
        problems.add("engine.onnx_engine", f"must be one of {', '.join(ONNX_ENGINES)}")
    if engine.chroma not in CHROMA_INTERPOLATIONS:
        problems.add("engine.chroma", f"must be one of {', '.join(CHROMA_INTERPOLATIONS)}")
    if engine.tile < 0 or engine.tile_pad < 0:
        problems.add("engine", "tile and tile_pad must not be negative")
    for key, problem in (("runtime", runtime_problem(engine.runtime)), ("device", device_problem(engine.device))):
        if problem:
            problems.add(f"engine.{key}", problem)

    log = data.get("log") or {}
    log_level, log_format = "info", "auto"
    if not isinstance(log, Mapping) or set(log) - {"level", "format"}:
        problems.add("log", "expected a mapping with 'level' and/or 'format'")
    else:
        log_level = str(log.get("level", "info")).lower()
        log_format = str(log.get("format", "auto")).lower()
        if log_level not in ("debug", "info", "warning", "error"):
            problems.add("log.level", "must be debug, info, warning or error")
        if log_format not in LOG_FORMATS:
            problems.add("log.format", f"must be one of {', '.join(LOG_FORMATS)}")

    profiles: dict[str, Profile] = {DEFAULT_PROFILE: default_profile()}
    profiles_data = data.get("profiles", {})
    if not isinstance(profiles_data, Mapping):
        problems.add("profiles", "expected a mapping of profile names to profiles")
        profiles_data = {}
    builtin = () if DEFAULT_PROFILE in profiles_data else profiles[DEFAULT_PROFILE].pipeline.stages
    upscales = [(f"profiles.{DEFAULT_PROFILE}.stages[{i}].upscale.model", stage)
                for i, stage in enumerate(builtin) if isinstance(stage, Upscale)]
    for name, body in profiles_data.items():
        profile = parse_profile(str(name), body, f"profiles.{name}", problems, upscales)
        if profile is not None:
            profiles[str(name)] = profile

    inboxes_data = data.get("inboxes")
    if inboxes_data is None:
        inboxes_data = [{"path": "inbox", "outbox": "outbox", "failed": "failed"}]
    if not isinstance(inboxes_data, list):
        problems.add("inboxes", "expected a list of inboxes")
        inboxes_data = []
    inboxes = []
    for i, item in enumerate(inboxes_data):
        inbox = parse_inbox(item, f"inboxes[{i}]", base, problems)
        if inbox is None:
            continue
        # A profile that exists but had errors is already reported; only an unknown name is new.
        if inbox.profile not in profiles and inbox.profile not in profiles_data:
            problems.add(f"inboxes[{i}].profile", f"unknown profile {inbox.profile!r} (known: {', '.join(profiles)})")
        inboxes.append(inbox)
    if check_folders:
        check_folders_timeboxed(inboxes, resolve_path(state_dir, base), problems)
    model_dirs = tuple(resolve_path(p, base) for p in model_dirs_data)
    if check_models:
        check_upscale_models(upscales, model_dirs, engine, problems)

    metrics = parse_metrics(data.get("metrics"), problems)
    executor = parse_executor(data.get("executor"), base, problems)
    web = parse_web(data.get("web"), problems)

    if problems.items:
        raise ConfigError(problems.items, source)
    return Config(
        state_dir=resolve_path(state_dir, base),
        workers=workers,
        threads_per_worker=threads,
        max_input_pixels=max_pixels,
        max_input_bytes=max_bytes,
        max_attempts=max_attempts,
        job_timeout=job_timeout,
        job_timeout_min_seconds=job_timeout_min,
        reconcile_interval=reconcile,
        claim_stale_seconds=claim_stale,
        crash_retry_after_seconds=crash_retry_after,
        model_dirs=model_dirs,
        engine=engine,
        profiles=profiles,
        inboxes=tuple(inboxes),
        log_level=log_level,
        log_format=log_format,
        source=source,
        web=web,
        metrics=metrics,
        executor=executor,
    )
