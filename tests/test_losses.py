"""idclab.losses against the formulas written out independently here, element by element."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from idclab.losses import batch_classification_loss, symmetric_info_nce


def _cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def _info_nce_by_hand(v, g, tau):
    # Plain Python, straight from CLIP4IDC's equations.
    B = len(v)
    s = [[_cos(v[i], g[j]) / tau for j in range(B)] for i in range(B)]
    ip_t = -sum(s[i][i] - math.log(sum(math.exp(s[i][j]) for j in range(B))) for i in range(B)) / B
    t_ip = -sum(s[i][i] - math.log(sum(math.exp(s[j][i]) for j in range(B))) for i in range(B)) / B
    return ip_t, t_ip, (ip_t + t_ip) / 2


def test_symmetric_info_nce_matches_the_formula():
    torch.manual_seed(0)
    v, g = torch.randn(5, 7, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64)
    out = symmetric_info_nce(v, g, scale=100.0)
    ip_t, t_ip, total = _info_nce_by_hand(v.tolist(), g.tolist(), tau=0.01)
    assert out.ip_t.item() == pytest.approx(ip_t, rel=1e-10)
    assert out.t_ip.item() == pytest.approx(t_ip, rel=1e-10)
    assert out.loss.item() == pytest.approx(total, rel=1e-10)
    assert out.logits.shape == (5, 5)


def test_directions_differ_and_are_not_swapped():
    # A case built so that the two directions have different values: pair 0 is close to every caption.
    v = torch.tensor([[1.0, 1.0], [1.0, -0.2], [-1.0, 0.3]], dtype=torch.float64)
    g = torch.tensor([[1.0, 0.9], [0.9, 1.0], [-1.0, 0.2]], dtype=torch.float64)
    out = symmetric_info_nce(v, g, scale=10.0)
    ip_t, t_ip, _ = _info_nce_by_hand(v.tolist(), g.tolist(), tau=0.1)
    assert abs(ip_t - t_ip) > 1e-3
    assert out.ip_t.item() == pytest.approx(ip_t, rel=1e-10)
    assert out.t_ip.item() == pytest.approx(t_ip, rel=1e-10)


def test_info_nce_gradients_and_perfect_alignment():
    v = torch.eye(4, requires_grad=True)
    out = symmetric_info_nce(v, torch.eye(4), scale=100.0)
    assert out.loss.item() < 1e-6  # only exp(-100) terms remain
    w = torch.randn(4, 8, requires_grad=True)
    symmetric_info_nce(w, torch.randn(4, 8)).loss.backward()
    assert w.grad is not None and torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0


def test_batch_classification_loss_matches_the_formula():
    torch.manual_seed(1)
    q, t = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    qs, ts = q.tolist(), t.tolist()
    B = 6
    expected = -sum(
        100 * _cos(qs[i], ts[i]) - math.log(sum(math.exp(100 * _cos(qs[i], ts[j])) for j in range(B))) for i in range(B)
    ) / B
    assert batch_classification_loss(q, t).item() == pytest.approx(expected, rel=1e-10)
    # One direction only: swapping query and target changes the value.
    assert batch_classification_loss(t, q).item() != pytest.approx(expected, rel=1e-6)


def test_shape_errors_name_the_expected_shapes():
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        symmetric_info_nce(torch.randn(3, 4), torch.randn(4, 4))
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        batch_classification_loss(torch.randn(3), torch.randn(3))


# ----------------------------------------------------------------------------------------------------------------------
# Several processes: the gradient must equal one process's gradient on the whole global batch
# ----------------------------------------------------------------------------------------------------------------------


class _TwoTowers(torch.nn.Module):
    """A tiny linear image tower, a tiny linear text tower and a learnable log-scale (float64 for tight checks)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.image = torch.nn.Linear(6, 4).double()
        self.text = torch.nn.Linear(5, 4).double()
        self.log_scale = torch.nn.Parameter(torch.tensor(math.log(10.0), dtype=torch.float64))

    def forward(self, x, y):  # [B, 6], [B, 5] -> [B, 4], [B, 4], scalar
        return self.image(x), self.text(y), self.log_scale.exp()


def two_towers():
    return _TwoTowers()


def global_batch():
    """A fixed global batch of 8 (image input [8, 6], text input [8, 5]); ranks split it in halves."""
    gen = torch.Generator().manual_seed(1)
    return torch.randn(8, 6, generator=gen, dtype=torch.float64), torch.randn(8, 5, generator=gen, dtype=torch.float64)


def test_two_gloo_processes_give_the_single_process_gradient(tmp_path):
    # Reference: one process, the whole global batch, no DDP.
    model = two_towers()
    v, g, scale = model(*global_batch())  # [8, 4], [8, 4], scalar
    single = symmetric_info_nce(v, g, scale=scale)
    single.loss.backward()
    expected = {name: p.grad for name, p in model.named_parameters()}

    worker = Path(__file__).parent / "ddp_loss_worker.py"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(worker), str(tmp_path)], capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        # Every rank computes the loss of the whole global batch: the full [8, 8] similarity matrix.
        assert got["logits"].shape == (8, 8)
        torch.testing.assert_close(got["logits"], single.logits.detach())
        torch.testing.assert_close(got["loss"], single.loss.detach())
        for name, grad in expected.items():  # after DDP's averaging: exactly the single-process gradient
            torch.testing.assert_close(got["grads"][name], grad, msg=lambda m, n=name: f"gradient of {n}: {m}")


# ----------------------------------------------------------------------------------------------------------------------
# Autocast: logits stay in float32
# ----------------------------------------------------------------------------------------------------------------------


def _bf16_features():
    # Features near each other, as a trained CLIP's are: at scale 100 the logits sit close to 100, where bf16 steps
    # are 0.5 wide, so bf16 logits would change the loss visibly.
    gen = torch.Generator().manual_seed(2)
    base = torch.randn(1, 16, generator=gen)
    a = base + 0.1 * torch.randn(6, 16, generator=gen)  # [6, 16]
    b = base + 0.1 * torch.randn(6, 16, generator=gen)  # [6, 16]
    return a.bfloat16(), b.bfloat16()  # what a model under bf16 autocast hands to the loss


def test_info_nce_under_bf16_autocast_equals_the_float32_loss():
    a, b = _bf16_features()
    fp32 = symmetric_info_nce(a.float(), b.float(), scale=100.0)  # the same (bf16-rounded) values, in float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = symmetric_info_nce(a, b, scale=100.0)
    assert out.logits.dtype == torch.float32 and out.loss.dtype == torch.float32
    torch.testing.assert_close(out.logits, fp32.logits, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(out.loss, fp32.loss, rtol=1e-6, atol=1e-6)


def test_batch_classification_loss_under_bf16_autocast_equals_the_float32_loss():
    q, t = _bf16_features()
    fp32 = batch_classification_loss(q.float(), t.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = batch_classification_loss(q, t)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, fp32, rtol=1e-6, atol=1e-6)
