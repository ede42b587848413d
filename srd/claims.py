"""Output paths reserved by started jobs, kept on disk so a retry after a crash reuses the same name.

Workers keep writing after the daemon dies mid-job (or the daemon dies between a worker's atomic
rename and the ledger's ``done``), so a retried job may find its own finished output in place. Without
knowing the name was its own, the ``suffix`` collision policy would write ``name-1.jpg`` beside it and
the user would get two outputs for one input. The ledger records outputs only when done, so the
reservation is journaled here first: one fsynced JSON line per claim, read back at startup.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import structlog

from srd.atomic import write_bytes_atomic

log = structlog.get_logger(__name__)

CLAIMS_NAME = "claims.jsonl"


class Claims:
    """Map of ledger key → planned output path, durable before the job starts.

    Only the daemon that holds the ledger lock uses it, so no locking of its own is needed.
    """

    def __init__(self, state_dir: Path) -> None:
        self._path = state_dir / CLAIMS_NAME
        self._claims: dict[str, Path] = {}
        try:
            lines = self._path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            lines = []
        for line in lines:
            try:
                record = json.loads(line)
                key, target = record["key"], record["target"]
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line from a crash: that claim's job never started
            if target is None:
                self._claims.pop(key, None)
            else:
                self._claims[key] = Path(target)
        self._rewrite()
        self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def get(self, key: str) -> Path | None:
        """The output path reserved for `key` by an earlier start, if any."""
        return self._claims.get(key)

    def items(self) -> list[tuple[str, Path]]:
        """All live reservations."""
        return list(self._claims.items())

    def claim(self, key: str, target: Path) -> None:
        """Reserve `target` for `key`, durably (called before the job is handed to a worker)."""
        if self._claims.get(key) == target:
            return
        self._append({"key": key, "target": str(target)})
        self._claims[key] = target

    def release(self, key: str) -> None:
        """Drop the reservation once the ledger records the job as done or failed."""
        if self._claims.pop(key, None) is not None:
            self._append({"key": key, "target": None})

    def close(self) -> None:
        os.close(self._fd)

    def __len__(self) -> int:
        return len(self._claims)

    def _append(self, record: dict[str, str | None]) -> None:
        os.write(self._fd, (json.dumps(record) + "\n").encode())
        os.fsync(self._fd)

    def _rewrite(self) -> None:
        """Start each run with only the live claims, so the file never grows without bound."""
        body = "".join(json.dumps({"key": k, "target": str(t)}) + "\n" for k, t in self._claims.items())
        write_bytes_atomic(self._path, body.encode())
