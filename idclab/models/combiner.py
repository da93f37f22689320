"""Combiner (CLIP4Cir): supervised composed image retrieval by fine-tuning CLIP, then fusing its features.

Papers: Baldrati, Bertini, Uricchio, Del Bimbo, "Conditioned and Composed Image Retrieval Combining and Partially
Fine-Tuning CLIP-Based Features", CVPR 2022 Workshops (text encoder fine-tuned), and its journal extension
"Composed Image Retrieval using Contrastive Learning and Task-oriented CLIP-based Features", ACM TOMM 2023 (both
encoders). Reference code: ``ABaldrati/CLIP4Cir`` (commit dfed9f7). Comments tag where each fact comes from: [README]
the reference README, [code] the reference code; "CMB-N" is trap N of the reference code, explained for readers in
the book's appendix ``book/pitfalls.md``.

Differences from the reference code (the paper presets reproduce everything else; the book's appendix "Reproduction
notes" has the same list):

* Stage-2 features are fp32 in training and validation alike; the reference extracts training features with CLIP in
  fp16 and validation features in fp32 (CMB-2).
* Features that cannot change are computed once: stage 2's (CLIP frozen, in eval mode, deterministic transforms;
  FashionIQ's caption variants are all cached) and, in stage 1 with ``encoder="text"``, the image features. The
  reference re-extracts them every step; apart from the fp16 point above the numbers are the same.
* Missing or unreadable images are errors naming them; the reference skips missing training images silently and
  fails on missing validation images (CMB-7).
* Batch sizes and epochs follow the README (stage 1: 128 for 100 epochs; stage 2: 4,096 for 300), where the code's
  defaults differ (CMB-5).
* CIRR checkpoint selection: the reference keeps three "best" checkpoints, by the arithmetic, harmonic and geometric
  mean of the seven val recalls; idclab keeps one, by the mean named in ``cirr_selection`` (default: arithmetic),
  and records every mean in each validation entry, so the other two choices can be read off the run.

The method in two stages:

1. **Task-oriented fine-tuning** (stage 1, [code]). The query is the element-wise sum of the reference image's and the
   modification text's raw CLIP features, L2-normalised: q = norm(psi_I(ref) + psi_T(text)) (:func:`sum_query`;
   the zero-shot "image + text" baseline of the harness normalises each feature first); the target is
   norm(psi_I(target)). The batch-based classification loss (each query picks its target among the batch's targets,
   scale 100, one direction) fine-tunes CLIP's text encoder (CVPRW) or both encoders (journal). CLIP stays in eval
   mode throughout.
2. **The Combiner** (stage 2, [code]). CLIP frozen; a small network takes the raw (unnormalised) image and text
   features i, t, projects each (Linear, ReLU, Dropout 0.5), concatenates [t', i'], and outputs
   norm(mixture + lambda * t + (1 - lambda) * i), where the mixture comes from an MLP and lambda in (0, 1) from
   another with a sigmoid. Same loss. With CLIP frozen and no augmentation the features are fixed, so stage 2 trains
   on **precomputed** features (for FashionIQ, every caption variant is cached); the reference re-extracts them
   every step.

Reading order: configs and presets -> the Combiner network -> the stage-1 model and the shared loss -> training
data (caption variants, feature caches) -> the two stages -> the retrievers -> loading checkpoints -> the authors'
released checkpoints (:func:`load_released`) -> analysis helpers (similarity gap, lambda).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from idclab import backbones, cir, runs
from idclab.configs import from_dict, get_profile, pick_device, to_dict
from idclab.data.cirr import CIRRTriplets
from idclab.data.fashioniq import FashionIQTriplets
from idclab.data.shapes import ShapesTriplets, render
from idclab.losses import batch_classification_loss
from idclab.train import TrainConfig, Trainer, TrainResult, train_device

__all__ = [
    "DATASETS", "ENCODERS", "STAGES", "PROMPTS", "CombinerStage", "CombinerConfig", "config_for", "Combiner",
    "FineTuner", "CombinerModel", "sum_query", "caption_variants", "TripletSource", "load_triplets", "train", "load",
    "SumRetriever", "CombinerRetriever", "load_retriever", "similarity_gap", "lambdas", "read_released",
    "released_kind", "combiner_from_released", "clip_from_released", "load_released",
]

DATASETS = ("shapes", "fashioniq", "cirr")
ENCODERS = ("text", "image", "both")  # [code] --encoder: what stage 1 fine-tunes
STAGES = ("finetune", "combiner")
METHOD = "combiner"
SELECTIONS = ("arithmetic", "harmonic", "geometric", "r5_rs1")  # CIRR-protocol checkpoint selection (selection_score)
SUM_INPUTS = ("raw", "normalized")  # stage-1 query: norm(i + t) (the reference) or norm(norm(i) + norm(t))
SCALE = 100.0  # [code]: fixed logit scale in both stages (CLIP's learned one is not used)
# The text each query kind gives the Combiner and the stage-1 sum ([code]: FashionIQ "c1 and c2" at evaluation;
# CIRR and Shapes the caption). BPE lower-cases, so the reference's capitalisation changes nothing.
PROMPTS = {"cirr": "{caption}", "fashioniq": "{cap1} and {cap2}", "domain": "{caption}"}

# ----------------------------------------------------------------------------------------------------------------------
# Configs (paper defaults; each field cites its source) and presets
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CombinerStage:
    """One stage. Defaults: stage 1 (fine-tuning) of the README's recipe."""

    lr: float = 2e-6  # [README] / code default
    weight_decay: float = 0.01  # [code] AdamW default, on every parameter (norms and biases too)
    betas: tuple[float, float] = (0.9, 0.999)  # [code]
    eps: float = 1e-7  # [code]
    batch_size: int = 128  # [README] (code default 512); issue #10: 128 with gradient checkpointing
    epochs: int = 100  # [README]
    max_steps: int | None = None  # overrides epochs (toy / smoke)
    eval_every: int | None = None  # steps between validations; None: every epoch (the reference), or only at the
    #                                end when max_steps is set
    eval_queries: int | None = None  # validate on the first N val queries (None: all)
    ckpt_every: int | None = None  # steps between resume files (None: at the end, on interrupt, every ckpt_minutes)


_STAGE2 = CombinerStage(lr=2e-5, weight_decay=0.0, eps=1e-8, batch_size=4096, epochs=300)  # [README]: Adam, no decay


@dataclass(frozen=True)
class CombinerConfig:
    dataset: str = "fashioniq"  # one of DATASETS
    profile: str = "paper"
    backbone: str = "RN50x4-quickgelu"  # [README]: OpenAI RN50x4 (640-d, 288 px), QuickGELU
    pretrained: str | None = "openai"
    preprocess: str = "target_pad"  # [code]: TargetPad(1.25) -> resize -> centre crop, for every image
    encoder: str = "text"  # [code]: "text" = CVPRW (v2); "both" = the journal version (v3); "image" for completeness
    proj_dim: int = 2560  # [code] (CLI default, absolute, = 4 x 640)
    hidden_dim: int = 5120  # [code] (= 8 x 640)
    dropout: float = 0.5  # [code]: five dropout sites, all 0.5
    sum_inputs: str = "raw"  # [code]: the stage-1 query adds raw features, then normalises; "normalized" adds unit ones
    # [code] CIRR (and Shapes, same protocol): which val score picks best.pt -- the arithmetic, harmonic or geometric
    # mean of every recall (CIRR: R@1/5/10/50, R_subset@1/2/3); the reference saves the best by each of the three,
    # best.pt follows the arithmetic one. "r5_rs1": (R@5 + R_subset@1) / 2, the benchmark's headline average
    cirr_selection: str = "arithmetic"
    finetune: CombinerStage = field(default_factory=CombinerStage)  # stage 1
    combiner: CombinerStage = field(default_factory=lambda: _STAGE2)  # stage 2
    precision: str = "auto"  # [code]: AMP (autocast; fp32 master weights)
    ckpt_minutes: float | None = 10.0  # resume file every 10 minutes of training (a Colab disconnect loses less)
    num_workers: int | None = None  # DataLoader workers; None: min(8, CPUs) on CUDA, 0 on the CPU
    shapes_triplets: tuple[int, int] = (0, 0)  # dataset "shapes": generated (train, val) triplets
    seed: int = 0

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ValueError(f"CombinerConfig.dataset={self.dataset!r}; choose one of {DATASETS}.")
        if self.encoder not in ENCODERS:
            raise ValueError(f"CombinerConfig.encoder={self.encoder!r}; choose one of {ENCODERS}.")
        if self.sum_inputs not in SUM_INPUTS:
            raise ValueError(f"CombinerConfig.sum_inputs={self.sum_inputs!r}; choose one of {SUM_INPUTS}.")
        if self.cirr_selection not in SELECTIONS:
            raise ValueError(f"CombinerConfig.cirr_selection={self.cirr_selection!r}; choose one of {SELECTIONS}.")

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CombinerConfig:
        data = dict(data)
        nested = {k: from_dict(CombinerStage, data.pop(k)) for k in STAGES if k in data}
        nested = {k: dataclasses.replace(v, betas=tuple(v.betas)) for k, v in nested.items()}
        cfg = from_dict(cls, data)
        return dataclasses.replace(cfg, shapes_triplets=tuple(cfg.shapes_triplets), **nested)


def config_for(dataset: str, profile: str | None = None, *, encoder: str | None = None, **options) -> CombinerConfig:
    """``paper``: FashionIQ or CIRR with the reference recipe (``encoder="text"``: CVPRW; ``"both"``: the journal
    version); ``toy`` and ``smoke``: Shapes triplets. ``profile`` None reads ``$IDCLAB_PROFILE`` (default toy);
    ``options``: the common ones of :func:`idclab.runs.apply_options` (``finetune_steps``, ``combiner_steps`` ...)."""
    return runs.apply_options(_preset(dataset, profile, encoder), STAGES, **options)


def _preset(dataset: str, profile: str | None, encoder: str | None) -> CombinerConfig:
    profile = get_profile(profile)
    if dataset not in DATASETS:
        raise ValueError(f"Unknown dataset {dataset!r}; choose one of {DATASETS}.")
    if profile != "paper" and dataset != "shapes":
        raise ValueError(f"The {profile!r} profile runs on Shapes; use config_for('shapes', {profile!r}) or "
                         f"config_for({dataset!r}, 'paper').")
    if profile == "paper":
        if dataset == "shapes":
            raise ValueError("Shapes runs in the smoke, toy or lite profile; the paper profile is for fashioniq or cirr.")
        return CombinerConfig(dataset=dataset, encoder=encoder or "text")
    if profile == "lite":
        # The paper's RN50x4 with OpenAI weights (288 px) on Shapes triplets, the reference's rates and widths, fewer
        # steps and squash preprocessing (Shapes images are square): about 10 minutes on a Colab T4 (not yet timed
        # on a GPU).
        return CombinerConfig(
            dataset="shapes", profile="lite", preprocess="squash", encoder=encoder or "text",
            finetune=CombinerStage(batch_size=64, max_steps=300, eval_every=100),
            combiner=dataclasses.replace(_STAGE2, batch_size=512, max_steps=400, eval_every=200),
            shapes_triplets=(2000, 150), ckpt_minutes=None)
    if profile == "toy":
        # shapes-clip (d = 128, 64 px): the reference's p = 4d, h = 8d ratios at toy width; rates near shapes-clip's
        # pretraining lr (1e-3) since a small CLIP trained from scratch must move further than OpenAI's; squash
        # preprocessing (Shapes images are square already). Chosen on Shapes *val* triplets.
        return CombinerConfig(
            dataset="shapes", profile="toy", backbone="shapes-clip", pretrained=None, preprocess="squash",
            encoder=encoder or "text", proj_dim=512, hidden_dim=1024,
            finetune=CombinerStage(lr=1e-4, batch_size=128, max_steps=400, eval_every=200),
            combiner=dataclasses.replace(_STAGE2, lr=1e-3, batch_size=512, max_steps=400, eval_every=200),
            shapes_triplets=(4000, 150), ckpt_minutes=None)
    return CombinerConfig(
        dataset="shapes", profile="smoke", backbone="idc-micro", pretrained=None, preprocess="squash",
        encoder=encoder or "text", proj_dim=64, hidden_dim=128,
        finetune=CombinerStage(lr=1e-4, batch_size=8, max_steps=3),
        combiner=dataclasses.replace(_STAGE2, lr=1e-3, batch_size=8, max_steps=3),
        shapes_triplets=(32, 12), ckpt_minutes=None)


# ----------------------------------------------------------------------------------------------------------------------
# The Combiner network ([code])
# ----------------------------------------------------------------------------------------------------------------------


class Combiner(nn.Module):
    """(raw image features i [B, d], raw text features t [B, d]) -> normalised query [B, d].

    RN50x4 (d, p, h) = (640, 2560, 5120): 59,003,521 parameters.
    """

    def __init__(self, dim: int, proj_dim: int, hidden_dim: int, *, dropout: float = 0.5, scale: float = SCALE):
        super().__init__()
        self.text_proj = nn.Sequential(nn.Linear(dim, proj_dim), nn.ReLU(), nn.Dropout(dropout))
        self.image_proj = nn.Sequential(nn.Linear(dim, proj_dim), nn.ReLU(), nn.Dropout(dropout))
        self.mixture = nn.Sequential(nn.Linear(2 * proj_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout),
                                     nn.Linear(hidden_dim, dim))
        self.scalar = nn.Sequential(nn.Linear(2 * proj_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout),
                                    nn.Linear(hidden_dim, 1), nn.Sigmoid())
        self.scale = scale  # a constant, not a Parameter

    def fuse(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (normalised query [B, d], lambda [B, 1])."""
        c = torch.cat([self.text_proj(text), self.image_proj(image)], dim=-1)  # [B, 2p], text first
        lam = self.scalar(c)  # [B, 1] in (0, 1)
        q = self.mixture(c) + lam * text + (1 - lam) * image  # [B, d], the residual on the raw features
        return F.normalize(q, dim=-1), lam

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.fuse(image, text)[0]

    def logits(self, image: torch.Tensor, text: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """[B, B]: scale * <query_i, normalise(target_j)>."""
        return self.scale * self(image, text) @ F.normalize(target, dim=-1).T


# ----------------------------------------------------------------------------------------------------------------------
# Stage 1: the fine-tuned CLIP and its element-wise-sum query ([code])
# ----------------------------------------------------------------------------------------------------------------------


def load_backbone(cfg: CombinerConfig, *, device: str | torch.device = "cpu") -> nn.Module:
    """The CLIP that stage 1 starts from (random-weight test configs come from a fixed seed)."""
    return backbones.load_clip(cfg.backbone, cfg.pretrained, device=device)


class FineTuner(nn.Module):
    """CLIP with the parts ``encoder`` names trainable; always in eval mode ([code]: BatchNorm statistics stay)."""

    def __init__(self, clip: nn.Module, encoder: str):
        super().__init__()
        self.clip, self.encoder = clip, encoder
        for name, p in clip.named_parameters():
            part = backbones.clip_part(name)  # "visual", "text", "token_embedding", ... or "logit_scale"
            visual = part == "visual"
            p.requires_grad_(part != "logit_scale" and (encoder == "both" or visual == (encoder == "image")))
        self.clip.eval()

    def train(self, mode: bool = True) -> FineTuner:
        super().train(mode)
        self.clip.eval()
        return self

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(self.encoder != "text" and torch.is_grad_enabled()):
            return self.clip.encode_image(pixels)  # [B, d], raw

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(self.encoder != "image" and torch.is_grad_enabled()):
            return backbones.encode_text(self.clip, tokens)  # [B, d], raw


def sum_query(image: torch.Tensor, text: torch.Tensor, *, inputs: str = "raw") -> torch.Tensor:
    """The stage-1 query from raw image and text features [B, d] -> [B, d], unit length.

    ``inputs="raw"`` (the reference): norm(i + t), so the longer feature weighs more; ``"normalized"``:
    norm(norm(i) + norm(t)), both count equally (the zero-shot "image + text" baseline's form).
    """
    if inputs not in SUM_INPUTS:
        raise ValueError(f"inputs={inputs!r}; choose one of {SUM_INPUTS}.")
    image, text = image.float(), text.float()
    if inputs == "normalized":
        image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
    return F.normalize(image + text, dim=-1)


def finetune_loss(model: FineTuner, batch: dict, *, inputs: str = "raw") -> tuple[torch.Tensor, dict]:
    """[code]: q = :func:`sum_query` (norm(i_ref + t)), target norm(i_tgt); one-direction CE at scale 100 (duplicates
    not masked)."""
    ref = batch["ref"] if "ref" in batch else model.encode_image(batch["ref_pixels"])  # [B, d]
    tgt = batch["tgt"] if "tgt" in batch else model.encode_image(batch["tgt_pixels"])  # [B, d]
    text = model.encode_text(batch["tokens"])  # [B, d]
    return batch_classification_loss(sum_query(ref, text, inputs=inputs), tgt.float(), scale=SCALE), {}


def combiner_loss(model: Combiner, batch: dict) -> tuple[torch.Tensor, dict]:
    """[code]: the same loss on the Combiner's query; features are raw and precomputed."""
    query, lam = model.fuse(batch["ref"].float(), batch["text"].float())
    loss = batch_classification_loss(query, batch["tgt"].float(), scale=model.scale)
    return loss, {"lambda": lam.mean().detach()}


# ----------------------------------------------------------------------------------------------------------------------
# Training data: triplets, caption variants, feature caches
# ----------------------------------------------------------------------------------------------------------------------


def caption_variants(item: dict, dataset: str) -> list[str]:
    """The texts a training triplet can show. FashionIQ ([code], ``generate_randomized_fiq_caption``): each caption
    stripped of ".?, " at both ends, then "c1 and c2", "c2 and c1", c1, c2 with equal probability; evaluation uses
    "c1 and c2". CIRR and Shapes: the one caption."""
    if dataset == "fashioniq":
        c1, c2 = (c.strip(".?, ") for c in item["captions"])
        variants = [f"{c1} and {c2}", f"{c2} and {c1}", c1, c2]
    else:
        variants = [item["caption"] if "caption" in item else item["text"]]
    if not all(v.strip() for v in variants):
        raise ValueError(f"Triplet {item.get('id')!r} has an empty modification text; fix its annotation.")
    return variants


class TripletSource:
    """Training triplets of any dataset as (reference image, target image, caption variants)."""

    def __init__(self, data: Dataset, dataset: str):
        self.data, self.dataset = data, dataset

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
        item = self.data[i]
        return item["reference"], item["target"], caption_variants(item, self.dataset)


class _ShapesTrainingTriplets(Dataset):
    """Shapes triplets with only the reference and target rendered (the near misses serve evaluation only)."""

    def __init__(self, split: str, n: int, *, seed: int, size: int = 64):
        self.data, self.size = ShapesTriplets(split, n, seed=seed, size=size), size

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict:
        t = self.data.triplet(i)
        return dict(reference=render(t.reference, size=self.size), target=render(t.target, size=self.size),
                    text=t.text, id=str(i))


def load_triplets(cfg: CombinerConfig, split: str, *, root: str | Path | None = None) -> TripletSource:
    if cfg.dataset == "shapes":
        n = cfg.shapes_triplets[0 if split == "train" else 1]
        return TripletSource(_ShapesTrainingTriplets(split, n, seed=cfg.seed), "shapes")
    if root is None:
        raise ValueError(f"--dataset {cfg.dataset} needs --root DIR (python data_scripts/{cfg.dataset}.py download "
                         f"--root DIR, then verify).")
    if cfg.dataset == "fashioniq":
        return TripletSource(FashionIQTriplets(root, split), "fashioniq")
    return TripletSource(CIRRTriplets(root, split), "cirr")


@torch.no_grad()
def _encode_images(clip: nn.Module, images: Sequence[np.ndarray], preprocess: str, device) -> torch.Tensor:
    pixels = backbones.to_pixels(list(images), backbones.image_size(clip), device=device, resize=preprocess)
    return clip.encode_image(pixels).float()


@torch.no_grad()
def precompute(clip: nn.Module, source: TripletSource, *, preprocess: str, texts: bool, batch_size: int = 128,
               progress: bool = True) -> dict:
    """Raw features of every triplet: ref [N, d], tgt [N, d]; with ``texts`` every caption variant too
    (text [N, V, d]; FashionIQ V = 4), else the variants themselves (for stage 1, whose text encoder trains)."""
    device = next(clip.parameters()).device
    ctx = backbones.clip_dims(clip).context_length
    refs, tgts, text_feats, variants = [], [], [], []
    for s in tqdm(range(0, len(source), batch_size), desc="features", disable=not progress, unit="batch"):
        items = [source[i] for i in range(s, min(s + batch_size, len(source)))]
        refs.append(_encode_images(clip, [r for r, _, _ in items], preprocess, device).cpu())
        tgts.append(_encode_images(clip, [t for _, t, _ in items], preprocess, device).cpu())
        if texts:
            flat = [v for _, _, vs in items for v in vs]
            f = backbones.encode_text(clip, backbones.tokenize(flat, context_length=ctx).to(device)).float().cpu()
            text_feats.append(f.view(len(items), -1, f.shape[-1]))
        variants += [vs for _, _, vs in items]
    out = dict(ref=torch.cat(refs), tgt=torch.cat(tgts), variants=variants)
    if texts:
        out["text"] = torch.cat(text_feats)
    return out


class CachedTriplets(Dataset):
    """Items from :func:`precompute`: a caption variant is drawn from torch's global generator (restored by the
    Trainer on resume), so FashionIQ sees a new variant of each triplet every epoch, as in the reference."""

    def __init__(self, cache: dict):
        self.cache = cache

    def __len__(self) -> int:
        return self.cache["ref"].shape[0]

    def __getitem__(self, i: int) -> dict:
        n = len(self.cache["variants"][i])
        v = int(torch.randint(n, ())) if n > 1 else 0
        item = dict(ref=self.cache["ref"][i], tgt=self.cache["tgt"][i])
        if "text" in self.cache:
            item["text"] = self.cache["text"][i, v]
        else:
            item["caption"] = self.cache["variants"][i][v]
        return item


class PixelTriplets(Dataset):
    """Stage 1 with a trainable image encoder: images are encoded every step."""

    def __init__(self, source: TripletSource):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict:
        ref, tgt, variants = self.source[i]
        v = int(torch.randint(len(variants), ())) if len(variants) > 1 else 0
        return dict(ref_image=ref, tgt_image=tgt, caption=variants[v])


class Collate:
    def __init__(self, clip: nn.Module, preprocess: str):
        dims = backbones.clip_dims(clip)
        self.size, self.ctx, self.preprocess = dims.image_size, dims.context_length, preprocess

    def __call__(self, items: Sequence[dict]) -> dict:
        out = {}
        for key in ("ref", "tgt", "text"):
            if key in items[0]:
                out[key] = torch.stack([it[key] for it in items])
        if "caption" in items[0]:
            out["tokens"] = backbones.tokenize([it["caption"] for it in items], context_length=self.ctx)
        for key, name in (("ref_image", "ref_pixels"), ("tgt_image", "tgt_pixels")):
            if key in items[0]:
                out[name] = backbones.to_pixels([it[key] for it in items], self.size, resize=self.preprocess)
        return out


# ----------------------------------------------------------------------------------------------------------------------
# Validation and the two stages
# ----------------------------------------------------------------------------------------------------------------------


def val_benchmark(cfg: CombinerConfig, *, root: str | Path | None = None, split: str = "val") -> cir.CIRBenchmark:
    if cfg.dataset == "shapes":
        return cir.shapes_benchmark(split, cfg.shapes_triplets[1], seed=cfg.seed)
    return cir.load_benchmark(cfg.dataset, root=root, split=split)


def recall_means(metrics: dict) -> dict[str, float]:
    """The CIRR-protocol selection scores of one validation (``metrics``: :func:`idclab.cir.evaluate`'s): the
    arithmetic, harmonic and geometric means of every overall recall (R@K and R_subset@K, in percent; the harmonic and
    geometric means are 0 when a recall is 0), and ``r5_rs1`` = (R@5 + R_subset@1) / 2."""
    m = metrics[cir.ALL]
    recalls = np.array([v for k, v in m.items() if k.startswith(("R@", "R_subset@"))], dtype=float)  # [7] on CIRR
    positive = bool((recalls > 0).all())
    return dict(arithmetic=float(recalls.mean()),
                harmonic=float(len(recalls) / (1.0 / recalls).sum()) if positive else 0.0,
                geometric=float(np.exp(np.log(recalls).mean())) if positive else 0.0,
                r5_rs1=(m["R@5"] + m["R_subset@1"]) / 2)


def selection_score(metrics: dict, protocol: str, criterion: str = "arithmetic") -> float:
    """The number that picks the best checkpoint ([code]): FashionIQ (mean R@10 + mean R@50) / 2; CIRR and Shapes
    the ``criterion`` of :func:`recall_means` (one of SELECTIONS)."""
    if protocol == "fashioniq":
        return metrics["average"]["avg"]
    if criterion not in SELECTIONS:
        raise ValueError(f"Unknown selection criterion {criterion!r}; choose one of {SELECTIONS}.")
    return recall_means(metrics)[criterion]


def _subset(bench: cir.CIRBenchmark, n: int | None) -> cir.CIRBenchmark:
    return bench if n is None else dataclasses.replace(bench, queries=list(bench.queries)[:n])


def _trainer_config(cfg: CombinerConfig, stage: CombinerStage, n: int, progress: bool) -> TrainConfig:
    per_epoch = max(1, n // stage.batch_size)  # drop_last, as the reference's loaders
    steps = stage.epochs * per_epoch if stage.max_steps is None else stage.max_steps
    every = (None if stage.max_steps is not None else per_epoch) if stage.eval_every is None else \
        (stage.eval_every or None)  # None: the reference's every epoch; 0: at the end only
    return TrainConfig(max_steps=steps, batch_size=min(stage.batch_size, n), lr=stage.lr,
                       weight_decay=stage.weight_decay, betas=stage.betas, eps=stage.eps, schedule="constant",
                       precision=cfg.precision, seed=cfg.seed, num_workers=cfg.num_workers, eval_every=every,
                       ckpt_every=stage.ckpt_every, ckpt_minutes=cfg.ckpt_minutes, select_metric="select",
                       select_mode="max", progress=progress)


def _validator(retriever_for, bench: cir.CIRBenchmark, *, fixed_gallery: bool, criterion: str = "arithmetic"):
    """A Trainer val_fn: the benchmark's protocol on ``retriever_for(model)``; the selection score ("select"), the
    criterion that computed it ("selected_by"), on the CIRR protocol every criterion's score ("select/<name>"), and
    every metric. ``fixed_gallery``: the image tower does not change, so gallery features are encoded once."""
    cache: dict = {}

    def val_fn(model) -> dict:
        retriever = retriever_for(model)
        if not cache or not fixed_gallery:
            cache["names"] = cir.needed_images(bench)
            cache["feats"] = cir.image_features(retriever, bench, cache["names"], progress=False)
        metrics = cir.evaluate(retriever, bench, feats=cache["feats"], names=cache["names"], progress=False)["metrics"]
        if bench.protocol == "fashioniq":
            return {"select": selection_score(metrics, bench.protocol), "selected_by": "fashioniq_avg",
                    **_flat(metrics)}
        means = recall_means(metrics)
        return {"select": means[criterion], "selected_by": criterion,
                **{f"select/{k}": v for k, v in means.items()}, **_flat(metrics)}

    return val_fn


def train(cfg: CombinerConfig, out_dir: str | Path, *, stages=None, root: str | Path | None = None,
          init: str | Path | None = None, resume: bool = False, overwrite: bool = False,
          device: str | torch.device | None = None, progress: bool = True) -> dict[str, TrainResult]:
    """Stage 1 into ``out_dir/finetune`` (the fine-tuned CLIP), then stage 2 into ``out_dir/combiner`` on its
    features. ``stages=("combiner",)`` trains the Combiner on ``init`` (a stage-1 run), else on the stage-1 run
    recorded in ``out_dir``, else on the frozen CLIP (the v1 ablation). Returns ``{stage: TrainResult}``."""
    stages = runs.check_stages(stages, STAGES)
    out = Path(out_dir)
    if cfg.dataset != "shapes":
        load_triplets(cfg, "train", root=root)  # check the data before building a model or downloading weights
    device = train_device(device)  # under torchrun: this process's GPU (LOCAL_RANK), also for the features
    results: dict[str, TrainResult] = {}
    clip_ckpt = None if init is None else runs.resolve_checkpoint(init, "finetune", method=METHOD)
    if clip_ckpt is None and "finetune" not in stages and "finetune" in ((runs.read_run(out) or {}).get("stages") or {}):
        clip_ckpt = runs.resolve_checkpoint(out, "finetune")
    with runs.run_lock(out):
        runs.prepare_run(out, stages, resume=resume, overwrite=overwrite)  # under the lock: one writer
        if "finetune" in stages:
            results["finetune"] = _finetune(cfg, out, root=root, resume=resume, device=device, progress=progress)
            clip_ckpt = results["finetune"].selected
        if "combiner" in stages:
            results["combiner"] = _train_combiner(cfg, out, clip_ckpt=clip_ckpt, root=root, resume=resume,
                                                  device=device, progress=progress)
    return results


def _finetune(cfg: CombinerConfig, out: Path, *, root, resume: bool, device, progress: bool) -> TrainResult:
    """Stage 1: fine-tune CLIP with the sum query; the checkpoint holds the whole CLIP."""
    model = FineTuner(load_backbone(cfg, device=device), cfg.encoder)
    source = load_triplets(cfg, "train", root=root)
    if cfg.encoder == "text":  # the image tower is frozen: its features are fixed, compute them once
        data = CachedTriplets(precompute(model.clip, source, preprocess=cfg.preprocess, texts=False,
                                         progress=progress))
    else:
        data = PixelTriplets(source)
    bench = _subset(val_benchmark(cfg, root=root), cfg.finetune.eval_queries)
    val_fn = _validator(lambda m: SumRetriever(m.clip, inputs=cfg.sum_inputs, preprocess=cfg.preprocess,
                                               device=device), bench, fixed_gallery=cfg.encoder == "text",
                        criterion=cfg.cirr_selection)
    params = [p for p in model.parameters() if p.requires_grad]
    header = runs.make_header(METHOD, "finetune", cfg, backbones.model_config(model.clip))
    trainer = Trainer(model, functools.partial(finetune_loss, inputs=cfg.sum_inputs), data,
                      config=_trainer_config(cfg, cfg.finetune, len(data), progress), out_dir=out / "finetune",
                      collate_fn=Collate(model.clip, cfg.preprocess), val_fn=val_fn, device=device,
                      param_groups=[dict(params=params, weight_decay=cfg.finetune.weight_decay)], header=header)
    result = trainer.fit(resume=resume)
    runs.record_stage(out, method=METHOD, config=cfg, stage="finetune", entry=runs.stage_entry(out, result))
    return result


def _train_combiner(cfg: CombinerConfig, out: Path, *, clip_ckpt: Path | None, root, resume: bool, device,
                    progress: bool) -> TrainResult:
    """Stage 2: the Combiner on precomputed features of the stage-1 CLIP (``clip_ckpt``), or of the frozen backbone
    when None. The checkpoint holds the Combiner and the path of its CLIP relative to itself."""
    clip = _stage_one_clip(cfg, clip_ckpt, device)
    source = load_triplets(cfg, "train", root=root)
    data = CachedTriplets(precompute(clip, source, preprocess=cfg.preprocess, texts=True, progress=progress))
    dim = backbones.clip_dims(clip).embed_dim
    torch.manual_seed(cfg.seed)  # the Combiner's initial weights depend on the seed only
    model = Combiner(dim, cfg.proj_dim, cfg.hidden_dim, dropout=cfg.dropout)
    bench = _subset(val_benchmark(cfg, root=root), cfg.combiner.eval_queries)
    val_fn = _validator(lambda m: CombinerRetriever(clip, m, preprocess=cfg.preprocess, device=device), bench,
                        fixed_gallery=True, criterion=cfg.cirr_selection)
    stage_dir = out / "combiner"
    clip_source = None if clip_ckpt is None else runs.relative(clip_ckpt, stage_dir)
    header = runs.make_header(METHOD, "combiner", cfg, dict(backbones.model_config(clip), dim=dim,
                                                            clip_checkpoint=clip_source))
    trainer = Trainer(model, combiner_loss, data, config=_trainer_config(cfg, cfg.combiner, len(data), progress),
                      out_dir=stage_dir, collate_fn=Collate(clip, cfg.preprocess), val_fn=val_fn, device=device,
                      param_groups=[dict(params=list(model.parameters()), weight_decay=cfg.combiner.weight_decay)],
                      header=header)
    result = trainer.fit(resume=resume)
    init = None if clip_ckpt is None else runs.relative(clip_ckpt, out)
    runs.record_stage(out, method=METHOD, config=cfg, stage="combiner", entry=runs.stage_entry(out, result, init=init))
    return result


def _stage_one_clip(cfg: CombinerConfig, clip_ckpt: Path | None, device) -> nn.Module:
    """The frozen CLIP of stage 2: a stage-1 checkpoint's (built without downloading weights, then loaded), or the
    configured backbone."""
    if clip_ckpt is None:
        return load_backbone(cfg, device=device).eval().requires_grad_(False)
    state = runs.read(clip_ckpt)
    saved = CombinerConfig.from_dict(state["header"]["config"])
    if state["header"]["stage"] != "finetune":
        raise ValueError(f"{clip_ckpt} is not a Combiner stage-1 (finetune) checkpoint.")
    if saved.backbone != cfg.backbone:
        raise ValueError(f"{clip_ckpt} fine-tuned {saved.backbone}, but this run is configured for {cfg.backbone}; "
                         "use a stage-1 run of the same backbone.")
    model = FineTuner(backbones.load_clip(saved.backbone), saved.encoder)  # architecture only: every weight is saved
    model.load_state_dict(state["model"])
    return model.clip.to(device).eval().requires_grad_(False)


def _flat(metrics: dict) -> dict:
    return {f"{g}/{m}": v for g, ms in metrics.items() for m, v in ms.items()}


# ----------------------------------------------------------------------------------------------------------------------
# The retrievers (gallery: normalised CLIP images; query: stage 1's sum, or the Combiner's fused feature)
# ----------------------------------------------------------------------------------------------------------------------


class SumRetriever(cir.CLIPRetriever):
    """Stage 1's query, :func:`sum_query` of the raw image and text features (the reference's form by default)."""

    method = "raw_sum"
    field_strip = {"fashioniq": ".?, "}  # each FashionIQ caption, as the reference does in training and evaluation

    def __init__(self, clip: nn.Module, *, inputs: str = "raw", prompts: dict | None = None,
                 preprocess: str = "target_pad", device: str | torch.device | None = None):
        super().__init__(clip, preprocess=preprocess, device=device)
        self.inputs = inputs
        self.prompts = cir.check_prompts(PROMPTS if prompts is None else prompts)

    @torch.no_grad()
    def raw_text(self, queries: Sequence[cir.CIRQuery]) -> torch.Tensor:
        tokens = backbones.tokenize(self.texts(queries), context_length=self.context_length).to(self.device)
        return backbones.encode_text(self.clip, tokens).float()  # [B, d], raw

    @torch.no_grad()
    def encode_query(self, image_feats: torch.Tensor, queries: Sequence[cir.CIRQuery]) -> torch.Tensor:
        return sum_query(image_feats, self.raw_text(queries), inputs=self.inputs)  # [B, d], normalised

    def describe(self) -> dict:
        return dict(super().describe(), prompts=dict(self.prompts), sum_inputs=self.inputs)


class CombinerRetriever(SumRetriever):
    method = "combiner"

    def __init__(self, clip: nn.Module, combiner: Combiner, *, prompts: dict | None = None,
                 preprocess: str = "target_pad", device: str | torch.device | None = None):
        super().__init__(clip, prompts=prompts, preprocess=preprocess, device=device)
        self.combiner = combiner.to(self.device).eval()

    @torch.no_grad()
    def encode_query(self, image_feats: torch.Tensor, queries: Sequence[cir.CIRQuery]) -> torch.Tensor:
        return self.combiner(image_feats.float(), self.raw_text(queries))  # [B, d], normalised

    def describe(self) -> dict:
        return dict(cir.CLIPRetriever.describe(self), prompts=dict(self.prompts),
                    checkpoint=getattr(self.combiner, "checkpoint_info", None))


# ----------------------------------------------------------------------------------------------------------------------
# Loading (a run folder holds finetune/ and combiner/)
# ----------------------------------------------------------------------------------------------------------------------


class CombinerModel(nn.Module):
    """A trained stage 2: the frozen CLIP its features came from and the Combiner."""

    def __init__(self, clip: nn.Module, combiner: Combiner, cfg: CombinerConfig):
        super().__init__()
        self.clip, self.combiner, self.cfg = clip, combiner, cfg


def load(run_or_checkpoint: str | Path, *, stage: str | None = None, device: str | torch.device | None = None
         ) -> FineTuner | CombinerModel:
    """The trained model of a stage (default: the run's last): ``finetune`` -> :class:`FineTuner` (its ``.clip`` is
    the fine-tuned CLIP); ``combiner`` -> :class:`CombinerModel`. Architectures are built without downloading
    weights where the run holds them all (stage 1; stage 2 on a stage-1 CLIP)."""
    path = runs.resolve_checkpoint(run_or_checkpoint, stage, method=METHOD)
    state = runs.read(path)
    header, device = state["header"], pick_device(device)
    cfg = CombinerConfig.from_dict(header["config"])
    info = dict(path=str(path), selected_on_val=state.get("selection"))
    if header["stage"] == "finetune":
        model = FineTuner(backbones.load_clip(cfg.backbone), cfg.encoder)  # architecture only
        model.load_state_dict(state["model"])
        model.checkpoint_info, model.cfg = info, cfg
        return model.to(device).eval()
    source = header["architecture"].get("clip_checkpoint")
    clip_ckpt = None if source is None else runs.resolve_relative(source, path.parent)
    if clip_ckpt is not None and not clip_ckpt.is_file():
        raise FileNotFoundError(f"{path} was trained on the stage-1 CLIP {clip_ckpt}, which is missing; move the "
                                "whole run folder (finetune/ and combiner/) together.")
    clip = _stage_one_clip(cfg, clip_ckpt, device)
    dim = backbones.clip_dims(clip).embed_dim
    if dim != header["architecture"]["dim"]:
        raise ValueError(f"{path} was trained on {header['architecture']['dim']}-d features, but its CLIP gives "
                         f"{dim}-d ones.")
    combiner = Combiner(dim, cfg.proj_dim, cfg.hidden_dim, dropout=cfg.dropout)
    combiner.load_state_dict(state["model"])
    combiner.checkpoint_info = info
    model = CombinerModel(clip, combiner, cfg).to(device).eval()
    model.checkpoint_info = info
    return model


def load_retriever(run_or_checkpoint: str | Path, *, method: str = "combiner",
                   device: str | torch.device | None = None) -> cir.CLIPRetriever:
    """``combiner``: the stage-2 model of a run; ``raw_sum``: stage 1's query on the run's CLIP; ``sum`` / ``image`` /
    ``text``: that zero-shot baseline on the run's CLIP (stage 1's fine-tuned one, or the frozen backbone of a
    Combiner-only run), with the Combiner's text prompts."""
    if method == "combiner":
        model = load(run_or_checkpoint, stage="combiner", device=device)
        return CombinerRetriever(model.clip, model.combiner, preprocess=model.cfg.preprocess, device=device)
    stage = "finetune" if _has_stage(run_or_checkpoint, "finetune") else "combiner"
    model = load(run_or_checkpoint, stage=stage, device=device)
    cfg = model.cfg  # the run's config, read with its checkpoint (not read a second time)
    if method == "raw_sum":
        return SumRetriever(model.clip, inputs=cfg.sum_inputs, preprocess=cfg.preprocess, device=device)
    return cir.Baseline(model.clip, method, prompts=PROMPTS, preprocess=cfg.preprocess, device=device)


def _has_stage(path: str | Path, stage: str) -> bool:
    try:
        runs.resolve_checkpoint(path, stage, method=METHOD)
    except (FileNotFoundError, ValueError):
        return False
    return True


# ----------------------------------------------------------------------------------------------------------------------
# The authors' released checkpoints (CLIP4Cir's Google Drive: the journal version's fine-tuned RN50x4 and Combiners)
# ----------------------------------------------------------------------------------------------------------------------

# The reference's training scripts save ``{"epoch": int, <class name>: state_dict}``: "CLIP" for the fine-tuned CLIP
# (OpenAI's parameter names, which open_clip's CLIP keeps), "Combiner" for the Combiner, whose layers are named
# differently from idclab's (same computation, [code]):
RELEASED_COMBINER_NAMES = {
    "text_projection_layer.": "text_proj.0.",  # Linear d -> p (then ReLU, Dropout)
    "image_projection_layer.": "image_proj.0.",  # Linear d -> p
    "combiner_layer.": "mixture.0.",  # Linear 2p -> h
    "output_layer.": "mixture.3.",  # Linear h -> d
    "dynamic_scalar.0.": "scalar.0.",  # Linear 2p -> h
    "dynamic_scalar.3.": "scalar.3.",  # Linear h -> 1 (then Sigmoid)
}
# Entries of OpenAI's CLIP state dicts that are settings, not weights (dropped before loading into open_clip's CLIP).
_OPENAI_SETTINGS = ("input_resolution", "context_length", "vocab_size")


def read_released(path: str | Path, key: str, *, trust: bool = False) -> dict[str, torch.Tensor]:
    """The state dict stored under ``key`` ("CLIP" or "Combiner") in a file saved by the reference's training
    scripts, with any DDP ``module.`` prefix removed.

    The file is read with ``weights_only=True``. One that holds other pickled Python objects is refused unless
    ``trust=True`` (``--trust-checkpoint``): unpickling can run code, so trust only a file from a source you trust,
    such as the authors' release.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No released checkpoint at {path}; download the authors' files first.")
    state = runs.load_released(path, trust=trust)
    if not isinstance(state, dict) or not isinstance(state.get(key), dict):
        found = sorted(state)[:8] if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path} has no {key!r} state dict (it holds {found}): not a CLIP4Cir {key} checkpoint "
                         "(the reference saves {'epoch': ..., 'CLIP': ...} and {'epoch': ..., 'Combiner': ...}).")
    return {k.removeprefix("module."): v for k, v in state[key].items()}


def released_kind(path: str | Path, *, trust: bool = False) -> str | None:
    """"Combiner" or "CLIP" for a file saved by the reference's training scripts; None for anything else (e.g. an
    idclab checkpoint, which has a header)."""
    try:
        state = runs.load_released(path, trust=trust)
    except (ValueError, OSError):  # unreadable, or pickled objects without trust (UnsafeCheckpointError)
        return None
    if not isinstance(state, dict) or "header" in state:
        return None
    return next((k for k in ("Combiner", "CLIP") if isinstance(state.get(k), dict)), None)


def combiner_from_released(state: dict[str, torch.Tensor]) -> Combiner:
    """An idclab :class:`Combiner` holding a reference ``Combiner`` state dict; its sizes (d, p, h) are read from the
    weights (the release: 640, 2560, 5120)."""
    renamed, unknown = {}, []
    for k, v in state.items():
        prefix = next((p for p in RELEASED_COMBINER_NAMES if k.startswith(p)), None)
        if prefix is None:
            unknown.append(k)
        else:
            renamed[RELEASED_COMBINER_NAMES[prefix] + k[len(prefix):]] = v.float()
    if unknown or "text_proj.0.weight" not in renamed or "mixture.0.weight" not in renamed:
        raise ValueError(f"Not a CLIP4Cir Combiner state dict: unexpected or missing keys {unknown[:5]} (expected "
                         f"{sorted(RELEASED_COMBINER_NAMES)}).")
    proj_dim, dim = renamed["text_proj.0.weight"].shape  # [p, d]
    hidden_dim = renamed["mixture.0.weight"].shape[0]  # [h, 2p]
    model = Combiner(dim, proj_dim, hidden_dim)
    model.load_state_dict(renamed)
    return model.eval()


def clip_from_released(state: dict[str, torch.Tensor], backbone: str | nn.Module = "RN50x4-quickgelu") -> nn.Module:
    """``backbone``'s architecture (an open_clip name, built without downloading weights, or a CLIP module) holding a
    reference ``CLIP`` state dict (OpenAI's names; fp16 weights become fp32)."""
    clip = backbones.load_clip(backbone) if isinstance(backbone, str) else backbone
    weights = {k: v.float() if v.is_floating_point() else v for k, v in state.items() if k not in _OPENAI_SETTINGS}
    own = clip.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shapes = [k for k in own if k in weights and weights[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise ValueError(f"The released CLIP does not fit {getattr(clip, 'idclab_name', type(clip).__name__)}: "
                         f"missing {missing[:3]}, unexpected {unexpected[:3]}, other shapes {shapes[:3]}. CLIP4Cir's "
                         "release is RN50x4: pass backbone='RN50x4-quickgelu' (--backbone RN50x4-quickgelu).")
    clip.load_state_dict(weights)
    return clip.eval().requires_grad_(False)


def load_released(combiner_file: str | Path, *, clip_file: str | Path | None = None,
                  backbone: str | nn.Module = "RN50x4-quickgelu", pretrained: str | None = "openai",
                  preprocess: str = "target_pad", trust: bool = False,
                  device: str | torch.device | None = None) -> CombinerRetriever:
    """A retriever from the authors' released files: the Combiner of ``combiner_file`` on the fine-tuned CLIP of
    ``clip_file`` (the journal version's pair for FashionIQ or CIRR), or, without ``clip_file``, on ``backbone``
    with ``pretrained`` weights (a Combiner trained on a frozen CLIP, the v1 recipe). Preprocessing: TargetPad
    1.25, as the release was trained. ``trust``: see :func:`read_released`.

    Evaluate it with ``idclab eval cir --method combiner --checkpoint COMBINER.pt --clip-checkpoint CLIP.pt
    --benchmark cirr --root ...`` (the same numbers as ``cir.evaluate(retriever, bench)``).
    """
    device = pick_device(device)
    combiner = combiner_from_released(read_released(combiner_file, "Combiner", trust=trust))
    if clip_file is not None:
        clip = clip_from_released(read_released(clip_file, "CLIP", trust=trust), backbone)
    elif isinstance(backbone, str):
        clip = backbones.load_clip(backbone, pretrained).eval().requires_grad_(False)
    else:
        clip = backbone.eval().requires_grad_(False)
    dim = backbones.clip_dims(clip).embed_dim
    if combiner.mixture[3].out_features != dim:
        raise ValueError(f"{combiner_file} combines {combiner.mixture[3].out_features}-d features, but the CLIP gives "
                         f"{dim}-d ones; pass the backbone it was trained on (CLIP4Cir's release: RN50x4-quickgelu).")
    combiner.checkpoint_info = dict(path=str(combiner_file), clip=None if clip_file is None else str(clip_file),
                                    released=True)
    return CombinerRetriever(clip.to(device), combiner, preprocess=preprocess, device=device)


# ----------------------------------------------------------------------------------------------------------------------
# Analysis: how the query sits between its target and the rest; what lambda learns
# ----------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def similarity_gap(retriever: cir.CLIPRetriever, bench: cir.CIRBenchmark, *, progress: bool = False
                   ) -> dict[str, np.ndarray]:
    """Cosine similarity of each query to its target and to every non-target gallery image (the reference image
    excluded), the paper's analysis of sum vs Combiner: {"target": [Q], "others": [Q * (G - 2)]}."""
    ranking = cir.rank(retriever, bench, k=1, progress=progress)
    target, others = [], []
    for g, rows in ranking.rows.items():
        pos = {n: i for i, n in enumerate(ranking.gallery_names[g])}
        sims = ranking.query_feats[g] @ ranking.gallery_feats[g].T  # [Q_g, G]
        for r, i in enumerate(rows):
            q = ranking.queries[i]
            keep = torch.ones(sims.shape[1], dtype=torch.bool, device=sims.device)
            t = pos[q.targets[0]]
            keep[t] = False
            if q.reference in pos:
                keep[pos[q.reference]] = False
            target.append(float(sims[r, t]))
            others.append(sims[r, keep].cpu().numpy())
    return {"target": np.array(target), "others": np.concatenate(others)}


@torch.no_grad()
def lambdas(retriever: CombinerRetriever, bench: cir.CIRBenchmark) -> dict[str, np.ndarray]:
    """lambda (the text's share of the residual) for every query, grouped by the benchmark's reporting groups."""
    names = cir.needed_images(bench)
    feats = cir.image_features(retriever, bench, names, progress=False)
    row = {n: i for i, n in enumerate(names)}
    out: dict[str, list[float]] = {}
    for s in range(0, len(bench.queries), 256):
        qs = list(bench.queries)[s:s + 256]
        _, lam = retriever.combiner.fuse(feats[[row[q.reference] for q in qs]], retriever.raw_text(qs))
        for q, v in zip(qs, lam[:, 0].tolist()):
            out.setdefault(q.group, []).append(v)
    return {g: np.array(v) for g, v in out.items()}
