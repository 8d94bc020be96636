"""The central invariant: an extracted subnet computes exactly what the supernet computes for that arch.

Property-tested over 200 random archs per registered task model, plus the largest, the smallest and every
bit-width, with the parameter count checked against the cost model on every arch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from supernet import Arch, SearchSpace, Supernet, arch_costs, extract_subnet
from supernet import elastic as elastic_mod
from supernet import model as model_mod
from tests.conftest import n_archs, sample_input

N_RANDOM_ARCHS = 200
TOL = 1e-5


def _check(net: Supernet, arch: Arch, x: torch.Tensor) -> None:
    with torch.no_grad():
        want = net(x, arch)
        sub = extract_subnet(net, arch)
        got = sub(x)
    assert got.shape == want.shape
    diff = (got - want).abs().max().item()
    assert diff <= TOL, f"{arch.key()}: max abs diff {diff:.3g}"
    n_params = sum(p.numel() for p in sub.parameters())
    assert n_params == arch_costs(arch, net.config).params, arch.key()


def _uniform(space: SearchSpace, depth: int, w_bits: int, a_bits: int) -> Arch:
    return Arch(
        depth,
        space.embed_dim[-1],
        (space.num_heads[-1],) * depth,
        (space.mlp_ratio[-1],) * depth,
        (w_bits,) * depth,
        a_bits,
    )


def test_random_archs_match(task_net: Supernet) -> None:
    space = task_net.space
    rng = np.random.default_rng(1234)
    x = sample_input(task_net.config, batch=3, seq_len=task_net.config.block_size // 2)
    n = n_archs(task_net, N_RANDOM_ARCHS)
    archs = [space.sample(rng) for _ in range(n)]
    assert len({a.key() for a in archs}) > 0.95 * n  # genuinely many archs, not a handful
    for arch in archs:
        _check(task_net, arch, x)


def test_extremes_match(task_net: Supernet) -> None:
    x = sample_input(task_net.config)
    _check(task_net, task_net.space.largest(), x)
    _check(task_net, task_net.space.smallest(), x)


@pytest.mark.parametrize("w_bits", [1, 2, 4, 8, 16, 32])
@pytest.mark.parametrize("a_bits", [4, 8, 16, 32])
def test_every_bit_width_matches(task_net: Supernet, w_bits: int, a_bits: int) -> None:
    # The default space lists a subset of the supported bit-widths; widen it so every quantizer path is exercised.
    if task_net.config.bit_norms:
        pytest.skip("bit-specific norms exist for the space's own bit-widths only (covered by the random archs)")
    space = SearchSpace(**{**task_net.space.to_dict(), "w_bits": [w_bits], "a_bits": [a_bits]})
    net = type(task_net)(space, task_net.config)
    net.load_state_dict(task_net.state_dict())
    net.eval()
    _check(net, _uniform(space, space.depth[-1], w_bits, a_bits), sample_input(net.config, batch=2))


def test_quantized_weights_are_materialised(task_net: Supernet) -> None:
    space = task_net.space
    arch = _uniform(space, 2, space.w_bits[0], 32)
    sub = extract_subnet(task_net, arch)
    w = sub.blocks[0].fc1.weight
    # 1-bit weights: two values per output row (± the row's mean magnitude).
    assert all(len(torch.unique(row)) <= 2 for row in w)


def test_extracted_module_is_standalone(task_net: Supernet) -> None:
    arch = task_net.space.sample(np.random.default_rng(7))
    x = sample_input(task_net.config, batch=2)
    sub = extract_subnet(task_net, arch)
    before = sub(x)
    super_ptrs = {p.data_ptr() for p in task_net.parameters()}
    assert not any(p.data_ptr() in super_ptrs for p in sub.parameters())
    forbidden = tuple(
        obj
        for mod in (elastic_mod, model_mod)
        for obj in vars(mod).values()
        if isinstance(obj, type) and issubclass(obj, torch.nn.Module)
    )
    assert not any(isinstance(m, forbidden) for m in sub.modules())
    # Changing the supernet afterwards must not change the extracted module.
    saved = {k: v.clone() for k, v in task_net.state_dict().items()}
    try:
        with torch.no_grad():
            for p in task_net.parameters():
                p.add_(1.0)
        assert torch.equal(sub(x), before)
    finally:
        task_net.load_state_dict(saved)


def test_extracted_state_dict_rebuilds_module(task_net: Supernet) -> None:
    """A standalone module rebuilt from (arch, config) alone loads the extracted weights and matches."""
    from supernet import build_subnet

    arch = task_net.space.sample(np.random.default_rng(3))
    sub = extract_subnet(task_net, arch)
    fresh = build_subnet(arch, task_net.config)
    fresh.load_state_dict(sub.state_dict(), strict=True)
    x = sample_input(task_net.config, batch=2)
    assert torch.equal(fresh.eval()(x), sub(x))


def test_training_mode_gradients_flow_through_quantizers(task_net: Supernet) -> None:
    """STE: a low-bit arch still gives gradients to the shared weights it uses, and none to unused rows."""
    space = task_net.space
    arch = Arch(2, space.embed_dim[0], (space.num_heads[0],) * 2, (space.mlp_ratio[0],) * 2, (2, 4), space.a_bits[0])
    x = sample_input(task_net.config, batch=2)
    task_net.zero_grad()
    out = task_net(x, arch)
    out.float().pow(2).mean().backward()
    grad = task_net.blocks[0].ffn.fc1.weight.grad
    hidden, embed = arch.ffn_hidden(0), arch.embed_dim
    halves = 2 if task_net.config.gated_ffn else 1  # a gated FFN's rows [gate | up] are each sliced like one FFN's
    for g in grad.view(halves, -1, grad.shape[1]):
        assert g[:hidden, :embed].abs().sum() > 0
        assert g[hidden:].abs().sum() == 0 and g[:, embed:].abs().sum() == 0
    assert task_net.blocks[2].ffn.fc1.weight.grad is None or task_net.blocks[2].ffn.fc1.weight.grad.abs().sum() == 0
    task_net.zero_grad(set_to_none=True)


def test_qat_extraction_matches_and_trains(task_net: Supernet) -> None:
    """qat=True keeps float weights behind a quantizer: same outputs, and gradients reach the latent weights."""
    from supernet.qat import bake_weight_quantizers

    rng = np.random.default_rng(11)
    x = sample_input(task_net.config, batch=2)
    for _ in range(20):
        arch = task_net.space.sample(rng)
        sub = extract_subnet(task_net, arch, qat=True)
        with torch.no_grad():
            assert (sub(x) - task_net(x, arch)).abs().max().item() <= TOL, arch.key()
    low = _uniform(task_net.space, 2, task_net.space.w_bits[1], 32)
    sub = extract_subnet(task_net, low, qat=True).train()
    sub(x).float().pow(2).mean().backward()
    latent = sub.blocks[0].fc1.parametrizations.weight.original
    assert latent.grad is not None and latent.grad.abs().sum() > 0
    baked = bake_weight_quantizers(sub).eval()
    with torch.no_grad():
        assert (baked(x) - task_net(x, low)).abs().max().item() <= TOL
    assert sum(p.numel() for p in baked.parameters()) == arch_costs(low, task_net.config).params
