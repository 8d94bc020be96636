"""Weight slicing: the one place that says which part of a supernet tensor a subnet uses.

Every function is pure (tensors in, views/tensors out). The elastic layers call them on every forward, and extraction
calls them once and copies the result, so the two cannot drift apart. All slices are *front* slices (MatFormer /
OFA style): a smaller subnet uses the first `n` units, which is why importance reordering (supernet/importance.py)
moves the most important units to the front.

Layouts of the supernet tensors:
* linear weight `(out_max, in_max)`, bias `(out_max,)`
* fused qkv weight `(3 * H_max * head_dim, E_max)`, rows ordered `[q | k | v]`, each block `H_max` heads of
  `head_dim` rows; a subnet with `h` heads keeps the first `h` heads of each of q, k and v.
* attention output projection `(E_max, H_max * head_dim)`: columns sliced to `h * head_dim`.
* with grouped-query attention (`kv_group` query heads per key/value head) the qkv rows are
  `[q (H_max) | k (G_max) | v (G_max)]` heads, and a subnet keeps whole groups.
* a gated FFN's first projection `(2 * F_max, E_max)`, rows `[gate | up]`: both halves sliced to the first F.
"""

from __future__ import annotations

import torch


def slice_linear(
    weight: torch.Tensor, bias: torch.Tensor | None, out_features: int, in_features: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """First `out_features` rows and `in_features` columns of a linear layer."""
    if (out_features, in_features) == tuple(weight.shape):
        return weight, bias  # full width: no slice op, so no autograd slice node either (cheaper steps)
    w = weight[:out_features, :in_features]
    b = None if bias is None else bias[:out_features]
    return w, b


def slice_vector(v: torch.Tensor, n: int) -> torch.Tensor:
    """First `n` entries of a 1-D parameter (layer norm weight/bias, bias)."""
    return v if n == v.shape[0] else v[:n]


def slice_columns(t: torch.Tensor, n: int) -> torch.Tensor:
    """First `n` entries of the last dim (embedding tables: `(rows, E_max)` -> `(rows, n)`)."""
    return t if n == t.shape[-1] else t[..., :n]


def slice_qkv(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    heads: int,
    head_dim: int,
    in_features: int,
    kv_group: int = 1,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Fused projection for `heads` query heads and heads / kv_group key/value heads reading `in_features` channels:
    `((h + 2g)*hd, in)`. The supernet's rows are `[q (H_max*hd) | k (G_max*hd) | v (G_max*hd)]`; a subnet keeps the
    first h query heads and the first g key/value heads, i.e. whole groups (grouped-query attention)."""
    g_max = weight.shape[0] // (head_dim * (kv_group + 2))
    h_max = g_max * kv_group
    if heads == h_max and in_features == weight.shape[1]:
        return weight, bias
    g = heads // kv_group
    if kv_group == 1:
        # (3, H_max, hd, E_max) -> keep h heads and `in` columns -> (3*h*hd, in): a view + one copy, no index tensors.
        w = weight.view(3, h_max, head_dim, -1)[:, :heads, :, :in_features].reshape(3 * heads * head_dim, in_features)
        b = None if bias is None else bias.view(3, h_max, head_dim)[:, :heads].reshape(3 * heads * head_dim)
        return w, b
    q, kv = h_max * head_dim, g_max * head_dim
    rows = (slice(0, heads * head_dim), slice(q, q + g * head_dim), slice(q + kv, q + kv + g * head_dim))
    w = torch.cat([weight[r, :in_features] for r in rows])
    b = None if bias is None else torch.cat([bias[r] for r in rows])
    return w, b


def slice_gated(
    weight: torch.Tensor, bias: torch.Tensor | None, hidden: int, in_features: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """First `hidden` units of both halves of a gated FFN's fused `[gate | up]` projection: `(2*hidden, in)`."""
    f_max = weight.shape[0] // 2
    if hidden == f_max and in_features == weight.shape[1]:
        return weight, bias
    w = weight.view(2, f_max, -1)[:, :hidden, :in_features].reshape(2 * hidden, in_features)
    b = None if bias is None else bias.view(2, f_max)[:, :hidden].reshape(2 * hidden)
    return w, b
