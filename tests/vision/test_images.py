"""The image-file reader every user image goes through (issue 28, item 6 and the EXIF note): a
bomb inside a container format is never decoded, the pixel limit is read from the header, a
phone photo is read upright as it is displayed, and a JPEG is decoded at a reduced DCT scale for
a small model (`draft`, issue 26), other formats untouched."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from utamoe.vision.images import ImageTooLarge, ImageUnreadable, read_image
from utamoe.vision.processor import to_rgb


def png_bomb(side: int = 6000) -> bytes:
    """A PNG of side x side black pixels, a few kB compressed."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(b"".join(b"\x00" * (side + 1) for _ in range(side)), 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def ico_bomb(side: int = 6000) -> bytes:
    """An ICO whose one entry is `png_bomb`: Pillow decodes that PNG while opening the ICO."""
    png = png_bomb(side)
    return struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 22) + png


@pytest.fixture
def decodes(monkeypatch):
    """How many times Pillow decoded pixels."""
    calls = []
    real = ImageFile.ImageFile.load

    def load(self):
        calls.append(self.size)
        return real(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return calls


def test_a_bomb_inside_an_ico_is_never_decoded(decodes):
    with pytest.raises(ImageUnreadable):
        read_image(ico_bomb(), 1_000_000)
    assert decodes == []


def test_the_pixel_limit_is_read_from_the_header(decodes):
    with pytest.raises(ImageTooLarge) as err:
        read_image(png_bomb(), 1_000_000)
    assert err.value.size == (6000, 6000) and decodes == []


def test_a_phone_photo_is_read_upright():
    img = np.zeros((10, 20, 3), np.uint8)  # stored 20 wide, 10 high
    img[:, :10] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", exif=exif, quality=100)
    out = read_image(buf.getvalue(), 1_000_000)
    assert out.shape == (20, 10, 3)  # displayed: 10 wide, 20 high
    assert out[:8].mean() > 200 and out[12:].mean() < 50  # the white half is now on top


def test_a_phone_photo_read_in_draft_is_upright_too():
    img = np.zeros((200, 400, 3), np.uint8)  # stored 400 wide, 200 high
    img[:, :200] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", exif=exif, quality=95)
    out = read_image(buf.getvalue(), 1_000_000, draft=48)
    assert out.shape == (100, 50, 3)  # 1/4 scale, then turned: 50 wide, 100 high
    assert out[:40].mean() > 200 and out[60:].mean() < 50


def _encoded(fmt: str, size=(256, 192)) -> bytes:
    rng = np.random.default_rng(0)
    arr = np.clip(np.linspace(0, 255, size[0])[None, :, None] + rng.normal(0, 20, (size[1], size[0], 3)),
                  0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def test_draft_decodes_a_jpeg_at_the_smallest_scale_that_still_covers_the_size():
    data = _encoded("JPEG")
    assert read_image(data, 10**8).shape == (192, 256, 3)
    small = read_image(data, 10**8, draft=48)
    assert small.shape == (48, 64, 3)  # 1/4: the height is still 48; 1/8 would be 24
    full = to_rgb(read_image(data, 10**8), 48)
    assert np.abs(to_rgb(small, 48).astype(int) - full.astype(int)).mean() < 3


def test_draft_leaves_other_formats_and_the_pixel_limit_alone():
    png = _encoded("PNG")
    assert np.array_equal(read_image(png, 10**8, draft=48), read_image(png, 10**8))
    with pytest.raises(ImageTooLarge):
        read_image(_encoded("JPEG"), 1000, draft=48)
