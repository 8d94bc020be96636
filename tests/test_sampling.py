"""Arch samplers: pure functions of (seed, step), the sandwich contents, progressive shrinking."""

from __future__ import annotations

import numpy as np
import pytest

from supernet.sampling import SandwichSampler, UniformSampler, build_sampler, restrict
from supernet.train_config import resolve_train_config


def test_sandwich_contents(default_space) -> None:
    s = SandwichSampler(default_space, num_random=3, seed=1)
    picks = s.picks(0)
    assert [p.role for p in picks] == ["teacher", "student", "student", "student", "student"]
    assert picks[0].arch == default_space.largest() and picks[1].arch == default_space.smallest()
    assert all(default_space.contains(p.arch) for p in picks)


def test_same_seed_and_step_give_same_archs_in_any_order(default_space) -> None:
    """What DDP ranks and resumed runs rely on: no hidden RNG state, only (seed, step)."""
    a, b = SandwichSampler(default_space, seed=5), SandwichSampler(default_space, seed=5)
    forward = [a.picks(i) for i in range(20)]
    backward = [b.picks(i) for i in reversed(range(20))][::-1]
    assert forward == backward
    assert SandwichSampler(default_space, seed=6).picks(3) != forward[3]
    assert len({p[2].arch for p in forward}) > 15  # random archs differ between steps


def test_sampler_leaves_global_rng_alone(default_space) -> None:
    state = np.random.get_state()[1].copy()
    UniformSampler(default_space, seed=0).picks(0)
    assert np.array_equal(np.random.get_state()[1], state)


def test_uniform_one_arch_no_teacher(default_space) -> None:
    picks = UniformSampler(default_space, seed=0).picks(4)
    assert len(picks) == 1 and picks[0].role == "single"


def test_progressive_shrinking_stages(default_space) -> None:
    order = ["depth", "embed_dim", "w_bits"]
    stages = [order[:k] for k in range(len(order) + 1)]
    s = SandwichSampler(default_space, num_random=4, seed=0, stages=stages, total_steps=100)
    largest = default_space.largest()
    # Stage 0 (steps 0-24): nothing elastic, only the largest arch trains.
    assert all(p.arch == largest for p in s.picks(3))
    assert len(s.picks(3)) == 1 + 4
    # Stage 1 (25-49): only depth varies.
    for p in s.picks(30):
        assert (p.arch.embed_dim, set(p.arch.num_heads), set(p.arch.w_bits)) == (128, {4}, {32})
    assert s.picks(30)[1].arch.depth == default_space.depth[0]
    # Last stage: depth, embed_dim and w_bits vary; heads/ratio/a_bits stay at their largest.
    last = s.picks(99)
    assert last[1].arch.w_bits[0] == default_space.w_bits[0] and last[1].arch.embed_dim == 64
    assert all(set(p.arch.num_heads) == {4} and p.arch.a_bits == 32 for p in last)


def test_restrict_and_errors(default_space) -> None:
    sub = restrict(default_space, ["depth"])
    assert sub.embed_dim == (128,) and sub.depth == default_space.depth
    with pytest.raises(ValueError, match=r"unknown elastic dimension\(s\) \['width'\]"):
        restrict(default_space, ["width"])
    with pytest.raises(ValueError, match=r"train.sampler='greedy' is not one of \['sandwich', 'uniform'\]"):
        build_sampler("greedy", default_space)
    with pytest.raises(ValueError, match="stage_ends"):
        SandwichSampler(default_space, stages=[[], ["depth"]], stage_ends=[0.8, 0.5], total_steps=10)
    with pytest.raises(ValueError, match="num_random=-1"):
        SandwichSampler(default_space, num_random=-1)


def test_smallest_fraction_trades_the_smallest_for_a_random_arch(default_space) -> None:
    """The smallest trains in about that fraction of the steps; in the others one more random arch trains, so every
    step trains as many archs. The default (1.0) draws exactly what the plain sandwich drew."""
    plain = SandwichSampler(default_space, seed=3)
    assert [SandwichSampler(default_space, seed=3, smallest_fraction=1.0).picks(i) for i in range(30)] == [
        plain.picks(i) for i in range(30)
    ]
    smallest = default_space.smallest()
    never = SandwichSampler(default_space, seed=3, smallest_fraction=0.0)
    for i in range(30):
        picks = never.picks(i)
        assert len(picks) == 4 and picks[0].role == "teacher" and all(p.role == "student" for p in picks[1:])
        assert smallest not in [p.arch for p in picks[1:]]
    half = SandwichSampler(default_space, seed=3, smallest_fraction=0.5)
    steps = [half.picks(i) for i in range(400)]
    assert all(len(p) == 4 for p in steps)
    share = np.mean([p[1].arch == smallest for p in steps])
    assert 0.4 < share < 0.6
    assert steps == [SandwichSampler(default_space, seed=3, smallest_fraction=0.5).picks(i) for i in range(400)]
    # Progressive shrinking's first stage has only the largest arch: no smallest to replace, no extra student.
    staged = SandwichSampler(default_space, seed=3, smallest_fraction=0.0, stages=[[], ["depth"]], total_steps=10)
    assert len(staged.picks(0)) == 3 and len(staged.picks(9)) == 4


def test_smallest_fraction_is_validated(default_space) -> None:
    assert resolve_train_config({})["smallest_fraction"] == 1.0
    with pytest.raises(ValueError, match=r"train\.smallest_fraction=1\.5 must be in \[0, 1\]"):
        resolve_train_config({"smallest_fraction": 1.5})
    with pytest.raises(ValueError, match=r"train\.smallest_fraction=-0\.1 must be in \[0, 1\]"):
        SandwichSampler(default_space, smallest_fraction=-0.1)
    assert len(build_sampler("uniform", default_space, smallest_fraction=0.5).picks(0)) == 1
