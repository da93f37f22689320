"""Retrieval metrics for composed image retrieval, and an exact chunked top-k search.

Everything here works on plain tensors: features (callers L2-normalise them, so dot product = cosine similarity),
gallery indices and labels. Recalls and mAP are returned in **percent**, as the papers report them.

* :func:`topk_search` -- exact top-k by dot product, chunked over queries and gallery so a 120k-image gallery
  (CIRCO) never materialises the full ``Q x G`` score matrix; optional per-query exclusion (CIRR's reference image).
* :func:`recall_at_k` -- % of queries whose single target is in the top K (FashionIQ, CIRR with ``exclude``).
* :func:`recall_at_k_multi` -- hit if *any* of several correct items is in the top K.
* :func:`recall_subset_at_k` -- CIRR's R_subset@K: rank only within the query's image set (reference removed).
* :func:`map_at_k` -- CIRCO's mAP@K, AP@K = (1 / min(|GT|, K)) * sum_{i<=K} P@i * rel(i).
* :func:`recall_fraction_at_k` -- Pic2Word's ImageNet-R "recall": mean fraction of the relevant gallery items found
  in the top K. **Not a hit rate**; Pic2Word's domain-conversion table uses this definition.
* :func:`retrieval_metrics` -- search + R@K in one call.

Ties are broken towards the lower gallery index, everywhere, so results are deterministic on any device.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

__all__ = [
    "topk_search",
    "recall_at_k",
    "recall_at_k_multi",
    "recall_subset_at_k",
    "map_at_k",
    "recall_fraction_at_k",
    "retrieval_metrics",
]


# ----------------------------------------------------------------------------------------------------------------
# Search
# ----------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def topk_search(
    queries: Tensor,
    gallery: Tensor,
    k: int,
    *,
    gallery_chunk: int = 16384,
    query_chunk: int = 1024,
    exclude: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Exact top-k gallery items for each query by dot product, without the full score matrix.

    Scores are computed in float32 (inputs of any float dtype are upcast chunk by chunk), one
    ``[query_chunk, gallery_chunk]`` block at a time into one reused buffer; a running top-k per query is merged
    with each block's top-k. Extra memory is about ``query_chunk * gallery_chunk * 4`` bytes (64 MB with the
    defaults), plus a float32 copy of one gallery block when the gallery is fp16/bf16, plus ``O(Q * k)``; it does
    not grow with the gallery size (rows with an exact tie at a block's cut take a
    slower path that briefly needs a few more bytes per score of those rows). On CUDA the matmul follows torch's
    TF32 setting (``torch.backends.cuda.matmul.allow_tf32``).

    Ties: among equal scores the lower gallery index ranks first (deterministic, unlike ``torch.topk``).

    Args:
        queries: [Q, D] query features (L2-normalised for cosine similarity).
        gallery: [G, D] gallery features, same device as ``queries``.
        k: how many items to return per query, 1 <= k <= G (k <= G - 1 when ``exclude`` removes an item).
        gallery_chunk, query_chunk: block sizes; any positive values give the same result.
        exclude: [Q] integer tensor; ``exclude[q]`` is a gallery index never returned for query q (CIRR removes
            the query's reference image), or -1 for none.

    Returns:
        scores [Q, k] float32, sorted descending; indices [Q, k] int64 gallery indices.
    """
    _check_features(queries, "queries")
    _check_features(gallery, "gallery")
    (Q, D), (G, Dg) = queries.shape, gallery.shape
    if D != Dg:
        raise ValueError(f"queries have dimension {D} but gallery items have {Dg}; encode both with the same model")
    if queries.device != gallery.device:
        raise ValueError(
            f"queries are on {queries.device} but the gallery is on {gallery.device}; move both to one device"
        )
    if not _is_int(k) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if k > G:
        raise ValueError(f"k={k} is larger than the gallery ({G} items); use k <= {G}")
    for name, c in (("gallery_chunk", gallery_chunk), ("query_chunk", query_chunk)):
        if not _is_int(c) or c < 1:
            raise ValueError(f"{name} must be a positive int, got {c!r}")
    if exclude is not None:
        exclude = _check_index_vector(exclude, Q, "exclude", queries.device)
        if Q and (exclude.min() < -1 or exclude.max() >= G):
            raise ValueError(f"exclude values must be gallery indices in [0, {G}) or -1 for none")
        if k > G - 1 and bool((exclude >= 0).any()):
            raise ValueError(f"k={k} but excluding one item leaves {G - 1} candidates; use k <= {G - 1}")

    out_scores = torch.empty(Q, k, dtype=torch.float32, device=queries.device)
    out_index = torch.empty(Q, k, dtype=torch.long, device=queries.device)
    # One score buffer reused for every block: re-allocating it per block costs page faults (CPU matmul 2x slower).
    buf = torch.empty(min(Q, query_chunk) * min(G, gallery_chunk), dtype=torch.float32, device=queries.device)
    for q0 in range(0, Q, query_chunk):
        q = queries[q0 : q0 + query_chunk].float()  # [q, D]
        ex = None if exclude is None else exclude[q0 : q0 + query_chunk]  # [q]
        best_s = best_i = None  # running top-k: [q, <=k], sorted by (score desc, index asc)
        for g0 in range(0, G, gallery_chunk):
            block = gallery[g0 : g0 + gallery_chunk].float()  # [g, D]
            sim = buf[: q.shape[0] * block.shape[0]].view(q.shape[0], block.shape[0])  # [q, g]
            torch.mm(q, block.T, out=sim)
            if ex is not None:
                _mask_excluded(sim, ex - g0)
            s, i = _topk_low_index_ties(sim, min(k, sim.shape[1]))  # [q, kk] each
            i += g0
            if best_s is None:
                best_s, best_i = s, i
            else:
                # Every index in best_* is below every index in (s, i) and both are sorted by (score desc, index
                # asc), so a stable descending sort of [best, new] is sorted by (score desc, index asc) too.
                s, order = torch.cat([best_s, s], 1).sort(dim=1, descending=True, stable=True)
                i = torch.cat([best_i, i], 1).gather(1, order)
                best_s, best_i = s[:, :k], i[:, :k]
        out_scores[q0 : q0 + query_chunk] = best_s
        out_index[q0 : q0 + query_chunk] = best_i
    return out_scores, out_index


def _mask_excluded(sim: Tensor, local: Tensor) -> None:
    """Set sim[r, local[r]] = -inf in place where 0 <= local[r] < sim.shape[1] (no host sync)."""
    inside = (local >= 0) & (local < sim.shape[1])  # [q]
    col = local.clamp(0, sim.shape[1] - 1)[:, None]  # [q, 1]
    keep = sim.gather(1, col)
    sim.scatter_(1, col, torch.where(inside[:, None], torch.full_like(keep, float("-inf")), keep))


def _topk_low_index_ties(sim: Tensor, kk: int) -> tuple[Tensor, Tensor]:
    """Top-kk of each row of sim [q, g], ties at the cut taken by lower index; sorted by (score desc, index asc).

    Fast path: ``topk(kk + 1)``; where the kk-th and (kk+1)-th scores differ the top-kk *set* is unique, and only
    its order needs fixing. Rows with a tie at the cut (rare with real features, e.g. duplicate images) take the
    exact path.
    """
    g = sim.shape[1]
    vals, idx = sim.topk(min(kk + 1, g), dim=1)  # [q, kk(+1)] sorted desc; tie order unspecified
    tie_at_cut = vals[:, kk - 1] == vals[:, kk] if kk < g else None  # [q]
    vals, idx = vals[:, :kk], idx[:, :kk]
    idx, order = idx.sort(dim=1)  # canonical order: by index ...
    vals, order2 = vals.gather(1, order).sort(dim=1, descending=True, stable=True)  # ... then stably by score
    idx = idx.gather(1, order2)
    if tie_at_cut is not None and bool(tie_at_cut.any()):  # (a host sync on CUDA, once per block)
        rows = tie_at_cut.nonzero()[:, 0]
        vals[rows], idx[rows] = _topk_low_index_ties_exact(sim[rows], kk)
    return vals, idx


def _topk_low_index_ties_exact(sim: Tensor, kk: int) -> tuple[Tensor, Tensor]:
    """Like :func:`_topk_low_index_ties`, for any ties: take everything above the kk-th score, then the lowest-index
    items equal to it."""
    q = sim.shape[0]
    kth = sim.topk(kk, dim=1).values[:, -1:]  # [q, 1] the kk-th largest score (a set value, whatever the ties)
    above = sim > kth  # [q, g]; fewer than kk per row
    at = sim == kth  # [q, g]
    need = kk - above.sum(1, keepdim=True)  # [q, 1] >= 1: how many tied-at-the-cut items to take
    take = above | (at & (at.cumsum(1, dtype=torch.int32) <= need))  # exactly kk per row, lowest tied indices
    idx = take.nonzero()[:, 1].view(q, kk)  # [q, kk], ascending index within each row
    s = sim.gather(1, idx)
    s, order = s.sort(dim=1, descending=True, stable=True)  # stable: equal scores keep index order
    return s, idx.gather(1, order)


# ----------------------------------------------------------------------------------------------------------------
# Metrics on rankings
# ----------------------------------------------------------------------------------------------------------------


def recall_at_k(indices: Tensor, targets: Tensor, ks: Iterable[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@K: % of queries whose target is among their first K retrieved items.

    Args:
        indices: [Q, K] ranked gallery indices (e.g. from :func:`topk_search`).
        targets: [Q] the gallery index of each query's target.
        ks: cut-offs, each <= K.

    Returns:
        ``{"R@1": %, "R@5": %, ...}`` in the order of ``ks``.
    """
    ks = _check_ranking(indices, ks, "R@K")
    targets = _check_index_vector(targets, indices.shape[0], "targets", indices.device)
    hit_rank = _first_hit(indices == targets[:, None])  # [Q] rank of the target, K if absent
    return {f"R@{k}": _percent(hit_rank < k) for k in ks}


def recall_at_k_multi(
    indices: Tensor, positives: Sequence[Iterable[int]], ks: Iterable[int] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@K with several correct items per query: a hit when *any* positive is in the top K.

    Args:
        indices: [Q, K] ranked gallery indices.
        positives: Q collections (e.g. sets) of correct gallery indices, none empty.
        ks: cut-offs, each <= K.

    Returns:
        ``{"R@1": %, ...}``.
    """
    ks = _check_ranking(indices, ks, "R@K")
    rel = _relevance(indices, positives)  # [Q, K] bool
    hit_rank = _first_hit(rel)
    return {f"R@{k}": _percent(hit_rank < k) for k in ks}


@torch.no_grad()
def recall_subset_at_k(
    query_feats: Tensor,
    gallery_feats: Tensor,
    members: Tensor,
    targets: Tensor,
    ks: Iterable[int] = (1, 2, 3),
    *,
    query_chunk: int = 1024,
) -> dict[str, float]:
    """CIRR's R_subset@K: rank only the query's image-set members (reference removed), by the same dot product.

    CIRR groups images in sets of 6; a query's reference and target are both in its set. R_subset@K scores the
    target's rank among the other 5 members, which measures fine-grained discrimination among similar images.
    Ties rank the lower gallery index first, as :func:`topk_search` does.

    Args:
        query_feats: [Q, D] query features.
        gallery_feats: [G, D] gallery features.
        members: [Q, M] gallery indices of each query's set members *without* the reference (M = 5 for CIRR),
            distinct within a row.
        targets: [Q] gallery index of each target; must be one of the row's members.
        ks: cut-offs, each <= M.
        query_chunk: queries scored at once (memory ~ query_chunk * M * D floats).

    Returns:
        ``{"R_subset@1": %, "R_subset@2": %, "R_subset@3": %}``.
    """
    _check_features(query_feats, "query_feats")
    _check_features(gallery_feats, "gallery_feats")
    (Q, D), (G, Dg) = query_feats.shape, gallery_feats.shape
    if D != Dg:
        raise ValueError(f"query_feats have dimension {D} but gallery_feats have {Dg}")
    if not (isinstance(members, Tensor) and members.dim() == 2 and members.shape[0] == Q):
        raise ValueError(f"members must be a [Q={Q}, M] integer tensor, got {_describe(members)}")
    if members.dtype.is_floating_point or members.dtype == torch.bool:
        raise ValueError(f"members must hold integer gallery indices, got dtype {members.dtype}")
    M = members.shape[1]
    ks = _check_ks(ks, M, "R_subset@K", what=f"members has {M} columns")
    device = gallery_feats.device
    members = members.to(device=device, dtype=torch.long)
    targets = _check_index_vector(targets, Q, "targets", device)
    if Q and (members.min() < 0 or members.max() >= G):
        raise ValueError(f"members must be gallery indices in [0, {G})")
    srt = members.sort(dim=1).values
    dup = (srt[:, 1:] == srt[:, :-1]).any(1)
    if bool(dup.any()):
        q = int(dup.nonzero()[0])
        raise ValueError(f"members of query {q} repeat a gallery index ({members[q].tolist()}); list each once")
    is_target = members == targets[:, None]  # [Q, M]
    found = is_target.any(1)
    if not bool(found.all()):
        bad = (~found).nonzero()[:, 0].tolist()
        raise ValueError(
            f"{len(bad)} target(s) are not among their query's members, e.g. query {bad[0]} (target "
            f"{int(targets[bad[0]])}, members {members[bad[0]].tolist()}); pass the image-set members minus the "
            f"reference, which always include the target"
        )

    ranks = []
    for q0 in range(0, Q, query_chunk):
        qf = query_feats[q0 : q0 + query_chunk].to(device).float()  # [q, D]
        mem = members[q0 : q0 + query_chunk]  # [q, M]
        s = (gallery_feats[mem].float() @ qf[:, :, None]).squeeze(-1)  # [q, M, D] @ [q, D, 1] -> [q, M]
        t_score = s.gather(1, is_target[q0 : q0 + query_chunk].float().argmax(1, keepdim=True))  # [q, 1]
        t_index = targets[q0 : q0 + query_chunk, None]  # [q, 1]
        ranks.append((s > t_score).sum(1) + ((s == t_score) & (mem < t_index)).sum(1))  # [q]
    rank = torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long, device=device)
    return {f"R_subset@{k}": _percent(rank < k) for k in ks}


def map_at_k(
    indices: Tensor, positives: Sequence[Iterable[int]], ks: Iterable[int] = (5, 10, 25, 50)
) -> dict[str, float]:
    """CIRCO's mAP@K (miccunifi/CIRCO ``src/evaluation.py``), in percent.

    For a query with ground-truth set GT and ranking r_1, r_2, ...::

        AP@K = 1 / min(|GT|, K) * sum_{i=1..K} P@i * rel(i)     P@i = (#relevant among r_1..r_i) / i

    and mAP@K is the mean over queries. The ``min(|GT|, K)`` normaliser makes a perfect ranking score 100 even when
    GT has more than K items.

    Args:
        indices: [Q, K] ranked gallery indices, distinct within a row (CIRCO rejects duplicates).
        positives: Q collections of ground-truth gallery indices, none empty.
        ks: cut-offs, each <= K.

    Returns:
        ``{"mAP@5": %, "mAP@10": %, ...}``.
    """
    ks = _check_ranking(indices, ks, "mAP@K")
    srt = indices.sort(dim=1).values
    dup = (srt[:, 1:] == srt[:, :-1]).any(1)
    if bool(dup.any()):
        q = int(dup.nonzero()[0])
        raise ValueError(f"the ranking of query {q} lists a gallery index twice; rankings must be distinct items")
    rel = _relevance(indices, positives).float()  # [Q, K]
    n_gt = torch.tensor([len(set(p)) for p in positives], dtype=torch.float32, device=rel.device)  # [Q]
    ranks = torch.arange(1, rel.shape[1] + 1, device=rel.device, dtype=torch.float32)  # [K] = 1..K
    prec_at_i = rel.cumsum(1) / ranks  # [Q, K] P@i
    terms = prec_at_i * rel  # [Q, K] P@i * rel(i)
    out = {}
    for k in ks:
        ap = terms[:, :k].sum(1) / n_gt.clamp(max=k)  # [Q]
        out[f"mAP@{k}"] = 100.0 * float(ap.mean())
    return out


def recall_fraction_at_k(
    indices: Tensor, gallery_labels: Tensor, query_labels: Tensor, ks: Iterable[int] = (10, 50), *,
    without_relevant: str = "raise",
) -> dict[str, float]:
    """Pic2Word's ImageNet-R "R@K": mean over queries of (#relevant in the top K) / (#relevant in the gallery).

    A gallery item is relevant to a query when their labels are equal (Pic2Word labels the domain-converted
    gallery ``class + 1000 * domain`` and builds query labels the same way). This is a *fraction*, not a hit rate:
    with ~19 relevant cartoons per class, R@10 is capped near 54 %. MagicLens' hit-based recall on the same split
    is a different number -- use :func:`recall_at_k_multi` for that.

    Args:
        indices: [Q, K] ranked gallery indices.
        gallery_labels: [G] integer label of each gallery item.
        query_labels: [Q] integer label each query is looking for.
        ks: cut-offs, each <= K.
        without_relevant: what a query whose label no gallery item carries does to the mean (its fraction is 0/0):
            ``"zero"`` scores it 0 and keeps it in the mean, as Pic2Word's ImageNet-R evaluation does for a photo
            whose class has no image in the target domain; ``"raise"`` (default) refuses such queries.

    Returns:
        ``{"R@10": %, "R@50": %}`` (keys ``R@K``, values in percent).
    """
    if without_relevant not in ("raise", "zero"):
        raise ValueError(f"without_relevant must be 'raise' or 'zero', got {without_relevant!r}")
    ks = _check_ranking(indices, ks, "R@K")
    Q = indices.shape[0]
    if not (isinstance(gallery_labels, Tensor) and gallery_labels.dim() == 1):
        raise ValueError(f"gallery_labels must be a [G] tensor, got {_describe(gallery_labels)}")
    G = gallery_labels.shape[0]
    device = indices.device
    gallery_labels = gallery_labels.to(device)
    query_labels = _check_index_vector(query_labels, Q, "query_labels", device)
    if Q and (indices.min() < 0 or indices.max() >= G):
        raise ValueError(f"indices must be gallery indices in [0, {G}) (gallery_labels has {G} entries)")
    labels, counts = torch.unique(gallery_labels.long(), return_counts=True)  # sorted
    pos = torch.searchsorted(labels, query_labels).clamp(max=max(len(labels) - 1, 0))
    present = (labels[pos] == query_labels) if len(labels) else torch.zeros(Q, dtype=torch.bool, device=device)
    if without_relevant == "raise" and not bool(present.all()):
        bad = (~present).nonzero()[:, 0].tolist()
        raise ValueError(
            f"{len(bad)} query(ies) have no relevant gallery item, e.g. query {bad[0]} (label "
            f"{int(query_labels[bad[0]])}); the fraction is undefined: fix the labels, drop those queries, or pass "
            f"without_relevant='zero' to score them 0 (Pic2Word's protocol)"
        )
    n_rel = torch.where(present, counts[pos], 1).float()  # [Q]; a query without relevant items has 0 hits below
    hits = (gallery_labels.long()[indices] == query_labels[:, None]).float()  # [Q, K]
    return {f"R@{k}": 100.0 * float((hits[:, :k].sum(1) / n_rel).mean()) for k in ks}


def retrieval_metrics(
    queries: Tensor,
    gallery: Tensor,
    targets: Tensor,
    *,
    ks: Iterable[int] = (1, 5, 10, 50),
    exclude: Tensor | None = None,
    **search_kwargs,
) -> dict[str, float]:
    """Search and score in one call: ``recall_at_k(topk_search(queries, gallery, max(ks))[1], targets, ks)``.

    For CIRR pass ``exclude`` = the reference's gallery index per query; for FashionIQ leave it None.
    """
    ks = tuple(ks)
    _, indices = topk_search(queries, gallery, max(ks), exclude=exclude, **search_kwargs)
    return recall_at_k(indices, targets, ks)


# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _describe(x) -> str:
    if isinstance(x, Tensor):
        return f"a tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return f"a {type(x).__name__}"


def _check_features(x, name: str) -> None:
    if not (isinstance(x, Tensor) and x.dim() == 2):
        raise ValueError(f"{name} must be a 2-D [N, D] tensor, got {_describe(x)}")
    if not x.dtype.is_floating_point:
        raise ValueError(f"{name} must be floating point features, got dtype {x.dtype}")
    if x.numel() and not _all_finite(x):
        raise ValueError(f"{name} contain NaN or inf; check the encoder (e.g. fp16 overflow) before searching")


def _all_finite(x: Tensor, rows: int = 8192) -> bool:
    # By row blocks: isfinite on a whole 120k x 512 gallery would allocate temporaries larger than the gallery.
    ok = torch.ones((), dtype=torch.bool, device=x.device)
    for r0 in range(0, x.shape[0], rows):
        ok &= torch.isfinite(x[r0 : r0 + rows]).all()
    return bool(ok)


def _check_index_vector(x, n: int, name: str, device) -> Tensor:
    if not (isinstance(x, Tensor) and x.dim() == 1 and x.shape[0] == n):
        raise ValueError(f"{name} must be a 1-D tensor with one entry per query ({n}), got {_describe(x)}")
    if x.dtype.is_floating_point or x.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got dtype {x.dtype}")
    return x.to(device=device, dtype=torch.long)


def _check_ks(ks, K: int, metric: str, *, what: str) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks or not all(_is_int(k) and k >= 1 for k in ks):
        raise ValueError(f"ks must be positive ints, got {ks!r}")
    if max(ks) > K:
        raise ValueError(f"{metric} with K={max(ks)} needs at least {max(ks)} ranked items per query, but {what}")
    return ks


def _check_ranking(indices, ks, metric: str) -> tuple[int, ...]:
    if not (isinstance(indices, Tensor) and indices.dim() == 2):
        raise ValueError(f"indices must be a 2-D [Q, K] tensor of gallery indices, got {_describe(indices)}")
    if indices.dtype.is_floating_point or indices.dtype == torch.bool:
        raise ValueError(f"indices must be an integer tensor, got dtype {indices.dtype}")
    if indices.shape[0] == 0:
        raise ValueError("indices has no queries (shape [0, K]); there is nothing to average")
    K = indices.shape[1]
    ks = tuple(ks)
    return _check_ks(ks, K, metric, what=f"indices has only {K} columns (search with k >= {max(ks, default=0)})")


def _relevance(indices: Tensor, positives: Sequence[Iterable[int]]) -> Tensor:
    """rel[q, i] = indices[q, i] is one of positives[q] -> [Q, K] bool."""
    Q = indices.shape[0]
    if isinstance(positives, (str, bytes, Tensor)) or not isinstance(positives, Sequence) or len(positives) != Q:
        n = len(positives) if hasattr(positives, "__len__") else "?"
        raise ValueError(f"positives must be a list of {Q} collections of gallery indices (one per query), got {n}")
    pos_lists = [sorted({int(p) for p in ps}) for ps in positives]
    empty = [q for q, ps in enumerate(pos_lists) if not ps]
    if empty:
        raise ValueError(
            f"{len(empty)} query(ies) have no positives, e.g. query {empty[0]}; every query needs at least one "
            f"correct gallery index (drop queries without ground truth)"
        )
    P = max(len(ps) for ps in pos_lists)
    pad = torch.full((Q, P), -1, dtype=torch.long)  # -1 never matches a gallery index
    for q, ps in enumerate(pos_lists):
        pad[q, : len(ps)] = torch.tensor(ps, dtype=torch.long)
    pad = pad.to(indices.device)
    return (indices.long()[:, :, None] == pad[:, None, :]).any(-1)  # [Q, K, P] -> [Q, K]


def _first_hit(rel: Tensor) -> Tensor:
    """[Q, K] bool -> [Q] position of the first True, K where there is none."""
    K = rel.shape[1]
    pos = torch.arange(K, device=rel.device).expand_as(rel)
    return torch.where(rel, pos, torch.full_like(pos, K)).min(1).values


def _percent(hit: Tensor) -> float:
    return 100.0 * float(hit.double().mean())  # float64: 30.0, not 30.000001192
