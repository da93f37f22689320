"""Pic2Word: zero-shot composed image retrieval by turning a picture into a word.

Paper: Saito, Sohn, Zhang, Li, Lee, Saenko, Pfister, "Pic2Word: Mapping Pictures to Words for Zero-shot Composed Image
Retrieval", CVPR 2023 (arXiv 2302.03084). Reference code: ``google-research/composed_image_retrieval`` (commit
8c05329). Comments tag where each fact comes from: [README] the reference README's training command, [code] the
reference code; "P2W-N" is bug N of the reference code, explained for readers in the book's appendix
``book/pitfalls.md``.

Differences from the reference code (the paper presets reproduce everything else; the book's appendix "Reproduction
notes" has the same list):

* CLIP's weights are frozen (``requires_grad=False``); the reference leaves them trainable but gives only the mapping
  network to the optimiser, so the trained weights are the same and idclab skips the unused weight gradients (P2W-11).
* The placeholder ``*`` is found in every row of a batch; the reference looks in row 0 only, which gives the same
  queries as long as every prompt starts alike, as its own do (P2W-3).
* Every run is seeded; the reference sets no seed (P2W-7).
* Errors propagate: evaluation failures are not swallowed (P2W-1), and missing or unreadable FashionIQ images are an
  error naming them, where the reference drops those queries and averages over fewer (P2W-5).
* The text-only baseline encodes the modification text alone, not the composed prompt with a literal ``*`` in it
  (P2W-12).
* Option ``precompute`` (off by default): encode every training image once and train on the stored features, about
  3x less compute per step on a GPU, without the reference's RandomResizedCrop(0.9-1.0) augmentation.
* COCO object composition (:mod:`idclab.data.coco_composition`): the query object is drawn with a seed (the
  reference's draw is unseeded); the lower area bound is a fraction of the image (``pixel_lower_bound=True`` keeps
  the reference's comparison in pixels); crowd objects are never chosen (their masks need pycocotools); polygons are
  rasterised with PIL and saved as PNG, where the reference uses pycocotools and JPEG, so boundary pixels can differ
  (P2W-6). The other classes keep the reference's order (first annotation) by default.
* Ranking in blocks with a running top-k instead of sorting the full score matrix: the same top K (P2W-17).

The method in three steps:

1. **Mapping network** f_M ([code]): the CLIP image embedding v (after ``visual.proj``, *not* normalised) goes through
   Linear -> Dropout(0.1) -> ReLU twice and a last Linear into the token-embedding space: a pseudo-word s = f_M(v).
2. **Training on images only** ([code]): s replaces the placeholder ``*`` of "a photo of *" in the frozen text encoder
   (:func:`idclab.backbones.encode_text_with_pseudo_tokens`); the symmetric contrastive loss pulls the text embedding
   p of that prompt towards v and away from the other images of the batch, at a fixed logit scale of 100. All of CLIP
   is frozen; gradients flow *through* the text encoder into s and f_M. No captions are used.
3. **Zero-shot retrieval** ([code]): the reference image becomes s and is composed with the modification in a prompt,
   e.g. "a cartoon of *" (domain conversion) or "a photo of * , {caption}" (CIRR); the text embedding of the prompt is
   the query, the gallery is CLIP image embeddings. Prompts are config fields, recorded with every result.

Reading order: config and presets -> mapping network -> the frozen-CLIP model and its loss -> training data ->
training -> the retriever -> loading checkpoints (ours and the reference's).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset, Subset
from torchvision.transforms import RandomResizedCrop
from tqdm.auto import tqdm

from idclab import backbones, runs
from idclab.cir import CIRQuery, CLIPRetriever, check_prompts
from idclab.cir.retrievers import placeholder_position
from idclab.configs import from_dict, get_profile, pick_device, to_dict
from idclab.data.image_folder import CSVImages, ImageFolder
from idclab.data.shapes import ShapesCaptions
from idclab.losses import symmetric_info_nce
from idclab.metrics.retrieval import recall_at_k, topk_search
from idclab.train import TrainConfig, Trainer, TrainResult, train_device

__all__ = [
    "PROMPTS", "DATASETS", "STAGES", "Pic2WordConfig", "config_for", "MappingNetwork", "Pic2Word", "pic2word_loss",
    "training_images", "FeatureRows", "CroppedImages", "precompute_features", "validate_inversion", "train",
    "Pic2WordRetriever", "load", "load_retriever", "load_reference_mapping",
]

# [code] The composed query per task. "* ," is deliberate: "*," is one BPE chunk with no "*" token (P2W-4).
PROMPTS = {
    "domain": "a {domain} of *",  # ImageNet-R domain conversion (and the Shapes domain task)
    "cirr": "a photo of * , {caption}",  # CIRR (and the Shapes attribute / object tasks, and CIRCO)
    "fashioniq": "a photo of * , {cap2} and {cap1}",  # FashionIQ: the second caption first, as the reference does
    "coco": "a photo of * and {classes}",  # COCO: query class first, then the image's other classes
}
DATASETS = ("cc3m", "folder", "shapes")  # a Pic2Word TSV of image paths, any image folder, generated Shapes photos
METHOD = "pic2word"
STAGES = ("mapping",)  # one stage: the mapping network

# ----------------------------------------------------------------------------------------------------------------------
# Config (paper defaults; each field cites its source) and presets
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pic2WordConfig:
    dataset: str = "cc3m"  # [README]: CC3M images via a TSV (filepath, title; titles unused); or "folder" / "shapes"
    profile: str = "paper"
    backbone: str = "ViT-L-14-quickgelu"  # [code]: ViT-L/14, OpenAI weights (QuickGELU), 224 px
    pretrained: str | None = "openai"  # [code]
    middle_dim: int = 512  # [code] --middle_dim
    n_layers: int = 2  # [code] --n_layer: hidden blocks Linear -> Dropout -> ReLU
    dropout: float = 0.1  # [code]: hard-coded 0.1 (the --droprate flag is ignored, P2W-10)
    train_prompt: str = "a photo of *"  # [code]: the pseudo-word takes the place of the object
    logit_scale: float | None = 100.0  # [code]: fixed, CLIP's exp(logit_scale) = 100; None: the backbone's own, frozen
    lr: float = 1e-4  # [README] training command
    weight_decay: float = 0.1  # [README] (on weight matrices; none on biases)
    betas: tuple[float, float] = (0.9, 0.98)  # [README] ViT defaults
    eps: float = 1e-6  # [README]
    warmup_steps: int = 10_000  # [README]: linear warm-up, then cosine to 0
    epochs: int = 30  # [README]
    max_steps: int | None = None  # overrides epochs (toy / smoke)
    batch_size: int = 128  # [README]: per GPU; the reference spawns on every visible GPU, 8 GPUs = 1,024 negatives
    precision: str = "auto"  # [README] --precision amp (autocast on CUDA, fp32 master weights)
    crop_scale: tuple[float, float] = (0.9, 1.0)  # [README] RandomResizedCrop(224, scale 0.9-1.0, bicubic)
    precompute: bool = False  # the reference re-encodes every step (with the crop); True: once, no augmentation
    preprocess: str = "center_crop"  # [README] evaluation: Resize(224, bicubic) + CenterCrop(224)
    prompts: dict = field(default_factory=lambda: dict(PROMPTS))  # [code], recorded with every result
    shapes_images: tuple[int, int] = (0, 0)  # data == "shapes": (train, val) photos generated
    val_images: int = 1000  # held-out images for the inversion check (val split of Shapes; else the last N images)
    eval_every: int | None = None  # steps between validations (None: at the end only)
    ckpt_every: int | None = None  # steps between resume files (None: at the end, on interrupt, every ckpt_minutes)
    ckpt_minutes: float | None = 10.0  # resume file every 10 minutes of training (a Colab disconnect loses less)
    num_workers: int | None = None  # DataLoader workers; None: min(8, CPUs) on CUDA, 0 on the CPU
    seed: int = 0  # the reference is unseeded (P2W-7)

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ValueError(f"Pic2WordConfig.dataset={self.dataset!r}; choose one of {DATASETS}.")
        if self.middle_dim < 1 or self.n_layers < 1 or not 0 <= self.dropout < 1:
            raise ValueError("Pic2WordConfig: middle_dim and n_layers must be >= 1 and dropout in [0, 1).")
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"crop_scale {self.crop_scale} must satisfy 0 < low <= high <= 1.")
        if backbones.PLACEHOLDER not in self.train_prompt.split():
            raise ValueError(f"train_prompt {self.train_prompt!r} must contain the placeholder "
                             f"{backbones.PLACEHOLDER!r} as a word of its own, e.g. 'a photo of *'.")

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Pic2WordConfig:
        cfg = from_dict(cls, data)
        return dataclasses.replace(cfg, crop_scale=tuple(cfg.crop_scale), shapes_images=tuple(cfg.shapes_images),
                                   betas=tuple(cfg.betas))


def config_for(dataset: str | None = None, profile: str | None = None, *, precompute: bool | None = None,
               **options) -> Pic2WordConfig:
    """``paper``: the reference recipe on ``cc3m`` (a Pic2Word TSV, the default) or any image ``folder``; ``toy`` and
    ``smoke`` train on ``shapes`` photos (the default). ``profile`` None reads ``$IDCLAB_PROFILE`` (default ``toy``);
    ``precompute``: encode every image once (no crop augmentation); ``options``: the common ones of
    :func:`idclab.runs.apply_options`."""
    profile = get_profile(profile)
    if dataset is None:
        dataset = "cc3m" if profile == "paper" else "shapes"
    if dataset not in DATASETS:
        raise ValueError(f"Unknown dataset {dataset!r}; choose one of {DATASETS}.")
    if profile == "paper":
        if dataset == "shapes":
            raise ValueError("Shapes photos are the smoke, toy and lite profiles' data; the paper profile trains on 'cc3m' "
                             "or an image 'folder'.")
        cfg = Pic2WordConfig(dataset=dataset)
    elif dataset != "shapes":
        raise ValueError(f"The {profile!r} profile trains on Shapes photos; use profile 'paper' for {dataset!r}.")
    elif profile == "lite":
        # The paper's ViT-L/14 with OpenAI weights on Shapes photos at 224 px, features precomputed, fewer steps:
        # sized for about 10 minutes on a Colab T4 (not yet timed on a GPU).
        cfg = Pic2WordConfig(profile="lite", dataset="shapes", warmup_steps=100, max_steps=1000, precompute=True,
                             shapes_images=(4000, 500), val_images=500, eval_every=250, ckpt_minutes=None)
    elif profile == "toy":
        # shapes-clip (embed 128, token width 128, 64 px): the same network shape at toy width, features precomputed
        # (training images are re-encoded for nothing on a CPU), more steps per image than the paper's 30 epochs of
        # CC3M would give. Chosen on Shapes *val* photos (the inversion check), never on the CIR benchmark.
        cfg = Pic2WordConfig(profile="toy", dataset="shapes", backbone="shapes-clip", pretrained=None, middle_dim=256,
                             lr=1e-3, warmup_steps=100, max_steps=1500, batch_size=128, precompute=True,
                             shapes_images=(8000, 500), val_images=500, eval_every=500, ckpt_minutes=None)
    else:
        cfg = Pic2WordConfig(profile="smoke", dataset="shapes", backbone="idc-micro", pretrained=None, middle_dim=32,
                             lr=1e-3, warmup_steps=0, max_steps=4, batch_size=8, precompute=True,
                             shapes_images=(32, 16), val_images=16, ckpt_minutes=None)
    if precompute is not None:
        cfg = dataclasses.replace(cfg, precompute=precompute)
    return runs.apply_options(cfg, **options)


# ----------------------------------------------------------------------------------------------------------------------
# The mapping network ([code])
# ----------------------------------------------------------------------------------------------------------------------


class MappingNetwork(nn.Module):
    """f_M: image embedding [B, embed_dim] -> pseudo-word embedding [B, token_width].

    ViT-L/14: 768 -> 512 -> 512 -> 768, 1,050,368 parameters. Module names match the reference's checkpoint keys
    (``layers.{i}.0`` and ``fc_out``), so its released weights load with :func:`load_reference_mapping`.
    """

    def __init__(self, embed_dim: int, token_width: int, *, middle_dim: int = 512, n_layers: int = 2,
                 dropout: float = 0.1):
        super().__init__()
        dims = [embed_dim] + [middle_dim] * n_layers
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Linear(d_in, d_out), nn.Dropout(dropout), nn.ReLU())  # Linear -> Dropout -> ReLU
            for d_in, d_out in zip(dims[:-1], dims[1:]))
        self.fc_out = nn.Linear(middle_dim, token_width)  # no activation, no norm

    def forward(self, v: torch.Tensor) -> torch.Tensor:  # v: [B, embed_dim], unnormalised
        for layer in self.layers:
            v = layer(v)  # [B, middle_dim]
        return self.fc_out(v)  # [B, token_width]


# ----------------------------------------------------------------------------------------------------------------------
# The model: frozen CLIP + mapping network, and the training loss ([code])
# ----------------------------------------------------------------------------------------------------------------------


def load_backbone(cfg: Pic2WordConfig, *, device: str | torch.device = "cpu") -> nn.Module:
    """The frozen CLIP of ``cfg`` (random-weight test configs come from a fixed seed, so a checkpoint of the mapping
    network alone rebuilds the whole model)."""
    return backbones.load_clip(cfg.backbone, cfg.pretrained, device=device).requires_grad_(False).eval()


class Pic2Word(nn.Module):
    """A frozen CLIP and the mapping network. Only ``mapping`` is trained (and saved)."""

    def __init__(self, cfg: Pic2WordConfig, *, clip: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        self.clip = (clip if clip is not None else load_backbone(cfg)).requires_grad_(False).eval()
        dims = backbones.clip_dims(self.clip)
        self.mapping = MappingNetwork(dims.embed_dim, dims.text_width, middle_dim=cfg.middle_dim, n_layers=cfg.n_layers,
                                      dropout=cfg.dropout)
        self.register_buffer("train_tokens", backbones.tokenize(cfg.train_prompt, context_length=dims.context_length),
                             persistent=False)  # [1, L]

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        """Only the mapping network: CLIP is frozen and rebuilt from the config, so checkpoints stay ~4 MB."""
        return self.mapping.state_dict(destination=destination, prefix=prefix + "mapping.", keep_vars=keep_vars)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.mapping.load_state_dict(_mapping_state(state_dict), strict=strict, assign=assign)

    def train(self, mode: bool = True) -> Pic2Word:
        super().train(mode)
        self.clip.eval()  # [code]: CLIP stays in eval mode; the mapping network trains (dropout active)
        return self

    @property
    def scale(self) -> float:
        """The fixed inverse temperature: cfg.logit_scale, or the backbone's own exp(logit_scale)."""
        if self.cfg.logit_scale is not None:
            return float(self.cfg.logit_scale)
        return float(backbones.logit_scale(self.clip).exp())

    @torch.no_grad()
    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(pixels)  # [B, D], unnormalised

    def encode_with_pseudo_word(self, image_feats: torch.Tensor, tokens: torch.Tensor, *,
                                positions: torch.Tensor | None = None) -> torch.Tensor:
        """Text features [B, D] (unnormalised) of ``tokens`` [B, L] with each row's ``*`` replaced by f_M(v_b) (only the
        one at ``positions[b]`` when given)."""
        pseudo = self.mapping(image_feats)  # [B, width]
        return backbones.encode_text_with_pseudo_tokens(self.clip, tokens, pseudo, positions=positions)  # [B, D]

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        return pic2word_loss(self, batch)


def pic2word_loss(model: Pic2Word, batch: dict) -> tuple[torch.Tensor, dict]:
    """[code]: v = image features (given, or encoded without gradient); p = text features of "a photo of f_M(v)";
    L = (CE(scale * v_hat p_hat^T, I) + CE(scale * p_hat v_hat^T, I)) / 2, negatives from the global batch."""
    v = batch["features"] if "features" in batch else model.image_features(batch["pixels"])  # [B, D]
    tokens = model.train_tokens.expand(v.shape[0], -1)  # [B, L]
    p = model.encode_with_pseudo_word(v, tokens)  # [B, D]
    out = symmetric_info_nce(v.float(), p.float(), scale=model.scale)
    return out.loss, {"image_to_text": out.ip_t.detach(), "text_to_image": out.t_ip.detach()}


# ----------------------------------------------------------------------------------------------------------------------
# Training data: images only
# ----------------------------------------------------------------------------------------------------------------------


class _ShapesPhotos(Dataset):
    """Shapes scenes in the photo style, images only (their descriptions are never used)."""

    def __init__(self, split: str, n: int, *, seed: int, size: int):
        self.data = ShapesCaptions(split, n, seed=seed, size=size, styles=("photo",))

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.data[i][0]


def training_images(cfg: Pic2WordConfig, *, root: str | Path | None = None, image_size: int = 224
                    ) -> tuple[Dataset, Dataset]:
    """(train, val) image datasets (items uint8 [H, W, 3]). Shapes: generated photos of the train / val splits.
    ``folder``: every image under ``root``; ``cc3m``: a Pic2Word TSV (``root`` = the .tsv/.csv file, column
    ``filepath``). For those two, the last ``cfg.val_images`` images are held out for validation."""
    if cfg.dataset == "shapes":
        n_train, n_val = cfg.shapes_images
        return (_ShapesPhotos("train", n_train, seed=cfg.seed, size=image_size),
                _ShapesPhotos("val", n_val, seed=cfg.seed, size=image_size))
    if root is None:
        raise ValueError(f"dataset {cfg.dataset!r} needs --root: an image folder, or a Pic2Word TSV of image paths "
                         "(see data_scripts/image_folder.py prepare).")
    if not Path(root).exists():
        what = "image folder" if cfg.dataset == "folder" else "Pic2Word TSV"
        raise FileNotFoundError(f"No {what} at {root}: pass --root a folder of your images (--dataset folder) or the "
                                "TSV that `python data_scripts/image_folder.py prepare --images DIR --out FILE.tsv` "
                                "writes (--dataset cc3m).")
    images = ImageFolder(root) if cfg.dataset == "folder" else CSVImages(root)
    n_val = min(cfg.val_images, len(images) // 10)
    if n_val < 1:
        raise ValueError(f"{root} holds {len(images)} images; Pic2Word needs at least 10 (one tenth is held out).")
    return Subset(images, range(len(images) - n_val)), Subset(images, range(len(images) - n_val, len(images)))


class FeatureRows(Dataset):
    """Precomputed image features as a dataset: item i = features[i] ([D])."""

    def __init__(self, features: torch.Tensor):
        self.features = features

    def __len__(self) -> int:
        return self.features.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.features[i]


class CroppedImages(Dataset):
    """Images with the reference's training augmentation: RandomResizedCrop(size, scale, bicubic). The crop is drawn
    from torch's global generator, which the Trainer saves and restores, so resuming stays exact."""

    def __init__(self, images: Dataset, size: int, scale: tuple[float, float]):
        self.images, self.size, self.scale = images, size, scale

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> np.ndarray:
        img = backbones.load_image(self.images[i])  # [H, W, 3]
        top, left, h, w = RandomResizedCrop.get_params(torch.empty(1, *img.shape[:2]), list(self.scale),
                                                       [3 / 4, 4 / 3])
        crop = Image.fromarray(img[top:top + h, left:left + w]).resize((self.size, self.size), Image.BICUBIC)
        return np.asarray(crop)


def _collate_features(rows: Sequence[torch.Tensor]) -> dict:
    return {"features": torch.stack(list(rows))}


def _collate_images(images: Sequence[np.ndarray]) -> dict:
    return {"pixels": backbones.to_pixels(np.stack(images), images[0].shape[0])}


@torch.no_grad()
def precompute_features(model: Pic2Word, images: Dataset, *, batch_size: int = 256, preprocess: str = "center_crop",
                        progress: bool = True) -> torch.Tensor:
    """Raw CLIP image features [N, D] of every image, once (no augmentation)."""
    device = next(model.clip.parameters()).device
    size = backbones.image_size(model.clip)
    out = []
    for s in tqdm(range(0, len(images), batch_size), desc="image features", disable=not progress, unit="batch"):
        batch = [images[i] for i in range(s, min(s + batch_size, len(images)))]
        out.append(model.image_features(backbones.to_pixels(batch, size, device=device, resize=preprocess)).float())
    return torch.cat(out)


@torch.no_grad()
def validate_inversion(model: Pic2Word, features: torch.Tensor, *, batch_size: int = 256) -> dict[str, float]:
    """How well the pseudo-word stands for its image, on held-out images: each "a photo of f_M(v_i)" ranks all the
    held-out images; R@1/5 = % that find their own image (text -> image), plus the contrastive loss, which picks the
    best checkpoint (R@1 saturates near 100 % on Shapes and then separates checkpoints by a single image)."""
    was = model.training
    model.eval()
    feats = features.to(next(model.mapping.parameters()).device)
    texts = []
    for s in range(0, feats.shape[0], batch_size):
        v = feats[s:s + batch_size]
        texts.append(model.encode_with_pseudo_word(v, model.train_tokens.expand(v.shape[0], -1)).float())
    p = F.normalize(torch.cat(texts), dim=-1)  # [N, D]
    v = F.normalize(feats.float(), dim=-1)
    _, idx = topk_search(p, v, min(5, v.shape[0]))
    truth = torch.arange(v.shape[0], device=v.device)
    out = {f"inversion_{k}": val for k, val in recall_at_k(idx, truth, (1, min(5, v.shape[0]))).items()}
    out["inversion_loss"] = float(symmetric_info_nce(v, p, scale=model.scale, gather=False).loss)
    model.train(was)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------------


def train(cfg: Pic2WordConfig, out_dir: str | Path, *, stages=None, root: str | Path | None = None, init=None,
          resume: bool = False, overwrite: bool = False, device: str | torch.device | None = None,
          progress: bool = True, on_step=None) -> dict[str, TrainResult]:
    """Train the mapping network into ``out_dir/mapping``: ``best.pt`` (the lowest held-out inversion loss),
    ``last.pt``, ``resume.pt``. Returns ``{"mapping": TrainResult}``; :func:`load` gives the trained model."""
    runs.check_stages(stages, STAGES)
    if init is not None:
        raise ValueError("Pic2Word trains its mapping network from scratch on a frozen CLIP: drop --init.")
    out = Path(out_dir)
    device = train_device(device)  # under torchrun: this process's GPU (LOCAL_RANK), also for the features
    if cfg.dataset != "shapes":
        training_images(cfg, root=root)  # check the data before building a model or downloading weights
    with runs.run_lock(out):
        runs.prepare_run(out, STAGES, resume=resume, overwrite=overwrite)  # under the lock: one writer
        torch.manual_seed(cfg.seed)  # the mapping network's initial weights depend on the seed only
        model = Pic2Word(cfg, clip=load_backbone(cfg, device=device)).to(device)
        size = backbones.image_size(model.clip)
        train_images, val_images = training_images(cfg, root=root, image_size=size)
        val_feats = precompute_features(model, val_images, preprocess=cfg.preprocess, progress=progress)
        if cfg.precompute:
            data, collate = FeatureRows(precompute_features(model, train_images, preprocess=cfg.preprocess,
                                                            progress=progress).cpu()), _collate_features
        else:
            data, collate = CroppedImages(train_images, size, cfg.crop_scale), _collate_images
        steps_per_epoch = max(1, len(data) // cfg.batch_size)
        steps = cfg.epochs * steps_per_epoch if cfg.max_steps is None else cfg.max_steps
        tc = TrainConfig(max_steps=steps, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                         betas=cfg.betas, eps=cfg.eps, warmup_steps=min(cfg.warmup_steps, steps), schedule="cosine",
                         precision=cfg.precision, seed=cfg.seed, num_workers=cfg.num_workers,
                         eval_every=cfg.eval_every, ckpt_every=cfg.ckpt_every, ckpt_minutes=cfg.ckpt_minutes,
                         select_metric="inversion_loss", select_mode="min", progress=progress)
        header = runs.make_header(METHOD, "mapping", cfg, backbones.model_config(model.clip))
        trainer = Trainer(model, pic2word_loss, data, config=tc, out_dir=out / "mapping", collate_fn=collate,
                          val_fn=lambda m: validate_inversion(m, val_feats), device=device, on_step=on_step,
                          header=header)
        result = trainer.fit(resume=resume)
        runs.record_stage(out, method=METHOD, config=cfg, stage="mapping", entry=runs.stage_entry(out, result))
    return {"mapping": result}


def _mapping_state(state: dict) -> dict:
    return {k[len("mapping."):]: v for k, v in state.items() if k.startswith("mapping.")}


# ----------------------------------------------------------------------------------------------------------------------
# Retrieval ([code]): the retriever for idclab.cir
# ----------------------------------------------------------------------------------------------------------------------


class Pic2WordRetriever(CLIPRetriever):
    """Query = text embedding of the task's prompt with ``*`` replaced by f_M(v_reference); gallery = CLIP images."""

    method = "pic2word"

    def __init__(self, model: Pic2Word, *, prompts: dict | None = None, device: str | torch.device | None = None):
        super().__init__(model.clip, preprocess=model.cfg.preprocess,
                         device=device or next(model.mapping.parameters()).device)
        self.model = model.to(self.device).eval()
        self.prompts = check_prompts(model.cfg.prompts if prompts is None else prompts,
                                     placeholder=backbones.PLACEHOLDER)

    @torch.no_grad()
    def encode_query(self, image_feats: torch.Tensor, queries: Sequence[CIRQuery]) -> torch.Tensor:
        parts = [self.prompt(q) for q in queries]  # (template, field values cut to fit the context)
        texts = [template.format(**fields) for template, fields in parts]
        tokens = backbones.tokenize(texts, context_length=self.context_length).to(self.device)  # [B, L]
        # Only the template's own "*" becomes the pseudo-word: a "*" in the user's text stays an asterisk.
        positions = torch.tensor([placeholder_position(t, f, backbones.PLACEHOLDER) for t, f in parts])  # [B]
        return F.normalize(self.model.encode_with_pseudo_word(image_feats, tokens, positions=positions).float(),
                           dim=-1)  # [B, D]

    def describe(self) -> dict:
        return dict(super().describe(), prompts=dict(self.prompts),
                    checkpoint=getattr(self.model, "checkpoint_info", None))


# ----------------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------------


def load(run_or_checkpoint: str | Path, *, stage: str | None = None,
         device: str | torch.device | None = None) -> Pic2Word:
    """A trained Pic2Word: the frozen CLIP of its config (``pretrained`` weights, as in training: the checkpoint
    holds only the mapping network) and the saved mapping network."""
    path = runs.resolve_checkpoint(run_or_checkpoint, stage, method=METHOD)
    state = runs.read(path)
    cfg = Pic2WordConfig.from_dict(state["header"]["config"])
    model = Pic2Word(cfg, clip=load_backbone(cfg))
    model.load_state_dict(state["model"])
    model.checkpoint_info = dict(path=str(path), selected_on_val=state.get("selection"))
    return model.to(pick_device(device)).eval()


def load_retriever(checkpoint: str | Path, *, device: str | torch.device | None = None) -> Pic2WordRetriever:
    return Pic2WordRetriever(load(checkpoint, device=device))


def load_reference_mapping(model: Pic2Word, path: str | Path, *, trust: bool = False) -> Pic2Word:
    """Load the reference's released mapping weights (``state_dict_img2text``, DDP ``module.`` prefix) into ``model``
    (configured as the paper: ViT-L/14, 768 -> 512 -> 512 -> 768).

    The file is read with ``weights_only=True``. If it holds other pickled Python objects, it is refused unless
    ``trust=True`` (``--trust-checkpoint``): unpickling can run code, so do that only for a file from a source you
    trust, such as the authors' release.
    """
    state = runs.load_released(path, trust=trust)
    if not isinstance(state, dict) or "state_dict_img2text" not in state:
        raise ValueError(f"{path} has no 'state_dict_img2text': not a Pic2Word reference checkpoint.")
    sd = {k.removeprefix("module."): v for k, v in state["state_dict_img2text"].items()}
    model.mapping.load_state_dict(sd)
    return model
