"""Every CIR benchmark by name: :func:`load_benchmark`, and the Shapes adapter :func:`shapes_benchmark`.

The real benchmarks are read by their loaders (``idclab.data.cirr``, ``fashioniq``, ``circo``, ``imagenet_r``,
``coco_composition``) from a ``data_scripts/`` tree; Shapes is generated on the fly, or read from an
``idclab shapes export --task cir`` tree in CIRR's layout.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from idclab.data import circo, cirr, coco_composition, fashioniq, imagenet_r, shapes
from idclab.data.cir_benchmark import ALL, CIRBenchmark, CIRQuery

BENCHMARKS = ("shapes", "cirr", "fashioniq", "circo", "imagenet_r", "coco")
SHAPES_DOMAIN_NOUN = {"sketch": "sketch", "mosaic": "mosaic", "cartoon": "cartoon"}  # style -> the prompt's noun


def load_benchmark(name: str, *, root: str | Path | None = None, split: str | None = None, n: int = 300,
                   seed: int = 0) -> CIRBenchmark:
    """A benchmark by name. ``shapes`` without ``root`` is generated (``n`` triplets of ``split``, default test); with
    ``root`` it is read from an ``idclab shapes export --task cir`` tree. The others read a ``data_scripts/`` tree."""
    if name not in BENCHMARKS:
        raise ValueError(f"Unknown benchmark {name!r}; choose one of {BENCHMARKS}.")
    if name == "shapes" and root is None:
        return shapes_benchmark(split or "test", n, seed=seed)
    if root is None:
        script = "coco_composition" if name == "coco" else name
        raise ValueError(f"The {name} benchmark needs --root DIR: fetch it with data_scripts/{script}.py download "
                         f"--root DIR (then verify).")
    if name in ("cirr", "shapes"):
        return cirr.load_benchmark(root, split or "val")
    if name == "fashioniq":
        return fashioniq.load_benchmark(root, split or "val")
    if name == "circo":
        return circo.load_benchmark(root, split or "val")
    if name == "imagenet_r":
        return imagenet_r.load_benchmark(root)
    return coco_composition.load_benchmark(root)


def shapes_benchmark(split: str = "test", n: int = 300, *, seed: int = 0, size: int = 64,
                     tasks: Sequence[str] | None = None) -> CIRBenchmark:
    """``n`` Shapes triplets as a CIRR-style benchmark (protocol "shapes"): the gallery is every reference, target and
    near-miss negative of the split; the reference is removed from each ranking; R_subset ranks within the triplet's
    own 6 images. Tasks: ``attribute`` (one object's colour / material / size / shape), ``object`` (add or remove
    one), ``domain`` (the same scene as a sketch, mosaic or cartoon: kind "domain", so Pic2Word uses "a {domain} of *"
    there, as on ImageNet-R). Every query keeps its instruction under ``caption`` too.
    """
    data = shapes.ShapesTriplets(split, n, seed=seed, size=size, **({} if tasks is None else dict(tasks=tasks)))
    images: dict[str, np.ndarray] = {}
    queries = []
    for i in tqdm(range(n), desc=f"Shapes CIR {split}", leave=False, disable=n < 200):
        item = data[i]
        ref, tgt = f"{i}-ref", f"{i}-tgt"
        images[ref], images[tgt] = item["reference"], item["target"]
        negs = [f"{i}-neg{k}" for k in range(len(item["negatives"]))]
        images.update(zip(negs, item["negatives"]))
        if item["task"] == "domain":
            kind, fields = "domain", {"domain": SHAPES_DOMAIN_NOUN[item["domain"]], "caption": item["text"]}
        else:
            kind, fields = "cirr", {"caption": item["text"]}
        queries.append(CIRQuery(id=str(i), reference=ref, kind=kind, fields=fields, targets=(tgt,),
                                subset=(ref, tgt, *negs), group=item["task"]))
    return CIRBenchmark(name="shapes", split=split, protocol="shapes", images=images,
                        galleries={ALL: tuple(images)}, queries=queries,
                        info=dict(n=n, seed=seed, size=size, per_task=dict(Counter(q.group for q in queries))))
