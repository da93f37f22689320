"""The Shapes world: procedural CLEVR-like scenes for offline, CPU-only experiments.

Shapes is idclab's toy world (see DESIGN.md, "Two worlds, one code path"). It stands in for CLEVR-Change (image
difference captioning, CLIP4IDC) and CIRR / ImageNet-R (composed image retrieval, Combiner and Pic2Word) wherever the
real data cannot be downloaded: CI, the book build, any laptop. It is not a mock: every attribute is visible at 64 px,
every caption is true of its image, and the models trained on it really learn.

A scene is 2..6 objects (3 shapes x 8 CLEVR colours x 2 sizes x 2 materials) on a ground plane, seen by a camera
from the front and slightly above (farther objects sit higher on screen and are somewhat smaller), drawn in one of
four styles: ``photo`` (the CLEVR-like default), ``sketch``, ``mosaic`` and ``cartoon`` (the "domains" of the domain
conversion task).

Reading order: constants -> dataclasses -> sampling -> rendering -> language -> IDC pairs -> CIR triplets ->
torch datasets -> exporters (to the CLEVR-Change and CIRR on-disk layouts, so one loader path serves both worlds).

Rendering is fast (a few thousand images per second on one core at 64 px): each object is a sprite ray-cast once
at 4x supersampling into a colour-independent basis (``rgb = colour * K + W``), cached by
(shape, material, style, quantised light, quantised on-screen radius, image size), then alpha-composited in
painter's order onto a cached background. No per-pixel Python loops.

Determinism: item ``i`` of split ``s`` with seed ``k`` is generated from
``np.random.default_rng([k, SPLIT_INDEX[s], i, kind])`` (``kind`` one of the ``KIND_*`` constants), so any item can be
regenerated alone and the train / val / test streams are independent.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
from torch.utils.data import Dataset

# ----------------------------------------------------------------------------------------------------------------
# Constants
# ----------------------------------------------------------------------------------------------------------------

GENERATOR_VERSION = 1  # bump when the same seed would give different scenes, images or captions

SHAPES = ("cube", "sphere", "cylinder")
# CLEVR's eight colours with CLEVR's RGB values (CLEVR ``properties.json``).
COLORS: dict[str, tuple[int, int, int]] = {
    "gray": (87, 87, 87),
    "red": (173, 35, 35),
    "blue": (42, 75, 215),
    "green": (29, 105, 20),
    "brown": (129, 74, 25),
    "purple": (129, 38, 192),
    "cyan": (41, 208, 208),
    "yellow": (255, 238, 51),
}
_COLOR_NAMES = tuple(COLORS)
SIZES = ("small", "large")
MATERIALS = ("rubber", "metal")
STYLES = ("photo", "sketch", "mosaic", "cartoon")
CHANGE_TYPES = ("color", "texture", "add", "drop", "move")  # CLEVR-Change's; "texture" = material rubber <-> metal
DISTRACTOR = "distractor"  # the no-change (viewpoint / illumination only) pair type
SPLITS = ("train", "val", "test")
SPLIT_INDEX = {"train": 0, "val": 1, "test": 2}
CIR_TASKS = ("attribute", "object", "domain")

# Per-index random streams: default_rng([seed, SPLIT_INDEX[split], index, KIND_*]).
KIND_CAPTION = 1
KIND_PAIR = 2
KIND_TRIPLET = 3
KIND_EXPORT = 4  # shuffling of CIRR img_set members at export time

MIN_IMAGE_SIZE = 32
MIN_OBJECTS, MAX_OBJECTS = 2, 6
MOVE_MIN_DISTANCE = 0.25  # ground units; a "move" displaces its object at least this far
N_CAPTIONS = 5  # reference captions per IDC pair (change and no-change each)
N_NEGATIVES = 4  # near-miss scenes per CIR triplet (CIRR img_set = reference + target + 4)
IDC_ID_STRIDE = 300_000  # export_idc: id = SPLIT_INDEX[split] * IDC_ID_STRIDE + i keeps CLEVR's 6-digit ids

ATTRIBUTES = ("size", "color", "material", "shape")  # the order adjectives are spoken in: "the large red metal cube"
_ATTR_VALUES = {"size": SIZES, "color": tuple(COLORS), "material": MATERIALS, "shape": SHAPES}

# Geometry. Ground coordinates (x, y) are in [0, 1]: x left -> right, y back (0) -> front (1).
_X_RANGE = (0.10, 0.90)  # where sample_scene puts objects, so that they stay inside the frame
_Y_RANGE = (0.05, 0.95)
_RADIUS = {"small": 0.08, "large": 0.13}  # object radius in image widths at depth scale 1
_CUBE_HALF, _CYL_RADIUS, _CYL_HALF_HEIGHT = 0.78, 0.85, 0.80  # in units of the object radius
_CUBE_YAW = math.radians(35.0)
_ELEV = math.radians(30.0)  # camera elevation: we look down at the floor at 30 degrees
_DEFAULT_VIEW = (0.0, 0.0, 1.0)  # (dx, dy, zoom): screen shift in image widths, zoom factor
_OVERLAP = 0.9  # two objects' screen circles may overlap by at most 10% of their radii ("mild occlusion")
_REL_MARGIN = 0.12  # ground units an object must be beyond another for "left of" / "behind" to be said

# Rendering quantisation (sprite cache keys).
_SS = 4  # supersampling factor for sprites
_LIGHT_STEPS = 4  # light in [-1, 1] is quantised to 1/_LIGHT_STEPS for shading
_SKETCH_PAPER = np.array([0.97, 0.955, 0.92], np.float32)
_GRAPHITE = np.array([0.22, 0.22, 0.25], np.float32)
_CARTOON_BG = np.array([0.80, 0.90, 0.97], np.float32)  # plain pastel blue

# Language.
_SIZE_WORDS = {"small": ("small", "tiny"), "large": ("large", "big")}
_MATERIAL_WORDS = {"rubber": ("rubber", "matte"), "metal": ("metal", "metallic", "shiny")}
_SHAPE_WORDS = {"cube": ("cube", "block"), "sphere": ("sphere", "ball"), "cylinder": ("cylinder",)}
RELATIONS = ("left of", "right of", "in front of", "behind")
_MAX_RELATIONS = 3  # relations per scene description (keeps 6-object descriptions <= 60 BPE tokens)
_ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth")

# ----------------------------------------------------------------------------------------------------------------
# Argument checks (errors name the fix)
# ----------------------------------------------------------------------------------------------------------------


def _check_choice(value, options, what: str) -> None:
    if value not in options:
        raise ValueError(f"unknown {what} {value!r}; use one of {tuple(options)}")


def _check_style(style: str) -> None:
    _check_choice(style, STYLES, "style")


def _check_split(split: str) -> None:
    _check_choice(split, SPLITS, "split")


def _check_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < MIN_IMAGE_SIZE:
        raise ValueError(f"image size must be an int >= {MIN_IMAGE_SIZE} (got {size!r}); e.g. size=64")


def _check_n(n: int, *, limit: int | None = None) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an int >= 1 (got {n!r}): the number of items to generate")
    if limit is not None and n > limit:
        raise ValueError(f"n must be <= {limit} (got {n}); split a larger export into several trees")


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an int >= 0 (got {seed!r})")


def item_rng(seed: int, split: str, index: int, kind: int) -> np.random.Generator:
    """The random stream of one dataset item: ``default_rng([seed, SPLIT_INDEX[split], index, kind])``."""
    _check_seed(seed)
    _check_split(split)
    return np.random.default_rng([int(seed), SPLIT_INDEX[split], int(index), int(kind)])


# ----------------------------------------------------------------------------------------------------------------
# Dataclasses
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShapeObject:
    shape: str  # one of SHAPES
    color: str  # one of COLORS
    size: str  # one of SIZES
    material: str  # one of MATERIALS
    x: float  # ground x in [0, 1], left -> right
    y: float  # ground y in [0, 1], back (0) -> front (1)

    def __post_init__(self):
        _check_choice(self.shape, SHAPES, "shape")
        _check_choice(self.color, COLORS, "color")
        _check_choice(self.size, SIZES, "size")
        _check_choice(self.material, MATERIALS, "material")
        if not (0.0 <= self.x <= 1.0 and 0.0 <= self.y <= 1.0):
            raise ValueError(f"ground coordinates must lie in [0, 1] (got x={self.x!r}, y={self.y!r})")

    @property
    def attributes(self) -> tuple[str, str, str, str]:  # (size, color, material, shape)
        return (self.size, self.color, self.material, self.shape)


@dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeObject, ...]
    style: str = "photo"  # one of STYLES
    view: tuple[float, float, float] = _DEFAULT_VIEW  # camera jitter (dx, dy, zoom); dx, dy in image widths
    light: float = 0.0  # illumination shift in [-1, 1]: light azimuth (+-55 deg) and brightness (+-15%)

    def __post_init__(self):
        _check_style(self.style)
        if not isinstance(self.objects, tuple):
            object.__setattr__(self, "objects", tuple(self.objects))
        if len(self.view) != 3 or not self.view[2] > 0:
            raise ValueError(f"view must be (dx, dy, zoom) with zoom > 0 (got {self.view!r})")
        if not isinstance(self.view, tuple):
            object.__setattr__(self, "view", tuple(float(v) for v in self.view))


def scene_key(scene: Scene) -> tuple:
    """A hashable identity of a scene that ignores object order (two scenes with equal keys render the same)."""
    return (scene.style, tuple(sorted((o.y, o.x) + o.attributes for o in scene.objects)), tuple(scene.view),
            scene.light)


# ----------------------------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------------------------


def _project(x: float, y: float, view=_DEFAULT_VIEW) -> tuple[float, float, float]:
    """Ground (x, y) -> screen (u, v) of the object's ground contact point, in image widths, and its depth scale."""
    s = 0.8 + 0.2 * y  # perspective: the back row is 20% smaller
    u = 0.5 + (x - 0.5) * 0.84 * s
    v = 0.30 + 0.56 * y  # farther = higher on screen
    dx, dy, zoom = view
    return 0.5 + (u - 0.5) * zoom + dx, 0.55 + (v - 0.55) * zoom + dy, s * zoom


def _screen_circle(obj: ShapeObject) -> tuple[float, float, float]:
    """A circle (u, v, r) in image widths that roughly covers the object on screen (default view)."""
    u, v, s = _project(obj.x, obj.y)
    r = _RADIUS[obj.size] * s
    return u, v - 0.75 * r, 1.15 * r


def _fits(obj: ShapeObject, others: Sequence[ShapeObject]) -> bool:
    """True if ``obj`` occludes / is occluded by none of ``others`` beyond mild occlusion."""
    u, v, r = _screen_circle(obj)
    for o in others:
        uo, vo, ro = _screen_circle(o)
        if (u - uo) ** 2 + (v - vo) ** 2 < (_OVERLAP * (r + ro)) ** 2:
            return False
    return True


def _random_attributes(rng: np.random.Generator) -> tuple[str, str, str, str]:  # (shape, color, size, material)
    return (SHAPES[rng.integers(3)], _COLOR_NAMES[rng.integers(8)], SIZES[rng.integers(2)],
            MATERIALS[rng.integers(2)])


def _place(rng: np.random.Generator, shape, color, size, material, others, *, tries: int = 60):
    """A ShapeObject with the given attributes at a random free spot, or None if none was found."""
    for _ in range(tries):
        obj = ShapeObject(shape, color, size, material, float(rng.uniform(*_X_RANGE)), float(rng.uniform(*_Y_RANGE)))
        if _fits(obj, others):
            return obj
    return None


def _new_object(rng: np.random.Generator, others: Sequence[ShapeObject]) -> ShapeObject | None:
    """A random object whose attributes differ from every one of ``others`` and that fits among them."""
    taken = {o.attributes for o in others}
    for _ in range(20):
        shape, color, size, material = _random_attributes(rng)
        if (size, color, material, shape) in taken:
            continue
        obj = _place(rng, shape, color, size, material, others)
        if obj is not None:
            return obj
    return None


def sample_scene(rng: np.random.Generator, *, n_objects: int | None = None, style: str = "photo") -> Scene:
    """A random scene of ``n_objects`` (default: uniform in 2..6) objects, every one visible.

    Objects never overlap on screen beyond mild occlusion, and no two share all four attributes, so every object has
    an attribute-only referring expression. The scene has the default view and light (jitter is added by the pair
    and triplet makers).
    """
    _check_style(style)
    if n_objects is None:
        n_objects = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    elif isinstance(n_objects, bool) or not isinstance(n_objects, (int, np.integer)) or not (
            MIN_OBJECTS <= n_objects <= MAX_OBJECTS):
        raise ValueError(f"n_objects must be an int in {MIN_OBJECTS}..{MAX_OBJECTS} (got {n_objects!r}) or None")
    while True:
        objects: list[ShapeObject] = []
        for _ in range(n_objects):
            obj = _new_object(rng, objects)
            if obj is None:
                break
            objects.append(obj)
        if len(objects) == n_objects:
            return Scene(tuple(objects), style=style)


# ----------------------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------------------
# Sprite frame: world units are output pixels; the object stands on the ground (z = 0) at the origin. The camera is
# orthographic per sprite, looking along d = (0, cos e, -sin e) (forward and down); screen right = world x, screen
# up = (0, sin e, cos e). Perspective enters only through each object's screen position and radius (_project).

_D = np.array([0.0, math.cos(_ELEV), -math.sin(_ELEV)])  # view direction
_UP = np.array([0.0, math.sin(_ELEV), math.cos(_ELEV)])  # screen up in world coordinates
_TO_CAMERA = -_D


def _quant_light(light: float) -> float:
    return round(max(-1.0, min(1.0, float(light))) * _LIGHT_STEPS) / _LIGHT_STEPS


def _light_dir(light_q: float) -> np.ndarray:
    """Unit vector towards the key light: from the camera's left-front, 50 deg up; ``light`` turns it +-55 deg."""
    az = math.radians(-40.0 + 55.0 * light_q)
    el = math.radians(50.0)
    return np.array([math.sin(az) * math.cos(el), -math.cos(az) * math.cos(el), math.sin(el)])


def _radius_step(size: int) -> float:
    return size / 128.0  # on-screen radii are quantised to 0.5 px at 64 px


def _dilate(mask: np.ndarray, radius: float) -> np.ndarray:
    """Binary dilation of a bool [H, W] mask by a disc (loops over the disc's offsets, not over pixels)."""
    r = int(math.ceil(radius))
    if r <= 0:
        return mask.copy()
    h, w = mask.shape
    padded = np.pad(mask, r)
    out = np.zeros_like(mask)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dy * dy + dx * dx <= radius * radius + 1e-9:
                out |= padded[r + dy:r + dy + h, r + dx:r + dx + w]
    return out


def _edges(labels: np.ndarray) -> np.ndarray:
    """bool [H, W]: pixels whose 4-neighbour has another label."""
    e = np.zeros(labels.shape, bool)
    dv = labels[1:, :] != labels[:-1, :]
    dh = labels[:, 1:] != labels[:, :-1]
    e[1:, :] |= dv
    e[:-1, :] |= dv
    e[:, 1:] |= dh
    e[:, :-1] |= dh
    return e


@functools.lru_cache(maxsize=32)  # only needed while building bases; hi-res buffers are large
def _geometry(shape: str, r_px: float, pad: int):
    """Ray-cast one object at _SS x supersampling.

    Returns (hit bool [H*SS, W*SS], normal float [H*SS, W*SS, 3], face int8 [H*SS, W*SS], X, Y screen coords in
    output px [H*SS, W*SS], top, left) where (top, left) is the anchor (ground contact point) pixel in the sprite.
    """
    left = int(math.ceil(1.3 * r_px + pad))
    top = int(math.ceil(2.2 * r_px + pad))
    bottom = int(math.ceil(0.7 * r_px + pad))
    h, w = top + bottom + 1, 2 * left + 1
    xs = (np.arange(w * _SS) + 0.5) / _SS - left - 0.5
    ys = top + 0.5 - (np.arange(h * _SS) + 0.5) / _SS
    X, Y = np.meshgrid(xs, ys)  # [Hs, Ws]
    o = X[..., None] * np.array([1.0, 0.0, 0.0]) + Y[..., None] * _UP - 100.0 * r_px * _D  # ray origins [Hs, Ws, 3]
    d = _D
    R = r_px
    normal = np.zeros(o.shape)
    face = np.zeros(X.shape, np.int8)
    if shape == "sphere":
        c = np.array([0.0, 0.0, R])
        oc = o - c
        b = oc @ d
        disc = b * b - (np.einsum("...i,...i", oc, oc) - R * R)
        hit = disc > 0
        t = -b - np.sqrt(np.maximum(disc, 0.0))
        normal = (o + t[..., None] * d - c) / R
    elif shape == "cube":
        a = _CUBE_HALF * R
        cy, sy = math.cos(_CUBE_YAW), math.sin(_CUBE_YAW)
        rot = np.array([[cy, sy, 0.0], [-sy, cy, 0.0], [0.0, 0.0, 1.0]])  # world -> cube frame
        ol = (o - np.array([0.0, 0.0, a])) @ rot.T
        dl = rot @ d
        t1 = (-a - ol) / dl
        t2 = (a - ol) / dl
        tmin = np.minimum(t1, t2)  # [Hs, Ws, 3]
        tnear = tmin.max(-1)
        tfar = np.maximum(t1, t2).min(-1)
        hit = tnear < tfar
        axis = tmin.argmax(-1)
        nl = np.zeros(o.shape)
        np.put_along_axis(nl, axis[..., None], -np.sign(dl)[axis][..., None], axis=-1)
        normal = nl @ rot  # back to world
        face = (axis + 1).astype(np.int8)
    elif shape == "cylinder":
        rc, hc = _CYL_RADIUS * R, _CYL_HALF_HEIGHT * R
        inside = rc * rc - o[..., 0] ** 2
        t_side = (-o[..., 1] - np.sqrt(np.maximum(inside, 0.0))) / d[1]
        z_side = o[..., 2] + t_side * d[2]
        side_ok = (inside > 0) & (z_side >= 0) & (z_side <= 2 * hc)
        t_top = (2 * hc - o[..., 2]) / d[2]
        p_top = o + t_top[..., None] * d
        top_ok = p_top[..., 0] ** 2 + p_top[..., 1] ** 2 <= rc * rc
        use_top = top_ok & (~side_ok | (t_top < t_side))
        hit = side_ok | top_ok
        p_side = o + t_side[..., None] * d
        n_side = np.stack([p_side[..., 0], p_side[..., 1], np.zeros_like(t_side)], -1) / rc
        normal = np.where(use_top[..., None], np.array([0.0, 0.0, 1.0]), n_side)
        face = np.where(use_top, 2, 1).astype(np.int8)
    else:  # pragma: no cover - ShapeObject validates shapes
        raise ValueError(f"unknown shape {shape!r}; use one of {SHAPES}")
    face = np.where(hit, face + 1, 0).astype(np.int8)
    normal = np.where(hit[..., None], normal, 0.0).astype(np.float32)
    return hit, normal, face, X.astype(np.float32), Y.astype(np.float32), top, left


def _downsample(a: np.ndarray) -> np.ndarray:
    """Mean over _SS x _SS blocks: [H*SS, W*SS, C] -> [H, W, C]."""
    hs, ws, c = a.shape
    return a.reshape(hs // _SS, _SS, ws // _SS, _SS, c).mean((1, 3)).astype(np.float32)


@functools.lru_cache(maxsize=8192)  # ~14 KB each at 64 px; a 64 px training run uses ~3,000
def _basis(shape: str, material: str, style: str, light_q: float, r_px: float, size: int):
    """Colour-independent sprite: composite as ``canvas * inv_alpha + colour * K + W``.

    Returns (inv_alpha [h, w, 1], K [h, w, 1], W [h, w, 3], top, left), all premultiplied by coverage.
    """
    line = max(1.0, size / 40.0)  # outline width in output px
    pad = int(math.ceil(line)) + 1
    hit, n, face, X, Y, top, left = _geometry(shape, r_px, pad)
    L = _light_dir(light_q)
    H = L + _TO_CAMERA
    H = H / np.linalg.norm(H)
    ndl = np.clip(n @ L, 0.0, 1.0)  # Lambert [Hs, Ws]
    ndh = np.clip(n @ H, 0.0, 1.0)
    ndv = np.clip(n @ _TO_CAMERA, 0.0, 1.0)
    ones = np.ones(hit.shape)
    if style == "photo":
        if material == "rubber":
            K = 0.36 + 0.74 * ndl
            W = 0.05 * ndh ** 12
            W = np.repeat(W[..., None], 3, -1)
        else:  # metal: mirror-like (bright sky above, gray floor below in the reflection), dark rim, sharp highlight
            ne = n
            if shape != "sphere":  # flat faces: bend the normals so the mirrored horizon sweeps across them
                bend = np.stack([0.5 * X / r_px, np.zeros_like(X), (Y - 0.45 * r_px) / r_px], -1)
                ne = n + np.where(hit[..., None], bend, 0.0)
                ne = ne / np.maximum(np.linalg.norm(ne, axis=-1, keepdims=True), 1e-9)
            refl = _D - 2.0 * (ne @ _D)[..., None] * ne
            sky = 1.0 / (1.0 + np.exp(-16.0 * (refl[..., 2] + 0.1)))
            env = sky + 0.25 * (1.0 - sky)
            rim = (1.0 - ndv) ** 2
            neh = np.clip(ne @ H, 0.0, 1.0)
            K = (0.08 + 0.30 * ndl + 0.80 * env) * (1.0 - 0.6 * rim)
            W = 0.95 * neh ** (90 if shape == "sphere" else 30) + 0.30 * neh ** 10 + 0.10 * sky
            W = np.repeat(W[..., None], 3, -1)
        cover = hit
    elif style == "cartoon":
        lit = ndl > 0.30
        K = np.where(lit, 1.0, 0.70)
        W = np.zeros(hit.shape + (3,))
        if material == "metal":
            glint = ndh ** 40 > 0.35
            band = (np.abs(X + 0.55 * Y - 0.25 * r_px) < 0.13 * r_px) & (ndl > 0.2)  # a cartoon shine streak
            shine = (glint | band) & hit
            K = np.where(shine, 0.0, K)
            W = np.where(shine[..., None], 1.0, W)
        outer = _dilate(hit, 0.5 * line * _SS)
        inner = ~_dilate(~hit, 0.5 * line * _SS)
        outline = (outer & ~inner) | (_dilate(_edges(face) & hit, 0.3 * line * _SS) & hit)
        K = np.where(outline, 0.0, K)
        W = np.where(outline[..., None], 0.0, W)
        cover = outer
    elif style == "sketch":
        wash = 0.42  # colour only faintly: a light wash over the paper
        K = wash * ones
        W = (1.0 - wash) * ones[..., None] * _SKETCH_PAPER
        period = max(2.5, size / 22.0)
        hatch1 = np.mod((X + Y) / period, 1.0) < 0.38
        hatch2 = np.mod((X - Y) / period, 1.0) < 0.38
        shade = (hatch1 & (ndl < 0.45)) | (hatch2 & (ndl < 0.15))
        if material == "metal":  # shiny: paper-white highlight, cross-hatched dark rim
            shade = shade | ((hatch1 | hatch2) & (ndv < 0.55))
            gleam = (ndh ** 25 > 0.3) & hit
            K = np.where(gleam, 0.0, K)
            W = np.where(gleam[..., None], _SKETCH_PAPER, W)
        else:
            gleam = np.zeros_like(hit)
        g = 0.65  # graphite strokes over the wash
        K = np.where(shade & ~gleam, (1 - g) * K, K)
        W = np.where((shade & ~gleam)[..., None], (1 - g) * W + g * _GRAPHITE, W)
        outer = _dilate(hit, 0.45 * line * _SS)
        inner = ~_dilate(~hit, 0.45 * line * _SS)
        outline = outer & ~inner  # coloured pencil outline
        K = np.where(outline, 0.70, K)
        W = np.where(outline[..., None], 0.0, W)
        inner_edges = _dilate(_edges(face) & hit, 0.25 * line * _SS) & hit & ~outline
        K = np.where(inner_edges, 0.0, K)
        W = np.where(inner_edges[..., None], _GRAPHITE, W)
        cover = outer
    else:  # pragma: no cover
        raise ValueError(f"no sprite style {style!r}")
    cov = cover.astype(np.float64)
    alpha = _downsample(cov[..., None])
    Kp = _downsample((cov * K)[..., None])
    Wp = _downsample(cov[..., None] * W)
    inv = (1.0 - alpha).astype(np.float32)
    for a in (inv, Kp, Wp):
        a.setflags(write=False)
    return inv, Kp, Wp, top, left


@functools.lru_cache(maxsize=4096)
def _sprite(shape: str, color: str, material: str, style: str, light_q: float, r_px: float, size: int):
    """(inv_alpha [h, w, 1], premultiplied rgb [h, w, 3], top, left) for one coloured object."""
    inv, K, W, top, left = _basis(shape, material, style, light_q, r_px, size)
    col = np.asarray(COLORS[color], np.float32) / 255.0
    rgb = K * col + W
    rgb.setflags(write=False)
    return inv, rgb, top, left


@functools.lru_cache(maxsize=None)
def _shadow(style: str, light_q: float, r_px: float, size: int):
    """(multiplier [h, w, 1], top, left): a soft ground shadow cast away from the light."""
    strength = 0.45 if style == "photo" else 0.12
    L = _light_dir(light_q)
    g = -L[:2] / np.linalg.norm(L[:2])  # ground direction away from the light
    cx, cy = g[0] * 0.9 * r_px, g[1] * 0.9 * r_px * math.sin(_ELEV)  # shadow centre on screen (x right, y up)
    rx, ry = 1.25 * r_px, 1.25 * r_px * math.sin(_ELEV) * 1.4
    half = int(math.ceil(abs(cx) + rx + 2)), int(math.ceil(abs(cy) + ry + 2))
    xs = np.arange(-half[0], half[0] + 1, dtype=np.float64)
    ys = np.arange(half[1], -half[1] - 1, -1, dtype=np.float64)  # screen up, row 0 at the top
    X, Y = np.meshgrid(xs, ys)
    d2 = ((X - cx) / rx) ** 2 + ((Y - cy) / ry) ** 2
    a = strength * np.clip(1.0 - d2, 0.0, 1.0) ** 1.2
    mult = (1.0 - a)[..., None].astype(np.float32)
    mult.setflags(write=False)
    return mult, half[1], half[0]


@functools.lru_cache(maxsize=None)
def _background(style: str, light_q: float, size: int) -> np.ndarray:
    """float32 [size, size, 3] in [0, 1]. Do not modify (cached)."""
    t = (np.arange(size) + 0.5) / size
    yy, xx = np.meshgrid(t, t, indexing="ij")
    if style == "photo":  # CLEVR-like gray floor: lighter in front, darker far corners, light from one side
        g = 0.50 + 0.12 * yy - 0.07 * ((xx - 0.5) * 2) ** 2 * (1 - 0.5 * yy) - 0.05 * light_q * (xx - 0.5) * 2
        bg = g[..., None] * np.array([1.0, 1.0, 0.985])
    elif style == "sketch":  # off-white paper with a faint fibre texture (fixed pattern, deterministic)
        rng = np.random.default_rng(size)
        noise = rng.normal(0.0, 0.012, (size, size, 1))
        bg = _SKETCH_PAPER + noise + 0.0 * yy[..., None]
    elif style == "cartoon":
        bg = np.broadcast_to(_CARTOON_BG, (size, size, 3))
    else:  # pragma: no cover
        raise ValueError(f"no background for style {style!r}")
    bg = np.ascontiguousarray(bg, np.float32)
    bg.setflags(write=False)
    return bg


def _mosaic_tile(size: int) -> int:
    return max(3, int(round(size / 21.0)))  # ~21 tiles across (3 px at 64 px, 9 px at 192 px)


@functools.lru_cache(maxsize=None)
def _mosaic_grout(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(mult [P, P, 1], add [P, P, 3]) with P = tiles * tile >= size: light grout lines, per-tile glaze variation."""
    t = _mosaic_tile(size)
    n = -(-size // t)
    p = n * t
    line = max(1, t // 5)
    pos = np.arange(p) % t
    grout = (pos < line)
    g = np.where(grout[:, None] | grout[None, :], 0.6, 0.0)[..., None]  # grout weight per pixel
    rng = np.random.default_rng(1000 + size)
    glaze = np.kron(1.0 + rng.uniform(-0.06, 0.06, (n, n)), np.ones((t, t)))[..., None]
    mult = ((1.0 - g) * glaze).astype(np.float32)
    add = (g * np.array([0.86, 0.84, 0.80])).astype(np.float32)  # off-white grout
    mult.setflags(write=False)
    add.setflags(write=False)
    return mult, add


def _mosaic(img: np.ndarray) -> np.ndarray:
    """float32 [S, S, 3] -> the same picture laid in square, glazed tiles with grout."""
    size = img.shape[0]
    t = _mosaic_tile(size)
    n = -(-size // t)
    p = n * t
    if p != size:
        img = np.pad(img, ((0, p - size), (0, p - size), (0, 0)), mode="edge")
    tiles = img.reshape(n, t, n, t, 3).mean((1, 3))  # [n, n, 3]
    gray = tiles.mean(-1, keepdims=True)
    tiles = 1.08 * (gray + 1.35 * (tiles - gray))  # glazed tiles: more saturated than the photo
    big = np.broadcast_to(tiles[:, None, :, None, :], (n, t, n, t, 3)).reshape(p, p, 3)
    mult, add = _mosaic_grout(size)
    return (big * mult + add)[:size, :size]


def _blit(canvas: np.ndarray, ay: int, ax: int, top: int, left: int, mult: np.ndarray, add: np.ndarray | None):
    """canvas[region] = canvas[region] * mult (+ add), with the sprite anchor (top, left) at pixel (ay, ax)."""
    S = canvas.shape[0]
    h, w = mult.shape[:2]
    y0, x0 = ay - top, ax - left
    cy0, cy1 = max(0, y0), min(S, y0 + h)
    cx0, cx1 = max(0, x0), min(S, x0 + w)
    if cy1 <= cy0 or cx1 <= cx0:
        return
    sy, sx = slice(cy0 - y0, cy1 - y0), slice(cx0 - x0, cx1 - x0)
    region = canvas[cy0:cy1, cx0:cx1]
    region *= mult[sy, sx]
    if add is not None:
        region += add[sy, sx]


def clear_caches() -> None:
    """Empty the sprite / background caches (they refill on demand; used by benchmarks for cold-start figures)."""
    for cached in (_geometry, _basis, _sprite, _shadow, _background, _mosaic_grout):
        cached.cache_clear()


def render(scene: Scene, *, size: int = 64) -> np.ndarray:
    """uint8 [size, size, 3] picture of ``scene``; deterministic. Painter's order, back to front."""
    _check_size(size)
    _check_style(scene.style)
    size = int(size)
    base = "photo" if scene.style == "mosaic" else scene.style  # mosaic = the photo laid in tiles
    light_q = _quant_light(scene.light)
    canvas = _background(base, light_q, size).copy()  # [S, S, 3]
    step = _radius_step(size)
    placed = []
    for obj in sorted(scene.objects, key=lambda o: (o.y, o.x)):
        u, v, s = _project(obj.x, obj.y, scene.view)
        r_px = max(1.0, round(_RADIUS[obj.size] * s * size / step)) * step
        placed.append((obj, int(math.floor(v * size)), int(math.floor(u * size)), r_px))
    if base != "cartoon":
        for obj, ay, ax, r_px in placed:
            mult, top, left = _shadow(base, light_q, r_px, size)
            _blit(canvas, ay, ax, top, left, mult, None)
    for obj, ay, ax, r_px in placed:
        inv, rgb, top, left = _sprite(obj.shape, obj.color, obj.material, base, light_q, r_px, size)
        _blit(canvas, ay, ax, top, left, inv, rgb)
    if base == "photo":
        canvas *= 1.0 + 0.15 * max(-1.0, min(1.0, float(scene.light)))
    if scene.style == "mosaic":
        canvas = _mosaic(canvas)
    np.clip(canvas, 0.0, 1.0, out=canvas)
    return (canvas * 255.0 + 0.5).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------------
# Language
# ----------------------------------------------------------------------------------------------------------------


def _screen_u(obj: ShapeObject) -> float:
    return _project(obj.x, obj.y)[0]


def relation_holds(a: ShapeObject, b: ShapeObject, relation: str) -> bool:
    """True if ``a`` is clearly ``relation`` ``b`` (e.g. a "left of" b) on the ground and on screen."""
    if relation == "left of":
        return b.x - a.x >= _REL_MARGIN and _screen_u(a) < _screen_u(b)
    if relation == "right of":
        return a.x - b.x >= _REL_MARGIN and _screen_u(a) > _screen_u(b)
    if relation == "in front of":
        return a.y - b.y >= _REL_MARGIN
    if relation == "behind":
        return b.y - a.y >= _REL_MARGIN
    raise ValueError(f"unknown relation {relation!r}; use one of {RELATIONS}")


def _relation_possible(a: ShapeObject, b: ShapeObject, relation: str) -> bool:
    """True if ``a`` could be called ``relation`` ``b`` at all (no margin); used to rule out ambiguity."""
    if relation == "left of":
        return a.x < b.x
    if relation == "right of":
        return a.x > b.x
    if relation == "in front of":
        return a.y > b.y
    return a.y < b.y


def _phrase(obj: ShapeObject, attrs: Sequence[str], *, article: str = "the") -> str:
    """'the large red cube' from the chosen attributes (spoken in ATTRIBUTES order, shape always last)."""
    words = [getattr(obj, a) for a in ATTRIBUTES[:3] if a in attrs]
    return " ".join([article, *words, obj.shape])


def full_description(obj: ShapeObject, *, article: str = "a") -> str:
    """'a large red metal cube': all four attributes, canonical words."""
    return _phrase(obj, ATTRIBUTES, article=article)


# Attribute subsets tried by referring_expression, shortest first; shape is always named.
_SUBSETS = ((),) + tuple(itertools.combinations(("color", "size", "material"), 1)) + (
    ("size", "color"), ("color", "material"), ("size", "material"), ("size", "color", "material"))


def _matching(objects: Sequence[ShapeObject], target: ShapeObject, attrs: Sequence[str]) -> list[int]:
    keys = ("shape",) + tuple(attrs)
    return [j for j, o in enumerate(objects) if all(getattr(o, k) == getattr(target, k) for k in keys)]


def _attribute_expression(objects, index: int, include: Sequence[str] = ()) -> str | None:
    target = objects[index]
    for attrs in _SUBSETS:
        if not all(a in attrs or a == "shape" for a in include):
            continue
        if len(_matching(objects, target, attrs)) == 1:
            return _phrase(target, attrs)
    return None


def referring_expression(scene: Scene, index: int, *, include: Sequence[str] = ()) -> str:
    """The shortest expression that picks out ``scene.objects[index]``; deterministic, canonical words.

    Tries "the cube", then one attribute ("the red cube"; colour, then size, then material), then two, then three.
    ``include`` forces attributes into the expression (IDC captions name the old colour of a recoloured object:
    "the red cube changed to blue"). If attributes cannot disambiguate (identical twins), a relation to another,
    uniquely described object is used ("the red cube left of the sphere"), then "the leftmost ...", and finally
    "the second red cube from the left".
    """
    objects = scene.objects
    if not 0 <= index < len(objects):
        raise ValueError(f"index {index} out of range for a scene with {len(objects)} objects")
    for a in include:
        _check_choice(a, ATTRIBUTES, "attribute")
    expr = _attribute_expression(objects, index, include)
    if expr is not None:
        return expr
    target = objects[index]
    group = _matching(objects, target, ATTRIBUTES)  # identical twins, including the target
    desc = next(_phrase(target, attrs) for attrs in _SUBSETS
                if all(a in attrs or a == "shape" for a in include) and _matching(objects, target, attrs) == group)
    others = [g for g in group if g != index]
    for j, anchor in enumerate(objects):
        if j in group:
            continue
        anchor_expr = _attribute_expression(objects, j)
        if anchor_expr is None:
            continue
        for rel in RELATIONS:
            if relation_holds(target, anchor, rel) and not any(
                    _relation_possible(objects[g], anchor, rel) for g in others):
                return f"{desc} {rel} {anchor_expr}"
    rest = desc[len("the "):]
    for word, key in (("leftmost", lambda o: o.x), ("rightmost", lambda o: -o.x),
                      ("frontmost", lambda o: -o.y), ("backmost", lambda o: o.y)):
        if all(key(objects[g]) - key(target) >= _REL_MARGIN for g in others):
            return f"the {word} {rest}"
    order = sorted(group, key=lambda g: (objects[g].x, objects[g].y, g))
    return f"the {_ORDINALS[order.index(index)]} {rest} from the left"


def _object_words(obj: ShapeObject, rng: np.random.Generator) -> str:
    size = _SIZE_WORDS[obj.size]
    mat = _MATERIAL_WORDS[obj.material]
    shape = _SHAPE_WORDS[obj.shape]
    return (f"a {size[rng.integers(len(size))]} {obj.color} {mat[rng.integers(len(mat))]} "
            f"{shape[rng.integers(len(shape))]}")


def describe_scene(scene: Scene, rng: np.random.Generator) -> str:
    """A scene description for CLIP pretraining: "a photo of a large red metal cube, a tiny cyan matte ball behind it
    and a big blue rubber cylinder".

    Every object with all four attributes (synonyms drawn at random), in random order, plus up to three spatial
    relations, each true of an object and the one mentioned just before it ("it"). At most 60 open_clip BPE tokens
    (start/end included) for 6 objects.
    """
    _check_style(scene.style)
    objects = scene.objects
    if not objects:
        return f"a {scene.style} of an empty floor"
    order = [int(i) for i in rng.permutation(len(objects))]
    parts = [_object_words(objects[i], rng) for i in order]
    candidates = []  # (position, relations true of object order[k] w.r.t. order[k-1])
    for k in range(1, len(order)):
        rels = [r for r in RELATIONS if relation_holds(objects[order[k]], objects[order[k - 1]], r)]
        if rels:
            candidates.append((k, rels))
    n_rel = min(_MAX_RELATIONS, len(candidates))
    if n_rel:
        for c in sorted(rng.choice(len(candidates), n_rel, replace=False)):
            k, rels = candidates[int(c)]
            parts[k] += f" {rels[rng.integers(len(rels))]} it"
    body = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"a {scene.style} of {body}"


# ----------------------------------------------------------------------------------------------------------------
# IDC pairs (CLEVR-Change-like)
# ----------------------------------------------------------------------------------------------------------------

_IDC_TEMPLATES = {
    "color": ("{ref} changed to {new}", "{ref} became {new}", "{ref} turned {new}", "{ref} changed its color to {new}",
              "someone painted {ref} {new}", "{ref} is now {new}"),
    "texture": ("{ref} changed its material", "{ref} became {new}", "{ref} is now {new}",
                "{ref} changed its material to {noun}", "the material of {ref} changed", "{ref} turned {new}"),
    "add": ("someone added {new}", "{new} has appeared", "{new} has been added", "{new} was added",
            "there is a new {bare}", "someone put {new} in the scene"),
    "drop": ("{ref} has disappeared", "{ref} is missing", "someone removed {ref}", "{ref} is no longer there",
             "{ref} was removed", "{ref} has vanished"),
    "move": ("{ref} moved", "{ref} changed its location", "{ref} is in a different location", "someone moved {ref}",
             "{ref} was moved", "{ref} has been moved", "{ref} moved {direction}"),
}
NO_CHANGE_TEMPLATES = ("no change was made", "the two scenes seem identical", "there is no difference",
                       "nothing has changed", "the scene is the same as before", "no change has occurred",
                       "the two images show the same objects")


@dataclass(frozen=True)
class IDCPair:
    before: Scene
    after: Scene  # the semantic change, plus a small camera / light jitter
    distractor: Scene  # the before scene with only a (larger) viewpoint and / or illumination shift
    change_type: str  # one of CHANGE_TYPES
    captions: tuple[str, ...]  # N_CAPTIONS distinct paraphrases of the change
    no_change_captions: tuple[str, ...]  # N_CAPTIONS distinct paraphrases of "nothing changed"
    target: str  # referring expression of the changed object (in `after` for "add", in `before` otherwise)


def _jitter(rng: np.random.Generator, scene: Scene, *, distractor: bool) -> Scene:
    """The scene with a camera / light jitter: small for semantic pairs, larger (and never zero) for distractors."""
    if not distractor:
        view = (float(rng.uniform(-0.012, 0.012)), float(rng.uniform(-0.012, 0.012)), float(rng.uniform(0.98, 1.02)))
        return replace(scene, view=view, light=float(rng.uniform(-0.15, 0.15)))
    mode = int(rng.integers(3))  # 0: viewpoint, 1: illumination, 2: both
    view, light = _DEFAULT_VIEW, 0.0
    if mode in (0, 2):
        sign = rng.choice((-1.0, 1.0), 3)
        view = (float(sign[0] * rng.uniform(0.015, 0.04)), float(sign[1] * rng.uniform(0.01, 0.03)),
                float(1.0 + sign[2] * rng.uniform(0.02, 0.05)))
    if mode in (1, 2):
        light = float(rng.choice((-1.0, 1.0)) * rng.uniform(0.25, 0.6))
    return replace(scene, view=view, light=light)


def _move_direction(old: ShapeObject, new: ShapeObject) -> str | None:
    dx, dy = new.x - old.x, new.y - old.y
    if abs(dx) >= 2 * abs(dy) and abs(dx) >= MOVE_MIN_DISTANCE:
        return "to the right" if dx > 0 else "to the left"
    if abs(dy) >= 2 * abs(dx) and abs(dy) >= MOVE_MIN_DISTANCE:
        return "to the front" if dy > 0 else "to the back"
    return None


def _apply_change(rng: np.random.Generator, before: Scene, change_type: str):
    """-> (after objects, target expression, template fields) or None if this scene cannot take the change."""
    objs = list(before.objects)
    i = int(rng.integers(len(objs)))
    old = objs[i]
    if change_type == "color":
        new_color = _COLOR_NAMES[(_COLOR_NAMES.index(old.color) + 1 + rng.integers(7)) % 8]
        objs[i] = replace(old, color=new_color)
        ref = referring_expression(before, i, include=("color",))
        return objs, ref, {"ref": ref, "new": new_color}
    if change_type == "texture":
        new_mat = "metal" if old.material == "rubber" else "rubber"
        objs[i] = replace(old, material=new_mat)
        ref = referring_expression(before, i, include=("material",))
        words = _MATERIAL_WORDS[new_mat]
        return objs, ref, {"ref": ref, "new": words[rng.integers(len(words))], "noun": new_mat}
    if change_type == "add":
        new = _new_object(rng, objs)
        if new is None:
            return None
        objs.append(new)
        after = Scene(tuple(objs))
        return objs, referring_expression(after, len(objs) - 1), {
            "new": full_description(new), "bare": full_description(new, article="")[1:]}
    if change_type == "drop":
        ref = referring_expression(before, i)
        del objs[i]
        return objs, ref, {"ref": ref}
    if change_type == "move":
        others = objs[:i] + objs[i + 1:]
        for _ in range(60):
            x, y = float(rng.uniform(*_X_RANGE)), float(rng.uniform(*_Y_RANGE))
            if (x - old.x) ** 2 + (y - old.y) ** 2 < MOVE_MIN_DISTANCE ** 2:
                continue
            new = replace(old, x=x, y=y)
            if _fits(new, others):
                objs[i] = new
                ref = referring_expression(before, i)
                return objs, ref, {"ref": ref, "direction": _move_direction(old, new)}
        return None
    raise ValueError(f"unknown change_type {change_type!r}; use one of {CHANGE_TYPES}")


def _pick_captions(rng: np.random.Generator, templates: Sequence[str], fields: dict) -> tuple[str, ...]:
    usable = [t for t in templates if not ("{direction}" in t and fields.get("direction") is None)]
    idx = rng.choice(len(usable), min(N_CAPTIONS, len(usable)), replace=False)
    return tuple(usable[int(k)].format(**fields) for k in idx)


def make_idc_pair(rng: np.random.Generator, *, change_type: str | None = None, style: str = "photo") -> IDCPair:
    """One CLEVR-Change-style triple: before, after (semantic change + small jitter), distractor (jitter only).

    ``change_type`` None draws one of CHANGE_TYPES uniformly. "add" scenes start with 2..5 objects, "drop" scenes with
    3..6, so every after-scene has 2..6 objects. A move goes at least MOVE_MIN_DISTANCE ground units; a colour change
    picks another colour; texture flips rubber <-> metal.
    """
    _check_style(style)
    if change_type is None:
        change_type = CHANGE_TYPES[rng.integers(len(CHANGE_TYPES))]
    _check_choice(change_type, CHANGE_TYPES, "change_type")
    lo = MIN_OBJECTS + 1 if change_type == "drop" else MIN_OBJECTS
    hi = MAX_OBJECTS - 1 if change_type == "add" else MAX_OBJECTS
    while True:
        before = sample_scene(rng, n_objects=int(rng.integers(lo, hi + 1)), style=style)
        result = _apply_change(rng, before, change_type)
        if result is not None:
            break
    objs, target, fields = result
    after = _jitter(rng, replace(before, objects=tuple(objs)), distractor=False)
    distractor = _jitter(rng, before, distractor=True)
    captions = _pick_captions(rng, _IDC_TEMPLATES[change_type], fields)
    no_change = _pick_captions(rng, NO_CHANGE_TEMPLATES, {})
    return IDCPair(before, after, distractor, change_type, captions, no_change, target)


# ----------------------------------------------------------------------------------------------------------------
# CIR triplets (CIRR-like; domain conversion as in Pic2Word)
# ----------------------------------------------------------------------------------------------------------------

_STYLE_NOUNS = {"photo": ("photo",), "sketch": ("sketch", "pencil sketch", "pencil drawing"),
                "mosaic": ("mosaic", "tile mosaic"), "cartoon": ("cartoon", "cartoon drawing")}
_CIR_TEMPLATES = {
    "color": ("make {ref} {new}", "change {ref} to {new}", "paint {ref} {new}", "turn {ref} {new}"),
    "material": ("make {ref} {new}", "change {ref} to {noun}", "turn {ref} {new}"),
    "size": ("make {ref} {new}", "{verb} {ref}"),
    "shape": ("turn {ref} into a {new}", "make {ref} a {new}", "change {ref} into a {new}",
              "replace {ref} with a {new}"),
    "add": ("add {new}", "put {new} in the scene", "place {new} on the floor"),
    "remove": ("remove {ref}", "take away {ref}", "delete {ref}", "get rid of {ref}"),
    "domain": ("turn it into a {new}", "make it a {new}", "render it as a {new}", "show it as a {new}"),
}
_CIR_SIZE_WORDS = {"small": ("small", "smaller", "tiny"), "large": ("large", "bigger", "big")}


@dataclass(frozen=True)
class CIRTriplet:
    reference: Scene
    target: Scene
    text: str  # instruction-form modification: "make the red cube blue", "turn it into a sketch"
    task: str  # one of CIR_TASKS
    domain: str | None  # the target style for the "domain" task, else None
    negatives: tuple[Scene, ...]  # N_NEGATIVES near misses, all different from reference, target and each other


def _with_object(scene: Scene, i: int, **changes) -> Scene:
    objs = list(scene.objects)
    objs[i] = replace(objs[i], **changes)
    return replace(scene, objects=tuple(objs))


def _without(scene: Scene, i: int) -> Scene:
    return replace(scene, objects=scene.objects[:i] + scene.objects[i + 1:])


def _other_value(rng: np.random.Generator, attr: str, *exclude: str) -> str | None:
    options = [v for v in _ATTR_VALUES[attr] if v not in exclude]
    return options[rng.integers(len(options))] if options else None


def _resized_fits(scene: Scene, i: int, size: str) -> bool:
    obj = replace(scene.objects[i], size=size)
    return _fits(obj, scene.objects[:i] + scene.objects[i + 1:])


def _random_edit(rng: np.random.Generator, scene: Scene) -> Scene | None:
    """The scene with one random attribute of one random object changed (None if it did not fit)."""
    i = int(rng.integers(len(scene.objects)))
    attr = ATTRIBUTES[rng.integers(4)]
    new = _other_value(rng, attr, getattr(scene.objects[i], attr))
    if attr == "size" and not _resized_fits(scene, i, new):
        return None
    return _with_object(scene, i, **{attr: new})


def _attribute_task(rng: np.random.Generator):
    while True:
        ref = sample_scene(rng)
        i = int(rng.integers(len(ref.objects)))
        obj = ref.objects[i]
        attr = ("color", "material", "size", "shape")[rng.integers(4)]
        new = _other_value(rng, attr, getattr(obj, attr))
        if attr == "size" and not _resized_fits(ref, i, new):
            continue
        break
    target = _with_object(ref, i, **{attr: new})
    expr = referring_expression(ref, i)
    if attr == "material":
        words = _MATERIAL_WORDS[new]
    elif attr == "size":
        words = _CIR_SIZE_WORDS[new]
    else:
        words = (new,)
    templates = _CIR_TEMPLATES[attr]
    text = templates[rng.integers(len(templates))].format(
        ref=expr, new=words[rng.integers(len(words))], noun=new, verb="enlarge" if new == "large" else "shrink")
    near = []  # near misses, most confusable first
    alt = _other_value(rng, attr, getattr(obj, attr), new)
    if alt is not None:  # the same object given another value
        near.append(_with_object(ref, i, **{attr: alt}))
    js = [j for j in rng.permutation(len(ref.objects)) if j != i and getattr(ref.objects[j], attr) != new]
    for j in js[:2]:  # another object given this value
        if attr != "size" or _resized_fits(ref, int(j), new):
            near.append(_with_object(ref, int(j), **{attr: new}))
    other_attr = [a for a in ("color", "material", "size", "shape") if a != attr][rng.integers(3)]
    other_new = _other_value(rng, other_attr, getattr(obj, other_attr))
    if other_attr != "size" or _resized_fits(ref, i, other_new):  # the same object, another attribute changed
        near.append(_with_object(ref, i, **{other_attr: other_new}))
    near.append(replace(target, style=STYLES[1 + rng.integers(3)]))  # the right edit in another style
    return ref, target, text, None, near


def _object_task(rng: np.random.Generator):
    add = bool(rng.integers(2))
    while True:
        ref = sample_scene(rng, n_objects=int(rng.integers(2, 6) if add else rng.integers(3, 7)))
        objs = ref.objects
        if add:
            new = _new_object(rng, objs)
            if new is None:
                continue
            target = replace(ref, objects=objs + (new,))
            templates = _CIR_TEMPLATES["add"]
            text = templates[rng.integers(len(templates))].format(new=full_description(new))
            near = []
            for attr in ("color", "shape", "size"):  # a different object added at the same spot
                alt = _other_value(rng, attr, getattr(new, attr))
                cand = replace(new, **{attr: alt})
                if attr != "size" or _fits(cand, objs):
                    near.append(replace(ref, objects=objs + (cand,)))
            near.append(replace(target, objects=target.objects[1:]))  # added, but another object removed
            near.append(replace(target, style=STYLES[1 + rng.integers(3)]))
        else:
            i = int(rng.integers(len(objs)))
            target = _without(ref, i)
            templates = _CIR_TEMPLATES["remove"]
            text = templates[rng.integers(len(templates))].format(ref=referring_expression(ref, i))
            near = [_without(ref, int(j)) for j in rng.permutation(len(objs))[:3] if j != i][:2]  # another removed
            near.append(_with_object(ref, i, color=_other_value(rng, "color", objs[i].color)))  # recoloured instead
            if len(objs) > 3:
                j = (i + 1) % len(objs)
                near.append(_without(_without(ref, max(i, j)), min(i, j)))  # removed together with another
            near.append(replace(target, style=STYLES[1 + rng.integers(3)]))
        return ref, target, text, None, near


def _domain_task(rng: np.random.Generator):
    ref = sample_scene(rng)
    domain = STYLES[1 + rng.integers(3)]
    target = replace(ref, style=domain)
    nouns = _STYLE_NOUNS[domain]
    templates = _CIR_TEMPLATES["domain"]
    text = templates[rng.integers(len(templates))].format(new=nouns[rng.integers(len(nouns))])
    near = [replace(ref, style=s) for s in STYLES[1:] if s != domain]  # the same scene in the other styles
    edit = None
    while edit is None:
        edit = _random_edit(rng, target)
    near.append(edit)  # the right style, but one object edited
    i = int(rng.integers(len(ref.objects)))
    near.append(_without(target, i) if len(ref.objects) > 2 else _with_object(
        target, i, color=_other_value(rng, "color", ref.objects[i].color)))
    return ref, target, text, domain, near


def make_cir_triplet(rng: np.random.Generator, *, task: str | None = None) -> CIRTriplet:
    """One composed-retrieval triplet (reference photo, modification text, target) with 4 near-miss negatives.

    ``task`` None draws one of CIR_TASKS uniformly. attribute: one object's colour / material / size / shape;
    object: add or remove one object; domain: the same scene in another style (sketch, mosaic or cartoon).
    """
    if task is None:
        task = CIR_TASKS[rng.integers(len(CIR_TASKS))]
    _check_choice(task, CIR_TASKS, "task")
    if task == "attribute":
        ref, target, text, domain, near = _attribute_task(rng)
    elif task == "object":
        ref, target, text, domain, near = _object_task(rng)
    else:
        ref, target, text, domain, near = _domain_task(rng)
    seen = {scene_key(ref), scene_key(target)}
    negatives = []
    for cand in near:
        k = scene_key(cand)
        if k not in seen and len(negatives) < N_NEGATIVES:
            seen.add(k)
            negatives.append(cand)
    while len(negatives) < N_NEGATIVES:  # top up with random single edits of the reference or the target
        cand = _random_edit(rng, (ref, target)[rng.integers(2)])
        if cand is not None and scene_key(cand) not in seen:
            seen.add(scene_key(cand))
            negatives.append(cand)
    return CIRTriplet(ref, target, text, task, domain, tuple(negatives))


# ----------------------------------------------------------------------------------------------------------------
# Torch datasets (images are uint8 numpy [H, W, 3]; the backbone's transform normalises)
# ----------------------------------------------------------------------------------------------------------------


class _ShapesDataset(Dataset):
    _kind = 0

    def __init__(self, split: str, n: int, *, seed: int = 0, size: int = 64):
        _check_split(split)
        _check_n(n)
        _check_seed(seed)
        _check_size(size)
        self.split, self.n, self.seed, self.size = split, int(n), int(seed), int(size)

    def __len__(self) -> int:
        return self.n

    def _index(self, i: int) -> int:
        i = int(i)
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for {type(self).__name__} of length {self.n}")
        return i

    def rng(self, i: int) -> np.random.Generator:
        return item_rng(self.seed, self.split, self._index(i), self._kind)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(split={self.split!r}, n={self.n}, seed={self.seed}, size={self.size})"


class ShapesCaptions(_ShapesDataset):
    """(image uint8 [S, S, 3], caption str): one scene in a style drawn from ``styles``, and its description."""

    _kind = KIND_CAPTION

    def __init__(self, split: str, n: int, *, seed: int = 0, size: int = 64, styles: Sequence[str] = STYLES):
        super().__init__(split, n, seed=seed, size=size)
        styles = tuple(styles)
        if not styles:
            raise ValueError(f"styles must name at least one of {STYLES}")
        for s in styles:
            _check_style(s)
        self.styles = styles

    def scene(self, i: int) -> tuple[Scene, str]:
        rng = self.rng(i)
        scene = sample_scene(rng, style=self.styles[rng.integers(len(self.styles))])
        return scene, describe_scene(scene, rng)

    def __getitem__(self, i: int):
        scene, caption = self.scene(i)
        return render(scene, size=self.size), caption


class ShapesPairs(_ShapesDataset):
    """CLEVR-Change-like IDC items: dict(before, after, distractor, change_type, captions, no_change_captions,
    target, id)."""

    _kind = KIND_PAIR

    def pair(self, i: int) -> IDCPair:
        return make_idc_pair(self.rng(i))

    def __getitem__(self, i: int) -> dict:
        p = self.pair(i)
        return dict(before=render(p.before, size=self.size), after=render(p.after, size=self.size),
                    distractor=render(p.distractor, size=self.size), change_type=p.change_type,
                    captions=list(p.captions), no_change_captions=list(p.no_change_captions), target=p.target,
                    id=self._index(i))

    def references(self, *, with_no_change: bool = True) -> tuple[dict[str, list[str]], dict[str, str]]:
        """(gts, groups) in CLEVR-Change's "Total" setting, as :meth:`idclab.data.clevr_change.CLEVRChange.references`:
        pair ``i`` under id ``"i"`` with its change captions and change type, its distractor pair under ``"i_n"``
        with the no-change captions and group ``"distractor"``. No image is rendered."""
        gts: dict[str, list[str]] = {}
        groups: dict[str, str] = {}
        pairs = [self.pair(i) for i in range(self.n)]
        for i, p in enumerate(pairs):
            gts[str(i)], groups[str(i)] = list(p.captions), p.change_type
        if with_no_change:
            for i, p in enumerate(pairs):
                gts[f"{i}_n"], groups[f"{i}_n"] = list(p.no_change_captions), DISTRACTOR
        return gts, groups


class ShapesTriplets(_ShapesDataset):
    """CIRR-like items: dict(reference, target, text, task, domain, negatives, id); tasks drawn from ``tasks``."""

    _kind = KIND_TRIPLET

    def __init__(self, split: str, n: int, *, seed: int = 0, size: int = 64, tasks: Sequence[str] = CIR_TASKS):
        super().__init__(split, n, seed=seed, size=size)
        tasks = tuple(tasks)
        if not tasks:
            raise ValueError(f"tasks must name at least one of {CIR_TASKS}")
        for t in tasks:
            _check_choice(t, CIR_TASKS, "task")
        self.tasks = tasks

    def triplet(self, i: int) -> CIRTriplet:
        rng = self.rng(i)
        return make_cir_triplet(rng, task=self.tasks[rng.integers(len(self.tasks))])

    def __getitem__(self, i: int) -> dict:
        t = self.triplet(i)
        return dict(reference=render(t.reference, size=self.size), target=render(t.target, size=self.size),
                    text=t.text, task=t.task, domain=t.domain,
                    negatives=[render(s, size=self.size) for s in t.negatives], id=self._index(i))


# ----------------------------------------------------------------------------------------------------------------
# Exporters (the real datasets' on-disk layouts)
# ----------------------------------------------------------------------------------------------------------------


def _read_json(path: Path, default):
    return json.loads(path.read_text()) if path.exists() else default


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


def _save_png(img: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(img, "RGB").save(path, compress_level=1)


def _update_meta(out: Path, layout: str, split: str, n: int, seed: int, size: int) -> None:
    path = out / "shapes_meta.json"
    meta = _read_json(path, {})
    if meta.get("layout", layout) != layout:
        raise ValueError(f"{out} holds a Shapes {meta['layout']} export; export {layout} into another directory")
    if meta.get("size", size) != size:
        raise ValueError(f"{out} holds {meta['size']} px images; export with size={meta['size']} or into another "
                         f"directory")
    splits = meta.get("splits", {})
    splits[split] = {"n": n, "seed": seed}
    meta.update(layout=layout, generator="idclab.data.shapes", generator_version=GENERATOR_VERSION, size=size,
                splits=splits, counts={s: v["n"] for s, v in splits.items()})
    _write_json(path, meta)


def export_idc(out_dir, *, split: str, n: int, seed: int = 0, size: int = 64) -> Path:
    """Write ``n`` IDC items of ``split`` in the CLEVR-Change layout; returns ``out_dir``.

    out_dir/images/CLEVR_default_XXXXXX.png (before), sc_images/CLEVR_semantic_XXXXXX.png (after),
    nsc_images/CLEVR_nonsemantic_XXXXXX.png (distractor); change_captions.json and no_change_captions.json
    ({"CLEVR_default_XXXXXX.png": [captions]}); splits.json ({"train": [ids], "val": [...], "test": [...]});
    type_mapping.json ({"color": ["XXXXXX.png", ...], ...}); shapes_meta.json (seed, size, counts, version).
    Ids are SPLIT_INDEX[split] * 300000 + i, so train, val and test can be exported into one tree: existing entries
    of the other splits are kept; re-exporting a split replaces its entries.
    """
    _check_split(split)
    _check_n(n, limit=IDC_ID_STRIDE)
    _check_seed(seed)
    _check_size(size)
    out = Path(out_dir)
    for sub in ("images", "sc_images", "nsc_images"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    _update_meta(out, "clevr_change", split, int(n), int(seed), int(size))
    change = _read_json(out / "change_captions.json", {})
    no_change = _read_json(out / "no_change_captions.json", {})
    splits = _read_json(out / "splits.json", {})
    types = _read_json(out / "type_mapping.json", {})
    old_ids = set(splits.get(split, []))  # forget the previous export of this split
    for i in old_ids:
        change.pop(f"CLEVR_default_{i:06d}.png", None)
        no_change.pop(f"CLEVR_default_{i:06d}.png", None)
    old_keys = {f"{i:06d}.png" for i in old_ids}
    types = {t: [k for k in types.get(t, []) if k not in old_keys] for t in CHANGE_TYPES}
    data = ShapesPairs(split, n, seed=seed, size=size)
    ids = []
    for i in range(n):
        item = data[i]
        id_ = SPLIT_INDEX[split] * IDC_ID_STRIDE + i
        _save_png(item["before"], out / "images" / f"CLEVR_default_{id_:06d}.png")
        _save_png(item["after"], out / "sc_images" / f"CLEVR_semantic_{id_:06d}.png")
        _save_png(item["distractor"], out / "nsc_images" / f"CLEVR_nonsemantic_{id_:06d}.png")
        change[f"CLEVR_default_{id_:06d}.png"] = item["captions"]
        no_change[f"CLEVR_default_{id_:06d}.png"] = item["no_change_captions"]
        types[item["change_type"]].append(f"{id_:06d}.png")
        ids.append(id_)
    splits[split] = ids
    for s in SPLITS:
        splits.setdefault(s, [])
    _write_json(out / "change_captions.json", change)
    _write_json(out / "no_change_captions.json", no_change)
    _write_json(out / "splits.json", splits)
    _write_json(out / "type_mapping.json", types)
    return out


# CIRR names its splits train / val / test1 in the annotation files and keeps val images in a folder called "dev".
CIRR_SPLIT = {"train": "train", "val": "val", "test": "test1"}
CIRR_IMAGE_DIR = {"train": "train", "val": "dev", "test": "test1"}


def export_cir(out_dir, *, split: str, n: int, seed: int = 0, size: int = 64) -> Path:
    """Write ``n`` CIR triplets of ``split`` in the CIRR layout (as CLIP4Cir expects it); returns ``out_dir``.

    With s = CIRR_SPLIT[split] (train / val / test1) and d = CIRR_IMAGE_DIR[split] (train / dev / test1):
    out_dir/cirr/captions/cap.rc2.{s}.json: [{"pairid", "reference", "target_hard", "target_soft", "caption",
    "img_set": {"id", "members" (reference, target and 4 negatives, shuffled), "reference_rank", "target_rank"},
    "task", "domain"}] (the last two are Shapes additions; CIRR readers ignore them);
    out_dir/cirr/image_splits/split.rc2.{s}.json: {name: "./{d}/{name}.png"}, resolved against out_dir;
    images at out_dir/{d}/{name}.png, names "{d}-{i}-ref" / "-tgt" / "-neg0".."-neg3".
    Unlike the real CIRR test1 split (whose targets are hidden behind the evaluation server), the Shapes test split
    keeps its targets. Other splits in the tree are left untouched.
    """
    _check_split(split)
    _check_n(n)
    _check_seed(seed)
    _check_size(size)
    out = Path(out_dir)
    json_split, image_dir = CIRR_SPLIT[split], CIRR_IMAGE_DIR[split]
    for sub in ("cirr/captions", "cirr/image_splits", image_dir):
        (out / sub).mkdir(parents=True, exist_ok=True)
    _update_meta(out, "cirr", split, int(n), int(seed), int(size))
    data = ShapesTriplets(split, n, seed=seed, size=size)
    entries, paths = [], {}
    for i in range(n):
        item = data[i]
        ref, tgt = f"{image_dir}-{i}-ref", f"{image_dir}-{i}-tgt"
        names = {ref: item["reference"], tgt: item["target"]}
        for k, img in enumerate(item["negatives"]):
            names[f"{image_dir}-{i}-neg{k}"] = img
        for name, img in names.items():
            _save_png(img, out / image_dir / f"{name}.png")
            paths[name] = f"./{image_dir}/{name}.png"
        members = [str(m) for m in item_rng(seed, split, i, KIND_EXPORT).permutation(list(names))]
        entries.append({"pairid": i, "reference": ref, "target_hard": tgt, "target_soft": {tgt: 1.0},
                        "caption": item["text"],
                        "img_set": {"id": i, "members": members, "reference_rank": members.index(ref),
                                    "target_rank": members.index(tgt)},
                        "task": item["task"], "domain": item["domain"]})
    _write_json(out / "cirr" / "captions" / f"cap.rc2.{json_split}.json", entries)
    _write_json(out / "cirr" / "image_splits" / f"split.rc2.{json_split}.json", paths)
    return out


__all__ = [
    "GENERATOR_VERSION", "SHAPES", "COLORS", "SIZES", "MATERIALS", "STYLES", "CHANGE_TYPES", "DISTRACTOR", "SPLITS",
    "SPLIT_INDEX", "CIR_TASKS", "ATTRIBUTES", "RELATIONS", "NO_CHANGE_TEMPLATES", "MOVE_MIN_DISTANCE", "N_CAPTIONS",
    "N_NEGATIVES", "IDC_ID_STRIDE", "KIND_CAPTION", "KIND_PAIR", "KIND_TRIPLET", "KIND_EXPORT",
    "ShapeObject", "Scene", "IDCPair", "CIRTriplet", "scene_key", "item_rng", "sample_scene", "render", "clear_caches",
    "describe_scene", "referring_expression", "relation_holds", "full_description", "make_idc_pair",
    "make_cir_triplet", "ShapesCaptions", "ShapesPairs", "ShapesTriplets", "export_idc", "export_cir", "CIRR_SPLIT",
    "CIRR_IMAGE_DIR",
]
