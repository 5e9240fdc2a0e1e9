"""The image-file reader every user image goes through (issue 28, item 6 and the EXIF note): a
bomb inside a container format is never decoded, the pixel limit is read from the header, and
a phone photo is read upright as it is displayed."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from utamoe.vision.images import ImageTooLarge, ImageUnreadable, read_image


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
