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

CLIP4IDC reports IER numbers but its repository has no IER loader, ground truth, script or weights, so there is
no reference implementation to follow. This loader is idclab's own, the first public CLIP4IDC-style one; it mirrors
the Spot-the-Diff loader.

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

from pathlib import Path

from idclab.data._common import MAX_LISTED, IDCPair, PairDataset, listing, pair_references, read_json

SPLITS = ("train", "val", "test")
SPLIT_FILES = {"train": "train.json", "val": "valid.json", "test": "test.json"}  # our split -> released file name
GROUP = "change"  # IER has no change types: every pair is in this one group
# Counted from the released annotation files of airsplay/VisualRelationships.
EXPECTED = {"train": (3_061, 3_061), "val": (383, 1_149), "test": (495, 1_485)}  # split -> (pairs, sentences)

DOWNLOAD_COMMAND = "python data_scripts/image_editing_request.py download --root {root}"
VERIFY_COMMAND = "python data_scripts/image_editing_request.py verify --root {root}"
ARCHIVE_ORG_ITEM = "https://archive.org/details/image-editing-dataset"


# ----------------------------------------------------------------------------------------------------------------
# Reading the annotations
# ----------------------------------------------------------------------------------------------------------------


def annotation_path(root, split: str) -> Path:
    if split not in SPLITS:
        hint = " (IER's file is valid.json; its split is called 'val' here)" if split == "valid" else ""
        raise ValueError(f"Unknown Image-Editing-Request split {split!r}; use one of {SPLITS}{hint}.")
    return Path(root) / "annotations" / SPLIT_FILES[split]


def read_split(root, split: str) -> list[IDCPair]:
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
    entries = read_json(path)
    keys = ("img0", "img1", "sents", "uid")
    bad = [n for n, e in enumerate(entries) if not (isinstance(e, dict) and all(k in e for k in keys))]
    if bad or not entries:
        raise ValueError(f"{path}: {'no entries' if not entries else f'entries {bad[:MAX_LISTED]} lack a key'}; "
                         f"expected [{{{', '.join(repr(k) for k in keys)}}}, ...]. Download it again with\n  "
                         f"{DOWNLOAD_COMMAND.format(root=root)}")
    images = Path(root) / "images"
    pairs = [IDCPair(str(e["uid"]), images / e["img0"], images / e["img1"], tuple(e["sents"]), change_type=GROUP)
             for e in entries]
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


def references(pairs: list[IDCPair]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """(gts {uid: sents}, groups {uid: "change"})."""
    return pair_references(pairs)


# ----------------------------------------------------------------------------------------------------------------
# The dataset
# ----------------------------------------------------------------------------------------------------------------


class ImageEditingRequest(PairDataset):
    """Image-Editing-Request pairs of one split (see the module docstring).

    Args:
        root: the folder holding ``annotations/`` and ``images/``.
        split: "train", "val" (file ``valid.json``) or "test".
        image_size: squash every image to ``image_size`` x ``image_size`` (bicubic, no crop); None keeps the size.

    :meth:`references` gives {uid: sents} and {uid: "change"}.

    Raises:
        FileNotFoundError: missing data (names the download command) or missing image files (lists them and names
            the verify command); no pair is ever dropped silently.
    """

    def __init__(self, root, split: str, *, image_size: int | None = None):
        super().__init__(root, split, read_split(root, split), name="Image-Editing-Request",
                         verify_command=VERIFY_COMMAND, image_size=image_size)
