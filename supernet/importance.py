"""Importance reordering: permute heads, FFN neurons and embedding channels so front slices keep the best units.

Subnets use front slices (supernet/slicing.py), so the units a small subnet keeps are the first ones. OFA and
BigNAS reorder units by weight magnitude before shrinking; we do the same for every elastic width dimension:

* heads of each block, by the L1 norm of their q, k, v rows and of their proj columns;
* FFN neurons of each block, by the L1 norm of their fc1 row and fc2 column;
* embedding channels of the whole net (one permutation shared by every layer that reads or writes the residual
  stream), by the L1 norm of all weights touching the channel.

Each permutation is applied consistently to every tensor indexed by that unit, so the largest arch computes the same
function before and after (up to float summation order): attention heads are independent, FFN neurons are summed,
layer norm is permutation-equivariant, and per-output-channel weight scales and per-token activation scales move
with their rows or are permutation-invariant. Call it between training stages, not inside a step: optimizer
moments are not permuted.
"""

from __future__ import annotations

import torch

from supernet.model import Supernet


def _order(scores: torch.Tensor) -> torch.Tensor:
    """Indices sorting `scores` from most to least important (stable for ties)."""
    return torch.sort(scores, descending=True, stable=True).indices


def _take_(t: torch.Tensor, dim: int, perm: torch.Tensor) -> None:
    t.copy_(t.index_select(dim, perm))


def _reorder_heads(blk) -> torch.Tensor:
    qkv, proj, D = blk.attn.qkv, blk.attn.proj, blk.attn.head_dim
    E, H = proj.weight.shape[0], proj.weight.shape[1] // D
    w = qkv.weight.view(3, H, D, -1)
    p = proj.weight.view(E, H, D)
    perm = _order(w.abs().sum(dim=(0, 2, 3)) + p.abs().sum(dim=(0, 2)))
    _take_(w, 1, perm)
    _take_(qkv.bias.view(3, H, D), 1, perm)
    _take_(p, 1, perm)
    return perm


def _reorder_ffn(blk) -> torch.Tensor:
    fc1, fc2 = blk.ffn.fc1, blk.ffn.fc2
    perm = _order(fc1.weight.abs().sum(dim=1) + fc2.weight.abs().sum(dim=0))
    _take_(fc1.weight, 0, perm)
    _take_(fc1.bias, 0, perm)
    _take_(fc2.weight, 1, perm)
    return perm


def _channel_tensors(net: Supernet) -> list[tuple[torch.Tensor, int]]:
    """Every (tensor, dim) whose `dim` indexes the residual-stream (embedding) channels."""
    stem = net.stem
    if hasattr(stem, "proj"):  # image: patch projection rows and position columns
        out = [(stem.proj.weight, 0), (stem.proj.bias, 0), (stem.pos, 1)]
    else:  # lm: token table and position columns
        out = [(stem.table, 1), (stem.pos, 1)]
    for blk in net.blocks:
        out += [
            (blk.ln1.weight, blk.ln1.weight.dim() - 1),
            (blk.ln1.bias, blk.ln1.bias.dim() - 1),
            (blk.attn.qkv.weight, 1),
            (blk.attn.proj.weight, 0),
            (blk.attn.proj.bias, 0),
            (blk.ln2.weight, blk.ln2.weight.dim() - 1),
            (blk.ln2.bias, blk.ln2.bias.dim() - 1),
            (blk.ffn.fc1.weight, 1),
            (blk.ffn.fc2.weight, 0),
            (blk.ffn.fc2.bias, 0),
        ]
    out += [(net.head.norm.weight, 0), (net.head.norm.bias, 0), (net.head.fc.weight, 1)]
    return out


def _reorder_channels(net: Supernet) -> torch.Tensor:
    tensors = _channel_tensors(net)
    scores = sum(
        t.abs().sum(dim=[d for d in range(t.dim()) if d != dim]) if t.dim() > 1 else t.abs() for t, dim in tensors
    )
    perm = _order(scores)
    for t, dim in tensors:
        _take_(t, dim, perm)
    return perm


@torch.no_grad()
def reorder_by_importance(net: Supernet, channels: bool = True) -> dict[str, object]:
    """Permute `net`'s units in place (see module docstring); returns the permutations applied."""
    heads = [_reorder_heads(blk) for blk in net.blocks]
    ffn = [_reorder_ffn(blk) for blk in net.blocks]
    embed = _reorder_channels(net) if channels else None
    return {"num_heads": heads, "mlp": ffn, "embed_dim": embed}
