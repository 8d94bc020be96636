"""Analytic cost model of a subnet, per sample: parameters, MACs, BitOPs and model size in bytes.

Conventions (cross-checked in tests against the extracted module and `torch.utils.flop_counter`):
* MACs count every matrix multiply: patch projection, qkv / proj / fc1 / fc2, the two attention matmuls (q·kᵀ and
  attn·v, dense T×T even when causal, as the math kernel computes them) and the head. The embedding lookup, layer
  norms, softmax, GELU, residual adds and pooling are not counted (they are O(T·E), not O(T·E²)).
* BitOPs = Σ MACs × w_bits × a_bits per matmul. Block linears use the layer's `w_bits` and the arch's `a_bits`;
  the attention matmuls multiply two float activations and the stem/head are float, so they count 32 × 32.
* Bytes: quantized weight matrices packed at their bit-width (`ceil(rows·cols·bits / 8)`) plus one float32 scale per
  output channel; everything else (biases, layer norms, embeddings, head, 32-bit weights) 4 bytes per value.
* Token models' costs are for a sequence of `seq_len` tokens (default `block_size`); the ViT's for one image.
* Block options (supernet/config.py) change the counts: grouped-query attention has one key/value head per group,
  a gated FFN a second hidden projection, RMSNorm no bias, a CLS token one more token, BERT a pooler.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from supernet.arch import Arch
from supernet.config import ModelConfig
from supernet.space import SearchSpace

FLOAT_BITS = 32


@dataclass(frozen=True)
class Costs:
    """Cost totals of one subnet (or one part of it) for a single input sample."""

    params: int
    macs: int
    bitops: int
    bytes: int

    def __add__(self, other: Costs) -> Costs:
        return Costs(
            self.params + other.params, self.macs + other.macs, self.bitops + other.bitops, self.bytes + other.bytes
        )

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


ZERO = Costs(0, 0, 0, 0)


def _matrix_bytes(rows: int, cols: int, bits: int) -> int:
    if bits >= FLOAT_BITS:
        return 4 * rows * cols
    return math.ceil(rows * cols * bits / 8) + 4 * rows  # packed codes + one float32 scale per output channel


def linear_costs(tokens: int, in_f: int, out_f: int, w_bits: int, a_bits: int, bias: bool = True) -> Costs:
    """A linear layer applied to `tokens` vectors."""
    macs = tokens * in_f * out_f
    params = in_f * out_f + (out_f if bias else 0)
    size = _matrix_bytes(out_f, in_f, w_bits) + (4 * out_f if bias else 0)
    return Costs(params, macs, macs * w_bits * a_bits, size)


def _vector(n: int) -> Costs:
    """A float parameter vector/table of n values (layer norm, bias, embedding)."""
    return Costs(n, 0, 0, 4 * n)


def _norm(e: int, config: ModelConfig) -> Costs:
    """A norm's affine parameters: weight and bias (LayerNorm) or weight only (RMSNorm)."""
    return _vector((1 if config.norm == "rms" else 2) * e)


def layer_costs(arch: Arch, i: int, config: ModelConfig, tokens: int) -> Costs:
    """Costs of active block `i` of `arch` at sequence length `tokens`."""
    e, D, bias = arch.embed_dim, config.head_dim, config.linear_bias
    h, hidden, wb, ab = arch.num_heads[i], arch.ffn_hidden(i), arch.w_bits[i], arch.a_bits
    inner = h * D
    kv = 2 * (h // config.kv_group) * D  # key and value projections: one head per group (grouped-query attention)
    attn_macs = 2 * tokens * tokens * inner  # q·kᵀ and attn·v, float × float
    fc1_out = (2 if config.gated_ffn else 1) * hidden  # gate and up projections of a gated FFN
    return (
        _norm(e, config)  # ln1
        + linear_costs(tokens, e, inner + kv, wb, ab, bias)
        + Costs(0, attn_macs, attn_macs * FLOAT_BITS * FLOAT_BITS, 0)
        + linear_costs(tokens, inner, e, wb, ab, bias)
        + _norm(e, config)  # ln2
        + linear_costs(tokens, e, fc1_out, wb, ab, bias)
        + linear_costs(tokens, hidden, e, wb, ab, bias)
    )


def stem_costs(arch: Arch, config: ModelConfig, tokens: int) -> Costs:
    """Patch projection + positions (+ CLS) (image), or token table + positions + type row + norm (text)."""
    e = arch.embed_dim
    if config.task == "image":
        cls = _vector(e) if config.cls_token else ZERO
        pos = _vector((config.num_patches + config.cls_token) * e)
        return linear_costs(config.num_patches, config.patch_dim, e, FLOAT_BITS, FLOAT_BITS) + pos + cls
    total = _vector(config.vocab_size * e)
    if config.positions == "learned":
        total = total + _vector(config.block_size * e)
    if config.token_types:
        total = total + _vector(e)
    if config.embed_norm:
        total = total + _norm(e, config)
    return total


def head_costs(arch: Arch, config: ModelConfig, tokens: int) -> Costs:
    """Final norm + pooler + classifier on the pooled vector (image, text), or LM head on every token."""
    e = arch.embed_dim
    rows = tokens if config.task == "lm" else 1
    total = linear_costs(rows, e, config.num_outputs, FLOAT_BITS, FLOAT_BITS, config.head_bias)
    if config.final_norm:
        total = total + _norm(e, config)
    if config.pooler:
        total = total + linear_costs(rows, e, e, FLOAT_BITS, FLOAT_BITS)
    return total


def arch_costs(arch: Arch, config: ModelConfig, seq_len: int | None = None) -> Costs:
    """Total costs of `arch` for one sample (one image, or one sequence of `seq_len` tokens for the LM)."""
    if seq_len is not None and config.task != "image" and not 1 <= seq_len <= config.block_size:
        raise ValueError(f"seq_len={seq_len} must be in [1, block_size={config.block_size}]")
    tokens = config.tokens(seq_len)
    total = stem_costs(arch, config, tokens) + head_costs(arch, config, tokens)
    for i in range(arch.depth):
        total = total + layer_costs(arch, i, config, tokens)
    return total


def spread_by_macs(space: SearchSpace, config: ModelConfig, n: int, seed: int = 0, pool: int = 512) -> list[Arch]:
    """`n` archs at evenly spaced MAC quantiles of a seeded random sample (ends included when n >= 2)."""
    rng = np.random.default_rng([seed, 7])
    archs = sorted((space.sample(rng) for _ in range(pool)), key=lambda a: arch_costs(a, config).macs)
    return [archs[round(q * (len(archs) - 1))] for q in np.linspace(0, 1, n)]
