"""Elastic layers (supernet/elastic.py) against independent references written from the documented layouts."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from supernet import Arch, ModelConfig, SearchSpace, build_supernet
from supernet.elastic import (
    ElasticAttention,
    ElasticBlock,
    ElasticFFN,
    ElasticHead,
    ElasticLayerNorm,
    ElasticLinear,
    ElasticPatchEmbed,
    ElasticTokenEmbed,
)
from tests.conftest import TASK_CONFIGS, sample_input

ROOT = Path(__file__).resolve().parents[1]
SPACE = SearchSpace.from_yaml(ROOT / "conf" / "space" / "default.yaml")
ATOL, RTOL = 1e-5, 1e-5


def _randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random values for every parameter; layer norms and biases too, since ones/zeros hide slicing bugs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (1.0 if p.dim() == 1 else 0.2))
    return module


def _x(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---- independent reference quantizers (written from the quant.py docstring, not imported) ----------------------------


def ref_qweight(w: torch.Tensor, bits: int) -> torch.Tensor:
    if bits == 32:
        return w
    if bits == 1:
        return torch.where(w >= 0, 1.0, -1.0) * w.abs().mean(dim=1, keepdim=True)
    if bits == 2:  # TWN ternary: ±mean of the magnitudes above 0.7 · mean|w|, zero below
        keep = (w.abs() > 0.7 * w.abs().mean(dim=1, keepdim=True)).float()
        s = (w.abs() * keep).sum(dim=1, keepdim=True) / keep.sum(dim=1, keepdim=True).clamp_min(1)
        return torch.sign(w) * keep * s
    qmax = 2 ** (bits - 1) - 1
    s = w.abs().amax(dim=1, keepdim=True) / qmax
    return torch.clamp(torch.round(w / s), -qmax, qmax) * s


def ref_qact(x: torch.Tensor, bits: int) -> torch.Tensor:
    if bits == 32:
        return x
    qmax = 2 ** (bits - 1) - 1
    s = x.abs().amax(dim=-1, keepdim=True) / qmax
    return torch.clamp(torch.round(x / s), -qmax, qmax) * s


# ---- ElasticLinear ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("in_f", "out_f"), [(32, 24), (7, 40), (48, 1), (48, 40), (1, 5)])
@pytest.mark.parametrize("w_bits", [32, 8, 4, 2, 1])
def test_linear_matches_sliced_f_linear(in_f: int, out_f: int, w_bits: int) -> None:
    lin = _randomize(ElasticLinear(48, 40), seed=in_f * 100 + out_f)
    x = _x(2, 3, in_f)
    with torch.no_grad():
        got = lin(x, out_f, w_bits=w_bits)
        want = F.linear(x, ref_qweight(lin.weight[:out_f, :in_f], w_bits), lin.bias[:out_f])
    assert got.shape == (2, 3, out_f)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("a_bits", [8, 4])
def test_linear_quantizes_input_activations(a_bits: int) -> None:
    lin = _randomize(ElasticLinear(48, 40), seed=5)
    x = _x(2, 3, 30)
    with torch.no_grad():
        got = lin(x, 20, w_bits=4, a_bits=a_bits)
        want = F.linear(ref_qact(x, a_bits), ref_qweight(lin.weight[:20, :30], 4), lin.bias[:20])
        float_act = lin(x, 20, w_bits=4)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)
    assert not torch.allclose(got, float_act, atol=1e-4)


def test_linear_without_bias() -> None:
    lin = _randomize(ElasticLinear(16, 8, bias=False))
    assert lin.bias is None
    x = _x(4, 10)
    with torch.no_grad():
        torch.testing.assert_close(lin(x, 6), x @ lin.weight[:6, :10].T, atol=ATOL, rtol=RTOL)


def test_linear_quant_scale_sees_only_active_columns() -> None:
    """A huge weight outside the active columns must not change the subnet's per-row scales."""
    lin = _randomize(ElasticLinear(16, 8), seed=7)
    x = _x(3, 10)
    with torch.no_grad():
        before = lin(x, 8, w_bits=4)
        lin.weight[:, 10:] = 1000.0
        after = lin(x, 8, w_bits=4)
    assert torch.equal(before, after)


def test_linear_gradient_only_on_active_slice() -> None:
    lin = _randomize(ElasticLinear(16, 12), seed=8)
    x = _x(5, 9)
    lin(x, 7, w_bits=4, a_bits=8).sum().backward()
    g = lin.weight.grad
    assert g[:7, :9].abs().sum() > 0
    assert torch.equal(g[7:], torch.zeros_like(g[7:]))
    assert torch.equal(g[:, 9:], torch.zeros_like(g[:, 9:]))
    assert torch.equal(lin.bias.grad[7:], torch.zeros(5))
    # STE: the weight gradient is exactly that of a float linear on the quantized input
    torch.testing.assert_close(g[:7, :9], ref_qact(x, 8).sum(0).expand(7, 9), atol=1e-5, rtol=1e-5)


# ---- ElasticLayerNorm ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [1, 17, 64, 96, 128])
def test_layer_norm_matches_nn_layer_norm(dim: int) -> None:
    eln = _randomize(ElasticLayerNorm(128, eps=1e-5), seed=dim)
    ref = nn.LayerNorm(dim, eps=1e-5)
    with torch.no_grad():
        ref.weight.copy_(eln.weight[:dim])
        ref.bias.copy_(eln.bias[:dim])
        x = _x(3, 5, dim) * 3 + 1
        torch.testing.assert_close(eln(x), ref(x), atol=ATOL, rtol=RTOL)


def test_layer_norm_eps_is_used() -> None:
    eln = ElasticLayerNorm(8, eps=0.5)
    x = _x(2, 8) * 0.1  # variance << eps, so eps dominates
    with torch.no_grad():
        torch.testing.assert_close(eln(x), F.layer_norm(x, (8,), eps=0.5), atol=ATOL, rtol=RTOL)
        assert not torch.allclose(eln(x), F.layer_norm(x, (8,), eps=1e-5), atol=1e-3)


# ---- ElasticAttention ------------------------------------------------------------------------------------------------

H_MAX, HEAD_DIM, E_MAX = 4, 8, 48


def ref_attention(
    attn: ElasticAttention, x: torch.Tensor, heads: int, w_bits: int, a_bits: int, causal: bool
) -> torch.Tensor:
    """Independent MHA from the documented fused layout: rows [q | k | v], each block H_max heads of head_dim rows."""
    _, T, E = x.shape
    D = attn.head_dim
    W, b = attn.qkv.weight, attn.qkv.bias
    blk = H_MAX * D  # rows per q/k/v block in the supernet tensor
    xq = ref_qact(x, a_bits)
    outs = []
    for j in range(heads):
        rows = [slice(i * blk + j * D, i * blk + (j + 1) * D) for i in range(3)]
        # per-row quantization: each row's scale depends only on its own active columns
        q, k, v = (xq @ ref_qweight(W[r, :E], w_bits).T + b[r] for r in rows)  # (B, T, D)
        s = q @ k.transpose(-1, -2) / math.sqrt(D)
        if causal:
            s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        p = torch.exp(s - s.amax(dim=-1, keepdim=True))
        outs.append((p / p.sum(dim=-1, keepdim=True)) @ v)
    y = torch.cat(outs, dim=-1)  # head j at columns j*D:(j+1)*D
    pw = ref_qweight(attn.proj.weight[:E, : heads * D], w_bits)
    return ref_qact(y, a_bits) @ pw.T + attn.proj.bias[:E]


@pytest.mark.parametrize("heads", [1, 2, 3, 4])
@pytest.mark.parametrize("embed", [48, 20])
@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_reference(heads: int, embed: int, causal: bool) -> None:
    attn = _randomize(ElasticAttention(E_MAX, H_MAX, HEAD_DIM), seed=heads + embed)
    x = _x(2, 6, embed, seed=heads)
    with torch.no_grad():
        got = attn(x, heads, w_bits=32, a_bits=32, causal=causal)
        want = ref_attention(attn, x, heads, 32, 32, causal)
    assert got.shape == x.shape
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize(("w_bits", "a_bits"), [(8, 32), (4, 8), (1, 8), (2, 32)])
def test_attention_quantized_matches_reference(w_bits: int, a_bits: int) -> None:
    attn = _randomize(ElasticAttention(E_MAX, H_MAX, HEAD_DIM), seed=w_bits)
    x = _x(2, 5, 40, seed=3)
    with torch.no_grad():
        got = attn(x, 3, w_bits=w_bits, a_bits=a_bits, causal=True)
        want = ref_attention(attn, x, 3, w_bits, a_bits, causal=True)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_attention_ignores_inactive_heads() -> None:
    """Rows of heads >= h (in each of q, k, v) and proj columns beyond h*D do not affect an h-head subnet."""
    attn = _randomize(ElasticAttention(E_MAX, H_MAX, HEAD_DIM), seed=9)
    x = _x(2, 5, E_MAX)
    h, D, blk = 2, HEAD_DIM, H_MAX * HEAD_DIM
    with torch.no_grad():
        before = attn(x, h, 4, 8, causal=False)
        for i in range(3):
            attn.qkv.weight[i * blk + h * D : (i + 1) * blk] = 99.0
            attn.qkv.bias[i * blk + h * D : (i + 1) * blk] = -99.0
        attn.proj.weight[:, h * D :] = 99.0
        after = attn(x, h, 4, 8, causal=False)
    assert torch.equal(before, after)


def test_attention_causal_prefix_invariance() -> None:
    """Causal attention: outputs at positions < t do not depend on tokens at positions >= t."""
    attn = _randomize(ElasticAttention(E_MAX, H_MAX, HEAD_DIM), seed=10)
    x = _x(1, 8, E_MAX)
    x2 = x.clone()
    x2[:, 5:] = _x(1, 3, E_MAX, seed=99)
    with torch.no_grad():
        y, y2 = attn(x, 3, 32, 32, causal=True), attn(x2, 3, 32, 32, causal=True)
        nc, nc2 = attn(x, 3, 32, 32, causal=False), attn(x2, 3, 32, 32, causal=False)
    torch.testing.assert_close(y[:, :5], y2[:, :5], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(nc[:, :5], nc2[:, :5], atol=1e-4)


# ---- ElasticFFN ------------------------------------------------------------------------------------------------------


def ref_ffn(ffn: ElasticFFN, x: torch.Tensor, hidden: int, w_bits: int, a_bits: int) -> torch.Tensor:
    E = x.shape[-1]
    w1 = ref_qweight(ffn.fc1.weight[:hidden, :E], w_bits)
    w2 = ref_qweight(ffn.fc2.weight[:E, :hidden], w_bits)
    h = F.gelu(ref_qact(x, a_bits) @ w1.T + ffn.fc1.bias[:hidden])
    return ref_qact(h, a_bits) @ w2.T + ffn.fc2.bias[:E]


@pytest.mark.parametrize(("embed", "hidden"), [(48, 192), (48, 48), (20, 40), (32, 7)])
@pytest.mark.parametrize(("w_bits", "a_bits"), [(32, 32), (8, 8), (2, 32), (1, 8)])
def test_ffn_matches_reference(embed: int, hidden: int, w_bits: int, a_bits: int) -> None:
    ffn = _randomize(ElasticFFN(48, 192), seed=embed + hidden)
    x = _x(2, 4, embed)
    with torch.no_grad():
        got = ffn(x, hidden, w_bits, a_bits)
        want = ref_ffn(ffn, x, hidden, w_bits, a_bits)
    assert got.shape == x.shape
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


# ---- ElasticBlock, stems and head ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("embed", "heads", "hidden", "w_bits", "a_bits"), [(48, 4, 192, 32, 32), (20, 1, 40, 4, 8)])
def test_block_matches_reference(embed: int, heads: int, hidden: int, w_bits: int, a_bits: int) -> None:
    blk = _randomize(ElasticBlock(E_MAX, H_MAX, HEAD_DIM, 192, eps=1e-5), seed=embed)
    x = _x(2, 5, embed)
    with torch.no_grad():
        got = blk(x, heads, hidden, w_bits, a_bits, causal=True)
        ln1 = F.layer_norm(x, (embed,), blk.ln1.weight[:embed], blk.ln1.bias[:embed], 1e-5)
        h = x + ref_attention(blk.attn, ln1, heads, w_bits, a_bits, causal=True)
        ln2 = F.layer_norm(h, (embed,), blk.ln2.weight[:embed], blk.ln2.bias[:embed], 1e-5)
        want = h + ref_ffn(blk.ffn, ln2, hidden, w_bits, a_bits)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_stems_and_head_slice_the_front() -> None:
    pe = _randomize(ElasticPatchEmbed(patch_dim=12, num_patches=5, embed_max=32))
    w = pe.materialize(20)
    assert torch.equal(w.proj_w, pe.proj.weight[:20]) and torch.equal(w.proj_b, pe.proj.bias[:20])
    assert torch.equal(w.pos, pe.pos[:, :20])
    te = _randomize(ElasticTokenEmbed(vocab_size=11, block_size=6, embed_max=32))
    t = te.materialize(8)
    assert torch.equal(t.table, te.table[:, :8]) and torch.equal(t.pos, te.pos[:, :8])
    hd = _randomize(ElasticHead(32, 7, eps=1e-5))
    hw = hd.materialize(24)
    assert torch.equal(hw.norm_w, hd.norm.weight[:24]) and torch.equal(hw.norm_b, hd.norm.bias[:24])
    assert torch.equal(hw.fc_w, hd.fc.weight[:, :24]) and torch.equal(hw.fc_b, hd.fc.bias)


# ---- the supernet forward is stateless -------------------------------------------------------------------------------

CONFIGS = TASK_CONFIGS  # every registered task model: the imported families' block options too


def _attrs(module: nn.Module) -> dict[str, dict[str, object]]:
    """Every module's non-tensor attributes (what a set_active_subnet-style forward would leave behind)."""
    out = {}
    for name, m in module.named_modules():
        out[name] = {
            k: v
            for k, v in vars(m).items()
            if not k.startswith("_") and not isinstance(v, torch.Tensor | nn.Module) and k != "training"
        }
    return out


@pytest.mark.parametrize("task", sorted(CONFIGS))
@pytest.mark.parametrize("grad", [False, True])
def test_supernet_forward_is_stateless(task: str, grad: bool) -> None:
    cfg = CONFIGS[task]
    torch.manual_seed(0)
    net = _randomize(build_supernet(SPACE, cfg), seed=1).eval()
    x = sample_input(cfg, batch=2, seed=2)
    rng = np.random.default_rng(3)
    a1 = Arch(3, 96, (2, 1, 4), (2.0, 3.0, 1.0), (4, 32, 2), 8)
    others = [SPACE.largest(), SPACE.smallest(), *(SPACE.sample(rng) for _ in range(3))]
    state0 = {k: v.clone() for k, v in net.state_dict().items()}
    attrs0 = _attrs(net)
    with torch.set_grad_enabled(grad):
        y1 = net(x, a1).detach()
        for a2 in others:
            y2 = net(x, a2).detach()
            assert not torch.allclose(y1, y2, atol=1e-3) or a2 == a1
            y1_again = net(x, a1).detach()
            # with autograd the STE output is q up to 1 ulp, but the same computation twice is bit-identical
            assert torch.equal(y1, y1_again), a2.key()
    state1 = net.state_dict()
    assert state0.keys() == state1.keys()
    for k in state0:
        assert torch.equal(state0[k], state1[k]), k
    assert _attrs(net) == attrs0
    # a fresh copy of the same weights gives the same answer: nothing hidden in the first net
    fresh = build_supernet(SPACE, cfg).eval()
    fresh.load_state_dict(state0)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x, a1), y1, atol=1e-6, rtol=1e-6)


# Pre-norm models (x + f(norm(x))), where a zero residual branch makes a block the identity; a post-norm block (BERT)
# still normalises its input. Each with one head for every depth (depth heads would differ by design).
PRE_NORM = sorted(k for k, c in CONFIGS.items() if c.norm_position == "pre")


@pytest.mark.parametrize("task", PRE_NORM)
def test_zero_init_residual_starts_every_depth_from_the_same_features(task: str) -> None:
    """With `zero_init_residual` each block starts as the identity, so at initialisation an arch's output does not
    depend on its depth (or its blocks' heads, FFN widths and bits); without it, it does."""
    cfg = replace(CONFIGS[task], depth_heads=False)
    x = sample_input(cfg, batch=2, seed=2)
    shallow = Arch(2, 96, (1, 2), (1.0, 2.0), (1, 8), 8)
    deep = Arch(6, 96, (4, 2, 1, 4, 2, 1), (4.0, 1.0, 2.0, 3.0, 1.0, 4.0), (32, 2, 4, 8, 1, 32), 8)
    outs = {}
    for zero in (True, False):
        torch.manual_seed(0)
        net = build_supernet(SPACE, replace(cfg, zero_init_residual=zero)).eval()
        with torch.no_grad():
            outs[zero] = net(x, shallow), net(x, deep)
    torch.testing.assert_close(outs[True][0], outs[True][1], atol=0, rtol=0)
    assert not torch.allclose(outs[False][0], outs[False][1], atol=1e-4)


def test_zero_init_residual_must_be_a_bool() -> None:
    with pytest.raises(ValueError, match=r"model.zero_init_residual='yes' must be true or false"):
        ModelConfig(zero_init_residual="yes")
