"""Exception hierarchy: every expected failure is an `SrdError` carrying its CLI exit code.

Only `srd.cli` maps these to exit codes; everything else raises.
"""

from __future__ import annotations


class SrdError(Exception):
    """Root of srd's expected errors; the message is shown to the user as is."""

    exit_code = 1


class ConfigError(SrdError):
    """The configuration is invalid; `problems` lists every issue with its location."""

    exit_code = 2

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = list(problems)
        self.source = source
        super().__init__(f"{source}: " + "; ".join(self.problems))


class ModelError(SrdError):
    """A model can't be found, verified, downloaded or loaded."""

    exit_code = 3


class ImageError(SrdError):
    """An input file can't be read as an image (corrupt, unsupported, too large)."""

    exit_code = 4


class OutputError(SrdError):
    """An output can't be written (permissions, disk full, bad format).

    `errno` is the operating system's error number when the storage refused the write (ENOSPC,
    EROFS …), so the daemon can tell "the outbox is full" from "this image can't be encoded".
    """

    exit_code = 5

    def __init__(self, message: str, *, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class LockedError(SrdError):
    """Another srd instance already owns the state directory."""

    exit_code = 6


class StartupError(SrdError):
    """The daemon can't start: a folder or the state directory can't be created or opened, a watch fails."""

    exit_code = 7
