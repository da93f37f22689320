"""Reading an image: one function for the datasets, the backbones and the CIR harness.

It needs only numpy and PIL, so every layer of idclab can import it (the dataset loaders without open_clip).
:func:`idclab.backbones.load_image`, :func:`idclab.data._common.read_image` and :func:`idclab.cir.read_image` are
this same function.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image

# What can stand for an image: a file, a PIL image, a uint8 array [H, W, C], or a zero-argument loader of one of these.
ImageInput = Union[str, Path, Image.Image, np.ndarray, Callable[[], object]]
ALPHA = ("white", "drop")  # what read_image does with transparency


def read_image(image: ImageInput, *, image_size: int | None = None, alpha: str = "white") -> np.ndarray:
    """Read an image as uint8 RGB [H, W, 3], with these documented conversions:

    * grayscale (``L``, ``I;16``, [H, W] or [H, W, 1] arrays) -> the gray value copied into R, G and B;
    * RGBA / LA / palette with transparency -> by ``alpha``: "white" composites onto a white background (CLEVR's
      PNGs are RGBA), "drop" discards the transparency and keeps the colours stored under it (PIL's
      ``convert("RGB")``, what CLIP4Cir's and Pic2Word's loaders do, e.g. for FashionIQ);
    * anything else PIL can open -> converted to RGB;
    * a callable (e.g. a benchmark's lazy loader, an :class:`ImageFile`) is called first and its result read as
      above.

    ``image_size``: squash to [image_size, image_size, 3] (bicubic, no crop) when the size differs.
    """
    if alpha not in ALPHA:
        raise ValueError(f"alpha must be one of {ALPHA} (composite on white, or drop the alpha channel); "
                         f"got {alpha!r}.")
    img = _read_rgb(image() if callable(image) else image, alpha)
    if image_size is not None and img.shape[:2] != (image_size, image_size):
        img = np.asarray(Image.fromarray(img).resize((image_size, image_size), Image.BICUBIC))
    return img


@dataclass(frozen=True)
class ImageFile(os.PathLike):
    """An image file with the way its transparency is read: a path for every check that wants one (``os.fspath``,
    ``Path(...)``), and a zero-argument loader for :func:`read_image` (benchmark tables hold these, e.g. FashionIQ's
    with ``alpha="drop"``)."""

    path: Path
    alpha: str = "white"

    def __post_init__(self):
        if self.alpha not in ALPHA:
            raise ValueError(f"ImageFile: alpha must be one of {ALPHA}; got {self.alpha!r}.")
        object.__setattr__(self, "path", Path(self.path))

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __call__(self) -> np.ndarray:
        return read_image(self.path, alpha=self.alpha)


def _read_rgb(image, alpha: str = "white") -> np.ndarray:
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.exists():
            raise FileNotFoundError(f"No image at {path}.")
        with Image.open(path) as im:
            return _read_rgb(im.copy(), alpha)
    if isinstance(image, Image.Image):
        has_alpha = image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info)
        if has_alpha and alpha == "white":
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(white, rgba)
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    if isinstance(image, np.ndarray):
        return as_rgb_array(image, alpha=alpha)
    raise TypeError(f"Cannot read an image from {type(image).__name__}; pass a path, a PIL image or a uint8 array.")


def as_rgb_array(a: np.ndarray, *, alpha: str = "white") -> np.ndarray:
    """A uint8 array [H, W], [H, W, 1], [H, W, 3] or [H, W, 4] as RGB [H, W, 3] (the conversions of read_image)."""
    if a.dtype != np.uint8:
        raise ValueError(
            f"Image arrays must be uint8 in 0..255 (got {a.dtype}); convert with (x * 255).round().astype(np.uint8) "
            "if yours are floats in 0..1."
        )
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3:
        raise ValueError(f"An image array must be [H, W], [H, W, 1], [H, W, 3] or [H, W, 4]; got shape {a.shape}.")
    if a.shape[2] == 1:
        return np.repeat(a, 3, axis=2)
    if a.shape[2] == 3:
        return a
    if a.shape[2] == 4:
        return a[:, :, :3].copy() if alpha == "drop" else _read_rgb(Image.fromarray(a, mode="RGBA"))
    raise ValueError(
        f"An image array must have 1, 3 or 4 channels last ([H, W, C]); got shape {a.shape}. If your array is "
        "channels-first, transpose it with a.transpose(1, 2, 0)."
    )
