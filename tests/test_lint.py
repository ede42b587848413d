"""Lint and types are checked by the test command CI runs: ruff and mypy, configured in pyproject.toml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    # The tools come from the test extra, so they run from this interpreter's environment; a missing tool fails
    # the test (ModuleNotFoundError in the output) rather than skipping it.
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=600, check=False
    )


def test_ruff_finds_nothing() -> None:
    result = _run_tool("ruff", "check", "--output-format", "concise", "srd", "tests", "scripts")
    assert result.returncode == 0, f"ruff check failed:\n{result.stdout}{result.stderr}"


def test_mypy_finds_nothing() -> None:
    # Files, strictness and per-module overrides come from [tool.mypy] in pyproject.toml.
    result = _run_tool("mypy")
    assert result.returncode == 0, f"mypy failed:\n{result.stdout}{result.stderr}"
