"""The values the per-file rules pass around: one version of a file in an inbox, and the job made of it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from srd.config import Inbox, Profile
from srd.daemon.settle import ReadyFile
from srd.fs.fileversion import FileVersion


@dataclass(frozen=True)
class SourceFile:
    """One version of one file in an inbox: which inbox (as configured when it settled), where, and which version.

    Every decision about a file is about one version of it (docs/design.md §3), so the version travels with it.
    """

    inbox_id: str
    inbox: Inbox
    path: Path
    rel: PurePosixPath  # below the inbox root: the ledger's name for it
    version: FileVersion

    @classmethod
    def settled(cls, inbox_id: str, inbox: Inbox, ready: ReadyFile) -> SourceFile:
        rel = PurePosixPath(ready.path.relative_to(inbox.path).as_posix())
        return cls(inbox_id, inbox, ready.path, rel, ready.version)


@dataclass(frozen=True)
class Work:
    """One file handed to the pool, with everything its outcome needs even after a reload."""

    file: SourceFile
    profile: Profile
    fingerprint: str
    sha256: str
    key: str
    target: Path
    pixels: int | None = None  # from the header; None when it couldn't be read
