"""Speed of the optimiser on the predictors: seconds to evaluate 20,000 candidates (target <= 2 s on 2 CPU cores).

Fits the predictors nas-search would use (accuracy and latency, cross-validated among ridge/GBRT/GP) on a run's
measurements, then runs every algorithm for `--n-candidates` surrogate evaluations, with 2 and 3 objectives
(accuracy, latency[, bytes]). Prints the seconds and candidates per second of each, measured side by side.

    python bench/search_speed.py --run results/demo
    python bench/search_speed.py --run <run> --smoke   # 40 candidates, 1 repeat, ridge predictors only (tests)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from predictors.table import MeasurementTable
from search.algorithms import ALGORITHMS, run_algorithm
from search.config import PredictorConfig
from search.objectives import resolve_objectives
from search.problem import SurrogateProblem
from search.surrogate import Surrogate
from supernet.artifact import read_metadata


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="results/demo")
    ap.add_argument("--n-candidates", type=int, default=20_000)
    ap.add_argument("--pop-size", type=int, default=100)
    ap.add_argument("--fit-rows", type=int, default=150)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="a few candidates, one repeat, ridge predictors: tests")
    args = ap.parse_args()
    candidates = PredictorConfig().candidates  # nas-search's (search.predictor.candidates)
    if args.smoke:
        args.n_candidates, args.pop_size, args.repeats, candidates = 40, 20, 1, ["ridge"]
    meta = read_metadata(args.run)
    space, config = meta["space"], meta["model"]
    path = Path(args.run) / "predictors" / "measurements.csv"
    header = path.read_text().split("\n", 1)[0].split(",")
    rows = list(MeasurementTable(path, header).rows.values())[: args.fit_rows]
    archs = [space.decode([int(g) for g in r["genes"].split()]) for r in rows]
    print(f"space '{space.name}' ({space.size():.3g} archs), predictors fitted on {len(rows)} measured archs")
    for names in (["accuracy", "latency"], ["accuracy", "latency", "bytes"]):
        objectives = resolve_objectives(names, config.task)
        surrogate = Surrogate(space, config, objectives, candidates, k_folds=PredictorConfig().k_folds)
        t0 = time.perf_counter()
        info = surrogate.fit(archs, rows)
        fit = time.perf_counter() - t0
        chosen = ", ".join(f"{k}={v['estimator']}" for k, v in info.items())
        print(f"\nobjectives {names}: predictors {chosen} (fit + CV {fit:.1f} s)")
        print(f"{'algorithm':10s}{'evaluated':>11s}{'median s':>10s}{'cand/s':>10s}  target <= 2 s per 20,000")
        for name in ALGORITHMS:
            times, n = [], 0
            for r in range(args.repeats):
                problem = SurrogateProblem(space, surrogate, objectives)
                t0 = time.perf_counter()
                run_algorithm(problem, name, space, args.n_candidates, args.pop_size, seed=r)
                times.append(time.perf_counter() - t0)
                n = problem.n_evaluated
            med = float(np.median(times))
            print(f"{name:10s}{n:>11d}{med:>10.2f}{n / med:>10.0f}")


if __name__ == "__main__":
    main()
