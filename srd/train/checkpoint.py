"""Atomic training checkpoints: a crash or kill mid-save must never destroy the last good state."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """torch.save into a dot-temp file in the same folder, fsync, then ``os.replace`` over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load(path: Path) -> dict[str, Any]:
    """Load a checkpoint on the CPU (weights_only=False: it also holds RNG states and plain config)."""
    return torch.load(path, map_location="cpu", weights_only=False)
