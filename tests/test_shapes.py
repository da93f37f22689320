"""Tests for idclab.data.shapes: the Shapes world (scenes, renderer, captions, IDC pairs, CIR triplets, exporters)."""

from __future__ import annotations

import collections
import json
import re

import numpy as np
import pytest
from PIL import Image

from idclab.data import shapes as S

# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------

_WORD_TO_ATTR = {}  # any word used in captions -> (attribute, canonical value)
for _attr, _table in (("size", S._SIZE_WORDS), ("material", S._MATERIAL_WORDS), ("shape", S._SHAPE_WORDS)):
    for _value, _words in _table.items():
        for _w in _words:
            _WORD_TO_ATTR[_w] = (_attr, _value)
for _c in S.COLORS:
    _WORD_TO_ATTR[_c] = ("color", _c)


def parse_attributes(phrase: str) -> dict[str, str]:
    """{'size': 'small', 'color': 'red', ...} from the attribute words in a phrase."""
    out = {}
    for w in phrase.split():
        if w in _WORD_TO_ATTR:
            attr, value = _WORD_TO_ATTR[w]
            assert attr not in out, f"two {attr} words in {phrase!r}"
            out[attr] = value
    return out


def matching(scene: S.Scene, attrs: dict[str, str]) -> list[int]:
    return [i for i, o in enumerate(scene.objects) if all(getattr(o, a) == v for a, v in attrs.items())]


def obj(shape="cube", color="red", size="large", material="rubber", x=0.5, y=0.5):
    return S.ShapeObject(shape, color, size, material, x, y)


def changed_pixels(a: np.ndarray, b: np.ndarray, thresh: int = 25) -> int:
    return int((np.abs(a.astype(int) - b.astype(int)).max(-1) > thresh).sum())


def rng(k: int = 0) -> np.random.Generator:
    return np.random.default_rng(k)


# ----------------------------------------------------------------------------------------------------------------
# constants and sampling
# ----------------------------------------------------------------------------------------------------------------


def test_constants_match_clevr():
    assert S.SHAPES == ("cube", "sphere", "cylinder")
    assert S.COLORS == {"gray": (87, 87, 87), "red": (173, 35, 35), "blue": (42, 75, 215), "green": (29, 105, 20),
                        "brown": (129, 74, 25), "purple": (129, 38, 192), "cyan": (41, 208, 208),
                        "yellow": (255, 238, 51)}
    assert S.CHANGE_TYPES == ("color", "texture", "add", "drop", "move")
    assert S.STYLES[0] == "photo" and set(S.STYLES) == {"photo", "sketch", "mosaic", "cartoon"}
    assert S.GENERATOR_VERSION == 1


def test_sample_scene_counts_and_visibility():
    counts = collections.Counter()
    for k in range(300):
        scene = S.sample_scene(rng(k))
        n = len(scene.objects)
        counts[n] += 1
        assert 2 <= n <= 6 and scene.style == "photo" and scene.view == (0.0, 0.0, 1.0) and scene.light == 0.0
        assert len({o.attributes for o in scene.objects}) == n  # no identical twins
        for i, o in enumerate(scene.objects):
            assert 0.0 <= o.x <= 1.0 and 0.0 <= o.y <= 1.0
            assert S._fits(o, scene.objects[:i] + scene.objects[i + 1:])
    assert set(counts) == {2, 3, 4, 5, 6}
    assert len(S.sample_scene(rng(1), n_objects=6, style="sketch").objects) == 6


def test_every_object_is_visible_in_the_render():
    """At most mild occlusion: most of each object's own pixels are still its own in the full scene."""
    empty = S.render(S.Scene(()))
    for k in range(25):
        scene = S.sample_scene(rng(k), n_objects=6)
        full = S.render(scene)
        for i, o in enumerate(scene.objects):
            alone = np.abs(S.render(S.Scene((o,))).astype(int) - empty).max(-1) > 60  # the object's pixels
            without = S.render(S.replace(scene, objects=scene.objects[:i] + scene.objects[i + 1:]))
            visible = (np.abs(full.astype(int) - without).max(-1) > 60) & alone
            assert visible.sum() >= 0.6 * alone.sum(), (k, i, visible.sum(), alone.sum())


# ----------------------------------------------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [32, 64, 97, 192])
def test_render_shape_dtype(size):
    scene = S.sample_scene(rng(3), n_objects=5)
    for style in S.STYLES:
        img = S.render(S.replace(scene, style=style), size=size)
        assert img.shape == (size, size, 3) and img.dtype == np.uint8
        assert img.std() > 5  # not blank


def test_render_deterministic_and_cache_safe():
    scene = S.sample_scene(rng(4), n_objects=4)
    a = S.render(scene)
    for k in range(20):  # fill caches with other work
        S.render(S.sample_scene(rng(100 + k), style=S.STYLES[k % 4]))
    b = S.render(scene)
    assert np.array_equal(a, b)
    b[:] = 0  # the caller may modify its copy
    assert np.array_equal(S.render(scene), a)
    S.clear_caches()  # rebuilt sprites are bit-identical
    assert np.array_equal(S.render(scene), a)


def test_styles_differ_from_photo():
    scene = S.sample_scene(rng(5), n_objects=4)
    photo = S.render(scene)
    for style in S.STYLES[1:]:
        img = S.render(S.replace(scene, style=style))
        assert changed_pixels(photo, img) > 0.3 * 64 * 64, style


@pytest.mark.parametrize("style", S.STYLES)
def test_each_attribute_is_visible_in_every_style(style):
    scene = S.Scene((obj("cube", "red", "large", "rubber", 0.3, 0.6),
                     obj("sphere", "blue", "small", "metal", 0.7, 0.4)), style=style)
    base = S.render(scene)
    for attr in S.ATTRIBUTES:
        for value in S._ATTR_VALUES[attr]:
            if value == getattr(scene.objects[0], attr):
                continue
            other = S.render(S._with_object(scene, 0, **{attr: value}))
            assert changed_pixels(base, other) >= 6, (style, attr, value)


def test_colours_are_distinguishable_in_every_style():
    """Mean colour of a lone large cube: every pair of the 8 colours stays apart in every style."""
    for style in S.STYLES:
        empty = S.render(S.Scene((), style=style)).astype(float)
        means = {}
        for c in S.COLORS:
            img = S.render(S.Scene((obj("cube", c, x=0.5, y=0.5),), style=style)).astype(float)
            mask = np.abs(img - empty).max(-1) > 20
            means[c] = img[mask].mean(0)
        for a in S.COLORS:
            for b in S.COLORS:
                if a < b:
                    assert np.abs(means[a] - means[b]).max() > 12, (style, a, b)


def _area(scene: S.Scene) -> int:
    empty = S.render(S.replace(scene, objects=()))
    return changed_pixels(S.render(scene), empty, thresh=30)


def test_small_vs_large_area_and_metal_vs_rubber():
    for style in S.STYLES:
        for shape in S.SHAPES:
            small = _area(S.Scene((obj(shape, "green", "small"),), style=style))
            large = _area(S.Scene((obj(shape, "green", "large"),), style=style))
            assert large > 1.6 * small, (style, shape, small, large)
            rubber = S.render(S.Scene((obj(shape, "yellow", material="rubber"),), style=style))
            metal = S.render(S.Scene((obj(shape, "yellow", material="metal"),), style=style))
            assert changed_pixels(rubber, metal, thresh=40) >= 8, (style, shape)


def test_perspective_far_is_higher_and_smaller():
    empty = S.render(S.Scene(()), size=128).astype(int)
    rows, areas = [], []
    for y in (0.1, 0.9):
        img = S.render(S.Scene((obj("sphere", "red", y=y),)), size=128).astype(int)
        mask = np.abs(img - empty).max(-1) > 60  # the object, not its soft shadow
        rows.append(np.nonzero(mask)[0].mean())
        areas.append(mask.sum())
    assert rows[0] < rows[1] - 20  # farther = higher on screen
    assert 0.5 * areas[1] < areas[0] < 0.9 * areas[1]  # and somewhat smaller


def test_painters_order_front_occludes_back():
    back = obj("cube", "blue", x=0.5, y=0.4)
    front = obj("sphere", "red", x=0.5, y=0.55)
    for objects in ((back, front), (front, back)):  # the tuple order must not matter
        img = S.render(S.Scene(objects), size=128)
        u, v, s = S._project(front.x, front.y)
        r, g, b = img[int((v - 0.9 * S._RADIUS["large"] * s) * 128), int(u * 128)].astype(int)
        assert r > b + 40, (r, g, b)


def test_view_and_light_change_pixels():
    scene = S.sample_scene(rng(6), n_objects=3)
    base = S.render(scene)
    assert changed_pixels(base, S.render(S.replace(scene, view=(0.03, 0.0, 1.0)))) > 30
    assert not np.array_equal(base, S.render(S.replace(scene, light=0.4)))


# ----------------------------------------------------------------------------------------------------------------
# language
# ----------------------------------------------------------------------------------------------------------------


def _split_description(text: str, style: str) -> list[str]:
    prefix = f"a {style} of "
    assert text.startswith(prefix), text
    body = text[len(prefix):]
    parts = body.split(", ")
    last = parts.pop()
    if " and a " in last:
        head, tail = last.split(" and a ")
        parts += [head, "a " + tail]
    else:
        parts.append(last)
    return parts


def test_describe_scene_mentions_every_object_and_true_relations():
    n_relations = 0
    for k in range(300):
        r = rng(k)
        scene = S.sample_scene(r, style=S.STYLES[k % 4])
        text = S.describe_scene(scene, r)
        parts = _split_description(text, scene.style)
        assert len(parts) == len(scene.objects), text
        seen, prev = [], None
        for part in parts:
            attrs = parse_attributes(part)
            assert set(attrs) == set(S.ATTRIBUTES), part
            (i,) = matching(scene, attrs)
            seen.append(i)
            rel = re.search(r" (left of|right of|in front of|behind) it$", part)
            if rel:
                n_relations += 1
                assert prev is not None and S.relation_holds(scene.objects[i], scene.objects[prev], rel.group(1)), text
            prev = i
        assert sorted(seen) == list(range(len(scene.objects)))
    assert n_relations > 200


def test_describe_scene_uses_synonyms_and_random_order():
    scene = S.sample_scene(rng(7), n_objects=5)
    texts = {S.describe_scene(scene, rng(k)) for k in range(40)}
    assert len(texts) > 20
    words = set(" ".join(texts).split())
    assert {"big", "large", "tiny", "small"} & words and ({"matte", "metallic", "shiny"} & words)


def test_relations_on_hand_made_scenes():
    a, b = obj(x=0.2, y=0.5), obj("sphere", x=0.8, y=0.5)
    assert S.relation_holds(a, b, "left of") and S.relation_holds(b, a, "right of")
    assert not S.relation_holds(a, b, "right of") and not S.relation_holds(a, b, "behind")
    c, d = obj(x=0.5, y=0.2), obj("sphere", x=0.55, y=0.8)
    assert S.relation_holds(c, d, "behind") and S.relation_holds(d, c, "in front of")
    assert not S.relation_holds(c, d, "left of")  # 0.05 apart: too close to call
    # a description of a two-object scene states only true relations
    endings = set()
    for k in range(30):
        text = S.describe_scene(S.Scene((a, b)), rng(k))
        second = _split_description(text, "photo")[1]
        expected = " right of it" if parse_attributes(second)["shape"] == "sphere" else " left of it"
        assert second.endswith(expected), text
        endings.add(expected)
    assert len(endings) == 2  # both orders were drawn


def test_description_token_budget():
    open_clip = pytest.importorskip("open_clip")
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    texts = []
    for k in range(400):
        r = rng(k)
        scene = S.sample_scene(r, n_objects=6, style=S.STYLES[k % 4])
        texts.append(S.describe_scene(scene, r))
    tokens = tokenizer(texts)  # [N, 77], 0 = padding
    lengths = (tokens != 0).sum(1)  # start and end tokens included
    assert int(lengths.max()) <= 60, texts[int(lengths.argmax())]


def test_referring_expression_is_unique_and_shortest():
    for k in range(200):
        scene = S.sample_scene(rng(k))
        for i in range(len(scene.objects)):
            expr = S.referring_expression(scene, i)
            assert expr.startswith("the ")
            assert matching(scene, parse_attributes(expr)) == [i], (expr, scene)
            assert expr == S.referring_expression(scene, i)  # deterministic
            # shortest: dropping any adjective makes it ambiguous
            attrs = parse_attributes(expr)
            for a in set(attrs) - {"shape"}:
                fewer = {kk: v for kk, v in attrs.items() if kk != a}
                assert len(matching(scene, fewer)) > 1, (expr, a)


def test_referring_expression_examples_and_relations():
    scene = S.Scene((obj("cube", "red", x=0.2, y=0.5), obj("cube", "blue", x=0.5, y=0.5),
                     obj("sphere", "red", "small", "metal", x=0.8, y=0.5)))
    assert S.referring_expression(scene, 2) == "the sphere"
    assert S.referring_expression(scene, 0) == "the red cube"
    assert S.referring_expression(scene, 1) == "the blue cube"
    assert S.referring_expression(scene, 2, include=("color",)) == "the red sphere"
    # identical twins: a relation to a uniquely described object
    twins = S.Scene((obj("cube", "red", x=0.15, y=0.5), obj("sphere", "green", x=0.5, y=0.5),
                     obj("cube", "red", x=0.85, y=0.5)))
    assert S.referring_expression(twins, 0) == "the cube left of the sphere"
    assert S.referring_expression(twins, 2) == "the cube right of the sphere"
    lone = S.Scene((obj(x=0.2, y=0.5), obj(x=0.8, y=0.5)))  # nothing else to relate to
    assert S.referring_expression(lone, 0) == "the leftmost cube"
    assert S.referring_expression(lone, 1) == "the rightmost cube"
    with pytest.raises(ValueError, match="out of range"):
        S.referring_expression(lone, 2)


# ----------------------------------------------------------------------------------------------------------------
# IDC pairs
# ----------------------------------------------------------------------------------------------------------------


def _changed_index(before: S.Scene, after: S.Scene) -> int:
    diffs = [i for i, (a, b) in enumerate(zip(before.objects, after.objects)) if a != b]
    assert len(diffs) == 1
    return diffs[0]


def test_idc_pair_invariants_and_truthful_captions():
    types = collections.Counter()
    for k in range(400):
        p = S.make_idc_pair(rng(k))
        types[p.change_type] += 1
        b, a = p.before.objects, p.after.objects
        assert 2 <= len(a) <= 6 and 2 <= len(b) <= 6
        assert p.distractor.objects == b and p.distractor.style == p.before.style
        assert (p.distractor.view, p.distractor.light) != (p.before.view, p.before.light)
        assert abs(p.after.view[0]) <= 0.012 and abs(p.after.light) <= 0.15  # small jitter only
        assert len(set(p.captions)) == len(p.captions) >= 3
        assert len(set(p.no_change_captions)) == len(p.no_change_captions) >= 3
        assert set(p.no_change_captions) <= set(S.NO_CHANGE_TEMPLATES)
        if p.change_type == "add":
            assert len(a) == len(b) + 1 and a[:-1] == b
            new = a[-1]
            assert all(S.full_description(new)[2:] in c for c in p.captions), p.captions
            assert matching(p.after, parse_attributes(p.target)) == [len(a) - 1]
            continue
        if p.change_type == "drop":
            assert len(a) == len(b) - 1
            i = next((j for j in range(len(a)) if a[j] != b[j]), len(a))
            assert a == b[:i] + b[i + 1:]
        else:
            assert len(a) == len(b)
            i = _changed_index(p.before, p.after)
        assert matching(p.before, parse_attributes(p.target)) == [i], (p.target, b[i])
        assert all(p.target in c for c in p.captions)
        if p.change_type == "color":
            assert a[i].color != b[i].color and a[i].shape == b[i].shape and a[i].material == b[i].material
            assert parse_attributes(p.target)["color"] == b[i].color  # the old colour names the object
            assert all(c.replace(p.target, "").split()[-1] == a[i].color or f" {a[i].color} " in c.replace(
                p.target, "") for c in p.captions), p.captions
        elif p.change_type == "texture":
            assert a[i].material != b[i].material and a[i].color == b[i].color
            assert parse_attributes(p.target)["material"] == b[i].material
            for c in p.captions:
                rest = parse_attributes(c.replace(p.target, ""))
                assert rest.get("material", a[i].material) == a[i].material, c
                assert "material" in rest or "material" in c
        elif p.change_type == "move":
            assert (a[i].x - b[i].x) ** 2 + (a[i].y - b[i].y) ** 2 >= S.MOVE_MIN_DISTANCE ** 2
            assert a[i].attributes == b[i].attributes
            for c in p.captions:
                if c.endswith("to the left"):
                    assert a[i].x < b[i].x
                elif c.endswith("to the right"):
                    assert a[i].x > b[i].x
    assert set(types) == set(S.CHANGE_TYPES) and min(types.values()) > 40


@pytest.mark.parametrize("change_type", S.CHANGE_TYPES)
def test_idc_pair_change_type_and_style_arguments(change_type):
    for k in range(10):
        p = S.make_idc_pair(rng(k), change_type=change_type, style="cartoon")
        assert p.change_type == change_type and p.before.style == p.after.style == "cartoon"
        assert len(p.captions) == S.N_CAPTIONS
        before, after, distractor = (S.render(s) for s in (p.before, p.after, p.distractor))
        assert changed_pixels(before, after) > 10 and not np.array_equal(before, distractor)


def test_idc_templates_are_varied():
    for ct, templates in S._IDC_TEMPLATES.items():
        assert len(templates) >= 4, ct
    assert len(S.NO_CHANGE_TEMPLATES) >= 4
    caps = {c for k in range(30) for c in S.make_idc_pair(rng(k), change_type="color").captions}
    assert len({re.sub(r"the \w+( \w+)*? (cube|sphere|cylinder)", "X", c).split()[1] for c in caps}) >= 3


# ----------------------------------------------------------------------------------------------------------------
# CIR triplets
# ----------------------------------------------------------------------------------------------------------------


def _attr_diffs(a: S.ShapeObject, b: S.ShapeObject) -> list[str]:
    return [k for k in S.ATTRIBUTES if getattr(a, k) != getattr(b, k)]


@pytest.mark.parametrize("task", S.CIR_TASKS)
def test_cir_triplet_invariants(task):
    for k in range(60):
        t = S.make_cir_triplet(rng(k), task=task)
        assert t.task == task and t.reference.style == "photo"
        keys = [S.scene_key(s) for s in (t.reference, t.target, *t.negatives)]
        assert len(t.negatives) == 4 and len(set(keys)) == 6, t
        ref, tgt = t.reference.objects, t.target.objects
        if task == "attribute":
            assert t.domain is None and t.target.style == "photo" and len(ref) == len(tgt)
            i = _changed_index(t.reference, t.target)
            (attr,) = _attr_diffs(ref[i], tgt[i])
            assert (ref[i].x, ref[i].y) == (tgt[i].x, tgt[i].y)
            expr = S.referring_expression(t.reference, i)
            assert expr in t.text
            parsed = parse_attributes(t.text.replace(expr, ""))  # the new value, named once
            new = getattr(tgt[i], attr)
            verbs = {"large": "enlarge", "small": "shrink"}
            assert parsed.get(attr) == new or (attr == "size" and (
                t.text.startswith(verbs[new]) or ("bigger" if new == "large" else "smaller") in t.text)), t.text
            if attr == "size":
                assert S._fits(tgt[i], tgt[:i] + tgt[i + 1:])
        elif task == "object":
            assert t.domain is None and abs(len(tgt) - len(ref)) == 1
            if len(tgt) > len(ref):
                assert tgt[:-1] == ref and t.text.split()[0] in ("add", "put", "place")
                assert S.full_description(tgt[-1])[2:] in t.text
            else:
                assert t.text.split()[0] in ("remove", "take", "delete", "get")
                (i,) = [j for j in range(len(ref)) if ref[j] not in tgt]
                expr = t.text.split(" the ", 1)[1]
                assert matching(t.reference, parse_attributes(expr)) == [i], t.text
        else:
            assert t.domain == t.target.style != "photo" and tgt == ref
            assert any(noun in t.text for noun in S._STYLE_NOUNS[t.domain])
        assert all(2 <= len(s.objects) <= 6 for s in (t.reference, t.target, *t.negatives))


def test_cir_task_distribution():
    tasks = collections.Counter(S.make_cir_triplet(rng(k)).task for k in range(150))
    assert set(tasks) == set(S.CIR_TASKS)


# ----------------------------------------------------------------------------------------------------------------
# datasets and determinism
# ----------------------------------------------------------------------------------------------------------------


def test_datasets_are_deterministic_per_index():
    for cls in (S.ShapesCaptions, S.ShapesPairs, S.ShapesTriplets):
        a, b = cls("train", 50, seed=3), cls("train", 50, seed=3)
        for i in (0, 7, 49):
            x, y = a[i], b[i]
            if isinstance(x, tuple):
                assert np.array_equal(x[0], y[0]) and x[1] == y[1]
            else:
                for key in x:
                    if key in ("negatives",):
                        assert all(np.array_equal(u, v) for u, v in zip(x[key], y[key]))
                    elif isinstance(x[key], np.ndarray):
                        assert np.array_equal(x[key], y[key])
                    else:
                        assert x[key] == y[key]
        # an item does not depend on the dataset length or on what was generated before
        assert repr(cls("train", 1000, seed=3)[7]) == repr(a[7])
        assert repr(cls("train", 50, seed=4)[7]) != repr(a[7])
    assert S.ShapesPairs("val", 10).pair(3) == S.make_idc_pair(S.item_rng(0, "val", 3, S.KIND_PAIR))


def test_dataset_items_layout():
    img, cap = S.ShapesCaptions("train", 4, size=48, styles=("sketch",))[0]
    assert img.shape == (48, 48, 3) and img.dtype == np.uint8 and cap.startswith("a sketch of ")
    item = S.ShapesPairs("test", 4, size=40)[-1]
    assert set(item) == {"before", "after", "distractor", "change_type", "captions", "no_change_captions", "target",
                         "id"}
    assert item["id"] == 3 and item["before"].shape == (40, 40, 3) and item["change_type"] in S.CHANGE_TYPES
    item = S.ShapesTriplets("val", 4, tasks=("domain",))[1]
    assert set(item) == {"reference", "target", "text", "task", "domain", "negatives", "id"}
    assert item["task"] == "domain" and len(item["negatives"]) == 4 and item["negatives"][0].shape == (64, 64, 3)
    with pytest.raises(IndexError):
        S.ShapesPairs("train", 4)[4]
    assert len(S.ShapesTriplets("train", 9)) == 9


def test_splits_are_disjoint_by_scene():
    def keys(split, n):
        return {S.scene_key(S.ShapesPairs(split, n).pair(i).before) for i in range(n)}

    train, val, test = keys("train", 3000), keys("val", 1000), keys("test", 1000)
    assert len(train) == 3000 and len(val) == 1000 and len(test) == 1000
    assert not (train & val) and not (train & test) and not (val & test)
    captions = {S.scene_key(S.ShapesCaptions("train", 500).scene(i)[0]) for i in range(500)}
    assert len(captions) == 500


# ----------------------------------------------------------------------------------------------------------------
# exporters
# ----------------------------------------------------------------------------------------------------------------


def _open_rgb(path, size):
    with Image.open(path) as im:
        assert im.mode == "RGB" and im.size == (size, size)
        return np.asarray(im)


def test_export_idc_layout_and_merge(tmp_path):
    out = S.export_idc(tmp_path / "clevr", split="train", n=6, seed=1, size=48)
    assert out == tmp_path / "clevr"
    S.export_idc(out, split="val", n=4, seed=1, size=48)
    splits = json.loads((out / "splits.json").read_text())
    assert splits["train"] == list(range(6)) and splits["val"] == [300_000 + i for i in range(4)]
    assert splits["test"] == []
    change = json.loads((out / "change_captions.json").read_text())
    no_change = json.loads((out / "no_change_captions.json").read_text())
    types = json.loads((out / "type_mapping.json").read_text())
    assert set(types) == set(S.CHANGE_TYPES) and sum(map(len, types.values())) == 10
    assert set(change) == set(no_change) and len(change) == 10
    pairs = S.ShapesPairs("val", 4, seed=1, size=48)
    for split, ids in splits.items():
        for id_ in ids:
            name = f"CLEVR_default_{id_:06d}.png"
            before = _open_rgb(out / "images" / name, 48)
            _open_rgb(out / "sc_images" / f"CLEVR_semantic_{id_:06d}.png", 48)
            _open_rgb(out / "nsc_images" / f"CLEVR_nonsemantic_{id_:06d}.png", 48)
            assert len(change[name]) >= 3 and len(no_change[name]) >= 3
            assert sum(f"{id_:06d}.png" in v for v in types.values()) == 1
            if split == "val":
                item = pairs[id_ - 300_000]
                assert np.array_equal(before, item["before"]) and change[name] == item["captions"]
    meta = json.loads((out / "shapes_meta.json").read_text())
    assert meta["generator_version"] == S.GENERATOR_VERSION and meta["size"] == 48
    assert meta["counts"] == {"train": 6, "val": 4}
    # re-exporting a split replaces its entries and keeps the others
    S.export_idc(out, split="train", n=3, seed=2, size=48)
    splits = json.loads((out / "splits.json").read_text())
    change = json.loads((out / "change_captions.json").read_text())
    assert splits["train"] == [0, 1, 2] and len(splits["val"]) == 4 and len(change) == 7
    with pytest.raises(ValueError, match="size=48"):
        S.export_idc(out, split="test", n=2, size=64)


def test_export_cir_layout(tmp_path):
    out = S.export_cir(tmp_path / "cirr", split="val", n=5, seed=0, size=40)
    S.export_cir(out, split="train", n=3, size=40)
    entries = json.loads((out / "cirr" / "captions" / "cap.rc2.val.json").read_text())
    paths = json.loads((out / "cirr" / "image_splits" / "split.rc2.val.json").read_text())
    assert len(entries) == 5 and len(paths) == 30
    assert (out / "cirr" / "captions" / "cap.rc2.train.json").exists()
    S.export_cir(out, split="test", n=2, size=40)  # CIRR's test split is called test1
    assert (out / "cirr" / "captions" / "cap.rc2.test1.json").exists() and (out / "test1" / "test1-1-ref.png").exists()
    for e in entries:
        assert set(e) == {"pairid", "reference", "target_hard", "target_soft", "caption", "img_set", "task", "domain"}
        members = e["img_set"]["members"]
        assert len(members) == len(set(members)) == 6
        assert members[e["img_set"]["reference_rank"]] == e["reference"]
        assert members[e["img_set"]["target_rank"]] == e["target_hard"] and e["target_soft"] == {e["target_hard"]: 1.0}
        assert e["reference"] == f"dev-{e['pairid']}-ref" and e["task"] in S.CIR_TASKS  # CIRR keeps val in dev/
        assert (e["domain"] is None) == (e["task"] != "domain")
        for name in members:
            assert paths[name] == f"./dev/{name}.png"
            _open_rgb(out / paths[name], 40)
    item = S.ShapesTriplets("val", 5, size=40)[2]
    assert entries[2]["caption"] == item["text"]
    assert np.array_equal(_open_rgb(out / "dev" / "dev-2-tgt.png", 40), item["target"])
    # members are not always in the same order (the reference is not always first)
    assert len({e["img_set"]["reference_rank"] for e in entries}) > 1


# ----------------------------------------------------------------------------------------------------------------
# errors name the fix
# ----------------------------------------------------------------------------------------------------------------


def test_bad_arguments_raise_helpful_errors(tmp_path):
    r = rng(0)
    cases = [
        (lambda: S.sample_scene(r, style="oil"), "unknown style 'oil'.*photo"),
        (lambda: S.Scene((), style="watercolor"), "unknown style"),
        (lambda: S.sample_scene(r, n_objects=7), "n_objects"),
        (lambda: S.sample_scene(r, n_objects=1), "n_objects"),
        (lambda: S.render(S.Scene(()), size=16), "size must be an int >= 32"),
        (lambda: S.make_idc_pair(r, change_type="recolor"), "unknown change_type 'recolor'.*texture"),
        (lambda: S.make_idc_pair(r, style="oil"), "unknown style"),
        (lambda: S.make_cir_triplet(r, task="style"), "unknown task 'style'.*domain"),
        (lambda: S.ShapesPairs("training", 5), "unknown split 'training'.*val"),
        (lambda: S.ShapesCaptions("train", 0), "n must be an int >= 1"),
        (lambda: S.ShapesCaptions("train", 5, styles=("oil",)), "unknown style"),
        (lambda: S.ShapesTriplets("train", 5, tasks=("style",)), "unknown task"),
        (lambda: S.ShapesTriplets("train", 5, size=31), "size"),
        (lambda: S.ShapesPairs("train", 5, seed=-1), "seed"),
        (lambda: S.export_idc(tmp_path, split="train", n=300_001), "n must be <= 300000"),
        (lambda: S.export_cir(tmp_path, split="dev", n=1), "unknown split 'dev'"),
        (lambda: S.ShapeObject("cone", "red", "large", "rubber", 0.5, 0.5), "unknown shape 'cone'"),
        (lambda: S.ShapeObject("cube", "pink", "large", "rubber", 0.5, 0.5), "unknown color 'pink'"),
        (lambda: S.ShapeObject("cube", "red", "large", "rubber", 1.5, 0.5), r"in \[0, 1\]"),
    ]
    for fn, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            fn()


def test_pairs_references_match_the_items_in_the_total_setting():
    pairs = S.ShapesPairs("val", 12, size=32)
    gts, groups = pairs.references()
    assert list(gts) == [str(i) for i in range(12)] + [f"{i}_n" for i in range(12)]
    for i in range(12):
        item = pairs[i]
        assert gts[str(i)] == item["captions"] and groups[str(i)] == item["change_type"]
        assert gts[f"{i}_n"] == item["no_change_captions"] and groups[f"{i}_n"] == S.DISTRACTOR
    only_change, _ = pairs.references(with_no_change=False)
    assert list(only_change) == [str(i) for i in range(12)]
