"""Images in request bodies: base64 (or raw upload bytes) -> the model's RGB input, decoded by
utamoe.vision.images with the pixel limit checked before decoding, every failure a 422 naming
the field."""

from __future__ import annotations

import base64
import binascii

import numpy as np

from utamoe.serve.errors import APIError
from utamoe.vision.images import ImageTooLarge, ImageUnreadable, read_image


def decode(data: bytes | str, field: str, max_pixels: int, processor) -> np.ndarray:
    def bad(message: str) -> APIError:
        return APIError(422, f"{field}: {message}", [{"field": field, "message": message}])

    if isinstance(data, str):
        try:
            data = data.split(",", 1)[1] if data.startswith("data:") else data
            # What `base64 img.png` prints has line breaks: whitespace is not data.
            data = base64.b64decode("".join(data.split()), validate=True)
        except (binascii.Error, ValueError):
            raise bad("not base64; send the image file's bytes base64-encoded") from None
    try:
        return processor(read_image(data, max_pixels))
    except ImageTooLarge as err:
        if err.size is None:  # PIL's own bomb check
            raise bad("not an image this server can read (DecompressionBombError)") from None
        raise bad(f"{err.size[0]}x{err.size[1]} is over the limit of {max_pixels:,} pixels; "
                  "send a smaller image") from None
    except ImageUnreadable as err:
        raise bad(f"not an image this server can read ({type(err.cause).__name__})") from None
    except ValueError as err:  # the processor's (an image it cannot convert)
        raise bad(f"not an image this server can read ({type(err).__name__})") from None
