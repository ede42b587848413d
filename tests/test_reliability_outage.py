"""Share outage: the inbox root disappears (as an unmounted NAS share does) and comes back."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemon_helpers import (
    DaemonProcess,
    files_under,
    inbox_config,
    make_image,
    read_status,
    srd,
    wait_for,
    write_config,
)
from reliability_harness import (
    image_bytes,
    make_layout,
    record_figures,
    scaled,
    status_of,
)

from srd.config.schema import MIN_CLAIM_STALE_S
from srd.daemon.claim import ClaimTiming

# End to end: each test runs a real srd daemon (srd run) on real folders.
pytestmark = pytest.mark.e2e


def _inbox_health(config: Path) -> tuple[str, str]:
    result = srd("status", "--json", "--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    inbox = json.loads(result.stdout)["inboxes"][0]
    return inbox["health"], inbox["watch"]


class NotifySocket:
    """An sd_notify socket collecting the daemon's datagrams in the background."""

    def __init__(self) -> None:
        self.name = f"srd-outage-{os.getpid()}-{random.randrange(1 << 30)}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name)
        self.sock.settimeout(0.05)
        self.messages: list[dict[str, str]] = []

    @property
    def env(self) -> dict[str, str]:
        return {"NOTIFY_SOCKET": "@" + self.name, "WATCHDOG_USEC": "1000000"}

    def drain(self) -> list[dict[str, str]]:
        while True:
            try:
                data = self.sock.recv(4096).decode()
            except (TimeoutError, BlockingIOError):
                return self.messages
            self.messages.append(dict(line.split("=", 1) for line in data.splitlines() if "=" in line))

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("mode", ["native", "poll"])
def test_an_inbox_that_vanishes_and_returns_pauses_then_catches_up(tmp_path: Path, mode: str) -> None:
    """The inbox root is renamed away (an unmounted share) and back, repeatedly: the daemon doesn't crash,
    `srd status` reports the inbox unhealthy/missing and sd_notify's STATUS names it while WATCHDOG=1 keeps
    coming (a restart wouldn't bring a share back); nothing is judged deleted or failed, nothing is
    processed twice, and files that arrived during each outage are processed once it returns."""
    layout = make_layout(tmp_path, inbox={"mode": mode, "poll_interval": 0.2, "settle_seconds": 0.2})
    inbox, away = layout.inbox, tmp_path / "in.unmounted"
    notify = NotifySocket()
    daemon = DaemonProcess(layout.config, env=notify.env)
    expected: set[str] = set()
    try:
        daemon.wait_ready()
        for i in range(3):
            (inbox / f"before{i}.png").write_bytes(image_bytes(".png", (24, 32), i))
            expected.add(f"before{i}.png")
        daemon.wait_event("file_processed", count=3)
        for outage in range(scaled(2, 10)):
            # Files still settling or queued when the share goes away must wait, not fail.
            for i in range(3):
                name = f"edge{outage}-{i}.png"
                (inbox / name).write_bytes(image_bytes(".png", (500, 700), 100 * outage + i))
                expected.add(name)
            wait_for(lambda: (s := status_of(layout)) is not None and s["pool"]["running"] > 0, 10, "a job to run")
            inbox.rename(away)
            wait_for(lambda: _inbox_health(layout.config) == ("unhealthy", "missing"), 15,
                     "srd status to report the inbox missing\n" + daemon.log_tail())
            notify.drain()
            seen_before = len(notify.messages)
            for i in range(2):  # arriving on the share while it is unmounted here
                name = f"during{outage}-{i}.png"
                (away / name).write_bytes(image_bytes(".png", (24, 32), 1000 + 100 * outage + i))
                expected.add(name)
            # WATCHDOG_USEC is 1 s: a daemon that keeps pinging through the outage does so within half of it.
            wait_for(lambda start=seen_before: any(m.get("WATCHDOG") == "1" for m in notify.drain()[start:]), 10,
                     "WATCHDOG=1 during the outage\n" + daemon.log_tail())
            assert any("inbox unavailable: in" in m.get("STATUS", "") for m in notify.messages), notify.messages
            assert daemon.proc.poll() is None
            away.rename(inbox)
            wait_for(lambda: _inbox_health(layout.config) == ("ok", "watching" if mode == "native" else "polling"),
                     15, "srd status to report the inbox back\n" + daemon.log_tail())
            wait_for(lambda: set(files_under(layout.outbox)) == expected, 30,
                     f"outputs for {sorted(expected - set(files_under(layout.outbox)))}\n" + daemon.log_tail())
        time.sleep(0.5)
        assert daemon.stop() == 0
    finally:
        notify.close()
        if daemon.proc.poll() is None:
            daemon.proc.kill()
    processed = [Path(e["src"]).name for e in daemon.events("file_processed")]
    assert sorted(processed) == sorted(expected), "a file was processed twice or not at all"
    assert daemon.events("file_failed") == [] and files_under(layout.failed) == {}
    assert daemon.events("duplicate") == []
    assert all((inbox / name).exists() for name in expected), "an input went missing"
    from srd.ledger import Ledger

    with Ledger.open(layout.state) as ledger:
        entries = list(ledger.entries())
    assert sorted(e.state.value for e in entries) == ["done"] * len(expected)
    assert [e.source for e in entries if e.disposition != "kept"] == [], "a source was judged gone"
    status = status_of(layout)
    assert status is not None and status["inboxes"][0]["failed"] == 0
    record_figures("outage", mode=mode, outages=outage + 1, files=len(expected),
                   arrived_during_outages=sum(1 for n in expected if n.startswith("during")),
                   written_just_before_outages=sum(1 for n in expected if n.startswith("edge")), processed_twice=0,
                   failed=0)


@pytest.mark.parametrize("mode", ["native", "poll"])
def test_an_unmounted_share_reads_as_an_outage_and_is_watched_again_when_remounted(tmp_path: Path, mode: str) -> None:
    """The inbox is a mount point (a share bind-mounted there) that is unmounted, leaving the empty
    mount-point folder, and mounted again: the empty folder is reported as the inbox missing (not as an
    inbox whose files all left), and once the share is back both the files that arrived on it meanwhile
    and new ones are processed promptly, without waiting for the periodic reconcile scan."""
    if os.geteuid() != 0:
        pytest.skip("bind-mounting a share needs root (CI runs as root)")
    layout = make_layout(tmp_path, inbox={"mode": mode, "poll_interval": 0.2, "settle_seconds": 0.2})
    share = tmp_path / "share"
    share.mkdir()
    subprocess.run(["mount", "--bind", str(share), str(layout.inbox)], check=True)
    daemon = DaemonProcess(layout.config)
    try:
        daemon.wait_ready()
        (layout.inbox / "before.png").write_bytes(image_bytes(".png", (24, 32), 1))
        daemon.wait_event("file_processed")
        subprocess.run(["umount", str(layout.inbox)], check=True)
        wait_for(lambda: _inbox_health(layout.config) == ("unhealthy", "missing"), 15,
                 "srd status to report the unmounted share\n" + daemon.log_tail())
        (share / "during.png").write_bytes(image_bytes(".png", (24, 32), 2))
        subprocess.run(["mount", "--bind", str(share), str(layout.inbox)], check=True)
        wait_for(lambda: (layout.outbox / "during.png").exists(), 10,
                 "the file that arrived during the outage\n" + daemon.log_tail())
        (layout.inbox / "after.png").write_bytes(image_bytes(".png", (24, 32), 3))
        wait_for(lambda: (layout.outbox / "after.png").exists(), 10, "a file arriving after the return\n"
                 + daemon.log_tail())
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
        subprocess.run(["umount", str(layout.inbox)], check=False, capture_output=True)
    assert sorted(Path(e["src"]).name for e in daemon.events("file_processed")) == ["after.png", "before.png",
                                                                                    "during.png"]
    assert daemon.events("file_failed") == [] and files_under(layout.failed) == {}


HANGFS = Path(__file__).with_name("hangfs.py")


class HangingShare:
    """A real FUSE mount of `backing` at `mount` whose server stops answering the calls `rules` name while
    held (see hangfs.py); at exit it is let go and unmounted, so nothing stays hung."""

    def __init__(self, tmp_path: Path, *rules: str) -> None:
        self.backing = tmp_path / "share-backing"
        self.mount = tmp_path / "share"
        self._hold = tmp_path / "share-hold"
        self.backing.mkdir()
        self.mount.mkdir()
        self.proc = subprocess.Popen([sys.executable, str(HANGFS), str(self.backing), str(self.mount),
                                      str(self._hold), *rules], stderr=subprocess.PIPE, text=True)
        wait_for(lambda: os.path.ismount(self.mount), 20, "the FUSE share to mount")

    def hold(self) -> None:
        self._hold.touch()

    def release(self) -> None:
        self._hold.unlink(missing_ok=True)

    def __enter__(self) -> HangingShare:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        subprocess.run(["fusermount3", "-u", str(self.mount)], check=False, capture_output=True, timeout=30)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            subprocess.run(["fusermount3", "-uz", str(self.mount)], check=False, capture_output=True, timeout=30)


def _write_image(path: Path, *, seed: int) -> None:
    path.write_bytes(make_image(path, seed=seed))


def _local_inbox_keeps_working(tmp_path: Path, daemon: DaemonProcess, notify: NotifySocket, first: int) -> None:
    """Three files dropped into the local inbox are processed, status.json changes and WATCHDOG=1 is heard."""
    notify.drain()
    heard_before = len(notify.messages)
    status_before = read_status(tmp_path / "state")["updated_at"]
    for n in range(first, first + 3):
        _write_image(tmp_path / "local" / f"local{n}.png", seed=10 + n)
    wait_for(lambda: len(files_under(tmp_path / "local-out")) == first + 3, 60,
             "the local inbox's files while the share hangs\n" + daemon.log_tail())
    wait_for(lambda: read_status(tmp_path / "state")["updated_at"] != status_before, 10, "status.json to change")
    wait_for(lambda: any(m.get("WATCHDOG") == "1" for m in notify.drain()[heard_before:]), 10, "WATCHDOG=1")


@pytest.mark.skipif(not Path("/dev/fuse").exists() or shutil.which("fusermount3") is None,
                    reason="needs FUSE (/dev/fuse and fusermount3) to make a share that stops answering")
def test_a_share_that_stops_answering_stalls_only_its_own_files(tmp_path: Path) -> None:
    """An inbox on a share whose server stops answering (a real FUSE mount whose calls never return) holds
    up its own files only. While srd's delete of a processed source hangs there, and later while its
    settle stat of a new file hangs, the local inbox's files are still processed, status.json is still
    rewritten and systemd's watchdog still hears WATCHDOG=1; when the share answers again, the delete
    completes and is journaled and the new file is processed. With those calls on the loop thread, the
    whole daemon waited with the share."""
    notify = NotifySocket()
    with HangingShare(tmp_path, "unlink:hang", "getattr:stall") as share:
        # Native mode: inotify reports the writes made through this mount, so srd's settle stats are what
        # meet the hang (a poll scanner would meet it first, in its own thread).
        remote = inbox_config(share.mount, "in", mode="native", on_success="delete", settle_seconds=2,
                              outbox=str(tmp_path / "remote-out"), failed=str(tmp_path / "remote-failed"))
        local = inbox_config(tmp_path, "local")
        config = write_config(tmp_path, [remote, local])
        daemon = DaemonProcess(config, env=notify.env)
        try:
            daemon.wait_ready(60)
            share.hold()
            _write_image(share.mount / "in" / "hang.png", seed=1)  # processed, then its delete hangs
            wait_for(lambda: (tmp_path / "remote-out" / "hang.png").exists(), 60,
                     "the share's file to be processed\n" + daemon.log_tail())
            time.sleep(1.0)
            _local_inbox_keeps_working(tmp_path, daemon, notify, 0)
            assert (share.backing / "in" / "hang.png").exists(), "the delete did not hang: the test proves nothing"
            share.release()
            wait_for(lambda: not (share.backing / "in" / "hang.png").exists(), 60, "the delete to complete")

            _write_image(share.mount / "in" / "stall.png", seed=2)
            share.hold()  # srd's stats of it hang now: its confirming settle stat, 2 s on, at least
            time.sleep(3.0)
            _local_inbox_keeps_working(tmp_path, daemon, notify, 3)
            assert not (tmp_path / "remote-out" / "stall.png").exists(), "the stat did not hang: it proves nothing"
            share.release()
            wait_for(lambda: (tmp_path / "remote-out" / "stall.png").exists(), 60,
                     "the stalled file to be processed once the share answers\n" + daemon.log_tail())
            assert daemon.stop() == 0
            listed = srd("ledger", "list", "--json", "--config", str(config))
            assert listed.returncode == 0, listed.stderr
            entries = [json.loads(line) for line in listed.stdout.splitlines()]
            dispositions = {Path(e["source"]).name: e.get("disposition") for e in entries}
            assert dispositions == {"hang.png": "deleted", "stall.png": "deleted", **{
                f"local{n}.png": "kept" for n in range(6)}}, dispositions
        finally:
            share.release()  # a process waiting on the share can't die until it answers
            if daemon.proc.poll() is None:
                daemon.kill(group=True)
            notify.close()


@pytest.mark.skipif(not Path("/dev/fuse").exists() or shutil.which("fusermount3") is None,
                    reason="needs FUSE (/dev/fuse and fusermount3) to make a share that stops answering")
def test_a_share_hung_for_longer_than_a_claim_lease_holds_up_only_its_own_inbox(tmp_path: Path) -> None:
    """Every call on the share hangs, for longer than a claim's lease (lease_s): the share's inbox pauses,
    but the local inbox keeps its claim and its files are processed, and `srd status --config` answers
    (it looks at nothing but the state_dir). Once the share answers, the daemon stops cleanly. With all
    claims confirmed by one heartbeat call, the hung share's claim held up every inbox's after 30 s."""
    notify = NotifySocket()
    with HangingShare(tmp_path, "*:") as share:
        remote = inbox_config(share.mount, "in", outbox=str(tmp_path / "remote-out"),
                              failed=str(tmp_path / "remote-failed"))
        timing = ClaimTiming(MIN_CLAIM_STALE_S)  # the same behaviour as at the default, in a sixth of the time
        config = write_config(tmp_path, [remote, inbox_config(tmp_path, "local")], claim_stale_seconds=timing.stale_s)
        daemon = DaemonProcess(config, env=notify.env)
        try:
            daemon.wait_ready(60)
            share.hold()
            time.sleep(timing.lease_s + 3.0)
            _local_inbox_keeps_working(tmp_path, daemon, notify, 0)
            started = time.monotonic()
            status = srd("status", "--config", str(config), timeout=30)
            assert time.monotonic() - started < 15, "srd status waited on the hung share"
            assert status.returncode == 0, status.stdout + status.stderr
            health = {Path(i["path"]).name: i["health"] for i in read_status(tmp_path / "state")["inboxes"]}
            assert health == {"in": "unhealthy", "local": "ok"}, health
            share.release()
            assert daemon.stop() == 0
        finally:
            share.release()  # a process waiting on the share can't exit until it answers
            if daemon.proc.poll() is None:
                daemon.kill(group=True)
            notify.close()
