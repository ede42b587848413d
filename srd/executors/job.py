"""One file through the whole path: read once, hash, render, write atomically.

A job has three steps. *Loading* reads (or takes the shipped) source bytes and hashes them; *rendering*
(`srd.executors.render`) turns bytes into encoded output bytes and touches no file; *storing* writes
the output atomically after checking that the source is still the version planned. A local worker runs
all three (`srd.executors.render.run_job`); with a remote backend the coordinator loads and stores and
the worker only renders, so only the coordinator ever touches inboxes and outboxes. Jobs and results
are plain frozen dataclasses so they cross process boundaries; a bad file becomes a failed `JobResult`,
never an exception that could take a worker down.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import cv2
import structlog
from structlog.contextvars import bound_contextvars

from srd.config import Profile
from srd.errors import ImageError, ModelUnavailableError, OutputError, SourceChangedError, SrdError
from srd.fs import safefs
from srd.fs.atomic import open_atomic
from srd.fs.fileversion import FileVersion, version_of
from srd.fs.outputmark import set_mark
from srd.imaging.imageio import DEFAULT_MAX_INPUT_BYTES, extension_for, read_bounded

log = structlog.get_logger(__name__)
T = TypeVar("T")


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
    `output_mark`, when set, is put on the output (`srd.fs.outputmark`) before it appears under its name, so
    an output srd wrote never shows up unmarked and nobody opens it again to mark it.
    `content`, when set, is the source's content already read and hashed (the daemon reads each source to
    hash it): it is processed as it is, neither read nor hashed again.
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
    content: Content | None = None
    output_mark: bytes | None = None


@dataclass(frozen=True)
class Content:
    """A source's bytes with their sha256, computed once from those very bytes where they were read.

    Shipping the hash with the bytes spares the worker a second pass over them; since both come from
    one read, the hash still names exactly what is processed.
    """

    data: bytes
    sha256: str

    @classmethod
    def of(cls, data: bytes) -> Content:
        return cls(data, hashlib.sha256(data).hexdigest())


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
    # Set when the model could not be loaded as the job names it (`ModelUnavailableError`): not the file's fault.
    model_unavailable: bool = False
    # Set when the source was no longer the version planned (`SourceChangedError`: written to, replaced, renamed or
    # deleted meanwhile): no output was put in place, and nothing is said of the file.
    source_changed: bool = False
    output_bytes: int | None = None  # the output's size as written (no stat needed to learn it)
    # The most tiles the job's upscaling ran at once (its share of the cores; 0: no upscale stage ran).
    tile_threads: int = 0
    # What of the source the output does not hold ("only the first of its 12 frames …"), in words.
    losses: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rendered:
    """A rendered job: the encoded output and what the result reports about it (no file written yet)."""

    data: bytes
    name: str  # the output's file name when the job has no `target`
    input_size: tuple[int, int]
    output_size: tuple[int, int]
    tile_threads: int = 0  # see `JobResult.tile_threads`
    losses: tuple[str, ...] = ()  # see `JobResult.losses`


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
                expected: FileVersion | None = None) -> Content:
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
    return Content.of(data)


def load_source(job: Job) -> Content:
    """The job's source bytes and their sha256: the shipped `content`, else the file read as `read_source` does."""
    if job.content is not None:
        return job.content
    return read_source(job.source, job.source_root, job.max_input_bytes, job.source_version)


def job_log_context(job: Job) -> AbstractContextManager[object]:
    """Log context of a job's lines: a daemon job's lines name its inbox, like the daemon's own lines about the file."""
    return bound_contextvars(**({"inbox": str(job.source_root)} if job.source_root is not None else {}))


def store_output(job: Job, rendered: Rendered, sha256: str, started: float) -> JobResult:
    """Write a rendered output atomically (once the source is checked to be the version planned); the job's result."""
    target = job.target or job.out_dir / rendered.name

    def write() -> None:
        with open_atomic(target, root=job.output_root, before_rename=lambda: _check_source(job, sha256)) as out:
            out.write(rendered.data)
            if job.output_mark is not None:
                set_mark(out.fileno(), job.output_mark, target)

    failed = guarded(job, sha256, started, write)
    if isinstance(failed, JobResult):
        return failed
    ms = int((time.monotonic() - started) * 1000)
    log.info("job_done", src=str(job.source), out=str(target), profile=job.profile.name,
             in_size=rendered.input_size, out_size=rendered.output_size, tile_threads=rendered.tile_threads, ms=ms)
    return JobResult(source=job.source, ok=True, output=target, sha256=sha256, input_size=rendered.input_size,
                     output_size=rendered.output_size, milliseconds=ms, output_bytes=len(rendered.data),
                     tile_threads=rendered.tile_threads, losses=rendered.losses)


def guarded(job: Job, sha256: str | None, started: float, step: Callable[[], T]) -> T | JobResult:
    """Run one step of a job; an error becomes the job's failed result (what kind of failure, from the error)."""
    try:
        return step()
    except OutputError as exc:
        return failure(job, str(exc), sha256, started, output_errno=exc.errno, out_of_memory=_oom_cause(exc))
    except ImageError as exc:
        # Only a message that says the data ended early for certain ("truncated JPEG …"), not "corrupt or
        # truncated", marks a file a slow writer may still be finishing.
        return failure(job, str(exc), sha256, started, truncated=str(exc).startswith("truncated"))
    except ModelUnavailableError as exc:
        return failure(job, str(exc), sha256, started, model_unavailable=True)
    except SourceChangedError as exc:
        return failure(job, str(exc), sha256, started, source_changed=True)
    except SrdError as exc:
        return failure(job, str(exc), sha256, started, out_of_memory=_oom_cause(exc))
    # Per-job boundary: any unexpected error (an OpenCV assertion on an odd image, a bug) must fail
    # this file with its reason, not the batch or the daemon.
    except Exception as exc:
        if is_out_of_memory(exc):
            return failure(job, f"out of memory: {type(exc).__name__}: {exc}", sha256, started, out_of_memory=True)
        log.exception("job_crashed", src=str(job.source))
        return failure(job, f"internal error: {type(exc).__name__}: {exc}", sha256, started)


_CHANGED = "changed since this run planned it (written to, replaced, renamed or deleted meanwhile); not processed"


def _check_source(job: Job, sha256: str) -> None:
    """Raise `SourceChangedError` unless the job's source still holds the bytes rendered (`sha256`): the version
    planned, or, where that moved on (a chmod, a touch, a file moved over it), the same bytes read again. Reached
    below its `source_root`, never through a symlink: a file out of reach counts as gone."""
    if job.source_version is None:
        return
    if job.source_root is None:
        found = version_of(job.source)
    else:
        try:
            found = FileVersion.of(safefs.lstat(job.source_root, job.source))
        except (OSError, ValueError):
            found = None
    if found == job.source_version:
        return
    try:
        if found is not None and read_source(job.source, job.source_root, job.max_input_bytes).sha256 == sha256:
            return
    except ImageError:
        pass  # gone or unreadable since: not the bytes rendered
    raise SourceChangedError(_CHANGED)


def _check_version(found: FileVersion, expected: FileVersion) -> None:
    """At a read, whose bytes are hashed: a rewrite that put the old mtime back is told by their hash."""
    if not found.unwritten_since(expected):
        raise SourceChangedError(_CHANGED)


def _oom_cause(exc: SrdError) -> bool:
    """Whether an srd error only wraps a failed allocation (e.g. an encoder out of memory)."""
    return exc.__cause__ is not None and is_out_of_memory(exc.__cause__)


def failure(job: Job, reason: str, sha256: str | None, started: float, *,
            output_errno: int | None = None, out_of_memory: bool = False, truncated: bool = False,
            model_unavailable: bool = False, source_changed: bool = False) -> JobResult:
    """A failed result for `job`, logged (one line, whatever the library said)."""
    reason = " ".join(reason.split())
    ms = int((time.monotonic() - started) * 1000)
    # Neither is a verdict on the file: named apart in the log (the daemon keeps the file waiting, or looks again).
    event = "job_model_unavailable" if model_unavailable else "job_source_changed" if source_changed else "job_failed"
    (log.info if source_changed else log.warning)(event, src=str(job.source), reason=reason, ms=ms)
    return JobResult(source=job.source, ok=False, error=reason, sha256=sha256, milliseconds=ms,
                     output_errno=output_errno, out_of_memory=out_of_memory, truncated=truncated,
                     model_unavailable=model_unavailable, source_changed=source_changed)
