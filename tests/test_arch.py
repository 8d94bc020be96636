"""Tests for `supernet.arch.Arch`: normalisation, equality/hash/key, dict and YAML round trips, errors."""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from omegaconf import OmegaConf

from supernet.arch import Arch
from supernet.space import SearchSpace

SPACES = Path(__file__).resolve().parents[1] / "conf" / "space"


def _arch(**over) -> Arch:
    kw = {"depth": 2, "embed_dim": 128, "num_heads": (4, 2), "mlp_ratio": (4.0, 2.0), "w_bits": (32, 8), "a_bits": 32}
    kw.update(over)
    return Arch(**kw)


# ---- construction -----------------------------------------------------------------------------------------------


def test_lists_become_tuples_and_ratios_floats():
    a = Arch(depth=3, embed_dim=64, num_heads=[1, 2, 4], mlp_ratio=[1, 2, 3], w_bits=[8, 4, 32], a_bits=8)
    assert a.num_heads == (1, 2, 4) and type(a.num_heads) is tuple
    assert a.mlp_ratio == (1.0, 2.0, 3.0) and type(a.mlp_ratio) is tuple
    assert a.w_bits == (8, 4, 32) and type(a.w_bits) is tuple
    assert all(type(r) is float for r in a.mlp_ratio)
    assert all(type(h) is int for h in a.num_heads)
    assert all(type(b) is int for b in a.w_bits)


def test_numpy_per_layer_values_are_normalised_to_builtins():
    a = Arch(2, 64, np.array([1, 2]), np.array([1.0, 2.0]), np.array([8, 32]))
    assert all(type(h) is int for h in a.num_heads)
    assert all(type(r) is float for r in a.mlp_ratio)
    assert all(type(b) is int for b in a.w_bits)
    assert a == Arch(2, 64, (1, 2), (1.0, 2.0), (8, 32))


def test_default_a_bits_is_32():
    assert Arch(1, 64, [1], [1.0], [8]).a_bits == 32


def test_arch_is_frozen():
    a = _arch()
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.depth = 3  # type: ignore[misc]


def test_layer_and_ffn_hidden():
    a = Arch(3, 96, (1, 2, 4), (1.0, 2.0, 4.0), (8, 4, 32))
    assert a.layer(0) == (1, 1.0, 8)
    assert a.layer(2) == (4, 4.0, 32)
    assert [a.ffn_hidden(i) for i in range(3)] == [96, 192, 384]
    assert Arch(1, 64, [1], [0.5], [8]).ffn_hidden(0) == 32


# ---- equality, hash, key ----------------------------------------------------------------------------------------


def test_equal_archs_compare_and_hash_equal():
    a = Arch(2, 128, [4, 2], [4, 2], [32, 8], 32)
    b = Arch(2, 128, (4, 2), (4.0, 2.0), (32, 8), 32)
    assert a == b
    assert hash(a) == hash(b)
    assert a.key() == b.key()
    assert len({a, b}) == 1
    assert {a: 1}[b] == 1


@pytest.mark.parametrize(
    "change",
    [
        {"embed_dim": 64},
        {"a_bits": 8},
        {"num_heads": (2, 4)},
        {"mlp_ratio": (2.0, 4.0)},
        {"w_bits": (8, 32)},
        {"depth": 3, "num_heads": (4, 2, 1), "mlp_ratio": (4.0, 2.0, 1.0), "w_bits": (32, 8, 8)},
    ],
)
def test_different_archs_differ_in_equality_and_key(change):
    a, b = _arch(), _arch(**change)
    assert a != b
    assert a.key() != b.key()


def test_key_format_matches_documented_example():
    a = _arch()
    assert a.key() == "d2_e128_a32_h4-2_f512-256_w32-8"
    assert str(a) == a.key()
    assert Arch.from_key(a.key()) == a


def test_key_writes_ffn_widths_and_runs():
    a = Arch(2, 64, (1, 1), (0.5, 1.5), (8, 8), 8)
    assert a.key() == "d2_e64_a8_h1*2_f32-96_w8*2"
    b = Arch(5, 96, (3, 3, 3, 6, 3), (8 / 3,) * 5, (4, 4, 32, 32, 4))
    assert b.key() == "d5_e96_a32_h3*3-6-3_f256*5_w4*2-32*2-4"
    assert Arch.from_key(b.key()) == b


def test_key_is_canonical_over_input_forms():
    a = Arch(2, 128, [4, 2], [4, 2], [32, 8])
    b = Arch(2, 128, np.array([4, 2]), np.array([4.0, 2.0]), (32, 8))
    c = Arch.from_dict({"depth": 2, "embed_dim": 128, "num_heads": [4, 2], "mlp_ratio": [4.0, 2.0], "w_bits": [32, 8]})
    assert a.key() == b.key() == c.key() == "d2_e128_a32_h4-2_f512-256_w32-8"


@pytest.mark.parametrize("space_name", ["default", "small"])
def test_key_unique_iff_arch_equal_over_samples(space_name, default_space, small_space):
    space = {"default": default_space, "small": small_space}[space_name]
    rng = np.random.default_rng(1234)
    archs = [space.sample(rng) for _ in range(3000)]
    by_key: dict[str, Arch] = {}
    for a in archs:
        other = by_key.setdefault(a.key(), a)
        assert other == a, f"distinct archs {other} and {a} share key {a.key()}"
    assert len(by_key) == len(set(archs))
    if space_name == "small":
        # 3000 draws from 1,152 archs must repeat: the check above then also exercises equal => same key.
        assert len(set(archs)) < len(archs)


def test_key_unique_over_whole_small_space(small_space):
    lo, hi = small_space.gene_bounds()
    archs = {small_space.decode(g) for g in itertools.product(*(range(a, b + 1) for a, b in zip(lo, hi, strict=True)))}
    assert len(archs) == small_space.size()
    assert len({a.key() for a in archs}) == len(archs)


def test_key_distinct_for_ratios_split_differently():
    space = SearchSpace(depth=[2], embed_dim=[64], num_heads=[1], mlp_ratio=[2.0, 2.5, 5.0, 5.5], w_bits=[8])
    a = space.validate(Arch(2, 64, (1, 1), (2.5, 5.0), (8, 8)))
    b = space.validate(Arch(2, 64, (1, 1), (2.0, 5.5), (8, 8)))
    assert a != b
    assert a.key() != b.key()


def test_key_names_the_ffn_width_the_subnet_computes():
    """Two ratios that give the same FFN width (8/3 and 2.66667 of 96 are both 256) are one subnet: one key."""
    a = Arch(1, 96, (1,), (8 / 3,), (8,))
    b = Arch(1, 96, (1,), (2.66667,), (8,))
    assert a.ffn_hidden(0) == b.ffn_hidden(0) and a.key() == b.key()
    assert a.key() != Arch(1, 96, (1,), (2.5,), (8,)).key()


def old_format_key(a: Arch) -> str:
    """The key as written before keys held FFN widths: every layer's ratio, integers without '.0' (round-trips)."""
    ratios = "-".join(str(int(r)) if r.is_integer() else repr(r) for r in a.mlp_ratio)
    heads, bits = "-".join(map(str, a.num_heads)), "-".join(map(str, a.w_bits))
    return f"d{a.depth}_e{a.embed_dim}_a{a.a_bits}_h{heads}_r{ratios}_w{bits}"


def key_length_bound(space: SearchSpace, depth: int) -> int:
    """The longest key an arch of `space` with `depth` layers can have: the global part, then per layer the widest
    heads, FFN width and weight bits in digits plus one separator each (runs `v*n` only ever shorten a key)."""
    digits = lambda values: max(len(str(v)) for v in values)  # noqa: E731
    widths = [round(r * e) for r in space.mlp_ratio for e in space.embed_dim]
    head = f"d{depth}_e{max(space.embed_dim)}_a{max(space.a_bits)}_h_f_w"
    return len(head) + depth * (digits(space.num_heads) + digits(widths) + digits(space.w_bits) + 3) - 3


HF_SHAPES = {  # (layers, embed, heads, FFN width), GQA group: SmolLM-135M, Llama-3.2-1B, an 80-layer Llama-70B shape
    "smollm_135m": ((30, 576, 9, 1536), 3),
    "llama_3_2_1b": ((16, 2048, 32, 8192), 4),
    "llama_80_layers": ((80, 8192, 64, 28672), 8),
}


def hf_shaped_space(name: str) -> SearchSpace:
    from supernet.config import ModelConfig
    from supernet.hf.families import Sizes
    from supernet.hf.load import default_space as hf_space

    sizes, group = HF_SHAPES[name]
    return hf_space(ModelConfig(task="lm", kv_group=group, head_dim=64), Sizes(*sizes))


@pytest.mark.parametrize("space_name", ["default", "small", *HF_SHAPES])
def test_keys_round_trip_and_stay_within_their_bound_at_any_depth(space_name, default_space, small_space):
    """from_key(key) is the arch over random archs of several spaces (imported-model spaces with fractional ratios
    such as 1536/576 and depths up to 80 included), with or without the space given; keys of the old format
    (ratios, `_r`) read as the same arch and re-key to today's key; no key exceeds `key_length_bound` (315
    characters at SmolLM-135M's 30 layers, where the old format took up to 735; 976 at 80 layers of 64 heads and FFN
    widths of 5 digits), and the largest arch, all layers alike, is a few dozen characters at any depth."""
    from supernet.arch import canonical_key

    space = {"default": default_space, "small": small_space}.get(space_name) or hf_shaped_space(space_name)
    rng = np.random.default_rng(7)
    for a in [space.largest(), space.smallest(), *(space.sample(rng) for _ in range(300))]:
        assert Arch.from_key(a.key()) == a == Arch.from_key(a.key(), space)
        assert canonical_key(old_format_key(a)) == a.key() and canonical_key(a.key()) == a.key()
        assert Arch.from_key(old_format_key(a)) == a
        assert len(a.key()) <= key_length_bound(space, a.depth)
    assert len(space.largest().key()) <= 40
    if space_name == "smollm_135m":
        assert key_length_bound(space, 30) == 315 and len(old_format_key(space.largest())) == 735
        assert space.largest().key() == "d30_e576_a32_h9*30_f1536*30_w32*30"
    if space_name == "llama_80_layers":
        assert key_length_bound(space, 80) == 976


def test_key_of_a_user_ratio_reads_back_as_the_space_choice():
    """A ratio typed as a decimal close to a fraction (2.66666666666 × 96 is 256 to within the space's 1e-9) keys as
    its FFN width; read back alone it is 256/96, read back with its space it is the space's own choice."""
    space = SearchSpace(depth=[2], embed_dim=[96], num_heads=[3], mlp_ratio=[2.66666666666, 4.0], w_bits=[8])
    a = space.validate(Arch(2, 96, (3, 3), (2.66666666666, 4.0), (8, 8)))
    assert a.key() == "d2_e96_a32_h3*2_f256-384_w8*2"
    assert Arch.from_key(a.key()) != a and Arch.from_key(a.key()).key() == a.key()
    assert Arch.from_key(a.key(), space) == a and space.contains(Arch.from_key(a.key(), space))


def test_not_an_arch_key():
    with pytest.raises(ValueError, match="is not an arch key"):
        Arch.from_key("d2_e128_banana")


def test_equal_archs_have_equal_keys_with_float_embed_dim():
    a = Arch(2, 64.0, (1, 1), (1.0, 1.0), (8, 8), 32.0)  # type: ignore[arg-type]
    b = Arch(2, 64, (1, 1), (1.0, 1.0), (8, 8), 32)
    assert a == b and hash(a) == hash(b)
    assert a.key() == b.key()


def test_numpy_integer_depth_is_accepted():
    a = Arch(np.int64(2), 64, (1, 1), (1.0, 1.0), (8, 8))  # type: ignore[arg-type]
    assert a == Arch(2, 64, (1, 1), (1.0, 1.0), (8, 8))


# ---- dict round trip --------------------------------------------------------------------------------------------


def test_to_dict_is_plain_builtins():
    d = _arch().to_dict()
    assert d == {
        "depth": 2,
        "embed_dim": 128,
        "num_heads": [4, 2],
        "mlp_ratio": [4.0, 2.0],
        "w_bits": [32, 8],
        "a_bits": 32,
    }
    assert all(type(v) is list for k, v in d.items() if k in ("num_heads", "mlp_ratio", "w_bits"))
    assert json.loads(json.dumps(d)) == d


def test_to_dict_from_dict_round_trip_many(default_space):
    rng = np.random.default_rng(7)
    for _ in range(300):
        a = default_space.sample(rng)
        assert Arch.from_dict(a.to_dict()) == a
        assert Arch.from_dict(json.loads(json.dumps(a.to_dict()))) == a


def test_from_dict_accepts_omegaconf_node():
    a = _arch()
    assert Arch.from_dict(OmegaConf.create(a.to_dict())) == a


def test_from_dict_a_bits_defaults_to_32():
    d = _arch(a_bits=32).to_dict()
    del d["a_bits"]
    assert Arch.from_dict(d).a_bits == 32


def test_from_dict_broadcasts_scalar_per_layer_values():
    a = Arch.from_dict({"depth": 3, "embed_dim": 64, "num_heads": 2, "mlp_ratio": 4, "w_bits": 8, "a_bits": 8})
    assert a == Arch(3, 64, (2, 2, 2), (4.0, 4.0, 4.0), (8, 8, 8), 8)
    mixed = Arch.from_dict({"depth": 2, "embed_dim": 64, "num_heads": [1, 4], "mlp_ratio": 2.0, "w_bits": [8, 32]})
    assert mixed == Arch(2, 64, (1, 4), (2.0, 2.0), (8, 32))


def test_from_dict_depth_from_string_number():
    a = Arch.from_dict({"depth": "2", "embed_dim": 64, "num_heads": 1, "mlp_ratio": 1, "w_bits": 8})
    assert a.depth == 2 and a.num_heads == (1, 1)


# ---- YAML round trip --------------------------------------------------------------------------------------------


def test_yaml_text_round_trip(default_space):
    rng = np.random.default_rng(3)
    for a in [default_space.largest(), default_space.smallest(), *(default_space.sample(rng) for _ in range(100))]:
        text = a.to_yaml()
        assert isinstance(text, str)
        assert yaml.safe_load(text) == a.to_dict()
        assert Arch.from_yaml(text) == a


def test_yaml_file_round_trip(tmp_path):
    a = Arch(3, 96, (1, 2, 4), (1.0, 0.5, 4.0), (1, 8, 32), 8)
    p = tmp_path / "arch.yaml"
    text = a.to_yaml(p)
    assert p.read_text() == text
    assert Arch.from_yaml(p) == a  # Path
    assert Arch.from_yaml(str(p)) == a  # str path to an existing file


def test_from_yaml_hand_written_text_with_broadcast():
    a = Arch.from_yaml("depth: 2\nembed_dim: 64\nnum_heads: 4\nmlp_ratio: [1, 2]\nw_bits: 8\n")
    assert a == Arch(2, 64, (4, 4), (1.0, 2.0), (8, 8), 32)


def test_yaml_text_round_trip_deep_arch():
    d = 20
    a = Arch(d, 64, (4,) * d, (4.0,) * d, (32,) * d)
    text = a.to_yaml()
    assert 255 < len(text) < 4096
    assert Arch.from_yaml(text) == a


# ---- errors -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["num_heads", "mlp_ratio", "w_bits"])
def test_per_layer_length_mismatch(field):
    with pytest.raises(ValueError, match=rf"^{field} has 3 entries but depth=2; give one value per active layer"):
        _arch(**{field: (1, 1, 1)})


def test_per_layer_length_mismatch_from_dict():
    d = {"depth": 3, "embed_dim": 64, "num_heads": [1, 2], "mlp_ratio": 1, "w_bits": 8}
    with pytest.raises(ValueError, match=r"num_heads has 2 entries but depth=3"):
        Arch.from_dict(d)


@pytest.mark.parametrize("depth", [0, -1])
def test_depth_below_one(depth):
    with pytest.raises(ValueError, match=rf"depth={depth} must be a positive integer"):
        Arch(depth, 64, (), (), ())
    with pytest.raises(ValueError, match=rf"depth={depth} must be a positive integer"):
        Arch.from_dict({"depth": depth, "embed_dim": 64, "num_heads": 1, "mlp_ratio": 1.0, "w_bits": 8})


def test_bool_depth_is_refused():
    with pytest.raises(ValueError, match=r"depth=True must be an integer"):
        Arch(True, 64, (1,), (1.0,), (8,))  # type: ignore[arg-type]


@pytest.mark.parametrize("depth", [2.0, "2"])
def test_integral_depth_forms_are_normalised(depth):
    assert Arch(depth, 64, (1, 1), (1.0, 1.0), (8, 8)) == Arch(2, 64, (1, 1), (1.0, 1.0), (8, 8))  # type: ignore


def test_from_dict_non_numeric_depth():
    with pytest.raises(ValueError, match=re.escape("depth='deep' must be an integer")):
        Arch.from_dict({"depth": "deep", "embed_dim": 64, "num_heads": 1, "mlp_ratio": 1.0, "w_bits": 8})


def test_from_dict_rejects_fractional_depth():
    with pytest.raises(ValueError, match="depth"):
        Arch.from_dict({"depth": 2.7, "embed_dim": 64, "num_heads": 1, "mlp_ratio": 1.0, "w_bits": 8})


def test_from_dict_unknown_field():
    d = {**_arch().to_dict(), "dropout": 0.1}
    with pytest.raises(ValueError, match=re.escape("unknown arch field(s) ['dropout']; expected ")):
        Arch.from_dict(d)


@pytest.mark.parametrize("field", ["depth", "embed_dim", "num_heads", "mlp_ratio", "w_bits"])
def test_from_dict_missing_field(field):
    d = _arch().to_dict()
    del d[field]
    with pytest.raises(ValueError, match=re.escape(f"arch is missing field(s) ['{field}']")):
        Arch.from_dict(d)


@pytest.mark.parametrize(
    ("text", "kind"),
    [("- 1\n- 2\n", "list"), ("just a string", "str"), ("42", "int"), ("", "NoneType")],
)
def test_from_yaml_non_mapping(text, kind):
    with pytest.raises(ValueError, match=rf"arch YAML must be a mapping of fields, got {kind}$"):
        Arch.from_yaml(text)


def test_from_yaml_file_with_non_mapping(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("[1, 2, 3]\n")
    with pytest.raises(ValueError, match=r"must be a mapping of fields, got list"):
        Arch.from_yaml(p)


def test_from_yaml_unknown_field_in_text():
    with pytest.raises(ValueError, match=r"unknown arch field\(s\) \['width'\]"):
        Arch.from_yaml("depth: 1\nembed_dim: 64\nwidth: 3\nnum_heads: 1\nmlp_ratio: 1\nw_bits: 8\n")
