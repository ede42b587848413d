"""The config's nested sections: a profile with its stages and output settings, and an inbox."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from srd.config.fields import Problems, parse_fields
from srd.config.schema import COLLISIONS, DUPLICATES, ON_SUCCESS, WATCH_MODES, Inbox, OutputSettings, Profile
from srd.engine.pipeline import NOT_CONFIGURABLE, STAGES, Pipeline, StageContext, Upscale
from srd.engine.upscaler import EngineSettings
from srd.errors import ModelError
from srd.imaging.imageio import OUTPUT_FORMATS, normalise_format
from srd.observability import parse_hook


def _parse_stage(item: Any, where: str, problems: Problems) -> Any:
    if isinstance(item, str):
        item = {item: None}
    if not isinstance(item, Mapping) or len(item) != 1:
        problems.add(where, f"a stage is a mapping with one key, one of: {', '.join(STAGES)}")
        return None
    (kind, settings), = item.items()
    if kind not in STAGES:
        problems.add(where, f"unknown stage {kind!r} (known: {', '.join(STAGES)})")
        return None
    parsed = parse_fields(STAGES[kind], settings, f"{where}.{kind}", problems, skip=NOT_CONFIGURABLE)
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


def parse_profile(name: str, data: Any, where: str, problems: Problems,
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
    output_fields = parse_fields(OutputSettings, data.get("output"), f"{where}.output", problems)
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


def resolve_path(value: str, base: Path) -> Path:
    """A configured path, with ``~`` expanded and a relative one taken from `base` (the config's folder)."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path)


_INBOX_PATHS = ("path", "outbox", "failed", "archive")
_INBOX_HOOKS = ("on_done", "on_failed")


def parse_inbox(data: Any, where: str, base: Path, problems: Problems) -> Inbox | None:
    """The inbox at `where`, or None if it can't be built (its problems are reported)."""
    if not isinstance(data, Mapping):
        problems.add(where, "expected a mapping")
        return None
    scalars = {k: v for k, v in data.items() if k != "ignore" and k not in _INBOX_HOOKS}
    paths_ok = True
    for key in _INBOX_PATHS:
        if key in scalars and not isinstance(scalars[key], str):
            problems.add(f"{where}.{key}", f"expected a path string, got {scalars[key]!r}")
            paths_ok = False
    parsed = parse_fields(Inbox, {k: v for k, v in scalars.items() if k not in _INBOX_PATHS}, where, problems,
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
        path=resolve_path(data["path"], base),
        outbox=resolve_path(data["outbox"], base),
        failed=resolve_path(data["failed"], base),
        archive=resolve_path(data["archive"], base) if data.get("archive") else None,
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


def check_upscale_models(upscales: list[tuple[str, Upscale]], model_dirs: tuple[Path, ...], engine: EngineSettings,
                         problems: Problems) -> None:
    """Report each upscale stage (listed with its location) whose model is not found in `model_dirs` or fails its
    check as `engine` would run it (`StageContext.check`): what `srd run` would refuse to start or reload with."""
    context = StageContext(engine, model_dirs)
    for where, stage in upscales:
        try:
            context.check(stage.spec(context))
        except ModelError as exc:
            problems.add(where, str(exc))
