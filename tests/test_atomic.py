"""Tests for srd.fs.atomic: the target is either the old or the complete new file, and no temp is left behind."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from srd.errors import OutputError
from srd.fs.atomic import clean_stale_temps, is_temp_name, open_atomic, write_bytes_atomic

REPO_ROOT = Path(__file__).resolve().parents[1]


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_write_bytes_atomic_creates_file_with_content_and_no_temp(tmp_path: Path) -> None:
    """A new target holds exactly the bytes written, and the folder holds nothing else."""
    target = tmp_path / "out.png"
    write_bytes_atomic(target, b"\x89PNG payload")
    assert target.read_bytes() == b"\x89PNG payload"
    assert _names(tmp_path) == ["out.png"]


def test_write_bytes_atomic_replaces_existing_content(tmp_path: Path) -> None:
    """An existing target is replaced as a whole, not appended to or partly overwritten."""
    target = tmp_path / "ledger.json"
    target.write_bytes(b"old content that is longer than the new one")
    write_bytes_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert _names(tmp_path) == ["ledger.json"]


def test_open_atomic_target_appears_only_after_the_block(tmp_path: Path) -> None:
    """While streaming, the target keeps its old content and the bytes go to a recognisable temp file."""
    target = tmp_path / "model.pb"
    target.write_bytes(b"old")
    with open_atomic(target) as fh:
        fh.write(b"first half,")
        assert target.read_bytes() == b"old"
        temps = [name for name in _names(tmp_path) if name != "model.pb"]
        assert len(temps) == 1 and is_temp_name(temps[0])
        assert fh.temp_path.parent == tmp_path
        fh.write(b" second half")
    assert target.read_bytes() == b"first half, second half"
    assert _names(tmp_path) == ["model.pb"]


def test_exception_mid_stream_keeps_old_content_and_removes_temp(tmp_path: Path) -> None:
    """An error raised by the caller mid-write propagates unchanged; old content stays, the temp is gone."""
    target = tmp_path / "model.pb"
    target.write_bytes(b"old")

    class NetworkDropped(Exception):
        pass

    with pytest.raises(NetworkDropped), open_atomic(target) as fh:
        fh.write(b"x" * 200_000)
        raise NetworkDropped
    assert target.read_bytes() == b"old"
    assert _names(tmp_path) == ["model.pb"]


def test_exception_mid_stream_without_old_target_leaves_nothing(tmp_path: Path) -> None:
    """A failed first write leaves no target and no temp at all."""
    target = tmp_path / "new.bin"
    with pytest.raises(KeyboardInterrupt), open_atomic(target) as fh:
        fh.write(b"partial")
        raise KeyboardInterrupt
    assert _names(tmp_path) == []


@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_permissions_follow_umask(tmp_path: Path, umask: int, expected: int) -> None:
    """Without `mode`, the file gets 0o666 & ~umask like a plain open(), not mkstemp's 0600."""
    old = os.umask(umask)
    try:
        write_bytes_atomic(tmp_path / "out.jpg", b"data")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.jpg").stat().st_mode) == expected


def test_explicit_mode_is_applied_exactly(tmp_path: Path) -> None:
    """An explicit `mode` wins over the umask, in both directions."""
    old = os.umask(0o077)
    try:
        write_bytes_atomic(tmp_path / "shared.jpg", b"data", mode=0o664)
        write_bytes_atomic(tmp_path / "secret.json", b"data", mode=0o600)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "shared.jpg").stat().st_mode) == 0o664
    assert stat.S_IMODE((tmp_path / "secret.json").stat().st_mode) == 0o600


def test_is_temp_name_recognises_only_srd_temps(tmp_path: Path) -> None:
    """The temp naming pattern is recognised, while similar user and OS names are not."""
    with open_atomic(tmp_path / "photo 1.jpg") as fh:
        assert is_temp_name(fh.temp_path.name)
        assert fh.temp_path.name.startswith(".srd-tmp-")
    long_target = tmp_path / ("é" * 120 + ".jpg")
    with open_atomic(long_target) as fh:
        assert is_temp_name(fh.temp_path.name)
        assert len(os.fsencode(fh.temp_path.name)) <= 255
    assert long_target.exists()
    not_temps = [
        "photo.jpg", ".srd-tmp-photo.jpg", ".photo.jpg.a1b2c3", ".srd-tmp-x.ZZZZZZZZZZZZ", "srd-tmp-x.0123456789ab"
    ]
    for name in not_temps:
        assert not is_temp_name(name), name


def _make_temp(folder: Path, name: str, age_s: float = 0) -> Path:
    path = folder / f".srd-tmp-{name}.0123456789ab"
    path.write_bytes(b"leftover")
    if age_s:
        then = time.time() - age_s
        os.utime(path, (then, then))
    return path


def test_clean_stale_temps_removes_only_temps(tmp_path: Path) -> None:
    """Cleanup removes srd temps in the folder and nothing else; subfolders are left unless recursive."""
    stale = _make_temp(tmp_path, "a.jpg")
    (tmp_path / "a.jpg").write_bytes(b"keep")
    (tmp_path / ".hidden").write_bytes(b"keep")
    sub = tmp_path / "sub"
    sub.mkdir()
    nested = _make_temp(sub, "b.jpg")
    assert clean_stale_temps(tmp_path) == [stale]
    assert _names(tmp_path) == [".hidden", "a.jpg", "sub"]
    assert nested.exists()


def test_clean_stale_temps_recursive(tmp_path: Path) -> None:
    """With recursive=True temps in subfolders go too, but symlinked folders are not followed."""
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    top = _make_temp(tmp_path, "1")
    deep = _make_temp(sub, "2")
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    foreign = _make_temp(outside, "3")
    (tmp_path / "link").symlink_to(outside, target_is_directory=True)
    assert sorted(clean_stale_temps(tmp_path, recursive=True)) == sorted([top, deep])
    assert not top.exists() and not deep.exists()
    assert foreign.exists()


def test_clean_stale_temps_spares_recent_ones(tmp_path: Path) -> None:
    """With older_than_s, temps of writes that may still be in progress are kept."""
    old = _make_temp(tmp_path, "old", age_s=3600)
    fresh = _make_temp(tmp_path, "fresh")
    assert clean_stale_temps(tmp_path, older_than_s=600) == [old]
    assert fresh.exists()


def test_clean_stale_temps_missing_folder_is_empty(tmp_path: Path) -> None:
    """A folder that doesn't exist (an unmounted share, say) has nothing to clean and raises nothing."""
    assert clean_stale_temps(tmp_path / "missing") == []


def test_missing_parent_raises_output_error_naming_target(tmp_path: Path) -> None:
    """A target whose folder doesn't exist raises OutputError with the target and the OS reason."""
    target = tmp_path / "no-such-dir" / "out.jpg"
    with pytest.raises(OutputError) as info:
        write_bytes_atomic(target, b"data")
    assert str(target) in str(info.value)
    assert "No such file or directory" in str(info.value)
    assert _names(tmp_path) == []


def test_failed_rename_raises_output_error_and_removes_temp(tmp_path: Path) -> None:
    """If the final rename fails (the target is a non-empty folder), nothing is left behind and the folder is intact."""
    target = tmp_path / "out.jpg"
    target.mkdir()
    (target / "inside").write_bytes(b"keep")
    with pytest.raises(OutputError) as info:
        write_bytes_atomic(target, b"data")
    assert str(target) in str(info.value) and "rename" in str(info.value)
    assert _names(tmp_path) == ["out.jpg"]
    assert (target / "inside").read_bytes() == b"keep"


def test_storage_error_while_writing_raises_output_error_and_leaves_nothing(tmp_path: Path) -> None:
    """A real write failure from the kernel (file size limit, EFBIG, standing in for a full disk) becomes
    OutputError; the old content stays and the temp is removed.

    Runs in a child process because RLIMIT_FSIZE and the SIGXFSZ disposition are process-wide.
    """
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    script = textwrap.dedent(
        f"""
        import resource, signal, sys
        from pathlib import Path
        from srd.fs.atomic import write_bytes_atomic
        from srd.errors import OutputError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.RLIM_INFINITY))
        try:
            write_bytes_atomic(Path({str(target)!r}), b"x" * 1_000_000)
        except OutputError as exc:
            print(exc)
            sys.exit(0)
        sys.exit("no OutputError raised")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert str(target) in result.stdout and "File too large" in result.stdout
    assert target.read_bytes() == b"old"
    assert _names(tmp_path) == ["out.bin"]
