"""Combiner stage 2: an epoch on precomputed CLIP features vs re-extracting them every step (the reference).

    OMP_NUM_THREADS=1 python benchmarks/combiner_stage2.py                    # shapes-clip, 2,048 Shapes triplets
    python benchmarks/combiner_stage2.py --device cuda --epochs 3

* reference: every step encodes its reference and target images and its captions with the frozen CLIP (no
  gradient), then trains the Combiner on them (``combiner_train.py`` does this, in fp16);
* precomputed: the same features are encoded once (``idclab.models.combiner.precompute``, timed separately), then
  every step reads them.

Both variants start from the same Combiner weights, see the same batches in the same order and the same dropout
masks (the generator is reseeded before each variant's epoch), fp32. Epochs alternate (reference, precomputed, ...);
the median is shown. At the end both Combiners are scored on the same Shapes val benchmark: their metrics should
agree (features differ only by float rounding between batch sizes). Ratio = reference epoch / precomputed epoch.
Prints a table and a final JSON line; asserts nothing.
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

from idclab import backbones, cir
from idclab.models import combiner as c


def run_epoch(model, opt, batches, make, seed: int, device) -> float:
    torch.manual_seed(seed)  # the same dropout masks in both variants
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for idx in batches:
        loss, _ = c.combiner_loss(model, make(idx))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--triplets", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    cfg = dataclasses.replace(c.config_for("shapes", "toy"), shapes_triplets=(args.triplets, 150))
    clip = c.load_backbone(cfg, device=device).eval().requires_grad_(False)
    source = c.load_triplets(cfg, "train")
    items = [source[i] for i in range(len(source))]  # rendered once: image generation is not what is compared
    ctx = int(clip.context_length)

    t0 = time.perf_counter()
    cache = c.precompute(clip, items, preprocess=cfg.preprocess, texts=True, progress=False)
    encode_once = time.perf_counter() - t0
    feats = {k: cache[k].to(device) for k in ("ref", "tgt")}
    feats["text"] = cache["text"][:, 0].to(device)

    @torch.no_grad()
    def extract(idx):  # the reference: CLIP runs inside every step
        chunk = [items[i] for i in idx]
        ref = c._encode_images(clip, [r for r, _, _ in chunk], cfg.preprocess, device)
        tgt = c._encode_images(clip, [t for _, t, _ in chunk], cfg.preprocess, device)
        tokens = backbones.tokenize([v[0] for _, _, v in chunk], context_length=ctx).to(device)
        return dict(ref=ref, tgt=tgt, text=backbones.encode_text(clip, tokens).float())

    def cached(idx):
        idx = torch.as_tensor(idx, device=device)
        return {k: v[idx] for k, v in feats.items()}

    torch.manual_seed(0)
    dim = int(clip.text_projection.shape[1])
    models = {"reference": c.Combiner(dim, cfg.proj_dim, cfg.hidden_dim).to(device)}
    models["precomputed"] = copy.deepcopy(models["reference"])
    opts = {k: torch.optim.Adam(m.parameters(), lr=cfg.combiner.lr) for k, m in models.items()}
    times = {k: [] for k in models}
    for epoch in range(args.epochs):
        perm = np.random.default_rng(epoch).permutation(len(items))
        batches = [perm[s:s + args.batch] for s in range(0, len(items) - args.batch + 1, args.batch)]
        for name, make in (("reference", extract), ("precomputed", cached)):
            models[name].train()
            times[name].append(run_epoch(models[name], opts[name], batches, make, epoch, device))

    bench = cir.shapes_benchmark("val", cfg.shapes_triplets[1])
    scores = {}
    for name, m in models.items():
        r = c.CombinerRetriever(clip, m, preprocess=cfg.preprocess, device=device)
        scores[name] = cir.evaluate(r, bench, progress=False)["metrics"][cir.ALL]
    ref, pre = statistics.median(times["reference"]), statistics.median(times["precomputed"])
    diff = max(float((a - b).abs().max()) for a, b in zip(models["reference"].parameters(),
                                                          models["precomputed"].parameters()))
    print(f"shapes-clip Combiner, {len(items)} triplets, batch {args.batch}, {device}, {torch.get_num_threads()} "
          f"threads, median of {args.epochs} epochs")
    print(f"  reference (re-extract every step): {ref:8.2f} s/epoch")
    print(f"  precomputed features:              {pre:8.2f} s/epoch   (+ {encode_once:.2f} s once)")
    print(f"  ratio: {ref / pre:.1f}x per epoch; {args.epochs * ref / (args.epochs * pre + encode_once):.1f}x over "
          f"these {args.epochs} epochs and {300 * ref / (300 * pre + encode_once):.1f}x over the paper's 300, "
          "including the one-time encoding")
    print(f"  val (Shapes, {len(bench.queries)} queries) reference: {scores['reference']}")
    print(f"  val (Shapes, {len(bench.queries)} queries) precomputed: {scores['precomputed']}")
    print(f"  largest weight difference after training: {diff:.2e}")
    print(json.dumps(dict(triplets=len(items), batch=args.batch, device=str(device), epochs=args.epochs,
                          reference_s_per_epoch=round(ref, 3), precomputed_s_per_epoch=round(pre, 3),
                          encode_once_s=round(encode_once, 3), ratio=round(ref / pre, 1),
                          ratio_300_epochs=round(300 * ref / (300 * pre + encode_once), 1),
                          val_reference=scores["reference"], val_precomputed=scores["precomputed"],
                          max_weight_diff=diff)))


if __name__ == "__main__":
    main()
