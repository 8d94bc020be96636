"""One notion of "the same outputs": how two computations of a subnet (the supernet, the exported module, the ONNX
Runtime graph, a kernel, a Hugging Face model) are compared everywhere in the project, and how it is reported.

An error is relative to the outputs' magnitude, max |Δ| / max(1, max |reference|): the logits of an imported GPT-2
reach about 100, where float32 summation order alone moves them by 1e-5; below 1 the floor makes it absolute.

* `RTOL` (1e-4): float rounding and reordering pass, anything that changes the arithmetic fails; predictions agree
  everywhere.
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


def relative_error(got: np.ndarray | torch.Tensor, want: np.ndarray | torch.Tensor) -> float:
    """max |got − want| / max(1, max |want|)."""
    got, want = (np.asarray(t.detach().float() if torch.is_tensor(t) else t, np.float64) for t in (got, want))
    return float(np.abs(got - want).max() / max(1.0, float(np.abs(want).max())))


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
