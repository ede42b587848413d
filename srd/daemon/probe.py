"""Reading a file off the loop: its hash, first bytes and pixel count, read in an offload thread.

A file on a share can hang any read, so the loop never reads one itself (docs/design.md §2): it asks
`OffLoopReads` for a file's probe, and the file comes back through the backlog once the read is done.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from srd.daemon.offload import Done, Offloader
from srd.daemon.settle import ReadyFile
from srd.daemon.sourcefile import SourceFile
from srd.executors.job import Content
from srd.fs import safefs
from srd.fs.fileversion import FileVersion
from srd.imaging.imageheader import read_header

HEAD_BYTES = 64
# Enough of a file for its image header (dimensions) behind ordinary metadata.
HEADER_BYTES = 256 * 1024
# A source up to this size keeps the bytes its hash was computed from, and its job ships them (one read per
# source, and the output is made from exactly the bytes hashed); a bigger one is read again where its job runs.
# At most the pool's capacity of reads hold bytes at once (and as many jobs waiting for a worker), bounding them.
SHIPPED_MAX_BYTES = 32 << 20
_READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class Probe:
    """What reading a file off the loop found: its hash (when asked for), first bytes and pixel count."""

    sha256: str | None
    head: bytes
    pixels: int | None
    signature: FileVersion  # the file's version as it was read (after hashing, when hashed)
    content: Content | None = None  # the whole content with that hash, when it was asked to be kept


@dataclass(frozen=True)
class ReadToken:
    """An off-loop read of one version of a file (`probe_file`)."""

    path: Path
    version: FileVersion
    need_hash: bool
    keep_bytes: bool = False


def hash_file(root: Path, path: Path, *, keep: bool = False) -> tuple[str, bytes, FileVersion, Content | None]:
    """Hash a file below inbox `root` and return its sha256, first `HEADER_BYTES`, version as of the end of the
    read, and (with `keep`) its whole content; it is opened through `srd.fs.safefs`, never through a symlink.

    The head comes from the same read as the hash, so a hashed file is opened and read once.
    The caller compares that version with the settled one: if they differ, the file changed while
    it was being read and the hash means nothing.
    """
    digest = hashlib.sha256()
    chunks: list[bytes] = []
    with os.fdopen(safefs.open_regular(root, path)[0], "rb") as fh:
        head = fh.read(HEADER_BYTES)
        digest.update(head)
        chunks.append(head)
        while chunk := fh.read(_READ_CHUNK):
            digest.update(chunk)
            if keep:
                chunks.append(chunk)
        st = os.fstat(fh.fileno())
    sha256 = digest.hexdigest()
    return sha256, head, FileVersion.of(st), Content(b"".join(chunks), sha256) if keep else None


def read_head(root: Path, path: Path, size: int = HEAD_BYTES) -> tuple[bytes, FileVersion]:
    """The first `size` bytes of a file below inbox `root`, and its version as it was read."""
    with os.fdopen(safefs.open_regular(root, path)[0], "rb") as fh:
        return fh.read(size), FileVersion.of(os.fstat(fh.fileno()))


def probe_file(root: Path, path: Path, *, need_hash: bool, keep_bytes: bool = False) -> Probe:
    """Read what the loop needs from a file below inbox `root`, in one read; runs in an offload thread, never
    in the loop.

    With `need_hash` and `keep_bytes`, the probe also holds the content it hashed, with its hash, for the job
    to ship (the worker neither reads nor hashes it again).
    """
    sha256 = content = None
    if need_hash:
        sha256, head, version, content = hash_file(root, path, keep=keep_bytes)
    else:
        head, version = read_head(root, path, HEADER_BYTES)
    header = read_header(head)
    return Probe(sha256, head[:HEAD_BYTES], header.pixels if header is not None else None, version, content)


class OffLoopReads:
    """The reads out in the offloader (the latest request for each file) and the finished ones not yet used."""

    def __init__(self, offload: Offloader, max_kept: Callable[[], int]) -> None:
        self._offload = offload
        self._max_kept = max_kept
        self.reading: dict[Path, tuple[str, ReadyFile]] = {}  # files being read off the loop, latest request
        self._read: dict[Path, Done] = {}  # finished reads, each taken by the next `consider` of its file
        self._keeping: set[Path] = set()  # reads out or finished that hold a whole file's bytes

    def probe(self, file: SourceFile, ready: ReadyFile, *, need_hash: bool) -> Probe | None:
        """This file's read, if it finished for this version of it; otherwise start it and return None.

        The file comes back through the backlog when its read is done, and is considered again. A hash read
        keeps the file's bytes for its job (`Probe.content`) if the file is small enough and fewer than
        `max_kept()` reads hold bytes already, so the bytes held stay bounded however long the backlog.

        Raises:
            OSError: The read failed (the file vanished, can't be read …).
        """
        signature = file.version
        done = self._read.pop(file.path, None)
        # A read of this same version serves; one with a hash serves a request without.
        if done is not None and done.token.version == signature and (done.token.need_hash or not need_hash):
            self._keeping.discard(file.path)
            if done.error is not None:
                raise done.error
            return done.value
        if file.path not in self.reading:
            self._keeping.discard(file.path)
            keep = (need_hash and signature.size <= SHIPPED_MAX_BYTES and len(self._keeping) < self._max_kept())
            if keep:
                self._keeping.add(file.path)
            token = ReadToken(file.path, signature, need_hash, keep)
            self._offload.submit(file.inbox_id, token, lambda: probe_file(file.inbox.path, file.path,
                                                                          need_hash=need_hash, keep_bytes=keep))
        self.reading[file.path] = (file.inbox_id, ready)
        return None

    def finished(self, token: ReadToken, done: Done) -> tuple[str, ReadyFile] | None:
        """Keep a finished read for its file; returns the request to decide again now (None if none waits)."""
        request = self.reading.pop(token.path, None)
        if request is not None:
            self._read[token.path] = done
        else:
            self._keeping.discard(token.path)
        return request

    def discard(self, path: Path) -> None:
        """Drop a finished read that its file's decision had no use for."""
        if self._read.pop(path, None) is not None:
            self._keeping.discard(path)
