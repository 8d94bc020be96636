"""Which subnets train in each optimizer step.

Every sampler is a pure function of `(seed, step)`: the archs of a step are drawn from
`numpy.random.default_rng([seed, step])`, so all DDP ranks train the same archs in the same step without any
communication, a resumed run draws exactly what the interrupted one would have, and no global RNG is touched.

* `SandwichSampler`: the largest arch (teacher), the smallest, and `num_random` random archs (BigNAS/AttentiveNAS).
  The largest uses the task loss; the others learn from the largest's detached outputs (in-place distillation).
* `UniformSampler`: one random arch per step, task loss only (single-path one-shot baseline).
* Progressive shrinking (`stages`): a curriculum after Once-for-All's. Stage k enables the first k dimensions of
  `stages`; the others stay at their largest choice. Stage boundaries are fractions of the total number of steps.
  Unlike OFA, channels are not re-ranked by importance at stage boundaries (run `reorder_by_importance` on the
  supernet beforehand if the front slices should hold the most important units).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from supernet.arch import Arch
from supernet.space import GLOBAL_GENES, LAYER_GENES, SearchSpace

DIMENSIONS = GLOBAL_GENES + LAYER_GENES


@dataclass(frozen=True)
class Pick:
    """One subnet of a step and its role: `teacher` (task loss), `student` (distillation), or `single`."""

    arch: Arch
    role: str


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

    def __init__(self, space: SearchSpace, num_random: int = 2, **kwargs) -> None:
        super().__init__(space, **kwargs)
        if num_random < 0:
            raise ValueError(f"train.num_random={num_random} must be >= 0")
        self.num_random = num_random

    def picks(self, step: int) -> list[Pick]:
        sp, rng = self.space_at(step), self.rng(step)
        out = [Pick(sp.largest(), "teacher")]
        if sp.smallest() != sp.largest():
            out.append(Pick(sp.smallest(), "student"))
        out += [Pick(sp.sample(rng), "student") for _ in range(self.num_random)]
        return out


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
        kwargs.pop("num_random", None)
    return SAMPLERS[name](space, **kwargs)
