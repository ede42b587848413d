"""Per-inbox ``on_done`` / ``on_failed`` hooks: a command and/or a webhook for each file's outcome.

They run in a few threads of their own fed by bounded queues, after the ledger holds the outcome, so a hook
that hangs or fails can neither lose nor delay a file's own outcome; a full queue drops the hook, logged
(docs/design.md §9). Commands run without a shell, in their own process group (killed whole when the command
exits or times out), with the outcome in ``SRD_*`` environment variables. Webhooks are JSON POSTs, retried
with a doubling back-off, never redirected. A webhook URL may carry a token: logs show only its scheme and host.
Hooks still queued at stop are discarded, counted as dropped and named in one log line.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import queue
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import structlog

from srd.daemon.fileevents import FileOutcome
from srd.observability import Hook

log = structlog.get_logger(__name__)

THREADS_PER_KIND = 2  # commands and webhooks each: a hung command never holds up the webhooks
QUEUE_SIZE = 1000  # outcomes waiting per kind; beyond this a hook is dropped, not the loop slowed
WEBHOOK_ATTEMPTS = 5
WEBHOOK_FIRST_BACKOFF_S = 1.0  # then 2, 4, 8 s
STDERR_TAIL_BYTES = 500
DROPPED_NAMED = 10  # the stop's summary line names this many of the hooks it dropped; debug names them all
# systemd's channel to srd itself: a hook speaking on it would be taken for the daemon.
_SERVICE_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC")


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect answer ends the attempt as `HTTP 3xx`: followed, a POST would turn into a GET without its
    body (301, 302, 303) or reach a host the config never named."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirects)


def redact_url(url: str) -> str:
    """Only the scheme, host and port of a URL: its path, query or user part may hold a token."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}/…"


def hook_environment(outcome: FileOutcome) -> dict[str, str]:
    """The ``SRD_*`` variables a command hook receives (empty where a value does not apply)."""
    return {
        "SRD_STATUS": outcome.status,
        "SRD_INBOX": str(outcome.inbox.path),
        "SRD_SOURCE": str(outcome.source),
        "SRD_OUTPUT": str(outcome.output) if outcome.output is not None else "",
        "SRD_REASON": outcome.reason or "",
        "SRD_SECONDS": f"{outcome.seconds:.3f}" if outcome.seconds is not None else "",
        "SRD_MEGAPIXELS": f"{outcome.megapixels:.3f}" if outcome.megapixels is not None else "",
    }


def webhook_payload(outcome: FileOutcome) -> dict[str, Any]:
    return {
        "status": outcome.status,
        "inbox": str(outcome.inbox.path),
        "source": str(outcome.source),
        "output": str(outcome.output) if outcome.output is not None else None,
        "reason": outcome.reason,
        "seconds": outcome.seconds,
        "megapixels": outcome.megapixels,
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _hook_of(outcome: FileOutcome) -> Hook | None:
    return outcome.inbox.on_done if outcome.status == "done" else outcome.inbox.on_failed


class HookRunner:
    """Runs the inboxes' hooks off the loop; subscribe it to `FileEvents`. `results` counts runs by
    (kind, result): ok, failed, timeout, dropped."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._results: Counter[tuple[str, str]] = Counter()
        self._children: set[subprocess.Popen[bytes]] = set()
        self._lanes = {kind: _Lane(kind, run, self._stop, self._count)
                       for kind, run in (("command", self._run_command), ("webhook", self._post))}

    def __call__(self, outcome: FileOutcome) -> None:
        hook = _hook_of(outcome)
        if hook is None:
            return
        if hook.command is not None:
            self._lanes["command"].offer(hook, outcome)
        if hook.webhook is not None:
            self._lanes["webhook"].offer(hook, outcome)

    def results(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._results)

    def close(self, wait_s: float) -> None:
        """Take no more hooks, give the queued and running ones up to `wait_s` to end, then stop them: cut
        webhook back-offs short and kill the commands still running."""
        deadline = time.monotonic() + wait_s
        for lane in self._lanes.values():
            lane.finish()
        for lane in self._lanes.values():
            lane.join(deadline)
        self._stop.set()
        with self._lock:
            children = list(self._children)
        for child in children:
            _kill_group(child)
        for lane in self._lanes.values():
            lane.join(time.monotonic() + 1.0)  # a killed command's thread counts its result, then sees the flag
            lane.report_dropped()

    def _count(self, kind: str, result: str) -> None:
        with self._lock:
            self._results[kind, result] += 1

    def _run_command(self, hook: Hook, outcome: FileOutcome) -> str:
        assert hook.command is not None
        program = hook.command[0]
        with tempfile.TemporaryFile() as output:
            try:
                child = subprocess.Popen(hook.command, stdin=subprocess.DEVNULL, stdout=output, stderr=output,
                                         env=_environment(outcome), start_new_session=True)
            except OSError as exc:
                log.error("hook_command_failed", program=program, src=str(outcome.source), error=str(exc))
                return "failed"
            with self._lock:
                self._children.add(child)
                stopping = self._stop.is_set()  # `close` has killed the children it knew of
            if stopping:
                _kill_group(child)
            try:
                code = child.wait(timeout=hook.timeout)
            except subprocess.TimeoutExpired:
                _kill_group(child)
                child.wait()
                log.error("hook_command_timeout", program=program, src=str(outcome.source), timeout_s=hook.timeout)
                return "timeout"
            finally:
                with self._lock:
                    self._children.discard(child)
            _kill_group(child)  # what it left running in the background: nothing would ever reap it
            if code != 0:
                output.seek(max(0, output.seek(0, os.SEEK_END) - STDERR_TAIL_BYTES))
                log.error("hook_command_failed", program=program, src=str(outcome.source), exit_code=code,
                          output=output.read().decode(errors="replace").strip())
                return "failed"
        log.debug("hook_command_done", program=program, src=str(outcome.source))
        return "ok"

    def _post(self, hook: Hook, outcome: FileOutcome) -> str:
        assert hook.webhook is not None
        body = json.dumps(webhook_payload(outcome)).encode()
        shown = redact_url(hook.webhook)
        backoff = WEBHOOK_FIRST_BACKOFF_S
        error = ""
        for attempt in range(1, WEBHOOK_ATTEMPTS + 1):
            request = urllib.request.Request(hook.webhook, data=body, method="POST",
                                             headers={"Content-Type": "application/json", "User-Agent": "srd"})
            try:
                with _opener.open(request, timeout=hook.timeout) as response:
                    response.read(65536)
                log.debug("hook_webhook_done", url=shown, src=str(outcome.source), attempt=attempt)
                return "ok"
            except urllib.error.HTTPError as exc:
                error = f"HTTP {exc.code}"
                if 300 <= exc.code < 500 and exc.code not in (408, 429):
                    break  # a redirect, or the receiver refuses this request: sending it again changes nothing
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
                error = str(reason)
            if attempt < WEBHOOK_ATTEMPTS:
                log.warning("hook_webhook_retrying", url=shown, src=str(outcome.source), attempt=attempt,
                            error=error, retry_in_s=backoff)
                if self._stop.wait(backoff):
                    break
                backoff *= 2
        log.error("hook_webhook_failed", url=shown, src=str(outcome.source), error=error)
        return "failed"


class _Lane:
    """One kind of hook: a bounded queue and the threads that work it off."""

    def __init__(self, kind: str, run: Callable[[Hook, FileOutcome], str], stop: threading.Event,
                 count: Callable[[str, str], None]) -> None:
        self._kind = kind
        self._run = run
        self._stop = stop
        self._count = count
        self._queue: queue.Queue[tuple[Hook, FileOutcome] | None] = queue.Queue(QUEUE_SIZE)
        self._threads: list[threading.Thread] = []
        self._finished = False
        self._dropped_lock = threading.Lock()
        self._dropped_at_stop: list[FileOutcome] = []

    def offer(self, hook: Hook, outcome: FileOutcome) -> None:
        if self._finished:
            self._drop_at_stop(outcome)
            return
        try:
            self._queue.put_nowait((hook, outcome))
        except queue.Full:
            self._count(self._kind, "dropped")
            log.warning("hook_dropped", kind=self._kind, src=str(outcome.source), queued=QUEUE_SIZE)
            return
        if len(self._threads) < THREADS_PER_KIND:
            thread = threading.Thread(target=self._work, name=f"srd-hook-{self._kind}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def finish(self) -> None:
        """Take no more; each thread ends after the hooks queued before now (or at the stop flag)."""
        self._finished = True
        for _ in self._threads:
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                break  # the threads end at the stop flag instead

    def join(self, deadline: float) -> None:
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def report_dropped(self) -> None:
        """After the stop flag: count the hooks never run as dropped, and say so in one line."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                self._drop_at_stop(item[1])
        with self._dropped_lock:
            dropped, self._dropped_at_stop = self._dropped_at_stop, []
        if not dropped:
            return
        sources = [str(outcome.source) for outcome in dropped]
        log.warning("hooks_dropped_at_stop", kind=self._kind, count=len(dropped), files=sources[:DROPPED_NAMED],
                    more=max(0, len(sources) - DROPPED_NAMED))
        log.debug("hooks_dropped_at_stop_files", kind=self._kind, files=sources)

    def _drop_at_stop(self, outcome: FileOutcome) -> None:
        self._count(self._kind, "dropped")
        with self._dropped_lock:
            self._dropped_at_stop.append(outcome)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._stop.is_set():
                self._drop_at_stop(item[1])
                return
            hook, outcome = item
            try:
                result = self._run(hook, outcome)
            except Exception:  # a bug here must not end the thread: later hooks still run
                log.exception("hook_error", kind=self._kind, src=str(outcome.source))
                result = "failed"
            self._count(self._kind, result)


def _environment(outcome: FileOutcome) -> dict[str, str]:
    inherited = {name: value for name, value in os.environ.items() if name not in _SERVICE_VARIABLES}
    return {**inherited, **hook_environment(outcome)}


def _kill_group(child: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # gone already
        os.killpg(child.pid, signal.SIGKILL)
