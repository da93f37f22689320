"""One CLIP4IDC adaptation training step: our pair encoder vs a plain fp32 "encode both images" baseline.

    OMP_NUM_THREADS=1 python benchmarks/clip4idc_step.py                     # shapes-clip (64 px), batch 32
    OMP_NUM_THREADS=1 python benchmarks/clip4idc_step.py --backbone ViT-B-32-quickgelu --batch 8 --repeats 3
    python benchmarks/clip4idc_step.py --device cuda                         # adds "ours fp32"

One step = forward + backward + AdamW step + zero_grad (no gradient clipping, in any variant), on the SAME CLIP
weights (each variant trains its own copy) and the SAME fixed batch (``ShapesPairs`` -> ``PairSamples`` ->
``model.collate()``; ViT-B-32 squashes the 64 px images to 224 px and gets random weights: there is no download).

* ours: ``CLIP4IDC(cfg, stage="adapt")`` and ``model.loss(batch)`` -- the first ``intra_layers`` blocks per image,
  the rest over the concatenated pair (2T tokens) -- run as idclab's Trainer runs it: fp32 on the CPU, bf16 autocast
  with fp32 master weights on CUDA; AdamW over ``param_groups(model, cfg.adapt)``.
* baseline: the same CLIP, always fp32: v = mean of the normalised ``encode_image(before)`` and
  ``encode_image(after)`` (every block on each image alone, no joint block), g = ``encode_text(text)``, the same
  symmetric InfoNCE at scale 100, AdamW over the same trainable CLIP parameters (ours also trains its few new pair
  parameters: before/after and joint position embeddings, ln_mid).
* ours fp32 (CUDA only): ours without autocast, to separate the AMP effect from the architecture's.

On the CPU both run fp32, so the ratio is the cost of the split/joint design itself: the joint blocks attend over
2T tokens, so their attention costs twice that of two separate T-token sequences (the MLPs cost the same). On a GPU
the bf16 gain appears on top of that. Ratio = baseline time / variant time (> 1: faster than the baseline).

Timing: all variants are built first, then stepped in interleaved rounds (baseline, ours[, ours fp32]) so that
machine noise hits them alike; the first ``--warmup`` rounds are dropped and the median of ``--repeats`` is shown.
Peak memory (CUDA only) is ``torch.cuda.max_memory_allocated`` during a step, reset before each step, minus what
was allocated when the step began (every variant's weights and AdamW state stay resident throughout); on the CPU it
is "n/a". Prints a table and a final JSON line; asserts nothing.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import time

import torch
import torch.nn as nn

from idclab import backbones
from idclab.data.shapes import ShapesPairs
from idclab.losses import symmetric_info_nce
from idclab.models.clip4idc import CLIP4IDC, PairSamples, config_for, param_groups

MB = 2**20
DEFAULT_INTRA = {"shapes-clip": config_for("shapes", "toy").encoder.intra_layers,  # the toy preset
               "ViT-B-32-quickgelu": 9}  # the reference: 9 of ViT-B/32's 12 blocks


class EncodeBoth(nn.Module):
    """The baseline: each image through the whole visual tower on its own; v = mean of the two normalised features."""

    def __init__(self, clip: nn.Module, frozen: tuple[str, ...]):
        super().__init__()
        self.clip = clip
        for name, p in clip.named_parameters():  # freeze what CLIP4IDC freezes (EncoderConfig.frozen)
            if any(name == part or name.startswith(part + ".") for part in frozen):
                p.requires_grad_(False)

    def loss(self, batch: dict) -> torch.Tensor:
        B = batch["before"].shape[0]
        f = self.clip.encode_image(torch.cat([batch["before"], batch["after"]]), normalize=True)  # [2B, D]
        v = (f[:B] + f[B:]) / 2  # [B, D]
        g = self.clip.encode_text(batch["text"])  # [B, D]
        return symmetric_info_nce(v, g, scale=100.0).loss


def baseline_groups(model: EncodeBoth, stage) -> list[dict]:
    """AdamW groups as param_groups' CLIP part: weight decay on matrices only, at the CLIP learning rate."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and "embedding" not in name else no_decay).append(p)
    return [dict(params=decay, lr=stage.clip_lr, weight_decay=stage.weight_decay),
            dict(params=no_decay, lr=stage.clip_lr, weight_decay=0.0)]


def make_step(loss_fn, params_or_groups, stage, device: torch.device, amp: bool):
    """-> step(): one training step, forward + backward + AdamW step + zero_grad."""
    opt = torch.optim.AdamW(params_or_groups, betas=stage.betas, eps=stage.eps)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = loss_fn()
            loss = out[0] if isinstance(out, tuple) else out
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def timed(step, device: torch.device) -> tuple[float, float | None]:
    """Run step() once -> (seconds, peak MB above the memory allocated at the start; None on the CPU)."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    step()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return seconds, (torch.cuda.max_memory_allocated() - base) / MB if cuda else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="shapes-clip", choices=sorted(DEFAULT_INTRA))
    p.add_argument("--intra-layers", type=int, default=None, help="blocks per image (default: toy preset / 9)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    intra = DEFAULT_INTRA[args.backbone] if args.intra_layers is None else args.intra_layers

    # Config and the shared starting weights (random for ViT-B-32: pretrained=None).
    base_cfg = config_for("shapes", "toy")
    enc = dataclasses.replace(base_cfg.encoder, backbone=args.backbone, pretrained=None, intra_layers=intra)
    cfg = dataclasses.replace(base_cfg, encoder=enc)
    torch.manual_seed(0)
    clip = backbones.load_clip(args.backbone)

    # The models, each on its own copy of the weights.
    amp = device.type == "cuda"  # ours runs under bf16 autocast on CUDA, as the Trainer runs it
    ours = CLIP4IDC(cfg, stage="adapt", clip=copy.deepcopy(clip)).to(device).train()
    ours32 = copy.deepcopy(ours) if amp else None  # CUDA only: ours in fp32, same weights
    base = EncodeBoth(clip, cfg.encoder.frozen).to(device).train()

    # The fixed batch: before/after pixels [B, 3, S, S], text ids [B, 77].
    collate = ours.collate()
    samples = PairSamples(ShapesPairs("train", args.batch))
    batch = {k: v.to(device) for k, v in collate([samples[i] for i in range(args.batch)]).items()}

    # The variants: name -> step function.
    variants = {
        "baseline fp32 (encode both)": make_step(lambda: base.loss(batch), baseline_groups(base, cfg.adapt),
                                                 cfg.adapt, device, amp=False),
        f"ours {'bf16 autocast' if amp else 'fp32'}": make_step(lambda: ours.loss(batch), param_groups(ours, cfg.adapt),
                                                                cfg.adapt, device, amp=amp),
    }
    if amp:
        variants["ours fp32"] = make_step(lambda: ours32.loss(batch), param_groups(ours32, cfg.adapt), cfg.adapt,
                                          device, amp=False)
    n_train = {"baseline": sum(q.numel() for q in base.parameters() if q.requires_grad),
               "ours": sum(q.numel() for q in ours.parameters() if q.requires_grad)}

    size, T = collate.image_size, ours.encoder.n_tokens
    blocks = len(clip.visual.transformer.resblocks)
    name = torch.cuda.get_device_name(device) if amp else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}")
    print(f"backbone {args.backbone}: {size} px, T={T} tokens per image, {blocks} blocks "
          f"(ours: {intra} per image + {blocks - intra} joint over {2 * T} tokens); batch {args.batch}")
    print(f"trainable parameters: baseline {n_train['baseline']:,}, ours {n_train['ours']:,} "
          f"(+{n_train['ours'] - n_train['baseline']:,} new pair parameters)")
    print(f"{args.warmup} warm-up + {args.repeats} timed rounds, interleaved ...", flush=True)

    # Interleaved rounds; the warm-up rounds are dropped.
    times = {k: [] for k in variants}
    peaks = {k: [] for k in variants}
    for r in range(args.warmup + args.repeats):
        for k, step in variants.items():
            s, mb = timed(step, device)
            if r >= args.warmup:
                times[k].append(s)
                peaks[k].append(mb)

    ref = statistics.median(times["baseline fp32 (encode both)"])
    rows = {}
    for k in variants:
        med = statistics.median(times[k])
        peak = None if peaks[k][0] is None else max(peaks[k])
        rows[k] = dict(s_per_step=med, pairs_per_s=args.batch / med, ratio_vs_baseline=ref / med, peak_mb=peak)

    print(f"\n{'variant':30s} {'s/step':>9s} {'pairs/s':>9s} {'vs baseline':>12s} {'step peak':>11s}")
    for k, row in rows.items():
        peak = "n/a" if row["peak_mb"] is None else f"{row['peak_mb']:.0f} MB"
        print(f"{k:30s} {row['s_per_step']:9.3f} {row['pairs_per_s']:9.1f} {row['ratio_vs_baseline']:11.2f}x "
              f"{peak:>11s}")
    print("vs baseline = baseline time / variant time (> 1: faster); median of "
          f"{args.repeats} steps after {args.warmup} warm-up rounds")
    print(json.dumps(dict(benchmark="clip4idc_step", device=name, backbone=args.backbone, image_size=size,
                          intra_layers=intra, blocks=blocks, batch=args.batch, repeats=args.repeats,
                          warmup=args.warmup, variants=rows)))


if __name__ == "__main__":
    main()
