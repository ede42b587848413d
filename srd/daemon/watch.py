"""Event sources for inboxes: a native (inotify) observer or a scandir poller, supervised (docs/design.md §3).

Whatever a source reports is only a *hint* that a path may have changed; the settle tracker and the
daemon decide what it means. Sources run in their own threads and only ever put `Hint`s into a
thread-safe sink, so nothing here touches the ledger or the pool.

Known ways watching fails, and what `InboxWatcher` does about them:

- an exception in a watchdog handler kills the observer thread silently → handlers never raise;
- an emitter or observer thread dies anyway (inotify watch limit hit on a new subfolder, a bug) →
  `supervise` notices, logs and restarts it, then rescans the inbox;
- the inbox root vanishes (NAS outage, unmounted disk) → the inbox is paused and reported unhealthy;
  nothing is concluded about its files, and when it returns it is rescanned;
- the inbox root turns into a symlink, or another folder is swapped in while it is watched → the inbox
  is unhealthy (never followed, never adopted: a reload or restart watches the new folder); a root that
  was gone (an outage) and comes back, or a remounted share, is adopted;
- a subfolder can't be read (no permission) → it is logged once and listed in the status file;
- inotify sees no changes made on other machines (NFS, SMB, FUSE, 9p) → `auto` mode polls there;
- the inotify watch or instance limit is reached → that inbox is degraded to polling;
- the kernel's inotify queue overflows (a burst of changes in a big tree) → the observer is replaced and
  the inbox rescanned, at most once per `OVERFLOW_RESCAN_EVERY_S`. Watchdog's own repair removes and
  re-adds every watch, and each removal queues an event, so in a tree of more folders than the queue
  holds (``fs.inotify.max_queued_events``) its repair overflows the queue again, for ever; a fresh
  observer starts from an empty queue. Only the events srd uses are asked for (no opens, reads or
  attribute changes), so reading a big tree, srd's own scans included, doesn't flood the queue.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import structlog
from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    EventsLostEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from srd.config import Inbox
from srd.daemon.mounts import choose_mode, is_mount_point
from srd.daemon.scan import FolderFiles, IgnoreRules, classify, scan_folders, scan_inbox
from srd.fs import safefs
from srd.fs.fileversion import FileVersion

log = structlog.get_logger(__name__)

_WATCH_LIMIT_ERRNOS = frozenset({errno.ENOSPC, errno.EMFILE})
# What the observer asks the kernel for: arrivals (created, moved in, closed after writing), departures (so a
# file queued and then deleted leaves the queue) and the loss report. A file still being written is followed
# by the settle tracker's stats, not by its write events.
EVENT_FILTER = [FileCreatedEvent, DirCreatedEvent, FileMovedEvent, DirMovedEvent, FileClosedEvent, FileDeletedEvent,
                EventsLostEvent]
_EVENT_TYPES = frozenset({"created", "moved", "closed", "deleted"})
OVERFLOW_RESCAN_EVERY_S = 10.0
# How long `supervise` waits for the inbox root's stat; a share that doesn't answer by then is unavailable.
ROOT_ANSWER_S = 0.5


@dataclass(frozen=True, slots=True)
class Hint:
    """A path in inbox number `inbox` may have changed; `signature` is its version if a scan saw it; `gone`: the
    watcher saw the file go (deleted, moved away)."""

    inbox: int
    path: Path
    signature: FileVersion | None = None
    gone: bool = False


@dataclass(frozen=True, slots=True)
class FoundFiles:
    """A hint for each file a scan found in one folder of inbox number `inbox`, carried together: `prefix` is
    the folder below `root` with a trailing slash ("" for the root), `files` each name with the version stat
    saw. Whoever takes it calls `taken` once (the scan waits while too many are untaken)."""

    inbox: int
    root: Path
    prefix: str
    files: list[tuple[str, FileVersion]]
    taken: Callable[[], None]

    def hints(self) -> list[Hint]:
        """One `Hint` per file (for takers that don't need the batch)."""
        return [Hint(self.inbox, self.root / (self.prefix + name), version) for name, version in self.files]


Sink = Callable[[Hint | FoundFiles], None]
# Files per `FoundFiles`, and how many may wait untaken: a scan of a NAS library outruns the loop, and a
# queue of a hint per photo grew the daemon by ~0.7 KB per file (800 MB for a million).
FOUND_BATCH = 500
FOUND_UNTAKEN = 8


class _Handler(FileSystemEventHandler):
    """Passes watchdog events on; it must never raise, or the observer thread dies without a word."""

    def __init__(self, watcher: InboxWatcher) -> None:
        self._watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        try:
            self._watcher.on_event(event)
        # A handler that raises kills watchdog's observer thread; log it and keep watching.
        except Exception:
            log.exception("watch_handler_failed", inbox=str(self._watcher.root), kind=event.event_type)


class InboxWatcher:
    """Feeds hints for one inbox, and keeps doing so across observer deaths, outages and watch limits.

    A scanner thread serves both modes: in ``poll`` mode it rescans every ``poll_interval`` and hints
    new or changed files; in either mode it runs the full reconcile scans asked for by `request_scan`.
    `supervise` is called periodically from the daemon's loop; it is the only place observers are
    (re)started, so no locking is needed around them.

    Args:
        index: The inbox's position in the config; hints carry it.
        inbox: The inbox's settings.
        sink: Receives hints from any thread (e.g. ``queue.SimpleQueue.put``).
        observer_factory: Builds a watchdog observer (tests inject one that fails).
        mountinfo: Text of ``/proc/self/mountinfo`` for ``auto`` mode (tests inject their own).
    """

    def __init__(
        self,
        index: int,
        inbox: Inbox,
        sink: Sink,
        *,
        observer_factory: Callable[[], Any] = Observer,
        mountinfo: str | None = None,
    ) -> None:
        self.index = index
        self.inbox = inbox
        self.root = inbox.path
        self.rules = IgnoreRules(inbox.ignore)
        self._sink = sink
        self._observer_factory = observer_factory
        self._observer: Any = None
        self.mode = choose_mode(inbox, mountinfo)
        self.degraded: str | None = None
        self._present = True
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._full_scan = threading.Event()
        self._scanner: threading.Thread | None = None
        self._snapshot: dict[str, FileVersion] | None = None  # poll mode: each file's version (rel as POSIX)
        self._untaken = threading.Semaphore(FOUND_UNTAKEN)
        self._skipped: dict[Path, str] = {}
        # Subfolders the last full walk could not read, with why: reported in the status file.
        self.unreadable: dict[str, str] = {}
        self.root_error: str | None = None
        # A root that was a mount point at start and no longer is has lost its share: what remains is the
        # empty mount-point folder, which must read as an outage, not as an inbox whose files all left.
        self._mounted = False
        self._identity: tuple[int, int] | None = None
        # The root folder this watcher adopted; another one swapped in while it was watched is not adopted.
        self._pinned: tuple[int, int] | None = None
        self._replaced = False
        self.events_lost = 0  # inotify queue overflows seen while this watcher lived
        self._lost_pending = threading.Event()
        self._next_lost_recovery = 0.0
        self._root_question = _Question(self._root_identity, f"srd-root-{index}")

    # -- lifecycle, called from the daemon's thread ---------------------------------------------------------

    def start(self) -> None:
        """Start watching; the first scan hints every file already in the inbox."""
        self._mounted = self.root.is_dir() and is_mount_point(self.root)
        self._identity = self._root_identity()
        self._present = self._identity is not None
        if not self._present:
            log.warning("inbox_missing", inbox=str(self.root))
        elif self.mode == "native":
            self._start_observer()
        self._start_scanner()
        self.request_scan()
        log.info("inbox_watching", inbox=str(self.root), mode=self.mode, recursive=self.inbox.recursive)

    def stop(self) -> None:
        """Stop the observer and the scanner thread (once: a scanner stuck on a hung share is waited for once)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._wake.set()
        self._stop_observer()
        if self._scanner is not None:
            self._scanner.join(timeout=5)

    def request_scan(self) -> None:
        """Ask for a full scan soon: every candidate file is hinted again (reconcile)."""
        self._full_scan.set()
        self._wake.set()

    @property
    def healthy(self) -> bool:
        """False while the inbox root is missing or a source thread is dead and not yet restarted."""
        return self._present and self._scanner_alive() and (self.mode != "native" or self._observer_alive())

    @property
    def state(self) -> str:
        """One word for the status file: watching, polling or missing."""
        if not self._present:
            return "missing"
        return "watching" if self.mode == "native" else "polling"

    def supervise(self) -> None:
        """Check the root and the threads; restart what died, pause on a missing root, resume on its return."""
        if self.mode == "native":
            answered, identity = self._root_question.answer(ROOT_ANSWER_S)
            present = identity is not None
            if present != self._present:
                self._set_present(present, (self.root_error or "") if answered
                                  else "inbox root does not answer (a hung share?)")
                self._identity = identity
                if not present:
                    self._stop_observer()
                else:
                    self._start_observer()
                    self.request_scan()
            elif present and identity != self._identity:
                # A share remounted at the root: the observer watches the old filesystem.
                log.warning("inbox_root_replaced_rewatching", inbox=str(self.root))
                self._identity = identity
                self._stop_observer()
                self._start_observer()
                self.request_scan()
            elif present and not self._observer_alive():
                log.error("watcher_died_restarting", inbox=str(self.root))
                self._stop_observer()
                self._start_observer()
                self.request_scan()
            elif present and self._lost_pending.is_set() and time.monotonic() >= self._next_lost_recovery:
                self._recover_lost_events()
        elif not self._root_question.answer(ROOT_ANSWER_S)[0]:
            # A poll-mode scanner stuck on a hung share can't say so; the next good scan resumes the inbox.
            self._set_present(False, "inbox root does not answer (a hung share?)")
        if not self._scanner_alive() and not self._stop.is_set():
            log.error("scanner_died_restarting", inbox=str(self.root))
            self._start_scanner()
            self.request_scan()

    # -- native observer -----------------------------------------------------------------------------------

    def _start_observer(self) -> None:
        observer = self._observer_factory()
        try:
            observer.schedule(_Handler(self), str(self.root), recursive=self.inbox.recursive,
                              event_filter=EVENT_FILTER)
            observer.start()
        except OSError as exc:
            _stop_quietly(observer)
            if exc.errno in _WATCH_LIMIT_ERRNOS:
                self._degrade(f"inotify limit reached: {exc.strerror or exc}")
                return
            raise
        self._observer = observer

    def _recover_lost_events(self) -> None:
        """After a queue overflow: a fresh observer (empty queue, watches re-added) and a full rescan."""
        self._lost_pending.clear()
        self._next_lost_recovery = time.monotonic() + OVERFLOW_RESCAN_EVERY_S
        log.warning("inbox_events_lost_rescanning", inbox=str(self.root), overflows=self.events_lost)
        self._stop_observer()
        self._start_observer()
        self.request_scan()

    def _stop_observer(self) -> None:
        if self._observer is not None:
            _stop_quietly(self._observer)
            self._observer = None

    def _observer_alive(self) -> bool:
        observer = self._observer
        if observer is None or not observer.is_alive():
            return False
        emitters = list(observer.emitters)
        return bool(emitters) and all(e.is_alive() for e in emitters)

    def _degrade(self, reason: str) -> None:
        """Switch this inbox to polling for the rest of the run; nothing else is lost."""
        log.warning("inbox_degraded_to_polling", inbox=str(self.root), reason=reason)
        self.mode = "poll"
        self.degraded = reason
        self._snapshot = None
        self._wake.set()

    def on_event(self, event: FileSystemEvent) -> None:
        """Turn one watchdog event into hints (runs in the observer thread)."""
        if isinstance(event, EventsLostEvent):
            self.events_lost += 1
            self._lost_pending.set()  # `supervise` recovers
            return
        if event.event_type not in _EVENT_TYPES:
            return
        if event.event_type in ("deleted", "moved") and not event.is_directory:
            path = self._candidate(event.src_path)
            if path is not None:
                self._sink(Hint(self.index, path, gone=True))
        if event.event_type == "deleted":
            return
        path = self._candidate(event.dest_path if event.event_type == "moved" else event.src_path)
        if path is None:
            return
        if event.is_directory:
            # A folder moved in arrives as one event; its files need hints of their own.
            if event.event_type in ("created", "moved") and self.inbox.recursive:
                self._emit_tree(path)
            return
        st, reason = classify(path, self.root)
        if st is not None:
            self._sink(Hint(self.index, path))
        elif reason is not None:
            self._report_skip(path, reason)

    def _candidate(self, raw: str | bytes) -> Path | None:
        """An event's path, unless it is outside the inbox or ignored."""
        path = Path(raw.decode() if isinstance(raw, bytes) else raw)
        rel = self._relative(path)
        return None if rel is None or self.rules.ignores(rel) else path

    # -- scanner thread ------------------------------------------------------------------------------------

    def _start_scanner(self) -> None:
        self._scanner = threading.Thread(target=self._scan_loop, name=f"srd-scan-{self.index}", daemon=True)
        self._scanner.start()

    def _scanner_alive(self) -> bool:
        return self._scanner is not None and self._scanner.is_alive()

    def _scan_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._scan_cycle()
            # The scanner is this inbox's safety net; an unexpected error must not end it for good.
            except Exception:
                log.exception("inbox_scan_failed", inbox=str(self.root))
            timeout = self.inbox.poll_interval if self.mode == "poll" else None
            self._wake.wait(timeout)
            self._wake.clear()

    def _scan_cycle(self) -> None:
        full = self._full_scan.is_set()
        if self.mode != "poll" and not full:
            return
        self._full_scan.clear()
        # A full scan in native mode hints each folder's files as the walk goes (nothing kept per file); a
        # poll keeps every version to compare with the next, so it walks first and hints what changed.
        streaming = self.mode != "poll"
        found: list[FolderFiles] = []
        try:
            identity = self._root_identity()
            if identity is None:
                raise FileNotFoundError(errno.ENOENT, self.root_error or "inbox root is missing", str(self.root))
            unreadable: dict[str, str] = {}
            for folder in scan_folders(
                    self.root, self.rules, recursive=self.inbox.recursive, on_skip=self._report_skip,
                    on_unreadable=lambda path, reason: self._report_unreadable(path, reason, unreadable)):
                if not streaming:
                    found.append(folder)
                else:
                    self._check_root(identity)
                    if not self._emit_found(*folder):
                        return
            self._check_root(identity)
        except OSError as exc:
            if self.mode == "poll":
                self._set_present(False, str(exc))
            else:
                log.warning("inbox_scan_failed", inbox=str(self.root), error=str(exc))
            if full:
                self._full_scan.set()  # still owed once the root is back
            return
        self.unreadable = unreadable
        if streaming:
            return
        if not self._present:
            self._set_present(True)
            full = True
        previous = None if full else self._snapshot
        self._snapshot = {prefix + name: version for prefix, files in found for name, version in files}
        for rel in previous.keys() - self._snapshot.keys() if previous is not None else ():
            self._sink(Hint(self.index, self.root / rel, gone=True))
        for prefix, files in found:
            changed = files if previous is None else [  # a chmod or an xattr alone (the ctime) is no change
                (name, version) for name, version in files
                if (seen := previous.get(prefix + name)) is None or not version.unwritten_since(seen)]
            if changed and not self._emit_found(prefix, changed):
                return

    def _check_root(self, identity: tuple[int, int]) -> None:
        """Fail the scan as a missing root does (it is owed again) if the root is no longer the folder the walk
        began in: what the walk saw is not the inbox."""
        if self._root_identity() != identity:
            raise FileNotFoundError(errno.ENOENT, self.root_error or "inbox root changed during a scan", str(self.root))

    def _emit_found(self, prefix: str, files: list[tuple[str, FileVersion]]) -> bool:
        """Hand one folder's files to the sink, `FOUND_BATCH` at a time, each batch once fewer than
        `FOUND_UNTAKEN` wait untaken; False if the watcher stopped meanwhile."""
        for start in range(0, len(files), FOUND_BATCH):
            while not self._untaken.acquire(timeout=0.5):
                if self._stop.is_set():
                    return False
            try:
                self._sink(FoundFiles(self.index, self.root, prefix, files[start:start + FOUND_BATCH],
                                      self._untaken.release))
            except BaseException:
                self._untaken.release()
                raise
        return True

    def _emit_tree(self, folder: Path) -> None:
        try:
            for found in scan_inbox(self.root, self.rules, recursive=True, start=folder, on_skip=self._report_skip,
                                    on_unreadable=lambda path, reason: self._report_unreadable(path, reason, {})):
                self._sink(Hint(self.index, self.root / found.rel, found.version))
        except OSError:
            pass  # moved away again already; events or the next scan will tell

    # -- helpers -------------------------------------------------------------------------------------------

    def _relative(self, path: Path) -> PurePosixPath | None:
        try:
            rel = path.relative_to(self.root)
        except ValueError:
            return None
        if rel == Path("."):
            return None
        if not self.inbox.recursive and len(rel.parts) > 1:
            return None
        return PurePosixPath(rel.as_posix())

    def _root_identity(self) -> tuple[int, int] | None:
        """(st_dev, st_ino) of the root while it is usable, else None with `root_error` saying why.

        Usable: a real folder (not a symlink), still mounted if it was a mount, and the folder this watcher
        adopted. A folder that comes back after the root was gone (an outage), or a remounted share, is
        adopted anew; one swapped in while the root was being watched is not.
        """
        try:
            fd = safefs.open_root(self.root)
        except safefs.SymlinkRefused:
            return self._root_unusable("inbox root is a symlink: not followed")
        except OSError as exc:
            self._replaced = False  # gone (an outage): whatever folder comes back is the inbox again
            return self._root_unusable(f"root folder is gone or unreadable: {exc.strerror or exc}")
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if self._mounted and not is_mount_point(self.root):
            return self._root_unusable("its share is unmounted")
        identity = (st.st_dev, st.st_ino)
        if self._pinned is not None and identity != self._pinned and not self._mounted and (
                self._present or self._replaced):
            self._replaced = True
            return self._root_unusable("inbox root was replaced by another folder while watched: not adopted "
                                       "(reload or restart srd to watch the new one)")
        self._replaced = False
        self._pinned = identity
        self.root_error = None
        return identity

    def _root_unusable(self, reason: str) -> tuple[int, int] | None:
        """No identity: the root is not usable, for `reason` (kept for the status file)."""
        self.root_error = reason
        return None

    def _report_unreadable(self, path: Path, reason: str, found: dict[str, str]) -> None:
        """A subfolder the walk could not enter: logged (once) and, for a full walk, kept for the status file."""
        found[str(path)] = reason
        self._report_skip(path, reason)

    def _report_skip(self, path: Path, reason: str) -> None:
        """Log once (per path and reason, while this watcher lives) that a path is never processed.

        Polling rescans every few seconds; a line per scan would bury the log, none would leave the
        user guessing why a symlink or a pipe in the inbox never came out.
        """
        if self._skipped.get(path) == reason:
            return
        self._skipped[path] = reason
        log.warning("path_not_processed", src=str(path), reason=reason, inbox=str(self.root))

    def _set_present(self, present: bool, reason: str = "") -> None:
        if present == self._present:
            return
        self._present = present
        if present:
            log.info("inbox_returned", inbox=str(self.root))
        else:
            log.error("inbox_missing_paused", inbox=str(self.root), error=reason or "root folder is gone")


class _Question:
    """Asks one blocking question (e.g. a stat of a share's root) in a thread of its own.

    A hung NFS mount blocks that thread, not the caller: the caller waits at most `wait_s`, and while the
    question stays unanswered, later asks return at once instead of starting another stuck thread.
    """

    def __init__(self, ask: Callable[[], Any], name: str) -> None:
        self._ask = ask
        self._name = name
        self._pending: threading.Event | None = None
        self._answer: Any = None

    def answer(self, wait_s: float) -> tuple[bool, Any]:
        """(True, the answer) when it came within `wait_s`, else (False, None)."""
        if self._pending is None:
            self._pending = threading.Event()
            threading.Thread(target=self._run, args=(self._pending,), name=self._name, daemon=True).start()
        else:
            wait_s = 0  # still unanswered since an earlier ask: don't wait for it again
        if not self._pending.wait(wait_s):
            return False, None
        self._pending = None
        return True, self._answer

    def _run(self, answered: threading.Event) -> None:
        try:
            self._answer = self._ask()
        except Exception:
            log.exception("question_failed", question=self._name)
            self._answer = None
        answered.set()


def _stop_quietly(observer: Any) -> None:
    try:
        observer.stop()
        if observer.is_alive():
            observer.join(timeout=5)
    # Stopping a broken observer can raise from its emitters; the daemon must carry on regardless.
    except Exception:
        log.exception("observer_stop_failed")
