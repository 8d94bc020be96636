"""Bit-packing of quantized weight codes (supernet/packing.py): exact round trips, exact sizes, the documented byte
layout, and one clear ValueError for anything that is not a valid code."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from supernet.packing import PACKED_BITS, pack_codes, packed_size, unpack_codes
from supernet.quant import weight_codes

# The valid code range of every packed bit-width (weight_codes' output range).
RANGE = {1: (-1, 1), 2: (-1, 1), 4: (-7, 7), 8: (-127, 127), 16: (-32767, 32767)}


def roundtrip(codes: torch.Tensor, bits: int) -> torch.Tensor:
    packed = pack_codes(codes, bits)
    n = codes.numel()
    assert packed.dtype == np.uint8 and packed.ndim == 1
    assert len(packed) == packed_size(n, bits) == math.ceil(n * bits / 8)
    out = unpack_codes(packed, bits, n)
    assert out.dtype == torch.float32 and out.shape == (n,)
    return out.reshape(codes.shape)


def test_packed_bits_are_the_quantizer_bits_below_float() -> None:
    assert set(PACKED_BITS) == {1, 2, 4, 8, 16}


@pytest.mark.parametrize("bits", PACKED_BITS)
@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 37), cols=st.integers(1, 41), seed=st.integers(0, 2**31 - 1),
       spread=st.sampled_from([1e-3, 0.1, 1.0, 50.0]))  # fmt: skip
def test_roundtrip_of_weight_codes(bits: int, rows: int, cols: int, seed: int, spread: float) -> None:
    """Codes of random weight matrices (odd shapes included) survive packing exactly, as `weight_codes` returns them."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * spread
    if seed % 3 == 0:  # rows with exact zeros and ties, which hit the sign / threshold corner cases
        w[0] = 0.0
        w[-1, : cols // 2] = spread
    codes, _ = weight_codes(w, bits)
    lo, hi = RANGE[bits]
    assert codes.min() >= lo and codes.max() <= hi
    assert torch.equal(roundtrip(codes, bits), codes)


@pytest.mark.parametrize("bits", PACKED_BITS)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_roundtrip_of_arbitrary_valid_codes(bits: int, data: st.DataObject) -> None:
    """Any valid code sequence (not just quantizer output), of any length including ones that leave a byte partly
    filled, comes back unchanged."""
    lo, hi = RANGE[bits]
    values = st.sampled_from([-1, 1]) if bits == 1 else st.integers(lo, hi)
    codes = data.draw(st.lists(values, min_size=0, max_size=70))
    t = torch.tensor(codes, dtype=torch.float32)
    assert roundtrip(t, bits).tolist() == codes


@pytest.mark.parametrize("bits", PACKED_BITS)
@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 1001])
def test_extremes(bits: int, n: int) -> None:
    lo, hi = RANGE[bits]
    patterns = [torch.full((n,), float(lo)), torch.full((n,), float(hi)), torch.tensor([lo, hi] * n)[:n].float()]
    if bits > 1:
        patterns += [torch.zeros(n), torch.tensor([0, lo, hi] * n)[:n].float()]
    for codes in patterns:
        assert torch.equal(roundtrip(codes, bits), codes)
        assert torch.equal(roundtrip(codes.reshape(n, 1), bits), codes.reshape(n, 1))


def test_empty_input() -> None:
    for bits in PACKED_BITS:
        assert len(pack_codes(torch.zeros(0), bits)) == 0
        assert unpack_codes(np.zeros(0, np.uint8), bits, 0).shape == (0,)


def test_documented_byte_layout() -> None:
    """The on-disk layout is a file format: pin it (supernet/packing.py docstring)."""
    # 4 bits: code + 8, low nibble first.
    assert pack_codes(torch.tensor([-7.0, 7.0, 0.0]), 4).tolist() == [1 | 15 << 4, 8]
    # 2 bits: ternary code + 1, lowest bits first.
    assert pack_codes(torch.tensor([-1.0, 0.0, 1.0, 1.0, 0.0]), 2).tolist() == [0 | 1 << 2 | 2 << 4 | 2 << 6, 1]
    # 1 bit: 1 = +1, lowest bit first, padded with zeros.
    assert pack_codes(torch.tensor([1.0, -1, -1, 1, -1, -1, -1, -1, 1]), 1).tolist() == [0b1001, 1]
    # 8 bits: two's complement int8.
    assert pack_codes(torch.tensor([-1.0, 127.0, -127.0]), 8).tolist() == [255, 127, 129]
    # 16 bits: little-endian int16.
    assert pack_codes(torch.tensor([258.0, -2.0]), 16).tolist() == [2, 1, 254, 255]


def test_packing_is_row_major() -> None:
    codes = torch.tensor([[1.0, -1.0, 2.0], [3.0, -4.0, 5.0]])
    assert np.array_equal(pack_codes(codes, 8), pack_codes(codes.reshape(-1), 8))
    assert pack_codes(codes.t(), 8).view(np.int8).tolist() == [1, 3, -1, -4, 2, 5]  # logical order, not storage


@pytest.mark.parametrize(
    ("bits", "bad"),
    [
        (1, 0.0),  # 1-bit codes are signs: 0 has no encoding
        (1, 2.0),
        (1, -2.0),
        (2, 2.0),
        (2, -2.0),
        (4, 8.0),
        (4, -8.0),  # the symmetric grid stops at -7 (code + 8 must stay >= 1)
        (8, 128.0),
        (8, -128.0),
        (16, 32768.0),
        (16, -32768.0),
        (4, 0.5),
        (8, -3.25),
        (16, 1e-3),
        (2, float("nan")),
        (8, float("inf")),
        (1, float("nan")),
    ],
)
def test_invalid_codes_are_refused(bits: int, bad: float) -> None:
    lo, hi = RANGE[bits]
    codes = torch.tensor([float(lo), bad, float(hi)])
    with pytest.raises(ValueError, match=r"codes must be|must be -1 or \+1"):
        pack_codes(codes, bits)


@pytest.mark.parametrize("bits", [0, 3, 5, 32, -8])
def test_unsupported_bits_are_refused(bits: int) -> None:
    with pytest.raises(ValueError, match=f"cannot pack {bits}-bit codes"):
        pack_codes(torch.zeros(4), bits)
    with pytest.raises(ValueError, match=f"cannot unpack {bits}-bit codes"):
        unpack_codes(np.zeros(4, np.uint8), bits, 4)


@pytest.mark.parametrize("bits", PACKED_BITS)
def test_wrong_packed_length_is_refused(bits: int) -> None:
    n = 13
    packed = pack_codes(torch.ones(n), bits)
    for wrong in (packed[:-1], np.concatenate([packed, np.zeros(1, np.uint8)]), packed[:0]):
        with pytest.raises(ValueError, match=f"{n} codes of {bits} bits need {packed_size(n, bits)} bytes"):
            unpack_codes(wrong, bits, n)
    with pytest.raises(ValueError, match="bytes, got"):
        unpack_codes(packed, bits, n + 64)  # asking for more codes than the bytes hold
