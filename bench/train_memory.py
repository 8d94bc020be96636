"""Peak memory of an elastic fine-tuning step against plain fine-tuning, with the dense and the chunked LM loss.

At a real vocabulary the logits of an LM dominate a training step's memory when the batch holds many tokens: the
dense loss keeps several float32 copies of every arch's tokens × vocabulary logits for backward, and the sandwich
trains four archs a step (on an H200, batch 8 × 2,048 tokens of the 135M-shaped Llama: 54.2 GB elastic against
12.1 GB plain, 4.49×). `train.loss_chunk_tokens` (supernet/chunked_loss.py) runs the head and the loss a chunk of
tokens at a time and recomputes them in backward. This script runs one step of each of

  plain    the imported model as a static module on the labels alone (scale.py's `plain` stage)
  elastic  the sandwich (largest, smallest, 2 random), every arch distilled from the frozen pretrained model

with the dense loss (`loss_chunk_tokens=null`) and the chunked one, each in a process of its own (bf16-true, gradient
checkpointing, Lightning), and prints the step's peak resident memory and throughput side by side.

Usage (after `python bench/scale.py --models smollm_135m --stages hf,import` has imported the model):
  python bench/train_memory.py                          # smollm_135m, batch 8 x 256 tokens, chunks of 2,048
  python bench/train_memory.py --model gpt2 --batch 4 --seq 512
  python bench/train_memory.py --smoke                  # seconds: a tiny Llama, in this process (tests)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import scale  # noqa: E402  (bench/scale.py: the models, their import and the training step)

TINY = scale.TINY  # the scale ladder's tiny Llama
RUNS = [("plain", None), ("plain", "chunked"), ("elastic", None), ("elastic", "chunked")]


def step(name: str, spec: dict[str, Any], work: Path, stage: str, chunk: int | None, seq: int) -> dict[str, Any]:
    """One training step's figures (scale.py's `plain` or `elastic` step, with `loss_chunk_tokens=chunk`)."""
    scale.TRAIN_SEQ = seq
    baseline = scale._peak_gb()
    r = scale._train_step(name, spec, work, stage == "elastic", {"loss_chunk_tokens": chunk})
    return {"baseline_gb": baseline, **r}


def worker(name: str, spec: dict[str, Any], work: Path, stage: str, chunk: int | None, seq: int) -> None:
    import torch

    torch.set_num_threads(scale.THREADS)
    print("RESULT " + json.dumps(step(name, spec, work, stage, chunk, seq)))


def run(args: argparse.Namespace, spec: dict[str, Any], work: Path, stage: str, chunk: int | None) -> dict[str, Any]:
    if args.smoke:  # in this process: the smoke checks that the steps run, not their memory
        return step("tiny", spec, work, stage, chunk, args.seq)
    cmd = [sys.executable, __file__, "--worker", stage, json.dumps(chunk), "--model", args.model,
           "--batch", str(args.batch), "--seq", str(args.seq), "--work", str(work)]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode or not lines:
        raise SystemExit(f"{stage} (loss_chunk_tokens={chunk}) failed: {(p.stderr or p.stdout).strip()[-800:]}")
    return json.loads(lines[-1][7:])


def report(meta: dict[str, Any], results: dict[str, dict[str, Any]]) -> str:
    lines = [
        f"# Training-step memory, dense and chunked LM loss ({meta['date']}, {meta['cpu']}, {scale.THREADS} threads)",
        "",
        f"Command: `{meta['command']}`. Model `{meta['model']}`, batch {meta['batch']} × {meta['seq']} tokens, "
        "bf16-true, gradient checkpointing, one Lightning step per process; peak = the step's maximum resident "
        "memory (weights, optimizer state and libraries included).",
        "",
        "| loss | plain step | elastic step (4 archs + teacher) | elastic ÷ plain memory | elastic ÷ plain "
        "arch-tokens/s |",
        "| --- | --- | --- | ---: | ---: |",
    ]
    for loss in ("dense", "chunked"):
        p, e = results[f"plain/{loss}"], results[f"elastic/{loss}"]
        label = "dense" if loss == "dense" else f"chunked ({meta['chunk']} tokens)"
        lines.append(
            f"| {label} | {p['step_s']:.1f} s, {p['step_peak_gb']:.2f} GB | {e['step_s']:.1f} s, "
            f"{e['step_peak_gb']:.2f} GB | {e['step_peak_gb'] / p['step_peak_gb']:.2f}× | "
            f"{e['arch_tokens_per_s'] / p['arch_tokens_per_s']:.2f}× |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm_135m", help=f"one of {', '.join(scale.MODELS)}")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256, help="tokens per example")
    ap.add_argument("--chunk", type=int, default=2048, help="train.loss_chunk_tokens of the chunked runs")
    ap.add_argument("--work", default=str(ROOT / "results" / "scale"), help="where scale.py imported the model")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_memory.json"))
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--smoke", action="store_true", help="a tiny Llama in a temporary folder, steps in this process")
    ap.add_argument("--worker", nargs=2, metavar=("STAGE", "CHUNK"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.smoke:
        args.batch, args.seq, args.chunk = 2, TINY["seq"], 16
    spec = dict(TINY if args.smoke else scale.MODELS[args.model], batch=args.batch)
    name = "tiny" if args.smoke else args.model
    if args.smoke:
        scale.MODELS["tiny"] = spec
    if args.worker:
        worker(name, spec, Path(args.work), args.worker[0], json.loads(args.worker[1]), args.seq)
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) if args.smoke else Path(args.work)
        if args.smoke:
            for stage in ("hf", "import"):
                getattr(scale, f"stage_{stage}")(name, spec, work)
        elif not (work / name / "supernet.safetensors").is_file():
            raise SystemExit(f"no imported {name} under {work}: run python bench/scale.py --models {name} "
                             "--stages hf,import first")  # fmt: skip
        results = {}
        for stage, loss in RUNS:
            r = run(args, spec, work, stage, args.chunk if loss else None)
            results[f"{stage}/{loss or 'dense'}"] = r
            print(f"{stage:8s} {loss or 'dense':8s} step {r['step_s']:.1f} s, peak {r['step_peak_gb']:.2f} GB",
                  flush=True)  # fmt: skip
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpu.splitlines() if ln.startswith("Model name")), "unknown CPU")
    command = "python bench/train_memory.py " + " ".join(sys.argv[1:])
    meta = {"model": name, "batch": args.batch, "seq": args.seq, "chunk": args.chunk, "cpu": cpu,
            "date": time.strftime("%Y-%m-%d"), "command": command}  # fmt: skip
    text = report(meta, results)
    print(text)
    if not args.smoke:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"_meta": meta, **results}, indent=1))
        out.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
