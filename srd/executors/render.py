"""The pure part of a job: source bytes in, encoded output bytes out, no file touched.

`render` is what a remote worker runs; `run_job` is the whole job in one process (load, render, store),
as a local worker and the one-process paths run it.
"""

from __future__ import annotations

import time

import structlog

from srd.engine.pipeline import StageContext
from srd.executors.job import Job, JobResult, Rendered, guarded, job_log_context, load_source, output_name, store_output
from srd.imaging.imageio import Encoded, Picture, decode, encode, output_format_for

log = structlog.get_logger(__name__)


def render(job: Job, data: bytes, context: StageContext) -> Rendered:
    """Decode `data`, run the job's pipeline and encode the result (errors are raised, see `guarded`)."""
    context.cores.begin_job()
    picture = decode(data, max_pixels=job.max_input_pixels)
    for note in picture.notes:
        log.info("decoder_warning", src=str(job.source), text=note)
    pixels = job.profile.pipeline.run(picture.pixels, context)
    settings = job.profile.output
    requested = job.format or settings.format
    fmt = output_format_for(picture.format, requested, settings.fallback_format)
    encoded = encode(picture.with_pixels(pixels), fmt, quality=settings.quality, keep_metadata=settings.metadata)
    return Rendered(encoded.data, output_name(job.source.name, picture.format, fmt, requested),
                    (picture.pixels.shape[1], picture.pixels.shape[0]), (pixels.shape[1], pixels.shape[0]),
                    context.cores.widest, _losses(job, picture, encoded, fmt))


def _losses(job: Job, picture: Picture, encoded: Encoded, fmt: str) -> tuple[str, ...]:
    """What of the source the output does not hold, each logged as a warning and said in words for the result."""
    losses = []
    for reason in encoded.dropped:
        log.warning("metadata_dropped", src=str(job.source), block=reason)
        losses.append(f"metadata dropped: {reason}")
    if encoded.alpha_flattened:
        log.warning("alpha_flattened", src=str(job.source), format=fmt, background="white")
        losses.append(f"transparency flattened onto white ({fmt.upper()} holds none)")
    if picture.loses_depth_in(fmt):
        log.warning("depth_reduced", src=str(job.source), format=fmt, bits=8)
        losses.append(f"16-bit samples rounded to 8 bits ({fmt.upper()} holds 8)")
    if picture.frames > 1:
        kind = {"tiff": "pages", "jpeg": "pictures"}.get(picture.format, "frames")
        log.warning("frames_dropped", src=str(job.source), frames=picture.frames, kept=1)
        losses.append(f"only the first of its {picture.frames} {kind} is in the output")
    return tuple(losses)


def run_job(job: Job, context: StageContext) -> JobResult:
    """Load, render and store one job here; failures come back as a result with the reason, never as an exception."""
    with job_log_context(job):
        started = time.monotonic()
        loaded = guarded(job, None, started, lambda: load_source(job))
        if isinstance(loaded, JobResult):
            return loaded
        rendered = guarded(job, loaded.sha256, started, lambda: render(job, loaded.data, context))
        if isinstance(rendered, JobResult):
            return rendered
        return store_output(job, rendered, loaded.sha256, started)
