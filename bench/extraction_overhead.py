"""Benchmark: cost of running a subnet *inside* the supernet vs as an extracted standalone module.

For ~10 archs spanning the default space (evenly spaced by MACs, plus the smallest and the largest), time
`supernet(x, arch)` and `extract_subnet(supernet, arch)(x)` side by side in one run, interleaved so machine noise
hits both alike, and print the ratio of medians. Target: ratio ≤ 1.05.

Two ratios per arch: `total` for the arch as sampled, and `slicing` for the same arch with float weights
(w_bits = 32 everywhere), which isolates the cost of elastic slicing from the cost of re-quantizing weights. The
supernet fake-quantizes its low-bit weights on every call (training needs that: the weights change every step);
the extracted module holds them already quantized.

    python bench/extraction_overhead.py [--task image|lm] [--batch 64] [--repeats 30] [--archs 10] [--smoke]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from supernet import ModelConfig, SearchSpace, arch_costs, build_supernet, extract_subnet
from supernet.costs import spread_by_macs

ROOT = Path(__file__).resolve().parents[1]


def spread_archs(space: SearchSpace, config: ModelConfig, n: int, seed: int = 0) -> list:
    """The smallest, `n - 2` archs evenly spaced in MACs over a large random sample, and the largest."""
    return [space.smallest(), *spread_by_macs(space, config, max(n - 2, 1), seed, pool=4000), space.largest()]


def time_pair(f_super, f_sub, repeats: int, warmup: int = 3) -> tuple[float, float]:
    """Median seconds of each callable, alternating calls so both see the same machine state."""
    for _ in range(warmup):
        f_super()
        f_sub()
    ts, tx = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f_super()
        t1 = time.perf_counter()
        f_sub()
        t2 = time.perf_counter()
        ts.append(t1 - t0)
        tx.append(t2 - t1)
    return statistics.median(ts), statistics.median(tx)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=["image", "lm"], default="image")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--archs", type=int, default=10)
    ap.add_argument("--smoke", action="store_true", help="seconds: 3 archs, batch 2, 1 repeat (checks that it runs)")
    args = ap.parse_args()
    if args.smoke:
        args.archs, args.batch, args.repeats = 3, 2, 1

    space = SearchSpace.from_yaml(ROOT / "conf" / "space" / "default.yaml")
    config = ModelConfig(task=args.task)
    torch.manual_seed(0)
    net = build_supernet(space, config).eval()
    if args.task == "image":
        x = torch.randn(args.batch, config.in_channels, config.image_size, config.image_size)
    else:
        x = torch.randint(0, config.vocab_size, (args.batch, config.block_size))

    print(
        f"task={args.task} batch={args.batch} repeats={args.repeats} threads={torch.get_num_threads()} "
        f"torch={torch.__version__}"
    )
    print(f"{'arch':58s} {'MMACs':>7s} {'supernet ms':>11s} {'subnet ms':>9s} {'total':>6s} {'slicing':>7s}")
    ratios, slicing = [], []
    with torch.inference_mode():
        for arch in spread_archs(space, config, args.archs):
            row = []
            for a in (arch, replace(arch, w_bits=(32,) * arch.depth)):
                sub = extract_subnet(net, a)
                t_super, t_sub = time_pair(lambda a=a: net(x, a), lambda s=sub: s(x), args.repeats)
                row.append((t_super, t_sub))
            (t_super, t_sub), (f_super, f_sub) = row
            ratios.append(t_super / t_sub)
            slicing.append(f_super / f_sub)
            mmacs = arch_costs(arch, config).macs / 1e6
            print(
                f"{arch.key():58s} {mmacs:7.2f} {t_super * 1e3:11.2f} {t_sub * 1e3:9.2f} {ratios[-1]:6.3f} "
                f"{slicing[-1]:7.3f}"
            )
    print(f"total   supernet/subnet: median {statistics.median(ratios):.3f}, max {max(ratios):.3f} (target <= 1.05)")
    print(
        f"slicing supernet/subnet: median {statistics.median(slicing):.3f}, max {max(slicing):.3f} "
        "(float weights: the cost of elastic slicing alone)"
    )


if __name__ == "__main__":
    main()
