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
         no_change_captions=[], target=None, id="<img_id>.png")

Ids are the before image's file name, ``<img_id>.png``, as in CLIP4IDC's ground truth
(``gt/spot_total_change_captions_reformat.json``) and result files, so they line up with idclab's;
:func:`~idclab.data._common.png_id` turns the older idclab form (the bare ``<img_id>``) into it.

There is no "distractor" key: :class:`idclab.models.clip4idc.PairSamples` must run with ``distractor_swap_p=0``
and ``no_change=False``. ``image_size`` squashes images to a square (bicubic, no crop; CLIP4IDC's preprocessing).
:meth:`SpotTheDiff.references` gives the evaluation ground truth: one generated caption per pair, scored against all
of its sentences; every id is in group "change".
"""

from __future__ import annotations

from pathlib import Path

from idclab.data._common import MAX_LISTED, IDCPair, PairDataset, listing, pair_references, read_json

SPLITS = ("train", "val", "test")
GROUP = "change"  # Spot-the-Diff has no change types: every pair is in this one group
# Counted from the released annotation files of harsh19/spot-the-diff.
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
    entries = read_json(path)
    bad = [n for n, e in enumerate(entries) if not (isinstance(e, dict) and "img_id" in e
                                                    and isinstance(e.get("sentences"), list))]
    if bad:
        raise ValueError(f"{path}: entries {bad[:MAX_LISTED]} lack 'img_id' or a 'sentences' list; expected "
                         f'[{{"img_id": "400", "sentences": ["..."]}}, ...]')
    return entries


def merge_entries(root, entries: list[dict]) -> list[IDCPair]:
    """One pair per distinct img_id (first-appearance order, id "<img_id>.png"), with the sentences of all its
    entries in file order."""
    sentences: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    for e in entries:
        key = str(e["img_id"])
        sentences.setdefault(key, []).extend(e["sentences"])
        counts[key] = counts.get(key, 0) + 1
    images = Path(root) / "images"
    return [IDCPair(f"{k}.png", images / f"{k}.png", images / f"{k}_2.png", tuple(v), change_type=GROUP,
                    entries=counts[k]) for k, v in sentences.items()]


def read_split(root, split: str) -> list[IDCPair]:
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


def references(pairs: list[IDCPair]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """(gts {"<img_id>.png": all sentences}, groups {"<img_id>.png": "change"})."""
    return pair_references(pairs)


# ----------------------------------------------------------------------------------------------------------------
# The dataset
# ----------------------------------------------------------------------------------------------------------------


class SpotTheDiff(PairDataset):
    """Spot-the-Diff pairs of one split, repeated img_ids merged (see the module docstring).

    Args:
        root: the folder holding ``annotations/`` and ``images/``.
        split: "train", "val" or "test".
        image_size: squash every image to ``image_size`` x ``image_size`` (bicubic, no crop); None keeps the size.

    :meth:`references` gives {"<img_id>.png": every sentence of the pair} and {"<img_id>.png": "change"}.

    Raises:
        FileNotFoundError: missing data (names the download command) or missing image files (lists them and names
            the verify command); no pair is ever dropped silently.
    """

    def __init__(self, root, split: str, *, image_size: int | None = None):
        super().__init__(root, split, read_split(root, split), name="Spot-the-Diff", verify_command=VERIFY_COMMAND,
                         image_size=image_size)
