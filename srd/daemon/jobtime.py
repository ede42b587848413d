"""How long a job may run before its worker counts as stuck: a generous multiple of the time it should take.

A fixed limit is wrong at both ends: one that lets a 50-megapixel photo through leaves a stuck worker on a
thumbnail unnoticed for an hour. The expected time is the image's pixel count times the measured cost per
pixel of each upscale stage's model (`srd bench speed` on one CPU thread, see BENCHMARKS.md, rounded up);
the limit is `SLACK` times that, and never below a floor that covers loading the model in a fresh worker.
"""

from __future__ import annotations

from pathlib import Path

from srd.config import Profile
from srd.engine.pipeline import Upscale

# µs per input pixel on one thread, by model name prefix (BENCHMARKS.md, the slowest scale, rounded up).
_US_PER_PIXEL = {
    "edsr-base": 31.0,
    "edsr-photo": 31.0,  # edsr-base's network, fine-tuned
    "edsr-lite": 5.5,
    "lapsrn": 60.0,
    "fsrcnn-small": 0.8,
    "fsrcnn": 1.6,
    "espcn": 1.1,
    "edsr": 350.0,  # the OpenCV zoo's EDSR (32 blocks x 256 channels): 320-350 measured with small tiles
}
# A model we haven't measured is assumed as slow as the slowest one we have.
_UNKNOWN_US_PER_PIXEL = max(_US_PER_PIXEL.values())
SLACK = 20.0


def us_per_pixel(model: str) -> float:
    """The measured cost per input pixel of a model, by its name or file name (e.g. ``ESPCN_x2.pb``)."""
    name = Path(model).name.lower().replace("_", "-")
    for prefix in sorted(_US_PER_PIXEL, key=len, reverse=True):  # "fsrcnn-small" before "fsrcnn"
        if name.startswith(prefix):
            return _US_PER_PIXEL[prefix]
    return _UNKNOWN_US_PER_PIXEL


def expected_seconds(profile: Profile, pixels: int) -> float:
    """The time a job of `pixels` input pixels should take with `profile`, upscale stages only."""
    total_us = 0.0
    for stage in profile.pipeline.stages:
        if isinstance(stage, Upscale):
            total_us += pixels * us_per_pixel(stage.model) * stage.ensemble  # one run per ensemble copy
            pixels = int(pixels * stage.scale * stage.scale)
    return total_us / 1e6


def job_time_limit(profile: Profile, pixels: int, *, floor: float) -> float:
    """Seconds a job may run before it is taken for stuck: `SLACK` × the expected time, at least `floor`."""
    return max(floor, SLACK * expected_seconds(profile, pixels))
