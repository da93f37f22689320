"""CLIP4IDC: CLIP for image difference captioning -- the pair encoder, the adaptation stage and the captioner.

Paper: Guo, Wang, Laaksonen, "CLIP4IDC: CLIP for Image Difference Captioning", AACL-IJCNLP 2022 (arXiv 2206.00629).
Reference code: ``sushizixin/CLIP4IDC`` (commit ca49461). Comments tag where each fact comes from: [README] the
reference README and its scripts, [code] the reference code, [derived] computed from published counts; "IDC-N" is
trap N of the reference code, explained for readers in the book's appendix ``book/pitfalls.md``.

Differences from the reference code (the paper presets reproduce everything else; the book's appendix "Reproduction
notes" has the same list):

* Precision: fp32 master weights with bf16 / fp16 autocast, where the reference keeps CLIP's matrices in fp16 and
  updates them in place. With fp32 master weights the reference's nominal CLIP learning rate, 1e-7, would leave CLIP
  frozen, while in fp16 it acts far larger; so the CLIP rate is a tuned field, ``clip_lr`` (IDC-1).
* Checkpoints are chosen on the val split, never on test; validation every epoch and early stopping as in the
  reference, except that a tie does not count as a gain (IDC-2).
* The temperature is a fixed config value (0.01) and ``logit_scale`` is frozen. The reference trains it at 1e-7
  under a clamp at 100, which keeps it at 0.01 as well; its weight decay on the scale has no counterpart (IDC-12).
* The second class token sits at T = tokens per image, computed from the backbone, not at a hard-coded 50 (IDC-7).
* Caption padding is ignored with index -100, not 0, which is the BPE token "!" (IDC-14).
* Decoding stops at EOT and beam search works (with beam > 1 the greedy caption stays a candidate); the reference
  always runs 32 greedy steps (IDC-15). The decoder uses the causal mask alone: right padding follows EOT, so a
  padding mask would change nothing that is scored.
* The text tower is not run in stage 2 and is frozen there; the reference runs it on a dummy input whose output is
  unused (IDC-16).
* Gradient clipping on the global norm only. The reference also clips each parameter's gradient to norm 1 inside its
  optimiser, but after the global clip to 1 that never changes anything: no parameter's norm exceeds the global one
  (IDC-17).
* The tied token table is frozen for every dataset; the reference trains it (at 1e-7) for Spot-the-Diff only
  (IDC-19). The stage-2 demotion of the new pair parameters to the CLIP rate is kept, as an explicit ``pair_lr``
  (IDC-13).
* Every run is seeded, Spot-the-Diff too (IDC-4); random draws (distractor swap, which caption) are redrawn every
  epoch from a generator seeded by (seed, epoch, sample index), so runs repeat and exact resume holds. IER is not in
  the reference code: its presets are Spot-the-Diff's (IDC-5).
* Images with an alpha channel (CLEVR-Change's PNGs are RGBA) are composited on white; the reference drops the
  alpha channel. Both give the same pixels wherever an image is opaque.
* The optimiser: the paper presets reproduce the reference's BertAdam (no bias correction, weight decay on all but
  biases and the captioner's norms, warm-up then cosine / linear on whole-run progress: ``bias_correction``,
  ``decay_all``, ``schedule`` of :class:`StageConfig`), with the 10 % warm-up rounded to whole steps. The toy and
  smoke presets use AdamW's usual choices instead, with which their learning rates were chosen.

The method in three steps:

1. **Pair encoder** ([code]). One CLIP ViT looks at both images: its first ``k`` blocks run on each image alone
   ("intra"); the two token sequences then get a before/after embedding, are concatenated, get a joint positional
   embedding and a new LayerNorm, and the remaining blocks run on the pair ("inter"). ``ln_post`` and ``proj`` go on
   every token. The pair vector v is the mean of the two projected class tokens (token 0 and token T).
2. **Adaptation** (stage 1, [code]). Symmetric InfoNCE between pair vectors v and CLIP text features g of the change
   captions, temperature fixed at 0.01. CLEVR: with p = 0.5 the "before" image is swapped for its distractor ([code]).
3. **Captioning** (stage 2, [code]). A 3-layer post-LN Transformer encoder over the 2T projected visual tokens and a
   3-layer decoder whose layer i cross-attends to encoder layer i; word/position embeddings and the output projection
   are tied to CLIP's text token table. CLEVR: loss = loss(before->after, change caption) + loss(before->distractor,
   no-change caption).

Reading order: small blocks -> configs and presets -> pair encoder -> captioner (with decoding) -> the model ->
losses -> training data -> optimisation helpers -> retrieval evaluation -> checkpoint compatibility -> running it
(data, the two stages, caption evaluation, captioning your own pair).
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset
from tqdm.auto import tqdm

from idclab import backbones, runs, stats
from idclab.configs import from_dict, get_profile, pick_device, to_dict
from idclab.data import clevr_change, image_editing_request, shapes, spot_the_diff
from idclab.losses import symmetric_info_nce
from idclab.metrics.captioning import score_captions_by_group
from idclab.metrics.retrieval import recall_at_k, topk_search
from idclab.train import SCHEDULES, TrainConfig, Trainer, TrainResult, is_bias

__all__ = [
    "EncoderConfig", "DecoderConfig", "StageConfig", "CLIP4IDCConfig", "config_for", "DATASETS",
    "tokens_per_image", "PairEncoder", "PostLNLayer", "Captioner", "CLIP4IDC",
    "adaptation_loss", "captioning_loss", "caption_tensors", "PairSamples", "caption_counts", "PairCollate",
    "param_groups", "trainer_config", "encode_for_retrieval", "retrieval_scores", "evaluate_retrieval",
    "check_compatible", "load_pairs", "caption_pairs", "evaluate_captions", "STAGES", "train", "load", "caption",
    "evaluate", "ABLATION_ROWS", "ABLATION_CLAIMS", "ablate",
]

SOT, EOT = 49406, 49407  # CLIP BPE start / end of text (backbones.get_tokenizer)
METHOD = "clip4idc"
STAGES = ("adapt", "caption")
DATASETS = ("clevr", "spot", "ier", "shapes")
SAMPLINGS = ("per_caption", "per_pair")  # samples of an epoch (PairSamples): every (pair, caption), or one per pair
# [code]: always requires_grad=False (names inside open_clip's CLIP); logit_scale too, as tau is fixed (IDC-12).
FROZEN_CLIP_PARTS = ("visual.conv1", "visual.class_embedding", "visual.positional_embedding", "visual.ln_pre",
                     "token_embedding", "positional_embedding", "logit_scale")
TEXT_TOWER = ("transformer", "ln_final", "text_projection")  # unused in stage 2, hence frozen there (IDC-16)
NEW_PAIR_PARAMS = ("bef_embedding", "aft_embedding", "joint_positional_embedding", "ln_mid")  # [code]

# ----------------------------------------------------------------------------------------------------------------------
# Small blocks
# ----------------------------------------------------------------------------------------------------------------------


class PostLNLayer(nn.Module):
    """One BERT-style post-LN layer ([code]), with an optional cross-attention sub-layer (decoder):

        x = LN(x + Drop(SelfAttn(x)));  [x = LN(x + Drop(CrossAttn(x, memory)))];  x = LN(x + Drop(FFN(x)))
    """

    def __init__(self, width: int, heads: int, ffn: int, dropout: float, *, cross: bool, eps: float = 1e-12):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.cross_attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True) if cross else None
        self.ln_2 = nn.LayerNorm(width, eps=eps) if cross else None
        self.mlp = nn.Sequential(nn.Linear(width, ffn), nn.GELU(), nn.Linear(ffn, width))  # GELU (erf)
        self.ln_3 = nn.LayerNorm(width, eps=eps)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None = None, *,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:  # x: [B, L, W], memory: [B, N, W]
        x = self.ln_1(x + self.drop(self.self_attn(x, x, x, attn_mask=attn_mask, need_weights=False)[0]))
        if self.cross_attn is not None:
            x = self.ln_2(x + self.drop(self.cross_attn(x, memory, memory, need_weights=False)[0]))
        return self.ln_3(x + self.drop(self.mlp(x)))  # [B, L, W]


def causal_mask(n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """[n, n] bool, True where attention is forbidden (a position never sees a later one)."""
    return torch.ones(n, n, dtype=torch.bool, device=device).triu(1)


@contextlib.contextmanager
def _eval_mode(module: nn.Module):
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


# ----------------------------------------------------------------------------------------------------------------------
# Configs (paper defaults; each field cites its source) and presets
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncoderConfig:
    backbone: str = "ViT-B-32-quickgelu"  # [code] (plain "ViT-B-32" would build GELU for QuickGELU weights)
    pretrained: str | None = "openai"  # [code]
    intra_layers: int = 9  # [code]: blocks 0..8 per image, 9..11 joint (--intra_num_hidden_layers 9). 0: all joint;
    #                        = number of blocks: no joint block (the images meet only in ln_mid / the captioner)
    max_words: int = 32  # [README]: caption length for the text tower, SOT and EOT included
    temperature: float | None = 0.01  # [code]: clamped logit scale 100 trained at 1e-7 = a fixed tau (IDC-12);
    #                                   None: the backbone's own learned 1 / logit_scale, frozen (0.01 for OpenAI CLIP)
    frozen: tuple[str, ...] = FROZEN_CLIP_PARTS  # [code]

    def __post_init__(self):
        if self.intra_layers < 0 or (self.temperature is not None and self.temperature <= 0) or self.max_words < 2:
            raise ValueError("EncoderConfig: intra_layers must be >= 0, temperature > 0 (or None) and max_words >= 2.")


@dataclass(frozen=True)
class DecoderConfig:
    layers: int = 3  # [code] decoder_config.json num_decoder_layers (also the caption-encoder depth: layer-wise)
    width: int = 512  # [code] hidden 512 = CLIP ViT-B/32 embed dim = its text width (tied embeddings)
    heads: int = 8  # [code]
    ffn: int = 2048  # [code] intermediate size
    dropout: float = 0.1  # [code] (hidden and attention dropout)
    max_tokens: int = 32  # [code]: decoder input SOT + <= 31 words; target words + EOT
    ignore_index: int = -100  # IDC-14: the reference's 0 is the token "!"
    init_std: float = 0.02  # [code]: decoder-only weights N(0, 0.02)
    # Output bias at the start: "zeros" (the reference, [code]) or "unigram" = log of the training captions' smoothed
    # word frequencies (an old captioning trick). The tied output layer can only reach logits of about
    # |head(x)| * |token row|; with a narrow toy CLIP that is a few nats, so from zeros the model spends its first
    # thousands of steps pushing the 49,408 - ~100 unused words down through the bias alone.
    bias_init: str = "zeros"

    def __post_init__(self):
        if self.bias_init not in ("zeros", "unigram"):
            raise ValueError(f"DecoderConfig.bias_init must be 'zeros' or 'unigram', got {self.bias_init!r}.")
        if self.width % self.heads or self.layers < 1 or self.max_tokens < 2:
            raise ValueError(f"DecoderConfig: width {self.width} must divide into {self.heads} heads; layers >= 1; "
                             "max_tokens >= 2.")


@dataclass(frozen=True)
class StageConfig:
    """One training stage. Defaults: stage 1 (adaptation) on CLEVR-Change ([README])."""

    lr: float = 1e-4  # [README]: new modules (stage 1: bef/aft/joint/ln_mid; stage 2: the captioner)
    # The CLIP tower's lr is TUNED, not the reference's 1e-7: the reference updates fp16 weights in place with no fp32
    # master copy, so its nominal 1e-7 behaves like momentum-SGD at ~0.1 on many weights, while with fp32 master
    # weights 1e-7 effectively freezes CLIP (IDC-1). Sweep it, e.g. over {1e-6, 3e-6, 1e-5}; 3e-6 is
    # the middle of that sweep, not yet calibrated against CLEVR T->IP R@1 = 26.8.
    clip_lr: float = 3e-6
    pair_lr: float | None = None  # lr of bef/aft/joint/ln_mid; None: ``lr``. The reference demotes them to the CLIP
    #                               lr in stage 2 ([code], IDC-13); the stage-2 paper presets keep that choice
    weight_decay: float = 0.2  # reference scripts: stage 1 0.2, stage 2 0.01 (where it applies: decay_all)
    # The reference's optimiser is BERT's BertAdam (train.AdamNoBiasCorrection): no bias correction, and weight decay
    # on every trainable parameter except biases and the captioner's norms (it exempts names containing "bias" or
    # "LayerNorm", and only its BERT-style captioner names its norms so; CLIP's ln_* norms, the new embeddings and
    # the logit scale are decayed). The toy and smoke presets use AdamW's own choices (True, False).
    bias_correction: bool = False
    decay_all: bool = True  # False: decay on matrices only (not biases, norms, embeddings)
    warmup: float = 0.1  # reference: 10 % of the steps (rounded here to whole steps), linear from 0
    # Reference: stage 1 BERT's warmup_cosine, stage 2 warmup_linear, both on the whole-run progress (train._schedule)
    schedule: str = "cosine_whole_run"
    batch_size: int = 128  # [README]: stage 1 global 128; stage 2 16 (1 GPU, the 150.7 run). Per process in DDP
    epochs: int = 12  # [README]: stage 1 12 (CLEVR) / 20 (Spot); stage 2 at most 50 (early stopping: ``patience``)
    max_steps: int | None = None  # overrides epochs (toy / smoke profiles)
    betas: tuple[float, float] = (0.9, 0.98)  # [README]: stage 1 (0.9, 0.98); stage 2 (0.9, 0.999)
    eps: float = 1e-6  # [README] BertAdam eps
    max_grad_norm: float | None = 1.0  # [README] (global clipping only; the reference also clips per parameter, IDC-17)
    distractor_swap_p: float = 0.5  # [code]: stage 1 CLEVR, before := distractor with p = 0.5; 0 where no distractors
    no_change: bool = False  # [code]: stage 2 CLEVR adds the (before -> distractor, no-change caption) loss term
    samples: str = "per_caption"  # [code]: stage 1 makes one sample per (pair, caption) per epoch; stage 2
    #                               "per_pair": one per pair, its caption drawn each epoch ([code]); see PairSamples
    repeats: int = 1  # passes over those samples per epoch (1: the reference)
    seed: int = 0  # [README]: CLEVR stage 2 uses 2021; Spot is unseeded in the reference (IDC-4)
    freeze_clip: bool = False  # ablation: train only the new parts (pair parameters, captioner); CLIP stays as loaded
    eval_every: int | None = None  # steps between validations; None: every epoch (the reference, on val here:
    #                                IDC-2), or only at the end when max_steps is set. The best one is kept
    patience: int | None = None  # stop after this many validations in a row without a better val score (None:
    #                              never). [README]: stage 1 has none; stage 2 stops after 11 epochs without a gain
    eval_pairs: int | None = None  # validate on the first N val pairs (None: all)
    ckpt_every: int | None = None  # steps between resume files (None: at each validation, the end, on interrupt)

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"StageConfig: schedule {self.schedule!r} must be one of {SCHEDULES}.")
        if not 0.0 <= self.distractor_swap_p <= 1.0 or self.repeats < 1 or not 0.0 <= self.warmup < 1.0:
            raise ValueError("StageConfig: distractor_swap_p must lie in [0, 1], warmup in [0, 1), repeats >= 1.")
        if self.samples not in SAMPLINGS:
            raise ValueError(f"StageConfig: samples={self.samples!r}; choose one of {SAMPLINGS}.")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"StageConfig: patience={self.patience} must be >= 1 validations (None: no early stop).")


# [README], [code]: stage 2 on CLEVR-Change. pair_lr = clip_lr is the reference's demotion (IDC-13): change both.
_CAPTION_PAPER = StageConfig(pair_lr=StageConfig.clip_lr, weight_decay=0.01, schedule="linear_whole_run",
                             batch_size=16, epochs=50, betas=(0.9, 0.999), distractor_swap_p=0.0, no_change=True,
                             seed=2021, samples="per_pair", patience=11)  # patience: the reference stops once its
#                              counter of epochs without a gain (a tie counts as a gain) exceeds 10
# The toy and smoke presets keep AdamW's usual choices (bias correction, decay on matrices only, the cosine / linear
# schedules restarting after warm-up), with which their learning rates were chosen.
_ADAMW_CHOICES = dict(bias_correction=True, decay_all=False)


@dataclass(frozen=True)
class CLIP4IDCConfig:
    dataset: str = "clevr"  # one of DATASETS
    profile: str = "paper"  # "paper" | "toy" | "smoke" (idclab.configs.get_profile)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    adapt: StageConfig = field(default_factory=StageConfig)  # stage 1
    caption: StageConfig = field(default_factory=lambda: _CAPTION_PAPER)  # stage 2
    # Shapes world only: generated pairs per split (train, val, test); default = CLEVR-Change's scenes per split
    # ([derived] from its pair counts). Real datasets have their own sizes.
    shapes_pairs: tuple[int, int, int] = (33_830, 1_988, 3_985)
    precision: str = "auto"  # [README]: the reference trains in fp16; here AMP (bf16/fp16 autocast, fp32 master weights)
    ckpt_minutes: float | None = 10.0  # resume file every 10 minutes of training (a Colab disconnect loses less)
    num_workers: int | None = None  # DataLoader workers; None: min(8, CPUs) on CUDA, 0 on the CPU

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CLIP4IDCConfig:
        """Inverse of :meth:`to_dict` (nested parts included); refuses other classes and unknown fields."""
        data = dict(data)
        parts = dict(encoder=EncoderConfig, decoder=DecoderConfig, adapt=StageConfig, caption=StageConfig)
        nested = {k: from_dict(c, data.pop(k)) for k, c in parts.items() if k in data}
        return dataclasses.replace(from_dict(cls, data), **nested)


def config_for(dataset: str, profile: str | None = None, *, freeze_clip: bool | None = None,
               **options) -> CLIP4IDCConfig:
    """Preset configs: ``paper`` for ``clevr`` / ``spot`` / ``ier`` / ``shapes``; ``toy`` and ``smoke`` for ``shapes``.

    ``profile`` None reads ``$IDCLAB_PROFILE`` (default ``toy``). ``options``: the common ones of
    :func:`idclab.runs.apply_options` (``adapt_steps``, ``caption_steps`` for one stage); ``freeze_clip=True``: the
    ablation that keeps CLIP frozen while captioning.
    """
    cfg = runs.apply_options(_preset(dataset, get_profile(profile)), STAGES, **options)
    if freeze_clip is not None:
        cfg = dataclasses.replace(cfg, caption=dataclasses.replace(cfg.caption, freeze_clip=freeze_clip))
    return cfg


def _preset(dataset: str, profile: str) -> CLIP4IDCConfig:
    if dataset not in DATASETS:
        raise ValueError(f"Unknown dataset {dataset!r}; choose one of {DATASETS}.")
    if profile != "paper" and dataset != "shapes":
        raise ValueError(f"The {profile!r} profile runs on the Shapes world; use config_for('shapes', {profile!r}), "
                         f"or config_for({dataset!r}, 'paper') for the real data.")
    if profile == "paper":
        cfg = CLIP4IDCConfig(dataset=dataset, profile=profile)
        if dataset in ("spot", "ier"):  # Spot: no distractors, 20 adaptation epochs ([README]); unseeded there, 0 here.
            # IER: not published (not in the reference repo, IDC-5); same as Spot.
            cfg = dataclasses.replace(cfg, adapt=dataclasses.replace(cfg.adapt, epochs=20, distractor_swap_p=0.0),
                                      caption=dataclasses.replace(cfg.caption, no_change=False, seed=0))
        return cfg  # shapes: CLEVR's values (5 captions per pair: 5 stage-1 samples per pair and epoch)
    if profile == "lite":
        # The paper's architecture, OpenAI weights and hyperparameters on Shapes pairs rendered at the backbone's
        # 224 px, with fewer steps: a real pretrained CLIP adapted and captioning on a Colab GPU without a dataset
        # download (sized for about 10 minutes a chapter on a T4; not yet timed on a GPU). Tested with pretrained
        # None here (no network).
        cfg = CLIP4IDCConfig(dataset="shapes", profile="lite", shapes_pairs=(4000, 100, 500))
        return dataclasses.replace(
            cfg, adapt=dataclasses.replace(cfg.adapt, batch_size=64, epochs=1, max_steps=600, eval_every=200),
            caption=dataclasses.replace(cfg.caption, max_steps=1500, eval_every=500))
    if profile == "toy":
        # shapes-clip: ViT 4 blocks, width 128, 64 px, patch 8 -> T = 65; embed dim = text width = 128.
        # Toy values, not the paper's, chosen on Shapes *val* pairs for a 2-core CPU (measurements in the closing
        # notes of idclab's issue 3):
        # * 2 of 4 blocks joint (the paper: 3 of 12), tau = shapes-clip's own learned temperature (frozen, as the
        #   reference keeps CLIP's 1 / 100) and CLIP lr 5e-4: val T->IP R@1 (100 pairs) after 300 steps was 6.8 %,
        #   against 1.0-1.2 % with 1 or 2 joint blocks at tau 0.01 and CLIP lr 1e-4 (the factors were not isolated);
        # * the token table trains: shapes-clip never saw most words of change captions ("moved", "the", "now", ...),
        #   unlike OpenAI's CLIP, whose table the reference freezes ([code]). Val R@1 after 600 steps: 12.6 vs 10.8;
        # * learning rates near shapes-clip's pretraining lr (1e-3): a small CLIP trained from scratch for 2,500 steps
        #   must move much further than OpenAI's;
        # * the captioner's output bias starts from word frequencies (DecoderConfig.bias_init).
        frozen = tuple(p for p in FROZEN_CLIP_PARTS if p != "token_embedding")
        return CLIP4IDCConfig(
            dataset="shapes", profile="toy",
            encoder=EncoderConfig(backbone="shapes-clip", pretrained=None, intra_layers=2, temperature=None,
                                  frozen=frozen),
            decoder=DecoderConfig(layers=3, width=128, heads=4, ffn=512, bias_init="unigram"),
            adapt=StageConfig(lr=1e-3, clip_lr=5e-4, batch_size=32, max_steps=800, eval_every=200,
                              schedule="cosine", **_ADAMW_CHOICES),
            caption=dataclasses.replace(_CAPTION_PAPER, lr=1e-3, clip_lr=1e-4, pair_lr=1e-4, batch_size=16,
                                        max_steps=2000, seed=0, eval_every=250, patience=None, schedule="linear",
                                        **_ADAMW_CHOICES),
            shapes_pairs=(4000, 100, 500), ckpt_minutes=None)
    # smoke: idc-micro (random weights, ViT 2 blocks, width 32, 32 px, patch 8 -> T = 17; embed = text width = 32).
    return CLIP4IDCConfig(
        dataset="shapes", profile="smoke",
        encoder=EncoderConfig(backbone="idc-micro", pretrained=None, intra_layers=1),
        decoder=DecoderConfig(layers=2, width=32, heads=2, ffn=64),
        adapt=StageConfig(lr=1e-3, clip_lr=1e-4, batch_size=8, max_steps=4, schedule="cosine", **_ADAMW_CHOICES),
        caption=dataclasses.replace(_CAPTION_PAPER, lr=1e-3, clip_lr=1e-4, pair_lr=1e-4, batch_size=8, max_steps=4,
                                    schedule="linear", patience=None, **_ADAMW_CHOICES),
        shapes_pairs=(32, 8, 8), ckpt_minutes=None)


# ----------------------------------------------------------------------------------------------------------------------
# The pair encoder ([code])
# ----------------------------------------------------------------------------------------------------------------------


def tokens_per_image(clip: nn.Module) -> int:
    """T = 1 + grid**2 tokens per image (ViT-B/32 at 224: 50; B/16: 197). The class tokens of a pair sit at 0 and T."""
    return backbones.clip_dims(clip).tokens_per_image


class PairEncoder(nn.Module):
    """A CLIP ViT run the split way: blocks [0, k) per image, blocks [k, L) on the concatenated pair ([code]).

    ``intra_layers`` k may be 0 (every block sees the pair) up to L (no joint block: the images never attend to each
    other inside the encoder), both ablations; the reference uses 9 of ViT-B/32's 12.
    """

    def __init__(self, clip: nn.Module, *, intra_layers: int):
        super().__init__()
        dims = backbones.clip_dims(clip)
        if dims.tower != "vit":
            raise TypeError(f"CLIP4IDC's pair encoder splits a ViT's token sequence; this backbone's image tower is a "
                            f"{dims.tower}. Use a ViT backbone (e.g. ViT-B-32-quickgelu or shapes-clip).")
        n_blocks = dims.vision_blocks
        if not 0 <= intra_layers <= n_blocks:
            raise ValueError(f"intra_layers={intra_layers} must lie in [0, {n_blocks}] for this ViT of {n_blocks} "
                             f"blocks (the reference: 9 of 12).")
        width = dims.vision_width
        self.clip = clip
        self.intra_layers = intra_layers
        self.n_tokens = dims.tokens_per_image  # T
        scale = width ** -0.5  # [code]: the reference's init, width^-0.5 * randn
        self.bef_embedding = nn.Parameter(scale * torch.randn(width))  # [W]
        self.aft_embedding = nn.Parameter(scale * torch.randn(width))  # [W]
        self.joint_positional_embedding = nn.Parameter(scale * torch.randn(2 * self.n_tokens, width))  # [2T, W]
        self.ln_mid = nn.LayerNorm(width)  # ones / zeros

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """Pixels [B, 3, S, S] each -> all projected tokens of the pair [B, 2T, D] (before's first)."""
        x = self._joint_input(before, after)  # [B, 2T, W]
        x = backbones.vit_blocks(self.clip, x, self.intra_layers, None)  # [B, 2T, W] inter: the pair
        return backbones.vit_project(self.clip, x)  # [B, 2T, D]

    @torch.no_grad()
    def joint_attention(self, before: torch.Tensor, after: torch.Tensor) -> list[torch.Tensor]:
        """Attention weights of each joint block, averaged over heads: n_joint x [B, 2T, 2T] (query, key).

        Row q of a map is where token q looks; keys [0, T) are the before image's tokens, [T, 2T) the after image's.
        """
        x = self._joint_input(before, after)  # [B, 2T, W]
        maps = []
        for index in range(self.intra_layers, backbones.clip_dims(self.clip).vision_blocks):
            x, weights = backbones.vit_block_attention(self.clip, x, index)  # [B, 2T, W], [B, 2T, 2T]
            maps.append(weights)
        return maps

    def _joint_input(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """Intra blocks per image, then before/after embeddings, concatenation, joint positions, ln_mid: [B, 2T, W]."""
        size = backbones.image_size(self.clip)
        if before.shape != after.shape or before.ndim != 4 or before.shape[1:] != (3, size, size):
            raise ValueError(f"before and after must both be pixels [B, 3, {size}, {size}]; got {tuple(before.shape)} "
                             f"and {tuple(after.shape)}. Convert images with backbones.to_pixels(images, {size}).")
        B = before.shape[0]
        x = backbones.vit_embed(self.clip, torch.cat([before, after]))  # [2B, T, W]
        x = backbones.vit_blocks(self.clip, x, 0, self.intra_layers)  # [2B, T, W] intra: each image alone
        T, W = x.shape[1:]
        x = x.view(2, B, T, W).transpose(0, 1)  # [B, 2, T, W]
        x = x + torch.stack([self.bef_embedding, self.aft_embedding])[None, :, None, :]  # [B, 2, T, W]
        x = x.reshape(B, 2 * T, W) + self.joint_positional_embedding  # [B, 2T, W]
        return self.ln_mid(x)

    @staticmethod
    def pool(tokens: torch.Tensor) -> torch.Tensor:
        """Pair vector v = mean of the two projected class tokens: [B, 2T, D] -> [B, D] (tokens 0 and T, [code])."""
        T = tokens.shape[1] // 2
        return (tokens[:, 0] + tokens[:, T]) / 2


# ----------------------------------------------------------------------------------------------------------------------
# The captioner ([code])
# ----------------------------------------------------------------------------------------------------------------------


class Captioner(nn.Module):
    """Layer-wise encoder-decoder over the pair's projected tokens, embeddings tied to CLIP's text token table.

    ``token_embedding`` / ``positional_embedding`` are CLIP's own modules / Parameters (shared, not copied), so the
    captioner's input embeddings, output projection and position table are CLIP's (frozen by default, [code]).
    """

    def __init__(self, cfg: DecoderConfig, token_embedding: nn.Embedding, positional_embedding: nn.Parameter):
        super().__init__()
        vocab, width = token_embedding.weight.shape
        if width != cfg.width:
            raise ValueError(f"The captioner ties its embeddings to CLIP's token table of width {width}, so "
                             f"DecoderConfig.width must be {width} (got {cfg.width}).")
        if positional_embedding.shape[0] < cfg.max_tokens:
            raise ValueError(f"CLIP's text context has {positional_embedding.shape[0]} positions; lower "
                             f"DecoderConfig.max_tokens ({cfg.max_tokens}) to at most that.")
        self.cfg = cfg
        self.token_embedding = token_embedding  # tied: [V, W]
        self.positional_embedding = positional_embedding  # tied: [context, W]
        self.ln_embed = nn.LayerNorm(width, eps=1e-12)
        self.drop = nn.Dropout(cfg.dropout)
        args = (width, cfg.heads, cfg.ffn, cfg.dropout)
        self.encoder = nn.ModuleList(PostLNLayer(*args, cross=False) for _ in range(cfg.layers))
        self.decoder = nn.ModuleList(PostLNLayer(*args, cross=True) for _ in range(cfg.layers))
        self.head = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.LayerNorm(width, eps=1e-12))
        self.head_bias = nn.Parameter(torch.zeros(vocab))  # [V] free bias; the weight is the tied token table
        for module in (*self.encoder, *self.decoder, self.head):  # never the tied CLIP tables
            for m in module.modules():
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=cfg.init_std)
                    nn.init.zeros_(m.bias)
                elif isinstance(m, nn.MultiheadAttention):
                    nn.init.normal_(m.in_proj_weight, std=cfg.init_std)
                    nn.init.zeros_(m.in_proj_bias)

    @torch.no_grad()
    def init_bias_from(self, captions: Sequence[str], *, smoothing: float = 1e-3) -> None:
        """Output bias := log of smoothed target-token frequencies (word tokens + EOT) of ``captions``."""
        _, targets = caption_tensors(captions, max_tokens=self.cfg.max_tokens)  # [N, L], -100 on padding
        tokens = targets[targets >= 0]
        counts = torch.bincount(tokens, minlength=self.head_bias.numel()).double() + smoothing
        self.head_bias.copy_((counts / counts.sum()).log().to(self.head_bias.dtype))

    def encode(self, visual: torch.Tensor) -> list[torch.Tensor]:
        """[B, 2T, D] -> the output of every encoder layer, n_layers x [B, 2T, D] (no extra positions, [code])."""
        outs = []
        for layer in self.encoder:
            visual = layer(visual)
            outs.append(visual)
        return outs

    def decode(self, memories: Sequence[torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
        """Token ids [B, L] (SOT first) -> next-token logits [B, L, V]; decoder layer i reads encoder layer i."""
        L = ids.shape[1]
        x = self.token_embedding(ids) + self.positional_embedding[:L]  # [B, L, W]
        x = self.drop(self.ln_embed(x))
        mask = causal_mask(L, ids.device)  # right padding sits after EOT, so the causal mask also hides it
        for layer, memory in zip(self.decoder, memories):
            x = layer(x, memory, attn_mask=mask)  # [B, L, W]
        return self.head(x) @ self.token_embedding.weight.T + self.head_bias  # [B, L, V]

    def forward(self, visual: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(visual), ids)

    def greedy(self, memories: Sequence[torch.Tensor], max_len: int) -> list[tuple[list[int], float]]:
        """Greedy decoding of a batch: per item (token ids without SOT/EOT, mean log-prob per generated token)."""
        B, device = memories[0].shape[0], memories[0].device
        ids = torch.full((B, 1), SOT, dtype=torch.long, device=device)  # [B, 1]
        total = torch.zeros(B, device=device)
        length = torch.zeros(B, device=device)
        done = torch.zeros(B, dtype=torch.bool, device=device)
        for _ in range(max_len):
            logp = self.decode(memories, ids)[:, -1].float().log_softmax(-1)  # [B, V]
            nxt = logp.argmax(-1)  # [B]
            total += torch.where(done, 0.0, logp.gather(1, nxt[:, None])[:, 0])
            length += (~done).float()
            ids = torch.cat([ids, torch.where(done, EOT, nxt)[:, None]], dim=1)
            done |= nxt == EOT
            if bool(done.all()):
                break
        out = []
        for row, t, n in zip(ids[:, 1:].tolist(), total.tolist(), length.tolist()):
            out.append((row[:row.index(EOT)] if EOT in row else row, t / n))
        return out

    def beam_search(self, memories: Sequence[torch.Tensor], beam: int, max_len: int) -> tuple[list[int], float]:
        """Beam search for ONE item (memories n_layers x [1, N, D]); score = log-prob / generated tokens (EOT counted).

        Each step keeps the ``beam`` best extensions of the live hypotheses; those ending in EOT are set aside as
        finished; the search stops when ``beam`` hypotheses have finished. With beam = 1 this is greedy decoding.
        """
        device = memories[0].device
        alive = torch.full((1, 1), SOT, dtype=torch.long, device=device)  # [n, 1 + t]
        alive_score = torch.zeros(1, device=device)  # [n] summed log-probs
        finished: list[tuple[float, list[int]]] = []
        for step in range(max_len):
            mem = [m.expand(alive.shape[0], -1, -1) for m in memories]
            logp = self.decode(mem, alive)[:, -1].float().log_softmax(-1)  # [n, V]
            scores, flat = (alive_score[:, None] + logp).flatten().topk(beam)  # [beam]
            rows, toks = flat // logp.shape[1], flat % logp.shape[1]
            is_end = toks == EOT
            for s, r in zip(scores[is_end].tolist(), rows[is_end].tolist()):
                finished.append((s / (step + 1), alive[r, 1:].tolist()))
            if len(finished) >= beam or bool(is_end.all()):
                break
            keep = ~is_end
            alive = torch.cat([alive[rows[keep]], toks[keep][:, None]], dim=1)
            alive_score = scores[keep]
        else:  # max_len reached: the live hypotheses end unfinished
            finished += [(s / max_len, row[1:]) for s, row in zip(alive_score.tolist(), alive.tolist())]
        score, ids = max(finished, key=lambda f: f[0])
        return ids, score


# ----------------------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------------------


class CLIP4IDC(nn.Module):
    """The pair encoder and CLIP's text tower (stage ``"adapt"``), plus the captioner (stage ``"caption"``).

    Train with ``Trainer(model, CLIP4IDC.loss, PairSamples(...), collate_fn=model.collate(), param_groups=
    param_groups(model, cfg.adapt), extra=dict(model=model.model_config(), config=cfg.to_dict()))``. Start stage 2
    from a stage-1 checkpoint with :meth:`load_adapted` (the captioner stays fresh).
    """

    def __init__(self, cfg: CLIP4IDCConfig, *, stage: str = "adapt", clip: nn.Module | None = None):
        super().__init__()
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}.")
        enc = cfg.encoder
        if clip is None:
            clip = backbones.load_clip(enc.backbone, enc.pretrained)
        else:
            wanted, got = backbones.resolve_model_name(enc.backbone, enc.pretrained), getattr(clip, "idclab_name", None)
            if got is not None and got != wanted:
                raise ValueError(f"The config asks for backbone {wanted!r} but the given CLIP is {got!r}; pass "
                                 "clip=None or a config with that backbone.")
        self.cfg, self.stage = cfg, stage
        self.encoder = PairEncoder(clip, intra_layers=enc.intra_layers)
        self.captioner = None
        if stage == "caption":
            dims = backbones.clip_dims(clip)
            embed_dim = dims.embed_dim
            if dims.text_width != embed_dim:
                raise ValueError(
                    f"This backbone's text width ({dims.text_width}) differs from its embed dim "
                    f"({embed_dim}): the captioner reads {embed_dim}-d visual tokens with embeddings tied to the "
                    "token table, as in the reference (512 = 512 for ViT-B/32). Use a CLIP whose two widths match.")
            self.captioner = Captioner(cfg.decoder, backbones.token_embedding(clip),
                                       backbones.text_positional_embedding(clip))
        frozen = tuple(enc.frozen) + (TEXT_TOWER if stage == "caption" else ())
        if getattr(cfg, stage).freeze_clip:
            frozen = tuple(name for name, _ in clip.named_parameters())
        for part in frozen:
            hits = [p for n, p in clip.named_parameters() if n == part or n.startswith(part + ".")]
            if not hits:
                raise ValueError(f"Frozen part {part!r} matches no CLIP parameter; fix EncoderConfig.frozen.")
            for p in hits:
                p.requires_grad_(False)

    @property
    def clip(self) -> nn.Module:
        return self.encoder.clip

    @property
    def temperature(self) -> float:
        """tau of the adaptation loss: the config's, or (None) the backbone's frozen ``1 / logit_scale.exp()``."""
        tau = self.cfg.encoder.temperature
        return float(1.0 / backbones.logit_scale(self.clip).exp()) if tau is None else tau

    def encode_pair(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """Pair vectors v: pixels [B, 3, S, S] x 2 -> [B, D] (not normalised)."""
        return PairEncoder.pool(self.encoder(before, after))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Caption vectors g: ids [B, context] from :func:`backbones.tokenize` (max_words=32) -> [B, D] (EOT token)."""
        return self.clip.encode_text(tokens)

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """The stage's loss: :func:`adaptation_loss` or :func:`captioning_loss`."""
        return adaptation_loss(self, batch) if self.stage == "adapt" else captioning_loss(self, batch)

    def collate(self) -> PairCollate:
        """The collate function that turns :class:`PairSamples` items into this model's batches."""
        dims = backbones.clip_dims(self.clip)
        return PairCollate(stage=self.stage, image_size=dims.image_size, context_length=dims.context_length,
                           max_words=self.cfg.encoder.max_words, max_tokens=self.cfg.decoder.max_tokens,
                           ignore_index=self.cfg.decoder.ignore_index)

    # -- decoding ------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate_ids(self, before: torch.Tensor, after: torch.Tensor, *, beam: int = 1,
                     max_len: int | None = None) -> list[tuple[list[int], float]]:
        """Per pair: (token ids without SOT/EOT, log-prob per generated token). Runs in eval mode.

        beam = 1 is greedy. With beam > 1 the greedy caption is also a candidate, so the result never scores below
        greedy (plain beam search can prune greedy's path and end lower).
        """
        if self.captioner is None:
            raise RuntimeError("This is a stage-1 (adaptation) model, which has no captioner: use the captioning "
                               "stage's checkpoint (RUN/caption/best.pt) or build CLIP4IDC(cfg, stage='caption').")
        max_len = self.cfg.decoder.max_tokens if max_len is None else max_len
        if not 1 <= max_len <= self.cfg.decoder.max_tokens or beam < 1:
            raise ValueError(f"max_len must lie in [1, {self.cfg.decoder.max_tokens}] and beam >= 1.")
        with _eval_mode(self):
            memories = self.captioner.encode(self.encoder(before, after))  # n_layers x [B, 2T, D]
            greedy = self.captioner.greedy(memories, max_len)
            if beam == 1:
                return greedy
            out = []
            for b, g in enumerate(greedy):
                found = self.captioner.beam_search([m[b:b + 1] for m in memories], beam, max_len)
                out.append(max([found, g], key=lambda r: r[1]))
            return out

    def generate(self, before: torch.Tensor, after: torch.Tensor, *, beam: int = 1, max_len: int | None = None
                 ) -> list[str]:
        """One caption per pair of pixels [B, 3, S, S] (use :func:`backbones.to_pixels`), decoded with CLIP's BPE."""
        decode = backbones.get_tokenizer().decode
        return [decode(ids).strip() for ids, _ in self.generate_ids(before, after, beam=beam, max_len=max_len)]

    # -- checkpoints ---------------------------------------------------------------------------------------------------

    def model_config(self) -> dict:
        """JSON-able architecture record; store it next to checkpoints and check it with :func:`check_compatible`."""
        dims = backbones.clip_dims(self.clip)
        encoder = dict(backbone=backbones.model_config(self.clip)["name"], embed_dim=dims.embed_dim,
                       width=dims.vision_width, image_size=dims.image_size, blocks=dims.vision_blocks,
                       tokens_per_image=self.encoder.n_tokens, intra_layers=self.encoder.intra_layers,
                       context_length=dims.context_length)
        d = self.cfg.decoder
        decoder = None if self.captioner is None else dict(layers=d.layers, width=d.width, heads=d.heads, ffn=d.ffn,
                                                           max_tokens=d.max_tokens)
        return dict(model="CLIP4IDC", encoder=encoder, decoder=decoder)

    def load_adapted(self, state_dict: dict, *, saved_config: dict | None = None) -> None:
        """Load a stage-1 state dict (``load_checkpoint(path)["model"]``); the captioner keeps its fresh weights."""
        if saved_config is not None:
            check_compatible(saved_config, self.model_config())
        state = {k: v for k, v in state_dict.items() if not k.startswith("captioner.")}
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("captioner.")]
        if missing or unexpected:
            raise ValueError(f"Not a CLIP4IDC state dict of this architecture: missing {missing[:5]}, unexpected "
                             f"{unexpected[:5]}.")


# ----------------------------------------------------------------------------------------------------------------------
# Losses (usable as Trainer loss_fn)
# ----------------------------------------------------------------------------------------------------------------------


def adaptation_loss(model: CLIP4IDC, batch: dict) -> tuple[torch.Tensor, dict]:
    """Stage 1 ([code]): L = (L_IP->T + L_T->IP) / 2 on cos(v, g) / tau, negatives gathered across GPUs."""
    v = model.encode_pair(batch["before"], batch["after"])  # [B, D]
    g = model.encode_text(batch["text"])  # [B, D]
    out = symmetric_info_nce(v, g, scale=1.0 / model.temperature, gather=True)
    return out.loss, {"ip_t": out.ip_t.item(), "t_ip": out.t_ip.item()}


def captioning_loss(model: CLIP4IDC, batch: dict) -> tuple[torch.Tensor, dict]:
    """Stage 2 ([code]): token cross-entropy; with a distractor in the batch, + the no-change pair's loss.

    Both pairs go through one forward pass; each term is a mean over its own non-padding tokens, as the reference's
    two passes.
    """
    if model.captioner is None:
        raise RuntimeError("captioning_loss needs CLIP4IDC(cfg, stage='caption').")
    before, after = batch["before"], batch["after"]
    inputs, targets = batch["caption_input"], batch["caption_target"]  # [B, L] each
    B, no_change = before.shape[0], "distractor" in batch
    if no_change:
        before, after = torch.cat([before, before]), torch.cat([after, batch["distractor"]])  # [2B, 3, S, S]
        inputs = torch.cat([inputs, batch["no_change_input"]])  # [2B, L]
        targets = torch.cat([targets, batch["no_change_target"]])
    logits = model.captioner(model.encoder(before, after), inputs)  # [B or 2B, L, V]
    ignore = model.cfg.decoder.ignore_index

    def ce(lo: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(lo.flatten(0, 1).float(), t.flatten(), ignore_index=ignore)

    change = ce(logits[:B], targets[:B])
    if not no_change:
        return change, {"change": change.item()}
    nochange = ce(logits[B:], targets[B:])
    return change + nochange, {"change": change.item(), "no_change": nochange.item()}


# ----------------------------------------------------------------------------------------------------------------------
# Training data: samples deterministic per index, and collation
# ----------------------------------------------------------------------------------------------------------------------


def caption_tensors(captions: Sequence[str], *, max_tokens: int = 32, ignore_index: int = -100
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forcing tensors ([code]): input = SOT + words (<= max_tokens - 1), target = words + EOT.

    Longer captions are cut to max_tokens - 1 words (EOT kept), as the reference does; empty ones are refused.

    Returns (inputs, targets), LongTensors [N, L] with L the longest in the batch; inputs padded with 0, targets with
    ``ignore_index`` (by position, so a real "!" -- id 0 -- is still a target).
    """
    empty = [i for i, c in enumerate(captions) if not c.strip()]
    if empty:
        raise ValueError(f"Captions {empty[:5]} are empty: a captioner cannot learn from them. Remove them from the "
                         "annotations (the data scripts' verify command lists suspicious entries) or fix the loader.")
    ids = backbones.tokenize(list(captions), context_length=max_tokens + 1, max_words=max_tokens + 1)  # [N, M+1]
    eot = (ids == EOT).int().argmax(1)  # [N] position of EOT = number of input tokens
    valid = torch.arange(max_tokens)[None, :] < eot[:, None]  # [N, M]
    inputs = torch.where(valid, ids[:, :-1], 0)
    targets = torch.where(valid, ids[:, 1:], ignore_index)
    L = int(eot.max())
    return inputs[:, :L], targets[:, :L]


class PairSamples(Dataset):
    """Training samples from an IDC pair dataset (items like ``ShapesPairs``': before, after, distractor, captions,
    no_change_captions, id), one epoch at a time, made as the reference's loaders make them.

    ``samples="per_caption"`` (stage 1, [code]): every (pair, caption) is one sample of every epoch, so an epoch has
    as many samples as the split has captions. ``samples="per_pair"`` (stage 2, [code]): one sample per pair and epoch,
    with one of its captions drawn at random. ``repeats`` > 1 lists those samples that many times per epoch (1: the
    reference). Stage 1 ([code]): with probability ``distractor_swap_p`` "before" becomes the distractor, the change
    caption kept. Stage 2 with ``no_change``: the sample also carries the distractor and a random no-change caption.

    Every random draw (which caption, the swap, which no-change caption) is made afresh each epoch, from
    ``default_rng([seed, epoch, i])``: sample ``i`` is a deterministic function of (seed, epoch, i). The Trainer
    calls :meth:`set_epoch` before each epoch (and before a resumed one), so exact resume holds.
    """

    def __init__(self, pairs: Dataset, *, samples: str = "per_caption", repeats: int = 1,
                 distractor_swap_p: float = 0.0, no_change: bool = False, seed: int = 0):
        if samples not in SAMPLINGS:
            raise ValueError(f"PairSamples: samples={samples!r}; choose one of {SAMPLINGS}.")
        if len(pairs) < 1 or repeats < 1 or not 0.0 <= distractor_swap_p <= 1.0:
            raise ValueError("PairSamples needs a non-empty dataset, repeats >= 1 and distractor_swap_p in [0, 1].")
        self.pairs, self.samples, self.repeats, self.swap_p, self.no_change, self.seed = \
            pairs, samples, repeats, distractor_swap_p, no_change, seed
        self.epoch = 0
        counts = np.asarray(caption_counts(pairs) if samples == "per_caption" else [1] * len(pairs))  # [P]
        if (counts < 1).any():
            raise ValueError(f"Pair {int(np.argmin(counts))} has no captions; PairSamples needs items with a "
                             "non-empty 'captions' list.")
        # The units of one pass, caption k of every pair before caption k + 1 of any (so with equal counts unit u
        # shows pair u % P): pair index [U] and caption index [U] (-1: draw one).
        k, p = np.nonzero(np.arange(counts.max())[:, None] < counts[None, :])  # [U] each, row-major = k-major
        self.unit_pair = p
        self.unit_caption = k if samples == "per_caption" else np.full_like(k, -1)

    @classmethod
    def for_stage(cls, pairs: Dataset, stage: StageConfig) -> PairSamples:
        return cls(pairs, samples=stage.samples, repeats=stage.repeats, distractor_swap_p=stage.distractor_swap_p,
                   no_change=stage.no_change, seed=stage.seed)

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's captions and swaps (called by the Trainer at the start of every epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.unit_pair) * self.repeats

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range for {len(self)} samples")
        u = i % len(self.unit_pair)
        p, k = int(self.unit_pair[u]), int(self.unit_caption[u])
        item = self.pairs[p]
        if not item.get("captions"):
            raise ValueError(f"Pair {p} has no captions; PairSamples needs items with a non-empty 'captions' list.")
        if (self.swap_p > 0 or self.no_change) and "distractor" not in item:
            raise KeyError("This dataset has no distractor images (Spot-the-Diff, IER): set distractor_swap_p=0 and "
                           "no_change=False.")
        u_caption, u_swap, u_no_change = np.random.default_rng([self.seed, self.epoch, i]).random(3)
        caps = item["captions"]
        caption = caps[k] if k >= 0 else caps[int(u_caption * len(caps))]
        swap = bool(u_swap < self.swap_p)
        out = dict(before=item["distractor"] if swap else item["before"], after=item["after"], caption=caption,
                   swapped=swap, pair=p, id=item.get("id", p))
        if self.no_change:
            nc = item["no_change_captions"]
            out.update(distractor=item["distractor"], no_change_caption=nc[int(u_no_change * len(nc))])
        return out


def caption_counts(pairs: Dataset) -> list[int]:
    """Captions per pair, in dataset order; from ``references()`` where the dataset has it (no image is read)."""
    if hasattr(pairs, "references"):
        gts = pairs.references(with_no_change=False)[0]
        if len(gts) == len(pairs):  # one entry per pair, in pair order
            return [len(refs) for refs in gts.values()]
    return [len(pairs[p]["captions"]) for p in range(len(pairs))]


@dataclass(frozen=True)
class PairCollate:
    """:class:`PairSamples` items -> a batch of tensors for :meth:`CLIP4IDC.loss` (picklable, for DataLoader workers).

    Images: any size / mode; each is converted by :func:`backbones.to_pixels` -- RGB, squashed to ``image_size``
    bicubic without crop (the reference's preprocessing), so before and after may differ in size.
    """

    stage: str
    image_size: int
    context_length: int = 77
    max_words: int = 32
    max_tokens: int = 32
    ignore_index: int = -100

    def __call__(self, items: Sequence[dict]) -> dict[str, torch.Tensor]:
        if "caption" not in items[0]:
            raise KeyError("Items need a 'caption'; wrap the pair dataset in PairSamples(...) to pick one per sample.")

        def pixels(key: str) -> torch.Tensor:  # [B, 3, S, S]
            return backbones.to_pixels([it[key] for it in items], self.image_size)

        batch = dict(before=pixels("before"), after=pixels("after"))
        captions = [it["caption"] for it in items]
        empty = [it.get("id") for it in items if not it["caption"].strip()]
        if empty:
            raise ValueError(f"Samples of pairs {empty[:5]} have an empty caption; remove it from the annotations.")
        if self.stage == "adapt":
            batch["text"] = backbones.tokenize(captions, context_length=self.context_length, max_words=self.max_words)
            return batch
        with_nc = ["no_change_caption" in it for it in items]
        if any(with_nc) and not all(with_nc):
            raise ValueError("Some samples carry a no-change pair and some do not; use one PairSamples setting.")
        if all(with_nc):
            captions += [it["no_change_caption"] for it in items]
            batch["distractor"] = pixels("distractor")
        inputs, targets = caption_tensors(captions, max_tokens=self.max_tokens, ignore_index=self.ignore_index)
        B = len(items)
        batch.update(caption_input=inputs[:B], caption_target=targets[:B])
        if all(with_nc):
            batch.update(no_change_input=inputs[B:], no_change_target=targets[B:])
        return batch


# ----------------------------------------------------------------------------------------------------------------------
# Optimisation helpers
# ----------------------------------------------------------------------------------------------------------------------


def param_groups(model: CLIP4IDC, stage: StageConfig) -> list[dict]:
    """Optimiser groups, as the reference's: the captioner at ``lr``; bef/aft/joint/ln_mid at ``pair_lr`` (None:
    ``lr``); the rest of CLIP at ``clip_lr``. Frozen parts are left out. Weight decay with ``stage.decay_all``
    (the reference): on everything except biases and the captioner's LayerNorms; without it: on matrices only (not
    biases, norms, embeddings)."""
    lrs = dict(new=stage.lr, pair=stage.lr if stage.pair_lr is None else stage.pair_lr, clip=stage.clip_lr)
    captioner = model.captioner.modules() if model.captioner is not None else ()
    captioner_norms = {id(p) for m in captioner if isinstance(m, nn.LayerNorm) for p in m.parameters()}
    groups: dict[tuple[str, bool], list] = {}
    for name, p in model.named_parameters():  # tied tables are listed once, under their CLIP name
        if not p.requires_grad:
            continue
        part = ("new" if name.startswith("captioner.") else
                "pair" if name.split(".")[1] in NEW_PAIR_PARAMS else "clip")
        if stage.decay_all:
            decay = not is_bias(name) and id(p) not in captioner_norms
        else:
            decay = p.ndim >= 2 and "embedding" not in name
        groups.setdefault((part, decay), []).append(p)
    return [dict(params=ps, lr=lrs[part], weight_decay=stage.weight_decay if decay else 0.0,
                 name=f"{part}/{'decay' if decay else 'no_decay'}") for (part, decay), ps in groups.items()]


def _every(value: int | None, default: int | None) -> int | None:
    """A step interval: None takes ``default``; 0 means at the end only (the Trainer skips a falsy interval)."""
    return default if value is None else (value or None)


def trainer_config(stage: StageConfig, n_samples: int, **overrides) -> TrainConfig:
    """The Trainer settings of a stage: steps from ``max_steps`` or epochs over ``n_samples``, warm-up, schedule."""
    steps_per_epoch = n_samples // stage.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"{n_samples} samples do not fill one batch of {stage.batch_size}; lower batch_size.")
    default = stage.epochs * steps_per_epoch if stage.max_steps is None else stage.max_steps
    max_steps = overrides.pop("max_steps", default)
    settings = dict(max_steps=max_steps, batch_size=stage.batch_size, lr=stage.lr, weight_decay=stage.weight_decay,
                    betas=stage.betas, eps=stage.eps, warmup_steps=round(stage.warmup * max_steps),
                    schedule=stage.schedule, max_grad_norm=stage.max_grad_norm, seed=stage.seed,
                    bias_correction=stage.bias_correction, decay_all=stage.decay_all,
                    eval_every=_every(stage.eval_every, None if stage.max_steps is not None else steps_per_epoch),
                    patience=stage.patience)
    return TrainConfig(**{**settings, **overrides})


# ----------------------------------------------------------------------------------------------------------------------
# Retrieval evaluation ([code])
# ----------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def encode_for_retrieval(model: CLIP4IDC, pairs: Dataset, *, batch_size: int = 64
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (pair vectors [P, D], caption vectors [C, D], pair index of each caption [C]), normalised."""
    device = next(model.parameters()).device
    size, ctx = backbones.image_size(model.clip), backbones.clip_dims(model.clip).context_length
    pair_feats, text_feats, text_pair = [], [], []
    with _eval_mode(model):
        for start in range(0, len(pairs), batch_size):
            items = [pairs[i] for i in range(start, min(start + batch_size, len(pairs)))]
            before = backbones.to_pixels([it["before"] for it in items], size, device=device)
            after = backbones.to_pixels([it["after"] for it in items], size, device=device)
            pair_feats.append(F.normalize(model.encode_pair(before, after).float(), dim=-1))
            captions = [c for it in items for c in it["captions"]]
            tokens = backbones.tokenize(captions, context_length=ctx, max_words=model.cfg.encoder.max_words)
            text_feats.append(F.normalize(model.encode_text(tokens.to(device)).float(), dim=-1))
            text_pair += [start + j for j, it in enumerate(items) for _ in it["captions"]]
    return torch.cat(pair_feats), torch.cat(text_feats), torch.tensor(text_pair, device=device)


@torch.no_grad()
def retrieval_scores(pair_feats: torch.Tensor, text_feats: torch.Tensor, text_pair: torch.Tensor, *,
                     ks: Sequence[int] = (1, 5, 10), chunk: int = 256) -> dict[str, float]:
    """T->IP and IP->T R@K in percent, the reference's multi-sentence protocol.

    T->IP: each caption ranks all pairs. IP->T: each pair ranks caption *groups* (one per pair); a group's score is
    the max over that pair's captions. R@K with K >= the number of pairs is 100.
    """
    P = pair_feats.shape[0]
    if text_pair.numel() != text_feats.shape[0] or set(text_pair.tolist()) != set(range(P)):
        raise ValueError("text_pair must give, for every caption, its pair index, and every pair needs a caption.")
    k_max = min(max(ks), P)
    _, ranked = topk_search(text_feats, pair_feats, k_max)  # [C, k_max]
    out = {f"t_ip_R@{k}": recall_at_k(ranked, text_pair, (min(k, k_max),))[f"R@{min(k, k_max)}"] for k in ks}
    ranked_groups = []
    for s in range(0, P, chunk):
        sim = pair_feats[s:s + chunk] @ text_feats.T  # [p, C]
        group = sim.new_full((sim.shape[0], P), float("-inf"))
        group.scatter_reduce_(1, text_pair.expand_as(sim), sim, reduce="amax")  # [p, P]
        ranked_groups.append(group.sort(dim=1, descending=True, stable=True).indices[:, :k_max])
    ranked = torch.cat(ranked_groups)  # [P, k_max]
    truth = torch.arange(P, device=ranked.device)
    out.update({f"ip_t_R@{k}": recall_at_k(ranked, truth, (min(k, k_max),))[f"R@{min(k, k_max)}"] for k in ks})
    return out


def evaluate_retrieval(model: CLIP4IDC, pairs: Dataset, *, batch_size: int = 64,
                       ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Retrieval metrics of a model on pair items (before, after, captions), e.g. as a Trainer ``val_fn``."""
    return retrieval_scores(*encode_for_retrieval(model, pairs, batch_size=batch_size), ks=ks)


# ----------------------------------------------------------------------------------------------------------------------
# Checkpoint compatibility
# ----------------------------------------------------------------------------------------------------------------------


def check_compatible(saved: dict, current: dict) -> None:
    """Refuse a checkpoint whose :meth:`CLIP4IDC.model_config` differs from this model's (the decoder is compared only
    when both have one, so a stage-1 checkpoint loads into a stage-2 model)."""
    if saved.get("model") != "CLIP4IDC":
        raise ValueError(f"This checkpoint holds a {saved.get('model')!r} model, not CLIP4IDC.")
    for part in ("encoder", "decoder"):
        a, b = saved.get(part), current.get(part)
        if a is None or b is None:
            continue
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        if diff:
            raise ValueError(
                f"Checkpoint {part} differs from this model's in {diff}: saved "
                f"{', '.join(f'{k}={a.get(k)!r}' for k in diff)}; this model "
                f"{', '.join(f'{k}={b.get(k)!r}' for k in diff)}. Build the model from the checkpoint's config "
                "(CLIP4IDCConfig.from_dict(checkpoint['extra']['config'])) or use a checkpoint of this backbone.")


# ----------------------------------------------------------------------------------------------------------------------
# Running CLIP4IDC: data, the two stages, caption evaluation, captioning your own pair
# ----------------------------------------------------------------------------------------------------------------------

DATA_SCRIPTS = dict(clevr="clevr_change", spot="spot_the_diff", ier="image_editing_request")


def load_pairs(cfg: CLIP4IDCConfig, split: str, *, root: str | Path | None = None,
               image_size: int | None = None) -> Dataset:
    """The pair items of ``cfg.dataset`` (the interface of ``ShapesPairs``), images squashed to ``image_size``.

    ``shapes`` generates ``cfg.shapes_pairs`` pairs per split (no files); ``clevr`` / ``spot`` / ``ier`` read ``root``,
    the folder their ``data_scripts/`` wrote (a Shapes export in CLEVR-Change's layout reads as ``clevr``).
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}.")
    if cfg.dataset == "shapes":
        if root is not None:
            raise ValueError("The Shapes world is generated, not read: drop root, or read a Shapes export (`idclab "
                             "shapes export --task idc`) as dataset 'clevr' with that root.")
        n = cfg.shapes_pairs[("train", "val", "test").index(split)]
        return shapes.ShapesPairs(split, n, seed=0, size=image_size or 64)
    if root is None:
        script = DATA_SCRIPTS[cfg.dataset]
        raise ValueError(f"Dataset {cfg.dataset!r} is read from disk: pass its folder (--root DIR). Get it with\n"
                         f"  python data_scripts/{script}.py download --root DIR && "
                         f"python data_scripts/{script}.py prepare --root DIR")
    loader = dict(clevr=clevr_change.CLEVRChange, spot=spot_the_diff.SpotTheDiff,
                  ier=image_editing_request.ImageEditingRequest)[cfg.dataset]
    return loader(root, split, image_size=image_size)


@torch.no_grad()
def caption_pairs(model: CLIP4IDC, pairs: Dataset, *, beam: int = 1, batch_size: int = 32, limit: int | None = None,
                  progress: bool = False) -> dict[str, str]:
    """Caption the first ``limit`` pairs: {str(id): caption}; with distractors also {id + "_n": caption of before ->
    distractor}, the ids of CLEVR-Change's "Total" ground truth ([code])."""
    device = next(model.parameters()).device
    size = backbones.image_size(model.clip)
    n = len(pairs) if limit is None else min(limit, len(pairs))
    res: dict[str, str] = {}
    for start in tqdm(range(0, n, batch_size), desc="captioning", disable=not progress, leave=False):
        items = [pairs[i] for i in range(start, min(start + batch_size, n))]
        before = backbones.to_pixels([it["before"] for it in items], size, device=device)
        for key, suffix in (("after", ""), ("distractor", "_n")):
            if key not in items[0]:
                continue
            after = backbones.to_pixels([it[key] for it in items], size, device=device)
            for it, text in zip(items, model.generate(before, after, beam=beam)):
                res[str(it["id"]) + suffix] = text
    return res


def evaluate_captions(model: CLIP4IDC, pairs: Dataset, *, beam: int = 1, limit: int | None = None,
                      batch_size: int = 32, progress: bool = False) -> dict[str, dict[str, float]]:
    """Caption metrics x 100 (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D), overall and per change type (each type scored as
    its own corpus, see ``score_captions_by_group``). Empty captions score 0 (documented, not an error)."""
    if not hasattr(pairs, "references"):
        raise TypeError(f"{type(pairs).__name__} has no references(); evaluate a dataset from load_pairs().")
    res = caption_pairs(model, pairs, beam=beam, limit=limit, batch_size=batch_size, progress=progress)
    gts, groups = pairs.references(with_no_change=True) if "distractor" in pairs[0] else pairs.references()
    unknown = sorted(set(res) - set(gts))
    if unknown:
        raise ValueError(f"Captioned ids without references: {unknown[:5]}; the dataset's ids and references disagree.")
    gts = {k: gts[k] for k in res}  # CIDEr-D's idf over the evaluated set only (book/pitfalls.md, MET-1)
    scores = score_captions_by_group(gts, res, {k: groups[k] for k in res}, allow_empty=True)
    return {g: {m: 100 * v for m, v in s.items()} for g, s in scores.items()}  # CIDEr 0-10 -> papers' 0-1000


def train(cfg: CLIP4IDCConfig, out_dir: str | Path, *, stages=None, root: str | Path | None = None,
          init: str | Path | None = None, resume: bool = False, overwrite: bool = False, progress: bool = True,
          device: str | None = None, on_step=None) -> dict[str, TrainResult]:
    """Run the stages in order into ``out_dir/adapt`` and ``out_dir/caption``. Captioning starts from the adaptation
    stage's selected checkpoint: this run's, else ``init`` (a stage-1 checkpoint or run), else the one recorded in
    ``out_dir``, else the plain CLIP (the ablation "without adaptation"). Returns ``{stage: TrainResult}``."""
    stages = runs.check_stages(stages, STAGES)
    if init is not None and "adapt" in stages:
        raise ValueError("init (a stage-1 checkpoint) only applies when training the caption stage alone "
                         "(--stage caption).")
    out = Path(out_dir)
    if cfg.dataset != "shapes":
        load_pairs(cfg, "train", root=root)  # check the data before building a model or downloading weights
    adapted = None if init is None else runs.resolve_checkpoint(init, "adapt", method=METHOD)
    if adapted is None and "adapt" not in stages and "adapt" in ((runs.read_run(out) or {}).get("stages") or {}):
        adapted = runs.resolve_checkpoint(out, "adapt")
    results: dict[str, TrainResult] = {}
    with runs.run_lock(out):
        runs.prepare_run(out, stages, resume=resume, overwrite=overwrite)  # under the lock: one writer
        for stage in stages:
            results[stage] = _train_stage(cfg, stage, out, root=root, init=adapted if stage == "caption" else None,
                                          resume=resume, progress=progress, device=device, on_step=on_step)
            if stage == "adapt":
                adapted = results[stage].selected
    return results


def _train_stage(cfg: CLIP4IDCConfig, stage: str, out: Path, *, root, init: Path | None, resume: bool,
                 progress: bool, device, on_step) -> TrainResult:
    """One stage into ``out/stage``; the checkpoint that is best on **val** (T->IP R@1 / CIDEr) is selected."""
    st = getattr(cfg, stage)
    torch.manual_seed(st.seed)  # the new parameters' initialisation
    model = CLIP4IDC(cfg, stage=stage)
    if init is not None:
        state = runs.read(init)
        model.load_adapted(state["model"], saved_config=state["header"]["architecture"])
    size = backbones.image_size(model.clip)
    train_pairs, val = (load_pairs(cfg, s, root=root, image_size=size) for s in ("train", "val"))
    if stage == "caption" and cfg.decoder.bias_init == "unigram":
        model.captioner.init_bias_from([c for refs in train_pairs.references()[0].values() for c in refs])
    if stage == "adapt":
        select = "t_ip_R@1"
        val_pairs = val if st.eval_pairs is None else Subset(val, range(min(st.eval_pairs, len(val))))

        def val_fn(m):
            return evaluate_retrieval(m, val_pairs)
    else:
        select = "CIDEr"

        def val_fn(m):
            return evaluate_captions(m, val, limit=st.eval_pairs)["overall"]
    samples = PairSamples.for_stage(train_pairs, st)
    tcfg = trainer_config(st, len(samples), ckpt_minutes=cfg.ckpt_minutes, precision=cfg.precision,
                          num_workers=cfg.num_workers, select_metric=select, progress=progress)
    tcfg = dataclasses.replace(tcfg, ckpt_every=_every(st.ckpt_every, tcfg.eval_every))  # default: at each validation
    header = runs.make_header(METHOD, stage, cfg, {**backbones.model_config(model.clip), **model.model_config()})
    trainer = Trainer(model, CLIP4IDC.loss, samples, config=tcfg, out_dir=out / stage, collate_fn=model.collate(),
                      val_fn=val_fn, param_groups=param_groups(model, st), header=header, on_step=on_step,
                      device=device)
    result = trainer.fit(resume=resume)
    entry = runs.stage_entry(out, result, init=None if init is None else runs.relative(init, out))
    runs.record_stage(out, method=METHOD, config=cfg, stage=stage, entry=entry)
    return result


def load(run_or_checkpoint: str | Path, *, stage: str | None = None,
         device: str | torch.device | None = None) -> CLIP4IDC:
    """A trained CLIP4IDC from a checkpoint or run folder (default stage: the run's last). The architecture is built
    without downloading weights, then every weight comes from the checkpoint."""
    path = runs.resolve_checkpoint(run_or_checkpoint, stage, method=METHOD)
    state = runs.read(path)
    header = state["header"]
    cfg = CLIP4IDCConfig.from_dict(header["config"])
    clip = backbones.load_clip(cfg.encoder.backbone)  # the architecture; every weight comes from the checkpoint
    model = CLIP4IDC(cfg, stage=header["stage"], clip=clip)
    check_compatible(header["architecture"], model.model_config())
    model.load_state_dict(state["model"])
    model.checkpoint_info = dict(path=str(path), stage=header["stage"], selected_on_val=state.get("selection"))
    return model.to(device or pick_device()).eval()


def caption(before, after, checkpoint: str | Path | CLIP4IDC, *, beam: int = 1) -> str:
    """Describe what changed from ``before`` to ``after`` (paths, PIL images or uint8 arrays [H, W, 3]).

    Both images are converted to RGB (RGBA onto white, grey replicated) and squashed to the model's input size without
    crop, as in training ([code]); images of different sizes are accepted with a warning, since both are squashed.
    ``checkpoint``: a file, a run folder of ``idclab train clip4idc`` (its captioning stage) or a loaded model.
    """
    _check_beam(beam)
    a, b = backbones.load_image(before), backbones.load_image(after)  # the user's inputs first, then the model
    model = checkpoint if isinstance(checkpoint, CLIP4IDC) else load(checkpoint, stage=_caption_stage(checkpoint))
    if model.captioner is None:
        raise ValueError(f"{model.checkpoint_info['path']} is an adaptation (stage 1) checkpoint, which cannot "
                         "caption; pass the caption stage's (RUN/caption/best.pt) or the run folder.")
    if a.shape != b.shape:
        warnings.warn(f"before is {a.shape[1]}x{a.shape[0]} and after is {b.shape[1]}x{b.shape[0]} pixels: both are "
                      f"squashed to {backbones.image_size(model.clip)}^2 without crop, so their contents no longer align "
                      "pixel for pixel. Crop them to the same view first if they should.", stacklevel=2)
    size, device = backbones.image_size(model.clip), next(model.parameters()).device
    pixels = [backbones.to_pixels([x], size, device=device) for x in (a, b)]
    return model.generate(*pixels, beam=beam)[0]


def _caption_stage(path: str | Path) -> str | None:
    """A run folder is captioned with its caption stage; a file is what it is."""
    return "caption" if Path(path).is_dir() else None


def _check_beam(beam: int) -> None:
    vocab = len(backbones.get_tokenizer().encoder)  # 49,408 BPE tokens: a beam keeps at most that many extensions
    if isinstance(beam, bool) or not isinstance(beam, int) or not 1 <= beam <= vocab:
        raise ValueError(f"--beam must be an integer from 1 (greedy decoding) to the vocabulary size {vocab}; "
                         f"got {beam!r}.")


def evaluate(checkpoint: str | Path, *, split: str = "test", root: str | Path | None = None, beam: int = 1,
             limit: int | None = None, progress: bool = True) -> dict:
    """What ``idclab eval clip4idc`` prints: caption metrics (x 100, overall and per change type) of the captioning
    checkpoint and T->IP / IP->T R@1/5/10 of the adaptation checkpoint, whichever ``checkpoint`` holds."""
    _check_beam(beam)
    if limit is not None and limit < 1:
        raise ValueError(f"--n must be >= 1 (pairs to evaluate), got {limit}.")
    path = Path(checkpoint)
    if path.is_dir():
        recorded = (runs.read_run(path) or {}).get("stages") or {}
        ckpts = [runs.resolve_checkpoint(path, s, method=METHOD) for s in STAGES if s in recorded]
        ckpts = ckpts or [runs.resolve_checkpoint(path, method=METHOD)]
    else:
        ckpts = [runs.resolve_checkpoint(path, method=METHOD)]
    report: dict = dict(split=split)
    for ckpt in ckpts:
        model = load(ckpt)
        stage = model.stage
        pairs = load_pairs(model.cfg, split, root=root, image_size=backbones.image_size(model.clip))
        report.update(dataset=model.cfg.dataset, profile=model.cfg.profile)
        report[stage] = dict(checkpoint=str(ckpt), selected_on_val=model.checkpoint_info["selected_on_val"])
        if stage == "adapt":
            subset = pairs if limit is None else Subset(pairs, range(min(limit, len(pairs))))
            report["retrieval"] = evaluate_retrieval(model, subset)
        else:
            report["captions"] = evaluate_captions(model, pairs, beam=beam, limit=limit, progress=progress)
    return report


# ----------------------------------------------------------------------------------------------------------------------
# The paper's ablation, with seeds
# ----------------------------------------------------------------------------------------------------------------------

# The three captioners of the paper's ablation: (stages trained, CLIP frozen while captioning)
ABLATION_ROWS = {
    "no adaptation, CLIP frozen": (("caption",), True),
    "no adaptation, CLIP fine-tuned": (("caption",), False),
    "adaptation": (STAGES, False),
}
# The paper's claims, as (row A, row B): "A beats B" on CIDEr-D overall
ABLATION_CLAIMS = {
    "adaptation beats direct fine-tuning": ("adaptation", "no adaptation, CLIP fine-tuned"),
    "adaptation beats a frozen CLIP": ("adaptation", "no adaptation, CLIP frozen"),
    "fine-tuning CLIP beats keeping it frozen": ("no adaptation, CLIP fine-tuned", "no adaptation, CLIP frozen"),
}


def ablate(out_dir: str | Path, *, dataset: str = "shapes", profile: str | None = None, seeds: int = 3,
           root: str | Path | None = None, split: str = "test", limit: int | None = None,
           device: str | None = None, progress: bool = True, **options) -> dict:
    """Train the ablation's three captioners for each seed (``out_dir/<row>/seed<S>``), score them on ``split`` and
    return per row, change type and metric the per-seed values, mean and sd, plus a verdict for each claim of
    :data:`ABLATION_CLAIMS` (:func:`idclab.stats.verdict` on CIDEr-D overall). A row whose run is complete is not
    trained again, so an interrupted ablation continues where it stopped. ``options``: those of :func:`config_for`.
    """
    if not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"--seeds must be an integer >= 1, got {seeds!r}.")
    out, scores = Path(out_dir), {}
    for seed in range(seeds):
        for row, (stages, frozen) in ABLATION_ROWS.items():
            cfg = config_for(dataset, profile, seed=seed, freeze_clip=frozen, **options)
            run = out / row.replace(", ", "_").replace(" ", "_") / f"seed{seed}"
            done = set(((runs.read_run(run) or {}).get("stages") or {})) >= set(stages)
            if not done:
                train(cfg, run, stages=stages, root=root, overwrite=True, progress=progress, device=device)
            model = load(run, stage="caption", device=device)
            pairs = load_pairs(cfg, split, root=root, image_size=backbones.image_size(model.clip))
            scores.setdefault(row, []).append(evaluate_captions(model, pairs, limit=limit, progress=progress))
    table = {row: {group: {metric: stats.summary([s[group][metric] for s in per_seed])
                           for metric in per_seed[0][group]}
                   for group in per_seed[0]}
             for row, per_seed in scores.items()}
    verdicts = {claim: stats.verdict(table[a]["overall"]["CIDEr"]["values"], table[b]["overall"]["CIDEr"]["values"])
                for claim, (a, b) in ABLATION_CLAIMS.items()}
    return dict(dataset=dataset, profile=get_profile(profile), split=split, seeds=seeds, rows=table,
                verdicts=verdicts, runs=str(out))
