"""Standalone subnets: plain PyTorch modules with exactly-sized layers, no reference to the supernet.

They are built from an `Arch` and a `ModelConfig` alone (so a saved subnet reloads without the supernet), hold
ordinary `nn.Linear` / `nn.LayerNorm` / `nn.Embedding` layers whose weights are the already-quantized values, and
run the same forward math as the supernet (supernet/functional.py). Activation fake-quantization, the only
quantization left at run time, comes from the same shared function.
"""

from __future__ import annotations

import torch
from torch import nn

from supernet import functional as fn
from supernet.arch import Arch
from supernet.config import ModelConfig


class StaticBlock(nn.Module):
    """One pre-norm transformer block at fixed sizes."""

    def __init__(
        self, embed_dim: int, heads: int, head_dim: int, hidden: int, a_bits: int, causal: bool, eps: float
    ) -> None:
        super().__init__()
        self.head_dim, self.a_bits, self.causal, self.eps = head_dim, a_bits, causal, eps
        self.ln1 = nn.LayerNorm(embed_dim, eps=eps)
        self.qkv = nn.Linear(embed_dim, 3 * heads * head_dim)
        self.proj = nn.Linear(heads * head_dim, embed_dim)
        self.ln2 = nn.LayerNorm(embed_dim, eps=eps)
        self.fc1 = nn.Linear(embed_dim, hidden)
        self.fc2 = nn.Linear(hidden, embed_dim)

    def weights(self) -> fn.BlockWeights:
        return fn.BlockWeights(
            self.ln1.weight,
            self.ln1.bias,
            self.qkv.weight,
            self.qkv.bias,
            self.proj.weight,
            self.proj.bias,
            self.ln2.weight,
            self.ln2.bias,
            self.fc1.weight,
            self.fc1.bias,
            self.fc2.weight,
            self.fc2.bias,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fn.block(x, self.weights(), self.head_dim, self.a_bits, self.causal, self.eps)


class StaticHead(nn.Module):
    """Final layer norm and output projection."""

    def __init__(self, embed_dim: int, out_features: int, eps: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim, eps=eps)
        self.fc = nn.Linear(embed_dim, out_features)

    def weights(self) -> fn.HeadWeights:
        return fn.HeadWeights(self.norm.weight, self.norm.bias, self.fc.weight, self.fc.bias)


class StaticPatchEmbed(nn.Module):
    def __init__(self, patch_dim: int, num_patches: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(patch_dim, embed_dim)
        self.pos = nn.Parameter(torch.zeros(num_patches, embed_dim))

    def weights(self) -> fn.PatchEmbedWeights:
        return fn.PatchEmbedWeights(self.proj.weight, self.proj.bias, self.pos)


class StaticTokenEmbed(nn.Module):
    def __init__(self, vocab_size: int, block_size: int, embed_dim: int) -> None:
        super().__init__()
        self.table = nn.Embedding(vocab_size, embed_dim)
        self.pos = nn.Parameter(torch.zeros(block_size, embed_dim))

    def weights(self) -> fn.TokenEmbedWeights:
        return fn.TokenEmbedWeights(self.table.weight, self.pos)


class StaticSubnet(nn.Module):
    """Blocks of one arch; subclasses add the task's stem and head."""

    def __init__(self, arch: Arch, config: ModelConfig) -> None:
        super().__init__()
        self.arch = arch
        self.config = config
        e = arch.embed_dim
        self.blocks = nn.ModuleList(
            StaticBlock(
                e, arch.num_heads[i], config.head_dim, arch.ffn_hidden(i), arch.a_bits, config.causal, config.ln_eps
            )
            for i in range(arch.depth)
        )

    def trunk(self, h: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            h = blk(h)
        return h


class StaticViT(StaticSubnet):
    """Standalone image classifier. Input (B, C, H, W) float -> logits (B, num_classes)."""

    def __init__(self, arch: Arch, config: ModelConfig) -> None:
        super().__init__(arch, config)
        self.stem = StaticPatchEmbed(config.patch_dim, config.num_patches, arch.embed_dim)
        self.head = StaticHead(arch.embed_dim, config.num_classes, config.ln_eps)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        fn.check_images(images, self.config.in_channels, self.config.image_size)
        h = self.trunk(fn.embed_images(images, self.stem.weights(), self.config.patch_size))
        return fn.classify(h, self.head.weights(), self.config.ln_eps)


class StaticLM(StaticSubnet):
    """Standalone causal LM. Input (B, T) int64 ids -> logits (B, T, vocab_size)."""

    def __init__(self, arch: Arch, config: ModelConfig) -> None:
        super().__init__(arch, config)
        self.stem = StaticTokenEmbed(config.vocab_size, config.block_size, arch.embed_dim)
        self.head = StaticHead(arch.embed_dim, config.vocab_size, config.ln_eps)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        fn.check_tokens(tokens, self.config.vocab_size, self.config.block_size)
        h = self.trunk(fn.embed_tokens(tokens, self.stem.weights()))
        return fn.lm_logits(h, self.head.weights(), self.config.ln_eps)


def build_subnet(arch: Arch, config: ModelConfig) -> StaticSubnet:
    """An untrained standalone subnet of `arch` (extraction or a saved state dict fills its weights)."""
    return {"image": StaticViT, "lm": StaticLM}[config.task](arch, config)
