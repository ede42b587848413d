"""Exception hierarchy and exit codes.

Every expected failure is an `SrdError`; only `srd.cli.main` maps them to an `ExitCode`, everything else
raises. The exit codes are one table, each number with one meaning across every command.
"""

from __future__ import annotations

import enum
import os


@enum.unique  # one meaning per number
class ExitCode(enum.IntEnum):
    """What an `srd` command's exit status means; README.md and ``srd --help`` show `exit_code_table`."""

    OK = 0
    FILES_FAILED = 1
    USAGE = 2
    NOT_RUNNING = 3
    MODEL = 4
    OUTPUT = 5
    LOCKED = 6
    ERROR = 7
    LEDGER = 8
    UNHEALTHY = 9
    STARTUP = 10
    INTERRUPTED = 130
    TERMINATED = 143

    @property
    def meaning(self) -> str:
        return _MEANINGS[self]


_MEANINGS = {
    ExitCode.OK: "success",
    ExitCode.FILES_FAILED: "srd process: some inputs failed for reasons of their own (each named on stderr); the "
                           "others were written",
    ExitCode.USAGE: "invalid command line or configuration, or an unsafe request refused; nothing was done",
    ExitCode.NOT_RUNNING: "srd status: the daemon is not running (the LSB status convention)",
    ExitCode.MODEL: "a model is missing, corrupt, or can't be downloaded or loaded",
    ExitCode.OUTPUT: "an output or model file can't be written (disk full, read-only, no permission); srd process: "
                     "also when inputs failed too",
    ExitCode.LOCKED: "another srd instance holds the state directory",
    ExitCode.ERROR: "any other failure; the message says what went wrong",
    ExitCode.LEDGER: "the ledger is damaged: 'srd ledger check' says how, 'srd ledger repair' keeps what is intact",
    ExitCode.UNHEALTHY: "srd status --check: running, but an inbox, its outbox, the state directory or the worker "
                        "processes are unhealthy",
    ExitCode.STARTUP: "a configured folder, the state directory or a listening address (metrics, srd web) can't be "
                      "created or opened",
    ExitCode.INTERRUPTED: "stopped by Ctrl-C (SIGINT)",
    ExitCode.TERMINATED: "stopped by SIGTERM (srd process, srd train fit)",
}


def describe_os_error(exc: OSError) -> str:
    """One line for an OSError: its reason and the path(s) it concerns."""
    reason = exc.strerror or str(exc)
    paths = [os.fsdecode(name) for name in (exc.filename, exc.filename2) if name]
    return f"{reason}: {' -> '.join(paths)}" if paths else reason


def exit_code_table() -> str:
    """The exit codes as lines of ``code  meaning``, for ``srd --help``."""
    return "\n".join(f"  {code.value:>3}  {code.meaning}" for code in ExitCode)


class SrdError(Exception):
    """Root of srd's expected errors; the message is shown to the user as is."""


class ConfigError(SrdError):
    """The configuration is invalid; `problems` lists every issue with its location."""

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = list(problems)
        self.source = source
        super().__init__(f"{source}: " + "; ".join(self.problems))


class UsageError(SrdError):
    """The command line asks for something srd refuses to do (e.g. write outputs over their inputs)."""


class ModelError(SrdError):
    """A model can't be found, verified, downloaded or loaded."""


class ModelChoiceError(ModelError):
    """The request does not say which model it means (a name that comes in several scales, and no scale) or
    asks for an unknown convention: the command line or config is at fault, not a model file."""


class ModelUnavailableError(ModelError):
    """A worker could not load a job's model as the job names it (its file gone, unreadable, or other bytes than
    those checked): not the fault of the file being processed."""


class ImageError(SrdError):
    """An input file can't be read as an image (corrupt, unsupported, too large)."""


class SourceChangedError(SrdError):
    """An input is no longer the version the run planned to process (written to or replaced meanwhile)."""


class OutputError(SrdError):
    """An output can't be written (permissions, disk full, bad format).

    `errno` is the operating system's error number when the storage refused the write (ENOSPC,
    EROFS …), so the daemon can tell "the outbox is full" from "this image can't be encoded".
    """

    def __init__(self, message: str, *, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class LockedError(SrdError):
    """Another srd instance already owns the state directory."""


class StateDirError(SrdError):
    """The state directory can't be used: missing where it must exist, not a folder, no permission, full or
    read-only. The folder is at fault, not what it holds (a damaged ledger is a `srd.ledger.LedgerError`)."""


class StartupError(SrdError):
    """The daemon can't start: a folder or the state directory can't be created or opened, a watch fails."""


class WorkerStartError(SrdError):
    """The worker processes can't be started (out of file descriptors or processes, an interpreter this user
    can't execute), so no input could be processed."""
