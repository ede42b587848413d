"""What a Dask worker runs for srd: render a job shipped with its bytes, after proving it has the same models.

Nothing here touches a file of the job: the coordinator reads the source and writes the output. Models
are found as on the coordinator (the job's `model_dirs`, the bundled and user folders), or in the
folders listed in ``SRD_MODEL_DIRS`` (``os.pathsep``-separated) when a worker's machine keeps them
elsewhere. Each process keeps one `StageContext` per engine settings, so a model loads once.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from distributed import get_worker

from srd.engine.pipeline import StageContext
from srd.engine.upscaler import EngineSettings
from srd.errors import ModelError
from srd.executors.job import Job, JobResult, Rendered, guarded, job_log_context
from srd.executors.render import render

MODEL_DIRS_VARIABLE = "SRD_MODEL_DIRS"
# The environment `dask worker` should run with (systemd/srd-worker.service sets it too). Dask's nanny starts
# worker processes with MALLOC_TRIM_THRESHOLD_=65536, which turns off glibc's adaptive mmap threshold: every
# image-sized buffer is then mapped and unmapped afresh, measured here at +0.5 s on a 1024x768 to 2048x1536 job (noisy,
# loaded machine: 0.9-1.0 s unset against 1.6 s set).
WORKER_ENVIRONMENT = {"DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON": "{'MALLOC_TRIM_THRESHOLD_': None}"}

_contexts: dict[tuple[EngineSettings, tuple[Path, ...]], StageContext] = {}


@dataclass(frozen=True)
class RenderTask:
    """A job with its source bytes (`job.content`), and what the worker needs to render it as the coordinator would.

    `model_sha256` is the sha256 of each model the profile uses, in pipeline order, as the coordinator has them.
    """

    job: Job
    engine: EngineSettings
    model_dirs: tuple[Path, ...]
    model_sha256: tuple[str, ...]


class ModelMismatch(Exception):
    """This worker lacks a model the task needs, or has a different file: it refuses the task.

    Not a verdict on the file: the coordinator sends the task to another worker.
    """

    def __init__(self, worker: str, reason: str) -> None:
        super().__init__(f"worker {worker} refused the task: {reason}")
        self.worker = worker
        self.reason = reason


def render_task(task: RenderTask) -> Rendered | JobResult:
    """Render one task here: the encoded output, or the job's failed result (without its sha256, the coordinator's)."""
    assert task.job.content is not None, "a render task carries its source bytes"
    data = task.job.content.data
    context = _context(task)
    check_models(task, context, _worker_address())
    with job_log_context(task.job):
        return guarded(task.job, None, time.monotonic(), lambda: render(task.job, data, context))


def check_models(task: RenderTask, context: StageContext, worker: str) -> None:
    """Raise `ModelMismatch` unless every model the profile names is here with the sha256 the task expects."""
    try:
        found = tuple(context.sha256(spec) for spec in task.job.profile.pipeline.models(context))
    except (ModelError, OSError) as exc:
        raise ModelMismatch(worker, f"model not available here: {exc}") from exc
    if found != task.model_sha256:
        differ = [f"{want[:12]}… expected, {have[:12]}… here" for have, want in zip(found, task.model_sha256,
                                                                                      strict=False) if have != want]
        raise ModelMismatch(worker, "different model file (sha256 " + "; ".join(differ or ["count differs"]) + ")")


def _context(task: RenderTask) -> StageContext:
    own = os.environ.get(MODEL_DIRS_VARIABLE)
    dirs = tuple(Path(p) for p in own.split(os.pathsep) if p) if own else task.model_dirs
    key = (task.engine, dirs)
    if key not in _contexts:
        _contexts[key] = StageContext(task.engine, dirs)
    return _contexts[key]


def _worker_address() -> str:
    try:
        return str(get_worker().address)
    except ValueError:
        return f"pid {os.getpid()}"
