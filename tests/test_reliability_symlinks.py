"""Hostile folders against a real `srd run`: symlink swaps in the inbox and the outbox, overlapping
layouts, moves that can only half happen, long names, unreadable subfolders.

Nothing outside the configured folders may be read, moved, deleted or written, whatever is swapped when:
every test that swaps something checks the outside folder byte for byte and mtime for mtime.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import daemon_helpers
import pytest
import yaml
from daemon_helpers import ESPCN_X2, files_under, running, srd, wait_for
from reliability_harness import image_bytes, make_layout, status_of, tmpfs

# End to end: each test runs a real srd daemon (srd run) on real folders.
pytestmark = pytest.mark.e2e

SIZE = (24, 32)
NOT_FOLLOWED = "symlink: not followed"


def plant_outside(folder: Path, names: list[str], seed: int) -> dict[str, tuple[bytes, int]]:
    """Images in a folder outside every configured one, with an old mtime; returns their state."""
    folder.mkdir(parents=True, exist_ok=True)
    old = time.time_ns() - 86_400 * 10**9
    for i, name in enumerate(names):
        (folder / name).write_bytes(image_bytes(".png", SIZE, seed + i))
        os.utime(folder / name, ns=(old, old))
    return outside_state(folder)


def outside_state(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.lstat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def swap_for_link(folder: Path, target: Path) -> Path:
    """Rename `folder` away and put a symlink to `target` in its place; returns where the folder went."""
    away = folder.with_name(folder.name + ".old")
    folder.rename(away)
    folder.symlink_to(target, target_is_directory=True)
    return away


@pytest.mark.parametrize("mode", ["native", "poll"])
def test_an_inbox_subfolder_swapped_for_a_symlink_while_its_files_settle_is_never_followed(
        tmp_path: Path, mode: str) -> None:
    """Files arrive in inbox/sub; while they settle, sub is renamed away and replaced by a symlink to an
    outside folder holding files of the same names. With ``on_success: delete`` the outside files stay
    untouched (same bytes, same mtime), nothing from outside reaches the outbox or the failed folder, the
    real files (now in sub.old) are processed, and the refused path is logged."""
    layout = make_layout(tmp_path / "srd", inbox={"mode": mode, "on_success": "delete", "settle_seconds": 3.0})
    outside = tmp_path / "private"
    names = ["a.png", "b.png"]
    before = plant_outside(outside, names, seed=50)
    with running(layout.config) as daemon:
        (layout.inbox / "sub").mkdir()
        for i, name in enumerate(names):
            (layout.inbox / "sub" / name).write_bytes(image_bytes(".png", SIZE, 60 + i))
        time.sleep(1.0)  # seen (events, or five polls), still settling
        swap_for_link(layout.inbox / "sub", outside)
        daemon.wait_event("file_processed", count=2, timeout=60)
        refused = wait_for(lambda: [e for e in daemon.events("path_not_processed")
                                    if e["src"].startswith(str(layout.inbox / "sub") + "/")
                                    or e["src"] == str(layout.inbox / "sub")], 30,
                           "the swapped folder's paths to be refused\n" + daemon.log_tail())
        time.sleep(1.0)
        assert daemon.stop() == 0
    assert outside_state(outside) == before, "a file outside the inbox was changed or deleted"
    assert set(files_under(layout.outbox)) == {"sub.old/a.png", "sub.old/b.png"}
    assert files_under(layout.failed) == {}
    assert files_under(layout.inbox) == {}  # the real files were processed and deleted
    assert all(NOT_FOLLOWED in e["reason"] for e in refused), refused


@pytest.mark.parametrize("mode", ["native", "poll"])
def test_an_inbox_root_swapped_for_a_symlink_is_unhealthy_not_adopted(tmp_path: Path, mode: str) -> None:
    """The inbox folder itself is renamed away and replaced by a symlink to an outside folder: the inbox is
    reported unhealthy (log and `srd status`), the outside files are never processed or deleted; when the
    real folder is back, it is watched again."""
    layout = make_layout(tmp_path / "srd", inbox={"mode": mode, "on_success": "delete"})
    outside = tmp_path / "private"
    before = plant_outside(outside, ["x.png", "y.png"], seed=70)
    with running(layout.config) as daemon:
        (layout.inbox / "first.png").write_bytes(image_bytes(".png", SIZE, 1))
        daemon.wait_event("file_processed")
        away = swap_for_link(layout.inbox, outside)
        status = wait_for(lambda: (s := status_of(layout)) and s["inboxes"][0]["health"] == "unhealthy" and s, 20,
                          "the inbox to be reported unhealthy\n" + daemon.log_tail())
        assert NOT_FOLLOWED in (status["inboxes"][0]["root_error"] or "")
        shown = srd("status", "--config", str(layout.config)).stdout
        assert "unhealthy" in shown and NOT_FOLLOWED in shown, shown
        (outside / "late.png").write_bytes(image_bytes(".png", SIZE, 79))
        before["late.png"] = outside_state(outside)["late.png"]
        time.sleep(3.0)  # supervision every second, polls every 0.2 s
        assert outside_state(outside) == before, "a file outside the inbox was changed or deleted"
        (layout.inbox).unlink()
        away.rename(layout.inbox)
        wait_for(lambda: (s := status_of(layout)) and s["inboxes"][0]["health"] == "ok", 20,
                 "the real inbox to be watched again\n" + daemon.log_tail())
        (layout.inbox / "second.png").write_bytes(image_bytes(".png", SIZE, 2))
        daemon.wait_event("file_processed", count=2, timeout=30)
        assert daemon.stop() == 0
    assert outside_state(outside) == before
    assert set(files_under(layout.outbox)) == {"first.png", "second.png"}
    assert files_under(layout.failed) == {}


def test_a_symlinked_subfolder_planted_in_the_outbox_is_never_written_through(tmp_path: Path) -> None:
    """Someone tidying a shared outbox replaces outbox/sub by a symlink to another folder: nothing is written
    outside, and the refusal is the folder's fault, not the photos': the files bound for it wait (the inbox
    unhealthy, saying why) while the rest go on, no file is failed or left behind, and once the link is gone every
    waiting file is processed."""
    layout = make_layout(tmp_path / "srd", reconcile_interval=2)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (layout.outbox / "sub").mkdir(parents=True)
    with running(layout.config) as daemon:
        (layout.inbox / "sub").mkdir()
        (layout.inbox / "sub" / "one.png").write_bytes(image_bytes(".png", SIZE, 1))
        daemon.wait_event("file_processed")
        swap_for_link(layout.outbox / "sub", outside)
        (layout.inbox / "sub" / "two.png").write_bytes(image_bytes(".png", SIZE, 2))
        (layout.inbox / "top.png").write_bytes(image_bytes(".png", SIZE, 3))
        paused = daemon.wait_event("outbox_folder_unwritable_paused", timeout=30)[0]
        assert NOT_FOLLOWED in paused["error"] and paused["folder"] == str(layout.outbox / "sub")
        shown = wait_for(lambda: "outbox folder" in (out := srd("status", "--config", str(layout.config)).stdout)
                         and out, 10, "srd status to show the refused outbox folder")
        assert NOT_FOLLOWED in shown and "unhealthy" in shown and f"{layout.outbox / 'sub'} unwritable" in shown
        wait_for(lambda: (layout.outbox / "top.png").exists(), 30, "the file bound for the outbox root, meanwhile")
        time.sleep(3)  # a reconcile scan or two while paused: the refused file is neither failed nor processed
        assert daemon.proc.poll() is None
        assert list(outside.iterdir()) == [], "srd wrote through a symlink in the outbox"
        assert (layout.inbox / "sub" / "two.png").exists() and files_under(layout.failed) == {}
        (layout.outbox / "sub").unlink()  # tidied again
        daemon.wait_event("outbox_folder_writable_resumed", timeout=30)
        wait_for(lambda: {"sub/two.png", "top.png"} <= set(files_under(layout.outbox)), 30,
                 "the waiting files to be processed once the folder is fixed\n" + daemon.log_tail())
        assert daemon.stop() == 0
    assert daemon.events("file_failed") == []
    assert list(outside.iterdir()) == [], "srd wrote through a symlink in the outbox"
    assert set(files_under(layout.outbox)) == {"sub.old/one.png", "top.png", "sub/two.png"}


def test_an_outbox_subfolder_replaced_by_a_file_pauses_only_its_photos_and_fails_none(tmp_path: Path) -> None:
    """outbox/sub deleted and a file written in its place: like a symlink there, the folder's fault, not the
    photos': its photos wait (the inbox unhealthy, `srd status --check` exit 9) while one bound for another folder
    is processed, nothing is failed, and once the file is gone the waiting photos are processed."""
    layout = make_layout(tmp_path / "srd", reconcile_interval=2)
    (layout.outbox / "sub").parent.mkdir(parents=True, exist_ok=True)
    (layout.outbox / "sub").write_text("not a folder\n")
    with running(layout.config) as daemon:
        (layout.inbox / "sub").mkdir()
        for i in range(3):
            (layout.inbox / "sub" / f"{i}.png").write_bytes(image_bytes(".png", SIZE, i))
        paused = daemon.wait_event("outbox_folder_unwritable_paused", timeout=30)[0]
        assert "Not a directory" in paused["error"]
        (layout.inbox / "other").mkdir()
        (layout.inbox / "other" / "x.png").write_bytes(image_bytes(".png", SIZE, 9))
        check = wait_for(lambda: (r := srd("status", "--check", "--config", str(layout.config))).returncode == 9
                         and r, 10, "srd status --check to report the inbox unhealthy")
        assert "unhealthy" in check.stdout and f"outbox folder {layout.outbox / 'sub'} unwritable" in check.stdout
        wait_for(lambda: (layout.outbox / "other" / "x.png").exists(), 30, "the photo bound for another folder")
        # The photos held back count as waiting: an idle-looking inbox would hide them from a dashboard.
        wait_for(lambda: (s := status_of(layout)) and s["inboxes"][0]["queued"] == 3, 10, "QUEUED to count them")
        time.sleep(3)  # reconcile scans while paused: no photo is failed for the folder's fault
        assert files_under(layout.failed) == {} and len(list((layout.inbox / "sub").iterdir())) == 3
        (layout.outbox / "sub").unlink()
        daemon.wait_event("outbox_folder_writable_resumed", timeout=30)
        wait_for(lambda: {f"sub/{i}.png" for i in range(3)} <= set(files_under(layout.outbox)), 30,
                 "the waiting photos to be processed once the file is gone\n" + daemon.log_tail())
        assert daemon.stop() == 0
    assert daemon.events("file_failed") == []


def test_a_failed_folder_replaced_by_a_file_shows_the_inbox_unhealthy_until_failures_can_move(tmp_path: Path) -> None:
    """A bad file cannot be moved to failed/ (a file stands there): it stays in the inbox, and `srd status --check`
    says unhealthy, naming the step (it said healthy, the problem only in LAST ERROR); once the folder is back,
    the next reconcile scan moves it with its reason file and the inbox is healthy again."""
    layout = make_layout(tmp_path / "srd", reconcile_interval=2)
    with running(layout.config) as daemon:
        shutil.rmtree(layout.failed)
        layout.failed.write_text("not a folder\n")
        (layout.inbox / "bad.png").write_bytes(b"not an image at all")
        check = wait_for(lambda: (r := srd("status", "--check", "--config", str(layout.config))).returncode == 9
                         and r, 20, "srd status --check to report the inbox unhealthy\n" + daemon.log_tail())
        assert "fail of bad.png failed" in check.stdout
        assert (layout.inbox / "bad.png").is_file()
        layout.failed.unlink()
        layout.failed.mkdir()  # srd makes no configured folder after its start: a share's mount point may be bare
        wait_for(lambda: (layout.failed / "bad.png.error.json").is_file(), 30, "the move at the next scan")
        wait_for(lambda: srd("status", "--check", "--config", str(layout.config)).returncode == 0, 10,
                 "the inbox healthy again")
        assert daemon.stop() == 0


@pytest.mark.parametrize("case", [
    "state inside outbox", "state is the failed folder", "outbox is failed", "archive is outbox",
    "failed inside outbox", "another inbox's failed is this outbox", "outbox is a symlink",
])
def test_layouts_where_one_folder_would_write_into_another_are_refused(tmp_path: Path, case: str) -> None:
    """`srd config check` and `srd run` both refuse them with exit status 2 and a line naming the key."""
    folders = {name: str(tmp_path / name) for name in ("in", "out", "failed", "archive", "in2", "out2", "failed2")}
    first = {"path": folders["in"], "outbox": folders["out"], "failed": folders["failed"], "profile": "p"}
    second = {"path": folders["in2"], "outbox": folders["out2"], "failed": folders["failed2"], "profile": "p"}
    top = {"state_dir": str(tmp_path / "state")}
    if case == "state inside outbox":
        top["state_dir"], key = str(tmp_path / "out" / ".srd"), "state_dir"
    elif case == "state is the failed folder":
        top["state_dir"], key = folders["failed"], "state_dir"
    elif case == "outbox is failed":
        first["failed"], key = folders["out"], "inboxes[0].failed"
    elif case == "archive is outbox":
        first.update(on_success="archive", archive=folders["out"])
        key = "inboxes[0].archive"
    elif case == "failed inside outbox":
        first["failed"], key = str(tmp_path / "out" / "failed"), "inboxes[0].failed"
    elif case == "another inbox's failed is this outbox":
        second["failed"], key = folders["out"], "inboxes[1].failed"
    else:
        (tmp_path / "real-out").mkdir()
        (tmp_path / "out").symlink_to(tmp_path / "real-out")
        key = "inboxes[0].outbox"
    config = tmp_path / "srd.yaml"
    config.write_text(yaml.safe_dump({**top, "profiles": {"p": {"stages": [
        {"upscale": {"model": str(ESPCN_X2), "scale": 2}}]}}, "inboxes": [first, second]}))
    for command in (("config", "check", str(config)), ("run", "--config", str(config))):
        result = srd(*command)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert f"at '{key}'" in result.stderr, (command, result.stderr)
        assert "Traceback" not in result.stderr


def test_inboxes_may_share_an_outbox(tmp_path: Path) -> None:
    """Two inboxes writing into one outbox (and one failed folder) is a layout srd handles: accepted."""
    shared = {"outbox": str(tmp_path / "out"), "failed": str(tmp_path / "failed"), "profile": "p"}
    config = tmp_path / "srd.yaml"
    config.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"), "profiles": {"p": {"stages": [
        {"upscale": {"model": str(ESPCN_X2), "scale": 2}}]}},
        "inboxes": [{"path": str(tmp_path / "a"), **shared}, {"path": str(tmp_path / "b"), **shared}]}))
    result = srd("config", "check", str(config))
    assert result.returncode == 0, result.stderr


@contextmanager
def read_only_bind(folder: Path) -> Iterator[Path]:
    """Make `folder` read-only by bind-mounting it onto itself read-only (always undone afterwards)."""
    subprocess.run(["mount", "--bind", str(folder), str(folder)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], check=True)
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@contextmanager
def unwritable(folder: Path, how: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """`folder` refuses changes: a read-only bind mount (EROFS), or mode 555 with the daemon run without
    root's DAC override (EACCES, as a service user would meet it)."""
    if how == "erofs":
        with read_only_bind(folder):
            yield
        return
    if shutil.which("setpriv") is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv to run the daemon without CAP_DAC_OVERRIDE")
    plain = daemon_helpers.srd_command
    monkeypatch.setattr(daemon_helpers, "srd_command",
                        lambda: ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", *plain()])
    folder.chmod(0o555)
    try:
        yield
    finally:
        folder.chmod(0o755)
        monkeypatch.setattr(daemon_helpers, "srd_command", plain)


@pytest.mark.parametrize("how", ["erofs", "eacces"])
def test_moves_from_an_unwritable_inbox_to_another_filesystem_leave_no_copies_and_are_retried(
        tmp_path: Path, how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The inbox refuses changes (read-only, or no write permission) and the failed and archive folders are
    on another filesystem: a bad file can't be moved to failed/ and a good one can't be archived. Across
    three starts the daemon stays up, the failed and archive folders get no orphan copies, the inputs
    stay put; once the inbox takes changes again, both moves are retried at the next reconcile scan, by
    the daemon still running (not only at its next start), and succeed."""
    with tmpfs(tmp_path / "other-fs", "4m") as other:
        layout = make_layout(tmp_path / "srd", reconcile_interval=2,
                             inbox={"on_success": "archive", "archive": str(other / "archive"),
                                    "failed": str(other / "failed")})
        failed, archive = other / "failed", other / "archive"
        (layout.inbox / "bad.png").write_bytes(b"not an image at all")
        (layout.inbox / "good.png").write_bytes(image_bytes(".png", SIZE, 1))
        with ExitStack() as inbox_lock:
            inbox_lock.enter_context(unwritable(layout.inbox, how, monkeypatch))
            for start in range(3):
                with running(layout.config) as daemon:
                    daemon.wait_event("failed_folder_write_failed", timeout=30)
                    daemon.wait_event("source_step_failed", timeout=30)
                    assert daemon.proc.poll() is None
                    assert files_under(failed) == {} and files_under(archive) == {}
                    assert set(files_under(layout.inbox)) == {"bad.png", "good.png"}
                    if start < 2:
                        assert daemon.stop() == 0
                        continue
                    inbox_lock.close()  # the inbox takes changes again, under the running daemon
                    wait_for(lambda: set(files_under(archive)) == {"good.png"}, 30,
                             "the retried archive\n" + daemon.log_tail())
                    wait_for(lambda: {"bad.png", "bad.png.error.json"} <= set(files_under(failed)), 30,
                             "the bad file in failed/\n" + daemon.log_tail())
                    assert len(daemon.events("daemon_ready")) == 1
                    assert daemon.stop() == 0
        assert set(files_under(failed)) == {"bad.png", "bad.png.error.json"}
        assert files_under(layout.inbox) == {}
        assert set(files_under(layout.outbox)) == {"good.png"}


def test_a_255_byte_name_gets_its_output_when_a_suffix_would_not_fit(tmp_path: Path) -> None:
    """The outbox already holds a file (not srd's) with the input's 255-byte name: under ``collision:
    suffix`` the output's ``-1`` can't be appended whole, so the name is shortened to fit, not failed."""
    layout = make_layout(tmp_path / "srd")
    name = "x" * 251 + ".png"
    layout.outbox.mkdir(parents=True)
    (layout.outbox / name).write_bytes(b"someone else's file")
    with running(layout.config) as daemon:
        (layout.inbox / name).write_bytes(image_bytes(".png", SIZE, 1))
        done = daemon.wait_event("file_processed", timeout=30)[0]
        assert daemon.stop() == 0
    out = Path(done["out"])
    assert out.parent == layout.outbox and out.name != name and out.name.endswith(".png")
    assert len(os.fsencode(out.name)) <= 255 and out.stat().st_size > 0
    assert (layout.outbox / name).read_bytes() == b"someone else's file"
    assert files_under(layout.failed) == {}


def test_an_unreadable_subfolder_is_reported_in_the_log_and_in_status(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A subfolder with mode 000 (the daemon runs without root's DAC override, as a service user would) is
    named in the log and in `status.json` / `srd status`, and the rest of the inbox is processed."""
    if shutil.which("setpriv") is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv to run the daemon without CAP_DAC_OVERRIDE")
    plain = daemon_helpers.srd_command
    monkeypatch.setattr(daemon_helpers, "srd_command",
                        lambda: ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", *plain()])
    layout = make_layout(tmp_path, inbox={"mode": "poll"})
    locked = layout.inbox / "locked"
    locked.mkdir()
    (locked / "hidden.png").write_bytes(image_bytes(".png", SIZE, 1))
    (layout.inbox / "fine.png").write_bytes(image_bytes(".png", SIZE, 2))
    locked.chmod(0)
    try:
        with running(layout.config) as daemon:
            daemon.wait_event("file_processed")
            logged = wait_for(lambda: [e for e in daemon.events("path_not_processed") if e["src"] == str(locked)], 20,
                              "the unreadable folder in the log\n" + daemon.log_tail())
            status = wait_for(lambda: (s := status_of(layout)) and s["inboxes"][0].get("unreadable") and s, 20,
                              "the unreadable folder in status.json")
            shown = srd("status", "--config", str(layout.config)).stdout
            assert daemon.stop() == 0
    finally:
        locked.chmod(0o755)
    assert "Permission denied" in logged[0]["reason"]
    assert "Permission denied" in status["inboxes"][0]["unreadable"][str(locked)]
    assert str(locked) in shown and "Permission denied" in shown


@pytest.mark.parametrize("case", ["outbox is a bind mount of the state_dir", "inbox is a bind mount of the outbox"])
def test_layouts_that_alias_one_folder_through_a_bind_mount_are_refused(tmp_path: Path, case: str) -> None:
    """A bind mount shows one folder under two unrelated paths: the layout check compares folders by identity
    too, so an inbox image named like the journal can't be written over the ledger through such an alias."""
    if os.geteuid() != 0:
        pytest.skip("bind mounts need root (CI runs as root)")
    for name in ("in", "out", "failed", "state", "alias"):
        (tmp_path / name).mkdir()
    inbox = {"path": str(tmp_path / "in"), "outbox": str(tmp_path / "out"), "failed": str(tmp_path / "failed"),
             "profile": "p"}
    if case == "outbox is a bind mount of the state_dir":
        source, inbox["outbox"], key = tmp_path / "state", str(tmp_path / "alias"), "state_dir"
    else:
        source, inbox["path"], key = tmp_path / "out", str(tmp_path / "alias"), "inboxes[0].outbox"
    mounted = subprocess.run(["mount", "--bind", str(source), str(tmp_path / "alias")], capture_output=True,
                             text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"mount --bind is not permitted here: {mounted.stderr.strip()}")
    try:
        config = tmp_path / "srd.yaml"
        config.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"), "profiles": {"p": {"stages": [
            {"upscale": {"model": str(ESPCN_X2), "scale": 2}}]}}, "inboxes": [inbox]}))
        for command in (("config", "check", str(config)), ("run", "--config", str(config))):
            result = srd(*command)
            assert result.returncode == 2, (command, result.stdout, result.stderr)
            assert f"at '{key}'" in result.stderr, (command, result.stderr)
    finally:
        subprocess.run(["umount", "-l", str(tmp_path / "alias")], check=False)
