"""What happens to an inbox file after its verdict (archive, delete, or into the failed folder), as one
call that can run off the daemon's loop.

The loop decides; this module only acts, and says what it found. A move across filesystems copies the
whole file, and any step can hang on a share that stops answering, so the daemon runs steps in its
offload threads (`srd.daemon.offload`) and journals their results when they come back. The file is checked
against the version the verdict was about just before acting: a file rewritten meanwhile is a new
file, and is left for the loop to judge again.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from srd.daemon.scan import candidate_stat
from srd.fs import safefs
from srd.fs.fileversion import FileVersion
from srd.fs.sources import archive_source, fail_source


class Action(enum.StrEnum):
    """What to do with the source."""

    ARCHIVE = "archive"
    DELETE = "delete"
    FAIL = "fail"  # move into the failed folder, with a reason file


class Found(enum.StrEnum):
    """What the step found when it came to act."""

    DONE = "done"  # the action happened
    GONE = "gone"  # the file had left the inbox
    CHANGED = "changed"  # the file is no longer the version the verdict was about: nothing was done
    INBOX_MISSING = "inbox-missing"  # the inbox root itself can't be opened (a share away): fate unknown


@dataclass(frozen=True)
class SourceStep:
    """One step for one source, as the loop decided it.

    Attributes:
        action: What to do.
        inbox_key: The inbox's id (the ledger's and the status file's name for it).
        root: The inbox folder.
        rel: The file, relative to `root`.
        version: The version of the file the verdict was about.
        destination: The archive or failed folder (None for a delete).
        ledger_key: The ledger entry whose disposition the result is journaled on, if any.
        report: For `Action.FAIL`: the reason file's fields.
        report_if_gone: For `Action.FAIL`: still write the reason file if the file has left the inbox.
        retried: This is a second (or later) try of a step that failed.
    """

    action: Action
    inbox_key: str
    root: Path
    rel: PurePosixPath
    version: FileVersion
    destination: Path | None = None
    ledger_key: str | None = None
    report: dict[str, Any] = field(default_factory=dict)
    report_if_gone: bool = True
    retried: bool = False

    @property
    def path(self) -> Path:
        return self.root / self.rel


@dataclass(frozen=True)
class StepResult:
    """What `run_step` found, and where a moved file went."""

    found: Found
    moved_to: Path | None = None


def run_step(step: SourceStep) -> StepResult:
    """Carry out `step` if the file is still the version it is about.

    Raises:
        OSError, OutputError: The step failed; nothing moved (moves are all-or-nothing).
    """
    current = candidate_stat(step.path, step.root)
    if current is None and not safefs.root_usable(step.root):
        return StepResult(Found.INBOX_MISSING)
    if current is not None and FileVersion.of(current) != step.version:
        return StepResult(Found.CHANGED)
    if step.action is Action.FAIL:
        if current is None and not step.report_if_gone:
            return StepResult(Found.GONE)
        assert step.destination is not None
        moved = fail_source(step.root, step.rel, step.destination, step.report)
        return StepResult(Found.DONE if current is not None else Found.GONE, moved)
    if current is None:
        return StepResult(Found.GONE)
    if step.action is Action.DELETE:
        safefs.unlink(step.root, step.rel)
        return StepResult(Found.DONE)
    assert step.destination is not None
    return StepResult(Found.DONE, archive_source(step.root, step.rel, step.destination))
