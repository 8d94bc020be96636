"""`SupernetModule`: the LightningModule that trains every subnet of a supernet at once.

Per optimizer step the sampler (supernet/sampling.py) names the subnets. With the sandwich rule the largest arch
learns from the labels, and the smallest plus `num_random` random archs learn from the largest arch's detached
outputs (in-place distillation: KL at temperature `kd_temperature`, weight `kd_weight`) plus `task_weight` × the
task loss. With `depth_exits`, an arch's shallower depths are read off its own forward pass (the shared head
after block d) and distilled too, nearly for free. All subnet losses are summed before one backward pass, so their
gradients accumulate into a single optimizer step and DDP sees exactly one forward/backward per step.

Validation reports the task metric for the largest, the smallest and `reference_archs` fixed archs spread over
the space by MACs, plus their mean (the checkpoint monitor), so the log shows the whole spectrum.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, EMAWeightAveraging

from supernet.arch import Arch
from supernet.chunked_loss import TokenOutputs, chunked_mean
from supernet.config import ModelConfig
from supernet.costs import arch_costs, spread_by_macs
from supernet.model import build_supernet
from supernet.sampling import Pick, build_sampler
from supernet.space import SearchSpace
from supernet.train_config import resolve_train_config

NO_PRETRAINED = "train.teacher=pretrained needs a pretrained model: nas-train model=hf model.pretrained=<dir>"


def reference_archs(space: SearchSpace, config: ModelConfig, n: int, seed: int = 0) -> dict[str, Arch]:
    """largest, smallest and `n` archs at evenly spaced inner MAC quantiles of a seeded random sample."""
    out = {"largest": space.largest(), "smallest": space.smallest()}
    inner = spread_by_macs(space, config, n + 2, seed)[1:-1] if n else []
    out.update({f"ref{k + 1}": a for k, a in enumerate(inner)})
    return out


def task_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for classification (B, C) or language modelling (B, T, V)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1))


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher ‖ student) at `temperature`, scaled by T² (Hinton et al.), averaged over samples/tokens."""
    s = F.log_softmax(student.reshape(-1, student.shape[-1]).float() / temperature, dim=-1)
    t = F.log_softmax(teacher.reshape(-1, teacher.shape[-1]).float() / temperature, dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature**2


ALPHAS = (-1.0, 1.0)  # AlphaNet's α- and α+
ALPHA_CLIP = 5.0  # AlphaNet's clip of the importance weight (p/q)^α


def alpha_divergence(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """AlphaNet's adaptive α-divergence (Wang et al. 2021): per sample the larger of D_α(p ‖ q) for α in `ALPHAS`
    (p teacher, q student; α=1 is KL(p ‖ q), α=-1 also punishes a student surer than its teacher), with the
    importance weight (p/q)^α clipped at `ALPHA_CLIP` so that a near-zero teacher probability cannot blow the
    gradient up. Its value is the divergence; its gradient is AlphaNet's clipped surrogate. Scaled by T²."""
    log_q = F.log_softmax(student.reshape(-1, student.shape[-1]).float() / temperature, dim=-1)
    log_p = F.log_softmax(teacher.reshape(-1, teacher.shape[-1]).float() / temperature, dim=-1).detach()
    q, p, log_ratio = log_q.exp().detach(), log_p.exp(), log_p - log_q.detach()
    values, surrogates = [], []
    for a in ALPHAS:
        if abs(a - 1.0) < 1e-3:  # KL(p ‖ q); q·(p/q) = p
            values.append((p * log_ratio).sum(-1))
            surrogates.append(-(p * log_q).sum(-1))
            continue
        weight = torch.exp(a * log_ratio).clamp(max=ALPHA_CLIP)  # (p/q)^α
        base = 1.0 / (a * (a - 1.0))
        values.append((q * (weight - 1.0)).sum(-1) * base)
        surrogates.append(-(q * (weight / a + base) * log_q).sum(-1))
    larger = values[0] > values[1]
    value, surrogate = torch.where(larger, values[0], values[1]), torch.where(larger, surrogates[0], surrogates[1])
    # The divergence's value with the surrogate's gradient.
    return (value + surrogate - surrogate.detach()).mean() * temperature**2


DIVERGENCES = {"kl": distill_loss, "alpha": alpha_divergence}


Outputs = torch.Tensor | TokenOutputs


def pick_loss(
    logits: Outputs, target: torch.Tensor, role: str, teacher: Outputs | None, cfg: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, task loss) of one subnet: students distil from `teacher` plus a weighted task loss. Deferred per-token
    outputs (`TokenOutputs`) are scored `cfg["loss_chunk_tokens"]` tokens at a time (supernet/chunked_loss.py)."""
    if isinstance(logits, TokenOutputs) or isinstance(teacher, TokenOutputs):
        chunk = cfg["loss_chunk_tokens"] or target.numel()

        def dense(s: torch.Tensor, t: torch.Tensor | None, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return pick_loss(s, y, role, t, cfg)

        loss, ce = chunked_mean(dense, target, chunk, logits, teacher)
        return loss, ce
    ce = task_loss(logits, target)
    if role == "student" and teacher is not None:
        kd = DIVERGENCES[cfg["kd_divergence"]](logits, teacher, cfg["kd_temperature"])
        return cfg["kd_weight"] * kd + cfg["task_weight"] * ce, ce
    return ce, ce


def weight_averaging(train: dict[str, Any]) -> list[Callback]:
    """Lightning's EMA callback when `train.ema_decay` is set: it averages every step, validation scores the
    average, checkpoints hold both (so a resume continues the average) and training ends on the average."""
    decay = train.get("ema_decay")
    return [] if decay is None else [EMAWeightAveraging(decay=decay)]


class SupernetModule(L.LightningModule):
    """Trains a supernet with a sampling rule; hyperparameters are plain dicts so checkpoints describe themselves."""

    def __init__(self, space: dict, model: dict, train: dict, data: dict | None = None) -> None:
        super().__init__()
        train = resolve_train_config(train)
        # `data` is recorded (not used) so a resume can refuse a changed data config.
        self.save_hyperparameters({"space": space, "model": model, "train": train, "data": data or {}})
        self.space = SearchSpace.from_config(space)
        self.model_config = ModelConfig.from_config(model)
        self.cfg = train
        self.net = build_supernet(self.space, self.model_config)
        self.net.grad_checkpointing = train["grad_checkpointing"]
        self.eval_archs = reference_archs(self.space, self.model_config, train["reference_archs"], train["seed"])
        self.sampler = None  # built in on_fit_start, when the total number of steps is known
        # The step count the LR schedule and the progressive stages are laid out over: fixed by the first run and
        # kept in the checkpoint, so a resume with other trainer.* limits never rewinds the schedule.
        self.schedule_steps: int | None = None
        self.metric = "loss" if self.model_config.task == "lm" else "acc"
        self._pretrained: list[torch.nn.Module] = []  # in a list: the frozen teacher is neither trained nor saved

    def set_pretrained_teacher(self, teacher: torch.nn.Module) -> None:
        """Distil every arch from the frozen imported supernet at its largest arch (train.teacher=pretrained).
        It is rebuilt from the pretrained model on every run, so checkpoints need not hold it."""
        if self.cfg["teacher"] != "pretrained":
            raise ValueError("a pretrained teacher needs train.teacher=pretrained")
        teacher.eval().requires_grad_(False)
        self._pretrained = [teacher]

    def deferred(self) -> bool:
        """Whether training takes per-token outputs deferred, for a chunked loss (train.loss_chunk_tokens)."""
        return self.cfg["loss_chunk_tokens"] is not None and self.net.per_token

    def pretrained_logits(self, x: torch.Tensor) -> Outputs | None:
        if not self._pretrained:
            return None
        teacher = self._pretrained[0]
        param = next(self.net.parameters())
        # The teacher runs in the trained net's precision (bf16-true: one bf16 copy, half the memory of float32).
        teacher.to(device=param.device, dtype=param.dtype)
        largest = teacher.space.largest()
        with torch.no_grad():
            out = teacher.forward_exits(x, largest, (largest.depth,), deferred=self.deferred())[largest.depth]
        return out.detach()

    # ---- sampling ---------------------------------------------------------------------------------------------------

    def total_steps(self) -> int:
        """The schedule's step count: this run's estimate, or the first run's when resumed."""
        if self.schedule_steps is None:
            self.schedule_steps = int(self.trainer.estimated_stepping_batches)
        return self.schedule_steps

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["schedule_steps"] = self.total_steps()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.schedule_steps = checkpoint.get("schedule_steps")

    def on_fit_start(self) -> None:
        now = int(self.trainer.estimated_stepping_batches)
        if self.total_steps() != now and self.trainer.is_global_zero:
            print(f"nas-train: resumed with {now} steps in all where the first run planned {self.total_steps()}: the "
                  "learning-rate schedule and progressive stages keep the first run's plan, and steps beyond it "
                  "train at its final learning rate")  # fmt: skip
        prog = self.cfg["progressive"]
        stages = None
        if prog["enabled"]:
            order = list(prog["order"])
            stages = [order[:k] for k in range(len(order) + 1)]
        self.sampler = build_sampler(
            self.cfg["sampler"],
            self.space,
            num_random=self.cfg["num_random"],
            smallest_fraction=self.cfg["smallest_fraction"],
            seed=self.cfg["seed"],
            stages=stages,
            stage_ends=prog.get("stage_ends"),
            total_steps=self.total_steps(),
            pool=self.cfg["attentive_pool"] if self.cfg["attentive"] != "none" else 1,
            macs=lambda a: arch_costs(a, self.model_config).macs,
        )

    # ---- training ---------------------------------------------------------------------------------------------------

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        picks = self.sampler.picks(self.global_step)
        if self.cfg["check_rank_sync"]:
            self._assert_ranks_agree(picks)
        if self.cfg["teacher"] == "pretrained" and not self._pretrained:
            raise ValueError(NO_PRETRAINED)
        pretrained = self.pretrained_logits(x)
        # The largest arch's own loss and everything else, kept apart for train.grad_projection.
        largest, rest, teacher = 0.0, 0.0, pretrained
        n_students = sum(p.role == "student" for p in picks)
        # "mean": the students together weigh as much as the teacher; "sum": each weighs as much (BigNAS).
        student_scale = 1.0 / max(n_students, 1) if self.cfg["student_reduction"] == "mean" else 1.0
        space = self.sampler.space_at(self.global_step)
        for pick in picks:
            if pick.pool:
                pick = self.choose(pick, x, y, teacher)
            depths = self.exit_depths(pick, space)
            outs = self.net.forward_exits(x, pick.arch, depths, deferred=self.deferred())
            logits = outs[pick.arch.depth]
            # With a pretrained teacher the largest arch distils from it too, like every student.
            role = "student" if pretrained is not None else pick.role
            loss, ce = pick_loss(logits, y, role, teacher, self.cfg)
            if pick.role == "student":
                loss = loss * student_scale
            if pick.role == "teacher" and pretrained is None:
                teacher = logits.detach()
            if pick.role != "student":
                self.log(f"train/ce_{'largest' if pick.role == 'teacher' else 'sampled'}", ce, batch_size=len(y))
            if pick.role == "teacher":
                largest = largest + loss
            else:
                rest = rest + loss
            # One arch's exits together weigh `exit_weight` sampled students; they distil from the full teacher.
            exits = depths[:-1]
            for d in exits:
                exit_loss, _ = pick_loss(outs[d], y, "student", teacher, self.cfg)
                rest = rest + exit_loss * (student_scale * self.cfg["exit_weight"] / len(exits))
        total = largest + rest
        # One host sync per step (not per subnet); under DDP all ranks agree, so they all stop instead of one hanging.
        bad = not bool(torch.isfinite(total))
        if self._trainer is not None:
            bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            archs = ", ".join(p.arch.key() for p in picks)
            raise FloatingPointError(
                f"non-finite training loss ({total.item()}) at step {self.global_step} (archs {archs}): "
                "lower train.lr, keep trainer.gradient_clip_val set, or train in precision=32-true"
            )
        self.log("train/loss", total, prog_bar=True, batch_size=len(y))
        if self.cfg["grad_projection"] and torch.is_grad_enabled() and torch.is_tensor(largest):
            return self.projected(largest, rest)
        return total

    def projected(self, largest: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
        """NASViT's gradient projection: where the other archs' summed gradient conflicts with the largest arch's
        (negative dot product), its component along the largest's is removed. Returned as a loss whose value is the
        step's loss and whose gradient is the projected one, so Lightning's backward, clipping and DDP reduction
        apply unchanged (under DDP each rank projects its own gradients before they are averaged)."""
        params = [p for p in self.net.parameters() if p.requires_grad]
        g_big = torch.autograd.grad(largest, params, allow_unused=True, materialize_grads=True)
        g_rest = torch.autograd.grad(rest, params, allow_unused=True, materialize_grads=True)
        dot = sum((a * b).sum() for a, b in zip(g_big, g_rest, strict=True))
        norm = sum((a * a).sum() for a in g_big)
        # rest' = rest - c·big with c = min(dot, 0)/|big|²; the step's gradient big + rest' = (1 - c)·big + rest.
        c = torch.clamp(dot, max=0.0) / torch.clamp(norm, min=1e-30)
        self.log("train/projection", -c, batch_size=1)
        surrogate = sum((p * ((1 - c) * a + b)).sum() for p, a, b in zip(params, g_big, g_rest, strict=True))
        return (largest + rest).detach() + surrogate - surrogate.detach()

    def choose(self, pick: Pick, x: torch.Tensor, y: torch.Tensor, teacher: torch.Tensor | None) -> Pick:
        """AttentiveNAS: the candidate of `pick.pool` with the lowest (BestUp) or highest (WorstUp) student loss on
        this batch, scored without gradients."""
        with torch.no_grad():
            losses = torch.stack([pick_loss(self.net(x, a), y, "student", teacher, self.cfg)[0] for a in pick.pool])
        if self._trainer is not None:  # DDP: every rank scores its own batch; the mean makes them choose alike
            losses = self.trainer.strategy.reduce(losses, reduce_op="mean")
        k = int(losses.argmin() if self.cfg["attentive"] == "best" else losses.argmax())
        chosen = replace(pick, arch=pick.pool[k], pool=())
        if self.cfg["check_rank_sync"]:
            self._assert_ranks_agree([chosen])
        return chosen

    def exit_depths(self, pick, space: SearchSpace) -> tuple[int, ...]:
        """Depths `pick` trains in this step: its own, plus the space's shallower depths when exits are on."""
        mode = self.cfg["depth_exits"]
        if mode == "all" or (mode == "teacher" and pick.role == "teacher"):
            return (*(d for d in space.depth if d < pick.arch.depth), pick.arch.depth)
        return (pick.arch.depth,)

    def _assert_ranks_agree(self, picks: list) -> None:
        """DDP guard: every rank must train the same archs in the same step."""
        if self.trainer.world_size < 2:
            return
        key = "|".join(p.arch.key() for p in picks)
        h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") & (2**62 - 1)
        digest = torch.tensor([h, self.global_step], device=self.device)
        gathered = self.all_gather(digest)
        if not bool((gathered == gathered[0]).all()):
            raise RuntimeError(f"DDP ranks sampled different archs at step {self.global_step}: {gathered.tolist()}")

    # ---- validation -------------------------------------------------------------------------------------------------

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        for name, arch in self.eval_archs.items():
            for key, value in eval_metrics(self.net(x, arch), y, self.metric).items():
                self.log(f"val/{key}/{name}", value, batch_size=y.numel(), sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        m = self.trainer.callback_metrics
        vals = [m[f"val/{self.metric}/{n}"] for n in self.eval_archs if f"val/{self.metric}/{n}" in m]
        if vals:
            self.log(f"val/{self.metric}/mean", torch.stack([v.float() for v in vals]).mean(), prog_bar=True)

    # ---- optimisation -----------------------------------------------------------------------------------------------

    def configure_optimizers(self):
        return build_optimizer(self.net, self.cfg, self.total_steps())


class SubnetModule(L.LightningModule):
    """Trains one standalone subnet (from scratch or fine-tuning) with the supernet's loss, optimizer and schedule.

    With `teacher` (a callable returning logits) the subnet distils from it like a sandwich student; without, it
    learns from the labels alone. Validation logs `val/<metric>` like SupernetModule's per-arch entries.
    """

    def __init__(self, subnet: torch.nn.Module, train: dict, teacher=None) -> None:
        super().__init__()
        # A subnet extracted from a supernet in eval mode keeps that mode, and Lightning keeps a module's mode at fit.
        self.net = subnet.train()
        self.cfg = resolve_train_config(train)
        self.net.grad_checkpointing = self.cfg["grad_checkpointing"]
        self._teacher = [teacher]  # in a list: a teacher module must not become a trained/checkpointed submodule
        self.metric = "loss" if subnet.config.task == "lm" else "acc"

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        teacher = None
        if self._teacher[0] is not None:
            with torch.no_grad():
                teacher = self._teacher[0](x)
        deferred = self.cfg["loss_chunk_tokens"] is not None and self.net.per_token
        out = self.net(x, deferred=True) if deferred else self.net(x)
        loss, _ = pick_loss(out, y, "student" if teacher is not None else "single", teacher, self.cfg)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(y))
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        for key, value in eval_metrics(self.net(x), y, self.metric).items():
            self.log(f"val/{key}", value, batch_size=y.numel(), sync_dist=True, prog_bar=True)

    def configure_optimizers(self):
        return build_optimizer(self.net, self.cfg, int(self.trainer.estimated_stepping_batches))


def eval_metrics(logits: torch.Tensor, target: torch.Tensor, metric: str) -> dict[str, torch.Tensor]:
    """Accuracy in % for classification; loss and bits per character (byte) for language modelling."""
    if metric == "acc":
        return {"acc": (logits.argmax(-1) == target).float().mean() * 100}
    loss = task_loss(logits, target)
    return {"loss": loss, "bpc": loss / math.log(2)}


def build_optimizer(net: torch.nn.Module, cfg: dict[str, Any], total_steps: int) -> dict[str, Any]:
    """AdamW (no decay on biases, norms, embeddings) with linear warmup then cosine decay, stepped per batch."""
    decay, no_decay = [], []
    for name, p in net.named_parameters():
        if not p.requires_grad:
            continue
        # Biases, norms, embeddings and position tables are not decayed (standard ViT/GPT practice).
        (decay if p.dim() == 2 and "table" not in name and "pos" not in name else no_decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg["lr"],
    )
    total = max(total_steps, 1)
    warmup = int(cfg["warmup_fraction"] * total)
    floor = cfg["min_lr_ratio"]

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
