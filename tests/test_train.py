"""idclab.train: learning happens, exact resume after an interrupt, best-on-val, config checks."""

import dataclasses

import pytest
import torch
from torch.utils.data import Dataset

from idclab import runs
from idclab.train import ResumableSampler, Trainer, TrainConfig, _amp_dtype

load_checkpoint = runs.read


class Regression(Dataset):
    """y = x @ w* + noise, item i a deterministic function of i."""

    def __init__(self, n=96):
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(n, 8, generator=g)
        self.y = self.x @ torch.randn(8, 1, generator=g) + 0.01 * torch.randn(n, 1, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def make_model():
    torch.manual_seed(7)
    # Dropout makes the run depend on the torch RNG, which resume must restore.
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Dropout(0.2), torch.nn.ReLU(), torch.nn.Linear(16, 1))


def mse(model, batch):
    x, y = batch
    loss = torch.nn.functional.mse_loss(model(x), y)
    return loss, {"abs_err": (model(x) - y).abs().mean().item()}


CFG = TrainConfig(max_steps=14, batch_size=8, grad_accum=2, lr=3e-2, weight_decay=0.01, warmup_steps=3,
                  max_grad_norm=1.0, log_every=1, progress=False)
# 96 items / 8 = 12 micro-batches = 6 steps per epoch, so 14 steps cross two epoch boundaries.


def test_loss_goes_down():
    data = Regression()
    result = Trainer(make_model(), mse, data, config=CFG).fit()
    first, last = result.history[0]["loss"], result.history[-1]["loss"]
    assert last < 0.5 * first
    assert [h["step"] for h in result.history] == list(range(1, 15))


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("where", ["after_step", "mid_accumulation"])
def test_resume_after_interrupt_equals_uninterrupted(tmp_path, where):
    data = Regression()
    full = Trainer(make_model(), mse, data, config=CFG, out_dir=tmp_path / "full").fit()
    full_state = load_checkpoint(full.last_checkpoint)["model"]

    # The same run, interrupted at step 8 (mid-epoch 2) with Ctrl-C ...
    calls = {"n": 0}

    def stop_after_8(step, logs):
        if step == 8:
            raise KeyboardInterrupt

    def loss_that_stops(model, batch):
        calls["n"] += 1
        if calls["n"] == 8 * 2 + 1:  # the first micro-batch after step 8: grads half accumulated
            raise KeyboardInterrupt
        return mse(model, batch)

    kwargs = dict(on_step=stop_after_8) if where == "after_step" else {}
    fn = mse if where == "after_step" else loss_that_stops
    with pytest.raises(KeyboardInterrupt):
        Trainer(make_model(), fn, data, config=CFG, out_dir=tmp_path / "cut", **kwargs).fit()
    saved = load_checkpoint(tmp_path / "cut" / "resume.pt")
    assert saved["position"]["step"] == 8
    assert not (tmp_path / "cut" / "last.pt").exists()  # the final weights do not exist yet

    # ... and resumed in a fresh trainer with a freshly initialised (different) model and other global RNG state.
    torch.manual_seed(999)
    other = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Dropout(0.2), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    resumed = Trainer(other, mse, data, config=CFG, out_dir=tmp_path / "cut").fit(resume="auto")
    resumed_state = load_checkpoint(resumed.last_checkpoint)["model"]
    for key in full_state:
        assert torch.equal(full_state[key], resumed_state[key]), key
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]


def test_best_checkpoint_is_chosen_on_validation(tmp_path):
    data = Regression()
    scores = iter([0.3, 0.9, 0.5, 0.1])

    def val_fn(model):
        return {"score": next(scores)}

    cfg = TrainConfig(max_steps=8, batch_size=8, lr=1e-2, eval_every=2, select_metric="score", progress=False)
    result = Trainer(make_model(), mse, data, config=cfg, out_dir=tmp_path, val_fn=val_fn).fit()
    assert [v["step"] for v in result.val_history] == [2, 4, 6, 8]
    assert result.best == {"step": 4, "score": 0.9}
    best = load_checkpoint(result.best_checkpoint)
    assert best["step"] == 4 and best["selection"] == {"step": 4, "score": 0.9}
    assert "optimizer" not in best  # weights only; the optimiser lives in resume.pt
    assert "optimizer" in load_checkpoint(tmp_path / "resume.pt")
    assert (tmp_path / "config.json").exists()

    # A fresh process that resumes the finished run still knows which checkpoint validation chose.
    again = Trainer(make_model(), mse, data, config=cfg, out_dir=tmp_path, val_fn=val_fn).fit(resume=True)
    assert again.best_checkpoint == tmp_path / "best.pt" and again.selected == tmp_path / "best.pt"


def test_resume_file_is_written_before_the_final_validation(tmp_path):
    def failing_val(model):
        raise RuntimeError("no Java")

    cfg = TrainConfig(max_steps=4, batch_size=8, lr=1e-2, select_metric="score", progress=False)
    with pytest.raises(RuntimeError, match="no Java"):
        Trainer(make_model(), mse, Regression(), config=cfg, out_dir=tmp_path, val_fn=failing_val).fit()
    assert load_checkpoint(tmp_path / "resume.pt")["position"]["step"] == 4  # the trained weights survived


def test_periodic_resume_file_by_time(tmp_path, monkeypatch):
    cfg = TrainConfig(max_steps=3, batch_size=8, lr=1e-2, ckpt_minutes=1.0, progress=False)
    trainer = Trainer(make_model(), mse, Regression(), config=cfg, out_dir=tmp_path)
    trainer._saved_at -= 120  # two minutes have passed since the last save
    steps = []
    trainer.on_step = lambda step, logs: steps.append(load_checkpoint(tmp_path / "resume.pt")["position"]["step"])
    trainer.fit()
    assert steps[0] == 1  # saved right after the first step


def test_validation_does_not_disturb_training_randomness():
    data = Regression()
    cfg = TrainConfig(max_steps=6, batch_size=8, lr=1e-2, eval_every=2, progress=False)
    a = Trainer(make_model(), mse, data, config=cfg).fit()
    b = Trainer(make_model(), mse, data, config=cfg, val_fn=lambda m: {"r": torch.rand(1).item()}).fit()
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]


def test_resume_refuses_other_settings(tmp_path):
    data = Regression()
    Trainer(make_model(), mse, data, config=TrainConfig(max_steps=2, batch_size=8, lr=1e-2, progress=False),
            out_dir=tmp_path).fit()
    other = TrainConfig(max_steps=4, batch_size=4, lr=1e-2, progress=False)
    with pytest.raises(ValueError, match=r"other settings for \['batch_size'\]"):
        Trainer(make_model(), mse, data, config=other, out_dir=tmp_path).fit(resume="auto")


def test_bad_configs_and_inputs():
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(max_steps=1, batch_size=1, lr=1e-3, schedule="step")
    with pytest.raises(ValueError, match="smaller than one global micro-batch"):
        Trainer(make_model(), mse, Regression(n=4), config=TrainConfig(max_steps=1, batch_size=8, lr=1e-3))
    with pytest.raises(ValueError, match="fp16 autocast needs a CUDA"):
        Trainer(make_model(), mse, Regression(), config=TrainConfig(max_steps=1, batch_size=8, lr=1e-3,
                                                                    precision="fp16"), device="cpu")

    def nan_loss(model, batch):
        return model(batch[0]).sum() * float("nan")

    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        Trainer(make_model(), nan_loss, Regression(), config=TrainConfig(max_steps=1, batch_size=8, lr=1e-3,
                                                                         progress=False)).fit()
    with pytest.raises(ValueError, match="not an idclab checkpoint"):
        path = "/tmp/idclab_not_a_ckpt.pt"
        torch.save({"a": 1}, path)
        load_checkpoint(path)


class Payload:
    """Unpickling this runs code: what a crafted checkpoint would do."""

    def __reduce__(self):
        return (open, ("/tmp/idclab_payload_ran", "w"))


def test_crafted_pickle_is_refused_without_running_it(tmp_path):
    import os

    path = tmp_path / "evil.pt"
    torch.save({"header": {"format": 2}, "model": {}, "payload": Payload()}, path)
    if os.path.exists("/tmp/idclab_payload_ran"):
        os.remove("/tmp/idclab_payload_ran")
    with pytest.raises(runs.UnsafeCheckpointError, match="refuses it"):
        load_checkpoint(path)
    assert not os.path.exists("/tmp/idclab_payload_ran")
    (tmp_path / "cut.pt").write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "cut.pt")


def test_auto_precision_uses_bf16_only_where_the_hardware_has_it(monkeypatch):
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # counts emulation: must not matter
    for capability, expected in [((7, 5), torch.float16), ((7, 0), torch.float16), ((8, 0), torch.bfloat16),
                                 ((9, 0), torch.bfloat16)]:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert _amp_dtype("auto", cuda) == expected, capability
    assert _amp_dtype("auto", torch.device("cpu")) is None


def test_sampler_shards_and_resumes():
    full = ResumableSampler(20, seed=1, epoch=0, batch_size=3).indices
    assert len(full) == 18 and len(set(full)) == 18
    assert ResumableSampler(20, seed=1, epoch=0, batch_size=3, start=2).indices == full[6:]
    r0 = ResumableSampler(20, seed=1, epoch=0, batch_size=3, rank=0, world=2).indices
    r1 = ResumableSampler(20, seed=1, epoch=0, batch_size=3, rank=1, world=2).indices
    assert len(r0) == len(r1) == 9 and not set(r0) & set(r1)
    assert ResumableSampler(20, seed=1, epoch=1, batch_size=3).indices != full


def test_ddp_two_cpu_processes(tmp_path):
    # torchrun on the CPU with the gloo backend: the same Trainer, two processes, gradients all-reduced.
    import os
    import subprocess
    import sys
    from pathlib import Path

    worker = Path(__file__).parent / "ddp_worker.py"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29517", str(worker), str(tmp_path)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for key in r0["model"]:
        assert torch.equal(r0["model"][key], r1["model"][key]), f"ranks diverged at {key}"
    assert r0["history"][-1]["loss"] < 0.5 * r0["history"][0]["loss"]
    saved = load_checkpoint(tmp_path / "run" / "resume.pt")
    assert saved["world_size"] == 2 and saved["position"]["step"] == CFG.max_steps


# ----------------------------------------------------------------------------------------------------------------------
# Early stopping and per-epoch datasets
# ----------------------------------------------------------------------------------------------------------------------


def test_early_stopping_after_patience_validations_without_gain(tmp_path):
    scores = iter([0.3, 0.9, 0.5, 0.9, 0.1, 0.95, 0.99])  # a tie (0.9) is not a gain

    def val_fn(model):
        return {"score": next(scores)}

    cfg = TrainConfig(max_steps=14, batch_size=8, lr=1e-2, eval_every=2, select_metric="score", patience=3,
                      progress=False)
    result = Trainer(make_model(), mse, Regression(), config=cfg, out_dir=tmp_path, val_fn=val_fn).fit()
    # best at step 4; steps 6, 8, 10 bring no gain -> stop at step 10, before the 0.95 of step 12
    assert [v["step"] for v in result.val_history] == [2, 4, 6, 8, 10]
    assert result.stopped_early and result.best == {"step": 4, "score": 0.9}
    assert load_checkpoint(result.last_checkpoint)["step"] == 10
    assert load_checkpoint(tmp_path / "resume.pt")["stale"] == 3
    # Resuming the stopped run trains no further.
    again = Trainer(make_model(), mse, Regression(), config=cfg, out_dir=tmp_path, val_fn=val_fn).fit(resume=True)
    assert again.stopped_early and len(again.val_history) == 5 and again.history[-1]["step"] == 10

    # Without patience the same scores run to the end.
    scores = iter([0.3, 0.9, 0.5, 0.9, 0.1, 0.95, 0.99, 0.0])
    full = Trainer(make_model(), mse, Regression(), config=dataclasses.replace(cfg, patience=None),
                   val_fn=val_fn).fit()
    assert not full.stopped_early and full.val_history[-1]["step"] == 14 and full.best["score"] == 0.99


def test_patience_needs_a_selection_metric_and_a_positive_count():
    with pytest.raises(ValueError, match="patience needs a select_metric"):
        TrainConfig(max_steps=4, batch_size=8, lr=1e-2, patience=2)
    with pytest.raises(ValueError, match="patience must be >= 1"):
        TrainConfig(max_steps=4, batch_size=8, lr=1e-2, select_metric="score", patience=0)


class EpochDraws(Regression):
    """Item i = (x_i, y_i + a draw from (epoch, i)): the data changes every epoch, as PairSamples' captions do."""

    def __init__(self):
        super().__init__()
        self.epoch = 0
        self.epochs_seen = []

    def set_epoch(self, epoch):
        self.epoch = epoch
        self.epochs_seen.append(epoch)

    def __getitem__(self, i):
        x, y = super().__getitem__(i)
        return x, y + torch.randn(1, generator=torch.Generator().manual_seed(1000 * self.epoch + i))


def test_trainer_sets_the_epoch_and_resume_restores_it(tmp_path):
    data = EpochDraws()
    full = Trainer(make_model(), mse, data, config=CFG, out_dir=tmp_path / "full").fit()
    assert data.epochs_seen == [0, 1, 2]  # 14 steps of 6 per epoch

    def stop_after_8(step, logs):  # step 8: mid-epoch 1
        if step == 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(make_model(), mse, EpochDraws(), config=CFG, out_dir=tmp_path / "cut", on_step=stop_after_8).fit()
    fresh = EpochDraws()  # a new process: the dataset starts at epoch 0
    resumed = Trainer(make_model(), mse, fresh, config=CFG, out_dir=tmp_path / "cut").fit(resume=True)
    assert fresh.epochs_seen == [1, 2]
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    a, b = (load_checkpoint(r.last_checkpoint)["model"] for r in (full, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
