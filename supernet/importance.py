"""Importance reordering: permute heads, FFN neurons and embedding channels so front slices keep the best units.

Subnets use front slices (supernet/slicing.py), so the units a small subnet keeps are the first ones. OFA and
BigNAS reorder units by weight magnitude before shrinking; we do the same for every elastic width dimension:

* heads of each block, by the L1 norm of their q, k, v rows and of their proj columns (with grouped-query attention,
  whole key/value groups with their query heads, since subnets keep whole groups);
* FFN neurons of each block, by the L1 norm of their fc1 row and fc2 column;
* embedding channels of the whole net (one permutation shared by every layer that reads or writes the residual
  stream), by the L1 norm of all weights touching the channel.

Each permutation is applied consistently to every tensor indexed by that unit, so the largest arch computes the same
function before and after (up to float summation order): attention heads are independent, FFN neurons are summed,
layer norm is permutation-equivariant, and per-output-channel weight scales and per-token activation scales move
with their rows or are permutation-invariant. Call it between training stages, not inside a step: optimizer
moments are not permuted.

Scores are weight magnitudes by default; `taylor_scores` measures |w · ∂L/∂w| on the user's data instead (what an
imported pretrained model is reordered by), and `layer_redundancy` ranks whole layers for elastic depth.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from supernet.model import Supernet


def _order(scores: torch.Tensor) -> torch.Tensor:
    """Indices sorting `scores` from most to least important (stable for ties)."""
    return torch.sort(scores, descending=True, stable=True).indices


def _take_(t: torch.Tensor, dim: int, perm: torch.Tensor) -> None:
    t.copy_(t.index_select(dim, perm))


Score = Callable[[torch.Tensor], torch.Tensor]  # a parameter -> its per-entry importance (same shape)


def _magnitude(t: torch.Tensor) -> torch.Tensor:
    return t.abs()


def _reorder_heads(blk, S: Score) -> torch.Tensor:
    """Permute whole key/value groups (one head each without grouped-query attention) with their query heads."""
    qkv, proj, D, r = blk.attn.qkv, blk.attn.proj, blk.attn.head_dim, blk.attn.kv_group
    E, H = proj.weight.shape[0], proj.weight.shape[1] // D
    G = H // r
    sizes = (H * D, G * D, G * D)
    shapes = ((G, r * D, -1), (G, D, -1), (G, D, -1))
    score = sum(t.reshape(G, -1).sum(1) for t in S(qkv.weight).split(sizes))
    perm = _order(score + S(proj.weight).view(E, G, r * D).sum(dim=(0, 2)))
    for t, shape in zip(qkv.weight.split(sizes), shapes, strict=True):
        _take_(t.view(shape), 0, perm)
    if qkv.bias is not None:
        for t, shape in zip(qkv.bias.split(sizes), shapes, strict=True):
            _take_(t.view(shape[:2]), 0, perm)
    _take_(proj.weight.view(E, G, r * D), 1, perm)
    return perm


def _reorder_ffn(blk, S: Score) -> torch.Tensor:
    fc1, fc2 = blk.ffn.fc1, blk.ffn.fc2
    F = fc2.weight.shape[1]
    halves = fc1.weight.shape[0] // F  # 2 for a gated FFN: gate and up rows move together
    perm = _order(S(fc1.weight).view(halves, F, -1).sum(dim=(0, 2)) + S(fc2.weight).sum(dim=0))
    _take_(fc1.weight.view(halves, F, -1), 1, perm)
    if fc1.bias is not None:
        _take_(fc1.bias.view(halves, F), 1, perm)
    _take_(fc2.weight, 1, perm)
    return perm


def _norm_tensors(n) -> list[tuple[torch.Tensor, int]]:
    """(tensor, channel dim) of a norm's affine parameters (none for an absent norm, no bias for RMSNorm)."""
    if n is None:
        return []
    return [(t, t.dim() - 1) for t in (n.weight, n.bias) if t is not None]


def _linear_tensors(lin, out_dim: bool, in_dim: bool) -> list[tuple[torch.Tensor, int]]:
    """A linear layer's weight (rows and/or columns in the channel space) and bias (with its rows)."""
    out = [(lin.weight, 0)] if out_dim else []
    out += [(lin.weight, 1)] if in_dim else []
    if out_dim and lin.bias is not None:
        out.append((lin.bias, 0))
    return out


def _channel_tensors(net: Supernet) -> list[tuple[torch.Tensor, int]]:
    """Every (tensor, dim) whose `dim` indexes the residual-stream (embedding) channels."""
    stem = net.stem
    if hasattr(stem, "proj"):  # image: patch projection rows, position columns, CLS token
        out = [*_linear_tensors(stem.proj, True, False), (stem.pos, 1)]
        out += [(stem.cls, 0)] if stem.cls is not None else []
    else:  # text: token table and position columns, token-type row, embedding norm
        out = [(stem.table, 1)] + ([(stem.pos, 1)] if stem.pos is not None else [])
        out += [(stem.type_row, 0)] if stem.type_row is not None else []
        out += _norm_tensors(stem.norm)
    for blk in net.blocks:
        out += [
            *_norm_tensors(blk.ln1),
            *_linear_tensors(blk.attn.qkv, False, True),
            *_linear_tensors(blk.attn.proj, True, False),
            *_norm_tensors(blk.ln2),
            *_linear_tensors(blk.ffn.fc1, False, True),
            *_linear_tensors(blk.ffn.fc2, True, False),
        ]
    out += _norm_tensors(net.head.norm)
    # The pooler's output is sliced with the embedding width, so its rows share the channels' permutation.
    if net.head.pool is not None:
        out += _linear_tensors(net.head.pool, True, True)
    out += [(net.head.fc.weight, net.head.fc.weight.dim() - 1)]  # (variants,) out, in
    return out


def _reorder_channels(net: Supernet, S: Score) -> torch.Tensor:
    tensors = _channel_tensors(net)
    scores = sum(S(t).sum(dim=[d for d in range(t.dim()) if d != dim]) if t.dim() > 1 else S(t) for t, dim in tensors)
    perm = _order(scores)
    for t, dim in tensors:
        _take_(t, dim, perm)
    return perm


@torch.no_grad()
def reorder_by_importance(
    net: Supernet, channels: bool = True, scores: dict[str, torch.Tensor] | None = None
) -> dict[str, object]:
    """Permute `net`'s units in place (see module docstring); returns the permutations applied (under "num_heads",
    of key/value groups: of heads without grouped-query attention). `scores` (parameter
    name -> per-entry importance, e.g. from `taylor_scores`) replaces the weight magnitudes."""
    S: Score = _magnitude
    if scores is not None:
        by_id = {id(p): scores[n] for n, p in net.named_parameters() if n in scores}
        S = lambda t: by_id[id(t)] if id(t) in by_id else t.abs()  # noqa: E731
    heads = [_reorder_heads(blk, S) for blk in net.blocks]
    ffn = [_reorder_ffn(blk, S) for blk in net.blocks]
    embed = _reorder_channels(net, S) if channels else None
    return {"num_heads": heads, "mlp": ffn, "embed_dim": embed}


def taylor_scores(net: Supernet, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], loss) -> dict[str, torch.Tensor]:
    """|w · ∂L/∂w| per weight, summed over `batches` at the largest arch: the first-order estimate of how much the
    loss changes when the weight is removed (Molchanov et al.), measured on the user's data."""
    was_training = net.training
    net.eval()
    net.zero_grad(set_to_none=True)
    largest = net.space.largest()
    for x, y in batches:
        loss(net(x, largest), y).backward()
    out = {}
    for n, p in net.named_parameters():
        if p.grad is not None:
            out[n] = (p.detach() * p.grad).abs()
    net.zero_grad(set_to_none=True)
    net.train(was_training)
    return out


@torch.no_grad()
def layer_redundancy(net: Supernet, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> list[float]:
    """Mean cosine similarity of each block's input and output at the largest arch: a block whose output is nearly
    its input changes little, so elastic depth drops it first (ShortGPT's block influence)."""
    largest = net.space.largest()
    sims = torch.zeros(len(net.blocks))
    n = 0
    for x, _ in batches:
        h, mask = net.embed(x, largest), net.key_mask(x)  # padded positions (text) are not counted
        for i, blk in enumerate(net.blocks):
            out = blk(h, largest.num_heads[i], largest.ffn_hidden(i), largest.w_bits[i], largest.a_bits,
                      net.config.causal, mask)  # fmt: skip
            cos = torch.nn.functional.cosine_similarity(h, out, dim=-1)  # (B, T)
            sims[i] += cos.mean() if mask is None else cos[mask].mean()
            h = out
        n += 1
    return (sims / max(n, 1)).tolist()


def rank_layers(redundancy: list[float]) -> list[int]:
    """Block indices from the most to the least important (the least redundant first; ties keep model order)."""
    return sorted(range(len(redundancy)), key=lambda i: (redundancy[i], i))
