"""The daemon's status file, ``state_dir/status.json``: what `srd status` and monitoring read.

It is replaced atomically, so a reader never sees half a document, and it names the daemon's pid so a
reader can tell a live daemon from the file a dead one left behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from srd.atomic import write_bytes_atomic

STATUS_NAME = "status.json"


def status_path(state_dir: Path) -> Path:
    return state_dir / STATUS_NAME


def write_status(state_dir: Path, status: dict[str, Any]) -> None:
    """Replace the status file with `status` (JSON)."""
    write_bytes_atomic(status_path(state_dir), (json.dumps(status, indent=2, sort_keys=True) + "\n").encode())


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
