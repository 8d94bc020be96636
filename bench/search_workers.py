"""Search workers sharing one machine: are their latency labels as good as one worker's, and what do two buy?

    python bench/search_workers.py --run results/demo --archs 24
    python bench/search_workers.py --run <run> --smoke [--out DIR/name]   # 7 archs, 1 worker (tests)

A throwaway PostgreSQL server (tests/pgserver.py) holds one optuna study per configuration, each with the same
`--archs` archs enqueued (largest, smallest, then a Latin-hypercube sample), measured by real
`nas-search search.backend=optuna` worker processes with nas-search's default measurement (5,000 validation images:
scoring accuracy takes most of a measurement). Configurations, in the order they run (the two single-worker runs
straddle the first two-worker ones, so slow drifts of the machine hit both sides):

  1 worker (a)                the reference
  2 workers, locked           the device lock (supernet/device_lock.py): no latency is timed while the other measures
  2 workers, unlocked         each worker its own lock folder, i.e. no lock: what workers did before
  1 worker (b)                the same as (a) again: how much two runs of one worker disagree (re-measurement noise)
  2 workers, ... all threads  the two 2-worker setups with every worker on all cores (what launching two workers
                              with torch's defaults gave)
  2 workers, locked, default  no OMP_NUM_THREADS: the workers split the cores themselves (search/machine_workers.py)

Unless said otherwise each worker gets cores / workers torch threads. Prints evaluations per minute (first trial
start to last trial end, from the study; speed-up against the mean of the 1-worker runs) and how each
configuration's latency labels differ from the 1-worker runs': median and 90th percentile of |relative
difference|, and Kendall's τ. (a) against (b) is the re-measurement noise. Writes
bench/results/search_workers.{json,txt} (with --smoke: only where --out says, if it does).
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

# (name, workers, device lock, torch threads per worker: None = cores / workers, 0 = all cores, "auto" = no
# OMP_NUM_THREADS: the workers split the cores themselves, as nas-search does by default)
CONFIGS = [
    ("1 worker (a)", 1, True, None),
    ("2 workers, locked", 2, True, None),
    ("2 workers, unlocked", 2, False, None),
    ("1 worker (b)", 1, True, None),
    ("2 workers, locked, all threads", 2, True, 0),
    ("2 workers, unlocked, all threads", 2, False, 0),
    ("2 workers, locked, default", 2, True, "auto"),
]
# --smoke: the fewest processes (one configuration of one worker) on the fewest archs a search accepts
# (search.initial >= 7), each measured on 64 images and timed 3 times
SMOKE_CONFIGS = CONFIGS[:1]
SMOKE_ARCHS = 7
SMOKE_MEASURE = ("data_overrides.val_subset_size=64", "latency.warmup=1", "latency.repeats=3")


def worker_args(run: str, out: Path, url: str, study: str, budget: int, measure: list[str]) -> list[str]:
    return [f"run={run}", f"out={out}", "init_from=null", "search.backend=optuna", f"search.optuna.storage={url}",
            f"search.optuna.study_name={study}", f"search.budget={budget}", "search.initial=7",
            "search.optuna.sampler=random", *measure]  # fmt: skip


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


def run_config(
    run: str,
    url: str,
    name: str,
    workers: int,
    locked: bool,
    threads: int | str | None,
    n: int,
    tmp: Path,
    measure: tuple[str, ...] = (),
) -> dict:
    study_name = name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
    out = tmp / study_name
    args = worker_args(run, out, url, study_name, n, list(measure))
    keys = prepare_study(args, n)
    cores = os.cpu_count() or 1
    auto = threads == "auto"
    threads = max(1, cores // workers) if threads is None else cores // workers if auto else threads or cores
    procs = []
    t0 = time.perf_counter()
    for w in range(workers):
        lock_dir = tmp / "locks" if locked else tmp / f"locks_{study_name}_{w}"
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"} | {LOCK_DIR_ENV: str(lock_dir)}
        if not auto:
            env["OMP_NUM_THREADS"] = str(threads)
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


def split_of_a_measurement(run: str, n: int = 6, measure: tuple[str, ...] = ()) -> dict:
    """Seconds spent scoring accuracy vs timing latency per arch, in this process, for `n` of the archs: how much of
    a measurement the device lock serialises."""
    from predictors.measure import evaluate, measure_arch
    from predictors.measure_cli import kernel_table, kernels_path, prepare
    from supernet.extract import extract_subnet

    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose(config_name="search", overrides=[f"run={run}", *measure])
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
    ap.add_argument("--out", default=None, help="results path without suffix (default: bench/results/search_workers; "
                    "with --smoke, none)")  # fmt: skip
    ap.add_argument("--smoke", action="store_true", help="7 archs measured by one worker: tests")
    args = ap.parse_args()
    configs, measure, split_archs = CONFIGS, (), 6
    if args.smoke:
        configs, measure, split_archs, args.archs = SMOKE_CONFIGS, SMOKE_MEASURE, 2, SMOKE_ARCHS
    elif args.out is None:
        args.out = str(ROOT / "bench" / "results" / "search_workers")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    results = []
    with tempfile.TemporaryDirectory(prefix="nas-workers-") as tmp, PostgresServer() as pg:
        url = pg.create_database("workers")
        for name, workers, locked, threads in configs:
            r = run_config(args.run, url, name, workers, locked, threads, args.archs, Path(tmp), measure)
            results.append(r)
            print(f"{name}: {r['evals_per_min']:.1f} evaluations/min ({r['measuring_s']:.1f} s measuring, "
                  f"{r['wall_s']:.1f} s wall)", flush=True)  # fmt: skip
    split = split_of_a_measurement(args.run, split_archs, measure)
    refs = [r for r in results if r["workers"] == 1]
    base = float(np.mean([r["evals_per_min"] for r in refs]))
    lines = [f"search workers on one machine: {args.archs} archs of {args.run}, PostgreSQL study, "
             f"{os.cpu_count()} cores", "latency labels against the 1-worker runs: |relative difference| median and "
             "p90, Kendall τ (mean over the references other than itself)", "",
             f"{'configuration':<34} {'threads':>7} {'evals/min':>9} {'speed-up':>8} {'|Δ| median':>10} {'p90':>6} "
             f"{'τ':>6} {'same acc':>8}"]  # fmt: skip
    for r in results:
        others = [agreement(ref, r) for ref in refs if ref is not r]
        r["vs_references"] = others
        # (nan where there is no reference but itself: the smoke's single run)
        mean = {k: float(np.mean([o[k] for o in others])) if others else float("nan")
                for k in ("median_abs_rel_diff", "p90_abs_rel_diff", "kendall_tau")}  # fmt: skip
        same = all(o["same_accuracy"] for o in others)
        lines.append(f"{r['name']:<34} {r['threads_per_worker']:>7} {r['evals_per_min']:>9.1f} "
                     f"{r['evals_per_min'] / base:>7.2f}x {mean['median_abs_rel_diff']:>10.1%} "
                     f"{mean['p90_abs_rel_diff']:>6.1%} {mean['kendall_tau']:>6.3f} {same!s:>8}")  # fmt: skip
    lines += [
        "",
        f"one measurement: {split['measurement_s_per_arch']:.2f} s per arch, of which scoring accuracy "
        f"{split['accuracy_s_per_arch']:.2f} s ({split['accuracy_share']:.0%}); the rest is latency timing",
    ]
    text = "\n".join(lines)
    print("\n" + text)
    if args.out is None:
        return
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"configs": results, "split": split}, indent=2, default=str) + "\n")
    out.with_suffix(".txt").write_text(text + "\n")


if __name__ == "__main__":
    main()
