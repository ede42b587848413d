"""The daemon's status file, ``state_dir/status.json``: what `srd status` and monitoring read.

It is replaced atomically, so a reader never sees half a document, and it names the daemon's pid so a
reader can tell a live daemon from the file a dead one left behind. The read side needs no valid
config: `locate_state_dir` finds the state folder even when the config has errors, since that is
when an admin most needs to see what the daemon is doing.
"""

from __future__ import annotations

import enum
import json
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from srd.config import load_config
from srd.errors import ConfigError, SrdError, StateDirError
from srd.fs.atomic import write_bytes_atomic
from srd.ledger.files import LOCK_NAME, pid_in_lock

STATUS_NAME = "status.json"
# The daemon rewrites its status at least this often, even when nothing changed …
STATUS_REFRESH_S = 30.0
# … so a document older than this says the daemon can't write it, or its loop is stuck.
STALE_STATUS_S = 3 * STATUS_REFRESH_S


def status_path(state_dir: Path) -> Path:
    return state_dir / STATUS_NAME


def write_status(state_dir: Path, status: dict[str, Any]) -> None:
    """Replace the status file with `status` (JSON).

    File names that are not valid UTF-8 are written with ``\\xNN`` escapes: JSON can only carry them as lone
    surrogates, which most JSON tools reject and which a UTF-8 terminal refuses to print.

    Raises:
        OutputError: The file could not be written (the caller decides how much that matters).
    """
    text = json.dumps(_printable(status), indent=2, sort_keys=True) + "\n"
    write_bytes_atomic(status_path(state_dir), text.encode())


def _printable(value: Any) -> Any:
    if isinstance(value, str):
        return os.fsencode(value).decode("utf-8", "backslashreplace") if _SURROGATES.search(value) else value
    if isinstance(value, dict):
        return {key: _printable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_printable(item) for item in value]
    return value


_SURROGATES = re.compile("[\udc80-\udcff]")


def read_status(state_dir: Path) -> dict[str, Any] | None:
    """The last status written, or None if there is none.

    Raises:
        StateDirError: The file can't be read (no permission, the state directory is not a folder).
        SrdError: The file is there but not a status document (damage is reported, not taken for "srd has
            not run here").
    """
    path = status_path(state_dir)
    try:
        status = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateDirError(f"cannot read status file {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:  # not JSON, or not UTF-8
        raise SrdError(f"status file {path} is unreadable: {exc}") from exc
    if not isinstance(status, dict) or not isinstance(status.get("inboxes", []), list) or not all(
            isinstance(inbox, dict) for inbox in status.get("inboxes", [])):
        raise SrdError(f"status file {path} is not a status document (was it edited, or written by another "
                       "program?)")
    return status


def pid_alive(pid: int) -> bool:
    """Whether this pid is a live srd process (a dead daemon's pid may have been reused by another program)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, but runs as another user
    try:
        return b"srd" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc to check: trust the pid


class Health(enum.Enum):
    """The verdict of `srd status --check`."""

    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    NOT_RUNNING = "not running"


@dataclass(frozen=True)
class Assessment:
    """A status document judged: whether its daemon lives, its health, and why it is not healthy."""

    status: dict[str, Any] | None
    alive: bool
    health: Health
    reasons: tuple[str, ...]


def assess(status: dict[str, Any] | None, now: datetime | None = None, *,
           state_dir: Path | None = None) -> Assessment:
    """Judge a status document: not running (no document, dead pid, stopped), unhealthy (an inbox
    unavailable, an outbox or the state dir refusing writes, worker processes that can't start, a document gone
    stale, stopping) or healthy. With `state_dir` (the folder the document was read from), also look at it:
    a daemon can't say in the document that its state dir is full, since the document lives there."""
    holder = None if state_dir is None else _holder_without_status(state_dir, status)
    if holder is not None:
        return Assessment(None, True, Health.UNHEALTHY, (
            f"pid {holder} holds the state directory and has not written its status yet: a daemon opening its "
            "ledger (minutes, once, when it migrates a large one written by an older srd), or an srd ledger "
            "command",))
    if status is None:
        return Assessment(None, False, Health.NOT_RUNNING, ("no status file: srd has not run with this state_dir",))
    alive = pid_alive(int(status.get("pid", 0))) and status.get("state") != "stopped"
    if not alive:
        return Assessment(status, False, Health.NOT_RUNNING,
                          (f"last seen pid {status.get('pid')} {status.get('state')} at {status.get('updated_at')}",))
    reasons = []
    age = _age_s(status.get("updated_at"), now or datetime.now(UTC))
    if age is not None and age > STALE_STATUS_S:
        reasons.append(f"status not updated for {age:.0f} s: the daemon can't write its state_dir, or its loop is "
                       "stuck")
    if status.get("state") == "stopping":
        reasons.append("stopping")
    reported = status.get("state_dir") or {"state": "ok"}
    if reported.get("state") != "ok":
        reasons.append(f"state_dir unwritable since {reported.get('since')}: {reported.get('error')}")
    elif state_dir is not None and (full := _full(state_dir)):
        reasons.append(full)
    start_error = (status.get("pool") or {}).get("start_error")
    if start_error:
        reasons.append(f"worker processes can't be started: {start_error}")
    executor = status.get("executor") or {}
    if executor.get("kind") == "dask" and not start_error:
        if not executor.get("connected"):
            reasons.append(f"Dask scheduler {executor.get('scheduler')} unreachable: {executor.get('error')}")
        elif not [worker for worker in executor.get("workers", []) if not worker.get("refused")]:
            reasons.append(f"no usable Dask worker at {executor.get('scheduler')}: files wait")
    for inbox in status.get("inboxes", []):
        if inbox.get("health") not in ("ok", "stopping"):
            problem = (inbox.get("root_error") or (inbox.get("claim") or {}).get("reason")
                       or (inbox.get("stuck_step") or {}).get("reason")
                       or (inbox.get("failing_step") or {}).get("reason")
                       or (inbox.get("model_state") or {}).get("error"))
            why = f": {problem}" if problem else ""
            reasons.append(f"inbox {inbox['path']} {inbox.get('health')} (watch {inbox.get('watch')}){why}")
        outbox_state = inbox.get("outbox_state") or {"state": "ok"}
        if outbox_state.get("state") != "ok":
            reasons.append(f"outbox {inbox.get('outbox')} unwritable since {outbox_state.get('since')}")
        for folder in inbox.get("refused_folders") or []:
            reasons.append(f"outbox folder {folder.get('folder')} unwritable since {folder.get('since')}: "
                           f"{folder.get('error')}")
    return Assessment(status, True, Health.UNHEALTHY if reasons else Health.HEALTHY, tuple(reasons))


def _holder_without_status(state_dir: Path, status: dict[str, Any] | None) -> int | None:
    """The pid of a live srd that holds the state directory's lock (its pid is in the lock file) but is not the
    one the status document is from: it has not written one yet."""
    lock = state_dir / LOCK_NAME
    try:
        pid = pid_in_lock(lock.read_bytes())
    except OSError:
        return None
    if pid is None or (status is not None and status.get("pid") == pid):
        return None
    holders = _flock_holders(lock)
    if holders is not None and pid not in holders:
        return None  # the pid of an earlier holder, now another process
    return pid if pid_alive(pid) else None


def _flock_holders(path: Path) -> set[int] | None:
    """The pids that hold a ``flock`` on `path` as ``/proc/locks`` lists them (by inode), or None where it can't
    be read (not Linux)."""
    try:
        inode = os.stat(path).st_ino
        listing = Path("/proc/locks").read_text()
    except OSError:
        return None
    holders = set()
    for line in listing.splitlines():
        fields = line.split()  # "1: FLOCK  ADVISORY  WRITE 4242 fd:01:1234 0 EOF"; a waiter has "->" after "1:"
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == str(inode):
            holders.add(int(fields[4]))
    return holders


# Less free space than this in the state dir's filesystem: a journal record or the status file may not fit.
_MIN_FREE_BYTES = 256 * 1024


def _full(state_dir: Path) -> str | None:
    """Why the state dir's filesystem takes no more writes (full, out of inodes, read-only), or None."""
    try:
        fs = os.statvfs(state_dir)
    except OSError:
        return None  # the document was just read from there: whatever this is, reading it said enough
    if fs.f_flag & os.ST_RDONLY:
        return f"state_dir {state_dir} is on a read-only filesystem"
    free = fs.f_bavail * fs.f_frsize
    if free < _MIN_FREE_BYTES or (fs.f_files and not fs.f_favail):
        return f"state_dir {state_dir} is full ({free // 1024} KB, {fs.f_favail} inodes free): the ledger and " \
               "this status can't be written"
    return None


@dataclass(frozen=True)
class StateDirChoice:
    """Where `srd status` looks, and how it came to look there (shown to the user)."""

    path: Path
    origin: str


_STATE_DIR_LINE = re.compile(r"state_dir\s*:(?P<value>.*)$")


def _state_dir_in_text(text: str) -> str | None:
    """A top-level ``state_dir:`` value read line by line from YAML that does not parse as a whole."""
    for line in text.splitlines():
        match = _STATE_DIR_LINE.match(line)
        if match is None:
            continue
        try:
            value = yaml.safe_load(match.group("value"))
        except yaml.YAMLError:
            value = match.group("value").split(" #", 1)[0].strip().strip("'\"")
        return value if isinstance(value, str) and value else None
    return None


def locate_state_dir(config_path: Path | None, state_dir: Path | None) -> StateDirChoice:
    """The state folder to read: `state_dir` if given, else the config's, else a best-effort guess.

    A config with errors still names its state_dir in most cases (a typo elsewhere, a bad indent);
    failing that, the default `.srd` beside the config is where the daemon would have put it.

    Raises:
        ConfigError: The config can't be read at all (missing, a folder, no permission): there is nothing to
            guess from, and a guess would report a running daemon as "not running".
    """
    if state_dir is not None:
        return StateDirChoice(state_dir, "--state-dir")
    try:
        config = load_config(config_path, check_folders=False)  # a hung share must not hang status
    except ConfigError as exc:
        if config_path is None:
            raise  # the built-in defaults have no text to read a state_dir from
        broken = f"config {config_path} is invalid ({len(exc.problems)} problem(s): see 'srd config check')"
        base = config_path.resolve().parent
        try:
            found = _state_dir_in_text(config_path.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            raise exc from None
        if found is not None:
            guess = Path(found).expanduser()
            return StateDirChoice(guess if guess.is_absolute() else base / guess,
                                  f"{broken}; state_dir read from its text")
        return StateDirChoice(base / ".srd", f"{broken}; no state_dir in it, so the default beside it")
    return StateDirChoice(config.state_dir, f"config {config.source}")


def _age_s(stamp: Any, now: datetime) -> float | None:
    """Seconds since an ISO 8601 time (None if there is none or it doesn't parse)."""
    try:
        return (now - datetime.fromisoformat(str(stamp))).total_seconds()
    except ValueError:
        return None
