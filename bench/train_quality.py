"""Benchmark: how good are the subnets a supernet hands out, next to the same archs trained alone?

For each training recipe (a *variant*: Hydra overrides on top of the experiment), trains (or resumes) a supernet at
`--budget` × the experiment's epochs, then reports on the Fashion-MNIST *test* split, for 5 archs spread over the
space by MACs (smallest, three quantiles, largest):

* inherited accuracy (supernet weights, no fine-tuning) per variant;
* the same arch trained from scratch as a standalone quantization-aware model for the same epochs, data, optimizer
  and schedule (initialised like the supernet), cached in `<out>/e<epochs>/scratch.json`;
* the gap inherited − scratch (goal: mean ≥ 0, worst ≥ −1 point);
* cost: the supernet's training time over one scratch model's (the largest arch, the dearest one to train alone),
  both measured in this run on this machine;
* for the first variant, 4-bit vs float weights for the same arch (all layers at w_bits 4, then 32).

    python bench/train_quality.py                                  # the default recipe and the uniform baseline
    python bench/train_quality.py --variants default exits_all --budget 3
    python bench/train_quality.py --variants default --seeds 0 1 2  # seed-to-seed spread of the gap
    python bench/train_quality.py --budget 3 --scratch-budget 1   # a longer-trained supernet vs archs trained alone
    python bench/train_quality.py --scratch-budget 0.25           # vs archs trained alone for a quarter of the steps
    python bench/train_quality.py --list                           # every variant and its overrides
    python bench/train_quality.py --smoke                          # seconds: checks that it runs
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from unittest import mock

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from export.cli import finetune as export_finetune
from supernet import build_supernet, extract_subnet
from supernet.artifact import load_supernet, read_metadata
from supernet.sampling import Pick, SandwichSampler
from supernet.space import SearchSpace
from supernet.train_cli import CONF_DIR, model_config, train
from supernet.training import SubnetModule, reference_archs, weight_averaging

OUT = "results/bench_quality"
# Recipes compared by the ablation (README, "Training quality"); overrides on top of `--experiment`, spelled out in
# full so each variant keeps its meaning when the defaults change.
PREVIOUS = ["model.bit_norms=false", "train.task_weight=0.5"]  # the recipe before this ablation set the defaults
VARIANTS: dict[str, list[str]] = {
    "default": [],
    "previous": PREVIOUS,
    "uniform": ["train=uniform"],
    "num_random4": [*PREVIOUS, "train.num_random=4"],
    "exits_teacher": [*PREVIOUS, "train.depth_exits=teacher"],
    "exits_all": [*PREVIOUS, "train.depth_exits=all"],
    "lr3e-3": [*PREVIOUS, "train.lr=3e-3"],
    "bit_norms": ["model.bit_norms=true", "train.task_weight=0.5"],
    "bit_norms_lr3e-3": ["model.bit_norms=true", "train.task_weight=0.5", "train.lr=3e-3"],
    "task2": ["train.task_weight=2.0"],
    "depth_heads": ["model.depth_heads=true"],
    "depth_heads_exits": ["model.depth_heads=true", "train.depth_exits=teacher"],
    # Elastic depth keeps the first and the last block and drops the middle ones (DynaBERT, LayerDrop), instead of
    # dropping the last blocks: depth 2 runs blocks {0, 5}, 3 runs {0, 3, 5}, 4 {0, 1, 3, 5}, 5 {0, 1, 3, 4, 5}.
    "spread_depth": ["model.layer_rank=[0,5,3,1,4,2]"],
    "student_sum": ["train.student_reduction=sum"],
    "student_half": ["train.kd_weight=0.5", "train.task_weight=0.5"],
    "attentive_best": ["train.attentive=best"],
    "attentive_worst": ["train.attentive=worst"],
    "alpha_divergence": ["train.kd_divergence=alpha"],
    "grad_projection": ["train.grad_projection=true"],
    "no_distillation": ["train.kd_weight=0.0"],  # students learn from the labels alone
    "no_smallest": ["train.smallest_fraction=0.0"],
    "smallest_half": ["train.smallest_fraction=0.5"],
    # BigNAS: every block's residual branches start at zero, so all depths begin with the same features.
    "zero_init": ["model.zero_init_residual=true"],
    # BigNAS: the supernet handed out is an exponential moving average of its weights (horizon about 100 steps).
    "ema": ["train.ema_decay=0.99"],
    # Once-for-All's order, compressed to the demo budget: the largest arch alone for the first 10 % of the steps,
    # then one more elastic dimension every 5 % (depth, width, heads, FFN, weight bits, activation bits).
    "progressive": ["train.progressive.enabled=true", "train.progressive.stage_ends=[0.1,0.15,0.2,0.25,0.3,0.35,1.0]"],
    "random3": ["train.num_random=3"],  # the same step cost as `named_students`, every student random
    # A diagnostic, not a recipe: the random students are replaced by the three middle reference archs themselves,
    # every step. It separates the two reasons a middle arch can trail: too few steps spent on it (coverage), which
    # this removes, or the other archs pulling the shared weights elsewhere (interference), which it keeps.
    "named_students": ["train.num_random=3"],
    # The same in a quarter of the steps (drawn per step), 3 random students in the others: how large a share of the
    # training an arch needs to come out as good as alone.
    "named_quarter": ["train.num_random=3"],
}
NAMED_SHARE = {"named_students": 1.0, "named_quarter": 0.25}  # share of the steps whose students are the references
ORDER = ["smallest", "ref1", "ref2", "ref3", "largest"]


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return compose(config_name="train", overrides=overrides)


@torch.no_grad()
def accuracy(model: torch.nn.Module, loader) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += int((model(x).argmax(-1) == y).sum())
        total += len(y)
    return 100.0 * correct / total


def train_scratch(space, config, arch, cfg, dm) -> torch.nn.Module:
    """The arch alone: initialised like the supernet (extracted from a fresh one), trained with the same recipe."""
    torch.manual_seed(cfg.seed)
    fresh = build_supernet(space, config)
    sub = extract_subnet(fresh, arch, qat=True)
    module = SubnetModule(sub, dict(cfg.train))
    trainer = L.Trainer(
        **{**dict(cfg.trainer), "enable_progress_bar": False},
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=weight_averaging(module.cfg),  # weight averaging set with --extra applies to scratch models too
    )
    trainer.fit(module, datamodule=dm)
    return sub


def train_variant(base: list[str], name: str, run_dir: Path, archs: dict) -> tuple[torch.nn.Module, float]:
    """(supernet, training seconds) of one variant; a finished run is loaded, its recorded time reused."""
    timing = run_dir / "bench_seconds.json"
    if timing.is_file() and (run_dir / "supernet.safetensors").is_file():
        return load_supernet(run_dir)[0], json.loads(timing.read_text())["seconds"]
    cfg = compose_cfg([*base, *VARIANTS[name], f"run_name=bench_quality_{name}"])
    t0 = time.perf_counter()
    with named_students(archs, NAMED_SHARE[name]) if name in NAMED_SHARE else contextlib.nullcontext():
        train(cfg, run_dir)
    seconds = time.perf_counter() - t0
    timing.write_text(json.dumps({"seconds": seconds}))
    return load_supernet(run_dir)[0], seconds


def bench_archs(cfg) -> dict:
    """The 5 archs compared: the largest, the smallest and 3 spread by MACs (the validation reference archs)."""
    space = SearchSpace.from_config(OmegaConf.to_container(cfg.space, resolve=True))
    mcfg = model_config(OmegaConf.to_container(cfg.model, resolve=True), instantiate(cfg.data).input_spec())
    return reference_archs(space, mcfg, 3, seed=cfg.seed)


@contextlib.contextmanager
def named_students(archs: dict, share: float):
    """The sandwich trains the largest arch, the smallest and the middle reference archs `archs` in a `share` of the
    steps (all of them at 1.0), and the largest, the smallest and as many random archs in the others."""
    students = [Pick(archs[name], "student") for name in ORDER[:-1]]  # smallest and the three middle ones

    def picks(self, step: int) -> list[Pick]:
        rng = self.rng(step)
        if share >= 1 or rng.random() < share:
            return [Pick(self.space.largest(), "teacher"), *students]
        return [
            Pick(self.space.largest(), "teacher"),
            students[0],
            *(Pick(self.space.sample(rng), "student") for _ in students[1:]),
        ]

    with mock.patch.object(SandwichSampler, "picks", picks):
        yield


def finetuned(net, arch, run: Path, epochs: int, images: int | None, seconds: dict) -> torch.nn.Module:
    """`arch` inherited from `net` and fine-tuned exactly as `nas-export finetune.epochs=<epochs>
    finetune.train_subset=<images>` does it (distilled from the largest arch on the supernet's own training data);
    its seconds go to `seconds[arch key]`."""
    sub = extract_subnet(net, arch, qat=True)
    ft = OmegaConf.load(Path(CONF_DIR) / "export.yaml").finetune  # nas-export's defaults (learning rate, images)
    ft.epochs, ft.train_subset = epochs, images
    cfg = OmegaConf.create({"data_overrides": {}, "finetune": ft, "seed": 0})
    t0 = time.perf_counter()
    export_finetune(net, sub, read_metadata(run)["info"], cfg)
    seconds[arch.key()] = time.perf_counter() - t0
    return sub


def scratch_results(base: list[str], net, archs: dict, dm, test, path: Path) -> dict[str, dict]:
    """Test accuracy and training seconds of each arch trained alone (cached in `path`, one entry per arch)."""
    cache = json.loads(path.read_text()) if path.is_file() else {}
    cfg = compose_cfg([*base, "train.depth_exits=none"])
    for name in ORDER:
        key = archs[name].key()
        if key in cache:
            continue
        t0 = time.perf_counter()
        acc = accuracy(train_scratch(net.space, net.config, archs[name], cfg, dm), test)
        cache[key] = {"scratch": acc, "seconds": round(time.perf_counter() - t0, 1)}
        path.write_text(json.dumps(cache, indent=2))  # after each arch: an interrupted bench keeps what it has
        print(f"scratch {key}: {acc:.2f} ({cache[key]['seconds']:.0f} s)")
    return cache


def run_dir(out: Path, name: str, seed: int) -> Path:
    """Where variant `name` trained with `seed` lives (seed 0 keeps the plain name: older runs stay cached)."""
    return out / (name if seed == 0 else f"{name}_s{seed}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default="demo")
    ap.add_argument("--variants", nargs="*", default=["default", "uniform"], help=f"any of {list(VARIANTS)}")
    ap.add_argument("--budget", type=int, default=1, help="multiple of the experiment's epochs")
    ap.add_argument("--seeds", type=int, nargs="*", default=[0], help="train every variant once per seed")
    ap.add_argument(
        "--scratch-budget",
        type=float,
        default=None,
        help="the scratch models' budget, may be a fraction (default: --budget)",
    )
    ap.add_argument(
        "--finetune-epochs",
        type=int,
        default=0,
        help="also score every inherited arch after nas-export's fine-tuning (distillation from the largest arch)",
    )
    ap.add_argument("--finetune-images", type=int, default=None, help="training images per fine-tuning epoch (all)")
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--extra", nargs="*", default=[], help="more Hydra overrides for every training run")
    ap.add_argument("--smoke", action="store_true", help="seconds: experiment=smoke, 2 batches an epoch, the default "
                    "variant, into a temporary --out (checks that it runs)")  # fmt: skip
    ap.add_argument("--list", action="store_true", help="print the variants and exit")
    args = ap.parse_args()
    if args.smoke:
        args.experiment, args.variants = "smoke", ["default"]
        args.extra = [*args.extra, "trainer.limit_train_batches=2", "data.val_subset_size=64"]
        args.out = args.out if args.out != OUT else tempfile.mkdtemp(prefix="train_quality_smoke_")
    if args.list:
        for name, overrides in VARIANTS.items():
            shown = " ".join(overrides) or "(the experiment as configured)"
            if name in NAMED_SHARE:
                shown += f" (diagnostic: the students are the reference archs in {NAMED_SHARE[name]:.0%} of the steps)"
            print(f"{name:14s} {shown}")
        return
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    demo_epochs = compose_cfg([f"experiment={args.experiment}"]).trainer.max_epochs
    epochs = demo_epochs * args.budget
    scratch_epochs = demo_epochs * (args.scratch_budget or args.budget)  # a fraction of an epoch trains a fraction

    def base(n_epochs: float) -> list[str]:
        # Fractional epochs: whole epochs, each cut to the same fraction of its batches (the schedule follows the steps)
        whole = math.ceil(n_epochs)
        cut = [] if whole == n_epochs else [f"trainer.limit_train_batches={n_epochs / whole}"]
        return [f"experiment={args.experiment}", "trainer.enable_progress_bar=false", f"trainer.max_epochs={whole}",
                *cut, *args.extra]  # fmt: skip

    out = Path(args.out) / f"e{epochs}"
    out.mkdir(parents=True, exist_ok=True)

    cfg = compose_cfg(base(epochs))
    archs = bench_archs(cfg)  # of the experiment's seed, whatever seeds the supernets train with
    nets, seconds = {}, {}  # (variant, seed) -> supernet, training seconds
    for name in args.variants:
        for seed in args.seeds:
            key = (name, seed)
            nets[key], seconds[key] = train_variant(
                [*base(epochs), f"seed={seed}"], name, run_dir(out, name, seed), archs
            )
            print(f"{name} seed {seed}: trained in {seconds[key]:.0f} s")

    dm = instantiate(cfg.data)
    dm.setup()
    test = dm.test_dataloader()
    first = nets[(args.variants[0], args.seeds[0])]
    scratch_dir = Path(args.out) / f"e{scratch_epochs:g}"
    scratch_dir.mkdir(parents=True, exist_ok=True)
    scratch = scratch_results(base(scratch_epochs), first, archs, dm, test, scratch_dir / "scratch.json")
    one_scratch = scratch[archs["largest"].key()]["seconds"]

    columns = [c for v in args.variants for c in ([v, f"{v}+ft"] if args.finetune_epochs else [v])]
    rows, variants, ft_seconds = [], {}, {}  # ft_seconds: arch key -> fine-tuning seconds (the last one timed)
    for name in ORDER:
        arch = archs[name]
        row = {"name": name, "arch": arch.key(), "scratch": scratch[arch.key()]["scratch"]}
        for (v, seed), net in nets.items():
            row.setdefault(f"{v}_seeds", []).append(accuracy(extract_subnet(net, arch), test))
            if args.finetune_epochs:
                ft = (args.finetune_epochs, args.finetune_images)
                sub = finetuned(net, arch, run_dir(out, v, seed), *ft, ft_seconds)
                row.setdefault(f"{v}+ft_seeds", []).append(accuracy(sub, test))
        for v in columns:
            row[v] = statistics.mean(row[f"{v}_seeds"])
        for bits in (4, 32):
            if bits in first.space.w_bits:
                row[f"w{bits}"] = accuracy(extract_subnet(first, replace(arch, w_bits=(bits,) * arch.depth)), test)
        rows.append(row)
    for v in columns:
        per_seed = [statistics.mean(r[f"{v}_seeds"][k] - r["scratch"] for r in rows) for k in range(len(args.seeds))]
        gaps = [r[v] - r["scratch"] for r in rows]  # of the seeds' mean accuracy
        trained = v.removesuffix("+ft")  # the variant whose supernets these are
        secs = statistics.mean(seconds[(trained, s)] for s in args.seeds)
        overrides = list(VARIANTS[trained])
        if v != trained:  # what one shipped arch costs: the supernet, then its own fine-tuning (the dearest arch's)
            secs += max(ft_seconds.values())
            overrides.append(f"nas-export finetune.epochs={args.finetune_epochs} train_subset={args.finetune_images}")
        variants[v] = {
            "overrides": overrides,
            "mean_gap": statistics.mean(gaps),
            "mean_gap_sd": statistics.stdev(per_seed) if len(per_seed) > 1 else None,
            "mean_gap_per_seed": per_seed,
            "worst_gap": min(gaps),
            "train_seconds": round(secs, 1),
            "cost_vs_one_scratch": secs / one_scratch,
        }

    print(f"\nFashion-MNIST test accuracy (%), supernets {epochs} epochs (mean of seeds {args.seeds}); scratch = "
          f"each arch trained alone, {scratch_epochs:g} epochs")  # fmt: skip
    print(f"{'arch':58s} {'scratch':>8s} " + " ".join(f"{v[:14]:>14s}" for v in columns))
    for r in rows:
        print(f"{r['arch']:58s} {r['scratch']:8.2f} " + " ".join(f"{r[v]:14.2f}" for v in columns))
    head = f"{'mean gap':>9s} {'± sd(seeds)':>11s} {'worst gap':>9s} {'train s':>8s} {'× one scratch':>14s}"
    print(f"\n{'variant':18s} {head}")
    for v, s in variants.items():
        sd = "" if s["mean_gap_sd"] is None else f"{s['mean_gap_sd']:.2f}"
        print(f"{v:18s} {s['mean_gap']:+9.2f} {sd:>11s} {s['worst_gap']:+9.2f} {s['train_seconds']:8.0f} "
              f"{s['cost_vs_one_scratch']:14.2f}")  # fmt: skip
    w = [r["w4"] - r["w32"] for r in rows if "w4" in r and "w32" in r]
    if w:
        print(f"4-bit - float weights ({args.variants[0]}, inherited): mean {statistics.mean(w):+.2f} points")
    print(
        f"one scratch model (the largest arch, {scratch_epochs:g} epochs): {one_scratch:.0f} s; "
        "goal: mean gap >= 0, worst >= -1"
    )
    summary = {
        "experiment": args.experiment,
        "epochs": epochs,
        "scratch_epochs": scratch_epochs,
        "seeds": args.seeds,
        "finetune_epochs": args.finetune_epochs,
        "finetune_images": args.finetune_images,
        "rows": rows,
        "variants": variants,
        "scratch_seconds": {k: v["seconds"] for k, v in scratch.items()},
        "mean_w4_minus_w32": statistics.mean(w) if w else None,
    }
    name = "quality.json" if scratch_epochs == epochs else f"quality_vs_scratch_e{scratch_epochs:g}.json"
    (out / name).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
