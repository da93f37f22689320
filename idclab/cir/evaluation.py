"""Evaluating a retriever on a CIR benchmark: cached image features, exact ranking, each benchmark's protocol.

:func:`image_features` computes the raw CLIP image features once per image (cached on disk under a hash of the image
tower, the preprocessing, the names and the files' sizes and modification times); :func:`rank` ranks every query's
gallery by exact chunked search; :func:`score` applies the benchmark's protocol (the table in :mod:`idclab.cir`);
:func:`evaluate` does both for one method, and :func:`compare` for a method beside the image-only, text-only and
image+text baselines.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from idclab.cir.retrievers import Baseline, CLIPRetriever
from idclab.data._common import listing
from idclab.data.cir_benchmark import ALL, CIRBenchmark, CIRQuery, check_benchmark, missing_files
from idclab.images import ImageError, read_image
from idclab.metrics.retrieval import (map_at_k, recall_at_k, recall_at_k_multi, recall_fraction_at_k,
                                      recall_subset_at_k, topk_search)
from idclab.runs import UnsafeCheckpointError, load_plain

# ----------------------------------------------------------------------------------------------------------------------
# Raw image features, computed once (missing or unreadable images are listed, never dropped)
# ----------------------------------------------------------------------------------------------------------------------


def image_features(retriever: CLIPRetriever, bench: CIRBenchmark, names: Sequence[str], *,
                   cache_dir: str | Path | None = None, batch_size: int = 64, progress: bool = True) -> Tensor:
    """Raw CLIP image features [N, D] of ``names`` (float32, on the retriever's device), computed once.

    Missing files are listed before any work; unreadable ones are all listed after one pass (none is skipped).
    ``cache_dir``: see :func:`encode_images`.
    """
    names = list(names)
    missing = missing_files(bench, names)
    if missing:
        raise FileNotFoundError(f"{len(missing)} images of {bench.name} {bench.split} are missing: {listing(missing)}. "
                                f"Run the dataset's data_scripts/<name>.py verify for the full list.")
    feats, unreadable = encode_images(retriever, bench, names, cache_dir=cache_dir, batch_size=batch_size,
                                      progress=progress)
    if unreadable:
        raise OSError(f"{len(unreadable)} images of {bench.name} {bench.split} cannot be read: "
                      f"{listing(list(unreadable.values()))}. Re-download them (data_scripts/<name>.py verify lists "
                      "them all).")
    return feats


def _read_cache(path: Path) -> dict:
    """A feature cache, read with ``weights_only=True``: a file that only loads by running code is refused."""
    try:
        cached = load_plain(path, what="feature cache")
    except UnsafeCheckpointError as err:
        raise UnsafeCheckpointError(f"{err} Delete it (it is recomputed) and check who can write to --cache-dir."
                                    ) from None
    except ValueError as err:
        raise ValueError(f"{err}; delete it (it is recomputed).") from None
    if not isinstance(cached, dict) or not {"names", "features"} <= set(cached):
        raise ValueError(f"{path} is not an idclab feature cache; delete it or choose another --cache-dir.")
    return cached


def encode_images(retriever: CLIPRetriever, bench: CIRBenchmark, names: Sequence[str], *,
                  cache_dir: str | Path | None = None, batch_size: int = 64, progress: bool = True
                  ) -> tuple[Tensor, dict[str, str]]:
    """Raw CLIP image features [N, D] of ``names`` (zero rows for images that cannot be read) and {name: why} of
    those; the caller decides whether to refuse them (:func:`image_features`) or leave them out (``GallerySearch``).

    With ``cache_dir`` both are stored as ``<bench>-<split>-<hash>.pt``, the hash covering the image tower's weights,
    the preprocessing, the names and each image file's size and modification time (arrays: their bytes), so a changed
    model, split or image file never reuses stale features. Images given as loaders are keyed on their names only.
    """
    names = list(names)
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{bench.name}-{bench.split}-{_cache_key(retriever, bench, names)}.pt"
        if path.is_file():
            cached = _read_cache(path)
            if cached["names"] == names:
                return cached["features"].to(retriever.device), dict(cached.get("unreadable", {}))
    rows, feats, unreadable = [], [], {}  # positions of the readable images, their features; {name: why} of the rest
    bar = tqdm(range(0, len(names), batch_size), desc=f"image features ({bench.name})", disable=not progress,
               unit="batch")
    for start in bar:
        batch = []
        for i, n in enumerate(names[start:start + batch_size], start):
            try:
                batch.append(read_image(bench.images[n]))
                rows.append(i)
            except (OSError, ValueError, SyntaxError) as e:  # broken files (ImageError names the file); listed
                named = isinstance(e, (ImageError, FileNotFoundError))
                unreadable[n] = str(e).rstrip(".") if named else f"{n} ({type(e).__name__}: {e})"
        if batch:
            feats.append(retriever.encode_image(batch))  # [b, D]
    dim = feats[0].shape[1] if feats else 0
    out = torch.zeros(len(names), dim, device=retriever.device)  # [N, D]; unreadable images keep zero rows
    if feats:
        out[rows] = torch.cat(feats)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(dict(names=names, features=out.cpu(), unreadable=unreadable), tmp)
        tmp.replace(path)
    return out, unreadable


def _cache_key(retriever: CLIPRetriever, bench: CIRBenchmark, names: list[str]) -> str:
    """A hash of the image tower, the preprocessing, the names and what each name reads (a file's size,
    modification time and permissions; an array's bytes)."""
    h = hashlib.sha256(retriever.image_key().encode())
    for n in names:
        source = bench.images[n]
        h.update(f"\n{n}\t{getattr(source, 'alpha', '')}\t".encode())
        if isinstance(source, (str, os.PathLike)):
            try:
                st = os.stat(source)
                h.update(f"{st.st_size}\t{st.st_mtime_ns}\t{st.st_mode}".encode())  # mode: a chmod-ed file
            except OSError:  # missing: listed when read
                h.update(b"missing")
        elif isinstance(source, np.ndarray):
            h.update(source.tobytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------------------
# Ranking and scoring
# ----------------------------------------------------------------------------------------------------------------------

# Cut-offs per protocol: (R@K, R_subset@K or mAP@K / fractional-recall K). The papers' own.
RECALL_KS = {"cirr": (1, 5, 10, 50), "fashioniq": (10, 50), "circo": (5, 10, 25, 50), "imagenet_r": (10, 50),
             "coco": (1, 5, 10), "shapes": (1, 5, 10)}
SUBSET_KS = (1, 2, 3)
EXCLUDES_REFERENCE = ("cirr", "shapes")  # CIRR's protocol removes the reference from the ranking


@dataclass
class Ranking:
    """Everything computed for one method on one benchmark: per gallery, the query rows and their top-k."""

    queries: list[CIRQuery]  # in the order of the rows below (grouped by gallery)
    gallery_names: dict[str, list[str]]
    indices: dict[str, Tensor]  # gallery -> [Q_g, k] ranked gallery positions (reference removed where excluded)
    query_feats: dict[str, Tensor]  # gallery -> [Q_g, D] normalised
    gallery_feats: dict[str, Tensor]  # gallery -> [G, D] normalised
    rows: dict[str, list[int]]  # gallery -> positions of its queries in ``queries``

    def top(self, i: int, k: int = 5) -> list[str]:
        """The first ``k`` gallery names retrieved for query ``i`` (its position in ``queries``)."""
        g = self.queries[i].gallery
        r = self.rows[g].index(i)
        return [self.gallery_names[g][j] for j in self.indices[g][r, :k].tolist()]


def rank(retriever: CLIPRetriever, bench: CIRBenchmark, *, k: int | None = None, feats: Tensor | None = None,
         names: Sequence[str] | None = None, cache_dir: str | Path | None = None, batch_size: int = 64,
         progress: bool = True) -> Ranking:
    """Encode and rank: the top ``k`` gallery items of every query (default: the protocol's largest cut-off).

    ``feats`` / ``names``: raw image features already computed by :func:`image_features` (shared between methods by
    :func:`compare`).
    """
    check_benchmark(bench)
    if k is not None and k < 1:
        raise ValueError(f"k must be >= 1 (gallery items per query), got {k}.")
    if feats is None:
        names = needed_images(bench)
        feats = image_features(retriever, bench, names, cache_dir=cache_dir, batch_size=batch_size, progress=progress)
    row_of = {n: i for i, n in enumerate(names)}
    k = max(RECALL_KS[bench.protocol]) if k is None else k
    exclude = bench.protocol in EXCLUDES_REFERENCE
    by_gallery: dict[str, list[int]] = {}
    for i, q in enumerate(bench.queries):
        by_gallery.setdefault(q.gallery, []).append(i)
    out = Ranking(list(bench.queries), {}, {}, {}, {}, by_gallery)
    for g, rows in by_gallery.items():
        gnames = list(bench.galleries[g])
        pos = {n: i for i, n in enumerate(gnames)}
        gal = retriever.encode_gallery(feats[[row_of[n] for n in gnames]])  # [G, D]
        qs = [bench.queries[i] for i in rows]
        qf = torch.cat([retriever.encode_query(feats[[row_of[q.reference] for q in qs[s:s + batch_size]]],
                                               qs[s:s + batch_size])
                        for s in tqdm(range(0, len(qs), batch_size), desc=f"queries ({retriever.method}, {g})",
                                      disable=not progress, unit="batch")])  # [Q_g, D]
        ex = torch.tensor([pos[q.reference] for q in qs], device=gal.device) if exclude else None
        _, idx = topk_search(qf, gal, min(k, len(gnames) - int(exclude)), exclude=ex)
        out.gallery_names[g], out.indices[g], out.query_feats[g], out.gallery_feats[g] = gnames, idx, qf, gal
    return out


def needed_images(bench: CIRBenchmark) -> list[str]:
    """Every gallery image, then every reference outside the galleries (COCO's crops), each once, in a fixed order."""
    names = list(dict.fromkeys(n for g in sorted(bench.galleries) for n in bench.galleries[g]))
    seen = set(names)
    names += [r for r in dict.fromkeys(q.reference for q in bench.queries) if r not in seen]
    return names


def score(bench: CIRBenchmark, ranking: Ranking) -> dict[str, dict[str, float]]:
    """Metrics per reporting group (and "all" / the category average), in percent, by the benchmark's protocol."""
    # An ImageNet-R query without targets is a photo whose class has no image in the domain (it scores 0), elsewhere
    # empty targets mean a test-server split.
    if bench.protocol != "imagenet_r" and any(not q.targets for q in ranking.queries):
        raise ValueError(f"{bench.name} {bench.split} hides its targets (a test-server split); write a submission "
                         f"instead (cirr_submission / circo_submission).")
    p = bench.protocol
    ks = RECALL_KS[p]
    groups: dict[str, list[tuple[str, int]]] = {}  # group -> (gallery, row within gallery)
    for g, rows in ranking.rows.items():
        for r, i in enumerate(rows):
            groups.setdefault(ranking.queries[i].group, []).append((g, r))
    if p not in ("fashioniq", "imagenet_r") or len(groups) == 1:
        groups.setdefault(ALL, [(g, r) for g, rows in ranking.rows.items() for r in range(len(rows))])
    out = {}
    for name, members in groups.items():
        out[name] = _score_rows(bench, ranking, members, ks)
    if p in ("fashioniq", "imagenet_r") and len(groups) > 1:  # the papers report the mean over categories / domains
        keys = next(iter(out.values())).keys()
        out["average"] = {m: float(np.mean([out[gr][m] for gr in groups])) for m in keys}
        if p == "fashioniq":
            out["average"]["avg"] = (out["average"]["R@10"] + out["average"]["R@50"]) / 2
    for name in out:
        out[name] = {m: round(v, 2) for m, v in out[name].items()}
    return out


def _score_rows(bench: CIRBenchmark, ranking: Ranking, members: list[tuple[str, int]], ks) -> dict[str, float]:
    """Metrics of a set of queries (possibly spread over galleries): each gallery scored apart, weighted by size."""
    parts = []
    for g in dict.fromkeys(g for g, _ in members):
        rows = [r for gg, r in members if gg == g]
        parts.append((len(rows), _score_gallery(bench, ranking, g, rows, ks)))
    n = sum(w for w, _ in parts)
    return {m: sum(w * s[m] for w, s in parts) / n for m in parts[0][1]}


def _score_gallery(bench: CIRBenchmark, ranking: Ranking, g: str, rows: list[int], ks) -> dict[str, float]:
    p = bench.protocol
    names = ranking.gallery_names[g]
    pos = {n: i for i, n in enumerate(names)}
    qs = [ranking.queries[ranking.rows[g][r]] for r in rows]
    idx = ranking.indices[g][rows]  # [q, k]
    dev = idx.device
    cut = {k: min(k, idx.shape[1]) for k in ks}  # K beyond a small gallery = the whole ranking, reported as @K
    ks = tuple(sorted(set(cut.values())))

    def named(metrics: dict, prefix: str) -> dict:
        return {f"{prefix}@{k}": metrics[f"{prefix}@{c}"] for k, c in cut.items()}

    if p in ("cirr", "shapes", "fashioniq", "coco"):
        targets = torch.tensor([pos[q.targets[0]] for q in qs], device=dev)
        out = named(recall_at_k(idx, targets, ks), "R")
        if p in EXCLUDES_REFERENCE and all(q.subset for q in qs):
            members = torch.tensor([[pos[m] for m in q.subset if m != q.reference] for q in qs], device=dev)
            out.update(recall_subset_at_k(ranking.query_feats[g][rows], ranking.gallery_feats[g], members, targets,
                                          SUBSET_KS))
        return out
    positives = [{pos[t] for t in q.targets} for q in qs]
    if p == "circo":
        out = named(map_at_k(idx, positives, ks), "mAP")
        out.update(named(recall_at_k(idx, torch.tensor([pos[q.targets[0]] for q in qs], device=dev), ks), "R"))
        return out
    # imagenet_r: Pic2Word's fractional recall (labels = one per distinct target set) over every query, a query
    # without target (its class has no image in the domain) scoring 0 as in Pic2Word; the hit rate beside it (such a
    # query never hits); and, labelled "_with_target", the fractional recall over the queries that have a target.
    label_of: dict[frozenset, int] = {}
    gallery_labels = torch.full((len(names),), -1, dtype=torch.long, device=dev)  # -1: no query looks for it
    query_labels = []
    for q in qs:
        key = frozenset(q.targets)
        if key not in label_of:
            label_of[key] = len(label_of)  # the empty set gets a label of its own that no gallery item carries
            gallery_labels[[pos[t] for t in key]] = label_of[key]
        query_labels.append(label_of[key])
    query_labels = torch.tensor(query_labels, device=dev)  # [q]
    out = named(recall_fraction_at_k(idx, gallery_labels, query_labels, ks, without_relevant="zero"), "R")
    has = [r for r, q in enumerate(qs) if q.targets]  # rows with a target
    if has:
        hit = named(recall_at_k_multi(idx[has], [positives[r] for r in has], ks), "R")
        with_target = named(recall_fraction_at_k(idx[has], gallery_labels, query_labels[has], ks), "R")
    else:
        hit, with_target = dict.fromkeys(out, 0.0), dict.fromkeys(out, float("nan"))
    out.update({f"hit_{m}": v * len(has) / len(qs) for m, v in hit.items()})  # target-less queries: misses
    out.update({f"{m}_with_target": v for m, v in with_target.items()})
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Evaluating: one method, or a method beside the three baselines
# ----------------------------------------------------------------------------------------------------------------------


def evaluate(retriever: CLIPRetriever, bench: CIRBenchmark, *, cache_dir: str | Path | None = None,
             batch_size: int = 64, progress: bool = True, feats: Tensor | None = None,
             names: Sequence[str] | None = None) -> dict:
    """Rank and score one method; returns a JSON-able record (the method's prompts included)."""
    ranking = rank(retriever, bench, feats=feats, names=names, cache_dir=cache_dir, batch_size=batch_size,
                   progress=progress)
    return dict(benchmark=bench.name, split=bench.split, protocol=bench.protocol, **retriever.describe(),
                queries=len(bench.queries), gallery={g: len(n) for g, n in bench.galleries.items()},
                metrics=score(bench, ranking))


def compare(method: CLIPRetriever | None, bench: CIRBenchmark, *, baselines: Sequence[str] = Baseline.METHODS,
            cache_dir: str | Path | None = None, batch_size: int = 64, progress: bool = True,
            clip: torch.nn.Module | None = None, prompts: Mapping[str, str] | None = None) -> dict[str, dict]:
    """Evaluate ``method`` and the image-only, text-only and image+text baselines on the same CLIP image features.

    The baselines use ``method``'s CLIP (or ``clip``) and preprocessing, and ``prompts`` (default TEXT_PROMPTS);
    image features are computed once. Returns {method name: :func:`evaluate` record}, baselines first.
    """
    base_clip = clip if clip is not None else method.clip
    kwargs = dict(preprocess=method.preprocess if method is not None else "center_crop",
                  device=method.device if method is not None else None, prompts=prompts)
    retrievers = [Baseline(base_clip, b, **kwargs) for b in baselines] + ([method] if method is not None else [])
    check_benchmark(bench)
    names = needed_images(bench)
    feats = None
    out = {}
    for r in retrievers:
        if feats is None or r.image_key() != retrievers[0].image_key():
            feats = image_features(r, bench, names, cache_dir=cache_dir, batch_size=batch_size, progress=progress)
        out[r.method] = evaluate(r, bench, feats=feats, names=names, batch_size=batch_size, progress=progress)
    return out


def table(results: Mapping[str, dict], *, group: str | None = None) -> str:
    """A plain-text table of :func:`compare`'s records: one row per method, one column per (group, metric)."""
    first = next(iter(results.values()))["metrics"]
    groups = [group] if group is not None else list(first)
    cols = [(g, m) for g in groups for m in first[g]]
    head = ["method"] + [f"{g}:{m}" if len(groups) > 1 else m for g, m in cols]
    rows = [[name] + [f"{rec['metrics'][g][m]:.1f}" for g, m in cols] for name, rec in results.items()]
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in [head] + rows)
