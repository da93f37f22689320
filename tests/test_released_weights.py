"""The authors' released CLIP4Cir checkpoints: files in the format the reference's training scripts save
(``{"epoch": int, "CLIP": state_dict}`` and ``{"epoch": int, "Combiner": state_dict}``), built here at tiny sizes with
the reference's key names, load into idclab and evaluate through ``idclab eval cir``."""

from __future__ import annotations

import argparse
import json

import open_clip
import pytest
import torch
import torch.nn.functional as F

from idclab import backbones, cir, cli, runs
from idclab.models import combiner

D, P, H = 32, 12, 16  # tiny (d, p, h); the release is (640, 2560, 5120). d = idc-micro's embedding width

# The reference Combiner's parameters (src/combiner.py of ABaldrati/CLIP4Cir) and their shapes.
REFERENCE_COMBINER = {
    "text_projection_layer.weight": (P, D), "text_projection_layer.bias": (P,),
    "image_projection_layer.weight": (P, D), "image_projection_layer.bias": (P,),
    "combiner_layer.weight": (H, 2 * P), "combiner_layer.bias": (H,),
    "output_layer.weight": (D, H), "output_layer.bias": (D,),
    "dynamic_scalar.0.weight": (H, 2 * P), "dynamic_scalar.0.bias": (H,),
    "dynamic_scalar.3.weight": (1, H), "dynamic_scalar.3.bias": (1,),
}
# A few of OpenAI's CLIP parameter names, as a released ResNet CLIP dict holds them.
OPENAI_RESNET_NAMES = ["visual.conv1.weight", "visual.bn1.running_mean", "visual.layer1.0.conv1.weight",
                       "visual.attnpool.positional_embedding", "visual.attnpool.c_proj.weight",
                       "transformer.resblocks.0.attn.in_proj_weight", "transformer.resblocks.0.mlp.c_fc.weight",
                       "token_embedding.weight", "positional_embedding", "ln_final.weight", "text_projection",
                       "logit_scale"]


def reference_combiner_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: 0.3 * torch.randn(shape, generator=g) for k, shape in REFERENCE_COMBINER.items()}


def reference_query(sd: dict, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """The reference's combine_features in eval mode (dropout off), written from its formula (book/pitfalls.md, CMB-1)."""
    def lin(x, name):
        return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]

    c = torch.cat([F.relu(lin(text, "text_projection_layer")), F.relu(lin(image, "image_projection_layer"))], -1)
    mixture = lin(F.relu(lin(c, "combiner_layer")), "output_layer")
    lam = torch.sigmoid(lin(F.relu(lin(c, "dynamic_scalar.0")), "dynamic_scalar.3"))
    return F.normalize(mixture + lam * text + (1 - lam) * image, dim=-1)


def released_clip_state(clip: torch.nn.Module, seed: int = 1) -> dict:
    """A released-style CLIP dict: the architecture's (OpenAI) names with other weights, fp16 as the reference's
    CUDA CLIP, and the settings entries OpenAI's dicts carry."""
    g = torch.Generator().manual_seed(seed)
    state = {k: (v + 0.01 * torch.randn(v.shape, generator=g)).half() if v.is_floating_point() else v.clone()
             for k, v in clip.state_dict().items()}
    state.update(input_resolution=torch.tensor(32), context_length=torch.tensor(32), vocab_size=torch.tensor(49408))
    return state


def tiny_resnet_clip() -> torch.nn.Module:
    torch.manual_seed(0)
    return open_clip.CLIP(embed_dim=D, vision_cfg=dict(image_size=32, layers=(1, 1, 1, 1), width=8, head_width=8),
                          text_cfg=dict(context_length=16, vocab_size=49408, width=16, heads=2, layers=1),
                          quick_gelu=True)


def test_released_combiner_computes_the_reference_query(tmp_path):
    sd = reference_combiner_state()
    path = tmp_path / "combiner.pt"
    torch.save({"epoch": 7, "Combiner": {f"module.{k}": v for k, v in sd.items()}}, path)  # a DDP prefix too
    model = combiner.combiner_from_released(combiner.read_released(path, "Combiner"))
    assert (model.text_proj[0].in_features, model.text_proj[0].out_features, model.mixture[0].out_features) == (D, P, H)
    g = torch.Generator().manual_seed(3)
    image, text = 2 * torch.randn(5, D, generator=g), torch.randn(5, D, generator=g)  # raw, unnormalised features
    torch.testing.assert_close(model(image, text), reference_query(sd, image, text))


def test_released_combiner_refuses_pickled_objects_unless_trusted(tmp_path):
    path = tmp_path / "combiner.pt"
    torch.save({"epoch": 1, "Combiner": reference_combiner_state(), "args": argparse.Namespace(lr=2e-5)}, path)
    with pytest.raises(runs.UnsafeCheckpointError, match="trust=True"):
        combiner.read_released(path, "Combiner")
    assert combiner.released_kind(path) is None
    assert combiner.released_kind(path, trust=True) == "Combiner"
    assert set(combiner.read_released(path, "Combiner", trust=True)) == set(REFERENCE_COMBINER)


def test_released_files_with_other_contents_are_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"epoch": 1, "model": {}}, path)
    with pytest.raises(ValueError, match="no 'Combiner' state dict"):
        combiner.read_released(path, "Combiner")
    with pytest.raises(FileNotFoundError, match="download"):
        combiner.read_released(tmp_path / "missing.pt", "CLIP")
    bad = {**reference_combiner_state(), "extra_layer.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match="extra_layer"):
        combiner.combiner_from_released(bad)


def test_released_resnet_clip_loads_into_open_clip(tmp_path):
    reference = tiny_resnet_clip()
    state = released_clip_state(reference)
    assert all(k in state for k in OPENAI_RESNET_NAMES), "the tiny model must carry OpenAI's parameter names"
    path = tmp_path / "clip.pt"
    torch.save({"epoch": 3, "CLIP": state}, path)
    clip = combiner.clip_from_released(combiner.read_released(path, "CLIP"), tiny_resnet_clip())
    for k, v in clip.state_dict().items():
        assert v.dtype == reference.state_dict()[k].dtype, k  # fp16 released weights become fp32
        torch.testing.assert_close(v, state[k].to(v.dtype), msg=k)
    with pytest.raises(ValueError, match="RN50x4-quickgelu"):
        combiner.clip_from_released(state, "idc-micro")  # a ViT cannot hold a ResNet's weights


def test_eval_cir_evaluates_released_files(tmp_path, capsys):
    clip_path, comb_path = tmp_path / "clip.pt", tmp_path / "combiner.pt"
    torch.save({"epoch": 3, "CLIP": released_clip_state(backbones.load_clip("idc-micro"))}, clip_path)
    torch.save({"epoch": 9, "Combiner": reference_combiner_state()}, comb_path)
    argv = ["eval", "cir", "--method", "combiner", "--checkpoint", str(comb_path), "--clip-checkpoint", str(clip_path),
            "--backbone", "idc-micro", "--benchmark", "shapes", "--n", "12"]
    cli.main(argv)
    report = json.loads(capsys.readouterr().out)
    assert set(report["methods"]) == {"image", "text", "sum", "combiner"}

    retriever = combiner.load_released(comb_path, clip_file=clip_path, backbone="idc-micro", device="cpu")
    bench = cir.load_benchmark("shapes", n=12)
    expected = cir.evaluate(retriever, bench, progress=False)["metrics"]
    assert report["methods"]["combiner"]["metrics"] == json.loads(json.dumps(expected))

    with pytest.raises(SystemExit, match="--clip-checkpoint"):
        cli.main(["eval", "cir", "--method", "combiner", "--checkpoint", str(clip_path), "--backbone", "idc-micro",
                  "--benchmark", "shapes", "--n", "12"])  # the CLIP file where the Combiner belongs
    pickled = tmp_path / "pickled.pt"
    torch.save({"epoch": 9, "Combiner": reference_combiner_state(), "args": argparse.Namespace(a=1)}, pickled)
    base = ["eval", "cir", "--method", "combiner", "--checkpoint", str(pickled), "--clip-checkpoint", str(clip_path),
            "--backbone", "idc-micro", "--benchmark", "shapes", "--n", "12"]
    with pytest.raises(SystemExit, match="--trust-checkpoint"):
        cli.main(base)
    capsys.readouterr()
    cli.main(base + ["--trust-checkpoint"])
    assert json.loads(capsys.readouterr().out)["methods"]["combiner"]["metrics"] == report["methods"]["combiner"]["metrics"]
