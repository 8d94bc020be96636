"""Quantization-aware standalone subnets: weights stay float and are fake-quantized on every access.

`extract_subnet(..., qat=True)` uses this so an extracted low-bit subnet can be trained further (fine-tuning,
static baselines in benchmarks) with the same quantizer the supernet uses: `torch.nn.utils.parametrize` re-quantizes
`layer.weight` each time it is read, with the straight-through estimator from supernet/quant.py.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils import parametrize

from supernet.quant import quantize_weight
from supernet.static import StaticSubnet

QUANTIZED_LINEARS = ("qkv", "proj", "fc1", "fc2")


class WeightQuantizer(nn.Module):
    """Parametrization: the weight as seen by the forward is `quantize_weight(latent, bits)`."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits

    def forward(self, weight):
        return quantize_weight(weight, self.bits)


def add_weight_quantizers(sub: StaticSubnet) -> StaticSubnet:
    """Register a per-layer weight quantizer (the arch's `w_bits`) on every block linear below 32 bits."""
    for blk, bits in zip(sub.blocks, sub.arch.w_bits, strict=True):
        if bits < 32:
            for name in QUANTIZED_LINEARS:
                parametrize.register_parametrization(getattr(blk, name), "weight", WeightQuantizer(bits))
    return sub


def bake_weight_quantizers(sub: StaticSubnet) -> StaticSubnet:
    """Replace every quantizer by its current quantized weight (after fine-tuning, before export)."""
    for blk in sub.blocks:
        for name in QUANTIZED_LINEARS:
            layer = getattr(blk, name)
            if parametrize.is_parametrized(layer, "weight"):
                parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
    return sub
