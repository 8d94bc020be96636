"""The four supported Hugging Face families: how each one's config and weights map to this project's model.

Each family turns a `transformers` config into a `ModelConfig` (the block options of its math) plus its full sizes,
and its state dict into *canonical* tensors: the names and layouts of a standalone subnet (supernet/static.py) at full
size, e.g. `blocks.0.qkv.weight` with rows `[q | k | v]`. Export runs the same mapping backwards on an extracted
subnet's state dict. Module names are those of transformers 5.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from supernet.config import ModelConfig

Tensors = dict[str, torch.Tensor]

# transformers' activation names -> the shared forward's (supernet/functional.py ACTIVATIONS)
ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "silu": "silu",
    "swish": "silu",
    "relu": "relu",
}


class Unsupported(ValueError):
    """A config the shared forward cannot reproduce exactly (one line: what was found, what is supported)."""


@dataclass(frozen=True)
class Sizes:
    """Full sizes of a pretrained model: the supernet's largest arch."""

    depth: int
    embed_dim: int
    num_heads: int
    ffn_hidden: int


def _act(cfg: Any, attr: str) -> str:
    name = getattr(cfg, attr)
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise Unsupported(f"{attr}={name!r} is not supported; supported: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def _require(cfg: Any, attr: str, allowed: tuple, default: Any = None) -> None:
    v = getattr(cfg, attr, default)
    if v not in allowed:
        raise Unsupported(f"{attr}={v!r} is not supported; supported: {list(allowed)}")


def _divisible(hidden: int, heads: int) -> None:
    if hidden % heads:
        raise Unsupported(f"hidden_size={hidden} is not divisible by num_attention_heads={heads}")


def _qkv(sd: Tensors, prefix: str, names: tuple[str, str, str], bias: bool) -> Tensors:
    out = {"weight": torch.cat([sd[f"{prefix}{n}.weight"] for n in names])}
    if bias:
        out["bias"] = torch.cat([sd[f"{prefix}{n}.bias"] for n in names])
    return out


@dataclass(frozen=True)
class Family:
    """One supported `transformers` architecture class."""

    name: str  # the `*For*` class, as in config.architectures
    model_type: str
    model_config: Callable[[Any], tuple[ModelConfig, Sizes]]
    to_canonical: Callable[[Tensors, Any, Sizes], Tensors]
    from_canonical: Callable[[Tensors, ModelConfig, int, int], Tensors]  # (canonical, config, depth, heads)
    # fields of the HF config set from a subnet's sizes: (depth, embed, heads, ffn, kv heads) -> config kwargs
    resize: Callable[[int, int, int, int, int], dict[str, int]]
    # whether the stock config derives head_dim = hidden_size / num_attention_heads (all but Llama)
    implicit_head_dim: bool = True


# ---- ViT ------------------------------------------------------------------------------------------------------------


def _vit_config(c: Any) -> tuple[ModelConfig, Sizes]:
    _divisible(c.hidden_size, c.num_attention_heads)
    _require(c, "qkv_bias", (True,), True)
    mc = ModelConfig(
        task="image",
        head_dim=c.hidden_size // c.num_attention_heads,
        ln_eps=float(c.layer_norm_eps),
        image_size=int(c.image_size),
        patch_size=int(c.patch_size),
        in_channels=int(c.num_channels),
        num_classes=int(c.num_labels),
        activation=_act(c, "hidden_act"),
        cls_token=True,
        pooling="cls",
    )
    return mc, Sizes(c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size)


def _vit_in(sd: Tensors, c: Any, s: Sizes) -> Tensors:
    out = {
        "stem.proj.weight": sd["vit.embeddings.patch_embeddings.projection.weight"].reshape(s.embed_dim, -1),
        "stem.proj.bias": sd["vit.embeddings.patch_embeddings.projection.bias"],
        "stem.pos": sd["vit.embeddings.position_embeddings"][0],
        "stem.cls": sd["vit.embeddings.cls_token"].reshape(-1),
        "head.norm.weight": sd["vit.layernorm.weight"],
        "head.norm.bias": sd["vit.layernorm.bias"],
        "head.fc.weight": sd["classifier.weight"],
        "head.fc.bias": sd["classifier.bias"],
    }
    for i in range(s.depth):
        p, q = f"vit.layers.{i}.", f"blocks.{i}."
        for k, v in _qkv(sd, p + "attention.", ("q_proj", "k_proj", "v_proj"), True).items():
            out[q + "qkv." + k] = v
        for ours, theirs in (
            ("proj", "attention.o_proj"),
            ("ln1", "layernorm_before"),
            ("ln2", "layernorm_after"),
            ("fc1", "mlp.fc1"),
            ("fc2", "mlp.fc2"),
        ):
            out[q + ours + ".weight"], out[q + ours + ".bias"] = sd[p + theirs + ".weight"], sd[p + theirs + ".bias"]
    return out


def _vit_out(can: Tensors, mc: ModelConfig, depth: int, heads: int) -> Tensors:
    e = can["stem.proj.weight"].shape[0]
    out = {
        "vit.embeddings.patch_embeddings.projection.weight": can["stem.proj.weight"].reshape(
            e, mc.in_channels, mc.patch_size, mc.patch_size
        ),
        "vit.embeddings.patch_embeddings.projection.bias": can["stem.proj.bias"],
        "vit.embeddings.position_embeddings": can["stem.pos"][None],
        "vit.embeddings.cls_token": can["stem.cls"].reshape(1, 1, e),
        "vit.layernorm.weight": can["head.norm.weight"],
        "vit.layernorm.bias": can["head.norm.bias"],
        "classifier.weight": can["head.fc.weight"],
        "classifier.bias": can["head.fc.bias"],
    }
    for i in range(depth):
        p, q = f"vit.layers.{i}.", f"blocks.{i}."
        n = heads * mc.head_dim
        for part in ("weight", "bias"):
            for name, t in zip(("q_proj", "k_proj", "v_proj"), can[q + "qkv." + part].split((n, n, n)), strict=True):
                out[f"{p}attention.{name}.{part}"] = t
        for ours, theirs in (
            ("proj", "attention.o_proj"),
            ("ln1", "layernorm_before"),
            ("ln2", "layernorm_after"),
            ("fc1", "mlp.fc1"),
            ("fc2", "mlp.fc2"),
        ):
            out[p + theirs + ".weight"], out[p + theirs + ".bias"] = can[q + ours + ".weight"], can[q + ours + ".bias"]
    return out


def _resize_bert_like(d: int, e: int, h: int, f: int, g: int) -> dict[str, int]:
    return {"num_hidden_layers": d, "hidden_size": e, "num_attention_heads": h, "intermediate_size": f}


# ---- BERT -----------------------------------------------------------------------------------------------------------


def _pad_id(c: Any) -> int | None:
    """The padding id the model was configured with (its tokenizer's; a data module may set another)."""
    pad = getattr(c, "pad_token_id", None)
    return int(pad) if pad is not None and 0 <= pad < c.vocab_size else None


def _bert_config(c: Any) -> tuple[ModelConfig, Sizes]:
    _divisible(c.hidden_size, c.num_attention_heads)
    _require(c, "position_embedding_type", ("absolute", None))
    _require(c, "is_decoder", (False, None))
    mc = ModelConfig(
        task="text",
        head_dim=c.hidden_size // c.num_attention_heads,
        ln_eps=float(c.layer_norm_eps),
        vocab_size=int(c.vocab_size),
        block_size=int(c.max_position_embeddings),
        num_classes=int(c.num_labels),
        pad_id=_pad_id(c),
        norm_position="post",
        activation=_act(c, "hidden_act"),
        pooling="cls",
        pooler=True,
        embed_norm=True,
        token_types=True,
        final_norm=False,
    )
    return mc, Sizes(c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size)


_BERT_LAYER = (
    ("proj", "attention.output.dense"),
    ("ln1", "attention.output.LayerNorm"),
    ("fc1", "intermediate.dense"),
    ("fc2", "output.dense"),
    ("ln2", "output.LayerNorm"),
)


def _bert_in(sd: Tensors, c: Any, s: Sizes) -> Tensors:
    out = {
        "stem.table.weight": sd["bert.embeddings.word_embeddings.weight"],
        "stem.pos": sd["bert.embeddings.position_embeddings.weight"],
        "stem.type_row": sd["bert.embeddings.token_type_embeddings.weight"][0],
        "stem.norm.weight": sd["bert.embeddings.LayerNorm.weight"],
        "stem.norm.bias": sd["bert.embeddings.LayerNorm.bias"],
        "head.pool.weight": sd["bert.pooler.dense.weight"],
        "head.pool.bias": sd["bert.pooler.dense.bias"],
        "head.fc.weight": sd["classifier.weight"],
        "head.fc.bias": sd["classifier.bias"],
    }
    for i in range(s.depth):
        p, q = f"bert.encoder.layer.{i}.", f"blocks.{i}."
        for k, v in _qkv(sd, p + "attention.self.", ("query", "key", "value"), True).items():
            out[q + "qkv." + k] = v
        for ours, theirs in _BERT_LAYER:
            out[q + ours + ".weight"], out[q + ours + ".bias"] = sd[p + theirs + ".weight"], sd[p + theirs + ".bias"]
    return out


def _bert_out(can: Tensors, mc: ModelConfig, depth: int, heads: int) -> Tensors:
    out = {
        "bert.embeddings.word_embeddings.weight": can["stem.table.weight"],
        "bert.embeddings.position_embeddings.weight": can["stem.pos"],
        # segment 0 only: the export sizes the table to the config's type_vocab_size (hf/save.py)
        "bert.embeddings.token_type_embeddings.weight": can["stem.type_row"][None],
        "bert.embeddings.LayerNorm.weight": can["stem.norm.weight"],
        "bert.embeddings.LayerNorm.bias": can["stem.norm.bias"],
        "bert.pooler.dense.weight": can["head.pool.weight"],
        "bert.pooler.dense.bias": can["head.pool.bias"],
        "classifier.weight": can["head.fc.weight"],
        "classifier.bias": can["head.fc.bias"],
    }
    for i in range(depth):
        p, q = f"bert.encoder.layer.{i}.", f"blocks.{i}."
        n = heads * mc.head_dim
        for part in ("weight", "bias"):
            for name, t in zip(("query", "key", "value"), can[q + "qkv." + part].split((n, n, n)), strict=True):
                out[f"{p}attention.self.{name}.{part}"] = t
        for ours, theirs in _BERT_LAYER:
            out[p + theirs + ".weight"], out[p + theirs + ".bias"] = can[q + ours + ".weight"], can[q + ours + ".bias"]
    return out


# ---- GPT-2 ----------------------------------------------------------------------------------------------------------


def _gpt2_config(c: Any) -> tuple[ModelConfig, Sizes]:
    if c.n_embd % c.n_head:
        raise Unsupported(f"n_embd={c.n_embd} is not divisible by n_head={c.n_head}")
    for attr in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"):
        _require(c, attr, (False, None))
    _require(c, "scale_attn_weights", (True,), True)
    mc = ModelConfig(
        task="lm",
        head_dim=c.n_embd // c.n_head,
        ln_eps=float(c.layer_norm_epsilon),
        vocab_size=int(c.vocab_size),
        block_size=int(c.n_positions),
        activation=_act(c, "activation_function"),
        head_bias=False,
    )
    return mc, Sizes(c.n_layer, c.n_embd, c.n_head, c.n_inner or 4 * c.n_embd)


_GPT2_LAYER = (("ln1", "ln_1"), ("ln2", "ln_2"))
_GPT2_CONV = (("qkv", "attn.c_attn"), ("proj", "attn.c_proj"), ("fc1", "mlp.c_fc"), ("fc2", "mlp.c_proj"))


def _gpt2_in(sd: Tensors, c: Any, s: Sizes) -> Tensors:
    out = {
        "stem.table.weight": sd["transformer.wte.weight"],
        "stem.pos": sd["transformer.wpe.weight"],
        "head.norm.weight": sd["transformer.ln_f.weight"],
        "head.norm.bias": sd["transformer.ln_f.bias"],
        "head.fc.weight": sd.get("lm_head.weight", sd["transformer.wte.weight"]),
    }
    for i in range(s.depth):
        p, q = f"transformer.h.{i}.", f"blocks.{i}."
        for ours, theirs in _GPT2_LAYER:
            out[q + ours + ".weight"], out[q + ours + ".bias"] = sd[p + theirs + ".weight"], sd[p + theirs + ".bias"]
        for ours, theirs in _GPT2_CONV:  # Conv1D stores (in, out): transpose to a linear's (out, in)
            out[q + ours + ".weight"], out[q + ours + ".bias"] = sd[p + theirs + ".weight"].T, sd[p + theirs + ".bias"]
    return out


def _gpt2_out(can: Tensors, mc: ModelConfig, depth: int, heads: int) -> Tensors:
    out = {
        "transformer.wte.weight": can["stem.table.weight"],
        "transformer.wpe.weight": can["stem.pos"],
        "transformer.ln_f.weight": can["head.norm.weight"],
        "transformer.ln_f.bias": can["head.norm.bias"],
        "lm_head.weight": can["head.fc.weight"],
    }
    for i in range(depth):
        p, q = f"transformer.h.{i}.", f"blocks.{i}."
        for ours, theirs in _GPT2_LAYER:
            out[p + theirs + ".weight"], out[p + theirs + ".bias"] = can[q + ours + ".weight"], can[q + ours + ".bias"]
        for ours, theirs in _GPT2_CONV:
            out[p + theirs + ".weight"] = can[q + ours + ".weight"].T.contiguous()
            out[p + theirs + ".bias"] = can[q + ours + ".bias"]
    return out


def _resize_gpt2(d: int, e: int, h: int, f: int, g: int) -> dict[str, int]:
    return {"n_layer": d, "n_embd": e, "n_head": h, "n_inner": f}


# ---- Llama ----------------------------------------------------------------------------------------------------------


# Hugging Face rope_type -> ModelConfig.rope_scaling: the scalings whose frequencies do not depend on the sequence
# length (dynamic NTK, YaRN and LongRoPE change them with the length or scale the attention: not supported).
ROPE_TYPES = {"default": "none", "linear": "linear", "llama3": "llama3"}


def _llama_config(c: Any) -> tuple[ModelConfig, Sizes]:
    rope = getattr(c, "rope_parameters", None) or getattr(c, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise Unsupported(f"rope_type={rope_type!r} is not supported; supported: {sorted(ROPE_TYPES)}")
    _require(c, "pretraining_tp", (1, None))
    if c.attention_bias != c.mlp_bias:
        raise Unsupported(
            f"attention_bias={c.attention_bias} with mlp_bias={c.mlp_bias} is not supported; supported: both equal"
        )
    heads, kv = c.num_attention_heads, c.num_key_value_heads or c.num_attention_heads
    if heads % kv:
        raise Unsupported(f"num_attention_heads={heads} is not a multiple of num_key_value_heads={kv}")
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    theta = rope.get("rope_theta", getattr(c, "rope_theta", 10000.0))
    mc = ModelConfig(
        task="lm",
        head_dim=int(head_dim),
        ln_eps=float(c.rms_norm_eps),
        vocab_size=int(c.vocab_size),
        block_size=int(c.max_position_embeddings),
        norm="rms",
        activation=_act(c, "hidden_act"),
        gated_ffn=True,
        positions="rope",
        rope_theta=float(theta),
        rope_scaling=ROPE_TYPES[rope_type],
        rope_factor=float(rope.get("factor", 1.0)),
        rope_low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
        rope_high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
        rope_original_positions=int(rope.get("original_max_position_embeddings", 8192)),
        kv_group=heads // kv,
        linear_bias=bool(c.attention_bias),
        head_bias=False,
    )
    return mc, Sizes(c.num_hidden_layers, c.hidden_size, heads, c.intermediate_size)


def _llama_in(sd: Tensors, c: Any, s: Sizes) -> Tensors:
    out = {
        "stem.table.weight": sd["model.embed_tokens.weight"],
        "head.norm.weight": sd["model.norm.weight"],
        "head.fc.weight": sd.get("lm_head.weight", sd["model.embed_tokens.weight"]),
    }
    for i in range(s.depth):
        p, q = f"model.layers.{i}.", f"blocks.{i}."
        for k, v in _qkv(sd, p + "self_attn.", ("q_proj", "k_proj", "v_proj"), c.attention_bias).items():
            out[q + "qkv." + k] = v
        out[q + "proj.weight"] = sd[p + "self_attn.o_proj.weight"]
        out[q + "fc1.weight"] = torch.cat([sd[p + "mlp.gate_proj.weight"], sd[p + "mlp.up_proj.weight"]])
        out[q + "fc2.weight"] = sd[p + "mlp.down_proj.weight"]
        if c.attention_bias:
            out[q + "proj.bias"] = sd[p + "self_attn.o_proj.bias"]
            out[q + "fc1.bias"] = torch.cat([sd[p + "mlp.gate_proj.bias"], sd[p + "mlp.up_proj.bias"]])
            out[q + "fc2.bias"] = sd[p + "mlp.down_proj.bias"]
        out[q + "ln1.weight"] = sd[p + "input_layernorm.weight"]
        out[q + "ln2.weight"] = sd[p + "post_attention_layernorm.weight"]
    return out


def _llama_out(can: Tensors, mc: ModelConfig, depth: int, heads: int) -> Tensors:
    out = {
        "model.embed_tokens.weight": can["stem.table.weight"],
        "model.norm.weight": can["head.norm.weight"],
        "lm_head.weight": can["head.fc.weight"],
    }
    n, g = heads * mc.head_dim, heads // mc.kv_group * mc.head_dim
    for i in range(depth):
        p, q = f"model.layers.{i}.", f"blocks.{i}."
        parts = ("weight", "bias") if mc.linear_bias else ("weight",)
        for part in parts:
            for name, t in zip(("q_proj", "k_proj", "v_proj"), can[q + "qkv." + part].split((n, g, g)), strict=True):
                out[f"{p}self_attn.{name}.{part}"] = t
            out[f"{p}self_attn.o_proj.{part}"] = can[f"{q}proj.{part}"]
            gate, up = can[f"{q}fc1.{part}"].chunk(2)
            out[f"{p}mlp.gate_proj.{part}"], out[f"{p}mlp.up_proj.{part}"] = gate, up
            out[f"{p}mlp.down_proj.{part}"] = can[f"{q}fc2.{part}"]
        out[p + "input_layernorm.weight"] = can[q + "ln1.weight"]
        out[p + "post_attention_layernorm.weight"] = can[q + "ln2.weight"]
    return out


def _resize_llama(d: int, e: int, h: int, f: int, g: int) -> dict[str, int]:
    return {
        "num_hidden_layers": d,
        "hidden_size": e,
        "num_attention_heads": h,
        "intermediate_size": f,
        "num_key_value_heads": g,
    }


FAMILIES = {
    f.name: f
    for f in (
        Family("ViTForImageClassification", "vit", _vit_config, _vit_in, _vit_out, _resize_bert_like),
        Family("BertForSequenceClassification", "bert", _bert_config, _bert_in, _bert_out, _resize_bert_like),
        Family("GPT2LMHeadModel", "gpt2", _gpt2_config, _gpt2_in, _gpt2_out, _resize_gpt2),
        Family("LlamaForCausalLM", "llama", _llama_config, _llama_in, _llama_out, _resize_llama, False),
    )
}


def family_of(model: torch.nn.Module) -> Family:
    """The family of a loaded `transformers` model; one line naming the supported ones otherwise."""
    name = type(model).__name__
    if name not in FAMILIES:
        raise Unsupported(f"{name} is not a supported architecture; supported: {', '.join(FAMILIES)}")
    return FAMILIES[name]
