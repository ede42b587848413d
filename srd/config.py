"""YAML configuration → frozen dataclasses, with every problem reported at once.

Each problem names its location (`at 'profiles.photo.stages[2].upscale.scale': …`) so an admin
can fix a config in one pass. Unknown keys are errors: a typo must never silently fall back to a
default. Relative paths are taken relative to the config file's folder.
"""

from __future__ import annotations

import math
import os
import types
import typing
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from srd.engine.pipeline import STAGES, Pipeline, StageContext, Upscale
from srd.engine.upscaler import CHROMA_INTERPOLATIONS, ONNX_ENGINES, EngineSettings
from srd.errors import ConfigError, ModelError
from srd.fs.timebox import NoAnswer, timeboxed
from srd.imaging.imageio import DEFAULT_MAX_INPUT_BYTES, OUTPUT_FORMATS, normalise_format
from srd.observability import Hook, MetricsSettings, parse_hook, parse_metrics

DEFAULT_PROFILE = "default"
DEFAULT_MODEL = "edsr-lite"
DEFAULT_SCALE = 2
WATCH_MODES = ("auto", "native", "poll")
ON_SUCCESS = ("keep", "archive", "delete")
COLLISIONS = ("suffix", "overwrite", "skip")
DUPLICATES = ("skip", "link")
LOG_FORMATS = ("auto", "json", "console")


@dataclass(frozen=True)
class OutputSettings:
    """How results are encoded: `format` 'same' keeps the input's format.

    `fallback_format` is written for inputs srd reads but cannot write (HEIC, AVIF, GIF …) when
    `format` is 'same'; None keeps the built-in choice (HEIC → JPEG, the others → PNG).
    """

    format: str = "same"
    quality: int = 95
    metadata: bool = True
    fallback_format: str | None = None


@dataclass(frozen=True)
class Profile:
    name: str
    pipeline: Pipeline
    output: OutputSettings = OutputSettings()


@dataclass(frozen=True)
class Inbox:
    """One watched folder and where its results and failures go."""

    path: Path
    outbox: Path
    failed: Path
    profile: str = DEFAULT_PROFILE
    mode: str = "auto"
    poll_interval: float = 2.0
    settle_seconds: float = 2.0
    # A file that decodes as truncated while it was modified this recently is waited for, not failed.
    settle_max_backoff_seconds: float = 600.0
    recursive: bool = True
    ignore: tuple[str, ...] = ()
    on_success: str = "keep"
    archive: Path | None = None
    collision: str = "suffix"
    duplicates: str = "skip"
    on_done: Hook | None = None
    on_failed: Hook | None = None


@dataclass(frozen=True)
class ExecutorSettings:
    """Where jobs run: this machine's worker processes (`local`) or the workers of a Dask scheduler (`dask`).

    With `tls` (CA, certificate, key files), the connection to a ``tls://`` scheduler is encrypted and
    authenticated both ways (see systemd/srd-scheduler.service).
    """

    kind: str = "local"
    scheduler: str | None = None
    tls: tuple[Path, Path, Path] | None = None


EXECUTOR_KINDS = ("local", "dask")


@dataclass(frozen=True)
class Config:
    state_dir: Path
    workers: int
    threads_per_worker: int
    max_input_pixels: int
    max_attempts: int
    job_timeout: float | None
    reconcile_interval: float
    model_dirs: tuple[Path, ...]
    engine: EngineSettings
    profiles: Mapping[str, Profile]
    inboxes: tuple[Inbox, ...]
    log_level: str = "info"
    log_format: str = "auto"
    source: str = "defaults"
    max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES
    # With no fixed `job_timeout`, a job's limit is derived from its pixel count, never below this.
    job_timeout_min_seconds: float = 120.0
    web: WebSettings = field(default_factory=lambda: WebSettings())
    metrics: MetricsSettings | None = None
    executor: ExecutorSettings = ExecutorSettings()

    def worker_engine(self) -> EngineSettings:
        """Engine settings as each worker process applies them."""
        return EngineSettings(
            tile=self.engine.tile,
            tile_pad=self.engine.tile_pad,
            onnx_engine=self.engine.onnx_engine,
            chroma=self.engine.chroma,
            threads=self.threads_per_worker,
        )


def default_profile() -> Profile:
    return Profile(DEFAULT_PROFILE, Pipeline((Upscale(model=DEFAULT_MODEL, scale=DEFAULT_SCALE),)))


def default_workers(threads_per_worker: int) -> int:
    """As many workers as fit the cores without oversubscribing them."""
    return max(1, (os.cpu_count() or 1) // max(1, threads_per_worker))


class _Problems:
    """Collects problems with their locations instead of stopping at the first."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"at '{where}': {message}" if where else message)


def _type_name(kind: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(kind, str(kind))


def _check_value(value: Any, annotation: Any) -> tuple[bool, Any, str]:
    """Validate one scalar against a dataclass field annotation; returns (ok, value, expected)."""
    hint = annotation
    optional = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        hint = args[0]
    if value is None:
        return optional, None, "a value"
    if hint is bool:
        return isinstance(value, bool), value, _type_name(bool)
    if hint is int:
        # 64-bit: a bigger count or size is a typo, and Python's unbounded int would only fail deep inside.
        ok = isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**63
        return ok, value, _type_name(int)
    if hint is float:
        # Finite: `.inf` seconds would mean "never" where srd promises a bound (a file would never settle).
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return ok, float(value) if ok else value, _type_name(float)
    if hint is str:
        return isinstance(value, str), value, _type_name(str)
    return False, value, str(hint)


@dataclass(frozen=True)
class _Fields:
    """The well-typed settings of one section, and the names of those that were reported as ill-typed.

    Every well-typed value is kept even when a sibling is wrong, so the checks that follow still see
    it: dropping the whole section at the first bad value is what hid one problem behind another.
    """

    values: dict[str, Any]
    rejected: frozenset[str]


def _parse_fields(cls: type, data: Any, where: str, problems: _Problems, skip: tuple[str, ...] = ()) -> _Fields | None:
    """The settings for dataclass `cls` in mapping `data` (scalars only); None if `data` is no mapping."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        problems.add(where, "expected a mapping")
        return None
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls) if f.name not in skip}
    rejected = set()
    for key in data:
        if key not in known:
            problems.add(f"{where}.{key}" if where else str(key), f"unknown key (known: {', '.join(sorted(known))})")
            rejected.add(str(key))
    values: dict[str, Any] = {}
    for name in known:
        if name not in data:
            continue
        good, value, expected = _check_value(data[name], hints[name])
        if good:
            values[name] = value
        else:
            problems.add(f"{where}.{name}" if where else name, f"expected {expected}, got {data[name]!r}")
            rejected.add(name)
    return _Fields(values, frozenset(rejected))


def _parse_stage(item: Any, where: str, problems: _Problems) -> Any:
    if isinstance(item, str):
        item = {item: None}
    if not isinstance(item, Mapping) or len(item) != 1:
        problems.add(where, f"a stage is a mapping with one key, one of: {', '.join(STAGES)}")
        return None
    (kind, settings), = item.items()
    if kind not in STAGES:
        problems.add(where, f"unknown stage {kind!r} (known: {', '.join(STAGES)})")
        return None
    parsed = _parse_fields(STAGES[kind], settings, f"{where}.{kind}", problems)
    if parsed is None:
        return None
    stage = STAGES[kind](**parsed.values)
    names = {f.name for f in fields(stage)}
    for message in stage.problems():
        first, _, rest = message.partition(" ")
        if first in names and first not in parsed.rejected:  # locate a problem with one field at that field
            problems.add(f"{where}.{kind}.{first}", rest)
        elif first not in names and not parsed.rejected:  # a rule across fields holds only if all were read
            problems.add(f"{where}.{kind}", message)
    return None if parsed.rejected else stage


def _parse_profile(name: str, data: Any, where: str, problems: _Problems,
                   upscales: list[tuple[str, Upscale]]) -> Profile | None:
    """The profile at `where`, or None if it has problems; appends its upscale stages to `upscales`."""
    if not isinstance(data, Mapping):
        problems.add(where, "expected a mapping with 'stages' (and optionally 'output')")
        return None
    for key in data:
        if key not in ("stages", "output"):
            problems.add(f"{where}.{key}", "unknown key (known: output, stages)")
    stages_data = data.get("stages")
    if not isinstance(stages_data, list) or not stages_data:
        problems.add(f"{where}.stages", "expected a non-empty list of stages")
        stages_data = []
    stages = [_parse_stage(item, f"{where}.stages[{i}]", problems) for i, item in enumerate(stages_data)]
    output_fields = _parse_fields(OutputSettings, data.get("output"), f"{where}.output", problems)
    output = OutputSettings(**(output_fields.values if output_fields else {}))
    if output.format != "same":
        try:
            output = replace(output, format=normalise_format(output.format))
        except ValueError:
            problems.add(f"{where}.output.format", f"must be same or one of {', '.join(OUTPUT_FORMATS)}")
    if output.fallback_format is not None:
        try:
            output = replace(output, fallback_format=normalise_format(output.fallback_format))
        except ValueError:
            problems.add(f"{where}.output.fallback_format", f"must be one of {', '.join(OUTPUT_FORMATS)}")
    if not 1 <= output.quality <= 100:
        problems.add(f"{where}.output.quality", "must be between 1 and 100")
    # Every good upscale stage is listed, also in a profile with a bad stage, so its model is checked too.
    upscales.extend((f"{where}.stages[{i}].upscale.model", stage) for i, stage in enumerate(stages)
                    if isinstance(stage, Upscale) and not stage.problems())  # a bad scale is reported already
    if any(stage is None for stage in stages):
        return None
    return Profile(name, Pipeline(tuple(stages)), output)


def _resolve_path(value: str, base: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path)


_INBOX_PATHS = ("path", "outbox", "failed", "archive")
_INBOX_HOOKS = ("on_done", "on_failed")


def _parse_inbox(data: Any, where: str, base: Path, problems: _Problems) -> Inbox | None:
    if not isinstance(data, Mapping):
        problems.add(where, "expected a mapping")
        return None
    scalars = {k: v for k, v in data.items() if k != "ignore" and k not in _INBOX_HOOKS}
    paths_ok = True
    for key in _INBOX_PATHS:
        if key in scalars and not isinstance(scalars[key], str):
            problems.add(f"{where}.{key}", f"expected a path string, got {scalars[key]!r}")
            paths_ok = False
    parsed = _parse_fields(Inbox, {k: v for k, v in scalars.items() if k not in _INBOX_PATHS}, where, problems,
                           skip=(*_INBOX_PATHS, *_INBOX_HOOKS, "ignore"))
    assert parsed is not None  # data is a mapping
    for key in ("path", "outbox", "failed"):
        if key not in data:
            problems.add(f"{where}.{key}", "required")
    ignore = data.get("ignore", [])
    if not isinstance(ignore, list) or not all(isinstance(p, str) for p in ignore):
        problems.add(f"{where}.ignore", "expected a list of glob patterns")
        ignore = []
    on_done = parse_hook(data.get("on_done"), f"{where}.on_done", problems)
    on_failed = parse_hook(data.get("on_failed"), f"{where}.on_failed", problems)
    if not paths_ok or any(key not in data for key in ("path", "outbox", "failed")):
        return None
    inbox = Inbox(
        path=_resolve_path(data["path"], base),
        outbox=_resolve_path(data["outbox"], base),
        failed=_resolve_path(data["failed"], base),
        archive=_resolve_path(data["archive"], base) if data.get("archive") else None,
        ignore=tuple(ignore),
        on_done=on_done,
        on_failed=on_failed,
        **parsed.values,
    )
    for name, allowed in (("mode", WATCH_MODES), ("on_success", ON_SUCCESS), ("collision", COLLISIONS),
                          ("duplicates", DUPLICATES)):
        if getattr(inbox, name) not in allowed:
            problems.add(f"{where}.{name}", f"must be one of {', '.join(allowed)}")
    if inbox.settle_seconds < 0 or inbox.poll_interval <= 0:
        problems.add(where, "settle_seconds must be >= 0 and poll_interval > 0")
    if inbox.settle_max_backoff_seconds < 0:
        problems.add(f"{where}.settle_max_backoff_seconds", "must be >= 0")
    if inbox.on_success == "archive" and inbox.archive is None:
        problems.add(f"{where}.archive", "required when on_success is archive")
    return inbox


_OUTPUT_FOLDERS = ("outbox", "failed", "archive")
# How long the folder layout check may take: it stats every configured folder, on shares too.
FOLDER_CHECK_S = 5.0


def _check_folders(inboxes: list[Inbox], state_dir: Path, problems: _Problems) -> None:
    """Refuse layouts where output (or srd's own state) would be fed back as input forever, or where one of
    srd's folders would write into another (an output named like the journal, a failed input landing
    among outputs).

    Paths are compared with symlinks resolved, and folders that exist also by identity (st_dev, st_ino):
    an outbox reached through a link, or a bind mount of the state_dir, is the same folder all the same.
    """
    inside = _inside  # one rule for every pair below
    outputs = [(f"inboxes[{i}].{name}", name, getattr(inbox, name)) for i, inbox in enumerate(inboxes)
               for name in _OUTPUT_FOLDERS if getattr(inbox, name) is not None]
    for i, inbox in enumerate(inboxes):
        where = f"inboxes[{i}]"
        for name in _OUTPUT_FOLDERS:
            folder = getattr(inbox, name)
            for other in inboxes:
                if folder is not None and inside(folder, other.path):
                    problems.add(f"{where}.{name}",
                                 f"{folder} is inside inbox {other.path}: results would be reprocessed")
                if folder is not None and inside(other.path, folder):
                    problems.add(f"{where}.{name}", f"inbox {other.path} is inside {folder}")
        if inside(state_dir, inbox.path):
            problems.add("state_dir", f"{state_dir} is inside inbox {inbox.path}: its files would be taken as input")
        for j, other in enumerate(inboxes):
            if j != i and inside(inbox.path, other.path):
                problems.add(f"{where}.path", f"{inbox.path} overlaps inbox {other.path} (inboxes[{j}])")
    for k, (where, role, folder) in enumerate(outputs):
        if inside(state_dir, folder) or inside(folder, state_dir):
            problems.add("state_dir", f"{state_dir} overlaps {where} {folder}: an output could replace srd's ledger")
        for other_where, other_role, other in outputs[k + 1:]:
            shared = role == other_role and _inside(folder, other) and _inside(other, folder)
            if not shared and (inside(folder, other) or inside(other, folder)):
                problems.add(other_where, f"{other} overlaps {where} {folder}: one would write into the other")


def _check_folders_timeboxed(inboxes: list[Inbox], state_dir: Path, problems: _Problems) -> None:
    """`_check_folders`, given `FOLDER_CHECK_S`: its stats would wait forever on a share that stops
    answering, and a reload or `srd status` must not wait with it."""
    found = _Problems()
    try:
        timeboxed(lambda: _check_folders(inboxes, state_dir, found), FOLDER_CHECK_S, "the configured folders")
    except NoAnswer as exc:
        problems.add("inboxes", f"{exc.strerror}: srd can't check that they don't overlap")
        return
    problems.items.extend(found.items)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _inside(child: Path, parent: Path) -> bool:
    """Whether `child` is `parent` or below it: by resolved path, or by the identity of a folder that exists
    (a bind mount shows one folder under two unrelated paths)."""
    child, parent = Path(os.path.realpath(child)), Path(os.path.realpath(parent))
    if child == parent or parent in child.parents:
        return True
    target = _identity(parent)
    return target is not None and any(_identity(folder) == target for folder in (child, *child.parents))


def check_real_folders(config: Config) -> None:
    """Refuse configured inbox, outbox, failed and archive folders that are symlinks.

    srd never follows a symlink at or below its folders (`srd.fs.safefs`), so such a folder could not be
    used. This is checked by ``srd config check`` and when the daemon starts, not by every config load:
    `srd status` must still work (and report the inbox unhealthy) when someone swaps a folder while srd runs.

    Raises:
        ConfigError: One line per symlinked folder.
    """
    problems = _Problems()
    for i, inbox in enumerate(config.inboxes):
        for name in ("path", *_OUTPUT_FOLDERS):
            folder = getattr(inbox, name)
            if folder is not None and folder.is_symlink():
                problems.add(f"inboxes[{i}].{name}", f"{folder} is a symlink (to {os.path.realpath(folder)}): srd "
                                                     "never follows symlinks in its folders; configure the real folder")
    if problems.items:
        raise ConfigError(problems.items, config.source)


MAX_PROCESSES = 1024

_TOP_LEVEL = {
    "state_dir", "workers", "threads_per_worker", "max_input_pixels", "max_input_bytes", "max_attempts",
    "job_timeout", "job_timeout_min_seconds", "reconcile_interval", "model_dirs", "engine", "profiles", "inboxes",
    "log", "web", "metrics", "executor",
}


def _parse_executor(data: Any, base: Path, problems: _Problems) -> ExecutorSettings:
    if data is None:
        return ExecutorSettings()
    if not isinstance(data, Mapping):
        problems.add("executor", "expected a mapping such as {kind: dask, scheduler: tcp://127.0.0.1:8786}")
        return ExecutorSettings()
    for key in data:
        if key not in ("kind", "scheduler", "tls"):
            problems.add(f"executor.{key}", "unknown key (known: kind, scheduler, tls)")
    kind = data.get("kind", "local")
    if kind not in EXECUTOR_KINDS:
        problems.add("executor.kind", f"must be one of {', '.join(EXECUTOR_KINDS)}")
        return ExecutorSettings()
    scheduler = data.get("scheduler")
    if kind == "local":
        if scheduler is not None or data.get("tls") is not None:
            problems.add("executor", "scheduler and tls apply only to kind: dask")
        return ExecutorSettings()
    if not isinstance(scheduler, str) or not scheduler.startswith(("tcp://", "tls://")):
        problems.add("executor.scheduler", "expected the scheduler's address, tcp://host:port or tls://host:port")
        return ExecutorSettings()
    tls = data.get("tls")
    if tls is None:
        if scheduler.startswith("tls://"):
            problems.add("executor.tls", "a tls:// scheduler needs {ca_file, cert, key}")
        return ExecutorSettings(kind, scheduler)
    if not isinstance(tls, Mapping) or set(tls) != {"ca_file", "cert", "key"} or not all(
            isinstance(v, str) for v in tls.values()):
        problems.add("executor.tls", "expected {ca_file, cert, key}: the CA's and this client's certificate and key")
        return ExecutorSettings()
    if not scheduler.startswith("tls://"):
        problems.add("executor.scheduler", "with tls, the address must be tls://host:port")
    paths = tuple(_resolve_path(tls[k], base) for k in ("ca_file", "cert", "key"))
    return ExecutorSettings(kind, scheduler, (paths[0], paths[1], paths[2]))


def _check_models(upscales: list[tuple[str, Upscale]], model_dirs: tuple[Path, ...], problems: _Problems) -> None:
    context = StageContext(model_dirs=model_dirs)
    for where, stage in upscales:
        try:
            stage.spec(context)
        except ModelError as exc:
            problems.add(where, str(exc))


def parse_config(data: Any, *, base: Path, source: str, check_models: bool = False,
                 check_folders: bool = True) -> Config:
    """Build a `Config` from parsed YAML; raises ConfigError listing every problem.

    With `check_models`, every profile's models must also be found (the daemon and `config check`
    want that; a one-shot run that overrides the model does not). Without `check_folders`, the folders'
    layout is not checked: nothing on the disk is looked at, so `srd status`, which needs only the
    state_dir, answers even while a share that holds an inbox stops answering.
    """
    problems = _Problems()
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(["the top level must be a mapping"], source)
    for key in data:
        if key not in _TOP_LEVEL:
            problems.add(str(key), f"unknown key (known: {', '.join(sorted(_TOP_LEVEL))})")

    def number(key: str, kind: type, default: Any, minimum: float, maximum: float = math.inf) -> Any:
        value = data.get(key, default)
        good, value, expected = _check_value(value, kind | None if default is None else kind)
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

    # Each worker is a process and each thread an OpenCV thread: beyond this, a typo, not a machine.
    threads = number("threads_per_worker", int, 1, 1, MAX_PROCESSES)
    workers = number("workers", int, default_workers(threads), 1, MAX_PROCESSES)
    max_pixels = number("max_input_pixels", int, 100_000_000, 1)
    max_bytes = number("max_input_bytes", int, DEFAULT_MAX_INPUT_BYTES, 1)
    max_attempts = number("max_attempts", int, 3, 1)
    job_timeout = number("job_timeout", float, None, 1)
    job_timeout_min = number("job_timeout_min_seconds", float, 120.0, 1)
    reconcile = number("reconcile_interval", float, 300.0, 1)
    metrics = parse_metrics(data.get("metrics"), problems)
    state_dir = data.get("state_dir", ".srd")
    if not isinstance(state_dir, str):
        problems.add("state_dir", "expected a path string")
        state_dir = ".srd"
    model_dirs_data = data.get("model_dirs", [])
    if not isinstance(model_dirs_data, list) or not all(isinstance(p, str) for p in model_dirs_data):
        problems.add("model_dirs", "expected a list of folder paths")
        model_dirs_data = []

    executor = _parse_executor(data.get("executor"), base, problems)
    engine_fields = _parse_fields(EngineSettings, data.get("engine"), "engine", problems, skip=("threads",))
    engine = EngineSettings(**(engine_fields.values if engine_fields else {}))
    if engine.onnx_engine not in ONNX_ENGINES:
        problems.add("engine.onnx_engine", f"must be one of {', '.join(ONNX_ENGINES)}")
    if engine.chroma not in CHROMA_INTERPOLATIONS:
        problems.add("engine.chroma", f"must be one of {', '.join(CHROMA_INTERPOLATIONS)}")
    if engine.tile < 0 or engine.tile_pad < 0:
        problems.add("engine", "tile and tile_pad must not be negative")

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
        profile = _parse_profile(str(name), body, f"profiles.{name}", problems, upscales)
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
        inbox = _parse_inbox(item, f"inboxes[{i}]", base, problems)
        if inbox is None:
            continue
        # A profile that exists but had errors is already reported; only an unknown name is new.
        if inbox.profile not in profiles and inbox.profile not in profiles_data:
            problems.add(f"inboxes[{i}].profile", f"unknown profile {inbox.profile!r} (known: {', '.join(profiles)})")
        inboxes.append(inbox)
    if check_folders:
        _check_folders_timeboxed(inboxes, _resolve_path(state_dir, base), problems)
    model_dirs = tuple(_resolve_path(p, base) for p in model_dirs_data)
    if check_models:
        _check_models(upscales, model_dirs, problems)

    web = _parse_web(data.get("web"), problems)

    if problems.items:
        raise ConfigError(problems.items, source)
    return Config(
        state_dir=_resolve_path(state_dir, base),
        workers=workers,
        threads_per_worker=threads,
        max_input_pixels=max_pixels,
        max_input_bytes=max_bytes,
        max_attempts=max_attempts,
        job_timeout=job_timeout,
        job_timeout_min_seconds=job_timeout_min,
        reconcile_interval=reconcile,
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


# --- web: the settings of `srd web` (srd/web/), a process of its own beside the daemon -------------------

@dataclass(frozen=True)
class WebSettings:
    """Where `srd web` listens, who may use it, and how much one upload may bring.

    `password_hash` is an ``scrypt$…`` string made by ``srd web hash-password``; without it anyone who can
    reach the listen address may upload, which is why the default address is the loopback one.
    """

    listen: str = "127.0.0.1"
    port: int = 8080
    password_hash: str | None = None
    # Each file, and the whole of one request; None: the daemon's max_input_bytes per file.
    max_file_bytes: int | None = None
    max_request_bytes: int = 1_000_000_000
    max_files_per_upload: int = 100
    # Set behind an HTTPS reverse proxy, so the session cookie never travels in clear.
    secure_cookies: bool = False


def _parse_web(data: Any, problems: _Problems) -> WebSettings:
    parsed = _parse_fields(WebSettings, data, "web", problems)
    if parsed is None:
        return WebSettings()
    settings = WebSettings(**parsed.values)
    if not 0 < settings.port < 65536:
        problems.add("web.port", "must be between 1 and 65535")
    for name in ("max_file_bytes", "max_request_bytes", "max_files_per_upload"):
        value = getattr(settings, name)
        if value is not None and value < 1:
            problems.add(f"web.{name}", "must be at least 1")
    if settings.password_hash is not None and not settings.password_hash.startswith("scrypt$"):
        problems.add("web.password_hash", "expected the output of 'srd web hash-password' (scrypt$…)")
    return settings


class _DuplicateKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, noting every mapping key given twice (plain YAML keeps the last one silently)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[int, str]] = []  # (line, problem): nested mappings are built first

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        first_seen: dict[Hashable, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` brings in keys that this mapping may override on purpose
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # the base constructor reports an unhashable key
            first = first_seen.setdefault(key, key_node)
            if first is not key_node:
                line = key_node.start_mark.line + 1
                shown = key_node.value if isinstance(key_node, yaml.ScalarNode) else key  # as written
                self.duplicates.append((line, f"line {line}: key {shown!r} is given again (first at line "
                                              f"{first.start_mark.line + 1}); YAML would keep only the last one, "
                                              "so remove one of them"))
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(text: str, source: str) -> tuple[Any, list[str]]:
    """The YAML document in `text` and its duplicate-key problems.

    Raises:
        ConfigError: a YAML syntax error, with its line and column.
    """
    loader = _DuplicateKeyLoader(text)
    try:
        data = loader.get_single_data()
        return data, [problem for _, problem in sorted(loader.duplicates)]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError([f"{where}invalid YAML ({getattr(exc, 'problem', exc)})"], source) from exc
    finally:
        loader.dispose()


def load_config(path: Path | None, *, check_models: bool = False, check_folders: bool = True) -> Config:
    """Read and validate `path`; with None, the working default (./inbox → ./outbox, state in ./.srd).

    `check_models` and `check_folders`: see `parse_config`.

    Raises:
        ConfigError: unreadable file, YAML syntax error, or any invalid setting (all listed).
    """
    if path is None:
        return parse_config({}, base=Path.cwd(), source="defaults", check_models=check_models,
                            check_folders=check_folders)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read: {exc.strerror}"], str(path)) from exc
    except UnicodeDecodeError as exc:  # an editor saved it as Latin-1, say: a problem to report, not a crash
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ConfigError([f"line {line}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x}); save the file as "
                           "UTF-8"], str(path)) from exc
    data, duplicates = _parse_yaml(text, str(path))
    try:
        config = parse_config(data, base=path.resolve().parent, source=str(path), check_models=check_models,
                              check_folders=check_folders)
    except ConfigError as exc:  # every problem at once: the duplicates first, in file order
        raise ConfigError([*duplicates, *exc.problems], exc.source) from exc
    if duplicates:
        raise ConfigError(duplicates, str(path))
    return config
