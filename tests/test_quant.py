"""Fake quantization (supernet/quant.py): codes, scales, value sets, error, STE gradients, per-token activations."""

from __future__ import annotations

import itertools

import pytest
import torch

from supernet.quant import quantize_activations, quantize_weight, weight_codes

W_BITS = (1, 2, 4, 8, 16)
A_BITS = (4, 8, 16)


def _weight(rows: int = 16, cols: int = 48, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # Rows of very different magnitudes, so a shared (per-tensor) scale would be caught.
    mags = torch.logspace(-3, 1, rows).unsqueeze(1)
    return torch.randn(rows, cols, generator=g) * mags


def _qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


@pytest.mark.parametrize("bits", W_BITS)
def test_distinct_values_per_row(bits: int) -> None:
    w = _weight(cols=4096)  # many values per row, so every code level is actually reached
    q = quantize_weight(w, bits)
    limit = {1: 2, 2: 3}.get(bits, 2**bits)
    for row in q:
        assert row.unique().numel() <= limit
    if bits <= 4:
        # with 4096 normal values per row every level of the code book shows up: the bound is tight
        assert max(row.unique().numel() for row in q) == limit - (1 if bits == 4 else 0)


@pytest.mark.parametrize("bits", W_BITS)
def test_values_are_codes_times_scale(bits: int) -> None:
    w = _weight(seed=1)
    codes, scale = weight_codes(w, bits)
    assert codes.shape == w.shape
    assert scale.shape == (w.shape[0], 1)
    assert torch.equal(quantize_weight(w, bits), codes * scale)
    assert torch.equal(codes, codes.round())  # integer codes
    if bits == 1:
        assert set(codes.unique().tolist()) <= {-1.0, 1.0}
    else:
        assert codes.abs().max().item() <= _qmax(bits)


@pytest.mark.parametrize("bits", W_BITS)
def test_per_row_scale(bits: int) -> None:
    w = _weight(seed=2)
    _, scale = weight_codes(w, bits)
    a = w.abs()
    if bits == 1:
        want = a.mean(dim=1, keepdim=True)
    elif bits == 2:  # TWN: mean magnitude of the weights above 0.7 · mean|w|
        keep = a > 0.7 * a.mean(dim=1, keepdim=True)
        want = torch.stack([a[i][keep[i]].mean() for i in range(len(a))])[:, None]
    else:
        want = a.amax(dim=1, keepdim=True) / _qmax(bits)
    torch.testing.assert_close(scale, want, rtol=1e-5, atol=0)
    # each row has its own scale: scaling one row scales only that row's scale
    w2 = w.clone()
    w2[3] *= 10
    _, scale2 = weight_codes(w2, bits)
    torch.testing.assert_close(scale2[3], scale[3] * 10, rtol=1e-5, atol=0)
    others = [i for i in range(w.shape[0]) if i != 3]
    assert torch.equal(scale2[others], scale[others])


def test_one_bit_is_sign_times_mean() -> None:
    w = _weight(seed=3)
    w[0, :5] = 0.0  # zero counts as +1
    codes, _ = weight_codes(w, 1)
    want = torch.where(w >= 0, 1.0, -1.0)
    assert torch.equal(codes, want)
    assert torch.equal(quantize_weight(w, 1), want * w.abs().mean(dim=1, keepdim=True))


def test_two_bit_is_ternary_with_twn_threshold() -> None:
    w = _weight(seed=9)
    codes, _scale = weight_codes(w, 2)
    assert set(codes.unique().tolist()) <= {-1.0, 0.0, 1.0}
    nonzero = w.abs() > 0.7 * w.abs().mean(dim=1, keepdim=True)
    assert torch.equal(codes != 0, nonzero)
    assert torch.equal(codes[nonzero], torch.sign(w)[nonzero])
    zero_row = torch.zeros(1, 16)
    c0, s0 = weight_codes(zero_row, 2)
    assert torch.equal(c0, zero_row) and torch.isfinite(s0).all()


@pytest.mark.parametrize("bits", [b for b in W_BITS if b > 2])
def test_max_magnitude_is_represented_exactly(bits: int) -> None:
    w = _weight(seed=4)
    q = quantize_weight(w, bits)
    codes, _ = weight_codes(w, bits)
    # the largest-magnitude entry of each row maps to ±qmax, so its value is reproduced (up to rounding of the scale)
    idx = w.abs().argmax(dim=1)
    rows = torch.arange(w.shape[0])
    assert torch.equal(codes[rows, idx].abs(), torch.full((w.shape[0],), float(_qmax(bits))))
    torch.testing.assert_close(q[rows, idx], w[rows, idx], rtol=1e-6, atol=0)


@pytest.mark.parametrize("bits", [b for b in W_BITS if b > 2])
def test_rounding_is_nearest(bits: int) -> None:
    w = _weight(seed=5)
    q = quantize_weight(w, bits)
    _, scale = weight_codes(w, bits)
    # round-to-nearest within range: error at most half a step per element (plus float slack)
    eps = torch.finfo(torch.float32).eps
    assert ((q - w).abs() <= scale / 2 * (1 + 1e-5) + 4 * eps * w.abs()).all()


def test_error_shrinks_with_bits() -> None:
    w = _weight(rows=32, cols=256, seed=6)
    errs = {b: (quantize_weight(w, b) - w).pow(2).sum().item() for b in W_BITS}
    # every added bit lowers the error: 1 (binary) > 2 (TWN ternary) > 4 > 8 > 16, all below zeroing the weight
    assert errs[1] < w.pow(2).sum().item()
    for lo, hi in itertools.pairwise(errs[b] for b in W_BITS):
        assert hi < lo, errs
    # 16 bit is nearly exact: relative error per row below 1e-4
    q16 = quantize_weight(w, 16)
    assert ((q16 - w).norm(dim=1) / w.norm(dim=1)).max().item() < 1e-4


def test_32_bits_is_identity() -> None:
    w = _weight()
    assert quantize_weight(w, 32) is w
    x = torch.randn(2, 5, 7)
    assert quantize_activations(x, 32) is x
    with pytest.raises(ValueError):
        weight_codes(w, 32)


@pytest.mark.parametrize("bits", W_BITS)
def test_zero_rows_no_nan(bits: int) -> None:
    w = _weight(rows=4, cols=8)
    w[1] = 0.0
    q = quantize_weight(w, bits)
    codes, scale = weight_codes(w, bits)
    assert torch.isfinite(q).all() and torch.isfinite(codes).all() and torch.isfinite(scale).all()
    assert torch.equal(q[1], torch.zeros(8))
    # other rows still quantize normally
    assert q[0].abs().sum() > 0


@pytest.mark.parametrize("bits", (4, 8, 16))
def test_zero_tokens_no_nan(bits: int) -> None:
    x = torch.randn(2, 3, 8)
    x[0, 1] = 0.0
    q = quantize_activations(x, bits)
    assert torch.isfinite(q).all()
    assert torch.equal(q[0, 1], torch.zeros(8))


@pytest.mark.parametrize("bits", W_BITS)
def test_weight_ste_gradient_is_identity(bits: int) -> None:
    w = _weight(seed=7).requires_grad_(True)
    q = quantize_weight(w, bits)
    q.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))
    # the forward value under autograd is the quantized value, up to 1 ulp (x + (q - x) rounding)
    with torch.no_grad():
        q_ng = quantize_weight(w, bits)
    ulp = torch.finfo(torch.float32).eps * torch.maximum(q_ng.abs(), w.detach().abs())
    assert ((q.detach() - q_ng).abs() <= ulp).all()


@pytest.mark.parametrize("bits", A_BITS)
def test_activation_ste_gradient_is_identity(bits: int) -> None:
    x = torch.randn(3, 5, 16, requires_grad=True)
    y = quantize_activations(x, bits)
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    with torch.no_grad():
        y_ng = quantize_activations(x, bits)
    ulp = torch.finfo(torch.float32).eps * torch.maximum(y_ng.abs(), x.detach().abs())
    assert ((y.detach() - y_ng).abs() <= ulp).all()


def test_no_grad_returns_exact_quantized_value() -> None:
    # without autograd the quantizer returns q itself (no x + (q - x) round trip)
    w = _weight(seed=8).requires_grad_(True)
    with torch.no_grad():
        q = quantize_weight(w, 4)
    codes, scale = weight_codes(w.detach(), 4)
    assert torch.equal(q, codes * scale)


@pytest.mark.parametrize("bits", A_BITS)
def test_activation_values(bits: int) -> None:
    g = torch.Generator().manual_seed(9)
    x = torch.randn(4, 6, 512, generator=g) * torch.logspace(-2, 2, 6).view(1, 6, 1)
    q = quantize_activations(x, bits)
    qmax = _qmax(bits)
    scale = x.abs().amax(dim=-1, keepdim=True) / qmax
    codes = q / scale
    slack = max(1e-3, 8 * qmax * torch.finfo(torch.float32).eps)  # q = code * scale, then divided back
    torch.testing.assert_close(codes, codes.round(), rtol=0, atol=slack)
    assert codes.abs().max().item() <= qmax + slack
    eps = torch.finfo(torch.float32).eps
    assert ((q - x).abs() <= scale / 2 * (1 + 1e-5) + 4 * eps * x.abs()).all()
    for tok in q.reshape(-1, q.shape[-1]):
        assert tok.unique().numel() <= 2**bits - 1


@pytest.mark.parametrize("bits", A_BITS)
def test_activation_scale_is_per_token(bits: int) -> None:
    g = torch.Generator().manual_seed(10)
    x = torch.randn(3, 5, 32, generator=g)
    q = quantize_activations(x, bits)
    x2 = x.clone()
    x2[1, 2] *= 1000.0  # one huge token
    x2[0, 0, 0] = 50.0  # one outlier in another token
    q2 = quantize_activations(x2, bits)
    changed = torch.zeros(3, 5, dtype=torch.bool)
    changed[1, 2] = changed[0, 0] = True
    assert torch.equal(q2[~changed], q[~changed])
    # batch composition does not matter either: each sample alone gives the same values
    for b in range(3):
        assert torch.equal(quantize_activations(x[b : b + 1], bits), q[b : b + 1])


def test_activation_error_shrinks_with_bits() -> None:
    x = torch.randn(8, 64)
    errs = [(quantize_activations(x, b) - x).pow(2).sum().item() for b in A_BITS]
    assert errs[0] > errs[1] > errs[2]
