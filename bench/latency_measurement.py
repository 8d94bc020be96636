"""Benchmark: what one latency measurement costs, and how repeatable it is.

For 20 archs spread over the default space by MACs, extract the subnet and measure its CPU latency exactly as
`nas-measure` does (predictors/measure.py: warm-up, timeit-style repeats, median), twice, and report the wall time
of each measurement, the repeat CV within it, and how far the two medians differ. Targets: ≤ 1 s per subnet and
repeat CV < 5 %.

    python bench/latency_measurement.py [--threads 1] [--batch 1] [--run results/demo]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from predictors.measure import LatencyConfig, latency
from supernet import ModelConfig, SearchSpace, build_supernet, extract_subnet
from supernet.artifact import load_supernet
from supernet.costs import spread_by_macs

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--archs", type=int, default=20)
    ap.add_argument("--run", default="results/demo", help="a trained run (weights do not change latency)")
    args = ap.parse_args()
    if (Path(args.run) / "supernet.safetensors").is_file():
        net, _ = load_supernet(args.run)
    else:
        net = build_supernet(SearchSpace.from_yaml(ROOT / "conf/space/default.yaml"), ModelConfig()).eval()
    cfg = LatencyConfig(threads=args.threads, batch_size=args.batch)
    c = net.config
    x = torch.randn(args.batch, c.in_channels, c.image_size, c.image_size) if c.task == "image" else torch.randint(
        0, c.vocab_size, (args.batch, c.block_size))  # fmt: skip
    print(f"latency measurement: threads={cfg.threads} batch={cfg.batch_size} warmup={cfg.warmup} "
          f"repeats={cfg.repeats} min_repeat_ms={cfg.min_repeat_ms}")  # fmt: skip
    print(f"{'arch':58s} {'median ms':>9s} {'CV %':>6s} {'seconds':>7s} {'rerun Δ%':>8s}")
    secs, cvs, deltas = [], [], []
    for arch in spread_by_macs(net.space, c, args.archs, seed=1, pool=2000):
        t0 = time.perf_counter()
        first = latency(extract_subnet(net, arch), x, cfg)
        secs.append(time.perf_counter() - t0)
        second = latency(extract_subnet(net, arch), x, cfg)
        cvs.append(100 * first["latency_cv"])
        deltas.append(100 * abs(second["latency_ms"] - first["latency_ms"]) / first["latency_ms"])
        print(f"{arch.key():58s} {first['latency_ms']:9.3f} {cvs[-1]:6.2f} {secs[-1]:7.2f} {deltas[-1]:8.2f}")
    print(f"seconds per subnet: median {statistics.median(secs):.2f}, max {max(secs):.2f} (target <= 1)")
    print(f"repeat CV: median {statistics.median(cvs):.2f} %, max {max(cvs):.2f} % (target < 5 %)")
    print(f"re-measurement difference: median {statistics.median(deltas):.2f} %, max {max(deltas):.2f} %")


if __name__ == "__main__":
    main()
