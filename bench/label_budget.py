"""Benchmark: for the same measuring time, more archs with fewer images each, or fewer archs with more?

`nas-measure` spends a fixed time on every arch (extraction, the runtime model, latency timing in ONNX Runtime) and
a time per validation image it scores. The demo buys 200 archs × 5,000 images. A label on fewer images is noisier
(lower split-half τ), but a predictor fitted on more archs sees more of the space and averages the noise of
neighbouring archs. Which buys the better accuracy predictor is an empirical question, answered here on the demo's
supernet:

1. Times both costs in this run: the fixed part on a few archs, and scoring the 5,000 validation images.
2. Scores a pool of archs per image on the validation subset, and a disjoint set of evaluation archs on the test
   split (cached in `<run>/label_budget_scores.npz`).
3. For every allocation (n archs, m images each) that costs what the demo's measuring costs (and, to show what
   more time buys, for more archs at every image), draws n archs (the largest and the smallest, as `nas-measure`
   does, plus n − 2 from the pool) and m validation images (the same for every arch), fits the accuracy predictor
   as `nas-fit` does (CV selection over every candidate) and scores its Kendall τ on the evaluation archs against
   their **test** accuracy. Repeated over `--repeats` draws.
4. At the demo's allocation, the same τ for every predictor candidate alone, and for the mean of the two best
   ones' standardised predictions.

    python bench/label_budget.py --run results/demo [--pool 500] [--eval 100] [--repeats 10]
    python bench/label_budget.py --run <run> --smoke   # a tiny run's budget: 10 archs x 96 images, 2 repeats (tests)
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from predictors.features import FeatureEncoder
from predictors.measure import LatencyConfig, candidate_archs, fixed_batches, kernel_table, measure_arch
from predictors.measure_cli import build_data
from predictors.models import CANDIDATES, kendall_tau, select_and_fit
from predictors.reliability import per_sample_scores, split_half_tau
from supernet.artifact import load_supernet
from supernet.extract import extract_subnet

DEMO_ARCHS, DEMO_IMAGES = 200, 5000


@dataclass(frozen=True)
class Plan:
    """The allocations compared: the demo's (archs × images), the arch counts tried at its cost, the more archs tried
    at every image, the fewest images an allocation may have, the archs its fixed cost is timed on, and how latency
    is timed (nas-measure's defaults)."""

    demo_archs: int = DEMO_ARCHS
    demo_images: int = DEMO_IMAGES
    archs: tuple[int, ...] = (100, 150, 200, 250, 300, 400)
    more_archs: tuple[int, ...] = (300, 400)
    min_images: int = 200
    cost_archs: int = 10
    latency: LatencyConfig = field(default_factory=LatencyConfig)  # conf/latency/cpu.yaml
    val_images: int = DEMO_IMAGES  # the validation subset every arch of the pool is scored on
    eval_batch_size: int | None = None  # None: the run's
    candidates: tuple[str, ...] = tuple(CANDIDATES)  # the predictor candidates (nas-fit's: all of them)
    pair: tuple[str, str] = ("gbrt", "gp")  # the two whose standardised predictions are averaged


# --smoke: the same study on a tiny run (a space of 20 archs, tests/bench_smoke.py) in seconds: 12 pool archs (the
# ends and 10), 8 evaluation archs, 128 validation images in batches of 32 (costs() needs more than one), 2 repeats,
# 2 predictor candidates
SMOKE = Plan(demo_archs=10, demo_images=96, archs=(8, 10, 12), more_archs=(12,), min_images=16, cost_archs=2,
             latency=LatencyConfig(warmup=1, repeats=3), val_images=128, eval_batch_size=32, candidates=("ridge", "gp"),
             pair=("ridge", "gp"))  # fmt: skip
SMOKE_ARGS = {"pool": 10, "eval": 8, "repeats": 2}


def score(net, archs, batches) -> np.ndarray:
    """(archs, images) 0/1 correctness of each arch's extracted subnet, as nas-measure scores it."""
    return np.stack([per_sample_scores(extract_subnet(net, a), batches, net.config.task) for a in archs])


def cached(net, pool, evals, val, test, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(pool × val images, evals × test images), from `path` if it holds these archs."""
    keys = [a.key() for a in [*pool, *evals]]
    if path.is_file():
        z = np.load(path, allow_pickle=False)
        if list(z["keys"]) == keys:
            return z["val"], z["test"]
    v, t = score(net, pool, val), score(net, evals, test)
    np.savez(path, keys=np.array(keys), val=v, test=t)
    return v, t


def costs(net, archs, example, lat_cfg, kernels, batches) -> tuple[float, float]:
    """(fixed seconds per arch, seconds per image) of nas-measure's measure_arch, from timing it on `archs` with
    every validation batch and with the first batch only."""

    def timed(bs) -> float:
        t0 = time.perf_counter()
        for a in archs:
            measure_arch(net, a, bs, example, lat_cfg, kernels)
        return (time.perf_counter() - t0) / len(archs)

    n_all, n_one = sum(len(y) for _, y in batches), len(batches[0][1])
    full, one = timed(batches), timed(batches[:1])
    per_image = (full - one) / (n_all - n_one)
    return one - n_one * per_image, per_image


def allocations(
    fixed: float, per_image: float, max_images: int, pool: int, plan: Plan = Plan()
) -> list[tuple[int, int]]:
    """(archs, images) pairs that cost the demo's budget (200 archs × 5,000 images; fewer archs cannot spend it all,
    there being no more validation images), then more archs at every image: what more measuring time buys."""
    budget = plan.demo_archs * (fixed + plan.demo_images * per_image)
    out = []
    for n in plan.archs:
        m = min(max_images, int((budget / n - fixed) / per_image))
        if m >= plan.min_images:
            out.append((n, m))
    return out + [(n, max_images) for n in plan.more_archs if n <= pool]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="results/demo")
    ap.add_argument("--pool", type=int, default=500, help="archs scored on the validation images")
    ap.add_argument("--eval", type=int, default=100, help="held-out archs scored on the test split")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", default=None)
    ap.add_argument("--smoke", action="store_true", help="a tiny run's study in seconds (tests)")
    args = ap.parse_args()
    plan = SMOKE if args.smoke else Plan()
    if args.smoke:
        vars(args).update(SMOKE_ARGS)
    net, info = load_supernet(Path(args.run))
    overrides = {"val_subset_size": plan.val_images}
    if plan.eval_batch_size:
        overrides["eval_batch_size"] = plan.eval_batch_size
    dm = build_data(info, overrides)
    dm.setup()
    val, test = fixed_batches(dm.val_subset_dataloader()), fixed_batches(dm.test_dataloader())
    # One Latin-hypercube design (nas-measure's), split at random into the training pool and the evaluation archs.
    design = candidate_archs(net.space, 2 + args.pool + args.eval, seed=1)
    ends, rest = design[:2], design[2:]
    order = np.random.default_rng(0).permutation(len(rest))
    pool = [*ends, *(rest[i] for i in order[: args.pool])]
    evals = [rest[i] for i in order[args.pool :]]
    # (the smoke's cache has a name of its own: a smoke on a real run leaves that run's cache alone)
    cache = Path(args.run) / f"label_budget_scores{'_smoke' if args.smoke else ''}.npz"
    v, t = cached(net, pool, evals, val, test, cache)
    truth = t.mean(1)
    lat_cfg = plan.latency
    example = val[0][0][: lat_cfg.batch_size]
    kernels = kernel_table(lat_cfg, net.config, example, Path(args.run) / "kernels.json")
    fixed, per_image = costs(net, evals[: plan.cost_archs], example, lat_cfg, kernels, val)
    val_seconds = per_image * v.shape[1]
    demo_budget = plan.demo_archs * (fixed + val_seconds)
    print(f"per arch: {fixed:.3f} s fixed + {val_seconds:.3f} s for {v.shape[1]} images "
          f"({per_image * 1e6:.0f} µs per image); demo budget {demo_budget:.0f} s")  # fmt: skip
    print(f"{len(pool)} pool archs, {len(evals)} evaluation archs (test accuracy {100 * truth.min():.2f}–"
          f"{100 * truth.max():.2f} %, sd {100 * truth.std():.2f})")  # fmt: skip
    encoder = FeatureEncoder(net.space, net.config)
    rows = []
    print(f"{'archs':>5s} {'images':>6s} {'seconds':>7s} {'label split-half τ':>19s} {'τ vs test acc':>15s} "
          f"{'chosen':>12s}")  # fmt: skip
    for n, m in allocations(fixed, per_image, v.shape[1], len(pool), plan):
        taus, halves, chosen = [], [], []
        for r in range(args.repeats):
            idx, imgs = draw(n, m, r, len(pool), v.shape[1])
            scores = v[np.ix_(idx, imgs)]
            archs, y = [pool[i] for i in idx], 100 * scores.mean(1)
            halves.append(split_half_tau(scores, n_splits=5, seed=r)[0])
            if np.ptp(y) == 0:  # too few images to tell these archs apart (a tiny run's): no predictor, no ranking
                taus.append(0.0)
                chosen.append("none")
                continue
            pred, _ = select_and_fit(archs, y, encoder, "accuracy", seed=r, candidates=plan.candidates)
            taus.append(kendall_tau(truth, pred.predict(evals)))
            chosen.append(pred.estimator)
        row = {"archs": n, "images": m, "seconds": n * (fixed + m * per_image), "tau_vs_test": taus,
               "label_split_half": halves, "chosen": chosen}  # fmt: skip
        rows.append(row)
        names = ",".join(sorted(set(chosen)))
        print(f"{n:5d} {m:6d} {row['seconds']:7.0f} {np.mean(halves):19.3f} "
              f"{np.mean(taus):8.3f} ± {np.std(taus):.3f} {names:>12s}")  # fmt: skip
    models = candidate_models(pool, evals, v, truth, encoder, args.repeats, plan)
    if args.out:
        Path(args.out).write_text(json.dumps({"run": args.run, "fixed_seconds": fixed, "val_seconds": val_seconds,
                                              "pool": len(pool), "eval": len(evals), "repeats": args.repeats,
                                              "rows": rows, "models": models}, indent=2))  # fmt: skip


def draw(n: int, m: int, repeat: int, pool: int, images: int) -> tuple[list[int], np.ndarray]:
    """Pool indices of n archs (the largest and the smallest, then n - 2 at random) and m random image indices."""
    rng = np.random.default_rng(1000 * n + repeat)
    return [0, 1, *(2 + rng.choice(pool - 2, n - 2, replace=False))], rng.choice(images, m, replace=False)


def candidate_models(
    pool, evals, v: np.ndarray, truth: np.ndarray, encoder, repeats: int, plan: Plan = Plan()
) -> dict[str, list[float]]:
    """At the demo's allocation, τ against test accuracy of every predictor candidate alone and of the mean of the
    two best ones' standardised predictions: whether the predictor, rather than the labels, leaves τ on the table."""
    Xp, Xe = encoder.transform(pool), encoder.transform(evals)
    a, b = plan.pair
    out: dict[str, list[float]] = {name: [] for name in [*plan.candidates, f"{a}+{b}"]}
    for r in range(repeats):
        idx, imgs = draw(plan.demo_archs, plan.demo_images, r, len(pool), v.shape[1])
        y = 100 * v[np.ix_(idx, imgs)].mean(1)
        preds = {name: CANDIDATES[name](r).fit(Xp[idx], y).predict(Xe) for name in plan.candidates}
        std = {k: (p - p.mean()) / (p.std() or 1.0) for k, p in preds.items()}
        preds[f"{a}+{b}"] = std[a] + std[b]
        for name, p in preds.items():
            out[name].append(kendall_tau(truth, p))
    print(f"\nat {plan.demo_archs} archs × {plan.demo_images} images, each predictor candidate's τ against test "
          "accuracy:")  # fmt: skip
    print("  " + "  ".join(f"{k} {np.mean(x):.3f} ± {np.std(x):.3f}" for k, x in out.items()))
    return out


if __name__ == "__main__":
    main()
