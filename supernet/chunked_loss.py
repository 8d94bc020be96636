"""Losses over per-token outputs a chunk of tokens at a time: a (tokens × vocabulary) logits tensor never exists whole.

At a real size an LM's logits dwarf everything else a training step keeps. 8 × 2,048 tokens × 49,152 classes are
805 M values: 1.6 GB in bf16, and 3.2 GB for each float32 copy that log-softmax, cross-entropy and KL keep for
backward. The sandwich trains four archs a step and distils each from a teacher, so the dense loss kept about 11 GB
per arch (54 GB peak on an H200, against 12 GB for plain fine-tuning). Here an arch keeps only its final hidden
states (tokens × width); the head and the loss run per chunk of tokens under activation checkpointing, so backward
recomputes one chunk's logits at a time, for about one more head matmul per arch (the trade Liger's fused linear
cross-entropy and torchtune's chunked output losses make too). The loss itself is the dense one, applied per chunk
and weighted by the chunk's share of the rows, so its value is the same up to summation order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint


@dataclass(frozen=True)
class TokenOutputs:
    """Per-token outputs not computed yet: `head(hidden)` gives the logits (..., V) of the hidden states (..., E)."""

    hidden: torch.Tensor
    head: Callable[[torch.Tensor], torch.Tensor]

    def logits(self) -> torch.Tensor:
        return self.head(self.hidden)

    def detach(self) -> TokenOutputs:
        """A teacher's outputs: no gradient reaches its hidden states or its head."""
        head = self.head

        def frozen(h: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return head(h)

        return TokenOutputs(self.hidden.detach(), frozen)


Rows = torch.Tensor | TokenOutputs | None


def _rows(value: Rows, n: int) -> Rows:
    """`value` with its leading (batch, token) dimensions flattened into `n` rows."""
    if value is None:
        return None
    if isinstance(value, TokenOutputs):
        return TokenOutputs(value.hidden.reshape(n, -1), value.head)
    return value.reshape(n, -1)


def _chunk(value: Rows, s: slice) -> Rows:
    if value is None:
        return None
    if isinstance(value, TokenOutputs):
        return TokenOutputs(value.hidden[s], value.head)
    return value[s]


def _dense(value: Rows) -> torch.Tensor | None:
    return value.logits() if isinstance(value, TokenOutputs) else value


def chunked_mean(
    loss: Callable[..., tuple[torch.Tensor, ...]], target: torch.Tensor, chunk_tokens: int, *outputs: Rows
) -> tuple[torch.Tensor, ...]:
    """`loss(*logits, target)` (every result a mean over rows) over all rows, computed `chunk_tokens` rows at a time.

    `target` holds one label per row (B, T); each of `outputs` is logits (B, T, V), `TokenOutputs` over (B, T, E),
    or None. Each chunk runs under activation checkpointing, so only the inputs (hidden states, labels) are kept for
    backward and a chunk's logits are recomputed there. The chunks' means are weighted by their share of the rows.
    """
    n = target.numel()
    y = target.reshape(n)
    rows = [_rows(o, n) for o in outputs]

    def run(y_c: torch.Tensor, *parts: Rows) -> tuple[torch.Tensor, ...]:
        return loss(*(_dense(p) for p in parts), y_c)

    totals: list[torch.Tensor] | None = None
    for start in range(0, n, chunk_tokens):
        s = slice(start, min(start + chunk_tokens, n))
        parts = [_chunk(r, s) for r in rows]
        # The head has no randomness: nothing to replay on recomputation.
        means = checkpoint(run, y[s], *parts, use_reentrant=False, preserve_rng_state=False)
        share = (s.stop - s.start) / n
        weighted = [m * share for m in means]
        totals = weighted if totals is None else [t + w for t, w in zip(totals, weighted, strict=True)]
    assert totals is not None, "no rows"
    return tuple(totals)
