"""``srd process``: upscale files or folders once and exit.

Order matters for safety: options, models and every output path are checked and decided before the
first byte is written, so a refused run (exit 2) or a missing model leaves the disk as it was.

An output that the output folder's storage refused (full, over quota, read-only, no permission) is not the
input's fault: the run ends with an `OutputError` (exit 5) rather than "some inputs failed" (exit 1), also
when other inputs failed for reasons of their own, because rerunning after freeing space is what it needs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from srd.config import Config, Profile, load_config
from srd.daemon.outbox import BLOCKING_ERRNOS
from srd.engine.pipeline import Pipeline, StageContext, Upscale
from srd.engine.registry import ModelSpec, looks_like_path, resolve_model
from srd.engine.runtime_choice import device_for, with_choice
from srd.engine.upscaler import EngineSettings
from srd.errors import ConfigError, ExitCode, ModelError, OutputError
from srd.executors.backend import Backend, shared_cores
from srd.executors.job import Job, JobResult
from srd.imaging.imageio import normalise_format
from srd.interrupts import raise_on_sigterm
from srd.logs import configure_logging
from srd.oneshot.execute import PoolSettings, run_batch
from srd.oneshot.plan import Layout, PlannedFile, make_plan, mark_as_output, output_folders
from srd.oneshot.report import Reporter, ReportOptions

_FOLDERS_SHOWN = 3  # refusing folders named in the closing error; the rest are counted


def run_process(args: argparse.Namespace) -> ExitCode:
    """Run ``srd process`` as parsed by `srd.cli.main`; errors are raised for the CLI to map to exit codes."""
    raise_on_sigterm()  # stop like Ctrl-C: workers closed, the summary printed, exit 143
    config = load_config(args.config)
    log_level = "info" if args.verbose else "error"
    configure_logging(log_level, config.log_format)
    profile = profile_for(config, args)
    requested_format = _checked_format(args.format)
    workers = _checked_jobs(args.jobs, config)
    # --threads or the config's threads_per_worker fix the OpenCV threads of each worker; without either, jobs
    # share the cores (a lone photo runs tiles on all of them).
    fixed_threads: int | None = args.threads or config.threads_per_worker
    engine = replace(
        with_choice(config.engine, args.runtime, args.device),
        tile=config.engine.tile if args.tile is None else args.tile,
        tile_pad=config.engine.tile_pad if args.tile_pad is None else args.tile_pad,
        threads=fixed_threads or 1,
    )
    context = StageContext(engine, config.model_dirs)
    for spec in profile.pipeline.models(context):  # fail fast, before any file is touched
        context.check(spec)
        _tell_if_on_cpu(spec, engine)
    profile = replace(profile, pipeline=profile.pipeline.pinned(context))  # the bytes checked, no others

    plan = make_plan(Layout(tuple(args.inputs), args.out, args.recursive, args.in_place,
                            requested_format or profile.output.format, profile.output.fallback_format,
                            overwrite=args.overwrite, reprocess=args.reprocess))
    _make_folders(output_folders(plan.files))
    reporter = Reporter(len(plan.files) + len(plan.skipped) + len(plan.outputs),
                        ReportOptions(quiet=args.quiet, json=args.json))
    for skipped in plan.skipped:
        reporter.result(JobResult(skipped.source, False, error=skipped.reason))
    for output in plan.outputs:
        reporter.left_unchanged(output.source, output.reason)
    planned = {file.source: file for file in plan.files}
    refused: list[tuple[Path, int]] = []  # (folder, errno) of outputs the storage refused
    jobs = [_job_for(file, profile, config, requested_format) for file in plan.files]
    backend = Backend(config.executor, workers, engine, tuple(config.model_dirs), log_level, config.log_format,
                      config.max_input_pixels, shared_cores(fixed_threads))
    settings = PoolSettings(backend, config.job_timeout, config.max_attempts)
    try:
        run_batch(
            jobs, settings,
            on_start=lambda job: reporter.starting(job.source),
            on_result=lambda job, result: _finished(job, result, reporter, planned[job.source].version.size, refused),
            on_idle=reporter.tick,
        )
    finally:  # after Ctrl-C too: what was done so far
        reporter.summary()
    if refused:
        raise _storage_refused(refused)
    return ExitCode.FILES_FAILED if reporter.failed else ExitCode.OK


def _finished(job: Job, result: JobResult, reporter: Reporter, size: int, refused: list[tuple[Path, int]]) -> None:
    if result.model_unavailable:  # the model checked at the start is gone or changed: no input's fault, stop
        raise ModelError(f"{result.error}. The run stopped there: run the command again to use the file as it is")
    if result.ok and result.output is not None:
        mark_as_output(result.output, job.source)
    elif result.output_errno in BLOCKING_ERRNOS:
        refused.append((job.out_dir, result.output_errno))
    reporter.result(result, size)


def _storage_refused(refused: Sequence[tuple[Path, int]]) -> OutputError:
    """One error for every output the storage refused, with the reasons and the folders (each file is named on
    its own failure line already)."""
    reasons = ", ".join(dict.fromkeys(os.strerror(code) for _, code in refused))
    folders = list(dict.fromkeys(str(folder) for folder, _ in refused))
    more = f" and {len(folders) - _FOLDERS_SHOWN} more" if len(folders) > _FOLDERS_SHOWN else ""
    return OutputError(f"{len(refused)} output(s) refused by their folder's storage ({reasons}): "
                       f"{', '.join(folders[:_FOLDERS_SHOWN])}{more}; free space or fix the folder's permissions, "
                       "then run the command again", errno=refused[0][1])


def profile_for(config: Config, args: argparse.Namespace) -> Profile:
    """The profile the command line asks for: ``--model`` (with ``--scale``, or the scale its name gives) or
    ``--profile`` from the config.

    Raises:
        ConfigError: contradictory or invalid options.
        ModelError: the model can't be found (the message says where srd looked).
    """
    if args.model and args.profile:
        raise ConfigError(["give either --profile or --model/--scale, not both"], "command line")
    if not args.model:
        if args.scale is not None or args.convention is not None:
            raise ConfigError(["--scale and --convention go with --model"], "command line")
        name = args.profile or "default"
        if name not in config.profiles:
            raise ConfigError([f"unknown profile {name!r} (known: {', '.join(config.profiles)})"], config.source)
        profile = config.profiles[name]
    else:
        # A path is made absolute: workers must find the same file whatever their working folder.
        model = str(Path(args.model).expanduser().absolute()) if looks_like_path(args.model) else args.model
        scale = args.scale
        if scale is None:  # from the zoo file name (FSRCNN_x3.pb), or the one scale a named model comes in
            scale = resolve_model(model, None, extra_dirs=config.model_dirs, convention=args.convention).scale
        stage = Upscale(model=model, scale=scale, convention=args.convention)
        problems = stage.problems()
        if problems:
            raise ConfigError(problems, "command line")
        profile = Profile("command-line", Pipeline((stage,)))
    if args.quality is not None:
        if not 1 <= args.quality <= 100:
            raise ConfigError(["--quality must be between 1 and 100"], "command line")
        profile = replace(profile, output=replace(profile.output, quality=args.quality))
    return profile


def _tell_if_on_cpu(spec: ModelSpec, engine: EngineSettings) -> None:
    """One line where a GPU was asked for but the CPU will run `spec` (the workers' own warning is only logged
    with --verbose): the run goes on, slower than the user expects."""
    _, on_cpu_because = device_for(spec, engine.runtime, engine.device)
    if on_cpu_because:
        print(f"srd: device {engine.device}: {on_cpu_because}; running on the CPU", file=sys.stderr, flush=True)


def _checked_format(requested: str | None) -> str | None:
    if requested is None or requested == "same":
        return requested
    try:
        return normalise_format(requested)
    except ValueError as exc:
        raise ConfigError([str(exc)], "command line") from exc


def _checked_jobs(jobs: int | None, config: Config) -> int:
    if jobs is None:
        return config.workers
    if jobs < 1:
        raise ConfigError(["--jobs must be at least 1"], "command line")
    return jobs


def _make_folders(folders: list[Path]) -> None:
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create output folder {folder}: {exc.strerror or exc}", errno=exc.errno) from exc


def _job_for(file: PlannedFile, profile: Profile, config: Config, requested_format: str | None) -> Job:
    return Job(file.source, file.target.parent, profile, config.max_input_pixels, requested_format, target=file.target,
               max_input_bytes=config.max_input_bytes, source_version=file.version)
