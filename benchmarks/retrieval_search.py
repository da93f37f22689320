"""Time and peak memory of idclab's chunked exact top-k search vs the naive full score matrix.

    python benchmarks/retrieval_search.py                 # CPU (or --device cuda)
    python benchmarks/retrieval_search.py --queries 4000  # more queries

Setting: a CIRCO-sized gallery (~120k images, 512-d L2-normalised features) searched by Q queries for the top k=50.
The naive way (``q @ g.T`` then ``topk``, what most CIR codebases do) materialises a Q x G float32 matrix; it is
run here on a smaller gallery, and its memory at full size is given from the formula Q * G * 4 bytes.

Peak memory is the extra memory above what the features already use: on CUDA ``torch.cuda.max_memory_allocated``,
on Linux CPU the process's peak RSS (VmHWM, reset through /proc/self/clear_refs before each case). Prints figures;
asserts nothing.
"""

from __future__ import annotations

import argparse
import time

import torch

from idclab.metrics.retrieval import topk_search

MB = 2**20


# ---- memory probes -----------------------------------------------------------------------------------------------


def _proc_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_cpu_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (peak RSS) to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def measure(fn, device: torch.device, repeats: int = 3) -> tuple[float, float | None]:
    """Run fn() `repeats` times; return (best seconds, extra peak memory in MB or None if unknown)."""
    times = []
    peak_mb = None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            ok = _reset_cpu_peak()
            base = _proc_status_kb("VmRSS") if ok else None
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        if device.type == "cuda":
            peak = (torch.cuda.max_memory_allocated() - base) / MB
        else:
            hwm = _proc_status_kb("VmHWM")
            peak = (hwm - base) / 1024 if base is not None and hwm is not None else None
        peak_mb = peak if peak_mb is None or peak is None else max(peak_mb, peak)
        del out
    return min(times), peak_mb


def normalised(n: int, d: int, device: torch.device, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(n, d, generator=g, device=device, dtype=torch.float32)
    x /= x.norm(dim=1, keepdim=True)  # in place: no second copy
    return x.to(dtype)


def naive_topk(queries: torch.Tensor, gallery: torch.Tensor, k: int):
    sim = queries.float() @ gallery.float().T  # [Q, G]: the whole score matrix
    return sim.topk(k, dim=1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--gallery", type=int, default=120_000)
    p.add_argument("--naive-gallery", type=int, default=20_000, help="gallery size for the naive full matrix")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--gallery-chunk", type=int, default=16384)
    p.add_argument("--query-chunk", type=int, default=1024)
    args = p.parse_args()

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    Q, G, Gs, D, k = args.queries, args.gallery, args.naive_gallery, args.dim, args.k
    chunks = dict(gallery_chunk=args.gallery_chunk, query_chunk=args.query_chunk)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; features {args.dtype}, D={D}, k={k}, Q={Q}")
    print(f"chunks: query_chunk={args.query_chunk}, gallery_chunk={args.gallery_chunk}")

    queries = normalised(Q, D, device, dtype, seed=0)
    gallery = normalised(G, D, device, dtype, seed=1)
    small = gallery[:Gs]
    print(f"gallery features: {G} x {D} = {gallery.numel() * gallery.element_size() / MB:.0f} MB")

    topk_search(queries[:64], small[:4096], k, **chunks)  # warm-up (thread pools, CUDA context, kernels)
    naive_topk(queries[:64], small[:4096], k)

    rows = []
    t, m = measure(lambda: topk_search(queries, gallery, k, **chunks), device)
    rows.append((f"chunked topk_search, G={G}", t, m))
    t, m = measure(lambda: topk_search(queries, small, k, **chunks), device)
    rows.append((f"chunked topk_search, G={Gs}", t, m))
    t, m = measure(lambda: naive_topk(queries, small, k), device)
    rows.append((f"naive q @ g.T + topk, G={Gs}", t, m))

    def fmt(mb):
        return "n/a" if mb is None else f"{mb:8.1f} MB"

    print(f"\n{'case':38s} {'time':>9s} {'extra peak memory':>18s}")
    for label, t, m in rows:
        print(f"{label:38s} {t:8.3f}s {fmt(m):>18s}")
    full_mb = Q * G * 4 / MB
    print(
        f"\nnaive at G={G} would hold a {Q} x {G} float32 score matrix: {full_mb:.0f} MB for the matrix alone "
        f"(topk adds its own workspace); at Q=4148 (CIRR test1) {4148 * G * 4 / MB:.0f} MB."
    )
    block_mb = args.query_chunk * args.gallery_chunk * 4 / MB
    print(f"chunked block: {args.query_chunk} x {args.gallery_chunk} float32 = {block_mb:.0f} MB")

    # Same answer? (the naive topk may order exact ties differently; random features have none)
    s1, i1 = topk_search(queries, small, k, **chunks)
    s2, i2 = naive_topk(queries, small, k)
    print(
        f"\nsame indices as naive topk on G={Gs}: {bool(torch.equal(i1, i2))}; "
        f"max score difference {float((s1 - s2).abs().max()):.2e}"
    )


if __name__ == "__main__":
    main()
