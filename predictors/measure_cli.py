"""`nas-measure`: measure candidate subnets of a trained supernet into a resumable table.

    nas-measure run=results/demo n_archs=250 latency.threads=1
    nas-measure run=results/demo merge=/from/another/machine/predictors   # add its rows, measure nothing

Reads `<run>/supernet.safetensors` (space, model config, weights, and the data config it was trained with) and
writes `<run>/predictors/measurements.csv`: one row per arch with the canonical key, genes, split (fit/holdout),
the task metric on the fixed validation subset, latency (median, IQR, CV) and analytic costs. Archs already in the
table are skipped, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from predictors.measure import (
    LatencyConfig,
    accuracy_target,
    candidate_archs,
    check_device,
    fixed_batches,
    kernel_table,
    latency_target,
    measure_arch,
    paired_reference,
)
from predictors.merge import merge_table
from predictors.settings import SETTING_DEFAULTS, SETTINGS_NAME, TABLE_NAME, changed_settings
from predictors.table import MeasurementTable, writer_lock
from supernet.arch import Arch
from supernet.artifact import load_supernet
from supernet.cli import run_or_exit
from supernet.model import Supernet
from supernet.space import SearchSpace

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
COST_COLUMNS = ["params", "macs", "bitops", "bytes"]
LATENCY_COLUMNS = ["latency_ms", "latency_iqr_ms", "latency_cv"]
KERNELS_NAME = "kernels.json"


def quality_columns(task: str) -> list[str]:
    """The task metric first: accuracy (%), or the LM's loss and bits per byte."""
    return ["loss", "bpc"] if task == "lm" else ["accuracy"]


def metric_columns(task: str) -> list[str]:
    """The quality columns of a measurement table: the task metric, then its value on each half of the samples."""
    first = quality_columns(task)[0]
    return [*quality_columns(task), f"{first}_h1", f"{first}_h2"]


def table_columns(task: str) -> list[str]:
    return ["key", "genes", "split", *metric_columns(task), *LATENCY_COLUMNS, *COST_COLUMNS, "seconds"]


def split_of(arch: Arch, holdout_fraction: float, seed: int) -> str:
    """'holdout' for a stable, seeded fraction of archs (by a hash of the key), else 'fit'."""
    h = int.from_bytes(hashlib.sha256(f"{seed}:{arch.key()}".encode()).digest()[:8], "little") / 2**64
    return "holdout" if h < holdout_fraction else "fit"


def genes_text(space: SearchSpace, arch: Arch) -> str:
    return " ".join(map(str, space.encode(arch)))


def build_data(info: dict[str, Any], overrides: dict[str, Any]):
    """The data module the supernet was trained with (its recorded config), with `overrides` applied."""
    data_cfg = (info.get("data") or {}).get("config")
    if not data_cfg:
        raise ValueError("the supernet artifact records no data config; retrain it with this version of nas-train")
    try:
        return instantiate({**data_cfg, **overrides})
    except InstantiationException as e:
        raise ValueError(
            f"cannot build the recorded data module with data_overrides={overrides}: {e.__cause__ or e}"
        ) from None


def latency_config(cfg: DictConfig) -> LatencyConfig:
    try:
        return LatencyConfig(**OmegaConf.to_container(cfg.latency, resolve=True))
    except TypeError as e:
        raise ValueError(f"bad latency config: {e}") from None


def kernels_path(cfg: DictConfig) -> Path:
    """Where a run keeps its kernel table (supernet/runtime/kernels.py), shared by measure, search and export."""
    return Path(cfg.run) / KERNELS_NAME


def accuracy_device(cfg: DictConfig) -> str:
    """Where quality is evaluated (`accuracy_device`: cpu, cuda or cuda:<index>; cpu where a config lacks it)."""
    return str(cfg.get("accuracy_device") or "cpu")


def accuracy_kind(cfg: DictConfig) -> str:
    """The kind of device quality is evaluated on ("cpu" or "cuda"): what a table's rows must agree on. Which GPU
    (or CPU) it was is recorded (`accuracy_target`) but not compared: float32 evaluation agrees to rounding."""
    device = accuracy_device(cfg)
    return "cuda" if device.startswith("cuda") else device


def settings(cfg: DictConfig, run: Path) -> dict[str, Any]:
    """Everything that changes what a measurement means: a resumed table must have been measured the same way."""
    artifact = run / "supernet.safetensors"
    return {
        "supernet_sha256": hashlib.sha256(artifact.read_bytes()).hexdigest() if artifact.is_file() else None,
        "latency": OmegaConf.to_container(cfg.latency, resolve=True),
        "latency_target": latency_target(latency_config(cfg)),
        "accuracy_device": accuracy_kind(cfg),
        "data_overrides": OmegaConf.to_container(cfg.data_overrides, resolve=True),
        "holdout_fraction": cfg.holdout_fraction,
        "seed": cfg.seed,
    }


def check_settings(out: Path, current: dict[str, Any], create: bool, record: dict[str, Any] | None = None) -> None:
    """Refuse a table measured with other settings or another supernet; record the settings of a new table (with
    `record`: facts kept beside them but not compared, such as which GPU evaluated the accuracy)."""
    path = out / SETTINGS_NAME
    if not path.is_file():
        if (out / TABLE_NAME).is_file():
            raise ValueError(
                f"{out / TABLE_NAME} has no {SETTINGS_NAME} beside it: its settings are unknown; move it away"
            )
        if create:
            out.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({**current, **(record or {})}, indent=2))
        return
    saved = {**SETTING_DEFAULTS, **json.loads(path.read_text())}
    for key in changed_settings(saved, current):
        what = "the supernet changed since" if key == "supernet_sha256" else f"{key} was {saved.get(key)} for"
        raise ValueError(
            f"{out / TABLE_NAME}: {what} the rows already measured (now {current[key]}); use another out= "
            "directory, or the same settings and supernet"
        )


def prepare(cfg: DictConfig) -> tuple[Supernet, list, torch.Tensor, LatencyConfig]:
    """(supernet, fixed validation batches, latency example, latency config) for measuring archs of `cfg.run`."""
    net, info = load_supernet(Path(cfg.run))
    lat_cfg = latency_config(cfg)
    check_device(lat_cfg.device)
    check_device(accuracy_device(cfg), "accuracy_device")
    latency_target(lat_cfg)  # a runtime that cannot run the kernels is one clear error before anything is measured
    dm = build_data(info, OmegaConf.to_container(cfg.data_overrides, resolve=True))
    dm.setup()
    batches = fixed_batches(dm.val_subset_dataloader())
    if not batches:
        raise ValueError("the validation subset is empty; raise data_overrides.val_subset_size")
    example = batches[0][0][: lat_cfg.batch_size]
    if len(example) < lat_cfg.batch_size:
        raise ValueError(f"latency.batch_size={lat_cfg.batch_size} exceeds the validation subset's first batch")
    return net, batches, example, lat_cfg


def measure_run(cfg: DictConfig) -> Path:
    """Measure `cfg.n_archs` candidates of the supernet in `cfg.run` (or with `merge=`, add the rows of a table
    measured elsewhere); returns the table's path."""
    run = Path(cfg.run)
    if cfg.get("merge"):
        return merge_run(cfg)
    if not 0 <= cfg.holdout_fraction < 1:
        raise ValueError(f"holdout_fraction={cfg.holdout_fraction} must be in [0, 1)")
    net, batches, example, lat_cfg = prepare(cfg)
    with writer_lock(Path(cfg.out) / TABLE_NAME, "nas-measure"):
        return _measure(cfg, run, net, batches, example, lat_cfg)


def merge_run(cfg: DictConfig) -> Path:
    """`nas-measure run=... merge=<predictors directory from another machine>`: add its rows, measure nothing."""
    artifact = Path(cfg.run) / "supernet.safetensors"
    if not artifact.is_file():
        raise ValueError(f"no supernet artifact at {artifact}: name the run whose table the rows join with run=")
    out = Path(cfg.out)
    added, present = merge_table(Path(cfg.merge), out, artifact)
    total = len(MeasurementTable(out / TABLE_NAME, (out / TABLE_NAME).read_text().split("\n", 1)[0].split(",")))
    print(f"nas-measure: merged {added} rows from {cfg.merge} ({present} already here, kept as they were); "
          f"{total} in {out / TABLE_NAME}")  # fmt: skip
    return out / TABLE_NAME


def reference_settings(net: Supernet, kernels, example: torch.Tensor, lat_cfg: LatencyConfig) -> dict[str, Any]:
    """The paired estimator's reference (arch and calibrated ms): rows timed against another calibration would be
    in other units, so a table records it and refuses to mix."""
    if kernels is None or lat_cfg.estimator != "paired":
        return {}
    ref = paired_reference(net, kernels, example, lat_cfg)
    return {"latency_reference": {"arch": ref.arch, "ms": ref.ms}}


def _measure(cfg: DictConfig, run: Path, net: Supernet, batches: list, example: torch.Tensor, lat_cfg) -> Path:
    kernels = kernel_table(lat_cfg, net.config, example, kernels_path(cfg))
    current = {**settings(cfg, run), **reference_settings(net, kernels, example, lat_cfg)}
    where = {"accuracy_target": accuracy_target(accuracy_device(cfg))}
    check_settings(Path(cfg.out), current, create=True, record=where)
    table = MeasurementTable(Path(cfg.out) / TABLE_NAME, table_columns(net.config.task))
    if table.dropped_partial_line:
        print("nas-measure: dropped a row cut short by an interruption; that arch is measured again")
    archs = candidate_archs(net.space, cfg.n_archs, seed=cfg.seed)
    todo = [a for a in archs if a.key() not in table]
    print(f"nas-measure: {len(archs)} candidates, {len(archs) - len(todo)} already measured, {len(todo)} to go")
    lat_where = current["latency_target"]
    print(f"nas-measure: quality on {where['accuracy_target']['device']} ({where['accuracy_target']['name']}), "
          f"latency in {lat_where['runtime']} on {lat_where['device']}")  # fmt: skip
    torch.manual_seed(cfg.seed)
    bar = tqdm(todo, desc="measuring", unit="arch")
    for arch in bar:
        t0 = time.perf_counter()
        row = measure_arch(net, arch, batches, example, lat_cfg, kernels, accuracy_device(cfg))
        row["key"], row["genes"] = arch.key(), genes_text(net.space, arch)
        row["split"] = split_of(arch, cfg.holdout_fraction, cfg.seed)
        row["seconds"] = round(time.perf_counter() - t0, 3)
        table.append(row)
        bar.set_postfix(latency_ms=f"{row['latency_ms']:.2f}", cv=f"{row['latency_cv']:.2f}")
    return table.path


@hydra.main(config_path=CONF_DIR, config_name="measure", version_base=None)
def main(cfg: DictConfig) -> None:
    path = run_or_exit("nas-measure", lambda: measure_run(cfg))
    print(f"nas-measure: measurements in {path}")


if __name__ == "__main__":
    main()
