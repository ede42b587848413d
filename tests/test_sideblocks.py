"""Nothing a source holds goes missing without a word: side blocks carried into an output of their own format,
and named as left out of every other (`srd.imaging.sideblocks`); frames, pictures and bit depth likewise."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from daemon_helpers import animation, write_config
from PIL import Image

from srd.config import load_config
from srd.engine.pipeline import StageContext
from srd.executors.job import Job
from srd.executors.render import render
from srd.imaging.imageextent import frame_count
from srd.imaging.imageio import decode

PIXELS = np.random.default_rng(5).integers(0, 256, (16, 24, 3), dtype=np.uint8)
IPTC = b"Photoshop 3.0\x008BIM\x04\x04\x00\x00\x00\x00\x00\x16\x1c\x02x\x00\x12My holiday caption"
COMMENT = b"shot on film, scanned 2001"
EXTENDED_XMP = b"http://ns.adobe.com/xmp/extension/\x00" + b"0" * 32 + b"\x00\x00\x00\x10\x00\x00\x00\x00" + b"<x/>" * 4


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload


def _jpeg_with(*segments: bytes) -> bytes:
    plain = cv2.imencode(".jpg", PIXELS)[1].tobytes()
    return plain[:2] + b"".join(segments) + plain[2:]


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_with(*chunks: bytes) -> bytes:
    plain = cv2.imencode(".png", PIXELS)[1].tobytes()
    return plain[:-12] + b"".join(chunks) + plain[-12:]


def _render(tmp_path: Path, name: str, data: bytes, fmt: str) -> tuple[bytes, tuple[str, ...]]:
    """The output bytes and the losses of one job on `data`, with the real zoo ESPCN ×2."""
    config = load_config(write_config(tmp_path, [], name=f"{name}.yaml"))
    source = tmp_path / name
    source.write_bytes(data)
    job = Job(source=source, out_dir=tmp_path, profile=config.profiles["test"], max_input_pixels=10**6, format=fmt)
    rendered = render(job, data, StageContext(config.worker_engine(), config.model_dirs))
    return rendered.data, rendered.losses


def test_a_jpeg_keeps_its_iptc_and_comment_in_a_jpeg_and_says_what_else_it_left_out(tmp_path: Path) -> None:
    source = _jpeg_with(_segment(0xED, IPTC), _segment(0xFE, COMMENT), _segment(0xE1, EXTENDED_XMP),
                        _segment(0xE1, b"FLIR\x00\x01thermal"))
    data, losses = _render(tmp_path, "a.jpg", source, "jpeg")
    assert _segment(0xED, IPTC) in data and _segment(0xFE, COMMENT) in data
    assert losses == ("metadata dropped: extended XMP (JPEG APP1) (no output carries it)",
                      "metadata dropped: 'FLIR' data (JPEG APP1) (no output carries it)")
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape == (32, 48, 3)
    _, as_png = _render(tmp_path, "b.jpg", source, "png")
    assert as_png[:2] == ("metadata dropped: IPTC and Photoshop data (JPEG APP13) (only a JPEG output holds it)",
                          "metadata dropped: a JPEG comment (only a JPEG output holds it)")


def test_a_png_keeps_its_text_in_a_png_and_says_so_elsewhere(tmp_path: Path) -> None:
    source = _png_with(_png_chunk(b"tEXt", b"Description\x00Grandma at the lake, 1962"),
                       _png_chunk(b"prVt", b"a private chunk"))
    data, losses = _render(tmp_path, "a.png", source, "png")
    assert Image.open(io.BytesIO(data)).text == {"Description": "Grandma at the lake, 1962"}
    assert losses == ("metadata dropped: a PNG prVt chunk (no output carries it)",)
    _, as_jpeg = _render(tmp_path, "b.png", source, "jpeg")
    assert as_jpeg[0] == "metadata dropped: PNG text 'Description' (only a PNG output holds it)"


def test_what_holds_only_the_picture_and_the_metadata_srd_carries_has_nothing_to_say(tmp_path: Path) -> None:
    """A camera-like JPEG (JFIF, EXIF, ICC, XMP) and a PNG with rendering hints (sRGB, gamma): no loss, no note."""
    picture = Image.fromarray(PIXELS[:, :, ::-1])
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", exif=Image.Exif(), icc_profile=_srgb_profile(), xmp=b"<x:xmpmeta/>")
    assert _render(tmp_path, "a.jpg", buffer.getvalue(), "jpeg")[1] == ()
    hints = _png_with(_png_chunk(b"sRGB", b"\x00"), _png_chunk(b"gAMA", (45455).to_bytes(4, "big")))
    assert _render(tmp_path, "b.png", hints, "png")[1] == ()


def _srgb_profile() -> bytes:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def test_a_multi_picture_jpeg_counts_its_pictures_not_a_camera_preview_and_has_no_bogus_profile(
        tmp_path: Path) -> None:
    frames = [Image.fromarray(PIXELS), Image.fromarray(PIXELS[::-1])]
    buffer = io.BytesIO()
    frames[0].save(buffer, "MPO", save_all=True, append_images=frames[1:])
    mpo = buffer.getvalue()
    assert frame_count(mpo, "jpeg") == 2 and decode(mpo, max_pixels=10**6).metadata.icc is None
    assert _render(tmp_path, "a.jpg", mpo, "jpeg")[1] == ("only the first of its 2 pictures is in the output",)
    # The second entry made a camera's large preview (MP type 0x010001): one picture.
    entries = mpo.index(b"\x02\xb0\x07\x00")  # MP entry tag (little-endian), type UNDEFINED
    offset = int.from_bytes(mpo[entries + 8 : entries + 12], "little")
    tiff = mpo.index(b"MPF\x00") + 4
    preview = bytearray(mpo)
    preview[tiff + offset + 16 : tiff + offset + 20] = (0x010001).to_bytes(4, "little")
    assert frame_count(bytes(preview), "jpeg") == 1


def test_an_animated_avif_says_its_frames(tmp_path: Path) -> None:
    frames = [Image.fromarray(PIXELS[:, : 24 - i]).resize((24, 16)) for i in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "AVIF", save_all=True, append_images=frames[1:], duration=100)
    assert frame_count(buffer.getvalue(), "avif") == 3
    buffer = io.BytesIO()
    frames[0].save(buffer, "AVIF")
    assert frame_count(buffer.getvalue(), "avif") == 1


@pytest.mark.parametrize(("values", "said"), [(lambda p: p.astype(np.uint16) * 257 + 1, True),
                                              (lambda p: p.astype(np.uint16) * 257, False)])
def test_16_bit_samples_rounded_to_8_bits_are_said(tmp_path: Path, values, said: bool) -> None:
    """Real 16-bit data into a JPEG is a loss; 8-bit data stored in 16 bits loses nothing."""
    source = cv2.imencode(".png", values(PIXELS))[1].tobytes()
    losses = _render(tmp_path, "a.png", source, "jpeg")[1]
    assert losses == (("16-bit samples rounded to 8 bits (JPEG holds 8)",) if said else ())
    assert _render(tmp_path, "b.png", source, "png")[1] == ()


def test_a_gif_comment_is_said(tmp_path: Path) -> None:
    gif = animation("GIF", 1, comment=b"from grandpa's scanner")
    assert _render(tmp_path, "a.gif", gif, "png")[1] == ("metadata dropped: a GIF comment (no output carries it)",)


def test_data_after_a_jpegs_end_is_said_and_padding_is_not(tmp_path: Path) -> None:
    """A motion photo's video follows its JPEG's end marker; a writer's zero padding is nothing."""
    video = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4
    losses = _render(tmp_path, "a.jpg", _jpeg_with() + video, "jpeg")[1]
    assert losses == (f"metadata dropped: {len(video)} bytes after the picture's end (a camera's trailer, such as "
                      "a motion photo's video) (no output carries it)",)
    assert _render(tmp_path, "b.jpg", _jpeg_with() + b"\x00" * 64, "jpeg")[1] == ()


def test_side_blocks_are_carried_up_to_a_megabyte_in_all(tmp_path: Path) -> None:
    """Twenty comments of 60 KB each: the first 17 fit in 1 MB, the rest are dropped, each said."""
    comments = [_segment(0xFE, bytes([65 + i]) * 60_000) for i in range(20)]
    data, losses = _render(tmp_path, "a.jpg", _jpeg_with(*comments), "jpeg")
    assert sum(comment in data for comment in comments) == 17
    assert losses == ("metadata dropped: a JPEG comment (60004 bytes, over 1048576 with those before it: max carried "
                      "side blocks) ×3",)  # one line for many alike


def test_png_text_that_is_damaged_or_a_bomb_is_said_not_carried(tmp_path: Path) -> None:
    """A bad CRC would make the output invalid; compressed text that inflates to 200 MB would make readers refuse
    it: neither is carried, each is said. The XMP goes into an iTXt chunk, where XMP readers look for it."""
    bad_crc = bytearray(_png_chunk(b"tEXt", b"Title\x00x"))
    bad_crc[-1] ^= 1
    bomb = _png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"\x00" * 200_000_000, 9))
    xmp = _png_chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00<x:xmpmeta xmlns:x='adobe:ns:meta/'/>")
    data, losses = _render(tmp_path, "a.png", _png_with(bytes(bad_crc), bomb, xmp), "png")
    assert losses == ("metadata dropped: PNG text 'Title' (damaged: its CRC does not match)",
                      "metadata dropped: PNG text 'Comment' (its text inflates past 1048576 bytes)")
    Image.open(io.BytesIO(data)).verify()  # every CRC checked
    assert b"xmpmeta" in Image.open(io.BytesIO(data)).info["xmp"]  # Pillow reads XMP from iTXt only


def test_png_colour_goes_into_a_png_and_is_said_elsewhere_unless_a_profile_rules(tmp_path: Path) -> None:
    gamma = _png_chunk(b"gAMA", (100000).to_bytes(4, "big"))  # linear light: not sRGB's curve
    data, losses = _render(tmp_path, "a.png", _png_with(gamma), "png")
    assert gamma in data and losses == ()
    assert _render(tmp_path, "b.png", _png_with(gamma), "jpeg")[1] == (
        "metadata dropped: the PNG's colour (gAMA) (only a PNG output holds it)",)
    assert _render(tmp_path, "c.png", _png_with(_png_chunk(b"sRGB", b"\x00"), gamma), "jpeg")[1] == ()


def test_a_second_exif_block_is_said_and_the_first_one_is_kept(tmp_path: Path) -> None:
    first, second = Image.Exif(), Image.Exif()
    first[0x010F], second[0x010F] = "FirstMake", "SecondMake"  # Make
    source = _jpeg_with(_segment(0xE1, b"Exif\x00\x00" + first.tobytes()),
                        _segment(0xE1, b"Exif\x00\x00" + second.tobytes()))
    data, losses = _render(tmp_path, "a.jpg", source, "jpeg")
    assert Image.open(io.BytesIO(data)).getexif()[0x010F] == "FirstMake"
    assert losses == ("metadata dropped: a second EXIF block (JPEG APP1) (no output carries it)",)
