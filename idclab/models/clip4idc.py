"""CLIP4IDC: CLIP for image difference captioning -- the pair encoder, the adaptation stage and the captioner.

Paper: Guo, Wang, Laaksonen, "CLIP4IDC: CLIP for Image Difference Captioning", AACL-IJCNLP 2022 (arXiv 2206.00629).
Reference code: ``sushizixin/CLIP4IDC`` (commit ca49461). Facts below cite idclab's condensed reference notes,
``clip4idc.md`` (section numbers, "§"), which cite the reference code line by line.

The method in three steps:

1. **Pair encoder** (§2.2). One CLIP ViT looks at both images: its first ``k`` blocks run on each image alone
   ("intra"); the two token sequences then get a before/after embedding, are concatenated, get a joint positional
   embedding and a new LayerNorm, and the remaining blocks run on the pair ("inter"). ``ln_post`` and ``proj`` go on
   every token. The pair vector v is the mean of the two projected class tokens (token 0 and token T).
2. **Adaptation** (stage 1, §4). Symmetric InfoNCE between pair vectors v and CLIP text features g of the change
   captions, temperature fixed at 0.01. CLEVR: with p = 0.5 the "before" image is swapped for its distractor (§6).
3. **Captioning** (stage 2, §5). A 3-layer post-LN Transformer encoder over the 2T projected visual tokens and a
   3-layer decoder whose layer i cross-attends to encoder layer i; word/position embeddings and the output projection
   are tied to CLIP's text token table. CLEVR: loss = loss(before->after, change caption) + loss(before->distractor,
   no-change caption).

Deviations from the reference, each fixing one of its pitfalls (§10):

* fp32 master weights (the Trainer's AMP) instead of fp16 in-place updates, so the CLIP learning rate is a tuned
  hyperparameter (``clip_lr``), not the nominal 1e-7 (pitfall 1, §4.5);
* the temperature is a fixed config value; ``logit_scale`` stays frozen (pitfall 12);
* the second class token sits at T = tokens per image, computed from the backbone (pitfall 7: hard-coded 50);
* caption padding is ignored with index -100, not 0 (BPE id 0 is "!", pitfall 14);
* decoding stops at EOT; beam search works (pitfall 15); the text tower is not run in stage 2 (pitfall 16);
* global gradient clipping only (pitfall 17); the tied token table is frozen for every dataset (pitfall 19);
* the stage-2 learning rate of the new pair parameters is an explicit field, ``pair_lr`` (pitfall 13).

Other choices: random draws (distractor swap, which caption) are seeded by the sample index, not by the epoch, so the
Trainer's exact resume holds; with beam > 1 the greedy caption is kept as a candidate; the decoder uses the causal
mask alone (right padding follows EOT, so a padding mask would change nothing that is scored).

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

from idclab import backbones, runs
from idclab.configs import from_dict, get_profile, pick_device, to_dict
from idclab.data import clevr_change, image_editing_request, shapes, spot_the_diff
from idclab.losses import symmetric_info_nce
from idclab.metrics.captioning import score_captions_by_group
from idclab.metrics.retrieval import recall_at_k, topk_search
from idclab.train import TrainConfig, Trainer, TrainResult

__all__ = [
    "EncoderConfig", "DecoderConfig", "StageConfig", "CLIP4IDCConfig", "config_for", "DATASETS",
    "tokens_per_image", "PairEncoder", "PostLNLayer", "Captioner", "CLIP4IDC",
    "adaptation_loss", "captioning_loss", "caption_tensors", "PairSamples", "PairCollate",
    "param_groups", "trainer_config", "encode_for_retrieval", "retrieval_scores", "evaluate_retrieval",
    "check_compatible", "load_pairs", "caption_pairs", "evaluate_captions", "STAGES", "train", "load", "caption",
    "evaluate",
]

SOT, EOT = 49406, 49407  # CLIP BPE start / end of text (backbones.get_tokenizer)
METHOD = "clip4idc"
STAGES = ("adapt", "caption")
DATASETS = ("clevr", "spot", "ier", "shapes")
# §4.4: always requires_grad=False (names inside open_clip's CLIP); logit_scale too, as tau is fixed (pitfall 12).
FROZEN_CLIP_PARTS = ("visual.conv1", "visual.class_embedding", "visual.positional_embedding", "visual.ln_pre",
                     "token_embedding", "positional_embedding", "logit_scale")
TEXT_TOWER = ("transformer", "ln_final", "text_projection")  # unused in stage 2, hence frozen there (pitfall 16)
NEW_PAIR_PARAMS = ("bef_embedding", "aft_embedding", "joint_positional_embedding", "ln_mid")  # §2.2

# ----------------------------------------------------------------------------------------------------------------------
# Small blocks
# ----------------------------------------------------------------------------------------------------------------------


class PostLNLayer(nn.Module):
    """One BERT-style post-LN layer (§2.4), with an optional cross-attention sub-layer (decoder):

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
    backbone: str = "ViT-B-32-quickgelu"  # §1, §11 (plain "ViT-B-32" would build GELU for QuickGELU weights)
    pretrained: str | None = "openai"  # §11
    intra_layers: int = 9  # §2.2: blocks 0..8 per image, 9..11 joint (--intra_num_hidden_layers 9). 0: all joint;
    #                        = number of blocks: no joint block (the images meet only in ln_mid / the captioner)
    max_words: int = 32  # §3: caption length for the text tower, SOT and EOT included
    temperature: float | None = 0.01  # §4.1: clamped logit scale 100 trained at 1e-7 = a fixed tau (pitfall 12);
    #                                   None: the backbone's own learned 1 / logit_scale, frozen (0.01 for OpenAI CLIP)
    frozen: tuple[str, ...] = FROZEN_CLIP_PARTS  # §4.4

    def __post_init__(self):
        if self.intra_layers < 0 or (self.temperature is not None and self.temperature <= 0) or self.max_words < 2:
            raise ValueError("EncoderConfig: intra_layers must be >= 0, temperature > 0 (or None) and max_words >= 2.")


@dataclass(frozen=True)
class DecoderConfig:
    layers: int = 3  # §2.4 decoder_config.json num_decoder_layers (also the caption-encoder depth: layer-wise)
    width: int = 512  # §2.4 hidden 512 = CLIP ViT-B/32 embed dim = its text width (tied embeddings)
    heads: int = 8  # §2.4
    ffn: int = 2048  # §2.4 intermediate size
    dropout: float = 0.1  # §2.4 (hidden and attention dropout)
    max_tokens: int = 32  # §5: decoder input SOT + <= 31 words; target words + EOT
    ignore_index: int = -100  # pitfall 14: the reference's 0 is the token "!"
    init_std: float = 0.02  # §2.4: decoder-only weights N(0, 0.02)
    # Output bias at the start: "zeros" (the reference, §2.4) or "unigram" = log of the training captions' smoothed
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
    """One training stage. Defaults: stage 1 (adaptation) on CLEVR-Change (§3)."""

    lr: float = 1e-4  # §3 / CLIP4IDC README: new modules (stage 1: bef/aft/joint/ln_mid; stage 2: the captioner)
    # The CLIP tower's lr is TUNED, not the reference's 1e-7: the reference updates fp16 weights in place with no fp32
    # master copy, so its nominal 1e-7 behaves like momentum-SGD at ~0.1 on many weights, while with fp32 master
    # weights 1e-7 effectively freezes CLIP (§4.5, pitfall 1). §4.5 suggests sweeping {1e-6, 3e-6, 1e-5}; 3e-6 is
    # the middle of that sweep, not yet calibrated against CLEVR T->IP R@1 = 26.8.
    clip_lr: float = 3e-6
    pair_lr: float | None = None  # lr of bef/aft/joint/ln_mid; None: ``lr``. The reference demotes them to the CLIP
    #                               lr in stage 2 (§5, pitfall 13); the stage-2 paper presets keep that choice
    weight_decay: float = 0.2  # §3: stage 1 0.2, stage 2 0.01; never on biases, norms, embeddings
    warmup: float = 0.1  # §3: 10 % of the steps, linear
    schedule: str = "cosine"  # §3: stage 1 warmup_cosine, stage 2 warmup_linear
    batch_size: int = 128  # §3: stage 1 global 128; stage 2 16 (1 GPU, the README's 150.7 run). Per process in DDP
    epochs: int = 12  # §3: stage 1 12 (CLEVR) / 20 (Spot); stage 2 50 with early stopping
    max_steps: int | None = None  # overrides epochs (toy / smoke profiles)
    betas: tuple[float, float] = (0.9, 0.98)  # §3: stage 1 (0.9, 0.98); stage 2 (0.9, 0.999)
    eps: float = 1e-6  # §3 BertAdam eps
    max_grad_norm: float | None = 1.0  # §3 (global clipping only; the reference also clips per parameter, pitfall 17)
    distractor_swap_p: float = 0.5  # §6: stage 1 CLEVR, before := distractor with p = 0.5; 0 where no distractors
    no_change: bool = False  # §6: stage 2 CLEVR adds the (before -> distractor, no-change caption) loss term
    repeats: int = 1  # samples per pair per epoch, each with the next caption (PairSamples); see the presets
    seed: int = 0  # §3: CLEVR stage 2 uses 2021; Spot is unseeded in the reference (pitfall 4)
    freeze_clip: bool = False  # ablation: train only the new parts (pair parameters, captioner); CLIP stays as loaded
    eval_every: int | None = None  # steps between validations (None: at the end only); the best one is kept
    eval_pairs: int | None = None  # validate on the first N val pairs (None: all)
    ckpt_every: int | None = None  # steps between resume files (None: at each validation, the end, on interrupt)

    def __post_init__(self):
        if self.schedule not in ("cosine", "linear", "constant"):
            raise ValueError(f"StageConfig: schedule {self.schedule!r} must be 'cosine', 'linear' or 'constant'.")
        if not 0.0 <= self.distractor_swap_p <= 1.0 or self.repeats < 1 or not 0.0 <= self.warmup < 1.0:
            raise ValueError("StageConfig: distractor_swap_p must lie in [0, 1], warmup in [0, 1), repeats >= 1.")


# §3 / §5: stage 2 on CLEVR-Change. pair_lr = clip_lr is the reference's demotion (pitfall 13): change both together.
_CAPTION_PAPER = StageConfig(pair_lr=StageConfig.clip_lr, weight_decay=0.01, schedule="linear", batch_size=16,
                             epochs=50, betas=(0.9, 0.999), distractor_swap_p=0.0, no_change=True, seed=2021)


@dataclass(frozen=True)
class CLIP4IDCConfig:
    dataset: str = "clevr"  # one of DATASETS
    profile: str = "paper"  # "paper" | "toy" | "smoke" (idclab.configs.get_profile)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    adapt: StageConfig = field(default_factory=StageConfig)  # stage 1
    caption: StageConfig = field(default_factory=lambda: _CAPTION_PAPER)  # stage 2
    # Shapes world only: generated pairs per split (train, val, test); default = CLEVR-Change's scenes per split
    # (§7.1, derived from its pair counts). Real datasets have their own sizes.
    shapes_pairs: tuple[int, int, int] = (33_830, 1_988, 3_985)
    precision: str = "auto"  # §3: the reference trains in fp16; here AMP (bf16 / fp16 autocast, fp32 master weights)
    ckpt_minutes: float | None = 10.0  # resume file every 10 minutes of training (a Colab disconnect loses less)
    num_workers: int = 0  # DataLoader workers decoding images (set it on a GPU machine)

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
        if dataset in ("spot", "ier"):  # Spot: no distractors, 20 adaptation epochs (§3, §6); unseeded there, 0 here.
            # IER: not published (not in the reference repo, pitfall 5); same as Spot.
            cfg = dataclasses.replace(cfg, adapt=dataclasses.replace(cfg.adapt, epochs=20, distractor_swap_p=0.0),
                                      caption=dataclasses.replace(cfg.caption, no_change=False, seed=0))
        if dataset == "shapes":  # CLEVR's values. Shapes items are pairs with 5 captions each: repeats=5 makes one
            # sample per caption (the reference's stage-1 sampling, §4.2); in stage 2, 10 epochs x 5 repeats = the
            # reference's 50 epochs of one random caption per pair (§5).
            cfg = dataclasses.replace(cfg, adapt=dataclasses.replace(cfg.adapt, repeats=5),
                                      caption=dataclasses.replace(cfg.caption, repeats=5, epochs=10))
        return cfg
    if profile == "toy":
        # shapes-clip: ViT 4 blocks, width 128, 64 px, patch 8 -> T = 65; embed dim = text width = 128.
        # Toy values, not the paper's, chosen on Shapes *val* pairs for a 2-core CPU (measurements in the closing
        # notes of idclab's issue 3):
        # * 2 of 4 blocks joint (the paper: 3 of 12), tau = shapes-clip's own learned temperature (frozen, as the
        #   reference keeps CLIP's 1 / 100) and CLIP lr 5e-4: val T->IP R@1 (100 pairs) after 300 steps was 6.8 %,
        #   against 1.0-1.2 % with 1 or 2 joint blocks at tau 0.01 and CLIP lr 1e-4 (the factors were not isolated);
        # * the token table trains: shapes-clip never saw most words of change captions ("moved", "the", "now", ...),
        #   unlike OpenAI's CLIP, whose table the reference freezes (§4.4). Val R@1 after 600 steps: 12.6 vs 10.8;
        # * learning rates near shapes-clip's pretraining lr (1e-3): a small CLIP trained from scratch for 2,500 steps
        #   must move much further than OpenAI's;
        # * the captioner's output bias starts from word frequencies (DecoderConfig.bias_init).
        frozen = tuple(p for p in FROZEN_CLIP_PARTS if p != "token_embedding")
        return CLIP4IDCConfig(
            dataset="shapes", profile="toy",
            encoder=EncoderConfig(backbone="shapes-clip", pretrained=None, intra_layers=2, temperature=None,
                                  frozen=frozen),
            decoder=DecoderConfig(layers=3, width=128, heads=4, ffn=512, bias_init="unigram"),
            adapt=StageConfig(lr=1e-3, clip_lr=5e-4, batch_size=32, max_steps=800, repeats=5, eval_every=200),
            caption=dataclasses.replace(_CAPTION_PAPER, lr=1e-3, clip_lr=1e-4, pair_lr=1e-4, batch_size=16,
                                        max_steps=2000, repeats=5, seed=0, eval_every=250),
            shapes_pairs=(4000, 100, 500), ckpt_minutes=None)
    # smoke: idc-micro (random weights, ViT 2 blocks, width 32, 32 px, patch 8 -> T = 17; embed = text width = 32).
    return CLIP4IDCConfig(
        dataset="shapes", profile="smoke",
        encoder=EncoderConfig(backbone="idc-micro", pretrained=None, intra_layers=1),
        decoder=DecoderConfig(layers=2, width=32, heads=2, ffn=64),
        adapt=StageConfig(lr=1e-3, clip_lr=1e-4, batch_size=8, max_steps=4),
        caption=dataclasses.replace(_CAPTION_PAPER, lr=1e-3, clip_lr=1e-4, pair_lr=1e-4, batch_size=8, max_steps=4),
        shapes_pairs=(32, 8, 8), ckpt_minutes=None)


# ----------------------------------------------------------------------------------------------------------------------
# The pair encoder (§2.2)
# ----------------------------------------------------------------------------------------------------------------------


def tokens_per_image(clip: nn.Module) -> int:
    """T = 1 + grid**2 tokens per image (ViT-B/32 at 224: 50; B/16: 197). The class tokens of a pair sit at 0 and T."""
    return backbones.clip_dims(clip).tokens_per_image


class PairEncoder(nn.Module):
    """A CLIP ViT run the split way: blocks [0, k) per image, blocks [k, L) on the concatenated pair (§2.2).

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
        scale = width ** -0.5  # §2.2: the reference's init, width^-0.5 * randn
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
        """Pair vector v = mean of the two projected class tokens: [B, 2T, D] -> [B, D] (tokens 0 and T, §2.2)."""
        T = tokens.shape[1] // 2
        return (tokens[:, 0] + tokens[:, T]) / 2


# ----------------------------------------------------------------------------------------------------------------------
# The captioner (§2.4)
# ----------------------------------------------------------------------------------------------------------------------


class Captioner(nn.Module):
    """Layer-wise encoder-decoder over the pair's projected tokens, embeddings tied to CLIP's text token table.

    ``token_embedding`` / ``positional_embedding`` are CLIP's own modules / Parameters (shared, not copied), so the
    captioner's input embeddings, output projection and position table are CLIP's (frozen by default, §4.4).
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
        """[B, 2T, D] -> the output of every encoder layer, n_layers x [B, 2T, D] (no extra positions, §2.4)."""
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
    """Stage 1 (§4.1): L = (L_IP->T + L_T->IP) / 2 on cos(v, g) / tau, negatives gathered across GPUs."""
    v = model.encode_pair(batch["before"], batch["after"])  # [B, D]
    g = model.encode_text(batch["text"])  # [B, D]
    out = symmetric_info_nce(v, g, scale=1.0 / model.temperature, gather=True)
    return out.loss, {"ip_t": out.ip_t.item(), "t_ip": out.t_ip.item()}


def captioning_loss(model: CLIP4IDC, batch: dict) -> tuple[torch.Tensor, dict]:
    """Stage 2 (§5, §6): token cross-entropy; with a distractor in the batch, + the no-change pair's loss.

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
    """Teacher-forcing tensors (§5): input = SOT + words (<= max_tokens - 1), target = words + EOT.

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
    no_change_captions, id), deterministic per index so that the Trainer's exact resume holds.

    Sample ``i`` is pair ``p = i % n`` seen for the ``r = i // n``-th time (``repeats`` per epoch): its caption is
    the r-th after a per-pair random start, so ``repeats`` = captions per pair shows every caption once per epoch.
    Stage 1 (§6): with probability ``distractor_swap_p`` -- drawn from ``default_rng([seed, i])`` -- "before" becomes
    the distractor, the change caption kept. Stage 2 with ``no_change``: the sample also carries the distractor
    and a no-change caption.
    """

    def __init__(self, pairs: Dataset, *, repeats: int = 1, distractor_swap_p: float = 0.0, no_change: bool = False,
                 seed: int = 0):
        if len(pairs) < 1 or repeats < 1 or not 0.0 <= distractor_swap_p <= 1.0:
            raise ValueError("PairSamples needs a non-empty dataset, repeats >= 1 and distractor_swap_p in [0, 1].")
        self.pairs, self.repeats, self.swap_p, self.no_change, self.seed = pairs, repeats, distractor_swap_p, \
            no_change, seed

    @classmethod
    def for_stage(cls, pairs: Dataset, stage: StageConfig) -> PairSamples:
        return cls(pairs, repeats=stage.repeats, distractor_swap_p=stage.distractor_swap_p, no_change=stage.no_change,
                   seed=stage.seed)

    def __len__(self) -> int:
        return len(self.pairs) * self.repeats

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range for {len(self)} samples")
        n = len(self.pairs)
        p, r = i % n, i // n
        item = self.pairs[p]
        if not item.get("captions"):
            raise ValueError(f"Pair {p} has no captions; PairSamples needs items with a non-empty 'captions' list.")
        if (self.swap_p > 0 or self.no_change) and "distractor" not in item:
            raise KeyError("This dataset has no distractor images (Spot-the-Diff, IER): set distractor_swap_p=0 and "
                           "no_change=False.")
        start = np.random.default_rng([self.seed, p, 0]).integers(1 << 30, size=2)  # per-pair caption offsets
        swap = self.swap_p > 0 and np.random.default_rng([self.seed, i, 1]).random() < self.swap_p
        caps = item["captions"]
        out = dict(before=item["distractor"] if swap else item["before"], after=item["after"],
                   caption=caps[(start[0] + r) % len(caps)], swapped=bool(swap), pair=p, id=item.get("id", p))
        if self.no_change:
            nc = item["no_change_captions"]
            out.update(distractor=item["distractor"], no_change_caption=nc[(start[1] + r) % len(nc)])
        return out


@dataclass(frozen=True)
class PairCollate:
    """:class:`PairSamples` items -> a batch of tensors for :meth:`CLIP4IDC.loss` (picklable, for DataLoader workers).

    Images: any size / mode; each is converted by :func:`backbones.to_pixels` -- RGB, squashed to ``image_size``
    bicubic without crop (the reference's preprocessing, §2.1), so before and after may differ in size.
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
    """AdamW groups (§4.3, §5): captioner at ``lr``; bef/aft/joint/ln_mid at ``pair_lr`` (None: ``lr``); the rest of
    CLIP at ``clip_lr``. Weight decay on matrices only (not biases, norms, embeddings). Frozen parts are left out."""
    lrs = dict(new=stage.lr, pair=stage.lr if stage.pair_lr is None else stage.pair_lr, clip=stage.clip_lr)
    groups: dict[tuple[str, bool], list] = {}
    for name, p in model.named_parameters():  # tied tables are listed once, under their CLIP name
        if not p.requires_grad:
            continue
        part = ("new" if name.startswith("captioner.") else
                "pair" if name.split(".")[1] in NEW_PAIR_PARAMS else "clip")
        decay = p.ndim >= 2 and "embedding" not in name
        groups.setdefault((part, decay), []).append(p)
    return [dict(params=ps, lr=lrs[part], weight_decay=stage.weight_decay if decay else 0.0,
                 name=f"{part}/{'decay' if decay else 'no_decay'}") for (part, decay), ps in groups.items()]


def trainer_config(stage: StageConfig, n_samples: int, **overrides) -> TrainConfig:
    """The Trainer settings of a stage: steps from ``max_steps`` or epochs over ``n_samples``, warm-up, schedule."""
    steps_per_epoch = n_samples // stage.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"{n_samples} samples do not fill one batch of {stage.batch_size}; lower batch_size.")
    default = stage.epochs * steps_per_epoch if stage.max_steps is None else stage.max_steps
    max_steps = overrides.pop("max_steps", default)
    settings = dict(max_steps=max_steps, batch_size=stage.batch_size, lr=stage.lr, weight_decay=stage.weight_decay,
                    betas=stage.betas, eps=stage.eps, warmup_steps=round(stage.warmup * max_steps),
                    schedule=stage.schedule, max_grad_norm=stage.max_grad_norm, seed=stage.seed)
    return TrainConfig(**{**settings, **overrides})


# ----------------------------------------------------------------------------------------------------------------------
# Retrieval evaluation (§4.6)
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
    """T->IP and IP->T R@K in percent, the reference's multi-sentence protocol (§4.6).

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
    distractor}, the ids of CLEVR-Change's "Total" ground truth (§6)."""
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
    gts = {k: gts[k] for k in res}  # CIDEr-D's idf over the evaluated set only (§7.1)
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
    runs.prepare_run(out, stages, resume=resume, overwrite=overwrite)
    if cfg.dataset != "shapes":
        load_pairs(cfg, "train", root=root)  # check the data before building a model or downloading weights
    adapted = None if init is None else runs.resolve_checkpoint(init, "adapt", method=METHOD)
    if adapted is None and "adapt" not in stages and "adapt" in ((runs.read_run(out) or {}).get("stages") or {}):
        adapted = runs.resolve_checkpoint(out, "adapt")
    results: dict[str, TrainResult] = {}
    with runs.run_lock(out):
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
    tcfg = trainer_config(st, len(samples), eval_every=st.eval_every, ckpt_every=st.ckpt_every or st.eval_every,
                          ckpt_minutes=cfg.ckpt_minutes, precision=cfg.precision, num_workers=cfg.num_workers,
                          select_metric=select, progress=progress)
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
    crop, as in training (§2.1); images of different sizes are accepted with a warning, since both are squashed.
    ``checkpoint``: a file, a run folder of ``idclab train clip4idc`` (its captioning stage) or a loaded model.
    """
    model = checkpoint if isinstance(checkpoint, CLIP4IDC) else load(checkpoint, stage=_caption_stage(checkpoint))
    if model.captioner is None:
        raise ValueError(f"{model.checkpoint_info['path']} is an adaptation (stage 1) checkpoint, which cannot "
                         "caption; pass the caption stage's (RUN/caption/best.pt) or the run folder.")
    _check_beam(beam)
    a, b = backbones.load_image(before), backbones.load_image(after)
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
    if not isinstance(beam, int) or beam < 1:
        raise ValueError(f"--beam must be an integer >= 1 (1: greedy decoding), got {beam!r}.")


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
