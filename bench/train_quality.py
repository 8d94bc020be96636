"""Benchmark: how good are the subnets a supernet hands out, next to the same archs trained alone?

Trains (or resumes) the demo supernet with the sandwich rule and, as the baseline, with the uniform single-path
sampler; then, for 5 archs spread over the space by MACs (smallest, three quantiles, largest), reports on the
Fashion-MNIST *test* split:

* inherited accuracy (supernet weights, no fine-tuning), sandwich and uniform;
* the same arch trained from scratch as a standalone quantization-aware model for the same epochs, data, optimizer
  and schedule (initialised like the supernet);
* the gap inherited − scratch (goal: mean ≥ 0, worst ≥ −1 point);
* 4-bit vs float weights for the same arch (all layers at w_bits 4, then 32), inherited from the sandwich supernet.

    python bench/train_quality.py [--experiment demo] [--out results/bench_quality]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from supernet import build_supernet, extract_subnet
from supernet.artifact import load_supernet
from supernet.train_cli import CONF_DIR, train
from supernet.training import SubnetModule, reference_archs


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return compose(config_name="train", overrides=overrides)


@torch.no_grad()
def accuracy(model: torch.nn.Module, loader) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += int((model(x).argmax(-1) == y).sum())
        total += len(y)
    return 100.0 * correct / total


def train_scratch(space, config, arch, cfg, dm) -> torch.nn.Module:
    """The arch alone: initialised like the supernet (extracted from a fresh one), trained with the same recipe."""
    torch.manual_seed(cfg.seed)
    fresh = build_supernet(space, config)
    sub = extract_subnet(fresh, arch, qat=True).train()
    module = SubnetModule(sub, dict(cfg.train))
    trainer = L.Trainer(
        **{**dict(cfg.trainer), "enable_progress_bar": False},
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=dm)
    return sub


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default="demo")
    ap.add_argument("--out", default="results/bench_quality")
    ap.add_argument("--extra", nargs="*", default=[], help="more Hydra overrides for every training run")
    args = ap.parse_args()
    out = Path(args.out)
    base = [f"experiment={args.experiment}", "trainer.enable_progress_bar=false", *args.extra]

    runs = {}
    for sampler in ("sandwich", "uniform"):
        cfg = compose_cfg([*base, f"train={sampler}", f"run_name=bench_quality_{sampler}"])
        t0 = time.perf_counter()
        train(cfg, out / sampler)
        runs[sampler] = load_supernet(out / sampler)[0]
        print(f"{sampler}: trained in {time.perf_counter() - t0:.0f} s")

    cfg = compose_cfg([*base, "train=sandwich"])
    dm = instantiate(cfg.data)
    dm.setup()
    test = dm.test_dataloader()
    net = runs["sandwich"]
    space, config = net.space, net.config
    archs = reference_archs(space, config, 3, seed=cfg.seed)
    order = ["smallest", "ref1", "ref2", "ref3", "largest"]

    rows = []
    print(f"\n{'arch':58s} {'sandwich':>8s} {'uniform':>8s} {'scratch':>8s} {'gap':>6s} {'w4':>6s} {'w32':>6s}")
    for name in order:
        arch = archs[name]
        t0 = time.perf_counter()
        scratch = accuracy(train_scratch(space, config, arch, cfg, dm), test)
        row = {
            "name": name,
            "arch": arch.key(),
            "inherited_sandwich": accuracy(extract_subnet(net, arch), test),
            "inherited_uniform": accuracy(extract_subnet(runs["uniform"], arch), test),
            "scratch": scratch,
            "scratch_seconds": round(time.perf_counter() - t0, 1),
        }
        for bits in (4, 32):
            if bits in space.w_bits:
                row[f"w{bits}"] = accuracy(extract_subnet(net, replace(arch, w_bits=(bits,) * arch.depth)), test)
        row["gap"] = row["inherited_sandwich"] - scratch
        rows.append(row)
        print(
            f"{arch.key():58s} {row['inherited_sandwich']:8.2f} {row['inherited_uniform']:8.2f} {scratch:8.2f} "
            f"{row['gap']:+6.2f} {row.get('w4', float('nan')):6.2f} {row.get('w32', float('nan')):6.2f}"
        )
    gaps = [r["gap"] for r in rows]
    summary = {
        "experiment": args.experiment,
        "epochs": cfg.trainer.max_epochs,
        "rows": rows,
        "mean_gap": statistics.mean(gaps),
        "worst_gap": min(gaps),
        "mean_sandwich_minus_uniform": statistics.mean(r["inherited_sandwich"] - r["inherited_uniform"] for r in rows),
    }
    both = [r["w4"] - r["w32"] for r in rows if "w4" in r and "w32" in r]
    summary["mean_w4_minus_w32"] = statistics.mean(both) if both else None
    print(
        f"\ninherited - scratch: mean {summary['mean_gap']:+.2f}, worst {summary['worst_gap']:+.2f} "
        "(goal: mean >= 0, worst >= -1)"
    )
    print(f"sandwich+KD - uniform (inherited): mean {summary['mean_sandwich_minus_uniform']:+.2f} points")
    if both:
        print(f"4-bit - float weights (inherited): mean {summary['mean_w4_minus_w32']:+.2f} points")
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
