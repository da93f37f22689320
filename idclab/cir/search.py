"""Interactive composed retrieval: search one gallery for any (reference, text) query, or a folder of images.

:class:`GallerySearch` computes a gallery's features once, then answers each query in milliseconds (the book's
composer widget and ``idclab retrieve`` use it); :func:`retrieve` searches a folder (or a list of files) for one query.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from idclab.cir.evaluation import encode_images
from idclab.cir.retrievers import CLIPRetriever
from idclab.data._common import listing
from idclab.data.cir_benchmark import ALL, KINDS, CIRBenchmark, CIRQuery, ImageSource, missing_files
from idclab.data.image_folder import list_images
from idclab.images import ImageError, read_image


class GallerySearch:
    """Interactive search over one gallery: its features are computed once, then :meth:`search` answers any
    (reference, text) query in milliseconds (the chapter's composer widget and ``idclab retrieve`` use it)."""

    def __init__(self, retriever: CLIPRetriever, bench: CIRBenchmark, *, gallery: str = ALL,
                 cache_dir: str | Path | None = None, progress: bool = True, skip_bad_images: bool = False):
        self.retriever, self.bench = retriever, bench
        names = list(bench.galleries[gallery])
        raw, bad = encode_images(retriever, bench, names, cache_dir=cache_dir, progress=progress)  # [G, D]
        if bad:
            listed = listing(list(bad.values()))
            if not skip_bad_images:
                raise ImageError(f"{len(bad)} of the {len(names)} gallery images cannot be read: {listed}. Remove or "
                                 "replace them, or leave them out with --skip-bad-images (skip_bad_images=True).")
            if len(bad) == len(names):
                raise ImageError(f"None of the {len(names)} gallery images can be read: {listed}.")
            warnings.warn(f"Left out {len(bad)} of the {len(names)} gallery images, which cannot be read: {listed}",
                          stacklevel=2)
            keep = [i for i, n in enumerate(names) if n not in bad]
            names, raw = [names[i] for i in keep], raw[keep]
        self.names = names
        self.position = {n: i for i, n in enumerate(self.names)}
        self.raw = raw  # [G, D]
        self.gallery = retriever.encode_gallery(self.raw)  # [G, D]

    def search(self, reference: str | ImageSource, text: str, *, kind: str = "cirr", k: int = 5,
               exclude_reference: bool = True) -> list[tuple[str, float]]:
        """Top ``k`` gallery names and cosine similarities for ``reference`` (a gallery name or an image) modified
        by ``text`` (kind "cirr": a caption; "domain": a domain noun). The reference itself is left out."""
        if k < 1:
            raise ValueError(f"k must be >= 1 (gallery items to return), got {k}.")
        if kind not in ("cirr", "domain"):
            raise ValueError(f"kind must be 'cirr' (text = a modification) or 'domain' (text = a domain noun), "
                             f"not {kind!r}.")
        name = reference if isinstance(reference, str) and reference in self.bench.images else None
        if name is not None and name in self.position:
            v = self.raw[[self.position[name]]]  # [1, D]
        else:
            v = self.retriever.encode_image([read_image(self.bench.images[name] if name else reference)])
        query = CIRQuery(id="query", reference=name or "<query>", kind=kind, fields={KINDS[kind][0]: text})
        q = self.retriever.encode_query(v, [query])[0]  # [D]
        sims = self.gallery @ q  # [G]
        if exclude_reference and name in self.position:
            sims = sims.clone()
            sims[self.position[name]] = float("-inf")
        k = min(k, len(self.names) - int(exclude_reference and name in self.position))
        top = torch.topk(sims, k)  # ties are rare with float features; the order is then the gallery's
        return [(self.names[j], float(s)) for s, j in zip(top.values.tolist(), top.indices.tolist())]


def retrieve(retriever: CLIPRetriever, image: ImageSource, text: str, gallery: str | Path | Sequence[str | Path], *,
             k: int = 5, kind: str = "cirr", cache_dir: str | Path | None = None, progress: bool = True,
             skip_bad_images: bool = False) -> list[tuple[str, float]]:
    """The top ``k`` images of ``gallery`` (a folder, searched recursively, or a list of files) for one composed
    query: ``image`` modified by ``text``. ``kind`` "cirr" reads ``text`` as a caption; "domain" as a domain noun
    ("cartoon"). Returns [(path, cosine similarity)], best first.

    Gallery files that cannot be read are all listed in one error, or, with ``skip_bad_images``, left out with a
    warning that lists them."""
    if k < 1:
        raise ValueError(f"k must be >= 1 (images to return), got {k}.")
    image = read_image(image)  # [H, W, 3]: a bad query image fails before the gallery is encoded
    paths = list_images(gallery) if isinstance(gallery, (str, Path)) else [Path(p) for p in gallery]
    if not paths:
        raise ValueError(f"No images in {gallery}.")
    names = [str(p) for p in paths]
    bench = CIRBenchmark(name="folder", split=hashlib.sha256("\n".join(names).encode()).hexdigest()[:12],
                         protocol="coco", images=dict(zip(names, paths)), galleries={ALL: tuple(names)}, queries=[])
    missing = missing_files(bench, names)
    if missing:
        raise FileNotFoundError(f"{len(missing)} gallery images are missing: {missing[:10]}")
    return GallerySearch(retriever, bench, cache_dir=cache_dir, progress=progress,
                         skip_bad_images=skip_bad_images).search(image, text, kind=kind, k=k, exclude_reference=False)
