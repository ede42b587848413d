"""The `srd` command line, driven as a user would: real files, real zoo models, real exit codes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import SHARED, exif_with_orientation, icc_profile, png_claiming, require_train_extra
from daemon_helpers import descendants_of

from srd.cli.main import main
from srd.errors import ExitCode
from srd.imaging.exif import read_orientation
from srd.imaging.imageio import decode
from srd.quality.bicubic import bicubic_up, make_lr
from srd.quality.metrics import crop_to_multiple, psnr_y


def run_cli(*args: str) -> int:
    with pytest.raises(SystemExit) as exited:
        main([str(a) for a in args])
    return int(exited.value.code)


@pytest.mark.parametrize(
    "args",
    [[], ["process"], ["models"], ["models", "list"], ["models", "verify"], ["models", "fetch"], ["config"],
     ["config", "check"], ["bench"], ["bench", "quality"], ["bench", "speed"]],
)
def test_every_subcommand_has_help(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(*args, "--help") == 0
    assert "usage: srd" in capsys.readouterr().out


@pytest.mark.parametrize("args", [["train"], ["train", "fit"], ["train", "cache"], ["train", "export"]])
def test_every_train_subcommand_has_help(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    require_train_extra()
    assert run_cli(*args, "--help") == 0
    assert f"usage: srd {' '.join(args)}" in capsys.readouterr().out


def test_unknown_options_are_still_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("models", "list", "--bogus") == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("--version") == 0
    assert capsys.readouterr().out.startswith("srd 0.")


@pytest.mark.e2e
@pytest.mark.parametrize("set_name", ["Set5", "Set14"])
def test_process_gives_the_psnr_of_opencv_upsample(
    set_name: str, bench: Path, zoo: Path, tmp_path: Path
) -> None:
    """srd process with the zoo FSRCNN x3 scores what DnnSuperResImpl.upsample() scores, within 0.05 dB."""
    model = zoo / "FSRCNN_x3.pb"
    impl = cv2.dnn_superres.DnnSuperResImpl_create()
    impl.readModel(str(model))
    impl.setModel("fsrcnn", 3)
    inbox, out = tmp_path / "lr", tmp_path / "out"
    inbox.mkdir()
    truths, reference = {}, []
    for path in sorted((bench / set_name).glob("*.png")):
        hr = crop_to_multiple(cv2.imread(str(path), cv2.IMREAD_COLOR), 3)
        lr = make_lr(hr, 3)
        cv2.imwrite(str(inbox / path.name), lr)
        truths[path.name] = hr
        reference.append(psnr_y(impl.upsample(lr), hr, 3))
    assert run_cli("process", inbox, "--out", out, "--model", model, "--scale", 3) == 0
    ours = [psnr_y(cv2.imread(str(out / name), cv2.IMREAD_COLOR), hr, 3) for name, hr in truths.items()]
    assert len(ours) == len(reference) >= 5
    assert abs(np.mean(ours) - np.mean(reference)) <= 0.05


def test_process_runs_the_base_tier_by_name(bench: Path, tmp_path: Path) -> None:
    """`--model edsr-base --scale 3` finds the bundled base model and beats bicubic by a wide margin."""
    hr = crop_to_multiple(cv2.imread(str(bench / "Set5" / "butterfly.png"), cv2.IMREAD_COLOR), 3)
    lr = make_lr(hr, 3)
    source = tmp_path / "butterfly.png"
    cv2.imwrite(str(source), lr)
    assert run_cli("process", source, "--out", tmp_path / "out", "--model", "edsr-base", "--scale", 3) == 0
    sr = cv2.imread(str(tmp_path / "out" / "butterfly.png"), cv2.IMREAD_COLOR)
    assert sr.shape == hr.shape
    assert psnr_y(sr, hr, 3) > psnr_y(bicubic_up(lr, 3), hr, 3) + 2


def test_rotated_jpeg_comes_out_upright_with_its_icc_profile(zoo: Path, tmp_path: Path) -> None:
    icc = icc_profile()
    stored = np.zeros((60, 90, 3), np.uint8)
    stored[:15, :, 2] = 255  # red band along the stored top = the right side once upright
    ok, buf = cv2.imencodeWithMetadata(
        ".jpg", stored, [cv2.IMAGE_METADATA_EXIF, cv2.IMAGE_METADATA_ICCP],
        [np.frombuffer(exif_with_orientation(6), np.uint8), np.frombuffer(icc, np.uint8)],
    )
    assert ok
    source = tmp_path / "camera.jpg"
    source.write_bytes(buf.tobytes())
    assert run_cli("process", source, "--out", tmp_path / "out", "--model", zoo / "ESPCN_x2.pb", "--scale", 2) == 0
    result = decode((tmp_path / "out" / "camera.jpg").read_bytes(), max_pixels=10**8)
    assert result.pixels.shape == (180, 120, 3)  # upright: portrait, doubled
    assert result.pixels[:, -20:, 2].mean() > 200 and result.pixels[:, :60, 2].mean() < 40
    assert read_orientation(result.metadata.exif) == 1
    assert result.metadata.icc == icc


def test_alpha_depth_and_grey_survive_processing(zoo: Path, photo: np.ndarray, tmp_path: Path) -> None:
    inbox = tmp_path / "in"
    inbox.mkdir()
    small = photo[:64, :80]
    alpha = np.zeros(small.shape[:2], np.uint8)
    cv2.circle(alpha, (40, 32), 20, 255, -1)
    cv2.imwrite(str(inbox / "rgba.png"), np.dstack([small, alpha]))
    cv2.imwrite(str(inbox / "deep.png"), small.astype(np.uint16) * 257)
    cv2.imwrite(str(inbox / "grey.png"), cv2.cvtColor(small, cv2.COLOR_BGR2GRAY))
    assert run_cli("process", inbox, "--out", tmp_path / "out", "-m", zoo / "FSRCNN_x2.pb", "-s", 2) == 0

    def read(name: str) -> np.ndarray:
        return cv2.imread(str(tmp_path / "out" / name), cv2.IMREAD_UNCHANGED)

    rgba = read("rgba.png")
    assert rgba.shape == (128, 160, 4)
    assert rgba[64, 80, 3] == 255 and rgba[2, 2, 3] == 0  # the disc stays opaque, corners transparent
    assert read("deep.png").dtype == np.uint16
    assert read("grey.png").ndim == 2


def test_bad_files_fail_one_line_each_and_the_rest_is_processed(
    zoo: Path, photo: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inbox = tmp_path / "in"
    inbox.mkdir()
    cv2.imwrite(str(inbox / "good1.png"), photo[:50, :50])
    cv2.imwrite(str(inbox / "good2.jpg"), photo[50:100, :50])
    jpeg = cv2.imencode(".jpg", photo)[1].tobytes()
    (inbox / "corrupt.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (inbox / "notes.jpg").write_text("not an image at all\n")
    (inbox / "empty.png").write_bytes(b"")
    (inbox / "bomb.png").write_bytes(png_claiming(100_000, 100_000))
    capsys.readouterr()
    assert run_cli("process", inbox, "--out", tmp_path / "out", "-m", zoo / "ESPCN_x2.pb", "-s", 2) == 1
    err = capsys.readouterr().err.splitlines()
    failures = [line for line in err if line.startswith("srd: failed:")]
    assert len(failures) == 4
    for name, reason in [("corrupt.jpg", "truncated"), ("notes.jpg", "not an image"), ("empty.png", "empty"),
                         ("bomb.png", "over the limit")]:
        assert any(name in line and reason in line for line in failures), name
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good1.png", "good2.jpg"]


def test_format_option_changes_only_the_extension(zoo: Path, photo: np.ndarray, tmp_path: Path) -> None:
    source = tmp_path / "pic.png"
    cv2.imwrite(str(source), photo[:40, :40])
    assert run_cli("process", source, "-o", tmp_path / "o", "-m", zoo / "ESPCN_x2.pb", "-s", 2, "-f", "webp") == 0
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["pic.webp"]
    assert decode((tmp_path / "o" / "pic.webp").read_bytes(), max_pixels=10**6).format == "webp"


@pytest.mark.e2e
def test_parallel_jobs_process_every_file(zoo: Path, photo: np.ndarray, tmp_path: Path) -> None:
    inbox = tmp_path / "in"
    (inbox / "sub").mkdir(parents=True)
    for i in range(4):
        cv2.imwrite(str(inbox / f"{i}.png"), photo[i * 20 : i * 20 + 30, :40])
    cv2.imwrite(str(inbox / "sub" / "deep.png"), photo[:30, :30])
    assert run_cli("process", inbox, "-o", tmp_path / "o", "-m", zoo / "ESPCN_x2.pb", "-s", 2, "-j", 2, "-r") == 0
    outputs = sorted(str(p.relative_to(tmp_path / "o")) for p in (tmp_path / "o").rglob("*.png"))
    assert outputs == ["0.png", "1.png", "2.png", "3.png", "sub/deep.png"]


@pytest.mark.e2e
def test_huge_jpeg_is_upscaled_within_bounded_memory(zoo: Path, tmp_path: Path) -> None:
    """A 4000x3000 JPEG x2 with ESPCN: every process's peak RSS stays under 1.5 GB (untiled needs ~10 GB).

    The job runs in a pool worker, so the peaks (VmHWM) of the command and all its descendants are
    polled while it runs; a worker lives until the batch ends, so its peak is seen after the job.
    """
    base = cv2.imread(str(SHARED / "datasets/train/SunHays80/abbey_sun_asztnlqhlrvirneh.jpg"), cv2.IMREAD_COLOR)
    big = cv2.resize(base, (4000, 3000), interpolation=cv2.INTER_CUBIC)
    source = tmp_path / "big.jpg"
    cv2.imwrite(str(source), big, [cv2.IMWRITE_JPEG_QUALITY, 90])
    del base, big
    proc = subprocess.Popen(
        [sys.executable, "-c", "from srd.cli.main import main; main()", "process", str(source),
         "-o", str(tmp_path / "o"),
         "-m", str(zoo / "ESPCN_x2.pb"), "-s", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    peaks: dict[int, int] = {}
    while proc.poll() is None:
        for pid in [proc.pid, *descendants_of(proc.pid)]:
            peaks[pid] = max(peaks.get(pid, 0), _peak_rss_kb(pid))
        time.sleep(0.05)
    assert proc.returncode == 0, proc.stderr.read()
    assert len(peaks) >= 2  # the command and at least its worker were seen
    peak_mb = max(peaks.values()) / 1024
    print(f"peak RSS {peak_mb:.0f} MB")
    assert peak_mb < 1536
    assert cv2.imread(str(tmp_path / "o" / "big.jpg")).shape == (6000, 8000, 3)


def _peak_rss_kb(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(found.group(1)) if found else 0


def test_config_check_reports_errors_with_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("workers: 0\nprofiles: {p: {stages: [{upscale: {model: nothing-like-this, scale: 2}}]}}\n")
    assert run_cli("config", "check", bad) == 2
    err = capsys.readouterr().err
    assert "at 'workers': must be at least 1" in err
    assert "at 'profiles.p.stages[0].upscale.model': model not found: nothing-like-this (looked in" in err


def test_models_list_and_verify_see_zoo_files_in_a_model_dir(
    zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "ESPCN_x3.pb").write_bytes((zoo / "ESPCN_x3.pb").read_bytes())
    (models / "FSRCNN_x2.pb").write_bytes(b"tampered")
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({"model_dirs": [str(models)]}))
    assert run_cli("models", "list", "-c", config) == 0
    listing = capsys.readouterr().out
    assert any("ESPCN" in line and "verified" in line for line in listing.splitlines())
    assert run_cli("models", "verify", "-c", config) == ExitCode.MODEL
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("MISMATCH") and "FSRCNN_x2.pb" in line for line in lines)
    assert any(line.startswith("verified") and "ESPCN_x3.pb" in line for line in lines)


@pytest.mark.e2e
def test_a_reader_that_goes_away_early_gets_no_traceback(tmp_path: Path) -> None:
    """`srd models list | head -1`: the pipe closes before srd writes; that is not srd's error."""
    from daemon_helpers import srd_command

    read, write = os.pipe()
    os.close(read)  # the reader is gone before srd writes a byte
    done = subprocess.run([*srd_command(), "models", "list"], stdout=write, stderr=subprocess.PIPE, text=True,
                          timeout=60, check=False)
    os.close(write)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 0
