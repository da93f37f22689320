"""COCO object composition, Pic2Word's zero-shot CIR benchmark ("a photo of * and {query class} and {others}").

Data: COCO 2017 val (Lin et al., "Microsoft COCO: Common Objects in Context", ECCV 2014): 5,000 images with instance
annotations. Pic2Word (Saito et al., CVPR 2023, ``data/coco/prepare_data.py``) picks one object per image, keeps it
on a white background, and asks for the full image from the crop of that object plus the names of the image's other
classes. Sources: ``http://images.cocodataset.org/zips/val2017.zip`` and
``http://images.cocodataset.org/annotations/annotations_trainval2017.zip``; fetch both with
``python data_scripts/coco_composition.py download --root DIR``. Licence / terms: annotations CC BY 4.0 (COCO terms
of use); the images keep their Flickr licences. Do not re-host.

On-disk layout (``root`` is Pic2Word's ``data/coco``)::

    annotations/instances_val2017.json   COCO instances (read as plain JSON; pycocotools is not needed)
    val2017/<id:012d>.jpg                the full images (the gallery and the targets)
    val2017_masked/<id:012d>.png         written by prepare(): the chosen object, everything else 255
    coco_eval.csv                        written by prepare(): one query per image (below)

``coco_eval.csv`` (Pic2Word's columns, idclab's first line)::

    # idclab coco-composition prep v1 seed=0 bounds=0.05,0.5 pixel_lower_bound=false class_order=annotation ...
    id,query_regions,query_class,classes
    42,10;12;50.5;60,person,chair;potted plant;tv          (illustrative values)

``id`` the COCO image id (Pic2Word's file writes the file name "%012d.jpg" there); ``query_regions`` the chosen
object's box "x1;y1;x2;y2" in pixels; ``classes`` the other class names of the image (every annotation, crowd ones
included), query class excluded, deduplicated, in the order of their first annotation in the annotation file
(Pic2Word's order; ``class_order="sorted"`` sorts them instead). The order is part of the query text ("dog and
person and cat" is not "dog and cat and person"), so it changes the query embedding.

What :func:`prepare` does, and how it differs from Pic2Word's ``data/coco/prepare_data.py`` (``book/pitfalls.md``,
P2W-6):

* candidates: non-crowd objects with a polygon segmentation whose box area fraction (w x h / image area) lies
  strictly inside ``area_bounds`` (0.05, 0.5). Pic2Word compares the lower bound **in pixels** (0.05 < w x h), almost
  certainly a bug; ``pixel_lower_bound=True`` reproduces it. Pic2Word also lets crowd (RLE) objects be chosen;
  here they never are (an RLE mask is not rasterised without pycocotools).
* the pick: one candidate per image drawn with ``numpy.random.default_rng((seed, image id))``: the same seed gives the
  same file (Pic2Word's pick is unseeded, so its set changes at every run). Images without a candidate have no query.
* the mask: COCO polygons rasterised with ``PIL.ImageDraw`` (pycocotools rasterises slightly differently at the
  boundary), saved as PNG (Pic2Word saves JPEG). The prep is versioned by the CSV's first line.

The benchmark (protocol ``coco``, :mod:`idclab.cir`): gallery "all" = every full image of the CSV,
``val2017/<id:012d>.jpg``; one query per row: reference ``query/<id>``, whose image source is a zero-argument callable
returning the box crop of the masked image squashed to 224 x 224 (bicubic, no centre crop) as uint8 [224, 224, 3];
kind "coco", fields {"classes": "<query class> and <other> and ..."}; target the full image. The reference is a crop
and is not in the gallery.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from idclab.data._common import listing, read_image, read_json
from idclab.data.cir_benchmark import ALL, CIRBenchmark, CIRQuery

PREP_VERSION = 1
HEADER_PREFIX = "# idclab coco-composition prep v"
COLUMNS = ("id", "query_regions", "query_class", "classes")
ANNOTATIONS = "annotations/instances_val2017.json"
IMAGES_DIR = "val2017"
MASKED_DIR = "val2017_masked"
CSV_NAME = "coco_eval.csv"
QUERY_SIZE = 224  # the crop is squashed to 224 x 224 (Pic2Word: resize without centre crop)
AREA_BOUNDS = (0.05, 0.5)  # Pic2Word's bounds on the box area (the lower one meant as a fraction)
CLASS_ORDERS = ("annotation", "sorted")  # order of the other classes: first annotation (Pic2Word's) or sorted
EXPECTED_VAL_IMAGES = 5_000  # COCO val2017 [2nd: the COCO site]

DOWNLOAD_COMMAND = "python data_scripts/coco_composition.py download --root {root}"
PREPARE_COMMAND = "python data_scripts/coco_composition.py prepare --root {root}"
VERIFY_COMMAND = "python data_scripts/coco_composition.py verify --root {root}"


@dataclass(frozen=True)
class CompositionRow:
    """One line of coco_eval.csv: the query object of one image."""

    id: int  # COCO image id
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels
    query_class: str
    classes: tuple[str, ...]  # the image's other classes, in the prep's class_order

    @property
    def text(self) -> str:
        """The "classes" field of the query: the query class first, then the others, joined by " and "."""
        return " and ".join((self.query_class,) + self.classes)


def image_name(image_id: int) -> str:
    """The gallery name (and path under root) of a full image: "val2017/000000000139.jpg"."""
    return f"{IMAGES_DIR}/{image_id:012d}.jpg"


def masked_name(image_id: int) -> str:
    return f"{MASKED_DIR}/{image_id:012d}.png"


# ----------------------------------------------------------------------------------------------------------------
# Preparing the queries
# ----------------------------------------------------------------------------------------------------------------


def prep_header(*, seed: int, area_bounds, pixel_lower_bound: bool, **counts) -> str:
    """The CSV's first line: version, settings and counts as key=value pairs."""
    lo, hi = area_bounds
    fields = dict(seed=seed, bounds=f"{lo:g},{hi:g}", pixel_lower_bound=str(bool(pixel_lower_bound)).lower(), **counts)
    return f"{HEADER_PREFIX}{PREP_VERSION} " + " ".join(f"{k}={v}" for k, v in fields.items())


def parse_header(line: str) -> dict:
    """{"version": int, "seed": "0", "bounds": "0.05,0.5", ..., "line": line} of a prep header (values as strings)."""
    if not line.startswith(HEADER_PREFIX):
        raise ValueError(f"not an idclab prep header: {line[:80]!r}")
    version, *pairs = line[len(HEADER_PREFIX):].split()
    out: dict = {"version": int(version), "line": line}
    for pair in pairs:
        key, _, value = pair.partition("=")
        out[key] = value
    return out


def is_candidate(ann: dict, width: int, height: int, *, area_bounds=AREA_BOUNDS,
                 pixel_lower_bound: bool = False) -> bool:
    """Whether an annotation may be a query object (module docstring): non-crowd, a polygon, box area in bounds."""
    if ann.get("iscrowd", 0) or not _polygons(ann):
        return False
    lo, hi = area_bounds
    w, h = ann["bbox"][2], ann["bbox"][3]
    area, image_area = w * h, width * height
    low_ok = lo < area if pixel_lower_bound else lo * image_area < area
    return low_ok and area < hi * image_area


def choose_queries(coco: dict, *, seed: int = 0, area_bounds=AREA_BOUNDS, pixel_lower_bound: bool = False,
                   class_order: str = "annotation") -> tuple[list[tuple[CompositionRow, dict]], dict]:
    """Pick one query object per annotated image of a COCO instances dict (images are not opened).

    Returns:
        ([(row, its annotation)] sorted by image id, counts {"annotated_images", "no_candidate"}).
    """
    if class_order not in CLASS_ORDERS:
        raise ValueError(f"class_order must be one of {CLASS_ORDERS}, got {class_order!r}.")
    lo, hi = area_bounds
    if not 0 <= lo < hi:
        raise ValueError(f"area_bounds must be (low, high) with 0 <= low < high, got {area_bounds}.")
    names = {c["id"]: c["name"] for c in coco["categories"]}
    sizes = {im["id"]: (im["width"], im["height"]) for im in coco["images"]}
    by_image: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    chosen, no_candidate = [], 0
    for image_id in sorted(by_image):
        anns = sorted(by_image[image_id], key=lambda a: a["id"])
        width, height = sizes[image_id]
        candidates = [a for a in anns if is_candidate(a, width, height, area_bounds=area_bounds,
                                                      pixel_lower_bound=pixel_lower_bound)]
        if not candidates:
            no_candidate += 1
            continue
        rng = np.random.default_rng((seed, image_id))  # reproducible per image, independent of the others
        ann = candidates[int(rng.integers(len(candidates)))]
        x, y, w, h = ann["bbox"]
        query_class = names[ann["category_id"]]
        # Pic2Word's order: first appearance in the annotation file (not by annotation id), duplicates once
        labels = dict.fromkeys(names[a["category_id"]] for a in by_image[image_id])
        others = tuple(c for c in labels if c != query_class)
        if class_order == "sorted":
            others = tuple(sorted(others))
        chosen.append((CompositionRow(image_id, (x, y, x + w, y + h), query_class, others), ann))
    return chosen, dict(annotated_images=len(by_image), no_candidate=no_candidate)


def object_mask(ann: dict, width: int, height: int) -> np.ndarray:
    """bool [H, W]: the union of an annotation's polygons, rasterised with PIL (outline included)."""
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for poly in _polygons(ann):
        draw.polygon([float(v) for v in poly], fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)


def mask_image(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3]: ``image`` where ``mask`` (bool [H, W]) is set, 255 elsewhere."""
    return np.where(mask[..., None], image, np.uint8(255)).astype(np.uint8)


def prepare(root, *, seed: int = 0, area_bounds=AREA_BOUNDS, pixel_lower_bound: bool = False,
            class_order: str = "annotation") -> Path:
    """Choose the query objects, write ``val2017_masked/<id:012d>.png`` and ``coco_eval.csv``; return the CSV path.

    Deterministic for a given (annotations, seed, area_bounds, pixel_lower_bound, class_order). Masked PNGs of an
    earlier prep that the new one does not choose are deleted, so the folder matches the CSV. The CSV is written last
    (atomically): its presence means the prep finished.

    Raises:
        FileNotFoundError: no annotations or missing val2017 images (all listed; nothing is written).
        ValueError: an image whose size differs from the annotations.
    """
    from PIL import Image

    root = Path(root)
    ann_path = root / ANNOTATIONS
    if not ann_path.is_file():
        raise FileNotFoundError(f"No COCO annotations at {ann_path}. Download COCO val2017 with\n  "
                                f"{DOWNLOAD_COMMAND.format(root=root)}")
    coco = read_json(ann_path)
    sizes = {im["id"]: (im["width"], im["height"]) for im in coco["images"]}  # (W, H) per the annotations
    chosen, counts = choose_queries(coco, seed=seed, area_bounds=area_bounds, pixel_lower_bound=pixel_lower_bound,
                                    class_order=class_order)
    missing = [image_name(row.id) for row, _ in chosen if not (root / image_name(row.id)).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of the {len(chosen)} val2017 images to mask are missing under {root}: "
                                f"{listing(missing)}. Download them with\n  {DOWNLOAD_COMMAND.format(root=root)}")
    (root / MASKED_DIR).mkdir(parents=True, exist_ok=True)
    for row, ann in chosen:
        with Image.open(root / image_name(row.id)) as im:
            image = np.asarray(im.convert("RGB"))  # uint8 [H, W, 3]; COCO's few grayscale images -> 3 channels
        height, width = image.shape[:2]
        if (width, height) != sizes[row.id]:
            raise ValueError(f"{image_name(row.id)} is {width} x {height} but the annotations say "
                             f"{sizes[row.id][0]} x {sizes[row.id][1]}: the image or the annotations are not COCO "
                             f"val2017's. Download them again with\n  {DOWNLOAD_COMMAND.format(root=root)}")
        mask = object_mask(ann, width, height)
        Image.fromarray(mask_image(image, mask)).save(root / masked_name(row.id))
    keep = {Path(masked_name(row.id)).name for row, _ in chosen}
    for stale in (root / MASKED_DIR).glob("[0-9]" * 12 + ".png"):
        if stale.name not in keep:
            stale.unlink()
    buf = io.StringIO()
    buf.write(prep_header(seed=seed, area_bounds=area_bounds, pixel_lower_bound=pixel_lower_bound,
                          class_order=class_order, queries=len(chosen), **counts) + "\n")
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row, _ in chosen:
        writer.writerow([row.id, ";".join(f"{round(v, 2):g}" for v in row.box), row.query_class,
                         ";".join(row.classes)])
    out = root / CSV_NAME
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(buf.getvalue(), encoding="utf-8")
    tmp.replace(out)
    return out


def _polygons(ann: dict) -> list:
    """The polygons (flat [x1, y1, x2, y2, ...] lists of >= 3 points) of a segmentation; [] for RLE."""
    seg = ann.get("segmentation")
    if not isinstance(seg, list):
        return []
    return [p for p in seg if isinstance(p, list) and len(p) >= 6]


# ----------------------------------------------------------------------------------------------------------------
# Reading the prepared queries and the benchmark
# ----------------------------------------------------------------------------------------------------------------


def read_csv(root) -> tuple[dict, list[CompositionRow]]:
    """(prep header as a dict, rows) of ``root/coco_eval.csv``.

    Raises:
        FileNotFoundError: no CSV (names the prepare command, or the download command without annotations).
        ValueError: a CSV without idclab's header (Pic2Word's own, unseeded file), another prep version, or
            malformed rows.
    """
    root = Path(root)
    path = root / CSV_NAME
    if not path.is_file():
        hint = (f"Prepare the queries with\n  {PREPARE_COMMAND.format(root=root)}" if (root / ANNOTATIONS).is_file()
                else f"Download COCO val2017 and prepare the queries with\n  {DOWNLOAD_COMMAND.format(root=root)}\n"
                     f"  {PREPARE_COMMAND.format(root=root)}")
        raise FileNotFoundError(f"No {CSV_NAME} under {root}. {hint}")
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or not lines[0].startswith(HEADER_PREFIX):
        raise ValueError(f"{path} has no idclab prep header (a file from Pic2Word's unseeded prepare_data.py, or "
                         f"hand-made?). Write a reproducible one with\n  {PREPARE_COMMAND.format(root=root)}")
    header = parse_header(lines[0])
    header.setdefault("class_order", "sorted")  # files written before the option sorted the other classes
    if header["version"] != PREP_VERSION:
        raise ValueError(f"{path} was written by prep v{header['version']}; this idclab reads v{PREP_VERSION}. "
                         f"Re-run\n  {PREPARE_COMMAND.format(root=root)}")
    reader = csv.reader(lines[1:])
    if tuple(next(reader, ())) != COLUMNS:
        raise ValueError(f"{path}: the second line must be the columns {','.join(COLUMNS)}.")
    rows, bad = [], []
    for n, rec in enumerate(reader, start=3):
        try:
            box = tuple(float(v) for v in rec[1].split(";"))
            if len(rec) != 4 or len(box) != 4:
                raise ValueError
            rows.append(CompositionRow(int(rec[0]), box, rec[2], tuple(c for c in rec[3].split(";") if c)))
        except (ValueError, IndexError):  # collected and reported below with the line numbers
            bad.append(n)
    if bad:
        raise ValueError(f"{path}: lines {listing(bad)} are malformed; re-run\n  {PREPARE_COMMAND.format(root=root)}")
    return header, rows


class MaskedCrop:
    """Zero-argument image source of a COCO query: the box crop of the masked image, uint8 [224, 224, 3].

    The box is rounded to whole pixels (as ``PIL.Image.crop`` rounds) and clipped to the image; the crop is squashed
    to ``size`` x ``size`` with bicubic interpolation (no centre crop). A class, not a lambda, so it pickles into
    DataLoader workers.
    """

    def __init__(self, path: Path, box: tuple[float, float, float, float], *, size: int = QUERY_SIZE):
        self.path, self.box, self.size = Path(path), tuple(box), size

    def __call__(self) -> np.ndarray:
        from PIL import Image

        image = read_image(self.path)  # uint8 [H, W, 3]
        h, w = image.shape[:2]
        x1, y1, x2, y2 = (round(v) for v in self.box)
        x1, x2 = min(max(x1, 0), w - 1), min(max(x2, x1 + 1), w)
        y1, y2 = min(max(y1, 0), h - 1), min(max(y2, y1 + 1), h)
        crop = Image.fromarray(image[y1:y2, x1:x2])
        return np.asarray(crop.resize((self.size, self.size), Image.BICUBIC), dtype=np.uint8)

    def __repr__(self) -> str:
        return f"MaskedCrop({str(self.path)!r}, box={self.box})"


def load_benchmark(root, *, check_files: bool = True) -> CIRBenchmark:
    """Pic2Word's COCO object composition as a :class:`~idclab.cir.CIRBenchmark` (module docstring).

    Args:
        root: the folder holding ``val2017/``, ``val2017_masked/`` and ``coco_eval.csv`` (see :func:`prepare`).
        check_files: list every missing full or masked image (an error); False skips the directory listings.

    Returns:
        name "coco", split "val2017", protocol "coco"; ``info["prep"]`` is the CSV's prep header (version, seed,
        bounds, pixel_lower_bound, counts; ``"line"``: the line itself).
    """
    root = Path(root)
    header, rows = read_csv(root)
    if check_files:
        names = [n for row in rows for n in (image_name(row.id), masked_name(row.id))]
        missing = [n for n in names if not (root / n).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} images of the {len(rows)} COCO queries are missing under {root}: {listing(missing)}. "
                f"Full images come from\n  {DOWNLOAD_COMMAND.format(root=root)}\nmasked ones from\n  "
                f"{PREPARE_COMMAND.format(root=root)}")
    images: dict = {}
    queries = []
    for row in rows:
        full, ref = image_name(row.id), f"query/{row.id}"
        images[full] = root / full
        images[ref] = MaskedCrop(root / masked_name(row.id), row.box)
        queries.append(CIRQuery(id=str(row.id), reference=ref, kind="coco", fields={"classes": row.text},
                                targets=(full,), gallery=ALL))
    gallery = tuple(image_name(row.id) for row in rows)
    info = dict(prep=header, queries=len(queries), gallery=len(gallery),
                note="one query per annotated val2017 image with a candidate object; the reference crop is not in "
                     "the gallery")
    return CIRBenchmark(name="coco", split="val2017", protocol="coco", images=images, galleries={ALL: gallery},
                        queries=queries, root=root, info=info)
