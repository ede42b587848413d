"""Config loading: the documented shape works, and every problem is reported at once with its location."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO

from srd.config import load_config
from srd.engine.pipeline import LimitSize, Upscale
from srd.errors import ConfigError

ISSUE_SHAPE = """
state_dir: /var/lib/srd
workers: 2
threads_per_worker: 1
profiles:
  photo:
    stages:
      - limit_size: {max_side: 2000}
      - upscale: {model: edsr-lite, scale: 2}   # or a path to a model file
inboxes:
  - path: /srv/inbox
    outbox: /srv/outbox
    failed: /srv/failed
    profile: photo
    recursive: true
    settle_seconds: 2
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "srd.yaml"
    path.write_text(text)
    return path


def test_the_documented_shape_loads(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, ISSUE_SHAPE))
    assert config.state_dir == Path("/var/lib/srd")
    assert (config.workers, config.threads_per_worker) == (2, 1)
    photo = config.profiles["photo"]
    assert photo.pipeline.stages == (LimitSize(max_side=2000), Upscale(model="edsr-lite", scale=2.0))
    inbox = config.inboxes[0]
    assert (inbox.path, inbox.outbox, inbox.profile, inbox.settle_seconds) == (
        Path("/srv/inbox"), Path("/srv/outbox"), "photo", 2.0
    )


def test_the_example_config_loads_with_every_model_it_names() -> None:
    """config/srd.example.yaml is what admins copy: it must pass the same check as `srd config check`."""
    config = load_config(REPO / "config" / "srd.example.yaml", check_models=True)
    assert set(config.profiles) == {"default", "photo", "scans"} and len(config.inboxes) == 2
    assert Upscale(model="edsr-base", scale=2.0) in config.profiles["scans"].pipeline.stages
    assert Upscale(model="edsr-photo", scale=2.0) in config.profiles["photo"].pipeline.stages


def test_no_config_means_the_working_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(None)
    assert config.inboxes[0].path == tmp_path / "inbox"
    assert config.inboxes[0].outbox == tmp_path / "outbox"
    assert config.state_dir == tmp_path / ".srd"
    assert config.profiles["default"].pipeline.stages == (Upscale(model="edsr-lite", scale=2),)


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, "inboxes: [{path: in, outbox: out, failed: bad}]\nstate_dir: st\n"))
    assert config.inboxes[0].path == tmp_path / "in"
    assert config.state_dir == tmp_path / "st"


def test_every_problem_is_reported_with_its_location(tmp_path: Path) -> None:
    text = """
workers: many
colour: blue
profiles:
  photo:
    stages:
      - limit_size: {max_side: 2000}
      - upscale: {model: edsr-lite, scale: 12}
      - blur: {}
      - denoise: {strength: high}
    output: {format: gif, quality: 101}
inboxes:
  - path: /srv/in
    outbox: /srv/in/out
    failed: /srv/failed
    profile: fast
    mode: sometimes
"""
    with pytest.raises(ConfigError) as caught:
        load_config(_write(tmp_path, text))
    problems = caught.value.problems
    expected = [
        "at 'workers': expected an integer, got 'many'",
        "at 'colour': unknown key",
        "at 'profiles.photo.stages[1].upscale.scale': must be between 1 and 8",
        "at 'profiles.photo.stages[2]': unknown stage 'blur'",
        "at 'profiles.photo.stages[3].denoise.strength': expected a number, got 'high'",
        "at 'profiles.photo.output.format': must be same or one of",
        "at 'profiles.photo.output.quality': must be between 1 and 100",
        "at 'inboxes[0].mode': must be one of auto, native, poll",
        "at 'inboxes[0].profile': unknown profile 'fast'",
        "at 'inboxes[0].outbox': /srv/in/out is inside inbox /srv/in",
    ]
    for text in expected:
        assert any(problem.startswith(text) for problem in problems), (text, problems)
    assert len(problems) == len(expected)


def test_an_inbox_inside_the_outbox_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="inbox /srv/out/in is inside /srv/out"):
        load_config(_write(tmp_path, "inboxes: [{path: /srv/out/in, outbox: /srv/out, failed: /srv/f}]"))


def test_yaml_syntax_errors_name_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="line 2"):
        load_config(_write(tmp_path, "workers: 2\nstate_dir: a: b\n"))


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")


def test_a_merge_key_override_is_not_a_duplicate_but_a_repeated_key_is(tmp_path: Path) -> None:
    """`<<: *base` followed by one of its keys is YAML's way to override; only a key written twice is refused."""
    config = tmp_path / "srd.yaml"
    config.write_text("engine: &tuned {tile: 64, tile_pad: 8}\n"
                      "x-unused: {<<: *tuned, tile: 128}\n"
                      "workers: 1\nworkers: 2\n")
    with pytest.raises(ConfigError) as raised:
        load_config(config)
    duplicates = [p for p in raised.value.problems if "given again" in p]
    assert duplicates == ["line 4: key 'workers' is given again (first at line 3); YAML would keep only the last "
                          "one, so remove one of them"]


@pytest.mark.parametrize(("key", "default", "value", "problem"), [
    ("claim_stale_seconds", 60.0, "5", "must be at least 10.0"),  # the heartbeat, a sixth, must fit the lease
    ("claim_stale_seconds", 60.0, "86400", "must be at most 3600.0"),
    ("claim_stale_seconds", 60.0, "soon", "expected a number"),
    ("crash_retry_after_seconds", 5.0, "0", "must be at least 1"),
    ("crash_retry_after_seconds", 5.0, "3600", "must be at most 600"),
])
def test_the_daemons_timing_settings_have_their_documented_defaults_and_bounds(
        tmp_path: Path, key: str, default: float, value: str, problem: str) -> None:
    """claim_stale_seconds (60 unless set, 10 s to an hour) and crash_retry_after_seconds (5 unless set, 1 s to
    10 min): a value in bounds is taken as given, one outside is refused naming the key."""
    base = "inboxes: [{path: in, outbox: out, failed: bad}]\n"
    assert getattr(load_config(_write(tmp_path, base)), key) == default
    assert getattr(load_config(_write(tmp_path, base + f"{key}: 120\n")), key) == 120.0
    with pytest.raises(ConfigError) as refused:
        load_config(_write(tmp_path, base + f"{key}: {value}\n"))
    assert any(key in p and problem in p for p in refused.value.problems), refused.value.problems
