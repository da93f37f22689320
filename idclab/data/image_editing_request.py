"""Image-Editing-Request (IER): describe the edit that turns one photo into another (CLIP4IDC's third dataset).

Dataset: Tan, Dernoncourt, Lin, Bui and Bansal, "Expressing Visual Relationships via Language", ACL 2019 (the
``ImgEdit`` corpus). Photos from Reddit / Zhopped photoshop-request posts and their edited versions, each pair with
the editing request in words: one request per training pair, three per validation / test pair. No distractor pairs,
no change types. Requests are noisy free text ("Making dark color ").
Source: annotations ``dataset/adobe/{train,valid,test}.json`` of ``airsplay/VisualRelationships`` (GitHub; its
README says ``data/``); images in the Google Drive folder ``1p_hkPwRUiLl1RHV3DkzQk3ti-GzHzT7O`` and the archive.org
item ``image-editing-dataset`` (the mirror ``data_scripts/image_editing_request.py download`` uses).
Licence / terms: the repository states no licence; the images are Reddit users' photos and edits. Research use with
citation; do not re-host.

CLIP4IDC reports IER numbers but its repository has no IER loader, ground truth, script or weights (reference
pitfall 5). This loader is idclab's own, the first public CLIP4IDC-style one; it mirrors the Spot-the-Diff loader.

On-disk layout (the JSON files keep their released names; our split "val" reads ``valid.json``)::

    annotations/{train,valid,test}.json   [{"img0": "Reddit.com_4wfxf2_4wfxf2.jpg", "img1": "...", "sents": [...],
                                            "uid": "Reddit_1052"}, ...]
    images/<img0>, images/<img1>          jpg / png / gif of any size and aspect

Items (the interface of :class:`~idclab.data.shapes.ShapesPairs`, without a distractor)::

    dict(before=uint8 [H, W, 3] (img0), after=uint8 [H', W', 3] (img1), change_type="change",
         captions=list[str] (sents), no_change_captions=[], target=None, id=uid)

Before and after can differ in size; ``image_size`` squashes both to a square (bicubic, no crop; CLIP4IDC's
preprocessing, as :class:`idclab.models.clip4idc.PairCollate` does anyway). Images go through
:func:`idclab.backbones.load_image`: grayscale is copied to RGB, RGBA / transparent palettes are composited on white,
a GIF gives its first frame. The same photo pair can appear under two uids with different requests; each uid is its
own item. There is no "distractor" key: ``PairSamples`` must run with ``distractor_swap_p=0`` and
``no_change=False``. :meth:`ImageEditingRequest.references` gives {uid: sents} (three references per test pair).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

from idclab.data._common import MAX_LISTED, read_image, check_image_size, position, listing

SPLITS = ("train", "val", "test")
SPLIT_FILES = {"train": "train.json", "val": "valid.json", "test": "test.json"}  # our split -> released file name
GROUP = "change"  # IER has no change types: every pair is in this one group
# [count] of the released annotation files (reference notes, metrics_and_data.md §4.3).
EXPECTED = {"train": (3_061, 3_061), "val": (383, 1_149), "test": (495, 1_485)}  # split -> (pairs, sentences)

DOWNLOAD_COMMAND = "python data_scripts/image_editing_request.py download --root {root}"
VERIFY_COMMAND = "python data_scripts/image_editing_request.py verify --root {root}"
ARCHIVE_ORG_ITEM = "https://archive.org/details/image-editing-dataset"


# ----------------------------------------------------------------------------------------------------------------
# Reading the annotations
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IERPair:
    id: str  # uid, e.g. "Reddit_1052"
    before: Path  # images/<img0>
    after: Path  # images/<img1>
    captions: tuple[str, ...]  # sents


def annotation_path(root, split: str) -> Path:
    if split not in SPLITS:
        hint = " (IER's file is valid.json; its split is called 'val' here)" if split == "valid" else ""
        raise ValueError(f"Unknown Image-Editing-Request split {split!r}; use one of {SPLITS}{hint}.")
    return Path(root) / "annotations" / SPLIT_FILES[split]


def read_split(root, split: str) -> list[IERPair]:
    """The pairs of ``split`` in file order. Reads annotations only; images are not touched.

    Raises:
        ValueError: unknown split, malformed or empty file, repeated uids, a pair without sentences.
        FileNotFoundError: ``root`` or the split's annotation file is missing (names the download command and the
            archive.org mirror).
    """
    path = annotation_path(root, split)
    if not path.is_file():
        what = (f"No Image-Editing-Request data at {root}" if not Path(root).is_dir() else f"{path} is missing")
        raise FileNotFoundError(
            f"{what}. Download the annotations (GitHub airsplay/VisualRelationships) and the images (archive.org "
            f"mirror {ARCHIVE_ORG_ITEM}) with:\n  {DOWNLOAD_COMMAND.format(root=root)}")
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); it may be truncated: download it again.") from None
    keys = ("img0", "img1", "sents", "uid")
    bad = [n for n, e in enumerate(entries) if not (isinstance(e, dict) and all(k in e for k in keys))]
    if bad or not entries:
        raise ValueError(f"{path}: {'no entries' if not entries else f'entries {bad[:MAX_LISTED]} lack a key'}; "
                         f"expected [{{{', '.join(repr(k) for k in keys)}}}, ...]. Download it again with\n  "
                         f"{DOWNLOAD_COMMAND.format(root=root)}")
    images = Path(root) / "images"
    pairs = [IERPair(str(e["uid"]), images / e["img0"], images / e["img1"], tuple(e["sents"])) for e in entries]
    seen, repeated = set(), []
    for p in pairs:
        if p.id in seen:
            repeated.append(p.id)
        seen.add(p.id)
    if repeated:
        raise ValueError(f"{path}: uids repeat ({listing(repeated)}); item ids must be unique.")
    no_sentence = [p.id for p in pairs if not p.captions]
    if no_sentence:
        raise ValueError(f"{path}: {len(no_sentence)} pairs have no sentences: {listing(no_sentence)}.")
    return pairs


def missing_files(pairs: list[IERPair]) -> list[Path]:
    """Image files of ``pairs`` that do not exist, each listed once, in pair order (one directory listing)."""
    listings: dict[Path, set[str]] = {}

    def exists(path: Path) -> bool:
        if path.parent not in listings:
            listings[path.parent] = set(os.listdir(path.parent)) if path.parent.is_dir() else set()
        return path.name in listings[path.parent]

    return list(dict.fromkeys(f for p in pairs for f in (p.before, p.after) if not exists(f)))


def references(pairs: list[IERPair]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """(gts {uid: sents}, groups {uid: "change"})."""
    return {p.id: list(p.captions) for p in pairs}, {p.id: GROUP for p in pairs}


# ----------------------------------------------------------------------------------------------------------------
# The dataset
# ----------------------------------------------------------------------------------------------------------------


class ImageEditingRequest(Dataset):
    """Image-Editing-Request pairs of one split (see the module docstring).

    Args:
        root: the folder holding ``annotations/`` and ``images/``.
        split: "train", "val" (file ``valid.json``) or "test".
        image_size: squash every image to ``image_size`` x ``image_size`` (bicubic, no crop); None keeps the size.

    Raises:
        FileNotFoundError: missing data (names the download command) or missing image files (lists them and names
            the verify command); no pair is ever dropped silently.
    """

    def __init__(self, root, split: str, *, image_size: int | None = None):
        self.root, self.split = Path(root), split
        self.image_size = check_image_size(image_size)
        self.pairs = read_split(self.root, split)
        missing = missing_files(self.pairs)
        if missing:
            listed = listing([p.relative_to(self.root) for p in missing])
            raise FileNotFoundError(
                f"{len(missing)} image files of Image-Editing-Request {split} ({len(self.pairs)} pairs) are missing "
                f"under {self.root}: {listed}. Check the download with\n  {VERIFY_COMMAND.format(root=self.root)}")
        self.ids = [p.id for p in self.pairs]  # list[str], uids

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        p = self.pairs[position(i, len(self))]
        return dict(before=read_image(p.before, image_size=self.image_size),
                    after=read_image(p.after, image_size=self.image_size), change_type=GROUP,
                    captions=list(p.captions), no_change_captions=[], target=None, id=p.id)

    def references(self) -> tuple[dict[str, list[str]], dict[str, str]]:
        """(gts {uid: sents}, groups {uid: "change"}) for the caption metrics."""
        return references(self.pairs)

    def __repr__(self) -> str:
        return (f"ImageEditingRequest(root={str(self.root)!r}, split={self.split!r}, n={len(self)}, "
                f"image_size={self.image_size})")


# ----------------------------------------------------------------------------------------------------------------
# Helpers (the same small ones as clevr_change.py: each dataset file reads alone)
# ----------------------------------------------------------------------------------------------------------------
