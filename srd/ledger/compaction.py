"""A compaction in a thread: the frozen layers folded into a new generation, made current by replacing the
snapshot file, while the loop goes on writing to the journal and to a new layer.

The journal stays the source of truth until the snapshot file names the new generation: the generation is
written and fsynced first (a crash leaves a folder nothing names, removed at the next load), then the
snapshot file is replaced atomically (a crash after that leaves journal records the next load skips by their
``seq``). Only then does the loop (`Store`) shorten the journal and swap its base.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import threading
import time
from pathlib import Path

import structlog

from srd.fs.atomic import TEMP_PREFIX, write_bytes_atomic
from srd.ledger.base import Base
from srd.ledger.errors import LedgerError
from srd.ledger.files import PREVIOUS_SNAPSHOT_NAME, SNAPSHOT_NAME
from srd.ledger.generation import GENERATION_PREFIX, generation_name, write_generation
from srd.ledger.heap import give_back_free_memory
from srd.ledger.snapshot import generation_of, manifest
from srd.ledger.tables import Layer

log = structlog.get_logger(__name__)

# How much of an old generation's file is freed at a time, and the pause between steps (see `_shrink_files`).
_SHRINK_STEP = 16 * 1024 * 1024
_SHRINK_PAUSE_S = 0.01
# How often the interpreter hands over between threads while a compaction runs (`_favour_the_loop`).
_SWITCH_INTERVAL_S = 0.001


class Compaction:
    """One compaction: `start` it, then, on the loop, `done` tells when `base` (or `error`) is there."""

    def __init__(self, state_dir: Path, base: Base, layers: list[Layer], seq: int, journal_cut: int) -> None:
        """Fold `layers` (frozen: nobody changes them now) into `base`, as the generation of records up to
        `seq`; the journal's first `journal_cut` bytes hold exactly those records."""
        self.state_dir = state_dir
        self.folded = len(layers)
        self.seq = seq
        self.journal_cut = journal_cut
        self.base: Base | None = None
        self.error: Exception | None = None
        self.seconds = 0.0
        self._old_base = base
        self._layers = layers
        self._cancelled = threading.Event()
        self._thread = threading.Thread(target=self._run, name="srd-ledger-compaction", daemon=True)

    def start(self) -> None:
        """Begin in the background."""
        _favour_the_loop()
        self._thread.start()

    def done(self) -> bool:
        """Whether it has finished (well or not)."""
        return not self._thread.is_alive()

    def cancel(self) -> None:
        """Ask it not to make its generation current: the state directory is no longer ours (`Store.abandon`)."""
        self._cancelled.set()

    def wait(self) -> None:
        """Block until it has finished."""
        self._thread.join()

    def _run(self) -> None:
        started = time.perf_counter()
        name = generation_name(self.seq)
        try:
            write_generation(self.state_dir / name, self._old_base, self._layers, self.seq)
            # The merged columns just written are freed, but their pages stay with the process unless given
            # back before the new index is loaded: the peak at a million entries was 463 MB, 391 MB with this.
            give_back_free_memory()
            self.base = Base.load(self.state_dir / name)
            if self._cancelled.is_set():
                raise LedgerError("compaction cancelled: the state directory is no longer this process's")
            keep_previous_snapshot(self.state_dir)
            write_bytes_atomic(self.state_dir / SNAPSHOT_NAME, manifest(name, self.seq))
        except Exception as exc:
            self.error = exc
            if self.base is not None:
                self.base.close()
                self.base = None
            self._remove_unnamed(name)
            return
        finally:
            self._layers = []
            self.seconds = time.perf_counter() - started
        # The loop still reads the old base until it swaps: it stays whatever ``.prev`` says.
        remove_unused_generations(self.state_dir, also_keep=self._old_base.folder)


    def _remove_unnamed(self, name: str) -> None:
        """Remove the generation a failed compaction left half-written, at once: on a full disk it holds the
        very space the journal needs to go on (unless the snapshot file names it after all: then it is whole)."""
        if generation_of(self.state_dir / SNAPSHOT_NAME) != name:
            shutil.rmtree(self.state_dir / name, ignore_errors=True)


def _favour_the_loop() -> None:
    """Hand the interpreter between threads every millisecond rather than every 5 (Python's default), for good.

    The compaction thread mostly computes (encoding and decoding a million entries' columns), and while it does,
    each time the loop gives the interpreter up for a system call (a journal write, its fsync, a record read)
    it waits up to one switch interval to get it back: a loop call of a dozen system calls took 50 to 90 ms.
    The daemon's process has no other thread that computes for long, so the shorter interval costs it nothing.
    """
    sys.setswitchinterval(min(sys.getswitchinterval(), _SWITCH_INTERVAL_S))


def keep_previous_snapshot(state_dir: Path) -> None:
    """Hard-link the current snapshot file as ``ledger.json.prev`` (atomically replacing the older one): a way
    back, by hand or by `repair`, if the new one is ever lost. Its generation is kept with it."""
    current, previous = state_dir / SNAPSHOT_NAME, state_dir / PREVIOUS_SNAPSHOT_NAME
    link = _temp_name(previous)  # cleaned if we crash
    try:
        link.hardlink_to(current)
        # A snapshot of format 1 or 2 holds the whole ledger (a gigabyte at a million entries): kept under a
        # temp name, to be freed gently once nothing else names it.
        retired = _set_aside(previous)
    except OSError as exc:
        link.unlink(missing_ok=True)
        if not isinstance(exc, FileNotFoundError):  # that one: the first compaction, nothing to keep
            log.warning("ledger_previous_snapshot_not_kept", state_dir=str(state_dir), error=str(exc))
        return
    try:
        link.replace(previous)
    except OSError as exc:
        log.warning("ledger_previous_snapshot_not_kept", state_dir=str(state_dir), error=str(exc))
        for temp in (link, retired):  # the old previous snapshot stays as it was
            if temp is not None:
                temp.unlink(missing_ok=True)
        return
    if retired is not None:
        _shrink_file(retired)
        retired.unlink(missing_ok=True)


def _set_aside(path: Path) -> Path | None:
    """A second name (a temp one) for `path` if it is big enough to be freed in steps, else None."""
    try:
        if path.stat().st_size <= _SHRINK_STEP:
            return None
    except FileNotFoundError:
        return None
    aside = _temp_name(path)
    aside.hardlink_to(path)
    return aside


def _temp_name(path: Path) -> Path:
    return path.with_name(f"{TEMP_PREFIX}{path.name}.{secrets.token_hex(6)}")


def remove_unused_generations(state_dir: Path, also_keep: Path | None = None) -> None:
    """Remove the generation folders neither the snapshot file nor the previous one names: older ones, and
    those a crashed compaction left half-written. Only its owner calls this, with the lock held."""
    keep = {generation_of(state_dir / SNAPSHOT_NAME), generation_of(state_dir / PREVIOUS_SNAPSHOT_NAME),
            None if also_keep is None else also_keep.name}
    for folder in state_dir.glob(f"{GENERATION_PREFIX}*"):
        if folder.name not in keep and folder.is_dir():
            _shrink_files(folder)
            shutil.rmtree(folder, ignore_errors=True)


def _shrink_files(folder: Path) -> None:
    """Cut the files of a generation that is going away down a step at a time before they are removed.

    Freeing a file's blocks is one filesystem journal transaction, and the loop's next fsync waits for it to
    commit: at a million entries a generation's 600 MB record file freed at once held the loop's fsyncs for
    50 to 90 ms. In steps, each commit carries a little. (A process still streaming records from a
    generation two compactions old would see it end early, and fail with a clear ledger error.)
    """
    for path in folder.iterdir():
        _shrink_file(path)


def _shrink_file(path: Path) -> None:
    """Cut `path` down `_SHRINK_STEP` bytes at a time, for its removal (see `_shrink_files`)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        size = os.fstat(fd).st_size
        while size > _SHRINK_STEP:
            size -= _SHRINK_STEP
            os.ftruncate(fd, size)
            time.sleep(_SHRINK_PAUSE_S)
    except OSError:
        pass  # removed whole by the caller
    finally:
        os.close(fd)
