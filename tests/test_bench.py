"""`srd bench quality` and `srd bench speed`, run as a reader of BENCHMARKS.md would run them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from srd.cli.main import main

# End to end: each test runs 'srd bench' on the benchmark sets.
pytestmark = pytest.mark.e2e


def run_cli(capsys: pytest.CaptureFixture[str], *args: object) -> str:
    with pytest.raises(SystemExit) as exited:
        main([str(a) for a in args])
    assert exited.value.code == 0
    return capsys.readouterr().out


def table(out: str) -> list[list[str]]:
    """The data rows of the markdown table in ``out``, as lists of cell texts."""
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines() if line.startswith("|")]
    return [row for row in rows[1:] if not set(row[0]) <= {"-"}]


def test_quality_reproduces_the_published_bicubic_and_zoo_figures(
    bench: Path, zoo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Set5 ×2: bicubic 33.68 dB and the zoo ESPCN 34.76 dB (BENCHMARKS.md), and edsr-lite above both."""
    out = run_cli(capsys, "bench", "quality", "--set", bench / "Set5", "--scale", 2,
                  "-m", zoo / "ESPCN_x2.pb", "-m", "edsr-lite")
    psnr = {row[0]: float(row[1]) for row in table(out)}
    assert psnr["bicubic (MATLAB)"] == pytest.approx(33.68, abs=0.01)
    assert psnr["ESPCN_x2 x2"] == pytest.approx(34.76, abs=0.01)
    assert psnr["edsr-lite x2"] > psnr["ESPCN_x2 x2"] + 2


def test_quality_per_image_lists_every_image_and_averages_to_the_mean(
    bench: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--per-image adds one row per image (bicubic and each model); their mean is the summary's figure."""
    out = run_cli(capsys, "bench", "quality", "--set", bench / "Set5", "--scale", 4, "-m", "edsr-lite", "--per-image")
    summary, per_image = out.split("PSNR-Y (dB) per image")
    means = {row[0]: float(row[1]) for row in table(summary)}
    rows = table(per_image)
    assert [row[0] for row in rows] == ["baby", "bird", "butterfly", "head", "woman"]
    header = [c.strip() for c in per_image.strip().splitlines()[0].strip("|").split("|")]
    assert header == ["image", "bicubic (MATLAB)", "edsr-lite x4"]
    for column, method in enumerate(header[1:], start=1):
        assert sum(float(row[column]) for row in rows) / len(rows) == pytest.approx(means[method], abs=0.01)
    assert all(float(row[2]) > float(row[1]) for row in rows)


def test_speed_compares_models_over_alternating_rounds(zoo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every model gets every tile size in every round; times are relative to the first model's."""
    out = run_cli(capsys, "bench", "speed", "-m", "edsr-lite", "-m", zoo / "ESPCN_x2.pb", "--scale", 2,
                  "--tiles", "0,32", "--size", "48x64", "--repeats", 1, "--rounds", 2)
    rows = {(row[0], row[1], row[3]): row[4:] for row in table(out)}
    assert set(rows) == {("edsr-lite x2", "default: onnxruntime", tile) for tile in ("untiled", "32")} | {
        ("ESPCN_x2 x2", "default: opencv", tile) for tile in ("untiled", "32")} | {
        ("ESPCN_x2 x2", "upsample()", "untiled")}
    for (model, runtime, tile), (time_us, gmacs, _, rss_mb, ratio) in rows.items():
        median, low, high = (float(v) for v in re.fullmatch(r"(\S+) \((\S+)–(\S+)\)", time_us).groups())
        assert 0 < low <= median <= high and float(rss_mb) > 20 and float(gmacs) > 0
        if model == "edsr-lite x2":
            assert ratio == "1.00"
        elif runtime != "upsample()":
            first = float(rows[("edsr-lite x2", "default: onnxruntime", tile)][0].split()[0])
            exact = median / first  # from times printed to 0.01, so allow for their rounding and the ratio's
            assert abs(float(ratio) - exact) <= 0.005 + exact * (0.005 / median + 0.005 / first)
        else:
            assert ratio == "–"


def test_quality_on_jpeg_degraded_inputs_with_denoise_and_ensemble_rows(
    bench: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--degrade jpeg:Q` compresses the LR inputs (scored against the clean HR, so every method loses against
    the clean protocol, more at a lower quality); `--denoise` and `--ensemble` add their rows in the same run."""
    figures = {}
    for quality in (50, 90):
        out = run_cli(capsys, "bench", "quality", "--set", bench / "Set5", "--scale", 2, "-m", "edsr-lite",
                      "--degrade", f"jpeg:{quality}", "--denoise", 5, "--ensemble", 2)
        assert f"LR inputs as JPEG q{quality} 4:2:0" in out
        figures[quality] = {row[0]: float(row[1]) for row in table(out)}
    assert set(figures[50]) == {"bicubic (MATLAB)", "edsr-lite x2", "edsr-lite x2, ensemble 2",
                                "denoise 5 + edsr-lite x2"}
    assert figures[50]["bicubic (MATLAB)"] < figures[90]["bicubic (MATLAB)"] < 33.68
    assert figures[50]["edsr-lite x2"] < figures[90]["edsr-lite x2"] < 37.45
    with pytest.raises(SystemExit):
        main(["bench", "quality", "--set", str(bench / "Set5"), "--scale", "2", "--degrade", "jpeg:200"])
    assert "use jpeg:Q" in capsys.readouterr().err


def test_speed_sets_runtimes_and_threads_side_by_side_against_the_cpu_peak(capsys: pytest.CaptureFixture[str]) -> None:
    """One run: both OpenCV engines and onnxruntime at 1 and 2 threads; GMAC/s from the model's own MAC count
    (edsr-lite x2: 8 blocks of 32 channels, an ESPCN tail) and its fraction of the matmul peak."""
    out = run_cli(capsys, "bench", "speed", "-m", "edsr-lite", "-s", 2, "--runtimes",
                  "opencv-classic,opencv-new,onnxruntime", "--threads", "1,2", "--tiles", 32, "--size", "40x48",
                  "--repeats", 1, "--json")
    rows = json.loads(out)
    assert {(row["runtime"], row["threads"]) for row in rows} == {
        (runtime, threads) for runtime in ("opencv-classic", "opencv-new", "onnxruntime") for threads in (1, 2)}
    head, body, tail = 3 * 32 * 9, (2 * 8 + 1) * 32 * 32 * 9, 32 * 3 * 2**2 * 9
    for row in rows:
        assert row["macs_per_lr_pixel"] == head + body + tail
        assert row["gmacs"] == pytest.approx(row["macs_per_lr_pixel"] / row["median_us_per_lr_pixel"] / 1e3)
        assert row["matmul_peak_gmacs"] > 1 and 0 < row["peak_fraction"] < 2
        assert row["peak_fraction"] == pytest.approx(row["gmacs"] / row["matmul_peak_gmacs"])
        assert row["peak_rss_mb"] > 20
