"""The daemon end to end: a real `srd run` subprocess, real files, the real zoo ESPCN ×2 model."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import socket
import time
from concurrent.futures import Executor, Future
from datetime import UTC, datetime
from pathlib import Path, PurePath

import pytest
import structlog
import yaml
from daemon_helpers import (
    ESPCN_X2,
    DaemonProcess,
    OutboxWatcher,
    animation,
    decoded_size,
    descendants_of,
    files_under,
    in_flight,
    inbox_config,
    make_image,
    read_status,
    running,
    srd,
    wait_for,
    write_config,
)

from srd.config import load_config
from srd.daemon.loop import Daemon
from srd.daemon.notify import Notifier
from srd.daemon.offload import Done
from srd.daemon.scan import IgnoreRules, scan_folders
from srd.daemon.status import Health, assess
from srd.daemon.watch import FoundFiles, Hint
from srd.engine.pipeline import StageContext
from srd.executors.job import Content, Job, JobResult
from srd.executors.pool import JobPool
from srd.executors.render import run_job
from srd.fs import safefs
from srd.fs.atomic import is_temp_name
from srd.fs.fileversion import FileVersion
from srd.fs.outputmark import marked_for

# End to end: each test runs a real srd daemon (srd run) on real folders.
pytestmark = pytest.mark.e2e

SIZE = (24, 32)
DOUBLED = (48, 64)


def ledger_entries(config: Path) -> list[dict]:
    result = srd("ledger", "list", "--json", "--config", str(config))
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def assert_outputs(outbox: Path, expected: set[str]) -> None:
    """Exactly the expected names (no suffixed copies, no temps), each a decodable 2× image."""
    found = files_under(outbox)
    assert set(found) == expected
    for rel, path in found.items():
        assert decoded_size(path) == DOUBLED, rel


def test_files_arriving_every_way_come_out_exactly_once_and_never_partial(tmp_path: Path) -> None:
    """Files written slowly in place, rsync-style temp+rename, moved in, in a folder moved in, and in a
    polled inbox each produce exactly one complete 2× output; an outbox reader never sees a partial file."""
    native = inbox_config(tmp_path, "in", mode="native")
    polled = inbox_config(tmp_path, "nas", mode="poll")
    config = write_config(tmp_path, [native, polled])
    inbox, nas = Path(native["path"]), Path(polled["path"])
    staging = tmp_path / "staging"
    staging.mkdir()
    expected_in = {f"slow{i}.png" for i in range(4)} | {f"rsync{i}.jpg" for i in range(4)} \
        | {f"moved{i}.png" for i in range(4)} | {f"album/sub/pic{i}.png" for i in range(4)}
    expected_nas = {f"nas{i}.png" for i in range(3)} | {f"nasmv{i}.jpg" for i in range(3)}
    watchers = [OutboxWatcher(Path(native["outbox"]), expected_in), OutboxWatcher(Path(polled["outbox"]), expected_nas)]
    daemon = DaemonProcess(config)
    try:
        daemon.wait_ready()
        # Written in place in three chunks, each gap shorter than settle_seconds.
        slow = [(inbox / f"slow{i}.png", make_image(Path("x.png"), SIZE, i)) for i in range(4)]
        handles = [(path.open("wb"), data) for path, data in slow]
        for part in range(3):
            for fh, data in handles:
                third = len(data) // 3
                fh.write(data[part * third: None if part == 2 else (part + 1) * third])
                fh.flush()
            time.sleep(0.1)
        for fh, _ in handles:
            fh.close()
        # rsync style: a dot-temp file renamed into place.
        for i in range(4):
            tmp = inbox / f".rsync{i}.jpg.Xy12ab"
            tmp.write_bytes(make_image(Path("x.jpg"), SIZE, 10 + i))
            tmp.rename(inbox / f"rsync{i}.jpg")
        # Moved in from elsewhere on the same filesystem, and a whole folder moved in.
        for i in range(4):
            (staging / f"moved{i}.png").write_bytes(make_image(Path("x.png"), SIZE, 20 + i))
            (staging / f"moved{i}.png").rename(inbox / f"moved{i}.png")
        (staging / "album" / "sub").mkdir(parents=True)
        for i in range(4):
            (staging / "album" / "sub" / f"pic{i}.png").write_bytes(make_image(Path("x.png"), SIZE, 30 + i))
        (staging / "album").rename(inbox / "album")
        # The polled inbox: written in place, and moved in.
        for i in range(3):
            (nas / f"nas{i}.png").write_bytes(make_image(Path("x.png"), SIZE, 40 + i))
            (staging / f"nasmv{i}.jpg").write_bytes(make_image(Path("x.jpg"), SIZE, 50 + i))
            (staging / f"nasmv{i}.jpg").rename(nas / f"nasmv{i}.jpg")

        total = len(expected_in) + len(expected_nas)
        daemon.wait_event("file_processed", timeout=60, count=total)
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
        problems = [p for w in watchers for p in w.stop()]
    assert problems == []
    assert_outputs(Path(native["outbox"]), expected_in)
    assert_outputs(Path(polled["outbox"]), expected_nas)
    processed = [e["src"] for e in daemon.events("file_processed")]
    assert len(processed) == len(set(processed)) == total
    entries = ledger_entries(config)
    assert sorted(e["state"] for e in entries) == ["done"] * total


def test_restart_and_rename_process_nothing_again_but_a_profile_change_does(tmp_path: Path) -> None:
    """The ledger keys on content + pipeline: a restart or a renamed input does no new work; a changed
    profile (an added sharpen stage) reprocesses every input, rewriting srd's own outputs in place."""
    config = write_config(tmp_path)
    inbox, outbox = tmp_path / "in", tmp_path / "in-out"
    for i in range(3):
        (inbox / f"img{i}.png").write_bytes(make_image(Path("x.png"), SIZE, i))
    daemon = DaemonProcess(config)
    daemon.wait_event("file_processed", count=3)
    assert daemon.stop() == 0
    first = {name: path.read_bytes() for name, path in files_under(outbox).items()}
    assert set(first) == {"img0.png", "img1.png", "img2.png"}

    daemon = DaemonProcess(config)
    daemon.wait_ready()
    (inbox / "img0.png").rename(inbox / "renamed.png")
    duplicate = daemon.wait_event("duplicate")[0]
    assert duplicate["src"].endswith("renamed.png")
    assert daemon.stop() == 0
    assert daemon.events("file_processed") == []
    assert {n: p.read_bytes() for n, p in files_under(outbox).items()} == first

    sharper = [{"upscale": {"model": str(ESPCN_X2), "scale": 2}}, {"sharpen": {"amount": 1.0}}]
    write_config(tmp_path, stages=sharper)
    daemon = DaemonProcess(config)
    daemon.wait_event("file_processed", count=3)
    assert daemon.stop() == 0
    after = files_under(outbox)
    assert set(after) == {"img0.png", "img1.png", "img2.png", "renamed.png"}
    for name in ("img1.png", "img2.png"):
        assert after[name].read_bytes() != first[name]  # same name, rewritten with the new profile
    assert len(daemon.events("file_processed")) == 3


def test_sigkill_at_random_moments_leaves_exactly_one_output_per_file(tmp_path: Path) -> None:
    """Killing the daemon (and with it its workers) mid-batch, repeatedly, loses nothing and duplicates
    nothing: after restarts every input has one complete output, the ledger agrees, no temp file remains.

    max_attempts is raised because each kill may count an attempt for the jobs then running.
    """
    config = write_config(tmp_path, workers=2, max_attempts=10)
    inbox, outbox = tmp_path / "in", tmp_path / "in-out"
    names = {f"photo{i:02d}.jpg" for i in range(30)}
    for i, name in enumerate(sorted(names)):
        (inbox / name).write_bytes(make_image(Path(name), (300, 400), i))
    rng = random.Random(1234)
    done_before_kill = []
    for _ in range(3):
        daemon = DaemonProcess(config)
        daemon.wait_event("file_processed")  # mid-batch: jobs are running and outputs being written
        time.sleep(rng.uniform(0.0, 0.3))  # the random moment of the crash
        daemon.kill()
        done_before_kill.append(len(files_under(outbox)))
    assert 0 < done_before_kill[0] < len(names), done_before_kill
    daemon = DaemonProcess(config)
    wait_for(lambda: set(files_under(outbox)) >= names, 60, "all outputs\n" + daemon.log_tail())
    wait_for(lambda: read_status(tmp_path / "state").get("ledger", {}).get("done") == 30,
             20, "the ledger to record all 30")
    assert daemon.stop() == 0
    found = files_under(outbox)
    assert set(found) == names
    for path in found.values():
        assert decoded_size(path) == (600, 800)
    entries = ledger_entries(config)
    assert len(entries) == 30 and {e["state"] for e in entries} == {"done"}
    assert {Path(e["output"]).name for e in entries} == names
    leftovers = [p for p in tmp_path.rglob("*") if is_temp_name(p.name)]
    assert leftovers == []


def test_a_retry_after_a_crash_reuses_the_output_name_the_crashed_attempt_wrote(tmp_path: Path) -> None:
    """The worker wrote the output but the daemon died before journaling `done`: the retry writes the
    same name again (reserved in the ledger's start record) instead of a suffixed second copy."""
    from srd.config import load_config
    from srd.daemon.loop import check_profiles
    from srd.ledger import Ledger

    config = write_config(tmp_path)
    inbox, outbox = tmp_path / "in", tmp_path / "in-out"
    data = make_image(Path("x.png"), SIZE, 9)
    (inbox / "crash.png").write_bytes(data)
    outbox.mkdir()
    (outbox / "crash.png").write_bytes(make_image(Path("x.png"), DOUBLED, 9))  # the crashed attempt's output
    loaded = load_config(config)
    fingerprint = check_profiles(loaded)["test"].fingerprint
    sha = hashlib.sha256(data).hexdigest()
    with Ledger.open(loaded.state_dir) as ledger:
        ledger.record_start(sha, fingerprint, inbox=str(inbox), source="crash.png", target=outbox / "crash.png")
    daemon = DaemonProcess(config)
    daemon.wait_event("file_processed")
    assert daemon.stop() == 0
    assert set(files_under(outbox)) == {"crash.png"}
    entry, = ledger_entries(config)
    assert entry["state"] == "done" and entry["attempts"] == 2 and entry["output"] == str(outbox / "crash.png")


@pytest.mark.parametrize("first", ["copy.png", "crash.png"])
def test_a_copy_made_while_a_crash_cut_a_job_short_never_takes_the_reserved_name(tmp_path: Path, first: str) -> None:
    """The daemon died while crash.png ran; while it was down, the same bytes arrived as copy.png. Whichever is
    taken first at the restart, the name reserved for crash.png stays crash.png's: copy.png gets its own output
    (a link here, `duplicates: link`), and nothing gets a suffixed name (outside attack, session 11)."""
    from srd.daemon.loop import check_profiles
    from srd.ledger import Ledger

    inbox, outbox = tmp_path / "in", tmp_path / "in-out"
    loaded = load_config(write_config(tmp_path, [inbox_config(tmp_path, duplicates="link")]))
    data = make_image(Path("x.png"), SIZE, 9)
    with Ledger.open(loaded.state_dir) as ledger:
        ledger.record_start(hashlib.sha256(data).hexdigest(), check_profiles(loaded)["test"].fingerprint,
                            inbox=str(inbox), source="crash.png", target=outbox / "crash.png")
    for name in ("crash.png", "copy.png"):
        (inbox / name).write_bytes(data)
    daemon, now = inline_daemon(tmp_path, duplicates="link")
    try:
        settle(daemon, now, [inbox / first])
        settle(daemon, now, [inbox / ({"copy.png", "crash.png"} - {first}).pop()])
    finally:
        daemon.close()
    assert set(files_under(outbox)) == {"copy.png", "crash.png"}
    assert decoded_size(outbox / "copy.png") == decoded_size(outbox / "crash.png") == DOUBLED


def test_ledger_list_and_show_work_while_the_daemon_runs_and_changes_are_refused(tmp_path: Path) -> None:
    """Admins inspect a running daemon's ledger; `forget` (a change) needs the daemon stopped and says so."""
    config = write_config(tmp_path)
    daemon = DaemonProcess(config)
    try:
        daemon.wait_ready()
        (tmp_path / "in" / "a.png").write_bytes(make_image(Path("a.png"), SIZE, 1))
        daemon.wait_event("file_processed")
        entry, = ledger_entries(config)
        assert entry["state"] == "done" and entry["source"] == "a.png"
        shown = srd("ledger", "show", entry["key"][:12], "--config", str(config))
        assert shown.returncode == 0 and json.loads(shown.stdout)["key"] == entry["key"]
        forget = srd("ledger", "forget", entry["key"], "--config", str(config))
        assert forget.returncode != 0 and "stop it first" in forget.stderr
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
    assert ledger_entries(config)[0]["state"] == "done"


def test_a_killed_worker_costs_one_attempt_and_the_job_completes(tmp_path: Path) -> None:
    """SIGKILL of a worker process mid-job (as the OOM killer would): the pool is rebuilt and the file is
    retried and processed; the daemon keeps running."""
    config = write_config(tmp_path)
    inbox, outbox = tmp_path / "in", tmp_path / "in-out"
    daemon = DaemonProcess(config)
    try:
        daemon.wait_ready()
        (inbox / "big.jpg").write_bytes(make_image(Path("big.jpg"), (1500, 2000), 7))  # ~2.5 s of work
        wait_for(lambda: in_flight(tmp_path / "state") == 1, 20, "the job to start")
        # Workers are the daemon's grandchildren (daemon → forkserver → workers).
        forkserver_children = wait_for(
            lambda: [p for p in descendants_of(daemon.pid) if p not in _children(daemon.pid)], 10, "a worker")
        for pid in forkserver_children:
            os.kill(pid, signal.SIGKILL)
        lost = daemon.wait_event("job_lost_retrying")[0]
        assert lost["src"].endswith("big.jpg") and lost["attempts"] == 1
        daemon.wait_event("file_processed", timeout=60)
        assert daemon.proc.poll() is None
        assert decoded_size(outbox / "big.jpg") == (3000, 4000)
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
    entry, = ledger_entries(config)
    assert entry["state"] == "done" and entry["attempts"] == 2


def _children(pid: int) -> set[int]:
    return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def test_corrupt_image_goes_to_failed_folder_with_reason_and_the_rest_proceed(tmp_path: Path) -> None:
    """A corrupt file is moved out of the inbox into failed/ with <name>.error.json; good files around it
    are processed and the daemon stays up. (The truncated file is waited for, in case its writer resumes,
    until it has been unchanged for settle_max_backoff_seconds.)"""
    config = write_config(tmp_path, [inbox_config(tmp_path, settle_max_backoff_seconds=1)])
    inbox, failed = tmp_path / "in", tmp_path / "in-failed"
    (inbox / "good0.png").write_bytes(make_image(Path("x.png"), SIZE, 0))
    (inbox / "broken.jpg").write_bytes(make_image(Path("x.jpg"), SIZE, 1)[:200])
    (inbox / "good1.png").write_bytes(make_image(Path("x.png"), SIZE, 2))
    daemon = DaemonProcess(config)
    try:
        daemon.wait_event("file_processed", count=2)
        failure = daemon.wait_event("file_failed")[0]
        assert failure["src"].endswith("broken.jpg")
        assert not (inbox / "broken.jpg").exists()
        assert (failed / "broken.jpg").read_bytes() == make_image(Path("x.jpg"), SIZE, 1)[:200]
        report = json.loads((failed / "broken.jpg.error.json").read_text())
        assert "truncated" in report["reason"] and report["attempts"] == 1
        assert daemon.proc.poll() is None
        (inbox / "good2.png").write_bytes(make_image(Path("x.png"), SIZE, 3))
        daemon.wait_event("file_processed", count=3)
        status = srd("status", "--json", "--config", str(config))
        assert status.returncode == 0 and json.loads(status.stdout)["inboxes"][0]["failed"] == 1, status.stdout
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
    stopped = srd("status", "--config", str(config))
    assert stopped.returncode == 3 and "not running" in stopped.stdout
    # With the daemon stopped, the ledger can be edited: retry the failure, then forget it.
    prefix = report["sha256"][:12]
    assert "broken.jpg" in srd("ledger", "list", "--state", "failed", "--config", str(config)).stdout
    assert srd("ledger", "retry", prefix, "--config", str(config)).returncode == 0
    shown = srd("ledger", "show", prefix, "--config", str(config))
    assert json.loads(shown.stdout)["state"] == "retry"
    assert srd("ledger", "forget", prefix, "--config", str(config)).returncode == 0
    assert [e["state"] for e in ledger_entries(config)] == ["done"] * 3


def _receive(sock: socket.socket, wanted: str, timeout: float = 20) -> list[dict[str, str]]:
    """Collect sd_notify datagrams until one contains `wanted` (e.g. 'READY=1'); return them all."""
    got: list[dict[str, str]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(4096).decode()
        except TimeoutError:
            break
        fields = dict(line.split("=", 1) for line in data.splitlines() if "=" in line)
        got.append(fields)
        key, _, value = wanted.partition("=")
        if fields.get(key) == value:
            return got
    raise AssertionError(f"no {wanted} among {got}")


def test_sd_notify_lifecycle_and_a_broken_reload_keeps_the_running_config(tmp_path: Path) -> None:
    """On a real notify socket: more start-up time asked while the ledger opens, READY=1 with STATUS,
    WATCHDOG=1, RELOADING=1 + MONOTONIC_USEC then READY=1 on SIGHUP, STOPPING=1 on SIGTERM. A valid reload
    applies at once (a changed profile reprocesses a kept input); a SIGHUP with an invalid config is rejected
    and processing goes on with the old one."""
    config = write_config(tmp_path)
    inbox = tmp_path / "in"
    name = f"srd-test-{os.getpid()}-{random.randrange(1 << 30)}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    daemon = DaemonProcess(config, env={"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "2000000"})
    try:
        *starting, ready = _receive(sock, "READY=1")
        assert "STATUS" in ready
        # Opening the ledger asks systemd for more start-up time (a big one's migration outlasts 90 s).
        assert starting[0]["STATUS"] == "opening the ledger (0 s)" and int(starting[0]["EXTEND_TIMEOUT_USEC"]) > 0
        _receive(sock, "WATCHDOG=1", timeout=5)
        (inbox / "before.png").write_bytes(make_image(Path("x.png"), SIZE, 4))
        daemon.wait_event("file_processed")
        first_output = (tmp_path / "in-out" / "before.png").read_bytes()

        # A valid reload with a changed profile applies at once: the kept input is processed again.
        write_config(tmp_path, stages=[{"upscale": {"model": str(ESPCN_X2), "scale": 2}}, {"sharpen": {}}])
        daemon.proc.send_signal(signal.SIGHUP)
        reload = _receive(sock, "RELOADING=1")[-1]
        assert int(reload["MONOTONIC_USEC"]) > 0
        _receive(sock, "READY=1")
        daemon.wait_event("config_reloaded")
        daemon.wait_event("file_processed", count=2)
        assert (tmp_path / "in-out" / "before.png").read_bytes() != first_output

        good = config.read_text()
        broken = yaml.safe_load(good)
        broken["inboxes"][0]["profile"] = "no-such-profile"
        broken["workers"] = 0
        config.write_text(yaml.safe_dump(broken))
        daemon.proc.send_signal(signal.SIGHUP)
        _receive(sock, "RELOADING=1")
        after = _receive(sock, "READY=1")[-1]
        assert "reload rejected" in after.get("STATUS", "")
        rejected = daemon.wait_event("config_reload_rejected")[0]
        assert len(rejected["problems"]) == 2
        (inbox / "after.png").write_bytes(make_image(Path("x.png"), SIZE, 5))
        daemon.wait_event("file_processed", count=3)
        assert decoded_size(tmp_path / "in-out" / "after.png") == DOUBLED

        daemon.proc.send_signal(signal.SIGTERM)
        _receive(sock, "STOPPING=1")
        assert daemon.proc.wait(timeout=30) == 0
    finally:
        sock.close()
        if daemon.proc.poll() is None:
            daemon.proc.kill()


def test_second_instance_on_the_same_state_dir_is_refused(tmp_path: Path) -> None:
    """Only one daemon may own a state directory: a second `srd run` exits non-zero and names the first."""
    config = write_config(tmp_path)
    daemon = DaemonProcess(config)
    try:
        daemon.wait_ready()
        second = srd("run", "--config", str(config))
        assert second.returncode == 6
        assert f"in use by another srd instance (pid {daemon.pid})" in second.stderr
        assert daemon.proc.poll() is None
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()


def test_a_kept_source_costs_two_journal_records_with_its_disposition_in_the_done_record(tmp_path: Path) -> None:
    """With on_success keep (the default) nothing is done to the source, so its disposition rides in the
    `done` record: a job is journaled (and fsynced) as `start` + `done`, not `start` + `done` + `disposed`."""
    config = write_config(tmp_path)
    (tmp_path / "in" / "kept.png").write_bytes(make_image(Path("x.png"), SIZE, 1))
    daemon = DaemonProcess(config)
    try:
        daemon.wait_event("file_processed")
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
    puts = [json.loads(line)["entry"] for line in (tmp_path / "state" / "journal.jsonl").read_text().splitlines()
            if json.loads(line)["op"] == "put"]
    assert [(p["state"], p["disposition"]) for p in puts] == [("started", None), ("done", "kept")]


def test_sources_are_archived_or_deleted_and_name_collisions_get_a_suffix(tmp_path: Path) -> None:
    """on_success archive moves the source (subfolders mirrored); an outbox name srd didn't write is
    kept and the output gets `name-1`; delete removes the source after its output is durable."""
    archive_inbox = inbox_config(tmp_path, "arch", on_success="archive", archive=str(tmp_path / "archived"))
    delete_inbox = inbox_config(tmp_path, "del", on_success="delete")
    config = write_config(tmp_path, [archive_inbox, delete_inbox])
    (tmp_path / "arch-out").mkdir()
    (tmp_path / "arch-out" / "a.png").write_bytes(b"the user's own file")
    (tmp_path / "arch" / "sub").mkdir()
    (tmp_path / "arch" / "a.png").write_bytes(make_image(Path("x.png"), SIZE, 1))
    (tmp_path / "arch" / "sub" / "b.png").write_bytes(make_image(Path("x.png"), SIZE, 2))
    (tmp_path / "del" / "c.png").write_bytes(make_image(Path("x.png"), SIZE, 3))
    daemon = DaemonProcess(config)
    try:
        daemon.wait_event("file_processed", count=3)
        wait_for(lambda: not (tmp_path / "del" / "c.png").exists(), 10, "the deleted source")
        wait_for(lambda: (tmp_path / "archived" / "sub" / "b.png").exists(), 10, "the archived source")
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
    assert (tmp_path / "arch-out" / "a.png").read_bytes() == b"the user's own file"
    assert decoded_size(tmp_path / "arch-out" / "a-1.png") == DOUBLED
    assert decoded_size(tmp_path / "arch-out" / "sub" / "b.png") == DOUBLED
    assert (tmp_path / "archived" / "a.png").exists() and not (tmp_path / "arch" / "a.png").exists()
    assert decoded_size(tmp_path / "del-out" / "c.png") == DOUBLED
    dispositions = sorted(e["disposition"] for e in ledger_entries(config))
    assert dispositions == ["archived", "archived", "deleted"]


# -- the loop driven in-process: fake clock, inline executor, no watcher threads, no sleeping -------------


class QuietWatcher:
    """Stands in for InboxWatcher: the test delivers hints itself."""

    def __init__(self, index: int, inbox, sink) -> None:
        self.index, self.inbox, self.root = index, inbox, inbox.path
        self.mode, self.degraded, self.healthy, self.state = "native", None, True, "watching"
        self.root_error, self.unreadable = None, {}
        self.events_lost = 0

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def supervise(self) -> None: ...
    def request_scan(self) -> None: ...


class InlineExecutor(Executor):
    """Runs each job at submit time in this process, so a test sees outcomes on the next step."""

    def __init__(self, run) -> None:
        self._run = run

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[override]
        future: Future = Future()
        future.set_running_or_notify_cancel()
        future.set_result(self._run(args[0]))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass


class InlineOffloader:
    """Runs each off-loop read at submit time, so a test sees its result on the next step."""

    def __init__(self) -> None:
        self._done: list[Done] = []

    def submit(self, group, token, call) -> None:
        try:
            self._done.append(Done(token, value=call()))
        except Exception as exc:
            self._done.append(Done(token, error=exc))

    def collect(self) -> list[Done]:
        done, self._done = self._done, []
        return done

    def close(self) -> None: ...


def inline_daemon(tmp_path: Path, before_job=lambda job: None, offloader=None, profile=None, **inbox_settings) -> tuple:
    """A Daemon whose time is a list the test advances and whose jobs run inline with the real model (and its
    off-loop work too, unless `offloader` says otherwise), with `profile` for the inbox if one is given."""
    profiles = {} if profile is None else {"profiles": {"test": profile}}
    config = load_config(write_config(tmp_path, [inbox_config(tmp_path, **inbox_settings)], **profiles))
    context = StageContext(config.worker_engine(), config.model_dirs)

    def run(job: Job) -> JobResult:
        before_job(job)
        return run_job(job, context)

    now = [100.0]
    daemon = Daemon.start(config, notifier=Notifier(None), clock=lambda: now[0],
                          pool_builder=lambda cfg, on_start, wake: JobPool(1, lambda: InlineExecutor(run),
                                                                            on_start=on_start),
                          watcher_builder=QuietWatcher,
                          offloader=offloader if offloader is not None else InlineOffloader())
    return daemon, now


def test_a_start_that_fails_gives_back_the_ledger_lock_and_the_claims_it_took(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`Daemon.start` returns a running daemon or nothing: refused on its second inbox (another daemon claims
    it), it leaves the first inbox unclaimed and the state folder unlocked, so a later start succeeds."""
    from srd.daemon.claim import CLAIM_NAME, InboxClaimedError, InboxClaims
    from srd.ledger import Ledger

    config = load_config(write_config(tmp_path, [inbox_config(tmp_path, "a"), inbox_config(tmp_path, "b")]))
    monkeypatch.setattr("srd.daemon.claim.pid_alive", lambda pid: True)  # pytest's pid counts as a daemon's
    other = InboxClaims(tmp_path / "other-state")  # another daemon, alive (this process), holds inbox b
    other.acquire(tmp_path / "b")
    with pytest.raises(InboxClaimedError):
        Daemon.start(config, notifier=Notifier(None), watcher_builder=QuietWatcher, offloader=InlineOffloader())
    assert not (tmp_path / "a" / CLAIM_NAME).exists()
    with Ledger.open(config.state_dir):  # the lock was released
        pass
    other.release_all(wait_s=2.0)
    daemon = Daemon.start(config, notifier=Notifier(None), watcher_builder=QuietWatcher, offloader=InlineOffloader())
    try:
        assert (tmp_path / "a" / CLAIM_NAME).exists() and (tmp_path / "b" / CLAIM_NAME).exists()
    finally:
        daemon.close()
    assert not (tmp_path / "a" / CLAIM_NAME).exists()


def settle(daemon: Daemon, now: list[float], paths: list[Path], steps: int = 12) -> None:
    """Hint `paths`, then step the loop through enough settle periods for them to be ready and processed."""
    for path in paths:
        daemon.hint(Hint(0, path))
    for _ in range(steps):
        daemon.step()
        now[0] += 0.2


def test_a_file_rewritten_between_hashing_and_processing_is_recorded_as_what_was_processed(tmp_path: Path) -> None:
    """If the content changes after the daemon hashed it, the job still renders the bytes that were hashed (they
    are shipped with it), the source is not deleted on the strength of the old hash, and once the new version
    settles it is processed in turn and only then deleted (on_success: delete)."""
    inbox = tmp_path / "in"
    first, second = make_image(Path("x.png"), SIZE, 1), make_image(Path("x.png"), SIZE, 2)

    def rewrite(job: Job) -> None:
        if job.source.read_bytes() == first:
            job.source.write_bytes(second)
            os.utime(job.source, ns=(0, 10**9))  # a distinct mtime, as a real later write would have

    daemon, now = inline_daemon(tmp_path, before_job=rewrite, on_success="delete")
    try:
        (inbox / "x.png").write_bytes(first)
        settle(daemon, now, [inbox / "x.png"], steps=24)
        assert (inbox / "x.png").exists() is False
        assert daemon.ledger is not None
        entries = list(daemon.ledger.entries())
        assert [(e.sha256, e.state.value, e.disposition) for e in entries] == \
            [(hashlib.sha256(second).hexdigest(), "done", "deleted")]
    finally:
        daemon.close()
    assert decoded_size(tmp_path / "in-out" / "x.png") == DOUBLED


def test_on_success_delete_keeps_a_source_whose_output_left_something_out(tmp_path: Path) -> None:
    """An animation's output holds its first frame only: deleting the source would lose the rest for good. It is
    kept (and its duplicate too, through the losses the ledger records), while a still is deleted as configured;
    a restart leaves all of it as it is."""
    inbox = tmp_path / "in"
    daemon, now = inline_daemon(tmp_path, on_success="delete")
    try:
        (inbox / "anim.gif").write_bytes(animation("GIF", 3))
        (inbox / "still.png").write_bytes(make_image(Path("x.png"), SIZE, 1))
        settle(daemon, now, [inbox / "anim.gif", inbox / "still.png"], steps=24)
        (inbox / "copy.gif").write_bytes(animation("GIF", 3))
        settle(daemon, now, [inbox / "copy.gif"], steps=24)
        assert daemon.ledger is not None
        [entry] = [e for e in daemon.ledger.entries() if e.source.name == "anim.gif"]
    finally:
        daemon.close()
    assert sorted(p.name for p in inbox.iterdir()) == ["anim.gif", "copy.gif"]
    assert (entry.state.value, entry.disposition) == ("done", "kept")
    assert entry.losses == ("only the first of its 3 frames is in the output",)
    assert sorted(p.name for p in (tmp_path / "in-out").iterdir()) == ["anim.png", "still.png"]
    daemon, now = inline_daemon(tmp_path, on_success="delete")
    try:
        with structlog.testing.capture_logs() as logs:
            settle(daemon, now, [inbox / "anim.gif", inbox / "copy.gif"], steps=24)
    finally:
        daemon.close()
    assert sorted(p.name for p in inbox.iterdir()) == ["anim.gif", "copy.gif"]
    kept = [line["log_level"] for line in logs if line["event"] == "source_kept_not_deleted"]
    assert kept == ["debug"]  # the skipped copy, looked at again: said once, at its first sight


def test_an_output_written_under_a_new_name_removes_the_one_srd_wrote_for_the_source_before(tmp_path: Path) -> None:
    """A profile change that also changes the output format redoes each file into a new name: the outdated
    outputs under the old name go, unless they are no longer what srd wrote (a consumer's file in their place)."""
    inbox, outbox = tmp_path / "in", tmp_path / "in-out"
    upscale = {"upscale": {"model": str(ESPCN_X2), "scale": 2}}
    daemon, now = inline_daemon(tmp_path, profile={"stages": [upscale], "output": {"format": "png"}})
    try:
        for name in ("a", "b"):
            (inbox / f"{name}.png").write_bytes(make_image(Path("x.png"), SIZE, ord(name)))
        settle(daemon, now, [inbox / "a.png", inbox / "b.png"], steps=24)
    finally:
        daemon.close()
    assert sorted(p.name for p in outbox.iterdir()) == ["a.png", "b.png"]
    (outbox / "b.png").write_bytes(b"a consumer's own file, put where srd's output was")
    denoised = {"stages": [{"denoise": {"strength": 3}}, upscale], "output": {"format": "jpg"}}
    daemon, now = inline_daemon(tmp_path, profile=denoised)
    try:
        settle(daemon, now, [inbox / "a.png", inbox / "b.png"], steps=24)
        assert daemon.ledger is not None
        sources = sorted(e.source.name for e in daemon.ledger.entries())
        removed = daemon.ledger.owner(outbox / "a.png")
    finally:
        daemon.close()
    assert sorted(p.name for p in outbox.iterdir()) == ["a.jpg", "b.jpg", "b.png"]
    assert (outbox / "b.png").read_bytes().startswith(b"a consumer's own file")
    assert decoded_size(outbox / "a.jpg") == DOUBLED
    # a.png's old entry went with its output (its content is made again if it comes back); b.png's stays.
    assert removed is not None and (removed.source, removed.key) == ("a.png", None)
    assert sources == ["a.png", "b.png", "b.png"]


def test_a_job_ships_the_bytes_the_daemon_hashed_so_each_source_is_read_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon reads a source once, to hash it, and its job renders those very bytes; a file over
    SHIPPED_MAX_BYTES is not held in the daemon's memory but read again where its job runs."""
    inbox = tmp_path / "in"
    shipped: dict[str, Content | None] = {}
    daemon, now = inline_daemon(tmp_path, before_job=lambda job: shipped.setdefault(job.source.name, job.content))
    try:
        small = make_image(Path("a.png"), SIZE, 4)
        (inbox / "a.png").write_bytes(small)
        settle(daemon, now, [inbox / "a.png"])
        monkeypatch.setattr("srd.daemon.probe.SHIPPED_MAX_BYTES", len(small) - 1)
        (inbox / "b.png").write_bytes(make_image(Path("b.png"), SIZE, 5))
        settle(daemon, now, [inbox / "b.png"])
    finally:
        daemon.close()
    assert shipped == {"a.png": Content(small, hashlib.sha256(small).hexdigest()), "b.png": None}
    assert decoded_size(tmp_path / "in-out" / "a.png") == DOUBLED and decoded_size(tmp_path / "in-out" / "b.png")


def test_a_new_source_is_opened_once_and_its_shipped_bytes_are_not_hashed_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One open and one read per source: the daemon's hash read also yields the image header, and the job
    takes the bytes with their hash (no second open in the daemon, no open or rehash in the job). The output
    is marked as it is written: nobody opens it again to mark it or stats it for its size."""
    inbox, outbox = tmp_path / "in", tmp_path / "in-out"
    opened: list[PurePath] = []  # files opened below the inbox or the outbox
    open_regular, lstat = safefs.open_regular, safefs.lstat

    def counting_open(root: Path, path: PurePath) -> tuple[int, os.stat_result]:
        if Path(root) in (inbox, outbox):
            opened.append(path)
        return open_regular(root, path)

    def counting_lstat(root: Path, path: PurePath) -> os.stat_result:
        if Path(root) == outbox:
            opened.append(path)
        return lstat(root, path)

    monkeypatch.setattr(safefs, "open_regular", counting_open)
    monkeypatch.setattr(safefs, "lstat", counting_lstat)
    monkeypatch.setattr("srd.executors.job.hashlib", _NoRehash)  # the job's module only, not the daemon's hash
    daemon, now = inline_daemon(tmp_path)
    try:
        (inbox / "a.png").write_bytes(make_image(Path("a.png"), SIZE, 6))
        settle(daemon, now, [inbox / "a.png"])
    finally:
        daemon.close()
    assert opened == [inbox / "a.png"]
    assert decoded_size(outbox / "a.png") == DOUBLED
    mark = marked_for(outbox, outbox / "a.png")
    assert mark is not None and mark[1] == "a.png"


class _NoRehash:
    @staticmethod
    def sha256(data: bytes = b"") -> object:
        raise AssertionError("the job hashed its shipped bytes again")


def test_duplicate_content_under_another_name_is_linked_not_processed_again(tmp_path: Path) -> None:
    """duplicates: link gives the second name the first output (a hard link) without running a job."""
    inbox = tmp_path / "in"
    jobs: list[Path] = []
    daemon, now = inline_daemon(tmp_path, before_job=lambda job: jobs.append(job.source), duplicates="link")
    try:
        data = make_image(Path("x.png"), SIZE, 3)
        (inbox / "a.png").write_bytes(data)
        settle(daemon, now, [inbox / "a.png"])
        (inbox / "b.png").write_bytes(data)
        settle(daemon, now, [inbox / "b.png"])
        assert jobs == [inbox / "a.png"]
        out = tmp_path / "in-out"
        assert os.path.samefile(out / "a.png", out / "b.png")
        assert daemon.status()["inboxes"][0]["duplicates"] == 1
    finally:
        daemon.close()


def test_the_same_picture_in_two_inboxes_reaches_both_outboxes_and_is_reported(tmp_path: Path) -> None:
    """One job for both (same content, same profile), but each outbox gets it: with `duplicates: skip` the second
    inbox's copy was skipped as a duplicate of an output its outbox's reader never sees, and, held back while the
    first ran, it was taken for judged before: neither counted nor logged above debug."""
    config = write_config(tmp_path, [inbox_config(tmp_path, "a"), inbox_config(tmp_path, "b")],
                          log={"level": "debug", "format": "json"})
    picture = make_image(Path("x.png"), SIZE, 3)
    with running(config) as daemon:
        for name in ("a", "b"):
            (tmp_path / name / "x.png").write_bytes(picture)
        wait_for(lambda: all((tmp_path / f"{name}-out" / "x.png").exists() for name in "ab"), 30, "both outputs")
        reported = daemon.wait_event("duplicate")[0]
        assert reported["level"] == "info" and reported["action"] in ("linked", "copied")
        assert reported["to"] == str(tmp_path / f"{Path(reported['src']).parent.name}-out" / "x.png")
        def counts() -> list[tuple[int, int]]:
            return sorted((i["done"], i["duplicates"]) for i in read_status(tmp_path / "state").get("inboxes", []))
        wait_for(lambda: counts() == [(0, 1), (1, 0)], 10, "one done and one duplicate in status")
        assert daemon.stop() == 0
    assert (tmp_path / "a-out" / "x.png").read_bytes() == (tmp_path / "b-out" / "x.png").read_bytes()
    assert len(daemon.events("job_done")) == 1


@pytest.mark.parametrize("consumer", ["took the first output", "put another file in its place"])
def test_a_duplicate_whose_earlier_output_is_not_as_written_is_processed_for_itself(tmp_path: Path,
                                                                                   consumer: str) -> None:
    """The second inbox's copy needs the picture, and the first outbox's reader has already taken it (or left
    another file under its name). It was skipped, or linked to the stranger, and its source then deleted
    (`on_success: delete`): the picture lost. It is processed for itself instead, and only then deleted."""
    config = write_config(tmp_path, [inbox_config(tmp_path, "a"), inbox_config(tmp_path, "b", on_success="delete")])
    picture = make_image(Path("x.png"), SIZE, 3)
    with running(config) as daemon:
        (tmp_path / "a" / "x.png").write_bytes(picture)
        wait_for(lambda: (tmp_path / "a-out" / "x.png").exists(), 30, "the first output")
        first = (tmp_path / "a-out" / "x.png").read_bytes()
        (tmp_path / "a-out" / "x.png").unlink()
        if consumer == "put another file in its place":
            (tmp_path / "a-out" / "x.png").write_bytes(make_image(Path("x.png"), SIZE, 4))
        (tmp_path / "b" / "x.png").write_bytes(picture)
        wait_for(lambda: not (tmp_path / "b" / "x.png").exists(), 30, "the second copy to be done and deleted")
        assert daemon.stop() == 0
    assert (tmp_path / "b-out" / "x.png").read_bytes() == first
    assert len(daemon.events("file_processed")) == 2 and daemon.events("duplicate_output_gone_processing")


def test_sigterm_drains_the_running_job_and_a_drain_timeout_leaves_it_for_the_next_start(tmp_path: Path) -> None:
    """SIGTERM stops intake but lets a running job finish and be recorded; if it can't finish within
    --drain-timeout, the daemon still exits 0 promptly and the next start processes the file."""
    config = write_config(tmp_path)
    inbox, outbox = tmp_path / "in", tmp_path / "in-out"

    def running() -> bool:
        return in_flight(tmp_path / "state") == 1

    daemon = DaemonProcess(config, drain_timeout=30)
    daemon.wait_ready()
    (inbox / "big.jpg").write_bytes(make_image(Path("big.jpg"), (1500, 2000), 1))  # ~2.5 s of work
    wait_for(running, 20, "the job to start")
    assert daemon.stop() == 0
    assert decoded_size(outbox / "big.jpg") == (3000, 4000)
    assert [e["state"] for e in ledger_entries(config)] == ["done"]

    daemon = DaemonProcess(config, drain_timeout=0.2)
    daemon.wait_ready()
    (inbox / "big2.jpg").write_bytes(make_image(Path("big2.jpg"), (1500, 2000), 2))
    wait_for(running, 20, "the job to start")
    started = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - started < 2.0
    assert daemon.events("drain_timeout_abandoning")
    assert not (outbox / "big2.jpg").exists()
    assert sorted(e["state"] for e in ledger_entries(config)) == ["done", "started"]

    daemon = DaemonProcess(config)
    daemon.wait_event("file_processed", timeout=30)
    assert daemon.stop() == 0
    assert decoded_size(outbox / "big2.jpg") == (3000, 4000)
    assert sorted((e["state"], e["attempts"]) for e in ledger_entries(config)) == [("done", 1), ("done", 2)]
    assert [p for p in tmp_path.rglob("*") if is_temp_name(p.name)] == []


@pytest.mark.parametrize("leaves_by", ["user_deletes_it", "on_success_delete"])
def test_the_stat_cache_forgets_a_file_that_left_the_inbox(tmp_path: Path, leaves_by: str) -> None:
    """The (path, size, mtime) → sha256 cache only spares re-hashing files still in the inbox; a file that
    left it (deleted by a user, or by on_success) must leave the cache too, or it grows with every file ever
    seen and every compaction rewrites it."""
    inbox = tmp_path / "in"
    daemon, now = inline_daemon(tmp_path, on_success="keep" if leaves_by == "user_deletes_it" else "delete")
    try:
        path = inbox / "a.png"
        path.write_bytes(make_image(Path("a.png"), SIZE, 4))
        st = path.stat()
        assert daemon.ledger is not None

        def cached() -> str | None:
            return daemon.ledger.cached_hash(str(inbox), "a.png", FileVersion.of(st))

        if leaves_by == "user_deletes_it":
            settle(daemon, now, [path])
            assert cached() is not None
            path.unlink()
        settle(daemon, now, [path])
        assert not path.exists()
        assert cached() is None
    finally:
        daemon.close()


def test_an_unchanged_status_is_still_rewritten_so_its_age_tells_a_stuck_or_blocked_daemon(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing changes, yet status.json is written again every STATUS_REFRESH_S; `srd status` judges a live
    daemon whose document is older than STALE_STATUS_S unhealthy (it can't write its state_dir, or its loop
    is stuck) rather than showing its last, healthy-looking figures forever."""
    from datetime import UTC, datetime, timedelta

    from srd.daemon.status import STALE_STATUS_S, STATUS_REFRESH_S, Health, assess, read_status, status_path

    # The daemon runs inside pytest, whose command line doesn't say srd: count its pid as a live daemon's.
    monkeypatch.setattr("srd.daemon.status.pid_alive", lambda pid: pid == os.getpid())
    daemon, now = inline_daemon(tmp_path)
    try:
        daemon._write_status()
        first = status_path(daemon.config.state_dir).stat().st_mtime_ns
        now[0] += 1.0
        daemon._write_status()
        assert status_path(daemon.config.state_dir).stat().st_mtime_ns == first  # unchanged and fresh: not rewritten
        now[0] += STATUS_REFRESH_S
        time.sleep(0.01)
        daemon._write_status()
        assert status_path(daemon.config.state_dir).stat().st_mtime_ns != first
        document = read_status(daemon.config.state_dir)
        assert document is not None
        written = datetime.fromisoformat(document["updated_at"])
        assert assess(document, written + timedelta(seconds=5)).health is Health.HEALTHY
        stale = assess(document, written + timedelta(seconds=STALE_STATUS_S + 5))
        assert stale.health is Health.UNHEALTHY and "not updated" in stale.reasons[0]
        assert datetime.now(UTC) - written < timedelta(seconds=60)
    finally:
        daemon.close()


def test_a_source_step_that_never_comes_back_shows_as_stuck_and_the_file_waits_for_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A delete that hangs (its share stopped answering) holds up nothing but its file: the file is not judged
    again while the step is out, and after STEP_STUCK_S its inbox is unhealthy in status, naming the step,
    so `srd status --check` says so; once the step comes back it is journaled and the inbox is healthy."""
    held: list[tuple[object, object]] = []

    class HangingSteps(InlineOffloader):
        def submit(self, group, token, call) -> None:
            if type(token).__name__ == "StepToken":
                held.append((token, call))  # the share doesn't answer
            else:
                super().submit(group, token, call)

    hanging = HangingSteps()
    daemon, now = inline_daemon(tmp_path, offloader=hanging, on_success="delete")
    source = tmp_path / "in" / "a.png"
    source.write_bytes(make_image(source, SIZE, 1))
    settle(daemon, now, [source])
    assert (tmp_path / "in-out" / "a.png").exists() and len(held) == 1 and source.exists()
    settle(daemon, now, [source])  # hinted again while its step is out: not judged again
    assert len(held) == 1
    assert daemon.status()["inboxes"][0]["health"] == "ok"
    now[0] += 61
    inbox = daemon.status()["inboxes"][0]
    assert inbox["health"] == "unhealthy" and inbox["stuck_step"]["action"] == "delete"
    monkeypatch.setattr("srd.daemon.status.pid_alive", lambda pid: True)  # this test process is the daemon
    assessment = assess({**daemon.status(), "updated_at": datetime.now(UTC).isoformat()})
    assert assessment.health is Health.UNHEALTHY and any("delete of a.png" in r for r in assessment.reasons)
    token, call = held.pop()
    hanging._done.append(Done(token, value=call()))  # the share answers
    daemon.step()
    assert not source.exists() and daemon.status()["inboxes"][0]["health"] == "ok"
    entry = next(e for e in daemon.ledger.entries() if e.source.name == "a.png")
    assert entry.disposition == "deleted"
    daemon.close()


def test_a_scan_after_a_restart_drops_finished_files_before_settling_and_keeps_no_state_for_them(
        tmp_path: Path) -> None:
    """A restart over a large finished inbox: each file the scan sees in the version srd finished is dropped
    at once (no settle wait, no loop pass, no entry in the handled map, which would hold every photo of a NAS
    library); a file changed since, or an event without a version, still settles."""
    inbox = tmp_path / "in"
    daemon, now = inline_daemon(tmp_path)
    try:
        for i in range(2):
            (inbox / f"x{i}.png").write_bytes(make_image(Path("x.png"), SIZE, i))
        settle(daemon, now, [inbox / "x0.png", inbox / "x1.png"])
    finally:
        daemon.close()
    assert decoded_size(tmp_path / "in-out" / "x0.png") == DOUBLED
    (inbox / "x1.png").write_bytes(make_image(Path("x.png"), SIZE, 7))  # changed while the daemon was down

    daemon, now = inline_daemon(tmp_path)
    try:
        runtime = next(iter(daemon._ctx.runtimes.values()))
        for name in ("x0.png", "x1.png"):
            daemon.hint(Hint(0, inbox / name, FileVersion.of(os.stat(inbox / name))))
        assert len(runtime.tracker.pending_paths()) == 1 and runtime.handled == {}  # x1.png only
        daemon.hint(Hint(0, inbox / "x0.png"))  # an event says nothing of the version: settled as before
        assert len(runtime.tracker.pending_paths()) == 2
    finally:
        daemon.close()


def test_a_wrong_stat_cache_line_never_replaces_a_files_own_output(tmp_path: Path) -> None:
    """Two finished files whose stat-cache lines say each other's content (an index edited with its checksum,
    outside attack session 11): the daemon does not link one's output over the other's, nor reprocess in a loop;
    it forgets the lines, hashes the files and finds them done."""
    from srd.ledger import Ledger

    inbox, outbox = tmp_path / "in", tmp_path / "in-out"
    names = ("x.png", "y.png")
    daemon, now = inline_daemon(tmp_path)
    try:
        for i, name in enumerate(names):
            (inbox / name).write_bytes(make_image(Path(name), SIZE, i))
        settle(daemon, now, [inbox / name for name in names])
    finally:
        daemon.close()
    outputs = {name: (outbox / name).read_bytes() for name in names}
    with Ledger.open(tmp_path / "state") as ledger:
        runtime_inbox = next(iter(ledger.entries())).inbox
        shas = {name: hashlib.sha256((inbox / name).read_bytes()).hexdigest() for name in names}
        for name, other in zip(names, reversed(names), strict=True):
            ledger.remember_hash(runtime_inbox, name, FileVersion.of(os.stat(inbox / name)), shas[other])
        ledger.sync()
    jobs = []
    daemon, now = inline_daemon(tmp_path, before_job=jobs.append)
    try:
        for _ in range(3):
            settle(daemon, now, [inbox / name for name in names])
    finally:
        daemon.close()
    assert jobs == []
    assert {name: (outbox / name).read_bytes() for name in names} == outputs
    with Ledger.open(tmp_path / "state", read_only=True) as ledger:
        assert all(ledger.cached_hash(runtime_inbox, name, FileVersion.of(os.stat(inbox / name))) == shas[name]
                   for name in names)


def test_a_restart_scan_drops_finished_files_by_name_and_processes_a_file_changed_while_down(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a restart's scan hands the loop (a folder's files at a time, as `InboxWatcher` does): each file in
    the version srd finished is dropped by the stat cache and its done row alone (no `Entry` read, no settle,
    nothing kept per path), while a file changed while the daemon was down settles and is processed again."""
    inbox = tmp_path / "in"
    names = [f"x{i}.png" for i in range(4)] + [f"sub/y{i}.png" for i in range(3)]
    daemon, now = inline_daemon(tmp_path)
    try:
        for i, name in enumerate(names):
            (inbox / name).parent.mkdir(exist_ok=True)
            (inbox / name).write_bytes(make_image(Path(name), SIZE, i))
        settle(daemon, now, [inbox / name for name in names])
    finally:
        daemon.close()
    outputs = {name: (tmp_path / "in-out" / name).read_bytes() for name in names}
    (inbox / "sub/y1.png").write_bytes(make_image(Path("y1.png"), SIZE, 99))  # changed while the daemon was down

    daemon, now = inline_daemon(tmp_path)
    try:
        runtime = next(iter(daemon._ctx.runtimes.values()))
        entries_read = []
        real_get = daemon._ctx.ledger.get
        monkeypatch.setattr(daemon._ctx.ledger, "get", lambda key: entries_read.append(key) or real_get(key))
        taken = []
        for prefix, files in scan_folders(inbox, IgnoreRules()):
            daemon.found(FoundFiles(0, inbox, prefix, files, lambda: taken.append(1)))
        assert len(runtime.tracker.pending_paths()) == 1 and runtime.handled == {}  # sub/y1.png only
        assert len(entries_read) <= 1  # at most the changed file's lookup, none for a finished one
        for _ in range(12):
            daemon.step()
            now[0] += 0.2
    finally:
        daemon.close()
    changed = {name for name in names if (tmp_path / "in-out" / name).read_bytes() != outputs[name]}
    assert changed == {"sub/y1.png"}
    assert decoded_size(tmp_path / "in-out" / "sub/y1.png") == DOUBLED
