"""Which subnets train in each optimizer step.

Every sampler is a pure function of `(seed, step)`: the archs of a step are drawn from
`numpy.random.default_rng([seed, step])`, so all DDP ranks train the same archs in the same step without any
communication, a resumed run draws exactly what the interrupted one would have, and no global RNG is touched.

* `SandwichSampler`: the largest arch (teacher), the smallest, and `num_random` random archs (BigNAS/AttentiveNAS).
  The largest uses the task loss; the others learn from the largest's detached outputs (in-place distillation).
  With `smallest_fraction` < 1 the smallest trains only in that fraction of the steps (drawn per step); in the
  others one more random arch takes its place, so every step trains as many archs.
  With `pool` > 1 each random student comes with a pool of candidates of about the same MACs (AttentiveNAS: a
  random arch sets the MAC target, its `pool - 1` nearest of `POOL_DRAWS` more random archs join it); the training
  step then keeps the candidate with the lowest (BestUp) or highest (WorstUp) loss on its batch.
* `UniformSampler`: one random arch per step, task loss only (single-path one-shot baseline).
* Progressive shrinking (`stages`): a curriculum after Once-for-All's. Stage k enables the first k dimensions of
  `stages`; the others stay at their largest choice. Stage boundaries are fractions of the total number of steps.
  Unlike OFA, channels are not re-ranked by importance at stage boundaries (run `reorder_by_importance` on the
  supernet beforehand if the front slices should hold the most important units).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from supernet.arch import Arch
from supernet.space import GLOBAL_GENES, LAYER_GENES, SearchSpace

DIMENSIONS = GLOBAL_GENES + LAYER_GENES
POOL_DRAWS = 32  # random archs a student's pool is chosen from (nearest in log MACs to the first draw)


@dataclass(frozen=True)
class Pick:
    """One subnet of a step and its role: `teacher` (task loss), `student` (distillation), or `single`."""

    arch: Arch
    role: str
    pool: tuple[Arch, ...] = ()  # candidates (`arch` first) the training step chooses among by loss; () = none


def restrict(space: SearchSpace, enabled: Sequence[str]) -> SearchSpace:
    """The sub-space where every dimension not in `enabled` is fixed to its largest choice."""
    unknown = set(enabled) - set(DIMENSIONS)
    if unknown:
        raise ValueError(f"unknown elastic dimension(s) {sorted(unknown)}; choose from {DIMENSIONS}")
    fixed = {d: (getattr(space, d)[-1],) for d in DIMENSIONS if d not in enabled}
    return replace(space, **fixed)


class ArchSampler:
    """Base class. Call order: `picks(step)` once per optimizer step, with the global step counter."""

    def __init__(
        self,
        space: SearchSpace,
        seed: int = 0,
        stages: Sequence[Sequence[str]] | None = None,
        stage_ends: Sequence[float] | None = None,
        total_steps: int = 1,
    ) -> None:
        self.space, self.seed = space, seed
        self.stages = [list(s) for s in stages] if stages else None
        if self.stages:
            ends = list(stage_ends) if stage_ends else [(k + 1) / len(self.stages) for k in range(len(self.stages))]
            if len(ends) != len(self.stages) or any(b <= a for a, b in itertools.pairwise(ends)):
                raise ValueError(f"train.progressive.stage_ends={ends} must increase, one per stage")
            self.boundaries = [round(e * total_steps) for e in ends]
            self.stage_spaces = [restrict(space, s) for s in self.stages]

    def space_at(self, step: int) -> SearchSpace:
        """The (possibly restricted) space sampled at `step`."""
        if not self.stages:
            return self.space
        k = next((i for i, b in enumerate(self.boundaries) if step < b), len(self.stages) - 1)
        return self.stage_spaces[k]

    def rng(self, step: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, step])

    def picks(self, step: int) -> list[Pick]:
        raise NotImplementedError


class SandwichSampler(ArchSampler):
    """Largest + smallest + `num_random` random archs per step."""

    def __init__(
        self,
        space: SearchSpace,
        num_random: int = 2,
        smallest_fraction: float = 1.0,
        pool: int = 1,
        macs: Callable[[Arch], float] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(space, **kwargs)
        if num_random < 0:
            raise ValueError(f"train.num_random={num_random} must be >= 0")
        if not 0 <= smallest_fraction <= 1:
            raise ValueError(f"train.smallest_fraction={smallest_fraction} must be in [0, 1]")
        if pool < 1:
            raise ValueError(f"train.attentive_pool={pool} must be >= 1")
        if pool > 1 and macs is None:
            raise ValueError("a candidate pool needs `macs`, the cost its candidates are matched on")
        self.num_random, self.smallest_fraction, self.pool, self.macs = num_random, smallest_fraction, pool, macs

    def picks(self, step: int) -> list[Pick]:
        sp, rng = self.space_at(step), self.rng(step)
        # Drawn only when it can come out both ways, so the default draws exactly the archs it always drew.
        with_smallest = self.smallest_fraction >= 1 or rng.random() < self.smallest_fraction
        out = [Pick(sp.largest(), "teacher")]
        has_smallest = sp.smallest() != sp.largest()  # not in progressive shrinking's first stage
        if has_smallest and with_smallest:
            out.append(Pick(sp.smallest(), "student"))
        for _ in range(self.num_random + (has_smallest and not with_smallest)):
            arch = sp.sample(rng)
            out.append(Pick(arch, "student", self.candidates(arch, sp, rng) if self.pool > 1 else ()))
        return out

    def candidates(self, anchor: Arch, space: SearchSpace, rng: np.random.Generator) -> tuple[Arch, ...]:
        """`anchor` and the `pool - 1` archs nearest to its MACs among `POOL_DRAWS` random ones (AttentiveNAS's
        FLOPs-conditioned candidates: without the condition, loss alone would always pick the smallest or largest)."""
        target = math.log(self.macs(anchor))
        draws = [space.sample(rng) for _ in range(POOL_DRAWS)]
        draws.sort(key=lambda a: abs(math.log(self.macs(a)) - target))
        return (anchor, *draws[: self.pool - 1])


class UniformSampler(ArchSampler):
    """One uniformly random arch per step, no distillation."""

    def picks(self, step: int) -> list[Pick]:
        return [Pick(self.space_at(step).sample(self.rng(step)), "single")]


SAMPLERS = {"sandwich": SandwichSampler, "uniform": UniformSampler}


def build_sampler(name: str, space: SearchSpace, **kwargs) -> ArchSampler:
    """Sampler by config name (`sandwich` or `uniform`)."""
    if name not in SAMPLERS:
        raise ValueError(f"train.sampler={name!r} is not one of {sorted(SAMPLERS)}")
    if name == "uniform":
        for key in ("num_random", "smallest_fraction", "pool", "macs"):
            kwargs.pop(key, None)
    return SAMPLERS[name](space, **kwargs)
