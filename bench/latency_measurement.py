"""Benchmark: what one latency measurement costs, and how repeatable it is.

For 20 archs spread over the default space by MACs, measure latency exactly as `nas-measure` does
(predictors/measure.py: the runtime model in ONNX Runtime by default, warm-up, timeit-style repeats, the estimator),
in two passes over all archs, and report the wall time of each measurement (building the model and its session
included; the kernel table is filled beforehand and its cost reported on its own), the repeat CV within it, and how
far the two estimates differ. Targets (issue 10): re-measurement difference median <= 1 %, max <= 3 %;
<= 0.5 s per arch.

    python bench/latency_measurement.py [--runtime onnxruntime|torch] [--estimator paired|min|median] [--run DIR]
                                        [--smoke]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from pathlib import Path

import torch

from predictors.measure import LatencyConfig, kernel_table, latency, paired_reference, runtime_latency
from supernet import ModelConfig, SearchSpace, build_supernet, extract_subnet
from supernet.artifact import load_supernet
from supernet.costs import spread_by_macs
from supernet.runtime.graph import runtime_model

ROOT = Path(__file__).resolve().parents[1]


def cpu_line() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "unknown")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runtime", default="onnxruntime", choices=["onnxruntime", "torch"])
    # paired times against a reference runtime model: ONNX Runtime's default; the PyTorch module's is min
    ap.add_argument("--estimator", default=None, choices=["paired", "min", "median"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--archs", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--min-repeat-ms", type=float, default=None)
    ap.add_argument("--run", default="results/demo", help="a trained run (weights do not change latency)")
    ap.add_argument("--smoke", action="store_true", help="seconds: 3 archs, 3 short repeats (checks that it runs)")
    args = ap.parse_args()
    args.estimator = args.estimator or ("paired" if args.runtime == "onnxruntime" else "min")
    if (Path(args.run) / "supernet.safetensors").is_file():
        net, _ = load_supernet(args.run)
    else:
        net = build_supernet(SearchSpace.from_yaml(ROOT / "conf/space/default.yaml"), ModelConfig()).eval()
    from omegaconf import OmegaConf

    defaults = OmegaConf.to_container(OmegaConf.load(ROOT / "conf/latency/cpu.yaml"))
    defaults.update(runtime=args.runtime, estimator=args.estimator, threads=args.threads, batch_size=args.batch)
    if args.repeats is not None:
        defaults["repeats"] = args.repeats
    if args.min_repeat_ms is not None:
        defaults["min_repeat_ms"] = args.min_repeat_ms
    if args.smoke:
        args.archs = 3
        defaults.update(repeats=3, warmup=1, min_repeat_ms=0.2)
    cfg = LatencyConfig(**defaults)
    c = net.config
    x = (
        torch.randn(args.batch, c.in_channels, c.image_size, c.image_size)
        if c.task == "image"
        else torch.randint(0, c.vocab_size, (args.batch, c.block_size))
    )
    archs = spread_by_macs(net.space, c, args.archs, seed=1, pool=2000)
    table = kernel_table(cfg, c, x)
    t0 = time.perf_counter()
    if table is not None:
        for arch in archs:
            table.plan(arch, c)
    print(
        f"CPU: {cpu_line()}; runtime={cfg.runtime} estimator={cfg.estimator} threads={cfg.threads} "
        f"batch={cfg.batch_size} warmup={cfg.warmup} repeats={cfg.repeats} min_repeat_ms={cfg.min_repeat_ms}"
    )
    if table is not None:
        print(f"kernel table: {len(table.entries)} linear shapes measured in {time.perf_counter() - t0:.1f} s")

    ref = paired_reference(net, table, x, cfg) if cfg.estimator == "paired" else None
    if ref is not None:
        print(f"paired reference: {ref.arch}, calibrated at {ref.ms:.4f} ms")

    def measure(arch) -> dict:
        if table is None:
            return latency(extract_subnet(net, arch), x, cfg)
        return runtime_latency(runtime_model(net, arch, table)[0], x, cfg, ref)

    # Two passes over all archs (not back to back): a re-measurement comes 10-20 s after the first one, as labels
    # measured at different times of a run do, so slow phases of the machine show up in the difference.
    secs, first = [], []
    for arch in archs:
        t0 = time.perf_counter()
        first.append(measure(arch))
        secs.append(time.perf_counter() - t0)
    second = [measure(arch) for arch in archs]
    print(f"{'arch':58s} {'ms':>8s} {'CV %':>6s} {'seconds':>7s} {'rerun Δ%':>8s}")
    cvs, deltas = [], []
    for arch, a, b, sec in zip(archs, first, second, secs, strict=True):
        cvs.append(100 * a["latency_cv"])
        deltas.append(100 * abs(b["latency_ms"] - a["latency_ms"]) / a["latency_ms"])
        print(f"{arch.key():58s} {a['latency_ms']:8.3f} {cvs[-1]:6.2f} {sec:7.2f} {deltas[-1]:8.2f}")
    print(f"seconds per subnet: median {statistics.median(secs):.2f}, max {max(secs):.2f} (target <= 0.5)")
    print(f"repeat CV: median {statistics.median(cvs):.2f} %, max {max(cvs):.2f} %")
    print(
        f"re-measurement difference: median {statistics.median(deltas):.2f} %, max {max(deltas):.2f} % "
        "(targets: median <= 1 %, max <= 3 %)"
    )


if __name__ == "__main__":
    main()
