"""The transformer's forward math on concrete (already sliced and quantized) tensors.

Both the elastic supernet and the extracted standalone modules run their forward through these functions; the only
difference between them is where the tensors come from (sliced from the supernet on every call, or stored at their
exact size). That is what makes extraction exact by construction. Shapes: B batch, T tokens, E embed_dim, h heads,
D head_dim, F FFN hidden width.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from supernet.config import ModelConfig, Rope
from supernet.quant import quantize_activations


class BlockWeights(NamedTuple):
    """Tensors of one transformer block at their active sizes (h query heads, g = h / kv_group key/value heads, F
    hidden, E embed). Biases are None where the family has none (RMSNorm, Llama's linears)."""

    ln1_w: torch.Tensor  # (E,)
    ln1_b: torch.Tensor | None  # (E,)
    qkv_w: torch.Tensor  # ((h + 2g)*D, E), rows [q (h*D) | k (g*D) | v (g*D)]
    qkv_b: torch.Tensor | None
    proj_w: torch.Tensor  # (E, h*D)
    proj_b: torch.Tensor | None  # (E,)
    ln2_w: torch.Tensor  # (E,)
    ln2_b: torch.Tensor | None  # (E,)
    fc1_w: torch.Tensor  # (F, E), or (2F, E) rows [gate | up] with a gated FFN
    fc1_b: torch.Tensor | None
    fc2_w: torch.Tensor  # (E, F)
    fc2_b: torch.Tensor | None  # (E,)


class PatchEmbedWeights(NamedTuple):
    """Patch projection, learned position embedding and (ViT) CLS token of the image model."""

    proj_w: torch.Tensor  # (E, C*p*p)
    proj_b: torch.Tensor  # (E,)
    pos: torch.Tensor  # (N or N+1, E)
    cls: torch.Tensor | None = None  # (E,)


class TokenEmbedWeights(NamedTuple):
    """Token table, learned positions (None with RoPE), token-type row and embedding norm (BERT) of a text model."""

    table: torch.Tensor  # (V, E)
    pos: torch.Tensor | None  # (block_size, E)
    type_row: torch.Tensor | None = None  # (E,)
    norm_w: torch.Tensor | None = None  # (E,)
    norm_b: torch.Tensor | None = None  # (E,)


class HeadWeights(NamedTuple):
    """Final norm, optional pooler (BERT) and output projection (classifier or LM head)."""

    norm_w: torch.Tensor | None  # (E,)
    norm_b: torch.Tensor | None  # (E,)
    fc_w: torch.Tensor  # (classes or V, E)
    fc_b: torch.Tensor | None  # (classes or V,)
    pool_w: torch.Tensor | None = None  # (E, E)
    pool_b: torch.Tensor | None = None  # (E,)


def qlinear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, a_bits: int) -> torch.Tensor:
    """Linear layer with its input fake-quantized to `a_bits` (weights arrive already quantized)."""
    return F.linear(quantize_activations(x, a_bits), weight, bias)


def rope_inv_freq(D: int, spec: Rope, device: torch.device | None = None) -> torch.Tensor:
    """(D/2,) float32 inverse frequencies of the rotary embedding, computed as Hugging Face's RoPE initialisers do."""
    inv_freq = 1.0 / (spec.theta ** (torch.arange(0, D, 2, dtype=torch.int64, device=device).float() / D))
    if spec.scaling == "linear":
        return inv_freq / spec.factor
    if spec.scaling == "llama3":
        low_wavelen = spec.original_positions / spec.low_freq_factor
        high_wavelen = spec.original_positions / spec.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / spec.factor, inv_freq)  # low frequencies / factor
        smooth = (spec.original_positions / wavelen - spec.low_freq_factor) / (
            spec.high_freq_factor - spec.low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / spec.factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
        return torch.where(medium, smoothed, scaled)
    return inv_freq


def rope_tables(T: int, D: int, spec: Rope, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each (T, D) in float32, of the rotary embedding at positions 0..T-1 (as Llama computes them)."""
    inv_freq = rope_inv_freq(D, spec, device)
    freqs = torch.arange(T, device=device, dtype=torch.float32)[:, None] * inv_freq[None, :]  # (T, D/2)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rope(x: torch.Tensor, spec: Rope) -> torch.Tensor:
    """Rotary position embedding of (B, h, T, D) queries or keys at positions 0..T-1 (Llama's rotate-half form)."""
    D = x.shape[-1]
    cos, sin = (t.to(x.dtype) for t in rope_tables(x.shape[-2], D, spec, x.device))
    x1, x2 = x[..., : D // 2], x[..., D // 2 :]
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def key_mask(tokens: torch.Tensor, pad_id: int | None) -> torch.Tensor | None:
    """(B, T) bool, True at the real tokens (the keys attention may read), from the ids; None without a pad id."""
    return None if pad_id is None else tokens != pad_id


def mask_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) key mask -> (B, 1, 1, T) additive scores: 0 at real keys, the dtype's lowest value at padding, which
    softmax turns into exactly 0 next to any real key (the runtime graph adds the same float32 value)."""
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    return bias[:, None, None, :]


def attention(
    x: torch.Tensor,
    qkv_w: torch.Tensor,
    qkv_b: torch.Tensor | None,
    proj_w: torch.Tensor,
    proj_b: torch.Tensor | None,
    heads: int,
    head_dim: int,
    a_bits: int,
    causal: bool,
    kv_group: int = 1,
    rope_spec: Rope | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Multi-head self-attention with a fused [q | k | v] projection; each key/value head serves `kv_group`
    consecutive query heads (grouped-query attention), and `rope_spec` rotates q and k. `mask` (B, T), True at real
    tokens, keeps every query from reading padded keys. (B, T, E) -> (B, T, E)."""
    B, T, _ = x.shape
    g = heads // kv_group
    qkv = qlinear(x, qkv_w, qkv_b, a_bits)  # (B, T, (h + 2g)*D)
    q, k, v = qkv.split((heads * head_dim, g * head_dim, g * head_dim), dim=-1)
    q = q.view(B, T, heads, head_dim).transpose(1, 2)  # (B, h, T, D)
    k, v = (t.view(B, T, g, head_dim).transpose(1, 2) for t in (k, v))  # (B, g, T, D)
    if rope_spec is not None:
        q, k = rope(q, rope_spec), rope(k, rope_spec)
    if kv_group > 1:
        k, v = k.repeat_interleave(kv_group, dim=1), v.repeat_interleave(kv_group, dim=1)
    bias = None if mask is None else mask_bias(mask, q.dtype)  # (B, 1, 1, T)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, is_causal=causal)  # (B, h, T, D)
    y = y.transpose(1, 2).reshape(B, T, heads * head_dim)
    return qlinear(y, proj_w, proj_b, a_bits)


ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"),
    "silu": F.silu,
    "relu": F.relu,
}


def ffn(
    x: torch.Tensor,
    fc1_w: torch.Tensor,
    fc1_b: torch.Tensor | None,
    fc2_w: torch.Tensor,
    fc2_b: torch.Tensor | None,
    a_bits: int,
    activation: str = "gelu",
    gated: bool = False,
) -> torch.Tensor:
    """Two-layer MLP, or with `gated` act(gate) * up then down (SwiGLU). (B, T, E) -> (B, T, F) -> (B, T, E)."""
    h = qlinear(x, fc1_w, fc1_b, a_bits)
    act = ACTIVATIONS[activation]
    if gated:
        gate, up = h.chunk(2, dim=-1)
        h = act(gate) * up
    else:
        h = act(h)
    return qlinear(h, fc2_w, fc2_b, a_bits)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """LayerNorm over the (active) last dim."""
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the (active) last dim, computed in at least float32 as Llama does (float64 stays float64, so a
    float64 check of the model is float64 throughout; written out: it exports to any opset)."""
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, kind: str, eps: float) -> torch.Tensor:
    """The model's norm: "layer" or "rms" (which has no bias)."""
    return rms_norm(x, weight, eps) if kind == "rms" else layer_norm(x, weight, bias, eps)


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, C*p*p) non-overlapping patches in row-major order."""
    B, C, H, W = images.shape
    p = patch_size
    x = images.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)  # (B, H/p, W/p, C, p, p)
    return x.reshape(B, (H // p) * (W // p), C * p * p)


def _tracing() -> bool:
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


def check_images(images: torch.Tensor, in_channels: int, image_size: int) -> None:
    """One clear ValueError for a batch of images that is not (B, C, H, W) float of the configured size."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"expected a torch.Tensor of images, got {type(images).__name__}")
    if not images.is_floating_point():
        raise ValueError(f"images must be a float tensor, got dtype {images.dtype}; convert with .float()")
    want = (in_channels, image_size, image_size)
    if images.dim() != 4 or tuple(images.shape[1:]) != want:
        raise ValueError(f"images must have shape (B, {', '.join(map(str, want))}), got {tuple(images.shape)}")


def check_tokens(tokens: torch.Tensor, vocab_size: int, block_size: int) -> None:
    """One clear ValueError for token ids that are not (B, T) integers in [0, vocab_size) with T <= block_size."""
    if not isinstance(tokens, torch.Tensor):
        raise ValueError(f"expected a torch.Tensor of token ids, got {type(tokens).__name__}")
    if tokens.is_floating_point() or tokens.dtype == torch.bool or tokens.is_complex():
        raise ValueError(f"token ids must be an integer tensor, got dtype {tokens.dtype}; convert with .long()")
    if tokens.dim() != 2 or tokens.shape[1] == 0:
        raise ValueError(f"token ids must have shape (B, T) with T >= 1, got {tuple(tokens.shape)}")
    if tokens.shape[1] > block_size:
        raise ValueError(f"sequence length {tokens.shape[1]} exceeds block_size={block_size}; crop or split it")
    # The range check reads the data: tracing (ONNX export) cannot, and on an accelerator it would force a host sync
    # every forward, so there the embedding's own device-side check reports bad ids instead.
    if not _tracing() and tokens.device.type == "cpu" and tokens.numel():
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= vocab_size:
            raise ValueError(f"token ids must be in [0, {vocab_size}), got values in [{lo}, {hi}]")


def block(
    x: torch.Tensor,
    w: BlockWeights,
    config: ModelConfig,
    a_bits: int,
    causal: bool | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """One transformer block with `config`'s options (`causal` defaults to the task's; `mask` (B, T) as in
    `attention`). Pre-norm: x + attn(n1(x)), then + ffn(n2(x)); post-norm (BERT): n1(x + attn(x)), then
    n2(x + ffn(x)). x: (B, T, E)."""
    c, D = config, config.head_dim
    causal = c.causal if causal is None else causal
    heads = w.proj_w.shape[1] // D
    rope_spec = c.rope

    def attn(h: torch.Tensor) -> torch.Tensor:
        return attention(h, w.qkv_w, w.qkv_b, w.proj_w, w.proj_b, heads, D, a_bits, causal, c.kv_group, rope_spec, mask)

    def mlp(h: torch.Tensor) -> torch.Tensor:
        return ffn(h, w.fc1_w, w.fc1_b, w.fc2_w, w.fc2_b, a_bits, c.activation, c.gated_ffn)

    if c.norm_position == "post":
        x = norm(x + attn(x), w.ln1_w, w.ln1_b, c.norm, c.ln_eps)
        return norm(x + mlp(x), w.ln2_w, w.ln2_b, c.norm, c.ln_eps)
    x = x + attn(norm(x, w.ln1_w, w.ln1_b, c.norm, c.ln_eps))
    return x + mlp(norm(x, w.ln2_w, w.ln2_b, c.norm, c.ln_eps))


def embed_images(images: torch.Tensor, w: PatchEmbedWeights, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N(+1), E): linear patch projection, the CLS token first when there is one, positions."""
    x = F.linear(patchify(images, patch_size), w.proj_w, w.proj_b)
    if w.cls is not None:
        x = torch.cat((w.cls.expand(x.shape[0], 1, -1), x), dim=1)
    return x + w.pos


def embed_tokens(tokens: torch.Tensor, w: TokenEmbedWeights, config: ModelConfig) -> torch.Tensor:
    """(B, T) ids -> (B, T, E): token embedding plus the first T positions (unless RoPE) and the token-type row,
    then the embedding norm (BERT)."""
    x = F.embedding(tokens, w.table)
    if w.pos is not None:
        x = x + w.pos[: tokens.shape[1]]
    if w.type_row is not None:
        x = x + w.type_row
    if w.norm_w is not None:
        x = norm(x, w.norm_w, w.norm_b, config.norm, config.ln_eps)
    return x


def _head(x: torch.Tensor, w: HeadWeights, config: ModelConfig) -> torch.Tensor:
    if w.norm_w is not None:
        x = norm(x, w.norm_w, w.norm_b, config.norm, config.ln_eps)
    if w.pool_w is not None:
        x = torch.tanh(F.linear(x, w.pool_w, w.pool_b))
    return F.linear(x, w.fc_w, w.fc_b)


def classify(x: torch.Tensor, w: HeadWeights, config: ModelConfig, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T, E) -> (B, classes): pool (mean of the tokens, or the CLS token), norm, pooler, project. Norming the
    pooled vector equals norming every token and then pooling the CLS one (ViT), since the norm is per token. With a
    key `mask` (B, T) the mean is over the real tokens only."""
    if config.pooling == "cls":
        pooled = x[:, 0]
    elif mask is None:
        pooled = x.mean(dim=1)
    else:
        m = mask.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
        pooled = (x * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)
    return _head(pooled, w, config)


def lm_logits(x: torch.Tensor, w: HeadWeights, config: ModelConfig) -> torch.Tensor:
    """(B, T, E) -> (B, T, V): per-token final norm and LM head."""
    return _head(x, w, config)
