"""Standalone subnets: plain PyTorch modules with exactly-sized layers, no reference to the supernet.

They are built from an `Arch` and a `ModelConfig` alone (so a saved subnet reloads without the supernet), hold
ordinary `nn.Linear` / `nn.LayerNorm` / `nn.Embedding` layers whose weights are the already-quantized values, and
run the same forward math as the supernet (supernet/functional.py). Activation fake-quantization, the only
quantization left at run time, comes from the same shared function.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from supernet import functional as fn
from supernet.arch import Arch
from supernet.chunked_loss import TokenOutputs
from supernet.config import ModelConfig


def _norm(dim: int, config: ModelConfig) -> nn.Module:
    return nn.RMSNorm(dim, eps=config.ln_eps) if config.norm == "rms" else nn.LayerNorm(dim, eps=config.ln_eps)


def _norm_weights(n: nn.Module | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    return (None, None) if n is None else (n.weight, getattr(n, "bias", None))


class StaticBlock(nn.Module):
    """One transformer block at fixed sizes, with `config`'s block options."""

    def __init__(self, embed_dim: int, heads: int, hidden: int, a_bits: int, config: ModelConfig) -> None:
        super().__init__()
        self.config, self.a_bits = config, a_bits
        D, bias = config.head_dim, config.linear_bias
        self.ln1 = _norm(embed_dim, config)
        self.qkv = nn.Linear(embed_dim, (heads + 2 * (heads // config.kv_group)) * D, bias=bias)
        self.proj = nn.Linear(heads * D, embed_dim, bias=bias)
        self.ln2 = _norm(embed_dim, config)
        self.fc1 = nn.Linear(embed_dim, (2 if config.gated_ffn else 1) * hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, embed_dim, bias=bias)

    def weights(self) -> fn.BlockWeights:
        return fn.BlockWeights(
            *_norm_weights(self.ln1),
            self.qkv.weight,
            self.qkv.bias,
            self.proj.weight,
            self.proj.bias,
            *_norm_weights(self.ln2),
            self.fc1.weight,
            self.fc1.bias,
            self.fc2.weight,
            self.fc2.bias,
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return fn.block(x, self.weights(), self.config, self.a_bits, mask=mask)


class StaticHead(nn.Module):
    """Final norm, optional pooler and output projection."""

    def __init__(self, embed_dim: int, out_features: int, config: ModelConfig) -> None:
        super().__init__()
        self.norm = _norm(embed_dim, config) if config.final_norm else None
        self.pool = nn.Linear(embed_dim, embed_dim) if config.pooler else None
        self.fc = nn.Linear(embed_dim, out_features, bias=config.head_bias)

    def weights(self) -> fn.HeadWeights:
        pool = (None, None) if self.pool is None else (self.pool.weight, self.pool.bias)
        return fn.HeadWeights(*_norm_weights(self.norm), self.fc.weight, self.fc.bias, *pool)


class StaticPatchEmbed(nn.Module):
    def __init__(self, patch_dim: int, num_patches: int, embed_dim: int, cls_token: bool = False) -> None:
        super().__init__()
        self.proj = nn.Linear(patch_dim, embed_dim)
        self.pos = nn.Parameter(torch.zeros(num_patches + cls_token, embed_dim))
        self.cls = nn.Parameter(torch.zeros(embed_dim)) if cls_token else None

    def weights(self) -> fn.PatchEmbedWeights:
        return fn.PatchEmbedWeights(self.proj.weight, self.proj.bias, self.pos, self.cls)


class StaticTokenEmbed(nn.Module):
    def __init__(self, vocab_size: int, block_size: int, embed_dim: int, config: ModelConfig) -> None:
        super().__init__()
        self.table = nn.Embedding(vocab_size, embed_dim)
        self.pos = nn.Parameter(torch.zeros(block_size, embed_dim)) if config.positions == "learned" else None
        self.type_row = nn.Parameter(torch.zeros(embed_dim)) if config.token_types else None
        self.norm = _norm(embed_dim, config) if config.embed_norm else None

    def weights(self) -> fn.TokenEmbedWeights:
        return fn.TokenEmbedWeights(self.table.weight, self.pos, self.type_row, *_norm_weights(self.norm))


class StaticSubnet(nn.Module):
    """Blocks of one arch; subclasses add the task's stem and head."""

    def __init__(self, arch: Arch, config: ModelConfig) -> None:
        super().__init__()
        self.arch = arch
        self.config = config
        e = arch.embed_dim
        self.blocks = nn.ModuleList(
            StaticBlock(e, arch.num_heads[i], arch.ffn_hidden(i), arch.a_bits, config) for i in range(arch.depth)
        )
        self.grad_checkpointing = False  # a training setting (train.grad_checkpointing), as on the supernet

    # One output per token (an LM's logits): `forward(x, deferred=True)` gives them as TokenOutputs, as the supernet.
    per_token = False

    def trunk(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The blocks on (B, T, E) embeddings; `mask` (B, T), True at real tokens, or None."""
        recompute = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for blk in self.blocks:
            h = checkpoint(blk, h, mask, use_reentrant=False) if recompute else blk(h, mask)
        return h


class StaticViT(StaticSubnet):
    """Standalone image classifier. Input (B, C, H, W) float -> logits (B, num_classes)."""

    def __init__(self, arch: Arch, config: ModelConfig) -> None:
        super().__init__(arch, config)
        self.stem = StaticPatchEmbed(config.patch_dim, config.num_patches, arch.embed_dim, config.cls_token)
        self.head = StaticHead(arch.embed_dim, config.num_classes, config)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        fn.check_images(images, self.config.in_channels, self.config.image_size)
        h = self.trunk(fn.embed_images(images, self.stem.weights(), self.config.patch_size))
        return fn.classify(h, self.head.weights(), self.config)


class StaticLM(StaticSubnet):
    """Standalone causal LM. Input (B, T) int64 ids -> logits (B, T, vocab_size), or with `deferred` the hidden
    states and head (`TokenOutputs`) for a chunked loss."""

    per_token = True

    def __init__(self, arch: Arch, config: ModelConfig) -> None:
        super().__init__(arch, config)
        self.stem = StaticTokenEmbed(config.vocab_size, config.block_size, arch.embed_dim, config)
        self.head = StaticHead(arch.embed_dim, config.num_outputs, config)

    def forward(self, tokens: torch.Tensor, deferred: bool = False) -> torch.Tensor | TokenOutputs:
        fn.check_tokens(tokens, self.config.vocab_size, self.config.block_size)
        h = self.trunk(fn.embed_tokens(tokens, self.stem.weights(), self.config))
        head = partial(fn.lm_logits, w=self.head.weights(), config=self.config)
        return TokenOutputs(h, head) if deferred else head(h)


class StaticTextClassifier(StaticLM):
    """Standalone sequence classifier (BERT). Input (B, T) int64 ids, padded with `config.pad_id` (masked out) ->
    logits (B, num_classes)."""

    per_token = False

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        fn.check_tokens(tokens, self.config.vocab_size, self.config.block_size)
        mask = fn.key_mask(tokens, self.config.pad_id)
        h = self.trunk(fn.embed_tokens(tokens, self.stem.weights(), self.config), mask)
        return fn.classify(h, self.head.weights(), self.config, mask)


def build_subnet(arch: Arch, config: ModelConfig) -> StaticSubnet:
    """An untrained standalone subnet of `arch` (extraction or a saved state dict fills its weights)."""
    return {"image": StaticViT, "lm": StaticLM, "text": StaticTextClassifier}[config.task](arch, config)
