"""Bit-packing of quantized weight codes: what makes a low-bit subnet's file as small as the cost model says.

Codes come from `supernet.quant.weight_codes` (integers stored in a float tensor). Each matrix is packed on its own,
row-major, and padded to a whole byte, so it takes exactly `ceil(rows · cols · bits / 8)` bytes (the cost model's
count, supernet/costs.py):

    bits 16, 8   little-endian int16 / int8
    bits 4       code + 8 in [1, 15], two per byte (low nibble first)
    bits 2       ternary code + 1 in {0, 1, 2}, four per byte (lowest bits first)
    bits 1       sign bit (1 = +1), eight per byte (lowest bit first)
"""

from __future__ import annotations

import math

import numpy as np
import torch

PACKED_BITS = (1, 2, 4, 8, 16)
_OFFSET = {1: 0, 2: 1, 4: 8}  # code + offset is a non-negative field of `bits` bits


def packed_size(n: int, bits: int) -> int:
    """Bytes taken by `n` codes of `bits` bits."""
    return math.ceil(n * bits / 8)


def _check(codes: np.ndarray, bits: int) -> None:
    if bits not in PACKED_BITS:
        raise ValueError(f"cannot pack {bits}-bit codes; supported: {PACKED_BITS}")
    lo, hi = {1: (-1, 1), 2: (-1, 1)}.get(bits, (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1))
    if codes.size and (codes.min() < lo or codes.max() > hi or not np.all(codes == np.round(codes))):
        raise ValueError(f"{bits}-bit codes must be integers in [{lo}, {hi}]")
    if bits == 1 and np.any(codes == 0):
        raise ValueError("1-bit codes must be -1 or +1")


def pack_codes(codes: torch.Tensor, bits: int) -> np.ndarray:
    """uint8 array of `packed_size(codes.numel(), bits)` bytes holding the codes, row-major."""
    c = codes.detach().cpu().reshape(-1).numpy()
    _check(c, bits)
    if bits in (8, 16):
        return c.astype("<i1" if bits == 8 else "<i2").view(np.uint8).copy()
    field = (c > 0).astype(np.uint8) if bits == 1 else (c + _OFFSET[bits]).astype(np.uint8)
    per_byte = 8 // bits
    field = np.concatenate([field, np.zeros((-len(field)) % per_byte, np.uint8)]).reshape(-1, per_byte)
    shifts = (np.arange(per_byte) * bits).astype(np.uint8)
    return np.bitwise_or.reduce(field << shifts, axis=1).astype(np.uint8)


def unpack_codes(packed: np.ndarray, bits: int, n: int) -> torch.Tensor:
    """The first `n` codes in `packed`, as a float32 tensor (the form `weight_codes` returns)."""
    if bits not in PACKED_BITS:
        raise ValueError(f"cannot unpack {bits}-bit codes; supported: {PACKED_BITS}")
    p = np.asarray(packed, dtype=np.uint8)
    if len(p) != packed_size(n, bits):
        raise ValueError(f"{n} codes of {bits} bits need {packed_size(n, bits)} bytes, got {len(p)}")
    if bits in (8, 16):
        values = p.view("<i1" if bits == 8 else "<i2").astype(np.float32)
    else:
        per_byte = 8 // bits
        shifts = (np.arange(per_byte) * bits).astype(np.uint8)
        field = ((p[:, None] >> shifts) & ((1 << bits) - 1)).reshape(-1)[:n]
        values = np.where(field > 0, 1.0, -1.0) if bits == 1 else field.astype(np.float32) - _OFFSET[bits]
    return torch.from_numpy(np.ascontiguousarray(values[:n], dtype=np.float32))
