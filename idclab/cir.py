"""The composed-image-retrieval (CIR) harness shared by Pic2Word and the Combiner.

A benchmark is data: a table of images by name, one or more galleries (lists of names) and queries (a reference image,
the fields of the modification text, the correct gallery names). A method is a *retriever* with two calls,
``encode_gallery`` and ``encode_query``, on top of raw CLIP image features that the harness computes once per image
and caches on disk. The harness checks the benchmark (missing or unreadable images are listed, never dropped), ranks
the gallery by exact chunked search and scores each benchmark by its own protocol:

================  ==================================================  ========================================
protocol          metrics                                             reference image
================  ==================================================  ========================================
``cirr``          R@1/5/10/50 and R_subset@1/2/3 (CIRR's image set)   removed from the ranking
``fashioniq``     R@10/50 per category (each its own gallery), mean   kept (FashionIQ's protocol)
``circo``         mAP@5/10/25/50 (all ground truths), R@K of target   kept
``imagenet_r``    fractional R@10/50 per domain (Pic2Word) + hit R@K  kept (query photos are distractors)
``coco``          R@1/5/10                                            not in the gallery (a crop)
``shapes``        R@1/5/10 per task, R_subset@1/2/3                   removed (as CIRR)
================  ==================================================  ========================================

Facts and protocols: ``pic2word.md`` §3 and ``combiner.md`` §6 of idclab's reference notes. Every evaluation prints
the image-only, text-only and image+text-sum baselines beside the method (:func:`compare`).
"""

from __future__ import annotations

import hashlib
import json
import string
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from idclab.metrics.retrieval import (map_at_k, recall_at_k, recall_at_k_multi, recall_fraction_at_k,
                                      recall_subset_at_k, topk_search)

ImageSource = Union[str, Path, np.ndarray, Callable[[], np.ndarray]]  # a file, uint8 [H, W, 3], or a loader

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
    ``targets`` empty means hidden (a test-server split): the query can be ranked and submitted, not scored.
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
    """A CIR evaluation split. Loaders in ``idclab.data`` build these; :func:`evaluate` runs them."""

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
# Prompts: how each method turns a query's fields into text
# ----------------------------------------------------------------------------------------------------------------------

# Text-only and image+text baselines (pic2word.md §2). Two deliberate differences from Pic2Word's code: FashionIQ's
# text-only query drops the literal "*" the reference leaves in (its bug 12), and the domain prompt has no trailing
# space (the tokenizer strips it anyway).
TEXT_PROMPTS = {
    "cirr": "{caption}",
    "fashioniq": "{cap2} and {cap1}",
    "domain": "a {domain} of",
    "coco": "a photo of {classes}",
}


def template_fields(template: str) -> tuple[str, ...]:
    """The ``{field}`` names a template uses, in order."""
    return tuple(name for _, name, _, _ in string.Formatter().parse(template) if name)


def compose(template: str, query: CIRQuery) -> str:
    """Fill ``template`` with the query's fields; a missing or empty field is an error naming the query."""
    text_fields = {}
    for name in template_fields(template):
        if name not in query.fields:
            raise ValueError(f"Query {query.id!r} ({query.kind}) has no field {name!r} for the prompt {template!r}; "
                             f"it has {sorted(query.fields)}. Use a template written for {query.kind!r} queries.")
        value = str(query.fields[name]).strip()
        if not value:
            raise ValueError(f"Query {query.id!r} has an empty modification text (field {name!r}). Fix or remove that "
                             "entry in the annotation file: an empty text would silently turn the query into an "
                             "image-only one.")
        text_fields[name] = value
    return template.format(**text_fields)


def check_prompts(prompts: Mapping[str, str], *, placeholder: str | None = None) -> dict[str, str]:
    """Check a {kind: template} table: known kinds, only that kind's fields, and (Pic2Word) the placeholder.

    The placeholder must come out of CLIP's tokenizer as its own token: "* ," works, "*," does not (the BPE
    pre-tokenizer glues runs of punctuation together; Pic2Word's issue #28).
    """
    from idclab import backbones

    prompts = dict(prompts)
    for kind, template in prompts.items():
        if kind not in KINDS:
            raise ValueError(f"Unknown query kind {kind!r} in prompts; kinds are {sorted(KINDS)}.")
        extra = set(template_fields(template)) - set(KINDS[kind]) - OPTIONAL_FIELDS
        if extra:
            raise ValueError(f"The {kind!r} prompt {template!r} uses fields {sorted(extra)}; {kind!r} queries have "
                             f"{list(KINDS[kind])}.")
        if placeholder is not None:
            filled = template.format(**{f: "x" for f in template_fields(template)})
            ids = backbones.tokenize(filled)[0]
            if not bool((ids == backbones.token_id(placeholder)).any()):
                raise ValueError(
                    f"The {kind!r} prompt {template!r} has no placeholder {placeholder!r} token, so the image would "
                    f"be ignored. Put {placeholder!r} in it as a word of its own, e.g. 'a photo of {placeholder} , "
                    f"{{caption}}' (with a space before any punctuation).")
    return prompts


# ----------------------------------------------------------------------------------------------------------------------
# Retrievers: CLIP image features underneath, a method on top
# ----------------------------------------------------------------------------------------------------------------------


class CLIPRetriever:
    """The retriever interface, on a (frozen) CLIP.

    The harness calls :meth:`encode_image` once per image (and caches the raw features under :meth:`image_key`),
    then :meth:`encode_gallery` on gallery features and :meth:`encode_query` on reference features with the queries.
    Subclasses set ``method`` and override the two ``encode_*`` calls; :meth:`describe` is recorded with results.
    """

    method = "image"

    def __init__(self, clip: torch.nn.Module, *, preprocess: str = "center_crop",
                 device: str | torch.device | None = None):
        from idclab import backbones
        from idclab.configs import pick_device

        if preprocess not in backbones.RESIZE_MODES:
            raise ValueError(f"preprocess={preprocess!r}; choose one of {backbones.RESIZE_MODES}.")
        self.device = pick_device(device) if not isinstance(device, torch.device) else device
        self.clip = clip.to(self.device).eval()
        self.preprocess = preprocess
        self.image_size = backbones.image_size(clip)
        self.context_length = int(clip.context_length)
        self._image_key: str | None = None

    def image_key(self) -> str:
        """A hash of the image tower's weights and the preprocessing: equal keys give equal image features."""
        if self._image_key is None:
            h = hashlib.sha256(f"{self.preprocess}:{self.image_size}".encode())
            for name, tensor in sorted(self.clip.visual.state_dict().items()):
                h.update(name.encode())
                h.update(tensor.detach().float().cpu().numpy().tobytes())
            self._image_key = h.hexdigest()[:20]
        return self._image_key

    @torch.no_grad()
    def encode_image(self, images: Sequence[np.ndarray]) -> Tensor:
        """uint8 images -> raw (unnormalised) CLIP image embeddings [B, D], float32."""
        from idclab import backbones

        pixels = backbones.to_pixels(list(images), self.image_size, device=self.device, resize=self.preprocess)
        return self.clip.encode_image(pixels).float()

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """Texts -> L2-normalised CLIP text embeddings [B, D]."""
        from idclab import backbones

        tokens = backbones.tokenize(list(texts), context_length=self.context_length).to(self.device)
        return F.normalize(backbones.encode_text(self.clip, tokens).float(), dim=-1)

    def texts(self, queries: Sequence[CIRQuery]) -> list[str]:
        """Each query's text from ``self.prompts`` (its kind's template); a kind without a template is an error."""
        out = []
        for q in queries:
            if q.kind not in self.prompts:
                raise ValueError(f"No {self.method} prompt for {q.kind!r} queries; add one to prompts "
                                 f"({sorted(self.prompts)}).")
            out.append(compose(self.prompts[q.kind], q))
        return out

    def encode_gallery(self, image_feats: Tensor) -> Tensor:  # [G, D] raw -> [G, D] normalised
        return F.normalize(image_feats.float(), dim=-1)

    def encode_query(self, image_feats: Tensor, queries: Sequence[CIRQuery]) -> Tensor:  # [B, D] -> [B, D]
        return F.normalize(image_feats.float(), dim=-1)

    def describe(self) -> dict:
        return dict(method=self.method, backbone=getattr(self.clip, "idclab_name", type(self.clip).__name__),
                    preprocess=self.preprocess)


class Baseline(CLIPRetriever):
    """The three zero-shot baselines of every CIR table (pic2word.md §2):

    * ``image`` -- the reference image's embedding alone (ignores the text);
    * ``text`` -- the modification text alone (TEXT_PROMPTS);
    * ``sum`` -- normalise(normalise(image) + normalise(text)), the "image + text" row (and the Combiner's stage-1
      query, combiner.md §4).
    """

    METHODS = ("image", "text", "sum")

    def __init__(self, clip: torch.nn.Module, method: str, *, prompts: Mapping[str, str] | None = None, **kwargs):
        if method not in self.METHODS:
            raise ValueError(f"Unknown baseline {method!r}; choose one of {self.METHODS}.")
        super().__init__(clip, **kwargs)
        self.method = method
        self.prompts = check_prompts(TEXT_PROMPTS if prompts is None else prompts)

    def encode_query(self, image_feats: Tensor, queries: Sequence[CIRQuery]) -> Tensor:
        image = F.normalize(image_feats.float(), dim=-1)  # [B, D]
        if self.method == "image":
            return image
        text = self.encode_text(self.texts(queries))  # [B, D]
        return text if self.method == "text" else F.normalize(image + text, dim=-1)

    def describe(self) -> dict:
        out = super().describe()
        if self.method != "image":
            out["prompts"] = dict(self.prompts)
        return out


# ----------------------------------------------------------------------------------------------------------------------
# Checking a benchmark and reading its images (nothing is dropped: problems are listed, then raised)
# ----------------------------------------------------------------------------------------------------------------------


def check_benchmark(bench: CIRBenchmark) -> None:
    """Raise a ValueError that lists every structural problem: unknown protocol or kind, a reference or target that
    is not where the protocol needs it, a subset without its target, duplicate query ids."""
    from idclab.data._common import listing

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


def read_image(source: ImageSource) -> np.ndarray:
    """uint8 RGB [H, W, 3] from a path, an array or a zero-argument loader."""
    from idclab import backbones

    if callable(source):
        source = source()
    return backbones.load_image(source)


def missing_files(bench: CIRBenchmark, names: Sequence[str]) -> list[str]:
    return [n for n in names if isinstance(bench.images[n], (str, Path)) and not Path(bench.images[n]).is_file()]


def image_features(retriever: CLIPRetriever, bench: CIRBenchmark, names: Sequence[str], *,
                   cache_dir: str | Path | None = None, batch_size: int = 64, progress: bool = True) -> Tensor:
    """Raw CLIP image features [N, D] of ``names`` (float32, on the retriever's device), computed once.

    With ``cache_dir`` the features are stored as ``<bench>-<split>-<hash>.pt``, the hash covering the image tower's
    weights, the preprocessing and the names, so a changed model or split never reuses stale features. Missing files
    are listed before any work; unreadable ones are all listed after one pass (none is skipped).
    """
    from idclab.data._common import listing

    names = list(names)
    missing = missing_files(bench, names)
    if missing:
        raise FileNotFoundError(f"{len(missing)} images of {bench.name} {bench.split} are missing: {listing(missing)}. "
                                f"Run the dataset's data_scripts/<name>.py verify for the full list.")
    path = None
    if cache_dir is not None:
        key = hashlib.sha256((retriever.image_key() + "\n" + "\n".join(names)).encode()).hexdigest()[:16]
        path = Path(cache_dir) / f"{bench.name}-{bench.split}-{key}.pt"
        if path.is_file():
            cached = torch.load(path, map_location="cpu")
            if cached["names"] == names:
                return cached["features"].to(retriever.device)
    feats, unreadable = [], []
    bar = tqdm(range(0, len(names), batch_size), desc=f"image features ({bench.name})", disable=not progress,
               unit="batch")
    for start in bar:
        batch, ok = [], []
        for n in names[start:start + batch_size]:
            try:
                batch.append(read_image(bench.images[n]))
                ok.append(True)
            except (OSError, ValueError, SyntaxError) as e:  # PIL raises these for broken files; listed below
                unreadable.append(f"{n} ({type(e).__name__}: {e})")
                ok.append(False)
        if batch:
            f = retriever.encode_image(batch)  # [b, D]
            if not all(ok):  # keep row order; rows of unreadable images are never used (we raise below)
                full = f.new_zeros(len(ok), f.shape[1])
                full[torch.tensor(ok, device=f.device)] = f
                f = full
            feats.append(f)
    if unreadable:
        raise OSError(f"{len(unreadable)} images of {bench.name} {bench.split} cannot be read: {listing(unreadable)}. "
                      "Re-download them (data_scripts/<name>.py verify lists them all).")
    out = torch.cat(feats)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(dict(names=names, features=out.cpu()), tmp)
        tmp.replace(path)
    return out


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
    if feats is None:
        names = needed_images(bench)
        feats = image_features(retriever, bench, names, cache_dir=cache_dir, batch_size=batch_size, progress=progress)
    row_of = {n: i for i, n in enumerate(names)}
    k = k or max(RECALL_KS[bench.protocol])
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
    if any(not q.targets for q in ranking.queries):
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
    # imagenet_r: Pic2Word's fractional recall (labels = one per distinct target set) and the hit rate beside it
    label_of: dict[frozenset, int] = {}
    gallery_labels = torch.full((len(names),), -1, dtype=torch.long, device=dev)
    query_labels = []
    for q in qs:
        key = frozenset(q.targets)
        if key not in label_of:
            label_of[key] = len(label_of)
            gallery_labels[[pos[t] for t in key]] = label_of[key]
        query_labels.append(label_of[key])
    out = named(recall_fraction_at_k(idx, gallery_labels, torch.tensor(query_labels, device=dev), ks), "R")
    out.update({f"hit_{m}": v for m, v in named(recall_at_k_multi(idx, positives, ks), "R").items()})
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


# ----------------------------------------------------------------------------------------------------------------------
# Test-server submissions
# ----------------------------------------------------------------------------------------------------------------------

CIRR_SUBMISSION_TOP = 50  # the CIRR server reads the top 50 (recall) and the top 3 within the subset (recall_subset)
CIRCO_SUBMISSION_TOP = 50


def cirr_submission(retriever: CLIPRetriever, bench: CIRBenchmark, out_dir: str | Path, *, name: str | None = None,
                    cache_dir: str | Path | None = None, batch_size: int = 64, progress: bool = True
                    ) -> tuple[Path, Path]:
    """Write CIRR's two test-server files for every query of ``bench`` (test1: all 4,148 pair ids).

    ``recall_submission_<name>.json``: {"version": "rc2", "metric": "recall", "<pairid>": [top-50 image names]};
    ``recall_subset_submission_<name>.json``: the same with "recall_subset" and the top 3 of the image set (reference
    removed). Checked with :func:`validate_cirr_submission` before returning.
    """
    if bench.protocol not in EXCLUDES_REFERENCE:
        raise ValueError(f"{bench.name} is not a CIRR-layout benchmark (protocol {bench.protocol!r}).")
    if any(len(q.subset) != 6 for q in bench.queries):
        raise ValueError("Every CIRR query needs its 6 image-set members (subset) for the recall_subset file.")
    ranking = rank(retriever, bench, k=CIRR_SUBMISSION_TOP, cache_dir=cache_dir, batch_size=batch_size,
                   progress=progress)
    recall: dict[str, object] = {"version": "rc2", "metric": "recall"}
    subset: dict[str, object] = {"version": "rc2", "metric": "recall_subset"}
    for g, rows in ranking.rows.items():
        names, pos = ranking.gallery_names[g], {n: i for i, n in enumerate(ranking.gallery_names[g])}
        for r, i in enumerate(rows):
            q = ranking.queries[i]
            recall[q.id] = [names[j] for j in ranking.indices[g][r].tolist()]
            members = [m for m in q.subset if m != q.reference]
            s = ranking.gallery_feats[g][[pos[m] for m in members]] @ ranking.query_feats[g][r]  # [5]
            order = sorted(range(len(members)), key=lambda j: (-float(s[j]), pos[members[j]]))  # ties: lower index
            subset[q.id] = [members[j] for j in order[:3]]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = name or retriever.method
    paths = out / f"recall_submission_{name}.json", out / f"recall_subset_submission_{name}.json"
    for path, obj in zip(paths, (recall, subset)):
        path.write_text(json.dumps(obj))
    validate_cirr_submission(*paths, bench=bench)
    return paths


def validate_cirr_submission(recall_path: str | Path, subset_path: str | Path, *, bench: CIRBenchmark) -> None:
    """Check both files against CIRR's documented format: version rc2, the metric names, every pair id of ``bench``
    and nothing else, 50 distinct gallery names per pair (3 distinct set members, reference excluded), <= 5 MB."""
    problems = []
    queries = {q.id: q for q in bench.queries}
    for path, metric, top in ((recall_path, "recall", CIRR_SUBMISSION_TOP), (subset_path, "recall_subset", 3)):
        path = Path(path)
        if path.stat().st_size > 5 * 2**20:
            problems.append(f"{path.name} is {path.stat().st_size / 2**20:.1f} MB; the server takes at most 5 MB")
        data = json.loads(path.read_text())
        if data.get("version") != "rc2" or data.get("metric") != metric:
            problems.append(f"{path.name}: version/metric must be 'rc2'/{metric!r}, got "
                            f"{data.get('version')!r}/{data.get('metric')!r}")
        ids = set(data) - {"version", "metric"}
        if ids != set(queries):
            problems.append(f"{path.name}: {len(set(queries) - ids)} pair ids missing, {len(ids - set(queries))} extra")
        for pid in ids & set(queries):
            q, names = queries[pid], data[pid]
            allowed = set(bench.galleries[q.gallery]) if metric == "recall" else set(q.subset)
            if (len(names) != min(top, len(allowed) - 1) or len(set(names)) != len(names) or q.reference in names
                    or not set(names) <= allowed):
                problems.append(f"{path.name}: pair {pid} must list {top} distinct {'gallery' if top == 50 else 'set'} "
                                f"names without its reference")
                break
    if problems:
        raise ValueError("Invalid CIRR submission:\n  " + "\n  ".join(problems))


def circo_submission(retriever: CLIPRetriever, bench: CIRBenchmark, path: str | Path, *,
                     cache_dir: str | Path | None = None, batch_size: int = 64, progress: bool = True) -> Path:
    """Write CIRCO's test-server file: {"<query id>": [top-50 distinct integer image ids]} for every query."""
    if bench.protocol != "circo":
        raise ValueError(f"{bench.name} is not CIRCO (protocol {bench.protocol!r}).")
    ranking = rank(retriever, bench, k=CIRCO_SUBMISSION_TOP, cache_dir=cache_dir, batch_size=batch_size,
                   progress=progress)
    out = {}
    for g, rows in ranking.rows.items():
        names = ranking.gallery_names[g]
        for r, i in enumerate(rows):
            out[ranking.queries[i].id] = [int(names[j]) for j in ranking.indices[g][r].tolist()]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))
    return path


# ----------------------------------------------------------------------------------------------------------------------
# The Shapes CIR benchmark and retrieval from a folder
# ----------------------------------------------------------------------------------------------------------------------

SHAPES_DOMAIN_NOUN = {"sketch": "sketch", "mosaic": "mosaic", "cartoon": "cartoon"}  # style -> the prompt's noun


def shapes_benchmark(split: str = "test", n: int = 300, *, seed: int = 0, size: int = 64,
                     tasks: Sequence[str] | None = None) -> CIRBenchmark:
    """``n`` Shapes triplets as a CIRR-style benchmark (protocol "shapes"): the gallery is every reference, target and
    near-miss negative of the split; the reference is removed from each ranking; R_subset ranks within the triplet's
    own 6 images. Tasks: ``attribute`` (one object's colour / material / size / shape), ``object`` (add or remove
    one), ``domain`` (the same scene as a sketch, mosaic or cartoon: kind "domain", so Pic2Word uses "a {domain} of *"
    there, as on ImageNet-R). Every query keeps its instruction under ``caption`` too.
    """
    from idclab.data import shapes

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


class GallerySearch:
    """Interactive search over one gallery: its features are computed once, then :meth:`search` answers any
    (reference, text) query in milliseconds (the chapter's composer widget and ``idclab retrieve`` use it)."""

    def __init__(self, retriever: CLIPRetriever, bench: CIRBenchmark, *, gallery: str = ALL,
                 cache_dir: str | Path | None = None, progress: bool = True):
        self.retriever, self.bench = retriever, bench
        self.names = list(bench.galleries[gallery])
        self.position = {n: i for i, n in enumerate(self.names)}
        self.raw = image_features(retriever, bench, self.names, cache_dir=cache_dir, progress=progress)  # [G, D]
        self.gallery = retriever.encode_gallery(self.raw)  # [G, D]

    def search(self, reference: str | ImageSource, text: str, *, kind: str = "cirr", k: int = 5,
               exclude_reference: bool = True) -> list[tuple[str, float]]:
        """Top ``k`` gallery names and cosine similarities for ``reference`` (a gallery name or an image) modified
        by ``text`` (kind "cirr": a caption; "domain": a domain noun). The reference itself is left out."""
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
             k: int = 5, kind: str = "cirr", cache_dir: str | Path | None = None, progress: bool = True
             ) -> list[tuple[str, float]]:
    """The top ``k`` images of ``gallery`` (a folder, searched recursively, or a list of files) for one composed
    query: ``image`` modified by ``text``. ``kind`` "cirr" reads ``text`` as a caption; "domain" as a domain noun
    ("cartoon"). Returns [(path, cosine similarity)], best first."""
    from idclab.data.image_folder import list_images

    paths = list_images(gallery) if isinstance(gallery, (str, Path)) else [Path(p) for p in gallery]
    if not paths:
        raise ValueError(f"No images in {gallery}.")
    names = [str(p) for p in paths]
    bench = CIRBenchmark(name="folder", split=hashlib.sha256("\n".join(names).encode()).hexdigest()[:12],
                         protocol="coco", images=dict(zip(names, paths)), galleries={ALL: tuple(names)}, queries=[])
    missing = missing_files(bench, names)
    if missing:
        raise FileNotFoundError(f"{len(missing)} gallery images are missing: {missing[:10]}")
    return GallerySearch(retriever, bench, cache_dir=cache_dir, progress=progress).search(
        image, text, kind=kind, k=k, exclude_reference=False)


BENCHMARKS = ("shapes", "cirr", "fashioniq", "circo", "imagenet_r", "coco")


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
        from idclab.data import cirr

        return cirr.load_benchmark(root, split or "val")
    if name == "fashioniq":
        from idclab.data import fashioniq

        return fashioniq.load_benchmark(root, split or "val")
    if name == "circo":
        from idclab.data import circo

        return circo.load_benchmark(root, split or "val")
    if name == "imagenet_r":
        from idclab.data import imagenet_r

        return imagenet_r.load_benchmark(root)
    from idclab.data import coco_composition

    return coco_composition.load_benchmark(root)
