"""The scale ladder: every stage of the pipeline on models of real sizes (random weights from published configs).

Models (built from the configs of real models, random weights, nothing downloaded): ViT-B/16 (86M), BERT-base
(110M), GPT-2 (124M), a Llama of SmolLM-135M's shape (30 layers, GQA 9/3) and a Llama of Llama-3.2-1B's shape (16
layers, width 2048, GQA 32/8, FFN 8192, vocabulary 128,256, Llama 3's RoPE scaling). Each (model, stage) runs in a
process of its own, so its wall time and peak resident memory are its own:

  hf       build the `transformers` model from its config (seeded random weights) and `save_pretrained` it
  import   `load_pretrained` + `supernet_from_pretrained` (the elastic supernet, space=hf) + save the artifact
  exact    largest arch vs the Hugging Face model's logits (float32; relative max |Δ| / max |logit|)
  plain    one step of plain fine-tuning (the largest arch, labels only, no teacher), Lightning, bf16-true
  elastic  one step of elastic fine-tuning (sandwich: largest, smallest, 2 random; frozen pretrained teacher)
  kernels  kernel table (one measurement per distinct linear shape) + runtime graphs of 3 archs
  latency  ONNX Runtime latency of those archs at the model's usual sequence length
  eval     accuracy / loss evaluation of those archs (torch, extracted subnets), reported per 100 examples
  export   packed weights, model.onnx (external data past 2 GB), Hugging Face folder; reload all three

Usage:
  python bench/scale.py                                # every model, every stage, results to bench/results/
  python bench/scale.py --models gpt2 --stages import,exact
  python bench/scale.py --fit bench/results/scale.json  # just the growth exponents of a finished run
  python bench/scale.py --smoke                         # seconds: a tiny Llama, every stage, a temporary folder

Inputs are random (token ids, images): stage costs do not depend on the values, and no pretrained weights or real
data of these sizes can be had offline. Peak memory is the process's maximum resident set (ru_maxrss), which
includes about 0.5 GB of imported libraries (reported as `baseline`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_OUT = str(ROOT / "bench" / "results" / "scale.json")

# name -> (family class, config kwargs, usual sequence length (tokens), examples in a training step)
MODELS: dict[str, dict[str, Any]] = {
    "vit_b16": {
        "cls": "ViTForImageClassification",
        "config": "ViTConfig",
        "kwargs": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                       image_size=224, patch_size=16, num_channels=3, num_labels=1000),
        "seq": 197,
        "batch": 8,
    },
    "bert_base": {
        "cls": "BertForSequenceClassification",
        "config": "BertConfig",
        "kwargs": dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                       intermediate_size=3072, max_position_embeddings=512, num_labels=2),
        "seq": 128,
        "batch": 8,
    },
    "gpt2": {
        "cls": "GPT2LMHeadModel",
        "config": "GPT2Config",
        "kwargs": dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12),
        "seq": 1024,
        "batch": 1,
    },
    "smollm_135m": {
        "cls": "LlamaForCausalLM",
        "config": "LlamaConfig",
        "kwargs": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                       num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                       tie_word_embeddings=True, rope_theta=10000.0, rms_norm_eps=1e-5),
        "seq": 2048,
        "batch": 1,
    },
    "llama_1b": {
        "cls": "LlamaForCausalLM",
        "config": "LlamaConfig",
        "kwargs": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                       num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
                       tie_word_embeddings=True, rope_theta=500000.0, rms_norm_eps=1e-5,
                       rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
        "seq": 2048,
        "batch": 1,
    },
}  # fmt: skip
STAGES = ("hf", "import", "exact", "plain", "elastic", "kernels", "latency", "eval", "export")
# The 1B-shaped model by default: the stages the issue asks of it on this machine (kernels, latency and eval at 2,048
# tokens take about a quarter of an hour more on 2 cores: name them with --stages to run them too).
LARGE_STAGES = ("hf", "import", "exact", "plain", "elastic", "export")
TRAIN_SEQ = 256  # tokens per example in a training step and the exactness check (LMs and BERT use min(seq, this))
EVAL_EXAMPLES = 4  # examples actually scored per arch; the cost is reported per 100 examples
THREADS = 2
SMOKE = False  # --smoke: the tiny model below, every stage in this process, results in a temporary folder
TINY = {
    "cls": "LlamaForCausalLM",
    "config": "LlamaConfig",
    "kwargs": dict(vocab_size=64, hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=6,
                   num_key_value_heads=2, max_position_embeddings=32, tie_word_embeddings=True, rope_theta=10000.0,
                   rms_norm_eps=1e-5),
    "seq": 16,
    "batch": 2,
}  # fmt: skip


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def _reset_peak() -> None:
    """Restart the kernel's peak-RSS count (VmHWM) of this process, so `_hwm_gb` sees one phase alone."""
    Path("/proc/self/clear_refs").write_text("5")


def _hwm_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def _hf_dir(work: Path, name: str) -> Path:
    return work / name / "hf"


def _inputs(spec: dict[str, Any], batch: int, seq: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    kw = spec["kwargs"]
    if spec["config"] == "ViTConfig":
        return torch.randn(batch, kw["num_channels"], kw["image_size"], kw["image_size"], generator=g)
    return torch.randint(0, kw["vocab_size"], (batch, seq), generator=g)


def _targets(spec: dict[str, Any], x, seed: int = 1):
    import torch

    g = torch.Generator().manual_seed(seed)
    kw = spec["kwargs"]
    if spec["config"] in ("ViTConfig", "BertConfig"):
        return torch.randint(0, kw["num_labels"], (len(x),), generator=g)
    return torch.randint(0, kw["vocab_size"], x.shape, generator=g)


def _archs(space, seed: int = 0) -> dict[str, Any]:
    """The few archs the kernel, latency and eval stages use: largest at 8-bit weights, smallest, one random."""
    from dataclasses import replace

    rng = np.random.default_rng(seed)
    big = space.largest()
    w8 = 8 if 8 in space.w_bits else big.w_bits[0]
    return {
        "largest_w8": replace(big, w_bits=(w8,) * big.depth),
        "smallest": space.smallest(),
        "random": space.sample(rng),
    }


# ---- stages (each runs in its own process) -------------------------------------------------------------------------


def stage_hf(name: str, spec: dict[str, Any], work: Path) -> dict[str, Any]:
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = getattr(transformers, spec["config"])(**spec["kwargs"], architectures=[spec["cls"]])
    model = getattr(transformers, spec["cls"])(cfg).eval()
    with torch.no_grad():  # fresh init has zero biases and unit norms: perturb them so exactness means something
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.02)
    out = _hf_dir(work, name)
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(str(out))
    return {"params": sum(p.numel() for p in model.parameters())}


def stage_import(name: str, spec: dict[str, Any], work: Path) -> dict[str, Any]:
    from supernet.artifact import save_supernet
    from supernet.hf.load import load_pretrained, pretrained_info, supernet_from_pretrained

    src = _hf_dir(work, name)
    hf = load_pretrained(str(src))
    info = pretrained_info(hf, str(src))
    net = supernet_from_pretrained(hf, source=str(src))
    del hf
    save_supernet(work / name, net, {"pretrained": info})
    space = net.space
    return {"supernet_params": sum(p.numel() for p in net.parameters()), "space_size": float(space.size()),
            "largest_key_chars": len(space.largest().key())}  # fmt: skip


def _load_net(work: Path, name: str):
    from supernet.artifact import load_supernet

    return load_supernet(work / name)


def stage_exact(name: str, spec: dict[str, Any], work: Path) -> dict[str, Any]:
    import torch

    from supernet.hf.load import load_pretrained
    from supernet.hf.save import hf_logits

    net, _ = _load_net(work, name)
    x = _inputs(spec, 1, min(spec["seq"], TRAIN_SEQ))
    with torch.no_grad():
        ours = net(x, net.space.largest())
    del net
    ref = hf_logits(load_pretrained(str(_hf_dir(work, name))), x)
    diff = float((ours - ref).abs().max())
    scale = float(ref.abs().max())
    return {"tokens": x.shape[-1] if not x.is_floating_point() else spec["seq"], "max_abs_diff": diff,
            "max_abs_logit": scale, "relative": diff / scale}  # fmt: skip


def _train_step(
    name: str, spec: dict[str, Any], work: Path, elastic: bool, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One Lightning training step (plain or elastic) in bf16-true; `overrides` change the `train` config."""
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from supernet.extract import extract_subnet
    from supernet.training import SubnetModule, SupernetModule

    net, _ = _load_net(work, name)
    train = {"lr": 1e-5, "warmup_fraction": 0.0, "reference_archs": 0, "grad_checkpointing": True, **(overrides or {})}
    if elastic:  # the sandwich (largest, smallest, 2 random), every arch distilled from the frozen pretrained model
        train.update(sampler="sandwich", num_random=2, teacher="pretrained")
        module = SupernetModule(net.space.to_dict(), net.config.to_dict(), train)
        module.net.load_state_dict(net.state_dict())
        module.set_pretrained_teacher(net)  # cast to the training precision by the module (one bf16 copy)
    else:  # plain fine-tuning of the same model: the imported model as a static module, on the labels alone
        module = SubnetModule(extract_subnet(net, net.space.largest()), train)
    del net
    x = _inputs(spec, spec["batch"], min(spec["seq"], TRAIN_SEQ))
    loader = DataLoader(TensorDataset(x, _targets(spec, x)), batch_size=spec["batch"])
    step: dict[str, float] = {}

    class StepMemory(L.Callback):
        """Resident memory at the step's start and its peak during the step alone (not the loading before it)."""

        def on_train_batch_start(self, *args) -> None:
            _reset_peak()
            step["start_gb"], step["t0"] = _hwm_gb(), time.perf_counter()

        def on_train_batch_end(self, *args) -> None:
            step["peak_gb"], step["s"] = _hwm_gb(), time.perf_counter() - step["t0"]

    trainer = L.Trainer(accelerator="cpu", precision="bf16-true", max_steps=1, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, callbacks=[StepMemory()])  # fmt: skip
    load_peak = _hwm_gb()  # loading the supernet and building the module, before the step restarts the count
    trainer.fit(module, train_dataloaders=loader)
    step_s, step_peak = step["s"], step["peak_gb"]
    tokens = len(x) * (spec["seq"] if x.is_floating_point() else x.shape[1])
    archs = 4 if elastic else 1
    return {"step_s": step_s, "load_peak_gb": load_peak, "step_start_gb": step["start_gb"], "step_peak_gb": step_peak,
            "tokens": tokens,
            "archs_trained": archs, "tokens_per_s": tokens / step_s, "arch_tokens_per_s": tokens * archs / step_s,
            "loss": float(trainer.callback_metrics["train/loss"])}  # fmt: skip


def stage_plain(name: str, spec: dict[str, Any], work: Path) -> dict[str, Any]:
    return _train_step(name, spec, work, elastic=False)


def stage_elastic(name: str, spec: dict[str, Any], work: Path) -> dict[str, Any]:
    return _train_step(name, spec, work, elastic=True)


def stage_kernels(name: str, spec: dict[str, Any], work: Path) -> dict[str, Any]:
    from predictors.measure import LatencyConfig, kernel_table
    from supernet.runtime.graph import runtime_model

    net, _ = _load_net(work, name)
    cfg = LatencyConfig(threads=THREADS, estimator="min", repeats=3, warmup=1)
    path = work / name / "kernels.json"
    path.unlink(missing_ok=True)
    table = kernel_table(cfg, net.config, _inputs(spec, 1, spec["seq"]), path)
    out: dict[str, Any] = {"archs": {}}
    t_table = t_graph = 0.0
    for label, arch in _archs(net.space).items():
        t0 = time.perf_counter()
        table.plan(arch, net.config)
        t1 = time.perf_counter()
        model, _ = runtime_model(net, arch, table)
        t2 = time.perf_counter()
        t_table, t_graph = t_table + t1 - t0, t_graph + t2 - t1
        out["archs"][label] = {"key": arch.key(), "layers": arch.depth, "graph_bytes": model.ByteSize()}
    out.update(distinct_shapes=len(table.entries), table_s=t_table, graph_s=t_graph)
    return out


def stage_latency(name: str, spec: dict[str, Any], work: Path) -> dict[str, Any]:
    from predictors.measure import LatencyConfig, kernel_table, runtime_latency
    from supernet.runtime.graph import runtime_model

    net, _ = _load_net(work, name)
    cfg = LatencyConfig(threads=THREADS, estimator="min", repeats=3, warmup=1, min_repeat_ms=0.0)
    example = _inputs(spec, 1, spec["seq"])
    table = kernel_table(cfg, net.config, example, work / name / "kernels.json")
    out = {}
    for label, arch in _archs(net.space).items():
        model, _ = runtime_model(net, arch, table)
        out[label] = runtime_latency(model, example, cfg)["latency_ms"]
    return {"tokens": spec["seq"], "latency_ms": out}


def stage_eval(name: str, spec: dict[str, Any], work: Path) -> dict[str, Any]:
    import torch

    from predictors.measure import evaluate
    from supernet.extract import extract_subnet

    torch.set_num_threads(THREADS)
    net, _ = _load_net(work, name)
    x = _inputs(spec, EVAL_EXAMPLES, spec["seq"])
    batches = [(x[i : i + 1], _targets(spec, x[i : i + 1])) for i in range(len(x))]
    out = {}
    for label, arch in _archs(net.space).items():
        t0 = time.perf_counter()
        metrics = evaluate(extract_subnet(net, arch), batches, net.config.task)
        out[label] = {"s_per_100": (time.perf_counter() - t0) * 100 / EVAL_EXAMPLES, **metrics}
    return {"tokens": spec["seq"], "examples_scored": EVAL_EXAMPLES, "archs": out}


def stage_export(name: str, spec: dict[str, Any], work: Path) -> dict[str, Any]:
    import torch

    from supernet.config import ModelConfig
    from supernet.extract import extract_subnet
    from supernet.hf.load import load_pretrained
    from supernet.hf.save import hf_logits, save_hf
    from supernet.runtime.graph import write_runtime_model
    from supernet.runtime.kernels import float_plan
    from supernet.runtime.session import run
    from supernet.subnet_io import WEIGHTS_NAME, load_subnet, read_arch_yaml, read_arrays, save_subnet

    net, info = _load_net(work, name)
    arch = net.space.largest()  # the largest arch: the biggest files, and the one that must equal the original
    out = work / name / "export"
    shutil.rmtree(out, ignore_errors=True)
    x = _inputs(spec, 1, min(spec["seq"], 64))
    times: dict[str, float] = {}
    peaks: dict[str, float] = {}

    def phase(name: str) -> None:  # the peak resident memory of the phase that just ended, then a fresh count
        peaks[name] = round(_hwm_gb(), 2)
        _reset_peak()

    # One copy of the model at a time: each artifact is written from the packed weights, as nas-export writes them.
    t0 = time.perf_counter()
    sub = extract_subnet(net, arch)
    del net
    with torch.no_grad():
        want = sub(x)
    save_subnet(sub, out)
    del sub
    times["packed_s"] = time.perf_counter() - t0
    phase("packed")
    t0 = time.perf_counter()
    arrays = read_arrays(out / WEIGHTS_NAME)
    config = ModelConfig.from_config(read_arch_yaml(out)["model"])
    onnx_path = out / "model.onnx"
    write_runtime_model(arch, config, arrays, float_plan(arch), onnx_path)
    del arrays
    times["onnx_s"] = time.perf_counter() - t0
    phase("onnx")
    t0 = time.perf_counter()
    back = load_subnet(out)
    times["reload_packed_s"] = time.perf_counter() - t0
    phase("reload_packed")
    with torch.no_grad():
        d_packed = float((back(x) - want).abs().max())
    t0 = time.perf_counter()
    save_hf(back, info["pretrained"], out / "hf")
    times["hf_s"] = time.perf_counter() - t0
    phase("hf")
    del back
    t0 = time.perf_counter()
    d_onnx = float(np.abs(run(str(onnx_path), x, THREADS) - want.numpy()).max())
    times["reload_onnx_s"] = time.perf_counter() - t0
    phase("reload_onnx")
    t0 = time.perf_counter()
    d_hf = float((hf_logits(load_pretrained(str(out / "hf")), x) - want).abs().max())
    times["reload_hf_s"] = time.perf_counter() - t0
    phase("reload_hf")
    files = {p.name: p.stat().st_size for p in out.iterdir() if p.is_file()}
    hf_bytes = sum(p.stat().st_size for p in (out / "hf").iterdir())
    return {**times, "phase_peak_gb": peaks, "files_bytes": files, "hf_bytes": hf_bytes,
            "max_abs_logit": float(want.abs().max()),
            "reload_max_abs_diff": {"packed": d_packed, "onnx": d_onnx, "hf": d_hf}}  # fmt: skip


# ---- driver ---------------------------------------------------------------------------------------------------------


def worker(name: str, stage: str, work: Path) -> None:
    """Run one stage and print one JSON line: its figures, wall time and peak memory."""
    import torch

    torch.set_num_threads(THREADS)
    import lightning  # noqa: F401  (the libraries every stage imports, before the baseline is read)
    import transformers  # noqa: F401

    import supernet.hf.load  # noqa: F401

    print("RESULT " + json.dumps(stage_figures(name, stage, work)))


def stage_figures(name: str, stage: str, work: Path) -> dict[str, Any]:
    """One stage's figures with its wall time and the process's peak memory."""
    baseline = _peak_gb()
    t0 = time.perf_counter()
    result = globals()[f"stage_{stage}"](name, MODELS[name], work)
    wall = time.perf_counter() - t0
    # Stages that restart the kernel's peak count per phase report each phase's; the process peak is their largest.
    phases = [
        result.get("load_peak_gb", 0.0),
        result.get("step_peak_gb", 0.0),
        *result.get("phase_peak_gb", {}).values(),
    ]
    peak = max(_peak_gb(), *phases)
    return {"wall_s": wall, "peak_gb": peak, "baseline_gb": baseline, **result}


def run_stage(name: str, stage: str, work: Path, timeout: float) -> dict[str, Any]:
    if SMOKE:  # in this process: the smoke checks that every stage runs, not what it costs
        return stage_figures(name, stage, work)
    cmd = [sys.executable, __file__, "--worker", name, stage, "--work", str(work)]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        peak = "killed (out of memory?)" if p.returncode in (-9, 137) else f"exit {p.returncode}"
        return {"error": f"{peak}: {' | '.join(tail)}", "process_s": time.perf_counter() - t0}
    return {**json.loads(lines[-1][7:]), "process_s": time.perf_counter() - t0}


def stage_cost(stage: str, s: dict[str, Any]) -> float:
    """The time a stage's exponent is fitted on: the step for training, the summed latencies, and per token where
    the models' usual sequence lengths differ (training, latency, evaluation, exactness); else its wall time."""
    t = {"plain": s.get("step_s"), "elastic": s.get("step_s")}.get(stage, s["wall_s"])
    if stage == "latency":
        t = sum(s["latency_ms"].values()) / 1e3
    return t / s["tokens"] if "tokens" in s else t


def fit_exponents(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per stage, the exponent b of cost ∝ params^b (`stage_cost`) and of peak memory above the libraries' baseline
    ∝ params^b: least squares in log-log over the models that ran the stage."""
    out = {}
    for stage in STAGES:
        pts = [(r["params"], r["stages"][stage]) for r in results.values()
               if stage in r.get("stages", {}) and "error" not in r["stages"][stage] and r.get("params")]  # fmt: skip
        if len(pts) < 3:
            continue
        logp = np.log([p for p, _ in pts])
        time_fit = np.polyfit(logp, np.log([stage_cost(stage, s) for _, s in pts]), 1)[0]
        mem_fit = np.polyfit(logp, np.log([max(s["peak_gb"] - s["baseline_gb"], 1e-3) for _, s in pts]), 1)[0]
        out[stage] = {"time": float(time_fit), "memory": float(mem_fit), "models": len(pts)}
    return out


def _cell(r: dict[str, Any] | None, text) -> str:
    if r is None:
        return "not run"
    if "error" in r:
        return "fails: " + r["error"][:60]
    return text(r)


def report(results: dict[str, Any]) -> str:
    """The ladder as Markdown: one row per model, one column per stage (wall time and peak memory), then the
    growth exponents."""
    gb = "{:.1f} GB".format
    lines = [
        f"# Scale ladder ({results['_meta']['date']}, {results['_meta']['cpu']}, {THREADS} threads)",
        "",
        "Command: `python bench/scale.py` (random weights from the published configs; one process per stage; wall "
        "time of the stage's work, peak = the process's maximum resident memory, libraries included).",
        "",
        "| model | params | import | exact (rel.) | plain step | elastic step (4 archs) | elastic ÷ plain memory, "
        "arch-tokens/s | kernel table | graphs (3 archs) | ORT latency (largest w8 / smallest / random) | eval per "
        "100 examples (largest) | export + reload |",
        "|" + " --- |" * 12,
    ]
    for name, r in results.items():
        if name.startswith("_"):
            continue
        st = r["stages"]
        p, e = st.get("plain"), st.get("elastic")
        ratio = "—"
        if p and e and "error" not in p and "error" not in e:
            ratio = (f"{e['step_peak_gb'] / p['step_peak_gb']:.2f}×, "
                     f"{e['arch_tokens_per_s'] / p['arch_tokens_per_s']:.2f}×")  # fmt: skip
        k = st.get("kernels")
        lat = st.get("latency")

        def ms(x):
            return " / ".join(f"{v:.0f}" for v in x["latency_ms"].values()) + f" ms at {x['tokens']} tokens"

        def exp(x):
            return (f"{x['wall_s']:.0f} s, {gb(x['peak_gb'])}, max Δ "
                       f"{max(x['reload_max_abs_diff'].values()):.0e}")  # fmt: skip

        row = [
            name,
            f"{r.get('params', 0) / 1e6:.0f} M",
            _cell(st.get("import"), lambda x: f"{x['wall_s']:.0f} s, {gb(x['peak_gb'])}"),
            _cell(st.get("exact"), lambda x: f"{x['relative']:.1e}"),
            _cell(p, lambda x: f"{x['step_s']:.1f} s, {gb(x['step_peak_gb'])}"),
            _cell(e, lambda x: f"{x['step_s']:.1f} s, {gb(x['step_peak_gb'])}"),
            ratio,
            _cell(k, lambda x: f"{x['distinct_shapes']} shapes, {x['table_s']:.0f} s"),
            _cell(k, lambda x: f"{x['graph_s']:.1f} s, {gb(x['peak_gb'])}"),
            _cell(lat, ms),
            _cell(st.get("eval"), lambda x: f"{x['archs']['largest_w8']['s_per_100']:.0f} s"),
            _cell(st.get("export"), exp),
        ]
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "Growth with the parameter count (least squares in log-log over the models that ran the stage; time per "
        "token where the models' sequence lengths differ: training step, latency, evaluation, exactness):",
        "",
        "| stage | time ∝ P^b | memory above the libraries' baseline ∝ P^b | models |",
        "| --- | ---: | ---: | ---: |",
    ]
    for stage, f in results.get("_exponents", {}).items():
        lines.append(f"| {stage} | {f['time']:.2f} | {f['memory']:.2f} | {f['models']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--work", default=str(ROOT / "results" / "scale"))
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--worker", nargs=2, metavar=("MODEL", "STAGE"))
    ap.add_argument("--fit", help="only fit growth exponents of this results file")
    ap.add_argument("--smoke", action="store_true", help="seconds: every stage of a tiny Llama, in this process")
    args = ap.parse_args()
    if args.smoke:
        global SMOKE, THREADS
        SMOKE, THREADS = True, 1
        MODELS["tiny"] = TINY
        args.models = "tiny"
        tmp = tempfile.mkdtemp(prefix="scale_smoke_")
        args.work = str(Path(tmp) / "work")
        args.out = args.out if args.out != DEFAULT_OUT else str(Path(tmp) / "scale.json")
    work = Path(args.work)
    if args.worker:
        worker(*args.worker, work)
        return
    out = Path(args.out)
    results: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}
    if not args.fit:
        for name in args.models.split(","):
            if name not in MODELS:
                raise SystemExit(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
            # named stages run as named; by default the 1B-shaped model runs the stages the issue asks of it
            allowed = LARGE_STAGES if name == "llama_1b" and args.stages == ",".join(STAGES) else STAGES
            for stage in [s for s in args.stages.split(",") if s in allowed]:
                r = run_stage(name, stage, work, args.timeout)
                entry = results.setdefault(name, {"stages": {}})
                entry["stages"][stage] = r
                if stage == "hf" and "params" in r:
                    entry["params"] = r["params"]
                shown = {k: v for k, v in r.items() if not isinstance(v, dict)}
                print(f"{name:12s} {stage:8s} {json.dumps(shown)[:300]}", flush=True)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(results, indent=1))  # after every stage: an interrupted ladder keeps it
    cpu = os.popen("lscpu | grep 'Model name'").read().split(":")[-1].strip()
    results.setdefault("_meta", {}).update({"cpu": cpu, "threads": THREADS, "date": time.strftime("%Y-%m-%d")})
    results["_exponents"] = fit_exponents({k: v for k, v in results.items() if not k.startswith("_")})
    out.write_text(json.dumps(results, indent=1))
    out.with_suffix(".md").write_text(report(results))
    if SMOKE:
        shutil.rmtree(work.parent, ignore_errors=True)  # the smoke's temporary models
    for stage, f in results["_exponents"].items():
        print(f"exponent {stage:8s} time ∝ P^{f['time']:.2f}, memory above baseline ∝ P^{f['memory']:.2f} "
              f"({f['models']} models)")  # fmt: skip


if __name__ == "__main__":
    main()
