"""CIRR: composed image retrieval on real-life images (Pic2Word's and the Combiner's open-domain benchmark).

Dataset: Liu, Rodriguez-Opazo, Teney and Gould, "Image Retrieval on Real-life Images with Pre-trained
Vision-and-Language Models", ICCV 2021. Each query is a reference image and a relative caption; the target is one
image of the split. Every query also names an image set of 6 visually similar images (reference and target among
them) for the R_subset metric.
Source: annotations ``captions/`` and ``image_splits/`` of ``Cuberick-Orion/CIRR``, branch ``cirr_dataset``
(``python data_scripts/cirr.py download --root DIR`` fetches them). The images are NLVR2's raw images and **cannot be
downloaded by script**: request them with the NLVR2 request form (github.com/lil-lab/nlvr, ``nlvr2/``); if the NLVR
team does not answer, the CIRR README (Oct 2024) says to email the CIRR authors after filling in the form.
Licence / terms: annotations MIT; the images are not licensed by CIRR (NLVR2's terms apply). Research use; cite; do
not re-host.

On-disk layout (``root`` is the ``cirr_dataset`` folder, as CLIP4Cir expects it)::

    cirr/captions/cap.rc2.{train,val,test1}.json
        [{"pairid": int, "reference": name, "target_hard": name, "target_soft": {name: score}, "caption": str,
          "img_set": {"id": int, "members": [6 names], "reference_rank": int, "target_rank": int}}, ...]
        (test1 has no target_hard / target_soft / ranks)
    cirr/image_splits/split.rc2.{train,val,test1}.json   {name: "./dev/dev-1-0-img0.png", ...} resolved against root
    train/<n>/train-*.png, dev/dev-*.png, test1/test1-*.png   the images (the CIRR README puts these folders under
                                                            img_raw/; move them up to root)

Splits are "train", "val" and "test1" ("test" is accepted for "test1"). Counts [count: from the annotation files
of ``Cuberick-Orion/CIRR`` @ 2276fba]: queries 28,225 [unverified] / 4,181 / 4,148 and images 16,939 / 2,297 / 2,315.

The Shapes world writes the same layout (``idclab shapes export --task cir`` / :func:`idclab.data.shapes.export_cir`,
marked by a ``shapes_meta.json`` at root), adding "task" and "domain" to each entry and keeping targets in test1.
This loader reads it as protocol ``"shapes"`` with group = task.

Evaluation protocol (:func:`load_benchmark`, protocol ``"cirr"``): gallery = every image of the split file; the
query's reference is removed from the ranking; R@1/5/10/50 and R_subset@1/2/3 within the 6 members (5 once the
reference is removed). test1's targets are hidden behind the evaluation server: its queries can be ranked and
submitted, not scored.

Training items (:class:`CIRRTriplets`)::

    dict(reference=uint8 [H, W, 3], target=uint8 [H, W, 3], caption=str, id=str(pairid))
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from idclab.data._common import check_image_size, listing, position, read_image, read_json
from idclab.data.cir_benchmark import ALL, CIRBenchmark, CIRQuery

SPLITS = ("train", "val", "test1")
SPLIT_ALIASES = {"test": "test1"}
N_MEMBERS = 6  # images per img_set (reference and target included)
# [count] of Cuberick-Orion/CIRR @ 2276fba (its annotation files); train queries [unverified]: the CIRR paper's figure.
EXPECTED_QUERIES = {"train": 28_225, "val": 4_181, "test1": 4_148}
EXPECTED_IMAGES = {"train": 16_939, "val": 2_297, "test1": 2_315}
SHAPES_META = "shapes_meta.json"

DOWNLOAD_COMMAND = "python data_scripts/cirr.py download --root {root}"
VERIFY_COMMAND = "python data_scripts/cirr.py verify --root {root}"
SHAPES_COMMAND = "idclab shapes export --task cir --split {split} --n 200 --out {root}"
IMAGES_STEP = ("CIRR's images are NLVR2's raw images and cannot be downloaded by script: request them with the NLVR2 "
               "form (github.com/lil-lab/nlvr, nlvr2/), email the CIRR authors if there is no answer (CIRR README), "
               "then put the train/, dev/ and test1/ folders directly under {root} (not under img_raw/).")


# ----------------------------------------------------------------------------------------------------------------
# Reading the annotations
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CIRRQuery:
    pairid: int
    reference: str  # image name (a key of the split file)
    target: str | None  # target_hard; None in the real test1
    caption: str
    members: tuple[str, ...]  # img_set members: 6 names, reference (and target) included
    task: str | None = None  # Shapes export only: "attribute", "object" or "domain"
    domain: str | None = None  # Shapes export only: the target style of a "domain" query


def canonical_split(split: str) -> str:
    """"train", "val" or "test1" ("test" -> "test1")."""
    split = SPLIT_ALIASES.get(split, split)
    if split not in SPLITS:
        raise ValueError(f"Unknown CIRR split {split!r}; use one of {SPLITS} (or 'test' for 'test1').")
    return split


def is_shapes_export(root) -> bool:
    return (Path(root) / SHAPES_META).is_file()


def _annotation(root: Path, folder: str, name: str, split: str) -> Path:
    path = root / "cirr" / folder / name
    if not path.is_file():
        where = f"No CIRR data at {root}" if not root.is_dir() else f"{root} has no cirr/{folder}/{name}"
        shapes_split = "test" if split == "test1" else split
        raise FileNotFoundError(
            f"{where}. Fetch CIRR's annotations with\n  {DOWNLOAD_COMMAND.format(root=root)}\n"
            f"or write the Shapes stand-in in the same layout:\n  "
            f"{SHAPES_COMMAND.format(split=shapes_split, root=root)}")
    return path


def read_image_split(root, split: str) -> dict[str, Path]:
    """{image name: path} of ``cirr/image_splits/split.rc2.{split}.json`` (paths resolved against ``root``)."""
    split = canonical_split(split)
    root = Path(root)
    mapping = read_json(_annotation(root, "image_splits", f"split.rc2.{split}.json", split))  # {name: "./dev/..."}
    return {str(name): root / rel for name, rel in mapping.items()}


def read_queries(root, split: str) -> list[CIRRQuery]:
    """The queries of ``split`` in file order. Reads annotations only; images are not touched.

    Raises:
        ValueError: unknown split; an entry without reference or caption, a train / val entry without target, an
            img_set without 6 members or without its reference, a pairid used twice.
        FileNotFoundError: the caption file is missing (names the download command).
    """
    split = canonical_split(split)
    root = Path(root)
    path = _annotation(root, "captions", f"cap.rc2.{split}.json", split)
    queries, bad, seen, twice = [], [], set(), []
    for i, e in enumerate(read_json(path)):
        members = tuple(str(m) for m in e.get("img_set", {}).get("members", ()))
        target = e.get("target_hard")
        if (e.get("reference") is None or e.get("caption") is None or len(members) != N_MEMBERS
                or str(e["reference"]) not in members or (split != "test1" and target is None)):
            bad.append(f"#{i} (pairid {e.get('pairid')})")
            continue
        pairid = int(e["pairid"])
        if pairid in seen:
            twice.append(pairid)
        seen.add(pairid)
        queries.append(CIRRQuery(pairid, str(e["reference"]), str(target) if target is not None else None,
                                 str(e["caption"]), members, e.get("task"), e.get("domain")))
    if bad:
        raise ValueError(f"{len(bad)} entries of {path} lack a reference, caption or target, or an img_set of "
                         f"{N_MEMBERS} members holding the reference: {listing(bad)}. The file is damaged; download "
                         f"it again with\n  {DOWNLOAD_COMMAND.format(root=root)}")
    if twice:
        raise ValueError(f"{path} uses {len(twice)} pairids twice ({listing(twice)}); ids must be unique.")
    return queries


def not_in_gallery(queries: list[CIRRQuery], gallery) -> list[str]:
    """Sorted names used by ``queries`` (reference, target, members) that are not in ``gallery``."""
    names = set(gallery)
    used = {n for q in queries for n in (q.reference, q.target, *q.members) if n is not None}
    return sorted(used - names)


def missing_files(paths) -> list[Path]:
    """The paths of ``paths`` that do not exist, in order (one directory listing per folder)."""
    listings: dict[Path, set[str]] = {}

    def exists(path: Path) -> bool:
        if path.parent not in listings:
            listings[path.parent] = set(os.listdir(path.parent)) if path.parent.is_dir() else set()
        return path.name in listings[path.parent]

    return [p for p in paths if not exists(p)]


def _missing_error(root: Path, split: str, names: list[str], what: str) -> FileNotFoundError:
    shapes_split = "test" if split == "test1" else split
    fix = (f"Re-run the Shapes export:\n  {SHAPES_COMMAND.format(split=shapes_split, root=root)}"
           if is_shapes_export(root) else IMAGES_STEP.format(root=root))
    return FileNotFoundError(f"{len(names)} image files of {what} are missing under {root}: {listing(names)}. Nothing "
                             f"was dropped. List them all with\n  {VERIFY_COMMAND.format(root=root)}\n{fix}")


# ----------------------------------------------------------------------------------------------------------------
# The benchmark
# ----------------------------------------------------------------------------------------------------------------


def load_benchmark(root, split: str = "val", *, check_files: bool = True) -> CIRBenchmark:
    """CIRR ``split`` (or a Shapes export in CIRR's layout) as a :class:`~idclab.cir.CIRBenchmark`.

    Protocol ``"cirr"`` (``"shapes"`` for a Shapes export); one gallery "all" = every image of the split file, sorted
    by name; one query per entry: id str(pairid), kind "cirr", fields {"caption"}, targets (target_hard,) or () when
    hidden (real test1), subset = the 6 img_set members, group = the entry's "task" (Shapes) or "all".

    Raises:
        ValueError: a reference, target or member that is not in the split file (listed).
        FileNotFoundError (with ``check_files``): missing image files (listed by name with their count; names the
            manual NLVR2 step, or the Shapes export).
    """
    split = canonical_split(split)
    root = Path(root)
    paths = read_image_split(root, split)
    queries = read_queries(root, split)
    absent = not_in_gallery(queries, paths)
    if absent:
        raise ValueError(f"{len(absent)} images named by CIRR {split} queries (reference, target or img_set member) "
                         f"are not in cirr/image_splits/split.rc2.{split}.json: {listing(absent)}. The annotation "
                         f"files do not match; download them again with\n  {DOWNLOAD_COMMAND.format(root=root)}")
    names = sorted(paths)
    missing = missing_files([paths[n] for n in names])
    if check_files and missing:
        by_path = {p: n for n, p in paths.items()}
        raise _missing_error(root, split, [by_path[p] for p in missing], f"CIRR {split} ({len(names)} images)")
    shapes = is_shapes_export(root)
    # A Shapes export's domain-task entries carry their target style: they become "domain" queries, as in
    # idclab.cir.shapes_benchmark (Pic2Word then uses "a {domain} of *"); the caption is kept for other methods.
    cir_queries = [CIRQuery(id=str(q.pairid), reference=q.reference, kind="domain" if q.domain else "cirr",
                            fields={"caption": q.caption, **({"domain": q.domain} if q.domain else {})},
                            targets=(q.target,) if q.target is not None else (), subset=q.members,
                            group=q.task if q.task else ALL, gallery=ALL) for q in queries]
    info = dict(queries=len(queries), images=len(names), missing_images=len(missing),
                expected_queries=None if shapes else EXPECTED_QUERIES[split],
                expected_images=None if shapes else EXPECTED_IMAGES[split],
                hidden_targets=sum(1 for q in queries if q.target is None))
    if shapes:
        info["shapes_meta"] = read_json(root / SHAPES_META)
    return CIRBenchmark(name="shapes" if shapes else "cirr", split=split, protocol="shapes" if shapes else "cirr",
                        images=dict(paths), galleries={ALL: tuple(names)}, queries=cir_queries, root=root, info=info)


# ----------------------------------------------------------------------------------------------------------------
# The training dataset
# ----------------------------------------------------------------------------------------------------------------


class CIRRTriplets(Dataset):
    """CIRR (or Shapes-export) triplets of one split as training items (see the module docstring).

    Args:
        root: the ``cirr_dataset`` folder.
        split: "train" or "val" (a Shapes export's test1 also has targets; the real test1 does not).
        image_size: squash every image to ``image_size`` x ``image_size`` (bicubic, no crop); None keeps the size.

    Raises:
        ValueError: a split whose targets are hidden.
        FileNotFoundError: missing annotations, or image files (listed by name; never dropped).
    """

    def __init__(self, root, split: str, *, image_size: int | None = None):
        self.root, self.split = Path(root), canonical_split(split)
        self.image_size = check_image_size(image_size)
        self.queries = read_queries(self.root, self.split)
        hidden = [q.pairid for q in self.queries if q.target is None]
        if hidden:
            raise ValueError(f"{len(hidden)} CIRR {self.split} queries have no target (hidden behind the test "
                             f"server), so they cannot give training triplets; use 'train' or 'val'.")
        self.paths = read_image_split(self.root, self.split)  # {name: Path}
        absent = not_in_gallery(self.queries, self.paths)
        if absent:
            raise ValueError(f"{len(absent)} images named by CIRR {self.split} queries are not in its split file: "
                             f"{listing(absent)}.")
        used = list(dict.fromkeys(n for q in self.queries for n in (q.reference, q.target)))
        missing = missing_files([self.paths[n] for n in used])
        if missing:
            by_path = {p: n for n, p in self.paths.items()}
            raise _missing_error(self.root, self.split, [by_path[p] for p in missing],
                                 f"CIRR {self.split} triplets ({len(self.queries)})")
        self.ids = [str(q.pairid) for q in self.queries]

    def __len__(self) -> int:
        return len(self.queries)

    def __getitem__(self, i: int) -> dict:
        q = self.queries[position(i, len(self))]
        return dict(reference=self._image(q.reference), target=self._image(q.target), caption=q.caption,
                    id=str(q.pairid))

    def _image(self, name: str) -> np.ndarray:
        return read_image(self.paths[name], image_size=self.image_size)

    def __repr__(self) -> str:
        return f"CIRRTriplets(root={str(self.root)!r}, split={self.split!r}, n={len(self)}, " \
               f"image_size={self.image_size})"
