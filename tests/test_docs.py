"""Docs that ship with the code: module docstrings cite the repo's own design document, by sections it has."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DESIGN = REPO / "docs" / "design.md"


def _module_docstrings() -> dict[str, str]:
    found = {}
    for folder in ("srd", "scripts", "tests"):
        for path in sorted((REPO / folder).rglob("*.py")):
            docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
            if docstring:
                found[str(path.relative_to(REPO))] = docstring
    return found


def test_module_docstrings_cite_sections_that_docs_design_has() -> None:
    sections = set(re.findall(r"^## (\d+)\. ", DESIGN.read_text(encoding="utf-8"), flags=re.MULTILINE))
    cited = 0
    for module, docstring in _module_docstrings().items():
        assert "DESIGN §" not in docstring, f"{module} cites a design file outside the repo"
        for reference in re.findall(r"docs/design\.md ((?:§\d+(?:, )?)+)", docstring):
            for number in re.findall(r"§(\d+)", reference):
                assert number in sections, f"{module} cites docs/design.md §{number}, which does not exist"
                cited += 1
    assert cited >= 10  # the modules that explain a design decision point at it
