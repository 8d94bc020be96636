"""nas-train: config composition, a real (tiny) training run on digits, resume, DDP, and its error lines."""

from __future__ import annotations

import copy
import itertools
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from supernet import extract_subnet
from supernet.artifact import load_supernet, read_metadata
from supernet.sampling import build_sampler
from supernet.train_cli import CONF_DIR, check_checkpoint, train
from supernet.training import SupernetModule
from tests.conftest import ROOT, ce_by_hand, kl_by_hand, sandwich_module

FAST = [
    "experiment=smoke",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "trainer.enable_progress_bar=false",
    "data.val_subset_size=64",
]


def make_cfg(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return compose(config_name="train", overrides=list(overrides))


@pytest.mark.parametrize(
    ("experiment", "trainer", "train_group"),
    list(itertools.product(["null", "smoke", "demo", "lm_demo"], ["cpu", "gpu", "ddp"], ["sandwich", "uniform"])),
)
def test_every_config_composes(experiment, trainer, train_group) -> None:
    chosen = [] if experiment == "null" else [f"experiment={experiment}"]
    cfg = make_cfg(*chosen, f"trainer={trainer}", f"train={train_group}")
    t = cfg.trainer
    assert (t.accelerator, t.precision) == (("gpu", "bf16-mixed") if trainer == "gpu" else ("cpu", "32-true"))
    ddp = str(t.get("strategy", "auto")).startswith("ddp")
    assert (t.devices, ddp) == ((2, True) if trainer == "ddp" else (1, False))
    assert cfg.data._target_.startswith("supernet.data.")
    assert cfg.train.sampler == train_group
    assert set(cfg.space) >= {"depth", "embed_dim", "num_heads", "mlp_ratio", "w_bits", "a_bits"}
    if experiment == "lm_demo":
        assert cfg.model.task == "lm" and cfg.data.block_size == cfg.model.block_size


@pytest.mark.parametrize("task", ["fashion_mnist", "digits", "shakespeare"])
@pytest.mark.parametrize("space", ["default", "small"])
def test_task_and_space_groups_compose(task, space) -> None:
    cfg = make_cfg(f"task={task}", f"space={space}")
    assert cfg.model.task == ("lm" if task == "shakespeare" else "image")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("smoke")
    train(make_cfg(*FAST, "trainer.max_epochs=2"), run)
    return run


def test_run_directory_is_complete_and_self_describing(smoke_run) -> None:
    for name in (
        "supernet.safetensors",
        "metrics.csv",
        "training_curves.png",
        "train_summary.json",
        "checkpoints/last.ckpt",
        "checkpoints/best.ckpt",
    ):
        assert (smoke_run / name).is_file(), name
    summary = json.loads((smoke_run / "train_summary.json").read_text())
    assert summary["global_step"] == 6
    assert {"val/acc/largest", "val/acc/smallest", "val/acc/ref1", "val/acc/mean"} <= set(summary["val_metrics"])
    # The artifact alone rebuilds the supernet; its subnets extract exactly.
    net, info = load_supernet(smoke_run)
    assert info["global_step"] == 6
    x = torch.randn(4, 1, 8, 8)
    arch = net.space.sample(np.random.default_rng(0))
    with torch.no_grad():
        assert (net(x, arch) - extract_subnet(net, arch)(x)).abs().max() <= 1e-5
    header = (smoke_run / "metrics.csv").read_text().splitlines()[0]
    assert "val/acc/largest" in header and "train/loss" in header


def test_training_learns_on_digits(tmp_path) -> None:
    """A few epochs on digits: the largest arch clearly beats chance (10 %)."""
    run = tmp_path / "learn"
    summary = train(make_cfg(*FAST, "trainer.max_epochs=4", "trainer.limit_train_batches=1.0", "train.lr=3e-3"), run)
    assert summary["val_metrics"]["val/acc/largest"] > 40.0, summary["val_metrics"]


def test_resume_continues_at_the_same_step(tmp_path) -> None:
    run = tmp_path / "resume"
    first = train(make_cfg(*FAST), run)
    assert first["global_step"] == 3
    second = train(make_cfg(*FAST, "trainer.max_epochs=2"), run)
    assert second["resumed_from"].endswith("last.ckpt") and second["global_step"] == 6
    steps = [line.split(",")[0] for line in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert len(steps) == len(set(steps))  # merged log: one row per step across both attempts


def test_resume_with_more_epochs_keeps_the_schedule(tmp_path) -> None:
    """Extending a finished run (trainer.max_epochs up) continues its schedule at the final learning rate instead of
    rebuilding the cosine over the new total (which would jump the learning rate back up)."""
    run = tmp_path / "extend"
    every_step = "trainer.log_every_n_steps=1"
    train(make_cfg(*FAST, every_step), run)
    train(make_cfg(*FAST, every_step, "trainer.max_epochs=2"), run)
    lines = (run / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    col = next(i for i, h in enumerate(header) if h.startswith("lr-AdamW"))
    lr = {int(v[header.index("step")]): float(v[col]) for v in (ln.split(",") for ln in lines[1:]) if v[col]}
    assert sorted(lr) == list(range(6))
    assert all(lr[s] <= lr[2] * (1 + 1e-9) for s in (3, 4, 5)), lr  # never back up after the first run's end
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["schedule_steps"] == 3 and ckpt["global_step"] == 6


def test_resume_refuses_foreign_and_corrupt_checkpoints(tmp_path) -> None:
    run = tmp_path / "foreign"
    train(make_cfg(*FAST), run)
    with pytest.raises(ValueError, match=r"cannot resume: checkpoint .* was trained with another space config"):
        train(make_cfg(*FAST, "space.embed_dim=[32,48]"), run)
    with pytest.raises(ValueError, match=r"another train config \(train.lr: was 0.002, now 0.5\)"):
        train(make_cfg(*FAST, "train.lr=0.5"), run)
    with pytest.raises(ValueError, match=r"another data config \(data.split_seed: was 0, now 3\)"):
        train(make_cfg(*FAST, "data.split_seed=3"), run)
    # A checkpoint written before a train.* or model.* key existed resumes while the key keeps its default (the old
    # behaviour), and is refused, naming the key, once it is set to something else.
    last, older = run / "checkpoints" / "last.ckpt", run / "older.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    now = copy.deepcopy(dict(ckpt["hyper_parameters"]))
    del ckpt["hyper_parameters"]["train"]["smallest_fraction"]
    del ckpt["hyper_parameters"]["model"]["zero_init_residual"]
    torch.save(ckpt, older)
    check_checkpoint(older, now)
    changed = {**now, "train": {**now["train"], "smallest_fraction": 0.5}}
    with pytest.raises(ValueError, match=r"another train config \(train.smallest_fraction: was 1.0, now 0.5\)"):
        check_checkpoint(older, changed)
    # Gradient checkpointing trades memory for compute, the same arithmetic: a resume may switch it.
    check_checkpoint(older, {**now, "train": {**now["train"], "grad_checkpointing": True}})
    changed = {**now, "model": {**now["model"], "zero_init_residual": True}}
    with pytest.raises(ValueError, match=r"another model config \(model.zero_init_residual: was False, now True\)"):
        check_checkpoint(older, changed)
    config_before = (run / "config.yaml").read_text()
    with pytest.raises(ValueError, match="already holds a run; pass resume=true"):
        train(make_cfg(*FAST, "resume=false"), run)
    assert (run / "config.yaml").read_text() == config_before  # a refused run leaves the run's record alone
    (run / "checkpoints" / "last.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"cannot resume: checkpoint .* is unreadable"):
        train(make_cfg(*FAST), run)


def test_nan_loss_stops_with_a_clear_message(default_space) -> None:
    module = SupernetModule(default_space.to_dict(), {"task": "image"}, {})
    module.sampler = build_sampler("sandwich", module.space)
    module.log = lambda *a, **k: None
    with torch.no_grad():
        module.net.head.fc.bias.fill_(float("nan"))
    batch = (torch.randn(2, 1, 28, 28), torch.tensor([0, 1]))
    with pytest.raises(FloatingPointError, match=r"non-finite training loss \(nan\) at step 0 .* lower train.lr"):
        module.training_step(batch, 0)


def _cli(*args: str, cwd: Path = ROOT, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "supernet.train_cli", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


# Bad input as real `nas-train` processes: errors at composition (Hydra, typed schemas) that only the CLI shows, and
# one that nas-train raises itself (missing data), to check each ends in one line. The rest of
# nas-train's own errors are checked in process (BAD_INPUT): each process costs seconds of imports.
BAD_CLI_INPUT = [
    (["train.lr=abc"], r"Value 'abc' of type 'str' could not be converted to Float"),
    (["task=fashion_mnist", "data.data_dir=/nonexistent"], "Fashion-MNIST not found in /nonexistent"),
]
# Hydra's own errors, refused when composing; the same kind of error runs as a process above (train.lr=abc).
BAD_COMPOSE = [
    (["task=imagenet"], "Could not find 'task/imagenet'"),
    (["trainer.max_epochs=abc"], r"Value .abc. of type .str. could not be converted to Integer"),
    (["train.num_random=two"], r"Value .two. of type .str. could not be converted to Integer"),
]
BAD_INPUT = [
    (["space.depth=[2,8]"], r"space.depth choices \[2, 8\] go beyond model.max_depth=6"),
    (["model=hf", "space=hf", "model.pretrained=/nonexistent/vit"], "no checkpoint directory at /nonexistent/vit"),
    (["space.depth=[]"], "space.depth is empty; give at least one choice"),
    (["model=lm"], "model.task='lm' does not fit the data's task 'image'; use model=vit"),
    (["data._target_=nowhere.Data"], r"cannot build the data module data._target_=nowhere.Data"),
    (["train.sampler=greedy"], r"train.sampler='greedy' is not one of \['sandwich', 'uniform'\]"),
    (["+train.kd_temprature=4"], r"Key 'kd_temprature' not in 'TrainConfig'"),
    (["train.ema_decay=1.5"], r"train.ema_decay=1.5 must be in \(0, 1\), or null for no averaging"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_INPUT, ids=[" ".join(o) for o, _ in BAD_INPUT])
def test_bad_input_is_one_value_error(overrides, message, tmp_path) -> None:
    with pytest.raises(ValueError, match=message):
        train(make_cfg("experiment=smoke", *overrides), tmp_path / "run")
    assert not (tmp_path / "run" / "config.yaml").exists()  # a refused run writes nothing


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """`nas-train` as real processes, started together (most of their time is importing torch): each bad input
    (BAD_CLI_INPUT) and `--cfg job`."""
    tmp = tmp_path_factory.mktemp("cli")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    runs = {f"bad{i}": [f"hydra.run.dir={tmp / f'run{i}'}", *o] for i, (o, _) in enumerate(BAD_CLI_INPUT)}
    runs["cfg_job"] = ["--cfg", "job"]
    cmd = [sys.executable, "-m", "supernet.train_cli", "experiment=smoke"]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    procs = {name: subprocess.Popen([*cmd, *args], cwd=ROOT, env=env, **pipes) for name, args in runs.items()}
    out = {}
    for name, p in procs.items():
        stdout, stderr = p.communicate(timeout=600)
        out[name] = subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr)
    return out


@pytest.mark.parametrize("case", range(len(BAD_CLI_INPUT)), ids=[" ".join(o) for o, _ in BAD_CLI_INPUT])
def test_cli_bad_input_gives_one_clear_line(cli_runs, case: int) -> None:
    returncode, stderr = cli_runs[f"bad{case}"].returncode, cli_runs[f"bad{case}"].stderr
    assert returncode not in (0, None)
    assert re.search(BAD_CLI_INPUT[case][1], stderr), stderr[-2000:]
    assert "Traceback" not in stderr


@pytest.mark.parametrize(("overrides", "message"), BAD_COMPOSE, ids=[" ".join(o) for o, _ in BAD_COMPOSE])
def test_bad_override_is_refused_when_composing(overrides, message) -> None:
    with pytest.raises(Exception) as err:
        make_cfg("experiment=smoke", *overrides)
    assert re.search(message, f"{err.value} {err.value.__cause__}"), str(err.value)


def test_cli_prints_config_with_cfg_job(cli_runs) -> None:
    res = cli_runs["cfg_job"]
    assert res.returncode == 0 and "sampler: sandwich" in res.stdout and "run_name: smoke" in res.stdout


@pytest.mark.slow
def test_ddp_two_cpu_processes_stay_in_sync(tmp_path) -> None:
    """2 gloo processes: every step's archs are all-gathered and compared (train.check_rank_sync), with the options
    that need the ranks to agree: loss-aware students (each rank scores its own batch) and gradient projection."""
    run = tmp_path / "ddp"
    rules = ["train.attentive=worst", "train.grad_projection=true"]
    res = _cli(*FAST, "trainer=ddp", "train.check_rank_sync=true", *rules, f"hydra.run.dir={run}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "DDP ranks sampled different archs" not in res.stderr
    meta = read_metadata(run)
    assert meta["info"]["global_step"] == 3
    load_supernet(run)


@pytest.mark.slow
def test_two_nodes_on_loopback_train_as_one(tmp_path) -> None:
    """Multi-node DDP as torchrun launches it: two "nodes" (one process each, node ranks 0 and 1) rendezvous on
    loopback, train the same archs every step (train.check_rank_sync) and write one run directory."""
    run, port = tmp_path / "nodes", free_port()
    args = [*FAST, "trainer.num_nodes=2", "trainer.devices=1", "trainer.strategy=ddp_find_unused_parameters_true",
            "train.check_rank_sync=true", f"hydra.run.dir={run}"]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}

    def node(rank: int) -> subprocess.Popen:
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
                    f"--node-rank={rank}", "--master-addr=127.0.0.1", f"--master-port={port}"]  # fmt: skip
        return subprocess.Popen([*torchrun, "-m", "supernet.train_cli", *args], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip

    procs = [node(0), node(1)]
    try:
        results = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:  # a rank that hangs must not outlive the test
            if p.poll() is None:
                p.kill()
    for p, (_, stderr) in zip(procs, results, strict=True):
        assert p.returncode == 0, stderr[-3000:]
    assert "DDP ranks sampled different archs" not in "".join(err for _, err in results)
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in results[1][1]  # one world of two processes, not two worlds of one
    assert "nas-train: 3 steps" in results[0][0]  # global rank 0 reports and writes the artifact
    meta = read_metadata(run)
    assert meta["info"]["global_step"] == 3
    load_supernet(run)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_custom_data_module_plugs_in_through_target(tmp_path) -> None:
    """A user's DataModule (tests/custom_data.py) decides channels, size and classes of the model."""
    summary = train(
        make_cfg(
            *FAST,
            "data._target_=tests.custom_data.TinyStripes",
            "~data.test_size",
            "~data.val_size",
            "~data.val_subset_size",
            "model.patch_size=3",
        ),
        tmp_path / "custom",
    )
    net, _ = load_supernet(tmp_path / "custom")
    assert (net.config.in_channels, net.config.image_size, net.config.num_classes) == (2, 12, 3)
    assert summary["global_step"] == 3


@pytest.mark.parametrize("variant", ["progressive", "attentive", "plain"])
def test_sampling_variants_run(tmp_path, monkeypatch, variant) -> None:
    """Each option reaches the training steps: progressive shrinking starts with depth alone elastic (3 steps over 7
    stages: the first, nothing elastic, gets none), the attentive sandwich scores pools of candidates; the plain
    sandwich does neither."""
    overrides = {"progressive": ["train.progressive.enabled=true"], "attentive": ["train.attentive=worst"],
                 "plain": []}[variant]  # fmt: skip
    steps: list[list] = []
    pools: list[int] = []
    step, choose = SupernetModule.training_step, SupernetModule.choose

    def recorded_step(self, batch, batch_idx):
        steps.append([p.arch for p in self.sampler.picks(self.global_step)])
        return step(self, batch, batch_idx)

    def recorded_choose(self, pick, *args):
        pools.append(len(pick.pool))
        return choose(self, pick, *args)

    monkeypatch.setattr(SupernetModule, "training_step", recorded_step)
    monkeypatch.setattr(SupernetModule, "choose", recorded_choose)
    summary = train(make_cfg(*FAST, *overrides), tmp_path / "run")
    assert summary["global_step"] == 3 and len(steps) == 3
    big = load_supernet(tmp_path / "run")[0].space.largest()

    def only_depth_varies(a) -> bool:
        return a.embed_dim == big.embed_dim and set(a.num_heads) == {big.num_heads[0]} and set(a.mlp_ratio) == {
            big.mlp_ratio[0]} and set(a.w_bits) == {32} and a.a_bits == big.a_bits  # fmt: skip

    assert all(map(only_depth_varies, steps[0])) == (variant == "progressive"), steps[0]
    assert pools == ([3, 3] * 3 if variant == "attentive" else []), pools  # 2 random students a step, pools of 3


def test_weight_averaging_hands_out_the_average_of_unchanged_training(tmp_path) -> None:
    """With train.ema_decay the optimiser's weights are exactly those of plain training; the artifact (and the
    checkpoint's state_dict) is their moving average, and the checkpoint keeps the current weights for a resume."""
    plain = tmp_path / "plain"
    train(make_cfg(*FAST), plain)
    ema = tmp_path / "ema"
    train(make_cfg(*FAST, "train.ema_decay=0.5"), ema)
    ckpt = torch.load(ema / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    plain_ckpt = torch.load(plain / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    current, average = ckpt["current_model_state"], ckpt["state_dict"]
    for k, v in plain_ckpt["state_dict"].items():
        assert torch.equal(current[k], v), k
    saved = load_supernet(ema)[0].state_dict()
    for k, v in saved.items():
        assert torch.equal(v, average[f"net.{k}"]), k
    moved = [k for k in saved if not torch.equal(saved[k], current[f"net.{k}"])]
    assert len(moved) > len(saved) // 2  # the average is not the last step's weights
    assert train(make_cfg(*FAST, "train.ema_decay=0.5", "trainer.max_epochs=2"), ema)["global_step"] == 6


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
@pytest.mark.parametrize("shape", [(6, 10), (3, 5, 17)])  # classes per sample; vocabulary per token
def test_distillation_and_task_losses_equal_their_definitions(temperature, shape) -> None:
    """distill_loss is KL(teacher ‖ student) at temperature T, times T², averaged over samples or tokens (not
    summed, not over classes); task_loss is the mean cross-entropy; both are 0 / log C where they must be."""
    from supernet.training import distill_loss, task_loss

    g = torch.Generator().manual_seed(len(shape) * 10 + int(temperature))
    student, teacher = torch.randn(shape, generator=g) * 3, torch.randn(shape, generator=g) * 3
    y = torch.randint(0, shape[-1], shape[:-1], generator=g)
    torch.testing.assert_close(distill_loss(student, teacher, temperature), kl_by_hand(student, teacher, temperature))
    torch.testing.assert_close(task_loss(student, y), ce_by_hand(student, y))
    assert float(distill_loss(teacher, teacher, temperature)) == pytest.approx(0.0, abs=1e-6)
    uniform = torch.zeros(shape)
    assert float(task_loss(uniform, y)) == pytest.approx(np.log(shape[-1]), rel=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_sandwich_loss_combines_teacher_and_students(default_space, reduction) -> None:
    """total = CE(largest) + scale × Σ_students [kd_weight·KL + task_weight·CE], scale = 1/n (mean) or 1 (sum),
    against the losses written out by hand."""
    distill_loss, task_loss = kl_by_hand, ce_by_hand
    module = sandwich_module(default_space, {"student_reduction": reduction, "task_weight": 0.5}, seed=3)
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        total = module.training_step((x, y), 0)
        picks = module.sampler.picks(0)
        teacher = module.net(x, picks[0].arch)
        students = [module.net(x, p.arch) for p in picks[1:]]
        want = task_loss(teacher, y)
        scale = 1 / len(students) if reduction == "mean" else 1.0
        for s in students:
            want = want + scale * (distill_loss(s, teacher, 1.0) + 0.5 * task_loss(s, y))
    torch.testing.assert_close(total, want)


def test_no_gradient_reaches_the_teacher_through_distillation(default_space) -> None:
    """In-place distillation: the students learn from the largest arch's outputs as constants. The step's gradient
    equals that of CE(largest) + the students' losses with the teacher's logits detached, written by hand; with the
    teacher left attached the shared weights' gradients would differ (checked too, so the test can fail)."""
    module = sandwich_module(default_space, {"task_weight": 0.5}, seed=6)
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    params = [p for p in module.net.parameters() if p.requires_grad]

    def grads(loss: torch.Tensor) -> list[torch.Tensor]:
        return torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)

    got = grads(module.training_step((x, y), 0))
    picks = module.sampler.picks(0)

    def by_hand(detach: bool) -> torch.Tensor:
        teacher = module.net(x, picks[0].arch)
        target = teacher.detach() if detach else teacher
        students = [module.net(x, p.arch) for p in picks[1:]]
        kd = sum(kl_by_hand(s, target, 1.0) + 0.5 * ce_by_hand(s, y) for s in students)
        return ce_by_hand(teacher, y) + kd / len(students)

    want, attached = grads(by_hand(True)), grads(by_hand(False))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert max(float((a - b).abs().max()) for a, b in zip(got, attached, strict=True)) > 1e-4
