"""What real model sizes need, tested on tiny models: runtime models past protobuf's 2 GiB (external data, exercised
by lowering the threshold), gradient checkpointing (same gradients, every task model and random archs), the frozen
pretrained teacher in the trained net's precision, and the scale ladder's stages end to end on a tiny Llama."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from supernet.extract import extract_subnet
from supernet.runtime import session as session_mod
from supernet.runtime.graph import build_runtime_model
from supernet.runtime.kernels import float_plan
from supernet.subnet_io import pack_subnet
from supernet.tolerance import RTOL, relative_error
from tests.conftest import sample_input

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROOT = Path(__file__).resolve().parents[1]


def _runtime_model(net, arch):
    return build_runtime_model(arch, net.config, pack_subnet(extract_subnet(net, arch, qat=True)), float_plan(arch))


def test_large_runtime_model_goes_to_external_data(task_net, tmp_path, monkeypatch):
    """Past the threshold the tensors go to model.onnx.data; the graph alone stays small, ONNX Runtime loads it from
    the file and from the proto (through a temporary file), with the outputs of the in-memory model, and the proto
    still holds its tensors after saving."""
    arch = task_net.space.largest()
    model = _runtime_model(task_net, arch)
    x = sample_input(task_net.config, batch=2, seed=1)
    want = session_mod.run(model, x)
    size = model.ByteSize()
    monkeypatch.setattr(session_mod, "EXTERNAL_DATA_BYTES", size // 4)
    assert session_mod.is_large(model)
    path = session_mod.save_model(model, tmp_path / "model.onnx")
    data = tmp_path / "model.onnx.data"
    assert data.is_file() and data.stat().st_size > size // 2
    assert path.stat().st_size < size // 4
    # the tensors are back in the proto (a few bytes more: each records its data location explicitly)
    assert not any(t.external_data for t in model.graph.initializer) and abs(model.ByteSize() - size) < 4096
    np.testing.assert_array_equal(session_mod.run(path, x), want)
    np.testing.assert_array_equal(session_mod.run(model, x), want)
    assert session_mod.executed_ops(model)  # the optimizer's view loads through the file too
    session_mod.save_model(model, tmp_path / "model.onnx")  # saved again: the data file is replaced, not appended
    assert data.stat().st_size < 1.5 * size
    monkeypatch.setattr(session_mod, "EXTERNAL_DATA_BYTES", 10 * size)
    session_mod.save_model(model, tmp_path / "model.onnx")
    assert not data.exists()  # a small model is one file; a stale data file from a larger one is gone


def test_runtime_model_written_with_its_data_file_as_it_is_built(task_net, tmp_path, monkeypatch):
    """Past the threshold, `write_runtime_model` streams the tensors to model.onnx.data while building (the proto
    holds locations only): ONNX Runtime loads it from the path with the in-memory model's outputs; below the
    threshold it is one file, as before."""
    from supernet.runtime.graph import write_runtime_model
    from supernet.subnet_io import WEIGHTS_NAME, read_arrays, save_subnet

    rng = np.random.default_rng(1)
    for arch in (task_net.space.largest(), task_net.space.sample(rng)):
        save_subnet(extract_subnet(task_net, arch, qat=True), tmp_path / "sub")
        arrays = read_arrays(tmp_path / "sub" / WEIGHTS_NAME)
        plan = float_plan(arch)
        x = sample_input(task_net.config, batch=2, seed=1)
        want = session_mod.run(build_runtime_model(arch, task_net.config, arrays, plan), x)
        path = tmp_path / "model.onnx"
        small = write_runtime_model(arch, task_net.config, arrays, plan, path)
        assert not session_mod.has_external_data(small) and not session_mod.data_path(path).exists()
        np.testing.assert_array_equal(session_mod.run(path, x), want)
        monkeypatch.setattr(session_mod, "EXTERNAL_DATA_BYTES", 1000)
        model = write_runtime_model(arch, task_net.config, arrays, plan, path)
        monkeypatch.undo()
        assert session_mod.has_external_data(model)
        assert all(not t.raw_data for t in model.graph.initializer if t.external_data)
        assert session_mod.data_path(path).stat().st_size == session_mod.initializer_bytes(model) - sum(
            len(t.raw_data) for t in model.graph.initializer)  # fmt: skip
        np.testing.assert_array_equal(session_mod.run(path, x), want)
        assert session_mod.executed_ops(path)


def _grads(module: torch.nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    module.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_gives_the_same_gradients(task_net, monkeypatch):
    """Recomputing each block in the backward pass changes memory, not the gradients: supernet and static subnet,
    over random archs (quantized weights included); every block goes through the checkpoint, only when asked."""
    import supernet.model
    import supernet.static

    calls = []

    def counted(fn, *args, **kwargs):
        calls.append(fn)
        return torch.utils.checkpoint.checkpoint(fn, *args, **kwargs)

    monkeypatch.setattr(supernet.model, "checkpoint", counted)
    monkeypatch.setattr(supernet.static, "checkpoint", counted)
    rng = np.random.default_rng(0)
    net = copy.deepcopy(task_net).train()
    x = sample_input(net.config, batch=2, seed=2)
    for arch in [net.space.largest(), *(net.space.sample(rng) for _ in range(3))]:
        models = {"supernet": lambda a=arch: net(x, a).float().square().mean()}
        sub = extract_subnet(net, arch).train()
        models["subnet"] = lambda s=sub: s(x).float().square().mean()
        for name, loss in models.items():
            owner = net if name == "supernet" else sub
            owner.grad_checkpointing = False
            plain = _grads(owner, loss())
            assert not calls
            owner.grad_checkpointing = True
            recomputed = _grads(owner, loss())
            owner.grad_checkpointing = False
            assert len(calls) == arch.depth, (name, len(calls))
            calls.clear()
            assert plain.keys() == recomputed.keys() and plain, (name, arch.key())
            for k in plain:
                torch.testing.assert_close(recomputed[k], plain[k], rtol=1e-5, atol=1e-6, msg=f"{name} {k}")


def test_pretrained_teacher_runs_in_the_trained_precision():
    """bf16-true training keeps one frozen teacher, cast to bf16 like the trained net (half its float32 memory)."""
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from supernet.config import ModelConfig
    from supernet.model import build_supernet
    from supernet.space import SearchSpace
    from supernet.training import SupernetModule

    space = SearchSpace(depth=[1, 2], embed_dim=[16, 32], num_heads=[2, 4], mlp_ratio=[1, 2], w_bits=[8, 32])
    config = ModelConfig(task="lm", vocab_size=32, block_size=8, head_dim=8)
    teacher = build_supernet(space, config).eval()
    train = {"teacher": "pretrained", "grad_checkpointing": True, "reference_archs": 0}
    module = SupernetModule(space.to_dict(), config.to_dict(), train)
    module.net.load_state_dict(teacher.state_dict())
    module.set_pretrained_teacher(teacher)
    x = torch.randint(0, 32, (4, 8))
    trainer = L.Trainer(accelerator="cpu", precision="bf16-true", max_steps=1, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(module, train_dataloaders=DataLoader(TensorDataset(x, torch.roll(x, -1, 1)), batch_size=4))
    assert {p.dtype for p in teacher.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in module.net.parameters()} == {torch.bfloat16}
    assert all(not p.requires_grad for p in teacher.parameters())
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


@pytest.mark.slow
def test_scale_ladder_stages_on_a_tiny_llama(tmp_path):
    """`bench/scale.py --smoke`: every stage on a tiny Llama of the ladder's form (GQA, tied embeddings), in this
    process, through the script's own main, report and exponent fit."""
    from tests.bench_smoke import run_script, unchanged_results

    with unchanged_results():
        printed = run_script("scale.py", "--smoke", "--out", str(tmp_path / "scale.json"))
    out = json.loads((tmp_path / "scale.json").read_text())["tiny"]["stages"]
    assert all(re.search(rf"^tiny +{stage} ", printed, re.M) for stage in out), printed
    assert set(out) == {"hf", "import", "exact", "plain", "elastic", "kernels", "latency", "eval", "export"}
    assert out["exact"]["relative"] <= 1e-4
    assert out["elastic"]["archs_trained"] == 4 and np.isfinite(out["elastic"]["loss"])
    assert out["plain"]["archs_trained"] == 1 and out["plain"]["step_peak_gb"] > 0
    assert out["kernels"]["distinct_shapes"] > 0
    assert all(ms > 0 for ms in out["latency"]["latency_ms"].values())
    assert set(out["eval"]["archs"]) == {"largest_w8", "smallest", "random"}
    assert max(out["export"]["reload_max_abs_diff"].values()) <= 1e-4 * max(1.0, out["export"]["max_abs_logit"])
    assert "model.onnx" in out["export"]["files_bytes"]
    assert (tmp_path / "scale.md").read_text().startswith("# Scale ladder")


def test_runtime_graph_holds_no_table_of_the_longest_context_squared():
    """The causal mask is built from the sequence length at run time: a model with a long context (here 4,096
    positions; Llama-3.2 has 131,072, a 64 GiB table) gets no (block_size, block_size) constant, and still computes
    the supernet's logits."""
    from supernet.config import ModelConfig
    from supernet.model import build_supernet
    from supernet.space import SearchSpace

    space = SearchSpace(depth=[1, 2], embed_dim=[16, 32], num_heads=[2, 4], mlp_ratio=[1, 2], w_bits=[8, 32])
    config = ModelConfig(task="lm", vocab_size=32, block_size=4096, head_dim=8, norm="rms", positions="rope",
                         gated_ffn=True, activation="silu", kv_group=2, linear_bias=False)  # fmt: skip
    torch.manual_seed(0)
    net = build_supernet(space, config).eval()
    arch = space.largest()
    model = _runtime_model(net, arch)
    assert max(int(np.prod(t.dims)) for t in model.graph.initializer) < config.block_size**2 // 64
    x = torch.randint(0, 32, (2, 24))
    with torch.no_grad():
        want = net(x, arch).numpy()
    assert relative_error(session_mod.run(model, x), want) <= RTOL
