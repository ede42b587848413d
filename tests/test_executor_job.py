"""A job that carries its source bytes (`Job.content`) is processed from them, with the coordinator's guarantees
kept."""

from __future__ import annotations

import hashlib
from pathlib import Path

from daemon_helpers import ESPCN_X2, make_image

from srd.config import Profile
from srd.engine.pipeline import Pipeline, StageContext, Upscale
from srd.executors.job import Content, Job
from srd.executors.render import run_job
from srd.fs.fileversion import version_of

PROFILE = Profile("test", Pipeline((Upscale(model=str(ESPCN_X2), scale=2),)))


def test_shipped_bytes_are_processed_without_reading_the_file(tmp_path: Path) -> None:
    """With `data`, the output is made from those bytes (the file on disk is another image) and hashed as them."""
    source = tmp_path / "a.png"
    shipped = make_image(source, (24, 32), seed=1)
    source.write_bytes(make_image(source, (16, 16), seed=2))
    (tmp_path / "out").mkdir()
    result = run_job(Job(source, tmp_path / "out", PROFILE, 10**8, content=Content.of(shipped)), StageContext())
    assert result.ok and result.output == tmp_path / "out" / "a.png"
    assert result.input_size == (32, 24) and result.output_size == (64, 48)
    assert result.sha256 == hashlib.sha256(shipped).hexdigest()


def test_shipped_bytes_still_check_the_source_version_before_the_output_lands(tmp_path: Path) -> None:
    """In place, a source changed since it was planned is not replaced by the output of its old bytes."""
    source = tmp_path / "a.png"
    shipped = make_image(source, (24, 32), seed=1)
    source.write_bytes(shipped)
    planned = version_of(source)
    rewritten = make_image(source, (24, 32), seed=3)
    source.write_bytes(rewritten)  # a writer replaced it meanwhile
    result = run_job(Job(source, tmp_path, PROFILE, 10**8, target=source, source_version=planned,
                         content=Content.of(shipped)),
                     StageContext())
    assert not result.ok and result.error is not None and "changed since this run planned it" in result.error
    assert source.read_bytes() == rewritten and [p.name for p in tmp_path.iterdir()] == ["a.png"]


def test_only_a_model_that_cannot_be_loaded_spares_the_file_one_that_fails_on_it_fails_it(tmp_path: Path) -> None:
    """`model_unavailable` makes the daemon pause the inbox and keep the file, so it must come only from loading
    the model (pinned bytes gone), never from running it on this input: that would let one input hold its inbox."""
    model = tmp_path / "own.pb"
    model.write_bytes(ESPCN_X2.read_bytes())
    source = tmp_path / "a.png"
    source.write_bytes(make_image(source, (12, 16), 1))
    profile = Profile("p", Pipeline((Upscale(model=str(model), scale=2, convention="espcn"),)))
    pinned = Profile("p", profile.pipeline.pinned(StageContext()))
    model.write_bytes(ESPCN_X2.read_bytes() + b"\0")  # other bytes than those pinned
    job = Job(source, tmp_path / "out", pinned, 10**8)
    refused = run_job(job, StageContext())
    assert not refused.ok and refused.model_unavailable and "replaced since srd checked it" in (refused.error or "")

    model.write_bytes(ESPCN_X2.read_bytes())
    wrong_scale = Profile("p", Pipeline((Upscale(model=str(model), scale=3, convention="espcn"),)))  # x2 told x3
    failed = run_job(Job(source, tmp_path / "out", wrong_scale, 10**8), StageContext())
    assert not failed.ok and not failed.model_unavailable and "is not x3" in (failed.error or "")
