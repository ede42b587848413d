"""Open a result below a configured outbox for serving, and nothing else.

The path comes from a URL, so it is hostile text: it is split into components and walked from the
outbox root with `srd.fs.safefs` (``O_NOFOLLOW`` at every step, what was opened checked against what was
stat'ed), so ``..``, a symlink anywhere on the way, an encoded slash or a special file can't reach
anything outside. Dot-files (srd's temps, an inbox claim) are never served either.
"""

from __future__ import annotations

import mimetypes
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from srd.fs import safefs

_CHUNK = 256 * 1024


class NotServed(LookupError):
    """The path names nothing this server may send (the reply is a plain 404: it says nothing more)."""


@dataclass(frozen=True)
class Download:
    """An opened result: its descriptor (streamed by `chunks`, which closes it), size and media type."""

    fd: int
    size: int
    media_type: str
    name: str

    def chunks(self) -> Iterator[bytes]:
        with os.fdopen(self.fd, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                yield chunk


def open_result(outbox: Path, url_path: str) -> Download:
    """Open ``outbox/url_path`` if it is a regular file reached without a symlink, ``..`` or a dot-name."""
    if "\x00" in url_path or "\\" in url_path:
        raise NotServed(url_path)
    parts = url_path.split("/")
    if any(part in ("", ".", "..") or part.startswith(".") for part in parts):
        raise NotServed(url_path)
    rel = PurePosixPath(*parts)
    try:
        fd, st = safefs.open_regular(outbox, rel)
    except (OSError, ValueError) as exc:
        raise NotServed(url_path) from exc
    media_type = mimetypes.guess_type(rel.name)[0] or "application/octet-stream"
    return Download(fd, st.st_size, media_type, rel.name)
