"""The transformer's forward math on concrete (already sliced and quantized) tensors.

Both the elastic supernet and the extracted standalone modules run their forward through these functions; the only
difference between them is where the tensors come from (sliced from the supernet on every call, or stored at their
exact size). That is what makes extraction exact by construction. Shapes: B batch, T tokens, E embed_dim, h heads,
D head_dim, F FFN hidden width.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from supernet.quant import quantize_activations


class BlockWeights(NamedTuple):
    """Tensors of one pre-norm transformer block at their active sizes (h heads, F hidden, E embed)."""

    ln1_w: torch.Tensor  # (E,)
    ln1_b: torch.Tensor  # (E,)
    qkv_w: torch.Tensor  # (3*h*D, E), rows [q | k | v]
    qkv_b: torch.Tensor  # (3*h*D,)
    proj_w: torch.Tensor  # (E, h*D)
    proj_b: torch.Tensor  # (E,)
    ln2_w: torch.Tensor  # (E,)
    ln2_b: torch.Tensor  # (E,)
    fc1_w: torch.Tensor  # (F, E)
    fc1_b: torch.Tensor  # (F,)
    fc2_w: torch.Tensor  # (E, F)
    fc2_b: torch.Tensor  # (E,)


class PatchEmbedWeights(NamedTuple):
    """Patch projection and learned position embedding of the image model."""

    proj_w: torch.Tensor  # (E, C*p*p)
    proj_b: torch.Tensor  # (E,)
    pos: torch.Tensor  # (N, E)


class TokenEmbedWeights(NamedTuple):
    """Token table and learned position embedding of the language model."""

    table: torch.Tensor  # (V, E)
    pos: torch.Tensor  # (block_size, E)


class HeadWeights(NamedTuple):
    """Final layer norm and output projection (classifier or LM head)."""

    norm_w: torch.Tensor  # (E,)
    norm_b: torch.Tensor  # (E,)
    fc_w: torch.Tensor  # (classes or V, E)
    fc_b: torch.Tensor  # (classes or V,)


def qlinear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, a_bits: int) -> torch.Tensor:
    """Linear layer with its input fake-quantized to `a_bits` (weights arrive already quantized)."""
    return F.linear(quantize_activations(x, a_bits), weight, bias)


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
) -> torch.Tensor:
    """Multi-head self-attention with a fused qkv projection. x: (B, T, E) -> (B, T, E)."""
    B, T, _ = x.shape
    qkv = qlinear(x, qkv_w, qkv_b, a_bits)  # (B, T, 3*h*D)
    q, k, v = qkv.view(B, T, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, T, D)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # (B, h, T, D)
    y = y.transpose(1, 2).reshape(B, T, heads * head_dim)
    return qlinear(y, proj_w, proj_b, a_bits)


def ffn(
    x: torch.Tensor,
    fc1_w: torch.Tensor,
    fc1_b: torch.Tensor | None,
    fc2_w: torch.Tensor,
    fc2_b: torch.Tensor | None,
    a_bits: int,
) -> torch.Tensor:
    """Two-layer GELU MLP. x: (B, T, E) -> (B, T, F) -> (B, T, E)."""
    return qlinear(F.gelu(qlinear(x, fc1_w, fc1_b, a_bits)), fc2_w, fc2_b, a_bits)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm over the (active) last dim."""
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


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


def block(x: torch.Tensor, w: BlockWeights, head_dim: int, a_bits: int, causal: bool, eps: float) -> torch.Tensor:
    """Pre-norm transformer block: x + attn(ln1(x)), then + ffn(ln2(x)). x: (B, T, E)."""
    heads = w.qkv_w.shape[0] // (3 * head_dim)
    x = x + attention(
        layer_norm(x, w.ln1_w, w.ln1_b, eps), w.qkv_w, w.qkv_b, w.proj_w, w.proj_b, heads, head_dim, a_bits, causal
    )
    return x + ffn(layer_norm(x, w.ln2_w, w.ln2_b, eps), w.fc1_w, w.fc1_b, w.fc2_w, w.fc2_b, a_bits)


def embed_images(images: torch.Tensor, w: PatchEmbedWeights, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, E): linear patch projection plus position embedding."""
    return F.linear(patchify(images, patch_size), w.proj_w, w.proj_b) + w.pos


def embed_tokens(tokens: torch.Tensor, w: TokenEmbedWeights) -> torch.Tensor:
    """(B, T) ids -> (B, T, E): token embedding plus the first T position embeddings."""
    return F.embedding(tokens, w.table) + w.pos[: tokens.shape[1]]


def classify(x: torch.Tensor, w: HeadWeights, eps: float) -> torch.Tensor:
    """(B, N, E) -> (B, classes): mean-pool the tokens, layer-norm, project (timm's avg-pool + fc_norm head)."""
    return F.linear(layer_norm(x.mean(dim=1), w.norm_w, w.norm_b, eps), w.fc_w, w.fc_b)


def lm_logits(x: torch.Tensor, w: HeadWeights, eps: float) -> torch.Tensor:
    """(B, T, E) -> (B, T, V): per-token layer norm and LM head."""
    return F.linear(layer_norm(x, w.norm_w, w.norm_b, eps), w.fc_w, w.fc_b)
