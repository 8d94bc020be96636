"""Fake quantization of weights and activations, shared by the elastic forward and by extraction.

Scheme (all symmetric, all with a straight-through estimator so training sees the quantized values in the forward
pass and passes gradients through unchanged):

* Weights, per output channel (one scale per row of a `(out, in)` matrix), for `bits` in {1, 2, 4, 8, 16, 32}:
    - 32: float, untouched.
    - 4..16: `qmax = 2**(bits-1) - 1`, `scale = max|w_row| / qmax`, `code = clamp(round(w / scale), -qmax, qmax)`,
      value `code * scale` (4 bits: {-7..7} × scale).
    - 2: ternary as in TWN / TernaryBERT: `code = sign(w)` where `|w| > 0.7 · mean|w_row|`, else 0;
      `scale = mean of |w| over the non-zero codes`. (A max-scaled ternary grid zeroes most weights and is worse than
      1 bit; this threshold is the closed-form approximate minimiser of the error for Gaussian-like rows.)
    - 1: binary as in BiBERT/BinaryBERT: `code = sign(w)` (0 counts as +1), `scale = mean|w_row|`.
  Quantization is applied to the *sliced* weight of a subnet, so a subnet's scales only see its own active inputs and
  the extracted module stores exactly the values the supernet used.
* Activations at linear-layer inputs, per token (one scale per vector along the last dim, so results never depend
  on what else is in the batch), for `bits` in {4, 8, 16, 32}: `scale = max|x_token| / qmax`, same rounding. 32 is
  float.
* Only transformer-block linears (qkv, proj, fc1, fc2) are quantized. The patch/token embedding, position embedding,
  layer norms, biases and the classifier/LM head stay float32, the usual practice for low-bit transformers.

The STE is written as `x + (q - x).detach()` only when a gradient is needed; without autograd the functions return
`q` itself, so eval-mode outputs are exactly the quantized values (the supernet and the extracted module then agree
bit for bit) and ONNX export sees plain round/clamp ops.
"""

from __future__ import annotations

import torch

_EPS = 1e-8
TERNARY_THRESHOLD = 0.7  # TWN: Δ = 0.7 · E|w|


def _ste(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Forward value `q`, gradient of identity w.r.t. `x`."""
    if torch.is_grad_enabled() and x.requires_grad:
        return x + (q - x).detach()
    return q


def weight_codes(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer codes (as float tensor, same shape as `w`) and per-row scales `(out, 1)` for `bits` < 32."""
    if bits >= 32:
        raise ValueError("weight_codes is only defined for bits < 32 (32 means float)")
    with torch.no_grad():  # codes and scales are constants for autograd; the STE supplies the gradient
        if bits == 1:
            return torch.where(w >= 0, 1.0, -1.0).to(w.dtype), w.abs().mean(dim=1, keepdim=True)
        if bits == 2:
            a = w.abs()
            keep = a > TERNARY_THRESHOLD * a.mean(dim=1, keepdim=True)
            scale = (a * keep).sum(dim=1, keepdim=True) / keep.sum(dim=1, keepdim=True).clamp_min(1)
            return torch.sign(w) * keep, scale
        qmax = 2 ** (bits - 1) - 1
        scale = w.abs().amax(dim=1, keepdim=True).clamp_min_(_EPS).div_(qmax)
        return w.div(scale).round_().clamp_(-qmax, qmax), scale


def quantize_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Fake-quantize a `(out, in)` weight per output channel to `bits` (32 = identity), with STE."""
    if bits >= 32:
        return w
    with torch.no_grad():
        if bits == 1:  # fast path, same values as weight_codes: sign × mean|w|
            scale = w.abs().mean(dim=1, keepdim=True)
            q = torch.where(w >= 0, scale, -scale)
        else:
            codes, scale = weight_codes(w, bits)
            q = codes.mul_(scale)
    return _ste(w, q)


def quantize_activations(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Fake-quantize activations per token (last dim) to `bits` (32 = identity), with STE."""
    if bits >= 32:
        return x
    qmax = 2 ** (bits - 1) - 1
    with torch.no_grad():
        scale = x.abs().amax(dim=-1, keepdim=True).clamp_min_(_EPS).div_(qmax)
        q = x.div(scale).round_().clamp_(-qmax, qmax).mul_(scale)
    return _ste(x, q)
