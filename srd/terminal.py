"""Text from file names on a person's terminal: shown, never obeyed."""

from __future__ import annotations

import os
import re

# C0 controls and DEL: a newline would split a table row, ESC would start a terminal escape sequence.
_CONTROLS = re.compile("[\x00-\x1f\x7f]")


def printable(text: str) -> str:
    """`text` as a UTF-8 terminal can show it and can't be steered by: bytes of a non-UTF-8 file name (held as
    surrogate escapes), control characters and DEL become ``\\xNN``."""
    shown = os.fsencode(text).decode("utf-8", "backslashreplace")
    return _CONTROLS.sub(lambda match: f"\\x{ord(match.group()):02x}", shown)
