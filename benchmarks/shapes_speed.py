"""Generation speed of the Shapes world (idclab.data.shapes) on one core.

Run: ``OMP_NUM_THREADS=1 python benchmarks/shapes_speed.py [--size 64] [--n 3000]``

Prints items per second for IDC pairs (make_idc_pair + 3 renders), scene captions (sample + render + describe) and CIR
triplets (make_cir_triplet + 6 renders), each through its torch Dataset's ``__getitem__``. Each figure is measured
twice: "cold" starts with empty sprite caches (what a fresh process or DataLoader worker sees), "warm" runs other
items of the same kind with the caches filled. Target: >= 1,000 pairs/s warm
at 64 px. Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import time

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import torch  # noqa: E402

from idclab.data import shapes  # noqa: E402


def _rate(fn, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--n", type=int, default=3000, help="items per measurement")
    args = parser.parse_args()
    torch.set_num_threads(1)
    size, n = args.size, args.n

    def pair(i, split):  # sampling + change + captions + 3 renders, as a DataLoader sees it
        return pairs[split][i]

    def caption(i, split):  # sample_scene (any style) + render + describe_scene
        return captions[split][i]

    def triplet(i, split):  # make_cir_triplet + 6 renders
        return triplets[split][i]

    pairs = {s: shapes.ShapesPairs(s, n, size=size) for s in ("train", "val")}
    captions = {s: shapes.ShapesCaptions(s, n, size=size) for s in ("train", "val")}
    triplets = {s: shapes.ShapesTriplets(s, n, size=size) for s in ("train", "val")}

    print(f"Shapes world generation speed ({size} px, 1 core, {n} items per figure)")
    for name, fn, unit in (("pairs", pair, "ShapesPairs[i]: make_idc_pair + 3 renders"),
                           ("captions", caption, "ShapesCaptions[i]: sample_scene + render + describe_scene"),
                           ("triplets", triplet, "ShapesTriplets[i]: make_cir_triplet + 6 renders")):
        shapes.clear_caches()
        cold = _rate(lambda i: fn(i, "train"), n)  # empty caches at the start; they fill as items come
        warm = _rate(lambda i: fn(i, "val"), n)  # other fresh items, caches already filled
        print(f"{name}/s ({size} px, 1 core): {warm:,.0f} warm, {cold:,.0f} cold   [{unit}]")
    print(f"sprite cache: {shapes._sprite.cache_info().currsize} coloured sprites, "
          f"{shapes._basis.cache_info().currsize} colour-free bases")


if __name__ == "__main__":
    main()
