"""One notion of "the same outputs": how two computations of a subnet (the supernet, the exported module, the ONNX
Runtime graph, a kernel, a Hugging Face model) are compared everywhere in the project, and how it is reported.

An error is relative to the outputs' magnitude, max |Δ| / max(1, max |reference|): the logits of an imported GPT-2
reach about 100, where float32 summation order alone moves them by 1e-5; below 1 the floor makes it absolute.

* `RTOL` (1e-4): float rounding and reordering pass, anything that changes the arithmetic fails; predictions agree
  everywhere.
* A kernel that quantizes activations with its own rounding (ONNX Runtime's MatMulNBits at int8 compute computes
  a·(127/amax) where quant.py computes a/(amax/127)) puts an element on the other side of a rounding boundary now and
  then: measured, 5 of 30,720 token rows at K = 256, each then one activation step (about 1e-3) off. By design it
  passes `own_rounding_agrees`: no row beyond `RTOL_QUANTIZED_ACT`, and at most 1 + 0.1 % of the rows beyond `RTOL`.
* With 8-bit activations (`a_bits < 32`) two runtimes that round a value 1 ulp apart before quantizing it move it by
  a whole quantization step, so a graph is held to `RTOL_QUANTIZED_ACT` (5e-2) and to `MIN_AGREEMENT_QUANTIZED_ACT`
  (99 %) of its predictions (argmax) agreeing; the exported PyTorch module, which rounds as the supernet does, is
  still held to `RTOL`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

RTOL = 1e-4
RTOL_QUANTIZED_ACT = 5e-2
MIN_AGREEMENT_QUANTIZED_ACT = 0.99
OWN_ROUNDING_ROWS = 1e-3  # the share of rows (beyond one) that a kernel's own activation rounding may move


def relative_error(got: np.ndarray | torch.Tensor, want: np.ndarray | torch.Tensor) -> float:
    """max |got − want| / max(1, max |want|)."""
    got, want = (np.asarray(t.detach().float() if torch.is_tensor(t) else t, np.float64) for t in (got, want))
    return float(np.abs(got - want).max() / max(1.0, float(np.abs(want).max())))


def rows_off(got: np.ndarray, want: np.ndarray) -> tuple[int, int, float]:
    """(rows whose relative error exceeds `RTOL`, rows, the largest relative error); a row is the last dimension."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    rel = np.abs(got - want).reshape(-1, got.shape[-1]).max(-1) / max(1.0, float(np.abs(want).max()))
    return int((rel > RTOL).sum()), len(rel), float(rel.max())


def own_rounding_agrees(off: int, rows: int, worst: float) -> bool:
    """Whether a kernel with its own activation rounding computes the supernet's arithmetic up to that rounding."""
    return worst <= RTOL_QUANTIZED_ACT and off <= 1 + OWN_ROUNDING_ROWS * rows


def bounds(quantized_act: bool, rtol: float | None = None, min_agreement: float | None = None) -> tuple[float, float]:
    """(relative tolerance, minimum argmax agreement) for a comparison across runtimes; `None` takes the project's."""
    if quantized_act:
        rtol = RTOL_QUANTIZED_ACT if rtol is None else rtol
        return rtol, MIN_AGREEMENT_QUANTIZED_ACT if min_agreement is None else min_agreement
    return RTOL if rtol is None else rtol, 1.0


def compare(got: torch.Tensor, want: torch.Tensor, rtol: float = RTOL, min_agreement: float = 1.0) -> dict[str, Any]:
    """The check of `got` against the reference `want` (logits, classes or vocabulary last), with its bounds."""
    agreement = float((got.argmax(-1) == want.argmax(-1)).float().mean())
    rel = relative_error(got, want)
    return {
        "max_abs_diff": float((got - want).abs().max()),
        "relative_error": rel,
        "argmax_agreement": agreement,
        "rtol": rtol,
        "min_argmax_agreement": min_agreement,
        "passed": rel <= rtol and agreement >= min_agreement,
    }


def describe(check: dict[str, Any]) -> str:
    """One line: what was found against what was required, and the verdict."""
    return (f"max |Δ| {check['max_abs_diff']:.2e} (relative {check['relative_error']:.1e}, at most {check['rtol']:g}), "
            f"argmax agreement {100 * check['argmax_agreement']:.1f} % (at least "
            f"{100 * check['min_argmax_agreement']:g} %): {'passed' if check['passed'] else 'FAILED'}")  # fmt: skip
