"""What a composed-image-retrieval (CIR) benchmark is, and its checks.

A benchmark is data: a table of images by name, one or more galleries (lists of names) and queries (a reference image,
the fields of the modification text, the correct gallery names). The loaders of ``idclab.data`` (CIRR, FashionIQ,
CIRCO, ImageNet-R, COCO composition, Shapes) build a :class:`CIRBenchmark`; the harness ``idclab.cir`` ranks and
scores it. :func:`check_benchmark` lists every structural problem at once (nothing is dropped silently).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np

from idclab.data._common import listing

ImageSource = Union[str, Path, np.ndarray, Callable[[], np.ndarray]]  # a file, uint8 [H, W, 3], or a loader

# How each benchmark is scored (the harness implements them): cirr, fashioniq, circo, imagenet_r, coco, shapes.
PROTOCOLS = ("cirr", "fashioniq", "circo", "imagenet_r", "coco", "shapes")
# Query kinds: which prompt template composes the query text (each kind names the fields it needs).
KINDS = {
    "cirr": ("caption",),  # CIRR and the Shapes attribute / object tasks: one relative caption
    "fashioniq": ("cap1", "cap2"),  # FashionIQ: two relative captions
    "domain": ("domain",),  # ImageNet-R (and Shapes) domain conversion: the target domain's noun
    "coco": ("classes",),  # COCO object composition: "dog and cat and chair" (query class first)
}
ALL = "all"
# Fields some queries carry beside their kind's: CIRCO's shared concept; the instruction of every Shapes query
# (so a method that reads text only, such as the Combiner, can use it for the domain task too).
OPTIONAL_FIELDS = {"shared_concept", "caption"}


@dataclass(frozen=True)
class CIRQuery:
    """One composed query.

    ``reference`` and every name in ``targets`` / ``subset`` are keys of :attr:`CIRBenchmark.images`.
    ``targets`` empty means hidden (a test-server split): the query can be ranked and submitted, not scored; except
    under the ``imagenet_r`` protocol, where it is a photo whose class has no image in the domain (it scores 0).
    """

    id: str  # the dataset's query id (CIRR pairid, FashionIQ "<category>/<index>", CIRCO id, ...) as a string
    reference: str  # image name of the reference image
    kind: str  # a key of KINDS: picks the prompt template
    fields: Mapping[str, str]  # the template fields, e.g. {"caption": "is red"} or {"cap1": ..., "cap2": ...}
    targets: tuple[str, ...] = ()  # correct gallery names: 1 (CIRR, FashionIQ, COCO), several (CIRCO, ImageNet-R)
    subset: tuple[str, ...] = ()  # CIRR's img_set members (reference included); empty elsewhere
    group: str = ALL  # reporting group: FashionIQ category, ImageNet-R domain, Shapes task
    gallery: str = ALL  # which of CIRBenchmark.galleries it is ranked against (FashionIQ: its category)


@dataclass
class CIRBenchmark:
    """A CIR evaluation split. Loaders in ``idclab.data`` build these; ``idclab.cir.evaluate`` runs them."""

    name: str  # "cirr", "fashioniq", "circo", "imagenet_r", "coco", "shapes"
    split: str  # the split's name in its dataset ("val", "test1", ...)
    protocol: str  # one of PROTOCOLS
    images: Mapping[str, ImageSource]  # every gallery and reference image, by name
    galleries: Mapping[str, tuple[str, ...]]  # gallery name -> image names, in a fixed order
    queries: Sequence[CIRQuery]
    root: Path | None = None  # the dataset folder (None for generated data)
    info: dict = field(default_factory=dict)  # anything a user should see with the results (counts, prep version)

    def query_gallery(self, query: CIRQuery) -> tuple[str, ...]:
        return self.galleries[query.gallery]


# ----------------------------------------------------------------------------------------------------------------------
# Checks (nothing is dropped: problems are listed, then raised)
# ----------------------------------------------------------------------------------------------------------------------


def check_benchmark(bench: CIRBenchmark) -> None:
    """Raise a ValueError that lists every structural problem: unknown protocol or kind, a reference or target that
    is not where the protocol needs it, a subset without its target, duplicate query ids."""
    if bench.protocol not in PROTOCOLS:
        raise ValueError(f"Unknown protocol {bench.protocol!r}; choose one of {PROTOCOLS}.")
    if not bench.queries:
        raise ValueError(f"{bench.name} {bench.split} has no queries.")
    problems: list[str] = []
    galleries = {g: set(names) for g, names in bench.galleries.items()}
    for g, names in bench.galleries.items():
        if not names:
            problems.append(f"gallery {g!r} is empty")
        unknown = [n for n in names if n not in bench.images]
        if unknown:
            problems.append(f"gallery {g!r} names {len(unknown)} images missing from the image table: {listing(unknown)}")
    ids = [q.id for q in bench.queries]
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        problems.append(f"duplicate query ids: {listing(sorted({i for i in ids if i in seen or seen.add(i)}))}")
    bad_kind, no_gallery, no_ref, ref_absent, target_absent, subset_bad = [], [], [], [], [], []
    for q in bench.queries:
        if q.kind not in KINDS:
            bad_kind.append(f"{q.id} ({q.kind})")
        if q.gallery not in galleries:
            no_gallery.append(f"{q.id} ({q.gallery})")
            continue
        gallery = galleries[q.gallery]
        if q.reference not in bench.images:
            no_ref.append(q.id)
        elif bench.protocol != "coco" and q.reference not in gallery:
            ref_absent.append(f"{q.id} ({q.reference})")
        if any(t not in gallery for t in q.targets):
            target_absent.append(q.id)
        if q.subset and (any(m not in gallery for m in q.subset) or (q.targets and q.targets[0] not in q.subset)
                         or q.reference not in q.subset):
            subset_bad.append(q.id)
    for items, what in ((bad_kind, f"queries of an unknown kind (kinds: {sorted(KINDS)})"),
                        (no_gallery, f"queries naming no gallery of {sorted(galleries)}"),
                        (no_ref, "queries whose reference image is not in the image table"),
                        (ref_absent, "queries whose reference is absent from their gallery (the protocol ranks and "
                                     "excludes it there; check the split files)"),
                        (target_absent, "queries whose target is absent from their gallery"),
                        (subset_bad, "queries whose subset lacks the reference or the target, or leaves the gallery")):
        if items:
            problems.append(f"{len(items)} {what}: {listing(items)}")
    if problems:
        raise ValueError(f"{bench.name} {bench.split} is inconsistent:\n  " + "\n  ".join(problems))


def missing_files(bench: CIRBenchmark, names: Sequence[str]) -> list[str]:
    """The ``names`` whose image is a file path that does not exist (arrays and loaders are never missing)."""
    return [n for n in names
            if isinstance(bench.images[n], (str, os.PathLike)) and not Path(bench.images[n]).is_file()]
