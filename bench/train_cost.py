"""Benchmark: what the elastic supernet costs in training, next to static models of the same subnets.

1. CPU, sandwich step vs static steps. For several training steps, time one sandwich step (largest + smallest + 2
   random subnets in the supernet, one backward, one optimizer step) and, side by side, one training step of each of
   those subnets as a standalone quantization-aware model (`extract_subnet(..., qat=True)`, same losses, students
   distilling from precomputed teacher logits). Ratio = sandwich time ÷ summed static times. Target ≤ 1.10.
2. GPU (when CUDA is available): bf16 training throughput (tokens/s) of the largest arch run inside the supernet
   ÷ the same arch as a static model, for the image and the LM task. Target ≥ 0.90.

    python bench/train_cost.py [--steps 6] [--repeats 7] [--batch 128] [--skip-cpu] [--gpu-batch 4096] [--smoke]
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial
from pathlib import Path

import torch

from supernet import ModelConfig, SearchSpace, build_supernet, extract_subnet
from supernet.sampling import SandwichSampler
from supernet.train_config import resolve_train_config
from supernet.training import pick_loss

ROOT = Path(__file__).resolve().parents[1]
CFG = resolve_train_config()


def batch_for(config: ModelConfig, n: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    if config.task == "image":
        x = torch.randn(n, config.in_channels, config.image_size, config.image_size, device=device)
        return x, torch.randint(0, config.num_classes, (n,), device=device)
    x = torch.randint(0, config.vocab_size, (n, config.block_size + 1), device=device)
    return x[:, :-1], x[:, 1:]


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats: int, device: str) -> float:
    fn()  # warm-up (allocator, kernels)
    ts = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def cpu_sandwich_vs_static(steps: int, repeats: int, batch: int) -> None:
    space = SearchSpace.from_yaml(ROOT / "conf" / "space" / "default.yaml")
    config = ModelConfig(task="image")
    torch.manual_seed(0)
    net = build_supernet(space, config).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    sampler = SandwichSampler(space, num_random=2, seed=0)
    x, y = batch_for(config, batch, "cpu")
    print(f"CPU sandwich step vs static QAT steps: batch {batch}, threads {torch.get_num_threads()}")
    print(f"{'step':>4s} {'sandwich ms':>11s} {'static sum ms':>13s} {'ratio':>6s}  archs")
    ratios = []
    for step in range(steps):
        picks = sampler.picks(step)

        def sandwich(picks=picks) -> None:
            opt.zero_grad(set_to_none=True)
            total, teacher = 0.0, None
            for p in picks:
                logits = net(x, p.arch)
                loss, _ = pick_loss(logits, y, p.role, teacher, CFG)
                teacher = logits.detach() if p.role == "teacher" else teacher
                total = total + loss
            total.backward()
            opt.step()

        with torch.no_grad():
            teacher_logits = net(x, picks[0].arch)
        statics = []
        for p in picks:
            sub = extract_subnet(net, p.arch, qat=True).train()
            sub_opt = torch.optim.AdamW(sub.parameters(), lr=1e-4)

            def static(sub=sub, sub_opt=sub_opt, p=p, teacher=teacher_logits) -> None:
                sub_opt.zero_grad(set_to_none=True)
                loss, _ = pick_loss(sub(x), y, p.role, teacher, CFG)
                loss.backward()
                sub_opt.step()

            statics.append(static)
        # Interleave: sandwich, then each static, `repeats` times, so drift affects both sides alike.
        t_sw, t_st = [], []
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            sandwich()
            t1 = time.perf_counter()
            for f in statics:
                f()
            t2 = time.perf_counter()
            t_sw.append(t1 - t0)
            t_st.append(t2 - t1)
        sw, st = statistics.median(t_sw[1:]), statistics.median(t_st[1:])
        ratios.append(sw / st)
        keys = " ".join(p.arch.key() for p in picks[2:])
        print(f"{step:4d} {sw * 1e3:11.1f} {st * 1e3:13.1f} {ratios[-1]:6.3f}  random: {keys}")
    print(f"sandwich / sum(static): median {statistics.median(ratios):.3f}, max {max(ratios):.3f} (target <= 1.10)")


def bf16_step(model: torch.nn.Module, forward, target: torch.Tensor):
    """A closure running one bf16-autocast training step of `model` (warmed up 5 times)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, _ = pick_loss(forward(), target, "teacher", None, CFG)
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    return step


def gpu_throughput(batch: int, repeats: int) -> None:
    space = SearchSpace.from_yaml(ROOT / "conf" / "space" / "default.yaml")
    print(f"\nGPU bf16 training throughput of the largest arch: {torch.cuda.get_device_name()}")
    print(f"{'task':>5s} {'batch':>5s} {'supernet tok/s':>15s} {'static tok/s':>13s} {'ratio':>6s}")
    for task in ("image", "lm"):
        config = ModelConfig(task=task)
        torch.manual_seed(0)
        net = build_supernet(space, config).cuda().train()
        arch = space.largest()
        sub = extract_subnet(net, arch, qat=True).train()
        n = batch if task == "image" else max(batch // 8, 8)
        x, y = batch_for(config, n, "cuda")
        tokens = n * config.tokens()
        results = [
            tokens / timed(bf16_step(net, partial(net, x, arch), y), repeats, "cuda"),
            tokens / timed(bf16_step(sub, partial(sub, x), y), repeats, "cuda"),
        ]
        print(f"{task:>5s} {n:5d} {results[0]:15.0f} {results[1]:13.0f} {results[0] / results[1]:6.3f}")
    print("target: supernet / static >= 0.90")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--skip-cpu", action="store_true")
    ap.add_argument("--gpu-batch", type=int, default=4096)
    ap.add_argument("--smoke", action="store_true", help="seconds: 1 step, 1 repeat, batch 4 (checks that it runs)")
    args = ap.parse_args()
    if args.smoke:
        args.steps, args.repeats, args.batch, args.gpu_batch = 1, 1, 4, 64
    print(f"torch {torch.__version__}")
    if not args.skip_cpu:
        cpu_sandwich_vs_static(args.steps, args.repeats, args.batch)
    if torch.cuda.is_available():
        gpu_throughput(args.gpu_batch, max(args.repeats, 20))
    else:
        print("\n(no CUDA device: GPU throughput part skipped)")


if __name__ == "__main__":
    main()
