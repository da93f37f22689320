"""Unlabelled images: a folder tree or a CC3M-style TSV (Pic2Word's training images, ``idclab retrieve --gallery``).

Pic2Word trains its mapping network on images alone: its loader reads the CC3M captions and its loss ignores them.
Its loader takes a tab-separated file with a header and the columns ``filepath`` and ``title``
(``--csv-img-key filepath --csv-caption-key title --csv-separator`` TAB; the README's
``Train_GCC-training_output.csv``).
Source of such images: any folder you have the right to use, typically CC3M fetched with img2dataset
(Conceptual Captions' terms: the images belong to their owners; the TSV of URLs is Google's, free to use with
attribution). idclab ships none of it.

Two readers, both torch Datasets whose items are uint8 RGB arrays [H, W, 3] (read with
:func:`idclab.data._common.read_image`: grayscale copied to 3 channels, RGBA composited on white; ``image_size``
squashes to [S, S, 3], bicubic, no crop):

* :class:`ImageFolder` (``root``): every image under ``root``, recursively, in sorted order (:func:`list_images`)::

      root/any/depth/name.{jpg,jpeg,png,gif,bmp,webp,tif,tiff}   (suffix case-insensitive; hidden files skipped)

* :class:`CSVImages` (``csv_path``): the rows of a Pic2Word-style TSV; relative paths are resolved against the
  folder that holds the TSV (Pic2Word resolves them against its working directory instead).
  ``python data_scripts/image_folder.py prepare --images DIR --out FILE.tsv`` writes one with absolute paths, which
  both read the same way from any working directory.

Nothing is dropped silently: missing files are listed when the dataset is built, and :func:`check_readable` (or
``python data_scripts/image_folder.py verify``) finds the files that exist but do not open.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from idclab.data._common import check_image_size, listing, position, read_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")
PIC2WORD_IMG_KEY = "filepath"  # Pic2Word README: --csv-img-key filepath
PIC2WORD_CAPTION_KEY = "title"  # --csv-caption-key title (read by Pic2Word, never used by its loss)
PREPARE_COMMAND = "python data_scripts/image_folder.py prepare --images {images} --out FILE.tsv"
VERIFY_COMMAND = "python data_scripts/image_folder.py verify {what}"


def list_images(root) -> list[Path]:
    """Every image file under ``root`` (any depth), sorted by relative path; hidden files and folders skipped.

    An image is a file whose suffix, lower-cased, is in :data:`IMAGE_SUFFIXES`. Hidden = any part of the path
    below ``root`` starting with "." (``.DS_Store``, ``._name.jpg`` resource forks, ``.cache/``).

    Raises:
        FileNotFoundError: ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"No image folder at {root}.")
    found = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def check_readable(paths) -> list[Path]:
    """The paths among ``paths`` that :func:`read_image` cannot read (missing, empty, truncated, not an image, a
    decompression bomb, a folder), in order.

    Every file is fully decoded, so a truncated JPEG is caught too (even where PIL's ``LOAD_TRUNCATED_IMAGES`` is
    set). Slow on big folders: it is meant for ``verify``, not for every training run.
    """
    bad = []
    for path in paths:
        path = Path(path)
        try:
            read_image(path)
        except (OSError, ValueError):  # ImageError (an OSError) or a missing file: reported, never swallowed
            bad.append(path)
    return bad


def read_image_list(csv_path, *, img_key: str = PIC2WORD_IMG_KEY, sep: str = "\t") -> tuple[list[Path], list[dict]]:
    """(image paths, rows) of a Pic2Word-style CSV; relative paths resolved against the CSV's folder. Files unchecked.

    Raises:
        FileNotFoundError: no CSV. ValueError: no ``img_key`` column (names the ``--csv-img-key`` fix), no rows, or
            rows with an empty path.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(
            f"No image list at {csv_path}. Write one from a folder of images with\n  "
            f"{PREPARE_COMMAND.format(images='DIR')}")
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=sep)
        columns = reader.fieldnames or []
        if img_key not in columns:
            hint = (" The header has a single column: is the separator right (--csv-separator; Pic2Word's "
                    "files are TAB-separated)?" if len(columns) == 1 else "")
            raise ValueError(
                f"{csv_path} has no column {img_key!r}; its columns are {columns}. Pass the column that "
                f"holds the image paths with --csv-img-key (img_key=...).{hint}")
        rows = [dict(row) for row in reader]
    if not rows:
        raise ValueError(f"{csv_path} lists no image (a header and no rows).")
    empty = [k + 2 for k, row in enumerate(rows) if not row.get(img_key)]  # file line numbers
    if empty:
        raise ValueError(f"{len(empty)} rows of {csv_path} have an empty {img_key!r} (lines {listing(empty)}); "
                         f"remove them or fill in the paths.")
    base = csv_path.parent
    paths = [Path(row[img_key]) if Path(row[img_key]).is_absolute() else base / row[img_key] for row in rows]
    return paths, rows


class ImageFolder(Dataset):
    """The images under ``root`` (see :func:`list_images`) as uint8 arrays [H, W, 3] ([S, S, 3] with ``image_size``).

    Attributes:
        paths: list[Path], sorted; ``names``: the same as posix paths relative to ``root`` (gallery names).

    Raises:
        FileNotFoundError: ``root`` does not exist. ValueError: it holds no image.
    """

    def __init__(self, root, *, image_size: int | None = None):
        self.root = Path(root)
        self.image_size = check_image_size(image_size)
        self.paths = list_images(self.root)
        if not self.paths:
            raise ValueError(
                f"{self.root} holds no image (looked recursively for {', '.join(IMAGE_SUFFIXES)}, any case; hidden "
                f"files skipped). Point it at the folder that contains the images.")
        self.names = [p.relative_to(self.root).as_posix() for p in self.paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        return read_image(self.paths[position(i, len(self))], image_size=self.image_size)  # uint8 [H, W, 3]

    def __repr__(self) -> str:
        return f"ImageFolder(root={str(self.root)!r}, n={len(self)}, image_size={self.image_size})"


class CSVImages(Dataset):
    """The images of a Pic2Word / CC3M-style CSV (TAB-separated by default) as uint8 arrays [H, W, 3].

    Args:
        csv_path: the file; its first line is the header. Relative image paths are resolved against its folder.
        img_key: the column holding image paths (Pic2Word's ``--csv-img-key``, default ``filepath``).
        sep: the column separator (Pic2Word's ``--csv-separator``, default TAB).
        image_size: squash to ``image_size`` x ``image_size`` (bicubic, no crop); None keeps the size.

    Attributes:
        paths: list[Path] in row order; ``rows``: list[dict[str, str]], each row's columns (captions included).

    Raises:
        FileNotFoundError: the CSV, or any image it lists, is missing (all missing images are counted and the first
            ones named; none is dropped). ValueError: no ``img_key`` column (names the columns found and the
            ``--csv-img-key`` fix), no rows, or rows with an empty path.
    """

    def __init__(self, csv_path, *, img_key: str = PIC2WORD_IMG_KEY, sep: str = "\t",
                 image_size: int | None = None):
        self.csv_path = Path(csv_path)
        self.image_size = check_image_size(image_size)
        self.paths, self.rows = read_image_list(self.csv_path, img_key=img_key, sep=sep)
        missing = [p for p in self.paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of the {len(self.paths)} images listed in {self.csv_path} are missing (relative "
                f"paths are resolved against {self.csv_path.parent}): {listing([str(p) for p in missing])}. "
                f"Fix the list or the files; check them with\n  "
                f"{VERIFY_COMMAND.format(what='--csv ' + str(self.csv_path))}")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        return read_image(self.paths[position(i, len(self))], image_size=self.image_size)  # uint8 [H, W, 3]

    def __repr__(self) -> str:
        return f"CSVImages(csv_path={str(self.csv_path)!r}, n={len(self)}, image_size={self.image_size})"
