"""Importance reordering (supernet/importance.py): function-preserving for full-width archs, sorted afterwards."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from supernet import Arch, ModelConfig, SearchSpace, Supernet, build_supernet, reorder_by_importance
from tests.conftest import TASK_CONFIGS, sample_input

ROOT = Path(__file__).resolve().parents[1]
SPACE = SearchSpace.from_yaml(ROOT / "conf" / "space" / "default.yaml")
# Every registered task model (tests/conftest.py): gated FFNs and key/value groups must keep the function too.
CONFIGS = TASK_CONFIGS
ATOL, RTOL = 1e-5, 1e-4


def _net(task: str, seed: int = 0) -> Supernet:
    """A supernet with random weights everywhere: layer norms and biases too (ones/zeros would hide bugs)."""
    torch.manual_seed(seed)
    net = build_supernet(SPACE, CONFIGS[task])
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() == 1:
                p.normal_(generator=g)
            else:
                p.add_(0.02 * torch.randn(p.shape, generator=g))
    return net.eval()


def _input(cfg: ModelConfig, batch: int = 3) -> torch.Tensor:
    return sample_input(cfg, batch=batch, seed=1)


def _full_width(w_bits: tuple[int, ...], a_bits: int) -> Arch:
    d = len(w_bits)
    return Arch(d, SPACE.embed_dim[-1], (SPACE.num_heads[-1],) * d, (SPACE.mlp_ratio[-1],) * d, w_bits, a_bits)


def _outputs(net: Supernet, archs: list[Arch], x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return [net(x, a) for a in archs]


def _reordered(task: str):
    """(net before, net after, permutations, after's parameters and their storage as they were before reordering)."""
    before = _net(task)
    after = copy.deepcopy(before)
    params = dict(after.named_parameters())
    storage = {name: p.data_ptr() for name, p in params.items()}
    perms = reorder_by_importance(after)
    return before, after, perms, (params, storage)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def reordered(request):
    return _reordered(request.param)


@pytest.fixture(scope="module", params=["image", "lm"])
def reordered_plain(request):
    """For the tests that read the plain layout tensor by tensor (one FFN input matrix, one norm per block, biases):
    the project's own image and LM models; the function-preservation tests run over every registered family."""
    return _reordered(request.param)


def _is_identity(p: torch.Tensor) -> bool:
    return torch.equal(p, torch.arange(p.numel()))


def test_largest_arch_output_unchanged(reordered) -> None:
    before, after, *_ = reordered
    x = _input(before.config)
    arch = SPACE.largest()
    (y0,) = _outputs(before, [arch], x)
    (y1,) = _outputs(after, [arch], x)
    torch.testing.assert_close(y1, y0, atol=ATOL, rtol=RTOL)


QUANT_ARCHS = [
    _full_width((8, 8, 8, 8, 8, 8), 8),
    _full_width((4, 2, 1, 8, 32, 4), 8),
    _full_width((1, 2, 4), 8),
    _full_width((2, 8), 8),
]


@pytest.mark.parametrize("arch", QUANT_ARCHS, ids=lambda a: a.key())
def test_quantized_weights_full_width_output_unchanged(reordered, arch: Arch) -> None:
    """Per-row weight scales move with their rows (and see the same values), so weight quantization commutes with
    the permutation: float32 outputs agree to summation-order noise."""
    before, after, *_ = reordered
    arch = replace(arch, a_bits=32)
    x = _input(before.config)
    (y0,) = _outputs(before, [arch], x)
    (y1,) = _outputs(after, [arch], x)
    torch.testing.assert_close(y1, y0, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("task", sorted(CONFIGS))
def test_quantized_activations_full_width_output_unchanged_float64(task: str) -> None:
    """With 8-bit per-token activations too. Checked in float64: in float32 the permuted summation order moves a
    value across a rounding boundary of the activation quantizer now and then (one 8-bit step, ~1e-3 at the output),
    which is float noise amplified, not a change of the function; float64 makes such flips vanishingly rare."""
    before = _net(task).double()
    after = copy.deepcopy(before)
    reorder_by_importance(after)
    x = _input(before.config, batch=2)
    if x.is_floating_point():
        x = x.double()
    y0 = _outputs(before, QUANT_ARCHS, x)
    y1 = _outputs(after, QUANT_ARCHS, x)
    for arch, a, b in zip(QUANT_ARCHS, y0, y1, strict=True):
        torch.testing.assert_close(b, a, atol=1e-9, rtol=1e-9, msg=arch.key())


def test_permutations_are_valid_and_nontrivial(reordered) -> None:
    _, _, perms, _ = reordered
    H, E = SPACE.num_heads[-1], SPACE.embed_dim[-1]
    F = round(SPACE.mlp_ratio[-1] * E)
    assert len(perms["num_heads"]) == len(perms["mlp"]) == SPACE.max_depth
    for p in perms["num_heads"]:
        assert sorted(p.tolist()) == list(range(H))
    for p in perms["mlp"]:
        assert sorted(p.tolist()) == list(range(F))
    assert sorted(perms["embed_dim"].tolist()) == list(range(E))
    # random weights: the FFN and embed orders are essentially never already sorted
    assert not all(_is_identity(p) for p in perms["mlp"])
    assert not _is_identity(perms["embed_dim"])
    assert not all(_is_identity(p) for p in [*perms["num_heads"], *perms["mlp"], perms["embed_dim"]])


def test_smaller_arch_output_changes(reordered) -> None:
    before, after, *_ = reordered
    x = _input(before.config)
    d = SPACE.max_depth
    small = Arch(d, SPACE.embed_dim[0], (SPACE.num_heads[0],) * d, (SPACE.mlp_ratio[0],) * d, (32,) * d, 32)
    (y0,) = _outputs(before, [small], x)
    (y1,) = _outputs(after, [small], x)
    assert not torch.allclose(y0, y1, atol=1e-3, rtol=1e-3)


def test_permutation_applied_to_tensors(reordered_plain) -> None:
    reordered = reordered_plain
    """The returned permutations are exactly what moved: new[k] = old[perm[k]] along each unit's axis."""
    before, after, perms, _ = reordered
    pe = perms["embed_dim"]
    b0, b1 = before.blocks[0], after.blocks[0]
    pf = perms["mlp"][0]
    torch.testing.assert_close(b1.ffn.fc1.weight, b0.ffn.fc1.weight[pf][:, pe], atol=0, rtol=0)
    torch.testing.assert_close(b1.ffn.fc1.bias, b0.ffn.fc1.bias[pf], atol=0, rtol=0)
    torch.testing.assert_close(b1.ffn.fc2.weight, b0.ffn.fc2.weight[pe][:, pf], atol=0, rtol=0)
    torch.testing.assert_close(b1.ffn.fc2.bias, b0.ffn.fc2.bias[pe], atol=0, rtol=0)
    torch.testing.assert_close(b1.ln1.weight, b0.ln1.weight[pe], atol=0, rtol=0)
    torch.testing.assert_close(after.head.norm.bias, before.head.norm.bias[pe], atol=0, rtol=0)
    torch.testing.assert_close(after.head.fc.weight, before.head.fc.weight[:, pe], atol=0, rtol=0)
    torch.testing.assert_close(after.head.fc.bias, before.head.fc.bias, atol=0, rtol=0)
    ph = perms["num_heads"][0]
    D, H = b0.attn.head_dim, SPACE.num_heads[-1]
    q0 = b0.attn.qkv.weight.view(3, H, D, -1)[:, ph][..., pe]
    torch.testing.assert_close(b1.attn.qkv.weight.view(3, H, D, -1), q0, atol=0, rtol=0)
    torch.testing.assert_close(b1.attn.qkv.bias.view(3, H, D), b0.attn.qkv.bias.view(3, H, D)[:, ph], atol=0, rtol=0)
    p0 = b0.attn.proj.weight.view(-1, H, D)[pe][:, ph]
    torch.testing.assert_close(b1.attn.proj.weight.view(-1, H, D), p0, atol=0, rtol=0)


def _ffn_scores(blk) -> torch.Tensor:
    return blk.ffn.fc1.weight.abs().sum(dim=1) + blk.ffn.fc2.weight.abs().sum(dim=0)


def _head_scores(blk) -> torch.Tensor:
    D = blk.attn.head_dim
    E, HD = blk.attn.proj.weight.shape
    H = HD // D
    return blk.attn.qkv.weight.view(3, H, D, -1).abs().sum(dim=(0, 2, 3)) + blk.attn.proj.weight.view(
        E, H, D
    ).abs().sum(dim=(0, 2))


def _channel_scores(net: Supernet) -> torch.Tensor:
    """L1 norm of every weight touching each residual channel, written independently of the code under test."""
    E = SPACE.embed_dim[-1]
    s = torch.zeros(E)
    stem = net.stem
    if net.config.task == "image":
        s += stem.proj.weight.abs().sum(1) + stem.proj.bias.abs() + stem.pos.abs().sum(0)
    else:
        s += stem.table.abs().sum(0) + stem.pos.abs().sum(0)
    for b in net.blocks:
        s += b.ln1.weight.abs() + b.ln1.bias.abs() + b.ln2.weight.abs() + b.ln2.bias.abs()
        s += b.attn.qkv.weight.abs().sum(0) + b.attn.proj.weight.abs().sum(1) + b.attn.proj.bias.abs()
        s += b.ffn.fc1.weight.abs().sum(0) + b.ffn.fc2.weight.abs().sum(1) + b.ffn.fc2.bias.abs()
    s += net.head.norm.weight.abs() + net.head.norm.bias.abs() + net.head.fc.weight.abs().sum(0)
    return s


def _non_increasing(s: torch.Tensor, slack: float = 0.0) -> bool:
    return bool((s[1:] <= s[:-1] + slack).all())


def test_scores_sorted_after_reorder(reordered_plain) -> None:
    reordered = reordered_plain
    before, after, *_ = reordered
    with torch.no_grad():
        # FFN of block 0 (the brief's example) and of every block, heads of every block
        assert _non_increasing(_ffn_scores(after.blocks[0]))
        assert not _non_increasing(_ffn_scores(before.blocks[0]))
        for blk in after.blocks:
            assert _non_increasing(_ffn_scores(blk))
            assert _non_increasing(_head_scores(blk))
        ch = _channel_scores(after)
        # summation order differs from the implementation's, so allow float slack between near-ties
        assert _non_increasing(ch, slack=1e-4 * ch.max().item())
        assert not _non_increasing(_channel_scores(before))


def test_reorder_is_idempotent(reordered) -> None:
    _, after, *_ = reordered
    again = copy.deepcopy(after)
    perms = reorder_by_importance(again)
    for p in [*perms["num_heads"], *perms["mlp"]]:
        assert _is_identity(p)
    # channel scores are recomputed with the same reductions on permuted tensors; near-ties may swap at float level
    moved = (perms["embed_dim"] != torch.arange(perms["embed_dim"].numel())).sum().item()
    assert moved <= 4


@pytest.mark.parametrize("task", ["image", "lm"])  # the plain FFN and attention layout it reads tensor by tensor
def test_channels_false_leaves_embed_untouched(task: str) -> None:
    before = _net(task, seed=3)
    after = copy.deepcopy(before)
    perms = reorder_by_importance(after, channels=False)
    assert perms["embed_dim"] is None
    # every embed-only tensor is bit-identical
    for name in ("stem", "head"):
        for (n0, p0), (n1, p1) in zip(
            getattr(before, name).named_parameters(), getattr(after, name).named_parameters(), strict=True
        ):
            assert n0 == n1
            assert torch.equal(p0, p1), f"{name}.{n0} changed"
    for b0, b1 in zip(before.blocks, after.blocks, strict=True):
        for mod in ("ln1", "ln2"):
            assert torch.equal(getattr(b0, mod).weight, getattr(b1, mod).weight)
            assert torch.equal(getattr(b0, mod).bias, getattr(b1, mod).bias)
        assert torch.equal(b0.attn.proj.bias, b1.attn.proj.bias)
        assert torch.equal(b0.ffn.fc2.bias, b1.ffn.fc2.bias)
        # embed axis (columns of qkv / fc1, rows of proj / fc2) is not permuted: row/column sums along it are kept
        torch.testing.assert_close(b1.attn.qkv.weight.sum(0), b0.attn.qkv.weight.sum(0), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(b1.attn.proj.weight.sum(1), b0.attn.proj.weight.sum(1), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(b1.ffn.fc1.weight.sum(0), b0.ffn.fc1.weight.sum(0), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(b1.ffn.fc2.weight.sum(1), b0.ffn.fc2.weight.sum(1), atol=1e-5, rtol=1e-5)
    # heads / FFN are still reordered, and the largest arch is still the same function
    assert not all(_is_identity(p) for p in perms["mlp"])
    x = _input(before.config)
    arch = SPACE.largest()
    torch.testing.assert_close(_outputs(after, [arch], x)[0], _outputs(before, [arch], x)[0], atol=ATOL, rtol=RTOL)


def test_reorder_does_not_change_parameter_identity_or_shapes(reordered) -> None:
    """In place: the same Parameter objects on the same storage (an optimizer holding them keeps training the
    reordered weights), the same shapes, and each tensor's values permuted, not changed."""
    before, after, _, (params, storage) = reordered
    now = dict(after.named_parameters())
    assert now.keys() == params.keys()
    for name, p in now.items():
        assert p is params[name], name
        assert p.data_ptr() == storage[name], name
    shapes0 = {k: v.shape for k, v in before.state_dict().items()}
    shapes1 = {k: v.shape for k, v in after.state_dict().items()}
    assert shapes0 == shapes1
    # same multiset of values per tensor (a permutation only)
    sd0, sd1 = before.state_dict(), after.state_dict()
    for k in sd0:
        torch.testing.assert_close(sd0[k].flatten().sort().values, sd1[k].flatten().sort().values, atol=0, rtol=0)
