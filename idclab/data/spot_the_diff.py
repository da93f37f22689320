"""Spot-the-Diff: image difference captioning on surveillance video frames (CLIP4IDC's second dataset).

Dataset: Jhamtani and Berg-Kirkpatrick, "Learning to Describe Differences Between Pairs of Similar Images",
EMNLP 2018. Pairs of frames from a fixed camera over a car park (VIRAT videos), each difference described by
crowd workers in one or more sentences. No distractor pairs and no change types.
Source: annotations ``data/annotations/{train,val,test}.json`` of ``harsh19/spot-the-diff`` (GitHub); the resized
images (``resized_images``) from Google Drive file ``1OVb4_3Uec_xbyUk90aWC6LFpKsIOtR7v`` (the repo's
``data/get_images.txt``). Fetch both with ``python data_scripts/spot_the_diff.py download --root DIR``.
Licence / terms: the repository states no licence; the frames come from the VIRAT video dataset. Research use with
citation; do not re-host.

On-disk layout::

    annotations/{train,val,test}.json   [{"img_id": "400", "sentences": ["...", ...]}, ...]
    images/<img_id>.png                 before
    images/<img_id>_2.png               after

Repeated ``img_id`` s: the annotation files hold one entry per annotator, so an ``img_id`` can appear several times
(test: 1,404 entries, 1,270 pairs). This loader merges them into one pair whose references are all the sentences
of all its entries, in file order, each sentence a separate reference (CLIP4IDC's ``reformat_dataset.py`` merges
them the same way; its test ground truth holds the 2,107 sentences of the 1,270 test pairs).

Items (the interface of :class:`~idclab.data.shapes.ShapesPairs`, without a distractor)::

    dict(before=uint8 [H, W, 3], after=uint8 [H, W, 3], change_type="change", captions=list[str],
         no_change_captions=[], target=None, id="<img_id>")

There is no "distractor" key: :class:`idclab.models.clip4idc.PairSamples` must run with ``distractor_swap_p=0``
and ``no_change=False``. ``image_size`` squashes images to a square (bicubic, no crop; CLIP4IDC's preprocessing).
:meth:`SpotTheDiff.references` gives the evaluation ground truth: one generated caption per pair, scored against all
of its sentences; every id is in group "change".
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

from idclab.data._common import MAX_LISTED, read_image, check_image_size, position, listing

SPLITS = ("train", "val", "test")
GROUP = "change"  # Spot-the-Diff has no change types: every pair is in this one group
# [count] of the released annotation files (reference notes, metrics_and_data.md §4.2).
EXPECTED = {  # split -> (entries, unique pairs, sentences)
    "train": (9_524, 8_566, 17_676),
    "val": (1_634, 1_493, 3_310),
    "test": (1_404, 1_270, 2_107),
}

DOWNLOAD_COMMAND = "python data_scripts/spot_the_diff.py download --root {root}"
VERIFY_COMMAND = "python data_scripts/spot_the_diff.py verify --root {root}"


# ----------------------------------------------------------------------------------------------------------------
# Reading the annotations
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpotPair:
    id: str  # img_id
    before: Path
    after: Path
    captions: tuple[str, ...]  # every sentence of every entry of this img_id, in file order
    entries: int  # how many annotation entries were merged


def annotation_path(root, split: str) -> Path:
    if split not in SPLITS:
        raise ValueError(f"Unknown Spot-the-Diff split {split!r}; use one of {SPLITS}.")
    return Path(root) / "annotations" / f"{split}.json"


def read_entries(root, split: str) -> list[dict]:
    """The raw annotation entries of ``split``: [{"img_id": str, "sentences": [str]}], repeats included."""
    path = annotation_path(root, split)
    if not path.is_file():
        what = f"No Spot-the-Diff data at {root}" if not Path(root).is_dir() else f"{path} is missing"
        raise FileNotFoundError(f"{what}. Download the annotations and images with:\n  "
                                f"{DOWNLOAD_COMMAND.format(root=root)}")
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); it may be truncated: download it again.") from None
    bad = [n for n, e in enumerate(entries) if not (isinstance(e, dict) and "img_id" in e
                                                    and isinstance(e.get("sentences"), list))]
    if bad:
        raise ValueError(f"{path}: entries {bad[:MAX_LISTED]} lack 'img_id' or a 'sentences' list; expected "
                         f'[{{"img_id": "400", "sentences": ["..."]}}, ...]')
    return entries


def merge_entries(root, entries: list[dict]) -> list[SpotPair]:
    """One pair per distinct img_id (first-appearance order), with the sentences of all its entries."""
    sentences: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    for e in entries:
        key = str(e["img_id"])
        sentences.setdefault(key, []).extend(e["sentences"])
        counts[key] = counts.get(key, 0) + 1
    images = Path(root) / "images"
    return [SpotPair(k, images / f"{k}.png", images / f"{k}_2.png", tuple(v), counts[k]) for k, v in sentences.items()]


def read_split(root, split: str) -> list[SpotPair]:
    """The merged pairs of ``split``. Raises FileNotFoundError (naming the download command) if data is missing."""
    pairs = merge_entries(root, read_entries(root, split))
    if not pairs:
        raise ValueError(f"{annotation_path(root, split)} holds no entries; download it again with\n  "
                         f"{DOWNLOAD_COMMAND.format(root=root)}")
    no_sentence = [p.id for p in pairs if not p.captions]
    if no_sentence:
        raise ValueError(f"{len(no_sentence)} {split} pairs have no sentences: {listing(no_sentence)}; the annotation "
                         f"file is damaged: download it again.")
    return pairs


def missing_files(pairs: list[SpotPair]) -> list[Path]:
    """Image files of ``pairs`` that do not exist, in pair order (one directory listing)."""
    listings: dict[Path, set[str]] = {}

    def exists(path: Path) -> bool:
        if path.parent not in listings:
            listings[path.parent] = set(os.listdir(path.parent)) if path.parent.is_dir() else set()
        return path.name in listings[path.parent]

    return [f for p in pairs for f in (p.before, p.after) if not exists(f)]


def references(pairs: list[SpotPair]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """(gts {img_id: all sentences}, groups {img_id: "change"})."""
    return {p.id: list(p.captions) for p in pairs}, {p.id: GROUP for p in pairs}


# ----------------------------------------------------------------------------------------------------------------
# The dataset
# ----------------------------------------------------------------------------------------------------------------


class SpotTheDiff(Dataset):
    """Spot-the-Diff pairs of one split, repeated img_ids merged (see the module docstring).

    Args:
        root: the folder holding ``annotations/`` and ``images/``.
        split: "train", "val" or "test".
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
                f"{len(missing)} image files of Spot-the-Diff {split} ({len(self.pairs)} pairs) are missing under "
                f"{self.root}: {listed}. Check the download with\n  {VERIFY_COMMAND.format(root=self.root)}")
        self.ids = [p.id for p in self.pairs]  # list[str], img_ids

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        p = self.pairs[position(i, len(self))]
        return dict(before=read_image(p.before, image_size=self.image_size),
                    after=read_image(p.after, image_size=self.image_size), change_type=GROUP,
                    captions=list(p.captions), no_change_captions=[], target=None, id=p.id)

    def references(self) -> tuple[dict[str, list[str]], dict[str, str]]:
        """(gts {img_id: every sentence of the pair}, groups {img_id: "change"}) for the caption metrics."""
        return references(self.pairs)

    def __repr__(self) -> str:
        return (f"SpotTheDiff(root={str(self.root)!r}, split={self.split!r}, n={len(self)}, "
                f"image_size={self.image_size})")


# ----------------------------------------------------------------------------------------------------------------
# Helpers (the same small ones as clevr_change.py: each dataset file reads alone)
# ----------------------------------------------------------------------------------------------------------------
