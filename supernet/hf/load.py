"""Import: a pretrained Hugging Face model (a local `save_pretrained` directory, or a hub id where the hub is
reachable) becomes an elastic supernet of this project whose largest arch computes the same logits."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import torch

from supernet.config import ModelConfig
from supernet.hf import quiet_transformers
from supernet.hf.families import FAMILIES, Family, Sizes, Unsupported, family_of
from supernet.hf.memory import check_import_fits, count_params
from supernet.model import Supernet, build_supernet
from supernet.space import SearchSpace

# canonical (standalone-subnet) tensor names -> supernet names, where they differ
_RENAMES = {".qkv.": ".attn.qkv.", ".proj.": ".attn.proj.", ".fc1.": ".ffn.fc1.", ".fc2.": ".ffn.fc2."}


def load_pretrained(source: str) -> torch.nn.Module:
    """The `transformers` model saved at `source` (a directory), or a hub id where the hub is reachable."""
    import transformers

    quiet_transformers()
    path = Path(source).expanduser()
    local = path.is_dir()
    if not local and (source.startswith((".", "/", "~")) or (path.parent.is_dir() and len(path.parts) > 2)):
        raise ValueError(f"no checkpoint directory at {source}: pass a folder written by save_pretrained")
    try:
        cfg = transformers.AutoConfig.from_pretrained(str(path) if local else source)
    except (OSError, ValueError) as e:
        where = f"{source} holds no readable config.json" if local else f"cannot load {source!r} from the hub"
        raise ValueError(f"{where} ({str(e).splitlines()[0]}); pass a folder written by save_pretrained") from None
    names = list(getattr(cfg, "architectures", None) or [])
    found = next((n for n in names if n in FAMILIES), None)
    if found is None:
        raise ValueError(
            f"{source}: architecture {names or cfg.model_type!r} is not supported; supported: {', '.join(FAMILIES)}"
        )
    cls = getattr(transformers, found)
    check_import_fits(source, count_params(cfg, cls))  # before a byte of weights is read
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model, info = cls.from_pretrained(str(path) if local else source, output_loading_info=True)
        except (OSError, RuntimeError, ValueError) as e:
            raise ValueError(f"{source}: the weights do not load into its config ({str(e).splitlines()[0]})") from None
    tied = {"lm_head.weight"} if getattr(cfg, "tie_word_embeddings", False) else set()
    bad = {k: sorted(set(v) - tied) for k, v in info.items() if k != "error_msgs" and set(v) - tied}
    if bad or info.get("error_msgs"):
        detail = "; ".join(f"{k}: {', '.join(map(str, v[:3]))}{' …' if len(v) > 3 else ''}" for k, v in bad.items())
        raise ValueError(
            f"{source}: the weights do not match its config ({detail or info['error_msgs'][0]}); "
            "re-save the model with save_pretrained"
        )
    return model.eval()


def describe(model: torch.nn.Module) -> tuple[Family, ModelConfig, Sizes]:
    """(family, model config, full sizes) of a loaded model; `Unsupported` (one line) for what cannot be mapped."""
    fam = family_of(model)
    try:
        mc, sizes = fam.model_config(model.config)
    except Unsupported as e:
        raise ValueError(f"{fam.name}: {e}") from None
    return fam, mc, sizes


def _fractions(full: int, fractions: list[float], multiple: int = 1) -> list[int]:
    vals = {max(multiple, round(full * f / multiple) * multiple) for f in fractions}
    return sorted(v for v in vals if v <= full)


def default_space(
    mc: ModelConfig,
    sizes: Sizes,
    depth_min_fraction: float = 0.5,
    embed_fraction: list[float] | None = None,
    heads_fraction: list[float] | None = None,
    ffn_fraction: list[float] | None = None,
    w_bits: list[int] | None = None,
    a_bits: list[int] | None = None,
    name: str = "hf",
) -> SearchSpace:
    """A space around the pretrained model: depth from about half to all layers, widths as fractions of the full
    ones (whole key/value groups of heads; FFN widths that are integers at every embedding width), and bit-widths.
    Its largest arch is the pretrained model."""
    embed_fraction = embed_fraction or [0.5, 0.75, 1.0]
    heads_fraction = heads_fraction or [0.25, 0.5, 0.75, 1.0]
    ffn_fraction = ffn_fraction or [0.25, 0.5, 0.75, 1.0]
    depth = list(range(max(1, math.ceil(sizes.depth * depth_min_fraction)), sizes.depth + 1))
    heads = _fractions(sizes.num_heads, heads_fraction, mc.kv_group)
    widths = _fractions(sizes.ffn_hidden, ffn_fraction)
    E = sizes.embed_dim
    # A ratio r = width / E must give an integer FFN at every embedding choice e: keep the e for which it does.
    embeds = [e for e in _fractions(E, embed_fraction) if all(w * e % E == 0 for w in widths)] or [E]
    return SearchSpace(
        depth=depth,
        embed_dim=embeds,
        num_heads=heads,
        mlp_ratio=[w / E for w in widths],
        w_bits=w_bits or [2, 4, 8, 32],
        a_bits=a_bits or [32],
        name=name,
    )


def check_space(space: SearchSpace, sizes: Sizes, source: str) -> None:
    """One line when `space`'s largest arch is not the pretrained model (so it could not reproduce it)."""
    largest = space.largest()
    want = {
        "depth": sizes.depth,
        "embed_dim": sizes.embed_dim,
        "num_heads": sizes.num_heads,
        "ffn width": sizes.ffn_hidden,
    }
    got = {
        "depth": largest.depth,
        "embed_dim": largest.embed_dim,
        "num_heads": largest.num_heads[0],
        "ffn width": largest.ffn_hidden(0),
    }
    diff = [f"{k} {got[k]} (the model has {want[k]})" for k in want if got[k] != want[k]]
    if diff:
        raise ValueError(
            f"space '{space.name}' cannot express {source}: its largest arch has {', '.join(diff)}; use space=hf "
            "(derived from the model) or a space whose largest choices are the model's"
        )


def supernet_from_pretrained(
    model: torch.nn.Module,
    space: SearchSpace | None = None,
    bit_norms: bool = False,
    source: str = "the model",
    depth_heads: bool = False,
) -> Supernet:
    """The elastic supernet holding `model`'s weights: its largest arch reproduces `model`'s logits. Bit-specific
    norms and depth-specific heads all start as copies of the model's own."""
    fam, mc, sizes = describe(model)
    mc = ModelConfig.from_config({**mc.to_dict(), "bit_norms": bit_norms, "depth_heads": depth_heads})
    space = space or default_space(mc, sizes)
    check_space(space, sizes, source)
    net = build_supernet(space, mc)
    canonical = fam.to_canonical(model.state_dict(), model.config, sizes)
    load_canonical(net, canonical)
    return net.eval()


def supernet_name(name: str) -> str:
    """Supernet parameter name of a canonical (standalone-subnet) tensor name."""
    if name == "stem.table.weight":
        return "stem.table"
    if name.startswith("blocks."):
        for a, b in _RENAMES.items():
            name = name.replace(a, b)
    return name


@torch.no_grad()
def load_canonical(net: Supernet, canonical: dict[str, torch.Tensor]) -> None:
    """Copy full-size canonical tensors into `net` (broadcast over bit-specific norm rows); every parameter must be
    covered, or one line names what is missing."""
    params = dict(net.named_parameters())
    missing = set(params) - {supernet_name(n) for n in canonical}
    if missing:
        raise ValueError(f"the pretrained weights leave supernet tensors unset: {sorted(missing)[:4]}")
    for name, t in canonical.items():
        p = params[supernet_name(name)]
        if p.shape != t.shape and p.shape[1:] != t.shape:
            raise ValueError(f"{name}: pretrained shape {tuple(t.shape)} does not fit the supernet's {tuple(p.shape)}")
        p.copy_(t.to(p.dtype).expand_as(p))


def pretrained_info(model: torch.nn.Module, source: str) -> dict[str, Any]:
    """What export needs to write the family back: its class and the original config."""
    return {"family": type(model).__name__, "source": str(source), "config": model.config.to_dict()}
