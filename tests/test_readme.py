"""Every `srd process`, `srd models`, `srd config check` and `srd bench` example in README.md runs as written.

Each line of the README's ``sh`` blocks runs through a real shell in a temp folder that holds what the
line names (``photos/``, ``a.jpg``, ``scan.tif``, ``raw/``, ``srd.yaml``: the README's own YAML example,
``~/models/FSRCNN_x3.pb`` in a temp home, ``../shared`` with its Set14 cut to three images), with `srd` on the
PATH. The line itself is not changed. ``srd models fetch`` downloads from a local mirror of the zoo files
(``SRD_ZOO_BASE_URL``). Lines that are not one-shot commands are listed in `NOT_RUN` with the reason; a new
line that is in neither list fails `test_every_readme_command_is_run_or_listed`.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import REPO, SHARED, ZOO
from daemon_helpers import decoded_size, make_image

# End to end: each test runs the real srd command in a subprocess.
pytestmark = pytest.mark.e2e

RUN_PREFIXES = ("srd process", "srd models", "srd config check", "srd bench")
# Not one-shot commands: covered by other tests (the daemon, the service, the set-up, the scripts).
NOT_RUN = {
    "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && mkdir -p inbox && srd run":
        "set-up and the daemon (srd run)",
    "python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[test]' && python -m pytest -q -n 2":
        "the test set-up (.ci/run runs it; tests/test_deploy.py checks it)",
    'python -m pytest -q -m "not e2e"': "the unit tests (the test command runs them all)",
    "python -m pytest -q -m e2e --durations=30": "the end-to-end tests (the test command runs them all)",
    "ruff check srd tests scripts && mypy": "lint and types (tests/test_lint.py, .ci/run)",
    "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu && pip install -e '.[train]'":
        "the training set-up (.ci/run installs the train extra)",
    "srd run --config /etc/srd/srd.yaml": "the daemon",
    "srd status --config /etc/srd/srd.yaml": "the daemon",
    "srd ledger list --state failed --since 7d": "the daemon's ledger (tests/test_ledger.py)",
    "srd ledger retry 3f2a": "the daemon's ledger (tests/test_ledger.py)",
    "srd ledger check": "the daemon's ledger (tests/test_ledger.py)",
    "srd ledger repair": "the daemon's ledger (tests/test_ledger.py)",
    "useradd --system --home-dir /var/lib/srd --shell /usr/sbin/nologin srd": "systemd service step",
    "python3 -m venv /opt/srd/venv && /opt/srd/venv/bin/pip install /path/to/srd": "systemd service step",
    "install -D -m 0640 -o root -g srd config/srd.example.yaml /etc/srd/srd.yaml": "systemd service step",
    "install -d -o srd -g srd /srv/photos /srv/photos/inbox": "systemd service step",
    "/opt/srd/venv/bin/srd config check /etc/srd/srd.yaml": "systemd service step",
    "cp systemd/srd.service /etc/systemd/system/": "systemd service step",
    "systemctl edit srd": "systemd service step",
    "systemctl daemon-reload && systemctl enable --now srd": "systemd service step",
    "/opt/srd/venv/bin/srd status --config /etc/srd/srd.yaml": "systemd service step",
    "docker build -t srd .": "container step (tests/test_deploy.py builds the image where podman is installed)",
    "docker run -d --init --stop-timeout 60 --name srd \\": "container step",
    "-v /srv/photos/inbox:/data/inbox -v /srv/photos/outbox:/data/outbox \\": "container step",
    "-v /srv/photos/failed:/data/failed -v srd-state:/var/lib/srd srd": "container step",
    "docker exec srd srd status --config /etc/srd/srd.yaml": "container step",
    "python scripts/bench_daemon.py --output /tmp/bench_daemon.json": "daemon benchmark script",
    "python scripts/bench_daemon.py --phases overhead --output /tmp/overhead.json": "daemon benchmark script",
    "python scripts/bench_cv2_levers.py -m edsr-lite -s 2 --size 192x256 --rounds 1":
        "OpenCV DNN levers benchmark script",
    "python scripts/bench_ledger.py --entries 1000000": "ledger benchmark script",
    "python scripts/bench_restart.py --files 100000": "restart benchmark script",
    "python scripts/bench_lone_job.py --rounds 2 --output /tmp/bench_lone_job.json": "lone-job benchmark script",
    "python scripts/reliability.py --output reliability.json": "the long reliability suite",
    "pip install -e '.[web]'": "the web extra (the test extra includes it)",
    "srd web --hash-password": "the web UI (tests/test_web.py)",
    "srd web --config /etc/srd/srd.yaml": "the web UI (tests/test_web.py runs it on a temp config)",
    "python scripts/bench_web_stack.py --mb 300 --output /tmp/bench_web_stack.json --flask-path /tmp/flaskpkgs":
        "web server stack benchmark script",
    "dask scheduler --host 127.0.0.1 --port 8786 --no-dashboard":
        "Dask scaling-out step (tests/test_executor_dask.py starts real schedulers and workers)",
    "dask worker tcp://127.0.0.1:8786 --nworkers 2 --nthreads 1 --preload srd.executors.dask_worker":
        "Dask scaling-out step (tests/test_executor_dask.py starts real schedulers and workers)",
}


def readme_commands() -> list[str]:
    """Each command line of the README's ``sh`` blocks, without its trailing comment."""
    text = (REPO / "README.md").read_text()
    lines = []
    for block in re.findall(r"^```sh\n(.*?)^```", text, re.DOTALL | re.MULTILINE):
        for line in block.splitlines():
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command:
                lines.append(command)
    return lines


COMMANDS = [line for line in readme_commands() if line.startswith(RUN_PREFIXES)]


def test_every_readme_command_is_run_or_listed() -> None:
    others = [line for line in readme_commands() if not line.startswith(RUN_PREFIXES)]
    assert sorted(others) == sorted(NOT_RUN)
    assert len(COMMANDS) >= 12


def _readme_yaml() -> str:
    return re.search(r"^```yaml\n(.*?)^```", (REPO / "README.md").read_text(), re.DOTALL | re.MULTILINE).group(1)


@pytest.fixture(scope="module")
def zoo_mirror() -> Iterator[str]:
    """A local HTTP server holding the zoo files side by side, as `--base-url`/SRD_ZOO_BASE_URL expect."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(ZOO))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


# Three of Set14's fourteen images, the smallest: `srd bench quality --set …/Set14` runs as written and prints its
# table per model and image, at a fifth of the cost of the whole set (which README's figures come from).
SHORT_SET14 = ("coastguard.png", "face.png", "foreman.png")


def _shared_with_a_short_set14(target: Path) -> None:
    """A `../shared` of links to the real one's entries, except that datasets/bench/Set14 holds SHORT_SET14."""
    short = Path("datasets", "bench", "Set14")
    for depth, part in enumerate(short.parts):
        here = Path(*short.parts[:depth])
        (target / here).mkdir(parents=True, exist_ok=True)
        for entry in (SHARED / here).iterdir():
            if entry.name != part:
                (target / here / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    (target / short).mkdir()
    for name in SHORT_SET14:
        (target / short / name).symlink_to(SHARED / short / name)


@pytest.fixture
def workspace(tmp_path: Path, zoo_mirror: str) -> tuple[Path, dict[str, str]]:
    """The folder the README's commands run in, and their environment."""
    work, home, bin_dir = tmp_path / "work", tmp_path / "home", tmp_path / "bin"
    for folder in (work / "photos", work / "raw" / "2024", home / "models", bin_dir):
        folder.mkdir(parents=True)
    _shared_with_a_short_set14(tmp_path / "shared")  # the README's ../shared
    for path, size in [(work / "photos" / "one.jpg", (24, 32)), (work / "photos" / "two.png", (20, 20)),
                       (work / "a.jpg", (16, 24)), (work / "b.png", (18, 18)), (work / "scan.tif", (20, 30)),
                       (work / "raw" / "r1.jpg", (30, 40)), (work / "raw" / "2024" / "r2.png", (16, 16))]:
        path.write_bytes(make_image(path, size))
    shutil.copy(ZOO / "FSRCNN_x3.pb", home / "models" / "FSRCNN_x3.pb")
    (work / "srd.yaml").write_text(_readme_yaml())
    (work / "config").mkdir()
    shutil.copy(REPO / "config" / "srd.example.yaml", work / "config" / "srd.example.yaml")
    launcher = bin_dir / "srd"  # the `srd` of this checkout's interpreter, whatever the venv is called
    launcher.write_text(f"#!/bin/sh\nexec {sys.executable} -c 'from srd.cli.main import main; main()' \"$@\"\n")
    launcher.chmod(launcher.stat().st_mode | stat.S_IXUSR)
    env = {key: value for key, value in os.environ.items() if key not in ("XDG_DATA_HOME", "SRD_MODELS_DIR")}
    env.update(HOME=str(home), PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", SRD_ZOO_BASE_URL=zoo_mirror)
    return work, env


def _sizes(folder: Path) -> dict[str, tuple[int, int] | None]:
    return {str(p.relative_to(folder)): decoded_size(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _check_process_default(work: Path, out: str) -> None:
    assert _sizes(work / "big") == {"one.jpg": (48, 64), "two.png": (40, 40)}


def _check_process_named_model(work: Path, out: str) -> None:
    assert _sizes(work / "big") == {"a.jpg": (48, 72), "b.png": (54, 54)}


def _check_process_zoo_file(work: Path, out: str) -> None:
    assert _sizes(work / "big") == {"scan.tif": (60, 90)}


def _check_process_profile(work: Path, out: str) -> None:
    assert _sizes(work / "big") == {"r1.webp": (60, 80), "2024/r2.webp": (32, 32)}


def _check_models_list(work: Path, out: str) -> None:
    assert re.search(r"^edsr-lite\s+2 .* verified", out, re.MULTILINE), out


def _check_models_verify(work: Path, out: str) -> None:
    assert re.search(r"^verified\s+edsr-lite x2", out, re.MULTILINE), out


def _check_models_fetch(work: Path, out: str) -> None:
    fetched = work.parent / "home" / ".local" / "share" / "srd" / "models" / "FSRCNN_x3.pb"
    assert fetched.read_bytes() == (ZOO / "FSRCNN_x3.pb").read_bytes()
    assert "sha256 verified" in out


def _check_config(work: Path, out: str) -> None:
    # The example's folders don't exist on a test machine: warnings, then the verdict.
    assert out.splitlines()[-1].startswith("config/srd.example.yaml: ok")


def _check_bench_quality(work: Path, out: str) -> None:
    rows = re.findall(r"^\| (.+?)\s+\|\s+(\d+\.\d+) \| (\d\.\d{4}) \|$", out, re.MULTILINE)
    methods = [method for method, *_ in rows]
    assert any("bicubic" in m for m in methods) and any("edsr-lite" in m for m in methods), out
    assert all(20 < float(psnr) < 50 for _, psnr, _ in rows)


def _check_bench_speed(work: Path, out: str) -> None:
    row = r"^\| .+ \| (default: )?(opencv|onnxruntime).* \| \d+ \| \w+ \| \d+\.\d+ \(\d"
    assert re.search(row, out, re.MULTILINE), out


CHECKS: dict[str, Callable[[Path, str], None]] = {
    "srd process photos/": _check_process_default,
    "srd process a.jpg": _check_process_named_model,
    "srd process scan.tif": _check_process_zoo_file,
    "srd process raw/": _check_process_profile,
    "srd models list": _check_models_list,
    "srd models verify": _check_models_verify,
    "srd models fetch": _check_models_fetch,
    "srd config check": _check_config,
    "srd bench quality": _check_bench_quality,
    "srd bench speed": _check_bench_speed,
}


@pytest.mark.parametrize("command", COMMANDS, ids=lambda command: " ".join(command.split()[:3]))
def test_readme_command_runs_as_written(command: str, workspace: tuple[Path, dict[str, str]]) -> None:
    work, env = workspace
    check = next(check for prefix, check in CHECKS.items() if command.startswith(prefix))
    done = subprocess.run(["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{command}\n{done.stderr}"
    check(work, done.stdout)
