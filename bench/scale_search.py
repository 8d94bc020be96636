"""A shared optuna search of a SmolLM-135M-shaped Llama by two workers on PostgreSQL: the budget completes with no
arch measured twice, at a depth (30 layers) whose arch keys did not fit the first claims table.

    python bench/scale_search.py [--budget 16] [--work results/scale_search]
    python bench/scale_search.py --smoke [--out DIR/name]   # a tiny Llama, budget 8, a temporary folder (tests)

Steps: the model (random weights from SmolLM-135M's config, `bench/scale.py`'s) is imported and fine-tuned for two
steps with `nas-train model=hf space=hf task=random_tokens` (synthetic tokens: a cost run, not a quality one), then
two `nas-search search.backend=optuna` worker processes share one study on a throwaway PostgreSQL server
(tests/pgserver.py), each measuring loss on 8 sequences of 64 tokens and ONNX Runtime latency. Checks and prints:
trials measured, distinct archs, claims, key lengths. Writes bench/results/scale_search.{json,txt} (with --smoke:
only where --out says, if it does).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from tests.pgserver import PostgresServer  # noqa: E402

MODEL = "smollm_135m"  # bench/scale.py's
SEQ = 64  # tokens per sequence, in training and in the measurements
MEASURE = ["latency.threads=1", "latency.repeats=5", "latency.warmup=1", "data_overrides.val_subset_size=8"]
# --smoke: a Llama of the same form (GQA, tied embeddings) small enough to import, train and search in seconds; wider
# than bench/scale.py's TINY, whose derived space holds too few distinct archs for a budget of 8
TINY = {
    "cls": "LlamaForCausalLM",
    "config": "LlamaConfig",
    "kwargs": dict(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True, rope_theta=10000.0,
                   rms_norm_eps=1e-5),
}  # fmt: skip
SMOKE_SEQ, SMOKE_BUDGET = 16, 8
DESCRIPTION = "Llama of SmolLM-135M's shape (30 layers, width 576, GQA 9/3, FFN 1536), random weights"


def describe_tiny(spec: dict) -> str:
    kw = spec["kwargs"]
    shape = f"{kw['num_hidden_layers']} layers, width {kw['hidden_size']}, GQA {kw['num_attention_heads']}/"
    return f"tiny Llama ({shape}{kw['num_key_value_heads']}, FFN {kw['intermediate_size']}), random weights"


def train(work: Path, name: str = MODEL, spec: dict | None = None, seq: int = SEQ, in_process: bool = False) -> Path:
    """The model (`name`'s config in bench/scale.py, or `spec`), imported and fine-tuned for two steps (skipped when
    the run exists), by nas-train in a process of its own (or, `in_process`, in this one)."""
    import scale

    spec = spec or scale.MODELS[name]
    run = work / "run"
    if (run / "supernet.safetensors").is_file():
        return run
    hf = work / "hf"
    if not (hf / "config.json").is_file():
        scale.stage_hf(name, spec, work.parent / work.name)
        (work / name / "hf").rename(hf)
    vocab = spec["kwargs"]["vocab_size"]
    args = ["model=hf", "space=hf", "task=random_tokens", f"model.pretrained={hf}", f"model.block_size={seq}",
            "model.importance=weight", "model.importance_batches=1", f"data.vocab_size={vocab}", "data.batch_size=2",
            "data.n_train=4", "data.n_val=8", "data.n_test=8", "data.eval_batch_size=8", "data.val_subset_size=8",
            "train.teacher=pretrained", "train.reference_archs=0", "train.grad_checkpointing=true",
            "trainer.max_steps=2", "trainer.max_epochs=1", "trainer.limit_val_batches=1",
            "trainer.enable_progress_bar=false"]  # fmt: skip
    if in_process:  # the smoke: nas-train's own function, without a second interpreter start
        from hydra import compose, initialize_config_dir

        from supernet.train_cli import CONF_DIR
        from supernet.train_cli import train as nas_train

        with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
            nas_train(compose(config_name="train", overrides=args), run)
        return run
    subprocess.run([sys.executable, "-m", "supernet.train_cli", *args, f"hydra.run.dir={run}"], cwd=ROOT, check=True)
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=int, default=16)
    ap.add_argument("--work", default=None, help="default results/scale_search (with --smoke: a temporary folder)")
    ap.add_argument("--out", default=None, help="results path without suffix (default bench/results/scale_search; "
                    "with --smoke, none)")  # fmt: skip
    ap.add_argument("--smoke", action="store_true", help="a tiny Llama, budget 8, in a temporary folder: tests")
    args = ap.parse_args()
    if args.smoke:
        with tempfile.TemporaryDirectory(prefix="scale_search_smoke_") as tmp:
            args.budget, args.work = SMOKE_BUDGET, tmp
            search(args, "tiny", TINY, SMOKE_SEQ)
    else:
        args.work = args.work or str(ROOT / "results" / "scale_search")
        args.out = args.out or str(ROOT / "bench" / "results" / "scale_search")
        search(args, MODEL, None, SEQ)


def search(args: argparse.Namespace, name: str, spec: dict | None, seq: int) -> None:
    """Train (or reuse) the run in `args.work`, then the two workers' shared search; prints and writes the result."""
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    run = train(work, name, spec, seq, in_process=args.smoke)
    train_s = time.perf_counter() - t0
    import optuna
    import sqlalchemy as sa

    with PostgresServer() as server:
        url = server.create_database("smollm")
        out = work / "search"
        shutil.rmtree(out, ignore_errors=True)  # a new server each run: a new study
        cmd = [sys.executable, "-m", "search.cli", f"run={run}", f"out={out}", "search.backend=optuna",
               f"search.optuna.storage={url}", f"search.budget={args.budget}",
               f"search.initial={max(7, args.budget // 2)}", "search.objectives=[loss,latency]",
               *MEASURE, f"+data_overrides.block_size={seq}"]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        t0 = time.perf_counter()
        workers = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                   for _ in range(2)]  # fmt: skip
        logs = [w.communicate(timeout=3600)[0] for w in workers]
        search_s = time.perf_counter() - t0
        codes = [w.returncode for w in workers]
        if codes != [0, 0]:
            for i, log in enumerate(logs):
                print(f"--- worker {i} (exit {codes[i]}) ---\n{log[-2000:]}")
            raise SystemExit("a worker failed: see its output above")
        summaries = optuna.get_all_study_summaries(url)
        study = optuna.load_study(study_name=summaries[0].study_name, storage=url)
        done = [t for t in study.trials if "row" in t.user_attrs]
        keys = [t.user_attrs["key"] for t in done]
        with sa.create_engine(url).connect() as conn:
            claims = conn.execute(sa.text("select count(*), max(length(arch_key)) from nas_arch_claims_v2")).one()
    result = {
        "model": DESCRIPTION if spec is None else describe_tiny(spec),
        "budget": args.budget, "workers": 2, "exit_codes": codes, "measured_trials": len(done),
        "distinct_archs": len(set(keys)), "claims": claims[0], "longest_key": max(map(len, keys)),
        "longest_claimed_key": claims[1], "train_s": round(train_s, 1), "search_s": round(search_s, 1),
        "cpu": os.popen("lscpu | grep 'Model name'").read().split(":")[-1].strip(),
        "date": time.strftime("%Y-%m-%d"),
    }  # fmt: skip
    text = "\n".join(f"{k}: {v}" for k, v in result.items())
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(result, indent=1))
        out.with_suffix(".txt").write_text(
            text + "\n\n" + "\n".join(f"--- worker {i} ---\n" + log[-3000:] for i, log in enumerate(logs))
        )
    if codes != [0, 0] or len(done) != args.budget or len(set(keys)) != len(keys):
        raise SystemExit("the shared search did not complete its budget with distinct archs: see above")


if __name__ == "__main__":
    main()
