"""`nas-train model=hf`: a pretrained model made ready for elastic fine-tuning on the user's data.

Load it, check that it fits the data (task, input geometry, classes, vocabulary), build the search space (derived
from the model with `space=hf`, or the user's, which must have the model as its largest arch), import the weights,
reorder heads, FFN units and embedding channels by importance measured on the data, and rank the layers elastic depth
drops. The result is deterministic given the model, the data and the seed, so a resumed run rebuilds the same
supernet (and the same frozen teacher) before its checkpoint is restored.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from supernet.config import ModelConfig
from supernet.hf.load import (
    check_space,
    default_space,
    describe,
    load_canonical,
    load_pretrained,
    pretrained_info,
)
from supernet.importance import layer_redundancy, rank_layers, reorder_by_importance, taylor_scores
from supernet.model import Supernet, build_supernet
from supernet.space import SearchSpace

# keys of the `model` group that are not ModelConfig fields
HF_KEYS = ("pretrained", "importance", "importance_batches", "depth_drop", "block_size")
DERIVED_KEYS = ("from_pretrained", "depth_min_fraction", "embed_fraction", "heads_fraction", "ffn_fraction")


@dataclass
class Prepared:
    """The imported supernet (reordered, its layers ranked) and what the run records about it."""

    net: Supernet
    info: dict[str, Any]


def check_data(mc: ModelConfig, spec: dict[str, Any], source: str) -> ModelConfig:
    """One line when the data does not fit the model; else the model config with the data's sequence length (what
    costs, latency and the runtime graph are sized for: the model's longest context could be 100k positions)."""
    if spec["task"] != mc.task:
        raise ValueError(
            f"{source} is a {mc.task!r} model but the data's task is {spec['task']!r}; supported pairs: "
            "ViT with image data, BERT with labelled text, GPT-2 or Llama with language-modelling data"
        )
    if mc.task == "image":
        want = (mc.in_channels, mc.image_size, mc.num_classes)
        got = (spec["in_channels"], spec["image_size"], spec["num_classes"])
        if want != got:
            raise ValueError(
                f"{source} takes {want[0]}×{want[1]}×{want[1]} images in {want[2]} classes, the data "
                f"has {got[0]}×{got[1]}×{got[1]} in {got[2]}; use a model of the data's geometry"
            )
        return mc
    # A classifier only embeds the ids (a vocabulary padded past the tokenizer's is fine); an LM predicts them too.
    too_many = spec["vocab_size"] > mc.vocab_size
    if too_many or (mc.task != "text" and spec["vocab_size"] != mc.vocab_size):
        raise ValueError(
            f"tokenizer/vocabulary mismatch: the data's token ids come from a vocabulary of "
            f"{spec['vocab_size']}, {source} has {mc.vocab_size} embeddings; use a model trained on this "
            "data's tokenizer (e.g. byte-level, 256)"
        )
    if spec["block_size"] > mc.block_size:
        raise ValueError(
            f"data.block_size={spec['block_size']} is longer than the {mc.block_size} positions of "
            f"{source}; lower data.block_size"
        )
    if mc.task == "text" and spec.get("num_classes") != mc.num_classes:
        raise ValueError(
            f"{source} classifies into {mc.num_classes} classes, the data has {spec.get('num_classes')}; use a model "
            "fine-tuned on these classes"
        )
    fixed = {"block_size": int(spec["block_size"])}
    if mc.task == "text":  # the model masks the padding the data's tokenizer writes
        fixed["pad_id"] = spec.get("pad_id")
    return ModelConfig.from_config({**mc.to_dict(), **fixed})


# what a user may set on an imported model: everything else is the model's own math, read from its config
USER_OPTIONS = ("bit_norms", "depth_heads", "max_depth")


def model_options(model_cfg: dict[str, Any], mc: ModelConfig, source: str) -> dict[str, Any]:
    """The `model` group's settings for an imported model; one line for one that contradicts the model's config."""
    out = {}
    imported = mc.to_dict()
    for k, v in model_cfg.items():
        if k in HF_KEYS:
            continue
        if k in USER_OPTIONS:
            out[k] = v
        elif k not in imported:
            raise ValueError(f"model.{k} is not a model option; an imported model takes {list(HF_KEYS + USER_OPTIONS)}")
        elif v != imported[k]:
            raise ValueError(
                f"model.{k}={v!r} contradicts {source}'s config ({imported[k]!r}); remove it: an imported "
                "model's block math comes from its own config"
            )
    return out


def space_for(space_cfg: dict[str, Any], mc: ModelConfig, sizes) -> SearchSpace:
    """The derived space (`space=hf`: fractions of the model's sizes) or the user's space as it is."""
    if not space_cfg.get("from_pretrained"):
        return SearchSpace.from_config(space_cfg)
    keys = {k: space_cfg[k] for k in DERIVED_KEYS[1:] if space_cfg.get(k) is not None}
    return default_space(
        mc,
        sizes,
        w_bits=space_cfg.get("w_bits"),
        a_bits=space_cfg.get("a_bits"),
        name=space_cfg.get("name", "hf"),
        **keys,
    )


def prepare_pretrained(
    model_cfg: dict[str, Any], space_cfg: dict[str, Any], spec: dict[str, Any], batches_of, loss
) -> Prepared:
    """Import `model_cfg["pretrained"]` for training on the data `spec` describes; `batches_of()` yields training
    batches (for the importance measurements), `loss(logits, y)` is the task loss."""
    source = model_cfg.get("pretrained")
    if not source:
        raise ValueError("model=hf needs model.pretrained=<directory written by save_pretrained, or a hub id>")
    method, drop = model_cfg.get("importance", "taylor"), model_cfg.get("depth_drop", "last")
    n = model_cfg.get("importance_batches", 4)
    if method not in ("taylor", "weight", "none"):
        raise ValueError(f"model.importance={method!r} is not one of ['taylor', 'weight', 'none']")
    if drop not in ("last", "importance"):
        raise ValueError(f"model.depth_drop={drop!r} is not one of ['last', 'importance']")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"model.importance_batches={n!r} must be a positive integer")
    hf = load_pretrained(str(source))
    fam, mc, sizes = describe(hf)
    mc = check_data(mc, spec, str(source))
    mc = ModelConfig.from_config({**mc.to_dict(), **model_options(model_cfg, mc, str(source))})
    space = space_for(space_cfg, mc, sizes)
    check_space(space, sizes, str(source))
    net = build_supernet(space, mc)
    canonical = fam.to_canonical(hf.state_dict(), hf.config, sizes)
    if "stem.pos" in canonical and mc.task != "image":  # the positions the data uses
        canonical["stem.pos"] = canonical["stem.pos"][: mc.block_size]
    load_canonical(net, canonical)
    batches = list(itertools.islice(batches_of(), n))
    if method != "none":
        scores = taylor_scores(net, batches, loss) if method == "taylor" else None
        reorder_by_importance(net, scores=scores)
    redundancy = layer_redundancy(net, batches)
    if drop == "importance":
        ranked = ModelConfig.from_config({**mc.to_dict(), "layer_rank": rank_layers(redundancy)})
        state = net.state_dict()
        net = build_supernet(space, ranked)
        net.load_state_dict(state)
    info = {
        **pretrained_info(hf, str(source)),
        "importance": method,
        "importance_batches": len(batches),
        "depth_drop": drop,
        "layer_redundancy": [round(r, 4) for r in redundancy],
        "layer_rank": None if net.config.layer_rank is None else list(net.config.layer_rank),
    }
    return Prepared(net.eval(), info)
