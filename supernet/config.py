"""`ModelConfig`: the fixed (non-searched) part of a model: task, input geometry, head_dim, vocabulary.

The searched part lives in the `SearchSpace`; the supernet's maximal sizes are derived from it. A config plus a space
is enough to rebuild a supernet, and a config plus an `Arch` is enough to rebuild a standalone subnet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from supernet.configio import plain_dict

TASKS = ("image", "lm")


@dataclass(frozen=True)
class ModelConfig:
    """Fixed model settings. `task="image"` builds a ViT classifier, `task="lm"` a causal decoder LM."""

    task: str = "image"
    head_dim: int = 32
    ln_eps: float = 1e-5
    # image task: (in_channels, image_size, image_size) inputs cut into (image_size / patch_size)**2 patches
    image_size: int = 28
    patch_size: int = 7
    in_channels: int = 1
    num_classes: int = 10
    # lm task: token ids in [0, vocab_size), at most block_size of them
    vocab_size: int = 256
    block_size: int = 64
    # guard against spaces deeper than intended (None: no limit)
    max_depth: int | None = None
    # one LayerNorm affine pair per weight bit-width in each block (Any-Precision's bit-specific norms); the
    # extracted subnet keeps only the pair of each layer's bit-width, so it costs nothing at deployment
    bit_norms: bool = False

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"model.task={self.task!r} is not one of {TASKS}")
        for name in ("head_dim", "image_size", "patch_size", "in_channels", "num_classes", "vocab_size", "block_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"model.{name}={v!r} must be a positive integer")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"model.image_size={self.image_size} is not divisible by model.patch_size={self.patch_size}"
            )
        if self.max_depth is not None and (not isinstance(self.max_depth, int) or self.max_depth < 1):
            raise ValueError(f"model.max_depth={self.max_depth!r} must be a positive integer or null")
        if not isinstance(self.bit_norms, bool):
            raise ValueError(f"model.bit_norms={self.bit_norms!r} must be true or false")
        if not self.ln_eps > 0:
            raise ValueError(f"model.ln_eps={self.ln_eps!r} must be > 0")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.patch_size**2

    @property
    def causal(self) -> bool:
        return self.task == "lm"

    def tokens(self, seq_len: int | None = None) -> int:
        """Sequence length the blocks see: the patch count, or `seq_len` (default block_size) for the LM."""
        if self.task == "image":
            return self.num_patches
        return self.block_size if seq_len is None else seq_len

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> ModelConfig:
        """Build from a mapping (plain dict or OmegaConf node); unknown keys are an error."""
        return cls(**plain_dict(cfg, "model", (f.name for f in fields(cls))))
