"""Options that reproduce the reference code where idclab's own choice differs (issue 11, item 8).

Each parity test writes the reference's formula by hand on small fixed inputs and compares idclab's result with it:
the optimiser of CLIP4IDC's reference (no bias correction, weight decay on all but biases), its whole-run warm-up
schedules, FashionIQ images with an alpha channel, and the order of the "other classes" of COCO composition.
"""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from idclab.data import coco_composition as cc
from idclab.data import fashioniq as fiq
from idclab.images import ImageFile, read_image
from idclab.models import clip4idc as c
from idclab.train import AdamNoBiasCorrection, TrainConfig, Trainer, _schedule, default_param_groups

# ----------------------------------------------------------------------------------------------------------------------
# CLIP4IDC's optimiser: BertAdam's update (no bias correction) and its weight-decay rule
# ----------------------------------------------------------------------------------------------------------------------


class Tiny(nn.Module):
    """A norm, an embedding table, a logit scale and a matrix with its bias; the loss is linear in each, so every
    gradient is a fixed tensor."""

    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(3)  # weight [3], bias [3]
        self.embedding = nn.Embedding(2, 3)  # [2, 3]
        self.logit_scale = nn.Parameter(torch.tensor(4.6))
        self.fc = nn.Linear(3, 2)  # weight [2, 3], bias [2]
        with torch.no_grad():
            for i, p in enumerate(self.parameters()):
                p.copy_(torch.linspace(-1.0, 1.5, p.numel()).reshape(p.shape) + 0.1 * i)


GRADS = {  # d loss / d parameter (fixed)
    "norm.weight": torch.tensor([0.5, -1.0, 2.0]),
    "norm.bias": torch.tensor([0.3, 0.0, -0.7]),
    "embedding.weight": torch.tensor([[1.0, -2.0, 0.1], [0.0, 0.4, -0.2]]),
    "logit_scale": torch.tensor(0.25),
    "fc.weight": torch.tensor([[0.2, -0.3, 0.9], [-1.5, 0.6, 0.05]]),
    "fc.bias": torch.tensor([1.0, -0.5]),
}


def tiny_loss(model, batch):
    return sum((p * GRADS[n]).sum() for n, p in model.named_parameters())


class OneItem(torch.utils.data.Dataset):
    def __len__(self):
        return 1

    def __getitem__(self, i):
        return torch.zeros(1)


def test_optimiser_without_bias_correction_and_decay_on_all_but_biases_matches_the_hand_written_update():
    lr, (b1, b2), eps, wd, steps = 0.01, (0.9, 0.98), 1e-6, 0.2, 2
    model = Tiny()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = TrainConfig(max_steps=steps, batch_size=1, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd,
                      schedule="constant", bias_correction=False, decay_all=True, progress=False)
    trainer = Trainer(model, tiny_loss, OneItem(), config=cfg)
    assert isinstance(trainer.optimizer, AdamNoBiasCorrection)
    trainer.fit()
    for name, p0 in start.items():
        g, p, m, v = GRADS[name], p0.clone(), torch.zeros_like(p0), torch.zeros_like(p0)
        decay = 0.0 if name.endswith("bias") else wd  # the reference exempts biases only
        for _ in range(steps):
            m = b1 * m + (1 - b1) * g  # no 1 / (1 - b1^t)
            v = b2 * v + (1 - b2) * g * g  # no 1 / (1 - b2^t)
            p = p - lr * (m / (v.sqrt() + eps) + decay * p)
        assert torch.allclose(dict(model.named_parameters())[name].detach(), p, atol=1e-6, rtol=0), name


def test_default_optimiser_stays_adamw_with_decay_on_matrices_only():
    model = Tiny()
    cfg = TrainConfig(max_steps=1, batch_size=1, lr=0.01, weight_decay=0.2, progress=False)
    trainer = Trainer(model, tiny_loss, OneItem(), config=cfg)
    assert type(trainer.optimizer) is torch.optim.AdamW
    decayed = {id(p) for g in trainer.optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(model.fc.weight)}
    groups = default_param_groups(model, 0.2, decay_all=True)
    assert {id(p) for p in groups[1]["params"]} == {id(model.norm.bias), id(model.fc.bias)}


def test_clip4idc_paper_presets_use_the_reference_optimiser_and_the_toy_ones_adamw():
    for dataset in ("clevr", "spot", "ier", "shapes"):
        cfg = c.config_for(dataset, "paper")
        for stage, schedule in ((cfg.adapt, "cosine_whole_run"), (cfg.caption, "linear_whole_run")):
            assert (stage.bias_correction, stage.decay_all, stage.schedule) == (False, True, schedule)
            t = c.trainer_config(stage, 10_000, select_metric="CIDEr")
            assert (t.bias_correction, t.decay_all, t.schedule) == (False, True, schedule)
            assert t.warmup_steps == round(0.1 * t.max_steps)
    for profile in ("toy", "smoke"):
        cfg = c.config_for("shapes", profile)
        assert (cfg.adapt.bias_correction, cfg.adapt.decay_all, cfg.adapt.schedule) == (True, False, "cosine")
        assert (cfg.caption.bias_correction, cfg.caption.decay_all, cfg.caption.schedule) == (True, False, "linear")


def test_clip4idc_reference_decay_rule_exempts_biases_and_the_captioners_norms_only():
    smoke = c.config_for("shapes", "smoke")
    model = c.CLIP4IDC(smoke, stage="caption")
    stage = dataclasses.replace(smoke.caption, decay_all=True, weight_decay=0.01)
    where = {id(p): g["weight_decay"] for g in c.param_groups(model, stage) for p in g["params"]}
    norms = {id(p) for m in model.captioner.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exempt = "bias" in name.rsplit(".", 1)[-1] or id(p) in norms  # the reference: "bias" / "LayerNorm" names
        assert where[id(p)] == (0.0 if exempt else 0.01), name
    named = dict(model.named_parameters())
    for name in ("encoder.clip.visual.ln_post.weight", "encoder.bef_embedding", "encoder.ln_mid.weight"):
        assert where[id(named[name])] == 0.01  # CLIP's norms, the new embeddings and ln_mid are decayed
    assert where[id(named["captioner.ln_embed.weight"])] == 0.0 and where[id(named["captioner.head_bias"])] == 0.0


# ----------------------------------------------------------------------------------------------------------------------
# Whole-run warm-up schedules (BERT's warmup_cosine / warmup_linear)
# ----------------------------------------------------------------------------------------------------------------------


def reference_factor(step, total, warmup_fraction, kind):
    x = step / total
    if x < warmup_fraction:
        return x / warmup_fraction
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * x))
    return max((x - 1.0) / (warmup_fraction - 1.0), 0.0)


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_whole_run_schedules_match_the_reference_formula(kind):
    total, warmup = 200, 20
    f = _schedule(TrainConfig(max_steps=total, batch_size=1, lr=1.0, warmup_steps=warmup,
                              schedule=f"{kind}_whole_run"))
    for step in (0, 1, 7, 19, 20, 21, 100, 150, 199):
        assert f(step) == pytest.approx(reference_factor(step, total, warmup / total, kind), abs=1e-12), step
    if kind == "cosine":
        assert f(20) == pytest.approx(0.5 * (1 + math.cos(0.1 * math.pi))) and round(f(20), 3) == 0.976
        restarting = _schedule(TrainConfig(max_steps=total, batch_size=1, lr=1.0, warmup_steps=warmup))
        assert restarting(20) == 1.0  # idclab's "cosine" restarts its progress after the warm-up


def test_trainer_follows_the_whole_run_schedule():
    cfg = TrainConfig(max_steps=10, batch_size=1, lr=0.5, warmup_steps=1, schedule="cosine_whole_run",
                      log_every=1, progress=False)
    result = Trainer(Tiny(), tiny_loss, OneItem(), config=cfg).fit()
    lrs = [h["lr"] for h in result.history]  # the lr set for the next step, after each of steps 1..10
    assert lrs[:9] == pytest.approx([0.5 * reference_factor(s, 10, 0.1, "cosine") for s in range(1, 10)])


def test_unknown_schedule_names_the_choices():
    with pytest.raises(ValueError, match="cosine_whole_run"):
        TrainConfig(max_steps=1, batch_size=1, lr=1.0, schedule="warmup_cosine")
    with pytest.raises(ValueError, match="linear_whole_run"):
        c.StageConfig(schedule="warmup_linear")


# ----------------------------------------------------------------------------------------------------------------------
# FashionIQ images with an alpha channel: the reference drops it
# ----------------------------------------------------------------------------------------------------------------------

RGBA = np.array([[[200, 100, 50, 255], [200, 100, 50, 0]],
                 [[10, 20, 30, 51], [0, 0, 0, 0]]], dtype=np.uint8)  # [2, 2, 4]: opaque, clear, 20 %, clear black


def composite_on_white(rgba):
    rgb, a = rgba[..., :3].astype(float), rgba[..., 3:].astype(float) / 255
    return rgb * a + 255 * (1 - a)


def test_read_image_drops_alpha_or_composites_on_white(tmp_path):
    path = tmp_path / "p.png"
    Image.fromarray(RGBA, mode="RGBA").save(path)
    dropped = read_image(path, alpha="drop")
    assert dropped.tolist() == [[[200, 100, 50], [200, 100, 50]], [[10, 20, 30], [0, 0, 0]]]  # colours kept
    white = read_image(path)  # idclab's default elsewhere: on white
    assert white[0, 0].tolist() == [200, 100, 50] and white[0, 1].tolist() == [255, 255, 255]
    assert np.abs(white.astype(float) - composite_on_white(RGBA)).max() <= 1  # 20 %: 0.2 * 10 + 0.8 * 255 = 206
    assert read_image(RGBA, alpha="drop").tolist() == dropped.tolist()  # arrays too
    assert ImageFile(path, "drop")().tolist() == dropped.tolist()
    with pytest.raises(ValueError, match="alpha must be one of"):
        read_image(path, alpha="black")


def write_fiq(root, rgba_asin="A1"):
    """A one-category FashionIQ with one triplet (A1 -> A2); A1 is an RGBA PNG."""
    (root / "captions").mkdir(parents=True)
    (root / "image_splits").mkdir()
    (root / "images").mkdir()
    for split in ("train", "val"):
        (root / "captions" / f"cap.dress.{split}.json").write_text(
            json.dumps([{"candidate": "A1", "target": "A2", "captions": ["is red", "is short"]}]))
        (root / "image_splits" / f"split.dress.{split}.json").write_text(json.dumps(["A1", "A2"]))
    Image.fromarray(RGBA, mode="RGBA").save(root / "images" / "A1.png")
    Image.fromarray(np.full((2, 2, 3), 7, np.uint8)).save(root / "images" / "A2.png")


def test_fashioniq_drops_alpha_by_default_as_the_reference_loaders(tmp_path):
    write_fiq(tmp_path)
    bench = fiq.load_benchmark(tmp_path, "val", categories=("dress",))
    assert read_image(bench.images["A1"]).tolist() == RGBA[..., :3].tolist()  # what the harness reads
    assert bench.images["A1"].path == tmp_path / "images" / "A1.png" and bench.info["alpha"] == "drop"
    on_white = fiq.load_benchmark(tmp_path, "val", categories=("dress",), alpha="white")
    assert read_image(on_white.images["A1"])[0, 1].tolist() == [255, 255, 255]
    item = fiq.FashionIQTriplets(tmp_path, "train", categories=("dress",))[0]
    assert item["reference"].tolist() == RGBA[..., :3].tolist()
    white_item = fiq.FashionIQTriplets(tmp_path, "train", categories=("dress",), alpha="white")[0]
    assert white_item["reference"][0, 1].tolist() == [255, 255, 255]
    with pytest.raises(ValueError, match="alpha must be one of"):
        fiq.FashionIQTriplets(tmp_path, "train", categories=("dress",), alpha="keep")


# ----------------------------------------------------------------------------------------------------------------------
# COCO composition: the other classes keep the annotation order (Pic2Word's script), or are sorted
# ----------------------------------------------------------------------------------------------------------------------

TINY_COCO = {
    "images": [{"id": 7, "file_name": "000000000007.jpg", "width": 100, "height": 100}],
    "categories": [{"id": 1, "name": "zebra"}, {"id": 2, "name": "apple"}, {"id": 3, "name": "dog"},
                   {"id": 4, "name": "bench"}],
    "annotations": [  # file order: zebra, apple, zebra again, bench; the dog is the only candidate (0.09 of the image)
        {"id": 53, "image_id": 7, "category_id": 1, "bbox": [0, 0, 2, 2], "iscrowd": 0,
         "segmentation": [[0, 0, 2, 0, 2, 2]]},
        {"id": 51, "image_id": 7, "category_id": 2, "bbox": [0, 0, 2, 2], "iscrowd": 0,
         "segmentation": [[0, 0, 2, 0, 2, 2]]},
        {"id": 50, "image_id": 7, "category_id": 3, "bbox": [10, 10, 30, 30], "iscrowd": 0,
         "segmentation": [[10, 10, 40, 10, 40, 40, 10, 40]]},
        {"id": 52, "image_id": 7, "category_id": 1, "bbox": [0, 0, 2, 2], "iscrowd": 0,
         "segmentation": [[0, 0, 2, 0, 2, 2]]},
        {"id": 49, "image_id": 7, "category_id": 4, "bbox": [0, 0, 2, 2], "iscrowd": 1,
         "segmentation": {"counts": [0, 4], "size": [100, 100]}},
    ],
}


def test_coco_other_classes_keep_the_annotation_order_by_default(tmp_path):
    (row, ann), = cc.choose_queries(TINY_COCO)[0]
    assert ann["id"] == 50 and row.query_class == "dog"
    # Pic2Word: the image's labels in order of first appearance in the annotation list, duplicates once, query out
    assert row.classes == ("zebra", "apple", "bench") and row.text == "dog and zebra and apple and bench"
    (row_sorted, _), = cc.choose_queries(TINY_COCO, class_order="sorted")[0]
    assert row_sorted.classes == ("apple", "bench", "zebra")
    with pytest.raises(ValueError, match="class_order must be one of"):
        cc.choose_queries(TINY_COCO, class_order="by_id")
    # through the prep file and the benchmark
    (tmp_path / "annotations").mkdir()
    (tmp_path / cc.ANNOTATIONS).write_text(json.dumps(TINY_COCO))
    (tmp_path / "val2017").mkdir()
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(tmp_path / cc.image_name(7), format="PNG")
    cc.prepare(tmp_path)
    header, rows = cc.read_csv(tmp_path)
    assert header["class_order"] == "annotation" and rows[0].classes == ("zebra", "apple", "bench")
    bench = cc.load_benchmark(tmp_path)
    assert bench.queries[0].fields == {"classes": "dog and zebra and apple and bench"}
    cc.prepare(tmp_path, class_order="sorted")
    header, rows = cc.read_csv(tmp_path)
    assert header["class_order"] == "sorted" and rows[0].classes == ("apple", "bench", "zebra")
