"""Helpers for the daemon tests: configs with the real zoo ESPCN ×2, a real `srd run` subprocess, polling.

Imported by the tests directly (not a conftest) so it can't collide with the shared conftest.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from srd.fs.atomic import is_temp_name

REPO = Path(__file__).resolve().parents[1]
ESPCN_X2 = REPO.parent / "shared" / "models" / "opencv-zoo" / "ESPCN_x2.pb"


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `predicate` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def read_status(state_dir: Path) -> dict[str, Any]:
    """The daemon's status document, or an empty one before its first write."""
    try:
        return json.loads((state_dir / "status.json").read_text())
    except FileNotFoundError:
        return {}


def in_flight(state_dir: Path, inbox: int = 0) -> int:
    """Jobs in flight for one inbox according to the status file (0 before the first write)."""
    inboxes = read_status(state_dir).get("inboxes") or [{}]
    return inboxes[inbox].get("in_flight", 0)


def inbox_config(root: Path, name: str = "in", **settings: Any) -> dict[str, Any]:
    """One inbox under `root`: root/name → root/name-out, failures in root/name-failed."""
    return {"path": str(root / name), "outbox": str(root / f"{name}-out"), "failed": str(root / f"{name}-failed"),
            "profile": "test", "settle_seconds": 0.3, "poll_interval": 0.2, **settings}


def write_config(root: Path, inboxes: Iterable[dict[str, Any]] | None = None, *, stages: list[Any] | None = None,
                 name: str = "srd.yaml", **top: Any) -> Path:
    """A config using the real zoo ESPCN ×2 (a few ms per small image), one worker by default."""
    config = {
        "state_dir": str(root / "state"),
        "workers": 1,
        "threads_per_worker": 1,
        "reconcile_interval": 30,
        "crash_retry_after_seconds": 1,  # restarted daemons retry the files cut short without the default 5 s
        "profiles": {"test": {"stages": stages or [{"upscale": {"model": str(ESPCN_X2), "scale": 2}}],
                              "output": {"format": "same"}}},
        "inboxes": list(inboxes) if inboxes is not None else [inbox_config(root)],
        "log": {"level": "info", "format": "json"},
        **top,
    }
    path = root / name
    path.write_text(yaml.safe_dump(config))
    for inbox in config["inboxes"]:
        Path(inbox["path"]).mkdir(parents=True, exist_ok=True)
    return path


def srd_command() -> list[str]:
    """How to invoke the `srd` CLI from this checkout's interpreter."""
    return [sys.executable, "-c", "from srd.cli.main import main; main()"]


def srd(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*srd_command(), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


class DaemonProcess:
    """A real `srd run --config …` subprocess whose JSON log lines are collected as they come."""

    def __init__(self, config: Path, *, env: dict[str, str] | None = None, drain_timeout: float = 10) -> None:
        self.config = config
        self.proc = subprocess.Popen(
            [*srd_command(), "run", "--config", str(config), "--drain-timeout", str(drain_timeout)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
            start_new_session=True,  # its own process group, as under systemd: `kill(group=True)` hits it all
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def events(self, name: str) -> list[dict[str, Any]]:
        """The parsed log records with this event name, so far."""
        found = []
        for line in list(self.lines):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == name:
                found.append(record)
        return found

    def wait_event(self, name: str, timeout: float = 20, count: int = 1) -> list[dict[str, Any]]:
        return wait_for(lambda: len(self.events(name)) >= count and self.events(name), timeout,
                        f"{count} × {name!r} in the daemon log\n" + self.log_tail())

    def wait_ready(self, timeout: float = 20) -> None:
        self.wait_event("daemon_ready", timeout)

    def log_tail(self, n: int = 40) -> str:
        return "".join(self.lines[-n:])

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    def kill(self, *, group: bool = False) -> None:
        """SIGKILL the daemon (with `group`: its whole process group at once, as systemd or the OOM killer of
        a cgroup would) and wait until its forkserver and workers are gone too."""
        descendants = descendants_of(self.pid)
        if group:
            os.killpg(self.pid, signal.SIGKILL)
        else:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        wait_for(lambda: not any(Path(f"/proc/{pid}").exists() and not _is_zombie(pid) for pid in descendants),
                 10, f"workers {descendants} to die with the daemon")


@contextmanager
def running(config: Path, *, env: dict[str, str] | None = None, drain_timeout: float = 10,
            ready_timeout: float = 20) -> Iterator[DaemonProcess]:
    """A `DaemonProcess` that is ready when the block starts and is SIGKILLed if the block leaves it running.

    The block stops the daemon itself (`daemon.stop()`) where its exit status is part of the test; an
    assertion that fails inside the block must not leave a daemon behind to hold the test's folders.
    """
    daemon = DaemonProcess(config, env=env, drain_timeout=drain_timeout)
    try:
        daemon.wait_ready(ready_timeout)
        yield daemon
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def descendants_of(pid: int) -> list[int]:
    """Pids of all live descendants of `pid`, found through /proc (children, grandchildren …)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        parents[int(entry.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent]
        found.extend(children)
        frontier.extend(children)
    return found


def make_image(path: Path, size: tuple[int, int] = (24, 32), seed: int = 0) -> bytes:
    """Encode a small random image (format from the suffix) and return its bytes, without writing them."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
    ok, encoded = cv2.imencode(path.suffix, pixels)
    assert ok
    return encoded.tobytes()


def animation(fmt: str, frames: int, **options: object) -> bytes:
    """`frames` different frames saved by Pillow as one animated file (or multi-page TIFF)."""
    from PIL import Image

    pictures = [Image.new("RGB", (24, 16), (40 * i, 200 - 40 * i, 90)) for i in range(frames)]
    buffer = io.BytesIO()
    pictures[0].save(buffer, fmt, save_all=frames > 1, append_images=pictures[1:], **options)
    return buffer.getvalue()


def decoded_size(path: Path) -> tuple[int, int] | None:
    """(height, width) of an image file, or None if it doesn't decode."""
    data = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    return None if image is None else image.shape[:2]


def files_under(folder: Path) -> dict[str, Path]:
    """Relative posix name → path of every file under `folder`."""
    if not folder.exists():
        return {}
    return {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}


class OutboxWatcher:
    """Lists an outbox every few ms while a test runs, and records anything a user must never see there.

    A final name must always hold a complete, decodable image; temp files may come and go but only
    under srd's temp-name pattern.
    """

    def __init__(self, folder: Path, expected: set[str]) -> None:
        self.folder = folder
        self.expected = expected
        self.problems: list[str] = []
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for rel, path in files_under(self.folder).items():
                if is_temp_name(path.name):
                    continue
                if rel not in self.expected:
                    self.problems.append(f"unexpected name {rel}")
                    continue
                try:
                    if decoded_size(path) is None:
                        self.problems.append(f"{rel} did not decode")
                except FileNotFoundError:
                    continue
                self.seen.add(rel)
            self._stop.wait(0.005)

    def stop(self) -> list[str]:
        self._stop.set()
        self._thread.join(timeout=5)
        return self.problems
