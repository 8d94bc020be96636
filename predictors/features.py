"""`FeatureEncoder`: archs -> a float feature matrix for the predictors, with a schema that persisted predictors check.

Columns, in this fixed order (L = the space's max depth)::

    depth, embed_dim, a_bits, log2_a_bits                                   global dims
    layer{i}.active, .num_heads, .mlp_ratio, .ffn_hidden, .w_bits,
             .log2_w_bits, .macs                        for i in [0, L)     per-layer slots
    total_heads, total_ffn_hidden, mean_log2_w_bits, min_w_bits,
    n_layers_w{b} for every w_bits choice b of the space                    permutation-free summaries
    params, macs, bitops, bytes, log1p_params, log1p_macs, ...              analytic costs (supernet.costs)

Layer slots at or beyond `depth` are all 0 (including `active`), so two archs that agree on their active layers have
identical rows, whatever genes an optimizer left in the switched-off slots. HAT averaged per-layer settings into one
vector and its latency predictor plateaued at 2-10 % error; per-layer slots plus exact analytic MACs keep the
information a latency or accuracy model needs.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from supernet.arch import Arch
from supernet.config import ModelConfig
from supernet.costs import arch_costs, layer_costs
from supernet.gene_costs import costs_from_columns, decode_genes
from supernet.space import SearchSpace

# Bump when the meaning of a column changes without its name changing: old predictors are then refused on load.
FEATURE_VERSION = 1

COST_FIELDS = ("params", "macs", "bitops", "bytes")
LAYER_FEATURES = ("active", "num_heads", "mlp_ratio", "ffn_hidden", "w_bits", "log2_w_bits", "macs")
_CACHE_LIMIT = 200_000  # rows kept per encoder (search re-scores the same archs many times)


class FeatureEncoder:
    """Encodes archs of one `SearchSpace` under one `ModelConfig` (and, for the LM, one `seq_len`) as feature rows."""

    def __init__(self, space: SearchSpace, config: ModelConfig, seq_len: int | None = None) -> None:
        if config.task == "image" and seq_len is not None:
            raise ValueError("seq_len only applies to model.task='lm'; leave it unset for images")
        self.space = space
        self.config = config
        self.seq_len = seq_len
        self.tokens = config.tokens(seq_len)
        self.names: list[str] = self._names()
        self._cache: dict[Arch, np.ndarray] = {}

    def _names(self) -> list[str]:
        names = ["depth", "embed_dim", "a_bits", "log2_a_bits"]
        for i in range(self.space.max_depth):
            names += [f"layer{i}.{f}" for f in LAYER_FEATURES]
        names += ["total_heads", "total_ffn_hidden", "mean_log2_w_bits", "min_w_bits"]
        names += [f"n_layers_w{b}" for b in self.space.w_bits]
        names += list(COST_FIELDS) + [f"log1p_{c}" for c in COST_FIELDS]
        return names

    @property
    def n_features(self) -> int:
        return len(self.names)

    def schema(self) -> dict[str, Any]:
        """Everything the columns depend on, plus a short hash of it: a persisted predictor stores this and is refused
        when the current encoder's hash differs."""
        body = {
            "version": FEATURE_VERSION,
            "names": list(self.names),
            "space_fingerprint": self.space.fingerprint(),
            "model_config": self.config.to_dict(),
            "seq_len": self.seq_len,
        }
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
        return {**body, "hash": digest}

    # ---- encoding ----------------------------------------------------------------------------------------------------

    def _row(self, arch: Arch) -> np.ndarray:
        self.space.validate(arch)
        L, d = self.space.max_depth, arch.depth
        row: list[float] = [d, arch.embed_dim, arch.a_bits, math.log2(arch.a_bits)]
        for i in range(L):
            if i < d:
                h, r, wb = arch.layer(i)
                macs = layer_costs(arch, i, self.config, self.tokens).macs
                row += [1.0, h, r, arch.ffn_hidden(i), wb, math.log2(wb), macs]
            else:
                row += [0.0] * len(LAYER_FEATURES)  # masked: switched-off layers carry no information
        row += [
            sum(arch.num_heads),
            sum(arch.ffn_hidden(i) for i in range(d)),
            float(np.mean(np.log2(arch.w_bits))),
            min(arch.w_bits),
        ]
        row += [sum(1 for b in arch.w_bits if b == choice) for choice in self.space.w_bits]
        costs = arch_costs(arch, self.config, self.seq_len)
        totals = [getattr(costs, c) for c in COST_FIELDS]
        row += totals + [math.log1p(v) for v in totals]
        out = np.asarray(row, dtype=np.float64)
        assert out.shape == (self.n_features,), (out.shape, self.n_features)
        return out

    def transform(self, archs: Sequence[Arch]) -> np.ndarray:
        """Feature matrix of shape (len(archs), n_features), float64. Archs outside the space raise a ValueError."""
        if isinstance(archs, Arch):
            archs = [archs]
        rows = []
        for a in archs:
            row = self._cache.get(a)
            if row is None:
                if len(self._cache) >= _CACHE_LIMIT:
                    self._cache.clear()
                row = self._cache[a] = self._row(a)
            rows.append(row)
        if not rows:
            return np.zeros((0, self.n_features), dtype=np.float64)
        return np.stack(rows)

    __call__ = transform

    def transform_genes(self, G: np.ndarray) -> np.ndarray:
        """Feature matrix of a gene matrix (N, n_genes): equals `transform([space.decode(g) for g in G])`, computed
        with numpy over all rows at once (the search scores tens of thousands of candidates per generation).
        Out-of-range genes of active layers raise a ValueError; those of inactive layers are ignored, as in decode."""
        cols = decode_genes(self.space, G)
        costs = costs_from_columns(self.space, self.config, cols, self.seq_len)
        n, L = len(cols), self.space.max_depth
        active = cols.active
        depth = cols.depth.astype(np.float64)
        # 0 in inactive slots, as in `_row` (log2(w_bits) is only taken where the layer is active).
        log2_w = np.log2(np.where(active, cols.w_bits, 1)) * active
        layers = np.stack(  # (N, L, len(LAYER_FEATURES)), in LAYER_FEATURES order
            [active, cols.num_heads, cols.mlp_ratio, cols.ffn_hidden, cols.w_bits, log2_w, costs["layer_macs"]],
            axis=-1,
        ).astype(np.float64)
        w_max = np.iinfo(np.int64).max
        blocks = [
            np.column_stack([depth, cols.embed_dim, cols.a_bits, np.log2(cols.a_bits)]),
            layers.reshape(n, L * len(LAYER_FEATURES)),
            np.column_stack(
                [
                    cols.num_heads.sum(axis=1),
                    cols.ffn_hidden.sum(axis=1),
                    log2_w.sum(axis=1) / depth,  # mean over the active layers only
                    np.where(active, cols.w_bits, w_max).min(axis=1),
                ]
            ),
            np.stack([((cols.w_bits == b) & active).sum(axis=1) for b in self.space.w_bits], axis=1),
        ]
        totals = np.column_stack([costs[c] for c in COST_FIELDS]).astype(np.float64)
        X = np.concatenate([*(b.astype(np.float64) for b in blocks), totals, np.log1p(totals)], axis=1)
        assert X.shape == (n, self.n_features), (X.shape, self.n_features)
        return X

    def __repr__(self) -> str:
        return (
            f"FeatureEncoder(space={self.space.name!r}, task={self.config.task!r}, "
            f"n_features={self.n_features}, hash={self.schema()['hash']})"
        )
