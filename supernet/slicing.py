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
    weight: torch.Tensor, bias: torch.Tensor | None, heads: int, head_dim: int, in_features: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Fused qkv projection for `heads` heads reading `in_features` embedding channels: `(3*h*hd, in)`."""
    max_heads = weight.shape[0] // (3 * head_dim)
    if heads == max_heads and in_features == weight.shape[1]:
        return weight, bias
    # (3, H_max, hd, E_max) -> keep h heads and `in` columns -> (3*h*hd, in); a view + one copy, no index tensors.
    w = weight.view(3, max_heads, head_dim, -1)[:, :heads, :, :in_features].reshape(3 * heads * head_dim, in_features)
    b = None
    if bias is not None:
        b = bias.view(3, max_heads, head_dim)[:, :heads].reshape(3 * heads * head_dim)
    return w, b
