"""Real IDC dataset loaders (CLEVR-Change, Spot-the-Diff, Image-Editing-Request) and their data scripts.

Everything runs on tiny trees built here in the datasets' exact on-disk layouts; the network is replaced by a fake
``open_url`` / Google Drive fetch, so download, resume, checksum, extraction, prepare and verify are all exercised
offline.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import shutil
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from idclab import backbones
from idclab.data import image_editing_request as ier
from idclab.data import shapes
from idclab.data import spot_the_diff as sd
from idclab.data.clevr_change import CLEVRChange
from idclab.data.image_editing_request import ImageEditingRequest
from idclab.data.spot_the_diff import SpotTheDiff
from idclab.metrics.captioning import load_caption_json
from idclab.models import clip4idc as c

SCRIPTS_DIR = Path(__file__).resolve().parents[1] / "data_scripts"


def _import_scripts():
    sys.path.insert(0, str(SCRIPTS_DIR))
    try:
        return {name: importlib.import_module(name)
                for name in ("_common", "clevr_change", "spot_the_diff", "image_editing_request")}
    finally:
        sys.path.remove(str(SCRIPTS_DIR))


SCRIPTS = _import_scripts()
common = SCRIPTS["_common"]

# ----------------------------------------------------------------------------------------------------------------
# Fixture trees in the real layouts
# ----------------------------------------------------------------------------------------------------------------


def save_image(path: Path, *, size=(12, 8), mode="RGB", seed=0) -> np.ndarray:
    """A random image of ``size`` (W, H) saved at ``path`` (format from the suffix); returns its pixels."""
    rng = np.random.default_rng(seed)
    w, h = size
    if mode == "L":
        arr = rng.integers(0, 256, (h, w), dtype=np.uint8)
    else:
        arr = rng.integers(0, 256, (h, w, len(mode)), dtype=np.uint8)
        if mode == "RGBA":
            arr[..., 3] = 255  # CLEVR's alpha is opaque
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr, mode)
    if path.suffix == ".gif":
        img = img.convert("P")
    img.save(path)
    return arr


CLEVR_SPLITS = {"train": [0, 1, 2], "val": [3], "test": [10, 11, 12, 13, 14, 15]}
CLEVR_TYPES = {"color": [0, 10, 15], "material": [1, 11], "add": [2, 12], "drop": [3, 13], "move": [14]}


def make_clevr(root: Path) -> Path:
    """CLEVR-Change layout: images/ sc_images/ nsc_images/ (RGBA PNGs), captions, splits, type_mapping."""
    change, no_change = {}, {}
    for n in sorted(i for ids in CLEVR_SPLITS.values() for i in ids):
        for k, (folder, name) in enumerate((("images", "default"), ("sc_images", "semantic"),
                                            ("nsc_images", "nonsemantic"))):
            save_image(root / folder / f"CLEVR_{name}_{n:06d}.png", mode="RGBA", seed=3 * n + k)
        key = f"CLEVR_default_{n:06d}.png"
        change[key] = [f"object {n} changed", f"something about {n} changed"]
        no_change[key] = ["no change was made", f"scene {n} is the same"]
    (root / "change_captions.json").write_text(json.dumps(change))
    (root / "no_change_captions.json").write_text(json.dumps(no_change))
    (root / "splits.json").write_text(json.dumps(CLEVR_SPLITS))
    (root / "type_mapping.json").write_text(json.dumps(
        {t: [f"{n:06d}.png" for n in ids] for t, ids in CLEVR_TYPES.items()}))
    return root


SPOT_ANNOTATIONS = {
    "train": [{"img_id": "1", "sentences": ["a car left", "a man walks"]},
              {"img_id": "2", "sentences": ["nothing changed"]},
              {"img_id": "1", "sentences": ["the car is gone"]}],
    "val": [{"img_id": "5", "sentences": ["a person appears"]}, {"img_id": "6", "sentences": ["the van moved"]}],
    "test": [{"img_id": "7", "sentences": ["the truck is gone", "a man is walking"]},
             {"img_id": "8", "sentences": ["no difference"]},
             {"img_id": "7", "sentences": ["the white truck left"]}],
}


def make_spot(root: Path, *, images: bool = True) -> Path:
    """Spot-the-Diff layout: annotations/{split}.json with repeated img_ids; images/<id>.png, <id>_2.png."""
    for split, entries in SPOT_ANNOTATIONS.items():
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"{split}.json").write_text(json.dumps(entries))
        if images:
            for e in entries:
                n = int(e["img_id"])
                save_image(root / "images" / f"{n}.png", size=(10, 10), seed=100 + 2 * n)
                save_image(root / "images" / f"{n}_2.png", size=(10, 10), seed=101 + 2 * n)
                save_image(root / "images" / f"{n}_diff.jpg", size=(10, 10), seed=7)
    return root


IER_ANNOTATIONS = {
    "train.json": [{"img0": "Reddit.com_a1_a1.jpg", "img1": "Reddit.com_a1_x.png", "sents": ["add a hat"],
                    "uid": "Reddit_1"},
                   {"img0": "Reddit.com_a2_a2.png", "img1": "Reddit.com_a2_y.jpg", "sents": ["make it brighter"],
                    "uid": "Reddit_2"}],
    "valid.json": [{"img0": "Reddit.com_b1_b1.gif", "img1": "Reddit.com_b1_z.png",
                    "sents": ["rotate the coin", "turn the coin", "the coin is rotated"], "uid": "Reddit_10"}],
    "test.json": [{"img0": "Reddit.com_c1_c1.png", "img1": "Reddit.com_c1_w.jpg",
                   "sents": ["remove the man", "take out the person", "delete the man behind"], "uid": "Reddit_20"},
                  {"img0": "Reddit.com_c1_c1.png", "img1": "Reddit.com_c1_w.jpg",  # same photos, another request
                   "sents": ["remove the person", "erase the man", "the man is gone"], "uid": "Reddit_21"}],
}


def make_ier(root: Path, *, images: bool = True) -> Path:
    """IER layout: annotations/{train,valid,test}.json; images/ of mixed formats, sizes and modes."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for name, entries in IER_ANNOTATIONS.items():
        (root / "annotations" / name).write_text(json.dumps(entries))
    if images:
        for k, e in enumerate(e for entries in IER_ANNOTATIONS.values() for e in entries):
            save_image(root / "images" / e["img0"], size=(14, 9), mode="L" if k == 1 else "RGB", seed=200 + k)
            save_image(root / "images" / e["img1"], size=(9, 13), seed=300 + k)
    return root


@pytest.fixture
def clevr_root(tmp_path):
    return make_clevr(tmp_path / "clevr")


@pytest.fixture
def spot_root(tmp_path):
    return make_spot(tmp_path / "spot")


@pytest.fixture
def ier_root(tmp_path):
    return make_ier(tmp_path / "ier")


# ----------------------------------------------------------------------------------------------------------------
# CLEVR-Change
# ----------------------------------------------------------------------------------------------------------------


def test_clevr_items_keys_shapes_and_rgba_conversion(clevr_root):
    ds = CLEVRChange(clevr_root, "test")
    # ids as the reference tools write them: the image number with its extension
    assert len(ds) == 6 and ds.ids == ["000010.png", "000011.png", "000012.png", "000013.png", "000014.png",
                                       "000015.png"]
    item = ds[1]
    assert set(item) == {"before", "after", "distractor", "change_type", "captions", "no_change_captions", "target",
                         "id"}
    for key in ("before", "after", "distractor"):
        assert item[key].dtype == np.uint8 and item[key].shape == (8, 12, 3)
    rgba = np.asarray(Image.open(clevr_root / "sc_images" / "CLEVR_semantic_000011.png"))
    assert rgba.shape == (8, 12, 4)  # stored RGBA, returned RGB (opaque alpha: the RGB values unchanged)
    np.testing.assert_array_equal(item["after"], rgba[..., :3])
    assert item["id"] == "000011.png" and item["target"] is None
    assert item["change_type"] == "texture"  # RCC's "material" key
    assert item["captions"] == ["object 11 changed", "something about 11 changed"]
    assert item["no_change_captions"] == ["no change was made", "scene 11 is the same"]
    np.testing.assert_array_equal(ds[-1]["before"], ds[5]["before"])
    with pytest.raises(IndexError):
        ds[6]


def test_clevr_image_size_squashes_bicubic_without_crop(clevr_root):
    item = CLEVRChange(clevr_root, "val", image_size=16)[0]
    assert item["before"].shape == item["distractor"].shape == (16, 16, 3)
    raw = backbones.load_image(clevr_root / "images" / "CLEVR_default_000003.png")
    np.testing.assert_array_equal(item["before"], np.asarray(Image.fromarray(raw).resize((16, 16), Image.BICUBIC)))
    with pytest.raises(ValueError, match="image_size"):
        CLEVRChange(clevr_root, "val", image_size=0)


def test_clevr_references_total_setting_with_n_ids_and_type_groups(clevr_root):
    ds = CLEVRChange(clevr_root, "test")
    gts, groups = ds.references()
    assert list(gts) == ds.ids + [i + "_n" for i in ds.ids]  # change ids, then the no-change (_n) ids
    assert gts["000012.png"] == ["object 12 changed", "something about 12 changed"]
    assert gts["000012.png_n"] == ["no change was made", "scene 12 is the same"]
    assert groups == {"000010.png": "color", "000011.png": "texture", "000012.png": "add", "000013.png": "drop",
                      "000014.png": "move", "000015.png": "color", **{i + "_n": "distractor" for i in ds.ids}}
    gts_c, groups_c = ds.references(with_no_change=False)
    assert list(gts_c) == ds.ids and set(groups_c.values()) == {"color", "texture", "add", "drop", "move"}


def test_shapes_export_loads_through_clevr_change_with_equal_items(tmp_path):
    out = shapes.export_idc(tmp_path / "shapes", split="val", n=4, size=32)
    ds, ref = CLEVRChange(out, "val"), shapes.ShapesPairs("val", 4, size=32)
    assert len(ds) == 4 and ds.ids == [f"{shapes.IDC_ID_STRIDE + i:06d}.png" for i in range(4)]
    for i in range(4):
        got, want = ds[i], ref[i]
        for key in ("before", "after", "distractor"):
            np.testing.assert_array_equal(got[key], want[key])
        for key in ("captions", "no_change_captions", "change_type"):
            assert got[key] == want[key]
    _, groups = ds.references()
    assert [groups[i] for i in ds.ids] == [ref[i]["change_type"] for i in range(4)]


# ----------------------------------------------------------------------------------------------------------------
# Spot-the-Diff and IER
# ----------------------------------------------------------------------------------------------------------------


def test_spot_merges_repeated_ids_with_every_sentence(spot_root):
    ds = SpotTheDiff(spot_root, "train")
    assert ds.ids == ["1.png", "2.png"]  # first-appearance order, one pair per img_id, named like CLIP4IDC's ids
    item = ds[0]
    assert item["captions"] == ["a car left", "a man walks", "the car is gone"]
    assert "distractor" not in item and item["no_change_captions"] == [] and item["change_type"] == "change"
    assert item["before"].shape == item["after"].shape == (10, 10, 3) and item["id"] == "1.png"
    np.testing.assert_array_equal(item["after"], np.asarray(Image.open(spot_root / "images" / "1_2.png")))
    gts, groups = SpotTheDiff(spot_root, "test").references()
    assert gts == {"7.png": ["the truck is gone", "a man is walking", "the white truck left"],
                   "8.png": ["no difference"]}
    assert groups == {"7.png": "change", "8.png": "change"}


def test_ier_val_reads_valid_json_and_converts_every_image_to_rgb(ier_root):
    ds = ImageEditingRequest(ier_root, "val")
    assert ds.ids == ["Reddit_10"]
    item = ds[0]
    assert item["before"].shape == (9, 14, 3) and item["after"].shape == (13, 9, 3)  # a GIF, then a PNG
    assert item["captions"] == ["rotate the coin", "turn the coin", "the coin is rotated"]
    assert "distractor" not in item and item["no_change_captions"] == [] and item["target"] is None
    gray = ImageEditingRequest(ier_root, "train")[1]["before"]  # a grayscale PNG -> R = G = B
    assert gray.shape == (9, 14, 3) and (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    test = ImageEditingRequest(ier_root, "test", image_size=16)
    assert test.ids == ["Reddit_20", "Reddit_21"] and test[1]["after"].shape == (16, 16, 3)
    gts, groups = test.references()
    assert gts["Reddit_21"] == ["remove the person", "erase the man", "the man is gone"]
    assert set(groups.values()) == {"change"}
    with pytest.raises(ValueError, match="'val'"):
        ImageEditingRequest(ier_root, "valid")


# ----------------------------------------------------------------------------------------------------------------
# Errors that name the fix
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls, script", [(CLEVRChange, "clevr_change.py"), (SpotTheDiff, "spot_the_diff.py"),
                                         (ImageEditingRequest, "image_editing_request.py")])
def test_missing_root_names_the_download_command(tmp_path, cls, script):
    root = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=f"python data_scripts/{script} download --root {root}"):
        cls(root, "test")


def test_missing_split_file_and_ier_mirror_are_named(tmp_path):
    root = make_spot(tmp_path / "spot")
    (root / "annotations" / "val.json").unlink()
    with pytest.raises(FileNotFoundError, match="val.json is missing"):
        SpotTheDiff(root, "val")
    with pytest.raises(FileNotFoundError, match="archive.org"):
        ImageEditingRequest(tmp_path / "nowhere", "train")
    with pytest.raises(FileNotFoundError, match="idclab shapes export --task idc"):
        CLEVRChange(tmp_path / "nowhere", "train")


def test_missing_images_are_listed_never_dropped(clevr_root, spot_root):
    for sub in ("sc_images", "nsc_images"):
        for n in CLEVR_SPLITS["test"]:
            name = f"CLEVR_{'semantic' if sub == 'sc_images' else 'nonsemantic'}_{n:06d}.png"
            (clevr_root / sub / name).unlink()
    with pytest.raises(FileNotFoundError) as e:
        CLEVRChange(clevr_root, "test")
    msg = str(e.value)
    assert msg.startswith("12 image files") and "2 more (12 in all)" in msg
    assert msg.count("CLEVR_semantic_") + msg.count("CLEVR_nonsemantic_") == 10  # the first 10 are named
    assert f"python data_scripts/clevr_change.py verify --root {clevr_root}" in msg
    assert len(CLEVRChange(clevr_root, "train")) == 3  # other splits are complete
    (spot_root / "images" / "2_2.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"(?s)1 image files.*images/2_2\.png.*spot_the_diff.py verify"):
        SpotTheDiff(spot_root, "train")


# ----------------------------------------------------------------------------------------------------------------
# data_scripts: verify, prepare
# ----------------------------------------------------------------------------------------------------------------

MAKERS = {"clevr_change": make_clevr, "spot_the_diff": make_spot, "image_editing_request": make_ier}
A_FILE = {"clevr_change": "nsc_images/CLEVR_nonsemantic_000002.png", "spot_the_diff": "images/6.png",
          "image_editing_request": "images/Reddit.com_c1_w.jpg"}


@pytest.mark.parametrize("name", list(MAKERS))
def test_verify_lists_missing_files_and_exits_nonzero(tmp_path, capsys, name):
    root = MAKERS[name](tmp_path / name)
    assert SCRIPTS[name].main(["verify", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "OK:" in out and "WARNING" in out  # tiny trees differ from the published counts: warned, not failed
    manifest = json.loads((root / "idclab_manifest.json").read_text())
    assert manifest["dataset"] == name and set(manifest["splits"]) == {"train", "val", "test"}
    (root / A_FILE[name]).unlink()
    assert SCRIPTS[name].main(["verify", "--root", str(root)]) == 1
    out = capsys.readouterr().out
    assert "MISSING" in out and A_FILE[name] in out and "FAILED" in out
    assert A_FILE[name].split("/")[1] in (root / "verify_missing.txt").read_text()


def test_verify_reports_changed_ids_against_the_manifest(clevr_root, capsys):
    main = SCRIPTS["clevr_change"].main
    assert main(["verify", "--root", str(clevr_root)]) == 0
    splits = json.loads((clevr_root / "splits.json").read_text())
    splits["test"] = splits["test"][:-1]
    (clevr_root / "splits.json").write_text(json.dumps(splits))
    capsys.readouterr()
    assert main(["verify", "--root", str(clevr_root)]) == 1
    assert "gone: ['000015.png']" in capsys.readouterr().out
    assert main(["verify", "--root", str(clevr_root), "--update"]) == 0
    assert main(["verify", "--root", str(clevr_root)]) == 0


def test_verify_checks_a_shapes_export_against_its_meta(tmp_path, capsys):
    out = shapes.export_idc(tmp_path / "shapes", split="val", n=3, size=32)
    assert SCRIPTS["clevr_change"].main(["verify", "--root", str(out)]) == 0
    text = capsys.readouterr().out
    assert "val: 3 scenes = 6 pairs" in text and "WARNING" not in text and "train" not in text


def test_verify_of_a_missing_root_fails_with_the_download_command(tmp_path, capsys):
    assert SCRIPTS["spot_the_diff"].main(["verify", "--root", str(tmp_path / "none")]) == 1
    assert "spot_the_diff.py download" in capsys.readouterr().out


@pytest.mark.parametrize("name, cls", [("clevr_change", CLEVRChange), ("spot_the_diff", SpotTheDiff),
                                       ("image_editing_request", ImageEditingRequest)])
def test_prepare_writes_coco_ground_truth_equal_to_references(tmp_path, name, cls):
    root = MAKERS[name](tmp_path / name)
    out = tmp_path / "gt.json"
    assert SCRIPTS[name].main(["prepare", "--root", str(root), "--split", "test", "--out", str(out)]) == 0
    coco = json.loads(out.read_text())
    gts, groups = cls(root, "test").references()
    assert [im["id"] for im in coco["images"]] == list(gts)
    assert [a["id"] for a in coco["annotations"]] == list(range(sum(len(v) for v in gts.values())))
    assert load_caption_json(out, kind="gts") == gts
    if name == "clevr_change":
        assert any(i.endswith("_n") for i in gts)
        assert json.loads((tmp_path / "test_groups.json").read_text()) == groups


def test_verify_accepts_ids_a_manifest_recorded_without_the_extension(clevr_root, spot_root, capsys):
    for name, root in (("clevr_change", clevr_root), ("spot_the_diff", spot_root)):
        main = SCRIPTS[name].main
        assert main(["verify", "--root", str(root)]) == 0
        path = root / "idclab_manifest.json"
        manifest = json.loads(path.read_text())
        for entry in manifest["splits"].values():  # as an older idclab wrote them: "000010", "7"
            entry["ids"] = [i.removesuffix(".png") for i in entry["ids"]]
        path.write_text(json.dumps(manifest))
        assert main(["verify", "--root", str(root)]) == 0, capsys.readouterr().out
        entry = json.loads(path.read_text())["splits"]["test"]
        entry["ids"] = entry["ids"][1:]
        manifest["splits"]["test"] = entry
        path.write_text(json.dumps(manifest))
        assert main(["verify", "--root", str(root)]) == 1  # a real change is still reported
        assert "CHANGED test" in capsys.readouterr().out


def _rcc_total_ground_truth(root: Path) -> dict:
    """The "Total" ground truth built the way RCC's utils/eval_utils.py builds the file CLIP4IDC ships: every scene of
    change_captions.json under "<number>.png", then every scene of no_change_captions.json under "<number>.png_n"."""
    dummy = dict.fromkeys(("contributor", "date_created", "description", "url", "version", "year"), "dummy")
    images, annotations = [], []
    for name, suffix in (("change_captions.json", ""), ("no_change_captions.json", "_n")):
        for key, captions in json.loads((root / name).read_text()).items():
            image_id = key.split("_")[-1] + suffix
            images.append({"filename": image_id, "id": image_id})
            annotations += [{"caption": c, "id": len(annotations) + k, "image_id": image_id}
                            for k, c in enumerate(captions)]
    return {"info": dummy, "licenses": dummy, "type": "captions", "images": images, "annotations": annotations}


def test_prepared_ground_truth_has_the_structure_and_ids_of_clip4idcs_file(clevr_root, tmp_path):
    out = tmp_path / "gt.json"
    assert SCRIPTS["clevr_change"].main(["prepare", "--root", str(clevr_root), "--out", str(out)]) == 0
    ours = json.loads(out.read_text())
    rcc_path = tmp_path / "clevr_total_change_captions_reformat.json"
    rcc_path.write_text(json.dumps(_rcc_total_ground_truth(clevr_root)))
    rcc = json.loads(rcc_path.read_text())
    assert set(ours) == set(rcc) and ours["type"] == rcc["type"] == "captions"
    assert {tuple(sorted(im)) for im in ours["images"]} == {tuple(sorted(im)) for im in rcc["images"]}
    assert {tuple(sorted(a)) for a in ours["annotations"]} == {tuple(sorted(a)) for a in rcc["annotations"]}
    theirs = load_caption_json(rcc_path, kind="gts")  # every split; ours holds the test split only
    mine = load_caption_json(out, kind="gts")
    assert mine == {i: theirs[i] for i in mine} and "000010.png_n" in mine and len(mine) == 12


@pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap needs Java on PATH")
@pytest.mark.filterwarnings("ignore:CIDEr")  # the one-scene change types of this tiny tree score CIDEr 0
def test_score_captions_gives_the_same_numbers_for_reference_and_idclab_ids(clevr_root, spot_root, tmp_path, capsys):
    """Ground truth and results in the reference form ("000010.png", "000010.png_n", "7.png"), as prepare writes them
    and CLIP4IDC's result files hold, score exactly as the same files in idclab's older form ("000010", "7")."""
    from idclab import cli

    def score(gts: Path, res: Path, *extra) -> dict:
        cli.main(["score-captions", str(gts), str(res), *map(str, extra)])
        return json.loads(capsys.readouterr().out)

    def bare(i: str) -> str:
        return i.replace(".png", "")

    for name, root in (("clevr_change", clevr_root), ("spot_the_diff", spot_root)):
        gt = tmp_path / f"{name}_gt.json"
        assert SCRIPTS[name].main(["prepare", "--root", str(root), "--split", "test", "--out", str(gt)]) == 0
        capsys.readouterr()
        refs = load_caption_json(gt, kind="gts")
        assert all(".png" in i for i in refs)
        # a COCO results list as CLIP4IDC writes it: one caption per id, some right, some wrong
        results = [{"image_id": i, "caption": refs[i][0] if k % 2 else "a red cube was added"}
                   for k, i in enumerate(refs)]
        res = tmp_path / f"{name}_res.json"
        res.write_text(json.dumps(results))
        coco = json.loads(gt.read_text())  # the same files with the ids written without the extension
        for im in coco["images"]:
            im["id"] = im["filename"] = bare(im["id"])
        for a in coco["annotations"]:
            a["image_id"] = bare(a["image_id"])
        gt_bare, res_bare = tmp_path / f"{name}_gt_bare.json", tmp_path / f"{name}_res_bare.json"
        gt_bare.write_text(json.dumps(coco))
        res_bare.write_text(json.dumps([dict(r, image_id=bare(r["image_id"])) for r in results]))
        reference_form, idclab_form = score(gt, res), score(gt_bare, res_bare)
        assert reference_form == idclab_form and reference_form["CIDEr"] > 0
        if name == "clevr_change":  # per change type, with the groups file prepare wrote beside the ground truth
            groups = tmp_path / "test_groups.json"
            groups_bare = tmp_path / "groups_bare.json"
            groups_bare.write_text(json.dumps({bare(k): v for k, v in json.loads(groups.read_text()).items()}))
            by_type = score(gt, res, "--groups", groups)
            assert by_type == score(gt_bare, res_bare, "--groups", groups_bare)
            assert set(by_type) >= {"distractor", "color"}


# ----------------------------------------------------------------------------------------------------------------
# data_scripts: downloads (network replaced by a fake)
# ----------------------------------------------------------------------------------------------------------------


class FakeWeb:
    """Stands in for ``_common.open_url``: serves ``files`` (url -> bytes), honouring Range unless told not to."""

    def __init__(self, files: dict[str, bytes], *, honour_range: bool = True):
        self.files, self.honour_range, self.calls = files, honour_range, []

    def __call__(self, url, *, start=0, timeout=None):
        self.calls.append((url, start))
        data = self.files[url]
        if start and self.honour_range:
            return (416, None) if start >= len(data) else (206, io.BytesIO(data[start:]))
        return 200, io.BytesIO(data)


BLOB = bytes(range(256)) * 40  # 10,240 bytes


def test_download_resumes_a_partial_file_and_checks_the_checksum(tmp_path, monkeypatch):
    web = FakeWeb({"https://x/blob.bin": BLOB})
    monkeypatch.setattr(common, "open_url", web)
    dest = tmp_path / "blob.bin"
    (tmp_path / "blob.bin.part").write_bytes(BLOB[:3000])  # an interrupted earlier run
    info = common.download("https://x/blob.bin", dest, checksum=("sha256", hashlib.sha256(BLOB).hexdigest()))
    assert web.calls == [("https://x/blob.bin", 3000)]  # only the rest was asked for
    assert dest.read_bytes() == BLOB and not (tmp_path / "blob.bin.part").exists()
    assert info["sha256"] == hashlib.sha256(BLOB).hexdigest() and info["checksum"].endswith("(published)")
    common.download("https://x/blob.bin", dest)  # present: not fetched again
    assert len(web.calls) == 1


def test_download_restarts_when_the_server_ignores_range(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "open_url", FakeWeb({"u": BLOB}, honour_range=False))
    (tmp_path / "f.part").write_bytes(b"garbage")
    info = common.download("u", tmp_path / "f")
    assert (tmp_path / "f").read_bytes() == BLOB and info["checksum"] == "not published"
    assert info["sha256"] == hashlib.sha256(BLOB).hexdigest()  # recorded for the manifest


def test_download_with_a_wrong_checksum_raises_and_deletes(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "open_url", FakeWeb({"u": BLOB}))
    (tmp_path / "f.part").write_bytes(b"\x00" * 100)  # a corrupt prefix: the published sha1 catches it
    with pytest.raises(common.ChecksumError, match="does not match"):
        common.download("u", tmp_path / "f", checksum=("sha1", hashlib.sha1(BLOB).hexdigest()))
    assert not (tmp_path / "f").exists() and not (tmp_path / "f.part").exists()
    common.download("u", tmp_path / "f", checksum=("sha1", hashlib.sha1(BLOB).hexdigest()))  # a re-run fixes it
    assert (tmp_path / "f").read_bytes() == BLOB


def test_google_drive_without_gdown_explains_the_manual_route(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "_import_gdown", lambda: None)
    with pytest.raises(SystemExit) as e:
        SCRIPTS["clevr_change"].main(["download", "--root", str(tmp_path / "c")])
    msg = str(e.value)
    assert "pip install gdown" in msg and "drive.google.com/file/d/1HJ3gWjaUJykEckyb2M0MB4HnrJSihjVe" in msg
    assert "--archive" in msg


def _tar_gz(src: Path, arcname: str, out: Path) -> Path:
    with tarfile.open(out, "w:gz") as t:
        t.add(src, arcname=arcname)
    return out


def _zip(src: Path, out: Path, *, prefix: str) -> Path:
    with zipfile.ZipFile(out, "w") as z:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                z.write(p, f"{prefix}/{p.relative_to(src)}")
    return out


def test_clevr_download_extracts_the_archive_data_folder(tmp_path, capsys):
    archive = _tar_gz(make_clevr(tmp_path / "data"), "data", tmp_path / "clevr_change.tar.gz")
    root = tmp_path / "root"
    assert SCRIPTS["clevr_change"].main(["download", "--root", str(root), "--archive", str(archive)]) == 0
    assert (root / "sc_images" / "CLEVR_semantic_000015.png").is_file() and not (root / "_extract").exists()
    manifest = json.loads((root / "idclab_manifest.json").read_text())
    assert manifest["downloads"]["clevr_change.tar.gz"]["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert manifest["downloads"]["clevr_change.tar.gz"]["checksum"] == "not published"
    assert SCRIPTS["clevr_change"].main(["verify", "--root", str(root)]) == 0
    assert len(CLEVRChange(root, "train")) == 3


def test_spot_download_end_to_end_with_fake_github_and_drive(tmp_path, monkeypatch):
    src = make_spot(tmp_path / "src")
    image_zip = _zip(src / "images", tmp_path / "resized.zip", prefix="resized_images")
    spot = SCRIPTS["spot_the_diff"]
    web = FakeWeb({spot.ANNOTATION_URL.format(split=s): (src / "annotations" / f"{s}.json").read_bytes()
                   for s in sd.SPLITS})
    monkeypatch.setattr(common, "open_url", web)

    def fake_drive(file_id, dest, *, script, root):
        assert file_id == spot.DRIVE_ID
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(image_zip.read_bytes())
        return dest

    monkeypatch.setattr(common, "gdrive_download", fake_drive)
    root = tmp_path / "root"
    assert spot.main(["download", "--root", str(root)]) == 0
    assert spot.main(["verify", "--root", str(root)]) == 0
    assert SpotTheDiff(root, "test").references()[0] == SpotTheDiff(src, "test").references()[0]
    assert not (root / "_downloads" / spot.ARCHIVE_NAME).exists()  # the archive is removed after extraction


def test_ier_download_from_archive_org_checks_sha1_and_flattens_images(tmp_path, monkeypatch, capsys):
    src = make_ier(tmp_path / "src")
    script = SCRIPTS["image_editing_request"]
    loose = "Reddit.com_c1_w.jpg"
    nested = tmp_path / "nested"
    for p in (src / "images").iterdir():
        if p.name != loose:
            (nested / "pairs").mkdir(parents=True, exist_ok=True)
            (nested / "pairs" / p.name).write_bytes(p.read_bytes())
    zip_bytes = _zip(nested, tmp_path / "images.zip", prefix="IER").read_bytes()
    loose_bytes = (src / "images" / loose).read_bytes()
    files = [{"name": "images.zip", "source": "original", "size": str(len(zip_bytes)),
              "sha1": hashlib.sha1(zip_bytes).hexdigest()},
             {"name": loose, "source": "original", "size": str(len(loose_bytes)),
              "sha1": hashlib.sha1(loose_bytes).hexdigest()},
             {"name": "image-editing-dataset_meta.xml", "source": "original"},
             {"name": "images_thumb.jpg", "source": "derivative"}]
    served = {script.METADATA_URL: json.dumps({"files": files}).encode(),
              script.FILE_URL.format(name="images.zip"): zip_bytes, script.FILE_URL.format(name=loose): loose_bytes}
    served.update({script.ANNOTATION_URL.format(name=n): (src / "annotations" / n).read_bytes()
                   for n in ier.SPLIT_FILES.values()})
    web = FakeWeb(served)
    monkeypatch.setattr(common, "open_url", web)
    root = tmp_path / "root"
    assert script.main(["download", "--root", str(root)]) == 0
    assert not any("meta.xml" in url or "thumb" in url for url, _ in web.calls)
    assert script.main(["verify", "--root", str(root)]) == 0
    assert ImageEditingRequest(root, "val").ids == ["Reddit_10"]
    manifest = json.loads((root / "idclab_manifest.json").read_text())
    assert manifest["downloads"]["archive.org:images.zip"]["checksum"].startswith("sha1:")
    n_calls = len(web.calls)
    assert script.main(["download", "--root", str(root)]) == 0  # a re-run finds everything in place
    assert len(web.calls) == n_calls + 1  # only the metadata is asked for again


# ----------------------------------------------------------------------------------------------------------------
# With CLIP4IDC's training data path
# ----------------------------------------------------------------------------------------------------------------

SMOKE = c.config_for("shapes", "smoke")


@pytest.fixture(scope="module")
def micro_model():
    torch.manual_seed(0)
    return c.CLIP4IDC(SMOKE, stage="adapt")


@pytest.mark.parametrize("name", ["clevr", "shapes", "spot", "ier"])
def test_items_feed_pair_samples_and_one_adaptation_batch(tmp_path, micro_model, name):
    if name == "clevr":
        ds = CLEVRChange(make_clevr(tmp_path / "c"), "test")
    elif name == "shapes":
        ds = CLEVRChange(shapes.export_idc(tmp_path / "s", split="train", n=4, size=32), "train")
    elif name == "spot":
        ds = SpotTheDiff(make_spot(tmp_path / "sp"), "train")
    else:
        ds = ImageEditingRequest(make_ier(tmp_path / "i"), "test")
    has_distractor = name in ("clevr", "shapes")
    samples = c.PairSamples(ds, repeats=2, distractor_swap_p=0.5 if has_distractor else 0.0, seed=1)
    items = [samples[i] for i in range(len(samples))]
    if has_distractor:
        assert any(s["swapped"] for s in items) and not all(s["swapped"] for s in items)
    else:
        with pytest.raises(KeyError, match="no distractor"):
            c.PairSamples(ds, distractor_swap_p=0.5)[0]
    batch = micro_model.collate()(items)
    size = backbones.image_size(micro_model.clip)
    assert batch["before"].shape == batch["after"].shape == (len(items), 3, size, size)
    loss, _ = micro_model.loss(batch)
    assert torch.isfinite(loss)
