"""A run killed with SIGTERM (what Colab, Slurm and Kubernetes send before they kill a process) saves resume.pt and
exits; ``--resume`` then ends with exactly the weights of an uninterrupted run.

The smoke-profile test runs on every CI machine. The paper-profile one (CLIP4IDC's ViT-B/32 with random weights on
Shapes exported at 224 px in CLEVR-Change's layout, batch 2, 4 steps, periodic checkpoints off) is marked slow: on
the 2 shared CPU cores of the development machine one step took 20-30 s.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from idclab import runs
from idclab.train import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", IDCLAB_PROFILE="smoke", CUDA_VISIBLE_DEVICES="")


def _idclab(*args: str) -> list[str]:
    return [sys.executable, "-m", "idclab.cli", *args]


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}"
    return proc


def _terminate_after_step(cmd: list[str], step: int, total: int, timeout: float = 1800) -> str:
    """Start ``cmd``, send SIGTERM once its progress bar shows ``step``/``total``, return its stderr."""
    proc = subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: proc.stderr.read1(4096), b"")), daemon=True)
    reader.start()
    deadline = time.time() + timeout
    try:
        while f"{step}/{total}".encode() not in b"".join(chunks):
            assert proc.poll() is None, f"the run ended before step {step}:\n{b''.join(chunks).decode()[-3000:]}"
            assert time.time() < deadline, "the run did not reach the step in time"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)
    err = b"".join(chunks).decode(errors="replace")
    assert proc.returncode != 0, f"the terminated run must not report success:\n{err[-3000:]}"
    return err


def _check_terminate_then_resume(train_args: list[str], tmp_path: Path, *, steps: int, kill_at: int) -> None:
    full, cut = tmp_path / "full", tmp_path / "cut"
    _run(_idclab("train", "clip4idc", *train_args, "--out", str(full)))
    err = _terminate_after_step(_idclab("train", "clip4idc", *train_args, "--out", str(cut)), kill_at, steps)
    assert "Terminated (SIGTERM) at step" in err and "--resume" in err, err[-3000:]
    saved = runs.read(cut / "adapt" / "resume.pt")
    assert kill_at <= saved["position"]["step"] < steps, "resume.pt holds the position at the signal"
    assert not (cut / "adapt" / "last.pt").exists(), "the terminated run did not finish"
    _run(_idclab("train", "clip4idc", *train_args, "--out", str(cut), "--resume"))
    a, b = runs.read(full / "adapt" / "last.pt")["model"], runs.read(cut / "adapt" / "last.pt")["model"]
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"terminated + resumed differs from uninterrupted in {differ[:5]}"


def test_sigterm_then_resume_matches_uninterrupted_smoke(tmp_path):
    steps = 30
    args = ["--profile", "smoke", "--stage", "adapt", "--steps", str(steps), "--batch-size", "2", "--eval-every", "0",
            "--ckpt-every", "1000", "--device", "cpu"]
    _check_terminate_then_resume(args, tmp_path, steps=steps, kill_at=2)


@pytest.mark.slow
def test_sigterm_then_resume_matches_uninterrupted_paper_dry_run(tmp_path):
    data = tmp_path / "data"
    for split in ("train", "val"):
        _run(_idclab("shapes", "export", "--task", "idc", "--size", "224", "--split", split, "--n", "8",
                     "--out", str(data)))
    args = ["--profile", "paper", "--dataset", "clevr", "--root", str(data), "--pretrained", "none", "--stage", "adapt",
            "--batch-size", "2", "--steps", "4", "--ckpt-every", "100", "--device", "cpu"]
    _check_terminate_then_resume(args, tmp_path, steps=4, kill_at=1)


def test_sigterm_handler_only_during_fit(tmp_path):
    """fit() turns SIGTERM into an interrupt that saves resume.pt, and puts the previous handler back after."""
    calls = []
    previous = signal.signal(signal.SIGTERM, lambda *a: calls.append(a))
    try:
        model = torch.nn.Linear(2, 1)
        data = torch.randn(16, 2)

        def loss_fn(m, batch):
            if trainer.step == 2:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1)  # the handler raises while we wait
            return m(batch).pow(2).mean()

        cfg = TrainConfig(max_steps=5, batch_size=2, lr=0.1, progress=False)
        trainer = Trainer(model, loss_fn, data, config=cfg, out_dir=tmp_path)
        with pytest.raises(KeyboardInterrupt):
            trainer.fit()
        assert runs.read(tmp_path / "resume.pt")["position"]["step"] == 2
        assert signal.getsignal(signal.SIGTERM) is not None and not calls
        os.kill(os.getpid(), signal.SIGTERM)  # after fit: the previous handler again
        time.sleep(0.1)
        assert len(calls) == 1
    finally:
        signal.signal(signal.SIGTERM, previous)
