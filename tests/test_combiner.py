"""The Combiner (idclab.models.combiner): the network as in the reference, both stages, cached features, FashionIQ
caption variants, checkpoints, the CLI, and bad input."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from idclab import backbones, cir, cli
from idclab.models import combiner as c


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("combiner")
    results = c.train(c.config_for("shapes", "smoke"), out, progress=False, device="cpu")
    return out, results


def test_combiner_network_matches_the_reference():
    net = c.Combiner(640, 2560, 5120)
    assert sum(p.numel() for p in net.parameters()) == 59_003_521  # §3, RN50x4
    drops = [m.p for m in net.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops == [0.5] * 4 and net.scale == 100.0  # dropout after both projections and inside both MLPs
    torch.manual_seed(0)
    small = c.Combiner(8, 16, 32).eval()
    i, t = torch.randn(5, 8), torch.randn(5, 8)
    q, lam = small.fuse(i, t)
    # By hand: concat [t', i'] (text first), mixture + lambda t + (1 - lambda) i on the RAW features, normalised.
    cat = torch.cat([small.text_proj(t), small.image_proj(i)], dim=-1)
    lam_hand = torch.sigmoid(small.scalar[3](F.relu(small.scalar[0](cat))))
    q_hand = F.normalize(small.mixture(cat) + lam_hand * t + (1 - lam_hand) * i, dim=-1)
    torch.testing.assert_close(q, q_hand)
    torch.testing.assert_close(lam, lam_hand)
    assert bool(((lam > 0) & (lam < 1)).all()) and torch.allclose(q.norm(dim=-1), torch.ones(5))
    tgt = torch.randn(5, 8)
    torch.testing.assert_close(small.logits(i, t, tgt), 100 * q @ F.normalize(tgt, dim=-1).T)


def test_stage_one_trains_only_the_chosen_encoder():
    clip = c.load_backbone(c.config_for("shapes", "smoke"))
    model = c.FineTuner(clip, "text")
    trainable = {n for n, p in clip.named_parameters() if p.requires_grad}
    assert trainable and not any(n.startswith("visual.") for n in trainable) and "logit_scale" not in trainable
    assert "token_embedding.weight" in trainable  # §4: "text" = everything outside visual.*
    model.train()
    assert not clip.training  # CLIP stays in eval mode (§2.1)
    both = c.FineTuner(c.load_backbone(c.config_for("shapes", "smoke")), "both")
    assert all(p.requires_grad for n, p in both.clip.named_parameters() if n != "logit_scale")
    # The loss is the one-direction classification loss of the normalised sum query.
    ref, tgt = torch.randn(4, 32), torch.randn(4, 32)
    tokens = backbones.tokenize(["make it red"] * 4, context_length=32)
    loss, _ = c.finetune_loss(model, {"ref": ref, "tgt": tgt, "tokens": tokens})
    with torch.no_grad():
        text = clip.encode_text(tokens)
    q = F.normalize(F.normalize(ref, dim=-1) + F.normalize(text, dim=-1), dim=-1)
    expected = F.cross_entropy(100 * q @ F.normalize(tgt, dim=-1).T, torch.arange(4))
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-4)


def test_fashioniq_caption_variants():
    item = {"captions": ["is red.", " has long sleeves?"], "id": "dress/0"}
    assert c.caption_variants(item, "fashioniq") == ["is red and has long sleeves", "has long sleeves and is red",
                                                     "is red", "has long sleeves"]
    assert c.caption_variants({"caption": "two dogs"}, "cirr") == ["two dogs"]
    with pytest.raises(ValueError, match="empty modification text"):
        c.caption_variants({"captions": ["", "is red"], "id": "x"}, "fashioniq")


def test_cached_features_equal_fresh_ones_and_variants_are_sampled():
    cfg = c.config_for("shapes", "smoke")
    clip = c.load_backbone(cfg)
    source = c.load_triplets(cfg, "val")
    cache = c.precompute(clip, source, preprocess=cfg.preprocess, texts=True, progress=False)
    ref, tgt, variants = source[3]
    fresh = c._encode_images(clip, [ref], cfg.preprocess, "cpu")
    torch.testing.assert_close(cache["ref"][3:4], fresh)
    assert cache["text"].shape == (len(source), 1, 32)
    fiq = {"ref": torch.zeros(2, 4), "tgt": torch.zeros(2, 4), "text": torch.arange(8.).view(2, 4, 1).expand(2, 4, 4),
           "variants": [["a", "b", "c", "d"]] * 2}
    drawn = {float(c.CachedTriplets(fiq)[0]["text"][0]) for _ in range(60)}
    assert drawn == {0.0, 1.0, 2.0, 3.0}  # each of the four FashionIQ variants shows up


def test_both_stages_run_and_reload(smoke_run):
    out, results = smoke_run
    assert set(results) == {"finetune", "combiner"}
    assert (out / "finetune" / "best.pt").is_file() and (out / "combiner" / "best.pt").is_file()
    comb = c.load_retriever(out)
    s = c.load_retriever(out, method="sum")
    bench = cir.shapes_benchmark("test", 6, size=32)
    a = cir.evaluate(comb, bench, progress=False)
    b = cir.evaluate(s, bench, progress=False)
    assert a["method"] == "combiner" and b["method"] == "sum" and "R@1" in a["metrics"][cir.ALL]
    # The Combiner's CLIP is the fine-tuned one, not the starting backbone.
    fresh = c.load_backbone(c.config_for("shapes", "smoke"))
    assert not torch.equal(comb.clip.token_embedding.weight, fresh.token_embedding.weight)
    torch.testing.assert_close(comb.clip.visual.conv1.weight, fresh.visual.conv1.weight)  # image tower untouched
    gap = c.similarity_gap(comb, bench)
    assert gap["target"].shape == (6,) and gap["others"].shape == (6 * (36 - 2),)
    lam = c.lambdas(comb, bench)
    assert sum(len(v) for v in lam.values()) == 6 and all(((v > 0) & (v < 1)).all() for v in lam.values())


def test_stage_two_alone_on_the_frozen_clip_and_wrong_backbone(tmp_path, smoke_run):
    cfg = c.config_for("shapes", "smoke")
    res = c.train(cfg, tmp_path / "v1", stages=("combiner",), progress=False, device="cpu")
    assert res["combiner"].best is not None
    clip, _, _ = c.load_combiner(tmp_path / "v1")
    fresh = c.load_backbone(cfg)
    assert torch.equal(clip.token_embedding.weight, fresh.token_embedding.weight)  # no stage 1: the plain backbone
    other = dataclasses.replace(cfg, backbone="idc-tiny")
    with pytest.raises(ValueError, match="use a checkpoint of the same backbone"):
        c.train(other, tmp_path / "x", stages=("combiner",), init=smoke_run[0], progress=False)
    with pytest.raises(ValueError, match="not a Combiner finetune checkpoint"):
        c.load_finetuned_clip(tmp_path / "v1" / "combiner" / "best.pt")
    with pytest.raises(FileNotFoundError, match="idclab train combiner"):
        c.load_combiner(tmp_path / "nothing")
    with pytest.raises(ValueError, match="needs --root"):
        c.load_triplets(c.config_for("fashioniq", "paper"), "train")


def test_cli_train_and_eval_combiner(tmp_path, capsys):
    cli.main(["train", "combiner", "--profile", "smoke", "--out", str(tmp_path / "run")])
    out = json.loads(capsys.readouterr().out)
    assert set(out["stages"]) == {"finetune", "combiner"}
    cli.main(["eval", "cir", "--method", "combiner", "--benchmark", "shapes", "--checkpoint", str(tmp_path / "run"),
              "--n", "6"])
    report = json.loads(capsys.readouterr().out)
    assert list(report["methods"]) == ["image", "text", "sum", "combiner"]
    assert report["methods"]["combiner"]["prompts"]["cirr"] == "{caption}"
    # The baselines of a Combiner run use its prompts ("{caption}" for the Shapes domain task too).
    assert report["methods"]["sum"]["prompts"]["domain"] == "{caption}"
    cli.main(["eval", "cir", "--method", "sum", "--benchmark", "shapes", "--checkpoint", str(tmp_path / "run"),
              "--n", "6"])
    alone = json.loads(capsys.readouterr().out)
    assert list(alone["methods"]) == ["image", "text", "sum"]
    assert alone["methods"]["sum"]["metrics"] == report["methods"]["sum"]["metrics"]  # stage 1's CLIP either way


def _tiny(dataset: str) -> c.CombinerConfig:
    """The paper config of ``dataset`` on a random micro CLIP, two steps per stage."""
    small = c.StageConfig(batch_size=2, max_steps=2)
    return dataclasses.replace(c.config_for(dataset, "paper"), backbone="idc-micro", pretrained=None,
                               preprocess="squash", proj_dim=16, hidden_dim=32, finetune=small, combiner=small)


def test_real_dataset_paths_run_on_fixture_trees_and_missing_images_are_listed(tmp_path):
    from test_data_fiq_cirr_circo import make_cirr, make_fiq

    fiq = make_fiq(tmp_path / "fiq")
    results = c.train(_tiny("fashioniq"), tmp_path / "fiq-run", root=fiq, progress=False, device="cpu")
    best = results["combiner"].best
    assert {"dress/R@10", "average/avg"} <= set(best)  # validated with FashionIQ's protocol, per category
    cirr = make_cirr(tmp_path / "cirr")
    results = c.train(_tiny("cirr"), tmp_path / "cirr-run", root=cirr, progress=False, device="cpu")
    assert "all/R_subset@1" in results["finetune"].best
    # Missing images: listed by ASIN / name, never dropped.
    (fiq / "images" / "D4.png").unlink()
    with pytest.raises(FileNotFoundError, match="D4"):
        c.train(_tiny("fashioniq"), tmp_path / "x", root=fiq, progress=False, device="cpu")
    for png in (cirr / "train").rglob("*.png"):
        png.unlink()
    with pytest.raises(FileNotFoundError, match="train-"):
        c.train(_tiny("cirr"), tmp_path / "y", root=cirr, progress=False, device="cpu")


def test_journal_variant_fine_tunes_both_encoders(tmp_path):
    cfg = c.config_for("shapes", "smoke", encoder="both")
    clip, result = c.finetune(cfg, tmp_path, progress=False, device="cpu")
    fresh = c.load_backbone(cfg)
    assert result.history[-1]["step"] == 3
    assert not torch.equal(clip.visual.conv1.weight, fresh.visual.conv1.weight)  # images encoded every step, trained
    assert not torch.equal(clip.token_embedding.weight, fresh.token_embedding.weight)
    assert torch.equal(clip.logit_scale, fresh.logit_scale)  # unused by the loss: never trained
