"""Benchmark: how reliable is one accuracy label, and what would raise it?

Scores the demo's candidate archs (the ones `nas-measure` measures) per image on the validation subset and on the
test split, then reports the split-half Kendall τ (same archs, two disjoint halves of the images, mean of 20 random
halvings) for:

* the accuracy label as `nas-measure` records it (validation halves of 2,500 images);
* twice as many images per half (test halves of 5,000): what more validation images would buy;
* smoother per-image scores (probability and log-probability of the true class), and how well each ranks the archs'
  *test* accuracy, the thing a label stands for;
* what a predictor learns from each label: every predictor candidate's out-of-fold predictions (5-fold CV over the
  archs, as `nas-fit` selects them) against its own label and against the archs' test accuracy. A label is better
  for the search if the predictor fitted on it ranks unseen archs' test accuracy better.

Per-image scores are cached next to the run (`<run>/label_scores.npz`), so a rerun only refits the predictors.

    python bench/label_reliability.py --run results/demo [--n-archs 200] [--out bench/results/label_reliability.json]
    python bench/label_reliability.py --run <run> --smoke   # 12 archs, 64 images, ridge and GP only (tests)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import kendalltau

from predictors.features import FeatureEncoder
from predictors.measure import candidate_archs, fixed_batches
from predictors.measure_cli import build_data
from predictors.models import CANDIDATES, out_of_fold
from predictors.reliability import split_half_tau
from supernet.artifact import load_supernet

SCORES = ("accuracy", "p_true", "logp_true")
SMOKE = {"n_archs": 12, "val_images": 64, "candidates": ["ridge", "gp"]}  # --smoke: a tiny run's (tests)


@torch.inference_mode()
def scores(net, arch, batches) -> dict[str, np.ndarray]:
    """Per-image correctness, probability and log-probability of the true class."""
    out = {k: [] for k in SCORES}
    for x, y in batches:
        logp = net(x, arch).log_softmax(-1)
        true = logp.gather(1, y[:, None])[:, 0].double()
        out["accuracy"].append((logp.argmax(-1) == y).double())
        out["p_true"].append(true.exp())
        out["logp_true"].append(true)
    return {k: torch.cat(v).numpy() for k, v in out.items()}


def cached_scores(net, archs, val, test, path: Path) -> tuple[list[dict], list[dict], float]:
    """Per-image scores of every arch on the validation and test images, from `path` when it holds these archs."""
    keys = [a.key() for a in archs]
    if path.is_file():
        z = np.load(path, allow_pickle=False)
        if list(z["keys"]) == keys and z["val_accuracy"].shape[1] == sum(len(y) for _, y in val):
            split = lambda p: [{k: z[f"{p}_{k}"][i] for k in SCORES} for i in range(len(keys))]  # noqa: E731
            return split("val"), split("test"), float(z["seconds"])
    t0 = time.perf_counter()
    v = [scores(net, a, val) for a in archs]
    t = [scores(net, a, test) for a in archs]
    seconds = time.perf_counter() - t0
    arrays = {f"{p}_{k}": np.stack([s[k] for s in rows]) for p, rows in (("val", v), ("test", t)) for k in SCORES}
    np.savez(path, keys=np.array(keys), seconds=seconds, **arrays)
    return v, t, seconds


def predictor_taus(
    net, archs, labels: np.ndarray, test_acc: np.ndarray, seed: int = 0, candidates=tuple(CANDIDATES)
) -> dict[str, dict]:
    """Each predictor candidate's out-of-fold τ against its own label and against test accuracy (5-fold CV)."""
    X = FeatureEncoder(net.space, net.config).transform(archs)
    out = {}
    for name in candidates:
        oof = out_of_fold(name, X, labels, k_folds=5, seed=seed)
        out[name] = {"own_label": float(kendalltau(oof, labels).statistic),
                     "test_accuracy": float(kendalltau(oof, test_acc).statistic)}  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="results/demo")
    ap.add_argument("--n-archs", type=int, default=200)
    ap.add_argument("--val-images", type=int, default=5000)
    ap.add_argument("--out", default=None)
    ap.add_argument("--smoke", action="store_true", help="12 archs, 64 images, 2 predictor candidates: tests")
    args = ap.parse_args()
    candidates = list(CANDIDATES)
    if args.smoke:
        args.n_archs, args.val_images, candidates = SMOKE["n_archs"], SMOKE["val_images"], SMOKE["candidates"]
    net, info = load_supernet(Path(args.run))
    dm = build_data(info, {"val_subset_size": args.val_images})
    dm.setup()
    val, test = fixed_batches(dm.val_subset_dataloader()), fixed_batches(dm.test_dataloader())
    archs = candidate_archs(net.space, args.n_archs, seed=0)
    # A smoke keeps its own cache: run on a real run, it must not replace that run's (slow to rebuild) scores.
    cache = Path(args.run) / ("label_scores_smoke.npz" if args.smoke else "label_scores.npz")
    v, t, seconds = cached_scores(net, archs, val, test, cache)
    test_acc = np.array([s["accuracy"].mean() for s in t])
    result = {"run": args.run, "n_archs": len(archs), "val_images": args.val_images, "test_images": len(dm.test),
              "seconds": round(seconds, 1), "scores": {}}  # fmt: skip
    acc = 100 * np.array([s["accuracy"].mean() for s in v])
    result["val_accuracy_range"] = [float(acc.min()), float(acc.max())]
    result["val_accuracy_sd"] = float(acc.std())
    print(f"{len(archs)} archs, validation accuracy {acc.min():.2f}–{acc.max():.2f} % (sd {acc.std():.2f})")
    print(f"{'score':10s} {'split-half τ, val':>18s} {'split-half τ, test':>19s} {'τ(val score, test acc)':>23s}")
    for k in SCORES:
        mv, mt = np.stack([s[k] for s in v]), np.stack([s[k] for s in t])
        half_val, half_test = split_half_tau(mv), split_half_tau(mt)
        vs_test = float(kendalltau(mv.mean(1), test_acc).statistic)
        result["scores"][k] = {"split_half_val": half_val, "split_half_test": half_test,
                               "tau_vs_test_accuracy": vs_test}  # fmt: skip
        print(f"{k:10s} {half_val[0]:11.3f} ± {half_val[1]:.3f} {half_test[0]:12.3f} ± {half_test[1]:.3f} "
              f"{vs_test:23.3f}")  # fmt: skip
    print(f"(val halves: {args.val_images // 2} images each; test halves: {len(dm.test) // 2} each)")
    print("\npredictors fitted on each validation label, out-of-fold Kendall τ (5-fold CV over the archs):")
    print(f"{'label':10s} " + " ".join(f"{n + ' own/test':>16s}" for n in candidates) + f" {'selected':>14s}")
    for k in SCORES:
        taus = predictor_taus(net, archs, np.stack([s[k] for s in v]).mean(1), test_acc, candidates=candidates)
        best = max(taus, key=lambda n: taus[n]["own_label"])  # what nas-fit would select on this label
        result["scores"][k]["predictors"] = taus
        result["scores"][k]["selected"] = best
        cells = " ".join(f"{taus[n]['own_label']:7.3f}/{taus[n]['test_accuracy']:.3f}".rjust(16) for n in candidates)
        print(f"{k:10s} {cells} {best:>5s} {taus[best]['test_accuracy']:.3f}".rstrip())
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
