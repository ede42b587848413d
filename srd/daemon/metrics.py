"""The Prometheus listener (``metrics: {listen: …}``): ``/metrics``, ``/healthz`` and ``/readyz``.

It serves from threads of its own and never touches the loop's state: the loop publishes each status
document it builds (about once a second), and a scrape turns the latest one into metrics; the job
histograms are fed from `FileEvents` (prometheus_client's metrics lock themselves). Counters that matter
across restarts (files done, failed and skipped, the last success) come from the status document's
counters, which the daemon starts from the ledger and the last run's status (`inboxes.restart_counters`).
``/readyz`` is `srd status --check`'s verdict on the same document, so the two always agree. Needs the
``srd[metrics]`` extra (docs/design.md §9).
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from srd.daemon.fileevents import FileOutcome
from srd.daemon.status import Health, assess
from srd.errors import StartupError, describe_os_error
from srd.observability import MetricsSettings

# /healthz fails when the loop has published no status for this long: it publishes about every second, and
# nothing it does legitimately (a reload, a drain step) holds it this long.
LOOP_STALE_S = 30.0
JOB_SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
MEGAPIXEL_BUCKETS = (0.1, 0.5, 1, 2, 4, 8, 12, 16, 24, 50, 100)
# Each connection has a thread: an idle or slow client is cut off after this long without a byte either way,
# and beyond this many at once a new connection is closed unanswered, so no client can grow the daemon.
CONNECTION_IDLE_S = 10.0
MAX_CONNECTIONS = 32

HookResults = Callable[[], dict[tuple[str, str], int]]


@dataclass(frozen=True)
class _Snapshot:
    """A status document and when the loop published it."""

    status: dict[str, Any]
    published: float


class _Latest:
    """The latest snapshot: the loop replaces it whole (one reference), the listener's threads only read it."""

    snapshot: _Snapshot | None = None


class MetricsServer:
    """Started by `start`; `publish` from the loop; `observe` subscribed to `FileEvents`; `close` once."""

    def __init__(self, settings: MetricsSettings, server: WSGIServer, registry: CollectorRegistry,
                 latest: _Latest) -> None:
        self.settings = settings
        self._server = server
        self._latest = latest
        self._job_seconds = Histogram("srd_job_seconds", "Seconds a worker spent on a processed file", ["inbox"],
                                      buckets=JOB_SECONDS_BUCKETS, registry=registry)
        self._megapixels = Histogram("srd_job_megapixels", "Megapixels of each processed input (as decoded)",
                                     ["inbox"], buckets=MEGAPIXEL_BUCKETS, registry=registry)
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="srd-metrics", daemon=True)
        self._thread.start()

    @classmethod
    def start(cls, settings: MetricsSettings, hook_results: HookResults) -> MetricsServer:
        """Bind the listener and serve it from a thread of its own.

        Raises:
            StartupError: The address can't be bound (in use, not this host's, no permission).
        """
        latest = _Latest()
        registry = CollectorRegistry(auto_describe=True)
        registry.register(_StatusCollector(latest, hook_results))
        app = _routes(make_wsgi_app(registry), latest)
        server_class = _Server6 if ":" in settings.host else _Server
        try:
            server = make_server(settings.host, settings.port, app, server_class=server_class,
                                 handler_class=_QuietHandler)
        except OSError as exc:
            raise StartupError(f"metrics listener {settings.listen} can't be opened: {describe_os_error(exc)}") \
                from exc
        return cls(settings, server, registry, latest)

    def publish(self, status: dict[str, Any]) -> None:
        """Make `status` (a stamped status document) what the next scrape and probe read."""
        self._latest.snapshot = _Snapshot(status, time.monotonic())

    def observe(self, outcome: FileOutcome) -> None:
        if outcome.status != "done":
            return
        inbox = str(outcome.inbox.path)
        if outcome.seconds is not None:
            self._job_seconds.labels(inbox).observe(outcome.seconds)
        if outcome.megapixels is not None:
            self._megapixels.labels(inbox).observe(outcome.megapixels)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scraper never holds the daemon's exit

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # over the cap: closed at once, no thread started
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client gone or cut off at its idle timeout is routine: no traceback on stderr."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    timeout = CONNECTION_IDLE_S
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would flood the journal."""


def _routes(metrics_app: Callable[..., Iterable[bytes]], latest: _Latest) -> Callable[..., Any]:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path in ("/healthz", "/readyz"):
            ok, text = (_alive if path == "/healthz" else _ready)(latest.snapshot)
            start_response("200 OK" if ok else "503 Service Unavailable",
                           [("Content-Type", "text/plain; charset=utf-8")])
            return [text.encode() + b"\n"]
        if path == "/metrics":
            return metrics_app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"srd serves /metrics, /healthz and /readyz\n"]
    return app


def _alive(snapshot: _Snapshot | None) -> tuple[bool, str]:
    """Whether the loop is alive and answering: it published a status document lately."""
    if snapshot is None:
        return False, "starting"
    age = time.monotonic() - snapshot.published
    if age > LOOP_STALE_S:
        return False, f"the daemon's loop has not turned for {age:.0f} s"
    return True, "alive"


def _ready(snapshot: _Snapshot | None) -> tuple[bool, str]:
    """Whether it takes files: alive, and healthy by `srd status --check`'s rules."""
    alive, text = _alive(snapshot)
    if not alive or snapshot is None:
        return False, text
    if snapshot.status.get("state") in ("stopping", "stopped"):  # the drain, the hooks' last seconds
        return False, "stopping"
    view = assess(snapshot.status)
    if view.health is Health.HEALTHY:
        return True, "ready"
    return False, "not ready: " + "; ".join(view.reasons)


class _StatusCollector(Collector):
    """Metrics read from the latest status document at each scrape."""

    def __init__(self, latest: _Latest, hook_results: HookResults) -> None:
        self._latest = latest
        self._hook_results = hook_results

    def describe(self) -> Iterable[Metric]:
        return []  # families vary with the document; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        snapshot = self._latest.snapshot
        if snapshot is None:
            return
        status = snapshot.status
        yield from _file_metrics(status["inboxes"])
        yield from _inbox_gauges(status["inboxes"])
        pool = status["pool"]
        running = GaugeMetricFamily("srd_jobs_running", "Jobs running in the worker processes")
        running.add_metric([], pool["running"])
        yield running
        restarts = CounterMetricFamily("srd_worker_restarts", "Times the worker pool was rebuilt since start "
                                       "(a worker killed, out of memory, stuck)")
        restarts.add_metric([], pool["rebuilds"])
        yield restarts
        ledger = GaugeMetricFamily("srd_ledger_entries", "Entries in the ledger, by state", labels=["state"])
        for state, count in sorted(status["ledger"].items()):
            ledger.add_metric([state], count)
        yield ledger
        ready = GaugeMetricFamily("srd_ready", "1 when /readyz (and srd status --check) say healthy")
        ready.add_metric([], 1 if _ready(snapshot)[0] else 0)
        yield ready
        uptime = GaugeMetricFamily("srd_uptime_seconds", "Seconds since the daemon started")
        uptime.add_metric([], status.get("uptime_s", 0))
        yield uptime
        hooks = CounterMetricFamily("srd_hook_runs", "Hook runs by kind (command, webhook) and result (ok, "
                                    "failed, timeout, dropped)", labels=["kind", "result"])
        for (kind, result), count in sorted(self._hook_results().items()):
            hooks.add_metric([kind, result], count)
        yield hooks


def _file_metrics(inboxes: list[dict[str, Any]]) -> Iterator[Metric]:
    files = CounterMetricFamily("srd_files", "Files by inbox, outcome (done, failed, skipped) and reason, "
                                "counted across restarts", labels=["inbox", "outcome",
                                                                                            "reason"])
    last = GaugeMetricFamily("srd_last_success_timestamp_seconds", "When the inbox's last file was processed "
                             "(Unix time)", labels=["inbox"])
    for inbox in inboxes:
        path = inbox["path"]
        files.add_metric([path, "done", "processed"], inbox["done"])
        for reason, count in sorted((inbox.get("failed_by_reason") or {}).items()):
            files.add_metric([path, "failed", reason], count)
        files.add_metric([path, "skipped", "duplicate"], inbox["duplicates"])
        files.add_metric([path, "skipped", "output_exists"], inbox["skipped"])
        if inbox.get("last_success"):
            last.add_metric([path], datetime.fromisoformat(inbox["last_success"]).timestamp())
    yield files
    yield last


def _inbox_gauges(inboxes: list[dict[str, Any]]) -> Iterator[Metric]:
    queue = GaugeMetricFamily("srd_queue_depth", "Files waiting, by inbox and stage (settling: not yet still; "
                              "queued: settled, waiting for a worker)", labels=["inbox", "stage"])
    flight = GaugeMetricFamily("srd_jobs_in_flight", "Files handed to the worker pool, by inbox", labels=["inbox"])
    healthy = GaugeMetricFamily("srd_inbox_healthy", "1 when the inbox is healthy (as srd status shows)",
                                labels=["inbox"])
    for inbox in inboxes:
        path = inbox["path"]
        queue.add_metric([path, "settling"], inbox["settling"])
        queue.add_metric([path, "queued"], inbox["queued"])
        flight.add_metric([path], inbox["in_flight"])
        healthy.add_metric([path], 1 if inbox["health"] == "ok" else 0)
    yield from (queue, flight, healthy)
