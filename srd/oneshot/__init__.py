"""The one-shot command, ``srd process``: plan every output safely, run the batch on the daemon's pool, report."""

from __future__ import annotations

from srd.oneshot.command import run_process

__all__ = ["run_process"]
