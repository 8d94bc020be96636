"""The deployment runtime (supernet/runtime/): the ONNX Runtime graph computes what `supernet(x, arch)` computes,
on every kernel, with low-bit weights stored low-bit and the unpacking folded away before it runs.

The graph-level property runs over random archs of every registered task model with every kernel a linear supports
drawn at random per linear; the kernel-level checks compare one linear per kernel and bit-width with the supernet's
arithmetic exactly (float rounding only).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from predictors.measure import LatencyConfig, _timed, kernel_table
from supernet import Arch, extract_subnet
from supernet.quant import quantize_activations
from supernet.runtime import kernels as kernels_mod
from supernet.runtime import session as session_mod
from supernet.runtime.graph import build_runtime_model, plan_of
from supernet.runtime.kernels import (
    OWN_ROUNDING,
    KernelTable,
    _probe_layer,
    float_plan,
    linear_model,
    linear_shapes,
    measure_linear,
)
from supernet.runtime.linears import KERNELS, candidates, supports
from supernet.runtime.session import executed_ops, run
from supernet.subnet_io import pack_subnet
from supernet.tolerance import RTOL, RTOL_QUANTIZED_ACT, own_rounding_agrees, relative_error, rows_off
from tests.conftest import n_archs, sample_input

N_ARCHS = 24  # per task model; each builds and runs one graph


def _random_plan(arch: Arch, config, rng: np.random.Generator) -> list[dict[str, str]]:
    plan = []
    for i in range(arch.depth):
        shapes = linear_shapes(arch, config, i)
        plan.append({n: str(rng.choice(candidates(arch.w_bits[i], arch.a_bits, k))) for n, (k, _) in shapes.items()})
    return plan


def _runtime_out(net, arch: Arch, plan, x: torch.Tensor) -> np.ndarray:
    model = build_runtime_model(arch, net.config, pack_subnet(extract_subnet(net, arch, qat=True)), plan)
    return run(model, x)


def test_random_archs_and_kernels_match_the_supernet(task_net):
    """Float activations: equal up to float rounding. 8-bit activations: a last-bit difference before rounding can
    move one activation by a step, so most outputs are equal to rounding and the predictions agree."""
    rng = np.random.default_rng(7)
    space, config = task_net.space, task_net.config
    x = sample_input(config, batch=8, seed=3)
    archs = [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(n_archs(task_net, N_ARCHS))]
    low = 0
    for arch in archs:
        plan = _random_plan(arch, config, rng)
        with torch.no_grad():
            want = task_net(x, arch).numpy()
        got = _runtime_out(task_net, arch, plan, x)
        assert got.shape == want.shape
        rel = np.abs(got - want) / max(1.0, np.abs(want).max())
        agree = float((got.argmax(-1) == want.argmax(-1)).mean())
        where = (arch.key(), plan)
        if arch.a_bits >= 32:  # every output equal to float rounding (supernet/tolerance.py's RTOL)
            assert rel.max() <= RTOL, (*where, rel.max())
            assert agree == 1.0, where
            continue
        # Per 8-bit arch (measured worst over the registered models: median 3.4e-3, max 1.2e-2, agreement 97.3 %):
        # a flipped activation code moves some outputs by a step, but the typical output stays close, none moves
        # far (RTOL_QUANTIZED_ACT), and nearly every prediction agrees.
        low += 1
        assert np.median(rel) <= 1e-2, (*where, np.median(rel))
        assert rel.max() <= RTOL_QUANTIZED_ACT, (*where, rel.max())
        assert agree >= 0.95, (*where, agree)
    assert low >= 3  # the 8-bit-activation archs were checked, not only the float ones


def test_every_kernel_computes_the_supernets_linear_with_bias():
    """One linear per kernel and bit-width against quant.py's arithmetic, with a non-zero bias (ONNX Runtime 1.32
    fuses MatMulInteger -> Cast -> Mul -> Add and then drops the bias; the graph must not let it)."""
    for a_bits in (8, 32):
        for w_bits in (1, 2, 4, 8, 32):
            for k_in in (64, 96, 128):
                weights, w_q = _probe_layer(k_in, 48, w_bits, seed=k_in)
                x = torch.randn(2, 5, k_in)
                want = torch.nn.functional.linear(quantize_activations(x, a_bits), w_q, torch.from_numpy(weights.bias))
                # 8-bit weights and activations: a U8S8 kernel saturates its pair sums on a CPU without VNNI, so
                # the machine's exactness probe may reject it; every kernel it accepts must be exact here too.
                usable = set(candidates(w_bits, a_bits, k_in))
                if w_bits == 8 and a_bits == 8:
                    usable -= set(measure_linear(k_in, 48, w_bits, a_bits, tokens=5, batch=2, threads=1)["rejected"])
                assert "float" in usable
                for kernel in sorted(usable):
                    got = run(linear_model(weights, a_bits, kernel, ["b", "t", k_in]), x)
                    if kernel in OWN_ROUNDING:  # its own activation rounding: supernet/tolerance.py's rule for it
                        assert own_rounding_agrees(*rows_off(got, want.numpy())), (kernel, w_bits, a_bits, k_in)
                        continue
                    err = np.abs(got - want.numpy()).max() / max(1.0, want.abs().max().item())
                    assert err <= 1e-5, (kernel, w_bits, a_bits, k_in, err)


def test_the_own_rounding_kernel_meets_its_stated_rule_on_every_probe():
    """nbits_int8 rounds activations its own way: held to exactness, a probe at 256 tokens accepted or rejected it by
    chance (on this project's AMD Zen 4 VM 3 of 40 seeds failed); held to the stated rule (supernet/tolerance.py)
    every seed passes. The rule is not vacuous: the same linear without activation quantization fails it."""
    k_in, n_out, tokens = 256, 384, 256
    weights, w_q = _probe_layer(k_in, n_out, 8, seed=1)
    session = session_mod.make_session(linear_model(weights, 8, "nbits_int8", (1, tokens, k_in)), 1)
    bias = torch.from_numpy(weights.bias)
    strict_fails = 0
    for seed in range(40):
        x = torch.randn(1, tokens, k_in, generator=torch.Generator().manual_seed(seed))
        want = torch.nn.functional.linear(quantize_activations(x, 8), w_q, bias).numpy()
        got = session.run(None, {"x": x.numpy()})[0]
        off, rows, worst = rows_off(got, want)
        assert own_rounding_agrees(off, rows, worst), (seed, off, rows, worst)
        strict_fails += worst > RTOL
        unquantized = torch.nn.functional.linear(x, w_q, bias).numpy()  # another arithmetic: must not pass
        assert not own_rounding_agrees(*rows_off(got, unquantized)), seed
    print(f"nbits_int8: {strict_fails} of 40 probes beyond {RTOL} (exactness would have rejected them)")


def test_kernel_support_rules():
    assert candidates(32, 32, 128) == ["float"]
    assert candidates(32, 8, 128) == ["float"]
    assert set(candidates(4, 32, 128)) == {"float", "nbits"}
    assert set(candidates(8, 8, 128)) == {"float", "int8", "int8_u8u8", "nbits_int8"}
    assert not supports("nbits_int8", 2, 8, 512)  # 2-bit MatMulNBits blocks stop at 256: not one block per token
    with pytest.raises(ValueError, match="unknown kernel"):
        supports("tensorrt", 4, 8, 64)


def test_measured_table_chooses_an_exact_kernel_and_explains_rejections():
    entry = measure_linear(128, 384, 8, 8, tokens=16, batch=1, threads=1)
    assert entry["kernel"] in entry["us"] and entry["kernel"] in KERNELS
    assert set(entry["us"]) | set(entry["rejected"]) == set(candidates(8, 8, 128))
    assert all(isinstance(why, str) and why for why in entry["rejected"].values())
    assert entry["us"][entry["kernel"]] == min(entry["us"].values())


def test_unpacking_is_folded_and_low_bit_kernels_run(default_space):
    """What ONNX Runtime actually runs: no bit unpacking per call, and the planned integer / n-bit kernels."""
    from supernet import build_supernet
    from tests.conftest import TASK_CONFIGS, randomize

    net = randomize(build_supernet(default_space, TASK_CONFIGS["image"])).eval()
    arch = Arch(2, 128, (4, 2), (4.0, 2.0), (4, 2), 8)
    arrays = pack_subnet(extract_subnet(net, arch, qat=True))
    plan = [{"qkv": "int8", "proj": "int8_u8u8", "fc1": "nbits_int8", "fc2": "float"}] * 2
    model = build_runtime_model(arch, net.config, arrays, plan)
    ops = executed_ops(model)
    assert not {"BitShift", "BitwiseAnd", "Concat", "Unsqueeze"} & set(ops), ops
    assert ops.count("MatMulIntegerToFloat") + ops.count("MatMulInteger") == 4
    assert ops.count("MatMulNBits") == 2
    assert plan_of(model) == plan
    # low-bit weights stored low-bit: the file is about the packed arrays' size, far below float weights
    packed = sum(a.nbytes for a in arrays.values())
    assert model.ByteSize() <= 1.10 * packed
    float_model = build_runtime_model(arch, net.config, arrays, float_plan(arch))
    assert float_model.ByteSize() <= 1.10 * packed


def test_dynamic_batch_and_sequence(task_net):
    arch = task_net.space.largest()
    model = build_runtime_model(arch, task_net.config, pack_subnet(extract_subnet(task_net, arch, qat=True)),
                                float_plan(arch))  # fmt: skip
    for batch, seq in ((1, 5), (3, None)):
        x = sample_input(task_net.config, batch=batch, seq_len=seq, seed=1)
        with torch.no_grad():
            want = task_net(x, arch).numpy()
        assert relative_error(run(model, x), want) <= RTOL


def test_kernel_table_is_measured_once_and_kept_per_target(tmp_path, monkeypatch, default_space):
    path = tmp_path / "kernels.json"
    table = KernelTable(threads=1, batch=1, tokens=16, path=path)
    arch = Arch(2, 64, (1, 2), (1.0, 2.0), (4, 8), 8)
    from supernet.config import ModelConfig

    plan = table.plan(arch, ModelConfig())
    doc = json.loads(path.read_text())
    assert list(doc) == [table.target_key()] and len(doc[table.target_key()]) == len(table.entries)

    def boom(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(kernels_mod, "measure_linear", boom)
    again = KernelTable(threads=1, batch=1, tokens=16, path=path)
    assert again.plan(arch, ModelConfig()) == plan  # read back, nothing re-measured
    other = KernelTable(threads=2, batch=1, tokens=16, path=path)  # another target starts its own entries
    with pytest.raises(AssertionError, match="measured again"):
        other.plan(arch, ModelConfig())


def test_latency_config_and_estimator():
    with pytest.raises(ValueError, match=r"latency.runtime=.tensorrt. is not one of"):
        LatencyConfig(runtime="tensorrt")
    with pytest.raises(ValueError, match=r"use latency\.runtime=torch"):
        LatencyConfig(device="cuda")
    with pytest.raises(ValueError, match=r"latency\.estimator"):
        LatencyConfig(estimator="mean")
    with pytest.raises(ValueError, match=r"estimator=paired times against a reference runtime model"):
        LatencyConfig(runtime="torch")
    slow = iter([5.0] * 3 + [1.0, 9.0, 3.0, 2.0, 8.0])

    def timer(call, repeats, number):
        return [next(slow) * number for _ in range(repeats)]

    out = _timed(lambda: None, LatencyConfig(warmup=0, repeats=5, min_repeat_ms=0.0, estimator="min"), timer)
    assert out["latency_ms"] == 1.0  # the minimum of the repeats
    slow = iter([5.0] * 3 + [1.0, 9.0, 3.0, 2.0, 8.0])
    out = _timed(lambda: None, LatencyConfig(warmup=0, repeats=5, min_repeat_ms=0.0, estimator="median"), timer)
    assert out["latency_ms"] == 3.0


def test_kernel_table_for_torch_runtime_is_none(default_space):
    from supernet.config import ModelConfig

    torch_cfg = LatencyConfig(runtime="torch", estimator="min")
    assert kernel_table(torch_cfg, ModelConfig(), torch.zeros(1, 1, 28, 28)) is None


def test_old_or_broken_runtime_is_one_clear_line(monkeypatch):
    class Old:
        __version__ = "1.16.3"

        @staticmethod
        def set_default_logger_severity(level):
            pass

    monkeypatch.setattr(session_mod, "ort", lambda: Old)
    with pytest.raises(ValueError) as e:
        session_mod.check_runtime.__wrapped__()
    msg = str(e.value)
    assert "onnxruntime 1.16.3" in msg and "MatMulNBits" in msg and "latency.runtime=torch" in msg
    assert "\n" not in msg


def test_measure_arch_times_the_runtime_model_or_the_torch_module(monkeypatch, default_space):
    """nas-measure's latency comes from the deployment graph by default, from the PyTorch module with runtime=torch."""
    from predictors import measure as measure_mod
    from supernet import build_supernet
    from supernet.static import StaticSubnet
    from tests.conftest import TASK_CONFIGS, randomize

    net = randomize(build_supernet(default_space, TASK_CONFIGS["image"])).eval()
    arch = Arch(2, 96, (2, 1), (2.0, 3.0), (4, 8), 8)
    batches = [(sample_input(net.config, batch=4), torch.zeros(4, dtype=torch.long))]
    seen = {}

    def fake(kind):
        def timed(model, example, cfg, *reference):
            seen[kind] = model
            return {"latency_ms": 1.0, "latency_iqr_ms": 0.0, "latency_cv": 0.0}

        return timed

    monkeypatch.setattr(measure_mod, "runtime_latency", fake("runtime"))
    monkeypatch.setattr(measure_mod, "latency", fake("torch"))
    table = KernelTable(threads=1, batch=1, tokens=net.config.tokens())
    measure_mod.measure_arch(net, arch, batches, batches[0][0][:1], LatencyConfig(), table)
    assert set(seen) == {"runtime"} and plan_of(seen["runtime"]) == table.plan(arch, net.config)
    seen.clear()
    measure_mod.measure_arch(net, arch, batches, batches[0][0][:1], LatencyConfig(runtime="torch", estimator="min"))
    assert set(seen) == {"torch"} and isinstance(seen["torch"], StaticSubnet)


def test_the_paired_reference_is_an_arch_of_every_shipped_space(default_space, small_space):
    from predictors.measure import reference_arch

    for space in (default_space, small_space):
        arch = reference_arch(space)
        assert space.validate(arch) == arch and arch.w_bits[0] == max(space.w_bits)


def test_a_calibration_kept_under_the_old_key_format_is_reused(monkeypatch, default_space, tmp_path):
    """kernels.json keeps the paired estimator's calibration under its reference arch's key; one kept before keys
    held FFN widths (`_r`) is the same arch: it is reused, not measured again (rows stay in the same units)."""
    from predictors import measure as measure_mod
    from supernet import build_supernet
    from tests.conftest import TASK_CONFIGS, randomize

    net = randomize(build_supernet(default_space, TASK_CONFIGS["image"])).eval()
    ref = measure_mod.reference_arch(default_space)
    ratios = "-".join(str(int(r)) if r.is_integer() else repr(r) for r in ref.mlp_ratio)
    heads, bits = "-".join(map(str, ref.num_heads)), "-".join(map(str, ref.w_bits))
    old = f"d{ref.depth}_e{ref.embed_dim}_a{ref.a_bits}_h{heads}_r{ratios}_w{bits}"
    assert old != ref.key() and Arch.from_key(old) == ref
    monkeypatch.setattr(kernels_mod, "measure_linear", lambda *args: {"kernel": "float", "us": {}, "rejected": {}})
    table = KernelTable(threads=1, batch=1, tokens=net.config.tokens(), path=tmp_path / "kernels.json")
    (tmp_path / "kernels.json").write_text(json.dumps({table.target_key(): {"reference": {"arch": old, "ms": 0.125}}}))
    table = KernelTable(threads=1, batch=1, tokens=net.config.tokens(), path=tmp_path / "kernels.json")

    def calibrate(*args):
        raise AssertionError("calibrated again")

    monkeypatch.setattr(measure_mod, "_timed", calibrate)
    reference = measure_mod.paired_reference(net, table, sample_input(net.config, batch=1), LatencyConfig())
    assert reference.ms == 0.125 and reference.arch == ref.key()


def test_a_calibration_of_another_reference_arch_is_never_paired_with_this_one(monkeypatch, default_space, tmp_path):
    """kernels.json holding a calibration of another arch (the reference arch changed since): this arch is calibrated
    anew and keeps its own entry; the old one cannot pair this arch's session with its time (the first-saved-wins
    merge of kernel verdicts used to keep the old milliseconds under the one `reference` entry). A second process
    then reuses the new calibration."""
    from predictors import measure as measure_mod
    from supernet import build_supernet
    from tests.conftest import TASK_CONFIGS, randomize

    net = randomize(build_supernet(default_space, TASK_CONFIGS["image"])).eval()
    ref = measure_mod.reference_arch(default_space)
    other = default_space.largest()
    assert other != ref
    monkeypatch.setattr(kernels_mod, "measure_linear", lambda *args: {"kernel": "float", "us": {}, "rejected": {}})
    path = tmp_path / "kernels.json"
    table = KernelTable(threads=1, batch=1, tokens=net.config.tokens(), path=path)
    path.write_text(json.dumps({table.target_key(): {"reference": {"arch": other.key(), "ms": 123.0}}}))
    calls = []
    monkeypatch.setattr(measure_mod, "_timed", lambda *args: calls.append(1) or {"latency_ms": 0.25})
    x = sample_input(net.config, batch=1)
    table = KernelTable(threads=1, batch=1, tokens=net.config.tokens(), path=path)
    reference = measure_mod.paired_reference(net, table, x, LatencyConfig())
    assert (reference.arch, reference.ms, len(calls)) == (ref.key(), 0.25, 1)
    saved = json.loads(path.read_text())[table.target_key()]
    assert saved[measure_mod.calibration_key(ref)] == {"arch": ref.key(), "ms": 0.25}
    assert saved["reference"] == {"arch": other.key(), "ms": 123.0}  # the other arch's, kept for its own runs
    again = KernelTable(threads=1, batch=1, tokens=net.config.tokens(), path=path)
    assert measure_mod.paired_reference(net, again, x, LatencyConfig()).ms == 0.25 and len(calls) == 1
