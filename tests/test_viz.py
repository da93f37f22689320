"""Table helpers of idclab.viz: markdown that renders as the intended table, config and parameter-count tables."""

import dataclasses

import numpy as np
import pytest
import torch
from markdown_it import MarkdownIt

from idclab import viz


def rendered(md: str) -> list[list[str]]:
    """The cells of the first table in ``md`` as a GFM renderer sees them (header row first)."""
    tokens = MarkdownIt("commonmark").enable("table").parse(md)
    rows, row = [], None
    for i, t in enumerate(tokens):
        if t.type == "tr_open":
            row = []
        elif t.type in ("th_open", "td_open"):
            row.append(tokens[i + 1].content if tokens[i + 1].type == "inline" else "")
        elif t.type == "tr_close":
            rows.append(row)
    assert rows, f"no table in:\n{md}"
    return rows


def test_table_text_and_rendering():
    md = viz.table([["cube", 0.5, 3], ["sphere", 0.25, 10]], ["shape", "share", "n"], floatfmt=".2f")
    assert md == "| shape | share | n |\n|---|---|---|\n| cube | 0.50 | 3 |\n| sphere | 0.25 | 10 |"
    assert rendered(md) == [["shape", "share", "n"], ["cube", "0.50", "3"], ["sphere", "0.25", "10"]]


def test_table_formats_numpy_and_torch_scalars_but_not_ints_or_bools():
    md = viz.table([[np.float32(1.25), torch.tensor(2.5), np.int64(7), True, torch.tensor(3)]], list("abcde"))
    assert rendered(md)[1] == ["1.2", "2.5", "7", "True", "3"]  # 1.25 rounds half to even


def test_table_per_column_formats():
    md = viz.table([[8, 2.0794, 1.5, 42.123]], ["B", "log B", "loss", "R@1"], floatfmt=["", ".2f", ".3f", ".1f"])
    assert rendered(md)[1] == ["8", "2.08", "1.500", "42.1"]
    with pytest.raises(ValueError, match="one per column"):
        viz.table([[1, 2.0]], ["a", "b"], floatfmt=[".1f"])


def test_table_dict_rows_pick_and_order_columns():
    rows = [{"name": "a", "x": 1.0, "y": 2.0}, {"name": "b", "x": 3.0, "y": 4.0}]
    assert rendered(viz.table(rows)) == [["name", "x", "y"], ["a", "1.0", "2.0"], ["b", "3.0", "4.0"]]
    assert rendered(viz.table(rows, ["y", "name"])) == [["y", "name"], ["2.0", "a"], ["4.0", "b"]]
    with pytest.raises(KeyError, match="'z'"):
        viz.table(rows, ["name", "z"])


def test_table_cells_never_split_a_row():
    md = viz.table([["a | b", "two\nlines", "**bold**"]], ["pipe", "newline", "markdown"])
    assert rendered(md)[1] == ["a | b", "two<br>lines", "**bold**"]  # one cell each; the renderer unescapes "\\|"
    assert len(md.splitlines()) == 3


def test_table_errors_name_the_fix():
    with pytest.raises(ValueError, match="columns="):
        viz.table([[1, 2]])
    with pytest.raises(ValueError, match="row 1 has 1 cells for 2 columns"):
        viz.table([[1, 2], [3]], ["a", "b"])


def test_table_without_rows_is_a_header():
    assert rendered(viz.table([], ["a", "b"])) == [["a", "b"]]


def test_show_table_displays_caption_table_and_note(monkeypatch):
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", shown.append)
    viz.show_table([["x", 1.0]], ["k", "v"], caption="Caption", note="a note")
    (md,) = shown
    assert md.data == "Caption\n\n| k | v |\n|---|---|\n| x | 1.0 |\n\na note"


@dataclasses.dataclass(frozen=True)
class Stage:
    lr: float
    steps: int | None


@dataclasses.dataclass(frozen=True)
class Config:
    backbone: str
    stage: Stage


def test_config_table_paths_functions_and_floats():
    paper, run = Config("ViT-B-32", Stage(1e-4, None)), Config("tiny", Stage(0.002, 300))
    fields = [("backbone", "backbone"), ("lr", "stage.lr"),
              ("length", lambda c: f"{c.stage.steps} steps" if c.stage.steps else "12 epochs")]
    md = viz.config_table(fields, {"paper": paper, "this run (toy)": run})
    assert rendered(md) == [["", "paper", "this run (toy)"], ["backbone", "ViT-B-32", "tiny"],
                            ["lr", "0.0001", "0.002"], ["length", "12 epochs", "300 steps"]]
    with pytest.raises(AttributeError):
        viz.config_table([("x", "stage.nope")], {"paper": paper})


def test_param_counts_trainable_frozen_total_and_shared_parameters():
    shared = torch.nn.Linear(3, 4)  # 16 parameters
    tower = torch.nn.Sequential(shared, torch.nn.Linear(4, 2))  # 16 + 10
    head = torch.nn.Sequential(torch.nn.Linear(2, 5), shared)  # 15 + 16 (the same tensors as the tower's first layer)
    for p in tower.parameters():
        p.requires_grad_(False)
    counts = viz.param_counts({"tower": tower, "head": head})
    assert counts["tower"] == dict(trainable=0, frozen=26, total=26)
    assert counts["head"] == dict(trainable=15, frozen=16, total=31)
    assert counts["total"] == dict(trainable=15, frozen=26, total=41)  # shared counted once
    assert viz.param_counts(head) == {"model": dict(trainable=15, frozen=16, total=31)}
    named = [(n, p) for n, p in head.named_parameters() if n.startswith("0.")]
    assert viz.param_counts({"first layer": named}, total=False) == {"first layer": dict(trainable=15, frozen=0,
                                                                                         total=15)}
    with pytest.raises(ValueError, match="rename"):
        viz.param_counts({"total": head, "tower": tower})


def test_param_table_rows():
    net = torch.nn.Linear(1000, 10)  # 10,010 parameters
    frozen = torch.nn.Linear(10, 1).requires_grad_(False)  # 11
    assert rendered(viz.param_table({"net": net, "probe": frozen})) == [
        ["part", "trainable", "frozen", "total"], ["net", "10,010", "0", "10,010"], ["probe", "0", "11", "11"],
        ["total", "10,010", "11", "10,021"]]
