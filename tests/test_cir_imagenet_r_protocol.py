"""ImageNet-R domain conversion: Pic2Word's recall protocol, computed by hand on tiny benchmarks.

Pic2Word averages the fractional recall over every (photo, domain) query; a photo whose class has no image in the
domain has no target and scores 0. The mean over the queries that have a target is reported beside it, labelled.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from idclab import cir
from idclab.cir import ALL, CIRBenchmark, CIRQuery


class CircleRetriever(cir.CLIPRetriever):
    """Image k (a uint8 array filled with k) has the feature at angle 0.1 k rad on the unit circle; a query is its
    reference's feature, so a query ranks the gallery by angular distance from its reference."""

    method = "circle"

    def __init__(self):
        self.device, self.clip = torch.device("cpu"), None
        self.preprocess, self.image_size, self.context_length = "squash", 2, 8
        self._image_key = "circle"

    def encode_image(self, images):  # [n, 2, 2, 3] uint8 -> [n, 2]
        k = torch.tensor([float(im[0, 0, 0]) for im in images])
        return torch.stack([torch.cos(0.1 * k), torch.sin(0.1 * k)], dim=1)

    def encode_query(self, image_feats, queries):  # [n, 2] -> [n, 2]
        return F.normalize(image_feats, dim=-1)


def domain_query(domain: str, photo: str, reference: str, targets: list[str]) -> CIRQuery:
    return CIRQuery(id=f"{domain}/{photo}", reference=reference, kind="domain", fields={"domain": domain},
                    targets=tuple(targets), group=domain, gallery=ALL)


def test_a_query_without_target_counts_as_zero_and_the_variant_is_labelled():
    names = tuple(f"g{k}" for k in range(60))
    images = {n: np.full((2, 2, 3), k, np.uint8) for k, n in enumerate(names)}
    bench = CIRBenchmark("inr", "val", "imagenet_r", images, {ALL: names}, [
        # From g0 the ranking is g0, g1, g2, g3, g59, g4, ...: of the targets g2, g20, g40 only g2 is in the top 10
        # (fraction 1/3), all three are in the top 50 (fraction 1).
        domain_query("cartoon", "p1", "g0", ["g2", "g20", "g40"]),
        # The photo of another class, which has no cartoon: no target, fraction 0 at every K (and no hit).
        domain_query("cartoon", "p2", "g30", []),
        # Another domain, one target right next to the reference: 1 at both K.
        domain_query("origami", "p1", "g0", ["g1"]),
    ])
    m = cir.evaluate(CircleRetriever(), bench, progress=False)["metrics"]
    # cartoon, over both queries (Pic2Word): R@10 = (1/3 + 0) / 2, R@50 = (1 + 0) / 2, hit R@10 = (1 + 0) / 2
    assert m["cartoon"]["R@10"] == pytest.approx(100 * (1 / 3 + 0) / 2, abs=0.01)  # 16.67
    assert m["cartoon"]["R@50"] == pytest.approx(100 * (1 + 0) / 2, abs=0.01)  # 50.0
    assert m["cartoon"]["hit_R@10"] == pytest.approx(50.0, abs=0.01)
    # the labelled variant, over the query with a target only: 1/3 and 1
    assert m["cartoon"]["R@10_with_target"] == pytest.approx(100 / 3, abs=0.01)  # 33.33
    assert m["cartoon"]["R@50_with_target"] == pytest.approx(100.0, abs=0.01)
    assert m["origami"]["R@10"] == m["origami"]["R@10_with_target"] == 100.0
    # the average over domains, as Pic2Word's table: (16.67 + 100) / 2 and (50 + 100) / 2
    assert m["average"]["R@10"] == pytest.approx((100 * (1 / 3) / 2 + 100) / 2, abs=0.01)  # 58.33
    assert m["average"]["R@50"] == pytest.approx(75.0, abs=0.01)
    assert m["average"]["R@10_with_target"] == pytest.approx((100 / 3 + 100) / 2, abs=0.01)  # 66.67
