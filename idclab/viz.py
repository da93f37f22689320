"""Figures for the book and for your own runs (matplotlib; every function returns the Figure).

* :func:`image_grid` -- images with titles/captions;
* :func:`show_pairs` -- image-difference pairs (before | after) with their captions;
* :func:`show_triplets` -- composed-retrieval triplets (reference, text, target, and the near-miss set);
* :func:`similarity_matrix` -- a CLIP similarity (logit) matrix as a heat map;
* :func:`training_curves` -- logged values of a :class:`idclab.train.TrainResult` history;
* :func:`retrieval_grid` -- queries and their top-k results, correct ones framed in green;
* :func:`pair_encoder_diagram` -- CLIP4IDC's split ViT (intra blocks per image, inter blocks on the pair);
* :func:`attention_on_pair` -- attention over the before / after patch grids, on top of the images;
* :func:`composed_retrieval_grid` -- composed queries (reference + text) and their top-k;
* :func:`cir_composer` -- an ipywidgets composer: pick an image, type a modification, see the top-k.

Tables (GitHub-flavoured markdown strings; the book renders them with ``display(Markdown(...))``):

* :func:`table` -- rows of values under a header, floats formatted one way or per column;
* :func:`show_table` -- :func:`table` with a caption line, displayed in a notebook;
* :func:`config_table` -- "paper vs this run": one row per configuration field, one column per config;
* :func:`param_counts` / :func:`param_table` -- trainable, frozen and total parameters per part of a model.
"""

from __future__ import annotations

import numbers
import textwrap
from typing import Any, Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np

from idclab.images import read_image

__all__ = ["image_grid", "show_pairs", "show_triplets", "similarity_matrix", "training_curves", "retrieval_grid",
           "pair_encoder_diagram", "attention_on_pair", "composed_retrieval_grid", "cir_composer", "table",
           "show_table", "config_table", "param_counts", "param_table"]


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
                bright = (sim[i, j] - sim.min()) / (np.ptp(sim) or 1.0) > 0.6  # dark text on light cells
                ax.text(j, i, f"{sim[i, j]:.2f}", ha="center", va="center", fontsize=7, color="k" if bright else "w")
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


def pair_encoder_diagram(n_blocks: int, intra_layers: int, tokens_per_image: int, *,
                         title: str | None = None) -> plt.Figure:
    """CLIP4IDC's split ViT as boxes: ``intra_layers`` blocks per image, the rest over the concatenated pair."""
    T, joint = tokens_per_image, n_blocks - intra_layers
    fig, ax = plt.subplots(figsize=(9, 3.6))
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 6.2)
    ax.axis("off")

    def box(x, y, w, h, text, color):
        ax.add_patch(plt.Rectangle((x, y), w, h, facecolor=color, edgecolor="black", lw=1))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=8)

    def arrow(x0, y0, x1, y1):
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops=dict(arrowstyle="->", lw=1))

    for y, name in ((4.3, "before"), (1.1, "after")):
        box(0.1, y, 1.3, 0.9, f"{name}\nimage", "#eeeeee")
        box(1.8, y, 1.7, 0.9, f"patchify + CLS\n+ positions, ln_pre\n[T={T}, W]", "#dbe9f6")
        box(3.9, y, 1.6, 0.9, f"blocks 0..{intra_layers - 1}\n(intra: alone)" if intra_layers else "(no intra\nblock)",
            "#9ecae1")
        arrow(1.4, y + 0.45, 1.8, y + 0.45)
        arrow(3.5, y + 0.45, 3.9, y + 0.45)
        arrow(5.5, y + 0.45, 6.0, 3.1 + (0.3 if name == "before" else -0.3))
    ax.text(5.75, 5.35, "+ bef_embedding", fontsize=7, ha="center")
    ax.text(5.75, 0.7, "+ aft_embedding", fontsize=7, ha="center")
    box(6.0, 2.35, 1.5, 1.5, f"concat [2T={2 * T}, W]\n+ joint positions\nln_mid", "#fdd0a2")
    box(7.9, 2.35, 1.1, 1.5, f"blocks {intra_layers}..{n_blocks - 1}\n(inter:\nthe pair)" if joint else "(no joint\nblock)",
        "#fd8d3c")
    arrow(7.5, 3.1, 7.9, 3.1)
    box(9.2, 2.35, 0.75, 1.5, "ln_post\nproj\nv = mean\nCLS 0, T", "#c7e9c0")
    arrow(9.0, 3.1, 9.2, 3.1)
    ax.set_title(title or f"pair encoder: {intra_layers} of {n_blocks} blocks per image, {joint} on the pair", fontsize=10)
    fig.tight_layout()
    return fig


def attention_on_pair(before: np.ndarray, after: np.ndarray, on_before: np.ndarray, on_after: np.ndarray, *,
                      ax_row=None, vmax: float | None = None):
    """Where a query looks: attention over the before / after patch grids ([g, g] each) on top of the two images.

    With ``ax_row`` (two axes) it draws into them; otherwise it makes and returns a Figure.
    """
    fig = None
    if ax_row is None:
        fig, ax_row = plt.subplots(1, 2, figsize=(4.6, 2.5))
    vmax = vmax if vmax is not None else float(max(on_before.max(), on_after.max()))
    for ax, image, attn, name in ((ax_row[0], before, on_before, "before"), (ax_row[1], after, on_after, "after")):
        _clean(ax)
        h, w = image.shape[:2]
        ax.imshow(image)
        ax.imshow(attn, cmap="magma", alpha=0.55, extent=(0, w, h, 0), vmin=0, vmax=vmax, interpolation="nearest")
        ax.set_title(f"{name}: {attn.sum():.0%} of the attention", fontsize=7)
    if fig is not None:
        fig.tight_layout()
    return fig


def composed_retrieval_grid(bench, ranking, rows: Sequence[int], *, k: int = 5, size: float = 1.6,
                            title: str | None = None) -> plt.Figure:
    """Composed queries of a :class:`idclab.cir.CIRBenchmark` (reference image, its modification text as the
    title) and their top-k from a :class:`idclab.cir.Ranking`; targets framed green, the rest red."""
    names = [ranking.top(i, k) for i in rows]
    queries = [ranking.queries[i] for i in rows]
    pool = list(dict.fromkeys(n for row in names for n in row))
    gallery = [read_image(bench.images[n]) for n in pool]
    indices = [[pool.index(n) for n in row] for row in names]
    texts = [q.fields.get("caption") or " and ".join(str(v) for v in q.fields.values()) for q in queries]
    fig = retrieval_grid([read_image(bench.images[q.reference]) for q in queries], gallery, indices, k=k,
                         correct=[[n in q.targets for n in row] for q, row in zip(queries, names)], size=size,
                         query_titles=texts)
    if title:
        fig.suptitle(title, fontsize=10, y=1.02)
    return fig


def cir_composer(search, references: Sequence[str], *, k: int = 5, size: float = 1.6):
    """An ipywidgets composer over an :class:`idclab.cir.GallerySearch`: pick a reference image, type a modification
    (or a domain noun), see the top-k. Returns the widget box (display it); needs a live kernel."""
    import ipywidgets as widgets
    from IPython.display import display

    ref = widgets.Dropdown(options=list(references), description="reference")
    text = widgets.Text(value="", placeholder="e.g. make the red cube blue", description="modify")
    kind = widgets.ToggleButtons(options=[("caption", "cirr"), ("domain", "domain")], value="cirr")
    out = widgets.Output()

    def show(_=None):
        with out:
            out.clear_output(wait=True)
            if not text.value.strip():
                print("type a modification")
                return
            top = search.search(ref.value, text.value, kind=kind.value, k=k)
            gallery = [read_image(search.bench.images[n]) for n, _ in top]
            fig = retrieval_grid([read_image(search.bench.images[ref.value])], gallery, [list(range(len(top)))],
                                 k=len(top), size=size, query_titles=[text.value])
            display(fig)
            plt.close(fig)

    for w in (ref, text, kind):
        w.observe(show, names="value")
    return widgets.VBox([widgets.HBox([ref, kind]), text, out])


def _cell(value: Any, floatfmt: str) -> str:
    """One table cell: floats (Python or NumPy, or 0-d tensors/arrays) with ``floatfmt``, the rest with ``str``.
    A ``|`` inside a cell is escaped and a line break becomes ``<br>``, so a cell never splits the row."""
    if hasattr(value, "ndim") and getattr(value, "ndim") == 0 and hasattr(value, "item"):
        value = value.item()  # a 0-d tensor or array
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        text = format(float(value), floatfmt)
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", "<br>")


def table(rows: Sequence[Sequence[Any]] | Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, *,
          floatfmt: str | Sequence[str] = ".1f") -> str:
    """A GitHub-flavoured markdown table (a string: ``display(Markdown(table(...)))`` renders it).

    ``rows`` are sequences of cell values under ``columns``, or dicts (``columns`` defaults to the first row's keys;
    give it to pick and order the keys). Floats are formatted with ``floatfmt``: one format for every column, or one
    per column (e.g. ``["", ".3f", ".1f"]``; a column of strings ignores its format). Every other value goes through
    ``str``.

    >>> print(table([["cube", 0.5], ["sphere", 0.25]], ["shape", "share"], floatfmt=".2f"))
    | shape | share |
    |---|---|
    | cube | 0.50 |
    | sphere | 0.25 |
    """
    rows = list(rows)
    if rows and isinstance(rows[0], Mapping):
        columns = list(columns) if columns is not None else list(rows[0])
        missing = [(i, c) for i, r in enumerate(rows) for c in columns if c not in r]
        if missing:
            raise KeyError(f"row {missing[0][0]} has no {missing[0][1]!r}: give every dict row the keys {columns}")
        rows = [[r[c] for c in columns] for r in rows]
    if columns is None:
        raise ValueError("table: give the column names (columns=[...]) when the rows are sequences, not dicts")
    columns = list(columns)
    formats = [floatfmt] * len(columns) if isinstance(floatfmt, str) else list(floatfmt)
    if len(formats) != len(columns):
        raise ValueError(f"table: {len(formats)} float formats for {len(columns)} columns; give one per column or "
                         "a single string")
    lines = ["| " + " | ".join(_cell(c, "") for c in columns) + " |", "|" + "---|" * len(columns)]
    for i, row in enumerate(rows):
        row = list(row)
        if len(row) != len(columns):
            raise ValueError(f"table: row {i} has {len(row)} cells for {len(columns)} columns: {row}")
        lines.append("| " + " | ".join(_cell(v, f) for v, f in zip(row, formats)) + " |")
    return "\n".join(lines)


def show_table(rows, columns: Sequence[str] | None = None, *, caption: str = "", note: str = "",
               floatfmt: str | Sequence[str] = ".1f") -> None:
    """Display :func:`table` in a notebook, with an optional caption above it and a note below it (markdown)."""
    from IPython.display import Markdown, display

    parts = [caption, table(rows, columns, floatfmt=floatfmt), note]
    display(Markdown("\n\n".join(p for p in parts if p)))


def _field(config: Any, path: str) -> Any:
    value = config
    for part in path.split("."):
        value = getattr(value, part)
    return value


def config_table(fields: Sequence[tuple[str, str | Callable[[Any], Any]]], configs: Mapping[str, Any]) -> str:
    """The "paper vs this run" table: one row per field, one column per configuration.

    ``fields`` are ``(label, how)`` pairs; ``how`` is a dotted attribute path (``"adapt.lr"``) or a function of the
    config returning the cell. ``configs`` maps column headers to configs, e.g.
    ``{"paper": config_for("clevr", "paper"), "this run (toy)": CFG}``. Floats are written with ``:g``.
    """
    rows = []
    for label, how in fields:
        cells = [how(c) if callable(how) else _field(c, how) for c in configs.values()]
        rows.append([label] + [format(v, "g") if isinstance(v, float) else v for v in cells])
    return table(rows, ["", *configs])


def param_counts(parts, *, total: bool = True) -> dict[str, dict[str, int]]:
    """Trainable / frozen / total parameter counts per part.

    ``parts`` is one ``nn.Module`` or a dict of name -> module (or -> iterable of parameters, e.g. a filtered
    ``named_parameters``). A parameter is frozen when ``requires_grad`` is False. With ``total`` (and several parts)
    a last row ``"total"`` sums the distinct parameters of all parts (a tensor shared by two parts counts once).
    """
    if hasattr(parts, "parameters") and not isinstance(parts, Mapping):
        parts = {"model": parts}
    seen: dict[int, Any] = {}
    out = {}
    for name, part in parts.items():
        params = list(part.parameters() if hasattr(part, "parameters") else part)
        params = [p[1] if isinstance(p, tuple) else p for p in params]  # named_parameters() pairs
        unique = {id(p): p for p in params}.values()
        seen.update({id(p): p for p in unique})
        trainable = sum(p.numel() for p in unique if p.requires_grad)
        everything = sum(p.numel() for p in unique)
        out[name] = dict(trainable=trainable, frozen=everything - trainable, total=everything)
    if total and len(out) > 1:
        if "total" in out:
            raise ValueError("param_counts: a part is called 'total'; rename it or pass total=False")
        trainable = sum(p.numel() for p in seen.values() if p.requires_grad)
        everything = sum(p.numel() for p in seen.values())
        out["total"] = dict(trainable=trainable, frozen=everything - trainable, total=everything)
    return out


def param_table(parts, *, total: bool = True) -> str:
    """:func:`param_counts` as a markdown table (thousands separated by commas)."""
    counts = param_counts(parts, total=total)
    return table([[name, f"{c['trainable']:,}", f"{c['frozen']:,}", f"{c['total']:,}"] for name, c in counts.items()],
                 ["part", "trainable", "frozen", "total"])
