"""The optimisers that run on the predictors: pymoo's NSGA-II, AGE-MOEA, NSGA-III, U-NSGA-III, and random search.

All of them work on the space's integer genes: integer random sampling, SBX crossover and polynomial mutation with
rounding repair (pymoo's recipe for integer variables), and duplicate elimination by *canonical* genes, so two
individuals that differ only in the genes of switched-off layers (the same arch) count as duplicates.
"""

from __future__ import annotations

import math

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.algorithms.moo.nsga3 import NSGA3
from pymoo.algorithms.moo.unsga3 import UNSGA3
from pymoo.core.algorithm import Algorithm
from pymoo.core.duplicate import DefaultDuplicateElimination
from pymoo.core.problem import Problem
from pymoo.operators.crossover.sbx import SBX
from pymoo.operators.mutation.pm import PM
from pymoo.operators.repair.rounding import RoundingRepair
from pymoo.operators.sampling.rnd import IntegerRandomSampling
from pymoo.optimize import minimize
from pymoo.util.ref_dirs import get_reference_directions

from supernet.space import SearchSpace

ALGORITHMS = ("nsga2", "agemoea", "nsga3", "unsga3", "random")


class CanonicalDuplicates(DefaultDuplicateElimination):
    """Duplicates are individuals that decode to the same arch (equal canonical genes)."""

    def __init__(self, space: SearchSpace) -> None:
        super().__init__(func=self._canonical)
        # keep[i] masks the genes that matter at depth choice i (this runs every generation: no validation here,
        # the rounding repair already keeps genes within bounds).
        L, n_global = space.max_depth, space.n_genes - 3 * space.max_depth
        layer = np.arange(L)[None, :] < np.asarray(space.depth)[:, None]  # (len(depth), L)
        self.keep = np.hstack([np.ones((len(space.depth), n_global), dtype=bool), np.tile(layer, 3)])

    def _canonical(self, pop) -> np.ndarray:
        X = np.round(pop.get("X")).astype(np.int64)
        return np.where(self.keep[X[:, 0]], X, 0).astype(float)


def reference_directions(n_obj: int, pop_size: int) -> np.ndarray:
    """Das-Dennis directions, as many as fit in `pop_size` (NSGA-III needs pop_size >= number of directions)."""
    p = 1
    while math.comb(p + 1 + n_obj - 1, n_obj - 1) <= pop_size:
        p += 1
    return get_reference_directions("das-dennis", n_obj, n_partitions=p)


def build_algorithm(name: str, space: SearchSpace, n_obj: int, pop_size: int) -> Algorithm | None:
    """A configured pymoo algorithm for `name` (None for "random", which needs none)."""
    if name not in ALGORITHMS:
        raise ValueError(f"unknown search algorithm {name!r}; valid algorithms: {list(ALGORITHMS)}")
    if pop_size < 4:
        raise ValueError(f"pop_size={pop_size} is too small; use at least 4 (e.g. 100)")
    if name == "random":
        return None
    operators = dict(
        sampling=IntegerRandomSampling(),
        crossover=SBX(prob=0.9, eta=3.0, vtype=float, repair=RoundingRepair()),
        mutation=PM(eta=3.0, vtype=float, repair=RoundingRepair()),
        eliminate_duplicates=CanonicalDuplicates(space),
    )
    if name == "nsga2":
        return NSGA2(pop_size=pop_size, **operators)
    if name == "agemoea":
        from pymoo.algorithms.moo.age import AGEMOEA  # imports numba: only when asked for

        return AGEMOEA(pop_size=pop_size, **operators)
    if n_obj < 2:
        raise ValueError(f"{name} needs at least 2 objectives")
    cls = NSGA3 if name == "nsga3" else UNSGA3
    return cls(ref_dirs=reference_directions(n_obj, pop_size), pop_size=pop_size, **operators)


def run_algorithm(problem: Problem, name: str, space: SearchSpace, n_evals: int, pop_size: int, seed: int) -> None:
    """Run `name` on `problem` for about `n_evals` evaluations (the problem records what it evaluates)."""
    algorithm = build_algorithm(name, space, problem.n_obj, pop_size)
    if algorithm is None:
        rng = np.random.default_rng(seed)
        xl, xu = space.gene_bounds()
        problem.evaluate(rng.integers(xl, xu + 1, size=(n_evals, space.n_genes)), return_as_dictionary=True)
        return
    minimize(problem, algorithm, termination=("n_eval", n_evals), seed=seed, verbose=False)
