"""`nas-search`: find the Pareto-optimal subnets of a trained supernet (see conf/search.yaml for every option).

    nas-search run=results/demo
    nas-search run=results/demo search.objectives=[accuracy,latency,bytes] search.algorithm=unsga3
    nas-search run=results/demo search.backend=optuna search.optuna.storage=postgresql+psycopg2://u:pw@db/nas

Real evaluations measure subnets of `<run>/supernet.safetensors` exactly like `nas-measure` (the task metric on the
fixed validation subset, latency of the extracted module, analytic costs). Rows `nas-measure` already measured with
the same supernet and settings are reused (`init_from`). Running the same command again continues the search.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from predictors.measure import kernel_table, latency_target
from predictors.measure_cli import (
    COST_COLUMNS,
    LATENCY_COLUMNS,
    SETTING_DEFAULTS,
    SETTINGS_NAME,
    accuracy_device,
    accuracy_kind,
    changed_settings,
    kernels_path,
    latency_config,
    prepare,
    quality_columns,
    reference_settings,
)
from predictors.table import MeasurementTable
from search.config import SearchConfig
from search.evaluators import SupernetEvaluator
from search.loop import RefinementSearch
from supernet.cli import run_or_exit

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def measurement_settings(cfg: DictConfig) -> dict[str, Any]:
    """What a measured value depends on: the supernet file, the latency settings, the validation data and where
    quality is evaluated (only when not on the CPU, so that searches started before that setting existed resume)."""
    artifact = Path(cfg.run) / "supernet.safetensors"
    out = {
        "supernet_sha256": hashlib.sha256(artifact.read_bytes()).hexdigest(),
        "latency": OmegaConf.to_container(cfg.latency, resolve=True),
        "latency_target": latency_target(latency_config(cfg)),
        "data_overrides": OmegaConf.to_container(cfg.data_overrides, resolve=True),
    }
    kind = accuracy_kind(cfg)
    return out if kind == SETTING_DEFAULTS["accuracy_device"] else {**out, "accuracy_device": kind}


def reusable_rows(cfg: DictConfig, settings: dict[str, Any], columns: list[str]) -> tuple[list[dict[str, str]], str]:
    """Rows of `cfg.init_from` measured with the same supernet and settings (else none), and a note saying why."""
    if not cfg.get("init_from"):
        return [], ""
    path = Path(cfg.init_from)
    meta_path = path.with_name(SETTINGS_NAME)
    if not path.is_file():
        return [], f"no measurements to reuse: {path} does not exist (run nas-measure first, or set init_from)"
    if not meta_path.is_file():
        return [], (f"not reusing {path}: it has no {SETTINGS_NAME} beside it, so what its rows were measured with "
                    "is unknown")  # fmt: skip
    saved = json.loads(meta_path.read_text())
    differ = changed_settings(saved, {**SETTING_DEFAULTS, **settings})
    if differ:
        return [], f"not reusing {path}: measured with other {', '.join(differ)}"
    header = path.read_text().split("\n", 1)[0].split(",")
    if any(c not in header for c in columns):
        return [], f"not reusing {path}: it lacks columns {[c for c in columns if c not in header]}"
    rows = list(MeasurementTable(path, header).rows.values())
    return rows, f"reusing {len(rows)} archs measured by nas-measure in {path}"


def build_search(cfg: DictConfig) -> RefinementSearch:
    """The search for a composed nas-search config (the supernet, its data, the evaluator, the backend)."""
    search_cfg = SearchConfig.from_dict(OmegaConf.to_container(cfg.search, resolve=True))
    net, batches, example, lat_cfg = prepare(cfg)
    columns = [*quality_columns(net.config.task), *LATENCY_COLUMNS, *COST_COLUMNS]
    kernels = kernel_table(lat_cfg, net.config, example, kernels_path(cfg))
    settings = {**measurement_settings(cfg), **reference_settings(net, kernels, example, lat_cfg)}
    evaluator = SupernetEvaluator(net, batches, example, lat_cfg, columns, settings, kernels, accuracy_device(cfg))
    provenance = {"run": str(cfg.run), "supernet_sha256": settings["supernet_sha256"]}
    if search_cfg.backend == "optuna":
        from search.optuna_backend import OptunaSearch

        return OptunaSearch(net.space, net.config, evaluator, search_cfg, cfg.out, provenance=provenance)
    if search_cfg.backend != "pymoo":
        raise ValueError(f"unknown search.backend {search_cfg.backend!r}; valid backends: ['pymoo', 'optuna']")
    search = RefinementSearch(net.space, net.config, evaluator, search_cfg, cfg.out, provenance=provenance)
    rows, note = reusable_rows(cfg, settings, columns)
    if note:
        print(f"nas-search: {note}")
    search.import_rows(rows)  # copied when the search runs, under its writer lock
    return search


@hydra.main(config_path=CONF_DIR, config_name="search", version_base=None)
def main(cfg: DictConfig) -> None:
    state = run_or_exit("nas-search", lambda: build_search(cfg).run())
    final = state["final"]
    print(
        f"nas-search: {final['n_evaluations']} evaluations, {final['front_size']} archs on the measured front, "
        f"HV {final['hypervolume']:.4f}; pareto.csv, pareto.png, hypervolume.png, search.json in {cfg.out}"
    )


if __name__ == "__main__":
    main()
