"""Seeds, spreads and verdicts: how idclab decides whether one method beats another.

A claim "A beats B" rests on several seeds of each. :func:`summary` gives their mean and sample standard deviation;
:func:`verdict` compares two sets of seeds: the difference of the means against its standard error (Welch's form,
sqrt(sd_a^2 / n_a + sd_b^2 / n_b)). Beyond ``z`` standard errors (default 2, about a 95 % two-sided margin for a
normal difference) the answer is "yes" or "no"; within it, "not resolved at N seeds". With few seeds this is a rough
rule, not a test of significance; the chapters print the per-seed values beside it.
"""

from __future__ import annotations

import math
from typing import Sequence

__all__ = ["summary", "verdict"]


def summary(values: Sequence[float]) -> dict:
    """{"values", "mean", "sd", "n"}: the per-seed values, their mean and sample standard deviation (ddof 1)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("summary() needs at least one value (one per seed).")
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return dict(values=values, mean=mean, sd=sd, n=n)


def verdict(a: Sequence[float], b: Sequence[float], *, z: float = 2.0) -> str:
    """Does A beat B (higher is better)? "yes", "no" (B beats A) or "not resolved at N seeds"."""
    sa, sb = summary(a), summary(b)
    if sa["n"] < 2 or sb["n"] < 2:
        return f"not resolved at {min(sa['n'], sb['n'])} seed(s): a spread needs at least 2 per method"
    diff = sa["mean"] - sb["mean"]
    se = math.sqrt(sa["sd"] ** 2 / sa["n"] + sb["sd"] ** 2 / sb["n"])
    if se == 0.0:
        return "yes" if diff > 0 else "no" if diff < 0 else f"not resolved at {min(sa['n'], sb['n'])} seeds"
    if diff > z * se:
        return "yes"
    if diff < -z * se:
        return "no"
    return f"not resolved at {min(sa['n'], sb['n'])} seeds"
