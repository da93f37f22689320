"""CLEVR-Change: image difference captioning with distractors (the CLEVR world of CLIP4IDC).

Dataset: CLEVR-Change, Park, Darrell and Rohrbach, "Robust Change Captioning", ICCV 2019. CLEVR scenes rendered
three times: a default image (before), a semantic change of one object (after: colour, texture, add, drop or move),
and a distractor (the same scene under a viewpoint / illumination shift only, captioned "no change").
Source: ``clevr_change.tar.gz`` on Google Drive, file id ``1HJ3gWjaUJykEckyb2M0MB4HnrJSihjVe`` (README of
``Seth-Park/RobustChangeCaptioning``); fetch it with ``python data_scripts/clevr_change.py download --root DIR``.
Licence / terms: the RCC repository states no licence; the scenes come from the CLEVR engine (CLEVR is CC BY 4.0).
Treat it as research use with citation, and do not re-host it.

On-disk layout (``root`` is the folder the archive's ``data/`` was extracted to; ``XXXXXX`` a 6-digit number)::

    images/CLEVR_default_XXXXXX.png          before
    sc_images/CLEVR_semantic_XXXXXX.png      after (semantic change)
    nsc_images/CLEVR_nonsemantic_XXXXXX.png  distractor (viewpoint / illumination only)
    change_captions.json                     {"CLEVR_default_XXXXXX.png": [change captions]}
    no_change_captions.json                  {"CLEVR_default_XXXXXX.png": [no-change captions]}
    splits.json                              {"train": [int ids], "val": [...], "test": [...]}
    type_mapping.json                        {change type: ["XXXXXX.png", ...]}

The Shapes world writes the same layout (``idclab shapes export --task idc`` / :func:`idclab.data.shapes.export_idc`),
so this one loader serves both worlds; a Shapes export's items equal :class:`~idclab.data.shapes.ShapesPairs`'.

Items (the interface of ``ShapesPairs``, consumed by :class:`idclab.models.clip4idc.PairSamples`)::

    dict(before=uint8 [H, W, 3], after=uint8 [H, W, 3], distractor=uint8 [H, W, 3], change_type=str,
         captions=list[str], no_change_captions=list[str], target=None, id="XXXXXX.png")

Ids are the before image's number with ``.png``, as the reference tools write them (RCC's ground-truth merge takes
the part of ``CLEVR_default_XXXXXX.png`` after the last underscore; CLIP4IDC's loader returns ``"%s.png"``), so
result files of idclab and of those projects line up. :func:`scene_number` and
:func:`~idclab.data._common.png_id` also read the older idclab form without ``.png`` ("XXXXXX", "XXXXXX_n").

Images: CLEVR's PNGs are RGBA. They are read by :func:`idclab.backbones.load_image`, which composites RGBA onto a
white background (CLEVR's alpha is opaque, so this only drops the channel). ``image_size`` squashes every image to
a square with bicubic interpolation, no crop (CLIP4IDC's preprocessing); ``None`` keeps the original 480 x 320.

Change types come from ``type_mapping.json``. RCC's loader names the texture change ``material``
(``datasets/rcc_dataset.py``, ``type_to_label``); papers' tables and the Shapes world call it ``texture``, so
``material`` is read as ``texture``. Keys that are not a change type (``distractor``, ``no_change``,
``nonsemantic``) are skipped if present.

Evaluation (:meth:`CLEVRChange.references`): CLIP4IDC's "Total" setting scores the captions of both pairs of every
test scene as one corpus. Its ground truth, ``gt/clevr_total_change_captions_reformat.json`` in the CLIP4IDC
repository (listed in its README), is built by RCC's ``utils/eval_utils.py``: COCO format, the change pair under
``XXXXXX.png``, the distractor pair under ``XXXXXX.png_n`` with the no-change captions as references, every scene
of every split in one file. ``python data_scripts/clevr_change.py prepare`` writes the same structure for one
split. ``groups`` gives each id its change type (``distractor`` for ``_n`` ids), so
:func:`idclab.metrics.captioning.score_captions_by_group` re-scores each type as its own corpus (CIDEr-D's idf is
recomputed per subset, as RCC's per-type tables do; CLIP4IDC itself has no per-type breakdown, its issue #5).
"""

from __future__ import annotations

import warnings
from pathlib import Path

from idclab.data._common import NO_CHANGE_SUFFIX, IDCPair, PairDataset, listing, pair_references, read_json

SPLITS = ("train", "val", "test")
CHANGE_TYPES = ("color", "texture", "add", "drop", "move")  # RCC's five; "texture" is RCC's "material"
TYPE_ALIASES = {"material": "texture"}  # type_mapping.json key -> our change type
NOT_A_CHANGE_TYPE = ("distractor", "no_change", "nonsemantic")  # keys of type_mapping.json that we skip if present

# Pairs per split, counting the semantic and the distractor pair of each scene, as third-party summaries of RCC's
# release give them (79,606 pairs = 67,660 + 3,976 + 7,970); not counted here from splits.json.
EXPECTED_PAIRS = {"train": 67_660, "val": 3_976, "test": 7_970}

DOWNLOAD_COMMAND = "python data_scripts/clevr_change.py download --root {root}"
VERIFY_COMMAND = "python data_scripts/clevr_change.py verify --root {root}"
SHAPES_COMMAND = "idclab shapes export --task idc --split {split} --n 200 --out {root}"
_ANNOTATIONS = ("splits.json", "change_captions.json", "no_change_captions.json", "type_mapping.json")


# ----------------------------------------------------------------------------------------------------------------
# Reading the annotations
# ----------------------------------------------------------------------------------------------------------------


def scene_number(id_) -> int:
    """The scene number of an id in any form: 123, "000123", "000123.png", "000123.png_n", "000123_n"."""
    s = str(id_)
    if s.endswith(NO_CHANGE_SUFFIX):
        s = s[: -len(NO_CHANGE_SUFFIX)]
    try:
        return int(s.split(".")[0])
    except ValueError:
        raise ValueError(f"{id_!r} is not a CLEVR-Change id (expected a number such as '000123.png').") from None


def image_paths(root, id_) -> tuple[Path, Path, Path]:
    """(before, after, distractor) paths of scene ``id_`` (int, "XXXXXX" or "XXXXXX.png") under ``root``."""
    root, n = Path(root), scene_number(id_)
    return (root / "images" / f"CLEVR_default_{n:06d}.png", root / "sc_images" / f"CLEVR_semantic_{n:06d}.png",
            root / "nsc_images" / f"CLEVR_nonsemantic_{n:06d}.png")


def read_split(root, split: str) -> list[IDCPair]:
    """The scenes of ``split`` in ``splits.json`` order, one pair each (with its distractor). No image is read.

    Raises:
        ValueError: unknown or empty split; an id without change / no-change captions.
        FileNotFoundError: ``root`` or one of its annotation files is missing (names the download command).
    """
    if split not in SPLITS:
        raise ValueError(f"Unknown CLEVR-Change split {split!r}; use one of {SPLITS}.")
    root = Path(root)
    for name in _ANNOTATIONS:
        if not (root / name).is_file():
            what = f"No CLEVR-Change data at {root}" if not root.is_dir() else f"{root} has no {name}"
            raise FileNotFoundError(
                f"{what}. Download and extract CLEVR-Change with:\n  {DOWNLOAD_COMMAND.format(root=root)}\n"
                f"or write the Shapes stand-in in the same layout:\n  {SHAPES_COMMAND.format(split=split, root=root)}")
    splits = read_json(root / "splits.json")
    ids = [int(i) for i in splits.get(split, [])]
    if not ids:
        raise ValueError(f"Split {split!r} of {root} is empty (splits.json lists {sorted(splits)} with "
                         f"{ {k: len(v) for k, v in splits.items()} } ids); export or download it first.")
    change = read_json(root / "change_captions.json")  # {"CLEVR_default_XXXXXX.png": [str]}
    no_change = read_json(root / "no_change_captions.json")
    type_of = _change_types(read_json(root / "type_mapping.json"))  # {int id: type}
    scenes, no_captions, no_type = [], [], []
    for n in ids:
        key = f"CLEVR_default_{n:06d}.png"
        caps, nc_caps = change.get(key), no_change.get(key)
        if not caps or not nc_caps:
            no_captions.append(key)
            continue
        if n not in type_of:
            no_type.append(n)
        before, after, distractor = image_paths(root, n)
        scenes.append(IDCPair(f"{n:06d}.png", before, after, tuple(caps), change_type=type_of.get(n, "unknown"),
                              distractor=distractor, no_change_captions=tuple(nc_caps)))
    if no_captions:
        raise ValueError(
            f"{len(no_captions)} {split} scenes of {root} have no change or no no-change captions: "
            f"{listing(no_captions)}. The annotation files are incomplete; re-download, then run\n  "
            f"{VERIFY_COMMAND.format(root=root)}")
    if no_type:
        warnings.warn(f"{len(no_type)} {split} scenes are in no change type of type_mapping.json "
                      f"(e.g. {no_type[:5]}); their change_type is 'unknown'.", stacklevel=2)
    return scenes


def references(scenes: list[IDCPair], *, with_no_change: bool = True
               ) -> tuple[dict[str, list[str]], dict[str, str]]:
    """CLIP4IDC's "Total" ground truth: (gts {id: refs}, groups {id: change type or "distractor"}).

    Change pairs under "XXXXXX.png", then the distractor pairs under "XXXXXX.png_n" (with ``with_no_change``).
    """
    return pair_references(scenes, with_no_change=with_no_change)


# ----------------------------------------------------------------------------------------------------------------
# The dataset
# ----------------------------------------------------------------------------------------------------------------


class CLEVRChange(PairDataset):
    """CLEVR-Change scenes of one split (or a Shapes export in its layout) as IDC items (see the module docstring).

    Args:
        root: the folder holding ``images/``, ``sc_images/``, ``nsc_images/`` and the JSON files.
        split: "train", "val" or "test".
        image_size: squash every image to ``image_size`` x ``image_size`` (bicubic, no crop); None keeps the size.

    :meth:`references` gives {"XXXXXX.png": change captions, "XXXXXX.png_n": no-change captions} and their groups
    (change type / "distractor"); caption the (before, distractor) pair for the ``_n`` ids.

    Raises:
        FileNotFoundError: missing data (names the download command) or missing image files (lists them and names
            the verify command); no pair is ever dropped silently.
    """

    def __init__(self, root, split: str, *, image_size: int | None = None):
        super().__init__(root, split, read_split(root, split), name="CLEVR-Change", verify_command=VERIFY_COMMAND,
                         image_size=image_size)


# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------


def _change_types(mapping: dict) -> dict[int, str]:
    type_of: dict[int, str] = {}
    twice = []
    for key, names in mapping.items():
        if key in NOT_A_CHANGE_TYPE:
            continue
        t = TYPE_ALIASES.get(key, key)
        for name in names:
            n = scene_number(name)
            if n in type_of and type_of[n] != t:
                twice.append(n)
                continue
            type_of[n] = t
    if twice:
        warnings.warn(f"{len(twice)} scenes are listed under two change types in type_mapping.json "
                      f"(e.g. {twice[:5]}); the first listed type is used.", stacklevel=3)
    return type_of
