"""Images in request bodies: base64 (or raw upload bytes) -> the model's RGB input, with the
byte and pixel limits checked before decoding, every failure a 422 naming the field."""

from __future__ import annotations

import base64
import binascii
import io
import warnings

import numpy as np


def decode(data: bytes | str, field: str, max_pixels: int, processor) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    from utamoe.serve.errors import APIError

    def bad(message: str) -> APIError:
        return APIError(422, f"{field}: {message}", [{"field": field, "message": message}])

    if isinstance(data, str):
        try:
            data = base64.b64decode(data.split(",", 1)[1] if data.startswith("data:") else data,
                                    validate=True)
        except (binascii.Error, ValueError):
            raise bad("not base64; send the image file's bytes base64-encoded") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                if im.size[0] * im.size[1] > max_pixels:
                    raise bad(f"{im.size[0]}x{im.size[1]} is over the limit of {max_pixels:,} "
                              "pixels; send a smaller image")
                return processor(im)
    except APIError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise bad(f"not an image this server can read ({type(err).__name__})") from None
