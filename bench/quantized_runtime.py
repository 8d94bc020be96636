"""Benchmark: low bits that run as low bits. The deployment graph (supernet/runtime/) in ONNX Runtime, per layer
and per arch, at every w_bits × a_bits, against float; and how exactly it reproduces what the search saw.

1. Kernels per linear: for the FFN linears (E -> 4E, 4E -> E) of three models (image E=128 with 16 tokens, LM E=128
   with 64 tokens, and a wide model E=512 with 16 tokens where weights dominate), batch 1, the kernel table's
   timings: every kernel that is exact, the one chosen, and its speed against the float kernel (> 1 is faster).
2. Whole archs: the uniform arch (deepest, widest) of each model at every w_bits × a_bits, in ONNX Runtime on the
   chosen kernels, against the same graph on float kernels with float activations (w32 a32 arch) and against the
   PyTorch module of the same arch (the float simulation measured before this runtime existed).
3. Agreement (needs a trained run, default results/demo): for every w_bits × a_bits, the runtime model's argmax
   against `supernet(x, arch)` on the run's validation subset, and its accuracy against the extracted module's
   (what the search measures). Targets: >= 99.9 % agreement, |Δ accuracy| <= 0.1 point.

    python bench/quantized_runtime.py [--run results/demo] [--parts 123] [--smoke]
"""

from __future__ import annotations

import argparse
import subprocess
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
import yaml

from predictors.measure import LatencyConfig, evaluate, kernel_table, latency, runtime_latency
from supernet import Arch, ModelConfig, SearchSpace, build_supernet, extract_subnet
from supernet.runtime.graph import build_runtime_model, runtime_model
from supernet.runtime.kernels import float_plan
from supernet.runtime.session import make_session, version
from supernet.subnet_io import pack_subnet

ROOT = Path(__file__).resolve().parents[1]
BITS = [(w, a) for a in (8, 32) for w in (1, 2, 4, 8, 32)]
SMOKE = False  # --smoke: the first model only, two bit settings, one round
FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_tile", "asimddp", "i8mm")


def cpu() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    name = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "unknown")
    flags = next((ln.split(":", 1)[1].split() for ln in out.splitlines() if ln.startswith("Flags")), [])
    return f"{name}; features: {' '.join(f for f in FEATURES if f in flags) or 'none of ' + '/'.join(FEATURES)}"


def models() -> dict[str, tuple[SearchSpace, ModelConfig]]:
    default = SearchSpace.from_yaml(ROOT / "conf/space/default.yaml")
    wide = SearchSpace(name="wide", depth=(4,), embed_dim=(512,), num_heads=(16,), mlp_ratio=(4.0,),
                       w_bits=default.w_bits, a_bits=default.a_bits)  # fmt: skip
    out = {
        "image E=128, 16 tokens": (default, ModelConfig(task="image")),
        "LM E=128, 64 tokens": (default, ModelConfig(task="lm", vocab_size=256, block_size=64)),
        "wide image E=512, 16 tokens": (wide, ModelConfig(task="image")),
    }
    return dict(list(out.items())[:1]) if SMOKE else out


def example(config: ModelConfig) -> torch.Tensor:
    if config.task == "image":
        return torch.randn(1, config.in_channels, config.image_size, config.image_size)
    return torch.randint(0, config.vocab_size, (1, config.block_size))


def uniform(space: SearchSpace, w_bits: int, a_bits: int) -> Arch:
    d = space.max_depth
    return Arch(d, space.embed_dim[-1], (space.num_heads[-1],) * d, (space.mlp_ratio[-1],) * d, (w_bits,) * d, a_bits)


def per_layer(cfg: LatencyConfig) -> None:
    print("\n## 1. Kernels per linear (µs per call, best of interleaved repeats; speed-up of the chosen kernel "
          "over the float kernel at the same bits, and over float w32 a32)\n")  # fmt: skip
    for name, (space, config) in models().items():
        table = kernel_table(cfg, config, example(config))
        e = space.embed_dim[-1]
        f = round(space.mlp_ratio[-1] * e)
        print(f"### {name}\n")
        print("| linear | w × a | chosen | vs float kernel | vs float w32 a32 | all exact kernels (µs) | rejected |")
        print("| --- | --- | --- | ---: | ---: | --- | --- |")
        for k, n in ((e, f), (f, e)):
            table.choose(k, n, 32, 32)
            base = table.entries[f"{k}x{n} w32 a32"]["us"]["float"]
            for w, a in BITS:
                table.choose(k, n, w, a)
                ent = table.entries[f"{k}x{n} w{w} a{a}"]
                us, best = ent["us"], ent["kernel"]
                rej = "; ".join(f"{kk}: {v}" for kk, v in ent["rejected"].items()) or "–"
                print(f"| {k}→{n} | w{w} a{a} | {best} | {us['float'] / us[best]:.2f}× | {base / us[best]:.2f}× | "
                      + ", ".join(f"{kk} {v:.1f}" for kk, v in sorted(us.items())) + f" | {rej} |")  # fmt: skip
        print()


def per_arch(cfg: LatencyConfig, rounds: int = 3) -> None:
    print(f"\n## 2. Whole archs (ms per batch-1 call, best of {rounds} interleaved rounds; > 1 is faster)\n")
    torch_cfg = replace(cfg, runtime="torch")  # min, as cfg (paired needs an ONNX Runtime reference)
    for name, (space, config) in models().items():
        torch.manual_seed(0)
        net = build_supernet(space, config).eval()
        x = example(config)
        table = kernel_table(cfg, config, x)
        # Every variant of every row is built first and then timed round-robin, `rounds` times: this VM's noise comes
        # in bursts and level shifts lasting up to seconds, which would otherwise land on whole rows.
        variants: dict[tuple[int, int], dict] = {}
        for w, a in BITS:
            arch = uniform(space, w, a)
            model, plan = runtime_model(net, arch, table)
            arrays = pack_subnet(extract_subnet(net, arch, qat=True))
            float_model = build_runtime_model(arch, config, arrays, float_plan(arch))
            variants[(w, a)] = {
                "plan": plan,
                "runtime": partial(runtime_latency, model, x, cfg),
                "float kernels": partial(runtime_latency, float_model, x, cfg),
                "pytorch": partial(latency, extract_subnet(net, arch), x, torch_cfg),
            }
        best: dict[tuple, float] = {}
        for _ in range(rounds):
            for bits, v in variants.items():
                for kind in ("runtime", "float kernels", "pytorch"):
                    t = v[kind]()["latency_ms"]
                    best[(bits, kind)] = min(best.get((bits, kind), float("inf")), t)
        float_ms = best[((32, 32), "runtime")]
        print(f"### {name} (runtime, float w32 a32: {float_ms:.3f} ms)\n")
        print("| arch | kernels | runtime ms | same graph on float kernels | × vs float kernels | × vs w32 a32 "
              "| PyTorch module ms | × vs PyTorch |")  # fmt: skip
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for (w, a), v in variants.items():
            rt, fl, pt = (best[((w, a), k)] for k in ("runtime", "float kernels", "pytorch"))
            kinds = sorted({k for layer in v["plan"] for k in layer.values()})
            print(f"| w{w} a{a} | {', '.join(kinds)} | {rt:.3f} | {fl:.3f} | {fl / rt:.2f} | {float_ms / rt:.2f} | "
                  f"{pt:.3f} | {pt / rt:.2f} |")  # fmt: skip
        print()


def agreement(run: Path, cfg: LatencyConfig) -> None:
    from omegaconf import OmegaConf

    from predictors.measure_cli import prepare

    conf = OmegaConf.load(ROOT / "conf/measure.yaml")
    conf.run = str(run)
    conf.latency = OmegaConf.load(ROOT / "conf/latency/cpu.yaml")
    net, batches, ex, _ = prepare(conf)
    table = kernel_table(cfg, net.config, ex)
    n = sum(len(y) for _, y in batches)
    print(f"\n## 3. Agreement with what the search saw ({run}, {n} validation images)\n")
    print("| arch | kernels | argmax agreement with supernet(x, arch) | accuracy: extracted module | runtime | Δ |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    rng = np.random.default_rng(0)
    for w, a in [(w, a) for w, a in BITS if w in net.space.w_bits and a in net.space.a_bits]:  # the run's own
        for arch in (uniform(net.space, w, a), _random_with(net.space, rng, w, a)):
            model, plan = runtime_model(net, arch, table)
            session = make_session(model)
            agree = 0
            with torch.no_grad():
                for x, _ in batches:
                    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
                    agree += int((torch.from_numpy(got).argmax(-1) == net(x, arch).argmax(-1)).sum())

            class Runtime(torch.nn.Module):
                def forward(self, x, s=session):
                    return torch.from_numpy(s.run(None, {s.get_inputs()[0].name: x.numpy()})[0])

            acc_pt = evaluate(extract_subnet(net, arch), batches, "image")["accuracy"]
            acc_rt = evaluate(Runtime(), batches, "image")["accuracy"]
            kinds = sorted({k for layer in plan for k in layer.values()})
            print(f"| `{arch.key()}` | {', '.join(kinds)} | {100 * agree / n:.2f} % | {acc_pt:.2f} | {acc_rt:.2f} | "
                  f"{acc_rt - acc_pt:+.2f} |")  # fmt: skip


def _random_with(space: SearchSpace, rng: np.random.Generator, w: int, a: int) -> Arch:
    arch = space.sample(rng)
    return replace(arch, w_bits=(w,) * arch.depth, a_bits=a)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="results/demo")
    ap.add_argument("--parts", default="123", help="which parts to run, e.g. 2 or 13")
    ap.add_argument("--smoke", action="store_true", help="seconds: one model, 3 bit settings, 1 round")
    args = ap.parse_args()
    torch.set_num_threads(1)
    # nas-measure's settings with the min estimator: the rows compare kernels, graphs and the PyTorch module side by
    # side, and the paired estimator's reference exists for ONNX Runtime models only.
    cfg = LatencyConfig(**{**yaml.safe_load((ROOT / "conf/latency/cpu.yaml").read_text()), "estimator": "min"})
    if args.smoke:
        cfg = replace(cfg, warmup=1, repeats=3, min_repeat_ms=0.2)
        global BITS, SMOKE
        BITS, SMOKE = [(8, 32), (8, 8), (32, 32)], True
    t0 = time.perf_counter()
    print(f"# Quantized runtime benchmark\n\nCPU: {cpu()}\nonnxruntime {version()}, torch {torch.__version__}, "
          f"1 thread, batch 1; latency = {cfg.estimator} of {cfg.repeats} timeit-style repeats")  # fmt: skip
    if "1" in args.parts:
        per_layer(cfg)
    if "2" in args.parts:
        per_arch(cfg, rounds=1 if args.smoke else 3)
    if "3" in args.parts and (Path(args.run) / "supernet.safetensors").is_file():
        agreement(Path(args.run), cfg)
    print(f"\n({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
