"""bench/gpu_scale.sh (elastic vs plain fine-tuning at a real size, then measure, fit, search, export) in its tiny CPU
version, and the synthetic token data it trains on."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess

import pytest
import torch
from hydra import compose, initialize_config_dir

from supernet.data.synthetic import RandomTokensDataModule
from supernet.train_cli import CONF_DIR
from tests.conftest import ROOT


def test_random_tokens_follow_a_fixed_bigram_process() -> None:
    dm = RandomTokensDataModule(vocab_size=1000, block_size=24, n_train=16, n_val=4, n_test=4, branching=3,
                                batch_size=4, val_subset_size=3)  # fmt: skip
    dm.setup()
    assert dm.input_spec() == {"task": "lm", "vocab_size": 1000, "block_size": 24}
    assert (len(dm.train), len(dm.val), len(dm.test)) == (16, 4, 4)
    x, y = dm.train[0]
    assert x.shape == y.shape == (24,) and x.dtype == y.dtype == torch.int64
    assert (x[1:] == y[:-1]).all()  # the target is the input shifted by one
    succ = dm.successors()
    for split in (dm.train, dm.val, dm.test):  # every step goes to one of the token's fixed successors
        for i in range(len(split)):
            x, y = split[i]
            assert all(int(b) in succ[int(a)] for a, b in zip(x, y, strict=True))
    # Seeded: the same sequences every time; the splits are different draws of the same process.
    again = RandomTokensDataModule(vocab_size=1000, block_size=24, n_train=16, n_val=4, n_test=4, branching=3)
    again.setup()
    assert (again.train.tokens == dm.train.tokens).all() and not (dm.val.tokens == dm.train.tokens[:4]).all()
    other = RandomTokensDataModule(vocab_size=1000, block_size=24, n_train=16, branching=3, split_seed=1)
    assert not (other.successors() == succ).all()
    # Far below a uniform guess: a model that learns anything shows its loss fall.
    assert dm.bigram_entropy() < 0.5 * math.log(1000)
    assert dm.preprocessing()["bigram_entropy_nats"] == pytest.approx(dm.bigram_entropy(), abs=1e-4)
    assert [len(b[0]) for b in dm.val_subset_dataloader()] == [3]
    with pytest.raises(ValueError, match=r"data\.block_size=0 must be an integer >= 1"):
        RandomTokensDataModule(block_size=0)
    with pytest.raises(ValueError, match=r"data\.branching=9 exceeds data\.vocab_size=8"):
        RandomTokensDataModule(vocab_size=8, branching=9)


def test_task_random_tokens_composes_with_the_real_vocabulary() -> None:
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose(config_name="train", overrides=["task=random_tokens", "model.block_size=2048"])
    assert cfg.data._target_ == "supernet.data.synthetic.RandomTokensDataModule"
    assert cfg.data.vocab_size == 49152 and cfg.data.block_size == 2048 and cfg.model.task == "lm"


@pytest.mark.slow
def test_gpu_scale_tiny_runs_every_stage_on_the_cpu(tmp_path) -> None:
    """The whole script on a 2-layer Llama: both trainings timed, 20 archs measured, predictors fitted, a search and
    an export, every stage through the project's CLIs (about 40-50 s on 2 cores, most of it process starts)."""
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("OUT", None)
    res = subprocess.run([str(ROOT / "bench" / "gpu_scale.sh"), "--tiny", "--out", str(out), "--work", str(work)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    doc = json.loads((out / "gpu_scale.json").read_text())
    assert set(doc["stages"]) == {"model", "train_elastic", "train_plain", "measure", "fit", "search", "export"}
    assert all(s["rc"] == 0 and not s["timed_out"] for s in doc["stages"].values()), doc["stages"]
    elastic, plain = doc["train_elastic"], doc["train_plain"]
    # The sandwich trains 4 archs a step from the pretrained teacher; plain fine-tuning the largest alone.
    assert elastic["archs_per_step"] == 4 and elastic["teacher"] == "pretrained"
    assert plain["archs_per_step"] == 1 and plain["teacher"] == "largest" and plain["macs_vs_largest_per_step"] == 1
    for r in (elastic, plain):
        assert r["timed_steps"] == 2 and r["warmup_steps"] == 1 and len(r["steps"]) == 3 and r["tokens_per_step"] == 128
        assert r["precision"] == "bf16-mixed" and r["grad_checkpointing"] is True and r["tokens_per_s"] > 0
    assert doc["ratios"]["arch_tokens_per_s"] == pytest.approx(elastic["arch_tokens_per_s"] / plain["tokens_per_s"])
    m = doc["measure"]
    assert m["archs"] == 20 and m["holdout"] >= 5 and m["accuracy_device"] == "cpu"
    assert m["accuracy_target"]["device"] == "cpu" and m["latency_target"]["runtime"].startswith("onnxruntime")
    assert set(doc["fit"]) == {"loss", "latency_ms"}
    assert doc["search"]["imported"] == 20 and doc["search"]["evaluations"] == 27
    assert doc["export"]["verification_passed"] is True and doc["export"]["files_bytes"]["model.onnx"] > 0
    for name in ("gpu_scale.txt", "measurements.csv", "measurements.json", "fit_report.json", "search_search.json",
                 "export_arch.yaml", "train_elastic.json", "logs/train_elastic.log", "logs/export.log"):  # fmt: skip
        assert (out / name).is_file(), name
    text = (out / "gpu_scale.txt").read_text()
    assert "elastic / plain: tokens/s per arch trained" in text and "export (knee):" in text
    # Progress lines carry a timestamp and the stage, so a run cut short still tells how far it got.
    assert re.search(r"^\[\d\d:\d\d:\d\d \+ *\d+\.\d+s\] train_elastic \| gpu_scale: step 2: ", res.stdout, re.M)
