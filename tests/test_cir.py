"""The CIR harness (idclab.cir): protocols scored against values computed by hand, checks that list bad input,
the feature cache, test-server submissions, the baselines and the Shapes benchmark."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from idclab import backbones, cir
from idclab.cir import ALL, CIRBenchmark, CIRQuery


class TableRetriever(cir.CLIPRetriever):
    """A retriever whose image features come from a table: image k is a uint8 array filled with k, its feature is
    FEATS[k]; the query is the reference feature plus QUERY_SHIFT[query id] (so rankings can be set by hand)."""

    method = "table"

    def __init__(self, feats: dict[int, list[float]], shift: dict[str, list[float]] | None = None):
        self.device, self.clip = torch.device("cpu"), None
        self.preprocess, self.image_size, self.context_length = "squash", 2, 8
        self.feats, self.shift, self.calls = feats, shift or {}, 0
        self._image_key = "table"

    def encode_image(self, images):
        self.calls += 1
        return torch.tensor([self.feats[int(im[0, 0, 0])] for im in images], dtype=torch.float32)

    def encode_query(self, image_feats, queries):
        shift = torch.tensor([self.shift.get(q.id, [0.0] * image_feats.shape[1]) for q in queries])
        return F.normalize(image_feats + shift, dim=-1)


def img(k: int) -> np.ndarray:
    return np.full((2, 2, 3), k, np.uint8)


def q(id_, ref, targets, *, kind="cirr", group=ALL, gallery=ALL, subset=(), fields=None):
    return CIRQuery(id=id_, reference=ref, kind=kind, fields=fields or {"caption": "x"}, targets=tuple(targets),
                    subset=tuple(subset), group=group, gallery=gallery)


# ----------------------------------------------------------------------------------------------------------------
# Protocols against hand-computed values
# ----------------------------------------------------------------------------------------------------------------


def test_cirr_protocol_removes_the_reference_and_scores_subsets_by_hand():
    # 2-D features on the unit circle at angles 0, 10, 20, ... degrees: image k is closest to k-1 and k+1.
    angles = {k: np.deg2rad(10 * k) for k in range(6)}
    feats = {k: [float(np.cos(a)), float(np.sin(a))] for k, a in angles.items()}
    names = [f"i{k}" for k in range(6)]
    bench = CIRBenchmark("toy", "val", "cirr", {n: img(k) for k, n in enumerate(names)}, {ALL: tuple(names)}, [
        # query at i0: the ranking is i0 (itself, removed), i1, i2, ...: the target i2 is at rank 2 -> R@1 miss, R@5 hit
        q("a", "i0", ["i2"], subset=("i0", "i1", "i2", "i3", "i4", "i5")),
        # query at i5: ranking (itself removed) i4, i3, ...: target i4 is first
        q("b", "i5", ["i4"], subset=("i5", "i4", "i3", "i2", "i1", "i0")),
    ])
    res = cir.evaluate(TableRetriever(feats), bench, progress=False)["metrics"][ALL]
    assert res["R@1"] == 50.0 and res["R@5"] == 100.0 and res["R@10"] == 100.0
    assert res["R_subset@1"] == 50.0 and res["R_subset@2"] == 100.0
    ranking = cir.rank(TableRetriever(feats), bench, progress=False)
    assert ranking.top(0, 3) == ["i1", "i2", "i3"]  # the reference i0 never appears


def test_fashioniq_protocol_ranks_each_category_in_its_own_gallery_and_averages():
    feats = {k: [float(np.cos(0.2 * k)), float(np.sin(0.2 * k))] for k in range(60)}
    dress = tuple(f"d{k}" for k in range(30))
    shirt = tuple(f"s{k}" for k in range(30, 60))
    images = {n: img(int(n[1:])) for n in dress + shirt}
    queries = [  # the reference is kept: a query finds itself first (FashionIQ's protocol)
        q("dress/0", "d0", ["d0"], kind="fashioniq", group="dress", gallery="dress", fields={"cap1": "a", "cap2": "b"}),
        q("dress/1", "d0", ["d20"], kind="fashioniq", group="dress", gallery="dress", fields={"cap1": "a", "cap2": "b"}),
        q("shirt/0", "s30", ["s45"], kind="fashioniq", group="shirt", gallery="shirt", fields={"cap1": "a", "cap2": "b"}),
    ]
    bench = CIRBenchmark("fiq", "val", "fashioniq", images, {"dress": dress, "shirt": shirt}, queries)
    m = cir.evaluate(TableRetriever(feats), bench, progress=False)["metrics"]
    # dress: d0 at rank 0 (hit), d20 at rank 20 (R@10 miss, R@50 hit); shirt: s45 at rank 15 -> R@10 miss, R@50 hit
    assert m["dress"] == {"R@10": 50.0, "R@50": 100.0}
    assert m["shirt"] == {"R@10": 0.0, "R@50": 100.0}
    assert m["average"] == {"R@10": 25.0, "R@50": 100.0, "avg": 62.5}


def test_circo_map_and_imagenet_fractional_recall_by_hand():
    feats = {k: [float(np.cos(0.1 * k)), float(np.sin(0.1 * k))] for k in range(60)}
    names = tuple(f"g{k}" for k in range(60))
    images = {n: img(k) for k, n in enumerate(names)}
    # CIRCO, query at g0 (kept): ranking g0, g1, g2, ...; ground truths g1 and g3 -> relevant at ranks 2 and 4:
    # AP@5 = (1/2) * (1/2 + 2/4) = 0.5 (50 %); R@5 of the first ground truth (g1) = 100.
    circo = CIRBenchmark("circo", "val", "circo", images, {ALL: names}, [q("7", "g0", ["g1", "g3"])])
    m = cir.evaluate(TableRetriever(feats), circo, progress=False)["metrics"][ALL]
    assert m["mAP@5"] == 50.0 and m["R@5"] == 100.0
    # ImageNet-R, query at g0, three relevant items g2, g20, g40: in the top 10 only g2 -> fraction 1/3;
    # top 50: g2, g20, g40 -> 1. The hit rate counts any relevant item: 100 at both.
    inr = CIRBenchmark("inr", "val", "imagenet_r", images, {ALL: names},
                       [q("cartoon/p", "g0", ["g2", "g20", "g40"], kind="domain", group="cartoon",
                          fields={"domain": "cartoon"})])
    m = cir.evaluate(TableRetriever(feats), inr, progress=False)["metrics"]["cartoon"]
    assert m["R@10"] == pytest.approx(33.33, abs=0.01) and m["R@50"] == 100.0
    assert m["hit_R@10"] == 100.0


def test_hidden_targets_cannot_be_scored():
    names = ("a", "b", "c")
    bench = CIRBenchmark("cirr", "test1", "cirr", {n: img(i) for i, n in enumerate(names)}, {ALL: names},
                         [q("0", "a", [])])
    with pytest.raises(ValueError, match="hides its targets"):
        cir.evaluate(TableRetriever({0: [1, 0], 1: [0, 1], 2: [1, 1]}), bench, progress=False)


# ----------------------------------------------------------------------------------------------------------------
# Bad input: every problem listed, nothing dropped
# ----------------------------------------------------------------------------------------------------------------


def test_check_benchmark_lists_absent_references_targets_and_unknown_kinds():
    names = ("a", "b")
    images = {"a": img(0), "b": img(1), "z": img(2)}
    bench = CIRBenchmark("x", "val", "cirr", images, {ALL: names}, [
        q("1", "z", ["a"]),  # reference not in the gallery
        q("2", "a", ["missing"]),  # target not in the gallery
        q("3", "a", ["b"], kind="poem"),
    ])
    with pytest.raises(ValueError) as err:
        cir.check_benchmark(bench)
    msg = str(err.value)
    assert "reference is absent from their gallery" in msg and "1 (z)" in msg
    assert "target is absent" in msg and "unknown kind" in msg and "3 (poem)" in msg


def test_missing_and_unreadable_images_are_listed_not_dropped(tmp_path):
    for k in range(3):
        Image.fromarray(img(k)).save(tmp_path / f"{k}.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    names = ("0.png", "1.png", "2.png", "broken.png", "gone.png")
    images = {n: tmp_path / n for n in names}
    bench = CIRBenchmark("x", "val", "cirr", images, {ALL: names}, [q("1", "0.png", ["1.png"])])
    retriever = TableRetriever({k: [1.0, float(k)] for k in range(3)})
    with pytest.raises(FileNotFoundError, match=r"1 images of x val are missing: gone.png"):
        cir.evaluate(retriever, bench, progress=False)
    bench.galleries = {ALL: names[:4]}
    with pytest.raises(OSError, match=r"1 images of x val cannot be read: \S*broken.png is not an image"):
        cir.evaluate(retriever, bench, progress=False)


def test_compose_refuses_empty_modification_text_and_missing_fields():
    with pytest.raises(ValueError, match="empty modification text"):
        cir.compose("a photo of * , {caption}", q("9", "a", ["b"], fields={"caption": "  "}))
    with pytest.raises(ValueError, match="has no field 'cap2'"):
        cir.compose("{cap2} and {cap1}", q("9", "a", ["b"], fields={"cap1": "is red"}))
    assert cir.compose("a photo of * , {cap2} and {cap1}",
                       q("9", "a", ["b"], fields={"cap1": "is red", "cap2": "is long"})) == \
        "a photo of * , is long and is red"


def test_prompt_without_a_separate_placeholder_is_refused():
    cir.check_prompts({"cirr": "a photo of * , {caption}"}, placeholder="*")
    with pytest.raises(ValueError, match="no placeholder"):
        cir.check_prompts({"cirr": "a photo of *, {caption}"}, placeholder="*")  # "*," is one BPE chunk
    with pytest.raises(ValueError, match="no placeholder"):
        cir.check_prompts({"domain": "a {domain} of it"}, placeholder="*")
    with pytest.raises(ValueError, match="uses fields"):
        cir.check_prompts({"domain": "a {cap1}"})


# ----------------------------------------------------------------------------------------------------------------
# Feature cache, submissions, baselines
# ----------------------------------------------------------------------------------------------------------------


def test_image_features_are_cached_and_keyed_by_the_names(tmp_path):
    names = tuple(f"n{k}" for k in range(5))
    bench = CIRBenchmark("x", "val", "cirr", {n: img(k) for k, n in enumerate(names)}, {ALL: names}, [])
    r = TableRetriever({k: [1.0, float(k)] for k in range(5)})
    first = cir.image_features(r, bench, names, cache_dir=tmp_path, progress=False)
    calls = r.calls
    again = cir.image_features(r, bench, names, cache_dir=tmp_path, progress=False)
    assert r.calls == calls and torch.equal(first, again)  # read back, not recomputed
    cir.image_features(r, bench, names[:3], cache_dir=tmp_path, progress=False)
    assert r.calls > calls  # other names: another cache entry


def test_cirr_submission_files_validate_and_a_broken_file_is_caught(tmp_path):
    feats = {k: [float(np.cos(0.1 * k)), float(np.sin(0.1 * k))] for k in range(60)}
    names = tuple(f"test1-{k}" for k in range(60))
    images = {n: img(k) for k, n in enumerate(names)}
    queries = [q(str(i), names[i], [], subset=names[i:i + 6]) for i in range(0, 50, 7)]
    bench = CIRBenchmark("cirr", "test1", "cirr", images, {ALL: names}, queries)
    recall, subset = cir.cirr_submission(TableRetriever(feats), bench, tmp_path, name="table", progress=False)
    data = json.loads(recall.read_text())
    assert data["version"] == "rc2" and data["metric"] == "recall"
    assert set(data) - {"version", "metric"} == {qq.id for qq in queries}
    assert data["0"][:2] == ["test1-1", "test1-2"] and len(data["0"]) == 50 and "test1-0" not in data["0"]
    sub = json.loads(subset.read_text())
    assert sub["metric"] == "recall_subset" and sub["7"] == ["test1-8", "test1-9", "test1-10"]
    del data["7"]
    recall.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="1 pair ids missing"):
        cir.validate_cirr_submission(recall, subset, bench=bench)


def test_sum_baseline_is_the_normalised_sum_of_normalised_features():
    clip = backbones.load_clip("idc-micro")
    query = q("0", "a", ["b"], fields={"caption": "a red cube"})
    feats = torch.randn(1, 32)
    base = {m: cir.Baseline(clip, m, device="cpu") for m in cir.Baseline.METHODS}
    text = base["text"].encode_query(feats, [query])
    with torch.no_grad():
        expected_text = F.normalize(clip.encode_text(backbones.tokenize(["a red cube"], context_length=32)), dim=-1)
    torch.testing.assert_close(text, expected_text, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(base["image"].encode_query(feats, [query]), F.normalize(feats, dim=-1))
    torch.testing.assert_close(base["sum"].encode_query(feats, [query]),
                               F.normalize(F.normalize(feats, dim=-1) + text, dim=-1))
    with pytest.raises(ValueError, match="Unknown baseline"):
        cir.Baseline(clip, "average")


def test_shapes_benchmark_structure():
    bench = cir.shapes_benchmark("val", 9, size=32)
    cir.check_benchmark(bench)
    assert bench.protocol == "shapes" and len(bench.queries) == 9
    assert len(bench.galleries[ALL]) == 9 * 6 and all(len(x.subset) == 6 for x in bench.queries)
    for x in bench.queries:
        assert x.reference in x.subset and x.targets[0] in x.subset and x.fields["caption"]
        assert x.kind == ("domain" if x.group == "domain" else "cirr")
        if x.kind == "domain":
            assert x.fields["domain"] in ("sketch", "mosaic", "cartoon")
    assert sum(bench.info["per_task"].values()) == 9


def test_retrieve_from_a_folder_and_compare_prints_all_baselines(tmp_path):
    clip = backbones.load_clip("idc-micro")
    rng = np.random.default_rng(0)
    for k in range(6):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(tmp_path / f"{k}.png")
    top = cir.retrieve(cir.Baseline(clip, "sum", device="cpu"), tmp_path / "0.png", "a red cube", tmp_path, k=3,
                       progress=False)
    assert len(top) == 3 and all(p.endswith(".png") for p, _ in top)
    assert [s for _, s in top] == sorted((s for _, s in top), reverse=True)
    bench = cir.shapes_benchmark("val", 6, size=32)
    out = cir.compare(None, bench, clip=clip, progress=False)
    assert list(out) == ["image", "text", "sum"] and "R@1" in out["sum"]["metrics"][ALL]
    assert out["text"]["prompts"]["cirr"] == "{caption}"


def test_load_benchmark_by_name(tmp_path):
    with pytest.raises(ValueError, match="Unknown benchmark 'cirrr'"):
        cir.load_benchmark("cirrr")
    with pytest.raises(ValueError, match=r"needs --root DIR: fetch it with data_scripts/coco_composition.py download"):
        cir.load_benchmark("coco")
    generated = cir.load_benchmark("shapes", split="val", n=6)
    assert generated.protocol == "shapes" and len(generated.queries) == 6
    assert [q.fields for q in generated.queries] == [q.fields for q in cir.shapes_benchmark("val", 6).queries]


def test_read_image_takes_files_arrays_and_loaders(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)  # [H, W]
    Image.fromarray(gray).save(tmp_path / "g.png")
    from_file = cir.read_image(tmp_path / "g.png")  # [3, 4, 3], the gray value copied into R, G and B
    assert from_file.shape == (3, 4, 3) and (from_file == gray[:, :, None]).all()
    assert (cir.read_image(lambda: gray) == from_file).all()  # a benchmark's lazy loader is called first
    assert cir.read_image(gray, image_size=8).shape == (8, 8, 3)
    with pytest.raises(FileNotFoundError, match="No image at .*missing.png"):
        cir.read_image(tmp_path / "missing.png")
