"""The model's image processor: any image in, the model's RGB resolution out.

Every path that feeds pixels to a model (training data, evaluation, the predictor,
the server to come) goes through one `ImageProcessor`, built from the model's
config (`UnifiedConfig.image_size`, `image_resample`) and so saved with it. It
does what Hugging Face's SigLIP image processor does: convert to RGB, resize to
size x size (bicubic, no crop: a non-square image is squeezed), rescale to [0, 1]
and normalise with mean 0.5 / std 0.5, i.e. to [-1, 1] (tests/vision hold the two
equal). Images already at the model's size are not touched, so ShapesWorld data
goes through bit-for-bit unchanged.

`to_rgb` is the conversion alone. It accepts PIL images of any mode and arrays
HxW, HxWx1, HxWx3 or HxWx4 of uint8, uint16 (16-bit PNGs: scaled, not clipped to
white), bool or float in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLE = ("bicubic", "bilinear", "nearest", "lanczos")


def _pil_resample(name: str):
    from PIL import Image

    return {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST,
            "lanczos": Image.LANCZOS}[name]


def _from_pil(im) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return np.asarray(im)  # PIL's own convert("RGB") clips these to white: scale them below
    return np.asarray(im.convert("RGB"))


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        return np.clip(np.rint(np.nan_to_num(arr) * 255.0), 0, 255).astype(np.uint8)
    if arr.dtype == np.uint16 or (np.issubdtype(arr.dtype, np.integer) and arr.max(initial=0) > 255):
        return np.clip(np.rint(arr.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)
    return np.clip(arr, 0, 255).astype(np.uint8)


def to_rgb(image, size: int | tuple[int, int] | None = None, resample: str = "bicubic") -> np.ndarray:
    """An HxWx3 uint8 array of any supported image, resized to `size` ((h, w) or a square
    side) when given and different."""
    from PIL import Image

    arr = _from_pil(image) if isinstance(image, Image.Image) else np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.repeat(_to_uint8(arr)[..., None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] in (3, 4):
        arr = _to_uint8(arr[..., :3])
    else:
        raise ValueError(f"expected an image HxW or HxWxC with C in 1, 3, 4 (channels last), "
                         f"got an array of shape {arr.shape}")
    if size is not None:
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        if arr.shape[:2] != (h, w):
            arr = np.asarray(Image.fromarray(np.ascontiguousarray(arr)).resize(
                (w, h), _pil_resample(resample)))
    return np.ascontiguousarray(arr)


def pixel_values(images: Sequence[np.ndarray]):
    """uint8 HxWx3 images of one size -> float tensor (N, 3, H, W) in [-1, 1]."""
    import torch  # here, not at the top: datasets are read without the model stack

    arr = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    return arr / 127.5 - 1.0


@dataclass(frozen=True)
class ImageProcessor:
    """RGB conversion, resize to size x size, normalisation to [-1, 1] (see module docstring)."""

    size: int
    resample: str = "bicubic"

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"image size must be >= 1, got {self.size}")
        if self.resample not in RESAMPLE:
            raise ValueError(f"resample {self.resample!r} is not one of {', '.join(RESAMPLE)}")

    @classmethod
    def of(cls, model_config) -> ImageProcessor:
        """The processor a UnifiedConfig describes."""
        return cls(model_config.image_size, model_config.image_resample)

    def __call__(self, image) -> np.ndarray:
        """One image (PIL or array, any size and mode) as size x size x 3 uint8."""
        return to_rgb(image, self.size, self.resample)

    def pixel_values(self, images):
        """Images -> float (N, 3, size, size) in [-1, 1], ready for a vision encoder."""
        return pixel_values([self(img) for img in images])
