"""Event sources: ignore rules, the inbox walk, filesystem-type detection, and supervised watchers."""

from __future__ import annotations

import ctypes
import errno
import os
import queue
import shutil
import socket
import time
from pathlib import Path, PurePosixPath

import pytest
from daemon_helpers import wait_for
from watchdog.observers import Observer

from srd.config import Inbox
from srd.daemon.mounts import choose_mode, mount_fstype, needs_polling
from srd.daemon.scan import IgnoreRules, scan_inbox
from srd.daemon.watch import FOUND_BATCH, FOUND_UNTAKEN, FoundFiles, Hint, InboxWatcher
from srd.fs.fileversion import FileVersion

MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:35 / /mnt/nas rw,relatime shared:20 - nfs4 server:/export rw,vers=4.2
41 40 0:36 / /mnt/nas/local\\040disk rw shared:21 - xfs /dev/sdb1 rw
42 22 0:37 / /mnt/phone rw,nosuid - fuse.sshfs user@host: rw
43 22 0:38 / /srv/share rw - cifs //nas/share rw
"""


def make_inbox(root: Path, **settings: object) -> Inbox:
    root.mkdir(parents=True, exist_ok=True)
    return Inbox(path=root, outbox=root.parent / "out", failed=root.parent / "failed", **settings)


def drain(hints: queue.SimpleQueue[Hint | FoundFiles]) -> set[Path]:
    found = set()
    while True:
        try:
            hint = hints.get_nowait()
        except queue.Empty:
            return found
        if isinstance(hint, FoundFiles):
            found.update(h.path for h in hint.hints())
            hint.taken()
        else:
            found.add(hint.path)


def wait_hinted(hints: queue.SimpleQueue[Hint | FoundFiles], path: Path, seen: set[Path], timeout: float = 10) -> None:
    def arrived() -> bool:
        seen.update(drain(hints))
        return path in seen

    wait_for(arrived, timeout, f"a hint for {path}")


def test_ignore_rules_cover_os_junk_partial_downloads_dotfiles_srd_temps_and_user_globs() -> None:
    """Junk names match in any folder and any case; user globs match a component or, with a slash, the path."""
    rules = IgnoreRules(["*.xmp", "raw", "scans/*.tif"])
    ignored = [".DS_Store", "._photo.jpg", "THUMBS.DB", "desktop.ini", "@eaDir/x.jpg", "#recycle/a.jpg",
               ".stfolder", ".syncthing.a.jpg.tmp", "a.jpg.part", "a.crdownload", "a.tmp", ".a.jpg.Xy12ab",
               ".srd-tmp-a.jpg.0123456789ab", "sub/.hidden/a.jpg", "a.xmp", "deep/raw/a.jpg", "scans/a.tif"]
    kept = ["a.jpg", "sub/b.png", "rawfile.jpg", "other/scans/a.tif", "scans/a.png", "partial.jpg"]
    for name in ignored:
        assert rules.ignores(PurePosixPath(name)), name
    for name in kept:
        assert not rules.ignores(PurePosixPath(name)), name


def test_scan_skips_special_files_outside_symlinks_and_ignored_folders(tmp_path: Path) -> None:
    """The walk yields regular files only: never FIFOs, sockets, pruned folders or symlinks (even ones that
    stay inside the inbox), and it names each path it leaves out with the reason."""
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    (root / "@eaDir").mkdir()
    (root / "a.jpg").write_bytes(b"a")
    (root / "sub" / "b.jpg").write_bytes(b"bb")
    (root / "@eaDir" / "thumb.jpg").write_bytes(b"t")
    os.mkfifo(root / "pipe.jpg")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(root / "sock.jpg"))
        outside = tmp_path / "secret.jpg"
        outside.write_bytes(b"secret")
        (root / "out-link.jpg").symlink_to(outside)
        (root / "in-link.jpg").symlink_to(root / "a.jpg")
        (root / "dir-link").symlink_to(tmp_path)
        skipped: dict[str, str] = {}
        found = {f.rel.as_posix(): f.version.size for f in scan_inbox(
            root, IgnoreRules(), on_skip=lambda path, reason: skipped.__setitem__(path.name, reason))}
        flat = {f.rel.as_posix() for f in scan_inbox(root, IgnoreRules(), recursive=False)}
    assert found == {"a.jpg": 1, "sub/b.jpg": 2}
    assert flat == {"a.jpg"}
    assert skipped == {"pipe.jpg": "not a regular file: fifo", "sock.jpg": "not a regular file: socket",
                       "out-link.jpg": "symlink: not followed", "in-link.jpg": "symlink: not followed",
                       "dir-link": "symlink: not followed"}


def test_scan_applies_name_and_path_globs_at_every_depth_and_from_a_subtree(tmp_path: Path) -> None:
    """A walk yields what `IgnoreRules.ignores` keeps, whether it starts at the root or in a subfolder."""
    root = tmp_path / "in"
    files = ["a.jpg", "a.xmp", "raw/b.jpg", "deep/raw/c.jpg", "deep/d.jpg", "scans/e.tif", "scans/e.png",
             "deep/scans/f.tif", "@eaDir/g.jpg", "deep/.hidden/h.jpg", "deep/i.JPG.part"]
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    rules = IgnoreRules(["*.xmp", "raw", "scans/*.tif"])
    expected = {rel for rel in files if not rules.ignores(PurePosixPath(rel))}
    assert expected == {"a.jpg", "deep/d.jpg", "scans/e.png", "deep/scans/f.tif"}
    assert {f.rel.as_posix() for f in scan_inbox(root, rules)} == expected
    assert {f.rel.as_posix() for f in scan_inbox(root, rules, start=root / "deep")} == {"deep/d.jpg",
                                                                                        "deep/scans/f.tif"}
    assert list(scan_inbox(root, rules, start=root / "deep" / "raw")) == []


def test_scan_of_a_missing_root_raises_rather_than_reporting_an_empty_inbox(tmp_path: Path) -> None:
    """A vanished inbox must never look like an inbox whose files were all deleted."""
    with pytest.raises(FileNotFoundError):
        list(scan_inbox(tmp_path / "gone", IgnoreRules()))


def test_filesystem_type_from_mountinfo_picks_the_deepest_mount_and_unescapes_names(tmp_path: Path) -> None:
    """auto mode polls network and FUSE filesystems and watches local ones natively."""
    assert mount_fstype(Path("/mnt/nas/photos"), MOUNTINFO) == "nfs4"
    assert mount_fstype(Path("/mnt/nas/local disk/x"), MOUNTINFO) == "xfs"
    assert mount_fstype(Path("/home/user"), MOUNTINFO) == "ext4"
    assert [needs_polling(t) for t in ("nfs4", "cifs", "fuse.sshfs", "9p", "ext4", "xfs", "tmpfs", None)] == \
        [True, True, True, True, False, False, False, False]
    fake = Inbox(path=Path("/srv/share/in"), outbox=Path("/o"), failed=Path("/f"))
    assert choose_mode(fake, MOUNTINFO) == "poll"
    assert choose_mode(Inbox(path=Path("/home/in"), outbox=Path("/o"), failed=Path("/f")), MOUNTINFO) == "native"
    assert choose_mode(Inbox(path=Path("/srv/share/in"), outbox=Path("/o"), failed=Path("/f"), mode="native"),
                       MOUNTINFO) == "native"
    assert mount_fstype(tmp_path) is not None  # the real /proc/self/mountinfo parses


@pytest.mark.parametrize("mode", ["native", "poll"])
def test_watcher_hints_new_files_in_subfolders_and_folders_moved_in(tmp_path: Path, mode: str) -> None:
    """Both sources hint files created in place, in new subfolders, and inside a folder moved in whole."""
    inbox = make_inbox(tmp_path / "in", mode=mode, poll_interval=0.05)
    (inbox.path / "old.jpg").write_bytes(b"x")
    hints: queue.SimpleQueue[Hint | FoundFiles] = queue.SimpleQueue()
    watcher = InboxWatcher(0, inbox, hints.put)
    watcher.start()
    seen: set[Path] = set()
    try:
        wait_hinted(hints, inbox.path / "old.jpg", seen)  # the startup scan
        (inbox.path / "new.jpg").write_bytes(b"y")
        wait_hinted(hints, inbox.path / "new.jpg", seen)
        staging = tmp_path / "staging" / "album"
        staging.mkdir(parents=True)
        (staging / "inside.jpg").write_bytes(b"z")
        staging.rename(inbox.path / "album")
        wait_hinted(hints, inbox.path / "album" / "inside.jpg", seen)
        (inbox.path / ".partial.jpg.tmp123").write_bytes(b"w")
        assert watcher.healthy
    finally:
        watcher.stop()
    assert inbox.path / ".partial.jpg.tmp123" not in seen | drain(hints)


def test_a_raising_sink_does_not_kill_the_native_observer(tmp_path: Path) -> None:
    """watchdog's observer dies silently if a handler raises; ours logs and keeps delivering."""
    inbox = make_inbox(tmp_path / "in", mode="native")
    hints: queue.SimpleQueue[Hint | FoundFiles] = queue.SimpleQueue()
    calls: list[Hint] = []

    def flaky(hint: Hint | FoundFiles) -> None:
        found = hint.hints() if isinstance(hint, FoundFiles) else [hint]  # the startup scan may see boom.jpg
        calls.extend(found)
        if any(h.path.name == "boom.jpg" for h in found):
            raise RuntimeError("sink failed")
        hints.put(hint)

    watcher = InboxWatcher(0, inbox, flaky)
    watcher.start()
    try:
        (inbox.path / "boom.jpg").write_bytes(b"x")
        wait_for(lambda: any(h.path.name == "boom.jpg" for h in calls), 10, "the failing hint")
        (inbox.path / "after.jpg").write_bytes(b"y")
        wait_hinted(hints, inbox.path / "after.jpg", set())
        assert watcher.healthy
    finally:
        watcher.stop()


def test_a_dead_observer_is_restarted_and_the_inbox_rescanned(tmp_path: Path) -> None:
    """If the observer thread dies anyway, supervise() notices, restarts it, and files written meanwhile
    are found by the rescan."""
    inbox = make_inbox(tmp_path / "in", mode="native")
    hints: queue.SimpleQueue[Hint | FoundFiles] = queue.SimpleQueue()
    observers = []

    def factory() -> Observer:
        observers.append(Observer())
        return observers[-1]

    watcher = InboxWatcher(0, inbox, hints.put, observer_factory=factory)
    watcher.start()
    try:
        observers[0].stop()
        observers[0].join()
        assert not watcher.healthy
        (inbox.path / "meanwhile.jpg").write_bytes(b"x")
        watcher.supervise()
        assert len(observers) == 2 and watcher.healthy
        wait_hinted(hints, inbox.path / "meanwhile.jpg", set())
    finally:
        watcher.stop()


@pytest.mark.parametrize("mode", ["native", "poll"])
def test_a_vanished_inbox_pauses_unhealthy_and_resumes_when_it_returns(tmp_path: Path, mode: str) -> None:
    """A missing root (NAS outage) makes the inbox unhealthy without any deletion being inferred; when it
    comes back, watching resumes and its files are hinted again."""
    inbox = make_inbox(tmp_path / "in", mode=mode, poll_interval=0.05)
    (inbox.path / "a.jpg").write_bytes(b"x")
    hints: queue.SimpleQueue[Hint | FoundFiles] = queue.SimpleQueue()
    watcher = InboxWatcher(0, inbox, hints.put)
    watcher.start()
    try:
        wait_hinted(hints, inbox.path / "a.jpg", set())
        shutil.rmtree(inbox.path)

        def unhealthy() -> bool:
            watcher.supervise()
            return not watcher.healthy

        wait_for(unhealthy, 10, "the inbox to be reported missing")
        assert watcher.state == "missing"
        drain(hints)
        inbox.path.mkdir()
        (inbox.path / "a.jpg").write_bytes(b"x")
        (inbox.path / "b.jpg").write_bytes(b"y")

        def healthy() -> bool:
            watcher.supervise()
            return watcher.healthy

        wait_for(healthy, 10, "the inbox to come back")
        seen: set[Path] = set()
        wait_hinted(hints, inbox.path / "a.jpg", seen)
        wait_hinted(hints, inbox.path / "b.jpg", seen)
    finally:
        watcher.stop()


class _LimitedObserver:
    """An observer that fails the way inotify does when fs.inotify.max_user_watches is exhausted."""

    def schedule(self, *args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    def stop(self) -> None:
        pass

    def is_alive(self) -> bool:
        return False


def test_hitting_the_inotify_watch_limit_degrades_the_inbox_to_polling(tmp_path: Path) -> None:
    """With no inotify watches left, the inbox is polled instead, and says so."""
    inbox = make_inbox(tmp_path / "in", mode="native", poll_interval=0.05)
    hints: queue.SimpleQueue[Hint | FoundFiles] = queue.SimpleQueue()
    watcher = InboxWatcher(0, inbox, hints.put, observer_factory=_LimitedObserver)
    watcher.start()
    try:
        assert watcher.mode == "poll" and "limit" in (watcher.degraded or "")
        (inbox.path / "a.jpg").write_bytes(b"x")
        wait_hinted(hints, inbox.path / "a.jpg", set())
        watcher.supervise()
        assert watcher.healthy
    finally:
        watcher.stop()


def test_poller_hints_changes_only_once_each(tmp_path: Path) -> None:
    """Polling hints a new or changed file, not an unchanged one on every cycle."""
    inbox = make_inbox(tmp_path / "in", mode="poll", poll_interval=0.02)
    hints: queue.SimpleQueue[Hint | FoundFiles] = queue.SimpleQueue()
    watcher = InboxWatcher(0, inbox, hints.put)
    watcher.start()
    try:
        (inbox.path / "a.jpg").write_bytes(b"x")
        wait_hinted(hints, inbox.path / "a.jpg", set())
        (inbox.path / "marker.jpg").write_bytes(b"m")
        wait_hinted(hints, inbox.path / "marker.jpg", set())
        (inbox.path / "marker2.jpg").write_bytes(b"m")
        seen: set[Path] = set()
        wait_hinted(hints, inbox.path / "marker2.jpg", seen)  # several cycles later
        assert inbox.path / "a.jpg" not in seen
        (inbox.path / "a.jpg").write_bytes(b"changed")
        wait_hinted(hints, inbox.path / "a.jpg", set())
    finally:
        watcher.stop()


@pytest.mark.parametrize("mode", ["native", "poll"])
def test_a_full_scan_waits_for_the_loop_instead_of_queueing_a_hint_per_file(tmp_path: Path, mode: str) -> None:
    """A restart's scan of a big library outruns the loop: it hands over a folder's files at a time and waits
    while FOUND_UNTAKEN batches are untaken, so the queue never holds a hint per file; once they are taken,
    every file arrives once, in the version stat saw."""
    inbox = make_inbox(tmp_path / "in", mode=mode, poll_interval=3600)
    folders = FOUND_UNTAKEN + 3
    for f in range(folders):
        (inbox.path / f"d{f}").mkdir()
        for i in range(3):
            (inbox.path / f"d{f}" / f"p{i}.jpg").write_bytes(b"x")
    (inbox.path / "d0" / "big").mkdir()
    for i in range(FOUND_BATCH + 1):  # one folder over a batch: two batches
        (inbox.path / "d0" / "big" / f"q{i}.jpg").write_bytes(b"x")
    hints: queue.SimpleQueue[Hint | FoundFiles] = queue.SimpleQueue()
    watcher = InboxWatcher(0, inbox, hints.put)
    watcher.start()
    try:
        wait_for(lambda: hints.qsize() == FOUND_UNTAKEN, 10, "the scan to fill its allowance")
        time.sleep(0.3)
        assert hints.qsize() == FOUND_UNTAKEN  # and wait there
        seen: list[Path] = []
        while len(seen) < folders * 3 + FOUND_BATCH + 1:
            found = hints.get(timeout=10)
            assert isinstance(found, FoundFiles) and len(found.files) <= FOUND_BATCH
            seen += [hint.path for hint in found.hints()]
            assert all(hint.signature == FileVersion.of(os.stat(hint.path)) for hint in found.hints())
            found.taken()
    finally:
        watcher.stop()
    assert len(seen) == len(set(seen)) == folders * 3 + FOUND_BATCH + 1


def _exchange(a: Path, b: Path) -> None:
    """Swap two paths atomically (Linux renameat2 with RENAME_EXCHANGE)."""
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, rename_exchange = -100, 2
    if libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(a))


@pytest.mark.parametrize("mode", ["native", "poll"])
def test_an_inbox_root_swapped_while_watched_is_unhealthy_not_adopted(tmp_path: Path, mode: str) -> None:
    """The root is renamed away and another folder (then a symlink) put in its place between two looks:
    the inbox is unhealthy with the reason, nothing in the new folder is hinted; when the original folder
    is back, watching resumes."""
    inbox = make_inbox(tmp_path / "in", mode=mode, poll_interval=0.05)
    hints: queue.SimpleQueue[Hint | FoundFiles] = queue.SimpleQueue()
    watcher = InboxWatcher(0, inbox, hints.put)
    watcher.start()

    def looked(healthy: bool) -> bool:
        watcher.supervise()
        return watcher.healthy is healthy

    try:
        wait_for(lambda: looked(True), 10, "the watcher to start")
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "planted.jpg").write_bytes(b"x")
        # One atomic swap: with a rename away and a mkdir the watcher may see the root missing in between,
        # and a root that comes back after an outage is adopted (a remounted share is a new folder too).
        _exchange(inbox.path, tmp_path / "other")
        (tmp_path / "other").rename(tmp_path / "away")
        wait_for(lambda: looked(False), 10, "the swapped root to be reported")
        assert "replaced" in (watcher.root_error or "")
        shutil.rmtree(inbox.path)
        inbox.path.symlink_to(tmp_path / "away", target_is_directory=True)
        wait_for(lambda: looked(False) and "symlink" in (watcher.root_error or ""), 10, "the symlinked root")
        time.sleep(0.3)
        assert all(path.name != "planted.jpg" for path in drain(hints))
        inbox.path.unlink()
        (tmp_path / "away").rename(inbox.path)
        wait_for(lambda: looked(True), 10, "the original root to be watched again")
    finally:
        watcher.stop()
