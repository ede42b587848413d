"""The daemon's status file, ``state_dir/status.json``: what `srd status` and monitoring read.

It is replaced atomically, so a reader never sees half a document, and it names the daemon's pid so a
reader can tell a live daemon from the file a dead one left behind.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from srd.atomic import write_bytes_atomic

STATUS_NAME = "status.json"


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
    """The last status written, or None if there is none or it can't be parsed."""
    try:
        return json.loads(status_path(state_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


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
