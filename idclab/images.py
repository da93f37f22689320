"""Reading an image: one function for the datasets, the backbones and the CIR harness.

It needs only numpy and PIL, so every layer of idclab can import it (the dataset loaders without open_clip).
:func:`idclab.backbones.load_image`, :func:`idclab.data._common.read_image` and :func:`idclab.cir.read_image` are
this same function.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageFile as PILImageFile, UnidentifiedImageError

# What can stand for an image: a file, a PIL image, a uint8 array [H, W, C], or a zero-argument loader of one of these.
ImageInput = Union[str, Path, Image.Image, np.ndarray, Callable[[], object]]
ALPHA = ("white", "drop")  # what read_image does with transparency


def read_image(image: ImageInput, *, image_size: int | None = None, alpha: str = "white") -> np.ndarray:
    """Read an image as uint8 RGB [H, W, 3], with these documented conversions:

    * grayscale (``L``, [H, W] or [H, W, 1] arrays) -> the gray value copied into R, G and B; 16-bit grayscale
      (``I;16``, ``I``: 0..65535) scaled to 0..255 first (value / 257, rounded);
    * RGBA / LA / palette with transparency -> by ``alpha``: "white" composites onto a white background (CLEVR's
      PNGs are RGBA), "drop" discards the transparency and keeps the colours stored under it (PIL's
      ``convert("RGB")``, what CLIP4Cir's and Pic2Word's loaders do, e.g. for FashionIQ);
    * anything else PIL can open -> converted to RGB;
    * a callable (e.g. a benchmark's lazy loader, an :class:`ImageFile`) is called first and its result read as
      above.

    ``image_size``: squash to [image_size, image_size, 3] (bicubic, no crop) when the size differs.

    A file is decoded whole: a folder, an empty, truncated or corrupt file, a non-image and a decompression bomb
    (more than PIL's ``Image.MAX_IMAGE_PIXELS``) each raise one :class:`ImageError` (an OSError) naming the file;
    a truncated file is an error even where PIL's ``ImageFile.LOAD_TRUNCATED_IMAGES`` is set.
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
        return _read_file(Path(image), alpha)
    if isinstance(image, Image.Image):
        if image.mode == "I" or image.mode.startswith("I;16"):  # 16-bit grayscale PNG / TIFF: values 0..65535
            return as_rgb_array(np.round(np.clip(np.asarray(image), 0, 65535) / 257).astype(np.uint8))
        has_alpha = image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info)
        if has_alpha and alpha == "white":
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(white, rgba)
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    if isinstance(image, np.ndarray):
        return as_rgb_array(image, alpha=alpha)
    raise TypeError(f"Cannot read an image from {type(image).__name__}; pass a path, a PIL image or a uint8 array.")


class ImageError(OSError):
    """A file that is not a readable image; the message names the file and says why."""


def _read_file(path: Path, alpha: str) -> np.ndarray:
    """Decode the whole file; every way a file can be unreadable is one :class:`ImageError` naming it."""
    if not path.exists():
        raise FileNotFoundError(f"No image at {path}.")
    if path.is_dir():
        raise ImageError(f"{path} is a folder, not an image file.")
    if path.stat().st_size == 0:
        raise ImageError(f"{path} is empty (0 bytes), not an image.")
    padding = PILImageFile.LOAD_TRUNCATED_IMAGES  # another library may have set it; we never pad a cut-off file
    try:
        PILImageFile.LOAD_TRUNCATED_IMAGES = False
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # refuse, rather than decode, a bomb
            with Image.open(path) as im:
                im.load()
                return _read_rgb(im, alpha)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(f"{path} is too large to decode safely ({str(err).rstrip('.')}). Downscale it, or raise "
                         "PIL.Image.MAX_IMAGE_PIXELS if you trust the file.") from err
    except UnidentifiedImageError as err:
        raise ImageError(f"{path} is not an image that PIL can read (unknown or unsupported format).") from err
    except PermissionError as err:
        raise ImageError(f"{path} cannot be opened: permission denied.") from err
    except (OSError, SyntaxError, ValueError) as err:  # PIL's errors for truncated and corrupt files
        raise ImageError(f"{path} is truncated or corrupt ({err}); replace it with a complete copy.") from err
    finally:
        PILImageFile.LOAD_TRUNCATED_IMAGES = padding


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
