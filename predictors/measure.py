"""Measure candidate subnets of a trained supernet: inherited accuracy, latency of the extracted module, costs.

* Candidates: the largest and the smallest arch plus a Latin-hypercube (space-filling) sample over the genes,
  deduplicated by canonical key (genes of inactive layers do not make a new arch).
* Accuracy (or LM loss and bits per byte) on the data module's fixed validation subset, with the supernet's weights
  (no fine-tuning), evaluated on the extracted standalone module.
* Latency where the subnet will run. By default (`runtime="onnxruntime"`) that is the deployment graph
  (supernet/runtime/): the subnet in ONNX Runtime with every block linear on the fastest correct low-bit kernel of
  this machine, from the kernel table. `runtime="torch"` times the extracted PyTorch module instead (a float
  simulation: quantized weights held as floats, activations fake-quantized), on the CPU or CUDA (CUDA events).
  Warm-up, then `repeats` timeit-style repeats; the estimate is their minimum (`estimator="min"`, the default: on a
  noisy shared VM the minimum is far more repeatable than the median) or median, with IQR and coefficient of
  variation recorded so noisy measurements are visible.
* Analytic costs from supernet/costs.py.

Every row lands in a `MeasurementTable` (predictors/table.py) as soon as it is measured.
"""

from __future__ import annotations

import math
import re
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from scipy.stats import qmc

from supernet.arch import Arch, canonical_key
from supernet.config import ModelConfig
from supernet.costs import arch_costs
from supernet.device_lock import measuring, timing
from supernet.extract import extract_subnet
from supernet.model import Supernet
from supernet.runtime.graph import runtime_model
from supernet.runtime.kernels import KernelTable, cpu_name
from supernet.runtime.session import check_runtime, feed, make_session
from supernet.space import SearchSpace

RUNTIMES = ("onnxruntime", "torch")
ESTIMATORS = ("paired", "min", "median")


@dataclass(frozen=True)
class LatencyConfig:
    """How latency is measured: runtime, device, CPU threads, batch size, warm-up, timed repeats and estimator."""

    runtime: str = "onnxruntime"  # the deployment graph in ONNX Runtime; "torch": the float-simulation module
    device: str = "cpu"
    threads: int = 1
    batch_size: int = 1
    warmup: int = 10
    repeats: int = 41
    min_repeat_ms: float = 3.0  # each timed repeat runs the model enough times to last this long (timeit-style)
    estimator: str = "paired"  # "paired" (ratios to a reference model, ONNX Runtime), "min" or "median" of repeats

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise ValueError(f"latency.runtime={self.runtime!r} is not one of {list(RUNTIMES)}")
        if self.runtime == "onnxruntime" and self.device != "cpu":
            raise ValueError(f"latency.runtime=onnxruntime runs on the CPU; for device={self.device} use "
                             "latency.runtime=torch")  # fmt: skip
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"latency.estimator={self.estimator!r} is not one of {list(ESTIMATORS)}")
        if self.estimator == "paired" and self.runtime != "onnxruntime":
            raise ValueError("latency.estimator=paired times against a reference runtime model: use it with "
                             "latency.runtime=onnxruntime, or latency.estimator=min")  # fmt: skip
        for name, low in (("threads", 1), ("batch_size", 1), ("repeats", 2), ("warmup", 0)):
            v = getattr(self, name)
            if not isinstance(v, int) or v < low:
                raise ValueError(f"latency.{name}={v!r} must be an integer >= {low}")
        if not self.min_repeat_ms >= 0:
            raise ValueError(f"latency.min_repeat_ms={self.min_repeat_ms!r} must be >= 0")


def check_device(device: str, setting: str = "latency.device") -> torch.device:
    """The torch device for `device` (the value of the config key `setting`), or one clear error when it is not
    usable here."""
    fix = f"use {setting.rsplit('.', 1)[-1]}=cpu"
    if not isinstance(device, str) or (device not in ("cpu", "cuda") and not re.fullmatch(r"cuda:\d+", device)):
        raise ValueError(f"{setting}={device!r} is not supported; use cpu, cuda or cuda:<index>")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"{setting}={device!r} requested but no CUDA device is available here; {fix}")
    index = torch.device(device).index
    if index is not None and index >= torch.cuda.device_count():
        raise ValueError(f"{setting}={device!r}: this machine has {torch.cuda.device_count()} CUDA device(s); {fix}")
    return torch.device(device)


def accuracy_target(device: str) -> dict[str, str]:
    """Where quality (accuracy, loss) is evaluated: the device, its model and the torch version; recorded with every
    measured table next to the latency target (accuracy is float32 arithmetic on either: the labels agree to
    rounding, so the table compares only the kind of device, `cpu` or `cuda`)."""
    dev = check_device(device, "accuracy_device")
    name = cpu_name() if dev.type == "cpu" else torch.cuda.get_device_name(dev)
    return {"device": device, "name": name, "torch": torch.__version__}


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
def evaluate(
    model: torch.nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], task: str, halves: bool = False
) -> dict:
    """{"accuracy": %} for classification, {"loss", "bpc"} (nats and bits per byte) for the LM; with `halves`, also
    the task metric on each half of the samples (`<metric>_h1`: even positions, `_h2`: odd), whose agreement across
    archs says how reliable one label is (predictors/reliability.py)."""
    model.eval()
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    with measuring(device_key(device)):
        return _evaluate(model, batches, task, halves, device)


def device_key(device: torch.device | str) -> str:
    """The name of `device`'s lock (predictors/device_lock.py): "cpu", or "cuda:<index>"."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda:{device.index if device.index is not None else torch.cuda.current_device()}"
    return device.type


def _evaluate(model: torch.nn.Module, batches: Sequence, task: str, halves: bool, device: torch.device) -> dict:
    # The batches stay where they were made (the CPU); each moves to the model's device when it is scored.
    batches = ((x.to(device, non_blocking=True), y.to(device, non_blocking=True)) for x, y in batches)
    if task != "lm":  # classification: images, or token sequences (task "text")
        hits = torch.cat([(model(x).argmax(-1) == y).double() for x, y in batches])
        out = {"accuracy": 100.0 * float(hits.mean())}
        if halves:
            out.update({f"accuracy_h{k + 1}": 100.0 * float(hits[k::2].mean()) for k in (0, 1)})
        return out
    sums, counts = [], []
    for x, y in batches:
        logits = model(x)
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2).double(), y, reduction="none")  # (B, T)
        sums.append(nll.sum(dim=1))
        counts.append(torch.full((len(y),), y.shape[1], dtype=torch.float64, device=device))
    s, c = torch.cat(sums), torch.cat(counts)
    loss = float(s.sum() / c.sum())
    out = {"loss": loss, "bpc": loss / math.log(2)}
    if halves:
        out.update({f"loss_h{k + 1}": float(s[k::2].sum() / c[k::2].sum()) if len(s) > k else loss for k in (0, 1)})
    return out


@torch.inference_mode()
def latency(model: torch.nn.Module, example: torch.Tensor, cfg: LatencyConfig) -> dict:
    """Latency (ms) of one `model(example)` call in PyTorch, with IQR and CV over `cfg.repeats` timed repeats."""
    device = check_device(cfg.device)
    model = model.to(device).eval()
    x = example.to(device)
    old_threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(cfg.threads)
    try:
        return _timed(lambda: model(x), cfg, _cuda_times if device.type == "cuda" else _cpu_times)
    finally:
        torch.set_num_threads(old_threads)


class Reference(NamedTuple):
    """A fixed runtime model timed alongside every measured one, and its calibrated latency (ms)."""

    session: Any
    inputs: dict
    ms: float
    arch: str


def reference_arch(space: SearchSpace) -> Arch:
    """The middle choice of every size and the widest bits (float where the space has it): a fixed, mid-sized
    yardstick for the paired estimator, always an arch of the space."""
    mid = lambda choices: choices[len(choices) // 2]  # noqa: E731
    d = mid(space.depth)
    return space.validate(
        Arch(d, mid(space.embed_dim), (mid(space.num_heads),) * d, (mid(space.mlp_ratio),) * d,
             (space.w_bits[-1],) * d, space.a_bits[-1])
    )  # fmt: skip


def _current_key(key: Any) -> Any:
    """An arch key as today's format writes it (anything that is not an arch key as it is)."""
    try:
        return canonical_key(key) if isinstance(key, str) else key
    except ValueError:
        return key


def current_reference_keys(settings: Any) -> Any:
    """`settings` (a measurement table's, a search's: nested dicts and lists) with the paired estimator's reference
    arch, `latency_reference.arch` at any depth, written as today's key: settings recorded before keys held FFN widths
    compare equal to today's, so their tables, searches and studies continue (nothing else is rewritten)."""
    if isinstance(settings, list):
        return [current_reference_keys(v) for v in settings]
    if not isinstance(settings, dict):
        return settings
    out = {k: current_reference_keys(v) for k, v in settings.items()}
    ref = out.get("latency_reference")
    if isinstance(ref, dict) and "arch" in ref:
        out["latency_reference"] = {**ref, "arch": _current_key(ref["arch"])}
    return out


def calibration_key(arch: Arch) -> str:
    """Where a kernel table keeps the paired estimator's calibration of reference arch `arch`."""
    return f"reference {arch.key()}"


def _legacy_calibration(entries: dict[str, Any], arch: Arch) -> dict[str, Any] | None:
    """A calibration kept under the single `reference` entry (tables written before calibrations were keyed by
    arch), if it is of `arch` (its key in the old format counts): reused, so earlier rows stay in the same units."""
    old = entries.get("reference")
    return old if isinstance(old, dict) and _current_key(old.get("arch")) == arch.key() else None


def paired_reference(net: Supernet, kernels: KernelTable, example: torch.Tensor, cfg: LatencyConfig) -> Reference:
    """The reference of the paired estimator for this kernel table's target: its calibration (the minimum over
    three times the usual repeats) is measured once and kept in the table, so every later measurement of the run
    (nas-measure, nas-search, nas-export) is in the same units."""
    cached = kernels.cache.get("reference")
    if cached is not None:
        return cached
    arch = reference_arch(net.space)
    session = make_session(runtime_model(net, arch, kernels)[0], cfg.threads)
    inputs = feed(session, example)
    kernels.reload()  # another process of this run may have calibrated it already: one calibration per run
    # Each calibration is kept under its own arch's key, so the table's merge rule (the first saved wins, right for
    # kernel verdicts and for two processes calibrating one arch) can never pair this arch with another's time.
    key = calibration_key(arch)
    saved = kernels.entries.get(key) or _legacy_calibration(kernels.entries, arch)
    if saved is None:
        calib = replace(cfg, estimator="min", repeats=3 * cfg.repeats)
        kernels.entries[key] = {
            "arch": arch.key(),
            "ms": _timed(lambda: session.run(None, inputs), calib, _cpu_times)["latency_ms"],
        }
        kernels.save()  # keeps an earlier process's calibration of this arch if one raced us to the file
        saved = kernels.entries[key]
    if _current_key(saved.get("arch")) != arch.key():
        raise RuntimeError(f"{kernels.path}: calibration {saved} under {key!r} is not of {arch.key()}")
    ref = Reference(session, inputs, float(saved["ms"]), arch.key())
    kernels.cache["reference"] = ref
    return ref


def runtime_latency(model, example: torch.Tensor, cfg: LatencyConfig, reference: Reference | None = None) -> dict:
    """Latency (ms) of one call of a runtime model (supernet/runtime/) in ONNX Runtime on the CPU."""
    session = make_session(model, cfg.threads)
    inputs = feed(session, example)
    call = lambda: session.run(None, inputs)  # noqa: E731
    if cfg.estimator != "paired":
        return _timed(call, cfg, _cpu_times)
    if reference is None:
        raise ValueError("latency.estimator=paired needs the reference model (predictors.measure.paired_reference)")
    return _paired(call, lambda: reference.session.run(None, reference.inputs), reference.ms, cfg)


def _paired(call, ref_call, ref_ms: float, cfg: LatencyConfig) -> dict:
    """Each repeat times the model, then the reference, back to back; the estimate is the ratio of their minima
    times the reference's calibrated latency. This VM slows down by up to 2x for tens of seconds at a time (the
    hypervisor): a slowdown that long hits both alike and cancels in the ratio."""
    with timing("cpu"):  # ONNX Runtime runs on the CPU
        return _paired_timed(call, ref_call, ref_ms, cfg)


def _paired_timed(call, ref_call, ref_ms: float, cfg: LatencyConfig) -> dict:
    for _ in range(cfg.warmup):
        call()
        ref_call()
    number = max(1, math.ceil(cfg.min_repeat_ms / max(statistics.median(_cpu_times(call, 3, 1)), 1e-3)))
    ref_number = max(1, math.ceil(cfg.min_repeat_ms / max(ref_ms, 1e-3)))
    times, refs = [], []
    for _ in range(cfg.repeats):
        times.append(_cpu_times(call, 1, number)[0] / number)
        refs.append(_cpu_times(ref_call, 1, ref_number)[0] / ref_number)
    # The minima are the quiet-time costs of both (stable to ~1 % within a window); their ratio cancels a slow phase
    # that covers the whole window, which the model's own minimum would carry into the label.
    scale = ref_ms / min(refs)
    q1, q3 = np.percentile(times, [25, 75])
    cv = statistics.pstdev(times) / statistics.mean(times)
    return {
        "latency_ms": float(min(times) * scale),
        "latency_iqr_ms": float((q3 - q1) * scale),
        "latency_cv": float(cv),
    }


def _timed(call, cfg: LatencyConfig, timer) -> dict:
    """Warm-up, then `cfg.repeats` repeats of enough back-to-back calls to last `cfg.min_repeat_ms`.

    IQR and CV describe those repeats (per-call jitter averages out inside a repeat); the estimate is their minimum
    or median (`cfg.estimator`). Nothing else is measured on the device meanwhile (predictors/device_lock.py).
    """
    with timing(device_key(cfg.device)):
        return _timed_alone(call, cfg, timer)


def _timed_alone(call, cfg: LatencyConfig, timer) -> dict:
    for _ in range(cfg.warmup):
        call()
    # Sub-millisecond calls are dominated by timer and scheduler jitter: time `number` calls per repeat.
    single = statistics.median(timer(call, 3, 1))
    number = max(1, math.ceil(cfg.min_repeat_ms / max(single, 1e-3)))
    times = [t / number for t in timer(call, cfg.repeats, number)]
    q1, med, q3 = np.percentile(times, [25, 50, 75])
    cv = statistics.pstdev(times) / statistics.mean(times)
    estimate = min(times) if cfg.estimator == "min" else med
    return {"latency_ms": float(estimate), "latency_iqr_ms": float(q3 - q1), "latency_cv": float(cv)}


def _cpu_times(call, repeats: int, number: int) -> list[float]:
    """Milliseconds of `number` back-to-back calls, `repeats` times."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            call()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def _cuda_times(call, repeats: int, number: int) -> list[float]:
    """Milliseconds of `number` back-to-back calls between CUDA events, `repeats` times."""
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(number):
            call()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return times


def latency_target(cfg: LatencyConfig) -> dict[str, str]:
    """Where latency is measured: runtime (with its version) and CPU model; recorded with every measured table."""
    if cfg.runtime == "onnxruntime":
        runtime = f"onnxruntime {check_runtime()}"
    else:
        runtime = f"torch {torch.__version__} (float simulation)"
    device = cpu_name() if cfg.device == "cpu" else torch.cuda.get_device_name(check_device(cfg.device))
    return {"runtime": runtime, "device": device}


def kernel_table(
    cfg: LatencyConfig, config: ModelConfig, example: torch.Tensor, path: str | Path | None = None
) -> KernelTable | None:
    """The kernel table for timing in ONNX Runtime with `cfg` on inputs like `example` (None for the torch runtime);
    persisted at `path` when given."""
    if cfg.runtime != "onnxruntime":
        return None
    tokens = config.tokens(example.shape[1] if config.task == "lm" else None)
    return KernelTable(cfg.threads, len(example), tokens, path)


def measure_arch(
    net: Supernet,
    arch: Arch,
    batches: Sequence,
    example: torch.Tensor,
    cfg: LatencyConfig,
    kernels: KernelTable | None = None,
    accuracy_device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Every metric of one arch: quality on `batches`, latency on `example` (in `cfg.runtime`), analytic costs.

    Quality is scored on the extracted module (the supernet's arithmetic) on `accuracy_device` (where compute is: a
    GPU), latency where `cfg` says (the deployment target: by default ONNX Runtime on this machine's CPU); the
    runtime model computes the same arithmetic (tested), so the latency belongs to the model whose accuracy is
    reported.
    """
    sub = extract_subnet(net, arch)
    row: dict[str, float] = dict(evaluate(sub.to(accuracy_device), batches, net.config.task, halves=True))
    if cfg.runtime == "onnxruntime":
        if kernels is None:
            kernels = kernel_table(cfg, net.config, example)
        model, _ = runtime_model(net, arch, kernels)
        reference = paired_reference(net, kernels, example, cfg) if cfg.estimator == "paired" else None
        row.update(runtime_latency(model, example, cfg, reference))
    else:
        row.update(latency(sub, example, cfg))
    row.update(arch_costs(arch, net.config).to_dict())
    return row


def fixed_batches(loader: Iterable) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Materialise a (small, fixed) validation subset once, so every arch is scored on exactly the same data."""
    return [(x, y) for x, y in loader]
