"""Seeds, spreads and verdicts (idclab.stats) and `idclab ablate clip4idc`."""

import json
import math
import subprocess
import sys

import pytest

from idclab import stats
from idclab.models import clip4idc


def test_summary_is_the_mean_and_sample_sd():
    s = stats.summary([1.0, 2.0, 4.0])
    assert s["values"] == [1.0, 2.0, 4.0] and s["n"] == 3
    assert s["mean"] == pytest.approx(7 / 3)
    assert s["sd"] == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))
    assert stats.summary([5.0])["sd"] == 0.0
    with pytest.raises(ValueError, match="at least one value"):
        stats.summary([])


def test_verdict_compares_the_difference_with_its_standard_error():
    # means 10 and 8, sd 1 each, 3 seeds: se = sqrt(1/3 + 1/3) = 0.816, diff 2 = 2.45 se > 2 se -> yes
    assert stats.verdict([9, 10, 11], [7, 8, 9]) == "yes"
    assert stats.verdict([7, 8, 9], [9, 10, 11]) == "no"
    # diff 1 = 1.22 se: within the margin
    assert stats.verdict([9, 10, 11], [8, 9, 10]) == "not resolved at 3 seeds"
    assert stats.verdict([9, 10, 11], [8, 9, 10], z=1.0) == "yes"
    assert stats.verdict([1.0], [0.0]).startswith("not resolved at 1 seed")
    assert stats.verdict([2, 2], [1, 1]) == "yes"  # no spread at all: the sign decides


def test_ablate_command_prints_rows_seeds_and_verdicts(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "idclab.cli", "ablate", "clip4idc", "--profile", "smoke", "--seeds",
                           "2", "--steps", "1", "--n", "8", "--out", str(tmp_path / "abl")],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert set(report["rows"]) == set(clip4idc.ABLATION_ROWS) and report["seeds"] == 2
    for row in report["rows"].values():
        cider = row["overall"]["CIDEr"]
        assert len(cider["values"]) == 2 and set(cider) == {"values", "mean", "sd", "n"}
        assert {"color", "drop"} <= set(row)  # per change type
    assert set(report["verdicts"]) == set(clip4idc.ABLATION_CLAIMS)
    assert all(v in ("yes", "no") or v.startswith("not resolved") for v in report["verdicts"].values())
    # The frozen row really kept CLIP frozen; the adaptation row trained both stages.
    record = json.loads((tmp_path / "abl" / "adaptation" / "seed1" / "run.json").read_text())
    assert list(record["stages"]) == ["adapt", "caption"] and record["config"]["adapt"]["seed"] == 1
    frozen = json.loads((tmp_path / "abl" / "no_adaptation_CLIP_frozen" / "seed0" / "run.json").read_text())
    assert list(frozen["stages"]) == ["caption"] and frozen["config"]["caption"]["freeze_clip"] is True
    with pytest.raises(ValueError, match="--seeds must be an integer >= 1"):
        clip4idc.ablate(tmp_path / "x", profile="smoke", seeds=0)
