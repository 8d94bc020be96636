"""`extract_subnet`: turn one arch of a supernet into a standalone module with copied, quantized weights."""

from __future__ import annotations

from typing import NamedTuple

import torch

from supernet.arch import Arch
from supernet.model import Supernet
from supernet.qat import add_weight_quantizers
from supernet.static import StaticSubnet, build_subnet


def _assign(dst: NamedTuple, src: NamedTuple) -> None:
    """Copy each tensor of `src` into the same-named parameter of `dst`, refusing any shape mismatch."""
    for name, d, s in zip(dst._fields, dst, src, strict=True):
        if d is None or s is None:
            if d is not s:
                raise RuntimeError(f"{name}: present in only one of the standalone module and the supernet")
            continue
        if d.shape != s.shape:
            raise RuntimeError(f"{name}: standalone shape {tuple(d.shape)} != supernet slice {tuple(s.shape)}")
        d.copy_(s)


@torch.no_grad()
def extract_subnet(supernet: Supernet, arch: Arch, qat: bool = False) -> StaticSubnet:
    """A plain module for `arch` whose outputs equal `supernet(x, arch)`.

    Weights are sliced and quantized by the same functions the supernet's forward uses, then copied, so the result
    holds no reference to the supernet (changing one never changes the other). With `qat=True` the block weights
    are copied float and re-quantized on every access (supernet/qat.py), for further quantization-aware training.
    It is returned in eval mode, on the supernet's device and dtype.
    """
    supernet.space.validate(arch)
    ref = next(supernet.parameters())
    with torch.device("meta"):  # no init work and no draw from the global RNG: every tensor is overwritten below
        sub = build_subnet(arch, supernet.config)
    sub = sub.to_empty(device=ref.device).to(dtype=ref.dtype)
    _assign(sub.stem.weights(), supernet.stem.materialize(arch.embed_dim))
    for i, blk in enumerate(sub.blocks):
        _assign(blk.weights(), supernet.block_weights(arch, i, quantize=not qat))
    _assign(sub.head.weights(), supernet.head_weights(arch))
    if qat:
        add_weight_quantizers(sub)
    return sub.eval()
