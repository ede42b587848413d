"""The coordinator's side of a Dask cluster: one kept-up connection, and executors that ship bytes, not paths.

A `DaskExecutor` job is run in three steps (`srd.executors.job`): this process reads the source (unless the
job carries its bytes), a Dask worker renders it (`srd.executors.dask_worker.render_task`), and this process
writes the output atomically. Inboxes, outboxes and the ledger stay on the coordinator, and a worker needs
no shared filesystem. The waiting is done by a small thread pool, never by the daemon's loop thread.

Failure mapping, so the pool treats them as it treats its local processes:

* A worker that dies mid-task: the scheduler re-runs the task elsewhere by itself; only a task that was
  running on ``distributed.scheduler.allowed-failures`` + 1 dying workers ends in `KilledWorker`, raised
  here as `WorkerLost` (pinned on the file when it ran alone, like a broken local pool).
* The scheduler gone: its futures are cancelled (``scheduler-connection-lost``), raised as
  `ClusterUnavailable` (unpinned, the job waits); `submit` raises `OSError` until the client is
  connected again, so the pool keeps jobs waiting and reports the backend unhealthy.
* A worker with a missing or different model refuses (`ModelMismatch`): it is excluded and the task sent
  to the others; with none left, jobs wait as for a lost scheduler.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import CancelledError, Executor, Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import structlog
from distributed import Client, KilledWorker
from distributed import Future as DaskFuture
from distributed.security import Security

from srd.config import ExecutorSettings
from srd.engine.pipeline import StageContext
from srd.engine.upscaler import EngineSettings
from srd.executors.dask_worker import ModelMismatch, RenderTask
from srd.executors.job import Job, JobResult, Rendered, guarded, job_log_context, load_source, store_output
from srd.executors.pool import ClusterUnavailable, WorkerLost

log = structlog.get_logger(__name__)

CONNECT_TIMEOUT_S = 5.0
REFRESH_S = 2.0  # how often the connection thread reconnects or refreshes the workers' list for the status
REFUSAL_FORGOTTEN_S = 300.0  # a refusing worker is tried again after this (its models may have been fixed)


def _security(settings: ExecutorSettings) -> Security | None:
    if settings.tls is None:
        return None
    ca, cert, key = (str(path) for path in settings.tls)
    return Security(tls_ca_file=ca, tls_client_cert=cert, tls_client_key=key, require_encryption=True)


class DaskConnection:
    """A client of one Dask scheduler, (re)connected by a background thread, shared by a pool's executors.

    Nothing here blocks its caller on the network: `client` answers from the last known state, and
    `describe` from the last refresh.
    """

    def __init__(self, settings: ExecutorSettings) -> None:
        assert settings.scheduler is not None
        self.address = settings.scheduler
        self._security = _security(settings)
        self._client: Client | None = None
        self._error: str | None = "connecting"
        self._workers: dict[str, dict[str, Any]] = {}
        self._refused: dict[str, tuple[str, float]] = {}
        self._departed = 0  # workers seen to leave (die, be restarted, be stopped) since the start
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._keep_connected, name="srd-dask-connection", daemon=True)
        self._thread.start()

    def client(self) -> Client:
        """The connected client; `OSError` while the scheduler is unreachable or no worker will take jobs."""
        with self._lock:
            client, error = self._client, self._error
            usable = [address for address in self._workers if address not in self._refused]
        if client is None or client.status != "running":
            raise OSError(f"Dask scheduler {self.address} unreachable: {error or 'connection lost'}")
        if self._workers and not usable:
            raise OSError(f"no Dask worker of {self.address} has this profile's models: " + "; ".join(
                reason for reason, _ in self._refused.values()))
        return client

    def allowed_workers(self) -> list[str] | None:
        """The workers a task may go to: None for any, the ones that have not refused otherwise."""
        with self._lock:
            if not self._refused:
                return None
            allowed = [address for address in self._workers if address not in self._refused]
        if not allowed:
            raise ClusterUnavailable("every worker refused this profile's models")
        return allowed

    def refuse(self, refusal: ModelMismatch) -> None:
        """Keep tasks off a worker that refused one (until it leaves, or `REFUSAL_FORGOTTEN_S` passes)."""
        with self._lock:
            self._refused[refusal.worker] = (refusal.reason, time.monotonic())
        log.error("dask_worker_refused", worker=refusal.worker, reason=refusal.reason)

    def wait_connected(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the first connection (for a one-shot run, which can't wait on)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                client = self._client
            if client is not None and client.status == "running":
                return True
            time.sleep(0.05)
        return False

    def slots(self) -> int:
        """The threads of the workers that have not refused this profile, as of the last refresh (0 unconnected)."""
        with self._lock:
            client = self._client
            usable = [info for address, info in self._workers.items() if address not in self._refused]
        if client is None or client.status != "running":
            return 0
        return sum(int(info.get("nthreads") or 0) for info in usable)

    def describe(self) -> dict[str, Any]:
        with self._lock:
            client, error = self._client, self._error
            workers = [{"address": address, **info, "refused": self._refused.get(address, (None,))[0]}
                       for address, info in sorted(self._workers.items())]
            departed = self._departed
        connected = client is not None and client.status == "running"
        return {"kind": "dask", "scheduler": self.address, "connected": connected,
                "error": None if connected else (error or "connection lost"), "workers": workers,
                "workers_left": departed}

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):  # closing must not fail the daemon's shutdown
                client.close(timeout=CONNECT_TIMEOUT_S)

    def _keep_connected(self) -> None:
        while not self._stop.is_set():
            client = self._client
            if client is None or client.status == "closed":  # the client gives up reconnecting after its timeout
                self._connect()
            elif client.status == "running":
                self._refresh(client)
            self._stop.wait(REFRESH_S)

    def _connect(self) -> None:
        try:
            client = Client(self.address, timeout=CONNECT_TIMEOUT_S, set_as_default=False, security=self._security)
        except (OSError, TimeoutError, ValueError) as exc:
            with self._lock:
                changed = self._error != str(exc)
                self._error = str(exc) or type(exc).__name__
            if changed:
                log.error("dask_scheduler_unreachable", scheduler=self.address, error=self._error)
            return
        with self._lock:
            if self._stop.is_set():
                client.close()
                return
            self._client, self._error = client, None
        log.info("dask_scheduler_connected", scheduler=self.address)

    def _refresh(self, client: Client) -> None:
        try:
            info = client.scheduler_info(n_workers=-1)
        except (OSError, TimeoutError) as exc:
            with self._lock:
                self._error = str(exc)
            return
        workers = {address: {"name": str(w.get("name")), "nthreads": w.get("nthreads"),
                             "executing": ((w.get("metrics") or {}).get("task_counts") or {}).get("executing", 0),
                             "memory_mb": round((w.get("metrics") or {}).get("memory", 0) / 2**20)}
                   for address, w in info.get("workers", {}).items()}
        now = time.monotonic()
        with self._lock:
            # A worker killed or gone: Dask re-runs its tasks and its nanny starts a new one, so srd's only part is
            # to say so (a worker that keeps dying is worth an admin's look).
            for address in self._workers.keys() - workers.keys():
                self._departed += 1
                log.warning("dask_worker_left", worker=address, workers_left_total=self._departed)
            self._workers = workers
            self._refused = {address: refusal for address, refusal in self._refused.items()
                             if address in workers and now - refusal[1] < REFUSAL_FORGOTTEN_S}


class DaskExecutor(Executor):
    """Runs `submit(render_task, job)` as load here → render on a Dask worker → store here; futures of `JobResult`s."""

    def __init__(self, connection: DaskConnection, jobs: int, engine: EngineSettings,
                 model_dirs: tuple[Path, ...]) -> None:
        self._connection = connection
        self._threads = ThreadPoolExecutor(jobs, thread_name_prefix="srd-dask-job")
        self._engine = engine
        self._model_dirs = model_dirs
        self._models = StageContext(engine, model_dirs)  # the coordinator's models, hashed once per file version
        self._remote: set[DaskFuture] = set()
        self._lock = threading.Lock()
        self._restart_holders = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        (job,) = args
        self._connection.client()  # raises OSError while unusable, so the pool keeps the job waiting
        return self._threads.submit(self._run, fn, job)

    def kill_workers(self) -> None:
        """Have `shutdown` restart the workers running this executor's tasks: a task can't be interrupted in its
        thread, only stopped with its process (the pool calls this for a job past its time limit, and on close)."""
        self._restart_holders = True

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking jobs; with `cancel_futures`, cancel the remote tasks (off the caller's thread: the scheduler
        may not answer), after restarting their workers if `kill_workers` asked for it."""
        if cancel_futures or self._restart_holders:
            with self._lock:
                remote = list(self._remote)
            threading.Thread(target=self._wind_down, args=(remote, self._restart_holders, cancel_futures),
                             name="srd-dask-wind-down", daemon=True).start()
        self._threads.shutdown(wait=wait, cancel_futures=cancel_futures)

    def _wind_down(self, remote: list[DaskFuture], restart: bool, cancel: bool) -> None:
        try:
            holders: list[str] = []
            if restart and remote:
                client = self._connection.client()
                keys = {future.key for future in remote}
                holders = [worker for worker, held in client.processing().items() if keys & set(held)]
            if cancel:  # first, so this executor's threads waiting on them end now
                for future in remote:
                    future.cancel()
            if holders:
                log.warning("dask_workers_restarting", workers=holders, reason="their tasks were abandoned")
                self._connection.client().restart_workers(holders, raise_for_error=False)
        except Exception as exc:  # best effort: a task not stopped finishes on its worker and its result is dropped
            log.error("dask_wind_down_failed", error=f"{type(exc).__name__}: {exc}")

    def _run(self, render_task: Callable[[RenderTask], Rendered | JobResult], job: Job) -> JobResult:
        with job_log_context(job):
            started = time.monotonic()
            loaded = guarded(job, None, started, lambda: load_source(job))
            if isinstance(loaded, JobResult):
                return loaded
            sha256 = loaded.sha256
            # Each model's pinned bytes (those checked and fingerprinted), or else its file's here; a model missing
            # here fails the file, as it would in a local worker.
            models = guarded(job, sha256, started, lambda: tuple(
                spec.expected_sha256 or self._models.sha256(spec)
                for spec in job.profile.pipeline.models(self._models)))
            if isinstance(models, JobResult):
                return models
            task = RenderTask(replace(job, content=loaded), self._engine, self._model_dirs, models)
            del loaded
            rendered = self._render(render_task, task)
            if isinstance(rendered, JobResult):
                return replace(rendered, sha256=sha256)
            return store_output(job, rendered, sha256, started)

    def _render(self, render_task: Callable[[RenderTask], Rendered | JobResult],
                task: RenderTask) -> Rendered | JobResult:
        while True:
            try:
                client = self._connection.client()
            except OSError as exc:
                raise ClusterUnavailable(str(exc)) from exc
            future = client.submit(render_task, task, key=f"srd-render-{uuid.uuid4().hex}", pure=False,
                                   workers=self._connection.allowed_workers(), allow_other_workers=False)
            with self._lock:
                self._remote.add(future)
            try:
                return future.result()
            except ModelMismatch as refusal:
                self._connection.refuse(refusal)
            except KilledWorker as exc:  # its own text names the task's random key and a web page: no use to a user
                deaths = exc.allowed_failures + 1
                raise WorkerLost(f"{deaths} Dask worker{'s' if deaths > 1 else ''} died running it (killed, out of "
                                 f"memory, or crashed), the last {exc.last_worker.address}") from exc
            except (CancelledError, OSError, TimeoutError) as exc:  # the scheduler connection was lost
                raise ClusterUnavailable(f"{type(exc).__name__}: {exc}") from exc
            finally:
                with self._lock:
                    self._remote.discard(future)
                future.release()
