"""Search quality against ground truth: HV(found) / HV(true) after 50, 100 and 200 real evaluations.

The oracle is a measurements table over *every* arch of a small space (1,152 archs), written by

    nas-train experiment=demo space=small run_name=gt_small
    nas-measure run=results/gt_small n_archs=1152 data_overrides.val_subset_size=2000

A "real evaluation" is a look-up in that table, so every method sees the same measured values and the true front is
exact. Every method starts from the same initial batch (the refinement loop's: largest, smallest, a Latin-hypercube
sample, seeded by the seed) and spends the rest of the budget its own way:
* refine   the refinement loop (nas-search's pymoo backend: predictors + NSGA-II on them, batches of real evaluations)
* nsga2    plain NSGA-II on real evaluations, its first population the initial batch (population 20 afterwards;
           duplicates are not re-counted)
* random   the initial batch, then distinct archs drawn uniformly at random (space.sample)
Hypervolume: objectives normalised by the whole space's range (ideal..nadir), reference point 1.1 in each. A
difference between two methods is called significant when their means differ by more than twice the standard error
of that difference over the seeds (a Welch-style two-sigma rule; with 5 seeds, a rough screen, not a test).

    python bench/search_groundtruth.py --table results/gt_small/predictors/measurements.csv --seeds 0 1 2 3 4
    python bench/search_groundtruth.py --table <run>/predictors/measurements.csv --smoke   # 2 seeds, budget 14 (tests)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.core.problem import Problem

from predictors.measure import candidate_archs
from search.algorithms import build_algorithm
from search.config import PredictorConfig, SearchConfig
from search.evaluators import TableEvaluator
from search.front import HVReference, pareto_indices
from search.loop import RefinementSearch
from search.objectives import resolve_objectives
from supernet.artifact import read_metadata

CHECKPOINTS = (50, 100, 200)
# --smoke: a fully measured space of 20-odd archs (tests/bench_smoke.py), 2 seeds, a budget of 14, the initial batch
# the fewest the refinement loop accepts (7), one predictor candidate (ridge)
SMOKE = {"checkpoints": (8, 11, 14), "seeds": [0, 1], "initial": 7, "batch_size": 7, "n_candidates": 100,
         "pop_size": 10, "predictors": ["ridge"]}  # fmt: skip


class Oracle:
    """Real evaluations by table look-up, remembering the order of distinct archs evaluated."""

    def __init__(self, table: TableEvaluator, objectives, space) -> None:
        self.table, self.objectives, self.space = table, objectives, space
        self.order: list[np.ndarray] = []
        self.keys: list[str] = []
        self.seen: dict[str, np.ndarray] = {}

    def __call__(self, arch) -> np.ndarray:
        key = arch.key()
        if key not in self.seen:
            row = self.table.evaluate(arch)
            self.seen[key] = np.asarray([row[o.column] * o.sign for o in self.objectives])
            self.order.append(self.seen[key])
            self.keys.append(key)
        return self.seen[key]


def hv_curve(F: list[np.ndarray], ref: HVReference, true_hv: float, checkpoints=CHECKPOINTS) -> dict[int, float]:
    F = np.asarray(F)
    return {n: ref.hypervolume(F[pareto_indices(F[:n])]) / true_hv for n in checkpoints if n <= len(F)}


def recall_curve(keys: list[str], true_keys: set[str], checkpoints=CHECKPOINTS) -> dict[int, float]:
    """Fraction of the true front's archs among the first n evaluated."""
    return {n: len(true_keys & set(keys[:n])) / len(true_keys) for n in checkpoints if n <= len(keys)}


def initial_batch(space, seed: int, initial: int) -> list:
    """The refinement loop's initial batch for this seed (search/loop.py), which every method starts from."""
    return candidate_archs(space, initial, seed=seed)


def run_random(oracle: Oracle, seed: int, budget: int, initial: int) -> None:
    for arch in initial_batch(oracle.space, seed, initial):
        oracle(arch)
    rng = np.random.default_rng(seed)
    while len(oracle.order) < budget:
        oracle(oracle.space.sample(rng))


def run_nsga2(oracle: Oracle, seed: int, budget: int, initial: int, pop_size: int = 20) -> None:
    space = oracle.space
    xl, xu = space.gene_bounds()
    problem = Problem(n_var=space.n_genes, n_obj=len(oracle.objectives), xl=xl, xu=xu, vtype=int)
    algorithm: NSGA2 = build_algorithm("nsga2", space, problem.n_obj, pop_size)
    # Its first population is the shared initial batch (evaluated through the oracle like every later generation).
    algorithm.initialization.sampling = np.asarray([space.encode(a) for a in initial_batch(space, seed, initial)])
    algorithm.setup(problem, seed=seed, termination=("n_gen", 10_000))
    while len(oracle.order) < budget and algorithm.has_next():
        pop = algorithm.ask()
        pop.set("F", np.stack([oracle(space.decode(np.round(x).astype(int))) for x in pop.get("X")]))
        algorithm.tell(infills=pop)


def run_refine(table: TableEvaluator, meta: dict, objectives: list[str], seed: int, budget: int, **kw) -> tuple:
    cfg = SearchConfig(objectives=objectives, budget=budget, seed=seed, **kw)
    with tempfile.TemporaryDirectory() as out:
        search = RefinementSearch(meta["space"], meta["model"], table, cfg, out, log=lambda s: None, progress=False)
        search.run()
        _, rows = search.archs_and_rows()
    objs = resolve_objectives(objectives, meta["model"].task)
    return [np.asarray([float(r[o.column]) * o.sign for o in objs]) for r in rows], [r["key"] for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", default="results/gt_small/predictors/measurements.csv")
    ap.add_argument("--run", default=None, help="run dir with supernet.safetensors (default: the table's grandparent)")
    ap.add_argument("--objectives", nargs="+", default=["accuracy", "latency"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--initial", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--n-candidates", type=int, default=5000)
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--smoke", action="store_true", help="a tiny study (2 seeds, budget 14) of a tiny run: tests")
    args = ap.parse_args()
    checkpoints, refine_kw = CHECKPOINTS, {}
    if args.smoke:
        checkpoints = SMOKE["checkpoints"]
        refine_kw = {"pop_size": SMOKE["pop_size"], "predictor": PredictorConfig(candidates=SMOKE["predictors"])}
        for k in ("seeds", "initial", "batch_size", "n_candidates"):
            setattr(args, k, SMOKE[k])
    run = Path(args.run) if args.run else Path(args.table).parents[1]
    meta = read_metadata(run)
    space = meta["space"]
    table = TableEvaluator(args.table)
    objectives = resolve_objectives(args.objectives, meta["model"].task)
    if len(table.table) < space.size():
        raise SystemExit(f"{args.table} has {len(table.table)} of the space's {space.size()} archs; measure them all")
    F_all = np.asarray([[float(r[o.column]) * o.sign for o in objectives] for r in table.table.rows.values()])
    ref = HVReference.from_points(F_all)
    true_front = pareto_indices(F_all)
    true_hv = ref.hypervolume(F_all[true_front])
    all_keys = list(table.table.rows)
    true_keys = {all_keys[i] for i in true_front}
    print(f"space '{space.name}': {len(F_all)} archs, true front {len(true_front)} archs, objectives {args.objectives}")
    budget = max(checkpoints)
    if budget > len(F_all):
        raise SystemExit(f"a budget of {budget} evaluations exceeds the space's {len(F_all)} archs")
    results: dict[str, list[dict[int, float]]] = {"refine": [], "nsga2": [], "random": []}
    recalls: dict[str, list[dict[int, float]]] = {m: [] for m in results}
    seconds: dict[str, float] = dict.fromkeys(results, 0.0)
    for seed in args.seeds:
        for method in results:
            t0 = time.perf_counter()
            if method == "refine":
                F, keys = run_refine(table, meta, args.objectives, seed, budget, initial=args.initial,
                                     batch_size=args.batch_size, n_candidates=args.n_candidates,
                                     **refine_kw)  # fmt: skip
            else:
                oracle = Oracle(table, objectives, space)
                (run_random if method == "random" else run_nsga2)(oracle, seed, budget, args.initial)
                F, keys = oracle.order[:budget], oracle.keys[:budget]
            seconds[method] += time.perf_counter() - t0
            results[method].append(hv_curve(F, ref, true_hv, checkpoints))
            recalls[method].append(recall_curve(keys, true_keys, checkpoints))
            print(
                f"seed {seed} {method:7s} "
                + "  ".join(
                    f"@{n}: HV {v:.4f} recall {recalls[method][-1][n]:.2f}" for n, v in results[method][-1].items()
                ),
                flush=True,
            )
    print(f"\nHV(found) / HV(true), mean ± sd (min) over seeds {args.seeds}; then true-front recall (mean):")
    print(f"{'method':8s}" + "".join(f"{'@' + str(n):>26s}" for n in checkpoints)
          + "".join(f"{'recall@' + str(n):>11s}" for n in checkpoints) + f"{'s/seed':>9s}")  # fmt: skip
    summary = {}
    for method, curves in results.items():
        cells, summary[method] = [], {}
        for n in checkpoints:
            v = np.asarray([c[n] for c in curves if n in c])
            r = np.asarray([c[n] for c in recalls[method] if n in c])
            summary[method][n] = {"mean": float(v.mean()), "sd": float(v.std()), "min": float(v.min()),
                                  "recall": float(r.mean())}  # fmt: skip
            cells.append(f"{v.mean():.4f} ± {v.std():.4f} ({v.min():.4f})")
        rec = "".join(f"{summary[method][n]['recall']:>11.2f}" for n in checkpoints)
        print(f"{method:8s}" + "".join(f"{c:>26s}" for c in cells) + rec + f"{seconds[method] / len(args.seeds):9.1f}")
    print("\nDifferences of the refinement loop from the others (mean difference ± its standard error over seeds):")
    for other in ("nsga2", "random"):
        parts = []
        for n in checkpoints:
            a = np.asarray([c[n] for c in results["refine"] if n in c])
            b = np.asarray([c[n] for c in results[other] if n in c])
            diff, se = a.mean() - b.mean(), np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
            verdict = "significant" if abs(diff) > 2 * se else "within the seeds' spread"
            parts.append(f"@{n}: {diff:+.4f} ± {se:.4f} ({verdict})")
            summary["refine"][n][f"minus_{other}"] = {"diff": float(diff), "se": float(se), "verdict": verdict}
        print(f"  refine - {other:6s} " + "; ".join(parts))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "true_front": len(true_front),
                                               "summary": summary}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
