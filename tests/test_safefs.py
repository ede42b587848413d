"""`srd.fs.safefs` and the modules built on it, on real folders with real symlinks.

Races are simulated by swapping a folder for a symlink between two calls (or from inside a callback that
runs between the check and the use), which is exactly what an attacker with write access to an inbox or
outbox can do.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path, PurePosixPath

import pytest

from srd.daemon.scan import IgnoreRules, classify, scan_inbox
from srd.errors import OutputError
from srd.executors.job import output_name
from srd.fs import safefs
from srd.fs.atomic import clean_stale_temps, open_atomic, write_bytes_atomic
from srd.fs.sources import archive_source, fail_source, link_or_copy, move_file, report_path


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """An inbox with a file in a subfolder, and an outside folder holding a file of the same name."""
    root, outside = tmp_path / "in", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "sub" / "a.png").write_bytes(b"inside")
    (outside / "a.png").write_bytes(b"outside")
    return root, outside


def swap_for_link(folder: Path, target: Path) -> None:
    """Replace `folder` by a symlink to `target` (the attacker's move)."""
    folder.rename(folder.with_name(folder.name + ".old"))
    folder.symlink_to(target, target_is_directory=True)


def outside_state(outside: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(outside.iterdir())}


def test_every_access_refuses_a_symlinked_folder_on_the_way(tree: tuple[Path, Path]) -> None:
    """Once `sub` is a symlink to an outside folder, stat, open, read, unlink and mkdir below it all fail
    with `SymlinkRefused`, and the outside folder is unchanged."""
    root, outside = tree
    assert safefs.read_bytes(root, root / "sub" / "a.png") == b"inside"
    swap_for_link(root / "sub", outside)
    before = outside_state(outside)
    for call in (lambda: safefs.lstat(root, root / "sub" / "a.png"),
                 lambda: safefs.open_regular(root, PurePosixPath("sub/a.png")),
                 lambda: safefs.read_bytes(root, root / "sub" / "a.png"),
                 lambda: safefs.unlink(root, root / "sub" / "a.png"),
                 lambda: safefs.make_dirs(root, root / "sub" / "new"),
                 lambda: safefs.open_dir(root, root / "sub")):
        with pytest.raises(safefs.SymlinkRefused) as caught:
            call()
        assert caught.value.errno == errno.ELOOP and "sub" in str(caught.value.filename)
    assert outside_state(outside) == before and not (outside / "new").exists()


def test_a_symlinked_root_and_symlinked_files_are_refused(tree: tuple[Path, Path]) -> None:
    root, outside = tree
    (root / "link.png").symlink_to(outside / "a.png")
    with pytest.raises(safefs.SymlinkRefused):
        safefs.read_bytes(root, root / "link.png")
    assert classify(root / "link.png", root) == (None, safefs.NOT_FOLLOWED)
    assert classify(root / "sub" / "a.png", root)[0] is not None
    alias = root.with_name("alias")
    alias.symlink_to(root, target_is_directory=True)
    with pytest.raises(safefs.SymlinkRefused):
        safefs.open_root(alias)
    with pytest.raises(safefs.SymlinkRefused):
        safefs.read_bytes(alias, alias / "sub" / "a.png")


def test_paths_that_climb_out_or_lie_elsewhere_are_refused(tree: tuple[Path, Path]) -> None:
    root, outside = tree
    with pytest.raises(ValueError):
        safefs.read_bytes(root, PurePosixPath("../outside/a.png"))
    with pytest.raises(ValueError):
        safefs.read_bytes(root, outside / "a.png")


def test_a_file_swapped_between_stat_and_open_is_refused(
    tree: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file opened must be the one stat'ed: a swap in between (here: by another file) is detected."""
    root, _ = tree
    real_open = os.open

    def swapping_open(path, flags, mode=0o777, *, dir_fd=None):
        if path == "a.png" and dir_fd is not None:
            os.rename(root / "sub" / "a.png", root / "sub" / "old.png")
            (root / "sub" / "a.png").write_bytes(b"swapped in")
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", swapping_open)
    with pytest.raises(safefs.ChangedWhileOpening):
        safefs.open_regular(root, PurePosixPath("sub/a.png"))


def test_a_fifo_is_never_opened(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    os.mkfifo(root / "pipe.png")
    with pytest.raises(OSError) as caught:
        safefs.open_regular(root, PurePosixPath("pipe.png"))
    assert caught.value.errno == errno.EINVAL


def test_errors_name_the_whole_path(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    with pytest.raises(FileNotFoundError) as caught:
        safefs.lstat(root, root / "sub" / "missing.png")
    assert caught.value.filename == str(root / "sub" / "missing.png")


def test_scan_never_enters_a_folder_swapped_for_a_symlink_mid_walk(tree: tuple[Path, Path]) -> None:
    """The walk lists the root (yielding its files before entering any subfolder); right then `sub`
    becomes a symlink out: it is reported as not followed and nothing from outside is yielded."""
    root, outside = tree
    (root / "top.png").write_bytes(b"t")
    skipped: dict[str, str] = {}
    seen = []
    for found in scan_inbox(root, IgnoreRules(), on_skip=lambda p, r: skipped.__setitem__(p.name, r)):
        seen.append(found.rel.as_posix())
        if found.rel.as_posix() == "top.png":
            swap_for_link(root / "sub", outside)
    assert seen == ["top.png"] and skipped == {"sub": safefs.NOT_FOLLOWED}


def test_scan_reports_symlinked_and_unreadable_folders(tree: tuple[Path, Path]) -> None:
    root, outside = tree
    (root / "linked").symlink_to(outside, target_is_directory=True)
    skipped: dict[str, str] = {}
    unreadable: dict[str, str] = {}
    scanned = scan_inbox(root, IgnoreRules(), on_skip=lambda p, r: skipped.__setitem__(p.name, r),
                         on_unreadable=lambda p, r: unreadable.__setitem__(p.name, r))
    found = {f.rel.as_posix() for f in scanned}
    assert found == {"sub/a.png"} and skipped == {"linked": safefs.NOT_FOLLOWED} and unreadable == {}


def test_atomic_write_below_a_root_never_writes_through_a_symlinked_folder(tmp_path: Path) -> None:
    """An outbox subfolder replaced by a symlink: the write is an `OutputError` naming the reason, nothing
    appears outside; missing subfolders are created."""
    outbox, outside = tmp_path / "out", tmp_path / "outside"
    outbox.mkdir()
    outside.mkdir()
    write_bytes_atomic(outbox / "new" / "deep" / "x.png", b"x", root=outbox)
    assert (outbox / "new" / "deep" / "x.png").read_bytes() == b"x"
    (outbox / "planted").symlink_to(outside, target_is_directory=True)
    with pytest.raises(OutputError) as caught:
        write_bytes_atomic(outbox / "planted" / "x.png", b"x", root=outbox)
    assert "symlink: not followed" in str(caught.value) and caught.value.errno == errno.ELOOP
    assert list(outside.iterdir()) == []


def test_atomic_write_keeps_to_the_folder_it_opened(tmp_path: Path) -> None:
    """The folder is swapped for a symlink while the temp file is being written: the rename still lands in
    the folder that was opened (now renamed away), never in the symlink's target."""
    outbox, outside = tmp_path / "out", tmp_path / "outside"
    (outbox / "sub").mkdir(parents=True)
    outside.mkdir()
    with open_atomic(outbox / "sub" / "x.png", root=outbox) as fh:
        fh.write(b"data")
        swap_for_link(outbox / "sub", outside)
    assert list(outside.iterdir()) == []
    assert (outbox / "sub.old" / "x.png").read_bytes() == b"data"


def test_clean_stale_temps_does_not_follow_a_symlinked_subfolder(tmp_path: Path) -> None:
    outbox, outside = tmp_path / "out", tmp_path / "outside"
    outbox.mkdir()
    outside.mkdir()
    temp = outside / ".srd-tmp-a.png.0123456789ab"
    temp.write_bytes(b"")
    (outbox / "link").symlink_to(outside, target_is_directory=True)
    assert clean_stale_temps(outbox, recursive=True) == []
    assert temp.exists()


def test_moves_refuse_symlinks_on_either_side(tree: tuple[Path, Path], tmp_path: Path) -> None:
    """A source below a symlinked folder is not moved; a failed folder with a symlinked subfolder is not
    written through. Nothing outside changes and the source stays where it was."""
    root, outside = tree
    failed = tmp_path / "failed"
    (failed).mkdir()
    (failed / "sub").symlink_to(outside, target_is_directory=True)
    before = outside_state(outside)
    with pytest.raises(OSError):
        fail_source(root, PurePosixPath("sub/a.png"), failed, {"reason": "test"})
    assert (root / "sub" / "a.png").read_bytes() == b"inside" and outside_state(outside) == before
    (failed / "sub").unlink()
    (tmp_path / "archive").mkdir()
    swap_for_link(root / "sub", outside)
    with pytest.raises(safefs.SymlinkRefused):
        archive_source(root, PurePosixPath("sub/a.png"), tmp_path / "archive")
    assert outside_state(outside) == before and not (tmp_path / "archive" / "sub" / "a.png").exists()


def test_a_reason_file_never_lands_on_a_moved_input(tmp_path: Path) -> None:
    """An input named ``a.png.error.json`` failed first, then ``a.png``: both inputs and both reasons are
    kept, under distinct names; and the other way round."""
    inbox, failed = tmp_path / "in", tmp_path / "failed"
    inbox.mkdir()
    failed.mkdir()
    (inbox / "a.png.error.json").write_bytes(b"input one")
    (inbox / "a.png").write_bytes(b"input two")
    first = fail_source(inbox, PurePosixPath("a.png.error.json"), failed, {"reason": "r1"})
    second = fail_source(inbox, PurePosixPath("a.png"), failed, {"reason": "r2"})
    assert first.read_bytes() == b"input one" and second.read_bytes() == b"input two"
    assert second.name == "a-1.png" and report_path(second).exists() and report_path(first).exists()
    (inbox / "b.png").write_bytes(b"input three")
    (inbox / "b.png.error.json").write_bytes(b"input four")
    third = fail_source(inbox, PurePosixPath("b.png"), failed, {"reason": "r3"})
    fourth = fail_source(inbox, PurePosixPath("b.png.error.json"), failed, {"reason": "r4"})
    assert third.read_bytes() == b"input three" and fourth.read_bytes() == b"input four"
    assert b"r3" in report_path(third).read_bytes() and b"r4" in report_path(fourth).read_bytes()


def test_a_cross_device_move_whose_source_cannot_be_removed_leaves_no_copy(
        tree: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Across filesystems (rename says EXDEV) the copy is taken back when the source can't be unlinked
    (a read-only inbox), so repeated attempts never pile up ``a.png``, ``a-1.png`` … in the failed folder."""
    root, _ = tree
    failed = tmp_path / "failed"
    failed.mkdir()
    real_rename, real_unlink = os.rename, os.unlink

    def cross_device(*args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    def read_only_source(path, *, dir_fd=None):
        if path == "a.png" and dir_fd is not None and os.path.samefile(f"/proc/self/fd/{dir_fd}", root / "sub"):
            raise OSError(errno.EROFS, "Read-only file system")
        return real_unlink(path, dir_fd=dir_fd)

    monkeypatch.setattr(os, "rename", cross_device)
    monkeypatch.setattr(os, "unlink", read_only_source)
    for _ in range(3):
        with pytest.raises(OSError) as caught:
            move_file(root, PurePosixPath("sub/a.png"), failed, PurePosixPath("sub"))
        assert caught.value.errno == errno.EROFS
    assert list((failed / "sub").iterdir()) == []
    monkeypatch.setattr(os, "unlink", real_unlink)
    moved = move_file(root, PurePosixPath("sub/a.png"), failed, PurePosixPath("sub"))
    monkeypatch.setattr(os, "rename", real_rename)
    assert moved == failed / "sub" / "a.png" and moved.read_bytes() == b"inside"
    assert not (root / "sub" / "a.png").exists()


def test_link_or_copy_refuses_a_symlinked_target_folder(tmp_path: Path) -> None:
    outbox, outside = tmp_path / "out", tmp_path / "outside"
    outbox.mkdir()
    outside.mkdir()
    (outbox / "a.png").write_bytes(b"a")
    assert link_or_copy(outbox, outbox / "a.png", outbox, outbox / "sub" / "b.png") == "linked"
    (outbox / "planted").symlink_to(outside, target_is_directory=True)
    with pytest.raises(safefs.SymlinkRefused):
        link_or_copy(outbox, outbox / "a.png", outbox, outbox / "planted" / "c.png")
    assert list(outside.iterdir()) == []


def test_fit_name_keeps_suffixes_within_name_max() -> None:
    long = "é" * 120 + "x" * 15  # 255 bytes
    assert len(long.encode()) == 255
    for suffix in ("", "-1.png", ".error.json", ".jpeg"):
        name = safefs.fit_name(long, suffix)
        assert len(os.fsencode(name)) <= safefs.NAME_MAX and name.endswith(suffix)
    assert safefs.fit_name(long, "-1.png") != safefs.fit_name(long, "-2.png")
    assert safefs.fit_name("short", ".png") == "short.png"


def test_a_walk_stopped_early_leaves_no_descriptor_open(tmp_path: Path) -> None:
    root = tmp_path / "in"
    for i in range(5):
        (root / f"d{i}" / "e").mkdir(parents=True)
        (root / f"d{i}" / "e" / "x.png").write_bytes(b"x")
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        walk = scan_inbox(root, IgnoreRules())
        next(walk)
        walk.close()
    assert len(os.listdir("/proc/self/fd")) == before
    assert not safefs.root_usable(tmp_path / "missing") and safefs.root_usable(root)


def test_an_output_whose_new_extension_would_not_fit_gets_a_shortened_name() -> None:
    name = "x" * 251 + ".jpg"
    out = output_name(name, "jpeg", "webp", "webp")
    assert out.endswith(".webp") and len(os.fsencode(out)) <= 255 and out.startswith("x" * 200)
    assert output_name("a.jpg", "jpeg", "webp", "webp") == "a.webp"
