"""Cost model (supernet/costs.py) against the extracted modules, `FlopCounterMode` and hand computations."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from supernet import Arch, ModelConfig, SearchSpace, arch_costs, build_supernet, extract_subnet
from tests.conftest import TASK_CONFIGS, sample_input

ROOT = Path(__file__).resolve().parents[1]
SPACE = SearchSpace.from_yaml(ROOT / "conf" / "space" / "default.yaml")
CONFIGS = {
    "image": ModelConfig(task="image"),
    "lm": ModelConfig(task="lm", vocab_size=256, block_size=64),
}
N_RANDOM = 50


@pytest.fixture(scope="module", params=sorted(TASK_CONFIGS))
def net(request):
    """Every registered task model (tests/conftest.py): the project's own and the imported families' block options
    (gated FFN, grouped-query attention, CLS token, pooler, token types), so MACs and BitOPs, which the search
    optimises, are checked for each."""
    torch.manual_seed(0)
    return build_supernet(SPACE, TASK_CONFIGS[request.param]).eval()


def _archs(seed: int, n: int = N_RANDOM) -> list[Arch]:
    rng = np.random.default_rng(seed)
    return [SPACE.largest(), SPACE.smallest()] + [SPACE.sample(rng) for _ in range(n)]


def _input(cfg: ModelConfig, seq_len: int | None = None) -> torch.Tensor:
    if cfg.task == "image" or seq_len is None:
        return sample_input(cfg, batch=1)
    return sample_input(cfg, batch=1, seq_len=seq_len)


def _counted_macs(module: torch.nn.Module, x: torch.Tensor) -> int:
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
        module(x)
    flops = counter.get_total_flops()
    assert flops % 2 == 0
    return flops // 2


def _uniform(depth: int, embed: int, heads: int, ratio: float, w_bits: int, a_bits: int) -> Arch:
    return Arch(depth, embed, (heads,) * depth, (ratio,) * depth, (w_bits,) * depth, a_bits)


# ---- parameters and MACs against the real modules --------------------------------------------------------------------


def test_params_match_extracted_module(net) -> None:
    for arch in _archs(seed=11):
        sub = extract_subnet(net, arch)
        n = sum(p.numel() for p in sub.parameters())
        assert arch_costs(arch, net.config).params == n, arch.key()


def test_macs_match_flop_counter(net) -> None:
    cfg = net.config
    x = _input(cfg)
    for arch in _archs(seed=12):
        sub = extract_subnet(net, arch)
        assert arch_costs(arch, cfg).macs == _counted_macs(sub, x), arch.key()


def test_lm_macs_at_shorter_seq_len() -> None:
    cfg = CONFIGS["lm"]
    torch.manual_seed(0)
    lm = build_supernet(SPACE, cfg).eval()
    rng = np.random.default_rng(13)
    archs = [SPACE.largest(), SPACE.smallest()] + [SPACE.sample(rng) for _ in range(12)]
    for arch in archs:
        sub = extract_subnet(lm, arch)
        for seq_len in (1, 7, 33):
            x = _input(cfg, seq_len)
            assert arch_costs(arch, cfg, seq_len=seq_len).macs == _counted_macs(sub, x), (seq_len, arch.key())
    # default seq_len is block_size
    for arch in archs[:3]:
        assert arch_costs(arch, cfg) == arch_costs(arch, cfg, seq_len=cfg.block_size)


def test_params_bytes_do_not_depend_on_seq_len() -> None:
    cfg = CONFIGS["lm"]
    arch = SPACE.sample(np.random.default_rng(14))
    a, b = arch_costs(arch, cfg, seq_len=5), arch_costs(arch, cfg, seq_len=50)
    assert a.params == b.params and a.bytes == b.bytes
    assert a.macs < b.macs and a.bitops < b.bitops


@pytest.mark.parametrize("seq_len", [0, -1, 65, 1000])
def test_seq_len_out_of_range_raises(seq_len: int) -> None:
    with pytest.raises(ValueError, match="seq_len"):
        arch_costs(SPACE.largest(), CONFIGS["lm"], seq_len=seq_len)


# ---- BitOPs and bytes by hand ----------------------------------------------------------------------------------------


def _hand_parts(arch: Arch, cfg: ModelConfig) -> tuple[int, int, int]:
    """(block-linear MACs, attention-matmul MACs, stem + head MACs) for a uniform arch, written out by hand."""
    e, d = arch.embed_dim, cfg.head_dim
    t = cfg.tokens()
    lin = att = 0
    for i in range(arch.depth):
        inner = arch.num_heads[i] * d
        f = arch.ffn_hidden(i)
        lin += t * (e * 3 * inner + inner * e + e * f + f * e)
        att += 2 * t * t * inner
    other = t * cfg.patch_dim * e + e * cfg.num_classes if cfg.task == "image" else t * e * cfg.vocab_size
    return lin, att, other


@pytest.mark.parametrize("task", sorted(CONFIGS))
@pytest.mark.parametrize(("w_bits", "a_bits"), [(4, 8), (1, 8), (8, 32), (32, 32)])
def test_bitops_by_hand(task: str, w_bits: int, a_bits: int) -> None:
    cfg = CONFIGS[task]
    arch = _uniform(3, 96, 2, 3.0, w_bits, a_bits)
    lin, att, other = _hand_parts(arch, cfg)
    c = arch_costs(arch, cfg)
    assert c.macs == lin + att + other
    assert c.bitops == lin * w_bits * a_bits + (att + other) * 32 * 32


def test_bitops_mixed_bits_by_hand() -> None:
    cfg = CONFIGS["image"]
    arch = Arch(2, 64, (1, 4), (1.0, 4.0), (2, 16), 8)
    t, e, d = cfg.num_patches, 64, cfg.head_dim
    l0 = t * (e * 3 * d + d * e + 2 * e * 64)
    l1 = t * (e * 3 * 4 * d + 4 * d * e + 2 * e * 256)
    att = 2 * t * t * (1 + 4) * d
    other = t * cfg.patch_dim * e + e * cfg.num_classes
    assert arch_costs(arch, cfg).bitops == l0 * 2 * 8 + l1 * 16 * 8 + (att + other) * 1024


def test_float_bytes_are_four_per_param(net) -> None:
    rng = np.random.default_rng(15)
    for _ in range(30):
        a = SPACE.sample(rng)
        a = replace(a, w_bits=(32,) * a.depth)
        c = arch_costs(a, net.config)
        assert c.bytes == 4 * c.params, a.key()
    largest = arch_costs(SPACE.largest(), net.config)
    assert largest.bytes == 4 * largest.params


def test_quantized_bytes_by_hand() -> None:
    cfg = CONFIGS["image"]
    arch = Arch(2, 64, (1, 2), (1.0, 2.0), (1, 4), 8)
    e, d = 64, cfg.head_dim

    def packed(rows: int, cols: int, bits: int) -> int:
        return math.ceil(rows * cols * bits / 8) + 4 * rows

    want = 4 * (cfg.patch_dim * e + e + cfg.num_patches * e)  # stem: proj weight, bias, position embedding
    want += 4 * (2 * e + e * cfg.num_classes + cfg.num_classes)  # head: norm + classifier
    for h, f, b in ((1, 64, 1), (2, 128, 4)):
        inner = h * d
        want += 4 * 4 * e  # ln1, ln2
        want += packed(3 * inner, e, b) + 4 * 3 * inner  # qkv + bias
        want += packed(e, inner, b) + 4 * e  # proj + bias
        want += packed(f, e, b) + 4 * f  # fc1 + bias
        want += packed(e, f, b) + 4 * e  # fc2 + bias
    c = arch_costs(arch, cfg)
    assert c.bytes == want
    assert c.bytes < 4 * c.params


def test_quantized_bytes_match_extracted_shapes(net) -> None:
    """Bytes from the formula applied to the extracted module's actual weight shapes, for random archs."""
    rng = np.random.default_rng(16)
    for _ in range(30):
        arch = SPACE.sample(rng)
        sub = extract_subnet(net, arch)
        quantized = set()
        want = 0
        for i, blk in enumerate(sub.blocks):
            bits = arch.w_bits[i]
            for lin in (blk.qkv, blk.proj, blk.fc1, blk.fc2):
                if bits < 32:
                    rows, cols = lin.weight.shape
                    want += math.ceil(rows * cols * bits / 8) + 4 * rows
                    quantized.add(id(lin.weight))
        want += 4 * sum(p.numel() for p in sub.parameters() if id(p) not in quantized)
        c = arch_costs(arch, net.config)
        assert c.bytes == want, arch.key()
        if any(b < 32 for b in arch.w_bits):
            assert c.bytes < 4 * c.params


# ---- monotonicity ----------------------------------------------------------------------------------------------------


def _bigger(choices: tuple, v):
    i = choices.index(v)
    return choices[i + 1] if i + 1 < len(choices) else None


def _set_layer(arch: Arch, field: str, i: int, v) -> Arch:
    vals = list(getattr(arch, field))
    vals[i] = v
    return replace(arch, **{field: tuple(vals)})


def test_monotone_in_every_dimension(net) -> None:
    cfg = net.config
    rng = np.random.default_rng(17)
    n_checked = 0
    for _ in range(40):
        a = SPACE.sample(rng)
        c = arch_costs(a, cfg)
        i = int(rng.integers(a.depth))

        # deeper: one more layer (copy of layer i) costs strictly more of everything
        if a.depth < SPACE.max_depth:
            deeper = replace(
                a,
                depth=a.depth + 1,
                num_heads=(*a.num_heads, a.num_heads[i]),
                mlp_ratio=(*a.mlp_ratio, a.mlp_ratio[i]),
                w_bits=(*a.w_bits, a.w_bits[i]),
            )
            d = arch_costs(deeper, cfg)
            assert d.params > c.params and d.macs > c.macs and d.bitops > c.bitops and d.bytes > c.bytes
            n_checked += 1

        # wider embedding
        e2 = _bigger(SPACE.embed_dim, a.embed_dim)
        if e2 is not None:
            d = arch_costs(replace(a, embed_dim=e2), cfg)
            assert d.params > c.params and d.macs > c.macs and d.bitops > c.bitops and d.bytes > c.bytes
            n_checked += 1

        # more heads / larger FFN ratio in one layer
        for field, choices in (("num_heads", SPACE.num_heads), ("mlp_ratio", SPACE.mlp_ratio)):
            v2 = _bigger(choices, getattr(a, field)[i])
            if v2 is not None:
                d = arch_costs(_set_layer(a, field, i, v2), cfg)
                assert d.params > c.params and d.macs > c.macs and d.bitops > c.bitops and d.bytes > c.bytes
                n_checked += 1

        # more weight bits: same params and MACs, more BitOPs and bytes
        b2 = _bigger(SPACE.w_bits, a.w_bits[i])
        if b2 is not None:
            d = arch_costs(_set_layer(a, "w_bits", i, b2), cfg)
            assert d.params == c.params and d.macs == c.macs
            assert d.bitops > c.bitops and d.bytes > c.bytes
            n_checked += 1

        # more activation bits: only BitOPs grow
        ab2 = _bigger(SPACE.a_bits, a.a_bits)
        if ab2 is not None:
            d = arch_costs(replace(a, a_bits=ab2), cfg)
            assert (d.params, d.macs, d.bytes) == (c.params, c.macs, c.bytes)
            assert d.bitops > c.bitops
            n_checked += 1
    assert n_checked > 100


def test_extremes_bound_random_archs(net) -> None:
    cfg = net.config
    lo, hi = arch_costs(SPACE.smallest(), cfg), arch_costs(SPACE.largest(), cfg)
    rng = np.random.default_rng(18)
    for _ in range(100):
        c = arch_costs(SPACE.sample(rng), cfg)
        for f in ("params", "macs", "bitops", "bytes"):
            assert getattr(lo, f) <= getattr(c, f) <= getattr(hi, f), f


def test_costs_add_and_to_dict() -> None:
    c = arch_costs(SPACE.largest(), CONFIGS["image"])
    s = c + c
    assert s.to_dict() == {k: 2 * v for k, v in c.to_dict().items()}
    assert set(c.to_dict()) == {"params", "macs", "bitops", "bytes"}
    assert all(isinstance(v, int) for v in c.to_dict().values())
