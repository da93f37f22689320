"""The Combiner (idclab.models.combiner): the network as in the reference, both stages, the stage-1 sum query,
cached features, FashionIQ caption variants, run folders (moved, resumed), checkpoints, the CLI, and bad input."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from idclab import backbones, cir, cli, runs
from idclab.models import combiner as c


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("combiner")
    results = c.train(c.config_for("shapes", "smoke"), out, progress=False, device="cpu")
    return out, results


QUERIES = [cir.CIRQuery("0", "a", "cirr", {"caption": "make it red"}),
           cir.CIRQuery("1", "b", "cirr", {"caption": "two blue cubes"})]


def _query_feats(retriever) -> torch.Tensor:
    image = torch.randn(len(QUERIES), 32, generator=torch.Generator().manual_seed(3))
    return retriever.encode_query(image, QUERIES)


def test_config_for_profiles_and_stage_options():
    cfg = c.config_for("shapes", "smoke", finetune_steps=1, combiner_steps=2, encoder="both")
    assert (cfg.finetune.max_steps, cfg.combiner.max_steps) == (1, 2) and cfg.encoder == "both"
    assert c.config_for("shapes", "smoke", finetune_steps=None) == c.config_for("shapes", "smoke")  # None: not given
    assert isinstance(c.config_for("cirr", "paper").finetune, c.CombinerStage)
    assert c.config_for("fashioniq", "paper", encoder="both").encoder == "both"
    assert c.CombinerConfig().sum_inputs == "raw"  # the reference's stage-1 query
    with pytest.raises(ValueError, match="Unknown option"):
        c.config_for("shapes", "smoke", mapping_steps=2)
    with pytest.raises(ValueError, match="integer >= 1"):
        c.config_for("shapes", "smoke", combiner_steps=0)
    with pytest.raises(ValueError, match="runs on Shapes"):
        c.config_for("cirr", "smoke")
    with pytest.raises(ValueError, match="sum_inputs"):
        c.CombinerConfig(sum_inputs="mean")
    # A config survives its dict form (as in run.json and checkpoint headers).
    cfg = c.config_for("shapes", "smoke", encoder="both")
    assert c.CombinerConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_common_options_apply_to_both_stages():
    cfg = c.config_for("shapes", "smoke", steps=5, batch_size=4, eval_every=2, seed=1, pretrained="none")
    assert cfg.finetune.max_steps == cfg.combiner.max_steps == 5
    assert cfg.finetune.batch_size == cfg.combiner.batch_size == 4 and cfg.combiner.eval_every == 2
    assert cfg.seed == 1 and cfg.pretrained is None


def test_combiner_network_matches_the_reference():
    net = c.Combiner(640, 2560, 5120)
    assert sum(p.numel() for p in net.parameters()) == 59_003_521  # the reference Combiner at RN50x4 sizes
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


def test_sum_query_is_the_reference_formula():
    # Fixed inputs, the text feature three times as long as the image feature.
    image = np.array([[2.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0], [0.6, 0.8, 0.0, 0.0]])
    text = np.array([[0.0, 6.0, 0.0, 0.0], [0.0, 0.0, 3.0, 3.0], [-2.4, 0.0, 0.0, 1.8]])
    assert np.allclose(np.linalg.norm(text, axis=1) / np.linalg.norm(image, axis=1), 3.0)

    def unit(x):
        return x / np.sqrt((x ** 2).sum(axis=1, keepdims=True))

    raw_ref = unit(image + text)  # the reference (CLIP4Cir element_wise_sum): normalize(i + t)
    norm_ref = unit(unit(image) + unit(text))  # normalize(normalize(i) + normalize(t))
    assert np.allclose(raw_ref[0], np.array([1.0, 3.0, 0.0, 0.0]) / np.sqrt(10.0))  # by hand
    assert np.allclose(norm_ref[0], np.array([1.0, 1.0, 0.0, 0.0]) / np.sqrt(2.0))
    i, t = torch.tensor(image, dtype=torch.float32), torch.tensor(text, dtype=torch.float32)
    raw = c.sum_query(i, t)
    torch.testing.assert_close(raw, torch.tensor(raw_ref, dtype=torch.float32))
    torch.testing.assert_close(c.sum_query(i, t, inputs="raw"), raw)
    normalized = c.sum_query(i, t, inputs="normalized")
    torch.testing.assert_close(normalized, torch.tensor(norm_ref, dtype=torch.float32))
    assert not torch.allclose(raw, normalized, atol=1e-2)  # with a 1:3 norm ratio the two forms disagree
    assert (raw @ F.normalize(t, dim=-1).T).diagonal().gt((normalized @ F.normalize(t, dim=-1).T).diagonal()).all()
    # Half-precision features (autocast) give the fp32 result.
    torch.testing.assert_close(c.sum_query(i.half(), t.half()), raw, rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="inputs"):
        c.sum_query(i, t, inputs="sum")


def test_stage_one_trains_only_the_chosen_encoder():
    clip = c.load_backbone(c.config_for("shapes", "smoke"))
    model = c.FineTuner(clip, "text")
    trainable = {n for n, p in clip.named_parameters() if p.requires_grad}
    assert trainable and not any(n.startswith("visual.") for n in trainable) and "logit_scale" not in trainable
    assert "token_embedding.weight" in trainable  # reference --encoder text = everything outside visual.*
    model.train()
    assert not clip.training  # CLIP stays in eval mode (book/pitfalls.md, CMB-9)
    both = c.FineTuner(c.load_backbone(c.config_for("shapes", "smoke")), "both")
    assert all(p.requires_grad for n, p in both.clip.named_parameters() if n != "logit_scale")
    image = c.FineTuner(c.load_backbone(c.config_for("shapes", "smoke")), "image")
    assert {n for n, p in image.clip.named_parameters() if p.requires_grad} == {
        n for n, _ in image.clip.named_parameters() if n.startswith("visual.")}
    # The loss is the one-direction classification loss of the sum query: by default the reference's
    # normalize(raw image + raw text) (it used to normalise each feature first; that is now sum_inputs="normalized").
    torch.manual_seed(0)
    ref, tgt = torch.randn(4, 32), torch.randn(4, 32)
    tokens = backbones.tokenize(["make it red"] * 4, context_length=32)
    batch = {"ref": ref, "tgt": tgt, "tokens": tokens}
    loss, _ = c.finetune_loss(model, batch)
    with torch.no_grad():
        text = clip.encode_text(tokens)
    q = F.normalize(ref + text, dim=-1)
    expected = F.cross_entropy(100 * q @ F.normalize(tgt, dim=-1).T, torch.arange(4))
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-4)
    loss_n, _ = c.finetune_loss(model, batch, inputs="normalized")
    q_n = F.normalize(F.normalize(ref, dim=-1) + F.normalize(text, dim=-1), dim=-1)
    expected_n = F.cross_entropy(100 * q_n @ F.normalize(tgt, dim=-1).T, torch.arange(4))
    torch.testing.assert_close(loss_n, expected_n, rtol=1e-4, atol=1e-4)
    # Gradients reach the text encoder only.
    loss.backward()
    assert clip.token_embedding.weight.grad is not None and clip.token_embedding.weight.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in clip.named_parameters() if n.startswith("visual."))


def test_stage_one_validation_uses_the_sum_query():
    clip = c.load_backbone(c.config_for("shapes", "smoke")).eval()
    raw = c.SumRetriever(clip, preprocess="squash", device="cpu")
    assert raw.method == "raw_sum" and raw.describe()["sum_inputs"] == "raw"
    image = torch.randn(len(QUERIES), 32, generator=torch.Generator().manual_seed(3))
    text = raw.raw_text(QUERIES)
    torch.testing.assert_close(raw.encode_query(image, QUERIES), F.normalize(image + text, dim=-1))
    norm = c.SumRetriever(clip, inputs="normalized", preprocess="squash", device="cpu")
    torch.testing.assert_close(norm.encode_query(image, QUERIES),
                               F.normalize(F.normalize(image, dim=-1) + F.normalize(text, dim=-1), dim=-1))


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
    for stage in ("finetune", "combiner"):
        for name in ("best.pt", "last.pt", "resume.pt"):
            assert (out / stage / name).is_file(), (stage, name)
    # run.json: per stage the selected checkpoint, relative to the run folder; the combiner names its stage-1 CLIP.
    run = json.loads((out / "run.json").read_text())
    assert run["method"] == "combiner" and set(run["stages"]) == {"finetune", "combiner"}
    assert run["stages"]["finetune"]["selected"] == "finetune/best.pt"
    assert run["stages"]["combiner"]["selected"] == "combiner/best.pt"
    assert run["stages"]["combiner"]["init"] == "finetune/best.pt"
    # Checkpoints: a header; best / last hold weights only, resume.pt the optimiser too.
    best = runs.read(out / "combiner" / "best.pt")
    h = best["header"]
    assert (h["method"], h["stage"], h["format"]) == ("combiner", "combiner", runs.FORMAT)
    assert h["config"] == c.config_for("shapes", "smoke").to_dict()
    assert h["architecture"]["dim"] == 32 and h["architecture"]["clip_checkpoint"] == "../finetune/best.pt"
    assert best["selection"] == results["combiner"].best and "optimizer" not in best
    assert "optimizer" not in runs.read(out / "finetune" / "last.pt")
    assert "optimizer" in runs.read(out / "finetune" / "resume.pt")
    assert runs.read(out / "finetune" / "best.pt")["header"]["stage"] == "finetune"
    # load(): each stage's model (the default stage: see test_load_defaults_to_the_last_stage_trained).
    model = c.load(out, stage="combiner")
    tuned = c.load(out, stage="finetune")
    assert isinstance(model, c.CombinerModel) and isinstance(tuned, c.FineTuner)
    assert model.cfg == c.config_for("shapes", "smoke")
    for (name, a), b in zip(model.clip.state_dict().items(), tuned.clip.state_dict().values()):
        assert torch.equal(a, b), name  # stage 2 runs on stage 1's selected CLIP
    comb = c.load_retriever(out)
    s = c.load_retriever(out, method="sum")
    raw = c.load_retriever(out, method="raw_sum")
    assert raw.method == "raw_sum" and raw.inputs == "raw"
    bench = cir.shapes_benchmark("test", 6, size=32)
    a = cir.evaluate(comb, bench, progress=False)
    b = cir.evaluate(s, bench, progress=False)
    assert a["method"] == "combiner" and b["method"] == "sum" and "R@1" in a["metrics"][cir.ALL]
    torch.testing.assert_close(_query_feats(comb), model.combiner(
        torch.randn(len(QUERIES), 32, generator=torch.Generator().manual_seed(3)), comb.raw_text(QUERIES)))
    # The Combiner's CLIP is the fine-tuned one, not the starting backbone.
    fresh = c.load_backbone(c.config_for("shapes", "smoke"))
    assert not torch.equal(comb.clip.token_embedding.weight, fresh.token_embedding.weight)
    torch.testing.assert_close(comb.clip.visual.conv1.weight, fresh.visual.conv1.weight)  # image tower untouched
    gap = c.similarity_gap(comb, bench)
    assert gap["target"].shape == (6,) and gap["others"].shape == (6 * (36 - 2),)
    lam = c.lambdas(comb, bench)
    assert sum(len(v) for v in lam.values()) == 6 and all(((v > 0) & (v < 1)).all() for v in lam.values())


def test_load_defaults_to_the_last_stage_trained(smoke_run):
    out = smoke_run[0]
    assert list(json.loads((out / "run.json").read_text())["stages"]) == ["finetune", "combiner"]  # training order
    assert runs.resolve_checkpoint(out, method="combiner") == out / "combiner" / "best.pt"
    assert isinstance(c.load(out), c.CombinerModel)


def test_a_moved_run_folder_still_loads(tmp_path, smoke_run):
    out = smoke_run[0]
    before = _query_feats(c.load_retriever(out, method="combiner", device="cpu"))
    shutil.copytree(out, tmp_path / "colab" / "run")
    assert torch.equal(_query_feats(c.load_retriever(tmp_path / "colab" / "run", device="cpu")), before)
    (tmp_path / "drive").mkdir()
    moved = shutil.move(tmp_path / "colab" / "run", tmp_path / "drive" / "renamed")
    shutil.rmtree(tmp_path / "colab")  # nothing may still point at the old place
    model = c.load(moved, stage="combiner", device="cpu")
    assert isinstance(model, c.CombinerModel) and model.checkpoint_info["path"].startswith(str(moved))
    comb = c.load_retriever(moved, method="combiner", device="cpu")
    torch.testing.assert_close(_query_feats(comb), before, rtol=0, atol=0)
    tuned = c.load(moved, stage="finetune", device="cpu")
    for (name, a), b in zip(comb.clip.state_dict().items(), tuned.clip.state_dict().values()):
        assert torch.equal(a, b), name
    # Nothing in the run names where it was trained: run.json and the stage-2 header hold relative paths.
    assert str(smoke_run[0]) not in (moved / "run.json").read_text()
    assert runs.read(moved / "combiner" / "best.pt")["header"]["architecture"]["clip_checkpoint"] == (
        "../finetune/best.pt")
    # Half a run (the combiner without its stage-1 CLIP) says what is missing.
    shutil.rmtree(moved / "finetune")
    with pytest.raises(FileNotFoundError, match="whole run folder"):
        c.load(moved / "combiner" / "best.pt")


def test_resuming_a_finished_run_keeps_the_stage_one_choice(tmp_path, smoke_run):
    out = tmp_path / "run"
    shutil.copytree(smoke_run[0], out)
    cfg = c.config_for("shapes", "smoke")
    with pytest.raises(FileExistsError, match="--resume"):
        c.train(cfg, out, progress=False, device="cpu")
    with pytest.raises(FileExistsError, match="--resume"):
        c.train(cfg, out, stages=("combiner",), progress=False, device="cpu")
    before = runs.read(out / "combiner" / "last.pt")["model"]
    results = c.train(c.config_for("shapes", "smoke"), out, resume=True, progress=False, device="cpu")
    assert set(results) == {"finetune", "combiner"}
    assert results["finetune"].selected == out / "finetune" / "best.pt"  # the selected checkpoint, not last.pt
    assert results["finetune"].history[-1]["step"] == results["combiner"].history[-1]["step"] == 3  # no more steps
    run = json.loads((out / "run.json").read_text())
    assert run["stages"]["combiner"]["init"] == run["stages"]["finetune"]["selected"] == "finetune/best.pt"
    header = runs.read(out / "combiner" / "last.pt")["header"]
    assert runs.resolve_relative(header["architecture"]["clip_checkpoint"], out / "combiner").resolve() == (
        out / "finetune" / "best.pt").resolve()
    for k, v in runs.read(out / "combiner" / "last.pt")["model"].items():
        assert torch.equal(v, before[k]), k
    assert torch.equal(_query_feats(c.load_retriever(out)), _query_feats(c.load_retriever(smoke_run[0])))
    model, tuned = c.load(out, stage="combiner"), c.load(out / "finetune" / "best.pt")
    assert torch.equal(model.clip.token_embedding.weight, tuned.clip.token_embedding.weight)


def test_stage_two_alone_on_the_frozen_clip_and_wrong_backbone(tmp_path, smoke_run):
    cfg = c.config_for("shapes", "smoke")
    res = c.train(cfg, tmp_path / "v1", stages=("combiner",), progress=False, device="cpu")
    assert set(res) == {"combiner"} and res["combiner"].best is not None
    model = c.load(tmp_path / "v1")
    fresh = c.load_backbone(cfg)
    assert torch.equal(model.clip.token_embedding.weight, fresh.token_embedding.weight)  # no stage 1: the backbone
    run = json.loads((tmp_path / "v1" / "run.json").read_text())
    assert list(run["stages"]) == ["combiner"] and run["stages"]["combiner"]["init"] is None
    assert runs.read(tmp_path / "v1" / "combiner" / "best.pt")["header"]["architecture"]["clip_checkpoint"] is None
    # Baselines on a Combiner-only run use its frozen CLIP.
    s = c.load_retriever(tmp_path / "v1", method="sum")
    assert torch.equal(s.clip.token_embedding.weight, fresh.token_embedding.weight)
    other = dataclasses.replace(cfg, backbone="idc-tiny")
    with pytest.raises(ValueError, match="same backbone"):
        c.train(other, tmp_path / "x", stages=("combiner",), init=smoke_run[0], progress=False)
    with pytest.raises(ValueError, match="not 'finetune'"):
        c.load(tmp_path / "v1" / "combiner" / "best.pt", stage="finetune")
    with pytest.raises(ValueError, match="not 'finetune'"):
        c.train(cfg, tmp_path / "z", stages=("combiner",), init=tmp_path / "v1" / "combiner" / "best.pt",
                progress=False)
    with pytest.raises(FileNotFoundError, match="no 'finetune' stage"):
        c.load(tmp_path / "v1", stage="finetune")
    with pytest.raises(FileNotFoundError, match="idclab train combiner"):
        c.load(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="idclab train combiner"):
        c.load(tmp_path / "empty")
    with pytest.raises(ValueError, match="needs --root"):
        c.load_triplets(c.config_for("fashioniq", "paper"), "train")
    with pytest.raises(ValueError, match="stages"):
        c.train(cfg, tmp_path / "w", stages=("mapping",), progress=False)


def test_stage_two_on_a_stage_one_run(tmp_path, smoke_run):
    cfg = c.config_for("shapes", "smoke")
    # init: a stage-1 run elsewhere (its selected checkpoint)
    res = c.train(cfg, tmp_path / "a", stages=("combiner",), init=smoke_run[0], progress=False, device="cpu")
    assert set(res) == {"combiner"}
    tuned = c.load(smoke_run[0], stage="finetune")
    model = c.load(tmp_path / "a", stage="combiner")
    for (name, x), y in zip(model.clip.state_dict().items(), tuned.clip.state_dict().values()):
        assert torch.equal(x, y), name
    # no init: the stage-1 run recorded in the same folder
    c.train(cfg, tmp_path / "b", stages=("finetune",), progress=False, device="cpu")
    assert list(json.loads((tmp_path / "b" / "run.json").read_text())["stages"]) == ["finetune"]
    assert isinstance(c.load(tmp_path / "b"), c.FineTuner)  # the last stage trained
    c.train(cfg, tmp_path / "b", stages=("combiner",), progress=False, device="cpu")
    run = json.loads((tmp_path / "b" / "run.json").read_text())
    assert run["stages"]["combiner"]["init"] == run["stages"]["finetune"]["selected"] == "finetune/best.pt"
    model = c.load(tmp_path / "b", stage="combiner")
    tuned = c.load(tmp_path / "b", stage="finetune")
    assert isinstance(model, c.CombinerModel)
    assert torch.equal(model.clip.token_embedding.weight, tuned.clip.token_embedding.weight)


def test_cli_train_and_eval_combiner(tmp_path, capsys):
    cli.main(["train", "combiner", "--profile", "smoke", "--out", str(tmp_path / "run")])
    out = json.loads(capsys.readouterr().out)
    assert set(out["stages"]) == {"finetune", "combiner"}
    assert out["method"] == "combiner" and out["stages"]["combiner"]["steps"] == 3
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
    # Per-stage steps, and one stage only.
    cli.main(["train", "combiner", "--profile", "smoke", "--out", str(tmp_path / "one"), "--stage", "finetune",
              "--finetune-steps", "2"])
    out = json.loads(capsys.readouterr().out)
    assert list(out["stages"]) == ["finetune"] and out["stages"]["finetune"]["steps"] == 2
    with pytest.raises(SystemExit, match="already holds a run"):
        cli.main(["train", "combiner", "--profile", "smoke", "--out", str(tmp_path / "one"), "--stage", "finetune"])


def _tiny(dataset: str) -> c.CombinerConfig:
    """The paper config of ``dataset`` on a random micro CLIP, two steps per stage."""
    small = dataclasses.replace(c.CombinerStage(), batch_size=2, max_steps=2)
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
    result = c.train(cfg, tmp_path, stages=("finetune",), progress=False, device="cpu")["finetune"]
    clip = c.load(tmp_path, stage="finetune").clip
    final = c.load(tmp_path / "finetune" / "last.pt").clip
    fresh = c.load_backbone(cfg)
    assert result.history[-1]["step"] == 3
    for tuned in (clip, final):
        assert not torch.equal(tuned.visual.conv1.weight, fresh.visual.conv1.weight)  # images encoded, trained
        assert not torch.equal(tuned.token_embedding.weight, fresh.token_embedding.weight)
        assert torch.equal(tuned.logit_scale, fresh.logit_scale)  # unused by the loss: never trained


# ----------------------------------------------------------------------------------------------------------------------
# Checkpoint selection on the CIRR protocol
# ----------------------------------------------------------------------------------------------------------------------

CIRR_VAL = {cir.ALL: {"R@1": 20.0, "R@5": 50.0, "R@10": 60.0, "R@50": 90.0,
                      "R_subset@1": 40.0, "R_subset@2": 70.0, "R_subset@3": 80.0}}


def test_cirr_selection_means_by_hand():
    # By hand: 410 / 7; 7 / (1/20 + 1/50 + 1/60 + 1/90 + 1/40 + 1/70 + 1/80); (20*50*60*90*40*70*80) ** (1/7).
    expected = dict(arithmetic=58.571428571, harmonic=46.802865482, geometric=53.222060289, r5_rs1=45.0)
    assert c.recall_means(CIRR_VAL) == pytest.approx(expected)
    for name, value in expected.items():
        assert c.selection_score(CIRR_VAL, "cirr", name) == pytest.approx(value)
    assert c.selection_score(CIRR_VAL, "cirr") == pytest.approx(expected["arithmetic"])  # the default
    assert c.CombinerConfig().cirr_selection == "arithmetic"
    # A zero recall makes the harmonic and geometric means 0 (not an error).
    zero = {cir.ALL: dict(CIRR_VAL[cir.ALL], **{"R@1": 0.0})}
    assert c.recall_means(zero)["harmonic"] == c.recall_means(zero)["geometric"] == 0.0
    assert c.recall_means(zero)["arithmetic"] == pytest.approx(390 / 7)
    # The criteria can disagree: B wins on the headline average, A on every mean.
    a = {cir.ALL: {"R@1": 30.0, "R@5": 50.0, "R@10": 70.0, "R@50": 95.0,
                   "R_subset@1": 40.0, "R_subset@2": 70.0, "R_subset@3": 85.0}}
    b = {cir.ALL: {"R@1": 10.0, "R@5": 60.0, "R@10": 62.0, "R@50": 80.0,
                   "R_subset@1": 50.0, "R_subset@2": 60.0, "R_subset@3": 70.0}}
    assert c.selection_score(b, "cirr", "r5_rs1") > c.selection_score(a, "cirr", "r5_rs1")
    for name in ("arithmetic", "harmonic", "geometric"):
        assert c.selection_score(a, "cirr", name) > c.selection_score(b, "cirr", name)
    fiq = {"average": {"R@10": 30.0, "R@50": 50.0, "avg": 40.0}}
    assert c.selection_score(fiq, "fashioniq", "harmonic") == 40.0  # FashionIQ: its own average


def test_cirr_selection_is_checked():
    with pytest.raises(ValueError, match="cirr_selection='median'; choose one of"):
        c.CombinerConfig(cirr_selection="median")
    with pytest.raises(ValueError, match="Unknown selection criterion 'median'"):
        c.selection_score(CIRR_VAL, "cirr", "median")


def test_the_validation_entry_records_the_selection_criterion(tmp_path, smoke_run):
    out, results = smoke_run  # the default criterion
    for stage in ("finetune", "combiner"):
        best = results[stage].best
        assert best["selected_by"] == "arithmetic" and best["select"] == best["select/arithmetic"]
        assert {"select/harmonic", "select/geometric", "select/r5_rs1"} <= set(best)
    run = json.loads((out / "run.json").read_text())
    assert run["stages"]["combiner"]["best"]["selected_by"] == "arithmetic"
    # Another criterion: the entries carry the same scores, and "select" is that criterion's.
    cfg = dataclasses.replace(c.config_for("shapes", "smoke"), cirr_selection="harmonic")
    other = c.train(cfg, tmp_path / "harmonic", stages=("combiner",), progress=False, device="cpu")["combiner"]
    for entry in other.val_history:
        assert entry["selected_by"] == "harmonic" and entry["select"] == entry["select/harmonic"]
        recalls = [v for k, v in entry.items() if k.startswith(("all/R@", "all/R_subset@"))]
        assert len(recalls) == 6 and entry["select/arithmetic"] == pytest.approx(sum(recalls) / 6)  # Shapes: 6
    assert runs.read(other.best_checkpoint)["selection"]["selected_by"] == "harmonic"
