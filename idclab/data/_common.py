"""Small helpers shared by the real-dataset loaders (reading images and JSON, indexing, error listings), and the
base that the three image difference captioning datasets share (:class:`IDCPair`, :class:`PairDataset`)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

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


# ----------------------------------------------------------------------------------------------------------------
# The three IDC pair datasets (CLEVR-Change, Spot-the-Diff, Image-Editing-Request)
# ----------------------------------------------------------------------------------------------------------------

NO_CHANGE_SUFFIX = "_n"  # id suffix of a CLEVR-Change distractor pair in the "Total" ground truth
DISTRACTOR = "distractor"  # the group of those ``_n`` ids


@dataclass(frozen=True)
class IDCPair:
    """One before / after pair with its reference captions: what every IDC loader reads from its annotations."""

    id: str  # the id of the pair in the datasets' reference ground truth (and in idclab's result files)
    before: Path
    after: Path
    captions: tuple[str, ...]
    change_type: str = "change"  # CLEVR-Change's five types; "change" where a dataset has none
    distractor: Path | None = None  # CLEVR-Change only: the same scene after a viewpoint / lighting shift
    no_change_captions: tuple[str, ...] = ()  # references of the (before, distractor) pair
    entries: int = 1  # annotation entries merged into this pair (Spot-the-Diff repeats its img_ids)


def png_id(id_) -> str:
    """The reference tools' form of a CLEVR-Change or Spot-the-Diff id: the image file name, extension included.

    ``"000123"`` -> ``"000123.png"``, ``"000123_n"`` -> ``"000123.png_n"``, ``"400"`` -> ``"400.png"``; an id already
    in that form comes back unchanged, so files written in either form can be compared.
    """
    s = str(id_)
    suffix = NO_CHANGE_SUFFIX if s.endswith(NO_CHANGE_SUFFIX) else ""
    stem = s[: len(s) - len(suffix)]
    return (stem if stem.endswith(".png") else stem + ".png") + suffix


def missing_files(paths) -> list[Path]:
    """The paths (each once, order kept) that do not exist; one directory listing per folder instead of a stat each."""
    listings: dict[Path, set[str]] = {}
    out = []
    for path in dict.fromkeys(paths):
        if path.parent not in listings:
            listings[path.parent] = set(os.listdir(path.parent)) if path.parent.is_dir() else set()
        if path.name not in listings[path.parent]:
            out.append(path)
    return out


def pair_files(pairs) -> list[Path]:
    """Every image file of ``pairs`` (before, after and any distractor), in pair order."""
    return [f for p in pairs for f in (p.before, p.after, p.distractor) if f is not None]


def pair_references(pairs, *, with_no_change: bool = True) -> tuple[dict[str, list[str]], dict[str, str]]:
    """(gts {id: references}, groups {id: change type}) of ``pairs``, the ground truth of the caption metrics.

    Pairs with a distractor also give their no-change pair under ``id + "_n"`` (group "distractor") after all the
    change pairs, as CLEVR-Change's "Total" ground truth does; ``with_no_change=False`` leaves those out.
    """
    gts = {p.id: list(p.captions) for p in pairs}
    groups = {p.id: p.change_type for p in pairs}
    if with_no_change:
        for p in pairs:
            if p.distractor is not None:
                gts[p.id + NO_CHANGE_SUFFIX], groups[p.id + NO_CHANGE_SUFFIX] = list(p.no_change_captions), DISTRACTOR
    return gts, groups


class PairDataset(Dataset):
    """The torch Dataset of an IDC split: the pairs read by a loader, their images checked, items in one format.

    Items (the interface of :class:`~idclab.data.shapes.ShapesPairs`)::

        dict(before=uint8 [H, W, 3], after=uint8 [H', W', 3], distractor=uint8 [H, W, 3] (CLEVR-Change only),
             change_type=str, captions=list[str], no_change_captions=list[str], target=None, id=str)

    ``image_size`` squashes every image to ``image_size`` x ``image_size`` (bicubic, no crop, as CLIP4IDC's
    preprocessing); None keeps each image's size.

    Raises:
        FileNotFoundError: image files are missing (all counted, the first named, with the verify command); no pair
            is ever dropped silently.
    """

    def __init__(self, root, split: str, pairs: list[IDCPair], *, name: str, verify_command: str,
                 image_size: int | None = None):
        self.root, self.split, self.pairs = Path(root), split, pairs
        self.image_size = check_image_size(image_size)
        missing = missing_files(pair_files(pairs))
        if missing:
            listed = listing([p.relative_to(self.root) for p in missing])
            raise FileNotFoundError(
                f"{len(missing)} image files of {name} {split} ({len(pairs)} pairs) are missing under {self.root}: "
                f"{listed}. Check the download with\n  {verify_command.format(root=self.root)}")
        self.ids = [p.id for p in pairs]  # list[str]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        p = self.pairs[position(i, len(self))]
        item = dict(before=self._image(p.before), after=self._image(p.after))
        if p.distractor is not None:
            item["distractor"] = self._image(p.distractor)
        return dict(item, change_type=p.change_type, captions=list(p.captions),
                    no_change_captions=list(p.no_change_captions), target=None, id=p.id)

    def references(self, *, with_no_change: bool = True) -> tuple[dict[str, list[str]], dict[str, str]]:
        """(gts, groups) for :func:`~idclab.metrics.captioning.score_captions_by_group`: see :func:`pair_references`.

        Caption the (before, distractor) pair for the ``_n`` ids.
        """
        return pair_references(self.pairs, with_no_change=with_no_change)

    def _image(self, path: Path) -> np.ndarray:
        return read_image(path, image_size=self.image_size)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, n={len(self)}, "
                f"image_size={self.image_size})")
