"""idclab.losses against the formulas written out independently here, element by element."""

import math

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
