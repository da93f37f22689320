"""One GPU check: how fast each method's paper architecture trains on this device, and how well it uses it.

    python benchmarks/gpu_check.py                 # on a GPU: the papers' sizes (about 5-8 minutes on an H200)
    python benchmarks/gpu_check.py --chapters      # also time every book chapter in the toy profile (much longer)
    OMP_NUM_THREADS=1 python benchmarks/gpu_check.py --dry    # the same code at tiny sizes on the CPU (< 2 minutes)

Prints one JSON object and writes it to ``benchmarks/results/gpu_check_<device>.json`` (``..._dry.json`` for
``--dry``). What it measures, each with random weights (nothing is downloaded) on Shapes images generated at 224 px:

* ``methods``: one training step (forward, backward, AdamW step; the library's own model and loss) of
  ``clip4idc_adapt`` (ViT-B/32, batch 128), ``clip4idc_caption`` (ViT-B/32, batch 16), ``pic2word`` (ViT-L/14, batch
  128, images encoded every step), ``combiner_stage1`` (RN50x4 at 288 px, both encoders trained: the journal
  recipe, batch 128) and ``combiner_stage2`` (the Combiner on precomputed 640-d features, batch 4096). Per method:
  ``flops_per_step`` (counted by ``torch.utils.flop_counter.FlopCounterMode`` on one fp32 step: matmuls and
  convolutions, forward and backward; the optimiser's element-wise work is not counted) and per variant --
  ``fp32``, ``amp`` (bf16 autocast where the GPU has bf16 units, else fp16 with a gradient scaler) and ``compile``
  (``torch.compile`` of the loss, with AMP) -- ``step_ms`` (median of the timed steps), ``samples_per_s``,
  ``peak_mem_mib`` (``torch.cuda.max_memory_allocated`` during a step; null on the CPU), ``tflops`` (achieved:
  FLOPs per step / step time), ``mfu`` (achieved / the device's peak for that precision; null where the peak is
  unknown, e.g. the CPU) and ``loss`` (after the same steps from the same weights and batch, so the variants can be
  compared: "at equal results").
* ``goals``: the AMP speed-up on the CLIP4IDC adaptation step (goal: >= 1.5x) and the relative loss difference
  between fp32 and AMP after the same steps.
* ``topk``: exact top-50 over a 120,000-image gallery (``idclab.metrics.retrieval.topk_search``) for 4,096 queries
  (768-d features, fp16 gallery on a GPU).
* ``chapters_toy_seconds``: the time of each book chapter in the toy profile (``--chapters``; otherwise null, with
  ``chapters_command``, the command that measures them).
* ``mfu_limits``: what bounds the MFU of these steps.

``--dry`` uses the smoke presets' tiny CLIP (``idc-micro``), small batches, a 2,000-image gallery, AMP in bf16 on
the CPU and ``torch.compile(backend="eager")`` (the graph capture without code generation, which on a CPU would
take minutes): it checks that every path runs and every field is filled, and its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from idclab import backbones
from idclab.data.shapes import ShapesPairs, ShapesTriplets, render
from idclab.metrics.retrieval import topk_search
from idclab.models import clip4idc, combiner, pic2word

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
BOOK = HERE.parent / "book" / "chapters"
MIB = 2**20

# Dense peak TFLOP/s from the vendors' datasheets (tensor cores for bf16/fp16, without sparsity; fp32 without TF32,
# which PyTorch leaves off for matmuls by default). None: the precision has no hardware units there (T4 and V100
# have no bf16). Matched against the device name in this order.
PEAK_TFLOPS = [
    ("H200", dict(bf16=989.0, fp16=989.0, fp32=67.0)),
    ("H100 PCIe", dict(bf16=756.0, fp16=756.0, fp32=51.0)),
    ("H100", dict(bf16=989.0, fp16=989.0, fp32=67.0)),
    ("A100", dict(bf16=312.0, fp16=312.0, fp32=19.5)),
    ("L4", dict(bf16=121.0, fp16=121.0, fp32=30.3)),
    ("T4", dict(bf16=None, fp16=65.0, fp32=8.1)),
    ("V100", dict(bf16=None, fp16=125.0, fp32=15.7)),
]

MFU_LIMITS = (
    "Per step: optimiser and other element-wise kernels (LayerNorm, softmax, GELU, AdamW over every trainable "
    "weight) are memory-bound and uncounted; the CLIP4IDC captioning step (batch 16) and the Combiner's stage 2 "
    "(three Linear layers) are too small to fill the GPU, so kernel launch and Python overhead dominate; the "
    "InfoNCE / classification logits run in fp32 outside autocast; the frozen towers of Pic2Word run without "
    "gradient, so its counted FLOPs are mostly the text tower's; fp32 runs without TF32. torch.compile removes part "
    "of the launch overhead and fuses element-wise work."
)


@dataclass
class Case:
    """One method's training step: a model, its loss on a fixed batch, its trainable parameter groups."""

    name: str
    backbone: str
    batch: int
    image_size: int | None
    build: Callable[[], tuple[torch.nn.Module, Callable, list, dict]]  # -> (model, loss(model, batch), groups, batch)
    note: str = ""


# ----------------------------------------------------------------------------------------------------------------------
# The methods' steps (the library's models and losses; data generated at 224 px)
# ----------------------------------------------------------------------------------------------------------------------


def _clip4idc_case(stage: str, batch: int, dry: bool) -> Case:
    cfg = clip4idc.config_for("shapes", "smoke") if dry else clip4idc.config_for("clevr", "paper", pretrained="none")

    def build():
        torch.manual_seed(0)
        model = clip4idc.CLIP4IDC(cfg, stage=stage)
        st = getattr(cfg, stage)
        samples = clip4idc.PairSamples.for_stage(ShapesPairs("train", batch, size=224), st)
        data = model.collate()([samples[i] for i in range(batch)])
        return model, clip4idc.CLIP4IDC.loss, clip4idc.param_groups(model, st), data

    return Case(f"clip4idc_{stage}", cfg.encoder.backbone, batch, 224, build)


def _pic2word_case(batch: int, dry: bool) -> Case:
    cfg = pic2word.config_for("shapes", "smoke") if dry else pic2word.config_for("cc3m", "paper", pretrained="none")

    def build():
        torch.manual_seed(0)
        model = pic2word.Pic2Word(cfg, clip=pic2word.load_backbone(cfg))
        size = backbones.image_size(model.clip)
        images = [render(ShapesPairs("train", batch, size=224).pair(i).before, size=224) for i in range(batch)]
        data = {"pixels": backbones.to_pixels(images, size, resize=cfg.preprocess)}
        groups = [dict(params=[p for p in model.parameters() if p.requires_grad], weight_decay=cfg.weight_decay)]
        return model, pic2word.pic2word_loss, groups, data

    return Case("pic2word", cfg.backbone, batch, 224, build, note="images encoded every step (no precompute)")


def _combiner_stage1_case(batch: int, dry: bool) -> Case:
    cfg = (combiner.config_for("shapes", "smoke", encoder="both") if dry else
           combiner.config_for("fashioniq", "paper", pretrained="none", encoder="both"))

    def build():
        torch.manual_seed(0)
        model = combiner.FineTuner(combiner.load_backbone(cfg), cfg.encoder)
        triplets = ShapesTriplets("train", batch, size=224)
        items = []
        for i in range(batch):
            t = triplets.triplet(i)
            items.append(dict(ref_image=render(t.reference, size=224), tgt_image=render(t.target, size=224),
                              caption=t.text))
        data = combiner.Collate(model.clip, cfg.preprocess)(items)
        groups = [dict(params=[p for p in model.parameters() if p.requires_grad], weight_decay=cfg.finetune.weight_decay)]
        return model, lambda m, b: combiner.finetune_loss(m, b, inputs=cfg.sum_inputs), groups, data

    return Case("combiner_stage1", cfg.backbone, batch, backbones.clip_dims(backbones.load_clip(cfg.backbone)).image_size
                if dry else 288, build, note=f"encoder={cfg.encoder} (both towers trained, the journal recipe)")


def _combiner_stage2_case(batch: int, dry: bool) -> Case:
    dim, proj, hidden = (32, 64, 128) if dry else (640, 2560, 5120)

    def build():
        torch.manual_seed(0)
        model = combiner.Combiner(dim, proj, hidden)
        g = torch.Generator().manual_seed(1)
        data = {k: torch.randn(batch, dim, generator=g) for k in ("ref", "text", "tgt")}
        return model, combiner.combiner_loss, [dict(params=list(model.parameters()), weight_decay=0.0)], data

    return Case("combiner_stage2", f"features {dim}-d", batch, None, build,
                note=f"Combiner (d, p, h) = ({dim}, {proj}, {hidden}) on precomputed features")


def cases(dry: bool) -> list[Case]:
    b = (lambda full, tiny: tiny) if dry else (lambda full, tiny: full)
    return [_clip4idc_case("adapt", b(128, 8), dry), _clip4idc_case("caption", b(16, 2), dry),
            _pic2word_case(b(128, 8), dry), _combiner_stage1_case(b(128, 8), dry),
            _combiner_stage2_case(b(4096, 256), dry)]


# ----------------------------------------------------------------------------------------------------------------------
# Timing one step in a precision
# ----------------------------------------------------------------------------------------------------------------------


def amp_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the hardware has it (compute capability >= 8, and the CPU), else fp16."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] < 8:
        return torch.float16
    return torch.bfloat16


def peak_tflops(device: torch.device) -> dict:
    return peak_for_name(torch.cuda.get_device_name(device) if device.type == "cuda" else None)


def peak_for_name(name: str | None) -> dict:
    """The datasheet peaks of a GPU by its name ("NVIDIA H100 80GB HBM3"); all None for an unknown one or the CPU."""
    for key, peaks in PEAK_TFLOPS if name else ():
        if key in name:
            return dict(peaks)
    return dict(bf16=None, fp16=None, fp32=None)


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_flops(model: torch.nn.Module, loss_fn: Callable, batch: dict) -> int:
    """FLOPs of one fp32 forward + backward (matmuls and convolutions)."""
    with FlopCounterMode(display=False) as counter:
        out = loss_fn(model, batch)
        (out[0] if isinstance(out, tuple) else out).backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def time_variant(case: Case, built: tuple, variant: str, device: torch.device, *, warmup: int, steps: int,
                 compile_backend: str) -> dict:
    """From the case's initial weights and its fixed batch, step ``warmup + steps`` times; time the last ``steps``."""
    model, loss_fn, groups, batch, initial = built
    model.load_state_dict(initial)
    torch.manual_seed(0)  # the same dropout draws in every variant
    dtype = None if variant == "fp32" else amp_dtype(device)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16 and device.type == "cuda")
    opt = torch.optim.AdamW(groups, lr=1e-5)
    forward = (lambda b: loss_fn(model, b))
    if variant == "compile":
        forward = torch.compile(forward, backend=compile_backend)
    times, peaks, loss = [], [], None
    for i in range(warmup + steps):
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = forward(batch)
            loss = out[0] if isinstance(out, tuple) else out
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
            if device.type == "cuda":
                peaks.append((torch.cuda.max_memory_allocated(device) - base) / MIB)
    step = statistics.median(times)
    return dict(step_ms=round(1000 * step, 2), samples_per_s=round(case.batch / step, 1),
                peak_mem_mib=round(max(peaks), 1) if peaks else None, loss=float(loss.detach()),
                dtype=str(dtype or torch.float32).removeprefix("torch."))


def measure_case(case: Case, device: torch.device, *, warmup: int, steps: int, compile_backend: str,
                 peaks: dict) -> dict:
    model, loss_fn, groups, batch = case.build()
    model, batch = model.to(device).train(), _to(batch, device)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    built = (model, loss_fn, groups, batch, initial)
    flops = count_flops(model, loss_fn, batch)
    out = dict(backbone=case.backbone, batch=case.batch, image_size=case.image_size, note=case.note,
               flops_per_step=flops, variants={})
    for variant in ("fp32", "amp", "compile"):
        try:
            r = time_variant(case, built, variant, device, warmup=warmup, steps=steps, compile_backend=compile_backend)
        except torch.cuda.OutOfMemoryError as err:
            out["variants"][variant] = dict(error=f"out of memory: {str(err).splitlines()[0][:200]}")
            torch.cuda.empty_cache()
            continue
        tflops = flops / (r["step_ms"] / 1000) / 1e12
        peak = peaks.get(r["dtype"].replace("bfloat16", "bf16").replace("float16", "fp16").replace("float32", "fp32"))
        r.update(tflops=round(tflops, 3), mfu=None if not peak else round(tflops / peak, 4))
        out["variants"][variant] = r
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Exact top-k over a large gallery; the book's chapters
# ----------------------------------------------------------------------------------------------------------------------


def measure_topk(device: torch.device, *, dry: bool) -> dict:
    n, q, d, k = (2000, 256, 64, 50) if dry else (120_000, 4096, 768, 50)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    g = torch.Generator().manual_seed(0)
    gallery = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1).to(device, dtype)
    queries = torch.nn.functional.normalize(torch.randn(q, d, generator=g), dim=-1).to(device, dtype)
    topk_search(queries[:8], gallery, k)  # warm-up
    _sync(device)
    start = time.perf_counter()
    _, idx = topk_search(queries, gallery, k)
    _sync(device)
    seconds = time.perf_counter() - start
    truth = (queries[:16].float() @ gallery.float().T).topk(k, dim=-1).indices
    exact = bool((idx[:16].cpu() == truth.cpu()).float().mean() > 0.999)
    return dict(gallery=n, queries=q, dim=d, k=k, gallery_dtype=str(dtype).removeprefix("torch."),
                seconds=round(seconds, 4), queries_per_s=round(q / seconds, 1), matches_full_sort=exact)


def chapters_command() -> str:
    return "IDCLAB_PROFILE=toy python benchmarks/gpu_check.py --chapters"


def time_chapters(timeout: int) -> dict:
    """Execute each chapter (a temporary copy) in the toy profile; seconds per chapter, or the error."""
    out = {}
    env = dict(os.environ, IDCLAB_PROFILE="toy")
    for nb in sorted(BOOK.glob("*.ipynb")):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                                   f"--ExecutePreprocessor.timeout={timeout}", "--output-dir", tmp, str(nb)],
                                  env=env, cwd=nb.parent, capture_output=True, text=True)
            seconds = round(time.perf_counter() - start, 1)
        out[nb.stem] = seconds if proc.returncode == 0 else dict(seconds=seconds, error=proc.stderr[-300:])
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------------


def device_slug(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu-{platform.machine()}"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry", action="store_true", help="tiny sizes on the CPU: checks every path and field")
    parser.add_argument("--device", default=None, help="default: cuda if available (cpu with --dry)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant (default 10; --dry 1)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; --dry 0)")
    parser.add_argument("--chapters", action="store_true", help="also time each book chapter in the toy profile")
    parser.add_argument("--chapter-timeout", type=int, default=1800, help="seconds per chapter")
    parser.add_argument("--out", type=Path, default=None, help="result file (default: benchmarks/results/...)")
    args = parser.parse_args(argv)

    device = torch.device(args.device or ("cpu" if args.dry or not torch.cuda.is_available() else "cuda"))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    if not args.dry and device.type != "cuda":
        parser.error("the GPU check needs a CUDA device; use --dry to check the script on the CPU.")
    warmup = args.warmup if args.warmup is not None else (0 if args.dry else 3)
    steps = args.steps if args.steps is not None else (1 if args.dry else 10)
    backend = "eager" if args.dry else "inductor"
    peaks = peak_tflops(device)
    start = time.perf_counter()

    methods = {}
    for case in cases(args.dry):
        t0 = time.perf_counter()
        methods[case.name] = measure_case(case, device, warmup=warmup, steps=steps, compile_backend=backend,
                                          peaks=peaks)
        methods[case.name]["seconds"] = round(time.perf_counter() - t0, 1)
        print(f"{case.name}: {json.dumps(methods[case.name]['variants'])}", file=sys.stderr)

    adapt = methods["clip4idc_adapt"]["variants"]
    fp32, amp = adapt.get("fp32", {}), adapt.get("amp", {})
    speedup = fp32["step_ms"] / amp["step_ms"] if "step_ms" in fp32 and "step_ms" in amp else None
    rel = abs(amp["loss"] - fp32["loss"]) / max(abs(fp32["loss"]), 1e-12) if speedup else None
    result = dict(
        dry=args.dry,
        device=dict(kind=device.type, name=torch.cuda.get_device_name(device) if device.type == "cuda" else
                    platform.processor() or platform.machine(),
                    capability=list(torch.cuda.get_device_capability(device)) if device.type == "cuda" else None,
                    amp_dtype=str(amp_dtype(device)).removeprefix("torch."), peak_tflops=peaks,
                    tf32_matmul=torch.backends.cuda.matmul.allow_tf32, torch=torch.__version__,
                    cpu_threads=torch.get_num_threads()),
        settings=dict(warmup=warmup, steps=steps, compile_backend=backend),
        methods=methods,
        goals=dict(clip4idc_amp_speedup=None if speedup is None else round(speedup, 3), amp_speedup_goal=1.5,
                   amp_speedup_met=None if speedup is None else speedup >= 1.5,
                   clip4idc_amp_loss_rel_diff=None if rel is None else round(rel, 5)),
        topk=measure_topk(device, dry=args.dry),
        chapters_toy_seconds=time_chapters(args.chapter_timeout) if args.chapters else None,
        chapters_command=chapters_command(),
        mfu_limits=MFU_LIMITS,
    )
    result["seconds"] = round(time.perf_counter() - start, 1)
    out = args.out or RESULTS / f"gpu_check_{device_slug(device)}{'_dry' if args.dry else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    result["written_to"] = str(out)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
