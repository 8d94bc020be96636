"""Search workers sharing one machine: are their latency labels as good as one worker's, and what do two buy?

    python bench/search_workers.py --run results/demo --archs 24

A throwaway PostgreSQL server (tests/pgserver.py) holds one optuna study per configuration, each with the same
`--archs` archs enqueued (largest, smallest, then a Latin-hypercube sample), measured by real
`nas-search search.backend=optuna` worker processes with nas-search's default measurement (5,000 validation images:
scoring accuracy takes most of a measurement). Configurations, run in this order so that the two single-worker
runs straddle the first two-worker one:

  1 worker (a)           the reference
  2 workers, locked      the device lock (supernet/device_lock.py): no latency is timed while the other measures
  1 worker (b)           the same again: how much two runs of one worker disagree (re-measurement noise)
  2 workers, unlocked    each worker its own lock folder, i.e. no lock: what workers did before

Each worker gets cores / workers torch threads. Prints evaluations per minute (first trial start to last trial
end, from the study) and, per configuration, how its latency labels differ from run (a): median and 90th
percentile of |relative difference|, and Kendall's τ. Writes bench/results/search_workers.{json,txt}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
from hydra import compose, initialize_config_dir
from scipy.stats import kendalltau

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from predictors.measure import candidate_archs  # noqa: E402
from search.cli import CONF_DIR, build_search  # noqa: E402
from supernet.device_lock import LOCK_DIR_ENV  # noqa: E402
from tests.pgserver import PostgresServer  # noqa: E402

CONFIGS = [("1 worker (a)", 1, True), ("2 workers, locked", 2, True), ("1 worker (b)", 1, True),
           ("2 workers, unlocked", 2, False)]  # fmt: skip


def worker_args(run: str, out: Path, url: str, study: str, budget: int) -> list[str]:
    return [f"run={run}", f"out={out}", "init_from=null", "search.backend=optuna", f"search.optuna.storage={url}",
            f"search.optuna.study_name={study}", f"search.budget={budget}", "search.initial=7",
            "search.optuna.sampler=random"]  # fmt: skip


def prepare_study(args: list[str], n: int) -> list[str]:
    """Create the study (the creating worker enqueues the largest and smallest arch) and enqueue the rest of the
    same `n` archs every configuration measures; returns their keys."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose(config_name="search", overrides=args)
    search = build_search(cfg)
    archs = candidate_archs(search.space, n, seed=0)
    enqueued = {search.space.largest().key(), search.space.smallest().key()}
    for arch in archs:
        if arch.key() not in enqueued:
            search.study.enqueue_trial(search._params(arch))
    return [a.key() for a in archs]


def run_config(run: str, url: str, name: str, workers: int, locked: bool, n: int, tmp: Path) -> dict:
    study_name = name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
    out = tmp / study_name
    args = worker_args(run, out, url, study_name, n)
    keys = prepare_study(args, n)
    threads = max(1, (os.cpu_count() or 1) // workers)
    procs = []
    t0 = time.perf_counter()
    for w in range(workers):
        lock_dir = tmp / "locks" if locked else tmp / f"locks_{study_name}_{w}"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), LOCK_DIR_ENV: str(lock_dir)}
        procs.append(subprocess.Popen([sys.executable, "-m", "search.cli", *args], cwd=ROOT, env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))  # fmt: skip
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"{name}: a worker failed: {err[-2000:]}")
    wall = time.perf_counter() - t0
    study = optuna.load_study(study_name=study_name, storage=url)
    done = [t for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)) if "row" in t.user_attrs]
    rows = {t.user_attrs["key"]: t.user_attrs["row"] for t in done if not t.user_attrs.get("repeat")}
    missing = set(keys) - set(rows)
    if missing:
        raise RuntimeError(f"{name}: {len(missing)} enqueued archs were not measured")
    span = max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)
    return {"name": name, "workers": workers, "locked": locked, "threads_per_worker": threads, "wall_s": wall,
            "measuring_s": span.total_seconds(), "evals_per_min": 60 * len(rows) / span.total_seconds(),
            "rows": {k: rows[k] for k in keys}}  # fmt: skip


def split_of_a_measurement(run: str, n: int = 6) -> dict:
    """Seconds spent scoring accuracy vs timing latency per arch, in this process, for `n` of the archs: how much of
    a measurement the device lock serialises."""
    from predictors.measure import evaluate, measure_arch
    from predictors.measure_cli import kernel_table, kernels_path, prepare
    from supernet.extract import extract_subnet

    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose(config_name="search", overrides=[f"run={run}"])
    net, batches, example, lat = prepare(cfg)
    kernels = kernel_table(lat, net.config, example, kernels_path(cfg))
    acc = total = 0.0
    for arch in candidate_archs(net.space, n, seed=0):
        t0 = time.perf_counter()
        evaluate(extract_subnet(net, arch), batches, net.config.task, halves=True)
        t1 = time.perf_counter()
        measure_arch(net, arch, batches, example, lat, kernels)
        acc, total = acc + (t1 - t0), total + (time.perf_counter() - t1)
    return {"accuracy_s_per_arch": acc / n, "measurement_s_per_arch": total / n, "accuracy_share": acc / total}


def agreement(ref: dict, other: dict) -> dict:
    keys = list(ref["rows"])
    a = np.asarray([ref["rows"][k]["latency_ms"] for k in keys])
    b = np.asarray([other["rows"][k]["latency_ms"] for k in keys])
    rel = np.abs(b / a - 1)
    same_accuracy = all(ref["rows"][k]["accuracy"] == other["rows"][k]["accuracy"] for k in keys)
    return {"median_abs_rel_diff": float(np.median(rel)), "p90_abs_rel_diff": float(np.percentile(rel, 90)),
            "max_abs_rel_diff": float(rel.max()), "kendall_tau": float(kendalltau(a, b)[0]),
            "same_accuracy": same_accuracy}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="results/demo")
    ap.add_argument("--archs", type=int, default=24)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "search_workers"))
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    results = []
    with tempfile.TemporaryDirectory(prefix="nas-workers-") as tmp, PostgresServer() as pg:
        url = pg.create_database("workers")
        for name, workers, locked in CONFIGS:
            r = run_config(args.run, url, name, workers, locked, args.archs, Path(tmp))
            results.append(r)
            print(f"{name}: {r['evals_per_min']:.1f} evaluations/min ({r['measuring_s']:.1f} s measuring, "
                  f"{r['wall_s']:.1f} s wall)", flush=True)  # fmt: skip
    split = split_of_a_measurement(args.run)
    ref = results[0]
    lines = [f"search workers on one machine: {args.archs} archs of {args.run}, PostgreSQL study, "
             f"{os.cpu_count()} cores", "",
             f"{'configuration':<22} {'evals/min':>9} {'speed-up':>8} {'|Δlat| median':>13} {'p90':>6} "
             f"{'max':>6} {'τ vs (a)':>8} {'same acc':>8}"]  # fmt: skip
    for r in results:
        r["vs_reference"] = agreement(ref, r) if r is not ref else None
        g = r["vs_reference"]
        stats = (f"{g['median_abs_rel_diff']:>12.1%} {g['p90_abs_rel_diff']:>6.1%} {g['max_abs_rel_diff']:>6.1%} "
                 f"{g['kendall_tau']:>8.3f} {g['same_accuracy']!s:>8}") if g else f"{'(reference)':>13}"  # fmt: skip
        lines.append(f"{r['name']:<22} {r['evals_per_min']:>9.1f} {r['evals_per_min'] / ref['evals_per_min']:>7.2f}x "
                     + stats)  # fmt: skip
    lines += [
        "",
        f"one measurement: {split['measurement_s_per_arch']:.2f} s per arch, of which scoring accuracy "
        f"{split['accuracy_s_per_arch']:.2f} s ({split['accuracy_share']:.0%}); the rest is latency timing",
    ]
    text = "\n".join(lines)
    print("\n" + text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"configs": results, "split": split}, indent=2, default=str) + "\n")
    out.with_suffix(".txt").write_text(text + "\n")


if __name__ == "__main__":
    main()
