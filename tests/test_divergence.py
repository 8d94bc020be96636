"""AlphaNet's adaptive α-divergence: its value and gradient against the closed forms, and its clip."""

from __future__ import annotations

import pytest
import torch

from supernet.train_config import resolve_train_config
from supernet.training import alpha_divergence, pick_loss


def closed_forms(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Per sample (D_-1, D_1): ½(Σ q²/p − 1) and KL(p ‖ q), p teacher, q student."""
    q, p = student.softmax(-1), teacher.softmax(-1)
    d_minus = 0.5 * ((q * q / p).sum(-1) - 1)
    d_plus = (p * (p.log() - q.log())).sum(-1)
    return torch.stack([d_minus, d_plus], -1)


def test_value_and_gradient_are_the_larger_divergences_per_sample() -> None:
    torch.manual_seed(0)
    teacher = torch.randn(64, 10)
    student = (teacher + 0.5 * torch.randn(64, 10)).requires_grad_()  # close enough that no weight is clipped
    loss = alpha_divergence(student, teacher, 1.0)
    forms = closed_forms(student, teacher)
    larger = forms.max(-1).values
    assert 0 < (forms[:, 0] > forms[:, 1]).float().mean() < 1  # both branches are taken somewhere
    torch.testing.assert_close(loss, larger.mean())
    (grad,) = torch.autograd.grad(loss, student)
    (want,) = torch.autograd.grad(larger.mean(), student)
    torch.testing.assert_close(grad, want)


def test_temperature_scales_by_t_squared() -> None:
    torch.manual_seed(1)
    s, t = torch.randn(8, 5), torch.randn(8, 5)
    torch.testing.assert_close(alpha_divergence(s, t, 2.0), 4 * alpha_divergence(s / 2, t / 2, 1.0))


def test_a_near_zero_teacher_probability_cannot_blow_up_the_gradient() -> None:
    """q/p is clipped at 5 in the α=-1 branch: a student sure of a class its teacher rules out gets a bounded push."""
    teacher = torch.tensor([[30.0, 0.0, 0.0]])
    student = torch.tensor([[0.0, 30.0, 0.0]], requires_grad=True)
    loss = alpha_divergence(student, teacher, 1.0)
    (grad,) = torch.autograd.grad(loss, student)
    assert torch.isfinite(loss) and torch.isfinite(grad).all() and grad.abs().max() < 10
    unclipped = closed_forms(student, teacher)[0, 0]
    assert unclipped > 1e10 > loss  # the closed form explodes, the clipped one does not


def test_pick_loss_uses_the_configured_divergence() -> None:
    torch.manual_seed(2)
    s, t, y = torch.randn(6, 10), torch.randn(6, 10), torch.randint(0, 10, (6,))
    cfg = resolve_train_config({"kd_divergence": "alpha", "task_weight": 0.0})
    loss, _ = pick_loss(s, y, "student", t, cfg)
    torch.testing.assert_close(loss, alpha_divergence(s, t, 1.0))
    with pytest.raises(ValueError, match=r"train\.kd_divergence='js' is not one of \['kl', 'alpha'\]"):
        resolve_train_config({"kd_divergence": "js"})
