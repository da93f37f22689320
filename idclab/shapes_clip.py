"""shapes-clip: the toy world's CLIP, pretrained by idclab on Shapes scene descriptions only.

The paper world starts from OpenAI's CLIP, trained on image-text pairs from the web and never on difference
captions or composed queries. shapes-clip plays that role in the Shapes world: a tiny open_clip ``CLIP`` trained
with CLIP's own recipe (symmetric InfoNCE, learnable temperature) on (rendered scene, scene description) pairs --
**never** on difference captions or CIR triplets, so that the gap CLIP4IDC and Pic2Word bridge exists here too.

One deliberate addition to CLIP's recipe: **twin scenes as hard negatives** (as NegCLIP does for real CLIP). With
random batches, colour, size and object count already tell any two Shapes scenes apart, and a CLIP trained that way
retrieves almost perfectly while barely looking at shape or material. So each scene in a batch comes with a twin
that differs in one attribute of one object, each with its own description; only that attribute separates them.
The model still sees nothing but (image, scene description) pairs.

It follows idclab's lifecycle (``idclab.runs``): :func:`config_for`, :func:`train`, :func:`load`. The shipped
weights (``idclab/assets/shapes_clip.pt``) come from ``idclab train clip --profile toy``; the asset
records the command, the retrieval figures on the held-out Shapes test split and the attribute probe (both
reproduced by ``idclab eval clip --model shapes-clip``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from idclab import backbones, runs
from idclab.configs import from_dict, get_profile, pick_device, save_json, to_dict
from idclab.data import shapes
from idclab.data.shapes import STYLES, ShapesCaptions
from idclab.losses import symmetric_info_nce
from idclab.metrics.retrieval import recall_at_k, topk_search
from idclab.train import Trainer, TrainConfig, TrainResult

__all__ = ["ClipPretrainConfig", "STAGES", "config_for", "train", "load", "evaluate_retrieval", "export_shapes_clip"]

METHOD = "clip"  # `idclab train clip`
STAGES = ("pretrain",)


@dataclass(frozen=True)
class ClipPretrainConfig:
    dataset: str = "shapes"  # scene descriptions of the Shapes world: the only data shapes-clip learns from
    profile: str = "toy"
    arch: str = "shapes-clip-arch"  # backbones.TINY_CONFIGS entry: ViT 4x128 @ 64 px, patch 8; text 4x128, context 64
    n_train: int = 400_000  # training scenes (generated on the fly; each index is a new scene)
    hard_negatives: bool = True  # pair every scene with a twin differing in one attribute of one object (see below)
    n_val: int = 500  # val gallery for model selection
    n_test: int = 1000  # test gallery for the recorded figures
    seed: int = 0
    max_steps: int = 2500
    batch_size: int = 64  # scenes per batch; with their twins, 128 image-text pairs (~0.75 s/step on 2 CPU cores)
    lr: float = 1e-3  # AdamW, as for small CLIPs trained from scratch
    weight_decay: float = 0.1  # CLIP's; on matrices only (no decay on embeddings, norms, biases, logit scale)
    warmup_steps: int = 200
    eval_every: int | None = 500
    ckpt_every: int | None = 500  # steps between resume files
    max_logit_scale: float = 100.0  # CLIP clamps the learnable inverse temperature at 100
    precision: str = "auto"
    num_workers: int | None = None  # DataLoader workers; None: min(8, CPUs) on CUDA, 0 on the CPU

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ClipPretrainConfig:
        return from_dict(cls, data)


def config_for(dataset: str = "shapes", profile: str | None = None, **options) -> ClipPretrainConfig:
    """The pretraining recipe of a profile, with :func:`idclab.runs.apply_options`. There is no paper profile: the
    paper world starts from OpenAI's weights."""
    profile = get_profile(profile)
    if dataset != "shapes":
        raise ValueError(f"shapes-clip learns from Shapes scene descriptions only; dataset must be 'shapes', not "
                         f"{dataset!r}.")
    if profile == "smoke":
        cfg = ClipPretrainConfig(profile="smoke", arch="idc-micro", n_train=512, n_val=64, n_test=64, max_steps=6,
                                 batch_size=32, warmup_steps=2, eval_every=3, ckpt_every=3)
    elif profile == "toy":
        cfg = ClipPretrainConfig()
    else:
        raise ValueError(
            f"shapes-clip pretraining has no {profile!r} profile: the paper world starts from OpenAI's CLIP weights "
            "(load_clip('ViT-B-32-quickgelu', pretrained='openai')). Use --profile toy or smoke.")
    return runs.apply_options(cfg, **options)


# ----------------------------------------------------------------------------------------------------------------------
# Batches and loss
# ----------------------------------------------------------------------------------------------------------------------


ATTRIBUTE_VALUES = {"color": tuple(shapes.COLORS), "size": shapes.SIZES, "material": shapes.MATERIALS,
                    "shape": shapes.SHAPES}


def twin_scene(scene: shapes.Scene, rng: np.random.Generator, *, attribute: str | None = None) -> shapes.Scene | None:
    """The same scene with one attribute of one object changed, never creating two identical objects.

    ``attribute``: which one to change (default: a random one that can change). None if no such twin exists.
    """
    def options(attr):  # every (object, new value) that keeps the objects distinct
        keys = [(o.shape, o.color, o.size, o.material) for o in scene.objects]
        found = []
        for k, old in enumerate(scene.objects):
            for value in ATTRIBUTE_VALUES[attr]:
                new = dataclasses.replace(old, **{attr: value})
                if value != getattr(old, attr) and (new.shape, new.color, new.size, new.material) not in keys:
                    found.append((k, new))
        return found

    attrs = [attribute] if attribute else [a for a in rng.permutation(list(ATTRIBUTE_VALUES)) if options(a)]
    found = options(attrs[0]) if attrs else []
    if not found:
        return None
    k, new = found[int(rng.integers(len(found)))]
    return dataclasses.replace(scene, objects=scene.objects[:k] + (new,) + scene.objects[k + 1:])


class PretrainScenes(Dataset):
    """Item i: [(image, description)] of a Shapes scene, plus its twin's with ``hard_negatives``; deterministic in i."""

    def __init__(self, split: str, n: int, *, seed: int, size: int, hard_negatives: bool):
        self.base = ShapesCaptions(split, n, seed=seed, size=size, styles=STYLES)
        self.hard_negatives = hard_negatives
        self.split, self.seed = split, seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> list[tuple[np.ndarray, str]]:
        scene, caption = self.base.scene(i)
        items = [(shapes.render(scene, size=self.base.size), caption)]
        if self.hard_negatives:
            rng = np.random.default_rng([self.seed, shapes.SPLIT_INDEX[self.split], i, 7])
            twin = twin_scene(scene, rng)
            if twin is not None:  # None only if no attribute of any object can change without making a duplicate
                items.append((shapes.render(twin, size=self.base.size), shapes.describe_scene(twin, rng)))
        return items


class CaptionCollate:
    """[(uint8 image [H, W, 3], caption)] or lists of them -> (pixels [B, 3, S, S], tokens [B, context])."""

    def __init__(self, image_size: int, context_length: int):
        self.image_size = image_size
        self.context_length = context_length

    def __call__(self, items):
        if items and isinstance(items[0], list):  # PretrainScenes: a scene and its twin per item
            items = [pair for group in items for pair in group]
        images, captions = zip(*items)
        pixels = backbones.to_pixels(np.stack(images), self.image_size)
        # A tiny context (the smoke profile's 32 tokens) cuts long scene descriptions: chosen, so cut silently.
        return pixels, backbones.tokenize(list(captions), context_length=self.context_length,
                                          max_words=self.context_length)


def clip_loss(model, batch, *, max_logit_scale: float = 100.0):
    """CLIP's symmetric InfoNCE with its learnable temperature (clamped at ``max_logit_scale``)."""
    pixels, tokens = batch
    scale = backbones.logit_scale(model).exp().clamp(max=max_logit_scale)
    out = symmetric_info_nce(model.encode_image(pixels), model.encode_text(tokens), scale=scale)
    return out.loss, {"i2t": out.ip_t.item(), "t2i": out.t_ip.item(), "scale": scale.item()}


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def encode_captions_dataset(model, data: ShapesCaptions, *, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised image and text features of a caption dataset: ([N, D], [N, D])."""
    device = next(model.parameters()).device
    dims = backbones.clip_dims(model)
    collate = CaptionCollate(dims.image_size, dims.context_length)
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


@torch.no_grad()
def attribute_probe(model, *, n: int = 200, seed: int = 0) -> dict:
    """Does the model see each attribute? Accuracy (percent; chance 50) of preferring a held-out scene's description
    over its twin's, where the twin differs in one attribute of one object -- per attribute, on ``n`` test scenes."""
    model.eval()
    device = next(model.parameters()).device
    data = ShapesCaptions("test", n, seed=seed, size=backbones.image_size(model), styles=STYLES)
    out = {}
    for a, attr in enumerate(ATTRIBUTE_VALUES):
        images, right, wrong = [], [], []
        for i in range(n):
            scene, _ = data.scene(i)
            twin = twin_scene(scene, np.random.default_rng([seed, i, a]), attribute=attr)
            if twin is None:  # rare: every change of this attribute would duplicate another object
                continue
            images.append(shapes.render(scene, size=data.size))
            # The same phrasing for both: describe with identically seeded generators.
            right.append(shapes.describe_scene(scene, np.random.default_rng([seed, i])))
            wrong.append(shapes.describe_scene(twin, np.random.default_rng([seed, i])))
        img = model.encode_image(backbones.to_pixels(np.stack(images), data.size).to(device), normalize=True)
        ctx = backbones.clip_dims(model).context_length
        t_right = model.encode_text(backbones.tokenize(right, context_length=ctx, max_words=ctx).to(device),
                                    normalize=True)
        t_wrong = model.encode_text(backbones.tokenize(wrong, context_length=ctx, max_words=ctx).to(device),
                                    normalize=True)
        prefers = ((img * t_right).sum(-1) > (img * t_wrong).sum(-1)).double().mean().item()
        out[f"probe_{attr}"] = 100.0 * prefers
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Training and export
# ----------------------------------------------------------------------------------------------------------------------


def train(config: ClipPretrainConfig, out_dir: str | Path, *, stages=None, root=None, init=None,
          resume: bool = False, overwrite: bool = False, progress: bool = True, on_step=None,
          device: str | None = None) -> dict[str, TrainResult]:
    """Pretrain a CLIP on Shapes scene descriptions into ``out_dir/pretrain``; best checkpoint by val mean recall."""
    stages = runs.check_stages(stages, STAGES)
    if root is not None or init is not None:
        raise ValueError("shapes-clip generates its data and starts from random weights: drop --root and --init.")
    out = Path(out_dir)
    with runs.run_lock(out):
        runs.prepare_run(out, stages, resume=resume, overwrite=overwrite)  # under the lock: one writer
        torch.manual_seed(config.seed)
        model = backbones.load_clip(config.arch)
        data = PretrainScenes("train", config.n_train, seed=config.seed, size=backbones.image_size(model),
                              hard_negatives=config.hard_negatives)
        collate = CaptionCollate(backbones.image_size(model), backbones.clip_dims(model).context_length)

        def val_fn(m):
            r = evaluate_retrieval(m, split="val", n=config.n_val, seed=config.seed)
            return {k: v for k, v in r.items() if k.startswith(("t2i", "i2t"))} | {"mean_R": _mean_recall(r)}

        train_cfg = TrainConfig(max_steps=config.max_steps, batch_size=config.batch_size, lr=config.lr,
                                weight_decay=config.weight_decay, betas=(0.9, 0.98), eps=1e-6,
                                warmup_steps=min(config.warmup_steps, config.max_steps),
                                eval_every=config.eval_every, ckpt_every=config.ckpt_every, select_metric="mean_R",
                                seed=config.seed, precision=config.precision, num_workers=config.num_workers,
                                progress=progress)
        header = runs.make_header(METHOD, "pretrain", config, backbones.model_config(model))
        trainer = Trainer(model, lambda m, b: clip_loss(m, b, max_logit_scale=config.max_logit_scale), data,
                          config=train_cfg, out_dir=out / "pretrain", collate_fn=collate, val_fn=val_fn,
                          on_step=on_step, header=header, device=device)
        result = trainer.fit(resume=resume)
        runs.record_stage(out, method=METHOD, config=config, stage="pretrain", entry=runs.stage_entry(out, result))
    return {"pretrain": result}


def load(run_or_checkpoint: str | Path, *, stage: str | None = None, device: str | torch.device | None = None
         ) -> torch.nn.Module:
    """The pretrained CLIP of a run folder or checkpoint (architecture from the header, then its weights)."""
    path = runs.resolve_checkpoint(run_or_checkpoint, stage, method=METHOD)
    state = runs.read(path)
    config = ClipPretrainConfig.from_dict(state["header"]["config"])
    model = backbones.load_clip(config.arch)
    model.load_state_dict(state["model"])
    model.checkpoint_info = dict(path=str(path), selected_on_val=state.get("selection"), config=config)
    return model.to(pick_device(device)).eval()


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
    model = load(checkpoint, device="cpu")
    config = model.checkpoint_info["config"]
    torch.manual_seed(config.seed)
    init = backbones.load_clip(config.arch)  # the same seeded initialisation the run started from
    table, init_table = backbones.token_embedding(model).weight, backbones.token_embedding(init).weight
    changed = (table != init_table).any(dim=1).nonzero().flatten()
    model_cfg = backbones.TINY_CONFIGS[config.arch]
    out = Path(out)
    torch.save(backbones.pack_shapes_clip(model, model_cfg, changed, {}, command), out)
    # Measure what users get: the packed weights, loaded back.
    packed_model = backbones.load_shapes_clip_file(out)
    metrics = evaluate_retrieval(packed_model, split="test", n=config.n_test, seed=config.seed)
    metrics.update(attribute_probe(packed_model, seed=config.seed))
    packed = torch.load(out, map_location="cpu", weights_only=True)
    packed["metrics"] = metrics
    torch.save(packed, out)
    # A readable copy of the record beside the weights.
    save_json(dict(metrics=metrics, command=command, model_cfg=model_cfg, pretrain=dataclasses.asdict(config),
                   token_rows_kept=int(changed.numel()), bytes=out.stat().st_size), out.with_suffix(".json"))
    return metrics
