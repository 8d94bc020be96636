"""`nas-fit`: fit the accuracy and latency predictors on a run's measurements and audit them on held-out archs.

    nas-fit run=results/demo

Reads `<run>/predictors/measurements.csv` (written by `nas-measure`), fits each objective on the `fit` rows by
K-fold model selection (supernet-free: predictors/models.py), and audits the chosen model on the `holdout` rows it
never saw. Writes, next to the table: `<objective>.joblib` + `<objective>.json` (the predictor and its metadata),
`report.json` (CV table and held-out Kendall τ / MAPE per objective) and `scatter_<objective>.png`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import hydra
import matplotlib
import numpy as np
from omegaconf import DictConfig

from predictors.features import FeatureEncoder
from predictors.measure_cli import (
    CONF_DIR,
    SETTINGS_NAME,
    TABLE_NAME,
    check_settings,
    metric_columns,
    settings,
    table_columns,
)
from predictors.models import kendall_tau, mape, select_and_fit
from predictors.table import MeasurementTable
from supernet.artifact import read_metadata
from supernet.cli import run_or_exit

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def default_objectives(task: str) -> list[str]:
    """The task metric (accuracy, or LM loss) and CPU/GPU latency."""
    return [metric_columns(task)[0], "latency_ms"]


def scatter(measured: np.ndarray, predicted: np.ndarray, objective: str, tau: float, err: float, out: Path) -> None:
    """Predicted vs measured on the held-out archs, with τ and MAPE in the title."""
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    ax.scatter(measured, predicted, s=14, alpha=0.8)
    lo, hi = float(min(measured.min(), predicted.min())), float(max(measured.max(), predicted.max()))
    ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--")
    ax.set(xlabel=f"measured {objective}", ylabel=f"predicted {objective}",
           title=f"{objective}: held-out τ={tau:.3f}, MAPE={100 * err:.2f}% (n={len(measured)})")  # fmt: skip
    ax.title.set_fontsize(9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _saved_measurement_settings(out: Path) -> dict[str, Any]:
    """The table's own measurement settings: fitting may use other latency settings, not another supernet."""
    path = out / SETTINGS_NAME
    saved = json.loads(path.read_text()) if path.is_file() else {}
    return {k: v for k, v in saved.items() if k != "supernet_sha256"}


def label_reliability(rows: list[dict[str, str]], objective: str) -> float | None:
    """Kendall τ between the objective measured on two disjoint halves of the samples, over all measured archs
    (None for objectives without halves, such as latency)."""
    halves = [f"{objective}_h1", f"{objective}_h2"]
    if not rows or any(h not in rows[0] for h in halves):
        return None
    a, b = (np.asarray([float(r[h]) for r in rows]) for h in halves)
    return kendall_tau(a, b)


def fit_run(cfg: DictConfig) -> dict[str, Any]:
    """Fit and audit every objective; returns the report also written to `report.json`."""
    meta = read_metadata(Path(cfg.run))
    space, config = meta["space"], meta["model"]
    out = Path(cfg.out)
    path = out / TABLE_NAME
    if not path.is_file():
        raise ValueError(f"no measurements at {path}: run `nas-measure run={cfg.run}` first")
    check_settings(out, settings(cfg, Path(cfg.run)) | _saved_measurement_settings(out), create=False)
    table = MeasurementTable(path, table_columns(config.task))
    chosen = cfg.fit.objectives or default_objectives(config.task)
    objectives = [chosen] if isinstance(chosen, str) else list(chosen)
    unknown = [o for o in objectives if o not in table.columns or o in ("key", "genes", "split")]
    if unknown:
        raise ValueError(f"unknown objective(s) {unknown}; measured columns: {table.columns[3:]}")
    rows = list(table.rows.values())
    archs = [space.decode([int(g) for g in r["genes"].split()]) for r in rows]
    if any(a.key() != r["key"] for a, r in zip(archs, rows, strict=True)):
        raise ValueError(f"{path} does not belong to this run's space: its genes decode to other archs")
    fit_idx = [i for i, r in enumerate(rows) if r["split"] == "fit"]
    hold_idx = [i for i, r in enumerate(rows) if r["split"] == "holdout"]
    if len(hold_idx) < 5:
        raise ValueError(f"only {len(hold_idx)} held-out archs measured; measure more (n_archs) for an audit")
    encoder = FeatureEncoder(space, config)
    report: dict[str, Any] = {"run": str(cfg.run), "n_fit": len(fit_idx), "n_holdout": len(hold_idx),
                              "features": encoder.schema()["hash"], "objectives": {}}  # fmt: skip
    for objective in objectives:
        y = np.asarray([float(r[objective]) for r in rows])
        predictor, cv_table = select_and_fit([archs[i] for i in fit_idx], y[fit_idx], encoder, objective,
                                             k_folds=cfg.fit.k_folds, seed=cfg.seed)  # fmt: skip
        predictor.save(out)
        measured, predicted = y[hold_idx], predictor.predict([archs[i] for i in hold_idx])
        tau, err = kendall_tau(measured, predicted), mape(measured, predicted)
        scatter(measured, predicted, objective, tau, err, out / f"scatter_{objective}.png")
        report["objectives"][objective] = {"estimator": predictor.estimator, "holdout_kendall_tau": tau,
                                           "holdout_mape": err, "cv": cv_table}  # fmt: skip
        reliability = label_reliability(rows, objective)
        note = ""
        if reliability is not None:
            report["objectives"][objective]["label_split_half_tau"] = reliability
            note = f" (its labels on two halves of the images agree at τ={reliability:.3f})"
        print(f"nas-fit: {objective}: {predictor.estimator}, held-out τ={tau:.3f}, MAPE={100 * err:.2f}%{note}")
    (out / "report.json").write_text(json.dumps(report, indent=2, default=float))
    return report


@hydra.main(config_path=CONF_DIR, config_name="measure", version_base=None)
def main(cfg: DictConfig) -> None:
    run_or_exit("nas-fit", lambda: fit_run(cfg))
    print(f"nas-fit: predictors, report.json and scatter plots in {cfg.out}")


if __name__ == "__main__":
    main()
