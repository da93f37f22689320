"""FashionIQ: composed image retrieval of fashion products (Pic2Word's and the Combiner's fashion benchmark).

Dataset: Wu, Gao, Guo, Al-Halah, Rennie, Grauman and Feris, "Fashion IQ: A New Dataset Towards Retrieving Images by
Natural Language Feedback", CVPR 2021. Triplets (candidate product, two relative captions, target product) in three
categories, dress, shirt and toptee; images are Amazon product photos named by their ASIN.
Source: annotations ``captions/`` and ``image_splits/`` of ``XiaoxiaoGuo/fashion-iq`` (GitHub); image URL lists
``image_url/asin2url.{category}.txt`` of ``hongwang600/fashion-iq-metadata``. Many of those Amazon URLs are dead,
and some answer with an empty file. Community copies exist (the Drive / Yandex reshares linked from
XiaoxiaoGuo/fashion-iq issue #18, the Hugging Face dataset ``Plachta/FashionIQ``), but none is known to be complete:
users report mirrors with images missing. Fetch what can be scripted with
``python data_scripts/fashioniq.py download --root DIR`` (or pass a mirror's archive with ``--archive``), then let
``verify`` list what is still missing.
Licence / terms: annotations under CDLA (the variant is not stated); images are Amazon product photos (Amazon
copyright). Research use with citation; do not re-host.

On-disk layout (``root`` is the ``fashionIQ_dataset`` folder; ``cat`` one of dress, shirt, toptee)::

    captions/cap.{cat}.{train,val,test}.json   [{"target": ASIN, "candidate": ASIN, "captions": [c1, c2]}, ...]
                                               (test has no "target"); Pic2Word's code reads a ``json/`` folder
                                               instead of ``captions/``: either is accepted (``captions/`` first)
    image_splits/split.{cat}.{split}.json      [ASIN, ...]: the images of that category and split
    images/<ASIN>.png  or  images/<ASIN>.jpg   one image per ASIN (Pic2Word / CosMo use .png, SEARLE .jpg)

Images are indexed by ASIN **globally**: 3,302 ASINs appear in two categories' split files (mostly shirt <-> toptee),
so the 77,683 entries of the nine split files are 74,381 unique images: that is the size of a complete image set.
If an ASIN has both a ``.png`` and a ``.jpg`` file, the ``.png`` is used; an empty (0-byte) file counts as missing.
Some product photos are PNGs with an alpha channel. By default (``alpha="drop"``) it is discarded and the colours
stored under it are kept, as the reference loaders of CLIP4Cir and Pic2Word read them (PIL's ``convert("RGB")``);
``alpha="white"`` composites them onto white instead, the way idclab reads other datasets' RGBA images.

Evaluation protocol (:func:`load_benchmark`, protocol ``"fashioniq"``): per category, the gallery is **every** image
of ``split.{cat}.{split}.json`` (the "original" protocol: 3,817 / 6,346 / 5,373 val images), not the smaller union of
references and targets some supervised papers use; the reference stays in the gallery; R@10 / R@50 per category and
their means. Every triplet is a query: a triplet whose image is missing is an error, never dropped (Pic2Word's loader
silently skips unreadable images, which shrinks the number of queries recall is averaged over). The test split has
no targets (queries can be ranked, not scored); everyone reports on val.

Training items (:class:`FashionIQTriplets`, for supervised training such as the Combiner)::

    dict(reference=uint8 [H, W, 3], target=uint8 [H, W, 3], captions=[c1, c2], category=str, id="<category>/<index>")
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from idclab.data._common import check_image_size, listing, position, read_image, read_json
from idclab.data.cir_benchmark import CIRBenchmark, CIRQuery
from idclab.images import ALPHA, ImageFile

CATEGORIES = ("dress", "shirt", "toptee")
SPLITS = ("train", "val", "test")
CAPTION_DIRS = ("captions", "json")  # the official name, then Pic2Word's
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # in order of preference when an ASIN has several files

# Counted from the annotation files of XiaoxiaoGuo/fashion-iq (commit f71b16c).
EXPECTED_TRIPLETS = {
    "train": {"dress": 5_985, "shirt": 5_988, "toptee": 6_027},
    "val": {"dress": 2_017, "shirt": 2_038, "toptee": 1_961},
    "test": {"dress": 2_024, "shirt": 2_038, "toptee": 2_056},
}
EXPECTED_IMAGES = {  # entries of split.{cat}.{split}.json = the gallery sizes
    "train": {"dress": 11_452, "shirt": 19_036, "toptee": 16_121},
    "val": {"dress": 3_817, "shirt": 6_346, "toptee": 5_373},
    "test": {"dress": 3_818, "shirt": 6_346, "toptee": 5_374},
}
EXPECTED_SPLIT_ENTRIES = 77_683  # entries of the nine split files together
EXPECTED_UNIQUE_ASINS = 74_381  # unique ASINs over all splits and categories: the complete image set

DOWNLOAD_COMMAND = "python data_scripts/fashioniq.py download --root {root}"
VERIFY_COMMAND = "python data_scripts/fashioniq.py verify --root {root}"
MIRRORS = ("a community copy (the reshares linked from github.com/XiaoxiaoGuo/fashion-iq/issues/18, or the Hugging "
           "Face dataset Plachta/FashionIQ; none is known to be complete); pass its archive with --archive")


# ----------------------------------------------------------------------------------------------------------------
# Reading the annotations
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FashionIQTriplet:
    id: str  # "<category>/<index in cap.{category}.{split}.json>"
    category: str
    candidate: str  # ASIN of the reference (FashionIQ calls it the candidate)
    target: str | None  # ASIN; None in the test split
    captions: tuple[str, ...]  # the two relative captions, in file order


def _check(split: str, category: str | None = None) -> None:
    if split not in SPLITS:
        raise ValueError(f"Unknown FashionIQ split {split!r}; use one of {SPLITS}.")
    if category is not None and category not in CATEGORIES:
        raise ValueError(f"Unknown FashionIQ category {category!r}; use one of {CATEGORIES}.")


def _no_data(root: Path, what: str) -> FileNotFoundError:
    where = f"No FashionIQ data at {root}" if not root.is_dir() else f"{root} has no {what}"
    return FileNotFoundError(f"{where}. Fetch the annotations (and what can be fetched of the images) with\n  "
                             f"{DOWNLOAD_COMMAND.format(root=root)}")


def caption_path(root, split: str, category: str) -> Path:
    """``captions/cap.{category}.{split}.json``, or the same file under ``json/`` (Pic2Word's folder name)."""
    _check(split, category)
    root = Path(root)
    name = f"cap.{category}.{split}.json"
    for folder in CAPTION_DIRS:
        if (root / folder / name).is_file():
            return root / folder / name
    raise _no_data(root, f"captions/{name} (nor json/{name})")


def read_triplets(root, split: str, category: str) -> list[FashionIQTriplet]:
    """The triplets of one category and split, in file order. Reads annotations only; images are not touched.

    Raises:
        ValueError: unknown split / category; an entry without a candidate, a target (train / val) or captions.
        FileNotFoundError: the caption file is missing (names the download command).
    """
    path = caption_path(root, split, category)
    entries = read_json(path)  # [{"target", "candidate", "captions"}]
    triplets, bad = [], []
    for i, e in enumerate(entries):
        target = e.get("target")
        if not e.get("candidate") or not e.get("captions") or (split != "test" and not target):
            bad.append(i)
            continue
        triplets.append(FashionIQTriplet(f"{category}/{i}", category, str(e["candidate"]),
                                         str(target) if target else None, tuple(str(c) for c in e["captions"])))
    if bad:
        raise ValueError(f"{len(bad)} entries of {path} lack a candidate, a target or captions (indices "
                         f"{listing(bad)}). The file is damaged; download it again with\n  "
                         f"{DOWNLOAD_COMMAND.format(root=Path(root))}")
    return triplets


def read_image_split(root, split: str, category: str) -> list[str]:
    """The ASINs of ``image_splits/split.{category}.{split}.json``, in file order (= the category's gallery).

    Raises:
        ValueError: the file lists an ASIN twice (the released files do not).
    """
    _check(split, category)
    root = Path(root)
    path = root / "image_splits" / f"split.{category}.{split}.json"
    if not path.is_file():
        raise _no_data(root, f"image_splits/{path.name}")
    asins = [str(a) for a in read_json(path)]
    seen, twice = set(), []
    for a in asins:
        if a in seen:
            twice.append(a)
        seen.add(a)
    if twice:
        raise ValueError(f"{path} lists {len(twice)} ASINs twice ({listing(twice)}); a gallery must not hold "
                         f"duplicates. Download the file again.")
    return asins


def image_index(root) -> dict[str, Path]:
    """{ASIN: image path} of every image in ``root/images`` (one directory scan; ``.png`` preferred over ``.jpg``).

    Empty (0-byte) files are left out: some dead Amazon URLs answer with one, and it is as missing as no file.
    """
    folder = Path(root) / "images"
    if not folder.is_dir():
        return {}
    found: dict[str, tuple[int, Path]] = {}  # ASIN -> (preference rank, path)
    with os.scandir(folder) as it:
        for entry in it:
            stem, suffix = os.path.splitext(entry.name)
            rank = IMAGE_SUFFIXES.index(suffix.lower()) if suffix.lower() in IMAGE_SUFFIXES else None
            if rank is not None and (stem not in found or rank < found[stem][0]) and entry.stat().st_size > 0:
                found[stem] = (rank, folder / entry.name)
    return {asin: path for asin, (_, path) in found.items()}


def not_in_gallery(triplets: Sequence[FashionIQTriplet], gallery: Sequence[str]) -> list[str]:
    """"<id>: candidate|target ASIN" for every candidate or target of ``triplets`` that is not in ``gallery``."""
    names = set(gallery)
    out = []
    for t in triplets:
        for role, asin in (("candidate", t.candidate), ("target", t.target)):
            if asin is not None and asin not in names:
                out.append(f"{t.id}: {role} {asin}")
    return out


def missing_images(root, asins: Sequence[str], index: dict[str, Path] | None = None) -> list[str]:
    """The ASINs of ``asins`` (duplicates removed, order kept) that have no image file under ``root/images``."""
    index = image_index(root) if index is None else index
    return [a for a in dict.fromkeys(asins) if a not in index]


def _missing_error(root: Path, missing: list[str], what: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{len(missing)} images of {what} are missing under {root / 'images'} (<ASIN>.png or .jpg): "
        f"{listing(missing)}. Nothing was dropped. List them all with\n  {VERIFY_COMMAND.format(root=root)}\n"
        f"and fetch them with\n  {DOWNLOAD_COMMAND.format(root=root)}\nor, where the Amazon URLs are dead, from "
        f"{MIRRORS}.")


# ----------------------------------------------------------------------------------------------------------------
# The benchmark
# ----------------------------------------------------------------------------------------------------------------


def load_benchmark(root, split: str = "val", *, categories: Sequence[str] = CATEGORIES,
                   check_files: bool = True, alpha: str = "drop") -> CIRBenchmark:
    """FashionIQ ``split`` as a :class:`~idclab.cir.CIRBenchmark` (protocol ``"fashioniq"``).

    One gallery per category (key = category, the ASINs of ``split.{cat}.{split}.json`` in file order); one query per
    triplet: id "<category>/<index>", reference = candidate ASIN, kind "fashioniq", fields {"cap1", "cap2"},
    targets (target ASIN,) (empty for test), group = gallery = category. ``images`` maps each ASIN to its file, an
    :class:`~idclab.images.ImageFile` read with ``alpha`` ("drop": the reference's; "white": composite on white).

    Raises:
        ValueError: a candidate or target that is not in its category's gallery (listed); a triplet without exactly
            two captions.
        FileNotFoundError (with ``check_files``): image files missing for gallery, candidate or target ASINs
            (listed by ASIN with their count; names the verify and download commands).
    """
    _check(split)
    categories = tuple(categories)
    for c in categories:
        _check(split, c)
    if not categories:
        raise ValueError(f"categories must name at least one of {CATEGORIES}.")
    root = Path(root)
    galleries: dict[str, tuple[str, ...]] = {}
    queries: list[CIRQuery] = []
    outside, not_two = [], []
    counts = {}
    for cat in categories:
        gallery = read_image_split(root, split, cat)
        triplets = read_triplets(root, split, cat)
        outside += not_in_gallery(triplets, gallery)
        galleries[cat] = tuple(gallery)
        for t in triplets:
            if len(t.captions) != 2:
                not_two.append(f"{t.id} ({len(t.captions)})")
                continue
            queries.append(CIRQuery(id=t.id, reference=t.candidate, kind="fashioniq",
                                    fields={"cap1": t.captions[0], "cap2": t.captions[1]},
                                    targets=(t.target,) if t.target is not None else (), group=cat, gallery=cat))
        counts[cat] = dict(triplets=len(triplets), gallery=len(gallery))
    if outside:
        raise ValueError(f"{len(outside)} candidates / targets of FashionIQ {split} are not in their category's "
                         f"gallery (image_splits/split.<category>.{split}.json): {listing(outside)}. The annotation "
                         f"files do not match; download them again with\n  {DOWNLOAD_COMMAND.format(root=root)}")
    if not_two:
        raise ValueError(f"{len(not_two)} triplets of FashionIQ {split} do not have exactly two captions: "
                         f"{listing(not_two)}.")
    # Every needed ASIN (all gallery images; candidates and targets are in the galleries, checked above).
    needed = list(dict.fromkeys(a for cat in categories for a in galleries[cat]))
    index = image_index(root)
    missing = [a for a in needed if a not in index]
    if check_files and missing:
        raise _missing_error(root, missing, f"FashionIQ {split} ({', '.join(categories)})")
    # Without check_files, a missing ASIN points at its .png name (the harness lists it if it cannot read it).
    images = {a: ImageFile(index.get(a, root / "images" / f"{a}.png"), alpha) for a in needed}
    info = dict(categories=counts, unique_images=len(needed), missing_images=len(missing), alpha=alpha,
                expected_triplets={c: EXPECTED_TRIPLETS[split][c] for c in categories},
                expected_gallery={c: EXPECTED_IMAGES[split][c] for c in categories},
                note="gallery = all of split.<category>.<split>.json ('original' protocol); reference kept")
    return CIRBenchmark(name="fashioniq", split=split, protocol="fashioniq", images=images, galleries=galleries,
                        queries=queries, root=root, info=info)


# ----------------------------------------------------------------------------------------------------------------
# The training dataset
# ----------------------------------------------------------------------------------------------------------------


class FashionIQTriplets(Dataset):
    """FashionIQ triplets of one split as training items (see the module docstring).

    Args:
        root: the ``fashionIQ_dataset`` folder.
        split: "train" or "val" ("test" has no targets).
        categories: which categories to include, concatenated in this order.
        image_size: squash every image to ``image_size`` x ``image_size`` (bicubic, no crop); None keeps the size.
        alpha: what happens to an alpha channel: "drop" (the reference loaders) or "white" (composite on white).

    Raises:
        ValueError: the test split (no targets).
        FileNotFoundError: missing annotation files, or image files (listed by ASIN; never dropped).
    """

    def __init__(self, root, split: str, *, categories: Sequence[str] = CATEGORIES, image_size: int | None = None,
                 alpha: str = "drop"):
        _check(split)
        if alpha not in ALPHA:
            raise ValueError(f"alpha must be one of {ALPHA} (drop the alpha channel, or composite on white); "
                             f"got {alpha!r}.")
        self.alpha = alpha
        if split == "test":
            raise ValueError("FashionIQ's test split has no targets, so it cannot give training triplets; use "
                             "'train' or 'val'.")
        self.root, self.split, self.categories = Path(root), split, tuple(categories)
        self.image_size = check_image_size(image_size)
        self.triplets = [t for c in self.categories for t in read_triplets(self.root, split, c)]
        self.index = image_index(self.root)  # {ASIN: Path}
        missing = missing_images(self.root, [a for t in self.triplets for a in (t.candidate, t.target)], self.index)
        if missing:
            raise _missing_error(self.root, missing, f"FashionIQ {split} triplets ({len(self.triplets)})")
        self.ids = [t.id for t in self.triplets]  # list[str], "<category>/<index>"

    def __len__(self) -> int:
        return len(self.triplets)

    def __getitem__(self, i: int) -> dict:
        t = self.triplets[position(i, len(self))]
        return dict(reference=self._image(t.candidate), target=self._image(t.target), captions=list(t.captions),
                    category=t.category, id=t.id)

    def _image(self, asin: str) -> np.ndarray:
        return read_image(self.index[asin], image_size=self.image_size, alpha=self.alpha)

    def __repr__(self) -> str:
        return (f"FashionIQTriplets(root={str(self.root)!r}, split={self.split!r}, categories={self.categories}, "
                f"n={len(self)}, image_size={self.image_size})")
