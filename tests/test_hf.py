"""Hugging Face import/export on tiny random models built from configs (nothing is downloaded).

Invariant: the imported supernet's largest arch reproduces the model's logits (≤ 1e-4 relative, float32), for
several random configs of every family (odd head counts, GQA ratios); every subnet written back with
`save_pretrained` reloads with `from_pretrained` and matches the subnet's outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from supernet.extract import extract_subnet  # noqa: E402
from supernet.hf.families import FAMILIES  # noqa: E402
from supernet.hf.load import load_pretrained, pretrained_info, supernet_from_pretrained  # noqa: E402
from supernet.hf.save import hf_logits, save_hf, why_not  # noqa: E402
from supernet.space import SearchSpace  # noqa: E402
from supernet.tolerance import RTOL, relative_error  # noqa: E402
from tests.conftest import padded_tokens  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
VOCAB, POSITIONS = 61, 24


def random_config(family: str, seed: int):
    """A tiny random config of `family`: odd and even head counts, head dims, GQA ratios, activations."""
    rng = np.random.default_rng(seed)
    heads = int(rng.choice([1, 2, 3, 4, 5, 6]))
    d = int(rng.choice([4, 6, 8]))
    layers = int(rng.integers(1, 4))
    ffn = int(rng.choice([2, 3, 4])) * heads * d
    if family == "vit":
        return transformers.ViTConfig(
            hidden_size=heads * d, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=ffn,
            image_size=8, patch_size=int(rng.choice([2, 4])), num_channels=int(rng.choice([1, 3])),
            num_labels=int(rng.integers(2, 11)), layer_norm_eps=float(rng.choice([1e-12, 1e-6])),
        )  # fmt: skip
    if family == "bert":
        return transformers.BertConfig(
            vocab_size=VOCAB, hidden_size=heads * d, num_hidden_layers=layers, num_attention_heads=heads,
            intermediate_size=ffn, max_position_embeddings=POSITIONS, num_labels=int(rng.integers(2, 6)),
            hidden_act=str(rng.choice(["gelu", "relu"])),
        )  # fmt: skip
    if family == "gpt2":
        return transformers.GPT2Config(
            vocab_size=VOCAB, n_embd=heads * d, n_layer=layers, n_head=heads, n_positions=POSITIONS,
            n_inner=ffn if rng.random() < 0.5 else None, activation_function=str(rng.choice(["gelu_new", "gelu"])),
            bos_token_id=0, eos_token_id=0,
        )  # fmt: skip
    group = int(rng.choice([1, 2, 3]))
    kv = int(rng.integers(1, 4))
    return transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=kv * group * int(rng.choice([2, 4])), num_hidden_layers=layers,
        num_attention_heads=kv * group, num_key_value_heads=kv, head_dim=d, intermediate_size=int(rng.choice([20, 36])),
        max_position_embeddings=POSITIONS, tie_word_embeddings=bool(rng.random() < 0.5),
        rope_theta=float(rng.choice([10000.0, 500.0])), rms_norm_eps=1e-5, rope_scaling=rope_scaling(seed),
    )  # fmt: skip


def rope_scaling(seed: int) -> dict | None:
    """None (plain RoPE), linear or Llama 3's scaling; an original context of 160 positions with frequency factors 1
    and 16 makes Llama 3's bands: wavelengths below 10 kept, 10-160 ramped, beyond divided (seed 5 has all three).
    Chosen by the seed alone, so that each seed's other draws stay what they were."""
    kind = ["default", "linear", "llama3"][seed % 3]
    if kind == "default":
        return None
    if kind == "linear":
        return {"rope_type": "linear", "factor": 4.0}
    return {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 16.0,
            "original_max_position_embeddings": 160}  # fmt: skip


MODELS = {"vit": "ViTForImageClassification", "bert": "BertForSequenceClassification", "gpt2": "GPT2LMHeadModel",
          "llama": "LlamaForCausalLM"}  # fmt: skip
# Llama seeds cover grouped-query ratios 1, 2 and 3, odd head counts and every RoPE scaling (see random_config)
SEEDS = {"vit": (0, 1, 2, 3), "bert": (0, 1, 2, 3), "gpt2": (0, 1, 2, 3), "llama": (2, 3, 4, 5, 6)}
CASES = [(f, s) for f in MODELS for s in SEEDS[f]]


def tiny_model(family: str, seed: int) -> torch.nn.Module:
    """A random model of the family (weights perturbed: fresh init has zero biases and unit norms)."""
    torch.manual_seed(seed)
    model = getattr(transformers, MODELS[family])(random_config(family, seed)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def inputs(model: torch.nn.Module, seed: int = 0, batch: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    c = model.config
    if isinstance(model, transformers.ViTForImageClassification):
        return torch.randn(batch, c.num_channels, c.image_size, c.image_size, generator=g)
    return torch.randint(0, VOCAB, (batch, 17), generator=g)


@pytest.mark.parametrize("family,seed", CASES)
def test_largest_arch_reproduces_the_pretrained_logits(family: str, seed: int) -> None:
    model = tiny_model(family, seed)
    net = supernet_from_pretrained(model)
    x = inputs(model, seed)
    ref = hf_logits(model, x)
    with torch.no_grad():
        out = net(x, net.space.largest())
    assert out.shape == ref.shape
    assert relative_error(out, ref) <= RTOL


@pytest.mark.parametrize("seed", SEEDS["bert"])
def test_bert_on_padded_batches_matches_transformers_with_its_attention_mask(seed: int) -> None:
    """Right-padded rows of random lengths: the imported supernet (mask from the ids) gives transformers' logits with
    attention_mask = (ids != pad), and those are each row's logits without its padding."""
    model = tiny_model("bert", seed)
    net = supernet_from_pretrained(model)
    assert net.config.pad_id == model.config.pad_token_id == 0
    x = padded_tokens(net.config, 5, 17, torch.Generator().manual_seed(seed))
    lengths = (x != 0).sum(1).tolist()
    assert min(lengths) < 17
    with torch.no_grad():
        ref = model(input_ids=x, attention_mask=(x != 0).long()).logits
        out = net(x, net.space.largest())
        alone = torch.cat([model(input_ids=x[i : i + 1, :n]).logits for i, n in enumerate(lengths)])
    assert relative_error(out, ref) <= RTOL
    assert relative_error(out, alone) <= RTOL


@pytest.mark.parametrize("family", ["vit", "llama"])
def test_bit_norms_and_depth_heads_start_as_copies_of_the_pretrained_ones(family: str) -> None:
    """Every depth's head and every bit-width's norms start from the model's: each arch's output is the same as
    without them."""
    model = tiny_model(family, 1)  # 3 layers: depths 2 and 3, so two heads
    plain, copies = supernet_from_pretrained(model), supernet_from_pretrained(model, bit_norms=True, depth_heads=True)
    assert copies.head.fc.weight.shape[0] == len(copies.space.depth) == 2
    x = inputs(model, 1)
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for arch in [copies.space.largest(), *(copies.space.sample(rng) for _ in range(10))]:
            assert torch.equal(copies(x, arch), plain(x, arch)), arch.key()


@pytest.mark.parametrize("family,seed", CASES)
def test_every_subnet_exports_back_to_an_equal_hugging_face_model(family: str, seed: int, tmp_path) -> None:
    """Random archs (and the smallest): exact-shape export where the stock config expresses the arch, else the
    zero-padded one; from_pretrained of the directory gives the subnet's outputs."""
    model = tiny_model(family, seed)
    net = supernet_from_pretrained(model)
    info = pretrained_info(model, "tiny")
    rng = np.random.default_rng(seed)
    # The largest, the smallest and random archs, until 5 that a Hugging Face config can express (an arch with more
    # heads than its width holds, where the family derives head_dim = hidden / heads, is refused at export in one
    # line: checked for what it says, and not counted).
    archs, pool = [], [net.space.largest(), net.space.smallest(), *(net.space.sample(rng) for _ in range(200))]
    for arch in pool:
        why = why_not(arch, info, net.config.head_dim, pad=True)
        if why is None:
            archs.append(arch)
        else:
            assert "derives head_dim = hidden_size / num_attention_heads" in why, why
        if len(archs) == 5:
            break
    assert len(archs) == 5 and archs[0] == net.space.largest()
    x = inputs(model, seed + 1)
    exported = 0
    for k, arch in enumerate(archs):
        pad = why_not(arch, info, net.config.head_dim) is not None
        sub = extract_subnet(net, arch)
        out = save_hf(sub, info, tmp_path / str(k), pad=pad)
        back = load_pretrained(str(out))
        assert type(back).__name__ == MODELS[family]
        with torch.no_grad():
            want = sub(x)
        assert relative_error(hf_logits(back, x), want) <= RTOL
        exported += 1
    assert exported == len(archs)


@pytest.mark.parametrize("family", list(MODELS))
def test_quantized_subnets_are_written_with_their_quantized_weights(family: str, tmp_path) -> None:
    model = tiny_model(family, 7)
    net = supernet_from_pretrained(model)
    big = net.space.largest()
    arch = type(big)(big.depth, big.embed_dim, big.num_heads, big.mlp_ratio, (2,) * big.depth, 32)
    sub = extract_subnet(net, arch)
    back = load_pretrained(str(save_hf(sub, pretrained_info(model, "tiny"), tmp_path / "q")))
    x = inputs(model)
    with torch.no_grad():
        want = sub(x)
    assert relative_error(hf_logits(back, x), want) <= RTOL
    assert (want - hf_logits(model, x)).abs().max() > 1e-3  # 2-bit weights really changed the function


def test_grouped_query_attention_keeps_whole_groups() -> None:
    model = tiny_model("llama", 4)  # 9 query heads in 3 groups
    cfg = model.config
    cfg_heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    net = supernet_from_pretrained(model)
    assert all(h % (cfg_heads // kv) == 0 for h in net.space.num_heads)
    with pytest.raises(ValueError, match="not whole key/value groups"):
        supernet_from_pretrained(model, SearchSpace.from_config({**net.space.to_dict(), "num_heads": [1, cfg_heads]}))


def test_default_space_spans_half_to_all_layers_and_fractions_of_the_widths() -> None:
    model = tiny_model("gpt2", 1)
    net = supernet_from_pretrained(model)
    s = net.space
    c = model.config
    assert s.depth[-1] == c.n_layer and s.depth[0] == max(1, -(-c.n_layer // 2))
    assert s.embed_dim[-1] == c.n_embd and s.num_heads[-1] == c.n_head
    assert s.largest().ffn_hidden(0) == (c.n_inner or 4 * c.n_embd)
    assert s.a_bits == (32,) and 2 in s.w_bits


# ---- bad input: one line each ---------------------------------------------------------------------------------------


def test_missing_checkpoint_directory() -> None:
    with pytest.raises(ValueError, match="no checkpoint directory at /nonexistent/model"):
        load_pretrained("/nonexistent/model")


def test_unsupported_architecture(tmp_path) -> None:
    cfg = transformers.OPTConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 ffn_dim=32, max_position_embeddings=POSITIONS, word_embed_proj_dim=16)  # fmt: skip
    transformers.OPTForCausalLM(cfg).save_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match=r"OPTForCausalLM.*is not supported; supported: ViTForImageClassification"):
        load_pretrained(str(tmp_path))


def test_unsupported_option_of_a_supported_family() -> None:
    cfg = random_config("gpt2", 0)
    cfg.scale_attn_by_inverse_layer_idx = True
    model = transformers.GPT2LMHeadModel(cfg)
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx=True is not supported; supported: "):
        supernet_from_pretrained(model)


def test_a_rope_scaling_that_depends_on_the_length_is_refused() -> None:
    """YaRN (and dynamic NTK, LongRoPE) change the frequencies with the sequence length or scale the attention: one
    line naming it and the rope types that are supported."""
    cfg = random_config("llama", 3)
    cfg.rope_parameters = {**cfg.rope_parameters, "rope_type": "yarn", "factor": 4.0}
    with pytest.raises(ValueError, match=r"rope_type='yarn' is not supported; supported: \['default', 'linear', "
                                         r"'llama3'\]"):  # fmt: skip
        supernet_from_pretrained(transformers.LlamaForCausalLM(cfg))


def test_weights_that_do_not_match_their_config(tmp_path) -> None:
    tiny_model("bert", 0).save_pretrained(str(tmp_path))
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["intermediate_size"] += 4
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"weights do not (match|load into) its config"):
        load_pretrained(str(tmp_path))


def test_a_space_that_cannot_express_the_model() -> None:
    model = tiny_model("vit", 1)
    space = SearchSpace(depth=[1], embed_dim=[8], num_heads=[1], mlp_ratio=[1.0], w_bits=[32])
    with pytest.raises(ValueError, match=r"space 'custom' cannot express the model: its largest arch has .*space=hf"):
        supernet_from_pretrained(model, space)


def test_an_arch_the_stock_config_cannot_express_says_why() -> None:
    model = tiny_model("gpt2", 2)
    net = supernet_from_pretrained(model)
    info = pretrained_info(model, "tiny")
    big = net.space.largest()
    assert why_not(big, info, net.config.head_dim) is None
    quant_act = type(big)(big.depth, big.embed_dim, big.num_heads, big.mlp_ratio, big.w_bits, 8)
    assert "activation quantization (a_bits=8)" in why_not(quant_act, info, net.config.head_dim)


def test_every_family_is_listed() -> None:
    assert set(FAMILIES) == set(MODELS.values())


@pytest.mark.parametrize("family", sorted(MODELS))
def test_a_model_too_large_for_the_memory_is_refused_before_loading(family: str, tmp_path, monkeypatch) -> None:
    """The parameter count comes from the config alone (meta device) and equals the loaded model's; when the
    estimate exceeds the available memory, one line names both and no weight is read."""
    from supernet.hf import memory

    model = tiny_model(family, 0)
    model.save_pretrained(str(tmp_path))
    cls = getattr(transformers, MODELS[family])
    params = memory.count_params(model.config, cls)
    assert params == sum(p.numel() for p in model.parameters())
    monkeypatch.setattr(memory, "available_bytes", lambda: int(params * memory.IMPORT_BYTES_PER_PARAM) - 1)
    (tmp_path / "model.safetensors").write_bytes(b"damaged: must not be read")
    with pytest.raises(ValueError, match=r"needs about .* GB .* but .* GB is available; free memory") as e:
        load_pretrained(str(tmp_path))
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"needs about 11\.5 GB"):
        memory.check_import_fits("big", 2**30, available=2**30)
    memory.check_import_fits("fits", 1000, available=2**30)
