"""Elastic fine-tuning at a real size on one GPU, next to plain fine-tuning, then the rest of the pipeline.

`bench/gpu_scale.sh` runs this. On one GPU (sized for an H100/H200: about 6-8 minutes in all, process starts
included) it

1. builds a Llama of SmolLM-135M's shape (LlamaConfig: vocabulary 49,152, width 576, FFN 1,536, 30 layers, 9 heads,
   3 key/value heads, 2,048 positions, tied embeddings; seeded random weights, nothing downloaded; the config of
   bench/scale.py's `smollm_135m`) and `save_pretrained`s it;
2. **elastic fine-tuning** with `nas-train model=hf space=hf train.teacher=pretrained` (sandwich: the largest, the
   smallest and 2 random archs per step, every one distilled from the frozen pretrained model), and
3. **plain fine-tuning** of the same model with the same command, restricted to the largest arch on the labels
   alone (`train.num_random=0 train.smallest_fraction=0.0`, no teacher, and a space of that one arch: with the
   sandwich sampler, `smallest_fraction=0` alone would put a random arch in the smallest's place);
   both in Lightning `bf16-mixed` (float32 weights and optimizer, bf16 autocast; `--precision` to change) with
   `train.grad_checkpointing` (`--grad-checkpointing`), batch 8 × 2,048 tokens, on synthetic token sequences
   (`task=random_tokens`, supernet/data/synthetic.py: a seeded random bigram process of the model's vocabulary,
   for cost benchmarks only). Every step is timed (CUDA synchronised) by a callback added to nas-train's own code
   path; the first steps are warm-up and excluded. Reported: tokens/s, tokens/s per arch trained (elastic trains 4
   archs a step, plus a teacher forward), the archs' MACs against the largest's, and peak GPU memory
   (`torch.cuda.max_memory_allocated` over the timed steps);
4. measures 20 archs of the elastic supernet with `nas-measure accuracy_device=cuda` (loss on the GPU, latency of the
   deployment graph in ONNX Runtime on the CPU: batch 1 × 64 tokens, 8 threads), fits the predictors (`nas-fit`),
   searches loss × latency (`nas-search`, 4 archs of its own) and exports the knee (`nas-export`).

Every stage is the project's CLI run as `python -m <module>` (the machine may have no console scripts); each
prints timestamped progress, and each stage's outputs are copied as soon as it ends, so a partial run still
reports what it did. Results (`gpu_scale.json`, `gpu_scale.txt`, the small tables, one log per stage) go to `$OUT`
when set, else to `bench/results/gpu_scale/` (`--out` wins). The large files (model, checkpoints, supernet) stay in
`--work` (a temporary folder by default).

`--tiny`: the same pipeline on the CPU with a 2-layer Llama (seconds per stage; tests/test_gpu_scale.py runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Sizes: `full` for one H100/H200 (about 6-8 minutes in all), `tiny` for a CPU (tests).
SIZES: dict[str, dict[str, Any]] = {
    "full": {
        "llama": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                      tie_word_embeddings=True, rope_theta=10000.0, rms_norm_eps=1e-5),
        "batch": 8, "block": 2048, "warmup_steps": 3, "steps": 12,
        "trainer": "gpu", "precision": "bf16-mixed", "accuracy_device": "cuda",
        "n_archs": 20, "measure_block": 64, "val_subset": 32, "threads": 8, "repeats": 5,
        "search_budget": 7, "budget_s": 470,
    },
    "tiny": {
        "llama": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True, rope_theta=10000.0, rms_norm_eps=1e-5),
        "batch": 4, "block": 32, "warmup_steps": 1, "steps": 2,
        "trainer": "cpu", "precision": "bf16-mixed", "accuracy_device": "cpu",
        "n_archs": 20, "measure_block": 16, "val_subset": 8, "threads": 1, "repeats": 3,
        "search_budget": 7, "budget_s": 900,
    },
}  # fmt: skip
# Seconds kept for the stages after each one, so a slow stage cannot take the time the later ones need.
RESERVE_S = {"model": 360, "train_elastic": 300, "train_plain": 240, "measure": 120, "fit": 100, "search": 60,
             "export": 0}  # fmt: skip
STAGES = tuple(RESERVE_S)
# What the stages import (the GPU machine's Python may lack some: bench/gpu_scale.sh's header says how to add them).
NEEDED = ("torch", "lightning", "transformers", "safetensors", "onnx", "onnxruntime", "sklearn", "scipy", "matplotlib",
          "hydra", "omegaconf", "pymoo", "optuna", "yaml", "tqdm")  # fmt: skip


def stamp(t0: float) -> str:
    return f"[{time.strftime('%H:%M:%S')} +{time.monotonic() - t0:6.1f}s]"


# ---- the training worker: nas-train in this process, with one timing callback -------------------------------------


def step_timer(path: Path, warmup: int):
    """A Lightning callback timing every training step (CUDA synchronised), writing a summary to `path` at the end:
    the steps after `warmup`, their tokens, the archs each trained and their MACs, and peak memory."""
    import lightning as L
    import torch

    from supernet.costs import arch_costs

    def sync() -> None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()

    class StepTimer(L.Callback):
        def __init__(self) -> None:
            self.steps: list[dict[str, Any]] = []
            self.peak_warmup_bytes = 0
            self.t0 = 0.0

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            sync()
            if len(self.steps) == warmup and torch.cuda.is_available():
                self.peak_warmup_bytes = torch.cuda.max_memory_allocated()
                torch.cuda.reset_peak_memory_stats()  # the timed steps' own peak
            picks = module.sampler.picks(trainer.global_step)
            largest = arch_costs(module.space.largest(), module.model_config).macs
            self.current = {"archs": [p.arch.key() for p in picks],
                            "macs_vs_largest": sum(arch_costs(p.arch, module.model_config).macs for p in picks)
                            / largest}  # fmt: skip
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            sync()
            seconds = time.perf_counter() - self.t0
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            step = {**self.current, "s": seconds, "tokens": int(batch[0].numel()), "loss": float(loss),
                    "warmup": len(self.steps) < warmup}  # fmt: skip
            self.steps.append(step)
            print(f"gpu_scale: step {len(self.steps)}{' (warm-up)' if step['warmup'] else ''}: {seconds:.3f} s, "
                  f"{step['tokens'] / seconds:,.0f} tokens/s, {len(step['archs'])} archs "
                  f"({step['macs_vs_largest']:.2f}x the largest's MACs), loss {step['loss']:.3f}")  # fmt: skip

        def on_train_end(self, trainer, module) -> None:
            path.write_text(json.dumps(self.summary(module), indent=1))

        def summary(self, module) -> dict[str, Any]:
            timed = [s for s in self.steps if not s["warmup"]]
            secs, tokens = sum(s["s"] for s in timed), sum(s["tokens"] for s in timed)
            archs = sum(len(s["archs"]) for s in timed)
            largest_eq = sum(s["tokens"] * s["macs_vs_largest"] for s in timed)
            out: dict[str, Any] = {
                "warmup_steps": warmup,
                "timed_steps": len(timed),
                "step_s_mean": secs / max(len(timed), 1),
                "tokens_per_step": timed[0]["tokens"] if timed else None,
                "archs_per_step": archs / max(len(timed), 1),
                "macs_vs_largest_per_step": sum(s["macs_vs_largest"] for s in timed) / max(len(timed), 1),
                "tokens_per_s": tokens / secs if secs else None,
                "arch_tokens_per_s": sum(s["tokens"] * len(s["archs"]) for s in timed) / secs if secs else None,
                "largest_equivalent_tokens_per_s": largest_eq / secs if secs else None,
                "first_loss": self.steps[0]["loss"] if self.steps else None,
                "last_loss": self.steps[-1]["loss"] if self.steps else None,
                "params": sum(p.numel() for p in module.net.parameters()),
                "precision": str(module.trainer.precision),
                "grad_checkpointing": bool(module.cfg["grad_checkpointing"]),
                "teacher": module.cfg["teacher"],
                "steps": self.steps,
                "torch": torch.__version__,
                "process_peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            }
            if torch.cuda.is_available():
                out.update(device=torch.cuda.get_device_name(), peak_gpu_gb=torch.cuda.max_memory_allocated() / 2**30,
                           peak_gpu_reserved_gb=torch.cuda.max_memory_reserved() / 2**30,
                           peak_gpu_warmup_gb=self.peak_warmup_bytes / 2**30)  # fmt: skip
            else:
                out["device"] = "cpu"
            return out

    return StepTimer()


def train_worker(timing: Path, warmup: int, overrides: list[str]) -> None:
    """`nas-train <overrides>` in this process, nas-train's own code path with the step timer added to the
    callbacks it passes to Lightning."""
    import supernet.train_cli as train_cli

    timer = step_timer(timing, warmup)
    extra = train_cli.weight_averaging
    train_cli.weight_averaging = lambda cfg: [*extra(cfg), timer]
    sys.argv = ["nas-train", *overrides]
    train_cli.main()


# ---- the pipeline ---------------------------------------------------------------------------------------------------


class Pipeline:
    """Runs the stages as processes with a deadline, streams their output with timestamps, collects results."""

    def __init__(self, size: dict[str, Any], args: argparse.Namespace) -> None:
        self.size, self.args = size, args
        self.out, self.work = Path(args.out), Path(args.work)
        self.t0 = time.monotonic()
        self.deadline = self.t0 + args.budget_s
        self.stages: dict[str, dict[str, Any]] = {}
        self.results: dict[str, Any] = {}
        self.run_dir = self.work / "elastic"

    def log(self, message: str) -> None:
        print(f"{stamp(self.t0)} {message}", flush=True)

    # ---- processes

    def run(self, name: str, argv: list[str]) -> bool:
        """Run one stage's process until it ends or its share of the time runs out; True when it succeeded."""
        timeout = self.deadline - time.monotonic() - RESERVE_S[name]
        if timeout < 5:
            self.log(f"{name}: skipped, the time budget is spent")
            self.stages[name] = {"skipped": "time budget spent"}
            return False
        self.log(f"{name}: {' '.join(argv)}  (at most {timeout:.0f} s)")
        log_path = self.out / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}  # fmt: skip
        start = time.monotonic()
        with log_path.open("w") as log:
            proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
            reader = threading.Thread(target=self._stream, args=(name, proc.stdout, log), daemon=True)
            reader.start()
            timed_out = False
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)  # the stage's process group: it and anything it started
                rc = proc.wait()
            reader.join(timeout=10)
        wall = time.monotonic() - start
        self.stages[name] = {"rc": rc, "wall_s": round(wall, 1), "timed_out": timed_out}
        self.log(f"{name}: {'timed out' if timed_out else f'exit {rc}'} after {wall:.1f} s")
        return rc == 0 and not timed_out

    def _stream(self, name: str, pipe, log) -> None:
        """Each line (or progress-bar update) of the stage's output, timestamped, to the console and its log."""
        pending = b""
        for chunk in iter(lambda: pipe.read1(1 << 16), b""):
            pending += chunk
            *lines, pending = re.split(rb"[\r\n]", pending)
            for line in lines:
                text = line.decode(errors="replace").rstrip()
                if text:
                    print(f"{stamp(self.t0)} {name} | {text}", flush=True)
                    log.write(text + "\n")
        if pending.strip():
            log.write(pending.decode(errors="replace") + "\n")

    # ---- stages

    def model(self) -> bool:
        """The Hugging Face Llama of the chosen shape, seeded random weights, saved with save_pretrained."""
        start = time.monotonic()
        import torch
        import transformers

        torch.manual_seed(0)
        config = transformers.LlamaConfig(**self.size["llama"], architectures=["LlamaForCausalLM"])
        hf = transformers.LlamaForCausalLM(config).eval()
        params = sum(p.numel() for p in hf.parameters())
        hf.save_pretrained(str(self.work / "hf"))
        del hf
        self.stages["model"] = {"rc": 0, "wall_s": round(time.monotonic() - start, 1), "timed_out": False}
        self.results["model"] = {"family": "LlamaForCausalLM", "config": self.size["llama"], "params": params}
        self.log(f"model: LlamaForCausalLM {params / 1e6:.1f} M parameters (random weights) in {self.work / 'hf'}")
        return True

    def train_overrides(self, elastic: bool) -> list[str]:
        s, a = self.size, self.args
        steps = s["warmup_steps"] + s["steps"]
        common = [
            "model=hf", "space=hf", "task=random_tokens", f"model.pretrained={self.work / 'hf'}",
            f"model.block_size={s['block']}", "model.importance=weight", "model.importance_batches=1",
            f"data.vocab_size={s['llama']['vocab_size']}", f"data.batch_size={s['batch']}",
            f"data.n_train={s['batch'] * steps}", f"data.n_val={s['val_subset']}", f"data.n_test={s['val_subset']}",
            f"data.eval_batch_size={s['batch']}", f"data.val_subset_size={s['val_subset']}",
            "train.lr=3e-4", "train.warmup_fraction=0.0", "train.reference_archs=0",
            f"train.grad_checkpointing={str(a.grad_checkpointing).lower()}",
            f"trainer={s['trainer']}", f"trainer.precision={a.precision}", "trainer.max_epochs=1",
            f"trainer.max_steps={steps}", "trainer.limit_val_batches=1", "trainer.log_every_n_steps=1",
            "trainer.enable_progress_bar=false", "resume=false",
        ]  # fmt: skip
        if elastic:  # the sandwich: largest, smallest, 2 random; every arch distils from the frozen pretrained model
            return [*common, "train.teacher=pretrained", "train.num_random=2", f"hydra.run.dir={self.run_dir}"]
        # plain fine-tuning: the largest arch alone (a space of that one arch), on the labels, no teacher
        return [*common, "train.teacher=largest", "train.num_random=0", "train.smallest_fraction=0.0",
                "space.depth_min_fraction=1.0", "space.embed_fraction=[1.0]", "space.heads_fraction=[1.0]",
                "space.ffn_fraction=[1.0]", "space.w_bits=[32]", f"hydra.run.dir={self.work / 'plain'}"]  # fmt: skip

    def train(self, elastic: bool) -> bool:
        name = "train_elastic" if elastic else "train_plain"
        run_dir = self.run_dir if elastic else self.work / "plain"
        shutil.rmtree(run_dir, ignore_errors=True)
        timing = self.work / f"{name}.json"
        timing.unlink(missing_ok=True)
        argv = [str(Path(__file__)), "--train-worker", str(timing), "--warmup-steps", str(self.size["warmup_steps"]),
                "--", *self.train_overrides(elastic)]  # fmt: skip
        ok = self.run(name, argv)
        if timing.is_file():
            result = json.loads(timing.read_text())
            self.results[name] = result
            self.copy(timing, f"{name}.json")
            self.copy(run_dir / "train_summary.json", f"{name}_summary.json")
            self.log(f"{name}: {result['step_s_mean']:.3f} s/step over {result['timed_steps']} steps, "
                     f"{result['tokens_per_s']:,.0f} tokens/s, {result['arch_tokens_per_s']:,.0f} arch-tokens/s, peak "
                     f"{result.get('peak_gpu_gb', result['process_peak_rss_gb']):.2f} GB")  # fmt: skip
        return ok and (run_dir / "supernet.safetensors").is_file()

    def measure_overrides(self) -> list[str]:
        s = self.size
        return [f"run={self.run_dir}", f"latency.threads={s['threads']}", f"latency.repeats={s['repeats']}",
                "latency.warmup=1", f"data_overrides.val_subset_size={s['val_subset']}",
                f"+data_overrides.block_size={s['measure_block']}"]  # fmt: skip

    def holdout_fraction(self) -> float:
        """The smallest fraction that holds out at least 5 of the measured archs (nas-fit's audit needs 5) and leaves
        at least 10 to fit on: the split is a hash of each arch's key, so it is known before measuring."""
        from predictors.measure import candidate_archs
        from predictors.measure_cli import split_of
        from supernet.artifact import read_metadata

        archs = candidate_archs(read_metadata(self.run_dir)["space"], self.size["n_archs"], seed=0)
        for f in (0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5):
            held = sum(split_of(a, f, 0) == "holdout" for a in archs)
            if held >= 5 and len(archs) - held >= 10:
                return f
        return 0.5

    def measure(self) -> bool:
        argv = ["-m", "predictors.measure_cli", *self.measure_overrides(), f"n_archs={self.size['n_archs']}",
                f"accuracy_device={self.args.accuracy_device}",
                f"holdout_fraction={self.holdout_fraction()}"]  # fmt: skip
        ok = self.run("measure", argv)
        table = self.run_dir / "predictors" / "measurements.csv"
        self.copy(table, "measurements.csv")
        self.copy(table.with_name("measurements.json"), "measurements.json")
        if table.is_file():
            self.results["measure"] = measure_summary(table)
        # Rows are flushed one by one: a measurement cut short by the time budget still feeds the stages after it.
        return ok or (self.results.get("measure") or {}).get("archs", 0) >= 10

    def fit(self) -> bool:
        ok = self.run("fit", ["-m", "predictors.fit_cli", f"run={self.run_dir}", "fit.k_folds=3"])
        report = self.run_dir / "predictors" / "report.json"
        self.copy(report, "fit_report.json")
        if report.is_file():
            self.results["fit"] = fit_summary(json.loads(report.read_text()))
        return ok

    def search(self) -> bool:
        budget = self.size["search_budget"]
        argv = ["-m", "search.cli", *self.measure_overrides(), f"accuracy_device={self.args.accuracy_device}",
                "search.objectives=[loss,latency]", f"search.budget={budget}", "search.initial=7",
                f"search.batch_size={budget}", "search.n_candidates=2000", "search.pop_size=20",
                "search.predictor.k_folds=3"]  # fmt: skip
        ok = self.run("search", argv)
        out = self.run_dir / "search"
        for name in ("search.json", "pareto.csv", "evaluations.csv", "pareto.png"):
            self.copy(out / name, f"search_{name}")
        if (out / "search.json").is_file():
            self.results["search"] = search_summary(json.loads((out / "search.json").read_text()))
        return ok

    def export(self) -> bool:
        ok = self.run("export", ["-m", "export.cli", *self.measure_overrides(), "name=knee", "overwrite=true"])
        sub = self.run_dir / "subnets" / "knee"
        self.copy(sub / "report.md", "export_report.md")
        self.copy(sub / "arch.yaml", "export_arch.yaml")
        if sub.is_dir():
            self.results["export"] = export_summary(sub)
        return ok

    def copy(self, src: Path, name: str) -> None:
        if src.is_file():
            shutil.copyfile(src, self.out / name)

    # ---- the whole run

    def preflight(self) -> None:
        """One line for what would make stages fail later: a missing library, or no GPU for a GPU run."""
        import importlib.util

        missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
        if missing:
            self.log(f"missing Python modules {missing}: the stages that import them will fail (install them, e.g. "
                     "from wheels: pip install --no-index --no-deps --target /tmp/site <wheels>; "
                     "PYTHONPATH=/tmp/site)")  # fmt: skip
        import torch

        wants_gpu = self.size["trainer"] == "gpu" or self.args.accuracy_device.startswith("cuda")
        if wants_gpu and not torch.cuda.is_available():
            raise SystemExit("gpu_scale: error: no CUDA device here; run bench/gpu_scale.sh --tiny for the CPU version")
        if torch.cuda.is_available():
            self.log(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}")

    def main(self) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        a = self.args
        self.log(f"gpu_scale ({'tiny' if a.tiny else 'full'}): results in {self.out}, large files in {self.work}; "
                 f"budget {a.budget_s:.0f} s")  # fmt: skip
        self.preflight()
        steps = [self.model, lambda: self.train(True), lambda: self.train(False), self.measure, self.fit, self.search,
                 self.export]  # fmt: skip
        needs = {"train_elastic": "model", "train_plain": "model", "measure": "train_elastic", "fit": "measure",
                 "search": "measure", "export": "search"}  # fmt: skip
        ok: dict[str, bool] = {}
        for name, step in zip(STAGES, steps, strict=True):
            if name in needs and not ok.get(needs[name]):
                self.stages[name] = {"skipped": f"{needs[name]} did not succeed"}
                self.log(f"{name}: skipped ({needs[name]} did not succeed)")
                ok[name] = False
            else:
                try:
                    ok[name] = step()
                except Exception as e:  # one stage's failure still leaves the report of the others
                    self.stages[name] = {"error": f"{type(e).__name__}: {e}"}
                    self.log(f"{name}: failed: {type(e).__name__}: {e}")
                    ok[name] = False
            self.write()
        return self.write()

    def write(self) -> dict[str, Any]:
        """gpu_scale.json and gpu_scale.txt from what has run so far."""
        doc = {
            "size": "tiny" if self.args.tiny else "full",
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "settings": {
                **{k: v for k, v in self.size.items() if k != "llama"},
                "precision": self.args.precision,
                "grad_checkpointing": self.args.grad_checkpointing,
                "accuracy_device": self.args.accuracy_device,
            },
            "wall_s": round(time.monotonic() - self.t0, 1),
            "stages": self.stages,
            "ratios": ratios(self.results),
            **self.results,
        }
        (self.out / "gpu_scale.json").write_text(json.dumps(doc, indent=1, default=str))
        (self.out / "gpu_scale.txt").write_text(summary_text(doc))
        return doc


# ---- summaries ------------------------------------------------------------------------------------------------------


def _floats(rows: list[dict[str, str]], column: str) -> list[float]:
    return [float(r[column]) for r in rows if r.get(column) not in (None, "")]


def measure_summary(table: Path) -> dict[str, Any]:
    import csv

    rows = list(csv.DictReader(table.open()))
    meta_path = table.with_name("measurements.json")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    seconds = sorted(_floats(rows, "seconds"))
    loss, lat = _floats(rows, "loss"), _floats(rows, "latency_ms")
    return {
        "archs": len(rows),
        "seconds_per_arch_median": seconds[len(seconds) // 2] if seconds else None,
        "seconds_total": sum(seconds),
        "loss_range": [min(loss), max(loss)] if loss else None,
        "latency_ms_range": [min(lat), max(lat)] if lat else None,
        "holdout": sum(r["split"] == "holdout" for r in rows),
        "accuracy_device": meta.get("accuracy_device"),
        "accuracy_target": meta.get("accuracy_target"),
        "latency_target": meta.get("latency_target"),
        "latency": meta.get("latency"),
        "data_overrides": meta.get("data_overrides"),
    }


def fit_summary(report: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for objective, entry in report.get("objectives", {}).items():
        out[objective] = {"chosen": entry.get("estimator"), "holdout_kendall_tau": entry.get("holdout_kendall_tau"),
                          "holdout_mape": entry.get("holdout_mape"),
                          "label_split_half_tau": entry.get("label_split_half_tau")}  # fmt: skip
    return out


def search_summary(state: dict[str, Any]) -> dict[str, Any]:
    final = state.get("final", {})
    return {"evaluations": final.get("n_evaluations"), "imported": state.get("imported"),
            "front_size": final.get("front_size"), "hypervolume": final.get("hypervolume"),
            "iterations": len(state.get("iterations", []))}  # fmt: skip


def export_summary(sub: Path) -> dict[str, Any]:
    import yaml

    doc = yaml.safe_load((sub / "arch.yaml").read_text()) if (sub / "arch.yaml").is_file() else None
    doc = doc if isinstance(doc, dict) else {}
    arch, lat, v = doc.get("arch") or {}, doc.get("latency") or {}, doc.get("verification") or {}
    return {
        "key": doc.get("key"),
        "depth": arch.get("depth"),
        "embed_dim": arch.get("embed_dim"),
        "measured_at_export": (doc.get("metrics") or {}).get("measured_at_export"),
        "runtime_ms": lat.get("runtime_ms"),
        "float_module_ms": lat.get("float_module_ms"),
        "verification_passed": v.get("passed"),
        "max_abs_diff": {k: v[k]["max_abs_diff"] for k in ("torch", "onnx") if isinstance(v.get(k), dict)},
        "hugging_face_written": (doc.get("hugging_face") or {}).get("written"),
        "files_bytes": {str(p.relative_to(sub)): p.stat().st_size for p in sorted(sub.rglob("*")) if p.is_file()},
    }


def ratios(results: dict[str, Any]) -> dict[str, float]:
    """Elastic ÷ plain: throughput per arch trained (the headline), per data token, per largest-arch MAC, and peak
    memory."""
    e, p = results.get("train_elastic"), results.get("train_plain")
    if not e or not p or not p.get("tokens_per_s") or not e.get("tokens_per_s"):
        return {}
    out = {
        "arch_tokens_per_s": e["arch_tokens_per_s"] / p["tokens_per_s"],
        "tokens_per_s": e["tokens_per_s"] / p["tokens_per_s"],
        "largest_equivalent_tokens_per_s": e["largest_equivalent_tokens_per_s"] / p["tokens_per_s"],
    }
    if e.get("peak_gpu_gb") and p.get("peak_gpu_gb"):
        out["peak_gpu_memory"] = e["peak_gpu_gb"] / p["peak_gpu_gb"]
    return out


def summary_text(doc: dict[str, Any]) -> str:
    """The short human summary (gpu_scale.txt)."""
    lines = [f"gpu_scale ({doc['size']}), {doc['date']}, {doc['wall_s']:.0f} s in all"]
    m = doc.get("model")
    s = doc["settings"]
    if m:
        c = m["config"]
        lines.append(f"model: Llama, {m['params'] / 1e6:.1f} M parameters (random weights; vocab {c['vocab_size']}, "
                     f"width {c['hidden_size']}, {c['num_hidden_layers']} layers, {c['num_attention_heads']}/"
                     f"{c['num_key_value_heads']} heads); synthetic tokens, batch {s['batch']} x {s['block']}; "
                     f"{s['precision']}, grad checkpointing {s['grad_checkpointing']}")  # fmt: skip
    runs = {"train_elastic": "elastic fine-tuning (largest, smallest, 2 random; frozen pretrained teacher)",
            "train_plain": "plain fine-tuning (largest arch only, labels only)"}  # fmt: skip
    for name, what in runs.items():
        r = doc.get(name)
        if not r:
            continue
        peak = f"peak GPU memory {r['peak_gpu_gb']:.2f} GB" if "peak_gpu_gb" in r else (
            f"peak process memory {r['process_peak_rss_gb']:.2f} GB")  # fmt: skip
        lines.append(f"{what} on {r['device']}: {r['step_s_mean']:.3f} s/step ({r['timed_steps']} steps timed, "
                     f"{r['warmup_steps']} warm-up excluded), {r['tokens_per_s']:,.0f} tokens/s, "
                     f"{r['archs_per_step']:.0f} archs/step = {r['arch_tokens_per_s']:,.0f} arch-tokens/s "
                     f"({r['macs_vs_largest_per_step']:.2f}x the largest arch's MACs per step); {peak}; loss "
                     f"{r['first_loss']:.3f} -> {r['last_loss']:.3f}")  # fmt: skip
    r = doc.get("ratios")
    if r:
        mem = f", peak GPU memory {r['peak_gpu_memory']:.2f}x" if "peak_gpu_memory" in r else ""
        lines.append(f"elastic / plain: tokens/s per arch trained {r['arch_tokens_per_s']:.2f}x; data tokens/s "
                     f"{r['tokens_per_s']:.2f}x; largest-arch-equivalent tokens/s (by MACs) "
                     f"{r['largest_equivalent_tokens_per_s']:.2f}x{mem}")  # fmt: skip
    ms = doc.get("measure")
    if ms:
        acc, lt = ms.get("accuracy_target") or {}, ms.get("latency_target") or {}
        lat_range = ms["latency_ms_range"] or [float("nan")] * 2
        lines.append(f"measure: {ms['archs']} archs, {ms['seconds_per_arch_median']:.2f} s per arch (median); loss on "
                     f"{acc.get('device')} ({acc.get('name')}), latency in {lt.get('runtime')} on {lt.get('device')} "
                     f"({s['threads']} threads, batch 1 x {s['measure_block']} tokens): "
                     f"{lat_range[0]:.2f}-{lat_range[1]:.2f} ms")  # fmt: skip
    for objective, f in (doc.get("fit") or {}).items():
        lines.append(f"fit {objective}: {f['chosen']}, held-out Kendall tau {f['holdout_kendall_tau']:.3f}, "
                     f"MAPE {100 * f['holdout_mape']:.2f} %")  # fmt: skip
    sr = doc.get("search")
    if sr:
        lines.append(f"search: {sr['evaluations']} evaluations ({sr['imported']} reused from nas-measure), front "
                     f"{sr['front_size']} archs, HV {sr['hypervolume']:.4f}")  # fmt: skip
    ex = doc.get("export")
    if ex:
        files = doc["export"]["files_bytes"]
        lines.append(f"export (knee): {ex['key']}, {ex['measured_at_export']}; model.onnx {ex['runtime_ms']:.3f} ms in "
                     f"ONNX Runtime ({ex['float_module_ms']:.3f} ms the PyTorch module); verification passed "
                     f"{ex['verification_passed']} (max |d| {ex['max_abs_diff']}); Hugging Face folder written "
                     f"{ex['hugging_face_written']}; model.safetensors {files.get('model.safetensors', 0):,} bytes, "
                     f"model.onnx {files.get('model.onnx', 0):,} bytes")  # fmt: skip
    lines.append("stages: " + ", ".join(
        f"{k} " + (f"{v['wall_s']:.0f} s" + (" (timed out)" if v.get("timed_out") else "")
                   + (f" (exit {v['rc']})" if v.get("rc") else "") if "wall_s" in v
                   else f"not run ({v.get('skipped') or v.get('error')})")
        for k, v in doc["stages"].items()))  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="a 2-layer Llama on the CPU (seconds per stage)")
    ap.add_argument("--out", help="results folder (default: $OUT, else bench/results/gpu_scale[_tiny])")
    ap.add_argument("--work", help="folder for the large files (default: a new temporary folder)")
    ap.add_argument("--budget-s", type=float, help="wall-clock budget of all stages (full: 470 s)")
    ap.add_argument("--precision", help="Lightning precision of both trainings (default bf16-mixed)")
    ap.add_argument("--grad-checkpointing", choices=["true", "false"], default="true")
    ap.add_argument("--accuracy-device", help="nas-measure's accuracy_device (full: cuda, tiny: cpu)")
    ap.add_argument("--keep-work", action="store_true", help="keep a temporary --work folder (deleted by default)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="change one size setting, e.g. --set batch=4 --set steps=20 (keys: SIZES)")  # fmt: skip
    ap.add_argument("--train-worker", metavar="TIMING_JSON", help=argparse.SUPPRESS)
    ap.add_argument("--warmup-steps", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.train_worker:
        train_worker(Path(args.train_worker), args.warmup_steps, args.overrides)
        return
    size = dict(SIZES["tiny" if args.tiny else "full"])
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in size or key == "llama":
            keys = sorted(set(size) - {"llama"})
            raise SystemExit(f"gpu_scale: error: --set {item}: unknown key {key!r}; one of {keys}")
        size[key] = type(size[key])(value)
    default_out = ROOT / "bench" / "results" / ("gpu_scale_tiny" if args.tiny else "gpu_scale")
    args.out = args.out or os.environ.get("OUT") or str(default_out)
    temporary = not args.work
    args.work = args.work or tempfile.mkdtemp(prefix="gpu_scale_")
    args.budget_s = args.budget_s or size["budget_s"]
    args.precision = args.precision or size["precision"]
    args.grad_checkpointing = args.grad_checkpointing == "true"
    args.accuracy_device = args.accuracy_device or size["accuracy_device"]
    try:
        doc = Pipeline(size, args).main()
    finally:
        if temporary and not args.keep_work:
            shutil.rmtree(args.work, ignore_errors=True)  # models and checkpoints: gigabytes at the full size
    print(summary_text(doc), end="", flush=True)
    failed = [k for k, v in doc["stages"].items() if v.get("rc", 1) != 0 or v.get("timed_out")]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
