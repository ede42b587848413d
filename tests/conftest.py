"""Shared fixtures: paths to the real models and benchmark images in ../shared, and image builders."""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import structlog

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
ZOO = SHARED / "models" / "opencv-zoo"
BENCH = SHARED / "datasets" / "bench"
TRAIN_IMAGES = ("T91/t1.png", "T91/t2.png", "BSDS200/35091.jpg")  # the train_dir fixture's
# The one reason every training test gives when it is skipped (README: the default test set-up is light).
TRAIN_EXTRA = ("needs the 'train' extra: pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu "
               "&& pip install -e '.[train]'")


def require_train_extra() -> None:
    """Skip the calling test (or module) unless torch and onnx, the 'train' extra, are importable."""
    for module in ("torch", "onnx"):
        pytest.importorskip(module, reason=TRAIN_EXTRA)


@pytest.fixture(scope="session")
def zoo() -> Path:
    if not ZOO.is_dir():
        pytest.fail(f"the real OpenCV-zoo models are required at {ZOO}")
    return ZOO


@pytest.fixture(scope="session")
def bench() -> Path:
    if not BENCH.is_dir():
        pytest.fail(f"the benchmark images are required at {BENCH}")
    return BENCH


@pytest.fixture(scope="session")
def train_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three of the training images: enough for a training run of a few iterations."""
    root = tmp_path_factory.mktemp("train")
    for rel in TRAIN_IMAGES:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SHARED / "datasets" / "train" / rel, root / rel)
    return root


@pytest.fixture(scope="session")
def photo(bench: Path) -> np.ndarray:
    """A real natural image (Set14 'baboon'-class texture matters for seams), BGR uint8."""
    return cv2.imread(str(bench / "Set5" / "butterfly.png"), cv2.IMREAD_COLOR)


def exif_with_orientation(orientation: int, *, big_endian: bool = False) -> bytes:
    """A minimal TIFF-structured EXIF block holding IFD0 Orientation and a Make tag."""
    endian = ">" if big_endian else "<"
    make = b"srd-test\x00"
    entries = [
        struct.pack(endian + "HHI", 0x010F, 2, len(make)) + struct.pack(endian + "I", 8 + 2 + 2 * 12 + 4),
        struct.pack(endian + "HHIHH", 0x0112, 3, 1, orientation, 0),
    ]
    ifd = struct.pack(endian + "H", len(entries)) + b"".join(entries) + struct.pack(endian + "I", 0)
    header = (b"MM" if big_endian else b"II") + struct.pack(endian + "HI", 42, 8)
    return header + ifd + make


def icc_profile(description: str = "srd test RGB") -> bytes:
    """A small but valid ICC v2 RGB display profile (matrix/TRC), so PNG and JPEG encoders accept it."""

    def s15(value: float) -> bytes:
        return struct.pack(">i", round(value * 65536))

    def xyz(x: float, y: float, z: float) -> bytes:
        return b"XYZ \x00\x00\x00\x00" + s15(x) + s15(y) + s15(z)

    text = description.encode("ascii") + b"\x00"
    desc = b"desc\x00\x00\x00\x00" + struct.pack(">I", len(text)) + text + b"\x00" * (4 + 4 + 2 + 1 + 67)
    curve = b"curv\x00\x00\x00\x00" + struct.pack(">IH", 1, 0x0233) + b"\x00\x00"  # gamma 2.2
    tags = [
        (b"desc", desc),
        (b"wtpt", xyz(0.9642, 1.0, 0.8249)),
        (b"rXYZ", xyz(0.4361, 0.2225, 0.0139)),
        (b"gXYZ", xyz(0.3851, 0.7169, 0.0971)),
        (b"bXYZ", xyz(0.1431, 0.0606, 0.7141)),
        (b"rTRC", curve),
        (b"gTRC", curve),
        (b"bTRC", curve),
        (b"cprt", b"text\x00\x00\x00\x00" + b"public domain\x00"),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for signature, body in tags:
        while (offset + len(data)) % 4:
            data += b"\x00"
        table += signature + struct.pack(">II", offset + len(data), len(body))
        data += body
    body = struct.pack(">I", len(tags)) + table + data
    size = 128 + len(body)
    header = (
        struct.pack(">I", size) + b"none" + struct.pack(">I", 0x02100000) + b"mntrRGB XYZ "
        + struct.pack(">6H", 2026, 1, 1, 0, 0, 0) + b"acspAPPL" + struct.pack(">I", 0) + b"none" + b"none"
        + b"\x00" * 8 + struct.pack(">I", 0) + s15(0.9642) + s15(1.0) + s15(0.8249) + b"srd " + b"\x00" * 44
    )
    assert len(header) == 128
    return header + body


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width`×`height` (a decompression bomb's calling card)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def jpeg_claiming(width: int, height: int, *, stray_byte: bool = False) -> bytes:
    """A real 16×16 JPEG whose frame header claims `width`×`height`; optionally one junk byte before it.

    libjpeg skips the junk byte with a warning and decodes whatever the frame header says.
    """
    data = cv2.imencode(".jpg", np.full((16, 16, 3), 128, np.uint8))[1].tobytes()
    sof = data.find(b"\xff\xc0")
    data = data[: sof + 5] + struct.pack(">HH", height, width) + data[sof + 9 :]
    return data[:sof] + b"\x00" + data[sof:] if stray_byte else data


def progressive_jpeg_with_end_marker_comment(pixels: np.ndarray) -> tuple[bytes, int]:
    """A progressive JPEG with a comment holding the bytes FF D9 before its third scan, and where that
    comment ends: a writer pausing there leaves a file that ends in FF D9 but stops between scans."""
    data = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    third_scan = data.find(b"\xff\xda", data.find(b"\xff\xda", data.find(b"\xff\xda") + 2) + 2)
    assert third_scan > 0, "the encoder wrote fewer than three scans"
    comment = b"\xff\xfe" + struct.pack(">H", 6) + b"ab\xff\xd9"
    return data[:third_scan] + comment + data[third_scan:], third_scan + len(comment)


def jpeg_with_exif_thumbnail(pixels: np.ndarray) -> tuple[bytes, int]:
    """A camera's JPEG: EXIF in APP1 right after SOI, its IFD1 pointing at a whole small JPEG thumbnail at
    the end of the segment; and where that APP1 ends (the file cut there ends in the thumbnail's FF D9)."""
    thumbnail = cv2.imencode(".jpg", cv2.resize(pixels, (16, 12), interpolation=cv2.INTER_AREA))[1].tobytes()
    ifd0 = struct.pack("<HHHIHH", 1, 0x0112, 3, 1, 1, 0) + struct.pack("<I", 8 + 18)  # Orientation, then IFD1
    ifd1 = (struct.pack("<H", 2) + struct.pack("<HHII", 0x0201, 4, 1, 8 + 18 + 30)
            + struct.pack("<HHII", 0x0202, 4, 1, len(thumbnail)) + struct.pack("<I", 0))
    exif = b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + ifd0 + ifd1 + thumbnail
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + len(exif)) + exif
    data = cv2.imencode(".jpg", pixels)[1].tobytes()
    return data[:2] + app1 + data[2:], 2 + len(app1)


def jpeg_with_split_icc(pixels: np.ndarray, icc: bytes) -> bytes:
    """A JPEG carrying `icc` in numbered APP2 chunks, as ICC.1 annex B says (written by hand)."""
    base = cv2.imencode(".jpg", pixels)[1].tobytes()
    size = 65519
    chunks = [icc[i : i + size] for i in range(0, len(icc), size)]
    segments = b"".join(b"\xff\xe2" + struct.pack(">H", 16 + len(chunk)) + b"ICC_PROFILE\x00" + bytes([n, len(chunks)])
                        + chunk for n, chunk in enumerate(chunks, 1))
    return base[:20] + segments + base[20:]


def big_icc_profile(size: int) -> bytes:
    icc = icc_profile("srd big profile")
    padded = icc + b"\x00" * (size - len(icc))
    return struct.pack(">I", size) + padded[4:]


def tiff_from_entries(entries: list[tuple[int, int, int]], pixels: bytes) -> bytes:
    """A little-endian TIFF with one IFD of (tag, SHORT 3 / LONG 4, value) entries, written as given
    (duplicates and lies included), followed by `pixels`."""
    ifd = struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        ifd += struct.pack("<HHI", tag, kind, 1) + struct.pack("<HH" if kind == 3 else "<I", *(
            (value, 0) if kind == 3 else (value,)))
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x00" * 4 + pixels


@pytest.fixture(autouse=True)
def _fresh_logging() -> None:
    """Each test starts with structlog's defaults: CLI tests configure it process-wide."""
    structlog.reset_defaults()
