"""Pic2Word's CIR benchmarks on real data (ImageNet-R domain conversion, COCO object composition), unlabelled image
folders / CC3M-style TSVs, and their data scripts.

Everything runs on tiny trees built here in the datasets' on-disk layouts; the network is replaced by a fake
``_common.open_url``, so download (with resume), extraction, sort-val, prepare and verify run offline.
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import io
import json
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from idclab.cir import ALL, KINDS, CIRBenchmark, check_benchmark
from idclab.data import coco_composition as cc
from idclab.data import image_folder as imf
from idclab.data import imagenet_r as ir

SCRIPTS_DIR = Path(__file__).resolve().parents[1] / "data_scripts"


def _import_scripts():
    sys.path.insert(0, str(SCRIPTS_DIR))
    try:
        return {name: importlib.import_module(name)
                for name in ("_common", "imagenet_r", "coco_composition", "image_folder")}
    finally:
        sys.path.remove(str(SCRIPTS_DIR))


SCRIPTS = _import_scripts()
common = SCRIPTS["_common"]


class FakeWeb:
    """Stands in for ``_common.open_url``: serves ``files`` (url -> bytes), honouring Range."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.calls = files, []

    def __call__(self, url, *, start=0, timeout=None):
        self.calls.append((url, start))
        data = self.files[url]
        if start:
            return (416, None) if start >= len(data) else (206, io.BytesIO(data[start:]))
        return 200, io.BytesIO(data)


def save_image(path: Path, *, size=(12, 8), seed=0, high=256) -> np.ndarray:
    """A random RGB image of ``size`` (W, H) with values < ``high``, saved at ``path``; returns its pixels."""
    rng = np.random.default_rng(seed)
    w, h = size
    arr = rng.integers(0, high, (h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return arr


# ----------------------------------------------------------------------------------------------------------------
# ImageNet-R: fixture tree
# ----------------------------------------------------------------------------------------------------------------

GOLDFISH, SHARK, HAMMERHEAD, NOT_IN_R = "n01443537", "n01484850", "n01494475", "n09999999"
RENDITIONS = {
    GOLDFISH: ["cartoon_0", "cartoon_1", "origami_0", "toy_0", "sculpture_0", "art_0", "painting_1"],
    SHARK: ["cartoon_0", "toy_0", "toy_1"],  # no origami, no sculpture
    HAMMERHEAD: ["sculpture_0"],  # ImageNet-R class without real photos (only with orphan=True)
}
REAL = {GOLDFISH: ["ILSVRC2012_val_00000001", "ILSVRC2012_val_00000002"], SHARK: ["ILSVRC2012_val_00000003"],
        NOT_IN_R: ["ILSVRC2012_val_00000004"]}
P1, P2, P3 = (f"real/{GOLDFISH}/ILSVRC2012_val_00000001.JPEG", f"real/{GOLDFISH}/ILSVRC2012_val_00000002.JPEG",
              f"real/{SHARK}/ILSVRC2012_val_00000003.JPEG")


def make_imagenet_r(root: Path, *, orphan: bool = True, real: bool = True) -> Path:
    """imagenet-r/<wnid>/<rendition>_<N>.jpg (+ a hidden file) and real/<wnid>/ILSVRC2012_val_*.JPEG."""
    k = 0
    for wnid, names in RENDITIONS.items():
        if wnid == HAMMERHEAD and not orphan:
            continue
        for name in names:
            save_image(root / "imagenet-r" / wnid / f"{name}.jpg", seed=k)
            k += 1
    (root / "imagenet-r" / GOLDFISH / ".DS_Store").write_bytes(b"\x00")
    if real:
        for wnid, names in REAL.items():
            for name in names:
                save_image(root / "real" / wnid / f"{name}.JPEG", seed=k)
                k += 1
    return root


def write_shipped_lists(root: Path) -> None:
    """Pic2Word's two list files ("imgnet/" prefix, trailing space), covering a subset of the folders."""
    (root / ir.QUERY_LIST).write_text(f"imgnet/{P1} 0 \nimgnet/{P2} 0 \nimgnet/{P3} 1 \n")
    (root / ir.TARGET_LIST).write_text(
        f"imgnet/imagenet-r/{GOLDFISH}/toy_0.jpg 2000 \nimgnet/imagenet-r/{GOLDFISH}/cartoon_0.jpg 0 \n"
        f"imgnet/imagenet-r/{GOLDFISH}/origami_0.jpg 1000 \nimgnet/imagenet-r/{SHARK}/toy_1.jpg 2001 \n"
        f"imgnet/{P1} 6000 \nimgnet/{P2} 6000 \nimgnet/{P3} 6001 \n")


@pytest.fixture
def imnet_root(tmp_path):
    return make_imagenet_r(tmp_path / "imgnet")


# ----------------------------------------------------------------------------------------------------------------
# ImageNet-R: the benchmark
# ----------------------------------------------------------------------------------------------------------------


def test_imagenet_r_gallery_is_targets_plus_real_distractors(imnet_root):
    bench = ir.load_benchmark(imnet_root)
    assert isinstance(bench, CIRBenchmark) and bench.protocol == "imagenet_r" and bench.name == "imagenet_r"
    renditions = [f"imagenet-r/{GOLDFISH}/cartoon_0.jpg", f"imagenet-r/{GOLDFISH}/cartoon_1.jpg",
                  f"imagenet-r/{SHARK}/cartoon_0.jpg", f"imagenet-r/{GOLDFISH}/origami_0.jpg",
                  f"imagenet-r/{GOLDFISH}/toy_0.jpg", f"imagenet-r/{SHARK}/toy_0.jpg", f"imagenet-r/{SHARK}/toy_1.jpg",
                  f"imagenet-r/{GOLDFISH}/sculpture_0.jpg", f"imagenet-r/{HAMMERHEAD}/sculpture_0.jpg"]
    assert bench.galleries[ALL] == tuple(renditions) + (P1, P2, P3)  # other renditions (art, painting) left out
    assert not any(NOT_IN_R in n for n in bench.galleries[ALL])  # a real class that ImageNet-R lacks
    assert set(bench.images) == set(bench.galleries[ALL])
    assert bench.images[P1] == imnet_root / P1 and bench.images[P1].is_file()
    assert bench.info["lists"] == "folders" and bench.info["classes_without_real"] == [HAMMERHEAD]
    assert bench.info["targets"] == {"cartoon": 3, "origami": 1, "toy": 3, "sculpture": 2}
    assert bench.info["gallery"] == 12 and bench.info["real_photos"] == 3
    assert bench.info["expected"]["gallery"] == ir.EXPECTED_GALLERY == 16_983


def test_imagenet_r_targets_per_class_and_domain_and_target_less_queries_kept(imnet_root):
    bench = ir.load_benchmark(imnet_root)
    by_id = {q.id: q for q in bench.queries}
    q = by_id[f"cartoon/{P1}"]
    assert q.reference == P1 and q.kind == "domain" and set(q.fields) == set(KINDS["domain"])
    assert q.fields == {"domain": "cartoon"} and q.group == "cartoon" and q.gallery == ALL
    assert q.targets == (f"imagenet-r/{GOLDFISH}/cartoon_0.jpg", f"imagenet-r/{GOLDFISH}/cartoon_1.jpg")
    assert by_id[f"toy/{P3}"].targets == (f"imagenet-r/{SHARK}/toy_0.jpg", f"imagenet-r/{SHARK}/toy_1.jpg")
    assert by_id[f"sculpture/{P2}"].targets == (f"imagenet-r/{GOLDFISH}/sculpture_0.jpg",)  # not the hammerhead's
    # The shark has no origami and no sculpture: those queries are kept without a target (they score 0, as in
    # Pic2Word, whose mean runs over every photo of every domain), and counted.
    assert by_id[f"origami/{P3}"].targets == () and by_id[f"sculpture/{P3}"].targets == ()
    assert bench.info["queries_without_target"] == {"cartoon": 0, "origami": 1, "toy": 0, "sculpture": 1}
    assert bench.info["queries"] == {"cartoon": 3, "origami": 3, "toy": 3, "sculpture": 3}
    assert len(bench.queries) == 12 and sum(not q.targets for q in bench.queries) == 2
    check_benchmark(bench)  # the harness's structural check: every reference and target in the gallery
    gallery = set(bench.galleries[ALL])
    assert all(q.reference in gallery and set(q.targets) <= gallery for q in bench.queries)


def test_imagenet_r_domain_subset(imnet_root):
    bench = ir.load_benchmark(imnet_root, domains=("toy",))
    assert bench.galleries[ALL] == (f"imagenet-r/{GOLDFISH}/toy_0.jpg", f"imagenet-r/{SHARK}/toy_0.jpg",
                                    f"imagenet-r/{SHARK}/toy_1.jpg", P1, P2, P3)
    assert {q.group for q in bench.queries} == {"toy"} and len(bench.queries) == 3
    with pytest.raises(ValueError, match="domains"):
        ir.load_benchmark(imnet_root, domains=("sketch",))
    with pytest.raises(ValueError, match="domains"):
        ir.load_benchmark(imnet_root, domains=("toy", "toy"))


def test_imagenet_r_shipped_lists_define_the_benchmark(imnet_root):
    write_shipped_lists(imnet_root)
    bench = ir.load_benchmark(imnet_root)
    assert bench.info["lists"] == "shipped"
    assert bench.galleries[ALL] == (f"imagenet-r/{GOLDFISH}/cartoon_0.jpg", f"imagenet-r/{GOLDFISH}/origami_0.jpg",
                                    f"imagenet-r/{GOLDFISH}/toy_0.jpg", f"imagenet-r/{SHARK}/toy_1.jpg", P1, P2, P3)
    by_id = {q.id: q for q in bench.queries}
    assert by_id[f"cartoon/{P2}"].targets == (f"imagenet-r/{GOLDFISH}/cartoon_0.jpg",)  # cartoon_1 is not listed
    assert by_id[f"toy/{P3}"].targets == (f"imagenet-r/{SHARK}/toy_1.jpg",)
    assert bench.info["queries_without_target"] == {"cartoon": 1, "origami": 1, "toy": 0, "sculpture": 3}
    (imnet_root / f"imagenet-r/{SHARK}/toy_1.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=rf"(?s)1 of the 7 .*{SHARK}/toy_1.jpg.*imagenet_r.py verify"):
        ir.load_benchmark(imnet_root)
    assert len(ir.load_benchmark(imnet_root, check_files=False).galleries[ALL]) == 7


def test_imagenet_r_shipped_lists_must_agree_and_come_in_pairs(imnet_root):
    write_shipped_lists(imnet_root)
    targets = (imnet_root / ir.TARGET_LIST).read_text()
    (imnet_root / ir.TARGET_LIST).write_text(targets.replace("toy_0.jpg 2000", "toy_0.jpg 3000"))  # label: sculpture
    with pytest.raises(ValueError, match="toy_0.jpg 3000"):
        ir.load_benchmark(imnet_root)
    (imnet_root / ir.TARGET_LIST).write_text(targets.replace(f"imgnet/{P3} 6001 \n", ""))
    with pytest.raises(ValueError, match=r"(?s)lists disagree.*ILSVRC2012_val_00000003"):
        ir.load_benchmark(imnet_root)
    (imnet_root / ir.TARGET_LIST).unlink()
    with pytest.raises(ValueError, match=f"not {ir.TARGET_LIST}"):
        ir.load_benchmark(imnet_root)


def test_imagenet_r_missing_data_names_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"imagenet_r.py download --root"):
        ir.load_benchmark(tmp_path / "nowhere")
    root = make_imagenet_r(tmp_path / "no_real", real=False)
    with pytest.raises(FileNotFoundError, match=r"(?s)gated.*imagenet_r.py sort-val --root"):
        ir.load_benchmark(root)
    nested = tmp_path / "nested"
    (nested / "imagenet-r" / "imagenet-r" / GOLDFISH).mkdir(parents=True)
    with pytest.raises(ValueError, match="one level too deep"):
        ir.load_benchmark(nested)


# ----------------------------------------------------------------------------------------------------------------
# COCO object composition: fixture
# ----------------------------------------------------------------------------------------------------------------

SQUARE = [10, 10, 50, 10, 50, 50, 10, 50]  # person, bbox [10, 10, 40, 40]: 1600 / 8000 = 0.2
TRIANGLE = [50, 20, 80, 20, 65, 50]  # dog, bbox [50, 20, 30, 30]: 900 / 8000 = 0.1125
COCO = {
    "images": [{"id": 1, "file_name": "000000000001.jpg", "width": 100, "height": 80},
               {"id": 2, "file_name": "000000000002.jpg", "width": 60, "height": 60},
               {"id": 3, "file_name": "000000000003.jpg", "width": 50, "height": 40},  # no annotation
               {"id": 4, "file_name": "000000000004.jpg", "width": 64, "height": 48}],
    "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "chair"},
                   {"id": 4, "name": "cat"}, {"id": 5, "name": "potted plant"}],
    "annotations": [
        {"id": 10, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "area": 1600, "iscrowd": 0,
         "segmentation": [SQUARE]},
        {"id": 11, "image_id": 1, "category_id": 2, "bbox": [50, 20, 30, 30], "area": 450, "iscrowd": 0,
         "segmentation": [TRIANGLE]},
        {"id": 12, "image_id": 1, "category_id": 3, "bbox": [0, 0, 50, 50], "area": 2000, "iscrowd": 1,
         "segmentation": {"counts": [0, 2500, 5500], "size": [80, 100]}},  # crowd (RLE), box in bounds
        {"id": 13, "image_id": 1, "category_id": 4, "bbox": [0, 0, 5, 5], "area": 20, "iscrowd": 0,
         "segmentation": [[0, 0, 5, 0, 5, 5, 0, 5]]},  # 25 px: 0.003 of the image, > 0.05 px
        {"id": 14, "image_id": 1, "category_id": 2, "bbox": [0, 0, 100, 80], "area": 8000, "iscrowd": 0,
         "segmentation": [[0, 0, 100, 0, 100, 80, 0, 80]]},  # the whole image: above 0.5
        {"id": 20, "image_id": 2, "category_id": 4, "bbox": [1, 1, 4, 4], "area": 16, "iscrowd": 0,
         "segmentation": [[1, 1, 5, 1, 5, 5, 1, 5]]},  # only a pixel-bound candidate
        {"id": 21, "image_id": 2, "category_id": 1, "bbox": [0, 0, 60, 50], "area": 3000, "iscrowd": 0,
         "segmentation": [[0, 0, 60, 0, 60, 50, 0, 50]]},
    ] + [{"id": 40 + k, "image_id": 4, "category_id": 1 + k % 5, "bbox": [4 * k, 2, 20, 20], "area": 400,
          "iscrowd": 0, "segmentation": [[4 * k, 2, 4 * k + 20, 2, 4 * k + 20, 22, 4 * k, 22]]}
         for k in range(6)],  # six candidates (400 / 3072 = 0.13)
}


def make_coco(root: Path, *, images: bool = True) -> Path:
    """annotations/instances_val2017.json and val2017/<id:012d>.jpg (PNG-encoded pixels < 255, lossless in tests)."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / cc.ANNOTATIONS).write_text(json.dumps(COCO))
    if images:
        for im in COCO["images"]:
            rng = np.random.default_rng(im["id"])
            arr = rng.integers(0, 255, (im["height"], im["width"], 3), dtype=np.uint8)  # never 255
            (root / "val2017").mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(root / "val2017" / im["file_name"], format="PNG")  # lossless, .jpg name
    return root


def original(root: Path, image_id: int) -> np.ndarray:
    return np.asarray(Image.open(root / cc.image_name(image_id)).convert("RGB"))


@pytest.fixture
def coco_root(tmp_path):
    return make_coco(tmp_path / "coco")


# ----------------------------------------------------------------------------------------------------------------
# COCO: prep
# ----------------------------------------------------------------------------------------------------------------


def test_coco_prep_is_reproducible_versioned_and_seed_dependent(coco_root):
    csv_path = cc.prepare(coco_root, seed=0)
    assert csv_path == coco_root / "coco_eval.csv"
    first = csv_path.read_bytes()
    masked = (coco_root / cc.masked_name(4)).read_bytes()
    lines = first.decode().splitlines()
    assert lines[0].startswith("# idclab coco-composition prep v1 seed=0 bounds=0.05,0.5 pixel_lower_bound=false")
    assert "annotated_images=3" in lines[0] and "no_candidate=1" in lines[0]  # image 2: no candidate
    assert lines[1] == "id,query_regions,query_class,classes"
    assert [line.split(",")[0] for line in lines[2:]] == ["1", "4"]  # image 3 has no annotation
    assert cc.prepare(coco_root, seed=0).read_bytes() == first  # same seed, same file
    assert (coco_root / cc.masked_name(4)).read_bytes() == masked
    picks = {s: [r.box for r, _ in cc.choose_queries(COCO, seed=s)[0]] for s in range(12)}
    assert any(picks[s] != picks[0] for s in range(1, 12))  # another seed can pick other objects
    cc.prepare(coco_root, seed=7, area_bounds=(0.05, 0.15))
    header, _ = cc.read_csv(coco_root)
    assert header["version"] == 1 and header["seed"] == "7" and header["bounds"] == "0.05,0.15"


def test_coco_candidates_bounds_pixel_flag_and_crowd():
    anns = {a["id"]: a for a in COCO["annotations"]}
    assert cc.is_candidate(anns[10], 100, 80) and cc.is_candidate(anns[11], 100, 80)
    assert not cc.is_candidate(anns[12], 100, 80)  # crowd, although its box is in bounds
    assert not cc.is_candidate(anns[12], 100, 80, pixel_lower_bound=True)
    crowd_polygon = dict(anns[10], iscrowd=1)  # crowd is excluded by its flag, not only for lacking a polygon
    assert not cc.is_candidate(crowd_polygon, 100, 80)
    assert not cc.is_candidate(anns[13], 100, 80)  # 0.003 of the image
    assert cc.is_candidate(anns[13], 100, 80, pixel_lower_bound=True)  # 25 px > 0.05 "px": the reference's bug
    assert not cc.is_candidate(anns[14], 100, 80, pixel_lower_bound=True)  # upper bound: a fraction in both
    assert not cc.is_candidate(anns[10], 100, 80, area_bounds=(0.25, 0.5))
    classes = set()
    for seed in range(40):
        rows = {r.id: r for r, _ in cc.choose_queries(COCO, seed=seed, pixel_lower_bound=True)[0]}
        assert set(rows) == {1, 2, 4}  # image 2 has a candidate only under the pixel bound
        assert rows[2].query_class == "cat"
        classes.add(rows[1].query_class)
    assert classes == {"person", "dog", "cat"}  # never the crowd chair
    rows, counts = cc.choose_queries(COCO, seed=0)
    assert [r.id for r, _ in rows] == [1, 4] and counts == {"annotated_images": 3, "no_candidate": 1}


def test_coco_masked_image_is_255_outside_the_polygon(coco_root):
    cc.prepare(coco_root, seed=0, area_bounds=(0.05, 0.15))  # image 1: only the dog triangle qualifies
    _, rows = cc.read_csv(coco_root)
    row = {r.id: r for r in rows}[1]
    assert row.query_class == "dog" and row.box == (50.0, 20.0, 80.0, 50.0)
    # annotation order (Pic2Word's), deduplicated (2 dogs), query class out, crowd in
    assert row.classes == ("person", "chair", "cat")
    assert row.text == "dog and person and chair and cat"
    masked = np.asarray(Image.open(coco_root / cc.masked_name(1)))
    image = original(coco_root, 1)
    assert masked.shape == image.shape == (80, 100, 3) and masked.dtype == np.uint8
    assert (masked[:, :50] == 255).all() and (masked[:, 81:] == 255).all()  # outside the box
    assert (masked[:19] == 255).all() and (masked[51:] == 255).all()
    assert (masked[48, 52] == 255).all()  # inside the box, outside the triangle
    np.testing.assert_array_equal(masked[30, 65], image[30, 65])  # inside: the original pixel
    np.testing.assert_array_equal(masked[22, 55:75], image[22, 55:75])
    inside = (masked != 255).any(axis=2)
    assert 300 < inside.sum() < 600  # about the triangle's 450 px


def test_coco_prep_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="coco_composition.py download --root"):
        cc.prepare(tmp_path / "nothing")
    root = make_coco(tmp_path / "coco")
    (root / cc.image_name(4)).unlink()
    with pytest.raises(FileNotFoundError, match=r"(?s)1 of the 2 val2017 images.*000000000004\.jpg"):
        cc.prepare(root)
    assert not (root / cc.CSV_NAME).exists()  # nothing written
    with pytest.raises(ValueError, match="area_bounds"):
        cc.prepare(root, area_bounds=(0.5, 0.05))


# ----------------------------------------------------------------------------------------------------------------
# COCO: the benchmark
# ----------------------------------------------------------------------------------------------------------------


def test_coco_benchmark_reference_crop_not_in_gallery(coco_root):
    cc.prepare(coco_root, seed=0, area_bounds=(0.05, 0.15))
    bench = cc.load_benchmark(coco_root)
    assert bench.protocol == "coco" and bench.name == "coco"
    assert bench.galleries[ALL] == ("val2017/000000000001.jpg", "val2017/000000000004.jpg")
    assert bench.info["prep"]["seed"] == "0" and bench.info["prep"]["line"].startswith(cc.HEADER_PREFIX + "1")
    q = bench.queries[0]
    assert q.id == "1" and q.reference == "query/1" and q.kind == "coco" and set(q.fields) == set(KINDS["coco"])
    assert q.fields == {"classes": "dog and person and chair and cat"}
    assert q.targets == ("val2017/000000000001.jpg",)
    assert q.reference not in bench.galleries[ALL] and q.reference in bench.images
    assert bench.images["val2017/000000000001.jpg"] == coco_root / "val2017" / "000000000001.jpg"
    check_benchmark(bench)
    crop = bench.images["query/1"]()
    assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
    masked = Image.open(coco_root / cc.masked_name(1)).convert("RGB")
    want = np.asarray(masked.crop((50, 20, 80, 50)).resize((224, 224), Image.BICUBIC))  # the box, no centre crop
    np.testing.assert_array_equal(crop, want)
    assert (crop[-1, 0] == 255).all() and (crop != 255).any()  # bottom-left of the box is outside the triangle


def test_coco_benchmark_errors(coco_root):
    with pytest.raises(FileNotFoundError, match="coco_composition.py prepare --root"):
        cc.load_benchmark(coco_root)
    (coco_root / cc.CSV_NAME).write_text("id,query_regions,query_class,classes\n000000000001.jpg,1;1;5;5 ,cat,\n")
    with pytest.raises(ValueError, match=r"(?s)no idclab prep header.*prepare --root"):  # Pic2Word's own CSV
        cc.load_benchmark(coco_root)
    cc.prepare(coco_root)
    (coco_root / cc.masked_name(4)).unlink()
    with pytest.raises(FileNotFoundError, match=r"(?s)1 images.*val2017_masked/000000000004\.png"):
        cc.load_benchmark(coco_root)
    text = (coco_root / cc.CSV_NAME).read_text()
    (coco_root / cc.CSV_NAME).write_text(text.replace("prep v1", "prep v9"))
    with pytest.raises(ValueError, match="v9"):
        cc.load_benchmark(coco_root, check_files=False)


# ----------------------------------------------------------------------------------------------------------------
# Image folders and CC3M-style TSVs
# ----------------------------------------------------------------------------------------------------------------


def make_folder(root: Path) -> Path:
    save_image(root / "a.jpg", size=(10, 6), seed=1)
    save_image(root / "B.PNG", size=(7, 9), seed=2)
    save_image(root / "sub" / "c.jpeg", seed=3)
    save_image(root / "sub" / "deeper" / "d.gif", seed=4)
    save_image(root / ".hidden.jpg", seed=5)
    save_image(root / ".cache" / "e.jpg", seed=6)
    (root / "notes.txt").write_text("not an image")
    return root


def test_list_images_recursive_sorted_case_insensitive_hidden_skipped(tmp_path):
    root = make_folder(tmp_path / "imgs")
    assert [p.relative_to(root).as_posix() for p in imf.list_images(root)] == [
        "B.PNG", "a.jpg", "sub/c.jpeg", "sub/deeper/d.gif"]
    with pytest.raises(FileNotFoundError):
        imf.list_images(tmp_path / "none")


def test_image_folder_items(tmp_path):
    root = make_folder(tmp_path / "imgs")
    ds = imf.ImageFolder(root)
    assert len(ds) == 4 and ds.names[0] == "B.PNG"
    item = ds[0]
    assert item.dtype == np.uint8 and item.shape == (9, 7, 3)
    np.testing.assert_array_equal(item, np.asarray(Image.open(root / "B.PNG")))
    assert imf.ImageFolder(root, image_size=16)[-1].shape == (16, 16, 3)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(ValueError, match="holds no image"):
        imf.ImageFolder(tmp_path / "empty")


def test_csv_images_relative_paths_missing_files_and_missing_column(tmp_path):
    root = make_folder(tmp_path / "imgs")
    tsv = tmp_path / "train.tsv"
    tsv.write_text(f"filepath\ttitle\nimgs/a.jpg\ta cat\n{root / 'sub' / 'c.jpeg'}\ta dog\n")
    ds = imf.CSVImages(tsv, image_size=8)
    assert len(ds) == 2 and ds.paths[0] == tmp_path / "imgs" / "a.jpg" and ds.rows[1]["title"] == "a dog"
    assert ds[0].shape == (8, 8, 3) and ds[1].dtype == np.uint8
    tsv.write_text("filepath\ttitle\nimgs/a.jpg\tx\nimgs/gone.jpg\ty\nimgs/also_gone.png\tz\n")
    with pytest.raises(FileNotFoundError, match=r"(?s)2 of the 3 images.*gone\.jpg.*also_gone\.png"):
        imf.CSVImages(tsv)
    tsv.write_text("image\ttitle\nimgs/a.jpg\tx\n")
    with pytest.raises(ValueError, match=r"(?s)no column 'filepath'.*\['image', 'title'\].*--csv-img-key"):
        imf.CSVImages(tsv)
    assert len(imf.CSVImages(tsv, img_key="image")) == 1
    tsv.write_text("filepath,title\nimgs/a.jpg,x\n")  # comma-separated, read with TAB
    with pytest.raises(ValueError, match="separator"):
        imf.CSVImages(tsv)
    assert len(imf.CSVImages(tsv, sep=",")) == 1


def test_check_readable_finds_truncated_and_fake_images(tmp_path):
    root = make_folder(tmp_path / "imgs")
    good = imf.list_images(root)
    big = tmp_path / "bad" / "truncated.jpg"
    save_image(big, size=(64, 64), seed=9)
    big.write_bytes(big.read_bytes()[: len(big.read_bytes()) // 2])
    fake = tmp_path / "bad" / "fake.png"
    fake.write_text("<html>not found</html>")
    assert imf.check_readable(good) == []
    assert imf.check_readable(good + [big, fake, tmp_path / "absent.jpg"]) == [big, fake, tmp_path / "absent.jpg"]


# ----------------------------------------------------------------------------------------------------------------
# data_scripts/imagenet_r.py
# ----------------------------------------------------------------------------------------------------------------


def _tar(src: Path, arcname: str, out: Path) -> Path:
    with tarfile.open(out, "w") as t:
        t.add(src, arcname=arcname)
    return out


def test_imagenet_r_download_resumes_extracts_and_prints_the_manual_val_step(tmp_path, monkeypatch, capsys):
    src = make_imagenet_r(tmp_path / "src", real=False)
    data = _tar(src / "imagenet-r", "imagenet-r", tmp_path / "imagenet-r.tar").read_bytes()
    script = SCRIPTS["imagenet_r"]
    web = FakeWeb({script.URL: data})
    monkeypatch.setattr(common, "open_url", web)
    root = tmp_path / "root"
    (root / "_downloads").mkdir(parents=True)
    (root / "_downloads" / "imagenet-r.tar.part").write_bytes(data[:5000])  # an interrupted earlier run
    assert script.main(["download", "--root", str(root)]) == 0
    assert web.calls == [(script.URL, 5000)]
    assert (root / "imagenet-r" / GOLDFISH / "origami_0.jpg").is_file() and not (root / "_extract").exists()
    assert not (root / "_downloads" / "imagenet-r.tar").exists()
    manifest = json.loads((root / "idclab_manifest.json").read_text())
    assert manifest["downloads"]["imagenet-r.tar"]["sha256"] == hashlib.sha256(data).hexdigest()
    out = capsys.readouterr().out
    assert "image-net.org" in out and "imagenet_r.py sort-val --root" in out
    with pytest.raises(FileNotFoundError, match="sort-val"):
        ir.load_benchmark(root)  # no real photos yet
    assert script.main(["download", "--root", str(root)]) == 0 and len(web.calls) == 1  # present: not fetched


def _val_dir(tmp_path: Path) -> Path:
    """An unsorted ImageNet val folder: every photo of REAL, flat."""
    val = tmp_path / "val"
    for k, (wnid, names) in enumerate((w, n) for w, ns in REAL.items() for n in ns):
        save_image(val / f"{names}.JPEG", seed=100 + k)
    return val


LABEL_FORMATS = {
    "kaggle": "ImageId,PredictionString\n" + "".join(
        f"{n},{w} 1 2 30 40 {w} 3 4 10 10\n" for w, ns in REAL.items() for n in ns),
    "plain": "".join(f"{n}.JPEG {w}\n" for w, ns in REAL.items() for n in ns),
    "valprep": "".join(f"mkdir -p {w}\n" for w in REAL) + "".join(
        f"mv {n}.JPEG {w}/\n" for w, ns in REAL.items() for n in ns),
}


@pytest.mark.parametrize("fmt", list(LABEL_FORMATS))
def test_sort_val_keeps_the_imagenet_r_classes(tmp_path, capsys, fmt):
    root = make_imagenet_r(tmp_path / "root", real=False)
    val = _val_dir(tmp_path)
    labels = tmp_path / "labels.txt"
    labels.write_text(LABEL_FORMATS[fmt])
    args = ["sort-val", "--root", str(root), "--val-dir", str(val), "--labels", str(labels)]
    assert SCRIPTS["imagenet_r"].main(args + (["--move"] if fmt == "plain" else [])) == 0
    assert sorted(p.relative_to(root).as_posix() for p in (root / "real").rglob("*.JPEG")) == sorted([P1, P2, P3])
    assert not (root / "real" / NOT_IN_R).exists()  # not an ImageNet-R class
    assert (val / "ILSVRC2012_val_00000001.JPEG").exists() == (fmt != "plain")  # copied, or moved with --move
    assert f"3 {'moved' if fmt == 'plain' else 'copied'}" in capsys.readouterr().out
    bench = ir.load_benchmark(root)
    assert bench.info["real_photos"] == 3 and bench.info["queries"]["cartoon"] == 3


def test_sort_val_lists_missing_photos_and_bad_labels(tmp_path, capsys):
    root = make_imagenet_r(tmp_path / "root", real=False)
    val = _val_dir(tmp_path)
    (val / "ILSVRC2012_val_00000002.JPEG").unlink()
    labels = tmp_path / "labels.txt"
    labels.write_text(LABEL_FORMATS["plain"])
    main = SCRIPTS["imagenet_r"].main
    assert main(["sort-val", "--root", str(root), "--val-dir", str(val), "--labels", str(labels)]) == 1
    out = capsys.readouterr().out
    assert "MISSING 1 photos" in out and "ILSVRC2012_val_00000002.JPEG" in out and "FAILED" in out
    assert (root / P1).is_file() and not (root / P2).exists()  # what exists is sorted; nothing invented
    labels.write_text("ILSVRC2012_val_00000001.JPEG goldfish\n")
    assert main(["sort-val", "--root", str(root), "--val-dir", str(val), "--labels", str(labels)]) == 2
    assert "wnid like n01443537" in capsys.readouterr().err
    assert main(["sort-val", "--root", str(tmp_path / "empty"), "--val-dir", str(val), "--labels", str(labels)]) == 2
    assert "imagenet_r.py download" in capsys.readouterr().err


def test_imagenet_r_verify_lists_missing_files_and_exit_codes(tmp_path, capsys):
    main = SCRIPTS["imagenet_r"].main
    root = make_imagenet_r(tmp_path / "root", orphan=False)
    assert main(["verify", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "OK:" in out and "WARNING gallery: observed 11, expected 16,983" in out
    assert "excluded for want of a target in their domain: cartoon 0, origami 1, toy 0, sculpture 1" in out
    (root / f"imagenet-r/{SHARK}/toy_1.jpg").unlink()  # folder lists: the gallery changed against the manifest
    assert main(["verify", "--root", str(root)]) == 1
    assert f"gone: ['imagenet-r/{SHARK}/toy_1.jpg']" in capsys.readouterr().out
    write_shipped_lists(root)  # the shipped lists name toy_1: now it is missing
    assert main(["verify", "--root", str(root), "--update"]) == 1
    out = capsys.readouterr().out
    assert "MISSING val: 1 image files" in out and f"imagenet-r/{SHARK}/toy_1.jpg" in out and "FAILED" in out
    assert f"{SHARK}/toy_1.jpg" in (root / "verify_missing.txt").read_text()
    orphan = make_imagenet_r(tmp_path / "orphan")
    assert main(["verify", "--root", str(orphan)]) == 1
    assert "MISSING real photos of 1 ImageNet-R classes" in capsys.readouterr().out
    assert main(["verify", "--root", str(tmp_path / "none")]) == 1
    assert "imagenet_r.py download" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------------------------
# data_scripts/coco_composition.py and image_folder.py
# ----------------------------------------------------------------------------------------------------------------


def _zip(src: Path, prefix: str, out: Path) -> bytes:
    with zipfile.ZipFile(out, "w") as z:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                z.write(p, f"{prefix}/{p.relative_to(src)}")
    return out.read_bytes()


def test_coco_download_prepare_verify(tmp_path, monkeypatch, capsys):
    src = make_coco(tmp_path / "src")
    script = SCRIPTS["coco_composition"]
    web = FakeWeb({script.IMAGES_URL: _zip(src / "val2017", "val2017", tmp_path / "val2017.zip"),
                   script.ANNOTATIONS_URL: _zip(src / "annotations", "annotations", tmp_path / "ann.zip")})
    monkeypatch.setattr(common, "open_url", web)
    root = tmp_path / "root"
    assert script.main(["download", "--root", str(root)]) == 0
    assert {url for url, _ in web.calls} == {script.IMAGES_URL, script.ANNOTATIONS_URL}
    assert (root / cc.ANNOTATIONS).is_file() and (root / cc.image_name(4)).is_file()
    manifest = json.loads((root / "idclab_manifest.json").read_text())
    assert set(manifest["downloads"]) == {"val2017.zip", "annotations_trainval2017.zip"}
    assert script.main(["verify", "--root", str(root)]) == 1  # not prepared yet
    assert "coco_composition.py prepare --root" in capsys.readouterr().out
    assert script.main(["prepare", "--root", str(root), "--seed", "3", "--pixel-lower-bound"]) == 0
    assert "seed=3" in capsys.readouterr().out
    assert [q.id for q in cc.load_benchmark(root).queries] == ["1", "2", "4"]  # image 2 via the pixel bound
    assert script.main(["verify", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "OK: 3 queries" in out and "WARNING val2017 images: observed 4, expected 5,000" in out
    (root / cc.masked_name(2)).unlink()
    (root / cc.image_name(3)).unlink()
    assert script.main(["verify", "--root", str(root)]) == 1
    out = capsys.readouterr().out
    assert "val2017_masked/000000000002.png" in out and "val2017/000000000003.jpg" in out and "FAILED" in out


def test_image_folder_prepare_and_verify(tmp_path, capsys):
    root = make_folder(tmp_path / "imgs")
    script = SCRIPTS["image_folder"]
    out = tmp_path / "lists" / "train.tsv"
    assert script.main(["prepare", "--images", str(root), "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "filepath\ttitle" and lines[1] == f"{(root / 'B.PNG').resolve()}\t" and len(lines) == 5
    ds = imf.CSVImages(out)
    assert len(ds) == 4 and ds.paths[0].resolve() == (root / "B.PNG").resolve()
    assert script.main(["verify", "--csv", str(out)]) == 0
    (root / "sub" / "c.jpeg").write_bytes(b"garbage")
    (root / "a.jpg").unlink()
    report = tmp_path / "report.txt"
    assert script.main(["verify", "--csv", str(out), "--report", str(report)]) == 1
    text = capsys.readouterr().out
    assert "1 missing, 1 unreadable" in text and "MISSING" in text and "UNREADABLE" in text and "c.jpeg" in text
    assert report.read_text().count("\n") == 2
    assert script.main(["verify", "--images", str(root)]) == 1
    assert "UNREADABLE" in capsys.readouterr().out
    assert script.main(["verify", "--csv", str(out), "--csv-img-key", "path"]) == 2
    assert "--csv-img-key" in capsys.readouterr().err
    assert script.main(["prepare", "--images", str(tmp_path / "lists"), "--out", str(tmp_path / "x.tsv")]) == 2


def test_tsv_written_by_prepare_opens_from_another_working_directory(tmp_path, monkeypatch, capsys):
    """Pic2Word opens each path of the TSV as written (relative to its working directory): the default TSV must work
    from anywhere, exactly as idclab's verify and CSVImages see it."""
    root = make_folder(tmp_path / "data" / "imgs")
    script = SCRIPTS["image_folder"]
    out = tmp_path / "data" / "lists" / "train.tsv"
    assert script.main(["prepare", "--images", str(root), "--out", str(out)]) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    for row in rows:  # what Pic2Word's loader does with each row
        with Image.open(row["filepath"]) as im:
            im.load()
    assert [Path(r["filepath"]) for r in rows] == imf.CSVImages(out).paths  # idclab reads the same files
    assert script.main(["verify", "--csv", str(out)]) == 0 and "NOTE" not in capsys.readouterr().out
    relative = tmp_path / "data" / "lists" / "relative.tsv"  # --relative: idclab resolves, Pic2Word would not
    assert script.main(["prepare", "--images", str(root), "--out", str(relative), "--relative"]) == 0
    first = relative.read_text().splitlines()[1].split("\t")[0]
    assert first == "../imgs/B.PNG" and not Path(first).exists()  # not from this working directory
    assert script.main(["verify", "--csv", str(relative)]) == 0
    assert "NOTE 4 paths are relative" in capsys.readouterr().out
