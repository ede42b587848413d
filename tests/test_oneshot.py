"""`srd process` never destroys or silently loses a file: real `srd` runs on real files, real kills."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pty
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from daemon_helpers import ESPCN_X2, decoded_size, make_image, srd, srd_command, wait_for
from reliability_harness import tmpfs, worker_pids

from srd.executors.job import JobResult
from srd.fs.atomic import is_temp_name
from srd.oneshot.report import NON_TTY_EVERY_S, Reporter, ReportOptions

# End to end: each test runs the real srd command in a subprocess.
pytestmark = pytest.mark.e2e

# --scale is given although the zoo name tells it, so that these tests show the same faults on older code.
ESPCN = ["-m", str(ESPCN_X2), "-s", "2"]


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` (relative name → bytes), links resolved as a reader sees them."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def write_image(path: Path, size: tuple[int, int] = (24, 32), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(make_image(path, size, seed))
    return path


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    for i, name in enumerate(["a.jpg", "b.png", "c.jpg"]):
        write_image(folder / name, (20 + i, 30), seed=i)
    write_image(folder / "sub" / "d.png", (16, 16), seed=9)
    return folder


# -- outputs never land on inputs ---------------------------------------------------------------------------


def _layouts(tmp: Path, photos: Path) -> dict[str, list[str]]:
    (tmp / "linked").symlink_to(photos, target_is_directory=True)
    (tmp / "hard").mkdir()
    os.link(photos / "a.jpg", tmp / "hard" / "a.jpg")
    return {
        "out is the input folder": [str(photos), "--out", str(photos)],
        "out is the input folder, trailing dot": [str(photos), "--out", str(photos / "sub" / "..")],
        "out is a symlink to the input folder": [str(photos), "--out", str(tmp / "linked")],
        "input files into their own folder": [str(photos / "a.jpg"), str(photos / "b.png"), "--out", str(photos)],
        "recursive, out inside the input folder": [str(photos), "-r", "--out", str(photos / "sub")],
        "recursive, out deeper inside the input folder": [str(photos), "-r", "--out", str(photos / "new" / "big")],
        "output is a hard link of the input": [str(photos / "a.jpg"), "--out", str(tmp / "hard")],
        "another input's name after a format change": [str(photos / "a.jpg"), str(tmp / "hard" / "a.png"), "-f",
                                                        "png", "--out", str(tmp / "hard")],
    }


@pytest.mark.parametrize("layout", [
    "out is the input folder", "out is the input folder, trailing dot", "out is a symlink to the input folder",
    "input files into their own folder", "recursive, out inside the input folder",
    "recursive, out deeper inside the input folder", "output is a hard link of the input",
    "another input's name after a format change",
])
def test_outputs_over_inputs_are_refused_before_anything_is_written(layout: str, photos: Path, tmp_path: Path) -> None:
    args = _layouts(tmp_path, photos)[layout]
    if layout == "another input's name after a format change":
        write_image(tmp_path / "hard" / "a.png", seed=5)
    before = snapshot(tmp_path)
    done = srd("process", *args, *ESPCN)
    assert done.returncode == 2, done.stderr
    assert "--in-place" in done.stderr or "outside it" in done.stderr
    assert snapshot(tmp_path) == before  # not one byte written, no folder made


def test_in_place_replaces_each_input_only_with_its_complete_output(photos: Path, tmp_path: Path) -> None:
    sizes = {name: decoded_size(photos / name) for name in ("a.jpg", "b.png", "c.jpg")}
    (photos / "broken.jpg").write_bytes((photos / "a.jpg").read_bytes()[:100])
    done = srd("process", str(photos), "--out", str(photos), "--in-place", *ESPCN)
    assert done.returncode == 1, done.stderr
    assert "broken.jpg" in done.stderr and "3 processed, 1 failed" in done.stderr
    for name, (height, width) in sizes.items():
        assert decoded_size(photos / name) == (2 * height, 2 * width)
    assert len((photos / "broken.jpg").read_bytes()) == 100  # the failed input is untouched
    assert sorted(p.name for p in photos.iterdir()) == ["a.jpg", "b.png", "broken.jpg", "c.jpg", "sub"]
    assert decoded_size(photos / "sub" / "d.png") == (16, 16)  # not recursive: not touched


def test_in_place_never_writes_over_another_input(tmp_path: Path) -> None:
    """`a.jpg` → `a.png` would replace the input `a.png`: it gets `a-1.png`; `a.png` replaces itself."""
    folder = tmp_path / "p"
    jpg = write_image(folder / "a.jpg", (20, 30), seed=1)
    png = write_image(folder / "a.png", (10, 12), seed=2)
    done = srd("process", str(jpg), str(png), "--out", str(folder), "--in-place", "-f", "png", *ESPCN)
    assert done.returncode == 0, done.stderr
    assert decoded_size(folder / "a-1.png") == (40, 60)
    assert decoded_size(folder / "a.png") == (20, 24)
    assert decoded_size(folder / "a.jpg") == (20, 30)


# -- two inputs, one name -----------------------------------------------------------------------------------


@pytest.mark.parametrize("names, fmt, expected", [
    (["in/a.jpg", "in/a.png"], "webp", {"a.webp": (40, 60), "a-1.webp": (20, 24)}),
    (["in/a.png", "in/a.jpg"], "png", {"a.png": (40, 60), "a-1.png": (20, 24)}),
    (["one/x.png", "two/x.png"], None, {"x.png": (40, 60), "x-1.png": (20, 24)}),
])
def test_two_inputs_that_map_to_one_name_are_both_written(
    names: list[str], fmt: str | None, expected: dict[str, tuple[int, int]], tmp_path: Path
) -> None:
    first = write_image(tmp_path / names[0], (20, 30), seed=1)
    second = write_image(tmp_path / names[1], (10, 12), seed=2)
    inputs = [str(first), str(second)] if names[0].startswith("in/") else [str(first.parent), str(second.parent)]
    extra = ["-f", fmt] if fmt else []
    done = srd("process", *inputs, "--out", str(tmp_path / "out"), *extra, *ESPCN, "-j", "2")
    assert done.returncode == 0, done.stderr
    assert "2 processed, 0 failed" in done.stderr
    assert {p.name: decoded_size(p) for p in (tmp_path / "out").iterdir()} == expected


def test_rerunning_the_same_command_replaces_its_outputs_instead_of_numbering_them(
    photos: Path, tmp_path: Path
) -> None:
    for _ in range(2):
        done = srd("process", str(photos), "--out", str(tmp_path / "out"), *ESPCN)
        assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.jpg", "b.png", "c.jpg"]


def test_paths_relative_to_the_working_folder_work_as_absolute_ones(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`srd process photos/ --out big/` as the README writes it, and an input named through ``..``: each output
    carries srd's mark (so a rerun replaces it and a run over the outputs skips them)."""
    monkeypatch.chdir(photos)
    first = srd("process", ".", "--out", "../big", *ESPCN)
    assert first.returncode == 0, first.stderr
    assert all("user.srd.source" in os.listxattr(out) for out in (tmp_path / "big").iterdir())
    again = srd("process", "../" + photos.name + "/a.jpg", "--out", "../big", *ESPCN)
    assert again.returncode == 0, again.stderr  # replaces its own output, not refused as a stranger's
    over_outputs = srd("process", "../big", "--out", "../bigger", *ESPCN)
    assert over_outputs.returncode == 0, over_outputs.stderr
    assert "0 processed, 0 failed, 3 skipped (already srd's outputs" in over_outputs.stderr


def test_rerunning_in_place_leaves_srd_outputs_as_they_are_unless_asked_to_reprocess(photos: Path) -> None:
    """A second `--in-place` run over a finished folder (or one resumed after a kill) must not upscale each
    photo again: srd's outputs carry its mark and are skipped, not failed; `--reprocess` upscales them anyway."""
    sizes = {name: decoded_size(photos / name) for name in ("a.jpg", "b.png", "c.jpg")}
    first = srd("process", str(photos / "a.jpg"), "--out", str(photos), "--in-place", *ESPCN)
    assert first.returncode == 0, first.stderr
    after_first = snapshot(photos)
    again = srd("process", str(photos), "--out", str(photos), "--in-place", "--json", *ESPCN)
    assert again.returncode == 0, again.stderr
    assert "2 processed, 0 failed, 1 skipped (already srd's outputs" in again.stderr
    records = {Path(r["source"]).name: r for r in map(json.loads, again.stdout.splitlines())}
    assert records["a.jpg"]["status"] == "skipped" and "already an output of srd" in records["a.jpg"]["reason"]
    assert (photos / "a.jpg").read_bytes() == after_first["a.jpg"]  # left exactly as the first run wrote it
    for name, (height, width) in sizes.items():
        assert decoded_size(photos / name) == (2 * height, 2 * width)
    forced = srd("process", str(photos / "a.jpg"), "--out", str(photos), "--in-place", "--reprocess", *ESPCN)
    assert forced.returncode == 0, forced.stderr
    height, width = sizes["a.jpg"]
    assert decoded_size(photos / "a.jpg") == (4 * height, 4 * width)


def test_a_file_in_out_that_srd_did_not_write_is_never_replaced_unless_asked(photos: Path, tmp_path: Path) -> None:
    """`--out` holds the user's own b.png: the run is refused (exit 2) before anything is written, naming
    it; `--overwrite` replaces it; srd's own earlier outputs (marked when written) are replaced without it."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.png").write_bytes(b"my precious")
    refused = srd("process", str(photos), "--out", str(out), *ESPCN)
    assert refused.returncode == 2 and str(out / "b.png") in refused.stderr and "--overwrite" in refused.stderr
    assert sorted(p.name for p in out.iterdir()) == ["b.png"] and (out / "b.png").read_bytes() == b"my precious"
    done = srd("process", str(photos), "--out", str(out), "--overwrite", *ESPCN)
    assert done.returncode == 0, done.stderr
    assert decoded_size(out / "b.png") is not None
    again = srd("process", str(photos), "--out", str(out), *ESPCN)  # all three are srd's own now
    assert again.returncode == 0, again.stderr


# -- a dying worker costs one file, not the batch -----------------------------------------------------------


def _batch(tmp_path: Path, count: int = 10) -> Path:
    folder = tmp_path / "batch"
    for i in range(count):
        write_image(folder / f"{i}.png", (160, 200), seed=i)
    return folder


def _kill_one_worker_mid_batch(cmd: list[str], out: Path, total: int) -> subprocess.CompletedProcess[str]:
    """Run `cmd`, SIGKILL one of its pool workers once the first output is written, and wait for the end."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: out.is_dir() and any(p.suffix == ".png" for p in out.iterdir()), 120,
                 "the first output")
        workers = wait_for(lambda: worker_pids(proc.pid), 30, "a worker")
        os.kill(workers[0], signal.SIGKILL)
        assert len(list(out.iterdir())) < total, "the batch ended before the kill: make it longer"
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def test_a_killed_worker_is_replaced_and_the_whole_batch_is_processed(tmp_path: Path) -> None:
    folder, out = _batch(tmp_path, 6), tmp_path / "out"
    cmd = [*srd_command(), "process", str(folder), "--out", str(out), "-m", "edsr-base", "-s", "2", "-j", "2", "-v"]
    done = _kill_one_worker_mid_batch(cmd, out, 6)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "6 processed, 0 failed" in done.stderr
    assert '"event": "pool_rebuilt"' in done.stderr and '"event": "job_lost_retrying"' in done.stderr
    assert {p.name: decoded_size(p) for p in out.iterdir()} == {f"{i}.png": (320, 400) for i in range(6)}


def test_a_model_replaced_mid_batch_stops_it_with_one_model_error_not_a_failure_per_file(tmp_path: Path) -> None:
    """The model file is replaced mid-batch and the worker restarts: it refuses the new bytes (the run checked and
    pinned the old ones). Each remaining input "failed" with the same model message (exit 1, as if the inputs were
    at fault); now the run stops at the first: exit 4, one line, the rest counted as not processed."""
    folder, out = _batch(tmp_path, 6), tmp_path / "out"
    model = tmp_path / "own.onnx"
    model.write_bytes((Path(__file__).resolve().parents[1] / "models" / "edsr-base_x2.onnx").read_bytes())
    cmd = [*srd_command(), "process", str(folder), "--out", str(out), "-m", str(model), "-s", "2",
           "--convention", "edsr", "-j", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: out.is_dir() and any(p.suffix == ".png" for p in out.iterdir()), 120, "the first output")
        model.write_bytes((Path(__file__).resolve().parents[1] / "models" / "edsr-lite_x2.onnx").read_bytes())
        for pid in wait_for(lambda: worker_pids(proc.pid), 30, "a worker"):
            os.kill(pid, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 4, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("srd: error:")]
    assert len(errors) == 1 and "replaced since srd checked it" in errors[0] and "The run stopped there" in errors[0]
    assert "srd: failed:" not in stderr and "Traceback" not in stderr
    written = sum(1 for p in out.iterdir() if p.suffix == ".png")
    assert 1 <= written < 6 and f"{6 - written} not processed" in stderr, stderr


def _forkserver_of(pid: int) -> int:
    """The pid of multiprocessing's forkserver started by process `pid`."""
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes()
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent == pid and b"forkserver" in command:
            return int(entry.name)
    raise AssertionError(f"no forkserver under {pid}")


@pytest.mark.parametrize("in_place", [False, True], ids=["to --out, mid-batch", "in place, first jobs running"])
def test_a_killed_forkserver_costs_no_file(tmp_path: Path, in_place: bool) -> None:
    """The forkserver (it forks the workers) SIGKILLed: the next worker start fails (EOFError), the pool is rebuilt
    on a fresh forkserver, and every file is processed exactly once. In place, the first jobs' workers were
    running at the kill: none of them may land an output after its job was given up and retried (the retry
    would find its input replaced and report it "changed since planned")."""
    folder = _batch(tmp_path, 8)
    sizes = {p.name: decoded_size(p) for p in folder.iterdir()}
    out = folder if in_place else tmp_path / "out"
    cmd = [*srd_command(), "process", str(folder), "--out", str(out), "-m", "edsr-base", "-s", "2", "-j", "2",
           *(["--in-place"] if in_place else [])]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if in_place:
            wait_for(lambda: worker_pids(proc.pid), 60, "workers")
            time.sleep(1)  # their first jobs under way
        else:
            wait_for(lambda: out.is_dir() and any(decoded_size(p) == (320, 400) for p in out.iterdir()), 120,
                     "the first output")
        os.kill(_forkserver_of(proc.pid), signal.SIGKILL)
        _, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "Traceback" not in stderr and "8 processed, 0 failed" in stderr, stderr
    assert {p.name: decoded_size(p) for p in out.iterdir()} == {n: (2 * h, 2 * w) for n, (h, w) in sizes.items()}


def test_a_killed_worker_fails_only_its_files_with_the_reason(tmp_path: Path) -> None:
    """With ``max_attempts: 1`` the jobs the dead worker's pool held fail; every other file is written."""
    folder, out = _batch(tmp_path, 6), tmp_path / "out"
    config = tmp_path / "once.yaml"
    config.write_text("max_attempts: 1\n")
    cmd = [*srd_command(), "process", str(folder), "--out", str(out), "-c", str(config), "-m", "edsr-base", "-s",
           "2", "-j", "2"]
    done = _kill_one_worker_mid_batch(cmd, out, 6)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    failures = [line for line in done.stderr.splitlines() if line.startswith("srd: failed:")]
    assert 1 <= len(failures) <= 2
    assert all("worker process died" in line and "gave up after 1 attempt" in line for line in failures)
    written = {p.name for p in out.iterdir()}
    assert not any(is_temp_name(name) for name in written)
    assert len(written) + len(failures) == 6
    assert f"{len(written)} processed, {len(failures)} failed" in done.stderr
    assert all(decoded_size(out / name) == (320, 400) for name in written)


def test_a_job_over_job_timeout_fails_with_the_reason_and_the_rest_is_processed(tmp_path: Path) -> None:
    folder, out = tmp_path / "in", tmp_path / "out"
    write_image(folder / "huge.png", (1000, 1000), seed=1)  # edsr-base: ~20 s of one core
    write_image(folder / "small.png", (16, 16), seed=2)
    config = tmp_path / "timeout.yaml"
    # Room for the small file's worker to start and load the model on a loaded machine (3 s was not always).
    config.write_text("max_attempts: 1\njob_timeout: 8\n")
    done = srd("process", str(folder), "--out", str(out), "-c", str(config), "-m", "edsr-base", "-s", "2",
               "-j", "2", timeout=120)
    assert done.returncode == 1, done.stderr
    assert any(line.startswith("srd: failed:") and "huge.png" in line and "timed out after 8 s" in line
               for line in done.stderr.splitlines()), done.stderr
    assert "1 processed, 1 failed" in done.stderr
    assert [p.name for p in out.iterdir()] == ["small.png"]


def test_workers_killed_mid_write_in_place_leave_each_input_whole_and_no_temp_file(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    originals = {f"{i}.png": write_image(folder / f"{i}.png", (300, 400), seed=i).read_bytes() for i in range(6)}
    proc = subprocess.Popen([*srd_command(), "process", str(folder), "--out", str(folder), "--in-place", "-m",
                             "edsr-lite", "-s", "2", "-j", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        workers = wait_for(lambda: pids if len(pids := worker_pids(proc.pid)) == 2 else None, 60, "two workers")
        deadline = time.monotonic() + 120
        while not any(is_temp_name(entry.name) for entry in os.scandir(folder)):  # kill at once when seen
            assert time.monotonic() < deadline and proc.poll() is None, "never saw a temp file"
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert sorted(p.name for p in folder.iterdir()) == sorted(originals)  # no temp file left
    for name, original in originals.items():
        assert (folder / name).read_bytes() != original and decoded_size(folder / name) == (600, 800), name


def _held_after_each_rename(hold_s: float) -> list[str]:
    """A strace prefix that holds every rename of srd and its workers for `hold_s` once it is done: a test can
    act between a worker's output landing and the worker reporting it."""
    calls = "rename,renameat,renameat2"
    return ["strace", "-f", "-qq", "-o", "/dev/null", "-e", f"trace={calls}", "-e",
            f"inject={calls}:delay_exit={int(hold_s * 1_000_000)}"]


def _no_bytecode_writes() -> dict[str, str]:
    return {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}  # .pyc files are written by a rename too


needs_strace = pytest.mark.skipif(shutil.which("strace") is None, reason="strace holds a worker after its rename")


@needs_strace
@pytest.mark.parametrize("in_place", [True, False], ids=["in place", "to --out"])
def test_a_worker_killed_right_after_its_output_landed_counts_it_processed(tmp_path: Path, in_place: bool) -> None:
    """In place, a retry would upscale the output a second time; elsewhere the output would be reported failed
    (``max_attempts: 1``) while it is there."""
    source = write_image(tmp_path / "photos" / "0.png", (30, 40))
    target = source if in_place else tmp_path / "out" / "0.png"
    planned_inode = source.stat().st_ino
    config = tmp_path / "once.yaml"
    config.write_text("max_attempts: 1\n")
    where = ["--in-place"] if in_place else ["-c", str(config)]
    proc = subprocess.Popen([*_held_after_each_rename(5), *srd_command(), "process", str(source.parent), "--out",
                             str(target.parent), *where,
                             *ESPCN, "-j", "1", "-v"], env=_no_bytecode_writes(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: target.exists() and target.stat().st_ino != planned_inode, 120, "the output in place", 0.01)
        srd_pid = int(Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()[0])
        workers = worker_pids(srd_pid)
        assert len(workers) == 1
        os.kill(workers[0], signal.SIGKILL)  # held by strace: it has not reported its output
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert decoded_size(target) == (60, 80)  # upscaled once
    assert sorted(p.name for p in target.parent.iterdir()) == ["0.png"]
    assert proc.returncode == 0, stderr
    assert '"event": "job_lost_after_output_landed"' in stderr and "1 processed, 0 failed" in stderr


@needs_strace
def test_in_place_an_input_written_to_after_planning_is_reported_and_left_as_written(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    first = write_image(folder / "0.png", (30, 40))
    second = write_image(folder / "1.png", (30, 40), seed=1)
    planned_inode = first.stat().st_ino
    proc = subprocess.Popen([*_held_after_each_rename(3), *srd_command(), "process", str(folder), "--out",
                             str(folder), "--in-place", *ESPCN, "-j", "1"], env=_no_bytecode_writes(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # While the first output is held, the second input is rewritten where it is (the same inode).
        wait_for(lambda: first.stat().st_ino != planned_inode, 120, "the first output renamed over its input", 0.01)
        edited = make_image(second, (30, 40), seed=2)
        second.write_bytes(edited)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 1, stderr
    assert any(line.startswith("srd: failed:") and "1.png" in line and "changed since this run planned it" in line
               for line in stderr.splitlines()), stderr
    assert "1 processed, 1 failed" in stderr
    assert second.read_bytes() == edited and decoded_size(first) == (60, 80)


@pytest.mark.parametrize("stop, inherited, code, said", [
    (signal.SIGINT, signal.SIG_DFL, 130, "srd: interrupted"),
    (signal.SIGINT, signal.SIG_IGN, 130, "srd: interrupted"),
    (signal.SIGTERM, signal.SIG_DFL, 143, "srd: terminated"),
], ids=["sigint-default", "sigint-ignored", "sigterm"])
def test_ctrl_c_or_sigterm_stops_the_batch_with_its_summary_and_no_half_written_file(
    tmp_path: Path, stop: signal.Signals, inherited: signal.Handlers, code: int, said: str
) -> None:
    # Far more files than can finish while the signal is on its way on a busy machine; the rest never start.
    # SIG_IGN: started as a script's `srd process … &` (a shell without job control ignores SIGINT in
    # background commands, and exec keeps that), where a SIGINT sent to srd must still stop it. SIGTERM (a
    # `timeout`, a service manager) stops it the same way, with its summary, not as a killed process.
    folder, out = _batch(tmp_path, 40), tmp_path / "out"
    proc = subprocess.Popen([*srd_command(), "process", str(folder), "--out", str(out), "-m", "edsr-base", "-s",
                             "2", "-j", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, inherited))
    try:
        wait_for(lambda: worker_pids(proc.pid) and out.is_dir(), 60, "workers at work")
        workers = worker_pids(proc.pid)
        proc.send_signal(stop)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr
    summary = re.search(r"^srd: (\d+) processed, 0 failed", stderr, re.MULTILINE)
    assert summary and int(summary.group(1)) <= len(list(out.iterdir())) and said in stderr
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers), 10, "the workers to be gone")
    assert not any(is_temp_name(p.name) for p in out.iterdir())
    assert all(decoded_size(p) == (320, 400) for p in out.iterdir())


# -- what a long run shows ----------------------------------------------------------------------------------


def _run_on_a_terminal(args: list[str]) -> tuple[int, str]:
    """Run srd with stderr (and stdout) on a pseudo-terminal, as a person sees it; return (status, text)."""
    main, child = pty.openpty()
    proc = subprocess.Popen([*srd_command(), *args], stdout=child, stderr=child, stdin=subprocess.DEVNULL)
    os.close(child)
    chunks = []
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main)
    return proc.wait(timeout=120), b"".join(chunks).decode(errors="replace")


def test_progress_line_shows_rate_and_eta_on_a_terminal(tmp_path: Path) -> None:
    folder = _batch(tmp_path, 4)
    status, text = _run_on_a_terminal(["process", str(folder), "--out", str(tmp_path / "out"), "-m", "edsr-lite",
                                       "-s", "2"])
    assert status == 0, text
    assert "files/s" in text or "s/file" in text
    assert "ETA" in text and "/4" in text
    assert "4 processed, 0 failed" in text


def test_quiet_shows_only_failures_and_the_summary(tmp_path: Path) -> None:
    folder = _batch(tmp_path, 3)
    (folder / "bad.png").write_bytes(b"not an image")  # fails before OpenCV, whose own log lines are not ours
    status, text = _run_on_a_terminal(["process", str(folder), "--out", str(tmp_path / "out"), *ESPCN,
                                       "--quiet"])
    assert status == 1, text
    lines = [line for line in text.replace("\r", "\n").splitlines() if line.strip()]
    assert len(lines) == 2, lines
    assert lines[0].startswith("srd: failed:") and "bad.png" in lines[0]
    assert "3 processed, 1 failed" in lines[1]


def test_json_gives_one_result_per_file_on_stdout(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    write_image(folder / "a.png", (20, 30))
    (folder / "bad.jpg").write_bytes(b"junk")
    done = srd("process", str(folder), str(tmp_path / "missing.png"), "--out", str(tmp_path / "out"), *ESPCN,
               "--json")
    assert done.returncode == 1, done.stderr
    records = {Path(r["source"]).name: r for r in map(json.loads, done.stdout.splitlines())}
    assert set(records) == {"a.png", "bad.jpg", "missing.png"}
    good = records["a.png"]
    assert good["status"] == "ok" and good["reason"] is None and good["output"] == str(tmp_path / "out" / "a.png")
    assert good["input_size"] == [30, 20] and good["output_size"] == [60, 40]
    assert good["input_bytes"] == (folder / "a.png").stat().st_size
    assert good["output_bytes"] == (tmp_path / "out" / "a.png").stat().st_size and good["ms"] >= 0
    assert records["bad.jpg"]["status"] == "failed" and "not an image" in records["bad.jpg"]["reason"]
    assert records["missing.png"]["status"] == "failed" and "No such file" in records["missing.png"]["reason"]


# -- --model as the README writes it ------------------------------------------------------------------------


def test_model_file_gives_its_scale_and_convention_by_its_zoo_name(zoo: Path, tmp_path: Path) -> None:
    source = write_image(tmp_path / "scan.tif", (20, 30))
    done = srd("process", str(source), "--out", str(tmp_path / "big"), "--model", str(zoo / "FSRCNN_x3.pb"))
    assert done.returncode == 0, done.stderr
    assert decoded_size(tmp_path / "big" / "scan.tif") == (60, 90)


def test_unknown_model_says_not_found_and_where_it_looked(tmp_path: Path) -> None:
    source = write_image(tmp_path / "a.png")
    done = srd("process", str(source), "--out", str(tmp_path / "big"), "--model", "nosuch")
    assert done.returncode == 4
    assert "model not found: nosuch (looked in " in done.stderr and "--scale" not in done.stderr
    assert not (tmp_path / "big").exists()


def test_a_model_name_in_several_scales_or_an_unknown_convention_is_a_usage_error(tmp_path: Path) -> None:
    """The command line is at fault, not a model: exit 2 (4 would send an admin to check the model files)."""
    source = write_image(tmp_path / "a.png")
    done = srd("process", str(source), "--out", str(tmp_path / "big"), "--model", "edsr-lite")
    assert done.returncode == 2
    assert "comes in scales 2, 3, 4" in done.stderr
    for scale in ([], ["--scale", "2"]):
        done = srd("process", str(source), "--out", str(tmp_path / "big"), "--model", "edsr-lite", *scale,
                   "--convention", "bogus")
        assert done.returncode == 2
        assert re.search("(unknown model convention 'bogus'|convention must be one of edsr)", done.stderr)
    assert not (tmp_path / "big").exists()


REPO_MODELS = Path(__file__).resolve().parents[1] / "models"


_UNFIT_MODELS = {  # fault: the file, the options that choose it, what the refusal says
    "truncated": ("net.onnx", ["-s", "2", "--convention", "edsr"], "cannot load this model"),
    "true scale x2 said x3": ("net.onnx", ["-s", "3", "--convention", "edsr"], "upscales x2, not x3"),
    "3-channel network, 1-channel convention": ("net.onnx", ["-s", "2", "--convention", "fsrcnn"],
                                                "fails on a 1-channel input, which its convention 'fsrcnn'"),
    "1-channel network, 3-channel convention": ("net.pb", ["-s", "2", "--convention", "edsr"],
                                                "fails on a 3-channel input, which its convention 'edsr'"),
}


@pytest.mark.parametrize(("fault", "runtime"), [
    (fault, runtime) for fault, (name, _, _) in _UNFIT_MODELS.items()
    for runtime in (["opencv", "onnxruntime"] if name.endswith(".onnx") else ["opencv"])])
def test_a_model_that_cannot_do_what_it_is_chosen_for_is_refused_before_any_file(
        zoo: Path, tmp_path: Path, fault: str, runtime: str) -> None:
    """Found only in the workers, such a model failed every input (exit 1, each file "internal error" or "not
    x3"); it is run once on a small input first: exit 4, one line saying what is wrong, nothing written."""
    name, options, said = _UNFIT_MODELS[fault]
    lite = (Path(__file__).resolve().parents[1] / "models" / "edsr-lite_x2.onnx").read_bytes()
    data = {"truncated": lite[: len(lite) // 2]}.get(fault, (zoo / "FSRCNN_x2.pb").read_bytes()
                                                     if name.endswith(".pb") else lite)
    (tmp_path / name).write_bytes(data)
    source = write_image(tmp_path / "a.png")
    done = srd("process", str(source), "--out", str(tmp_path / "big"), "-m", str(tmp_path / name), *options,
               "--runtime", runtime)
    assert done.returncode == 4, done.stderr
    assert done.stderr.startswith("srd: error: ") and said in done.stderr and done.stderr.count("\n") == 1, \
        done.stderr
    assert not (tmp_path / "big").exists()


def test_a_relative_model_path_works_from_any_folder(zoo: Path, tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "ESPCN_x2.pb").write_bytes((zoo / "ESPCN_x2.pb").read_bytes())
    write_image(tmp_path / "a.png", (10, 10))
    done = subprocess.run([*srd_command(), "process", "a.png", "--out", "big", "-m", "models/ESPCN_x2.pb", "-j", "2"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert decoded_size(tmp_path / "big" / "a.png") == (20, 20)


def test_upscaled_pixels_match_the_model_whatever_the_path(zoo: Path, tmp_path: Path) -> None:
    """The pool path gives the same pixels as one job run alone (no mix-up of outputs between workers)."""
    folder = tmp_path / "in"
    for i in range(4):
        write_image(folder / f"{i}.png", (12 + i, 14), seed=i)
    srd("process", str(folder), "--out", str(tmp_path / "par"), *ESPCN, "-j", "2")
    for i in range(4):
        done = srd("process", str(folder / f"{i}.png"), "--out", str(tmp_path / "one"), *ESPCN)
        assert done.returncode == 0
        par = cv2.imread(str(tmp_path / "par" / f"{i}.png"))
        one = cv2.imread(str(tmp_path / "one" / f"{i}.png"))
        assert par.shape == (2 * (12 + i), 28, 3) and np.array_equal(par, one)


def test_without_a_terminal_progress_is_a_line_every_half_minute() -> None:
    """Logs and CI see a run move: one plain progress line per `NON_TTY_EVERY_S`, none before."""
    err, now = io.StringIO(), [0.0]
    reporter = Reporter(4, ReportOptions(), err=err, out=io.StringIO(), clock=lambda: now[0])
    reporter.starting(Path("0.png"))
    now[0] = 10.0
    reporter.result(JobResult(Path("0.png"), True, milliseconds=10_000))
    assert err.getvalue() == ""
    now[0] = NON_TTY_EVERY_S + 1
    reporter.tick()
    assert err.getvalue() == "srd: 1/4  31 s/file  ETA 1:33\n"
    reporter.tick()
    assert err.getvalue().count("\n") == 1


def test_hard_links_under_two_names_each_get_their_output(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    write_image(folder / "a.png", (10, 12))
    os.link(folder / "a.png", folder / "b.png")
    done = srd("process", str(folder), str(folder / "a.png"), "--out", str(tmp_path / "out"), *ESPCN)
    assert done.returncode == 0, done.stderr
    assert "2 processed, 0 failed" in done.stderr
    assert _sizes(tmp_path / "out") == {"a.png": (20, 24), "b.png": (20, 24)}


def _sizes(folder: Path) -> dict[str, tuple[int, int] | None]:
    return {p.name: decoded_size(p) for p in folder.iterdir()}


def test_a_folder_that_cannot_be_read_is_named_and_counted_as_failed(tmp_path: Path) -> None:
    """`srd process -r` over a tree with a sub-folder it may not list (mode 000; srd runs without root's DAC
    override, as a normal user would): the folder is named on stderr with the reason and the run exits 1,
    instead of a clean summary that never mentions the files inside it."""
    import shutil

    if shutil.which("setpriv") is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv to run srd without CAP_DAC_OVERRIDE")
    photos = tmp_path / "photos"
    (photos / "locked").mkdir(parents=True)
    (photos / "ok.png").write_bytes(make_image(Path("ok.png"), (24, 32), 1))
    (photos / "locked" / "a.png").write_bytes(make_image(Path("a.png"), (24, 32), 2))
    (photos / "locked").chmod(0)
    try:
        done = subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", *srd_command(),
                               "process", str(photos), "-r", "--out", str(tmp_path / "big"), "-m", str(ESPCN_X2),
                               "--quiet"], capture_output=True, text=True, timeout=120, check=False)
    finally:
        (photos / "locked").chmod(0o755)
    assert done.returncode == 1, done.stderr
    assert str(photos / "locked") in done.stderr and "can't be read" in done.stderr
    assert (tmp_path / "big" / "ok.png").exists()


# -- an output folder that refuses writes is exit 5, not 1 -------------------------------------------------------


def _refusing_out(kind: str, mount: Path) -> tuple[Path, list[str]]:
    """An output folder on a real tmpfs that refuses writes as `kind` says, and the command prefix to run srd."""
    out = mount / "out"
    out.mkdir()
    if kind == "full":
        filler = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        with contextlib.suppress(OSError):  # until the disk is full
            while True:
                os.write(filler, b"\0" * 4096)
        os.close(filler)
    elif kind == "read-only":
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
    else:  # no permission: srd runs without root's DAC override, as a normal user would
        if shutil.which("setpriv") is None:
            pytest.skip("needs setpriv to run srd without CAP_DAC_OVERRIDE")
        out.chmod(0o555)
        return out, ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", *srd_command()]
    return out, srd_command()


@pytest.mark.parametrize("kind", ["full", "read-only", "no permission"])
def test_outputs_refused_by_the_output_folder_exit_5_even_beside_a_bad_input(kind: str, tmp_path: Path) -> None:
    """A real tmpfs that is full, mounted read-only, or a folder srd may not write: every output is refused,
    and one input is not an image at all. Old srd exited 1 ("some inputs failed"), as if the inputs were at
    fault; the folder is, so it is exit 5, which wins over 1, and the closing error names folder and reason."""
    inputs = [write_image(tmp_path / "in" / name, seed=i) for i, name in enumerate(["a.png", "b.jpg"])]
    (tmp_path / "in" / "junk.png").write_bytes(b"not an image")
    with tmpfs(tmp_path / "small", "256k") as mount:
        out, command = _refusing_out(kind, mount)
        done = subprocess.run([*command, "process", *map(str, inputs), str(tmp_path / "in" / "junk.png"),
                               "--out", str(out), *ESPCN, "--quiet"],
                              capture_output=True, text=True, timeout=120, check=False)
        assert sorted(p.name for p in out.iterdir()) == []
    assert done.returncode == 5, done.stderr
    assert "Traceback" not in done.stderr
    reason = {"full": "No space left on device", "read-only": "Read-only file system",
              "no permission": "Permission denied"}[kind]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("srd: error: 2 output(s) refused") and reason in last and str(out) in last, last
    assert "junk.png: not an image" in done.stderr  # the input's own failure is still named


def test_an_input_that_fails_on_its_own_is_still_exit_1(tmp_path: Path) -> None:
    """The other side of the rule: with a writable output folder, a bad input alone is exit 1, not 5."""
    good = write_image(tmp_path / "in" / "a.png")
    (tmp_path / "in" / "junk.png").write_bytes(b"not an image")
    done = srd("process", str(good), str(tmp_path / "in" / "junk.png"), "--out", str(tmp_path / "big"), *ESPCN,
               timeout=120)
    assert done.returncode == 1, done.stderr
    assert (tmp_path / "big" / "a.png").exists()
