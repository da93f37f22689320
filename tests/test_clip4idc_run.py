"""Running CLIP4IDC end to end (smoke profile): `idclab train / eval clip4idc`, `idclab caption`, the Python API,
checkpoint resolution and the bad-input errors."""

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from idclab import cli, runs
from idclab.data.shapes import CHANGE_TYPES, ShapesPairs
from idclab.models import clip4idc as c
from idclab.train import Trainer

load_checkpoint = runs.read

SMOKE = c.config_for("shapes", "smoke")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One smoke run of both stages through the command line."""
    out = tmp_path_factory.mktemp("clip4idc") / "run"
    cli.main(["train", "clip4idc", "--profile", "smoke", "--out", str(out)])
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    item = ShapesPairs("test", 1, size=48)[0]
    paths = {}
    for key in ("before", "after"):
        paths[key] = folder / f"{key}.png"
        Image.fromarray(item[key]).save(paths[key])
    return paths


def test_train_writes_both_stages_and_captioning_starts_from_adaptation(run, capsys):
    adapt, cap = load_checkpoint(run / "adapt" / "best.pt"), load_checkpoint(run / "caption" / "best.pt")
    assert adapt["header"]["stage"] == "adapt" and cap["header"]["stage"] == "caption"
    assert adapt["header"]["method"] == cap["header"]["method"] == "clip4idc"
    record = runs.read_run(run)
    assert record["stages"]["caption"]["init"] == "adapt/best.pt"  # relative to the run folder
    assert record["stages"]["adapt"]["selected"] == "adapt/best.pt"
    assert cap["header"]["config"] == SMOKE.to_dict()
    assert adapt["selection"]["step"] == SMOKE.adapt.max_steps  # validated (on val) at the end
    assert "t_ip_R@1" in adapt["selection"] and "CIDEr" in cap["selection"]
    # Chosen on val: the trainer only ever saw the val split (cfg.shapes_pairs[1] pairs).
    assert runs.resolve_checkpoint(run) == run / "caption" / "best.pt"
    assert runs.resolve_checkpoint(run, "adapt") == run / "adapt" / "best.pt"


def test_eval_prints_caption_metrics_per_change_type_and_retrieval(run, capsys):
    capsys.readouterr()
    cli.main(["eval", "clip4idc", "--checkpoint", str(run)])
    report = json.loads(capsys.readouterr().out)
    assert report["dataset"] == "shapes" and report["profile"] == "smoke" and report["split"] == "test"
    assert set(report["retrieval"]) == {f"{d}_R@{k}" for d in ("t_ip", "ip_t") for k in (1, 5, 10)}
    groups = report["captions"]
    n_test = SMOKE.shapes_pairs[2]
    expected = {"overall", "distractor"} | {ShapesPairs("test", n_test).pair(i).change_type for i in range(n_test)}
    assert set(groups) == expected and expected - {"overall", "distractor"} <= set(CHANGE_TYPES)
    for scores in groups.values():
        assert {"BLEU-4", "METEOR", "ROUGE-L", "CIDEr"} <= set(scores)
        assert all(np.isfinite(v) and v >= 0 for v in scores.values())
    # The same numbers from the Python API, on the model the CLI loaded.
    model = c.load(run)
    pairs = c.load_pairs(model.cfg, "test", image_size=32)
    assert c.evaluate_captions(model, pairs)["overall"] == pytest.approx(groups["overall"])


def test_caption_command_equals_the_python_function(run, images, capsys):
    capsys.readouterr()
    cli.main(["caption", str(images["before"]), str(images["after"]), "--checkpoint", str(run)])
    printed = capsys.readouterr().out.strip()
    model = c.load(run)
    assert printed == c.caption(images["before"], images["after"], model)
    assert printed == c.caption(Image.open(images["before"]), np.asarray(Image.open(images["after"])), run)
    beam = c.caption(images["before"], images["after"], model, beam=3)
    assert isinstance(beam, str)


def test_caption_converts_modes_and_warns_on_different_sizes(run, images):
    model = c.load(run)
    rgb = np.asarray(Image.open(images["before"]))
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)  # opaque: same picture
    assert c.caption(rgba, images["after"], model) == c.caption(rgb, images["after"], model)
    gray = np.asarray(Image.open(images["before"]).convert("L"))
    assert c.caption(gray, images["after"], model) == c.caption(np.repeat(gray[..., None], 3, 2), images["after"], model)
    with pytest.warns(UserWarning, match="squashed"):
        c.caption(rgb[:, :40], images["after"], model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c.caption(rgb, images["after"], model)  # same size: no warning


def test_stage1_checkpoint_cannot_caption(run, images):
    with pytest.raises(ValueError, match="caption/best.pt"):
        c.caption(images["before"], images["after"], run / "adapt" / "best.pt")


def test_ablation_stages_caption_alone_and_frozen_clip(tmp_path):
    import dataclasses

    frozen = c.config_for("shapes", "smoke", freeze_clip=True, caption_steps=2)
    assert frozen == dataclasses.replace(SMOKE, caption=dataclasses.replace(SMOKE.caption, freeze_clip=True,
                                                                            max_steps=2))
    result = c.train(frozen, tmp_path / "frozen", stages=("caption",), progress=False, device="cpu")["caption"]
    model = c.load(tmp_path / "frozen", device="cpu")
    torch.manual_seed(frozen.caption.seed)  # the stage's seeded initialisation (idc-micro has random weights)
    fresh = c.CLIP4IDC(frozen, stage="caption")
    clip_now, clip_then = model.clip.state_dict(), fresh.clip.state_dict()
    assert all(torch.equal(clip_now[k], clip_then[k]) for k in clip_now)  # CLIP untouched
    assert runs.read_run(tmp_path / "frozen")["stages"]["caption"]["init"] is None
    assert model.stage == "caption" and load_checkpoint(result.selected)["header"]["stage"] == "caption"
    assert not any(p.requires_grad for p in model.clip.parameters())


def test_bad_inputs_have_clear_errors(tmp_path, run):
    with pytest.raises(FileNotFoundError, match="idclab train clip4idc"):
        c.load(tmp_path)  # an empty folder
    with pytest.raises(ValueError, match="data_scripts/clevr_change.py download"):
        c.load_pairs(c.config_for("clevr", "paper"), "train")  # no --root
    with pytest.raises(FileNotFoundError, match="data_scripts/spot_the_diff.py download"):
        c.load_pairs(c.config_for("spot", "paper"), "train", root=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="generated"):
        c.load_pairs(SMOKE, "train", root=tmp_path)
    with pytest.raises(ValueError, match="stages"):
        c.train(SMOKE, tmp_path, stages=("finetune",))
    # A checkpoint of another model: refused by name.
    other = torch.nn.Linear(2, 2)
    Trainer(other, lambda m, b: m(b).sum(), torch.zeros(4, 2), config=c.TrainConfig(max_steps=1, batch_size=2, lr=0.1,
            progress=False), out_dir=tmp_path / "other",
            header=runs.make_header("combiner", "combiner", {}, {})).fit()
    with pytest.raises(ValueError, match="combiner checkpoint .*not clip4idc"):
        c.load(tmp_path / "other" / "last.pt")
    # A stage-1 checkpoint of another backbone cannot start captioning.
    tiny = c.config_for("shapes", "smoke")
    other_backbone = c.dataclasses.replace(tiny, encoder=c.dataclasses.replace(tiny.encoder, backbone="idc-tiny"),
                                           decoder=c.dataclasses.replace(tiny.decoder, width=128))
    with pytest.raises(ValueError, match="differs"):
        c.train(other_backbone, tmp_path / "b", stages=("caption",), init=run, progress=False)
    with pytest.raises(ValueError, match="--stage caption"):
        c.train(SMOKE, tmp_path / "c", init=run)  # init with the adaptation stage in the same call
    with pytest.raises(ValueError, match="beam"):
        c.evaluate(run, beam=0)
    with pytest.raises(ValueError, match="--n must be >= 1"):
        c.evaluate(run, limit=0)


def test_evaluation_never_swallows_errors(run):
    model = c.load(run)

    class Mislabelled(ShapesPairs):
        def references(self, *, with_no_change=True):
            gts, groups = super().references(with_no_change=with_no_change)
            return {f"x{k}": v for k, v in gts.items()}, {f"x{k}": v for k, v in groups.items()}

    with pytest.raises(ValueError, match="without references"):
        c.evaluate_captions(model, Mislabelled("test", 4, size=32))
