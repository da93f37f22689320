"""Figures for the book and for your own runs (matplotlib; every function returns the Figure).

* :func:`image_grid` -- images with titles/captions;
* :func:`show_pairs` -- image-difference pairs (before | after) with their captions;
* :func:`show_triplets` -- composed-retrieval triplets (reference, text, target, and the near-miss set);
* :func:`similarity_matrix` -- a CLIP similarity (logit) matrix as a heat map;
* :func:`training_curves` -- logged values of a :class:`idclab.train.TrainResult` history;
* :func:`retrieval_grid` -- queries and their top-k results, correct ones framed in green.
"""

from __future__ import annotations

import textwrap
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np

__all__ = ["image_grid", "show_pairs", "show_triplets", "similarity_matrix", "training_curves", "retrieval_grid"]


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(text, width)) if text else ""


def _frame(ax, color: str, width: float = 4) -> None:
    for spine in ax.spines.values():
        spine.set_visible(True)
        spine.set_edgecolor(color)
        spine.set_linewidth(width)


def _clean(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def image_grid(images: Sequence[np.ndarray], titles: Sequence[str] | None = None, *, ncols: int = 4,
               size: float = 2.2, wrap: int = 28, fontsize: int = 8, suptitle: str | None = None) -> plt.Figure:
    """uint8 images [H, W, 3] in a grid, each with an optional (wrapped) title."""
    n = len(images)
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    title_lines = max((len(textwrap.wrap(t, wrap)) for t in titles), default=0) if titles else 0
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, (size + 0.16 * title_lines) * nrows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        _clean(ax)
        if i < n:
            ax.imshow(images[i])
            if titles:
                ax.set_title(_wrap(titles[i], wrap), fontsize=fontsize)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def show_pairs(befores: Sequence[np.ndarray], afters: Sequence[np.ndarray], captions: Sequence[Sequence[str] | str], *,
               labels: Sequence[str] | None = None, size: float = 2.2, wrap: int = 60) -> plt.Figure:
    """One row per pair: before | after | caption text (one or several lines, e.g. generated vs references)."""
    n = len(befores)
    fig, axes = plt.subplots(n, 3, figsize=(size * 2 + 4.5, size * n), squeeze=False,
                             gridspec_kw=dict(width_ratios=[1, 1, 2.2]))
    for i in range(n):
        a, b, t = axes[i]
        for ax in (a, b, t):
            _clean(ax)
        a.imshow(befores[i])
        b.imshow(afters[i])
        if i == 0:
            a.set_title("before", fontsize=9)
            b.set_title("after", fontsize=9)
        lines = [captions[i]] if isinstance(captions[i], str) else list(captions[i])
        text = "\n".join(_wrap(line, wrap) for line in lines)
        if labels:
            text = f"[{labels[i]}]\n{text}"
        t.text(0.0, 0.5, text, va="center", ha="left", fontsize=9, transform=t.transAxes)
    fig.tight_layout()
    return fig


def show_triplets(references: Sequence[np.ndarray], texts: Sequence[str], targets: Sequence[np.ndarray], *,
                  negatives: Sequence[Sequence[np.ndarray]] | None = None, labels: Sequence[str] | None = None,
                  size: float = 1.8) -> plt.Figure:
    """One row per triplet: reference, modification text, target (green frame), then near-miss images if given."""
    n = len(references)
    extra = len(negatives[0]) if negatives else 0
    fig, axes = plt.subplots(n, 3 + extra, figsize=(size * (3 + extra) + 1.5, size * n), squeeze=False,
                             gridspec_kw=dict(width_ratios=[1, 1.8, 1] + [1] * extra))
    for i in range(n):
        row = axes[i]
        for ax in row:
            _clean(ax)
        row[0].imshow(references[i])
        row[2].imshow(targets[i])
        _frame(row[2], "tab:green")
        label = f"[{labels[i]}]\n" if labels else ""
        row[1].text(0.5, 0.5, label + _wrap(f"\u201c{texts[i]}\u201d", 24), ha="center", va="center", fontsize=9,
                    transform=row[1].transAxes)
        for j in range(extra):
            row[3 + j].imshow(negatives[i][j])
        if i == 0:
            row[0].set_title("reference", fontsize=9)
            row[2].set_title("target", fontsize=9)
            for j in range(extra):
                row[3 + j].set_title(f"near miss {j + 1}", fontsize=9)
    fig.tight_layout()
    return fig


def similarity_matrix(sim, *, row_labels: Sequence[str] | None = None, col_labels: Sequence[str] | None = None,
                      title: str = "", cmap: str = "viridis", annotate: bool = True) -> plt.Figure:
    """A [R, C] similarity matrix as a heat map; the diagonal (matching pairs) is outlined."""
    sim = np.asarray(sim, dtype=float)
    r, c = sim.shape
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * c, 0.8 + 0.45 * r))
    im = ax.imshow(sim, cmap=cmap)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    for i in range(min(r, c)):
        ax.add_patch(plt.Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="white", linewidth=2))
    if annotate and r * c <= 144:
        for i in range(r):
            for j in range(c):
                ax.text(j, i, f"{sim[i, j]:.2f}", ha="center", va="center", fontsize=7, color="w")
    ax.set_yticks(range(r), [_wrap(s, 40) for s in row_labels] if row_labels else range(r), fontsize=7)
    ax.set_xticks(range(c), col_labels if col_labels else range(c), fontsize=7)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def training_curves(history: Sequence[dict], keys: Sequence[str], *, val_history: Sequence[dict] | None = None,
                    val_keys: Sequence[str] = (), title: str = "") -> plt.Figure:
    """Plot logged values against the optimiser step; validation metrics on their own axes."""
    panels = list(keys) + list(val_keys)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 2.8), squeeze=False)
    steps = [h["step"] for h in history]
    for ax, key in zip(axes[0], keys):
        ax.plot(steps, [h[key] for h in history])
        ax.set_xlabel("step")
        ax.set_title(key)
    for ax, key in zip(axes[0][len(keys):], val_keys):
        ax.plot([v["step"] for v in val_history], [v[key] for v in val_history], marker="o")
        ax.set_xlabel("step")
        ax.set_title(f"val {key}")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def retrieval_grid(queries: Sequence[str | np.ndarray], gallery: Sequence[np.ndarray], indices, *,
                   correct: Sequence[Sequence[bool]] | None = None, k: int = 5, size: float = 1.6,
                   query_titles: Sequence[str] | None = None) -> plt.Figure:
    """One row per query (a text or an image), then its top-k gallery images; correct ones framed green, others red."""
    indices = np.asarray(indices)
    n = len(queries)
    fig, axes = plt.subplots(n, k + 1, figsize=(size * (k + 1) + 1.2, size * n), squeeze=False,
                             gridspec_kw=dict(width_ratios=[1.8] + [1] * k))
    for i in range(n):
        row = axes[i]
        for ax in row:
            _clean(ax)
        q = queries[i]
        if isinstance(q, str):
            row[0].text(0.5, 0.5, _wrap(q, 28), ha="center", va="center", fontsize=8, transform=row[0].transAxes)
        else:
            row[0].imshow(q)
        if query_titles:
            row[0].set_title(_wrap(query_titles[i], 30), fontsize=8)
        for j in range(k):
            row[j + 1].imshow(gallery[int(indices[i, j])])
            if correct is not None:
                _frame(row[j + 1], "tab:green" if correct[i][j] else "tab:red", 3)
            if i == 0:
                row[j + 1].set_title(f"#{j + 1}", fontsize=8)
    fig.tight_layout()
    return fig
