"""Pareto bookkeeping on minimisation-form objective matrices: fronts, hypervolume, and choosing the next batch.

Hypervolume uses pymoo's exact indicator on objectives normalised by fixed bounds (`HVReference`): each objective is
mapped to (value - ideal) / (nadir - ideal) and the reference point is `1 + margin` in every normalised dimension,
so HV values of one run (and of runs that share the bounds) are comparable across iterations.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from pymoo.indicators.hv import HV
from pymoo.operators.survival.rank_and_crowding.metrics import calc_crowding_distance
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting


def pareto_indices(F: np.ndarray, feasible: np.ndarray | None = None) -> np.ndarray:
    """Indices of the non-dominated feasible rows of `F` (minimisation), sorted by the first objective."""
    F = np.asarray(F, dtype=float)
    idx = np.arange(len(F)) if feasible is None else np.flatnonzero(feasible)
    if len(idx) == 0:
        return idx
    front = idx[NonDominatedSorting().do(F[idx], only_non_dominated_front=True)]
    return front[np.argsort(F[front, 0], kind="stable")]


@dataclass(frozen=True)
class HVReference:
    """Normalisation bounds (minimisation form) and the margin that places the reference point beyond the nadir."""

    ideal: tuple[float, ...]
    nadir: tuple[float, ...]
    margin: float = 0.1

    @classmethod
    def from_points(cls, F: np.ndarray, margin: float = 0.1) -> HVReference:
        """Bounds spanned by the points `F` (e.g. the initial batch, which holds the largest and smallest arch)."""
        F = np.asarray(F, dtype=float)
        lo, hi = F.min(axis=0), F.max(axis=0)
        hi = np.where(hi > lo, hi, lo + 1.0)  # a constant objective still gets a non-degenerate range
        return cls(tuple(map(float, lo)), tuple(map(float, hi)), margin)

    def normalise(self, F: np.ndarray) -> np.ndarray:
        lo, hi = np.asarray(self.ideal), np.asarray(self.nadir)
        return (np.asarray(F, dtype=float) - lo) / (hi - lo)

    def hypervolume(self, F: np.ndarray) -> float:
        """HV of the points `F` (minimisation form; only non-dominated ones inside the reference box count)."""
        F = np.asarray(F, dtype=float).reshape(-1, len(self.ideal))
        if len(F) == 0:
            return 0.0
        ref = np.full(len(self.ideal), 1.0 + self.margin)
        return float(HV(ref_point=ref)(self.normalise(F)))

    def to_dict(self) -> dict:
        return asdict(self)


def select_batch(F: np.ndarray, violation: np.ndarray | None, n: int) -> np.ndarray:
    """Indices of `n` candidates: feasible ones by non-dominated rank, the last front cut by crowding distance (the
    NSGA-II survival rule), then infeasible ones by total violation. Ties go to the lower index, so the choice is a
    deterministic function of its inputs (pymoo's own survival breaks ties with the global RNG).

    `F` holds the candidates' (optimistic) predicted objectives in minimisation form, `violation` their predicted
    constraint values (<= 0 where satisfied) or None. The result is sorted ascending.
    """
    F = np.asarray(F, dtype=float)
    if n >= len(F):
        return np.arange(len(F))
    cv = (
        np.zeros(len(F))
        if violation is None
        else np.maximum(np.asarray(violation, float), 0).reshape(len(F), -1).sum(1)
    )
    feasible = np.flatnonzero(cv <= 0)
    chosen: list[int] = []
    if len(feasible):
        for front in NonDominatedSorting().do(F[feasible]):
            idx = feasible[front]
            room = n - len(chosen)
            if len(idx) > room:
                crowding = calc_crowding_distance(F[idx])
                idx = idx[np.lexsort((idx, -crowding))][:room]
            chosen.extend(idx.tolist())
            if len(chosen) == n:
                break
    if len(chosen) < n:
        infeasible = np.flatnonzero(cv > 0)
        chosen.extend(infeasible[np.lexsort((infeasible, cv[infeasible]))][: n - len(chosen)].tolist())
    return np.sort(np.asarray(chosen, dtype=np.int64))
