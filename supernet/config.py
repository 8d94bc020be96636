"""`ModelConfig`: the fixed (non-searched) part of a model: task, input geometry, head_dim, vocabulary.

The searched part lives in the `SearchSpace`; the supernet's maximal sizes are derived from it. A config plus a space
is enough to rebuild a supernet, and a config plus an `Arch` is enough to rebuild a standalone subnet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from supernet.configio import plain_dict

TASKS = ("image", "lm", "text")
NORMS = ("layer", "rms")
NORM_POSITIONS = ("pre", "post")
ACTIVATIONS = ("gelu", "gelu_tanh", "silu", "relu")
POSITIONS = ("learned", "rope")
POOLINGS = ("mean", "cls")
# RoPE frequency scalings (Hugging Face's rope_type) whose frequencies do not depend on the sequence length.
ROPE_SCALINGS = ("none", "linear", "llama3")


@dataclass(frozen=True)
class Rope:
    """The rotary embedding's frequencies: base `theta`, and the scaling of long-context checkpoints: "linear" divides
    every frequency by `factor`; "llama3" (Llama 3.1 and later) divides the low ones by `factor`, keeps the high ones
    and ramps between, at wavelengths set by `original_positions` over the low and high frequency factors."""

    theta: float = 10000.0
    scaling: str = "none"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_positions: int = 8192


@dataclass(frozen=True)
class ModelConfig:
    """Fixed model settings. `task="image"` builds a ViT classifier, `task="lm"` a causal decoder LM, `task="text"` a
    bidirectional encoder classifying token sequences (BERT). The block options' defaults are this project's own
    models; an imported Hugging Face model sets them to its family's math (supernet/hf/)."""

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
    # text task: the tokenizer's padding id; attention never reads a padded position (keys equal to it are masked),
    # so padding a sequence changes nothing about its real tokens' outputs. None: every token is real.
    pad_id: int | None = None
    # guard against spaces deeper than intended (None: no limit)
    max_depth: int | None = None
    # one LayerNorm affine pair per weight bit-width in each block (Any-Precision's bit-specific norms); the
    # extracted subnet keeps only the pair of each layer's bit-width, so it costs nothing at deployment
    bit_norms: bool = False
    # one final norm and classifier/LM head per depth choice: a shallow subnet's features need not share the deepest
    # one's head; the extracted subnet keeps only its own depth's head, so this too costs nothing at deployment
    depth_heads: bool = False
    # start every block's residual branches (attention output projection, FFN down projection) at zero weights, so
    # each block begins as the identity (BigNAS; torchvision's `zero_init_residual`): initialisation only
    zero_init_residual: bool = False
    # ---- block math (supernet/functional.py): one option per way the supported families differ ----
    norm: str = "layer"  # "layer" (LayerNorm) or "rms" (RMSNorm, weight only: Llama)
    norm_position: str = "pre"  # "pre": x + f(norm(x)); "post": norm(x + f(x)) (BERT)
    activation: str = "gelu"  # FFN nonlinearity: "gelu" (erf), "gelu_tanh" (GPT-2), "silu", "relu"
    gated_ffn: bool = False  # act(gate(x)) * up(x), then down (SwiGLU: Llama)
    positions: str = "learned"  # "learned" table added to the embeddings, or "rope" on q and k (Llama)
    rope_theta: float = 10000.0
    # RoPE scaling of long-context checkpoints (`Rope`): none, linear or llama3, with its factors
    rope_scaling: str = "none"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_positions: int = 8192
    kv_group: int = 1  # query heads per key/value head (grouped-query attention); heads are kept in whole groups
    linear_bias: bool = True  # biases on the blocks' linear layers
    # ---- stem and head ----
    cls_token: bool = False  # image: a learned CLS token before the patches (ViT)
    pooling: str = "mean"  # image/text: classify the mean of the tokens or the first (CLS) token
    pooler: bool = False  # tanh(dense(pooled)) before the classifier (BERT)
    embed_norm: bool = False  # a norm on the embeddings (BERT)
    token_types: bool = False  # add token-type embedding 0 to every token (BERT, single-segment inputs)
    final_norm: bool = True  # a norm before the head (off for post-norm encoders)
    head_bias: bool = True
    # ---- elastic depth ----
    # Block indices from the most to the least important: depth d runs the first d of them, in model order. None runs
    # the first d blocks (drop the last layers first); an imported model may rank its layers by importance instead.
    layer_rank: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.layer_rank is not None:
            try:
                object.__setattr__(self, "layer_rank", tuple(int(i) for i in self.layer_rank))
            except (TypeError, ValueError):
                raise ValueError(f"model.layer_rank={self.layer_rank!r} must be a list of block indices") from None
            if sorted(self.layer_rank) != list(range(len(self.layer_rank))):
                raise ValueError(f"model.layer_rank={list(self.layer_rank)} must be a permutation of 0..n-1")
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
        for name in ("bit_norms", "depth_heads", "zero_init_residual"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"model.{name}={getattr(self, name)!r} must be true or false")
        if not self.ln_eps > 0:
            raise ValueError(f"model.ln_eps={self.ln_eps!r} must be > 0")
        for name, allowed in (("norm", NORMS), ("norm_position", NORM_POSITIONS), ("activation", ACTIVATIONS),
                              ("positions", POSITIONS), ("pooling", POOLINGS)):  # fmt: skip
            if getattr(self, name) not in allowed:
                raise ValueError(f"model.{name}={getattr(self, name)!r} is not one of {allowed}")
        for name in ("gated_ffn", "linear_bias", "cls_token", "pooler", "embed_norm", "token_types", "final_norm",
                     "head_bias"):  # fmt: skip
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"model.{name}={getattr(self, name)!r} must be true or false")
        if not isinstance(self.kv_group, int) or isinstance(self.kv_group, bool) or self.kv_group < 1:
            raise ValueError(f"model.kv_group={self.kv_group!r} must be a positive integer")
        if not self.rope_theta > 0:
            raise ValueError(f"model.rope_theta={self.rope_theta!r} must be > 0")
        if self.rope_scaling not in ROPE_SCALINGS:
            raise ValueError(f"model.rope_scaling={self.rope_scaling!r} is not one of {ROPE_SCALINGS}")
        if not self.rope_factor > 0 or not self.rope_original_positions > 0:
            raise ValueError("model.rope_factor and model.rope_original_positions must be > 0")
        if self.rope_scaling == "llama3" and not self.rope_high_freq_factor > self.rope_low_freq_factor > 0:
            raise ValueError(
                f"model.rope_high_freq_factor={self.rope_high_freq_factor} must exceed "
                f"model.rope_low_freq_factor={self.rope_low_freq_factor} > 0 for rope_scaling='llama3'"
            )
        if self.pad_id is not None:
            if self.task != "text":
                raise ValueError(
                    f"model.pad_id is for task 'text' (a classifier of padded sequences), not {self.task!r}"
                )
            if (
                not isinstance(self.pad_id, int)
                or isinstance(self.pad_id, bool)
                or not 0 <= self.pad_id < self.vocab_size
            ):
                raise ValueError(f"model.pad_id={self.pad_id!r} must be a token id in [0, {self.vocab_size}) or null")
        if self.positions == "rope" and self.head_dim % 2:
            raise ValueError(f"model.positions='rope' needs an even head_dim, got {self.head_dim}")
        if self.cls_token and self.task != "image":
            raise ValueError("model.cls_token=true is for task 'image'; a text model's CLS is its first token id")
        if self.task == "image" and self.positions != "learned":
            raise ValueError("model.positions must be 'learned' for task 'image'")
        if self.pooling == "cls" and self.task == "image" and not self.cls_token:
            raise ValueError("model.pooling='cls' on images needs model.cls_token=true")

    @property
    def rope(self) -> Rope | None:
        """The rotary embedding of q and k, or None with learned positions."""
        if self.positions != "rope":
            return None
        return Rope(self.rope_theta, self.rope_scaling, self.rope_factor, self.rope_low_freq_factor,
                    self.rope_high_freq_factor, self.rope_original_positions)  # fmt: skip

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.patch_size**2

    @property
    def causal(self) -> bool:
        return self.task == "lm"

    @property
    def num_outputs(self) -> int:
        """Width of the head's output: classes, or the vocabulary for the LM."""
        return self.vocab_size if self.task == "lm" else self.num_classes

    def tokens(self, seq_len: int | None = None) -> int:
        """Sequence length the blocks see: the patches (+ CLS), or `seq_len` (default block_size) of token ids."""
        if self.task == "image":
            return self.num_patches + self.cls_token
        return self.block_size if seq_len is None else seq_len

    def kept_layers(self, depth: int) -> list[int]:
        """Block indices a subnet of `depth` layers runs, in model order."""
        if self.layer_rank is None:
            return list(range(depth))
        return sorted(self.layer_rank[:depth])

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.layer_rank is not None:
            d["layer_rank"] = list(self.layer_rank)  # plain lists: YAML and JSON
        return d

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> ModelConfig:
        """Build from a mapping (plain dict or OmegaConf node); unknown keys are an error."""
        return cls(**plain_dict(cfg, "model", (f.name for f in fields(cls))))
