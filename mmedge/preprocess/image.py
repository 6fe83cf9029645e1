"""Images through Pillow: decode, colour mode, resize (+ centre crop), scale, mean/std, layout."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mmedge.errors import require
from mmedge.preprocess.errors import SampleError, naming
from mmedge.preprocess.spec import ImagePrep

if TYPE_CHECKING:
    from PIL.Image import Image

# Pillow's errors for files it cannot read (a file that is not an image, a truncated one)
_READ_ERRORS = (OSError, SyntaxError, ValueError)  # UnidentifiedImageError is an OSError


def _open(path: Path | str) -> Image:
    """``Image.open`` (the header only), with every failure a SampleError naming the file.

    Pillow guards against decompression bombs from the header's size: above
    ``PIL.Image.MAX_IMAGE_PIXELS`` it only warns (``DecompressionBombWarning``, which would let
    a 10000x10000 file be decoded: over a gigabyte as float32 RGB), above twice that it raises
    ``DecompressionBombError``, an Exception that is not an OSError. Both become this file's
    error, so the limit is ``MAX_IMAGE_PIXELS`` itself.
    """
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        # Pillow's message is the only place the pixel count is given ("Image size (N pixels)
        # exceeds limit of ..."): take it from there, or keep Pillow's words if that changes.
        found = re.search(r"\((\d+) pixels\)", str(err))
        size = f"{found[1]} pixels" if found else str(err)
        raise SampleError(
            f"image {path} is too large to decode safely: {size}, above the limit of "
            f"{Image.MAX_IMAGE_PIXELS} pixels (PIL.Image.MAX_IMAGE_PIXELS, Pillow's "
            "decompression-bomb guard)"
        ) from None
    except _READ_ERRORS as err:
        raise SampleError(f"cannot read image: {naming(path, err)}") from None


class ImageField:
    def __init__(self, spec: ImagePrep) -> None:
        require("PIL", "calib")
        from PIL import Image

        self.spec = spec
        self._filter = {
            "nearest": Image.Resampling.NEAREST,
            "bilinear": Image.Resampling.BILINEAR,
            "bicubic": Image.Resampling.BICUBIC,
            "lanczos": Image.Resampling.LANCZOS,
        }[spec.interpolation]
        channels = 1 if spec.mode == "L" else 3
        self._mean = np.asarray(spec.mean * (channels // len(spec.mean)), np.float32)
        self._std = np.asarray(spec.std * (channels // len(spec.std)), np.float32)

    @property
    def inputs(self) -> list[str]:
        return [self.spec.input]

    def length(self, value: Path | str) -> int | None:
        """None: a resized image always has `size`. Reads the header, so a file that is not
        an image is found while scanning, and so is one too large to decode; a truncated one
        only when decoded."""
        with _open(value):
            pass
        return None

    def process(self, value: Path | str, bucket: int | None) -> dict[str, np.ndarray]:
        with _open(value) as img:
            try:
                img.load()  # decode now: truncated files fail here, not later
                pixels = self._resize(img.convert("L" if self.spec.mode == "L" else "RGB"))
            except _READ_ERRORS as err:
                raise SampleError(f"cannot read image: {naming(value, err)}") from None
        array = np.asarray(pixels, np.float32) * np.float32(self.spec.scale)
        if array.ndim == 2:
            array = array[:, :, None]
        if self.spec.mode == "BGR":
            array = array[:, :, ::-1]
        array = (array - self._mean) / self._std
        if self.spec.layout == "NCHW":
            array = array.transpose(2, 0, 1)
        return {self.spec.input: np.ascontiguousarray(array, dtype=np.float32)}

    def _resize(self, img: object) -> object:
        from PIL import Image

        assert isinstance(img, Image.Image)
        height, width = self.spec.size
        if self.spec.resize_shorter is None:
            if img.size != (width, height):
                img = img.resize((width, height), self._filter)
            return img
        short = self.spec.resize_shorter
        w, h = img.size
        scale = short / min(w, h)
        new = (max(width, round(w * scale)), max(height, round(h * scale)))
        img = img.resize(new, self._filter)
        left, top = (new[0] - width) // 2, (new[1] - height) // 2
        return img.crop((left, top, left + width, top + height))

    def zeros(self, bucket: int | None) -> dict[str, np.ndarray]:
        height, width = self.spec.size
        channels = 1 if self.spec.mode == "L" else 3
        shape = (
            (channels, height, width) if self.spec.layout == "NCHW" else (height, width, channels)
        )
        return {self.spec.input: np.zeros(shape, np.float32)}
