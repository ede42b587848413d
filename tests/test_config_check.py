"""`srd config check` through the real command: every problem at once, and warnings that are not errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from daemon_helpers import srd

# End to end: each test runs the real srd command in a subprocess.
pytestmark = pytest.mark.e2e


def _check(tmp_path: Path, text: str) -> tuple[int, list[str], str]:
    config = tmp_path / "srd.yaml"
    config.write_text(text)
    result = srd("config", "check", str(config))
    problems = [line.strip() for line in result.stderr.splitlines()[1:]]
    return result.returncode, problems, result.stdout


def test_a_bad_value_hides_no_other_problem_in_its_section(tmp_path: Path) -> None:
    """An ill-typed setting used to drop its whole section, so the checks on its siblings ran on defaults."""
    code, problems, _ = _check(tmp_path, f"""
engine: {{tile: big, chroma: nearest}}
profiles:
  p:
    stages:
      - denoise: {{strength: high, template_window: 4}}
      - resize: {{scale: twice}}
      - upscale: {{model: no-such-model, scale: 2}}
    output: {{quality: lots, format: gif}}
inboxes:
  - path: {tmp_path / 'in'}
    outbox: {tmp_path / 'in' / 'out'}
    failed: {tmp_path / 'failed'}
    profile: p
    settle_seconds: soon
    mode: sometimes
""")
    assert code == 2
    expected = [
        "at 'engine.tile': expected an integer, got 'big'",
        "at 'engine.chroma': must be one of",
        "at 'profiles.p.stages[0].denoise.strength': expected a number, got 'high'",
        "at 'profiles.p.stages[0].denoise.template_window': must be a positive odd number",
        "at 'profiles.p.stages[1].resize.scale': expected a number, got 'twice'",
        "at 'profiles.p.stages[2].upscale.model': model not found: no-such-model",
        "at 'profiles.p.output.quality': expected an integer, got 'lots'",
        "at 'profiles.p.output.format': must be same or one of",
        "at 'inboxes[0].settle_seconds': expected a number, got 'soon'",
        "at 'inboxes[0].mode': must be one of auto, native, poll",
        f"at 'inboxes[0].outbox': {tmp_path / 'in' / 'out'} is inside inbox {tmp_path / 'in'}",
    ]
    for text in expected:
        assert any(problem.startswith(text) for problem in problems), (text, problems)
    # Nothing is invented from a value that was already refused (resize's "needs scale, width or height").
    assert len(problems) == len(expected), problems


def test_missing_inbox_folders_are_warnings_not_errors(tmp_path: Path) -> None:
    (tmp_path / "present").mkdir()
    code, problems, out = _check(tmp_path, f"""
inboxes:
  - {{path: {tmp_path / 'present'}, outbox: {tmp_path / 'o1'}, failed: {tmp_path / 'f1'}}}
  - {{path: {tmp_path / 'absent'}, outbox: {tmp_path / 'o2'}, failed: {tmp_path / 'f2'}}}
""")
    assert (code, problems) == (0, [])
    lines = out.splitlines()
    assert lines[0] == (f"warning: at 'inboxes[1].path': {tmp_path / 'absent'} does not exist; srd run reports "
                        "this inbox unhealthy until it appears")
    assert lines[1].endswith("; 1 warning(s))") and len(lines) == 2


def test_a_model_that_fails_its_check_run_is_a_problem_at_its_stage(tmp_path: Path) -> None:
    """What `srd run` refuses to start or reload with (`modelcheck`), the check reports where it is configured,
    for every profile, used or not."""
    espcn = tmp_path / "espcn-own.pb"
    espcn.write_bytes((Path(__file__).resolve().parents[2] / "shared/models/opencv-zoo/ESPCN_x2.pb").read_bytes())
    code, problems, _ = _check(tmp_path, f"""
profiles:
  p:
    stages:
      - upscale: {{model: {espcn}, scale: 3, convention: espcn}}
  q:
    stages:
      - upscale: {{model: edsr-lite, scale: 2, convention: fsrcnn}}
  fine:
    stages:
      - upscale: {{model: edsr-lite, scale: 2}}
inboxes:
  - {{path: {tmp_path / 'in'}, outbox: {tmp_path / 'o'}, failed: {tmp_path / 'f'}, profile: fine}}
""")
    assert code == 2
    assert problems[0] == f"at 'profiles.p.stages[0].upscale.model': {espcn}: upscales x2, not x3 as it is chosen for"
    assert problems[1].startswith("at 'profiles.q.stages[0].upscale.model': ") and \
        "fails on a 1-channel input, which its convention 'fsrcnn' feeds it" in problems[1]
    assert len(problems) == 2, problems
