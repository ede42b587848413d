"""One file through the whole path: read once, hash, decode, run the pipeline, encode, write atomically.

This is the code a worker runs, shared by the one-shot CLI and the daemon. Jobs and results are
plain frozen dataclasses so they cross process boundaries; a bad file becomes a failed
`JobResult`, never an exception that could take a worker down.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import structlog
from structlog.contextvars import bound_contextvars

from srd.config import Profile
from srd.engine.pipeline import StageContext
from srd.errors import ImageError, OutputError, SourceChangedError, SrdError
from srd.fs import safefs
from srd.fs.atomic import write_bytes_atomic
from srd.fs.fileversion import FileVersion, version_of
from srd.imaging.imageio import DEFAULT_MAX_INPUT_BYTES, decode, encode, extension_for, output_format_for, read_bounded

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Job:
    """Process `source` with `profile`, writing into folder `out_dir` under the source's name.

    `format` overrides the profile's output format ('same' keeps the input's). `target`, when set, is
    the exact output path: the daemon decides names itself (collision policy, retries after a crash).
    `source_root` and `output_root`, when set, are the configured inbox and outbox the source and the
    output lie below: both are then reached through `srd.fs.safefs`, never through a symlink.
    `source_version`, when set, is the version the source had when the run planned it: a source found
    otherwise, when it is opened or just before the output is put in place, is not processed. A retry then
    never reads the output a killed first try already renamed over its input (in place), and a file written
    to meanwhile is neither processed half-read nor replaced by the output of its old version.
    """

    source: Path
    out_dir: Path
    profile: Profile
    max_input_pixels: int
    format: str | None = None
    target: Path | None = None
    source_root: Path | None = None
    output_root: Path | None = None
    max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES
    source_version: FileVersion | None = None


@dataclass(frozen=True)
class JobResult:
    source: Path
    ok: bool
    output: Path | None = None
    error: str | None = None
    sha256: str | None = None
    input_size: tuple[int, int] | None = None
    output_size: tuple[int, int] | None = None
    milliseconds: int = 0
    # Set when the output's storage refused the write (ENOSPC, EROFS …): the file itself may be fine.
    output_errno: int | None = None
    # Set when the worker ran out of memory: a crash to retry (alone), not a verdict on the file.
    out_of_memory: bool = False
    # Set when the data ended early: perhaps a slow writer hasn't finished it yet.
    truncated: bool = False


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether an exception means an allocation failed (Python's MemoryError, OpenCV's C++ allocator)."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc)
    return isinstance(exc, cv2.error) and any(
        sign in text for sign in ("Insufficient memory", "bad_alloc", "Failed to allocate"))


def output_name(source_name: str, source_format: str, written_format: str, requested: str | None) -> str:
    """The output's file name: the input's, with the extension changed only for a format change (and the
    name shortened where a longer extension would not fit in 255 bytes)."""
    if (requested in (None, "same")) and written_format == source_format:
        return source_name
    return safefs.fit_name(Path(source_name).stem, extension_for(written_format))


def read_source(path: Path, root: Path | None = None, max_bytes: int = DEFAULT_MAX_INPUT_BYTES,
                expected: FileVersion | None = None) -> tuple[bytes, str]:
    """Read a file once and hash those same bytes, so the hash always matches what was processed.

    With `root` (the inbox), the file is opened below it without following any symlink (`srd.fs.safefs`).
    A file over `max_bytes` is refused from its size, before it is read into memory. With `expected`,
    the opened file must be that version (`SourceChangedError` otherwise).
    """
    try:
        fd = safefs.open_regular(root, path)[0] if root is not None else os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as stream:
            if expected is not None:
                _check_version(FileVersion.of(os.fstat(stream.fileno())), expected)
            data = read_bounded(stream, max_bytes)
    except IsADirectoryError as exc:
        raise ImageError("is a directory, not an image file") from exc
    except OSError as exc:
        raise ImageError(f"cannot read: {exc.strerror}") from exc
    return data, hashlib.sha256(data).hexdigest()


def run_job(job: Job, context: StageContext) -> JobResult:
    """Process one job; failures come back as a result with the reason, never as an exception."""
    # A daemon job's lines name its inbox, like the daemon's own lines about the file.
    with bound_contextvars(**({"inbox": str(job.source_root)} if job.source_root is not None else {})):
        return _run(job, context)


def _run(job: Job, context: StageContext) -> JobResult:
    started = time.monotonic()
    sha256 = None
    try:
        data, sha256 = read_source(job.source, job.source_root, job.max_input_bytes, job.source_version)
        picture = decode(data, max_pixels=job.max_input_pixels)
        del data
        for note in picture.notes:
            log.info("decoder_warning", src=str(job.source), text=note)
        pixels = job.profile.pipeline.run(picture.pixels, context)
        settings = job.profile.output
        requested = job.format or settings.format
        fmt = output_format_for(picture.format, requested, settings.fallback_format)
        encoded = encode(picture.with_pixels(pixels), fmt, quality=settings.quality, keep_metadata=settings.metadata)
        for reason in encoded.dropped:
            log.warning("metadata_dropped", src=str(job.source), block=reason)
        if encoded.alpha_flattened:
            log.warning("alpha_flattened", src=str(job.source), format=fmt, background="white")
        target = job.target or job.out_dir / output_name(job.source.name, picture.format, fmt, requested)
        write_bytes_atomic(target, encoded.data, root=job.output_root, before_rename=lambda: _check_source(job))
    except OutputError as exc:
        return _failure(job, str(exc), sha256, started, output_errno=exc.errno, out_of_memory=_oom_cause(exc))
    except ImageError as exc:
        # Only a message that says the data ended early for certain ("truncated JPEG …"), not "corrupt or
        # truncated", marks a file a slow writer may still be finishing.
        return _failure(job, str(exc), sha256, started, truncated=str(exc).startswith("truncated"))
    except SrdError as exc:
        return _failure(job, str(exc), sha256, started, out_of_memory=_oom_cause(exc))
    # Per-job boundary: any unexpected error (an OpenCV assertion on an odd image, a bug) must fail
    # this file with its reason, not the batch or the daemon.
    except Exception as exc:
        if is_out_of_memory(exc):
            return _failure(job, f"out of memory: {type(exc).__name__}: {exc}", sha256, started, out_of_memory=True)
        log.exception("job_crashed", src=str(job.source))
        return _failure(job, f"internal error: {type(exc).__name__}: {exc}", sha256, started)
    ms = int((time.monotonic() - started) * 1000)
    result = JobResult(
        source=job.source,
        ok=True,
        output=target,
        sha256=sha256,
        input_size=(picture.pixels.shape[1], picture.pixels.shape[0]),
        output_size=(pixels.shape[1], pixels.shape[0]),
        milliseconds=ms,
    )
    log.info(
        "job_done", src=str(job.source), out=str(target), profile=job.profile.name,
        in_size=result.input_size, out_size=result.output_size, ms=ms,
    )
    return result


def _check_source(job: Job) -> None:
    """Raise `SourceChangedError` if the job's source is no longer the version it was planned with."""
    if job.source_version is not None:
        _check_version(version_of(job.source), job.source_version)


def _check_version(found: FileVersion | None, expected: FileVersion) -> None:
    if found != expected:
        raise SourceChangedError("changed since this run planned it (written to or replaced meanwhile); "
                                 "not processed: run the command again to process it as it is now")


def _oom_cause(exc: SrdError) -> bool:
    """Whether an srd error only wraps a failed allocation (e.g. an encoder out of memory)."""
    return exc.__cause__ is not None and is_out_of_memory(exc.__cause__)


def _failure(job: Job, reason: str, sha256: str | None, started: float, *,
             output_errno: int | None = None, out_of_memory: bool = False, truncated: bool = False) -> JobResult:
    reason = " ".join(reason.split())  # one line per failure, whatever the library said
    ms = int((time.monotonic() - started) * 1000)
    log.warning("job_failed", src=str(job.source), reason=reason, ms=ms)
    return JobResult(source=job.source, ok=False, error=reason, sha256=sha256, milliseconds=ms,
                     output_errno=output_errno, out_of_memory=out_of_memory, truncated=truncated)
