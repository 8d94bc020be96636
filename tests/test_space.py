"""Tests for `supernet.space.SearchSpace`: loading, size, sampling, extremes, genes, validation, consistency."""

from __future__ import annotations

import itertools
import random
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from supernet.arch import Arch
from supernet.space import GLOBAL_GENES, LAYER_GENES, SUPPORTED_A_BITS, SUPPORTED_W_BITS, SearchSpace

CONF = Path(__file__).resolve().parents[1] / "conf"
SPACES = CONF / "space"

DEFAULT_CHOICES = {
    "depth": (2, 3, 4, 5, 6),
    "embed_dim": (64, 96, 128),
    "num_heads": (1, 2, 4),
    "mlp_ratio": (1.0, 2.0, 3.0, 4.0),
    "w_bits": (1, 2, 4, 8, 32),
    "a_bits": (8, 32),
}

TINY = {
    "depth": [1, 2],
    "embed_dim": [64, 128],
    "num_heads": [1, 2],
    "mlp_ratio": [1.0, 2.0],
    "w_bits": [4, 8],
    "a_bits": [8, 32],
}


def _all_genes(space: SearchSpace):
    lo, hi = space.gene_bounds()
    return itertools.product(*(range(a, b + 1) for a, b in zip(lo, hi, strict=True)))


def _inactive_positions(space: SearchSpace, depth: int) -> list[int]:
    L = space.max_depth
    n = len(GLOBAL_GENES)
    return [n + k * L + i for k in range(len(LAYER_GENES)) for i in range(depth, L)]


# ---- loading ----------------------------------------------------------------------------------------------------


def test_load_default_yaml(default_space):
    assert default_space.name == "default"
    for name, choices in DEFAULT_CHOICES.items():
        assert getattr(default_space, name) == choices
    assert all(type(r) is float for r in default_space.mlp_ratio)
    assert all(type(v) is int for v in default_space.embed_dim)
    assert default_space.max_depth == 6
    assert default_space.n_genes == 3 + 3 * 6


def test_load_small_yaml(small_space):
    assert small_space.name == "small"
    assert small_space.depth == (2, 3)
    assert small_space.mlp_ratio == (2.0, 4.0)
    assert small_space.a_bits == (32,)


def test_from_yaml_accepts_str_path():
    assert SearchSpace.from_yaml(str(SPACES / "small.yaml")) == SearchSpace.from_yaml(SPACES / "small.yaml")


def test_from_yaml_missing_file(tmp_path):
    p = tmp_path / "nope.yaml"
    with pytest.raises(ValueError, match=re.escape(f"search space file {p} does not exist")):
        SearchSpace.from_yaml(p)


@pytest.mark.parametrize("name", ["default", "small"])
def test_load_via_omegaconf(name):
    cfg = OmegaConf.load(SPACES / f"{name}.yaml")
    space = SearchSpace.from_config(cfg)
    assert space == SearchSpace.from_yaml(SPACES / f"{name}.yaml")
    assert type(space.depth) is tuple


@pytest.mark.parametrize("name", ["default", "small"])
def test_load_via_hydra_compose(name):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(config_name=f"space/{name}")
    assert set(cfg) == {"space"}
    space = SearchSpace.from_config(cfg.space)
    assert space == SearchSpace.from_yaml(SPACES / f"{name}.yaml")
    assert space.name == name


def test_choices_are_sorted_tuples():
    s = SearchSpace(depth=[3, 1], embed_dim=[128, 64], num_heads=[4, 1, 2], mlp_ratio=[4, 1], w_bits=[32, 8])
    assert s.depth == (1, 3)
    assert s.embed_dim == (64, 128)
    assert s.num_heads == (1, 2, 4)
    assert s.mlp_ratio == (1.0, 4.0) and all(type(r) is float for r in s.mlp_ratio)
    assert s.w_bits == (8, 32)
    assert s.a_bits == (32,)
    assert s.name == "custom"


# ---- size -------------------------------------------------------------------------------------------------------


def test_default_size(default_space):
    assert default_space.size() >= 10**9
    per_layer = 3 * 4 * 5
    assert default_space.size() == 3 * 2 * sum(per_layer**d for d in range(2, 7)) == 284_680_677_600
    assert type(default_space.size()) is int


def test_small_size(small_space):
    assert small_space.size() == 1152 <= 2000


@pytest.mark.parametrize(
    "choices",
    [
        TINY,
        {**TINY, "depth": [1, 3], "num_heads": [1, 2, 4], "mlp_ratio": [2.0], "a_bits": [32]},
        {**TINY, "depth": [2], "embed_dim": [64], "w_bits": [1, 2, 8]},
    ],
    ids=["tiny", "gapped-depth", "single-depth"],
)
def test_size_matches_brute_force(choices):
    space = SearchSpace(**choices)
    distinct = {space.decode(g) for g in _all_genes(space)}
    assert space.size() == len(distinct)
    assert all(space.contains(a) for a in distinct)


def test_small_size_matches_brute_force_over_canonical_genes(small_space):
    canon = {tuple(small_space.canonical_genes(g)) for g in _all_genes(small_space)}
    assert len(canon) == small_space.size() == 1152
    archs = {small_space.decode(c) for c in canon}
    assert len(archs) == 1152
    for c in canon:
        assert tuple(small_space.encode(small_space.decode(c))) == c


# ---- sampling ---------------------------------------------------------------------------------------------------


def test_samples_are_valid_and_typed(default_space):
    rng = np.random.default_rng(0)
    for _ in range(500):
        a = default_space.sample(rng)
        assert isinstance(a, Arch)
        assert default_space.validate(a) is a
        assert type(a.depth) is int and type(a.embed_dim) is int and type(a.a_bits) is int
        assert len(a.num_heads) == len(a.mlp_ratio) == len(a.w_bits) == a.depth


def test_sample_reproducible_for_same_seed(default_space):
    a = [default_space.sample(np.random.default_rng(42)) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    r1, r2 = np.random.default_rng(5), np.random.default_rng(5)
    s1 = [default_space.sample(r1) for _ in range(200)]
    s2 = [default_space.sample(r2) for _ in range(200)]
    assert s1 == s2


def test_different_seeds_give_different_streams(default_space):
    r1, r2 = np.random.default_rng(1), np.random.default_rng(2)
    assert [default_space.sample(r1) for _ in range(50)] != [default_space.sample(r2) for _ in range(50)]


def test_sample_covers_every_choice(default_space):
    rng = np.random.default_rng(2024)
    seen: dict[str, set] = {n: set() for n in DEFAULT_CHOICES}
    per_position: dict[tuple[str, int], set] = {}
    depths = Counter()
    n = 3000
    for _ in range(n):
        a = default_space.sample(rng)
        depths[a.depth] += 1
        for g in GLOBAL_GENES:
            seen[g].add(getattr(a, g))
        for g in LAYER_GENES:
            for i, v in enumerate(getattr(a, g)):
                seen[g].add(v)
                per_position.setdefault((g, i), set()).add(v)
    for name, choices in DEFAULT_CHOICES.items():
        assert seen[name] == set(choices), name
    # Every choice also appears at every layer position, the deepest included.
    for (g, _i), vals in per_position.items():
        assert vals == set(getattr(default_space, g))
    assert len(per_position) == len(LAYER_GENES) * default_space.max_depth
    # Depth is uniform (loose bound; deterministic for the fixed seed).
    for d in default_space.depth:
        assert abs(depths[d] / n - 1 / 5) < 0.04


def test_sample_leaves_global_random_state_untouched(default_space):
    np.random.seed(123)
    random.seed(123)
    np_state = np.random.get_state()
    py_state = random.getstate()
    rng = np.random.default_rng(0)
    for _ in range(100):
        default_space.sample(rng)
    after = np.random.get_state()
    assert np_state[0] == after[0]
    assert np.array_equal(np_state[1], after[1])
    assert np_state[2:] == after[2:]
    assert random.getstate() == py_state


# ---- extremes ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["default", "small"])
def test_largest_and_smallest(name, default_space, small_space):
    space = {"default": default_space, "small": small_space}[name]
    big, small = space.largest(), space.smallest()
    assert space.validate(big) is big and space.validate(small) is small
    assert big.depth == max(space.depth) and small.depth == min(space.depth)
    assert big.embed_dim == max(space.embed_dim) and small.embed_dim == min(space.embed_dim)
    assert big.a_bits == max(space.a_bits) and small.a_bits == min(space.a_bits)
    for g in LAYER_GENES:
        assert set(getattr(big, g)) == {max(getattr(space, g))}
        assert set(getattr(small, g)) == {min(getattr(space, g))}
    lo, hi = space.gene_bounds()
    np.testing.assert_array_equal(space.encode(big), hi)
    np.testing.assert_array_equal(space.encode(small), lo)
    rng = np.random.default_rng(9)
    for _ in range(300):
        a = space.sample(rng)
        assert small.depth <= a.depth <= big.depth
        assert small.embed_dim <= a.embed_dim <= big.embed_dim
        assert small.a_bits <= a.a_bits <= big.a_bits
        for g in LAYER_GENES:
            vals = getattr(a, g)
            assert getattr(small, g)[0] <= min(vals) and max(vals) <= getattr(big, g)[0]


def test_default_extremes_exact(default_space):
    assert default_space.largest() == Arch(6, 128, (4,) * 6, (4.0,) * 6, (32,) * 6, 32)
    assert default_space.smallest() == Arch(2, 64, (1, 1), (1.0, 1.0), (1, 1), 8)


# ---- genes ------------------------------------------------------------------------------------------------------


def test_gene_bounds_layout(default_space):
    lo, hi = default_space.gene_bounds()
    assert lo.dtype == np.int64 and hi.dtype == np.int64
    assert lo.shape == hi.shape == (21,)
    assert np.all(lo == 0)
    expected = [4, 2, 1] + [2] * 6 + [3] * 6 + [4] * 6
    assert hi.tolist() == expected


def test_encode_layout_example(default_space):
    a = Arch(3, 96, (1, 2, 4), (1.0, 3.0, 4.0), (1, 8, 32), 32)
    g = default_space.encode(a)
    assert g.dtype == np.int64
    assert g.tolist() == [1, 1, 1, 0, 1, 2, 0, 0, 0, 0, 2, 3, 0, 0, 0, 0, 3, 4, 0, 0, 0]


def test_encode_decode_round_trip_many(default_space):
    rng = np.random.default_rng(11)
    lo, hi = default_space.gene_bounds()
    for _ in range(1000):
        a = default_space.sample(rng)
        g = default_space.encode(a)
        assert g.shape == (default_space.n_genes,)
        assert np.all(g >= lo) and np.all(g <= hi)
        assert np.all(g[_inactive_positions(default_space, a.depth)] == 0)
        assert default_space.decode(g) == a
        assert default_space.decode(g.tolist()) == a
        assert default_space.decode(g.astype(float)) == a
        np.testing.assert_array_equal(default_space.canonical_genes(g), g)


_DEFAULT = SearchSpace.from_yaml(SPACES / "default.yaml")


_IN_BOUNDS_GENES = st.tuples(*(st.integers(int(a), int(b)) for a, b in zip(*_DEFAULT.gene_bounds(), strict=True)))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(genes=_IN_BOUNDS_GENES)
def test_decode_any_in_bounds_genes_round_trips(genes):
    space = _DEFAULT
    a = space.decode(genes)
    assert space.contains(a)
    c = space.canonical_genes(genes)
    assert space.decode(c) == a
    assert np.array_equal(space.encode(a), c)
    # Canonical genes equal the input except in inactive positions, which are zeroed.
    inactive = _inactive_positions(space, a.depth)
    active = [j for j in range(space.n_genes) if j not in inactive]
    assert np.array_equal(c[active], np.asarray(genes)[active])
    assert np.all(c[inactive] == 0)


def test_inactive_genes_are_ignored(default_space):
    rng = np.random.default_rng(21)
    lo, hi = default_space.gene_bounds()
    checked = 0
    for _ in range(300):
        a = default_space.sample(rng)
        if a.depth == default_space.max_depth:
            continue
        g = default_space.encode(a)
        inactive = _inactive_positions(default_space, a.depth)
        # In-bounds noise in inactive positions.
        g2 = g.copy()
        g2[inactive] = rng.integers(lo[inactive], hi[inactive] + 1)
        assert default_space.decode(g2) == a
        np.testing.assert_array_equal(default_space.canonical_genes(g2), g)
        # Out-of-bounds noise in inactive positions, above and below.
        g3 = g.copy()
        g3[inactive] = rng.choice([-5, -1, 99, 1000], size=len(inactive))
        assert default_space.decode(g3) == a
        np.testing.assert_array_equal(default_space.canonical_genes(g3), g)
        checked += 1
    assert checked > 100


def test_two_vectors_differing_only_in_inactive_genes_decode_equal(small_space):
    # small space: L = 3; depth gene 0 -> depth 2, so layer 2 (positions 5, 8, 11) is inactive.
    g1 = [0, 1, 0, 1, 0, 0, 1, 1, 0, 0, 1, 1]
    g2 = [0, 1, 0, 1, 0, 1, 1, 1, 1, 0, 1, 1]
    g3 = [0, 1, 0, 1, 0, 7, 1, 1, -3, 0, 1, 42]
    a = small_space.decode(g1)
    assert a == small_space.decode(g2) == small_space.decode(g3)
    assert a == Arch(2, 128, (4, 2), (4.0, 4.0), (2, 8), 32)
    assert small_space.canonical_genes(g3).tolist() == [0, 1, 0, 1, 0, 0, 1, 1, 0, 0, 1, 0]


def test_canonical_genes_equal_iff_same_arch(small_space):
    by_canon: dict[tuple, Arch] = {}
    for g in _all_genes(small_space):
        a = small_space.decode(g)
        c = tuple(small_space.canonical_genes(g))
        assert by_canon.setdefault(c, a) == a
    assert len(set(by_canon.values())) == len(by_canon)


def test_encode_validates(default_space):
    with pytest.raises(ValueError, match=re.escape("embed_dim=100 not in (64, 96, 128)")):
        default_space.encode(Arch(2, 100, (1, 1), (1.0, 1.0), (8, 8), 32))


@pytest.mark.parametrize("shape", [(20,), (22,), (0,), (1, 21), (21, 1)])
def test_decode_wrong_length(default_space, shape):
    with pytest.raises(ValueError, match=re.escape(f"expected 21 genes for space 'default', got shape {shape}")):
        default_space.decode(np.zeros(shape, dtype=np.int64))


@pytest.mark.parametrize("bad", [0.5, np.nan, np.inf])
def test_decode_non_integer_genes(default_space, bad):
    g = default_space.encode(default_space.largest()).astype(float)
    g[4] = bad
    with pytest.raises(ValueError, match=r"^genes must be integers, got \["):
        default_space.decode(g)


@pytest.mark.parametrize(
    ("pos", "value", "bounds"),
    [(0, 5, "[0, 4]"), (0, -1, "[0, 4]"), (1, 3, "[0, 2]"), (2, 2, "[0, 1]"), (3, 3, "[0, 2]"), (20, 5, "[0, 4]")],
)
def test_decode_out_of_range_active_gene(default_space, pos, value, bounds):
    g = default_space.encode(default_space.largest())  # depth 6: every layer gene is active
    g[pos] = value
    with pytest.raises(ValueError, match=re.escape(f"gene {pos}={value} outside its bounds {bounds}")):
        default_space.decode(g)


def test_decode_out_of_range_gene_of_active_layer_at_shallow_depth(default_space):
    g = default_space.encode(default_space.smallest())  # depth 2: layers 0, 1 active
    g[3 + 6 + 1] = 4  # mlp_ratio of layer 1, bound 3
    with pytest.raises(ValueError, match=re.escape("gene 10=4 outside its bounds [0, 3]")):
        default_space.decode(g)
    g = default_space.encode(default_space.smallest())
    g[3 + 6 + 2] = 4  # mlp_ratio of layer 2: inactive at depth 2, ignored
    assert default_space.decode(g) == default_space.smallest()


# ---- validate ---------------------------------------------------------------------------------------------------


def test_validate_per_layer_message_exact(default_space):
    a = Arch(3, 64, (1, 2, 3), (1.0, 1.0, 1.0), (8, 8, 8), 32)
    with pytest.raises(ValueError, match=r"^" + re.escape("num_heads[2]=3 not in (1, 2, 4) (space 'default')") + "$"):
        default_space.validate(a)
    assert not default_space.contains(a)


@pytest.mark.parametrize(
    ("arch", "msg"),
    [
        (Arch(7, 64, (1,) * 7, (1.0,) * 7, (8,) * 7, 32), "depth=7 not in (2, 3, 4, 5, 6)"),
        (Arch(1, 64, (1,), (1.0,), (8,), 32), "depth=1 not in (2, 3, 4, 5, 6)"),
        (Arch(2, 100, (1, 1), (1.0, 1.0), (8, 8), 32), "embed_dim=100 not in (64, 96, 128)"),
        (Arch(2, 64, (1, 1), (1.0, 1.0), (8, 8), 16), "a_bits=16 not in (8, 32)"),
        (Arch(2, 64, (1, 1), (1.0, 2.5), (8, 8), 32), "mlp_ratio[1]=2.5 not in (1.0, 2.0, 3.0, 4.0)"),
        (Arch(2, 64, (1, 1), (5.0, 1.0), (8, 8), 32), "mlp_ratio[0]=5 not in (1.0, 2.0, 3.0, 4.0)"),
        (Arch(2, 64, (1, 1), (1.0, 1.0), (8, 16), 32), "w_bits[1]=16 not in (1, 2, 4, 8, 32)"),
        (Arch(2, 64, (8, 1), (1.0, 1.0), (8, 16), 32), "num_heads[0]=8 not in (1, 2, 4)"),
    ],
)
def test_validate_messages(default_space, arch, msg):
    with pytest.raises(ValueError, match=r"^" + re.escape(f"{msg} (space 'default')") + "$"):
        default_space.validate(arch)
    assert default_space.contains(arch) is False


def test_validate_reports_first_bad_field(default_space):
    # Global fields are checked before per-layer ones, and layers in order.
    a = Arch(2, 100, (3, 3), (1.0, 1.0), (8, 8), 32)
    with pytest.raises(ValueError, match=r"^embed_dim=100"):
        default_space.validate(a)
    b = Arch(3, 64, (1, 3, 5), (1.0, 1.0, 1.0), (8, 8, 8), 32)
    with pytest.raises(ValueError, match=re.escape("num_heads[1]=3")):
        default_space.validate(b)


@pytest.mark.parametrize("obj", [{"depth": 2}, None, "d2_e64", (2, 64)])
def test_validate_non_arch(default_space, obj):
    with pytest.raises(ValueError, match=rf"^expected an Arch, got {type(obj).__name__}; build one with Arch"):
        default_space.validate(obj)  # type: ignore[arg-type]
    assert default_space.contains(obj) is False  # type: ignore[arg-type]


def test_validate_returns_arch(small_space):
    a = small_space.largest()
    assert small_space.validate(a) is a
    assert small_space.contains(a)


# ---- inconsistent spaces ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "msg"),
    [
        ({"num_heads": []}, r"^space\.num_heads is empty; give at least one choice$"),
        ({"a_bits": ()}, r"^space\.a_bits is empty"),
        ({"depth": [2, 3, 2]}, r"^space\.depth=\[2, 3, 2\] has duplicate choices$"),
        ({"mlp_ratio": [2, 2.0]}, r"^space\.mlp_ratio=\[2, 2\.0\] has duplicate choices$"),
        ({"depth": [0, 2]}, r"^space\.depth has non-positive choice\(s\) \[0\]; all choices must be > 0$"),
        ({"embed_dim": [-64, 64]}, r"^space\.embed_dim has non-positive choice\(s\) \[-64\]"),
        ({"num_heads": [0]}, r"^space\.num_heads has non-positive choice\(s\) \[0\]"),
        ({"mlp_ratio": [-1.0, 2.0]}, r"^space\.mlp_ratio has non-positive choice\(s\) \[-1\.0\]"),
        (
            {"w_bits": [3, 8]},
            r"^space\.w_bits has unsupported bit-width\(s\) \[3\]; supported: \(1, 2, 4, 8, 16, 32\)$",
        ),
        ({"a_bits": [2, 8]}, r"^space\.a_bits has unsupported bit-width\(s\) \[2\]; supported: \(4, 8, 16, 32\)$"),
        (
            {"mlp_ratio": [1.5], "embed_dim": [64, 65]},
            r"^space: mlp_ratio=1\.5 × embed_dim=65 = 97\.5 is not an integer FFN width",
        ),
        ({"depth": "2"}, r"^space\.depth must be a list of choices, got '2'$"),
        ({"embed_dim": 64}, r"^space\.embed_dim must be a list of choices, got 64$"),
        ({"w_bits": "8, 32"}, r"^space\.w_bits must be a list of choices"),
        ({"depth": [2, 2.5]}, r"^space\.depth=\[2, 2\.5\] must contain integers$"),
        ({"num_heads": ["four"]}, r"^space\.num_heads=\['four'\] must contain int values$"),
        ({"mlp_ratio": [None]}, r"^space\.mlp_ratio=\[None\] must contain float values$"),
    ],
)
def test_inconsistent_space_raises(change, msg):
    with pytest.raises(ValueError, match=msg):
        SearchSpace(**{**TINY, **change})


def test_supported_bits_accepted():
    s = SearchSpace(**{**TINY, "w_bits": list(SUPPORTED_W_BITS), "a_bits": list(SUPPORTED_A_BITS)})
    assert s.w_bits == SUPPORTED_W_BITS and s.a_bits == SUPPORTED_A_BITS


def test_fractional_ratio_with_integer_product_is_accepted():
    s = SearchSpace(**{**TINY, "mlp_ratio": [0.5, 1.5], "embed_dim": [64, 96]})
    a = Arch(1, 96, (1,), (1.5,), (8,), 8)
    assert s.validate(a).ffn_hidden(0) == 144


@pytest.mark.parametrize("ratio", [float("inf"), float("nan")])
def test_non_finite_ratio_raises_clear_value_error(ratio):
    with pytest.raises(ValueError, match="mlp_ratio"):
        SearchSpace(**{**TINY, "mlp_ratio": [ratio]})


def test_from_config_unknown_field():
    with pytest.raises(ValueError, match=re.escape("unknown search space field(s) ['dropout']; expected some of [")):
        SearchSpace.from_config({**TINY, "dropout": [0.1]})


@pytest.mark.parametrize("field", ["depth", "embed_dim", "num_heads", "mlp_ratio", "w_bits"])
def test_from_config_missing_field(field):
    cfg = {k: v for k, v in TINY.items() if k != field}
    with pytest.raises(ValueError, match=re.escape(f"search space config is missing field(s) ['{field}']")):
        SearchSpace.from_config(cfg)


def test_from_config_optional_fields():
    cfg = {k: v for k, v in TINY.items() if k != "a_bits"}
    s = SearchSpace.from_config(cfg)
    assert s.a_bits == (32,) and s.name == "custom"


def test_from_config_non_mapping():
    with pytest.raises(ValueError, match=r"search space config must be a mapping, got list"):
        SearchSpace.from_config([1, 2])  # type: ignore[arg-type]


def test_from_yaml_inconsistent_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("depth: [2]\nembed_dim: [65]\nnum_heads: [1]\nmlp_ratio: [1.5]\nw_bits: [8]\n")
    with pytest.raises(ValueError, match=r"mlp_ratio=1\.5 × embed_dim=65"):
        SearchSpace.from_yaml(p)


# ---- fingerprint, to_dict -----------------------------------------------------------------------------------------


def test_fingerprint_ignores_name_and_order():
    a = SearchSpace(**TINY, name="a")
    b = SearchSpace(**{k: list(reversed(v)) for k, v in TINY.items()}, name="b")
    assert a.fingerprint() == b.fingerprint()
    assert re.fullmatch(r"[0-9a-f]{16}", a.fingerprint())


def test_fingerprint_stable_for_loaded_space(default_space):
    again = SearchSpace.from_config(OmegaConf.load(SPACES / "default.yaml"))
    assert again.fingerprint() == default_space.fingerprint()
    assert default_space.fingerprint() != SearchSpace.from_yaml(SPACES / "small.yaml").fingerprint()


@pytest.mark.parametrize(
    "change",
    [
        {"depth": [1, 3]},
        {"depth": [1]},
        {"embed_dim": [64, 96]},
        {"num_heads": [1, 2, 4]},
        {"mlp_ratio": [1.0, 4.0]},
        {"w_bits": [4, 32]},
        {"a_bits": [8]},
    ],
)
def test_fingerprint_changes_with_any_choice(change):
    assert SearchSpace(**TINY).fingerprint() != SearchSpace(**{**TINY, **change}).fingerprint()


@pytest.mark.parametrize("name", ["default", "small"])
def test_to_dict_from_config_round_trip(name):
    s = SearchSpace.from_yaml(SPACES / f"{name}.yaml")
    d = s.to_dict()
    assert d["name"] == name
    assert all(type(d[k]) is list for k in DEFAULT_CHOICES)
    back = SearchSpace.from_config(d)
    assert back == s
    assert back.fingerprint() == s.fingerprint()
    assert SearchSpace.from_config(OmegaConf.create(d)) == s
