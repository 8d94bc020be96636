"""Which kernel runs each block linear: the fastest *correct* one, from a table measured on this machine.

For a linear of shape (K in, N out) at given weight and activation bits, on `tokens` tokens per call (batch ×
sequence), every candidate kernel (supernet/runtime/linears.py) is built as a one-linear ONNX Runtime session,
checked against the supernet's arithmetic (supernet/quant.py) on random inputs and on an adversarial one (all
activations at the top code, weights of one sign: what overflows U8S8's 16-bit pair sums on CPUs without VNNI), and
timed interleaved with the others (best of several timeit-style repeats). The fastest kernel that passed is chosen.

The table is keyed by the target (ONNX Runtime version, CPU model, threads, batch, tokens) and persisted as JSON, so
a run measures each shape once, every later stage reuses the same choices, and a move to another machine or
runtime starts a new table instead of reusing stale choices.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from supernet.arch import Arch
from supernet.config import ModelConfig
from supernet.device_lock import timing
from supernet.packing import pack_codes
from supernet.quant import quantize_activations, weight_codes
from supernet.runtime.linears import LinearWeights, candidates, linear_model
from supernet.runtime.session import check_runtime, make_session
from supernet.tolerance import RTOL, own_rounding_agrees, relative_error, rows_off

_REPEATS, _NUMBER = 11, 8
# Timing budget of one shape's kernels: small shapes (sub-millisecond calls) get all _REPEATS × _NUMBER calls, as
# always; a real model's long calls (a 2048-wide linear on 2048 tokens takes about a second on 2 cores) get fewer
# calls per repeat and fewer repeats (at least 3), so the table's cost grows with its shapes' compute, not 88 calls
# of each whatever they cost.
_BUDGET_S = 2.0
_MIN_REPEATS = 3


def cpu_name() -> str:
    """The CPU model, as in `lscpu`."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def linear_shapes(arch: Arch, config: ModelConfig, i: int) -> dict[str, tuple[int, int]]:
    """(K, N) of the four block linears of layer `i`."""
    e, hd, f = arch.embed_dim, arch.num_heads[i] * config.head_dim, arch.ffn_hidden(i)
    kv = 2 * hd // config.kv_group  # key and value: one head per group
    return {"qkv": (e, hd + kv), "proj": (hd, e), "fc1": (e, (2 if config.gated_ffn else 1) * f), "fc2": (f, e)}


def _probe_layer(k_in: int, n_out: int, w_bits: int, seed: int) -> tuple[LinearWeights, torch.Tensor]:
    """A random layer at `w_bits` (half its rows of one sign, the saturation case) and its quantized weight."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n_out, k_in, generator=g) * 0.05
    w[: n_out // 2] = w[: n_out // 2].abs() + 0.01
    bias = torch.randn(n_out, generator=g) * 0.1
    if w_bits >= 32:
        return LinearWeights((n_out, k_in), 32, None, None, w.reshape(-1).numpy(), bias.numpy()), w
    codes, scale = weight_codes(w, w_bits)
    lw = LinearWeights((n_out, k_in), w_bits, pack_codes(codes, w_bits), scale.reshape(-1).numpy(), None, bias.numpy())
    return lw, codes * scale


# Kernels that quantize activations with their own rounding (see supernet/tolerance.py): MatMulNBits at int8 compute.
OWN_ROUNDING = ("nbits_int8",)


def measure_linear(k_in: int, n_out: int, w_bits: int, a_bits: int, tokens: int, batch: int, threads: int) -> dict:
    """{"kernel": fastest correct, "us": {kernel: best µs per call}, "rejected": {kernel: why}} for one shape."""
    weights, w_q = _probe_layer(k_in, n_out, w_bits, seed=k_in * 7919 + n_out)
    g = torch.Generator().manual_seed(n_out)
    inputs = [torch.randn(batch, tokens, k_in, generator=g), torch.full((batch, tokens, k_in), 0.75)]
    refs = [
        torch.nn.functional.linear(quantize_activations(x, a_bits), w_q, torch.from_numpy(weights.bias)).numpy()
        for x in inputs
    ]
    sessions, rejected = {}, {}
    for kernel in candidates(w_bits, a_bits, k_in):
        try:
            s = make_session(linear_model(weights, a_bits, kernel, (batch, tokens, k_in)), threads)
            outs = [s.run(None, {"x": x.numpy()})[0] for x in inputs]
        except Exception as e:
            rejected[kernel] = f"fails to run: {(str(e).strip().splitlines() or [type(e).__name__])[0][:120]}"
            continue
        if kernel in OWN_ROUNDING:  # its own activation rounding: held to supernet/tolerance.py's rule for that
            checks = [rows_off(o, r) for o, r in zip(outs, refs, strict=True)]
            off, rows, worst = sum(c[0] for c in checks), sum(c[1] for c in checks), max(c[2] for c in checks)
            if not own_rounding_agrees(off, rows, worst):
                why = f"{off} of {rows} rows off, relative error {worst:.1e}"
                rejected[kernel] = f"not the supernet's arithmetic up to its own rounding: {why}"
                continue
        else:
            err = max(relative_error(o, r) for o, r in zip(outs, refs, strict=True))
            if err > RTOL:  # float reordering passes, one flipped activation code fails
                rejected[kernel] = f"not exact: relative error {err:.1e}"
                continue
        sessions[kernel] = s
    feed = {"x": inputs[0].numpy()}
    with timing("cpu"):  # nothing else is measured on the CPU meanwhile (supernet/device_lock.py)
        best = _time_kernels(sessions, feed)
    if not best:
        raise ValueError(f"no kernel runs a {k_in}x{n_out} linear at w_bits={w_bits}, a_bits={a_bits}: {rejected}")
    return {"kernel": min(best, key=best.get), "us": {k: round(v, 2) for k, v in best.items()}, "rejected": rejected}


def _time_kernels(sessions: dict, feed: dict) -> dict[str, float]:
    """Best µs per call of each session."""
    best = {k: float("inf") for k in sessions}
    call: dict[str, float] = {}
    for k, s in sessions.items():  # warm-up: the last call also sizes the timing
        for _ in range(3):
            t0 = time.perf_counter()
            s.run(None, feed)
            call[k] = time.perf_counter() - t0
            if call[k] > _BUDGET_S / 20:  # a long call is warm after one run
                break
    total = max(sum(call.values()), 1e-9)  # one call of every kernel
    number = max(1, min(_NUMBER, round(_BUDGET_S / (_REPEATS * total))))
    repeats = max(_MIN_REPEATS, min(_REPEATS, int(_BUDGET_S / (number * total))))
    for _ in range(repeats):  # interleaved, so machine noise hits every kernel alike; the minimum is the estimate
        for k, s in sessions.items():
            t0 = time.perf_counter()
            for _ in range(number):
                s.run(None, feed)
            best[k] = min(best[k], (time.perf_counter() - t0) / number * 1e6)
    return best


class KernelTable:
    """Kernel choices per linear shape for one target; measured on first use and saved to `path` (if given)."""

    def __init__(self, threads: int, batch: int, tokens: int, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.target = {
            "runtime": f"onnxruntime {check_runtime()}",
            "cpu": cpu_name(),
            "threads": threads,
            "batch": batch,
            "tokens": tokens,
        }
        self.entries: dict[str, dict[str, Any]] = {}
        self.cache: dict[str, Any] = {}  # in-process objects built for this target (sessions), never saved
        if self.path is not None:
            self.entries = self._read().get(self.target_key(), {})

    def target_key(self) -> str:
        return " | ".join(f"{k}={v}" for k, v in self.target.items())

    def choose(self, k_in: int, n_out: int, w_bits: int, a_bits: int) -> str:
        key = f"{k_in}x{n_out} w{w_bits} a{a_bits}"
        if key not in self.entries:
            t = self.target
            self.entries[key] = measure_linear(k_in, n_out, w_bits, a_bits, t["tokens"], t["batch"], t["threads"])
            self.save()
        return self.entries[key]["kernel"]

    def plan(self, arch: Arch, config: ModelConfig) -> list[dict[str, str]]:
        """The kernel of every block linear of `arch`."""
        return [
            {
                name: self.choose(k, n, arch.w_bits[i], arch.a_bits)
                for name, (k, n) in linear_shapes(arch, config, i).items()
            }
            for i in range(arch.depth)
        ]

    def reload(self) -> None:
        """Adopt what other processes saved for this target since (their entries win: measured first)."""
        if self.path is not None and self.path.is_file():
            with self._locked():
                self.entries.update(self._read().get(self.target_key(), {}))

    def save(self) -> None:
        """Merge this target's entries into the file (under a lock, atomically; other targets' entries are kept)."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked():
            doc = self._read()
            doc[self.target_key()] = {**self.entries, **doc.get(self.target_key(), {})}  # the first saved wins
            self.entries = dict(doc[self.target_key()])
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
            tmp.replace(self.path)

    def _read(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}  # a damaged or missing table only costs re-measuring
        return doc if isinstance(doc, dict) else {}

    @contextlib.contextmanager
    def _locked(self):
        """An flock beside the file: processes sharing a run (nas-measure, search workers) merge, never clobber."""
        with self.path.with_name(f".{self.path.name}.lock").open("a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def float_plan(arch: Arch) -> list[dict[str, str]]:
    """Every block linear on the float kernel (the reference the benchmark compares against)."""
    return [dict.fromkeys(("qkv", "proj", "fc1", "fc2"), "float") for _ in range(arch.depth)]
