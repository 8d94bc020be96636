"""Loss-aware random students (AttentiveNAS BestUp / WorstUp): MAC-matched candidate pools and the choice by loss."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from supernet.config import ModelConfig
from supernet.costs import arch_costs
from supernet.sampling import SandwichSampler, build_sampler
from supernet.train_config import resolve_train_config
from tests.conftest import ce_by_hand, kl_by_hand, sandwich_module

CONFIG = ModelConfig(task="image")


def macs(arch) -> float:
    return arch_costs(arch, CONFIG).macs


def test_pools_hold_archs_of_about_the_anchors_macs(default_space) -> None:
    s = SandwichSampler(default_space, num_random=2, seed=3, pool=4, macs=macs)
    near, far = [], []
    for step in range(30):
        picks = s.picks(step)
        assert [p.pool for p in picks[:2]] == [(), ()]  # the largest and the smallest are never replaced
        for p in picks[2:]:
            assert len(p.pool) == 4 and p.pool[0] == p.arch and all(default_space.contains(a) for a in p.pool)
            near += [abs(math.log(macs(a) / macs(p.arch))) for a in p.pool[1:]]
        far.append(abs(math.log(macs(picks[2].arch) / macs(picks[3].arch))))  # two independent random archs
    assert statistics.median(near) < statistics.median(far) / 4
    assert s.picks(7) == SandwichSampler(default_space, num_random=2, seed=3, pool=4, macs=macs).picks(7)


def test_pool_of_one_is_the_plain_sandwich(default_space) -> None:
    plain = SandwichSampler(default_space, seed=2).picks(5)
    assert SandwichSampler(default_space, seed=2, pool=1, macs=macs).picks(5) == plain
    assert all(p.pool == () for p in plain)


@pytest.mark.parametrize("mode", ["best", "worst"])
def test_the_step_trains_the_candidate_with_the_lowest_or_highest_loss(default_space, mode) -> None:
    """total = CE(largest) + mean over students, where each random student is its pool's argmin/argmax loss."""
    torch.manual_seed(0)  # the weights too: whether the choice differs from the anchor must not follow test order
    module = sandwich_module(default_space, {"attentive": mode, "attentive_pool": 3}, seed=4)
    module.sampler = build_sampler("sandwich", module.space, num_random=2, seed=4, pool=3, macs=macs)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    with torch.no_grad():
        total = module.training_step((x, y), 0)
        picks = module.sampler.picks(0)
        teacher = module.net(x, picks[0].arch)

        def student(arch) -> torch.Tensor:
            logits = module.net(x, arch)
            return kl_by_hand(logits, teacher, 1.0) + ce_by_hand(logits, y)

        chosen = []
        for p in picks[2:]:
            losses = [float(student(a)) for a in p.pool]
            assert len(set(losses)) == len(losses)  # distinct candidates, so the choice matters
            pick = min if mode == "best" else max
            chosen.append(p.pool[losses.index(pick(losses))])
        students = [picks[1].arch, *chosen]
        want = ce_by_hand(teacher, y) + sum(student(a) for a in students) / len(students)
    torch.testing.assert_close(total, want)
    assert any(c != p.arch for c, p in zip(chosen, picks[2:], strict=True))  # not simply the plain sandwich's arch


def test_attentive_settings_are_validated(default_space) -> None:
    assert resolve_train_config({"attentive": "worst"})["attentive_pool"] == 3
    with pytest.raises(ValueError, match=r"train\.attentive='most' is not one of \['none', 'best', 'worst'\]"):
        resolve_train_config({"attentive": "most"})
    with pytest.raises(ValueError, match=r"train\.attentive_pool=0 must be >= 1"):
        resolve_train_config({"attentive_pool": 0})
    with pytest.raises(ValueError, match="needs `macs`"):
        SandwichSampler(default_space, pool=2)
    with pytest.raises(ValueError, match=r"train\.attentive_pool=0 must be >= 1"):
        SandwichSampler(default_space, pool=0, macs=macs)
