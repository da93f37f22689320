"""Every trainer under ``torchrun --nproc_per_node 2`` (gloo on the CPU) through the ``idclab train`` command.

What each run must show: it finishes; the run folder is written once (run.json, the stage checkpoints) and loads
with the method's ``load``; the two processes read different micro-batches (the data is sharded by rank); and both
processes end every stage holding the same weights, equal to the ``last.pt`` that rank 0 wrote.

How the per-rank weights are seen from outside, without test code in the library: the test puts a
``sitecustomize.py`` on the workers' PYTHONPATH. Python imports it at start-up in every process; it wraps
``Trainer.fit`` and the sampler so that each rank dumps, after each stage, its own model weights and the indices it
trained on into ``$IDCLAB_TEST_DUMP``. The command itself is the real one: ``python -m torch.distributed.run ...
-m idclab.cli train <method> ...``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from idclab import runs, shapes_clip
from idclab.models import clip4idc, combiner, pic2word

ROOT = Path(__file__).resolve().parents[1]
MODULES = {"clip": shapes_clip, "clip4idc": clip4idc, "pic2word": pic2word, "combiner": combiner}

SITECUSTOMIZE = textwrap.dedent('''
    import os
    if os.environ.get("IDCLAB_TEST_DUMP"):
        import torch
        from idclab import train as _train

        _dump = os.environ["IDCLAB_TEST_DUMP"]
        _seen = []
        _iter = _train.ResumableSampler.__iter__

        def _record(self):
            _seen.extend(self.indices)
            return _iter(self)

        _fit = _train.Trainer.fit

        def _fit_and_dump(self, *args, **kwargs):
            _seen.clear()
            result = _fit(self, *args, **kwargs)
            state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
            name = f"{self.header['stage']}-rank{self.rank}-of{self.world}.pt"
            torch.save(dict(model=state, indices=list(_seen)), os.path.join(_dump, name))
            return result

        _train.ResumableSampler.__iter__ = _record
        _train.Trainer.fit = _fit_and_dump
''')


def _torchrun(method: str, tmp_path: Path, *extra: str, nproc: int = 2) -> tuple[Path, Path]:
    hook, dump, out = tmp_path / "hook", tmp_path / "dump", tmp_path / "run"
    hook.mkdir()
    dump.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               IDCLAB_PROFILE="smoke", IDCLAB_TEST_DUMP=str(dump),
               PYTHONPATH=os.pathsep.join([str(hook), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.pop("LOCAL_RANK", None)
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "idclab.cli", "train", method, "--profile", "smoke", "--out", str(out), "--steps", "2",
           "--batch-size", "2", "--device", "cpu", *extra]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return out, dump


@pytest.mark.parametrize("method", ["clip", "clip4idc", "pic2word", "combiner"])
def test_torchrun_two_processes_end_with_identical_weights(method, tmp_path):
    module = MODULES[method]
    out, dump = _torchrun(method, tmp_path)

    run = runs.read_run(out)
    assert run is not None and run["method"] == method
    assert list(run["stages"]) == list(module.STAGES), "run.json must record every stage once, in training order"
    assert not list(out.rglob("*.tmp")), "no stray temporary files: one process writes the run"
    assert not (out / runs.LOCK_FILE).exists(), "the run lock is released"

    for stage in module.STAGES:
        files = {r: dump / f"{stage}-rank{r}-of2.pt" for r in (0, 1)}
        assert all(f.is_file() for f in files.values()), f"{method}/{stage}: a rank did not finish the stage"
        ranks = {r: torch.load(f, weights_only=True) for r, f in files.items()}
        w0, w1 = ranks[0]["model"], ranks[1]["model"]
        assert w0.keys() == w1.keys()
        differ = [k for k in w0 if not torch.equal(w0[k], w1[k])]
        assert not differ, f"{method}/{stage}: ranks disagree on {differ[:5]}"
        last = runs.read(out / stage / "last.pt")
        assert last["header"]["stage"] == stage and last["step"] == 2
        assert all(torch.equal(last["model"][k], w0[k]) for k in w0), "last.pt holds rank 0's final weights"
        i0, i1 = ranks[0]["indices"], ranks[1]["indices"]
        assert i0 and i1 and not set(i0) & set(i1), f"{method}/{stage}: the ranks must read disjoint shards"
        assert runs.read(out / stage / "resume.pt")["world_size"] == 2

    model = module.load(out, device="cpu")
    assert model is not None
