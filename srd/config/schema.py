"""The configuration's values: frozen dataclasses, their defaults and the choices some settings allow."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from srd.engine.pipeline import Pipeline, Upscale
from srd.engine.upscaler import EngineSettings
from srd.imaging.imageio import DEFAULT_MAX_INPUT_BYTES
from srd.observability import Hook, MetricsSettings

DEFAULT_PROFILE = "default"
DEFAULT_MODEL = "edsr-lite"
DEFAULT_SCALE = 2
WATCH_MODES = ("auto", "native", "poll")
ON_SUCCESS = ("keep", "archive", "delete")
COLLISIONS = ("suffix", "overwrite", "skip")
DUPLICATES = ("skip", "link")
LOG_FORMATS = ("auto", "json", "console")
DEFAULT_CLAIM_STALE_S = 60.0
# A sixth of it is the heartbeat: at 10 s a heartbeat runs every 1.7 s and may be 3.3 s late before the
# inbox pauses; below that, a busy host would pause its inboxes for nothing.
MIN_CLAIM_STALE_S = 10.0
MAX_CLAIM_STALE_S = 3600.0


@dataclass(frozen=True)
class OutputSettings:
    """How results are encoded: `format` 'same' keeps the input's format.

    `fallback_format` is written for inputs srd reads but cannot write (HEIC, AVIF, GIF …) when
    `format` is 'same'; None keeps the built-in choice (HEIC → JPEG, the others → PNG).
    """

    format: str = "same"
    quality: int = 95
    metadata: bool = True
    fallback_format: str | None = None


@dataclass(frozen=True)
class Profile:
    name: str
    pipeline: Pipeline
    output: OutputSettings = OutputSettings()


@dataclass(frozen=True)
class Inbox:
    """One watched folder and where its results and failures go."""

    path: Path
    outbox: Path
    failed: Path
    profile: str = DEFAULT_PROFILE
    mode: str = "auto"
    poll_interval: float = 2.0
    settle_seconds: float = 2.0
    # A file that decodes as truncated while it was modified this recently is waited for, not failed.
    settle_max_backoff_seconds: float = 600.0
    recursive: bool = True
    ignore: tuple[str, ...] = ()
    on_success: str = "keep"
    archive: Path | None = None
    collision: str = "suffix"
    duplicates: str = "skip"
    on_done: Hook | None = None
    on_failed: Hook | None = None


@dataclass(frozen=True)
class ExecutorSettings:
    """Where jobs run: this machine's worker processes (`local`) or the workers of a Dask scheduler (`dask`).

    With `tls` (CA, certificate, key files), the connection to a ``tls://`` scheduler is encrypted and
    authenticated both ways (see systemd/srd-scheduler.service).
    """

    kind: str = "local"
    scheduler: str | None = None
    tls: tuple[Path, Path, Path] | None = None


EXECUTOR_KINDS = ("local", "dask")


@dataclass(frozen=True)
class WebSettings:
    """Where `srd web` listens, who may use it, and how much one upload may bring.

    `password_hash` is an ``scrypt$…`` string made by ``srd web --hash-password``; without it anyone who can
    reach the listen address may upload, which is why the default address is the loopback one.
    """

    listen: str = "127.0.0.1"
    port: int = 8080
    password_hash: str | None = None
    # Each file, and the whole of one request; None: the daemon's max_input_bytes per file.
    max_file_bytes: int | None = None
    max_request_bytes: int = 1_000_000_000
    max_files_per_upload: int = 100
    # Set behind an HTTPS reverse proxy, so the session cookie never travels in clear.
    secure_cookies: bool = False
    # Host names (beside IP addresses, localhost and `listen`) a request may be addressed to: the public name
    # of a reverse proxy. Any other Host is refused, so a web page can't reach srd by DNS rebinding.
    allowed_hosts: tuple[str, ...] = ()
    # An upload is cut (its temp removed) when no byte arrives for this long, or when it arrives slower on
    # average than upload_min_bytes_per_s once that long has passed: a stalled client can't hold an upload slot.
    upload_idle_timeout_s: float = 30.0
    upload_min_bytes_per_s: int = 1024


@dataclass(frozen=True)
class Config:
    state_dir: Path
    workers: int
    # None: each job takes its share of the cores (a lone job all of them); a number: that many OpenCV threads.
    threads_per_worker: int | None
    max_input_pixels: int
    max_attempts: int
    job_timeout: float | None
    reconcile_interval: float
    model_dirs: tuple[Path, ...]
    engine: EngineSettings
    profiles: Mapping[str, Profile]
    inboxes: tuple[Inbox, ...]
    log_level: str = "info"
    log_format: str = "auto"
    source: str = "defaults"
    max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES
    # With no fixed `job_timeout`, a job's limit is derived from its pixel count, never below this.
    job_timeout_min_seconds: float = 120.0
    # How old an inbox claim's heartbeat must be before another daemon may take the inbox over.
    claim_stale_seconds: float = DEFAULT_CLAIM_STALE_S
    # A file cut short by the daemon's death is retried alone (a death then pinned on it) only once the
    # restarted daemon has lived this long: one that dies sooner dies of something else (its start-up, a
    # restart loop, an operator's kill), and a file that kills the service still does so after the wait.
    crash_retry_after_seconds: float = 5.0
    web: WebSettings = field(default_factory=WebSettings)
    metrics: MetricsSettings | None = None
    executor: ExecutorSettings = field(default_factory=ExecutorSettings)

    def worker_engine(self) -> EngineSettings:
        """Engine settings as each worker process applies them: one inference thread per tile when jobs share
        the cores by running tiles in parallel."""
        return replace(self.engine, threads=self.threads_per_worker or 1)


def default_profile() -> Profile:
    return Profile(DEFAULT_PROFILE, Pipeline((Upscale(model=DEFAULT_MODEL, scale=DEFAULT_SCALE),)))


def default_workers(threads_per_worker: int | None) -> int:
    """As many workers as fit the cores without oversubscribing them."""
    return max(1, (os.cpu_count() or 1) // max(1, threads_per_worker or 1))
