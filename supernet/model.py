"""The weight-sharing supernets: a ViT-style image classifier and a causal decoder LM on the same elastic blocks.

`supernet(x, arch)` runs the subnet `arch`: the first `arch.depth` blocks (elastic depth), each with its own heads,
FFN width and weight bits, at embedding width `arch.embed_dim`. The arch is an argument, so the forward has no hidden
state and two calls with different archs never interfere (safe under DDP and in data-parallel evaluation).
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
from supernet.elastic import ElasticBlock, ElasticHead, ElasticPatchEmbed, ElasticTokenEmbed
from supernet.space import SearchSpace


class Supernet(nn.Module):
    """Shared trunk: elastic blocks sized by the space's largest choices. Subclasses add the task's stem and head."""

    def __init__(self, space: SearchSpace, config: ModelConfig) -> None:
        super().__init__()
        if config.max_depth is not None and space.max_depth > config.max_depth:
            raise ValueError(
                f"space.depth choices {list(space.depth)} go beyond model.max_depth={config.max_depth}; "
                "remove the deeper choices or raise model.max_depth"
            )
        if config.layer_rank is not None and len(config.layer_rank) != space.max_depth:
            raise ValueError(
                f"model.layer_rank ranks {len(config.layer_rank)} layers but the space is {space.max_depth} deep"
            )
        self.space = space
        self.config = config
        self.grad_checkpointing = False  # a training setting (train.grad_checkpointing), not part of the model
        embed_max = space.embed_dim[-1]
        hidden_max = round(space.mlp_ratio[-1] * embed_max)
        odd = [h for h in space.num_heads if h % config.kv_group]
        if odd:
            raise ValueError(
                f"space.num_heads choices {odd} are not whole key/value groups of model.kv_group={config.kv_group} "
                f"query heads; use multiples of {config.kv_group}"
            )
        self.blocks = nn.ModuleList(
            ElasticBlock(
                embed_max,
                space.num_heads[-1],
                config.head_dim,
                hidden_max,
                config.ln_eps,
                norm_bits=space.w_bits if config.bit_norms else None,
                config=config,
            )
            for _ in range(space.max_depth)
        )

    # One output per token (an LM's logits, tokens × vocabulary): losses may take them deferred, a chunk at a time.
    per_token = False

    def check_input(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def embed(self, x: torch.Tensor, arch: Arch) -> torch.Tensor:
        raise NotImplementedError

    def output(self, h: torch.Tensor, head: fn.HeadWeights, mask: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def key_mask(self, x: torch.Tensor) -> torch.Tensor | None:
        """(B, T) bool, True at the real tokens, derived from the input (padded text); None: attend to everything."""
        return None

    def head_variants(self) -> int:
        """Copies of the final norm and head: one per depth choice with `depth_heads`, else one."""
        return len(self.space.depth) if self.config.depth_heads else 1

    def head_weights(self, arch: Arch, depth: int | None = None) -> fn.HeadWeights:
        """The head of `arch`, or of its first `depth` layers (a depth exit): with `depth_heads`, that depth's own."""
        depth = arch.depth if depth is None else depth
        variant = 0
        if self.config.depth_heads:
            if depth not in self.space.depth:
                raise ValueError(f"depth {depth} has no head of its own; this supernet's depths are {self.space.depth}")
            variant = self.space.depth.index(depth)
        return self.head.materialize(arch.embed_dim, variant)

    def block_weights(self, arch: Arch, i: int, quantize: bool = True) -> fn.BlockWeights:
        """Sliced, quantized (or, with `quantize=False`, float) tensors of layer `i` of `arch`."""
        return self.blocks[self.config.kept_layers(arch.depth)[i]].materialize(
            arch.embed_dim, arch.num_heads[i], arch.ffn_hidden(i), arch.w_bits[i], quantize
        )

    def forward(self, x: torch.Tensor, arch: Arch) -> torch.Tensor:
        """Output of subnet `arch` on `x` (validated against the space and the input spec)."""
        self.space.validate(arch)  # first: a bad arch (even a dict) gets the space's one-line error
        self.check_input(x)
        return self._exits(x, arch, (arch.depth,))[arch.depth]

    def forward_exits(
        self, x: torch.Tensor, arch: Arch, depths: tuple[int, ...], deferred: bool = False
    ) -> dict[int, torch.Tensor | TokenOutputs]:
        """Outputs of `arch` cut after each of `depths` blocks, from one pass: the exit at depth d is exactly the
        output of `arch.truncate(d)`, the same arch keeping its first d layers. With `deferred`, a model with
        per-token outputs (`per_token`, the LM) returns `TokenOutputs` (hidden states and head) for a chunked loss."""
        self.space.validate(arch)
        self.check_input(x)
        if not depths or max(depths) > arch.depth or min(depths) < 1:
            raise ValueError(f"exit depths {depths} must lie in [1, {arch.depth}] for arch {arch.key()}")
        if self.config.layer_rank is not None and depths != (arch.depth,):
            raise ValueError("depth exits need elastic depth to drop the last layers (model.layer_rank: null)")
        return self._exits(x, arch, depths, deferred and self.per_token)

    def _exits(
        self, x: torch.Tensor, arch: Arch, depths: tuple[int, ...], deferred: bool = False
    ) -> dict[int, torch.Tensor | TokenOutputs]:
        h = self.embed(x, arch)  # (B, T, E)
        mask = self.key_mask(x)  # (B, T) or None
        out = {}
        kept = self.config.kept_layers(arch.depth)  # elastic depth: the first `depth` blocks, or the best ranked
        for i in range(max(depths)):
            blk = self.blocks[kept[i]]
            args = (arch.num_heads[i], arch.ffn_hidden(i), arch.w_bits[i], arch.a_bits, self.config.causal, mask)
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                h = checkpoint(blk, h, *args, use_reentrant=False)
            else:
                h = blk(h, *args)
            if i + 1 in depths:
                head = self.head_weights(arch, i + 1)
                deferred_out = TokenOutputs(h, partial(self.output, head=head)) if deferred else None
                out[i + 1] = deferred_out or self.output(h, head, mask)
        return out


class ViTSupernet(Supernet):
    """Image classifier: patches -> elastic blocks -> mean pool -> classifier. Input (B, C, H, W) float."""

    def __init__(self, space: SearchSpace, config: ModelConfig) -> None:
        super().__init__(space, config)
        self.stem = ElasticPatchEmbed(config.patch_dim, config.num_patches, space.embed_dim[-1], config.cls_token)
        self.head = ElasticHead(space.embed_dim[-1], config.num_classes, config.ln_eps, config, self.head_variants())

    def check_input(self, x: torch.Tensor) -> None:
        fn.check_images(x, self.config.in_channels, self.config.image_size)

    def embed(self, x: torch.Tensor, arch: Arch) -> torch.Tensor:
        return fn.embed_images(x, self.stem.materialize(arch.embed_dim), self.config.patch_size)

    def output(self, h: torch.Tensor, head: fn.HeadWeights, mask: torch.Tensor | None = None) -> torch.Tensor:
        return fn.classify(h, head, self.config)


class LMSupernet(Supernet):
    """Causal decoder LM: tokens -> elastic blocks (causal attention) -> LM head. Input (B, T) int ids."""

    per_token = True

    def __init__(self, space: SearchSpace, config: ModelConfig) -> None:
        super().__init__(space, config)
        self.stem = ElasticTokenEmbed(config.vocab_size, config.block_size, space.embed_dim[-1], config)
        self.head = ElasticHead(space.embed_dim[-1], config.num_outputs, config.ln_eps, config, self.head_variants())

    def check_input(self, x: torch.Tensor) -> None:
        fn.check_tokens(x, self.config.vocab_size, self.config.block_size)

    def embed(self, x: torch.Tensor, arch: Arch) -> torch.Tensor:
        return fn.embed_tokens(x, self.stem.materialize(arch.embed_dim), self.config)

    def output(self, h: torch.Tensor, head: fn.HeadWeights, mask: torch.Tensor | None = None) -> torch.Tensor:
        return fn.lm_logits(h, head, self.config)


class TextClassifierSupernet(LMSupernet):
    """Bidirectional encoder classifying a token sequence (BERT): tokens -> blocks -> pooled -> classes. With
    `config.pad_id`, padded positions are masked out of attention and pooling (the mask comes from the ids)."""

    per_token = False

    def key_mask(self, x: torch.Tensor) -> torch.Tensor | None:
        return fn.key_mask(x, self.config.pad_id)

    def output(self, h: torch.Tensor, head: fn.HeadWeights, mask: torch.Tensor | None = None) -> torch.Tensor:
        return fn.classify(h, head, self.config, mask)


def build_supernet(space: SearchSpace, config: ModelConfig) -> Supernet:
    """The supernet for `config.task` sized by `space`."""
    return {"image": ViTSupernet, "lm": LMSupernet, "text": TextClassifierSupernet}[config.task](space, config)
