"""The daemon's life cycle under faults of its own processes: a frozen forkserver at shutdown, a job timeout
that takes innocent jobs down with it, a daemon frozen long enough to lose its inbox claims, and two daemons
claiming one inbox at the same instant. Real `srd run` processes, real signals."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from daemon_helpers import (
    DaemonProcess,
    decoded_size,
    descendants_of,
    inbox_config,
    make_image,
    read_status,
    srd,
    wait_for,
    write_config,
)

from srd.config.schema import MIN_CLAIM_STALE_S
from srd.daemon.claim import CLAIM_NAME, RETRY_UNTRUSTED_S, ClaimTiming, InboxClaimedError, InboxClaims
from srd.fs.atomic import TEMP_PREFIX

# End to end: each test runs a real srd daemon (srd run) on real folders.
pytestmark = pytest.mark.e2e

SIZE = (24, 32)


def _children(pid: int) -> list[int]:
    return [child for child in descendants_of(pid) if _parent(child) == pid]


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _forkserver_of(daemon_pid: int) -> int | None:
    for child in _children(daemon_pid):
        with contextlib.suppress(OSError):
            if b"multiprocessing.forkserver" in Path(f"/proc/{child}/cmdline").read_bytes():
                return child
    return None


def test_sigterm_exits_within_the_drain_bound_while_the_forkserver_is_frozen(tmp_path: Path) -> None:
    """A forkserver that stops answering (SIGSTOP) never reports its workers' deaths, and shutting the pool
    down waited for them forever. SIGTERM must still end the daemon soon after the drain bound, with exit 0,
    killing the frozen forkserver and saying so."""
    config = write_config(tmp_path)
    daemon = DaemonProcess(config, drain_timeout=3)
    forkserver = None
    try:
        daemon.wait_ready()
        (tmp_path / "in" / "a.png").write_bytes(make_image(Path("x.png"), SIZE, 1))
        daemon.wait_event("file_processed", timeout=30)
        forkserver = wait_for(lambda: _forkserver_of(daemon.pid), 10, "the daemon's forkserver")
        os.kill(forkserver, signal.SIGSTOP)
        began = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        code = daemon.proc.wait(timeout=3 + 20)  # drain bound + the pool's close grace + a loaded machine
        took = time.monotonic() - began
        daemon._reader.join(timeout=5)
        assert code == 0, daemon.log_tail()
        assert took < 3 + 20
        killed = daemon.events("pool_close_stuck_killing_forkserver")
        assert killed and killed[0]["forkserver"] == forkserver, daemon.log_tail()
        assert daemon.events("daemon_stopped")
    finally:
        if forkserver is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(forkserver, signal.SIGCONT)
        if daemon.proc.poll() is None:
            daemon.proc.kill()


def _workers_of(daemon_pid: int) -> list[int]:
    forkserver = _forkserver_of(daemon_pid)
    return _children(forkserver) if forkserver is not None else []


def _running(state: Path) -> set[str]:
    inboxes = read_status(state).get("inboxes") or []
    return {job["source"] for inbox in inboxes for job in inbox.get("running", [])}


def test_jobs_killed_with_a_timed_out_one_lose_their_temps_at_once_and_are_retried_uncharged(tmp_path: Path) -> None:
    """One job past its time limit kills the whole executor. A job that shared it (its worker killed too,
    halfway through writing its output) must not leave its temp in the outbox until the next restart: it is
    cleaned up at once, retried (not alone) without a strike, and completes; nothing is failed."""
    config = write_config(tmp_path, workers=2, job_timeout_min_seconds=6)
    inbox, outbox, state = tmp_path / "in", tmp_path / "in-out", tmp_path / "state"
    daemon = DaemonProcess(config)
    stopped: list[int] = []
    try:
        daemon.wait_ready()
        for n in (1, 2):  # two jobs at once: the executor starts both its workers
            (inbox / f"warm{n}.png").write_bytes(make_image(Path("x.png"), SIZE, n))
        daemon.wait_event("file_processed", timeout=30, count=2)
        stopped = wait_for(lambda: len(_workers_of(daemon.pid)) == 2 and _workers_of(daemon.pid), 10,
                           "two worker processes")
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        (inbox / "stuck.png").write_bytes(make_image(Path("x.png"), SIZE, 3))
        wait_for(lambda: "stuck.png" in _running(state), 20, "stuck.png running\n" + daemon.log_tail())
        (inbox / "innocent.png").write_bytes(make_image(Path("x.png"), SIZE, 4))
        wait_for(lambda: "innocent.png" in _running(state), 20, "innocent.png running\n" + daemon.log_tail())
        half_written = outbox / f"{TEMP_PREFIX}innocent.png.0123456789ab"  # what its frozen worker had written
        half_written.write_bytes(b"\x89PNG half")

        timed_out = daemon.wait_event("job_timed_out", timeout=30)
        assert [event["src"] for event in timed_out] == [str(inbox / "stuck.png")]
        wait_for(lambda: not half_written.exists(), 10, "the innocent job's temp to be removed\n" + daemon.log_tail())
        retried = {event["src"]: event for event in daemon.wait_event("job_lost_retrying", timeout=10, count=2)}
        innocent = retried[str(inbox / "innocent.png")]
        assert innocent["pinned"] is False and innocent["strikes"] == 0, innocent
        assert retried[str(inbox / "stuck.png")]["pinned"] is True
        wait_for(lambda: (outbox / "innocent.png").exists() and (outbox / "stuck.png").exists(), 30,
                 "both outputs\n" + daemon.log_tail())
        assert decoded_size(outbox / "innocent.png") == (2 * SIZE[0], 2 * SIZE[1])
        started = [e for e in daemon.events("file_started") if e["src"] == str(inbox / "innocent.png")]
        assert [e["solo"] for e in started] == [False, False]  # its retry did not have to run alone
        assert not (tmp_path / "in-failed").exists() or not any((tmp_path / "in-failed").iterdir())
        assert daemon.stop() == 0
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        if daemon.proc.poll() is None:
            daemon.proc.kill()


# -- inbox claims ----------------------------------------------------------------------------------------------


def _second_config(tmp_path: Path, config: Path) -> Path:
    """A copy of `config` with its own state_dir: another daemon pointed at the same inbox."""
    copied = yaml.safe_load(config.read_text())
    copied["state_dir"] = str(tmp_path / "state-2")
    path = tmp_path / "copied.yaml"
    path.write_text(yaml.safe_dump(copied))
    return path


def _age_claim_in_place(claim: Path, seconds: float) -> None:
    """Make a claim's heartbeat `seconds` old without replacing the file (its holder still knows it as its own):
    what a minute of SIGSTOP does to it, without waiting that minute."""
    holder = json.loads(claim.read_text())
    with claim.open("r+") as fh:
        fh.write(json.dumps({**holder, "heartbeat": holder["heartbeat"] - seconds}))
        fh.truncate()


def test_a_daemon_resumed_after_losing_its_claim_pauses_the_inbox_until_the_claim_is_free_again(
        tmp_path: Path) -> None:
    """Daemon A is frozen (SIGSTOP) long enough that its claim goes stale and daemon B takes the inbox over.
    When A resumes it must not take a single new file from that inbox (B owns it), must not record the job it
    had running (recording moves or deletes the source), must say so in `srd status` (unhealthy, naming B),
    and may take the inbox back only once B's claim is released; then it finishes the parked job."""
    timing = ClaimTiming(MIN_CLAIM_STALE_S)  # the same behaviour as at the default, in a sixth of the time
    config = write_config(tmp_path, [inbox_config(tmp_path, on_success="delete")], claim_stale_seconds=timing.stale_s)
    inbox, outbox = tmp_path / "in", tmp_path / "in-out"
    claim = inbox / CLAIM_NAME
    first = DaemonProcess(config)
    second: DaemonProcess | None = None
    workers: list[int] = []
    try:
        first.wait_ready()
        (inbox / "warm.png").write_bytes(make_image(Path("x.png"), SIZE, 3))
        first.wait_event("file_processed", timeout=30)
        workers = wait_for(lambda: _workers_of(first.pid), 10, "A's worker")
        for pid in workers:  # held so that A has a job running when it freezes
            os.kill(pid, signal.SIGSTOP)
        (inbox / "inflight.png").write_bytes(make_image(Path("x.png"), SIZE, 4))
        wait_for(lambda: "inflight.png" in _running(tmp_path / "state"), 20, "A's job\n" + first.log_tail())
        os.kill(first.pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        for pid in workers:  # its result waits for A in the pipe
            os.kill(pid, signal.SIGCONT)
        _age_claim_in_place(claim, timing.stale_s + 5)
        second = DaemonProcess(_second_config(tmp_path, config))
        second.wait_ready()
        assert second.events("inbox_claim_taken_over")
        assert json.loads(claim.read_text())["pid"] == second.pid
        # A frozen this long finds its last confirmation older than its lease: a real freeze that let B take
        # over lasted stale_s at least.
        time.sleep(max(0.0, timing.lease_s + 1 - (time.monotonic() - frozen_at)))
        os.kill(first.pid, signal.SIGCONT)
        (inbox / "late.png").write_bytes(make_image(Path("x.png"), SIZE, 5))
        second.wait_event("file_processed", timeout=30)
        lost = first.wait_event("inbox_claim_lost", timeout=20)[0]
        assert f"(pid {second.pid}," in lost["holder"]
        time.sleep(2)  # A had every chance to take the file too, and to record its job
        started = [str(inbox / "warm.png"), str(inbox / "inflight.png")]
        assert [e["src"] for e in first.events("file_started")] == started, first.log_tail()
        assert [e["src"] for e in first.events("file_processed")] == [str(inbox / "warm.png")], first.log_tail()
        assert not first.events("file_failed")
        assert first.events("inbox_paused_claim_untrusted")

        def paused_in_status() -> dict[str, Any] | None:
            found = (read_status(tmp_path / "state").get("inboxes") or [{}])[0]
            return found if (found.get("claim") or {}).get("state") == "lost" else None

        shown = wait_for(paused_in_status, 10, "A's status to show the lost claim")
        assert shown["health"] == "unhealthy"
        taken_by = f"its claim was taken by srd on host {socket.gethostname()} (pid {second.pid}"
        status = srd("status", "--config", str(config))
        assert f"{inbox}: paused: {taken_by}" in status.stdout, status.stdout
        check = srd("status", "--check", "--config", str(config))
        assert check.returncode == 9 and taken_by in check.stdout, check.stdout

        assert second.stop() == 0  # B lets go of the claim: A may take the inbox back
        first.wait_event("inbox_claim_regained", timeout=20)
        resumed = first.wait_event("inbox_resumed_claim_confirmed", timeout=20)[0]
        assert resumed["parked"] == 1
        assert json.loads(claim.read_text())["pid"] == first.pid
        (inbox / "after.png").write_bytes(make_image(Path("x.png"), SIZE, 6))
        wait_for(lambda: (outbox / "after.png").exists() and not (inbox / "after.png").exists(), 30,
                 "A to process again\n" + first.log_tail())
        assert [e["src"] for e in first.events("file_started")] == [*started, str(inbox / "after.png")]
        assert first.stop() == 0
    finally:
        for pid in [first.pid, *workers]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        for daemon in (first, second):
            if daemon is not None and daemon.proc.poll() is None:
                daemon.proc.kill()


_CLAIMER = """
import json, sys, time
from pathlib import Path
from srd.daemon.claim import InboxClaimedError, InboxClaims
root, start, rounds = Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
claims = InboxClaims(root / "state")
for n in range(rounds):
    time.sleep(max(0.0, start + 0.4 * n - time.time()))  # every claimer tries round n at the same instant
    try:
        claims.acquire(root / f"inbox-{n}")
        print("RESULT", json.dumps([n, "won"]), flush=True)
    except InboxClaimedError:
        print("RESULT", json.dumps([n, "refused"]), flush=True)
    except OSError as exc:  # neither won nor refused: what a race must never end in either
        print("RESULT", json.dumps([n, f"error: {exc}"]), flush=True)
sys.stdin.read()  # hold the claims (a live pid) until every claimer is done
"""


def test_claimers_racing_for_a_free_or_a_stale_claim_never_both_win(tmp_path: Path) -> None:
    """Six processes claim the same inbox at the same instant, round after round; half the inboxes hold a stale
    claim to take over (a dead pid's). Exactly one claimer wins each round."""
    rounds, claimers = 16, 6
    for n in range(rounds):
        (tmp_path / f"inbox-{n}").mkdir()
        if n % 2:
            dead = {"host": socket.gethostname(), "pid": _dead_pid(), "instance": "gone", "state_dir": "/x",
                    "heartbeat": time.time()}
            (tmp_path / f"inbox-{n}" / CLAIM_NAME).write_text(json.dumps(dead))
    start = time.time() + 3
    procs = [subprocess.Popen([sys.executable, "-c", _CLAIMER, str(tmp_path), str(start), str(rounds)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for _ in range(claimers)]
    results: dict[int, list[str]] = {n: [] for n in range(rounds)}
    try:
        for proc in procs:
            assert proc.stdout is not None
            for _ in range(rounds):
                line = proc.stdout.readline()
                while line and not line.startswith("RESULT "):  # srd's own log lines
                    line = proc.stdout.readline()
                n, verdict = json.loads(line.removeprefix("RESULT "))
                results[n].append(verdict)
    finally:
        for proc in procs:
            proc.communicate(timeout=30)
    assert all(sorted(verdicts) == ["refused"] * (claimers - 1) + ["won"] for verdicts in results.values()), results
    assert all(not (tmp_path / f"inbox-{n}" / name).exists() or name == CLAIM_NAME
               for n in range(rounds) for name in os.listdir(tmp_path / f"inbox-{n}")), "a temp or set-aside claim left"


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _settled(daemons: list[DaemonProcess]) -> bool:
    """Whether each daemon is either ready or gone."""
    return all(d.proc.poll() is not None or d.events("daemon_ready") for d in daemons)


def test_two_daemons_started_together_on_one_inbox_one_runs_and_the_other_is_refused(tmp_path: Path) -> None:
    """Two real `srd run` on one inbox (a copied config) started in the same instant, several times: each
    time exactly one runs and the other exits 6 naming it."""
    config = write_config(tmp_path)
    other = _second_config(tmp_path, config)
    for _ in range(4):
        daemons = [DaemonProcess(config), DaemonProcess(other)]
        try:
            wait_for(functools.partial(_settled, daemons), 60, "both daemons to start or give up")
            running = [d for d in daemons if d.proc.poll() is None]
            refused = [d for d in daemons if d.proc.poll() is not None]
            assert len(running) == 1 and len(refused) == 1, [d.log_tail() for d in daemons]
            assert refused[0].proc.returncode == 6
            refused[0]._reader.join(timeout=5)
            assert f"(pid {running[0].pid}," in refused[0].log_tail()
            assert running[0].stop() == 0
        finally:
            for daemon in daemons:
                if daemon.proc.poll() is None:
                    daemon.proc.kill()


@pytest.mark.parametrize("timing", [ClaimTiming(), ClaimTiming(MIN_CLAIM_STALE_S)], ids=["default", "shortest"])
def test_a_claim_is_trusted_for_its_lease_after_each_confirmation_and_not_while_another_daemon_holds_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, timing: ClaimTiming) -> None:
    """The lease, with its clock driven: trusted for lease_s (half the configured stale time) after a
    confirmation, unconfirmed after, renewed by a heartbeat (due every second meanwhile); lost to a live taker
    once the claim is stale_s old, and regained once that one lets go."""
    monkeypatch.setattr("srd.daemon.claim.pid_alive", lambda pid: True)  # both claimers live in pytest, not in `srd`
    now = [0.0]
    inbox = tmp_path / "in"
    inbox.mkdir()
    claims = InboxClaims(tmp_path / "state", timing, monotonic=lambda: now[0])
    claims.acquire(inbox)
    assert claims.trusted(inbox) and not claims.due()
    now[0] = timing.heartbeat_s
    assert claims.due() == [inbox] and claims.trusted(inbox)
    now[0] = timing.lease_s - 0.5
    assert claims.trusted(inbox)
    now[0] = timing.lease_s + 1
    assert not claims.trusted(inbox) and claims.describe(inbox)["state"] == "unconfirmed"
    assert claims.due() == [inbox]
    claims.heartbeat(inbox)
    assert claims.trusted(inbox) and claims.describe(inbox) == {"state": "held", "reason": None}

    _age_claim_in_place(inbox / CLAIM_NAME, timing.stale_s - 2)
    taker = InboxClaims(tmp_path / "state-2", timing)
    with pytest.raises(InboxClaimedError):  # not stale yet
        taker.acquire(inbox)
    _age_claim_in_place(inbox / CLAIM_NAME, 7)  # now stale_s + 5 old: as after a long freeze
    taker.acquire(inbox)
    now[0] += timing.heartbeat_s
    claims.heartbeat(inbox)
    assert not claims.trusted(inbox)
    assert claims.describe(inbox)["state"] == "lost" and "state-2" in str(claims.describe(inbox)["reason"])
    now[0] += RETRY_UNTRUSTED_S
    claims.heartbeat(inbox)
    assert not claims.trusted(inbox)  # the taker is alive: no retaking
    taker.release(inbox)
    now[0] += RETRY_UNTRUSTED_S
    claims.heartbeat(inbox)
    assert claims.trusted(inbox)
    assert json.loads((inbox / CLAIM_NAME).read_text())["state_dir"] == str(tmp_path / "state")
