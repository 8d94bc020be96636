"""Typed schema of the `train` config group (Hydra structured config): wrong types and unknown keys fail at once."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from supernet.sampling import DIMENSIONS, SAMPLERS

EXIT_MODES = ("none", "teacher", "all")
ATTENTIVE_MODES = ("none", "best", "worst")
KD_DIVERGENCES = ("kl", "alpha")  # supernet.training.DIVERGENCES implements each


@dataclass
class ProgressiveConfig:
    """Progressive shrinking after Once-for-All: stage k enables the first k dimensions of `order` (no importance
    re-ranking of channels at stage boundaries, unlike OFA)."""

    enabled: bool = False
    order: list[str] = field(default_factory=lambda: list(DIMENSIONS))
    stage_ends: list[float] | None = None  # fractions of training where stages end (default: equal stages)


@dataclass
class TrainConfig:
    """How a supernet (or a standalone subnet) is trained."""

    sampler: str = "sandwich"  # sandwich | uniform
    num_random: int = 2  # random archs per sandwich step besides the largest and the smallest
    # Fraction of sandwich steps that train the smallest arch; in the others one more random student takes its place
    # (more steps spent in the middle of the space, where inherited archs trail their stand-alone versions).
    smallest_fraction: float = 1.0
    kd_temperature: float = 1.0
    kd_weight: float = 1.0  # students: kd_weight × KL(largest ‖ student) + task_weight × task loss
    task_weight: float = 1.0
    kd_divergence: str = "kl"  # kl | alpha (AlphaNet's adaptive α-divergence, α in {-1, 1}, clipped)
    # Whom the students distil from: "largest" (in-place distillation from the largest arch, trained on the labels) or
    # "pretrained" (the frozen imported model, nas-train model=hf; every arch, the largest included, distils from it)
    teacher: str = "largest"
    # Loss-aware students (AttentiveNAS): each random student is the candidate with the lowest ("best", BestUp) or
    # highest ("worst", WorstUp) loss on the batch among `attentive_pool` archs of about the same MACs; none: uniform.
    attentive: str = "none"
    attentive_pool: int = 3
    # NASViT: remove from the other archs' summed gradient its component against the largest arch's, where they conflict
    grad_projection: bool = False
    student_reduction: str = "mean"  # mean | sum: how the students' losses combine before adding the teacher's
    # Depth exits (deep supervision): each sampled arch also trains, as extra students distilled from the teacher,
    # every shallower depth of the space, read off the same forward pass (the shared head after block d), nearly
    # for free. none | teacher (exits of the largest arch only) | all (exits of every sampled arch).
    depth_exits: str = "none"
    exit_weight: float = 1.0  # weight of one exit's loss relative to one sampled student's
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05  # linear warmup, then cosine to min_lr_ratio × lr
    min_lr_ratio: float = 0.01
    # Exponential moving average of the weights (BigNAS), updated every step with this decay: validation scores it and
    # the trained supernet is the average. None: the plain weights.
    ema_decay: float | None = None
    # Recompute each block's activations in the backward pass instead of keeping them (torch.utils.checkpoint):
    # the memory of a step's activations falls to one block's, for about a third more compute.
    grad_checkpointing: bool = False
    # Per-token losses (an LM's) run this many tokens at a time with the head recomputed in backward
    # (supernet/chunked_loss.py): a step never holds a whole tokens × vocabulary logits tensor, nor its float32
    # log-softmax copies, per arch. null: the whole batch at once (the dense loss, kept for comparison).
    loss_chunk_tokens: int | None = 2048
    reference_archs: int = 3  # validation also reports this many fixed archs spread over the space by MACs
    progressive: ProgressiveConfig = field(default_factory=ProgressiveConfig)
    check_rank_sync: bool = False  # DDP: all-gather each step's archs and fail if ranks disagree
    seed: int = 0


@dataclass
class TrainerConfig:
    """The `lightning.Trainer` arguments the `trainer` group may set (typed, so `max_epochs=abc` fails at once)."""

    accelerator: str = "cpu"
    devices: Any = 1  # int, list of ids, or "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"  # e.g. bf16-mixed on GPU
    max_epochs: int = 10
    max_steps: int = -1
    gradient_clip_val: float | None = 1.0
    accumulate_grad_batches: int = 1
    limit_train_batches: Any = 1.0  # float: fraction of the epoch; int: number of batches
    limit_val_batches: Any = 1.0
    val_check_interval: Any = None
    check_val_every_n_epoch: int = 1
    log_every_n_steps: int = 10
    enable_progress_bar: bool = True
    deterministic: Any = None


def register() -> None:
    """Make `defaults: [schema, ...]` in conf/train/ and conf/trainer/ validate against the dataclasses above."""
    ConfigStore.instance().store(group="train", name="schema", node=TrainConfig)
    ConfigStore.instance().store(group="trainer", name="schema", node=TrainerConfig)


def resolve_train_config(cfg: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A plain dict of TrainConfig defaults overridden by `cfg`; one ValueError for an unknown key or bad value."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), cfg or {})
    except OmegaConfBaseException as e:
        raise ValueError(f"bad train config: {str(e).splitlines()[0]}") from None
    out: dict[str, Any] = OmegaConf.to_container(merged, resolve=True)  # type: ignore[assignment]
    checks = [
        (out["sampler"] in SAMPLERS, f"train.sampler={out['sampler']!r} is not one of {sorted(SAMPLERS)}"),
        (
            out["student_reduction"] in ("sum", "mean"),
            f"train.student_reduction={out['student_reduction']!r} is not one of ['mean', 'sum']",
        ),
        (
            out["depth_exits"] in EXIT_MODES,
            f"train.depth_exits={out['depth_exits']!r} is not one of {list(EXIT_MODES)}",
        ),
        (
            out["teacher"] in ("largest", "pretrained"),
            f"train.teacher={out['teacher']!r} is not one of ['largest', 'pretrained']",
        ),
        (
            out["kd_divergence"] in KD_DIVERGENCES,
            f"train.kd_divergence={out['kd_divergence']!r} is not one of {list(KD_DIVERGENCES)}",
        ),
        (
            out["attentive"] in ATTENTIVE_MODES,
            f"train.attentive={out['attentive']!r} is not one of {list(ATTENTIVE_MODES)}",
        ),
        (out["attentive_pool"] >= 1, f"train.attentive_pool={out['attentive_pool']} must be >= 1"),
        (out["exit_weight"] >= 0, f"train.exit_weight={out['exit_weight']} must be >= 0"),
        (out["num_random"] >= 0, f"train.num_random={out['num_random']} must be >= 0"),
        (
            0 <= out["smallest_fraction"] <= 1,
            f"train.smallest_fraction={out['smallest_fraction']} must be in [0, 1]",
        ),
        (out["kd_temperature"] > 0, f"train.kd_temperature={out['kd_temperature']} must be > 0"),
        (out["lr"] > 0, f"train.lr={out['lr']} must be > 0"),
        (0 <= out["warmup_fraction"] < 1, f"train.warmup_fraction={out['warmup_fraction']} must be in [0, 1)"),
        (0 <= out["min_lr_ratio"] <= 1, f"train.min_lr_ratio={out['min_lr_ratio']} must be in [0, 1]"),
        (
            out["ema_decay"] is None or 0 < out["ema_decay"] < 1,
            f"train.ema_decay={out['ema_decay']} must be in (0, 1), or null for no averaging",
        ),
        (
            out["loss_chunk_tokens"] is None or out["loss_chunk_tokens"] >= 1,
            f"train.loss_chunk_tokens={out['loss_chunk_tokens']} must be >= 1, or null for the whole batch at once",
        ),
        (out["reference_archs"] >= 0, f"train.reference_archs={out['reference_archs']} must be >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    return out
