"""NASViT's gradient projection: the step's gradient is the largest arch's plus the others' projected off it."""

from __future__ import annotations

import copy

import torch

from supernet.training import task_loss
from tests.conftest import sandwich_module


def grads(module, loss) -> list[torch.Tensor]:
    params = [p for p in module.net.parameters() if p.requires_grad]
    return list(torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True, retain_graph=True))


def dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return float(sum((u * v).sum() for u, v in zip(a, b, strict=True)))


def test_a_step_without_conflict_keeps_the_plain_loss_and_gradient(default_space) -> None:
    torch.manual_seed(0)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    plain = sandwich_module(default_space, {}, seed=0)
    proj = sandwich_module(default_space, {"grad_projection": True}, seed=0)
    proj.net = copy.deepcopy(plain.net)
    total = plain.training_step((x, y), 0)
    g_big = grads(plain, task_loss(plain.net(x, plain.sampler.picks(0)[0].arch), y))
    g_all = grads(plain, total)
    assert dot(g_big, [a - b for a, b in zip(g_all, g_big, strict=True)]) > 0  # no conflict at this start
    loss = proj.training_step((x, y), 0)
    torch.testing.assert_close(loss, total)  # the logged value is the step's loss
    for a, b in zip(grads(proj, loss), g_all, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_a_conflicting_gradient_loses_its_component_against_the_largest(default_space) -> None:
    torch.manual_seed(1)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    module = sandwich_module(default_space, {"grad_projection": True}, seed=1)
    big = task_loss(module.net(x, default_space.largest()), y)
    other = task_loss(module.net(x, default_space.smallest()), (y + 1) % 10)
    rest = other - 2.0 * task_loss(module.net(x, default_space.largest()), y)  # pulls against the largest
    g_big, g_rest = grads(module, big), grads(module, rest)
    assert dot(g_big, g_rest) < 0
    loss = module.projected(big, rest)
    torch.testing.assert_close(loss, (big + rest).detach())
    got = grads(module, loss)
    c = dot(g_big, g_rest) / dot(g_big, g_big)
    for a, gb, gr in zip(got, g_big, g_rest, strict=True):
        torch.testing.assert_close(a, gb + gr - c * gb, rtol=1e-4, atol=1e-6)
    projected_rest = [a - b for a, b in zip(got, g_big, strict=True)]
    assert abs(dot(projected_rest, g_big)) < 1e-4 * abs(dot(g_rest, g_big))  # orthogonal to the largest's now
