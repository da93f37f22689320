"""Pic2Word (idclab.models.pic2word): the mapping network as in the paper, the loss against its formula, frozen
CLIP, per-row placeholders, training into a run folder, checkpoints, the CLI, and bad input."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from idclab import backbones, cir, cli, runs
from idclab.models import pic2word as p


class ReleaseArgs:
    """A plain Python object, as a released training checkpoint may pickle next to its weights (e.g. its args)."""

    def __init__(self, epochs: int):
        self.epochs = epochs


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("p2w")
    results = p.train(p.config_for(profile="smoke"), out, progress=False, device="cpu")
    return out, results["mapping"]


def test_config_for_datasets_profiles_and_options():
    assert p.config_for(profile="smoke").dataset == "shapes" and p.config_for(profile="toy").dataset == "shapes"
    assert p.config_for(profile="paper").dataset == "cc3m"
    assert p.config_for("folder", "paper").dataset == "folder"
    cfg = p.config_for(profile="smoke", precompute=False, steps=2, batch_size=4, eval_every=0)
    assert (cfg.precompute, cfg.max_steps, cfg.batch_size, cfg.eval_every) == (False, 2, 4, 0)  # 0: at the end only
    assert p.config_for(profile="smoke", precompute=None).precompute is True  # None: the preset's choice
    with pytest.raises(ValueError, match="paper"):
        p.config_for("cc3m", "smoke")
    with pytest.raises(ValueError, match="smoke, toy and lite"):
        p.config_for("shapes", "paper")
    with pytest.raises(ValueError, match="Unknown dataset"):
        p.config_for("imagenet", "paper")
    with pytest.raises(ValueError, match="Unknown option"):
        p.config_for(profile="smoke", finetune_steps=2)  # one stage: no per-stage steps
    with pytest.raises(ValueError, match="integer >= 1"):
        p.config_for(profile="smoke", steps=0)


def test_mapping_network_matches_the_paper(tmp_path):
    net = p.MappingNetwork(768, 768, middle_dim=512, n_layers=2, dropout=0.1)
    assert sum(x.numel() for x in net.parameters()) == 1_050_368  # the reference mapping network at ViT-L/14 sizes
    block = net.layers[0]
    assert [type(m).__name__ for m in block] == ["Linear", "Dropout", "ReLU"]  # dropout before the activation
    assert block[1].p == 0.1 and net.fc_out.out_features == 768
    assert set(net.state_dict()) == {"layers.0.0.weight", "layers.0.0.bias", "layers.1.0.weight", "layers.1.0.bias",
                                     "fc_out.weight", "fc_out.bias"}  # the reference's key names
    # A reference checkpoint (DDP "module." prefix under state_dict_img2text) of tensors and plain values loads
    # without trust (weights_only=True reads it).
    model = p.Pic2Word(p.config_for(profile="smoke"))
    ref = {f"module.{k}": torch.randn_like(v) for k, v in model.mapping.state_dict().items()}
    torch.save({"state_dict_img2text": ref, "epoch": 30}, tmp_path / "ref.pt")
    p.load_reference_mapping(model, tmp_path / "ref.pt")
    torch.testing.assert_close(model.mapping.fc_out.weight, ref["module.fc_out.weight"])
    torch.save({"weights": ref}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="state_dict_img2text"):
        p.load_reference_mapping(model, tmp_path / "other.pt")


def test_reference_mapping_with_pickled_objects_needs_trust(tmp_path):
    model = p.Pic2Word(p.config_for(profile="smoke"))
    before = {k: v.clone() for k, v in model.mapping.state_dict().items()}
    ref = {f"module.{k}": torch.randn_like(v) for k, v in before.items()}
    torch.save({"state_dict_img2text": ref, "args": ReleaseArgs(epochs=30)}, tmp_path / "release.pt")
    with pytest.raises(runs.UnsafeCheckpointError, match="trust=True"):
        p.load_reference_mapping(model, tmp_path / "release.pt")
    for k, v in model.mapping.state_dict().items():  # refused: nothing was loaded
        assert torch.equal(v, before[k]), k
    assert p.load_reference_mapping(model, tmp_path / "release.pt", trust=True) is model
    for k, v in model.mapping.state_dict().items():
        torch.testing.assert_close(v, ref[f"module.{k}"])


def test_loss_matches_the_formula_and_only_the_mapping_learns():
    torch.manual_seed(0)
    model = p.Pic2Word(p.config_for(profile="smoke"))
    model.eval()  # no dropout: the formula below is deterministic
    v = torch.randn(4, 32)
    loss, _ = p.pic2word_loss(model, {"features": v})
    tokens = backbones.tokenize(["a photo of *"] * 4, context_length=32)
    pt = backbones.encode_text_with_pseudo_tokens(model.clip, tokens, model.mapping(v))
    logits = 100.0 * F.normalize(v, dim=-1) @ F.normalize(pt, dim=-1).T  # fixed scale 100, as in the reference
    expected = (F.cross_entropy(logits, torch.arange(4)) + F.cross_entropy(logits.T, torch.arange(4))) / 2
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    loss.backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in model.mapping.parameters())
    assert all(x.grad is None and not x.requires_grad for x in model.clip.parameters())
    model.train()
    assert model.mapping.training and not model.clip.training  # CLIP stays in eval mode, as in the reference


def test_queries_replace_the_placeholder_in_every_row():
    # Rows of one batch put "*" at different positions (the reference looks in row 0 only, P2W-3).
    model = p.Pic2Word(p.config_for(profile="smoke")).eval()
    r = p.Pic2WordRetriever(model, device="cpu")
    queries = [cir.CIRQuery("0", "a", "domain", {"domain": "cartoon"}),
               cir.CIRQuery("1", "b", "cirr", {"caption": "is red"}),
               cir.CIRQuery("2", "c", "fashioniq", {"cap1": "is red", "cap2": "is long"})]
    v = torch.randn(3, 32)
    batch = r.encode_query(v, queries)
    texts = ["a cartoon of *", "a photo of * , is red", "a photo of * , is long and is red"]
    for i, text in enumerate(texts):
        tokens = backbones.tokenize([text], context_length=32)
        with torch.no_grad():
            one = F.normalize(backbones.encode_text_with_pseudo_tokens(model.clip, tokens, model.mapping(v[i:i + 1])),
                              dim=-1)
        torch.testing.assert_close(batch[i:i + 1], one, rtol=1e-5, atol=1e-5)


def test_training_keeps_clip_and_saves_only_the_mapping(smoke_run):
    out, result = smoke_run
    assert result.best is not None and 0 <= result.best["inversion_R@1"] <= 100
    # The run folder: run.json selects mapping/best.pt (relative path); best / last hold weights only.
    run = json.loads((out / "run.json").read_text())
    assert run["method"] == "pic2word" and list(run["stages"]) == ["mapping"]
    assert run["stages"]["mapping"]["selected"] == "mapping/best.pt" and run["config"]["dataset"] == "shapes"
    assert runs.resolve_checkpoint(out, method="pic2word") == out / "mapping" / "best.pt" == result.selected
    model_keys = {f"mapping.{k}" for k in p.Pic2Word(p.config_for(profile="smoke")).mapping.state_dict()}
    for name in ("best.pt", "last.pt"):
        state = runs.read(out / "mapping" / name)
        assert set(state["model"]) == model_keys and "optimizer" not in state, name
        h = state["header"]
        assert (h["method"], h["stage"], h["format"]) == ("pic2word", "mapping", runs.FORMAT)
        assert h["config"]["dataset"] == "shapes" and h["architecture"]
    assert runs.read(out / "mapping" / "best.pt")["selection"] == result.best
    resume = runs.read(out / "mapping" / "resume.pt")
    assert set(resume["model"]) == model_keys
    # Only the mapping network was optimised: CLIP's parameters never reached the optimiser.
    n_params = sum(len(g["params"]) for g in resume["optimizer"]["param_groups"])
    assert n_params == len(model_keys)
    # Loading rebuilds the seeded random CLIP identically and the saved mapping network.
    loaded = p.load(out, device="cpu")
    fresh = p.load_backbone(p.config_for(profile="smoke"))
    for (name, a), b in zip(loaded.clip.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name
    assert loaded.checkpoint_info["path"] == str(out / "mapping" / "best.pt")
    best = runs.read(out / "mapping" / "best.pt")["model"]
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, best[k]), k
    # The final weights (last.pt, also a file path) give the same queries as a model holding the trainer's last state.
    last = p.load(out / "mapping" / "last.pt", device="cpu")
    by_hand = p.Pic2Word(p.config_for(profile="smoke"))
    by_hand.load_state_dict(resume["model"])
    v = torch.randn(2, 32)
    q = [cir.CIRQuery("0", "a", "cirr", {"caption": "x"})] * 2
    torch.testing.assert_close(p.Pic2WordRetriever(last).encode_query(v, q),
                               p.Pic2WordRetriever(by_hand.eval(), device="cpu").encode_query(v, q))
    torch.testing.assert_close(p.load_retriever(out, device="cpu").encode_query(v, q),
                               p.Pic2WordRetriever(loaded).encode_query(v, q))


def test_a_second_run_into_the_same_folder_needs_resume_or_overwrite(tmp_path):
    cfg = p.config_for(profile="smoke", steps=2)
    first = p.train(cfg, tmp_path, progress=False, device="cpu")["mapping"]
    with pytest.raises(FileExistsError, match="--resume"):
        p.train(cfg, tmp_path, progress=False, device="cpu")
    # Resuming a finished run trains no further and keeps its choice.
    again = p.train(cfg, tmp_path, resume=True, progress=False, device="cpu")["mapping"]
    assert again.history[-1]["step"] == first.history[-1]["step"] == 2 and again.best == first.best
    assert again.selected == tmp_path / "mapping" / "best.pt"
    with pytest.raises(ValueError, match="not both"):
        p.train(cfg, tmp_path, resume=True, overwrite=True, progress=False, device="cpu")
    res = p.train(p.config_for(profile="smoke", steps=1), tmp_path, overwrite=True, progress=False, device="cpu")
    assert res["mapping"].history[-1]["step"] == 1
    assert json.loads((tmp_path / "run.json").read_text())["config"]["max_steps"] == 1


def test_training_with_crops_instead_of_precomputed_features(tmp_path):
    cfg = p.config_for(profile="smoke", precompute=False, steps=2)
    assert not cfg.precompute
    result = p.train(cfg, tmp_path, progress=False, device="cpu")["mapping"]
    assert result.history[-1]["step"] == 2 and np.isfinite(result.history[-1]["loss"])


def test_bad_input_is_refused(tmp_path, smoke_run):
    with pytest.raises(ValueError, match="placeholder"):
        p.Pic2WordConfig(train_prompt="a photo of it")
    with pytest.raises(ValueError, match="dataset"):
        p.Pic2WordConfig(dataset="coco")
    model = p.load(smoke_run[0])
    with pytest.raises(ValueError, match="no placeholder"):
        p.Pic2WordRetriever(model, prompts={**p.PROMPTS, "cirr": "a photo of *, {caption}"}, device="cpu")
    with pytest.raises(FileNotFoundError, match="idclab train pic2word"):
        p.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="idclab train pic2word"):
        p.load(tmp_path / "missing")
    # A file without an idclab header; then an idclab checkpoint of another method.
    torch.save({"version": 1, "model": {}, "extra": {"model": "Combiner"}}, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="not an idclab checkpoint"):
        p.load(tmp_path / "old.pt")
    runs.save(tmp_path / "other.pt", dict(header=runs.make_header("combiner", "finetune", {}, {}), model={}))
    with pytest.raises(ValueError, match="not pic2word"):
        p.load(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="needs --root"):
        p.training_images(p.config_for("folder", "paper"))
    with pytest.raises(ValueError, match="drop --init"):
        p.train(p.config_for(profile="smoke"), tmp_path / "x", init=smoke_run[0], progress=False, device="cpu")
    with pytest.raises(ValueError, match="stages"):
        p.train(p.config_for(profile="smoke"), tmp_path / "y", stages=("finetune",), progress=False, device="cpu")


def test_folder_training_data_holds_out_images(tmp_path):
    rng = np.random.default_rng(0)
    for k in range(30):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / f"{k:02d}.png")
    cfg = dataclasses.replace(p.config_for("folder", "paper"), val_images=5)
    train, val = p.training_images(cfg, root=tmp_path)
    assert (len(train), len(val)) == (27, 3)  # at most a tenth held out


def test_cli_train_eval_retrieve_and_submission(tmp_path, capsys, smoke_run):
    run = smoke_run[0]
    cli.main(["eval", "cir", "--method", "pic2word", "--benchmark", "shapes", "--checkpoint", str(run), "--n", "9"])
    report = json.loads(capsys.readouterr().out)
    assert list(report["methods"]) == ["image", "text", "sum", "pic2word"]
    for m in report["methods"].values():
        for task, metrics in m["metrics"].items():
            assert {"R@1", "R@5", "R@10"} <= set(metrics), task
    assert report["methods"]["pic2word"]["prompts"]["domain"] == "a {domain} of *"
    # retrieve from a folder, with a grid
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    rng = np.random.default_rng(1)
    for k in range(4):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(gallery / f"{k}.png")
    cli.main(["retrieve", "--method", "pic2word", "--checkpoint", str(run), "--image", str(gallery / "0.png"),
              "--text", "make it red", "--gallery", str(gallery), "--k", "3", "--grid", str(tmp_path / "grid.png")])
    out = json.loads(capsys.readouterr().out)
    assert len(out["top"]) == 3 and (tmp_path / "grid.png").stat().st_size > 0
    # a CIRR-layout test split (Shapes export) -> both submission files, validated
    from idclab.data import shapes

    shapes.export_cir(tmp_path / "cirr", split="test", n=5, size=32)
    cli.main(["eval", "cir", "--method", "sum", "--benchmark", "shapes", "--root", str(tmp_path / "cirr"), "--split",
              "test1", "--checkpoint", str(run), "--submission", str(tmp_path / "sub")])
    sub = json.loads(capsys.readouterr().out)
    recall = json.loads((tmp_path / "sub" / "recall_submission_sum.json").read_text())
    assert sub["queries"] == 5 and recall["metric"] == "recall" and len(recall) == 5 + 2
    with pytest.raises(SystemExit, match="needs --checkpoint"):
        cli.main(["eval", "cir", "--method", "pic2word", "--benchmark", "shapes"])


def test_cli_train_pic2word(tmp_path, capsys):
    run = tmp_path / "run"
    cli.main(["train", "pic2word", "--profile", "smoke", "--out", str(run), "--steps", "2"])
    out = json.loads(capsys.readouterr().out)
    assert (out["method"], out["profile"], out["dataset"]) == ("pic2word", "smoke", "shapes")
    assert out["stages"]["mapping"]["steps"] == 2 and (run / "mapping" / "best.pt").is_file()
    assert (run / "run.json").is_file() and out["stages"]["mapping"]["selected_on_val"] is not None
    with pytest.raises(SystemExit, match="already holds a run"):
        cli.main(["train", "pic2word", "--profile", "smoke", "--out", str(run), "--steps", "2"])
    cli.main(["train", "pic2word", "--profile", "smoke", "--out", str(run), "--steps", "2", "--resume"])
    assert json.loads(capsys.readouterr().out)["stages"]["mapping"]["steps"] == 2
