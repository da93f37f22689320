"""One lifecycle for every method (idclab.runs), tested the same way for all four, parametrised the timm way:
config round trips for every (method, dataset, profile); the common options; smoke train -> move -> evaluate through
the command line; checkpoint headers; every trainable parameter receives a gradient; the paper architectures built
with --pretrained none run a training step on 224 px generated data (slow tier)."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image

from idclab import backbones, runs, shapes_clip
from idclab.data import shapes
from idclab.models import clip4idc, combiner, pic2word

MODULES = {"clip": shapes_clip, "clip4idc": clip4idc, "pic2word": pic2word, "combiner": combiner}
CONFIGS = [  # every (method, dataset, profile) that config_for offers
    ("clip", "shapes", "smoke"), ("clip", "shapes", "toy"),
    *[("clip4idc", "shapes", p) for p in ("smoke", "toy", "lite", "paper")],
    *[("clip4idc", d, "paper") for d in ("clevr", "spot", "ier")],
    *[("pic2word", "shapes", p) for p in ("smoke", "toy", "lite")],
    *[("pic2word", d, "paper") for d in ("cc3m", "folder")],
    *[("combiner", "shapes", p) for p in ("smoke", "toy", "lite")],
    *[("combiner", d, "paper") for d in ("fashioniq", "cirr")],
]
OPTIONS = dict(batch_size=3, steps=2, seed=5, eval_every=1, ckpt_every=1, precision="fp32", num_workers=0)


def idclab(*args, check=True, cwd=None):
    proc = subprocess.run([sys.executable, "-m", "idclab.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600, cwd=cwd)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("method,dataset,profile", CONFIGS, ids=["-".join(c) for c in CONFIGS])
def test_config_round_trips_through_json(method, dataset, profile):
    cfg = MODULES[method].config_for(dataset, profile)
    assert (cfg.dataset, cfg.profile) == (dataset, profile)
    again = type(cfg).from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and type(again) is type(cfg)


@pytest.mark.parametrize("method", MODULES)
def test_common_options_reach_every_stage(method):
    module = MODULES[method]
    cfg = module.config_for("shapes", "smoke", **OPTIONS)
    parts = [getattr(cfg, s) for s in module.STAGES] if len(module.STAGES) > 1 else [cfg]
    for part in parts:
        assert (part.batch_size, part.max_steps, part.eval_every) == (3, 2, 1)
        assert part.ckpt_every == 1
    assert cfg.precision == "fp32" and cfg.num_workers == 0
    assert all(getattr(p, "seed", 5) == 5 for p in [cfg, *parts])
    if len(module.STAGES) > 1:  # one stage's steps alone
        first, second = module.STAGES
        one = module.config_for("shapes", "smoke", **{f"{first}_steps": 7})
        assert getattr(one, first).max_steps == 7
        assert getattr(one, second).max_steps == getattr(module.config_for("shapes", "smoke"), second).max_steps


@pytest.mark.parametrize("method", MODULES)
def test_zero_and_unknown_options_are_refused_not_replaced(method):
    module = MODULES[method]
    with pytest.raises(ValueError, match="--steps must be an integer >= 1"):
        module.config_for("shapes", "smoke", steps=0)
    with pytest.raises(ValueError, match="--batch-size must be an integer >= 1"):
        module.config_for("shapes", "smoke", batch_size=0)
    with pytest.raises(ValueError, match="--eval-every must be an integer >= 0"):
        module.config_for("shapes", "smoke", eval_every=-1)
    with pytest.raises(ValueError, match="Unknown option 'nonsense'"):
        module.config_for("shapes", "smoke", nonsense=1)


def test_pretrained_none_means_random_weights():
    cfg = clip4idc.config_for("clevr", "paper", pretrained="none")
    assert cfg.encoder.pretrained is None and cfg.encoder.backbone == "ViT-B-32-quickgelu"
    assert combiner.config_for("cirr", "paper", pretrained="none").pretrained is None
    assert pic2word.config_for("folder", "paper", pretrained="none").pretrained is None
    toy = clip4idc.config_for("shapes", "toy", pretrained="none")  # shapes-clip's architecture, untrained
    assert toy.encoder.backbone == "shapes-clip-arch" and toy.encoder.pretrained is None


# ----------------------------------------------------------------------------------------------------------------------
# Train -> move -> evaluate, through the command line
# ----------------------------------------------------------------------------------------------------------------------

EVAL = {
    "clip": lambda run: ["eval", "clip", "--model", run, "--n", 16],
    "clip4idc": lambda run: ["eval", "clip4idc", "--checkpoint", run, "--n", 4],
    "pic2word": lambda run: ["eval", "cir", "--method", "pic2word", "--checkpoint", run, "--n", 12],
    "combiner": lambda run: ["eval", "cir", "--method", "combiner", "--checkpoint", run, "--n", 12],
}


@pytest.mark.parametrize("method", MODULES)
def test_smoke_run_moved_elsewhere_still_evaluates(method, tmp_path):
    module = MODULES[method]
    report = json.loads(idclab("train", method, "--profile", "smoke", "--out", tmp_path / "A").stdout)
    assert list(report["stages"]) == list(module.STAGES)
    record = runs.read_run(tmp_path / "A")
    assert record["method"] == method and record["last_stage"] == module.STAGES[-1]
    for stage in module.STAGES:
        state = runs.read(tmp_path / "A" / stage / "best.pt")
        header = state["header"]
        assert (header["method"], header["stage"], header["format"]) == (method, stage, runs.FORMAT)
        assert json.loads(json.dumps(header["config"])) == record["config"] and header["architecture"]["name"]
        assert "optimizer" not in state and "optimizer" in runs.read(tmp_path / "A" / stage / "resume.pt")
        assert record["stages"][stage]["selected"] == f"{stage}/best.pt"  # relative to the run folder
    shutil.move(tmp_path / "A", tmp_path / "elsewhere" / "B")
    # Evaluated from another working directory, by a relative path, in the moved place.
    out = json.loads(idclab(*EVAL[method]("B"), cwd=tmp_path / "elsewhere").stdout)
    assert out
    model = module.load(tmp_path / "elsewhere" / "B", device="cpu")
    assert model.checkpoint_info["path"].startswith(str(tmp_path / "elsewhere" / "B"))


@pytest.mark.parametrize("method", MODULES)
def test_training_over_a_run_needs_resume_or_overwrite(method, tmp_path):
    module = MODULES[method]
    cfg = module.config_for("shapes", "smoke", steps=1)
    with pytest.raises(FileNotFoundError, match="Nothing to resume"):
        module.train(cfg, tmp_path / "run", resume=True, progress=False, device="cpu")
    module.train(cfg, tmp_path / "run", progress=False, device="cpu")
    with pytest.raises(FileExistsError, match="--resume to continue it, --overwrite to replace it"):
        module.train(cfg, tmp_path / "run", progress=False, device="cpu")
    again = module.train(cfg, tmp_path / "run", overwrite=True, progress=False, device="cpu")
    assert set(again) == set(module.STAGES)
    proc = idclab("train", method, "--profile", "smoke", "--out", tmp_path / "run", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and "--overwrite" in proc.stderr


def test_help_lists_the_common_flags():
    for method in MODULES:
        text = idclab("train", method, "--help").stdout
        for flag in ("--profile", "--dataset", "--out", "--root", "--stage", "--resume", "--overwrite",
                     "--pretrained", "--batch-size", "--steps", "--precision", "--device", "--num-workers", "--seed",
                     "--eval-every", "--ckpt-every"):
            assert flag in text, (method, flag)


# ----------------------------------------------------------------------------------------------------------------------
# Every trainable parameter receives a gradient
# ----------------------------------------------------------------------------------------------------------------------


def _model_loss_batch(method: str, stage: str):
    """(model, loss_fn, batch) of one stage in the smoke profile, built through the method's public pieces."""
    torch.manual_seed(0)
    if method == "clip":
        cfg = shapes_clip.config_for("shapes", "smoke")
        model = backbones.load_clip(cfg.arch).train()
        data = shapes_clip.PretrainScenes("train", 8, seed=0, size=backbones.image_size(model), hard_negatives=True)
        dims = backbones.clip_dims(model)
        batch = shapes_clip.CaptionCollate(dims.image_size, dims.context_length)([data[i] for i in range(4)])
        return model, shapes_clip.clip_loss, batch
    if method == "clip4idc":
        cfg = clip4idc.config_for("shapes", "smoke")
        model = clip4idc.CLIP4IDC(cfg, stage=stage).train()
        samples = clip4idc.PairSamples.for_stage(clip4idc.load_pairs(cfg, "train", image_size=32), getattr(cfg, stage))
        return model, clip4idc.CLIP4IDC.loss, model.collate()([samples[i] for i in range(4)])
    if method == "pic2word":
        cfg = pic2word.config_for("shapes", "smoke")
        model = pic2word.Pic2Word(cfg).train()
        images, _ = pic2word.training_images(cfg, image_size=32)
        pixels = backbones.to_pixels([images[i] for i in range(4)], 32)
        return model, pic2word.pic2word_loss, {"pixels": pixels}
    cfg = combiner.config_for("shapes", "smoke", encoder="both")
    clip = combiner.load_backbone(cfg)
    source = combiner.load_triplets(cfg, "train")
    if stage == "finetune":
        model = combiner.FineTuner(clip, cfg.encoder)
        items = [combiner.PixelTriplets(source)[i] for i in range(4)]
        return model, combiner.finetune_loss, combiner.Collate(clip, cfg.preprocess)(items)
    dim = backbones.clip_dims(clip).embed_dim
    model = combiner.Combiner(dim, cfg.proj_dim, cfg.hidden_dim, dropout=cfg.dropout).train()
    return model, combiner.combiner_loss, {k: torch.randn(4, dim) for k in ("ref", "text", "tgt")}


STAGE_CASES = [(m, s) for m, module in MODULES.items() for s in module.STAGES]


@pytest.mark.parametrize("method,stage", STAGE_CASES, ids=["-".join(c) for c in STAGE_CASES])
def test_every_trainable_parameter_receives_a_gradient(method, stage):
    model, loss_fn, batch = _model_loss_batch(method, stage)
    out = loss_fn(model, batch)
    loss = out[0] if isinstance(out, tuple) else out
    assert torch.isfinite(loss)
    loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    missing = [n for n, p in trainable if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"{method}/{stage}: trainable parameters without a gradient: {missing[:10]}"


# ----------------------------------------------------------------------------------------------------------------------
# The paper architectures, random weights, one step on 224 px generated data
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def paper_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper_data")
    for split in ("train", "val", "test"):
        shapes.export_idc(root / "clevr", split=split, n=4, seed=0, size=224)
        shapes.export_cir(root / "cirr", split=split, n=4, seed=0, size=224)
    (root / "folder").mkdir()
    for i, img in enumerate(shapes.ShapesCaptions("train", 12, seed=0, size=224, styles=("photo",))):
        Image.fromarray(img[0]).save(root / "folder" / f"{i}.png")
    return root


PAPER_RUNS = {
    "clip4idc": ["--dataset", "clevr", "--root", "clevr"],
    "combiner": ["--dataset", "cirr", "--root", "cirr"],
    "pic2word": ["--dataset", "folder", "--root", "folder"],
}


@pytest.mark.slow
@pytest.mark.parametrize("method", PAPER_RUNS)
def test_paper_architecture_with_random_weights_runs_a_step_at_224px(method, paper_data):
    report = json.loads(idclab("train", method, "--profile", "paper", *PAPER_RUNS[method], "--pretrained", "none",
                               "--batch-size", "2", "--steps", "1", "--out", "run", cwd=paper_data).stdout)
    header = runs.read_header(paper_data / "run")
    assert header["architecture"]["name"] == {"clip4idc": "ViT-B-32-quickgelu", "combiner": "RN50x4-quickgelu",
                                              "pic2word": "ViT-L-14-quickgelu"}[method]
    assert all(s["steps"] == 1 for s in report["stages"].values())
    shutil.rmtree(paper_data / "run")


@pytest.mark.slow
def test_lite_profile_is_the_paper_architecture_on_shapes_at_its_resolution(tmp_path):
    # CLIP4IDC only: Pic2Word's and the Combiner's lite presets encode thousands of images up front (minutes on a GPU,
    # too long for a CPU test); their presets are checked by the round trip above.
    report = json.loads(idclab("train", "clip4idc", "--profile", "lite", "--pretrained", "none", "--batch-size", "2",
                               "--steps", "1", "--eval-every", "0", "--out", tmp_path / "run").stdout)
    header = runs.read_header(tmp_path / "run")
    assert header["config"]["profile"] == "lite" and header["architecture"]["image_size"] == 224
    assert header["architecture"]["name"] == "ViT-B-32-quickgelu"
    assert all(s["steps"] == 1 for s in report["stages"].values())
