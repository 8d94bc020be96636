"""Elastic layers: modules that hold the largest tensors and hand out a subnet's slice of them.

Each layer has `materialize(...)`, which slices (supernet/slicing.py) and fake-quantizes (supernet/quant.py) its
tensors for one subnet, and a `forward` that runs the shared math (supernet/functional.py) on them. Nothing is
stored between calls: the subnet's sizes are arguments, never attributes set before a forward (the OFA/HAT
`set_active_subnet` pattern this replaces is what made their forwards stateful).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from supernet import functional as fn
from supernet.config import ModelConfig, Rope
from supernet.quant import quantize_weight
from supernet.slicing import slice_columns, slice_gated, slice_linear, slice_qkv, slice_vector


def _pick(t: torch.Tensor | None, variant: int, plain_dims: int) -> torch.Tensor | None:
    """Row `variant` of a per-variant table (a tensor with one more dim than `plain_dims`), else `t` itself."""
    return t[variant] if t is not None and t.dim() > plain_dims else t


def _init_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    nn.init.trunc_normal_(weight, std=0.02)
    if bias is not None:
        nn.init.zeros_(bias)


class ElasticLinear(nn.Module):
    """Linear layer of at most `(out_max, in_max)`; a subnet uses the first rows and columns.

    With `variants` > 1 it holds one such matrix per variant (a `(variants, out_max, in_max)` table) and a subnet
    picks one: the depth-specific heads.
    """

    def __init__(self, in_max: int, out_max: int, bias: bool = True, variants: int = 1) -> None:
        super().__init__()
        lead = (variants,) if variants > 1 else ()
        self.weight = nn.Parameter(torch.empty(*lead, out_max, in_max))
        self.bias = nn.Parameter(torch.empty(*lead, out_max)) if bias else None
        _init_linear(self.weight, self.bias)

    def materialize(
        self, in_features: int, out_features: int, w_bits: int = 32, variant: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        w, b = slice_linear(_pick(self.weight, variant, 2), _pick(self.bias, variant, 1), out_features, in_features)
        return quantize_weight(w, w_bits), b

    def forward(self, x: torch.Tensor, out_features: int, w_bits: int = 32, a_bits: int = 32) -> torch.Tensor:
        w, b = self.materialize(x.shape[-1], out_features, w_bits)
        return fn.qlinear(x, w, b, a_bits)


class ElasticLayerNorm(nn.Module):
    """LayerNorm (or, with `bias=False` and `kind="rms"`, RMSNorm) over the first `dim` channels, with the matching
    slice of its affine parameters.

    With `variants` > 1 it holds one affine pair per variant (rows of `(variants, dim_max)` tables) and a subnet picks
    one: the bit-width-specific norms of Any-Precision DNNs, so a 1-bit layer can rescale its inputs independently of
    the same layer at 8 or 32 bits.
    """

    def __init__(self, dim_max: int, eps: float = 1e-5, variants: int = 1, kind: str = "layer") -> None:
        super().__init__()
        shape = (dim_max,) if variants == 1 else (variants, dim_max)
        self.weight = nn.Parameter(torch.ones(shape))
        self.bias = nn.Parameter(torch.zeros(shape)) if kind == "layer" else None
        self.eps, self.kind = eps, kind

    def materialize(self, dim: int, variant: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
        w, b = _pick(self.weight, variant, 1), _pick(self.bias, variant, 1)
        return slice_vector(w, dim), None if b is None else slice_vector(b, dim)

    def forward(self, x: torch.Tensor, variant: int = 0) -> torch.Tensor:
        return fn.norm(x, *self.materialize(x.shape[-1], variant), self.kind, self.eps)


class ElasticAttention(nn.Module):
    """Multi-head self-attention with elastic heads (fixed head_dim, whole key/value groups) and embedding width."""

    def __init__(self, embed_max: int, heads_max: int, head_dim: int, kv_group: int = 1, bias: bool = True) -> None:
        super().__init__()
        if heads_max % kv_group:
            raise ValueError(f"{heads_max} heads do not split into key/value groups of {kv_group}")
        self.head_dim, self.kv_group = head_dim, kv_group
        self.qkv = ElasticLinear(embed_max, (heads_max + 2 * heads_max // kv_group) * head_dim, bias)
        self.proj = ElasticLinear(heads_max * head_dim, embed_max, bias)

    def materialize(self, embed_dim: int, heads: int, w_bits: int) -> tuple[torch.Tensor | None, ...]:
        """(qkv_w, qkv_b, proj_w, proj_b) for `heads` heads reading/writing `embed_dim` channels."""
        qkv_w, qkv_b = slice_qkv(self.qkv.weight, self.qkv.bias, heads, self.head_dim, embed_dim, self.kv_group)
        proj_w, proj_b = self.proj.materialize(heads * self.head_dim, embed_dim, w_bits)
        return quantize_weight(qkv_w, w_bits), qkv_b, proj_w, proj_b

    def forward(
        self,
        x: torch.Tensor,
        heads: int,
        w_bits: int,
        a_bits: int,
        causal: bool,
        rope_spec: Rope | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        w = self.materialize(x.shape[-1], heads, w_bits)
        return fn.attention(x, *w, heads, self.head_dim, a_bits, causal, self.kv_group, rope_spec, mask)


class ElasticFFN(nn.Module):
    """MLP (or gated MLP) whose hidden width is front-sliced (nested, as in MatFormer)."""

    def __init__(
        self, embed_max: int, hidden_max: int, bias: bool = True, gated: bool = False, activation: str = "gelu"
    ) -> None:
        super().__init__()
        self.gated, self.activation = gated, activation
        self.fc1 = ElasticLinear(embed_max, (2 if gated else 1) * hidden_max, bias)
        self.fc2 = ElasticLinear(hidden_max, embed_max, bias)

    def materialize(self, embed_dim: int, hidden: int, w_bits: int) -> tuple[torch.Tensor | None, ...]:
        """(fc1_w, fc1_b, fc2_w, fc2_b) for `hidden` units reading/writing `embed_dim` channels."""
        if self.gated:
            fc1_w, fc1_b = slice_gated(self.fc1.weight, self.fc1.bias, hidden, embed_dim)
            fc1 = (quantize_weight(fc1_w, w_bits), fc1_b)
        else:
            fc1 = self.fc1.materialize(embed_dim, hidden, w_bits)
        return (*fc1, *self.fc2.materialize(hidden, embed_dim, w_bits))

    def forward(self, x: torch.Tensor, hidden: int, w_bits: int, a_bits: int) -> torch.Tensor:
        w = self.materialize(x.shape[-1], hidden, w_bits)
        return fn.ffn(x, *w, a_bits, self.activation, self.gated)


class ElasticBlock(nn.Module):
    """Transformer block made of the elastic layers above, with the block options of `config` (default: this
    project's own pre-norm LayerNorm/GELU block at `head_dim` and `eps`)."""

    def __init__(
        self,
        embed_max: int,
        heads_max: int,
        head_dim: int,
        hidden_max: int,
        eps: float,
        norm_bits: tuple[int, ...] | None = None,
        config: ModelConfig | None = None,
    ) -> None:
        super().__init__()
        c = config or ModelConfig(head_dim=head_dim, ln_eps=eps)
        self.config = c
        self.head_dim = head_dim
        self.eps = eps
        # With `norm_bits` (the space's w_bits choices) each weight bit-width has its own ln1/ln2 affine parameters.
        self.norm_bits = tuple(norm_bits) if norm_bits else None
        variants = len(self.norm_bits) if self.norm_bits else 1
        self.ln1 = ElasticLayerNorm(embed_max, eps, variants, c.norm)
        self.attn = ElasticAttention(embed_max, heads_max, head_dim, c.kv_group, c.linear_bias)
        self.ln2 = ElasticLayerNorm(embed_max, eps, variants, c.norm)
        self.ffn = ElasticFFN(embed_max, hidden_max, c.linear_bias, c.gated_ffn, c.activation)
        if c.zero_init_residual:  # the block starts as the identity: every depth begins with the same features
            nn.init.zeros_(self.attn.proj.weight)
            nn.init.zeros_(self.ffn.fc2.weight)

    def norm_variant(self, w_bits: int) -> int:
        """Row of the norm tables used at `w_bits` (0 without bit-specific norms)."""
        if self.norm_bits is None:
            return 0
        if w_bits not in self.norm_bits:
            raise ValueError(f"w_bits={w_bits} has no norm of its own; this supernet's choices are {self.norm_bits}")
        return self.norm_bits.index(w_bits)

    def materialize(
        self, embed_dim: int, heads: int, hidden: int, w_bits: int, quantize: bool = True
    ) -> fn.BlockWeights:
        """All tensors of this block for one subnet layer, sliced and quantized (float with `quantize=False`, for
        quantization-aware extraction; the norms are still those of `w_bits`)."""
        v = self.norm_variant(w_bits)
        bits = w_bits if quantize else 32
        return fn.BlockWeights(
            *self.ln1.materialize(embed_dim, v),
            *self.attn.materialize(embed_dim, heads, bits),
            *self.ln2.materialize(embed_dim, v),
            *self.ffn.materialize(embed_dim, hidden, bits),
        )

    def forward(
        self,
        x: torch.Tensor,
        heads: int,
        hidden: int,
        w_bits: int,
        a_bits: int,
        causal: bool,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, T, E); `mask` (B, T), True at real tokens, or None (see functional.attention)."""
        w = self.materialize(x.shape[-1], heads, hidden, w_bits)
        return fn.block(x, w, self.config, a_bits, causal, mask)


class ElasticPatchEmbed(nn.Module):
    """Linear patch projection to at most `embed_max` channels, a learned position embedding and an optional CLS."""

    def __init__(self, patch_dim: int, num_patches: int, embed_max: int, cls_token: bool = False) -> None:
        super().__init__()
        self.proj = ElasticLinear(patch_dim, embed_max)
        self.pos = nn.Parameter(torch.zeros(num_patches + cls_token, embed_max))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.cls = nn.Parameter(torch.zeros(embed_max)) if cls_token else None
        # Patch projection fan-in is C*p*p, not embed: scale its init like a conv stem would be.
        nn.init.trunc_normal_(self.proj.weight, std=1.0 / math.sqrt(patch_dim))

    def materialize(self, embed_dim: int) -> fn.PatchEmbedWeights:
        w, b = slice_linear(self.proj.weight, self.proj.bias, embed_dim, self.proj.weight.shape[1])
        cls = None if self.cls is None else slice_vector(self.cls, embed_dim)
        return fn.PatchEmbedWeights(w, b, slice_columns(self.pos, embed_dim), cls)


class ElasticTokenEmbed(nn.Module):
    """Token table, learned positions (unless RoPE), token-type row and embedding norm, all front-sliced in the
    channel dim."""

    def __init__(self, vocab_size: int, block_size: int, embed_max: int, config: ModelConfig | None = None) -> None:
        super().__init__()
        c = config or ModelConfig(task="lm")
        self.table = nn.Parameter(torch.empty(vocab_size, embed_max))
        nn.init.normal_(self.table, std=0.02)
        self.pos = None
        if c.positions == "learned":
            self.pos = nn.Parameter(torch.empty(block_size, embed_max))
            nn.init.normal_(self.pos, std=0.02)
        self.type_row = nn.Parameter(torch.zeros(embed_max)) if c.token_types else None
        self.norm = ElasticLayerNorm(embed_max, c.ln_eps, kind=c.norm) if c.embed_norm else None

    def materialize(self, embed_dim: int) -> fn.TokenEmbedWeights:
        pos = None if self.pos is None else slice_columns(self.pos, embed_dim)
        type_row = None if self.type_row is None else slice_vector(self.type_row, embed_dim)
        norm = (None, None) if self.norm is None else self.norm.materialize(embed_dim)
        return fn.TokenEmbedWeights(slice_columns(self.table, embed_dim), pos, type_row, *norm)


class ElasticHead(nn.Module):
    """Final norm, optional pooler and output projection reading the first `embed_dim` channels (kept float).

    With `variants` > 1 (depth-specific heads) the final norm and the projection hold one copy per variant; the
    pooler stays shared.
    """

    def __init__(
        self, embed_max: int, out_features: int, eps: float, config: ModelConfig | None = None, variants: int = 1
    ) -> None:
        super().__init__()
        c = config or ModelConfig(ln_eps=eps)
        self.norm = ElasticLayerNorm(embed_max, eps, variants, c.norm) if c.final_norm else None
        # The pooler's output width follows the embedding width, so a subnet's pooler is (e, e).
        self.pool = ElasticLinear(embed_max, embed_max) if c.pooler else None
        self.fc = ElasticLinear(embed_max, out_features, c.head_bias, variants)

    def materialize(self, embed_dim: int, variant: int = 0) -> fn.HeadWeights:
        fc_w, fc_b = self.fc.materialize(embed_dim, self.fc.weight.shape[-2], variant=variant)  # every output
        norm = (None, None) if self.norm is None else self.norm.materialize(embed_dim, variant)
        pool = (None, None)
        if self.pool is not None:
            pool = slice_linear(self.pool.weight, self.pool.bias, embed_dim, embed_dim)
        return fn.HeadWeights(*norm, fc_w, fc_b, *pool)
