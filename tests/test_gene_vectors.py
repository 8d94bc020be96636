"""Vectorised gene-matrix paths (supernet/gene_costs.py, FeatureEncoder.transform_genes, Predictor.predict_genes)
against the per-arch reference path (SearchSpace.decode, arch_costs, layer_costs, FeatureEncoder.transform).

Every property is checked row by row on seeded random gene matrices, a third of whose rows carry out-of-range
garbage in their inactive layers (which decode ignores, so the vectorised path must too).
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from predictors.features import COST_FIELDS, FeatureEncoder
from predictors.models import CANDIDATES, Predictor, SklearnPredictor
from supernet import ModelConfig, SearchSpace, arch_costs
from supernet.costs import layer_costs
from supernet.gene_costs import canonical_genes_batch, costs_from_genes, decode_genes
from supernet.space import GLOBAL_GENES, LAYER_GENES
from tests.conftest import TASK_CONFIGS

N_ROWS = 600
IMAGE = TASK_CONFIGS["image"]
LM = TASK_CONFIGS["lm"]
# (space fixture, model config, seq_len): both spaces on the image task, the LM at full and shorter length, and every
# other registered task model (the imported families' block options: gated FFN, key/value groups, CLS, pooler).
CASES = {
    "default-image": ("default_space", IMAGE, None),
    "small-image": ("small_space", IMAGE, None),
    "default-lm": ("default_space", LM, None),
    "default-lm-seq16": ("default_space", LM, 16),
    **{
        f"default-{name}": ("default_space", cfg, None)
        for name, cfg in TASK_CONFIGS.items()
        if name not in ("image", "lm")
    },
}


def random_genes(space: SearchSpace, n: int, seed: int) -> np.ndarray:
    """`n` random in-bounds gene rows; every third row with depth < max gets garbage in its inactive layer genes."""
    rng = np.random.default_rng(seed)
    xl, xu = space.gene_bounds()
    G = rng.integers(xl, xu + 1, size=(n, space.n_genes))
    L, g0 = space.max_depth, len(GLOBAL_GENES)
    for i in range(0, n, 3):
        d = space.depth[G[i, 0]]
        for k in range(len(LAYER_GENES)):
            lo = g0 + k * L
            G[i, lo + d : lo + L] = rng.integers(-50, 50, size=L - d)  # mostly out of range
    return G


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    space_fixture, config, seq_len = CASES[request.param]
    space = request.getfixturevalue(space_fixture)
    G = random_genes(space, N_ROWS, seed=sorted(CASES).index(request.param))
    return space, config, seq_len, G, [space.decode(g) for g in G]


def test_garbage_rows_are_present(case):
    space, _, _, G, _ = case
    xl, xu = space.gene_bounds()
    assert len(G) >= 500 and np.any(np.clip(G, xl, xu) != G)  # the ignored-garbage path is exercised


def test_decode_genes_matches_decode(case):
    space, _, _, G, archs = case
    cols = decode_genes(space, G)
    L = space.max_depth
    assert len(cols) == len(G)
    for i, a in enumerate(archs):
        d = a.depth
        assert (cols.depth[i], cols.embed_dim[i], cols.a_bits[i]) == (a.depth, a.embed_dim, a.a_bits)
        assert cols.active[i].tolist() == [True] * d + [False] * (L - d)
        assert cols.num_heads[i].tolist() == [*a.num_heads, *[0] * (L - d)]
        assert cols.mlp_ratio[i].tolist() == [*a.mlp_ratio, *[0.0] * (L - d)]
        assert cols.w_bits[i].tolist() == [*a.w_bits, *[0] * (L - d)]
        assert cols.ffn_hidden[i].tolist() == [*(a.ffn_hidden(k) for k in range(d)), *[0] * (L - d)]
    assert cols.depth.dtype == cols.num_heads.dtype == np.int64 and cols.mlp_ratio.dtype == np.float64
    assert cols.active.dtype == bool


def test_canonical_genes_batch_matches_canonical_genes(case):
    space, _, _, G, _ = case
    C = canonical_genes_batch(space, G)
    assert C.dtype == np.int64 and C.shape == G.shape
    np.testing.assert_array_equal(C, np.stack([space.canonical_genes(g) for g in G]))
    np.testing.assert_array_equal(canonical_genes_batch(space, C), C)  # idempotent


def test_costs_from_genes_match_arch_costs_exactly(case):
    space, config, seq_len, G, archs = case
    costs = costs_from_genes(space, config, G, seq_len)
    tokens = config.tokens(seq_len)
    L = space.max_depth
    for f in (*COST_FIELDS, "layer_macs"):
        assert costs[f].dtype == np.int64
    for i, a in enumerate(archs):
        ref = arch_costs(a, config, seq_len)
        assert [int(costs[f][i]) for f in COST_FIELDS] == [getattr(ref, f) for f in COST_FIELDS], i
        layer_macs = [layer_costs(a, k, config, tokens).macs for k in range(a.depth)]
        assert costs["layer_macs"][i].tolist() == layer_macs + [0] * (L - a.depth), i


def test_transform_genes_matches_transform(case):
    space, config, seq_len, G, archs = case
    enc = FeatureEncoder(space, config, seq_len)
    X, ref = enc.transform_genes(G), enc.transform(archs)
    assert X.shape == ref.shape and X.dtype == np.float64
    logs = np.array([n.startswith("log1p_") for n in enc.names])
    np.testing.assert_array_equal(X[:, ~logs], ref[:, ~logs])
    np.testing.assert_allclose(X[:, logs], ref[:, logs], rtol=1e-12, atol=0)  # np.log1p vs math.log1p: ≤ 1 ulp


def test_predict_genes_matches_predict(case):
    space, config, seq_len, G, archs = case
    enc = FeatureEncoder(space, config, seq_len)
    train = archs[:60]
    y = np.log([arch_costs(a, config, seq_len).bitops for a in train])  # small synthetic target
    y = y + 0.01 * np.random.default_rng(0).standard_normal(len(y))
    # One GP fit (small space) covers the std path and keeps the file fast.
    for estimator in ["ridge", "gp"] if space.name == "small" else ["ridge"]:
        pred = SklearnPredictor(enc, CANDIDATES[estimator](0), "target", estimator).fit(train, y)
        mean, std = pred.predict_genes(G)
        ref_mean, ref_std = pred.predict_with_std(archs)
        np.testing.assert_allclose(mean, ref_mean, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(mean, pred.predict(archs), rtol=1e-9, atol=1e-12)
        if estimator == "gp":
            assert std is not None and ref_std is not None
            # The log1p columns may differ by 1 ulp (numpy's vs libm's log1p), and the GP's std at an arch next to
            # a training point is the square root of a near-cancelling difference, which magnifies that to ~1e-8.
            np.testing.assert_allclose(std, ref_std, rtol=1e-6, atol=1e-12)
        else:
            assert std is None and ref_std is None
        # The base class's row-by-row default gives the same answer as the vectorised override (GP sums in a
        # batch-size-dependent order, hence allclose).
        base_mean, _ = Predictor.predict_genes(pred, G[:50])
        np.testing.assert_allclose(base_mean, ref_mean[:50], rtol=1e-9)
        empty_mean, _ = pred.predict_genes(np.zeros((0, space.n_genes), dtype=np.int64))
        assert empty_mean.shape == (0,)


def test_empty_and_float_matrices(default_space):
    space = default_space
    enc = FeatureEncoder(space, IMAGE)
    empty = np.zeros((0, space.n_genes), dtype=np.int64)
    assert enc.transform_genes(empty).shape == (0, enc.n_features)
    assert costs_from_genes(space, IMAGE, empty)["layer_macs"].shape == (0, space.max_depth)
    G = random_genes(space, 30, seed=11)
    i = int(np.flatnonzero(np.asarray(space.depth)[G[:, 0]] < space.max_depth)[0])
    Gf = G.astype(np.float64)
    Gf[i, -1] = 1e300  # float garbage in an inactive slot is ignored and must not overflow the int64 cast
    np.testing.assert_array_equal(enc.transform_genes(Gf), enc.transform_genes(G))


def test_out_of_range_active_gene_raises_like_decode(default_space):
    space = default_space
    L, g0 = space.max_depth, len(GLOBAL_GENES)
    _, xu = space.gene_bounds()
    G = random_genes(space, 20, seed=5)
    G[:, 0] = 0  # depth 2: layers 0, 1 active
    bad = G.copy()
    j = g0 + 2 * L + 1  # w_bits gene of active layer 1
    bad[7, j] = xu[j] + 1
    bad[9, j] = -1  # a later row is also bad; the first one is reported
    with pytest.raises(ValueError, match=rf"gene {j}={xu[j] + 1} outside its bounds \[0, {xu[j]}\]") as e:
        space.decode(bad[7])
    with pytest.raises(ValueError, match=rf"^row 7: {re.escape(str(e.value))}$"):
        decode_genes(space, bad)
    for fn in (
        lambda g: canonical_genes_batch(space, g),
        lambda g: costs_from_genes(space, IMAGE, g),
        lambda g: FeatureEncoder(space, IMAGE).transform_genes(g),
    ):
        with pytest.raises(ValueError, match=rf"row 7: gene {j}="):
            fn(bad)
    # Global genes are always active: a bad embed_dim or depth gene raises too.
    for col, value in ((1, xu[1] + 3), (0, -2)):
        bad = G.copy()
        bad[3, col] = value
        with pytest.raises(ValueError, match=rf"row 3: gene {col}={value} outside its bounds \[0, {xu[col]}\]"):
            decode_genes(space, bad)
        with pytest.raises(ValueError, match=rf"gene {col}={value} outside"):
            space.decode(bad[3])
    # The same value in an inactive layer (layer 2 at depth 2) is ignored by both paths.
    ok = G.copy()
    ok[4, g0 + 2 * L + 2] = 99
    np.testing.assert_array_equal(decode_genes(space, ok).genes, decode_genes(space, G).genes)
    assert space.decode(ok[4]) == space.decode(G[4])


def test_bad_matrices_are_one_clear_error(small_space):
    space = small_space
    with pytest.raises(ValueError, match=rf"shape \(N, {space.n_genes}\)"):
        decode_genes(space, np.zeros(space.n_genes, dtype=np.int64))
    with pytest.raises(ValueError, match="shape"):
        decode_genes(space, np.zeros((2, space.n_genes + 1), dtype=np.int64))
    G = np.zeros((3, space.n_genes))
    G[1, 4] = 0.5
    with pytest.raises(ValueError, match=r"genes must be integers, got row 1"):
        decode_genes(space, G)
    G[1, 4] = np.nan
    with pytest.raises(ValueError, match="genes must be integers"):
        decode_genes(space, G)
    with pytest.raises(ValueError, match="seq_len=99 must be in"):
        costs_from_genes(space, LM, np.zeros((1, space.n_genes), dtype=np.int64), seq_len=99)


def test_costs_that_would_overflow_int64_are_refused(small_space):
    # 2·T²·heads·head_dim·32·32 BitOPs per layer exceeds int64 at T = 2**22; the vector path must not wrap silently.
    huge = ModelConfig(task="lm", block_size=2**22)
    with pytest.raises(ValueError, match=r"bitops of the largest archs .* exceed int64"):
        costs_from_genes(small_space, huge, np.zeros((1, small_space.n_genes), dtype=np.int64))
