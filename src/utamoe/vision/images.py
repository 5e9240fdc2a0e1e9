"""Image files and bytes -> HxWx3 uint8 arrays, with the pixel limit checked before decoding.

One decoder for every place that reads an image a user gives: a dataset's image files
(utamoe.data.formats), the CLI's --image (utamoe.cli), the server's uploads
(utamoe.serve.images). The size is read from the header and refused above `max_pixels`
before any pixel is decoded (a decompression bomb, or a photo far larger than any model
reads); PIL's own bomb check is folded into the same error. Only formats whose header gives
the size without decoding are opened (`FORMATS`): Pillow decodes the image inside a container
such as ICO or ICNS while opening it, so a bomb hidden there would be decoded before any
check; such files are refused as unreadable. Each caller turns the two
errors into its own (a DataFormatError naming the record, an InputError, an HTTP 422
naming the field).
"""

from __future__ import annotations

import io
import os
import warnings
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from utamoe.vision.processor import to_rgb

# Opened without decoding: the header tells the size. (JPEG also opens MPO, many phones' JPEGs.)
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "TGA")
ORIENTATION = 0x0112  # the EXIF tag a camera sets when the sensor was held sideways


class ImageTooLarge(ValueError):
    """More pixels than the limit; `size` is (width, height) when the header told it."""

    def __init__(self, size: tuple[int, int] | None, limit: int):
        self.size, self.limit = size, limit
        got = f"{size[0]}x{size[1]}" if size else "the image"
        super().__init__(f"{got} is over the limit of {limit:,} pixels")


class ImageUnreadable(ValueError):
    """Not an image PIL can read (or a damaged one); `cause` is PIL's error."""

    def __init__(self, cause: BaseException):
        self.cause = cause
        super().__init__(str(cause))


def read_image(source: str | os.PathLike | bytes | BinaryIO, max_pixels: int,
               draft: int | None = None) -> np.ndarray:
    """An image file (a path, its bytes or a binary file object) as HxWx3 uint8, at its own
    size, any mode converted (utamoe.vision.processor.to_rgb), turned upright when its EXIF
    orientation says the camera was rotated (so boxes drawn on the displayed image match).

    `draft` (a model's image side): a JPEG is decoded at the smallest of its DCT scales (1/2,
    1/4, 1/8) that is still at least draft x draft, which is several times faster than
    decoding it whole and resizing it down (a 256x256 JPEG for a 48x48 model: 64x64); other
    formats are decoded whole."""
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked below
            with Image.open(source, formats=FORMATS) as im:
                if im.size[0] * im.size[1] > max_pixels:  # read from the header, not decoded
                    raise ImageTooLarge(im.size, max_pixels)
                if draft is not None and im.format == "JPEG":  # before decoding; square, so
                    im.draft("RGB", (draft, draft))  # the same scale either way up
                if im.getexif().get(ORIENTATION, 1) != 1:  # a phone photo: upright, as displayed
                    return to_rgb(ImageOps.exif_transpose(im))
                return to_rgb(im)
    except Image.DecompressionBombError as err:
        raise ImageTooLarge(None, max_pixels) from err
    except (UnidentifiedImageError, OSError, ValueError) as err:
        if isinstance(err, (ImageTooLarge, ImageUnreadable)):
            raise
        raise ImageUnreadable(err) from err
