"""Lightly trained predictors of one objective (accuracy, latency, ...) from arch features.

`Predictor` is the interface the search uses without knowing the estimator behind it. `SklearnPredictor` wraps a
scikit-learn `Pipeline` (scaler + estimator) and a `FeatureEncoder`. `select_and_fit` scores every candidate in
`CANDIDATES` by K-fold cross-validation on out-of-fold predictions (Kendall τ first, MAPE to break ties) and refits
the winner on all data.

Persistence: `<objective>.joblib` (the pipeline) beside `<objective>.json` (metadata: library versions, space
fingerprint, feature schema, CV scores, a SHA-256 of the joblib file). A pickle is only ever loaded when its JSON sits
beside it, its checksum matches, and the space and feature schema match the caller's.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import sklearn
from scipy.stats import kendalltau
from sklearn.compose import TransformedTargetRegressor
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel
from sklearn.linear_model import RidgeCV
from sklearn.metrics import mean_absolute_percentage_error
from sklearn.model_selection import GridSearchCV, KFold, cross_val_predict
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVR
from threadpoolctl import ThreadpoolController

from predictors.features import FeatureEncoder
from supernet.arch import Arch
from supernet.config import ModelConfig
from supernet.device_lock import machine_cores
from supernet.space import SearchSpace

REFIT_HINT = "re-fit it with `nas-fit run=<run dir>` on this run's measurements"
TAU_TIE_TOL = 1e-3  # candidates within this Kendall τ of the best are ranked by MAPE
_OBJECTIVE_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


# ---- scores -------------------------------------------------------------------------------------------------------


def kendall_tau(y_true: Sequence[float] | np.ndarray, y_pred: Sequence[float] | np.ndarray) -> float:
    """Kendall τ-b between measured and predicted values; 0.0 when either side is constant (no ranking information)."""
    t, p = np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float)
    if t.shape != p.shape:
        raise ValueError(f"y_true has shape {t.shape} but y_pred has shape {p.shape}")
    if t.size < 2 or np.ptp(t) == 0 or np.ptp(p) == 0:
        return 0.0
    return float(kendalltau(t, p).statistic)


def mape(y_true: Sequence[float] | np.ndarray, y_pred: Sequence[float] | np.ndarray) -> float:
    """Mean absolute percentage error as a fraction (0.03 = 3 %), via scikit-learn."""
    return float(mean_absolute_percentage_error(np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float)))


# ---- candidates ---------------------------------------------------------------------------------------------------


def _scaled(estimator: Any) -> Pipeline:
    return Pipeline([("scale", StandardScaler()), ("model", estimator)])


def _target_scaled(regressor: Any) -> TransformedTargetRegressor:
    # SVR's epsilon and the MLP's initialisation assume unit-scale targets (latency in ms, accuracy in [0, 1]).
    return TransformedTargetRegressor(regressor=regressor, transformer=StandardScaler())


def make_ridge(seed: int = 0) -> Pipeline:
    return _scaled(RidgeCV(alphas=np.logspace(-4, 3, 15)))


def make_svr(seed: int = 0) -> Pipeline:
    grid = {"regressor__C": [1.0, 10.0, 100.0], "regressor__epsilon": [0.01, 0.1]}
    return _scaled(
        GridSearchCV(_target_scaled(SVR(kernel="rbf", gamma="scale")), grid, cv=3, scoring="neg_mean_absolute_error")
    )


def make_gbrt(seed: int = 0) -> Pipeline:
    gbr = GradientBoostingRegressor(n_estimators=300, learning_rate=0.05, max_depth=3, subsample=0.8, random_state=seed)
    return _scaled(gbr)


def make_mlp(seed: int = 0) -> Pipeline:
    mlp = MLPRegressor(
        hidden_layer_sizes=(64, 32),
        alpha=1e-3,
        learning_rate_init=3e-3,
        max_iter=2000,
        early_stopping=True,
        validation_fraction=0.15,
        n_iter_no_change=30,
        random_state=seed,
    )
    return _scaled(_target_scaled(mlp))


def make_gp(seed: int = 0) -> Pipeline:
    kernel = ConstantKernel(1.0, (1e-3, 1e5)) * Matern(
        length_scale=5.0, length_scale_bounds=(1e-2, 1e5), nu=2.5
    ) + WhiteKernel(1e-3, (1e-9, 1.0))
    gp = GaussianProcessRegressor(kernel=kernel, normalize_y=True, n_restarts_optimizer=2, random_state=seed)
    return _scaled(gp)


# name -> factory(seed) of an unfitted Pipeline. A new entry is cross-validated by `select_and_fit` automatically.
CANDIDATES: dict[str, Callable[[int], Pipeline]] = {
    "ridge": make_ridge,
    "svr": make_svr,
    "gbrt": make_gbrt,
    "mlp": make_mlp,
    "gp": make_gp,
}


# ---- the interface ------------------------------------------------------------------------------------------------


class Predictor(ABC):
    """Predicts one objective of archs.

    Call order: `fit(archs, y)` -> `predict(archs)` / `predict_with_std(archs)` (any number of times) -> `save(dir)`.
    `load(dir, objective, space, config)` is a classmethod that returns a predictor ready to predict, refusing files
    written for another space or feature schema.
    """

    objective: str

    @abstractmethod
    def fit(self, archs: Sequence[Arch], y: Sequence[float] | np.ndarray) -> Predictor:
        """Fit on measured archs; returns self."""

    @abstractmethod
    def predict(self, archs: Sequence[Arch]) -> np.ndarray:
        """Predicted objective values, shape (len(archs),)."""

    def predict_with_std(self, archs: Sequence[Arch]) -> tuple[np.ndarray, np.ndarray | None]:
        """(mean, std); std is None for estimators that give no uncertainty."""
        return self.predict(archs), None

    @property
    def space(self) -> SearchSpace:
        """The search space whose genes `predict_genes` decodes."""
        raise NotImplementedError(f"{type(self).__name__} does not know its search space; override `space`")

    def predict_genes(self, G: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """`predict_with_std` of the archs of a gene matrix (N, n_genes) of `self.space`. This default decodes row by
        row; subclasses that can encode a whole matrix at once override it (the search scores thousands per call)."""
        return self.predict_with_std([self.space.decode(g) for g in np.asarray(G)])

    @abstractmethod
    def save(self, path_dir: str | Path) -> Path:
        """Persist into `path_dir`; returns the path of the main file."""

    @classmethod
    @abstractmethod
    def load(cls, path_dir: str | Path, objective: str, space: SearchSpace, config: ModelConfig) -> Predictor:
        """Load a predictor saved by `save`, checked against `space` and `config`."""


_THREADPOOLS: ThreadpoolController | None = None


def _one_blas_thread() -> Any:
    """Context manager limiting BLAS to one thread (the controller is built once: inspecting libraries is slow)."""
    global _THREADPOOLS
    if _THREADPOOLS is None:
        _THREADPOOLS = ThreadpoolController()
    return _THREADPOOLS.limit(limits=1, user_api="blas")


@contextmanager
def _serial_quiet() -> Iterator[None]:
    """One BLAS thread and no ConvergenceWarnings while fitting.

    The matrices are tiny (hundreds of rows); a multi-threaded BLAS gains nothing on them and, on a busy machine,
    made GP fits 50-100x slower in our measurements. Convergence warnings (GP hyperparameters at a bound, MLP early
    stopping) are expected on small data; CV scores, not warnings, judge the candidates.
    """
    with _one_blas_thread(), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


def fold_jobs(k_folds: int) -> int:
    """Folds cross-validated at once: one per usable core. Threads, not processes: a fold takes a second at most,
    less than starting a worker process, and the estimators spend it in compiled code that releases the GIL."""
    return max(1, min(machine_cores(), k_folds))


def _check_objective(objective: str) -> str:
    if not isinstance(objective, str) or not _OBJECTIVE_RE.match(objective):
        raise ValueError(f"objective name {objective!r} must be letters, digits, '_', '.', '-' (it names files)")
    return objective


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _schema_difference(saved: dict[str, Any], current: dict[str, Any]) -> str:
    """Short text naming what differs between two feature schemas."""
    if saved.get("version") != current["version"]:
        return f"feature version {saved.get('version')} vs {current['version']}"
    s_cfg, c_cfg = saved.get("model_config") or {}, current["model_config"]
    diff = [
        f"{k} ({s_cfg.get(k)!r} vs {c_cfg.get(k)!r})"
        for k in sorted(set(s_cfg) | set(c_cfg))
        if s_cfg.get(k) != c_cfg.get(k)
    ]
    if diff:
        return "model config differs in " + ", ".join(diff)
    if saved.get("seq_len") != current["seq_len"]:
        return f"seq_len {saved.get('seq_len')} vs {current['seq_len']}"
    if saved.get("names") != current["names"]:
        return f"feature names differ ({len(saved.get('names') or [])} saved vs {len(current['names'])} now)"
    return f"schema hash {saved.get('hash')} vs {current['hash']}"


class SklearnPredictor(Predictor):
    """A scikit-learn Pipeline on `FeatureEncoder` rows."""

    def __init__(
        self,
        encoder: FeatureEncoder,
        pipeline: Pipeline,
        objective: str,
        estimator: str = "custom",
        cv_scores: dict[str, Any] | None = None,
    ) -> None:
        self.encoder = encoder
        self.pipeline = pipeline
        self.objective = _check_objective(objective)
        self.estimator = estimator
        self.cv_scores = cv_scores or {}
        self.n_train = 0

    def fit(self, archs: Sequence[Arch], y: Sequence[float] | np.ndarray) -> SklearnPredictor:
        X, yy = _xy(archs, y, self.encoder)
        with _serial_quiet():
            self.pipeline.fit(X, yy)
        self.n_train = len(yy)
        return self

    def predict(self, archs: Sequence[Arch]) -> np.ndarray:
        return self.predict_with_std(archs)[0]

    @property
    def space(self) -> SearchSpace:
        return self.encoder.space

    def predict_with_std(self, archs: Sequence[Arch]) -> tuple[np.ndarray, np.ndarray | None]:
        return self._predict_features(self.encoder.transform(archs))

    def predict_genes(self, G: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        return self._predict_features(self.encoder.transform_genes(G))

    def _predict_features(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(mean, std) of the pipeline on feature rows; std only from a Gaussian process."""
        has_std = isinstance(self.pipeline[-1], GaussianProcessRegressor)
        if len(X) == 0:
            return np.zeros(0), (np.zeros(0) if has_std else None)
        with _one_blas_thread():
            if has_std:
                mean, std = self.pipeline.predict(X, return_std=True)
                return np.asarray(mean, dtype=float), np.asarray(std, dtype=float)
            return np.asarray(self.pipeline.predict(X), dtype=float), None

    # ---- persistence -------------------------------------------------------------------------------------------------

    def save(self, path_dir: str | Path) -> Path:
        d = Path(path_dir)
        d.mkdir(parents=True, exist_ok=True)
        model_path, meta_path = d / f"{self.objective}.joblib", d / f"{self.objective}.json"
        _atomic_write(model_path, lambda p: joblib.dump(self.pipeline, p))
        meta = {
            "objective": self.objective,
            "estimator": self.estimator,
            "n_train": self.n_train,
            "cv_scores": self.cv_scores,
            "space_fingerprint": self.encoder.space.fingerprint(),
            "space": self.encoder.space.to_dict(),
            "feature_schema": self.encoder.schema(),
            "joblib_sha256": _sha256(model_path),
            "versions": {
                "python": platform.python_version(),
                "numpy": np.__version__,
                "sklearn": sklearn.__version__,
                "joblib": joblib.__version__,
            },
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        # The JSON is written last: a pickle without its metadata is never loaded.
        _atomic_write(meta_path, lambda p: p.write_text(json.dumps(meta, indent=2) + "\n"))
        return model_path

    @classmethod
    def load(cls, path_dir: str | Path, objective: str, space: SearchSpace, config: ModelConfig) -> SklearnPredictor:
        d = Path(path_dir)
        _check_objective(objective)
        model_path, meta_path = d / f"{objective}.joblib", d / f"{objective}.json"
        if not meta_path.is_file():
            raise ValueError(
                f"no predictor metadata {meta_path} (a .joblib is only loaded beside its .json); {REFIT_HINT}"
            )
        if not model_path.is_file():
            raise ValueError(f"predictor file {model_path} is missing beside {meta_path.name}; {REFIT_HINT}")
        try:
            meta = json.loads(meta_path.read_text())
            saved_schema = meta["feature_schema"]
            saved_fp, saved_sha = meta["space_fingerprint"], meta["joblib_sha256"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"predictor metadata {meta_path} is unreadable ({e}); {REFIT_HINT}") from None
        if meta.get("objective") != objective:
            raise ValueError(
                f"{meta_path} describes objective {meta.get('objective')!r}, not {objective!r}; {REFIT_HINT}"
            )
        if saved_fp != space.fingerprint():
            raise ValueError(
                f"predictor {objective!r} in {d} was fitted on another search space (fingerprint {saved_fp}, "
                f"space '{(meta.get('space') or {}).get('name')}') than space '{space.name}' ({space.fingerprint()}); "
                f"{REFIT_HINT}"
            )
        if not isinstance(saved_schema, dict):
            raise ValueError(f"predictor metadata {meta_path} has no feature schema; {REFIT_HINT}")
        encoder = FeatureEncoder(space, config, saved_schema.get("seq_len"))
        current = encoder.schema()
        if saved_schema.get("hash") != current["hash"] or saved_schema.get("names") != current["names"]:
            what = _schema_difference(saved_schema, current)
            raise ValueError(f"predictor {objective!r} in {d} has another feature schema ({what}); {REFIT_HINT}")
        if _sha256(model_path) != saved_sha:
            raise ValueError(f"{model_path} does not match the checksum in {meta_path.name} (changed?); {REFIT_HINT}")
        saved_sk = (meta.get("versions") or {}).get("sklearn")
        if saved_sk != sklearn.__version__:
            warnings.warn(
                f"predictor {objective!r} was saved with scikit-learn {saved_sk}, loading with {sklearn.__version__}; "
                f"if predictions look wrong, {REFIT_HINT}",
                stacklevel=2,
            )
        pipeline = joblib.load(model_path)
        pred = cls(encoder, pipeline, objective, meta.get("estimator", "custom"), meta.get("cv_scores"))
        pred.n_train = int(meta.get("n_train", 0))
        return pred


# ---- model selection ----------------------------------------------------------------------------------------------


def _xy(
    archs: Sequence[Arch], y: Sequence[float] | np.ndarray, encoder: FeatureEncoder
) -> tuple[np.ndarray, np.ndarray]:
    yy = np.asarray(y, dtype=np.float64).reshape(-1)
    if len(archs) != len(yy):
        raise ValueError(f"got {len(archs)} archs but {len(yy)} target values")
    if not np.all(np.isfinite(yy)):
        raise ValueError(f"{int(np.sum(~np.isfinite(yy)))} target value(s) are NaN or infinite; drop those archs")
    return encoder.transform(archs), yy


def min_samples(k_folds: int) -> int:
    """Fewest labelled archs `select_and_fit` accepts for `k_folds`-fold CV."""
    return k_folds + 2


def out_of_fold(name: str, X: np.ndarray, y: np.ndarray, k_folds: int = 5, seed: int = 0) -> np.ndarray:
    """Out-of-fold predictions of candidate `name` on encoded features `X`: a seeded, shuffled K-fold, the folds run
    on threads (one per core)."""
    folds = KFold(n_splits=k_folds, shuffle=True, random_state=seed)
    with _serial_quiet(), joblib.parallel_config(backend="threading"):
        return cross_val_predict(CANDIDATES[name](seed), X, y, cv=folds, n_jobs=fold_jobs(k_folds))


def select_and_fit(
    archs: Sequence[Arch],
    y: Sequence[float] | np.ndarray,
    encoder: FeatureEncoder,
    objective: str,
    k_folds: int = 5,
    seed: int = 0,
    candidates: Sequence[str] | None = None,
) -> tuple[SklearnPredictor, list[dict[str, Any]]]:
    """Cross-validate the `candidates` (default: all of `CANDIDATES`) and refit the best one on all data.

    Each candidate gets out-of-fold predictions from `cross_val_predict` over a seeded, shuffled `KFold`; it is scored
    by Kendall τ and MAPE on them. The winner has the highest τ; candidates within `TAU_TIE_TOL` of it are ranked by
    lower MAPE. Returns the fitted predictor and the CV table (one dict per candidate: name, kendall_tau, mape,
    seconds, chosen; error instead of scores if the candidate failed to fit).
    """
    _check_objective(objective)
    if k_folds < 2:
        raise ValueError(f"k_folds={k_folds} must be at least 2")
    names = list(CANDIDATES) if candidates is None else list(candidates)
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown or not names:
        raise ValueError(f"unknown predictor candidate(s) {unknown}; choose from {sorted(CANDIDATES)}")
    X, yy = _xy(archs, y, encoder)
    need = min_samples(k_folds)
    if len(yy) < need:
        raise ValueError(
            f"{len(yy)} labelled archs for '{objective}' are too few: {k_folds}-fold CV needs at least {need}; "
            "measure more archs or lower k_folds"
        )
    if len(np.unique(yy)) < 2:
        raise ValueError(
            f"all {len(yy)} '{objective}' values are equal ({yy[0]:g}): at least 2 distinct values are needed to fit "
            "a predictor; check the measurements"
        )
    table: list[dict[str, Any]] = []
    for name in names:
        t0 = time.perf_counter()
        try:
            oof = out_of_fold(name, X, yy, k_folds, seed)
        except (ValueError, np.linalg.LinAlgError, FloatingPointError) as e:
            table.append({"name": name, "error": f"{type(e).__name__}: {e}", "seconds": time.perf_counter() - t0})
            continue
        row = {"name": name, "kendall_tau": kendall_tau(yy, oof), "mape": mape(yy, oof)}
        row["seconds"] = time.perf_counter() - t0
        table.append(row)
    scored = [r for r in table if "error" not in r and np.isfinite(r["mape"])]
    if not scored:
        errors = "; ".join(f"{r['name']}: {r.get('error', 'non-finite MAPE')}" for r in table)
        raise ValueError(f"no predictor candidate could be fitted for '{objective}': {errors}")
    best_tau = max(r["kendall_tau"] for r in scored)
    best = min((r for r in scored if r["kendall_tau"] >= best_tau - TAU_TIE_TOL), key=lambda r: r["mape"])
    for r in table:
        r["chosen"] = r is best
    cv_scores = {
        "k_folds": k_folds,
        "seed": seed,
        "kendall_tau": best["kendall_tau"],
        "mape": best["mape"],
        "table": [{k: v for k, v in r.items() if k != "chosen"} for r in table],
    }
    pred = SklearnPredictor(encoder, CANDIDATES[best["name"]](seed), objective, best["name"], cv_scores)
    return pred.fit(archs, yy), table
