"""Measure candidate subnets of a trained supernet: inherited accuracy, latency of the extracted module, costs.

* Candidates: the largest and the smallest arch plus a Latin-hypercube (space-filling) sample over the genes,
  deduplicated by canonical key (genes of inactive layers do not make a new arch).
* Accuracy (or LM loss and bits per byte) on the data module's fixed validation subset, with the supernet's weights
  (no fine-tuning), evaluated on the extracted standalone module.
* Latency of the extracted module on the chosen device: CPU (threads and batch size from the config) or CUDA
  (synchronised, CUDA events); warm-up, then the median of `repeats` timings, with IQR and coefficient of variation
  recorded so noisy measurements are visible.
* Analytic costs from supernet/costs.py.

Every row lands in a `MeasurementTable` (predictors/table.py) as soon as it is measured.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import qmc

from supernet.arch import Arch
from supernet.costs import arch_costs
from supernet.extract import extract_subnet
from supernet.model import Supernet
from supernet.space import SearchSpace


@dataclass(frozen=True)
class LatencyConfig:
    """How latency is measured: device, CPU threads, batch size, warm-up and timed repeats."""

    device: str = "cpu"
    threads: int = 1
    batch_size: int = 1
    warmup: int = 5
    repeats: int = 21
    min_repeat_ms: float = 10.0  # each timed repeat runs the model enough times to last this long (timeit-style)

    def __post_init__(self) -> None:
        for name, low in (("threads", 1), ("batch_size", 1), ("repeats", 2), ("warmup", 0)):
            v = getattr(self, name)
            if not isinstance(v, int) or v < low:
                raise ValueError(f"latency.{name}={v!r} must be an integer >= {low}")
        if not self.min_repeat_ms >= 0:
            raise ValueError(f"latency.min_repeat_ms={self.min_repeat_ms!r} must be >= 0")


def check_device(device: str) -> torch.device:
    """The torch device for `device`, or one clear error when it is not usable here."""
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"latency device {device!r} is not supported; use cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"latency device {device!r} requested but no CUDA device is available here; use device=cpu")
    return torch.device(device)


def candidate_archs(space: SearchSpace, n: int, seed: int = 0) -> list[Arch]:
    """Largest, smallest, then a Latin-hypercube sample over the genes, `n` distinct archs in all (fewer if the
    space is smaller)."""
    if n < 1:
        raise ValueError(f"number of candidate archs must be >= 1, got {n}")
    if space.size() <= n:  # the whole space fits: enumerate it rather than hope sampling finds every arch
        ends = list({a.key(): a for a in (space.largest(), space.smallest())}.values())
        return ends + [a for a in space.all_archs() if a not in ends]
    xl, xu = space.gene_bounds()
    out: dict[str, Arch] = {}
    for a in (space.largest(), space.smallest()):
        out.setdefault(a.key(), a)
    # Fixed-size LHS rounds seeded by (seed, round): the first n candidates never depend on n, so asking for
    # more archs later extends the measured set instead of replacing it.
    for r in range(10_000):
        if len(out) >= n:
            break
        u = qmc.LatinHypercube(d=space.n_genes, seed=np.random.default_rng([seed, r])).random(64)
        for g in np.minimum(xl + np.floor(u * (xu - xl + 1)), xu).astype(np.int64):
            a = space.decode(g)
            out.setdefault(a.key(), a)
            if len(out) >= n:
                break
    return list(out.values())[:n]


@torch.inference_mode()
def evaluate(model: torch.nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], task: str) -> dict:
    """{"accuracy": %} for classification, {"loss", "bpc"} (nats and bits per byte) for the LM."""
    model.eval()
    if task == "image":
        correct = sum(int((model(x).argmax(-1) == y).sum()) for x, y in batches)
        return {"accuracy": 100.0 * correct / sum(len(y) for _, y in batches)}
    total = count = 0.0
    for x, y in batches:
        logits = model(x)
        total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                                         reduction="sum"))  # fmt: skip
        count += y.numel()
    loss = total / count
    return {"loss": loss, "bpc": loss / math.log(2)}


@torch.inference_mode()
def latency(model: torch.nn.Module, example: torch.Tensor, cfg: LatencyConfig) -> dict:
    """Median latency (ms) of one `model(example)` call, with IQR and CV over `cfg.repeats` timed repeats.

    Each repeat times enough back-to-back calls to last `cfg.min_repeat_ms`, so IQR and CV describe those repeats
    (per-call jitter averages out inside a repeat), which is what the median's stability depends on.
    """
    device = check_device(cfg.device)
    model = model.to(device).eval()
    x = example.to(device)
    old_threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(cfg.threads)
    try:
        for _ in range(cfg.warmup):
            model(x)
        timer = _cuda_times if device.type == "cuda" else _cpu_times
        # Sub-millisecond calls are dominated by timer and scheduler jitter: time `number` calls per repeat.
        single = statistics.median(timer(model, x, 3, 1))
        number = max(1, math.ceil(cfg.min_repeat_ms / max(single, 1e-3)))
        times = [t / number for t in timer(model, x, cfg.repeats, number)]
    finally:
        torch.set_num_threads(old_threads)
    q1, med, q3 = np.percentile(times, [25, 50, 75])
    cv = statistics.pstdev(times) / statistics.mean(times)
    return {"latency_ms": float(med), "latency_iqr_ms": float(q3 - q1), "latency_cv": float(cv)}


def _cpu_times(model, x, repeats: int, number: int) -> list[float]:
    """Milliseconds of `number` back-to-back calls, `repeats` times."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            model(x)
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def _cuda_times(model, x, repeats: int, number: int) -> list[float]:
    """Milliseconds of `number` back-to-back calls between CUDA events, `repeats` times."""
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(number):
            model(x)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return times


def measure_arch(
    net: Supernet, arch: Arch, batches: Sequence, example: torch.Tensor, cfg: LatencyConfig
) -> dict[str, float]:
    """Every metric of one arch: quality on `batches`, latency on `example`, analytic costs."""
    sub = extract_subnet(net, arch)
    row: dict[str, float] = dict(evaluate(sub, batches, net.config.task))
    row.update(latency(sub, example, cfg))
    row.update(arch_costs(arch, net.config).to_dict())
    return row


def fixed_batches(loader: Iterable) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Materialise a (small, fixed) validation subset once, so every arch is scored on exactly the same data."""
    return [(x, y) for x, y in loader]
