"""The ledger keeps its promises under real faults: daemon kills are not the file's fault, no output goes stale,
a file's identity is more than its size and mtime, srd replaces its own outputs after `forget`.

Each test drives a real `srd run` (or the real `srd` command) on real files.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from daemon_helpers import (
    ESPCN_X2,
    DaemonProcess,
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

from srd.errors import ExitCode
from srd.ledger import Ledger

# End to end: each test runs the real srd command or daemon in a subprocess.
pytestmark = pytest.mark.e2e


def _entries(config: Path) -> list[dict]:
    result = srd("ledger", "list", "--json", "--config", str(config))
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def _started_attempts(state: Path, name: str) -> int:
    """How many starts the ledger holds for the source called `name` (0 before its first)."""
    try:
        with Ledger.open(state, read_only=True) as ledger:
            return max((e.attempts for e in ledger.entries() if e.source.name == name and e.state == "started"),
                       default=0)
    except Exception:
        return 0


# -- 1. a restart of the daemon is not the file's fault ----------------------------------------------------


def test_whole_group_kills_while_a_good_file_is_in_flight_do_not_make_it_poison(tmp_path: Path) -> None:
    """Three SIGKILLs of the daemon's whole process group, each while the same good file is being processed
    (old srd: three starts = three attempts = failed/ as poison). The first death can be pinned on nobody;
    the retries run alone, so the next two are charged to the file as strikes, under the limit of 3. The file
    is then processed once, and never lands in failed/."""
    config = write_config(tmp_path)  # max_attempts: the default 3
    state, inbox, outbox = tmp_path / "state", tmp_path / "in", tmp_path / "in-out"
    (inbox / "big.jpg").write_bytes(make_image(Path("big.jpg"), (1500, 2000), 7))  # seconds of work
    for kill in range(1, 4):
        daemon = DaemonProcess(config)
        wait_for(lambda n=kill: _started_attempts(state, "big.jpg") == n, 60,
                 f"start number {kill} of big.jpg\n" + daemon.log_tail())
        daemon.kill(group=True)
        assert not files_under(outbox), "the kill must land while the job runs"
    daemon = DaemonProcess(config)
    try:
        daemon.wait_event("file_processed", timeout=120)
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
    assert decoded_size(outbox / "big.jpg") == (3000, 4000)
    assert not files_under(tmp_path / "in-failed")
    entry, = _entries(config)
    assert (entry["state"], entry["attempts"], entry["strikes"]) == ("done", 4, 2)
    assert len(daemon.events("death_pinned_on_file")) == 1  # only the last death was during a solo retry


def test_a_file_whose_worker_dies_every_time_still_goes_to_failed_after_max_attempts(tmp_path: Path) -> None:
    """Its worker is SIGKILLed each time it takes the file (as an OOM kill of a huge decode would), while
    the daemon lives: each death is pinned on the file, and after max_attempts it goes to failed/ with a
    reason; the daemon keeps running and processes the next file."""
    config = write_config(tmp_path, max_attempts=3)
    state, inbox = tmp_path / "state", tmp_path / "in"
    with running(config) as daemon:
        (inbox / "poison.jpg").write_bytes(make_image(Path("poison.jpg"), (1500, 2000), 3))
        for death in range(1, 4):
            wait_for(lambda: in_flight(state) == 1, 60, f"attempt {death}\n" + daemon.log_tail())
            direct = {int(p) for p in Path(f"/proc/{daemon.pid}/task/{daemon.pid}/children").read_text().split()}
            workers = wait_for(lambda d=direct: [p for p in descendants_of(daemon.pid) if p not in d], 10, "a worker")
            for pid in workers:
                os.kill(pid, signal.SIGKILL)
            if death < 3:
                lost = daemon.wait_event("job_lost_retrying", count=death)[-1]
                assert (lost["pinned"], lost["strikes"]) == (True, death)
                wait_for(lambda n=death: in_flight(state) == 0 or _started_attempts(state, "poison.jpg") > n, 30,
                         "the retry")
        failed = daemon.wait_event("file_failed", timeout=60)[0]
        assert failed["src"].endswith("poison.jpg") and "3 deaths pinned on this file" in failed["reason"]
        (inbox / "good.png").write_bytes(make_image(Path("good.png"), (24, 32), 1))
        daemon.wait_event("file_processed", timeout=60)
        assert daemon.proc.poll() is None
        assert daemon.stop() == 0
    report = json.loads((tmp_path / "in-failed" / "poison.jpg.error.json").read_text())
    assert report["strikes"] == 3


# -- 2. an output path has one owner at a time --------------------------------------------------------------


def _run_until(daemon: DaemonProcess, event: str, count: int) -> None:
    daemon.wait_event(event, count=count, timeout=60)


def _replace(path: Path, data: bytes) -> None:
    """Replace a file's content as an editor would: a new file renamed over it."""
    temp = path.with_name("." + path.name + ".new")
    temp.write_bytes(data)
    temp.rename(path)


def test_a_file_replaced_by_a_copy_of_another_processed_picture_gets_that_pictures_output(tmp_path: Path) -> None:
    """x.png and y.png are processed; then x.png is overwritten with a copy of y.png. It is a duplicate of
    y's content, but x's old output (x's earlier picture) must not stay: srd replaces it with y's picture."""
    config = write_config(tmp_path)
    inbox, outbox = tmp_path / "in", tmp_path / "in-out"
    with running(config) as daemon:
        (inbox / "x.png").write_bytes(make_image(Path("x.png"), (24, 32), 1))
        (inbox / "y.png").write_bytes(make_image(Path("y.png"), (24, 32), 2))
        _run_until(daemon, "file_processed", 2)
        assert (outbox / "x.png").read_bytes() != (outbox / "y.png").read_bytes()
        shutil.copyfile(inbox / "y.png", inbox / ".x.tmp")
        (inbox / ".x.tmp").rename(inbox / "x.png")
        wait_for(lambda: (outbox / "x.png").read_bytes() == (outbox / "y.png").read_bytes(), 30,
                 "x's output to become y's picture\n" + daemon.log_tail())
        assert daemon.stop() == 0
    assert set(files_under(outbox)) == {"x.png", "y.png"}


def test_an_edit_that_is_undone_brings_back_the_output_of_the_original(tmp_path: Path) -> None:
    """a.png is processed, edited (processed again: its output now shows the edit), and the edit is undone.
    The original content's old ledger entry pointed at the output the edit overwrote, so it must not count
    as done: the output must show the original again, also after a restart."""
    config = write_config(tmp_path)
    inbox, outbox = tmp_path / "in", tmp_path / "in-out"
    original = make_image(Path("a.png"), (24, 32), 1)
    with running(config) as daemon:
        (inbox / "a.png").write_bytes(original)
        _run_until(daemon, "file_processed", 1)
        first = (outbox / "a.png").read_bytes()
        _replace(inbox / "a.png", make_image(Path("a.png"), (24, 32), 2))
        _run_until(daemon, "file_processed", 2)
        assert (outbox / "a.png").read_bytes() != first
        _replace(inbox / "a.png", original)
        _run_until(daemon, "file_processed", 3)
        wait_for(lambda: (outbox / "a.png").read_bytes() == first, 10, "the original's output")
        assert daemon.stop() == 0
    assert set(files_under(outbox)) == {"a.png"}
    daemon = DaemonProcess(config)  # and a restart sees it as done: nothing to do
    daemon.wait_ready()
    assert daemon.stop() == 0 and daemon.events("file_processed") == []
    assert (outbox / "a.png").read_bytes() == first


def test_a_profile_changed_and_changed_back_by_sighup_reprocesses_both_times(tmp_path: Path) -> None:
    """Profile A, then B (SIGHUP): outputs rewritten with B. Back to A (SIGHUP): A's old entries pointed at
    outputs that B overwrote, so they are reprocessed, and the outbox shows profile A's pictures again."""
    plain = [{"upscale": {"model": str(ESPCN_X2), "scale": 2}}]
    sharp = [*plain, {"sharpen": {"amount": 1.0}}]
    config = write_config(tmp_path, stages=plain)
    inbox, outbox = tmp_path / "in", tmp_path / "in-out"
    for i in range(2):
        (inbox / f"p{i}.png").write_bytes(make_image(Path("p.png"), (24, 32), i))
    daemon = DaemonProcess(config)
    try:
        _run_until(daemon, "file_processed", 2)
        first = {name: path.read_bytes() for name, path in files_under(outbox).items()}
        for stages, total in ((sharp, 4), (plain, 6)):
            write_config(tmp_path, stages=stages)
            daemon.proc.send_signal(signal.SIGHUP)
            _run_until(daemon, "file_processed", total)
        wait_for(lambda: {n: p.read_bytes() for n, p in files_under(outbox).items()} == first, 10,
                 "profile A's pictures back in the outbox")
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
    assert len(daemon.events("file_processed")) == 6


# -- 3. a file version is more than its size and mtime -------------------------------------------------------


def _same_size_and_mtime(path: Path, data: bytes, *, in_place: bool) -> None:
    """Give `path` new content of the same size with its old mtime, as `cp -p`, rsync or unzip do."""
    st = path.stat()
    assert len(data) == st.st_size
    if in_place:
        with path.open("r+b") as fh:
            fh.write(data)
    else:
        _replace(path, data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)


@pytest.mark.parametrize("mode", ["native", "poll"])
def test_new_content_with_the_same_size_and_mtime_is_processed_running_and_after_a_restart(
        tmp_path: Path, mode: str) -> None:
    """Fixed-size BMPs replaced with same-size content and the old mtime (in place, and by rename): each new
    version is processed, while the daemon runs (inotify events or the poller's comparison) and when it
    finds the change at its next start."""
    config = write_config(tmp_path, [inbox_config(tmp_path, mode=mode)])
    inbox, outbox = tmp_path / "in", tmp_path / "in-out"
    versions = [make_image(Path("scan.bmp"), (24, 32), seed) for seed in range(4)]
    assert len({len(v) for v in versions}) == 1 and len(set(versions)) == 4

    def output_is(seed: int) -> bool:
        return decoded_size(outbox / "scan.bmp") is not None and (outbox / "scan.bmp").read_bytes() == expected[seed]

    expected: dict[int, bytes] = {}
    with running(config) as daemon:
        (inbox / "scan.bmp").write_bytes(versions[0])
        _run_until(daemon, "file_processed", 1)
        expected[0] = (outbox / "scan.bmp").read_bytes()
        _same_size_and_mtime(inbox / "scan.bmp", versions[1], in_place=True)
        _run_until(daemon, "file_processed", 2)
        _same_size_and_mtime(inbox / "scan.bmp", versions[2], in_place=False)
        _run_until(daemon, "file_processed", 3)
        assert daemon.stop() == 0
    third = (outbox / "scan.bmp").read_bytes()
    assert len({expected[0], third}) == 2
    _same_size_and_mtime(inbox / "scan.bmp", versions[3], in_place=True)
    daemon = DaemonProcess(config)
    try:
        _run_until(daemon, "file_processed", 1)
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
    assert (outbox / "scan.bmp").read_bytes() not in (expected[0], third)
    assert set(files_under(outbox)) == {"scan.bmp"}


# -- 4. srd replaces its own outputs, even after `srd ledger forget` ----------------------------------------


def test_after_ledger_forget_the_reprocessed_file_replaces_its_own_output_instead_of_a_suffixed_copy(
        tmp_path: Path) -> None:
    config = write_config(tmp_path)
    inbox, outbox = tmp_path / "in", tmp_path / "in-out"
    (inbox / "a.png").write_bytes(make_image(Path("a.png"), (24, 32), 1))
    daemon = DaemonProcess(config)
    _run_until(daemon, "file_processed", 1)
    assert daemon.stop() == 0
    entry, = _entries(config)
    forget = srd("ledger", "forget", entry["key"], "--config", str(config))
    assert forget.returncode == 0, forget.stderr
    assert _entries(config) == []
    daemon = DaemonProcess(config)
    try:
        _run_until(daemon, "file_processed", 1)
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
    assert set(files_under(outbox)) == {"a.png"}
    assert [e["state"] for e in _entries(config)] == ["done"]



# -- 5. a damaged ledger is refused clearly and has a way out ------------------------------------------------


def _done(ledger: Ledger, n: int, out: Path) -> str:
    sha = f"{n:064x}"
    entry = ledger.record_start(sha, "fp", inbox="nas", source=f"{n}.png")
    ledger.record_done(entry.key, output=out / f"{n}.png", output_size=n)
    return entry.key


def test_a_lost_snapshot_after_a_compaction_is_refused_and_repair_restores_the_previous_one(tmp_path: Path) -> None:
    """Old srd: a compaction empties the journal, so losing ledger.json afterwards silently reset the whole
    history (every file processed again, every output suffixed). Now the journal's first line says which
    snapshot it continues, a start refuses and names the way out, and `srd ledger repair` rebuilds from the
    previous snapshot kept beside it plus the journal."""
    config = write_config(tmp_path)
    state = tmp_path / "state"
    with Ledger.open(state) as ledger:
        first = _done(ledger, 1, tmp_path)
        ledger.compact()
        second = _done(ledger, 2, tmp_path)
        ledger.compact()  # ledger.json.prev now holds entry 1
    (state / "ledger.json").unlink()
    refused = srd("run", "--config", str(config))
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "is missing" in refused.stderr and "srd ledger repair" in refused.stderr, refused.stderr
    check = srd("ledger", "check", "--config", str(config))
    assert check.returncode == ExitCode.LEDGER and "damaged" in check.stdout, check.stdout + check.stderr
    repair = srd("ledger", "repair", "--config", str(config))
    assert repair.returncode == 0 and "previous snapshot" in repair.stdout, repair.stdout + repair.stderr
    assert srd("ledger", "check", "--config", str(config)).returncode == 0
    keys = {e["key"] for e in _entries(config)}
    assert first in keys and second not in keys  # what only the lost snapshot held is gone, and reported


def test_garbage_in_the_journal_is_detected_and_repair_keeps_every_intact_record(tmp_path: Path) -> None:
    """Lines from another writer (text, a repeated record) in the middle of the journal: a start refuses;
    `srd ledger check` names them; `srd ledger repair` refuses while the ledger is in use, then keeps every
    intact record (also the done ones after the garbage), saves what it dropped, and leaves a healthy ledger."""
    config = write_config(tmp_path)
    state = tmp_path / "state"
    with Ledger.open(state) as ledger:
        keys = [_done(ledger, n, tmp_path) for n in range(1, 3)]
    journal = (state / "journal.jsonl").read_bytes().splitlines(keepends=True)
    repeated = journal[0]  # an older record again: applying it would undo the later `done`
    (state / "journal.jsonl").write_bytes(b"".join([*journal[:2], b"some text from another program\n", repeated,
                                                    *journal[2:]]))
    refused = srd("run", "--config", str(config))
    assert refused.returncode != 0 and "line 3" in refused.stderr and "Traceback" not in refused.stderr
    check = srd("ledger", "check", "--config", str(config))
    assert check.returncode == ExitCode.LEDGER and "line 3" in check.stdout and "line 4" in check.stdout, check.stdout
    with (state / "lock").open("a") as lock:  # as a running daemon (or another command) holds it
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        busy = srd("ledger", "repair", "--config", str(config))
        assert busy.returncode != 0 and "stop it first" in busy.stderr
    repair = srd("ledger", "repair", "--config", str(config))
    assert repair.returncode == 0, repair.stdout + repair.stderr
    assert "line 3" in repair.stdout and "line 4" in repair.stdout
    dropped, = state.glob("journal.jsonl.dropped-*")
    assert dropped.read_bytes() == b"some text from another program\n" + repeated
    assert srd("ledger", "check", "--config", str(config)).returncode == 0
    assert sorted((e["key"], e["state"]) for e in _entries(config)) == sorted((k, "done") for k in keys)


# -- 6. a state dir that takes no writes pauses processing ---------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    """A real 1 MiB tmpfs to put a state dir on (mounting needs root, as the systemd service has it)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def _paused(daemon: DaemonProcess) -> bool:
    return bool(daemon.events("state_dir_unwritable_paused"))


def test_a_full_state_dir_pauses_processing_and_resumes_without_losing_or_failing_anything(
        tmp_path: Path, small_tmpfs: Path) -> None:
    """The state dir (a real 1 MiB tmpfs) fills up while files arrive: old srd crashed on the journal write
    (a systemd restart loop). Now the daemon pauses, says so, stays up, fails no file and writes no second
    copy; once space is back it records what it had to park and processes what waited."""
    config = write_config(tmp_path, state_dir=str(small_tmpfs / "state"))
    inbox, outbox = tmp_path / "in", tmp_path / "in-out"
    with running(config) as daemon:
        (inbox / "a.png").write_bytes(make_image(Path("a.png"), (24, 32), 1))
        _run_until(daemon, "file_processed", 1)
        filler = _fill(small_tmpfs)
        names = ["a.png"]
        for n in range(1, 20):  # the journal's last page has room for a few records; then the disk is full
            names.append(f"f{n}.png")
            (inbox / names[-1]).write_bytes(make_image(Path("f.png"), (24, 32), 100 + n))
            wait_for(lambda: _paused(daemon) or len(daemon.events("file_processed")) == len(names), 30,
                     f"{names[-1]} to be processed or the daemon to pause")
            if _paused(daemon):
                break
        else:
            raise AssertionError("the state dir never filled up")
        processed = len(daemon.events("file_processed"))
        names.append("late.png")
        (inbox / "late.png").write_bytes(make_image(Path("late.png"), (24, 32), 99))
        time.sleep(3)  # settle time for it, and several status and supervision rounds on a full disk
        assert daemon.proc.poll() is None, daemon.log_tail()
        assert len(daemon.events("file_processed")) == processed and not daemon.events("file_failed")
        daemon.wait_event("status_write_failed")
        # status.json can't say so (it lives there too): `srd status` sees the full folder itself.
        check = srd("status", "--check", "--config", str(config))
        assert check.returncode == ExitCode.UNHEALTHY, check.stdout + check.stderr
        assert "is full" in check.stdout
        filler.unlink()
        daemon.wait_event("state_dir_writable_resumed", timeout=30)
        _run_until(daemon, "file_processed", len(names))
        wait_for(lambda: read_status(small_tmpfs / "state").get("state_dir") == {"state": "ok"}, 10,
                 "status.json to be written again")
        assert srd("status", "--check", "--config", str(config)).returncode == ExitCode.OK
        assert daemon.stop() == 0
    assert set(files_under(outbox)) == set(names)
    assert not files_under(tmp_path / "in-failed")
    assert sorted(e["state"] for e in _entries(config)) == ["done"] * len(names)


def test_the_status_document_says_when_the_state_dir_refuses_writes(tmp_path: Path) -> None:
    """`srd status --json` reads status.json; its ``state_dir`` field says unwritable while the daemon
    pauses for it (written whenever the state dir takes the status file but not the journal, e.g. a journal
    on a full quota), and ok otherwise."""
    from srd.config import load_config
    from srd.daemon.loop import Daemon
    from srd.daemon.notify import Notifier
    from srd.ledger import LedgerUnwritableError

    daemon = Daemon.start(load_config(write_config(tmp_path)), notifier=Notifier(None))
    try:
        assert daemon.status()["state_dir"] == {"state": "ok"}
        daemon._files.state_unwritable(LedgerUnwritableError("cannot write ledger journal: No space left on device",
                                                       errno=errno.ENOSPC))
        state = daemon.status()["state_dir"]
        assert state["state"] == "unwritable" and "No space left" in state["error"]
        daemon._write_status(force=True)
        shown = srd("status", "--json", "--config", str(tmp_path / "srd.yaml"))
        assert json.loads(shown.stdout)["state_dir"]["state"] == "unwritable"
    finally:
        daemon.close()


def test_a_state_dir_that_cannot_be_created_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file where the state dir's parent should be")
    config = write_config(tmp_path, state_dir=str(tmp_path / "blocker" / "state"))
    result = srd("run", "--config", str(config))
    assert result.returncode == ExitCode.STARTUP and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "cannot use state directory" in result.stderr, result.stderr


# -- 7. srd ledger list / retry, and names that are not UTF-8 ------------------------------------------------


def test_ledger_list_has_a_header_and_filters_by_state_age_and_inbox(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    state = tmp_path / "state"
    long_ago = time.time() - 3 * 86400
    with Ledger.open(state, clock=lambda: long_ago) as ledger:
        old = ledger.record_start("1" * 64, "fp", inbox="/srv/a", source="old.png")
    with Ledger.open(state) as ledger:
        new = ledger.record_start("2" * 64, "fp", inbox="/srv/b", source="new.png")
        ledger.record_failed(new.key, error="broken")
    listed = srd("ledger", "list", "--config", str(config))
    assert listed.returncode == 0
    header, *rows, total = listed.stdout.splitlines()
    assert header.split()[:4] == ["KEY", "STATE", "TRIES", "UPDATED"] and len(rows) == 2
    assert "shown: 2 of 2" in total

    def keys(*options: str) -> list[str]:
        result = srd("ledger", "list", "--json", "--config", str(config), *options)
        assert result.returncode == 0, result.stderr
        return [json.loads(line)["key"] for line in result.stdout.splitlines()]

    assert keys("--state", "failed") == [new.key]
    assert keys("--since", "1d") == [new.key]
    assert keys("--since", "2000-01-01") == [old.key, new.key]
    assert keys("--inbox", "/srv/a") == [old.key]
    bad = srd("ledger", "list", "--since", "yesterday-ish", "--config", str(config))
    assert bad.returncode == 2 and "neither an age" in bad.stderr


def test_ledger_retry_moves_the_failed_file_back_and_it_is_processed(tmp_path: Path) -> None:
    """A big file times out three times (job_timeout 1 s) and lands in failed/. With a longer timeout,
    `srd ledger retry` does what its help says: the file goes back into its inbox, its reason file is gone,
    and the next run processes it."""
    config = write_config(tmp_path, job_timeout=1)
    inbox, failed = tmp_path / "in", tmp_path / "in-failed"
    (inbox / "big.jpg").write_bytes(make_image(Path("big.jpg"), (1500, 2000), 7))
    daemon = DaemonProcess(config)
    try:
        daemon.wait_event("file_failed", timeout=120)
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
    assert set(files_under(failed)) == {"big.jpg", "big.jpg.error.json"}
    entry, = _entries(config)
    write_config(tmp_path)  # no job_timeout
    retry = srd("ledger", "retry", entry["key"][:10], "--config", str(config))
    assert retry.returncode == 0, retry.stderr
    assert (inbox / "big.jpg").is_file() and files_under(failed) == {}
    daemon = DaemonProcess(config)
    try:
        daemon.wait_event("file_processed", timeout=120)
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
    assert decoded_size(tmp_path / "in-out" / "big.jpg") == (3000, 4000)
    assert [e["state"] for e in _entries(config)] == ["done"]


def test_names_that_are_not_utf8_print_escaped_in_ledger_list_and_status(tmp_path: Path) -> None:
    """Under an ordinary UTF-8 locale, a processed file and a failed file whose names hold byte 0xff:
    `srd ledger list` and `srd status` print them as \\xff instead of dying with UnicodeEncodeError."""
    config = write_config(tmp_path)
    inbox = os.fsencode(tmp_path / "in")
    with open(os.path.join(inbox, b"caf\xff.png"), "wb") as fh:
        fh.write(make_image(Path("a.png"), (24, 32), 1))
    with open(os.path.join(inbox, b"bad\xff.png"), "wb") as fh:
        fh.write(b"not an image at all")
    daemon = DaemonProcess(config)
    try:
        daemon.wait_event("file_processed", timeout=60)
        daemon.wait_event("file_failed", timeout=60)
        wait_for(lambda: "bad" in str(read_status(tmp_path / "state")), 10, "the failure in status.json")
        # Python writes stdout with surrogateescape only under the C and C.UTF-8 locales; under a full one
        # such as en_US.UTF-8 (not installed in every container) it is strict UTF-8, which the last variant
        # asks for explicitly.
        for locale, encoding in (("C.UTF-8", ""), ("en_US.UTF-8", ""), ("en_US.UTF-8", "utf-8:strict")):
            env = {"LC_ALL": locale, "LANG": locale, "PYTHONIOENCODING": encoding, "PYTHONUTF8": "0"}
            for command in (["ledger", "list"], ["status"]):
                result = srd(*command, "--config", str(config), env=env)
                assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
                assert "\\xff" in result.stdout, result.stdout
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()


def test_with_its_ledger_lost_srd_still_replaces_its_own_output_instead_of_a_suffixed_copy(tmp_path: Path) -> None:
    """The whole ledger is gone (a state dir started afresh): srd processes the file again, and the mark it
    left on its output tells it the output is its own for this source, so no `a-1.png` appears. A file it
    did not write under that name still gets the suffix."""
    config = write_config(tmp_path)
    inbox, outbox, state = tmp_path / "in", tmp_path / "in-out", tmp_path / "state"
    (inbox / "a.png").write_bytes(make_image(Path("a.png"), (24, 32), 1))
    daemon = DaemonProcess(config)
    _run_until(daemon, "file_processed", 1)
    assert daemon.stop() == 0
    shutil.rmtree(state)
    (outbox / "b.png").write_bytes(b"a user's own file")
    (inbox / "b.png").write_bytes(make_image(Path("b.png"), (24, 32), 2))
    daemon = DaemonProcess(config)
    try:
        _run_until(daemon, "file_processed", 2)
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
    assert set(files_under(outbox)) == {"a.png", "b.png", "b-1.png"}
    assert (outbox / "b.png").read_bytes() == b"a user's own file"
