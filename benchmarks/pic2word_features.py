"""One Pic2Word training epoch: precomputed image features vs re-encoding every image every step (the reference).

    OMP_NUM_THREADS=1 python benchmarks/pic2word_features.py                        # shapes-clip, 1,024 images
    OMP_NUM_THREADS=1 python benchmarks/pic2word_features.py --backbone ViT-B-32-quickgelu --images 256 --batch 32
    python benchmarks/pic2word_features.py --device cuda --backbone ViT-L-14-quickgelu --images 4096

* reference: every step crops its images (RandomResizedCrop 0.9-1.0, bicubic), encodes them with the frozen image
  tower (no gradient), maps them, encodes "a photo of *" and steps AdamW -- ``CroppedImages`` + ``pic2word_loss``;
* precomputed: the images are encoded once (centre crop, no augmentation; timed separately), then every step reads
  stored features -- ``precompute_features`` + ``FeatureRows``.

Both variants train their own copy of the same mapping network on the same frozen CLIP with the same batches, fp32
on the CPU (autocast bf16 on CUDA for both). Epochs alternate (reference, precomputed, reference, ...) so machine
noise hits both alike; the median of ``--repeats`` epochs is shown. Ratio = reference epoch / precomputed epoch; the
one-time encoding is reported beside it, amortised over the paper's 30 epochs. ViT names get random weights (there
is no download). Prints a table and a final JSON line; asserts nothing.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import time

import numpy as np
import torch

from idclab import backbones
from idclab.models import pic2word as p


def epoch(model: p.Pic2Word, batches, opt: torch.optim.Optimizer, device: torch.device, amp: bool) -> float:
    """Seconds for one pass over ``batches`` (callables producing a batch dict on ``device``)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for make in batches:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss, _ = p.pic2word_loss(model, make())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="shapes-clip")
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    amp = device.type == "cuda"
    cfg = dataclasses.replace(p.config_for("toy"), backbone=args.backbone, shapes_images=(args.images, 1))
    if args.backbone not in (backbones.SHAPES_CLIP, *backbones.TINY_CONFIGS):  # random weights, same architecture
        clip = backbones.load_clip(args.backbone, device=device).requires_grad_(False).eval()
        cfg = dataclasses.replace(cfg, middle_dim=512)
    else:
        clip = p.load_backbone(cfg, device=device)
    size = backbones.image_size(clip)
    images, _ = p.training_images(cfg, image_size=min(size, 64))  # Shapes photos, upscaled to the model's size
    torch.manual_seed(0)
    ref_model = p.Pic2Word(cfg, clip=clip).to(device).train()
    pre_model = p.Pic2Word(cfg, clip=clip).to(device).train()
    pre_model.mapping = copy.deepcopy(ref_model.mapping)
    opts = [torch.optim.AdamW(m.mapping.parameters(), lr=cfg.lr) for m in (ref_model, pre_model)]

    t0 = time.perf_counter()
    feats = p.precompute_features(pre_model, images, progress=False).to(device)  # [N, D]
    encode_once = time.perf_counter() - t0

    crops = p.CroppedImages(images, size, cfg.crop_scale)
    order = np.arange(len(images))
    starts = range(0, len(images) - args.batch + 1, args.batch)
    ref_batches = [lambda s=s: {"pixels": backbones.to_pixels(np.stack([crops[i] for i in order[s:s + args.batch]]),
                                                              size, device=device)} for s in starts]
    pre_batches = [lambda s=s: {"features": feats[order[s:s + args.batch]]} for s in starts]

    times = {"reference": [], "precomputed": []}
    for _ in range(args.repeats):
        times["reference"].append(epoch(ref_model, ref_batches, opts[0], device, amp))
        times["precomputed"].append(epoch(pre_model, pre_batches, opts[1], device, amp))
    ref, pre = (statistics.median(times[k]) for k in ("reference", "precomputed"))
    steps = len(ref_batches)
    print(f"{args.backbone}, {len(images)} images, batch {args.batch} ({steps} steps/epoch), {device}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"  reference (re-encode + crop every step): {ref:8.2f} s/epoch")
    print(f"  precomputed features:                    {pre:8.2f} s/epoch   (+ {encode_once:.2f} s once)")
    print(f"  ratio reference / precomputed: {ref / pre:.2f}x per epoch; "
          f"{30 * ref / (30 * pre + encode_once):.2f}x over 30 epochs including the one-time encoding")
    print(json.dumps(dict(backbone=args.backbone, images=len(images), batch=args.batch, device=str(device),
                          reference_s_per_epoch=round(ref, 3), precomputed_s_per_epoch=round(pre, 3),
                          encode_once_s=round(encode_once, 3), ratio=round(ref / pre, 2),
                          ratio_30_epochs=round(30 * ref / (30 * pre + encode_once), 2))))


if __name__ == "__main__":
    main()
