"""`SurrogateProblem`: the pymoo problem over a space's integer genes, scored by a `Surrogate`.

Evaluation is vectorised (the whole population in one call). Objectives are turned into minimisation (`sign`),
constraints into pymoo's `G <= 0` form. Everything the optimiser evaluates is kept in an archive: the next batch of
real evaluations is chosen from it, not only from the final population.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pymoo.core.problem import Problem

from search.objectives import Constraint, Objective
from search.surrogate import Surrogate
from supernet.gene_costs import canonical_genes_batch
from supernet.space import SearchSpace


class SurrogateProblem(Problem):
    """Minimise `sign · objective` for every objective subject to `constraints`, on predicted values."""

    def __init__(
        self,
        space: SearchSpace,
        surrogate: Surrogate,
        objectives: Sequence[Objective],
        constraints: Sequence[Constraint] = (),
    ) -> None:
        xl, xu = space.gene_bounds()
        super().__init__(n_var=space.n_genes, n_obj=len(objectives), n_ieq_constr=len(constraints), xl=xl, xu=xu,
                         vtype=int)  # fmt: skip
        self.space, self.surrogate = space, surrogate
        names = [q.name for q in surrogate.quantities]
        self.obj_idx = [names.index(o.name) for o in objectives]
        self.con_idx = [names.index(c.objective.name) for c in constraints]
        self.signs = np.asarray([o.sign for o in objectives])
        self.constraints = list(constraints)
        self.archive: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (canonical genes, mean, std)

    def _evaluate(self, X: np.ndarray, out: dict, *args, **kwargs) -> None:
        G = canonical_genes_batch(self.space, np.round(X).astype(np.int64))
        mean, std = self.surrogate.predict(G)
        self.archive.append((G, mean, std))
        out["F"] = mean[:, self.obj_idx] * self.signs
        if self.constraints:
            out["G"] = np.column_stack([c.violation(mean[:, j]) for c, j in zip(self.constraints, self.con_idx,
                                                                                 strict=True)])  # fmt: skip

    @property
    def n_evaluated(self) -> int:
        return sum(len(g) for g, _, _ in self.archive)

    def evaluated(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Distinct archs the optimiser evaluated: (canonical genes, mean, std) with one row per arch."""
        if not self.archive:
            n = len(self.surrogate.quantities)
            return np.zeros((0, self.n_var), np.int64), np.zeros((0, n)), np.zeros((0, n))
        G, M, S = (np.concatenate(parts) for parts in zip(*self.archive, strict=True))
        _, first = np.unique(G, axis=0, return_index=True)
        first.sort()
        return G[first], M[first], S[first]
