"""Feature encoding, candidate predictors, model selection and persistence (predictors/features.py, models.py).

Targets are real, deterministic functions of the archs computed by the project's cost model (a latency-like
`a + b·MACs + c·depth` with small seeded noise, and log BitOPs), so the predictors face the structure they will meet.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from predictors.features import FeatureEncoder
from predictors.models import (
    CANDIDATES,
    Predictor,
    SklearnPredictor,
    fold_jobs,
    kendall_tau,
    mape,
    min_samples,
    select_and_fit,
)
from supernet import Arch, ModelConfig, SearchSpace, arch_costs

ROOT = Path(__file__).resolve().parents[1]
SPACES = {name: SearchSpace.from_yaml(ROOT / "conf" / "space" / f"{name}.yaml") for name in ("default", "small")}
CFG = ModelConfig(task="image")
N_TRAIN, N_TEST = 150, 60


def latency_like(archs: list[Arch], seed: int = 0) -> np.ndarray:
    """ms: fixed overhead + MAC-proportional time + per-layer launch cost, times 0.5 % seeded noise."""
    noise = np.random.default_rng(seed).standard_normal(len(archs))
    base = np.array([0.2 + 2e-6 * arch_costs(a, CFG).macs + 0.03 * a.depth for a in archs])
    return base * (1 + 0.005 * noise)


def log_bitops(archs: list[Arch]) -> np.ndarray:
    return np.log([arch_costs(a, CFG).bitops for a in archs])


def sample(space: SearchSpace, n: int, seed: int) -> list[Arch]:
    rng = np.random.default_rng(seed)
    return [space.sample(rng) for _ in range(n)]


@pytest.fixture(scope="module", params=sorted(SPACES))
def data(request):
    space = SPACES[request.param]
    archs = sample(space, N_TRAIN + N_TEST, seed=1)
    return space, FeatureEncoder(space, CFG), archs[:N_TRAIN], archs[N_TRAIN:]


@pytest.fixture(scope="module")
def fitted(data):
    """Model selection on the latency-like target; reused by the persistence tests."""
    _, enc, train, _ = data
    pred, table = select_and_fit(train, latency_like(train), enc, "latency", k_folds=5, seed=0)
    return pred, table


# ---- features -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("space_name", sorted(SPACES))
def test_features_fixed_width_and_names(space_name):
    space = SPACES[space_name]
    enc = FeatureEncoder(space, CFG)
    X = enc.transform([space.smallest(), space.largest(), *sample(space, 20, 0)])
    assert X.shape == (22, enc.n_features) and X.dtype == np.float64 and np.all(np.isfinite(X))
    assert len(enc.names) == len(set(enc.names)) == enc.n_features
    assert enc.names == FeatureEncoder(space, CFG).names  # stable order
    for i in range(space.max_depth):
        assert f"layer{i}.active" in enc.names and f"layer{i}.macs" in enc.names
    for c in ("depth", "embed_dim", "a_bits", "params", "macs", "bitops", "bytes", "log1p_macs"):
        assert c in enc.names
    assert enc.transform([]).shape == (0, enc.n_features)


def test_features_values_match_the_arch_and_cost_model():
    space = SPACES["default"]
    enc = FeatureEncoder(space, CFG)
    a = Arch(3, 96, (1, 2, 4), (1.0, 2.0, 4.0), (1, 8, 32), a_bits=8)
    row = dict(zip(enc.names, enc.transform([a])[0], strict=True))
    costs = arch_costs(a, CFG)
    assert (row["depth"], row["embed_dim"], row["a_bits"]) == (3, 96, 8)
    assert (row["layer1.num_heads"], row["layer1.mlp_ratio"], row["layer1.w_bits"]) == (2, 2.0, 8)
    assert row["layer2.ffn_hidden"] == 384 and row["layer2.active"] == 1
    assert row["macs"] == costs.macs and row["bytes"] == costs.bytes
    assert row["log1p_bitops"] == pytest.approx(np.log1p(costs.bitops))
    assert row["n_layers_w8"] == 1 and row["n_layers_w2"] == 0
    for i in range(3, space.max_depth):
        assert all(row[f"layer{i}.{f}"] == 0 for f in ("active", "num_heads", "mlp_ratio", "w_bits", "macs"))


@pytest.mark.parametrize("space_name", sorted(SPACES))
def test_inactive_layers_are_masked(space_name):
    space = SPACES[space_name]
    enc = FeatureEncoder(space, CFG)
    rng = np.random.default_rng(3)
    xl, xu = space.gene_bounds()
    L, n_global = space.max_depth, 3
    checked = 0
    for _ in range(40):
        g1 = rng.integers(xl, xu + 1)
        d = space.depth[g1[0]]
        if d == L:
            continue
        g2 = g1.copy()
        for k in range(3):  # num_heads, mlp_ratio, w_bits blocks: scramble the inactive slots only
            lo = n_global + k * L
            g2[lo + d : lo + L] = rng.integers(xl[lo + d : lo + L], xu[lo + d : lo + L] + 1)
            g2[lo + d] = (g1[lo + d] + 1) % (xu[lo + d] + 1)  # make sure at least one gene differs
        assert not np.array_equal(g1, g2)
        X = enc.transform([space.decode(g1), space.decode(g2)])
        np.testing.assert_array_equal(X[0], X[1])
        checked += 1
    assert checked >= 10


def test_encoder_rejects_archs_outside_the_space():
    enc = FeatureEncoder(SPACES["small"], CFG)
    with pytest.raises(ValueError, match="embed_dim=96"):
        enc.transform([Arch(2, 96, (2, 2), (2.0, 2.0), (8, 8))])


def test_schema_changes_with_space_and_config():
    s = FeatureEncoder(SPACES["default"], CFG).schema()
    assert s["names"] and s["space_fingerprint"] == SPACES["default"].fingerprint() and len(s["hash"]) == 16
    assert FeatureEncoder(SPACES["default"], CFG).schema() == s
    assert FeatureEncoder(SPACES["small"], CFG).schema()["hash"] != s["hash"]
    assert FeatureEncoder(SPACES["default"], ModelConfig(task="image", num_classes=100)).schema()["hash"] != s["hash"]
    lm = ModelConfig(task="lm", block_size=32)
    assert (
        FeatureEncoder(SPACES["default"], lm, seq_len=16).schema()["hash"]
        != FeatureEncoder(SPACES["default"], lm).schema()["hash"]
    )


# ---- scores -------------------------------------------------------------------------------------------------------


def test_score_helpers():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert kendall_tau([1, 2, 3], [5, 5, 5]) == 0.0  # constant predictions carry no ranking
    assert mape([100, 200], [103, 194]) == pytest.approx(0.03)
    with pytest.raises(ValueError, match="shape"):
        kendall_tau([1, 2], [1, 2, 3])


# ---- candidates and selection -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CANDIDATES))
def test_each_candidate_fits_and_predicts(name):
    space = SPACES["default"]
    enc = FeatureEncoder(space, CFG)
    train, test = sample(space, 80, 5), sample(space, 20, 6)
    pred = SklearnPredictor(enc, CANDIDATES[name](0), "latency", name).fit(train, latency_like(train))
    assert isinstance(pred, Predictor) and pred.n_train == 80
    p = pred.predict(test)
    assert p.shape == (20,) and np.all(np.isfinite(p))
    mean, std = pred.predict_with_std(test)
    np.testing.assert_allclose(mean, p)
    if name == "gp":
        assert std is not None and std.shape == (20,) and np.all(std > 0)
    else:
        assert std is None
    assert kendall_tau(latency_like(test), p) > 0.5, name  # every candidate learns the trend


def test_select_and_fit_ranks_held_out_archs(data, fitted):
    test = data[3]
    pred, table = fitted
    assert [r["name"] for r in table] == list(CANDIDATES)
    assert sum(r["chosen"] for r in table) == 1
    chosen = next(r for r in table if r["chosen"])
    assert chosen["name"] == pred.estimator and pred.n_train == N_TRAIN
    scored = [r for r in table if "error" not in r]
    assert chosen["kendall_tau"] >= max(r["kendall_tau"] for r in scored) - 1e-3
    y_test = latency_like(test, seed=2)
    p = pred.predict(test)
    assert kendall_tau(y_test, p) >= 0.9
    assert mape(y_test, p) <= 0.05
    assert pred.cv_scores["kendall_tau"] == chosen["kendall_tau"]


def test_folds_in_parallel_score_exactly_as_in_series(monkeypatch):
    """The folds run on threads, one per core: every candidate's CV scores are the same as fold by fold. Two jobs are
    forced (on a one-core machine fold_jobs would give one, and the test would compare serial with serial), and the
    fits are seen to run on more than one thread."""
    import threading

    import predictors.models as models

    space = SPACES["default"]
    archs = sample(space, 80, seed=4)
    args = (archs, latency_like(archs), FeatureEncoder(space, CFG), "latency")
    assert 1 <= fold_jobs(5) <= 5 and fold_jobs(1) == 1
    from sklearn.linear_model import RidgeCV

    threads: set[int] = set()
    fit = RidgeCV.fit

    def traced(self, *a, **k):  # the ridge candidate's estimator, noting the thread each fit runs on
        threads.add(threading.get_ident())
        return fit(self, *a, **k)

    monkeypatch.setattr(RidgeCV, "fit", traced)  # on the class: cross-validation fits clones
    monkeypatch.setattr(models, "fold_jobs", lambda k: 2)
    _, parallel = select_and_fit(*args, candidates=["ridge", "gbrt"])
    assert len(threads - {threading.get_ident()}) >= 1, threads  # folds fitted off the main thread
    monkeypatch.setattr(models, "fold_jobs", lambda k: 1)
    _, serial = select_and_fit(*args, candidates=["ridge", "gbrt"])
    for a, b in zip(parallel, serial, strict=True):
        assert (a["name"], a["kendall_tau"], a["mape"], a["chosen"]) == (b["name"], b["kendall_tau"], b["mape"],
                                                                          b["chosen"])  # fmt: skip


def test_select_and_fit_on_log_bitops():
    space = SPACES["default"]
    enc = FeatureEncoder(space, CFG)
    archs = sample(space, N_TRAIN + N_TEST, 9)
    y = log_bitops(archs)
    pred, _ = select_and_fit(archs[:N_TRAIN], y[:N_TRAIN], enc, "log_bitops", candidates=["ridge", "gp"])
    assert kendall_tau(y[N_TRAIN:], pred.predict(archs[N_TRAIN:])) >= 0.9


def test_gp_gives_std_through_selection():
    space = SPACES["small"]
    enc = FeatureEncoder(space, CFG)
    archs = sample(space, 60, 4)
    pred, _ = select_and_fit(archs, latency_like(archs), enc, "latency", candidates=["gp"])
    mean, std = pred.predict_with_std(sample(space, 10, 8))
    assert pred.estimator == "gp" and std is not None and std.shape == mean.shape == (10,)
    assert np.all(np.isfinite(std)) and np.all(std >= 0)


def test_too_few_samples_is_one_clear_error():
    space = SPACES["default"]
    enc = FeatureEncoder(space, CFG)
    archs = sample(space, min_samples(5) - 1, 0)
    with pytest.raises(ValueError, match=r"6 labelled archs for 'latency' are too few: 5-fold CV needs at least 7"):
        select_and_fit(archs, latency_like(archs), enc, "latency", k_folds=5)
    with pytest.raises(ValueError, match="too few"):
        select_and_fit([], [], enc, "latency")
    # exactly the minimum works (candidates that cannot cope with 5 training rows are reported, not fatal)
    archs = sample(space, min_samples(5), 0)
    pred, table = select_and_fit(archs, latency_like(archs), enc, "latency", candidates=["ridge", "mlp"])
    assert pred.estimator == "ridge" and {r["name"] for r in table} == {"ridge", "mlp"}


def test_constant_or_bad_target_is_one_clear_error():
    space = SPACES["small"]
    enc = FeatureEncoder(space, CFG)
    archs = sample(space, 20, 0)
    with pytest.raises(ValueError, match="all 20 'acc' values are equal"):
        select_and_fit(archs, np.full(20, 0.5), enc, "acc")
    with pytest.raises(ValueError, match="NaN or infinite"):
        select_and_fit(archs, [np.nan] + [1.0] * 19, enc, "acc")
    with pytest.raises(ValueError, match="20 archs but 19 target"):
        select_and_fit(archs, np.arange(19.0), enc, "acc")
    with pytest.raises(ValueError, match="unknown predictor candidate"):
        select_and_fit(archs, np.arange(20.0), enc, "acc", candidates=["forest"])
    with pytest.raises(ValueError, match="objective name"):
        select_and_fit(archs, np.arange(20.0), enc, "../acc")


# ---- persistence --------------------------------------------------------------------------------------------------


def test_save_load_round_trip(data, fitted, tmp_path):
    space, enc, _, test = data
    pred, _ = fitted
    path = pred.save(tmp_path)
    assert path == tmp_path / "latency.joblib" and (tmp_path / "latency.json").is_file()
    meta = json.loads((tmp_path / "latency.json").read_text())
    assert meta["objective"] == "latency" and meta["estimator"] == pred.estimator and meta["n_train"] == N_TRAIN
    assert meta["space_fingerprint"] == space.fingerprint() and meta["feature_schema"] == enc.schema()
    assert {"python", "numpy", "sklearn"} <= set(meta["versions"]) and "kendall_tau" in meta["cv_scores"]
    loaded = SklearnPredictor.load(tmp_path, "latency", space, CFG)
    np.testing.assert_array_equal(loaded.predict(test), pred.predict(test))
    m1, s1 = pred.predict_with_std(test)
    m2, s2 = loaded.predict_with_std(test)
    np.testing.assert_array_equal(m1, m2)
    assert (s1 is None and s2 is None) or np.array_equal(s1, s2)
    assert loaded.estimator == pred.estimator and loaded.n_train == N_TRAIN


def test_load_refuses_another_space_or_config(data, fitted, tmp_path):
    space, _, _, _ = data
    pred, _ = fitted
    pred.save(tmp_path)
    other = SPACES["small" if space.name == "default" else "default"]
    with pytest.raises(ValueError, match=r"another search space.*re-fit"):
        SklearnPredictor.load(tmp_path, "latency", other, CFG)
    with pytest.raises(ValueError, match=r"another feature schema \(model config differs in num_classes"):
        SklearnPredictor.load(tmp_path, "latency", space, ModelConfig(task="image", num_classes=100))


def test_load_refuses_tampered_or_orphaned_files(data, fitted, tmp_path):
    space, _, _, _ = data
    pred, _ = fitted
    pred.save(tmp_path)
    meta_path = tmp_path / "latency.json"
    good = meta_path.read_text()

    meta = json.loads(good)
    meta["feature_schema"]["names"] = meta["feature_schema"]["names"][:-1]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"another feature schema \(feature names differ.*re-fit"):
        SklearnPredictor.load(tmp_path, "latency", space, CFG)

    meta = json.loads(good)
    meta["feature_schema"]["hash"] = "0" * 16
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="another feature schema"):
        SklearnPredictor.load(tmp_path, "latency", space, CFG)

    meta = json.loads(good)
    meta["versions"]["sklearn"] = "0.0"
    meta_path.write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="saved with scikit-learn 0.0"):
        SklearnPredictor.load(tmp_path, "latency", space, CFG)

    meta_path.write_text(good)
    with (tmp_path / "latency.joblib").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match="checksum"):
        SklearnPredictor.load(tmp_path, "latency", space, CFG)

    meta_path.write_text("{not json")
    with pytest.raises(ValueError, match="unreadable"):
        SklearnPredictor.load(tmp_path, "latency", space, CFG)

    meta_path.unlink()  # a pickle without its metadata is never loaded
    with pytest.raises(ValueError, match=r"no predictor metadata .*latency\.json"):
        SklearnPredictor.load(tmp_path, "latency", space, CFG)
    with pytest.raises(ValueError, match="no predictor metadata"):
        SklearnPredictor.load(tmp_path / "missing", "latency", space, CFG)
