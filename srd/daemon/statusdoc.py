"""Parts of the daemon's status document (`status.json`, docs/design.md §9) that are about files and jobs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from srd.daemon.claimguard import ClaimGuard
from srd.daemon.context import Context
from srd.daemon.jobtime import SLACK
from srd.daemon.lifecycle import Lifecycle
from srd.daemon.sourcefile import Work
from srd.daemon.sourcestep import SourceStep
from srd.executors.pool import JobPool, RunningJob

# A source step out for longer is stuck (on a share that stops answering): its inbox shows unhealthy.
STEP_STUCK_S = 60.0


def count_by_inbox(inbox_keys: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for key in inbox_keys:
        counts[key] = counts.get(key, 0) + 1
    return counts


def running_by_inbox(active: Mapping[str, Work], running_since: Mapping[str, str],
                     pool: JobPool) -> dict[str, list[dict[str, Any]]]:
    """Per inbox id, the jobs a worker has taken: the file, since when, and how long it may take."""
    running: dict[str, list[dict[str, Any]]] = {}
    timing = {job.token: job for job in pool.running_jobs()}
    for key, work in active.items():
        if key in running_since:
            job = {"source": work.file.rel.as_posix(), "since": running_since[key]}
            running.setdefault(work.file.inbox_id, []).append({**job, **_timing(timing.get(key))})
    return running


def stuck_steps(steps: Iterable[tuple[SourceStep, float]], now: float) -> dict[str, dict[str, Any]]:
    """Per inbox id, its source step out the longest, if that is longer than `STEP_STUCK_S`."""
    oldest: dict[str, tuple[SourceStep, float]] = {}
    for step, since in steps:
        if step.inbox_key not in oldest or since < oldest[step.inbox_key][1]:
            oldest[step.inbox_key] = (step, since)
    stuck: dict[str, dict[str, Any]] = {}
    for step, since in oldest.values():
        waited = now - since
        if waited > STEP_STUCK_S:
            stuck[step.inbox_key] = {"action": str(step.action), "source": step.rel.as_posix(),
                                     "for_s": round(waited), "reason": f"{step.action} of {step.rel} has not "
                                     f"finished for {waited:.0f} s (a share that stops answering?)"}
    return stuck


def failing_steps(failing: Iterable[tuple[SourceStep, str]]) -> dict[str, dict[str, Any]]:
    """Per inbox id, one of its source steps that failed at its last try, with the error."""
    found: dict[str, dict[str, Any]] = {}
    for step, error in failing:
        found.setdefault(step.inbox_key, {
            "action": str(step.action), "source": step.rel.as_posix(),
            "reason": f"{step.action} of {step.rel} failed ({error}); tried again at each reconcile scan"})
    return found


def _timing(job: RunningJob | None) -> dict[str, Any]:
    """A running job's elapsed time and limit for the status file; `stuck_suspected` once it has run 5 ×
    longer than expected."""
    if job is None:
        return {}
    expected = job.limit_s / SLACK if job.limit_s is not None else None
    return {"elapsed_s": round(job.elapsed_s), "limit_s": None if job.limit_s is None else round(job.limit_s),
            "stuck_suspected": expected is not None and job.elapsed_s > 5 * expected}


def inbox_documents(ctx: Context, files: Lifecycle, claims: ClaimGuard, daemon_state: str) -> list[dict[str, Any]]:
    """Each inbox's part of ``status.json``: its health, queue, running jobs and counters."""
    inboxes = []
    queued, settling = files.waiting()
    backlog_by_inbox = count_by_inbox(queued.values())
    in_flight = count_by_inbox(work.file.inbox_id for work in files.active.values())
    running = running_by_inbox(files.active, files.running_since, files.pool)
    stuck = stuck_steps(files.disposal.out.values(), ctx.clock())
    failing = failing_steps(files.disposal.failing.values())
    for key, runtime in ctx.runtimes.items():
        counters = ctx.counters[key]
        watcher = runtime.watcher
        block = files.pauses.outboxes.get(key)
        refused_folders = [folder.describe() for folder in files.pauses.folders.get(key, {}).values()]
        model_block = files.pauses.models.get(key)
        inboxes.append({
            "path": key,
            "outbox": str(runtime.inbox.outbox),
            "profile": runtime.inbox.profile,
            "health": daemon_state if daemon_state in ("stopping", "stopped") else
                      ("ok" if watcher.healthy and block is None and not refused_folders and model_block is None
                       and key not in claims.paused
                       and stuck.get(key) is None and failing.get(key) is None else "unhealthy"),
            "stuck_step": stuck.get(key),
            "failing_step": failing.get(key),
            "claim": claims.inbox_claims.describe(runtime.inbox.path),
            "outbox_state": block.describe() if block is not None else {"state": "ok"},
            "refused_folders": refused_folders,
            "model_state": model_block.describe() if model_block is not None else {"state": "ok"},
            "watch": watcher.state,
            "mode": watcher.mode,
            "degraded": watcher.degraded,
            "events_lost": watcher.events_lost,
            "settling": settling.get(key, 0),
            "queued": backlog_by_inbox.get(key, 0),
            "in_flight": in_flight.get(key, 0),
            "running": sorted(running.get(key, []), key=lambda job: (job["since"], job["source"])),
            "done": counters.done,
            "failed": counters.failed,
            "duplicates": counters.duplicates,
            "skipped": counters.skipped,
            "failed_by_reason": dict(counters.failed_by_reason),
            "last_success": counters.last_success,
            "last_error": counters.last_error,
            "root_error": watcher.root_error,
            "unreadable": watcher.unreadable,
        })
    return inboxes
