"""Hostile and odd input dropped into a running daemon among good files, each with its expected outcome.

Every test here runs a real `srd run` with the zoo ESPCN ×2 and checks, besides its own cases, that the
good files around them were processed and the daemon is still up.
"""

from __future__ import annotations

import json
import os
import struct
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import big_icc_profile, jpeg_claiming, jpeg_with_split_icc, tiff_from_entries
from daemon_helpers import DaemonProcess, files_under, running, wait_for
from reliability_harness import (
    RssSampler,
    cmyk_jpeg,
    image_bytes,
    make_layout,
    palette_png,
    png_chunk,
    record_figures,
    reference_outputs,
    scaled,
    status_of,
)

from srd.fs.atomic import is_temp_name

# End to end: each test runs a real srd daemon (srd run) on real folders.
pytestmark = pytest.mark.e2e

SIZE = (24, 32)
DOUBLED = (48, 64)


def decode(path: Path) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None, f"{path} does not decode"
    return image


def encoded(suffix: str, pixels: np.ndarray, params: list[int] | None = None) -> bytes:
    ok, data = cv2.imencode(suffix, pixels, params or [])
    assert ok
    return data.tobytes()


def noise(shape: tuple[int, ...], dtype: type = np.uint8, seed: int = 0) -> np.ndarray:
    top = np.iinfo(dtype).max
    return np.random.default_rng(seed).integers(0, top + 1, size=shape, dtype=np.uint64).astype(dtype)


def good_files(inbox: Path, count: int, seed: int) -> set[str]:
    names = set()
    for i in range(count):
        name = f"good{seed}-{i}.png"
        (inbox / name).write_bytes(image_bytes(".png", SIZE, seed * 100 + i))
        names.add(name)
    return names


def test_odd_but_valid_images_and_names_are_processed_faithfully(tmp_path: Path) -> None:
    """CMYK JPEG, 16-bit, 1-bit, RGBA, palette and grey PNGs, grey JPEG, multi-page TIFF (first page),
    animated GIF (first frame, written as PNG), a folder named like an image (entered, not opened), and
    names with spaces, unicode, a newline, a leading dash and 255 bytes: each comes out doubled, with the
    channel layout and depth it should have, under the name it should have."""
    layout = make_layout(tmp_path)
    inbox, outbox = layout.inbox, layout.outbox
    multipage = tmp_path / "pages.tif"
    assert cv2.imwritemulti(str(multipage), [noise((*SIZE, 3), seed=1), noise((10, 12, 3), seed=2)])
    animation = cv2.Animation()
    animation.frames = [noise((*SIZE, 3), seed=3), noise((*SIZE, 3), seed=4)]
    animation.durations = [100, 100]
    gif = tmp_path / "anim.gif"
    assert cv2.imwriteanimation(str(gif), animation)
    long_name = "x" * 251 + ".png"
    assert len(long_name.encode()) == 255
    cases: dict[str, tuple[bytes, tuple[int, ...], type, str]] = {
        # input name: (bytes, expected output shape, dtype, output name)
        "cmyk.jpg": (cmyk_jpeg(4, 3, 1), (48, 64, 3), np.uint8, "cmyk.jpg"),
        "deep.png": (encoded(".png", noise((*SIZE, 3), np.uint16, 5)), (*DOUBLED, 3), np.uint16, "deep.png"),
        "bilevel.png": (encoded(".png", (noise(SIZE, seed=6) > 127).astype(np.uint8) * 255,
                                [cv2.IMWRITE_PNG_BILEVEL, 1]), DOUBLED, np.uint8, "bilevel.png"),
        "alpha.png": (encoded(".png", noise((*SIZE, 4), seed=7)), (*DOUBLED, 4), np.uint8, "alpha.png"),
        "palette.png": (palette_png(SIZE[1], SIZE[0], 8), (*DOUBLED, 3), np.uint8, "palette.png"),
        "grey.png": (encoded(".png", noise(SIZE, seed=9)), DOUBLED, np.uint8, "grey.png"),
        "grey.jpg": (encoded(".jpg", noise(SIZE, seed=10)), DOUBLED, np.uint8, "grey.jpg"),
        "pages.tif": (multipage.read_bytes(), (*DOUBLED, 3), np.uint8, "pages.tif"),
        "anim.gif": (gif.read_bytes(), (*DOUBLED, 3), np.uint8, "anim.png"),
        "with space.png": (image_bytes(".png", SIZE, 11), (*DOUBLED, 3), np.uint8, "with space.png"),
        "ünïcødé 写真.png": (image_bytes(".png", SIZE, 12), (*DOUBLED, 3), np.uint8, "ünïcødé 写真.png"),
        "new\nline.png": (image_bytes(".png", SIZE, 13), (*DOUBLED, 3), np.uint8, "new\nline.png"),
        "-leading-dash.png": (image_bytes(".png", SIZE, 14), (*DOUBLED, 3), np.uint8, "-leading-dash.png"),
        long_name: (image_bytes(".png", SIZE, 15), (*DOUBLED, 3), np.uint8, long_name),
        "folder.jpg/inside.png": (image_bytes(".png", SIZE, 16), (*DOUBLED, 3), np.uint8, "folder.jpg/inside.png"),
        "big-icc.jpg": (jpeg_with_split_icc(noise((*SIZE, 3), seed=17), big_icc_profile(150_000)), (*DOUBLED, 3),
                        np.uint8, "big-icc.jpg"),  # an ICC profile over 64 KB, split across APP2 segments
    }
    (inbox / "folder.jpg").mkdir()
    with running(layout.config) as daemon:
        good = good_files(inbox, 2, seed=1)
        for name, (data, *_rest) in cases.items():
            (inbox / name).write_bytes(data)
        good |= good_files(inbox, 2, seed=2)
        daemon.wait_event("file_processed", count=len(cases) + len(good), timeout=60)
        assert daemon.events("file_failed") == []
        assert daemon.stop() == 0
    for name, (_data, shape, dtype, out_name) in cases.items():
        image = decode(outbox / out_name)
        assert (image.shape, image.dtype) == (shape, dtype), name
    for name in good:
        assert decode(outbox / name).shape == (*DOUBLED, 3)
    assert not (outbox / "folder.jpg").is_file() and files_under(layout.failed) == {}


def test_broken_inputs_go_to_the_failed_folder_with_their_reason(tmp_path: Path) -> None:
    """Truncated JPEG and PNG, a zero-byte file, text renamed .jpg and a header claiming 100000×100000 each
    move to the failed folder with a reason file saying what is wrong (the bomb is refused from its header,
    before any allocation), even under a 255-byte name whose reason file can't simply append a suffix;
    the good files around them are processed and the daemon stays up."""
    layout = make_layout(tmp_path, inbox={"settle_max_backoff_seconds": 1})  # truncated files: a 1 s wait for a writer
    inbox, failed = layout.inbox, layout.failed
    long_broken = "y" * 251 + ".jpg"
    jpeg, png = image_bytes(".jpg", (64, 64), 1), image_bytes(".png", (64, 64), 2)
    cases = {
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated JPEG"),
        "truncated.png": (png[: len(png) // 2], "truncated PNG"),
        "empty.png": (b"", "empty file"),
        "text.jpg": (b"this is not an image, it is a shopping list\n" * 20, "not an image"),
        "bomb.png": (_png_claiming(100_000, 100_000), "100000x100000 = 10000000000 pixels, over the limit"),
        "stray.jpg": (jpeg_claiming(20_000, 20_000, stray_byte=True), "cannot read the image size from the JPEG"),
        "comment.pgm": (b"P5\n#" + b"x" * 4000 + b"\n30000 30000\n255\n", "30000x30000 = 900000000 pixels, over"),
        "twowidths.tif": (tiff_from_entries([(256, 3, 16), (256, 3, 20_000), (257, 3, 16)], b""),
                          "cannot read the image size from the TIFF"),
        long_broken: (jpeg[:300], "truncated JPEG"),
    }
    with running(layout.config) as daemon:
        good = good_files(inbox, 2, seed=3)
        for name, (data, _) in cases.items():
            (inbox / name).write_bytes(data)
        good |= good_files(inbox, 2, seed=4)
        daemon.wait_event("file_failed", count=len(cases), timeout=60)
        daemon.wait_event("file_processed", count=len(good), timeout=30)
        assert daemon.proc.poll() is None
        assert daemon.stop() == 0
    reports = {json.loads(p.read_text())["moved_to"]: json.loads(p.read_text())
               for p in failed.iterdir() if p.name.endswith(".json")}
    for name, (data, reason) in cases.items():
        assert (failed / name).read_bytes() == data, name
        assert not (inbox / name).exists()
        report = reports[str(failed / name)]
        assert reason in report["reason"], (name, report["reason"])
    assert set(files_under(layout.outbox)) == good


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width`×`height` (a decompression bomb's calling card)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + png_chunk(b"IEND", b""))


def _tree(root: Path, skip: set[Path]) -> dict[str, tuple[int, int, int]]:
    """(size, mtime_ns, ctime_ns) of everything under `root` outside the `skip` folders."""
    found = {}
    for path in root.rglob("*"):
        if any(path == s or s in path.parents for s in skip):
            continue
        st = path.lstat()
        found[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    return found


@pytest.mark.parametrize("mode", ["native", "poll"])
def test_links_and_special_files_are_never_followed_or_opened(tmp_path: Path, mode: str) -> None:
    """A symlink to a file outside the inbox is not followed (no output, one clear log line, not one per
    poll; no symlink in an inbox is ever followed); a symlink loop and a FIFO are skipped with a log line
    and don't block the daemon (good files
    after them are processed). Nothing outside the configured folders is read (its atime stays put) or
    written."""
    layout = make_layout(tmp_path / "srd", inbox={"mode": mode, "poll_interval": 0.1})
    inbox = layout.inbox
    outside = tmp_path / "private"
    outside.mkdir()
    secret = outside / "secret.png"
    secret.write_bytes(image_bytes(".png", SIZE, 20))
    old = time.time_ns() - 3 * 86_400 * 10**9
    os.utime(secret, ns=(old, old + 10**9))  # atime before mtime: any read updates it (relatime)
    configured = {layout.inbox, layout.outbox, layout.failed, layout.state}
    for folder in configured:
        folder.mkdir(exist_ok=True)  # so that creating them doesn't count as writing to their parent
    before = _tree(tmp_path, configured)
    with running(layout.config) as daemon:
        (inbox / "escape.png").symlink_to(secret)
        (inbox / "loop-a.png").symlink_to(inbox / "loop-b.png")
        (inbox / "loop-b.png").symlink_to(inbox / "loop-a.png")
        os.mkfifo(inbox / "pipe.png")
        good = good_files(inbox, 3, seed=5)
        daemon.wait_event("file_processed", count=len(good), timeout=30)
        daemon.wait_event("path_not_processed", count=4)
        time.sleep(1.0)  # ten polls: still one line each
        assert daemon.stop() == 0
    reasons = {Path(r["src"]).name: r["reason"] for r in daemon.events("path_not_processed")}
    assert len(daemon.events("path_not_processed")) == 4, daemon.events("path_not_processed")
    assert reasons["escape.png"] == reasons["loop-a.png"] == reasons["loop-b.png"] == "symlink: not followed"
    assert "fifo" in reasons["pipe.png"]
    assert set(files_under(layout.outbox)) == good
    assert files_under(layout.failed) == {}
    assert os.stat(secret).st_atime_ns == old, "the file outside the inbox was read"
    assert _tree(tmp_path, configured) == before, "something outside the configured folders changed"
    secret.read_bytes()
    assert os.stat(secret).st_atime_ns != old, "atime is not tracked here: the read check above proves nothing"


def test_files_that_change_vanish_or_repeat_get_the_right_outcome(tmp_path: Path) -> None:
    """A file rewritten while it is being processed ends with the new version's output; a file deleted
    before it settles leaves no trace (no output, no failure); the same content under two names is
    processed once (the second is a duplicate); an image replaced by different content under the same
    name is processed again and its output replaced."""
    layout = make_layout(tmp_path, inbox={"settle_seconds": 0.3})
    inbox, outbox = layout.inbox, layout.outbox
    big_old, big_new = image_bytes(".png", (900, 1200), 30), image_bytes(".png", (900, 1200), 31)
    first, second = image_bytes(".png", SIZE, 32), image_bytes(".png", SIZE, 33)
    twin = image_bytes(".png", SIZE, 34)
    reference = reference_outputs(layout, {"big_new.png": big_new, "second.png": second})
    with running(layout.config) as daemon:
        (inbox / "moving.png").write_bytes(big_old)
        wait_for(lambda: (s := status_of(layout)) is not None and s["pool"]["running"] == 1, 20, "the job to start")
        (inbox / "moving.png").write_bytes(big_new)  # rewritten while the worker runs
        (inbox / "gone.png").write_bytes(first)
        time.sleep(0.05)
        (inbox / "gone.png").unlink()  # deleted before it settles
        (inbox / "twin-a.png").write_bytes(twin)
        (inbox / "replaced.png").write_bytes(first)
        wait_for(lambda: (outbox / "replaced.png").exists() and (outbox / "twin-a.png").exists(), 30, "outputs")
        (inbox / "twin-b.png").write_bytes(twin)
        daemon.wait_event("duplicate")
        time.sleep(0.05)
        (inbox / "replaced.png").write_bytes(second)
        wait_for(lambda: (outbox / "replaced.png").read_bytes() == reference["second.png"], 30,
                 "the replaced image's new output\n" + daemon.log_tail())
        wait_for(lambda: (outbox / "moving.png").exists()
                 and (outbox / "moving.png").read_bytes() == reference["big_new.png"], 60,
                 "the rewritten image's new output\n" + daemon.log_tail())
        assert daemon.stop() == 0
    assert set(files_under(outbox)) == {"moving.png", "twin-a.png", "replaced.png"}
    assert files_under(layout.failed) == {}
    assert [Path(e["src"]).name for e in daemon.events("duplicate")] == ["twin-b.png"]
    processed = [Path(e["src"]).name for e in daemon.events("file_processed")]
    assert sorted(processed).count("replaced.png") == 2 and "gone.png" not in processed
    assert [p for p in tmp_path.rglob("*") if is_temp_name(p.name)] == []


def test_a_huge_but_legal_image_is_processed_in_tiles_within_bounded_memory(tmp_path: Path) -> None:
    """A large image under the pixel limit is processed tile by tile: the output is complete and the
    largest process stays far below what whole-image inference would need."""
    height, width = scaled(1200, 3000), scaled(1600, 4000)
    layout = make_layout(tmp_path, engine={"tile": 128, "tile_pad": 8})
    data = image_bytes(".jpg", (height, width), 40)
    daemon = DaemonProcess(layout.config)
    sampler = RssSampler(daemon.pid)
    try:
        daemon.wait_ready()
        (layout.inbox / "huge.jpg").write_bytes(data)
        processed = daemon.wait_event("file_processed", timeout=scaled(120, 600))[0]
        assert daemon.stop() == 0
    finally:
        sampler.stop()
        if daemon.proc.poll() is None:
            daemon.proc.kill()
    assert decode(layout.outbox / "huge.jpg").shape == (2 * height, 2 * width, 3)
    # The decoded input and output alone take 3 + 12 bytes per input pixel; allow 40 on top for the rest.
    bound_kib = (height * width * 55) // 1024 + 400 * 1024
    assert sampler.peak_process_kib < bound_kib, (sampler.peak_process_kib, bound_kib)
    record_figures("huge_image", width=width, height=height, seconds=round(processed["ms"] / 1000, 1),
                   peak_process_rss_mib=round(sampler.peak_process_kib / 1024, 1),
                   bound_mib=round(bound_kib / 1024, 1))
