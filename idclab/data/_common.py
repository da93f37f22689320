"""Small helpers shared by the real-dataset loaders (reading images and JSON, indexing, error listings)."""

from __future__ import annotations

import json
from pathlib import Path

from idclab.images import read_image  # the one image reader, for the loaders that import it from here

MAX_LISTED = 10  # how many missing files an error message names


def check_image_size(image_size: int | None) -> int | None:
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"image_size must be a positive int or None, got {image_size!r}")
    return image_size


def position(i: int, n: int) -> int:
    """``i`` as a position in a dataset of length ``n`` (negative indices count from the end)."""
    i = int(i)
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise IndexError(f"index {i} out of range for a dataset of length {n}")
    return i


def listing(items: list) -> str:
    """The first MAX_LISTED items, then how many more."""
    shown = ", ".join(str(x) for x in items[:MAX_LISTED])
    more = f" ... and {len(items) - MAX_LISTED} more ({len(items)} in all)" if len(items) > MAX_LISTED else ""
    return shown + more


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); it may be truncated: download it again.") from None
