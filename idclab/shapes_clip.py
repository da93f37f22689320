"""shapes-clip: the toy world's CLIP, pretrained by idclab on Shapes scene descriptions only.

The paper world starts from OpenAI's CLIP, trained on image-text pairs from the web and never on difference
captions or composed queries. shapes-clip plays that role in the Shapes world: a tiny open_clip ``CLIP`` trained
with CLIP's own recipe (symmetric InfoNCE, learnable temperature) on (rendered scene, scene description) pairs --
**never** on difference captions or CIR triplets, so that the gap CLIP4IDC and Pic2Word bridge exists here too.

The shipped weights (``idclab/assets/shapes_clip.pt``) come from ``idclab train clip --profile toy``; the asset
records the command and the retrieval figures measured on the held-out Shapes test split, which
``idclab eval clip --model shapes-clip`` reproduces.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from idclab import backbones
from idclab.configs import get_profile, save_json
from idclab.data.shapes import STYLES, ShapesCaptions
from idclab.losses import symmetric_info_nce
from idclab.metrics.retrieval import recall_at_k, topk_search
from idclab.train import Trainer, TrainConfig, TrainResult, load_checkpoint

__all__ = ["ClipPretrainConfig", "preset", "train_clip", "evaluate_retrieval", "export_shapes_clip"]


@dataclass(frozen=True)
class ClipPretrainConfig:
    arch: str = "shapes-clip-arch"  # backbones.TINY_CONFIGS entry: ViT 4x128 @ 64 px, patch 8; text 4x128, context 64
    n_train: int = 400_000  # training scenes (generated on the fly; each index is a new scene)
    n_val: int = 500  # val gallery for model selection
    n_test: int = 1000  # test gallery for the recorded figures
    seed: int = 0
    steps: int = 4000
    batch_size: int = 128  # CLIP's loss improves with batch size; 128 fits 2 CPU cores at ~0.7 s/step
    lr: float = 1e-3  # AdamW, as for small CLIPs trained from scratch
    weight_decay: float = 0.1  # CLIP's; on matrices only (no decay on embeddings, norms, biases, logit scale)
    warmup_steps: int = 200
    eval_every: int = 500
    max_logit_scale: float = 100.0  # CLIP clamps the learnable inverse temperature at 100


def preset(profile: str | None = None) -> ClipPretrainConfig:
    """The pretraining recipe for a profile. There is no paper profile: the paper world uses OpenAI's weights."""
    profile = get_profile(profile)
    if profile == "smoke":
        return ClipPretrainConfig(arch="idc-micro", n_train=512, n_val=64, n_test=64, steps=6, batch_size=32,
                                  warmup_steps=2, eval_every=3)
    if profile == "toy":
        return ClipPretrainConfig()
    raise ValueError(
        "shapes-clip pretraining has no 'paper' profile: the paper world starts from OpenAI's CLIP weights "
        "(load_clip('ViT-B-32-quickgelu', pretrained='openai')). Use --profile toy or smoke."
    )


# ----------------------------------------------------------------------------------------------------------------------
# Batches and loss
# ----------------------------------------------------------------------------------------------------------------------


class CaptionCollate:
    """[(uint8 image [H, W, 3], caption)] -> (pixels [B, 3, S, S], tokens [B, context])."""

    def __init__(self, image_size: int, context_length: int):
        self.image_size = image_size
        self.context_length = context_length

    def __call__(self, items):
        images, captions = zip(*items)
        pixels = backbones.to_pixels(np.stack(images), self.image_size)
        return pixels, backbones.tokenize(list(captions), context_length=self.context_length)


def clip_loss(model, batch, *, max_logit_scale: float = 100.0):
    """CLIP's symmetric InfoNCE with its learnable temperature (clamped at ``max_logit_scale``)."""
    pixels, tokens = batch
    scale = model.logit_scale.exp().clamp(max=max_logit_scale)
    out = symmetric_info_nce(model.encode_image(pixels), model.encode_text(tokens), scale=scale)
    return out.loss, {"i2t": out.ip_t.item(), "t2i": out.t_ip.item(), "scale": scale.item()}


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def encode_captions_dataset(model, data: ShapesCaptions, *, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised image and text features of a caption dataset: ([N, D], [N, D])."""
    device = next(model.parameters()).device
    collate = CaptionCollate(backbones.image_size(model), model.context_length)
    img_feats, txt_feats = [], []
    for start in range(0, len(data), batch_size):
        pixels, tokens = collate([data[i] for i in range(start, min(start + batch_size, len(data)))])
        img_feats.append(model.encode_image(pixels.to(device), normalize=True).float().cpu())
        txt_feats.append(model.encode_text(tokens.to(device), normalize=True).float().cpu())
    return torch.cat(img_feats), torch.cat(txt_feats)


def evaluate_retrieval(model, *, split: str = "test", n: int = 1000, seed: int = 0) -> dict:
    """Text->image and image->text R@1/5/10 (percent) on ``n`` held-out Shapes scenes, one caption each.

    The gallery for each direction is the ``n`` items of the split; the i-th caption describes the i-th image.
    """
    model.eval()
    data = ShapesCaptions(split, n, seed=seed, size=backbones.image_size(model), styles=STYLES)
    img, txt = encode_captions_dataset(model, data)
    targets = torch.arange(n)
    _, t2i = topk_search(txt, img, k=10)  # [n, 10] image indices per caption
    _, i2t = topk_search(img, txt, k=10)  # [n, 10] caption indices per image
    out = {f"t2i_{k}": v for k, v in recall_at_k(t2i, targets, ks=(1, 5, 10)).items()}
    out.update({f"i2t_{k}": v for k, v in recall_at_k(i2t, targets, ks=(1, 5, 10)).items()})
    out.update(gallery_size=n, split=split)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Training and export
# ----------------------------------------------------------------------------------------------------------------------


def train_clip(config: ClipPretrainConfig, out_dir: str | Path | None, *, resume: str | None = None,
               progress: bool = True, on_step=None, device: str | None = None) -> tuple[torch.nn.Module, TrainResult]:
    """Pretrain a CLIP on Shapes scene descriptions; best checkpoint by val mean recall. Returns (model, result)."""
    torch.manual_seed(config.seed)
    model = backbones.load_clip(config.arch)
    data = ShapesCaptions("train", config.n_train, seed=config.seed, size=backbones.image_size(model), styles=STYLES)
    collate = CaptionCollate(backbones.image_size(model), model.context_length)

    def val_fn(m):
        r = evaluate_retrieval(m, split="val", n=config.n_val, seed=config.seed)
        return {k: v for k, v in r.items() if k.startswith(("t2i", "i2t"))} | {"mean_R": _mean_recall(r)}

    train_cfg = TrainConfig(max_steps=config.steps, batch_size=config.batch_size, lr=config.lr,
                            weight_decay=config.weight_decay, betas=(0.9, 0.98), eps=1e-6,
                            warmup_steps=config.warmup_steps, eval_every=config.eval_every, ckpt_every=config.eval_every,
                            select_metric="mean_R", seed=config.seed, progress=progress)
    trainer = Trainer(model, lambda m, b: clip_loss(m, b, max_logit_scale=config.max_logit_scale), data,
                      config=train_cfg, out_dir=out_dir, collate_fn=collate, val_fn=val_fn, on_step=on_step,
                      extra=dict(stage="clip-pretrain", clip=dataclasses.asdict(config)), device=device)
    result = trainer.fit(resume=resume)
    if result.best_checkpoint is not None:
        model.load_state_dict(load_checkpoint(result.best_checkpoint)["model"])
    return model.eval(), result


def _mean_recall(r: dict) -> float:
    keys = [k for k in r if k.startswith(("t2i_R@", "i2t_R@"))]
    return float(sum(r[k] for k in keys) / len(keys))


def export_shapes_clip(checkpoint: str | Path, out: str | Path = backbones.SHAPES_CLIP_PATH, *,
                       command: str = "idclab train clip --profile toy") -> dict:
    """Pack a pretraining checkpoint as the shipped shapes-clip asset and record its test-split figures.

    Only token-embedding rows that training changed are kept (AdamW with no decay on embeddings leaves unseen rows
    exactly at their initial values); the rest load as zeros. The figures are measured on the packed model, as
    users will load it.
    """
    state = load_checkpoint(checkpoint)
    config = ClipPretrainConfig(**state["extra"]["clip"])
    torch.manual_seed(config.seed)
    init = backbones.load_clip(config.arch)  # the same seeded initialisation the run started from
    model = backbones.load_clip(config.arch)
    model.load_state_dict(state["model"])
    changed = (model.token_embedding.weight != init.token_embedding.weight).any(dim=1).nonzero().flatten()
    model_cfg = backbones.TINY_CONFIGS[config.arch]
    out = Path(out)
    torch.save(backbones.pack_shapes_clip(model, model_cfg, changed, {}, command), out)
    # Measure what users get: the packed weights, loaded back.
    metrics = evaluate_retrieval(backbones.load_shapes_clip_file(out), split="test", n=config.n_test, seed=config.seed)
    packed = torch.load(out, map_location="cpu", weights_only=True)
    packed["metrics"] = metrics
    torch.save(packed, out)
    # A readable copy of the record beside the weights.
    save_json(dict(metrics=metrics, command=command, model_cfg=model_cfg, pretrain=dataclasses.asdict(config),
                   token_rows_kept=int(changed.numel()), bytes=out.stat().st_size), out.with_suffix(".json"))
    return metrics
