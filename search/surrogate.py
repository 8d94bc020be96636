"""`Surrogate`: every objective and constraint quantity of a gene matrix, predicted or exact, as one matrix.

Measured quantities (accuracy, loss, latency) come from scikit-learn predictors refitted on the real evaluations
so far (predictors/models.py picks the estimator by cross-validation); analytic ones (params, MACs, BitOPs, bytes)
are computed exactly from the genes (supernet/gene_costs.py). Both paths are vectorised over the whole population.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from predictors.features import FeatureEncoder
from predictors.models import SklearnPredictor, min_samples, select_and_fit
from search.objectives import Objective
from supernet.arch import Arch
from supernet.config import ModelConfig
from supernet.gene_costs import costs_from_genes
from supernet.space import SearchSpace


class Surrogate:
    """Predicts `quantities` (objectives and constrained quantities) for integer gene matrices.

    Call order: `fit(archs, rows)` with the measured rows so far -> `predict(genes)` any number of times.
    """

    def __init__(
        self,
        space: SearchSpace,
        config: ModelConfig,
        quantities: Sequence[Objective],
        candidates: Sequence[str] | None = None,
        k_folds: int = 5,
        seed: int = 0,
    ) -> None:
        self.space, self.config = space, config
        self.quantities = list(quantities)
        self.candidates = candidates
        self.k_folds, self.seed = k_folds, seed
        self.encoder = FeatureEncoder(space, config)
        self.predictors: dict[str, SklearnPredictor] = {}

    @property
    def measured(self) -> list[Objective]:
        return [q for q in self.quantities if q.kind == "measured"]

    def fit(self, archs: Sequence[Arch], rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Refit one predictor per measured quantity on `rows` (their `column` values); returns CV info per name."""
        info: dict[str, dict[str, Any]] = {}
        k = max(2, min(self.k_folds, len(archs) - 2))
        if len(archs) < min_samples(2):
            raise ValueError(f"{len(archs)} measured archs are too few to fit predictors; raise search.initial")
        for q in self.measured:
            y = np.asarray([float(r[q.column]) for r in rows])
            pred, _ = select_and_fit(archs, y, self.encoder, q.column, k_folds=k, seed=self.seed,
                                     candidates=self.candidates)  # fmt: skip
            self.predictors[q.name] = pred
            info[q.name] = {"estimator": pred.estimator, "cv_kendall_tau": pred.cv_scores["kendall_tau"],
                            "cv_mape": pred.cv_scores["mape"]}  # fmt: skip
        return info

    def predict(self, genes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std), each (N, len(quantities)) in the quantities' own units; std is 0 for exact quantities and
        NaN where the chosen estimator gives no uncertainty."""
        G = np.asarray(genes, dtype=np.int64).reshape(-1, self.space.n_genes)
        mean = np.zeros((len(G), len(self.quantities)))
        std = np.zeros_like(mean)
        costs = None
        for j, q in enumerate(self.quantities):
            if q.kind == "analytic":
                costs = costs if costs is not None else costs_from_genes(self.space, self.config, G)
                mean[:, j] = costs[q.column]
                continue
            if q.name not in self.predictors:
                raise RuntimeError("Surrogate.predict called before fit")
            m, s = self.predictors[q.name].predict_genes(G)
            mean[:, j] = m
            std[:, j] = np.nan if s is None else s
        return mean, std
