"""Keep the codecs' own messages off the user's terminal and the journal.

libpng, libjpeg and libtiff print warnings and errors straight to file descriptor 2
("libpng error: PNG input buffer is incomplete", "Corrupt JPEG data: …"), whatever OpenCV's
log level says. Around each codec call, fd 2 is pointed at a temporary file and the lines
captured there come back to the caller, which puts them into srd's own structured lines.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

# Enough for any real codec chatter; a hostile file cannot make the capture grow without bound.
_MAX_CAPTURED_BYTES = 16_384
# OpenCV's log prefix ("[ WARN:0@0.348] global grfmt_tiff.cpp:123 "): where, not what.
_OPENCV_PREFIX = re.compile(r"^\[\s*[A-Z]+:\d+@[\d.]+\]\s+(?:global\s+)?\S+:\d+\s+")


@contextmanager
def captured_codec_messages() -> Iterator[list[str]]:
    """Capture what native code writes to fd 2 inside the block; the list is filled on exit.

    Only the calling thread should write to stderr meanwhile: workers run one job at a time,
    and the one-shot command decodes on its main thread.
    """
    messages: list[str] = []
    sys.stderr.flush()
    sink = _anonymous_file()
    saved = os.dup(2)
    os.dup2(sink, 2)
    try:
        yield messages
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        text = os.pread(sink, _MAX_CAPTURED_BYTES, 0).decode("utf-8", "replace")
        os.close(sink)
        for line in text.splitlines():
            line = _OPENCV_PREFIX.sub("", line.strip())
            if line and line not in messages:
                messages.append(line)


def _anonymous_file() -> int:
    """A file descriptor of a file with no name: in memory where the kernel allows (no disk, no /tmp)."""
    try:
        return os.memfd_create("srd-codec-messages", os.MFD_CLOEXEC)
    except (AttributeError, OSError):
        with tempfile.TemporaryFile() as sink:
            return os.dup(sink.fileno())
