"""Real CIR dataset loaders (FashionIQ, CIRR, CIRCO) and their data scripts.

Everything runs on tiny trees built here in the datasets' exact on-disk layouts (plus a Shapes export in CIRR's
layout); the network is replaced by a fake ``open_url``, so downloads, extraction and verify run offline.
"""

from __future__ import annotations

import importlib
import io
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from idclab.cir import CIRBenchmark, CIRQuery
from idclab.data import circo, cirr, shapes
from idclab.data import fashioniq as fiq

SCRIPTS_DIR = Path(__file__).resolve().parents[1] / "data_scripts"


def _import_scripts():
    sys.path.insert(0, str(SCRIPTS_DIR))
    try:
        return {name: importlib.import_module(name) for name in ("_common", "fashioniq", "cirr", "circo")}
    finally:
        sys.path.remove(str(SCRIPTS_DIR))


SCRIPTS = _import_scripts()
common = SCRIPTS["_common"]


def save_image(path: Path, *, size=(10, 8), seed=0) -> np.ndarray:
    """A random RGB image of ``size`` (W, H) saved at ``path`` (format from the suffix); returns its pixels."""
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, "RGB").save(path, quality=100)
    return arr


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


class FakeWeb:
    """Stands in for ``_common.open_url``: serves ``files`` (url -> bytes); an unknown URL is a dead link."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.calls = files, []

    def __call__(self, url, *, start=0, timeout=None):
        self.calls.append(url)
        if url not in self.files:
            raise RuntimeError(f"Downloading {url} failed: HTTP 404 Not Found. Check the URL in a browser")
        data = self.files[url]
        return (206, io.BytesIO(data[start:])) if start else (200, io.BytesIO(data))


# ----------------------------------------------------------------------------------------------------------------
# FashionIQ fixture: X1 is in both the shirt and the toptee val galleries (one image file, a .jpg)
# ----------------------------------------------------------------------------------------------------------------

FIQ_SPLITS = {
    "val": {"dress": ["D1", "D2", "D3"], "shirt": ["S1", "S2", "X1"], "toptee": ["T1", "X1", "T2"]},
    "train": {"dress": ["D4", "D5"], "shirt": ["S3", "S4"], "toptee": ["T3", "T4"]},
    "test": {"dress": ["D6", "D7"], "shirt": ["S5", "S6"], "toptee": ["T5", "T6"]},
}
FIQ_CAPTIONS = {
    "val": {"dress": [("D1", "D2", "is longer", "has no sleeves"), ("D3", "D1", "is red", "is shorter")],
            "shirt": [("S1", "X1", "is blue", "has a collar")],
            "toptee": [("X1", "T2", "has a print", "is darker")]},
    "train": {"dress": [("D4", "D5", "a", "b")], "shirt": [("S3", "S4", "c", "d")], "toptee": [("T3", "T4", "e", "f")]},
    "test": {"dress": [("D6", None, "g", "h")], "shirt": [("S5", None, "i", "j")], "toptee": [("T6", None, "k", "l")]},
}


def fiq_entries(split, cat):
    return [{"candidate": c, "captions": [c1, c2], **({"target": t} if t is not None else {})}
            for c, t, c1, c2 in FIQ_CAPTIONS[split][cat]]


def make_fiq(root: Path, *, caption_dir: str = "captions", images: bool = True) -> Path:
    for split, cats in FIQ_SPLITS.items():
        for cat, asins in cats.items():
            write_json(root / "image_splits" / f"split.{cat}.{split}.json", asins)
            write_json(root / caption_dir / f"cap.{cat}.{split}.json", fiq_entries(split, cat))
    if images:
        for k, asin in enumerate(sorted({a for cats in FIQ_SPLITS.values() for v in cats.values() for a in v})):
            save_image(root / "images" / f"{asin}{'.jpg' if asin.startswith(('X', 'S')) else '.png'}", seed=k)
    return root


@pytest.fixture
def fiq_root(tmp_path):
    return make_fiq(tmp_path / "fashionIQ_dataset")


def test_fashioniq_val_benchmark_galleries_queries_and_global_asin_index(fiq_root):
    b = fiq.load_benchmark(fiq_root, "val")
    assert isinstance(b, CIRBenchmark) and (b.name, b.split, b.protocol) == ("fashioniq", "val", "fashioniq")
    assert b.galleries == {c: tuple(v) for c, v in FIQ_SPLITS["val"].items()}  # split-file order, key = category
    assert b.queries == [
        CIRQuery("dress/0", "D1", "fashioniq", {"cap1": "is longer", "cap2": "has no sleeves"}, ("D2",),
                 group="dress", gallery="dress"),
        CIRQuery("dress/1", "D3", "fashioniq", {"cap1": "is red", "cap2": "is shorter"}, ("D1",),
                 group="dress", gallery="dress"),
        CIRQuery("shirt/0", "S1", "fashioniq", {"cap1": "is blue", "cap2": "has a collar"}, ("X1",),
                 group="shirt", gallery="shirt"),
        CIRQuery("toptee/0", "X1", "fashioniq", {"cap1": "has a print", "cap2": "is darker"}, ("T2",),
                 group="toptee", gallery="toptee")]
    # X1 is in two galleries but is one image, indexed once by ASIN, with its .jpg file
    assert sorted(b.images) == ["D1", "D2", "D3", "S1", "S2", "T1", "T2", "X1"]
    assert b.images["X1"].path == fiq_root / "images" / "X1.jpg"
    assert b.images["D2"].path == fiq_root / "images" / "D2.png"
    assert b.info["unique_images"] == 8 and b.info["expected_gallery"]["shirt"] == 6_346
    save_image(fiq_root / "images" / "D3.jpg", seed=99)  # both formats: the .png is used
    assert fiq.load_benchmark(fiq_root, "val").images["D3"].path == fiq_root / "images" / "D3.png"
    assert fiq.EXPECTED_TRIPLETS["val"] == {"dress": 2_017, "shirt": 2_038, "toptee": 1_961}
    assert fiq.EXPECTED_UNIQUE_ASINS == 74_381
    only = fiq.load_benchmark(fiq_root, "val", categories=("toptee",))
    assert list(only.galleries) == ["toptee"] and [q.id for q in only.queries] == ["toptee/0"]


def test_fashioniq_test_split_has_no_targets_and_json_folder_is_accepted(tmp_path):
    root = make_fiq(tmp_path / "fiq", caption_dir="json")  # Pic2Word's folder name
    b = fiq.load_benchmark(root, "test")
    assert [q.targets for q in b.queries] == [(), (), ()] and [q.reference for q in b.queries] == ["D6", "S5", "T6"]
    triplets = fiq.read_triplets(root, "val", "dress")
    assert triplets[1] == fiq.FashionIQTriplet("dress/1", "dress", "D3", "D1", ("is red", "is shorter"))
    with pytest.raises(FileNotFoundError, match="python data_scripts/fashioniq.py download --root"):
        fiq.read_triplets(tmp_path / "nowhere", "val", "dress")
    with pytest.raises(ValueError, match="category"):
        fiq.read_triplets(root, "val", "shoes")


def test_fashioniq_missing_images_are_listed_by_asin_with_count(fiq_root):
    (fiq_root / "images" / "D2.png").unlink()
    (fiq_root / "images" / "X1.jpg").unlink()
    with pytest.raises(FileNotFoundError) as e:
        fiq.load_benchmark(fiq_root, "val")
    msg = str(e.value)
    assert msg.startswith("2 images of FashionIQ val") and "D2, X1" in msg
    assert f"python data_scripts/fashioniq.py verify --root {fiq_root}" in msg and "Plachta/FashionIQ" in msg
    b = fiq.load_benchmark(fiq_root, "val", check_files=False)  # nothing dropped: same queries, counted missing
    assert len(b.queries) == 4 and b.info["missing_images"] == 2
    assert b.images["X1"].path == fiq_root / "images" / "X1.png"
    with pytest.raises(FileNotFoundError, match="D2"):
        fiq.FashionIQTriplets(fiq_root, "val", categories=("dress",))
    assert len(fiq.FashionIQTriplets(fiq_root, "train")) == 3  # the train images are all there


def test_fashioniq_candidate_or_target_outside_its_gallery_is_an_error(fiq_root):
    entries = fiq_entries("val", "shirt") + [{"candidate": "T1", "target": "S9", "captions": ["x", "y"]}]
    write_json(fiq_root / "captions" / "cap.shirt.val.json", entries)
    with pytest.raises(ValueError, match=r"2 candidates / targets.*shirt/1: candidate T1, shirt/1: target S9"):
        fiq.load_benchmark(fiq_root, "val")


def test_fashioniq_triplets_dataset_items(fiq_root):
    ds = fiq.FashionIQTriplets(fiq_root, "val", image_size=16)
    assert len(ds) == 4 and ds.ids == ["dress/0", "dress/1", "shirt/0", "toptee/0"]
    item = ds[2]
    assert set(item) == {"reference", "target", "captions", "category", "id"}
    assert item["reference"].shape == item["target"].shape == (16, 16, 3) and item["target"].dtype == np.uint8
    assert item["captions"] == ["is blue", "has a collar"] and item["category"] == "shirt" and item["id"] == "shirt/0"
    raw = fiq.FashionIQTriplets(fiq_root, "val")[0]
    np.testing.assert_array_equal(raw["target"], np.asarray(Image.open(fiq_root / "images" / "D2.png")))
    with pytest.raises(ValueError, match="no targets"):
        fiq.FashionIQTriplets(fiq_root, "test")


# ----------------------------------------------------------------------------------------------------------------
# CIRR fixture
# ----------------------------------------------------------------------------------------------------------------

CIRR_IMAGES = {
    "train": [f"train-{i}-0-img{j}" for i in range(2) for j in range(4)],
    "val": [f"dev-{i}-0-img{j}" for i in range(2) for j in range(4)],
    "test1": [f"test1-{i}-0-img{j}" for i in range(2) for j in range(4)],
}
CIRR_FOLDER = {"train": "train/7", "val": "dev", "test1": "test1"}


def cirr_entries(split: str) -> list[dict]:
    names = CIRR_IMAGES[split]
    out = []
    for k in range(2):
        ref, tgt = names[k], names[k + 3]
        members = [names[(k + j) % len(names)] for j in range(6)]
        e = {"pairid": 100 + k, "reference": ref, "caption": f"caption {split} {k}",
             "img_set": {"id": k, "members": members}}
        if split != "test1":
            e.update(target_hard=tgt, target_soft={tgt: 1.0})
            e["img_set"].update(reference_rank=members.index(ref), target_rank=members.index(tgt))
        out.append(e)
    return out


def make_cirr(root: Path, *, images: bool = True) -> Path:
    for split, names in CIRR_IMAGES.items():
        write_json(root / "cirr" / "captions" / f"cap.rc2.{split}.json", cirr_entries(split))
        write_json(root / "cirr" / "image_splits" / f"split.rc2.{split}.json",
                   {n: f"./{CIRR_FOLDER[split]}/{n}.png" for n in reversed(names)})
        if images:
            for k, n in enumerate(names):
                save_image(root / CIRR_FOLDER[split] / f"{n}.png", seed=k)
    return root


@pytest.fixture
def cirr_root(tmp_path):
    return make_cirr(tmp_path / "cirr_dataset")


def test_cirr_val_benchmark(cirr_root):
    b = cirr.load_benchmark(cirr_root, "val")
    names = sorted(CIRR_IMAGES["val"])
    assert (b.name, b.split, b.protocol) == ("cirr", "val", "cirr") and b.galleries == {"all": tuple(names)}
    assert b.images["dev-1-0-img2"] == cirr_root / "dev" / "dev-1-0-img2.png"
    q = b.queries[1]
    assert q == CIRQuery("101", "dev-0-0-img1", "cirr", {"caption": "caption val 1"}, ("dev-1-0-img0",),
                         subset=tuple(CIRR_IMAGES["val"][1:7]), group="all", gallery="all")
    assert len(q.subset) == 6 and q.reference in q.subset
    assert b.info["expected_queries"] == 4_181 and b.info["hidden_targets"] == 0
    train = cirr.load_benchmark(cirr_root, "train")  # images in numbered sub-folders
    assert train.images["train-0-0-img0"] == cirr_root / "train" / "7" / "train-0-0-img0.png"


def test_cirr_test1_has_no_targets_and_test_is_its_alias(cirr_root):
    b = cirr.load_benchmark(cirr_root, "test1")
    assert b.split == "test1" and [q.targets for q in b.queries] == [(), ()]
    assert [len(q.subset) for q in b.queries] == [6, 6]
    alias = cirr.load_benchmark(cirr_root, "test")
    assert alias.split == "test1" and alias.queries == b.queries and alias.galleries == b.galleries
    assert [q.target for q in cirr.read_queries(cirr_root, "test")] == [None, None]
    with pytest.raises(ValueError, match="no target"):
        cirr.CIRRTriplets(cirr_root, "test1")
    with pytest.raises(ValueError, match="'dev'"):
        cirr.load_benchmark(cirr_root, "dev")


def test_cirr_reference_absent_from_the_split_file_is_listed(cirr_root):
    entries = cirr_entries("val")
    entries[0]["reference"] = "dev-9-9-img9"
    entries[0]["img_set"]["members"][0] = "dev-9-9-img9"
    write_json(cirr_root / "cirr" / "captions" / "cap.rc2.val.json", entries)
    with pytest.raises(ValueError, match=r"1 images named by CIRR val queries.*dev-9-9-img9"):
        cirr.load_benchmark(cirr_root, "val")
    entries[0]["reference"] = "dev-1-0-img3"  # in the split, not one of its own members
    write_json(cirr_root / "cirr" / "captions" / "cap.rc2.val.json", entries)
    with pytest.raises(ValueError, match="img_set"):
        cirr.read_queries(cirr_root, "val")


def test_cirr_missing_images_name_the_manual_nlvr2_step(cirr_root):
    (cirr_root / "dev" / "dev-1-0-img3.png").unlink()
    with pytest.raises(FileNotFoundError) as e:
        cirr.load_benchmark(cirr_root, "val")
    msg = str(e.value)
    assert msg.startswith("1 image files of CIRR val") and "dev-1-0-img3" in msg and "NLVR2" in msg
    assert f"python data_scripts/cirr.py verify --root {cirr_root}" in msg
    assert len(cirr.load_benchmark(cirr_root, "val", check_files=False).queries) == 2
    with pytest.raises(FileNotFoundError, match="python data_scripts/cirr.py download"):
        cirr.load_benchmark(cirr_root.parent / "nowhere", "val")


def test_cirr_triplets_dataset_items(cirr_root):
    ds = cirr.CIRRTriplets(cirr_root, "val", image_size=12)
    assert len(ds) == 2 and ds.ids == ["100", "101"]
    item = ds[-1]
    assert set(item) == {"reference", "target", "caption", "id"} and item["id"] == "101"
    assert item["reference"].shape == (12, 12, 3) and item["caption"] == "caption val 1"
    raw = cirr.CIRRTriplets(cirr_root, "train")[0]
    np.testing.assert_array_equal(raw["target"],
                                  np.asarray(Image.open(cirr_root / "train" / "7" / "train-0-0-img3.png")))


def test_cirr_reads_a_shapes_export_with_task_groups(tmp_path):
    out = shapes.export_cir(tmp_path / "shapes", split="val", n=6, size=32)
    b = cirr.load_benchmark(out, "val")
    assert (b.name, b.protocol, b.split) == ("shapes", "shapes", "val")
    ref = shapes.ShapesTriplets("val", 6, size=32)
    assert [q.group for q in b.queries] == [ref[i]["task"] for i in range(6)]
    assert [q.fields for q in b.queries] == [{"caption": ref[i]["text"]} for i in range(6)]
    assert [q.targets for q in b.queries] == [(f"dev-{i}-tgt",) for i in range(6)]
    assert [q.reference for q in b.queries] == [f"dev-{i}-ref" for i in range(6)]
    for i, q in enumerate(b.queries):
        assert sorted(q.subset) == sorted([f"dev-{i}-ref", f"dev-{i}-tgt"] + [f"dev-{i}-neg{k}" for k in range(4)])
    assert len(b.galleries["all"]) == 36 and set(b.images) == set(b.galleries["all"])
    np.testing.assert_array_equal(cirr.CIRRTriplets(out, "val")[2]["target"], ref[2]["target"])
    test = cirr.load_benchmark(shapes.export_cir(out, split="test", n=2, size=32), "test")
    assert test.split == "test1" and [q.targets for q in test.queries] == [("test1-0-tgt",), ("test1-1-tgt",)]


# ----------------------------------------------------------------------------------------------------------------
# CIRCO fixture
# ----------------------------------------------------------------------------------------------------------------

CIRCO_IDS = [1, 5, 42, 1000, 123456, 7]


def circo_annotations() -> dict[str, list[dict]]:
    val = [{"id": 0, "reference_img_id": 1, "target_img_id": 42, "relative_caption": "has two dogs",
            "shared_concept": "a dog", "gt_img_ids": [42, 1000, 7], "semantic_aspects": ["cardinality"]},
           {"id": 1, "reference_img_id": 5, "target_img_id": 123456, "relative_caption": "is at night",
            "shared_concept": "a street", "gt_img_ids": [123456], "semantic_aspects": ["context"]}]
    test = [{"id": 3, "reference_img_id": 42, "relative_caption": "is red", "shared_concept": "a car"}]
    return {"val": val, "test": test}


def make_circo(root: Path, *, images: bool = True) -> Path:
    for split, entries in circo_annotations().items():
        write_json(root / "annotations" / f"{split}.json", entries)
    info = {"info": {}, "images": [{"id": i, "file_name": f"{i:012d}.jpg", "width": 10, "height": 8}
                                   for i in CIRCO_IDS]}
    write_json(root / circo.IMAGE_INFO, info)
    if images:
        for k, i in enumerate(CIRCO_IDS):
            save_image(root / circo.IMAGE_DIR / f"{i:012d}.jpg", seed=k)
    return root


@pytest.fixture
def circo_root(tmp_path):
    return make_circo(tmp_path / "CIRCO")


def test_circo_val_and_test_benchmarks(circo_root):
    b = circo.load_benchmark(circo_root, "val")
    assert (b.name, b.split, b.protocol) == ("circo", "val", "circo")
    assert b.galleries == {"all": ("1", "5", "42", "1000", "123456", "7")}  # image-info order, str(int id)
    assert b.images["42"] == circo_root / "COCO2017_unlabeled" / "unlabeled2017" / "000000000042.jpg"
    assert b.queries[0] == CIRQuery("0", "1", "cirr", {"caption": "has two dogs", "shared_concept": "a dog"},
                                    ("42", "1000", "7"))
    assert b.queries[1].targets == ("123456",) and b.info["ground_truths_per_query"] == 2.0
    t = circo.load_benchmark(circo_root, "test")
    assert [(q.id, q.reference, q.targets) for q in t.queries] == [("3", "42", ())]
    q = circo.read_queries(circo_root, "val")[0]
    assert q.target == "42" and q.gt == ("42", "1000", "7") and q.semantic_aspects == ("cardinality",)


def test_circo_target_must_be_the_first_ground_truth(circo_root):
    ann = circo_annotations()["val"]
    ann[1]["target_img_id"] = 7
    write_json(circo_root / "annotations" / "val.json", ann)
    with pytest.raises(ValueError, match=r"1 queries .* target_img_id .*1 \(target 7"):
        circo.load_benchmark(circo_root, "val")


def test_circo_missing_images_and_absent_ground_truth_are_listed(circo_root):
    (circo_root / circo.IMAGE_DIR / "000000001000.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"^1 of the 6 gallery images.*\(by COCO id\): 1000\."):
        circo.load_benchmark(circo_root, "val")
    assert circo.load_benchmark(circo_root, "val", check_files=False).info["missing_images"] == 1
    ann = circo_annotations()["val"]
    ann[0]["gt_img_ids"] = [42, 99]
    write_json(circo_root / "annotations" / "val.json", ann)
    with pytest.raises(ValueError, match=r"1 reference / ground-truth ids .*: 99\."):
        circo.load_benchmark(circo_root, "val", check_files=False)


# ----------------------------------------------------------------------------------------------------------------
# data_scripts: verify
# ----------------------------------------------------------------------------------------------------------------

MAKERS = {"fashioniq": make_fiq, "cirr": make_cirr, "circo": make_circo}
A_FILE = {"fashioniq": ("images/T2.png", "T2"), "cirr": ("dev/dev-0-0-img2.png", "dev-0-0-img2"),
          "circo": ("COCO2017_unlabeled/unlabeled2017/000000000005.jpg", "000000000005")}
SPLITS_OF = {"fashioniq": {"train", "val", "test"}, "cirr": {"train", "val", "test1"}, "circo": {"val", "test"}}


@pytest.mark.parametrize("name", list(MAKERS))
def test_verify_lists_missing_files_and_exits_nonzero(tmp_path, capsys, name):
    root = MAKERS[name](tmp_path / name)
    assert SCRIPTS[name].main(["verify", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "OK:" in out and "WARNING" in out  # tiny trees differ from the published counts: warned, not failed
    manifest = json.loads((root / "idclab_manifest.json").read_text())
    assert manifest["dataset"] == name and set(manifest["splits"]) == SPLITS_OF[name]
    path, shown = A_FILE[name]
    (root / path).unlink()
    assert SCRIPTS[name].main(["verify", "--root", str(root)]) == 1
    out = capsys.readouterr().out
    assert "MISSING" in out and shown in out and "FAILED" in out
    assert shown in (root / "verify_missing.txt").read_text()


def test_fashioniq_verify_reports_gallery_problems_and_changed_triplets(fiq_root, capsys):
    main = SCRIPTS["fashioniq"].main
    assert main(["verify", "--root", str(fiq_root)]) == 0
    assert "all splits: 20 unique ASINs in 21 split-file entries" in capsys.readouterr().out  # X1 counted once
    write_json(fiq_root / "captions" / "cap.dress.val.json",
               fiq_entries("val", "dress") + [{"candidate": "D3", "target": "Q0", "captions": ["x", "y"]}])
    assert main(["verify", "--root", str(fiq_root), "--split", "val"]) == 1
    out = capsys.readouterr().out
    assert "NOT IN GALLERY val dress" in out and "dress/2: target Q0" in out and "CHANGED val" in out


def test_cirr_verify_checks_a_shapes_export_against_its_meta(tmp_path, capsys):
    out = shapes.export_cir(tmp_path / "shapes", split="val", n=3, size=32)
    assert SCRIPTS["cirr"].main(["verify", "--root", str(out)]) == 0
    text = capsys.readouterr().out
    assert "val: 3 queries (0 with hidden targets), 18 images" in text and "WARNING" not in text
    assert "train" not in text


# ----------------------------------------------------------------------------------------------------------------
# data_scripts: downloads (network replaced by a fake)
# ----------------------------------------------------------------------------------------------------------------


def _zip(members: dict[str, bytes], out: Path) -> bytes:
    with zipfile.ZipFile(out, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return out.read_bytes()


def test_fashioniq_download_fetches_annotations_and_lists_dead_image_urls(tmp_path, monkeypatch, capsys):
    src = make_fiq(tmp_path / "src")
    script = SCRIPTS["fashioniq"]
    served = {script.REPO_URL.format(path=rel): (src / rel).read_bytes() for rel in script.annotation_files()}
    all_images = {p.stem: p for p in (src / "images").iterdir()}
    dead = {"D2", "T5"}
    for cat, prefix in (("dress", "D"), ("shirt", "S"), ("toptee", "T")):
        asins = sorted(a for a in all_images if a.startswith(prefix)) + (["X1"] if cat != "dress" else [])
        lines = [f"{a}\thttps://m.media-amazon.com/images/I/{a}{all_images[a].suffix}" for a in asins]
        served[script.URL_LIST_URL.format(cat=cat)] = "\n".join(lines).encode()
        for a in asins:
            if a not in dead:
                served[f"https://m.media-amazon.com/images/I/{a}{all_images[a].suffix}"] = all_images[a].read_bytes()
    web = FakeWeb(served)
    monkeypatch.setattr(common, "open_url", web)
    root = tmp_path / "root"
    assert script.main(["download", "--root", str(root)]) == 1  # two dead URLs
    out = capsys.readouterr().out
    assert "2 of 20 images could not be fetched" in out and "D2, T5" in out and "Plachta/FashionIQ" in out
    assert [line.split("\t")[0] for line in (root / "download_failed.txt").read_text().splitlines()] == ["D2", "T5"]
    assert sum(url.endswith("X1.jpg") for url in web.calls) == 1  # one image per ASIN, whatever its categories
    assert (root / "images" / "X1.jpg").read_bytes() == all_images["X1"].read_bytes()
    assert fiq.read_triplets(root, "val", "toptee") == fiq.read_triplets(src, "val", "toptee")
    assert script.main(["verify", "--root", str(root)]) == 1
    assert "D2" in (root / "verify_missing.txt").read_text()
    # a mirror's archive fills the gap; then everything verifies
    _zip({f"FashionIQ/images/{a}{all_images[a].suffix}": all_images[a].read_bytes() for a in dead},
                  tmp_path / "mirror.zip")
    assert script.main(["download", "--root", str(root), "--archive", str(tmp_path / "mirror.zip")]) == 0
    assert script.main(["verify", "--root", str(root)]) == 0
    assert len(fiq.load_benchmark(root, "val").queries) == 4


def test_cirr_download_fetches_annotations_and_prints_the_manual_step(tmp_path, monkeypatch, capsys):
    src = make_cirr(tmp_path / "src", images=False)
    script = SCRIPTS["cirr"]
    web = FakeWeb({script.REPO_URL.format(path=rel): (src / "cirr" / rel).read_bytes()
                   for rel in script.annotation_files()})
    monkeypatch.setattr(common, "open_url", web)
    root = tmp_path / "cirr_dataset"
    assert script.main(["download", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "MANUAL STEP" in out and "NLVR2" in out and "img_raw" in out
    assert len(web.calls) == 6 and cirr.read_queries(root, "val") == cirr.read_queries(src, "val")
    manifest = json.loads((root / "idclab_manifest.json").read_text())
    assert manifest["downloads"]["cirr/captions/cap.rc2.val.json"]["checksum"] == "not published"
    assert script.main(["verify", "--root", str(root)]) == 1  # no images yet
    assert "dev-0-0-img0" in (root / "verify_missing.txt").read_text()


def test_circo_download_extracts_coco_zips_then_verifies(tmp_path, monkeypatch, capsys):
    src = make_circo(tmp_path / "src")
    script = SCRIPTS["circo"]
    info_zip = _zip({"annotations/image_info_unlabeled2017.json": (src / circo.IMAGE_INFO).read_bytes()},
                    tmp_path / "info.zip")
    images_zip = _zip({f"unlabeled2017/{p.name}": p.read_bytes() for p in (src / circo.IMAGE_DIR).iterdir()},
                      tmp_path / "images.zip")
    served = {script.ANNOTATION_URL.format(split=s): (src / "annotations" / f"{s}.json").read_bytes()
              for s in circo.SPLITS}
    served.update({script.IMAGE_INFO_URL: info_zip, script.IMAGES_URL: images_zip})
    web = FakeWeb(served)
    monkeypatch.setattr(common, "open_url", web)
    root = tmp_path / "CIRCO"
    assert script.main(["download", "--root", str(root)]) == 0
    assert (root / circo.IMAGE_DIR / "000000123456.jpg").is_file() and not (root / "_extract").exists()
    assert not (root / "_downloads" / "unlabeled2017.zip").exists()  # removed after extraction
    assert script.main(["verify", "--root", str(root)]) == 0
    b = circo.load_benchmark(root, "val")
    assert b.galleries["all"] == tuple(str(i) for i in CIRCO_IDS)
    manifest = json.loads((root / "idclab_manifest.json").read_text())
    assert set(manifest["downloads"]) == {"annotations/val.json", "annotations/test.json",
                                          "image_info_unlabeled2017.zip", "unlabeled2017.zip"}
    n_calls = len(web.calls)
    assert script.main(["download", "--root", str(root)]) == 0  # complete: only the annotations are re-checked
    assert len(web.calls) == n_calls and "already holds all 6 images" in capsys.readouterr().out
