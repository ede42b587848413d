"""Decide every output path of a one-shot run before any job starts, and refuse layouts that would destroy inputs.

All names are fixed up front so that no two inputs share an output (the second gets ``-1``, as the
daemon names collisions) and no output lands on an input, whatever order the workers finish in.
Paths are compared as the filesystem sees them: resolved, and by device and inode for files that exist,
so hard links and symlinked folders are caught too.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from srd.errors import UsageError
from srd.executors.job import output_name
from srd.fs.fileversion import FileVersion
from srd.fs.outputmark import mark_output, marked_for
from srd.fs.sources import numbered_names
from srd.imaging.imageheader import IMAGE_SUFFIXES, sniff_format
from srd.imaging.imageio import output_format_for

_HEAD_BYTES = 64
ONESHOT = "srd process"  # the 'inbox' an output's mark names for one-shot runs
_SHOWN = 5  # refused outputs named in the error; the rest are counted


@dataclass(frozen=True)
class Layout:
    """Where a run reads and writes, as the user asked.

    Attributes:
        inputs: Files and folders named on the command line.
        out: The output folder.
        recursive: Whether folders are descended into (sub-folders mirrored under `out`).
        in_place: The user allows outputs to replace their own inputs.
        requested_format: Output format asked for ('same' or None keeps each input's).
        fallback_format: Written for inputs srd reads but can't write (HEIC …); None: the built-in choice.
        overwrite: The user allows outputs to replace files in `out` that srd did not write.
        reprocess: The user wants inputs that are srd's own outputs upscaled again (a rerun otherwise skips
            them: in place, a second run over a finished folder would upscale every photo twice).
    """

    inputs: tuple[Path, ...]
    out: Path
    recursive: bool
    in_place: bool
    requested_format: str | None
    fallback_format: str | None = None
    overwrite: bool = False
    reprocess: bool = False


@dataclass(frozen=True)
class PlannedFile:
    """An input and its output path.

    Attributes:
        source: The input file.
        target: Where its output goes (the input itself, in place).
        version: The input as planned: its job processes that version or none (see `srd.executors.job.Job`).
    """

    source: Path
    target: Path
    version: FileVersion


@dataclass(frozen=True)
class Skipped:
    """An input that gets no job, with the reason shown to the user."""

    source: Path
    reason: str


@dataclass(frozen=True)
class Plan:
    """What the run will do: `files` get a job; `skipped` can't be processed (each a failure, with its reason);
    `outputs` are srd's own outputs among the inputs, left as they are (not failures)."""

    files: tuple[PlannedFile, ...]
    skipped: tuple[Skipped, ...]
    outputs: tuple[Skipped, ...] = ()


def make_plan(layout: Layout) -> Plan:
    """Every input with its output path; inputs that can't be processed are listed with the reason.

    Raises:
        UsageError: outputs would land on inputs (or among the inputs of a folder being read) and
            `layout.in_place` is not set. Nothing has been written.
    """
    _check_folders(layout)
    skipped: list[Skipped] = []
    outputs: list[Skipped] = []
    named: set[Path] = set()
    inputs: set[tuple[int, int]] = set()
    pairs: list[tuple[Path, Path, FileVersion]] = []
    for source, out_dir in _collect(layout, skipped):
        try:
            info = source.stat()
        except OSError as exc:
            skipped.append(Skipped(source, f"cannot read: {exc.strerror}"))
            continue
        if not stat.S_ISREG(info.st_mode):
            skipped.append(Skipped(source, "not a regular file"))
            continue
        if Path(os.path.abspath(source)) in named:
            continue  # the same path named twice (e.g. a folder and a file in it) is processed once
        named.add(Path(os.path.abspath(source)))
        inputs.add((info.st_dev, info.st_ino))
        made_from = None if layout.reprocess else marked_for(source.parent, Path(source.name))
        if made_from is not None:
            outputs.append(Skipped(source, f"already an output of srd (made from {made_from[1]}); "
                                           "not upscaled again (--reprocess to upscale it anyway)"))
            continue
        pairs.append((source, out_dir, FileVersion.of(info)))
    files: list[PlannedFile] = []
    taken: set[Path] = set()
    overwritten: list[Path] = []
    foreign: list[Path] = []  # files in `out` that srd did not write (an earlier run's outputs are marked)
    for source, out_dir, version in pairs:
        name = _output_name(source, layout.requested_format, layout.fallback_format)
        for candidate in numbered_names(out_dir, name):
            key = Path(os.path.abspath(candidate))
            if key in taken:
                continue
            if _is_an_input(candidate, inputs):
                # In place, a file may replace its own directory entry, never another input's.
                if layout.in_place and candidate.resolve() == source.resolve():
                    break
                if layout.in_place:
                    continue
                overwritten.append(candidate)
            elif not layout.overwrite and os.path.lexists(candidate) and not is_srd_output(candidate):
                foreign.append(candidate)
            break
        taken.add(key)
        files.append(PlannedFile(source, candidate, version))
    if overwritten:
        shown = ", ".join(str(path) for path in overwritten[:_SHOWN])
        more = f" and {len(overwritten) - _SHOWN} more" if len(overwritten) > _SHOWN else ""
        raise UsageError(f"refusing to write outputs over their inputs: {shown}{more}; choose another --out, "
                         "or pass --in-place to replace each input with its output (atomically)")
    if foreign:
        shown = ", ".join(str(path) for path in foreign[:_SHOWN])
        more = f" and {len(foreign) - _SHOWN} more" if len(foreign) > _SHOWN else ""
        raise UsageError(f"refusing to replace files srd did not write: {shown}{more}; choose another --out, or "
                         "pass --overwrite to replace them")
    return Plan(tuple(files), tuple(skipped), tuple(outputs))


def is_srd_output(path: Path) -> bool:
    """Whether `path` carries the mark srd puts on its outputs (a rerun may replace it; nothing else may)."""
    return marked_for(path.parent, Path(path.name)) is not None


def mark_as_output(output: Path, source: Path) -> None:
    """Mark a finished output as srd's own, naming its source (best effort, as for the daemon's outputs)."""
    mark_output(output.parent, Path(output.name), ONESHOT, PurePosixPath(os.path.abspath(source)))


def _check_folders(layout: Layout) -> None:
    """Refuse an output folder that is an input folder (or inside one, when sub-folders are read)."""
    if layout.in_place:
        return
    for folder in layout.inputs:
        if not folder.is_dir():
            continue
        if _same_place(layout.out, folder):
            raise UsageError(f"--out {layout.out} is the input folder {folder}: outputs would land among the "
                             "inputs; choose another --out, or pass --in-place to replace each input with its "
                             "output (atomically)")
        if layout.recursive and _inside(layout.out, folder):
            raise UsageError(f"--out {layout.out} is inside the input folder {folder}, which -r reads: outputs "
                             "would become inputs; choose an --out outside it")


def _same_place(path: Path, folder: Path) -> bool:
    if path.resolve() == folder.resolve():
        return True
    try:
        return os.path.samefile(path, folder)
    except OSError:  # `path` doesn't exist yet
        return False


def _inside(path: Path, folder: Path) -> bool:
    return any(_same_place(parent, folder) for parent in path.resolve().parents)


def _is_an_input(path: Path, inputs: set[tuple[int, int]]) -> bool:
    """Whether `path` is an input file (the same file by device and inode: hard links and symlinks too)."""
    try:
        info = path.stat()
    except OSError:
        return False
    return (info.st_dev, info.st_ino) in inputs


def _collect(layout: Layout, skipped: list[Skipped]) -> Iterator[tuple[Path, Path]]:
    """(source, output folder) pairs; folders give their image files, sub-folders mirrored under `out`.

    A folder that can't be listed is added to `skipped` with the reason: its files would otherwise be
    missing from the summary without a word.
    """
    def unreadable(exc: OSError) -> None:
        skipped.append(Skipped(Path(os.fsdecode(exc.filename or "?")), f"folder can't be read: {exc.strerror}"))

    for item in layout.inputs:
        if not item.is_dir():
            yield item, layout.out
            continue
        found: list[Path] = []
        for folder, subfolders, files in os.walk(item, onerror=unreadable):
            subfolders[:] = [name for name in subfolders if not name.startswith(".")] if layout.recursive else []
            found += (Path(folder) / name for name in files
                      if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES)
        for path in sorted(found):
            if path.is_file():
                yield path, layout.out / path.parent.relative_to(item)


def _output_name(source: Path, requested: str | None, fallback: str | None) -> str:
    """The name the job will write, decided from the file's first bytes as the job decides it from its format."""
    try:
        with source.open("rb") as handle:
            source_format = sniff_format(handle.read(_HEAD_BYTES))
    except OSError:
        source_format = None
    if source_format is None:
        return source.name  # not an image we know: the job fails and writes nothing
    return output_name(source.name, source_format, output_format_for(source_format, requested, fallback), requested)


def output_folders(files: Sequence[PlannedFile]) -> list[Path]:
    """The distinct folders the planned outputs go to, in order."""
    return list(dict.fromkeys(planned.target.parent for planned in files))
