"""The daemon's Prometheus listener (/metrics, /healthz, /readyz) and its per-inbox hooks, against real
`srd run` processes, a real HTTP receiver for webhooks and a real command hook."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import REPO, inbox_config, make_image, running, srd, wait_for, write_config
from prometheus_client.parser import text_string_to_metric_families

from srd.config import load_config
from srd.daemon.fileevents import FileOutcome, failure_reason
from srd.daemon.hooks import HookRunner, redact_url
from srd.daemon.metrics import CONNECTION_IDLE_S, MAX_CONNECTIONS
from srd.observability import Hook

pytestmark = pytest.mark.e2e

SIZE = (24, 32)
# A command hook: writes its SRD_* variables to OUT/<pid>.json, then ends as MODE says (ok, fail, hang).
HOOK_SCRIPT = """
import json, os, sys, time
out, mode = sys.argv[1], sys.argv[2]
env = {k: v for k, v in os.environ.items() if k.startswith("SRD_")}
with open(os.path.join(out, f"{os.getpid()}.json"), "w") as f:
    json.dump(env, f)
if mode == "fail":
    print("hook says no", file=sys.stderr)
    sys.exit(3)
if mode == "hang":
    time.sleep(10**6)
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample on /metrics: (name, sorted labels) → value."""
    status, text = _get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def _ledger(config: Path) -> list[dict[str, Any]]:
    listing = srd("ledger", "list", "--json", "--config", str(config))
    assert listing.returncode == 0, listing.stderr
    return [json.loads(line) for line in listing.stdout.splitlines()]


class _Receiver:
    """A local webhook receiver: records each POST's JSON body; answers `status` (a 3xx to /redirected), and
    records a GET too (a followed redirect)."""

    def __init__(self, status: int) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.paths: list[str] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                receiver.bodies.append(body)
                receiver.paths.append(self.path)
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "/redirected")
                self.end_headers()

            def do_GET(self) -> None:
                receiver.paths.append("GET " + self.path)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def sources(self) -> list[str]:
        return [Path(body["source"]).name for body in self.bodies]


@contextmanager
def _receiver(status: int) -> Iterator[_Receiver]:
    receiver = _Receiver(status)
    try:
        yield receiver
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()


def _hook_calls(folder: Path) -> list[dict[str, str]]:
    return [json.loads(path.read_text()) for path in sorted(folder.glob("*.json")) if path.stat().st_size]


def _drop(inbox: Path, names: list[str], seed: int = 0) -> None:
    for i, name in enumerate(names):
        data = make_image(Path(name), SIZE, seed + i) if not name.startswith("bad") else b"not an image at all"
        (inbox / name).write_bytes(data)


def test_metrics_show_the_run_and_agree_with_the_ledger_also_after_a_restart(tmp_path: Path) -> None:
    """After a run, /metrics counts done and failed files per inbox and reason as the ledger holds them, with
    the job histograms, queue and pool gauges; /healthz and /readyz answer 200 while healthy; after a restart the
    counters still match the ledger."""
    port = _free_port()
    config = write_config(tmp_path, metrics={"listen": f"127.0.0.1:{port}"})
    inbox = tmp_path / "in"
    key = str(inbox)
    with running(config) as daemon:
        assert _get(f"http://127.0.0.1:{port}/healthz") == (200, "alive\n")
        _drop(inbox, ["a.png", "b.png", "c.jpg", "bad.png"])
        daemon.wait_event("file_processed", count=3)
        daemon.wait_event("file_failed")
        ledger = _ledger(config)
        done = sum(1 for entry in ledger if entry["state"] == "done")
        failed = sum(1 for entry in ledger if entry["state"] == "failed")
        assert (done, failed) == (3, 1)

        def settled() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
            samples = _scrape(port)
            labels = (("inbox", key), ("outcome", "done"), ("reason", "processed"))
            return samples if samples.get(("srd_files_total", labels)) == done else None

        samples = wait_for(settled, 10, "the scrape to show the run")
        assert samples[("srd_files_total", (("inbox", key), ("outcome", "failed"), ("reason", "not_an_image")))] \
            == failed
        assert samples[("srd_job_seconds_count", (("inbox", key),))] == done
        assert samples[("srd_job_megapixels_sum", (("inbox", key),))] == pytest.approx(done * 24 * 32 / 1e6)
        assert samples[("srd_ledger_entries", (("state", "done"),))] == done
        assert samples[("srd_queue_depth", (("inbox", key), ("stage", "queued")))] == 0
        assert samples[("srd_jobs_in_flight", (("inbox", key),))] == 0
        assert samples[("srd_inbox_healthy", (("inbox", key),))] == 1
        assert samples[("srd_worker_restarts_total", ())] == 0
        assert samples[("srd_ready", ())] == 1
        assert time.time() - samples[("srd_last_success_timestamp_seconds", (("inbox", key),))] < 120
        assert _get(f"http://127.0.0.1:{port}/readyz") == (200, "ready\n")
        dashboard = json.loads((REPO / "docs" / "grafana-dashboard.json").read_text())
        queried = {name for panel in dashboard["panels"] for target in panel["targets"]
                   for name in re.findall(r"\bsrd_\w+", target["expr"])}
        exported = {name for name, _ in samples} | {"srd_hook_runs_total"}  # no hook has run here
        assert queried and queried <= exported, queried - exported  # the sample dashboard shows real metrics
        assert srd("status", "--check", "--config", str(config)).returncode == 0  # the same verdict
        assert daemon.stop() == 0
    with pytest.raises(urllib.error.URLError):
        _get(f"http://127.0.0.1:{port}/healthz")  # the listener goes with the daemon

    with running(config) as daemon:
        samples = wait_for(lambda: _scrape(port) or None, 10, "a scrape after the restart")
        assert samples[("srd_files_total", (("inbox", key), ("outcome", "done"), ("reason", "processed")))] == done
        assert samples[("srd_files_total", (("inbox", key), ("outcome", "failed"), ("reason", "not_an_image")))] \
            == failed
        assert ("srd_last_success_timestamp_seconds", (("inbox", key),)) in samples
        assert daemon.stop() == 0


def test_file_counters_never_go_down_across_a_restart_when_one_content_is_seen_in_two_inboxes(
        tmp_path: Path) -> None:
    """The same junk bytes fail in inboxes a and b, and the same picture is done in a and a duplicate in b.
    The ledger keeps one entry per content, but after a restart every srd_files_total series is still there
    with the count it had: a counter that went down would read as a reset to Prometheus."""
    port = _free_port()
    config = write_config(tmp_path, [inbox_config(tmp_path, "a"), inbox_config(tmp_path, "b")],
                          metrics={"listen": f"127.0.0.1:{port}"})
    picture = make_image(Path("p.png"), SIZE, 7)
    with running(config) as daemon:
        for box in ("a", "b"):
            (tmp_path / box / "bad.png").write_bytes(b"the same junk in both")
            (tmp_path / box / "p.png").write_bytes(picture)
            wait_for(lambda box=box: not (tmp_path / box / "bad.png").exists(), 20, f"{box}/bad.png failed")
            if box == "a":
                wait_for(lambda: (tmp_path / "a-out" / "p.png").exists(), 20, "a/p.png done")

        def files_total() -> dict[tuple[tuple[str, str], ...], float]:
            return {labels: value for (name, labels), value in _scrape(port).items() if name == "srd_files_total"}

        before = wait_for(lambda: (found := files_total()).get(
            (("inbox", str(tmp_path / "b")), ("outcome", "skipped"), ("reason", "duplicate"))) == 1 and found,
            10, "the duplicate in b to be counted")
        for box in ("a", "b"):
            assert before[(("inbox", str(tmp_path / box)), ("outcome", "failed"), ("reason", "not_an_image"))] == 1
        assert before[(("inbox", str(tmp_path / "a")), ("outcome", "done"), ("reason", "processed"))] == 1
        assert daemon.stop() == 0
    with running(config) as daemon:
        after = wait_for(lambda: files_total() or None, 10, "a scrape after the restart")
        assert after == before
        assert daemon.stop() == 0


def test_readyz_turns_503_with_the_reason_when_srd_status_check_says_unhealthy(tmp_path: Path) -> None:
    """An inbox whose folder vanishes makes `srd status --check` exit 9; /readyz then answers 503 naming it,
    while /healthz (the loop is alive) stays 200."""
    port = _free_port()
    config = write_config(tmp_path, metrics={"listen": f"[::1]:{port}"} if socket.has_ipv6 and _ipv6_ok()
                          else {"listen": f"127.0.0.1:{port}"})
    host = "[::1]" if "[::1]" in config.read_text() else "127.0.0.1"
    with running(config):
        (tmp_path / "in").rename(tmp_path / "gone")  # as a share that is unmounted
        wait_for(lambda: srd("status", "--check", "--config", str(config)).returncode == 9, 15,
                 "srd status --check to say unhealthy")
        status, text = _get(f"http://{host}:{port}/readyz")
        assert status == 503 and text.startswith("not ready: inbox ") and str(tmp_path / "in") in text
        assert _get(f"http://{host}:{port}/healthz")[0] == 200


def _ipv6_ok() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_idle_metrics_connections_are_capped_and_cut_off_so_the_daemon_does_not_grow(tmp_path: Path) -> None:
    """Forty clients connect and send nothing: at most MAX_CONNECTIONS get a thread (the rest are closed at
    once), the daemon's threads stay bounded, and after CONNECTION_IDLE_S every idle one is closed and a
    scrape works again."""
    port = _free_port()
    config = write_config(tmp_path, metrics={"listen": f"127.0.0.1:{port}"})
    with running(config) as daemon:
        wait_for(lambda: _scrape(port) or None, 10, "a first scrape")
        threads_before = len(os.listdir(f"/proc/{daemon.proc.pid}/task"))
        idle = [socket.create_connection(("127.0.0.1", port), timeout=CONNECTION_IDLE_S + 10) for _ in range(40)]
        try:
            time.sleep(1)
            threads = len(os.listdir(f"/proc/{daemon.proc.pid}/task"))
            assert threads <= threads_before + MAX_CONNECTIONS, (threads_before, threads)
            started = time.monotonic()
            for conn in idle:
                assert conn.recv(1) == b""  # closed by the server: over the cap at once, the rest when idle
            assert time.monotonic() - started < CONNECTION_IDLE_S + 5
        finally:
            for conn in idle:
                conn.close()
        assert _scrape(port)
        assert len(os.listdir(f"/proc/{daemon.proc.pid}/task")) <= threads_before + 2
        assert daemon.stop() == 0
        assert "Traceback" not in daemon.log_tail(200)


def test_a_metrics_port_in_use_or_a_missing_package_is_a_clear_start_error(tmp_path: Path) -> None:
    """A taken port stops `srd run` at start with exit 10 naming the address; without prometheus_client
    installed, exit 2 saying what to install."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path, metrics={"listen": f"127.0.0.1:{port}"})
        result = srd("run", "--config", str(config))
    assert result.returncode == 10
    assert f"metrics listener 127.0.0.1:{port} can't be opened" in result.stderr
    # As `srd_command()`, with prometheus_client made unimportable, as where the extra is not installed.
    hidden = [sys.executable, "-c", "import sys; sys.modules['prometheus_client'] = None; "
              "from srd.cli.main import main; main()"]
    result = subprocess.run([*hidden, "run", "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "pip install 'srd[metrics]'" in result.stderr


def test_config_rejects_bad_metrics_and_hook_settings(tmp_path: Path) -> None:
    """A listen address that is not ip:port, a hook command given as a string (it would need a shell), a
    non-http webhook and a zero timeout are each reported at their location."""
    config = write_config(tmp_path, [inbox_config(tmp_path, on_done={"command": "notify $SRD_SOURCE"},
                                                  on_failed={"webhook": "ftp://x/y", "timeout": 0})],
                          metrics={"listen": "localhost:9464"})
    result = srd("config", "check", str(config))
    assert result.returncode == 2
    for where in ("'metrics.listen'", "'inboxes[0].on_done.command'", "'inboxes[0].on_failed.webhook'"):
        assert where in result.stderr, result.stderr
    parsed = load_config(write_config(tmp_path, [inbox_config(tmp_path, on_failed={"webhook": "https://h/x"})],
                                      name="ok.yaml"))
    assert parsed.inboxes[0].on_failed == Hook(None, "https://h/x", 30.0) and parsed.metrics is None


def test_config_refuses_a_webhook_url_with_credentials(tmp_path: Path) -> None:
    """A webhook URL with user:pass@ (urllib would resolve 'user:pass@host' as the host name) is a config
    error naming the hook and saying where a token goes instead, without echoing the password."""
    config = write_config(tmp_path, [inbox_config(tmp_path, on_failed={"webhook": "http://u:PASSWD@127.0.0.1:9/x"})])
    result = srd("config", "check", str(config))
    assert result.returncode == 2
    assert "'inboxes[0].on_failed.webhook'" in result.stderr and "user:pass@host" in result.stderr
    assert "PASSWD" not in result.stderr


def test_command_and_webhook_hooks_fire_once_per_file_with_the_outcome(tmp_path: Path) -> None:
    """on_done and on_failed run their command (no shell, SRD_* variables) and POST their webhook once per
    file, with the source, output or reason; a webhook URL's token never reaches the logs."""
    script = tmp_path / "hook.py"
    script.write_text(HOOK_SCRIPT)
    calls = tmp_path / "calls"
    calls.mkdir()
    with _receiver(200) as receiver:
        hook = {"command": [sys.executable, str(script), str(calls), "ok"],
                "webhook": f"{receiver.url}/hook/s3cr3t-token?key=s3cr3t-token", "timeout": 10}
        config = write_config(tmp_path, [inbox_config(tmp_path, on_done=hook, on_failed=hook)])
        inbox = tmp_path / "in"
        with running(config) as daemon:
            _drop(inbox, ["a.png", "b.jpg", "bad.png"])
            wait_for(lambda: len(receiver.bodies) >= 3 and len(_hook_calls(calls)) >= 3, 20,
                     "three webhooks and three commands")
            time.sleep(0.5)  # would a file's hook fire twice, it would have by now
            assert daemon.stop() == 0
            log = "".join(daemon.lines)
    assert sorted(receiver.sources()) == ["a.png", "b.jpg", "bad.png"]
    assert receiver.paths == ["/hook/s3cr3t-token?key=s3cr3t-token"] * 3
    by_name = {Path(body["source"]).name: body for body in receiver.bodies}
    assert by_name["a.png"]["status"] == "done" and by_name["a.png"]["output"] == str(tmp_path / "in-out" / "a.png")
    assert by_name["a.png"]["reason"] is None and by_name["a.png"]["megapixels"] == pytest.approx(24 * 32 / 1e6)
    assert by_name["bad.png"]["status"] == "failed" and "not an image" in by_name["bad.png"]["reason"]
    assert by_name["bad.png"]["output"] == str(tmp_path / "in-failed" / "bad.png")
    envs = {Path(env["SRD_SOURCE"]).name: env for env in _hook_calls(calls)}
    assert sorted(envs) == ["a.png", "b.jpg", "bad.png"]
    assert envs["b.jpg"]["SRD_STATUS"] == "done" and envs["b.jpg"]["SRD_INBOX"] == str(inbox)
    assert envs["b.jpg"]["SRD_OUTPUT"] == str(tmp_path / "in-out" / "b.jpg") and envs["b.jpg"]["SRD_REASON"] == ""
    assert envs["bad.png"]["SRD_STATUS"] == "failed" and "not an image" in envs["bad.png"]["SRD_REASON"]
    assert "s3cr3t" not in log


def test_hooks_that_hang_or_fail_do_not_delay_any_file(tmp_path: Path) -> None:
    """One daemon, two inboxes: one whose on_done command never returns and whose webhook answers 500 (retried),
    one without hooks. Every file of both is done, in the ledger and in its outbox while the first hook still
    hangs and the webhook is still being retried; the daemon then stops at once (exit 0), killing the hook."""
    script = tmp_path / "hook.py"
    script.write_text(HOOK_SCRIPT)
    calls = tmp_path / "calls"
    calls.mkdir()
    names = [f"p{i}.png" for i in range(6)]
    with _receiver(500) as receiver:
        hook = {"command": [sys.executable, str(script), str(calls), "hang"], "webhook": receiver.url + "/x",
                "timeout": 300}
        config = write_config(tmp_path, [inbox_config(tmp_path, "hooked", on_done=hook),
                                          inbox_config(tmp_path, "plain")])
        with running(config) as daemon:
            _drop(tmp_path / "hooked", names)
            _drop(tmp_path / "plain", names, seed=100)
            daemon.wait_event("file_processed", count=2 * len(names))
            ledger = _ledger(config)
            for box in ("hooked", "plain"):
                assert sorted(p.name for p in (tmp_path / f"{box}-out").iterdir()) == names
                assert sum(1 for e in ledger if e["state"] == "done" and e["inbox"] == str(tmp_path / box)) == 6
            hanging = wait_for(lambda: _hook_calls(calls), 10, "the first command hook to start")
            assert not daemon.events("hook_command_timeout")  # every file was done while the hooks hung
            wait_for(lambda: daemon.events("hook_webhook_retrying"), 10, "a webhook retry after HTTP 500")
            assert daemon.events("hook_webhook_retrying")[0]["error"] == "HTTP 500"
            started = time.monotonic()
            assert daemon.stop() == 0
            assert time.monotonic() - started < 20  # a hung hook is killed, not waited for
    pids = [int(path.stem) for path in calls.glob("*.json")]
    assert len(hanging) >= 1 and pids
    for pid in pids:
        wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists() or _zombie(pid), 5, f"hook {pid} to be killed")


def test_at_stop_hooks_never_run_are_counted_and_named_and_readyz_says_stopping(tmp_path: Path) -> None:
    """Five files done behind a command hook that hangs: two hooks run (and are killed at stop), the three
    still queued are reported in one `hooks_dropped_at_stop` line with their count and files. While the hooks
    get their last seconds, the metrics listener is still open and /readyz answers 503 "stopping"."""
    script = tmp_path / "hook.py"
    script.write_text(HOOK_SCRIPT)
    calls = tmp_path / "calls"
    calls.mkdir()
    names = [f"p{i}.png" for i in range(5)]
    port = _free_port()
    hook = {"command": [sys.executable, str(script), str(calls), "hang"], "timeout": 300}
    config = write_config(tmp_path, [inbox_config(tmp_path, on_done=hook)], metrics={"listen": f"127.0.0.1:{port}"})
    with running(config) as daemon:
        _drop(tmp_path / "in", names)
        daemon.wait_event("file_processed", count=len(names))
        wait_for(lambda: len(_hook_calls(calls)) == 2, 10, "both command threads to run a hook")
        daemon.proc.send_signal(signal.SIGTERM)
        daemon.wait_event("daemon_stopping")
        answers = set()
        while daemon.proc.poll() is None:
            with contextlib.suppress(OSError):  # URLError too: the listener has closed, last of all
                answers.add(_get(f"http://127.0.0.1:{port}/readyz"))
            time.sleep(0.1)
        assert daemon.stop() == 0
    assert (503, "stopping\n") in answers and not any(code == 200 for code, _ in answers), answers
    [dropped] = daemon.events("hooks_dropped_at_stop")
    assert dropped["kind"] == "command" and dropped["count"] == 3 and dropped["more"] == 0
    ran = {Path(env["SRD_SOURCE"]).name for env in _hook_calls(calls)}
    assert sorted(Path(src).name for src in dropped["files"]) == sorted(set(names) - ran)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_a_command_hook_past_its_timeout_is_killed_with_its_children(tmp_path: Path) -> None:
    """A command hook that outlives its timeout is killed, its whole process group with it, and counted as a
    timeout; one that exits non-zero counts as failed; the runner goes on with the next."""
    script = tmp_path / "hook.py"
    script.write_text(HOOK_SCRIPT)
    inbox = inbox_config(tmp_path)
    child_pid = tmp_path / "child.pid"
    config = load_config(write_config(tmp_path, [{**inbox, "on_done": {
        "command": ["sh", "-c", f"sleep 1000 & echo $! > {child_pid}; wait"], "timeout": 1.0},
        "on_failed": {"command": [sys.executable, str(script), str(tmp_path), "fail"]}}]))
    runner = HookRunner()
    runner(FileOutcome("done", config.inboxes[0], tmp_path / "in" / "a.png", tmp_path / "in-out" / "a.png"))
    runner(FileOutcome("failed", config.inboxes[0], tmp_path / "in" / "b.png", None, reason="bad"))
    wait_for(lambda: sum(runner.results().values()) == 2, 10, "both hooks to end")
    assert runner.results() == {("command", "timeout"): 1, ("command", "failed"): 1}
    sleeper = int(child_pid.read_text())
    wait_for(lambda: not Path(f"/proc/{sleeper}").exists() or _zombie(sleeper), 5, "the hook's child to be killed")
    assert [env["SRD_REASON"] for env in _hook_calls(tmp_path)] == ["bad"]
    runner.close(1.0)
    assert os.environ.get("SRD_STATUS") is None  # the variables go to the hook only


def test_a_webhook_redirect_is_not_followed_and_not_retried(tmp_path: Path) -> None:
    """A 302 answer ends the hook as failed ('HTTP 302') after one POST: urllib would follow it as a GET
    without the body, and sending the same POST again would get the same answer."""
    config = load_config(write_config(tmp_path, [inbox_config(tmp_path)]))
    with _receiver(302) as receiver:
        runner = HookRunner()
        inbox = replace(config.inboxes[0], on_done=Hook(None, receiver.url + "/x", 5.0))
        runner(FileOutcome("done", inbox, tmp_path / "in" / "a.png", tmp_path / "in-out" / "a.png"))
        wait_for(lambda: runner.results(), 10, "the webhook to end")
        assert runner.results() == {("webhook", "failed"): 1}
        assert receiver.paths == ["/x"]
        runner.close(1.0)


def test_a_command_hook_that_exits_takes_its_background_children_with_it(tmp_path: Path) -> None:
    """A hook that starts a background child and exits 0 counts as ok, and the child is killed with the
    hook's process group rather than left running, never reaped."""
    child_pid = tmp_path / "child.pid"
    config = load_config(write_config(tmp_path, [{**inbox_config(tmp_path), "on_done": {
        "command": ["sh", "-c", f"sleep 1000 & echo $! > {child_pid}"], "timeout": 30}}]))
    runner = HookRunner()
    runner(FileOutcome("done", config.inboxes[0], tmp_path / "in" / "a.png", tmp_path / "in-out" / "a.png"))
    wait_for(lambda: runner.results(), 10, "the hook to end")
    assert runner.results() == {("command", "ok"): 1}
    sleeper = int(child_pid.read_text())
    wait_for(lambda: not Path(f"/proc/{sleeper}").exists() or _zombie(sleeper), 5, "the hook's child to be killed")
    runner.close(1.0)


def test_failure_reasons_fall_into_a_few_label_values_and_webhook_urls_are_logged_without_secrets() -> None:
    """The failure label is one of a few classes, whatever the message; a URL shows only scheme, host and port."""
    assert failure_reason("file is 9 bytes, over the limit of 1 (max_input_bytes)") == "too_large"
    assert failure_reason("not an image (unrecognised file signature)") == "not_an_image"
    assert failure_reason("corrupt or truncated PNG data (decoder failed)") == "corrupt"
    assert failure_reason("truncated JPEG (12 bytes short); unchanged for 700 s") == "truncated"
    assert failure_reason("stuck: timed out after 120 s; gave up after 3 deaths pinned on this file") == "crashed"
    assert failure_reason("something new") == "error" and failure_reason(None) == "error"
    assert redact_url("https://user:pw@hooks.example.com:8443/T0KEN/x?sig=abc") == "https://hooks.example.com:8443/…"
