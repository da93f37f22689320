"""ImageNet -> ImageNet-R domain conversion, Pic2Word's zero-shot CIR benchmark ("a {domain} of *").

Data: ImageNet-R, Hendrycks et al., "The Many Faces of Robustness", ICCV 2021: 30,000 renditions (cartoons,
origami, toys, sculptures, paintings, ...) of 200 ImageNet classes. Pic2Word (Saito et al., CVPR 2023) uses four
renditions as target domains and real ImageNet-1k **val** photos of the same 200 classes as queries.
Sources: ``https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar`` (README of ``hendrycks/imagenet-r``; fetch it
with ``python data_scripts/imagenet_r.py download --root DIR``) and ImageNet-1k val, which is gated (image-net.org
account, non-commercial terms): download it yourself, then sort it with ``python data_scripts/imagenet_r.py sort-val
--root DIR --val-dir VAL --labels LABELS``. Licence / terms: the ImageNet-R code is MIT, its images are web-scraped
with no separate licence; ImageNet's terms of access apply to the photos. Research use; do not re-host.

On-disk layout (``root`` is Pic2Word's ``data/imgnet`` folder)::

    imagenet-r/<wnid>/<rendition>_<N>.jpg   the tar's folder; renditions used: cartoon, origami, toy, sculpture
    real/<wnid>/ILSVRC2012_val_*.JPEG       ImageNet-1k val photos sorted by class (50 per class, 200 classes)
    imgnet_real_query.txt                   optional: Pic2Word's shipped query list, "path label" per line
    imgnet_targets.txt                      optional: Pic2Word's shipped gallery list, "path label" per line

With both list files present they define the benchmark (their paths start with ``imgnet/``, Pic2Word's data-root
prefix, which is stripped; labels: class + 1000 x domain index for renditions, 6000 + class for real photos). Without
them the lists are built from the folders: queries = every real photo of a wnid that has an ``imagenet-r`` folder;
targets = the ``imagenet-r`` images whose file name starts with one of the four domains. Counted from Pic2Word's
shipped lists: 10,000 real photos; 6,983 targets (cartoon 3,726, origami 550, toy 1,511,
sculpture 1,196); gallery 16,983.

The benchmark (protocol ``imagenet_r``, :mod:`idclab.cir`):

* images: every gallery image by name (the posix path relative to ``root``).
* gallery "all": the renditions of the chosen domains, then **every real photo as a distractor** (an image-only query
  finds its own photo first, which is never a target).
* queries: one per (real photo, domain): kind "domain", fields {"domain": d}, reference = the photo, targets = the
  renditions of the photo's class in domain d, group = d, id = "<d>/<photo name>". Scored by fractional recall
  (mean over queries of relevant-in-top-K / relevant-in-gallery) and hit recall.
* **Queries without a target are kept**, as in Pic2Word: every photo is queried in every domain, and a photo whose
  class has no rendition in domain d gets ``targets=()`` and scores 0 (its fraction would be 0/0). Pic2Word's mean
  runs over all 10,000 photos per domain, so these zeros are part of its numbers (origami, with 550 images, covers
  far from all 200 classes). ``bench.info["queries_without_target"]`` counts them per domain; the harness also
  reports, labelled ``..._with_target``, the mean over the queries that have a target.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from idclab.data._common import listing
from idclab.data.cir_benchmark import ALL, CIRBenchmark, CIRQuery

DOMAINS = ("cartoon", "origami", "toy", "sculpture")  # Pic2Word's order: label = class + 1000 x index
N_CLASSES = 200  # ImageNet-R's classes
REAL_PER_CLASS = 50  # ImageNet-1k val photos per class
# Counted from Pic2Word's shipped lists, data/imgnet/*.txt.
EXPECTED_QUERIES = 10_000  # real photos (= 200 x 50); each is queried once per domain
EXPECTED_TARGETS = {"cartoon": 3_726, "origami": 550, "toy": 1_511, "sculpture": 1_196}
EXPECTED_TARGETS_TOTAL = 6_983
EXPECTED_GALLERY = 16_983  # targets + the real photos as distractors

RENDITIONS_DIR = "imagenet-r"
REAL_DIR = "real"
QUERY_LIST = "imgnet_real_query.txt"
TARGET_LIST = "imgnet_targets.txt"
LIST_PREFIX = "imgnet/"  # Pic2Word's list paths are relative to its data/ folder
DOMAIN_LABEL_STRIDE = 1000  # rendition label = class + 1000 x domain index
REAL_LABEL_OFFSET = 6000  # real photo label in imgnet_targets.txt = 6000 + class
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")  # ImageNet-R: .jpg; ImageNet val: .JPEG
WNID = re.compile(r"^n\d{8}$")  # WordNet id of an ImageNet class, e.g. n01443537

DOWNLOAD_COMMAND = "python data_scripts/imagenet_r.py download --root {root}"
SORT_VAL_COMMAND = "python data_scripts/imagenet_r.py sort-val --root {root} --val-dir VAL_DIR --labels LABELS"
VERIFY_COMMAND = "python data_scripts/imagenet_r.py verify --root {root}"


@dataclass(frozen=True)
class ImageNetRLists:
    """The benchmark's images by role, as names relative to root (posix)."""

    source: str  # "shipped" (Pic2Word's two list files) or "folders" (built from imagenet-r/ and real/)
    real: tuple[str, ...]  # the real query photos, "real/<wnid>/<file>"
    renditions: dict[str, tuple[str, ...]]  # domain -> "imagenet-r/<wnid>/<domain>_<N>.jpg", every domain of DOMAINS
    classes_without_real: tuple[str, ...] = ()  # imagenet-r wnids with no real/ folder (folders only)


def class_of(name: str) -> str:
    """The wnid of an image name: its folder ("real/n01443537/x.JPEG" -> "n01443537")."""
    return name.rsplit("/", 2)[-2]


def domain_of(name: str) -> str | None:
    """The rendition of an ImageNet-R file name ("imagenet-r/n0.../toy_3.jpg" -> "toy"), None if not a DOMAIN."""
    stem = name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    prefix = stem.rsplit("_", 1)[0]
    return prefix if prefix in DOMAINS else None


# ----------------------------------------------------------------------------------------------------------------
# Reading the lists
# ----------------------------------------------------------------------------------------------------------------


def read_lists(root) -> ImageNetRLists:
    """The query photos and renditions under ``root``: from Pic2Word's list files if both exist, else the folders.

    Reads list files and directory listings only; images are not opened.

    Raises:
        FileNotFoundError: no data, no ImageNet-R folder or no real photos (names the download / sort-val command).
        ValueError: one list file without the other, a malformed line, labels that contradict the file names, or
            lists that disagree (the real photos of the gallery list differ from the query list).
    """
    root = Path(root)
    have = [(root / n).is_file() for n in (QUERY_LIST, TARGET_LIST)]
    if all(have):
        return _read_shipped(root)
    if any(have):
        present, absent = (QUERY_LIST, TARGET_LIST) if have[0] else (TARGET_LIST, QUERY_LIST)
        raise ValueError(f"{root} has {present} but not {absent}: Pic2Word's lists work only as a pair. Add "
                         f"{absent} (from data/imgnet/ of google-research/composed_image_retrieval) or remove "
                         f"{present} to build the lists from the folders.")
    return _read_folders(root)


def _read_shipped(root: Path) -> ImageNetRLists:
    queries = [name for name, _ in _read_list_file(root / QUERY_LIST)]
    renditions: dict[str, list[str]] = {d: [] for d in DOMAINS}
    real_in_gallery, wrong = [], []
    for name, label in _read_list_file(root / TARGET_LIST):
        if label >= REAL_LABEL_OFFSET:
            real_in_gallery.append(name)
            continue
        k = label // DOMAIN_LABEL_STRIDE
        if k >= len(DOMAINS) or domain_of(name) != DOMAINS[k]:
            wrong.append(f"{name} {label}")
            continue
        renditions[DOMAINS[k]].append(name)
    if wrong:
        raise ValueError(f"{len(wrong)} lines of {root / TARGET_LIST} have a label that is not its file name's "
                         f"domain x {DOMAIN_LABEL_STRIDE} + class ({', '.join(DOMAINS)} = 0..3) or a real photo's "
                         f"{REAL_LABEL_OFFSET} + class: {listing(wrong)}. The file is not Pic2Word's list.")
    if len(set(queries)) != len(queries):
        raise ValueError(f"{root / QUERY_LIST} lists some photos twice; it is not Pic2Word's list.")
    if set(real_in_gallery) != set(queries):
        only_q = sorted(set(queries) - set(real_in_gallery))
        only_g = sorted(set(real_in_gallery) - set(queries))
        raise ValueError(
            f"The lists disagree: {len(only_q)} photos of {QUERY_LIST} are not distractors in {TARGET_LIST} "
            f"({listing(only_q)}) and {len(only_g)} real photos of {TARGET_LIST} are not queries ({listing(only_g)}). "
            f"Restore both files from Pic2Word's repository, or remove both to build the lists from the folders.")
    return ImageNetRLists("shipped", tuple(queries), {d: tuple(v) for d, v in renditions.items()})


def _read_list_file(path: Path) -> list[tuple[str, int]]:
    """[(name relative to root, label)] of a Pic2Word "path label" file; the "imgnet/" prefix is stripped."""
    out, bad = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            bad.append(n)
            continue
        name = parts[0][len(LIST_PREFIX):] if parts[0].startswith(LIST_PREFIX) else parts[0]
        out.append((name, int(parts[1])))
    if bad:
        raise ValueError(f"{path}: lines {listing(bad)} are not 'path label'; the file may be truncated or not "
                         f"Pic2Word's list.")
    return out


def _read_folders(root: Path) -> ImageNetRLists:
    r_dir, real_dir = root / RENDITIONS_DIR, root / REAL_DIR
    if not r_dir.is_dir():
        what = f"No ImageNet-R data at {root}" if not root.is_dir() else f"{root} has no {RENDITIONS_DIR}/ folder"
        raise FileNotFoundError(f"{what}. Download and extract ImageNet-R with:\n  "
                                f"{DOWNLOAD_COMMAND.format(root=root)}")
    wnids = [name for name in _subfolders(r_dir) if WNID.match(name)]
    if not wnids:
        nested = (" (it holds another imagenet-r/: extracted one level too deep?)"
                  if (r_dir / RENDITIONS_DIR).is_dir() else "")
        raise ValueError(f"{r_dir} holds no <wnid> folders{nested}; expected "
                         f"{RENDITIONS_DIR}/<wnid>/<rendition>_<N>.jpg. Re-extract it with\n  "
                         f"{DOWNLOAD_COMMAND.format(root=root)}")
    renditions: dict[str, list[str]] = {d: [] for d in DOMAINS}
    real, without_real = [], []
    for wnid in wnids:
        for f in _image_files(r_dir / wnid):
            d = domain_of(f)
            if d is not None:
                renditions[d].append(f"{RENDITIONS_DIR}/{wnid}/{f}")
        if (real_dir / wnid).is_dir():
            real += [f"{REAL_DIR}/{wnid}/{f}" for f in _image_files(real_dir / wnid)]
        else:
            without_real.append(wnid)
    if not real:
        raise FileNotFoundError(
            f"No real query photos under {real_dir} for the {len(wnids)} ImageNet-R classes (expected "
            f"{REAL_DIR}/<wnid>/ILSVRC2012_val_*.JPEG). ImageNet-1k val is gated: download it from image-net.org "
            f"(or Kaggle's ImageNet challenge), then sort it with\n  {SORT_VAL_COMMAND.format(root=root)}")
    return ImageNetRLists("folders", tuple(real), {d: tuple(v) for d, v in renditions.items()}, tuple(without_real))


def _subfolders(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _image_files(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_file() and not e.name.startswith(".")
                  and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES)


def missing_files(root, names) -> list[str]:
    """The names (relative to ``root``) whose files do not exist, in order (one directory listing per folder)."""
    root = Path(root)
    listings: dict[str, set[str]] = {}
    out = []
    for name in names:
        folder, _, base = name.rpartition("/")
        if folder not in listings:
            path = root / folder
            listings[folder] = set(os.listdir(path)) if path.is_dir() else set()
        if base not in listings[folder]:
            out.append(name)
    return out


# ----------------------------------------------------------------------------------------------------------------
# The benchmark
# ----------------------------------------------------------------------------------------------------------------


def load_benchmark(root, *, domains=DOMAINS, check_files: bool = True) -> CIRBenchmark:
    """Pic2Word's ImageNet -> ImageNet-R domain conversion as a :class:`~idclab.cir.CIRBenchmark` (module docstring).

    Args:
        root: the folder holding ``imagenet-r/`` and ``real/`` (and optionally Pic2Word's two list files).
        domains: the target domains, a subset of :data:`DOMAINS`; the gallery holds only their renditions.
        check_files: list every gallery image that does not exist (an error); False skips the directory listings.

    Returns:
        name "imagenet_r", split "val", protocol "imagenet_r"; ``info`` holds the list source, counts per domain,
        ``queries_without_target`` {domain: photos whose class has no rendition there; their queries have
        ``targets=()`` and score 0} and the published counts.

    Raises:
        ValueError: unknown or repeated domains; see :func:`read_lists`.
        FileNotFoundError: missing data (names the command that fetches it) or missing image files (lists them).
    """
    domains = tuple(domains)
    unknown = [d for d in domains if d not in DOMAINS]
    if unknown or not domains or len(set(domains)) != len(domains):
        raise ValueError(f"domains must be distinct members of {DOMAINS}, got {domains}.")
    root = Path(root)
    lists = read_lists(root)
    gallery = tuple(name for d in domains for name in lists.renditions[d]) + lists.real
    if check_files:
        missing = missing_files(root, gallery)
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of the {len(gallery)} gallery images of ImageNet-R ({lists.source} lists) are "
                f"missing under {root}: {listing(missing)}. See what is missing with\n  "
                f"{VERIFY_COMMAND.format(root=root)}")
    by_class: dict[tuple[str, str], list[str]] = {}  # (wnid, domain) -> rendition names, gallery order
    for d in domains:
        for name in lists.renditions[d]:
            by_class.setdefault((class_of(name), d), []).append(name)
    queries, without = [], {}
    for d in domains:
        without[d] = 0
        for photo in lists.real:
            targets = by_class.get((class_of(photo), d), [])
            if not targets:  # kept with no target: scores 0, as in Pic2Word (module docstring)
                without[d] += 1
            queries.append(CIRQuery(id=f"{d}/{photo}", reference=photo, kind="domain", fields={"domain": d},
                                    targets=tuple(targets), group=d, gallery=ALL))
    info = dict(
        lists=lists.source,
        domains=list(domains),
        real_photos=len(lists.real),
        targets={d: len(lists.renditions[d]) for d in domains},
        gallery=len(gallery),
        queries={d: len(lists.real) for d in domains},
        queries_without_target=without,
        classes_without_real=list(lists.classes_without_real),
        expected=dict(real_photos=EXPECTED_QUERIES, targets={d: EXPECTED_TARGETS[d] for d in domains},
                      gallery=EXPECTED_GALLERY if domains == DOMAINS else None,
                      source="counted from Pic2Word's data/imgnet/*.txt"),
        note="queries whose class has no rendition in the domain are kept without a target and score 0, as in "
             "Pic2Word (counted in queries_without_target); metrics named *_with_target leave them out",
    )
    return CIRBenchmark(name="imagenet_r", split="val", protocol="imagenet_r",
                        images={name: root / name for name in gallery}, galleries={ALL: gallery},
                        queries=queries, root=root, info=info)
