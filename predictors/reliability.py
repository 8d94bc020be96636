"""How reliable is one quality label? Split-half agreement of the same archs scored on two disjoint halves of the data.

A predictor cannot rank archs better than their labels do: if the accuracy of 200 archs, measured on one half of the
validation images, ranks them with Kendall τ = 0.7 against the other half, a predictor's held-out τ is capped near
that. `per_sample_scores` keeps one score per validation sample (1/0 correctness for classification, negative
loss per sequence for the LM) so any split can be scored afterwards; `split_half_tau` averages τ over random halves.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.stats import kendalltau


@torch.inference_mode()
def per_sample_scores(model, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], task: str) -> np.ndarray:
    """One score per sample, higher is better: correctness (0/1) for `image`, minus the mean token loss for `lm`."""
    out = []
    for x, y in batches:
        logits = model(x)
        if task != "lm":
            out.append((logits.argmax(-1) == y).float())
        else:
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), y, reduction="none")  # (B, T)
            out.append(-nll.mean(dim=1))
    return torch.cat(out).double().numpy()


def split_half_tau(scores: np.ndarray, n_splits: int = 20, seed: int = 0) -> tuple[float, float]:
    """(mean, std) over `n_splits` random halvings of Kendall τ between the archs' mean scores on the two halves.

    `scores` is (archs, samples); each split scores every arch on the same two disjoint halves of the samples.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] < 3 or scores.shape[1] < 2:
        raise ValueError(f"need scores of at least 3 archs × 2 samples, got shape {scores.shape}")
    rng = np.random.default_rng(seed)
    n = scores.shape[1]
    taus = []
    for _ in range(n_splits):
        perm = rng.permutation(n)
        a, b = perm[: n // 2], perm[n // 2 : 2 * (n // 2)]
        taus.append(kendalltau(scores[:, a].mean(1), scores[:, b].mean(1)).statistic)
    return float(np.mean(taus)), float(np.std(taus))
