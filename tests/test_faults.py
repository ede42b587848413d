"""The daemon under process-level faults: real `srd run` processes, real folders that can't be created,
real read-only mounts, real stopped workers and a real 10 GB sparse file."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any, cast

import cv2
import numpy as np
import pytest
import yaml
from conftest import progressive_jpeg_with_end_marker_comment
from daemon_helpers import (
    ESPCN_X2,
    DaemonProcess,
    decoded_size,
    descendants_of,
    in_flight,
    inbox_config,
    make_image,
    read_status,
    running,
    srd,
    wait_for,
    write_config,
)
from reliability_harness import worker_pids

from srd.config import Config, Inbox, Profile, load_config
from srd.daemon.backlog import Backlog
from srd.daemon.context import Context
from srd.daemon.disposal import Disposal, StepToken
from srd.daemon.jobtime import job_time_limit, us_per_pixel
from srd.daemon.loop import Daemon
from srd.daemon.notify import Notifier
from srd.daemon.offload import Done, Offloader
from srd.daemon.settle import ReadyFile
from srd.daemon.sourcestep import Action, Found, SourceStep, StepResult
from srd.daemon.watch import ROOT_ANSWER_S, Hint, InboxWatcher
from srd.engine.pipeline import Pipeline, StageContext, Upscale
from srd.errors import ExitCode
from srd.executors.job import Job, JobResult
from srd.executors.pool import JobPool
from srd.executors.render import run_job
from srd.fs import safefs
from srd.fs.fileversion import FileVersion
from srd.ledger import Ledger

# End to end: each test runs a real srd daemon (srd run) on real folders.
pytestmark = pytest.mark.e2e

SIZE = (24, 32)
DOUBLED = (48, 64)


@pytest.fixture
def read_only_mount(tmp_path: Path) -> Iterator[Path]:
    """A real read-only tmpfs (needs the privilege to mount; skipped where there is none)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def _set_outbox(config: Path, outbox: Path) -> None:
    data = yaml.safe_load(config.read_text())
    data["inboxes"][0]["outbox"] = str(outbox)
    config.write_text(yaml.safe_dump(data))


def _assert_one_line_startup_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == ExitCode.STARTUP, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("srd:")]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# -- start-up and reload -------------------------------------------------------------------------------------


def test_an_outbox_that_cannot_be_created_is_a_one_line_startup_error(tmp_path: Path) -> None:
    """An outbox under a regular file (ENOTDIR): `srd run` exits 7 with one line naming the folder."""
    config = write_config(tmp_path)
    (tmp_path / "a-file").write_text("not a folder")
    _set_outbox(config, tmp_path / "a-file" / "out")
    result = srd("run", "--config", str(config), timeout=60)
    _assert_one_line_startup_error(result, "cannot start", "Not a directory", str(tmp_path / "a-file"))


def test_an_outbox_on_a_read_only_filesystem_is_a_one_line_startup_error(tmp_path: Path,
                                                                           read_only_mount: Path) -> None:
    """An outbox to be created on a read-only tmpfs (EROFS): one line, exit 7, no traceback."""
    config = write_config(tmp_path)
    _set_outbox(config, read_only_mount / "out")
    result = srd("run", "--config", str(config), timeout=60)
    _assert_one_line_startup_error(result, "Read-only file system", str(read_only_mount / "out"))


@pytest.mark.parametrize("fault", ["not-a-directory", "read-only"])
def test_a_reload_that_cannot_be_applied_keeps_the_old_config_running(tmp_path: Path, fault: str,
                                                                     request: pytest.FixtureRequest) -> None:
    """A SIGHUP whose config parses but whose new outbox can't be created is rejected with the reason; the
    daemon keeps running the old config (a file dropped afterwards lands in the old outbox) and exits 0."""
    config = write_config(tmp_path)
    good = config.read_text()
    if fault == "read-only":
        bad_outbox = request.getfixturevalue("read_only_mount") / "out"
    else:
        (tmp_path / "a-file").write_text("not a folder")
        bad_outbox = tmp_path / "a-file" / "out"
    with running(config) as daemon:
        _set_outbox(config, bad_outbox)
        daemon.proc.send_signal(signal.SIGHUP)
        rejected = daemon.wait_event("config_reload_rejected")[0]
        assert str(bad_outbox) in rejected["problems"][0]
        assert daemon.proc.poll() is None
        wait_for(lambda: read_status(tmp_path / "state").get("last_reload_error"), 10, "the rejection in status")
        (tmp_path / "in" / "after.png").write_bytes(make_image(Path("x.png"), SIZE, 1))
        wait_for(lambda: (tmp_path / "in-out" / "after.png").exists(), 30, "the old config to process a file")
        assert decoded_size(tmp_path / "in-out" / "after.png") == DOUBLED

        config.write_text(good)  # and a good reload still applies afterwards
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_event("config_reloaded")
        assert daemon.stop() == 0


def test_a_model_of_another_scale_than_configured_stops_the_start_and_is_refused_on_reload(tmp_path: Path) -> None:
    """ESPCN ×2 saved under a name of its own and configured as ×3: found only in the workers, every file
    dropped would go to failed/ ("output … is not x3"). The model is run once where it is chosen: `srd run`
    exits 4 naming it, and a reload to it is rejected while the old config goes on."""
    model = tmp_path / "models" / "espcn-own.pb"
    model.parent.mkdir()
    model.write_bytes(ESPCN_X2.read_bytes())
    wrong = [{"upscale": {"model": str(model), "scale": 3, "convention": "espcn"}}]
    result = srd("run", "--config", str(write_config(tmp_path, stages=wrong, name="wrong.yaml")), timeout=60)
    assert result.returncode == ExitCode.MODEL, result.stderr
    assert "upscales x2, not x3" in result.stderr and str(model) in result.stderr
    assert "Traceback" not in result.stderr

    config = write_config(tmp_path)
    with running(config) as daemon:
        write_config(tmp_path, stages=wrong)
        daemon.proc.send_signal(signal.SIGHUP)
        rejected = daemon.wait_event("config_reload_rejected")[0]
        assert "upscales x2, not x3" in rejected["problems"][0]
        (tmp_path / "in" / "after.png").write_bytes(make_image(Path("x.png"), SIZE, 1))
        wait_for(lambda: (tmp_path / "in-out" / "after.png").exists(), 30, "the old config to process a file")
        assert decoded_size(tmp_path / "in-out" / "after.png") == DOUBLED
        assert daemon.stop() == 0


def test_a_job_running_through_a_reload_that_changes_its_profile_is_redone_under_the_new_one(tmp_path: Path) -> None:
    """The job was submitted under the old profile and finishes after the reload: its output is the old
    profile's, so it is not the file's last word. It used to be (the file remembered as decided, its stale output
    kept, `srd status` idle) until the next restart. A job still waiting for the worker is taken back at the
    reload and runs once, under the new profile (it used to run under the old one first, then again)."""
    config = write_config(tmp_path, stages=[{"upscale": {"model": "edsr-base", "scale": 2}}])
    big = (300, 400)  # about 3 s of edsr-base on one thread: still running when the reload lands
    with running(config) as daemon:
        (tmp_path / "in" / "slow.png").write_bytes(make_image(Path("x.png"), big, 4))
        daemon.wait_event("file_started")
        (tmp_path / "in" / "queued.png").write_bytes(make_image(Path("x.png"), SIZE, 5))
        wait_for(lambda: in_flight(tmp_path / "state") == 2, 30, "the second job to be queued")
        write_config(tmp_path, stages=[{"upscale": {"model": str(ESPCN_X2.parent / "ESPCN_x3.pb"), "scale": 3}}])
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_event("config_reloaded")
        superseded = daemon.wait_event("profile_changed_while_running", timeout=60)[0]
        assert superseded["src"] == str(tmp_path / "in" / "slow.png")
        output = tmp_path / "in-out" / "slow.png"
        wait_for(lambda: output.exists() and decoded_size(output) == (900, 1200), 60,
                 "the file redone under the new profile\n" + daemon.log_tail())
        wait_for(lambda: decoded_size(tmp_path / "in-out" / "queued.png") == (SIZE[0] * 3, SIZE[1] * 3), 30,
                 "the queued file done under the new profile")
        assert daemon.stop() == 0
    assert sorted(p.name for p in (tmp_path / "in-out").iterdir()) == ["queued.png", "slow.png"]  # replaced in place
    queued = [e for e in daemon.events("file_processed") if e["src"].endswith("queued.png")]
    assert [e["scale"] for e in queued] == [3.0] and daemon.events("queued_jobs_requeued")[0]["jobs"] == 1


def test_files_waiting_behind_a_busy_pool_are_queued_once_however_many_scans_pass(tmp_path: Path) -> None:
    """Every reconcile scan settled the waiting files again and queued them again: `srd status` counted
    thousands queued for a few hundred files, and the backlog grew by the waiting set at every scan."""
    config = write_config(tmp_path, stages=[{"upscale": {"model": "edsr-base", "scale": 2}}], reconcile_interval=1)
    with running(config) as daemon:
        (tmp_path / "in" / "a-slow.png").write_bytes(make_image(Path("x.png"), (300, 400), 4))
        daemon.wait_event("file_started")
        for i in range(12):
            (tmp_path / "in" / f"b{i}.png").write_bytes(make_image(Path("x.png"), SIZE, i))
        seen = []
        deadline = time.monotonic() + 4  # four scans while the one worker is busy
        while time.monotonic() < deadline:
            inbox = (read_status(tmp_path / "state").get("inboxes") or [{}])[0]
            seen.append((inbox.get("queued", 0), inbox.get("settling", 0) + inbox.get("queued", 0)
                         + len(inbox.get("running", []))))
            time.sleep(0.2)
        assert max(queued for queued, _ in seen) <= 12, seen  # the running one, looked at again by a scan, is not
        assert max(files for _, files in seen) <= 13, seen  # settling, queued and running: each file once
        wait_for(lambda: len(list((tmp_path / "in-out").iterdir())) == 13, 60, "every file processed")
        assert daemon.stop() == 0
    assert len(daemon.events("file_processed")) == 13


@pytest.mark.parametrize("mode", ["native", "poll"])
def test_files_deleted_while_queued_leave_the_queue_at_once(tmp_path: Path, mode: str) -> None:
    """Files waiting behind a busy worker and then deleted stayed counted as QUEUED until the loop reached them
    (up to a whole job's time): the watcher now says a file went (an event, or a poll that no longer lists it)."""
    config = write_config(tmp_path, [inbox_config(tmp_path, mode=mode)],
                          stages=[{"upscale": {"model": "edsr-base", "scale": 2}}])
    with running(config) as daemon:
        (tmp_path / "in" / "a-slow.png").write_bytes(make_image(Path("x.png"), (600, 800), 4))  # ~10 s of work
        daemon.wait_event("file_started")
        waiting = [tmp_path / "in" / f"b{i}.png" for i in range(8)]
        for i, path in enumerate(waiting):
            path.write_bytes(make_image(Path("x.png"), SIZE, i))

        def queued() -> int:
            return int((read_status(tmp_path / "state").get("inboxes") or [{}])[0].get("queued", 0))

        wait_for(lambda: queued() >= 7, 10, "the files to be queued behind the busy worker")
        for path in waiting:
            path.unlink()
        wait_for(lambda: queued() == 0, 5, "the deleted files to leave the queue\n" + daemon.log_tail())
        assert daemon.events("file_processed") == []  # the slow job still runs: nothing reached them
        assert daemon.stop() == 0


@pytest.mark.parametrize("mode", ["native", "poll"])
def test_a_file_renamed_while_its_job_waits_or_runs_gets_its_output_under_its_new_name_only(
        tmp_path: Path, mode: str) -> None:
    """The job of a file renamed in the inbox (or deleted) after it settled wrote an output under the old name
    from the bytes it had read, and the file under its new name was then taken for a duplicate of that: no
    output under its name, and with `on_success: delete` the file itself deleted. A job waiting for a worker is
    now taken back when its file goes, and a running one puts no output in place for a file no longer there."""
    config = write_config(tmp_path, [inbox_config(tmp_path, mode=mode, on_success="delete")],
                          stages=[{"upscale": {"model": "edsr-base", "scale": 2}}])
    inbox, outbox = tmp_path / "in", tmp_path / "in-out"
    with running(config) as daemon:
        (inbox / "slow.png").write_bytes(make_image(Path("x.png"), (300, 400), 4))  # a few seconds of work
        daemon.wait_event("file_started")
        (inbox / "head.png").write_bytes(make_image(Path("x.png"), SIZE, 5))
        (inbox / "gone.png").write_bytes(make_image(Path("x.png"), SIZE, 6))
        wait_for(lambda: in_flight(tmp_path / "state") == 2 and queued_in(tmp_path) == 1, 20,
                 "the next file handed to the pool, another queued")
        (inbox / "slow.png").rename(inbox / "slow-renamed.png")  # its job is running
        (inbox / "head.png").rename(inbox / "head-renamed.png")  # its job waits for the worker
        (inbox / "gone.png").unlink()
        wait_for(lambda: {"slow-renamed.png", "head-renamed.png"} <= {p.name for p in outbox.glob("*")}, 90,
                 "the renamed files processed under their new names\n" + daemon.log_tail())
        wait_for(lambda: not list(inbox.glob("[!.]*")), 20, "the sources deleted once processed")
        assert daemon.stop() == 0
    assert sorted(p.name for p in outbox.iterdir()) == ["head-renamed.png", "slow-renamed.png"]
    assert {Path(e["src"]).name for e in daemon.events("file_processed")} == {"slow-renamed.png", "head-renamed.png"}


@pytest.mark.parametrize("mode", ["native", "poll"])
def test_a_chmod_or_touch_during_a_job_keeps_its_output_and_a_file_moved_over_a_waiting_one_is_done_once(
        tmp_path: Path, mode: str) -> None:
    """A chmod, a touch or a new hard link changes no byte: the running job's output stands (it was thrown away,
    and a file chmod-ed every few seconds never finished). A file moved over one whose job waits for the worker
    takes its place: the waiting job is taken back, not run on the old bytes and then dropped."""
    config = write_config(tmp_path, [inbox_config(tmp_path, mode=mode)],
                          stages=[{"upscale": {"model": "edsr-base", "scale": 2}}])
    inbox, outbox = tmp_path / "in", tmp_path / "in-out"
    with running(config) as daemon:
        slow = inbox / "slow.png"
        slow.write_bytes(make_image(Path("x.png"), (300, 400), 4))
        daemon.wait_event("file_started")
        (inbox / "next.png").write_bytes(make_image(Path("x.png"), SIZE, 5))
        wait_for(lambda: in_flight(tmp_path / "state") == 2, 20, "the next file handed to the pool")
        slow.chmod(0o600)
        os.utime(slow)
        os.link(slow, tmp_path / "backup-link.png")
        newer = make_image(Path("x.png"), SIZE, 6)
        (inbox / ".next.tmp").write_bytes(newer)
        (inbox / ".next.tmp").rename(inbox / "next.png")
        wait_for(lambda: (outbox / "slow.png").exists() and (outbox / "next.png").exists(), 60,
                 "both outputs\n" + daemon.log_tail())
        time.sleep(1.5)  # a settle period: the touched file is looked at again, and found done
        assert daemon.stop() == 0
    started = [Path(e["src"]).name for e in daemon.events("file_started")]
    assert sorted(started) == ["next.png", "slow.png"], started
    assert daemon.events("source_changed_before_output") == []
    assert np.array_equal(cv2.imread(str(outbox / "next.png")), _upscaled_by_base(newer, tmp_path))


def _upscaled_by_base(image: bytes, tmp_path: Path) -> np.ndarray:
    (tmp_path / "ref.png").write_bytes(image)
    done = srd("process", str(tmp_path / "ref.png"), "--out", str(tmp_path / "ref-out"), "-m", "edsr-base", "-s", "2")
    assert done.returncode == 0, done.stderr
    return cv2.imread(str(tmp_path / "ref-out" / "ref.png"))


def test_a_reload_that_removes_an_inbox_takes_back_its_jobs_waiting_for_a_worker(tmp_path: Path) -> None:
    """Its next file, handed to the pool before the reload, was still processed into the removed inbox's outbox."""
    slow = {"upscale": {"model": "edsr-base", "scale": 2}}
    inboxes = [inbox_config(tmp_path, "a"), inbox_config(tmp_path, "b")]
    config = write_config(tmp_path, inboxes, stages=[slow])
    with running(config) as daemon:
        (tmp_path / "a" / "slow.png").write_bytes(make_image(Path("x.png"), (300, 400), 4))
        daemon.wait_event("file_started")
        (tmp_path / "b" / "next.png").write_bytes(make_image(Path("x.png"), SIZE, 5))
        wait_for(lambda: in_flight(tmp_path / "state", 1) == 1, 20, "b's file handed to the pool")
        write_config(tmp_path, inboxes[:1], stages=[slow])
        daemon.proc.send_signal(signal.SIGHUP)
        assert daemon.wait_event("queued_jobs_requeued")[0]["jobs"] == 1
        wait_for(lambda: (tmp_path / "a-out" / "slow.png").exists(), 60, "the running job to finish")
        assert daemon.stop() == 0
    assert not (tmp_path / "b-out" / "next.png").exists()


def queued_in(tmp_path: Path) -> int:
    """QUEUED of the first inbox by the status file."""
    return int((read_status(tmp_path / "state").get("inboxes") or [{}])[0].get("queued", 0))


@contextlib.contextmanager
def _running_on_own_espcn(tmp_path: Path) -> Iterator[tuple[DaemonProcess, Path]]:
    """A daemon whose model is a copy of ESPCN ×2 at `own.pb` (a file of the user's, no manifest), ready, with
    a first file processed (so its worker has loaded the model)."""
    model = tmp_path / "own.pb"
    model.write_bytes(ESPCN_X2.read_bytes())
    config = write_config(tmp_path, stages=[{"upscale": {"model": str(model), "scale": 2, "convention": "espcn"}}])
    with running(config) as daemon:
        (tmp_path / "in" / "first.png").write_bytes(make_image(Path("x.png"), SIZE, 2))
        wait_for(lambda: (tmp_path / "in-out" / "first.png").exists(), 30, "the first file")
        yield daemon, model


def test_a_model_file_replaced_and_reloaded_is_the_one_that_runs(tmp_path: Path) -> None:
    """The admin replaces a model file and reloads, as they should. The worker had the old weights loaded and
    kept running them under the new fingerprint (the new file's sha256): outputs silently made by the model
    the ledger says was replaced. Each job now names the bytes it was checked with, so the worker loads them."""
    image = make_image(Path("x.png"), SIZE, 1)
    with _running_on_own_espcn(tmp_path) as (daemon, model):
        replacement = tmp_path / "own.pb.new"
        replacement.write_bytes((ESPCN_X2.parent / "FSRCNN_x2.pb").read_bytes())
        replacement.rename(model)
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_event("config_reloaded")
        (tmp_path / "in" / "after.png").write_bytes(image)
        wait_for(lambda: (tmp_path / "in-out" / "after.png").exists(), 30, "the file after the reload")
        assert daemon.stop() == 0
    after = cv2.imread(str(tmp_path / "in-out" / "after.png"))
    assert np.array_equal(after, _upscaled_by("FSRCNN_x2.pb", image, tmp_path))
    assert not np.array_equal(after, _upscaled_by("ESPCN_x2.pb", image, tmp_path))


def _upscaled_by(model: str, image: bytes, tmp_path: Path) -> np.ndarray:
    """What the zoo file `model` makes of `image`, by `srd process`."""
    (tmp_path / "ref.png").write_bytes(image)
    done = srd("process", str(tmp_path / "ref.png"), "--out", str(tmp_path / model), "-m", str(ESPCN_X2.parent / model))
    assert done.returncode == 0, done.stderr
    return cv2.imread(str(tmp_path / model / "ref.png"))


@pytest.mark.parametrize("back", ["the file put back", "a reload"])
def test_a_model_replaced_without_a_reload_pauses_its_inbox_until_it_is_back(tmp_path: Path, back: str) -> None:
    """The model file is replaced without a reload. A worker that restarted (here: killed) used to run the new
    bytes under the old fingerprint, silently; refused, each file then went to failed/ while status said
    healthy. Now the inbox pauses (the daemon sees the file change, or a worker refuses it, whichever is first):
    the files wait, not failed, the inbox is unhealthy and says why, and work resumes when the checked bytes are
    back, or when a reload checks and pins the new ones."""
    image = make_image(Path("x.png"), SIZE, 1)
    with _running_on_own_espcn(tmp_path) as (daemon, model):
        model.write_bytes((ESPCN_X2.parent / "FSRCNN_x2.pb").read_bytes())
        if back == "the file put back":
            for pid in worker_pids(daemon.proc.pid):
                os.kill(pid, signal.SIGKILL)
        daemon.wait_event("model_unavailable_paused")
        (tmp_path / "in" / "second.png").write_bytes(image)
        inbox = wait_for(lambda: (read_status(tmp_path / "state").get("inboxes") or [{}])[0].get("model_state", {})
                         .get("state") == "unavailable" and read_status(tmp_path / "state")["inboxes"][0], 10,
                         "the pause in status")
        assert inbox["health"] == "unhealthy" and "replaced since srd checked it" in inbox["model_state"]["error"]
        assert srd("status", "--check", "-c", str(tmp_path / "srd.yaml")).returncode != 0
        assert (tmp_path / "in" / "second.png").exists() and not (tmp_path / "in-out" / "second.png").exists()
        assert not (tmp_path / "in-failed").exists() or not any((tmp_path / "in-failed").iterdir())
        if back == "a reload":
            daemon.proc.send_signal(signal.SIGHUP)
        else:
            model.write_bytes(ESPCN_X2.read_bytes())
        daemon.wait_event("model_available_resumed", 30)
        wait_for(lambda: (tmp_path / "in-out" / "second.png").exists(), 30, "the waiting file")
        assert daemon.stop() == 0
    expected = _upscaled_by("FSRCNN_x2.pb" if back == "a reload" else "ESPCN_x2.pb", image, tmp_path)
    assert np.array_equal(cv2.imread(str(tmp_path / "in-out" / "second.png")), expected)


# -- the loop never blocks on one file -----------------------------------------------------------------------


def _notify_socket() -> tuple[str, socket.socket]:
    name = f"srd-test-{os.getpid()}-{random.randrange(1 << 30)}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(0.2)
    return "@" + name, sock


def test_hashing_a_10_gb_file_starves_neither_the_watchdog_nor_the_other_files(tmp_path: Path) -> None:
    """A 10 GB sparse file takes many seconds to hash. Meanwhile WATCHDOG=1 keeps arriving at its interval
    (1 s here) and a small file dropped into the same inbox is processed. (`max_input_bytes` is raised so the
    file is hashed rather than refused from its size.)"""
    config = write_config(tmp_path, max_input_bytes=20 * 1024**3)
    inbox = tmp_path / "in"
    address, sock = _notify_socket()
    daemon = DaemonProcess(config, env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "2000000"})
    pings: list[float] = []

    def receive_for(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                if b"WATCHDOG=1" in sock.recv(4096):
                    pings.append(time.monotonic())
            except TimeoutError:
                pass

    try:
        daemon.wait_ready()
        subprocess.run(["truncate", "-s", "10G", str(inbox / "big.png")], check=True)
        receive_for(1.5)  # settles (0.3 s) and its hash starts
        pings.clear()
        started = time.monotonic()
        (inbox / "small.png").write_bytes(make_image(Path("x.png"), SIZE, 1))
        while not (tmp_path / "in-out" / "small.png").exists():
            receive_for(0.2)
            assert time.monotonic() - started < 20, "small.png not processed while big.png is hashed\n" + \
                daemon.log_tail()
        receive_for(3)
        # The big file is still being read: nothing was decided about it yet.
        assert not daemon.events("file_failed") and not daemon.events("file_skipped"), daemon.log_tail()
        assert read_status(tmp_path / "state")["inboxes"][0]["queued"] == 1
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert len(pings) >= 3 and max(gaps) < 3.0, f"watchdog pings {len(pings)}, gaps {gaps}"
        assert decoded_size(tmp_path / "in-out" / "small.png") == DOUBLED
    finally:
        sock.close()
        daemon.proc.kill()  # before a worker would read 10 GB into memory
        daemon.proc.wait(timeout=10)


def test_a_root_that_does_not_answer_pauses_its_inbox_without_blocking_supervision(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stat of the inbox root that hangs (a hung NFS server) blocks its own thread, not `supervise`: the
    first call gives up after ROOT_ANSWER_S and pauses the inbox, later ones return at once, and when the
    share answers again the inbox is watched again."""
    root = tmp_path / "in"
    root.mkdir()
    inbox = Inbox(path=root, outbox=tmp_path / "out", failed=tmp_path / "failed", mode="native")
    hints: queue.SimpleQueue[Hint] = queue.SimpleQueue()
    watcher = InboxWatcher(0, inbox, hints.put)
    watcher.start()
    share_answers = threading.Event()
    real_open_root = safefs.open_root

    def hanging_open_root(path: Path) -> int:
        if path == root:
            share_answers.wait()
        return real_open_root(path)

    try:
        monkeypatch.setattr(safefs, "open_root", hanging_open_root)
        started = time.monotonic()
        watcher.supervise()
        assert time.monotonic() - started < ROOT_ANSWER_S + 1
        assert watcher.state == "missing" and not watcher.healthy
        started = time.monotonic()
        watcher.supervise()
        assert time.monotonic() - started < 0.1
        share_answers.set()

        def resumed() -> bool:
            watcher.supervise()
            return watcher.state == "watching" and watcher.healthy

        wait_for(resumed, 10, "the inbox to be watched again")
    finally:
        share_answers.set()
        watcher.stop()


# -- hung jobs -----------------------------------------------------------------------------------------------


def _workers_of(daemon_pid: int) -> list[int]:
    """The pool's worker processes: the children of the daemon's forkserver."""
    def children(pid: int) -> list[int]:
        return [child for child in descendants_of(pid) if _parent(child) == pid]

    for child in children(daemon_pid):
        if b"forkserver" in Path(f"/proc/{child}/cmdline").read_bytes():
            return children(child)
    return []


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError):
        return -1


def test_a_stuck_worker_is_shown_in_status_killed_at_its_derived_limit_and_the_job_retried(tmp_path: Path) -> None:
    """With no job_timeout set, a small image's limit is the floor (2 s here). A worker that stops answering
    (SIGSTOP) while it holds a job shows in `srd status` with its elapsed time, is killed when the limit
    passes, and the job is retried and completes; nothing goes to the failed folder."""
    config = write_config(tmp_path, job_timeout_min_seconds=2)
    inbox, state = tmp_path / "in", tmp_path / "state"
    daemon = DaemonProcess(config)
    stopped: list[int] = []
    try:
        daemon.wait_ready()
        (inbox / "first.png").write_bytes(make_image(Path("x.png"), SIZE, 1))
        daemon.wait_event("file_processed")
        stopped = wait_for(lambda: _workers_of(daemon.pid), 10, "the pool's worker processes")
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        (inbox / "stuck.png").write_bytes(make_image(Path("x.png"), SIZE, 2))

        def stuck_in_status() -> dict[str, Any] | None:
            jobs = [job for inbox in read_status(state)["inboxes"] for job in inbox.get("running", [])]
            return next((j for j in jobs if j["source"].endswith("stuck.png") and j["elapsed_s"] >= 1), None)

        job = wait_for(stuck_in_status, 20, "the stuck job in status.json\n" + daemon.log_tail())
        assert job["limit_s"] == 2
        shown = srd("status", "--config", str(config))
        assert f"{inbox}: running stuck.png" in shown.stdout, shown.stdout

        timed_out = daemon.wait_event("job_timed_out", timeout=20)[0]
        assert timed_out["src"] == str(inbox / "stuck.png") and timed_out["limit_s"] == 2
        wait_for(lambda: (tmp_path / "in-out" / "stuck.png").exists(), 30, "the retried job's output")
        assert decoded_size(tmp_path / "in-out" / "stuck.png") == DOUBLED
        assert not (tmp_path / "in-failed").exists() or not any((tmp_path / "in-failed").iterdir())
        assert daemon.stop() == 0
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        if daemon.proc.poll() is None:
            daemon.proc.kill()


def test_the_derived_limit_grows_with_pixels_and_model_cost_and_keeps_its_floor() -> None:
    """20 × the measured cost: a 12 MP photo through edsr-lite ×2 gets 20 × 66 s; a thumbnail gets the floor;
    a model never measured is assumed as slow as the slowest measured one; an ensemble runs the model once per
    copy."""
    def profile(model: str, ensemble: int = 1) -> Profile:
        return Profile("p", Pipeline((Upscale(model=model, scale=2, ensemble=ensemble),)))

    assert job_time_limit(profile("edsr-lite"), 12_000_000, floor=120) == pytest.approx(20 * 12 * 5.5)
    assert job_time_limit(profile("edsr-lite", 8), 12_000_000, floor=120) == pytest.approx(8 * 20 * 12 * 5.5)
    assert job_time_limit(profile("/m/ESPCN_x2.pb"), 64 * 64, floor=120) == 120
    assert us_per_pixel("FSRCNN-small_x2.pb") == 0.8 and us_per_pixel("FSRCNN_x2.pb") == 1.6
    assert us_per_pixel("EDSR_x4.pb") == 350.0 and us_per_pixel("edsr-lite_x2.onnx") == 5.5
    assert us_per_pixel("edsr-photo") == us_per_pixel("edsr-base") == 31.0  # not the zoo EDSR's 350
    assert us_per_pixel("my-own-net.onnx") == 350.0  # unknown: as slow as the slowest known


# -- out of memory in a worker -------------------------------------------------------------------------------

_OOM_SCRIPT = """
import json, resource, sys
from pathlib import Path
import cv2, numpy as np
from srd.config import load_config
from srd.executors.job import Job
from srd.executors.render import run_job
from srd.engine.pipeline import StageContext
config = load_config(Path(sys.argv[1]))
root = Path(sys.argv[2])
profile = config.profiles["test"]
context = StageContext(config.worker_engine(), config.model_dirs)
small, big = root / "small.png", root / "big.png"
cv2.imwrite(str(small), np.zeros((16, 16, 3), np.uint8))
cv2.imwrite(str(big), np.random.default_rng(0).integers(0, 255, (2000, 2000, 3), dtype=np.uint8))
assert run_job(Job(small, root / "out", profile, 10**9), context).ok  # the model is loaded
in_use = int(next(line for line in open("/proc/self/status") if line.startswith("VmSize")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (in_use + 80 * 2**20, resource.RLIM_INFINITY))
result = run_job(Job(big, root / "out", profile, 10**9), context)
print(json.dumps({"ok": result.ok, "out_of_memory": result.out_of_memory, "error": result.error}))
"""


def test_a_real_allocation_failure_in_a_job_is_reported_as_out_of_memory(tmp_path: Path) -> None:
    """A worker whose address space runs out (RLIMIT_AS) while upscaling gets OpenCV's bad_alloc /
    'Insufficient memory': the result says out of memory, not a permanent 'internal error'."""
    config = write_config(tmp_path)
    (tmp_path / "out").mkdir()
    done = subprocess.run([sys.executable, "-c", _OOM_SCRIPT, str(config), str(tmp_path)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["ok"] is False and result["out_of_memory"] is True, result
    assert result["error"].startswith("out of memory"), result


def test_out_of_memory_is_retried_alone_and_costs_an_attempt_not_the_file(tmp_path: Path) -> None:
    """The daemon takes an out-of-memory result like a crashed worker: the file is retried (alone), and
    completes when memory allows; only max_attempts out-of-memory results in a row fail it."""
    from test_daemon import InlineExecutor, InlineOffloader, QuietWatcher

    config = load_config(write_config(tmp_path))
    context = StageContext(config.worker_engine(), config.model_dirs)
    attempts: list[Path] = []

    def run(job: Job) -> JobResult:
        attempts.append(job.source)
        if len(attempts) == 1:
            return JobResult(job.source, False, error="out of memory: error: std::bad_alloc", out_of_memory=True)
        return run_job(job, context)

    now = [100.0]
    daemon = Daemon.start(config, notifier=Notifier(None), clock=lambda: now[0], watcher_builder=QuietWatcher,
                    pool_builder=lambda cfg, on_start, wake: JobPool(1, lambda: InlineExecutor(run),
                                                                      on_start=on_start),
                    offloader=InlineOffloader())
    try:
        source = tmp_path / "in" / "a.png"
        source.write_bytes(make_image(Path("x.png"), SIZE, 1))
        daemon.hint(Hint(0, source))
        for _ in range(12):
            daemon.step()
            now[0] += 0.2
        assert attempts == [source, source]
        assert decoded_size(tmp_path / "in-out" / "a.png") == DOUBLED
        assert not (tmp_path / "in-failed").exists() or not any((tmp_path / "in-failed").iterdir())
        assert daemon.ledger is not None
        assert [(e.state.value, e.attempts) for e in daemon.ledger.entries()] == [("done", 2)]
    finally:
        daemon.close()


# -- inotify overflow ----------------------------------------------------------------------------------------


def test_an_inotify_overflow_in_a_tree_larger_than_the_queue_is_recovered_once_and_then_quiet(tmp_path: Path) -> None:
    """A tree with more folders than the kernel's inotify queue holds, and a burst of writes while the
    daemon is stopped (SIGSTOP), overflow the queue for certain. The daemon counts the overflow, recovers
    (fresh observer, rescan), and then stays quiet: no further overflows, little CPU, and a file dropped
    afterwards into the deepest folder is found by its event (the reconcile scan is 30 s away)."""
    queue_size = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    folders = queue_size + 2000
    inbox = tmp_path / "in"
    for i in range(folders):
        (inbox / f"p{i // 100:04d}" / f"d{i % 100:02d}").mkdir(parents=True)
    deepest = inbox / f"p{(folders - 1) // 100:04d}" / f"d{(folders - 1) % 100:02d}"
    config = write_config(tmp_path, [inbox_config(tmp_path, mode="native")])
    daemon = DaemonProcess(config)
    state = tmp_path / "state"
    try:
        daemon.wait_ready(timeout=120)
        daemon.proc.send_signal(signal.SIGSTOP)
        for i in range(queue_size + 2000):
            (inbox / f".burst{i:06d}").write_bytes(b"x")
        daemon.proc.send_signal(signal.SIGCONT)
        wait_for(lambda: read_status(state).get("inboxes", [{}])[0].get("events_lost", 0) >= 1, 60,
                 "the overflow to be reported\n" + daemon.log_tail())
        daemon.wait_event("inbox_events_lost_rescanning", timeout=30)
        time.sleep(3)  # the recovery's own work is done
        lost = read_status(state)["inboxes"][0]["events_lost"]
        cpu_before, started = _cpu_seconds(daemon.pid), time.monotonic()
        time.sleep(8)
        cpu_percent = (_cpu_seconds(daemon.pid) - cpu_before) / (time.monotonic() - started) * 100
        assert read_status(state)["inboxes"][0]["events_lost"] == lost, "the queue kept overflowing"
        assert cpu_percent < 20, f"{cpu_percent:.0f} % of a core while idle"
        (deepest / "late.png").write_bytes(make_image(Path("x.png"), SIZE, 1))
        output = tmp_path / "in-out" / deepest.relative_to(inbox) / "late.png"
        wait_for(output.exists, 15, "the late file, found by its event\n" + daemon.log_tail())
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.send_signal(signal.SIGCONT)
            daemon.proc.kill()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- slow writers --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_a_slow_writer_s_half_written_image_is_waited_for_and_an_earlier_failure_is_cleared(
        tmp_path: Path, suffix: str) -> None:
    """A JPEG (or PNG) written in bursts with a pause longer than settle_seconds decodes as truncated at
    first; the daemon saw it growing, so it waits (backing off) instead of failing it, and processes it once
    the writer is done. A truncated one last modified long ago fails at once; when the user puts the complete
    picture back under its name, it is processed and the stale reason file and failed entry go away."""
    config = write_config(tmp_path)
    inbox, failed, outbox = tmp_path / "in", tmp_path / "in-failed", tmp_path / "in-out"
    slow, whole = "slow" + suffix, "whole" + suffix
    picture = make_image(Path("x" + suffix), (96, 128), 1)
    with running(config) as daemon:
        with (inbox / slow).open("wb") as fh:
            fh.write(picture[: len(picture) // 4])
            fh.flush()
            time.sleep(0.5)  # the tracker sees it grow between its two stats ...
            fh.write(picture[len(picture) // 4: len(picture) // 2])
            fh.flush()
            daemon.wait_event("file_incomplete_waiting", timeout=30)  # ... then the writer stalls
            time.sleep(2)
            fh.write(picture[len(picture) // 2:])
        wait_for(lambda: (outbox / slow).exists(), 30, "the slow writer's file\n" + daemon.log_tail())
        assert decoded_size(outbox / slow) == (192, 256)
        assert not daemon.events("file_failed")

        other = make_image(Path("x" + suffix), (96, 128), 2)
        broken = tmp_path / whole  # a half download from long ago, moved in: no writer will finish it
        broken.write_bytes(other[: len(other) // 2])
        os.utime(broken, (time.time() - 3600, time.time() - 3600))
        broken.rename(inbox / whole)
        daemon.wait_event("file_failed")
        assert (failed / f"{whole}.error.json").exists()
        (failed / whole).unlink()  # the user fetches a good copy instead
        (inbox / whole).write_bytes(other)
        wait_for(lambda: (outbox / whole).exists(), 30, "the repaired file\n" + daemon.log_tail())
        daemon.wait_event("earlier_failure_cleared")
        assert not (failed / f"{whole}.error.json").exists()
        assert daemon.stop() == 0
    listed = srd("ledger", "list", "--state", "failed", "--config", str(config))
    assert whole not in listed.stdout, listed.stdout


@pytest.mark.parametrize("suffix", [".tif", ".webp"])
def test_a_writer_that_stops_for_longer_than_several_waits_gets_exactly_one_output_and_nothing_fails(
        tmp_path: Path, suffix: str) -> None:
    """Half a TIFF (whose directory comes last, so its size can't be read yet) or half a WebP is written,
    then the writer stops, its file unchanged, for longer than the first waits, then finishes. The daemon
    keeps waiting, each time twice as long, and processes the file once it is whole: one output, nothing
    in failed/."""
    config = write_config(tmp_path)
    inbox, failed, outbox = tmp_path / "in", tmp_path / "in-failed", tmp_path / "in-out"
    name = "scan" + suffix
    picture = make_image(Path(name), (96, 128), 3)
    daemon = DaemonProcess(config)
    try:
        daemon.wait_ready()
        with (inbox / name).open("wb") as fh:
            fh.write(picture[: len(picture) // 2])
            fh.flush()
            waits = daemon.wait_event("file_incomplete_waiting", timeout=60, count=3)
            fh.write(picture[len(picture) // 2:])
        assert [w["retry_in_s"] for w in waits[:3]] == [1.0, 2.0, 4.0]
        assert all(w["reason"].startswith(f"truncated {suffix[1:].upper()}") for w in waits), waits
        wait_for(lambda: (outbox / name).exists(), 60, "the slow writer's file\n" + daemon.log_tail())
        assert decoded_size(outbox / name) == (192, 256)
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
    assert [p.name for p in outbox.iterdir()] == [name]
    assert not failed.exists() or list(failed.iterdir()) == []
    assert not daemon.events("file_failed")


def test_a_writer_pausing_after_a_jpeg_comment_ending_in_ff_d9_is_waited_for_and_gets_exactly_one_output(
        tmp_path: Path) -> None:
    """A progressive JPEG is written up to the end of a comment holding the bytes FF D9 (before its third
    scan), then the writer stops for longer than settle_seconds: the file ends in FF D9, but its segments
    don't reach EOI, so the daemon waits instead of decoding it and moving it to failed/ while it is still
    being written. Once the writer finishes: one output, nothing in failed/."""
    config = write_config(tmp_path)
    inbox, failed, outbox = tmp_path / "in", tmp_path / "in-failed", tmp_path / "in-out"
    pixels = np.random.default_rng(7).integers(0, 256, size=(96, 128, 3), dtype=np.uint8)
    picture, cut = progressive_jpeg_with_end_marker_comment(pixels)
    daemon = DaemonProcess(config)
    try:
        daemon.wait_ready()
        with (inbox / "photo.jpg").open("wb") as fh:
            fh.write(picture[:cut])
            fh.flush()
            wait_for(lambda: (daemon.events("file_incomplete_waiting") or daemon.events("file_failed")
                              or daemon.events("file_processed")), 60, "the daemon to judge the paused file")
            assert not daemon.events("file_failed") and not daemon.events("file_processed"), daemon.log_tail()
            daemon.wait_event("file_incomplete_waiting", timeout=60, count=2)  # paused through two waits
            fh.write(picture[cut:])
        wait_for(lambda: (outbox / "photo.jpg").exists(), 60, "the slow writer's file\n" + daemon.log_tail())
        waits = daemon.events("file_incomplete_waiting")
        assert all(w["reason"].startswith("truncated JPEG") for w in waits), waits
        assert decoded_size(outbox / "photo.jpg") == (192, 256)
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
    assert [p.name for p in outbox.iterdir()] == ["photo.jpg"]
    assert not failed.exists() or list(failed.iterdir()) == []
    assert not daemon.events("file_failed")
    assert len(daemon.events("file_processed")) == 1


def test_a_half_written_file_left_unchanged_longer_than_the_cap_fails_saying_its_writer_never_finished(
        tmp_path: Path) -> None:
    """With settle_max_backoff_seconds: 3, a half PNG that nobody finishes is waited for (1 s, 2 s, …) and
    fails once it has been unchanged for longer than 3 s, with a reason that says so."""
    config = write_config(tmp_path, [inbox_config(tmp_path, settle_max_backoff_seconds=3)])
    inbox, failed = tmp_path / "in", tmp_path / "in-failed"
    picture = make_image(Path("x.png"), (96, 128), 4)
    daemon = DaemonProcess(config)
    try:
        daemon.wait_ready()
        (inbox / "stalled.png").write_bytes(picture[: len(picture) // 2])
        daemon.wait_event("file_failed", timeout=60)
        assert len(daemon.events("file_incomplete_waiting")) >= 2
        reason = json.loads((failed / "stalled.png.error.json").read_text())["reason"]
        assert reason.startswith("truncated PNG (no IEND chunk)"), reason
        assert "longer than settle_max_backoff_seconds (3 s): the writer never finished it" in reason
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()


# -- two daemons on one inbox --------------------------------------------------------------------------------


def test_a_second_daemon_on_the_same_inbox_is_refused_naming_the_first_and_a_dead_one_s_claim_is_taken_over(
        tmp_path: Path) -> None:
    """A copied config with another state_dir points a second `srd run` at the same inbox: it exits 6 with
    a message naming the first (host, pid). A claim left by a SIGKILLed daemon on this host is taken over
    at once; one from another host with a fresh heartbeat refuses, with a stale one is taken over; a clean
    stop removes the claim."""
    config = write_config(tmp_path)
    copied = yaml.safe_load(config.read_text())
    copied["state_dir"] = str(tmp_path / "state-2")
    second_config = tmp_path / "copied.yaml"
    second_config.write_text(yaml.safe_dump(copied))
    claim = tmp_path / "in" / ".srd-claim.json"
    with running(config) as first:
        holder = json.loads(claim.read_text())
        assert holder["pid"] == first.pid and holder["host"] == socket.gethostname()
        second = srd("run", "--config", str(second_config), timeout=60)
        assert second.returncode == 6, second.stderr
        assert f"(pid {first.pid}, state_dir {tmp_path / 'state'})" in second.stderr
        assert socket.gethostname() in second.stderr and "Traceback" not in second.stderr
        (tmp_path / "in" / "a.png").write_bytes(make_image(Path("x.png"), SIZE, 1))
        wait_for(lambda: (tmp_path / "in-out" / "a.png").exists(), 30, "the first daemon to work on")
        first.kill()

    taker = DaemonProcess(second_config)  # the dead daemon's claim is stale at once on this host
    try:
        taker.wait_ready()
        assert taker.events("inbox_claim_taken_over")
        assert json.loads(claim.read_text())["pid"] == taker.pid
        assert taker.stop() == 0
    finally:
        if taker.proc.poll() is None:
            taker.proc.kill()
    assert not claim.exists()

    other_host = {"host": "nas-client-b", "pid": 4242, "instance": "x", "state_dir": "/srv/srd",
                  "heartbeat": time.time()}
    claim.write_text(json.dumps(other_host))
    refused = srd("run", "--config", str(config), timeout=60)
    assert refused.returncode == 6 and "host nas-client-b (pid 4242" in refused.stderr, refused.stderr
    claim.write_text(json.dumps({**other_host, "heartbeat": time.time() - 3600}))
    with running(config) as after_crash:
        assert json.loads(claim.read_text())["pid"] == after_crash.pid
        assert after_crash.stop() == 0


def test_a_file_over_max_input_bytes_is_failed_from_its_size_without_being_read(tmp_path: Path) -> None:
    """A 30 GB sparse file costs no disk and would take the hashing threads half a minute: it is failed from
    its size at once, with the reason, and a small file dropped beside it is processed without waiting."""
    config = write_config(tmp_path)
    inbox = tmp_path / "in"
    daemon = DaemonProcess(config)
    try:
        daemon.wait_ready()
        subprocess.run(["truncate", "-s", "30G", str(inbox / "huge.png")], check=True)
        (inbox / "small.png").write_bytes(make_image(Path("x.png"), SIZE, 1))
        failed = daemon.wait_event("file_failed", timeout=20)[0]
        daemon.wait_event("file_processed", timeout=20)
    finally:
        assert daemon.stop() == 0
    assert failed["src"] == str(inbox / "huge.png") and "max_input_bytes" in failed["reason"]
    report = json.loads((tmp_path / "in-failed" / "huge.png.error.json").read_text())
    assert "over the limit" in report["reason"]
    assert not daemon.events("file_skipped")


def test_a_claim_temp_left_by_a_daemon_killed_mid_heartbeat_is_removed_at_the_next_start(tmp_path: Path) -> None:
    """SIGKILL can land while the claim is being rewritten (its temp file exists for a moment): the next
    start removes what that left in the inbox (seen twice in 200 kills of the reliability loop)."""
    from srd.daemon.claim import CLAIM_NAME
    from srd.fs.atomic import TEMP_PREFIX

    config = write_config(tmp_path)
    leftover = tmp_path / "in" / f"{TEMP_PREFIX}{CLAIM_NAME}.0123456789ab"
    leftover.write_text("{}")
    daemon = DaemonProcess(config)
    try:
        daemon.wait_ready()
        assert not leftover.exists()
    finally:
        assert daemon.stop() == 0


def test_files_done_while_scans_run_leave_the_queue(tmp_path: Path) -> None:
    """A scan that looked at a file while its job ran queued it again; once the job was done that entry still counted
    as QUEUED until the whole batch ended (outside attack: QUEUED + RUNNING above the files left, and growing)."""
    config = write_config(tmp_path, stages=[{"upscale": {"model": "edsr-base", "scale": 2}}], reconcile_interval=1)
    outbox = tmp_path / "in-out"
    with running(config) as daemon:
        for i in range(4):
            (tmp_path / "in" / f"slow{i}.png").write_bytes(make_image(Path("x.png"), (160, 240), i))
        daemon.wait_event("file_started")
        seen = []
        while len(list(outbox.iterdir())) < 4:
            inbox = (read_status(tmp_path / "state").get("inboxes") or [{}])[0]
            left = 4 - len(list(outbox.iterdir()))
            seen.append((inbox.get("queued", 0) + inbox.get("in_flight", 0), left))
            assert daemon.proc.poll() is None
            time.sleep(0.2)
        assert all(counted <= left + 1 for counted, left in seen), seen  # + 1: the status file may lag an output
        assert daemon.stop() == 0


def test_the_backlog_holds_a_path_once_in_its_first_place_with_its_latest_look() -> None:
    backlog = Backlog()
    first, second, again = (ReadyFile(Path(name), FileVersion(size, 0, 1, 0))
                            for name, size in (("a", 1), ("b", 1), ("a", 2)))
    backlog.append(("in", first))
    backlog.append(("in", second))
    backlog.append(("in", again))
    assert len(backlog) == 2 and [ready for _, ready in backlog] == [again, second]
    backlog.appendleft(("in", second))
    assert backlog.popleft() == ("in", second) and backlog.popleft() == ("in", again) and len(backlog) == 0


@pytest.mark.parametrize("found", [Found.GONE, Found.INBOX_MISSING])
def test_a_read_that_failed_because_the_file_went_leaves_no_failure_recorded(tmp_path: Path, found: Found) -> None:
    """The inbox deleted (`rm -rf`) with jobs queued: each worker found nothing to read. The step that would move
    the file to the failed folder finds it gone, or its whole inbox: no fault of the file, so no `failed` entry may
    stay behind (it was kept when the inbox went too, counted as FAILED and listed by `ledger list` forever)."""
    with Ledger.open(tmp_path / "state") as ledger:
        entry = ledger.record_start("ab" * 32, "fp", inbox="in", source="a.png")
        ledger.record_failed(entry.key, error="cannot read: No such file or directory")
        ctx = Context(config=cast(Config, None), ledger=ledger, offload=cast(Offloader, None), clock=time.monotonic,
                      runtimes={})
        step = SourceStep(Action.FAIL, "in", tmp_path / "in", PurePosixPath("a.png"), FileVersion(1, 0, 1, 0),
                          tmp_path / "failed", entry.key, {"reason": "cannot read", "attempts": 1},
                          report_if_gone=False)
        Disposal(ctx).done(step, Done(StepToken(step), value=StepResult(found)))
        assert ledger.get(entry.key) is None
        assert ledger.counts().get("failed", 0) == 0
