"""CIRCO: composed image retrieval with multiple ground truths on COCO's unlabeled images.

Dataset: Baldrati, Agnolucci, Bertini and Del Bimbo, "Zero-Shot Composed Image Retrieval with Textual Inversion"
(SEARLE), ICCV 2023. Each query is a reference image, a relative caption and the concept reference and targets
share; a query has several correct images (4.16 per val query), scored with mAP@K.
Source: ``annotations/{val,test}.json`` of ``miccunifi/CIRCO`` (GitHub); the gallery is the COCO 2017 **unlabeled**
set (``unlabeled2017.zip``, about 123k images, about 19 GB [unverified], and
``image_info_unlabeled2017.json`` from ``image_info_unlabeled2017.zip``, both from images.cocodataset.org). Fetch
everything with ``python data_scripts/circo.py download --root DIR``.
Licence / terms: CIRCO's annotations CC BY-NC 4.0; the COCO images carry their Flickr licences. Research use; cite;
do not re-host.

On-disk layout (``root`` is the ``CIRCO`` folder)::

    annotations/val.json    [{"id", "reference_img_id", "target_img_id", "relative_caption", "shared_concept",
                              "gt_img_ids": [int, ...], "semantic_aspects": [str, ...]}, ...]   (220 queries)
    annotations/test.json   [{"id", "reference_img_id", "relative_caption", "shared_concept"}, ...] (800 queries)
    COCO2017_unlabeled/annotations/image_info_unlabeled2017.json   {"images": [{"id", "file_name", ...}, ...]}
    COCO2017_unlabeled/unlabeled2017/<12-digit zero-padded id>.jpg

Image names in the benchmark are the COCO ids as decimal strings (``str(int id)``), the names CIRCO's test server
expects. An image-info record without ``file_name`` uses the documented ``<12-digit id>.jpg``.

Evaluation protocol (:func:`load_benchmark`, protocol ``"circo"``): gallery = every image of the image-info file;
the reference is kept in the gallery; mAP@5/10/25/50 over all ground truths (``gt_img_ids``), plus recall of
``target_img_id`` (which equals the first ground truth, checked here). The test split's ground truths are hidden
behind the evaluation server (``circo.micc.unifi.it``): its queries can be ranked and submitted, not scored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from idclab.data._common import listing, read_json
from idclab.data.cir_benchmark import ALL, CIRBenchmark, CIRQuery

SPLITS = ("val", "test")
# [count] of miccunifi/CIRCO's annotation files (counted when this loader was written).
EXPECTED_QUERIES = {"val": 220, "test": 800}
EXPECTED_GT_PER_VAL_QUERY = 4.16  # [count]
EXPECTED_GALLERY = None  # "about 123k" images [unverified exact count]: not compared
IMAGE_DIR = Path("COCO2017_unlabeled") / "unlabeled2017"
IMAGE_INFO = Path("COCO2017_unlabeled") / "annotations" / "image_info_unlabeled2017.json"

DOWNLOAD_COMMAND = "python data_scripts/circo.py download --root {root}"
VERIFY_COMMAND = "python data_scripts/circo.py verify --root {root}"


# ----------------------------------------------------------------------------------------------------------------
# Reading the annotations
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CIRCOQuery:
    id: str  # the query id, as a string
    reference: str  # str(reference_img_id)
    caption: str  # relative_caption
    shared_concept: str
    target: str | None  # str(target_img_id); None in test
    gt: tuple[str, ...]  # str of each gt_img_ids entry, in file order (target first); () in test
    semantic_aspects: tuple[str, ...]  # () in test


def _no_data(root: Path, what: str) -> FileNotFoundError:
    where = f"No CIRCO data at {root}" if not root.is_dir() else f"{root} has no {what}"
    return FileNotFoundError(f"{where}. Fetch CIRCO's annotations and COCO's unlabeled2017 images with\n  "
                             f"{DOWNLOAD_COMMAND.format(root=root)}")


def read_queries(root, split: str) -> list[CIRCOQuery]:
    """The queries of ``split`` in file order. Reads annotations only; images are not touched.

    Raises:
        ValueError: unknown split; an entry without its fields; a val entry whose target_img_id is not its first
            gt_img_ids entry; a query id used twice.
        FileNotFoundError: the annotation file is missing (names the download command).
    """
    if split not in SPLITS:
        raise ValueError(f"Unknown CIRCO split {split!r}; use one of {SPLITS}.")
    root = Path(root)
    path = root / "annotations" / f"{split}.json"
    if not path.is_file():
        raise _no_data(root, f"annotations/{split}.json")
    needed = ("id", "reference_img_id", "relative_caption", "shared_concept")
    if split == "val":
        needed += ("target_img_id", "gt_img_ids")
    queries, bad, not_first, seen, twice = [], [], [], set(), []
    for i, e in enumerate(read_json(path)):
        if any(e.get(k) is None for k in needed) or (split == "val" and not e["gt_img_ids"]):
            bad.append(f"#{i} (id {e.get('id')})")
            continue
        qid = str(e["id"])
        if qid in seen:
            twice.append(qid)
        seen.add(qid)
        gt = tuple(str(int(g)) for g in e.get("gt_img_ids", ()))
        target = str(int(e["target_img_id"])) if split == "val" else None
        if split == "val" and target != gt[0]:
            not_first.append(f"{qid} (target {target}, gt {list(gt[:3])})")
        queries.append(CIRCOQuery(qid, str(int(e["reference_img_id"])), str(e["relative_caption"]),
                                  str(e["shared_concept"]), target, gt,
                                  tuple(str(a) for a in e.get("semantic_aspects", ()))))
    if bad:
        raise ValueError(f"{len(bad)} entries of {path} lack one of {needed} (or have no gt_img_ids): "
                         f"{listing(bad)}. Download the file again with\n  {DOWNLOAD_COMMAND.format(root=root)}")
    if not_first:
        raise ValueError(f"{len(not_first)} queries of {path} have a target_img_id that is not their first "
                         f"gt_img_ids entry (CIRCO's files always have it first): {listing(not_first)}.")
    if twice:
        raise ValueError(f"{path} uses {len(twice)} query ids twice ({listing(twice)}); ids must be unique.")
    return queries


def read_image_info(root) -> dict[str, str]:
    """{str(COCO id): file name} of ``image_info_unlabeled2017.json``, in file order.

    Raises:
        FileNotFoundError: the file is missing. ValueError: an id listed twice.
    """
    root = Path(root)
    path = root / IMAGE_INFO
    if not path.is_file():
        raise _no_data(root, str(IMAGE_INFO))
    files: dict[str, str] = {}
    twice = []
    for im in read_json(path)["images"]:
        name = str(int(im["id"]))
        if name in files:
            twice.append(name)
        files[name] = im.get("file_name") or f"{int(im['id']):012d}.jpg"
    if twice:
        raise ValueError(f"{path} lists {len(twice)} image ids twice ({listing(twice)}); download it again.")
    return files


def not_in_gallery(queries: list[CIRCOQuery], gallery) -> list[str]:
    """Sorted image ids used by ``queries`` (reference, ground truths) that are not in ``gallery``."""
    names = set(gallery)
    used = {n for q in queries for n in (q.reference, *q.gt)}
    return sorted(used - names, key=int)


def missing_images(root, files: dict[str, str]) -> list[str]:
    """The ids of ``files`` ({id: file name}) whose file is not in ``root/COCO2017_unlabeled/unlabeled2017``.

    One ``os.scandir`` of the folder (123k entries), not one ``stat`` per image.
    """
    folder = Path(root) / IMAGE_DIR
    present: set[str] = set()
    if folder.is_dir():
        with os.scandir(folder) as it:
            present = {entry.name for entry in it}
    return [i for i, name in files.items() if name not in present]


# ----------------------------------------------------------------------------------------------------------------
# The benchmark
# ----------------------------------------------------------------------------------------------------------------


def load_benchmark(root, split: str = "val", *, check_files: bool = True) -> CIRBenchmark:
    """CIRCO ``split`` as a :class:`~idclab.cir.CIRBenchmark` (protocol ``"circo"``).

    One gallery "all" = every image id of the image-info file (in its order, names str(int id)); one query per
    entry: id str(id), reference str(reference_img_id), kind "cirr", fields {"caption": relative_caption,
    "shared_concept": shared_concept}, targets = the gt_img_ids as strings (val) or () (test).

    Raises:
        ValueError: a reference or ground truth that is not in the gallery (listed); see also :func:`read_queries`.
        FileNotFoundError (with ``check_files``): image files missing (listed by id with their count).
    """
    root = Path(root)
    queries = read_queries(root, split)
    files = read_image_info(root)  # {id: file name}
    absent = not_in_gallery(queries, files)
    if absent:
        raise ValueError(f"{len(absent)} reference / ground-truth ids of CIRCO {split} are not in {IMAGE_INFO}: "
                         f"{listing(absent)}. The annotations do not match the image list; download both again "
                         f"with\n  {DOWNLOAD_COMMAND.format(root=root)}")
    missing = missing_images(root, files)
    if check_files and missing:
        raise FileNotFoundError(
            f"{len(missing)} of the {len(files)} gallery images of CIRCO are missing under {root / IMAGE_DIR} "
            f"(by COCO id): {listing(missing)}. Nothing was dropped. List them all with\n  "
            f"{VERIFY_COMMAND.format(root=root)}\nand fetch unlabeled2017 with\n  {DOWNLOAD_COMMAND.format(root=root)}")
    images = {i: root / IMAGE_DIR / name for i, name in files.items()}
    cir_queries = [CIRQuery(id=q.id, reference=q.reference, kind="cirr",
                            fields={"caption": q.caption, "shared_concept": q.shared_concept}, targets=q.gt,
                            group=ALL, gallery=ALL) for q in queries]
    n_gt = sum(len(q.gt) for q in queries)
    info = dict(queries=len(queries), gallery=len(files), missing_images=len(missing),
                expected_queries=EXPECTED_QUERIES[split],
                ground_truths_per_query=round(n_gt / len(queries), 2) if queries and n_gt else None,
                hidden_targets=split == "test")
    return CIRBenchmark(name="circo", split=split, protocol="circo", images=images, galleries={ALL: tuple(files)},
                        queries=cir_queries, root=root, info=info)
