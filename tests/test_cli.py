"""The `idclab` command, run as a user would (a subprocess, JSON on stdout)."""

import json
import subprocess
import sys

import pytest

GOLDEN_GTS = {
    "0": ["The small red cube has moved to the left.", "the red cube changed its location", "A small red cube was moved."],
    "1": ["There is no difference.", "the two scenes seem identical", "Nothing has changed."],
    "2": ["The large blue sphere became green.", "the big blue ball changed color to green"],
    "3": ["Someone added a tiny yellow cylinder.", "A yellow cylinder appeared behind the gray cube."],
}
GOLDEN_RES = {
    "0": "The small red cube moved to the left.",
    "1": ["There is no change."],
    "2": "The big blue sphere changed to green.",
    "3": "A yellow cylinder has been added.",
}


def idclab(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "idclab.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"idclab {' '.join(map(str, args))} failed:\n{proc.stderr[-3000:]}")
    return proc


def test_score_captions_equals_pycocoevalcap(tmp_path):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    (tmp_path / "gts.json").write_text(json.dumps(GOLDEN_GTS))
    (tmp_path / "res.json").write_text(json.dumps(GOLDEN_RES))
    ours = json.loads(idclab("score-captions", tmp_path / "gts.json", tmp_path / "res.json").stdout)

    # pycocoevalcap's own pipeline, written out here independently of idclab.
    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in GOLDEN_GTS.items()})
    res = tok.tokenize({k: [{"caption": v if isinstance(v, str) else v[0]}] for k, v in GOLDEN_RES.items()})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    meteor = Meteor()
    expected = {"BLEU-1": bleu[0], "BLEU-2": bleu[1], "BLEU-3": bleu[2], "BLEU-4": bleu[3],
                "METEOR": meteor.compute_score(gts, res)[0], "ROUGE-L": Rouge().compute_score(gts, res)[0],
                "CIDEr": Cider().compute_score(gts, res)[0]}
    del meteor
    assert set(ours) == set(expected)
    for key, value in expected.items():
        assert ours[key] == pytest.approx(value, abs=1e-9), key
    assert ours["CIDEr"] == pytest.approx(2.545429305075, abs=1e-9)  # golden value, computed once with pycocoevalcap


def test_score_captions_bad_input_names_the_fix(tmp_path):
    (tmp_path / "gts.json").write_text(json.dumps(GOLDEN_GTS))
    (tmp_path / "res.json").write_text(json.dumps({"0": "a cube", "9": "a ball"}))
    proc = idclab("score-captions", tmp_path / "gts.json", tmp_path / "res.json", check=False)
    assert proc.returncode != 0
    assert "error:" in proc.stderr and "9" in proc.stderr and "Traceback" not in proc.stderr


def test_shapes_export_writes_the_clevr_change_layout(tmp_path):
    idclab("shapes", "export", "--task", "idc", "--split", "val", "--n", "5", "--out", tmp_path)
    splits = json.loads((tmp_path / "splits.json").read_text())
    assert len(splits["val"]) == 5
    assert len(list((tmp_path / "images").glob("CLEVR_default_*.png"))) == 5
    assert len(list((tmp_path / "sc_images").glob("CLEVR_semantic_*.png"))) == 5
    idclab("shapes", "export", "--task", "cir", "--split", "val", "--n", "4", "--out", tmp_path / "cir")
    caps = json.loads((tmp_path / "cir" / "cirr" / "captions" / "cap.rc2.val.json").read_text())
    assert len(caps) == 4 and {"reference", "target_hard", "caption", "img_set"} <= set(caps[0])


def test_train_then_eval_clip_smoke(tmp_path):
    out = json.loads(idclab("train", "clip", "--profile", "smoke", "--out", tmp_path / "run",
                            "--export", tmp_path / "asset.pt").stdout)
    assert out["stages"]["pretrain"]["steps"] == 6 and (tmp_path / "run" / "pretrain" / "best.pt").exists()
    for key in ("t2i_R@1", "t2i_R@5", "t2i_R@10", "i2t_R@1", "i2t_R@5", "i2t_R@10"):
        assert 0.0 <= out["test"][key] <= 100.0
    ev = json.loads(idclab("eval", "clip", "--model", tmp_path / "run").stdout)
    assert ev["gallery_size"] == 64 and set(out["test"]) <= set(ev) | {"split"}


def test_eval_clip_refuses_a_non_checkpoint(tmp_path):
    proc = idclab("eval", "clip", "--model", tmp_path / "nope.pt", check=False)
    assert proc.returncode != 0 and "No checkpoint or run folder at" in proc.stderr
    assert "Traceback" not in proc.stderr
