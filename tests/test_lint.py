"""Lint and types are checked by the test command CI runs: ruff and mypy, configured in pyproject.toml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _assert_tool_passes(*args: str) -> None:
    # The tools come from the test extra and run from this interpreter's environment: a missing tool fails the
    # test ("No module named ...") rather than skipping it.
    result = subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=600, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}", pytrace=False)


def test_ruff_finds_nothing() -> None:
    _assert_tool_passes("ruff", "check", "--output-format", "concise", "srd", "tests", "scripts")


def test_mypy_finds_nothing() -> None:
    # Files, strictness and per-module overrides come from [tool.mypy] in pyproject.toml.
    _assert_tool_passes("mypy")
