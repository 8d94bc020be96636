"""Vectorised gene matrix -> arch columns and analytic costs, for scoring thousands of candidates at once.

The multi-objective search holds its population as an integer gene matrix (N, n_genes) in the layout of
`SearchSpace` (see supernet/space.py). Decoding each row to an `Arch` and calling `supernet.costs.arch_costs` costs
~0.15 ms per row; the functions here do the same over the whole matrix with numpy and agree with the per-arch path
exactly (the tests compare them row by row).

Costs are not re-derived here: one block's costs depend only on (embed_dim, num_heads, mlp_ratio, w_bits, a_bits),
and the stem and head only on embed_dim, so `supernet.costs.layer_costs` / `stem_costs` / `head_costs` are evaluated
once per combination of choices into small lookup tables (cached per space, config and sequence length), and a gene
matrix is costed by gathering from them. The cost model therefore has one definition, and Python's exact integer
arithmetic (packed-byte ceilings, rounded FFN widths) carries over unchanged.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import numpy as np

from supernet.arch import Arch
from supernet.config import ModelConfig
from supernet.costs import head_costs, layer_costs, stem_costs
from supernet.space import GLOBAL_GENES, LAYER_GENES, SearchSpace

COST_FIELDS = ("params", "macs", "bitops", "bytes")
_INT64_MAX = np.iinfo(np.int64).max
_G = len(GLOBAL_GENES)  # index of the first per-layer gene


@dataclass(frozen=True)
class GeneColumns:
    """Decoded gene matrix as value columns; per-layer arrays are (N, L) with 0 in inactive layers."""

    depth: np.ndarray  # (N,) int64
    embed_dim: np.ndarray  # (N,) int64
    a_bits: np.ndarray  # (N,) int64
    num_heads: np.ndarray  # (N, L) int64
    mlp_ratio: np.ndarray  # (N, L) float64
    w_bits: np.ndarray  # (N, L) int64
    active: np.ndarray  # (N, L) bool: layer i < depth
    ffn_hidden: np.ndarray  # (N, L) int64: round(mlp_ratio × embed_dim), as `Arch.ffn_hidden`
    genes: np.ndarray  # (N, n_genes) int64: canonical genes (inactive layers zeroed), i.e. choice indices

    def __len__(self) -> int:
        return len(self.depth)


def _as_gene_matrix(space: SearchSpace, G: np.ndarray) -> np.ndarray:
    """`G` as an int64 (N, n_genes) matrix; one ValueError if it is not a matrix of integers."""
    g = np.asarray(G)
    if g.ndim != 2 or g.shape[1] != space.n_genes:
        raise ValueError(
            f"expected a gene matrix of shape (N, {space.n_genes}) for space '{space.name}', got shape {g.shape}"
        )
    if g.dtype.kind in "iu":
        return g.astype(np.int64, copy=False)
    if g.dtype.kind != "f":
        raise ValueError(f"genes must be integers, got dtype {g.dtype}")
    ok = np.isfinite(g) & (g == np.round(g))
    if not ok.all():
        i = int(np.flatnonzero(~ok.all(axis=1))[0])
        raise ValueError(f"genes must be integers, got row {i}: {g[i].tolist()}")
    # Clip before casting so huge (ignored) inactive genes do not overflow int64; clipping to one past the bounds
    # keeps every out-of-range gene out of range.
    _, xu = space.gene_bounds()
    return np.clip(g, -1, int(xu.max()) + 1).astype(np.int64)


def decode_genes(space: SearchSpace, G: np.ndarray) -> GeneColumns:
    """Vectorised `space.decode` of every row of `G` (N, n_genes): genes of inactive layers are ignored, any other
    gene outside its bounds raises one ValueError naming the row, gene index, value and bounds."""
    g = _as_gene_matrix(space, G)
    n, L = len(g), space.max_depth
    xl, xu = space.gene_bounds()
    bad = (g < xl) | (g > xu)
    depth_idx = np.clip(g[:, 0], 0, xu[0])
    depth = np.asarray(space.depth, dtype=np.int64)[depth_idx]
    active = np.arange(L) < depth[:, None]
    # An out-of-range gene only matters where decode would read it: globals always, layer genes of active layers.
    # A row whose depth gene is bad has gene 0 as its first bad gene, which is what decode reports too.
    layer_active = np.tile(active, len(LAYER_GENES))  # (N, 3L), matching the [heads, ratios, w_bits] gene blocks
    relevant = bad.copy()
    relevant[:, _G:] &= layer_active
    if relevant.any():
        i = int(np.flatnonzero(relevant.any(axis=1))[0])
        j = int(np.flatnonzero(relevant[i])[0])
        value = np.asarray(G)[i, j]  # the caller's value, not the clipped one
        raise ValueError(f"row {i}: gene {j}={int(value)} outside its bounds [{xl[j]}, {xu[j]}]")

    canon = g.copy()
    canon[:, _G:] = np.where(layer_active, canon[:, _G:], 0)
    layer_block = canon[:, _G:].reshape(n, len(LAYER_GENES), L)

    def choices(name: str, dtype: type) -> np.ndarray:
        return np.asarray(getattr(space, name), dtype=dtype)

    def layer(k: int, name: str, dtype: type) -> np.ndarray:
        # Inactive slots hold index 0 after canonicalising; their values are masked to 0 as in the feature rows.
        return np.where(active, choices(name, dtype)[layer_block[:, k]], 0).astype(dtype)

    embed_dim = choices("embed_dim", np.int64)[canon[:, 1]]
    mlp_ratio = layer(1, "mlp_ratio", np.float64)
    return GeneColumns(
        depth=depth,
        embed_dim=embed_dim,
        a_bits=choices("a_bits", np.int64)[canon[:, 2]],
        num_heads=layer(0, "num_heads", np.int64),
        mlp_ratio=mlp_ratio,
        w_bits=layer(2, "w_bits", np.int64),
        active=active,
        # np.rint rounds half to even like Python's round(); the space guarantees r × e is (nearly) an integer.
        ffn_hidden=np.rint(mlp_ratio * embed_dim[:, None]).astype(np.int64),
        genes=canon,
    )


def canonical_genes_batch(space: SearchSpace, G: np.ndarray) -> np.ndarray:
    """Row i equals `space.canonical_genes(G[i])`: inactive layers zeroed, int64 (N, n_genes)."""
    return decode_genes(space, G).genes


@dataclass(frozen=True)
class _CostTables:
    layer: np.ndarray  # (4, |E|·|H|·|R|·|W|·|A|) int64: costs of one block per choice combination
    stem_head: np.ndarray  # (4, |E|) int64: stem + head costs per embed_dim choice


@functools.lru_cache(maxsize=16)
def _cost_tables(space: SearchSpace, config: ModelConfig, tokens: int) -> _CostTables:
    """Lookup tables built from the per-arch cost model (a few ms for the default space, once per key)."""
    layer_rows = []
    for e, h, r, wb, ab in itertools.product(
        space.embed_dim, space.num_heads, space.mlp_ratio, space.w_bits, space.a_bits
    ):
        c = layer_costs(Arch(1, e, (h,), (r,), (wb,), ab), 0, config, tokens)
        layer_rows.append([c.params, c.macs, c.bitops, c.bytes])
    sh_rows = []
    for e in space.embed_dim:
        a = Arch(1, e, (space.num_heads[0],), (space.mlp_ratio[0],), (space.w_bits[0],), space.a_bits[0])
        c = stem_costs(a, config, tokens) + head_costs(a, config, tokens)
        sh_rows.append([c.params, c.macs, c.bitops, c.bytes])
    # numpy sums int64 silently modulo 2**64; refuse configs whose largest total could wrap instead of returning
    # wrong costs (the per-arch path uses Python ints and has no such limit).
    for f, name in enumerate(COST_FIELDS):
        bound = max(r[f] for r in sh_rows) + space.max_depth * max(r[f] for r in layer_rows)
        if bound > _INT64_MAX:
            raise ValueError(
                f"{name} of the largest archs ({bound}) exceed int64; use supernet.costs.arch_costs per arch"
            )
    layer = np.asarray(layer_rows, dtype=np.int64).T.copy()
    stem_head = np.asarray(sh_rows, dtype=np.int64).T.copy()
    layer.flags.writeable = stem_head.flags.writeable = False  # shared through the cache
    return _CostTables(layer, stem_head)


def _tokens(config: ModelConfig, seq_len: int | None) -> int:
    # Same rule and message as `arch_costs`, so both paths accept and refuse the same seq_len.
    if seq_len is not None and config.task != "image" and not 1 <= seq_len <= config.block_size:
        raise ValueError(f"seq_len={seq_len} must be in [1, block_size={config.block_size}]")
    return config.tokens(seq_len)


def costs_from_columns(
    space: SearchSpace, config: ModelConfig, cols: GeneColumns, seq_len: int | None = None
) -> dict[str, np.ndarray]:
    """`costs_from_genes` for already decoded genes (lets callers that need both decode only once)."""
    tables = _cost_tables(space, config, _tokens(config, seq_len))
    L = space.max_depth
    g = cols.genes
    e_idx, a_idx = g[:, 1:2], g[:, 2:3]
    h_idx, r_idx, w_idx = (g[:, _G + k * L : _G + (k + 1) * L] for k in range(len(LAYER_GENES)))
    nh, nr, nw, na = len(space.num_heads), len(space.mlp_ratio), len(space.w_bits), len(space.a_bits)
    flat = (((e_idx * nh + h_idx) * nr + r_idx) * nw + w_idx) * na + a_idx  # row-major index into the table
    per_layer = np.where(cols.active, tables.layer[:, flat], 0)  # (4, N, L)
    totals = tables.stem_head[:, g[:, 1]] + per_layer.sum(axis=2)  # (4, N)
    out = {name: totals[f] for f, name in enumerate(COST_FIELDS)}
    out["layer_macs"] = per_layer[COST_FIELDS.index("macs")]
    return out


def costs_from_genes(
    space: SearchSpace, config: ModelConfig, G: np.ndarray, seq_len: int | None = None
) -> dict[str, np.ndarray]:
    """Analytic costs of every row of the gene matrix `G`, equal to `arch_costs(space.decode(G[i]), config, seq_len)`.

    Returns int64 arrays "params", "macs", "bitops", "bytes" (N,) and "layer_macs" (N, L): each active block's
    MACs as `layer_costs(...).macs`, 0 for inactive layers.
    """
    return costs_from_columns(space, config, decode_genes(space, G), seq_len)
