"""Export back: a subnet of an imported supernet as a Hugging Face model directory (`save_pretrained` of a real
`transformers` model of the original family), for every subnet the family's stock config can express."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from supernet.arch import Arch
from supernet.hf import quiet_transformers
from supernet.hf.families import FAMILIES, Tensors
from supernet.static import StaticSubnet


def why_not(arch: Arch, info: dict[str, Any], head_dim: int, pad: bool = False) -> str | None:
    """None if the family's stock config can express `arch` (with `pad`: after zero-padding); else the reason."""
    fam = FAMILIES[info["family"]]
    if arch.a_bits < 32:
        return f"activation quantization (a_bits={arch.a_bits}) has no {fam.name} equivalent"
    if not pad and (len(set(arch.num_heads)) > 1 or len(set(arch.mlp_ratio)) > 1):
        return (
            f"{fam.name}'s config has one head count and one FFN width for all layers and this arch varies "
            "them (export.hf_pad=true writes an exact zero-padded equivalent)"
        )
    if not fam.implicit_head_dim:
        # transformers validates hidden_size % num_attention_heads == 0 even with an explicit head_dim
        if _explicit_heads(arch, kv_group(info, arch)) is None:
            return f"{fam.name}'s config needs hidden_size {arch.embed_dim} divisible by the head count"
        if not pad and arch.embed_dim % arch.num_heads[0]:
            return (
                f"{fam.name}'s config needs hidden_size {arch.embed_dim} divisible by the head count "
                f"{arch.num_heads[0]} (export.hf_pad=true adds zero heads until it is)"
            )
    else:
        heads = arch.embed_dim / head_dim
        if max(arch.num_heads) > heads or not heads.is_integer():
            return (
                f"{fam.name} derives head_dim = hidden_size / num_attention_heads, and {max(arch.num_heads)} "
                f"heads of {head_dim} do not fit width {arch.embed_dim}"
            )
        if not pad and arch.num_heads[0] != heads:
            return (
                f"{fam.name} derives head_dim = hidden_size / num_attention_heads: width {arch.embed_dim} "
                f"needs {int(heads)} heads of {head_dim}, this arch has {arch.num_heads[0]} "
                "(export.hf_pad=true writes an exact zero-padded equivalent)"
            )
    return None


def kv_group(info: dict[str, Any], arch: Arch) -> int:
    """Query heads per key/value head of the imported model (1 for all but grouped-query Llamas)."""
    c = info["config"]
    return c["num_attention_heads"] // (c.get("num_key_value_heads") or c["num_attention_heads"])


def _explicit_heads(arch: Arch, group: int) -> int | None:
    """Fewest heads, in whole groups, at least the arch's widest layer's, that divide the width (None: none do)."""
    return next(
        (n for n in range(max(arch.num_heads), arch.embed_dim + 1) if n % group == 0 and arch.embed_dim % n == 0), None
    )


def _export_sizes(arch: Arch, info: dict[str, Any], head_dim: int) -> tuple[int, int]:
    """(heads, FFN width) of every layer of the exported model: the arch's, or the padded uniform ones."""
    if FAMILIES[info["family"]].implicit_head_dim:
        heads = arch.embed_dim // head_dim
    else:
        heads = _explicit_heads(arch, kv_group(info, arch))
    return heads, max(arch.ffn_hidden(i) for i in range(arch.depth))


def _pad_rows(t: torch.Tensor, blocks: list[tuple[int, int]]) -> torch.Tensor:
    """Concatenate row blocks (size, padded size) of `t`, each followed by zero rows up to its padded size."""
    out, start = [], 0
    for n, to in blocks:
        part = t[start : start + n]
        out += [part, part.new_zeros((to - n, *part.shape[1:]))]
        start += n
    return torch.cat(out)


def pad_canonical(can: Tensors, arch: Arch, kv_group: int, head_dim: int, heads: int, ffn: int) -> Tensors:
    """Every layer widened to `heads` heads and `ffn` hidden units with zeros: a zero query/key/value head attends
    uniformly to zero values and a zero FFN unit outputs act(0) = 0, and their output columns are zero, so the
    padded model computes exactly what the subnet computes."""
    out = dict(can)
    D, G = head_dim, heads // kv_group
    for i in range(arch.depth):
        p, h, f = f"blocks.{i}.", arch.num_heads[i], arch.ffn_hidden(i)
        g = h // kv_group
        qkv = [(h * D, heads * D), (g * D, G * D), (g * D, G * D)]
        halves = [(f, ffn)] * (2 if can[p + "fc1.weight"].shape[0] == 2 * f else 1)
        for part in ("weight", "bias"):
            if p + "qkv." + part in can:
                out[p + "qkv." + part] = _pad_rows(can[p + "qkv." + part], qkv)
                out[p + "fc1." + part] = _pad_rows(can[p + "fc1." + part], halves)
        out[p + "proj.weight"] = _pad_rows(can[p + "proj.weight"].T, [(h * D, heads * D)]).T.contiguous()
        out[p + "fc2.weight"] = _pad_rows(can[p + "fc2.weight"].T, [(f, ffn)]).T.contiguous()
    return out


def hf_model(sub: StaticSubnet, info: dict[str, Any], pad: bool = False) -> torch.nn.Module:
    """A `transformers` model of the original family holding `sub`'s weights (quantized values, stored float); with
    `pad`, layers narrower than the widest are zero-padded to it (exact, but larger than the subnet)."""
    import transformers

    quiet_transformers()
    fam = FAMILIES[info["family"]]
    arch, mc = sub.arch, sub.config
    reason = why_not(arch, info, mc.head_dim, pad)
    if reason:
        raise ValueError(reason)
    heads, ffn = _export_sizes(arch, info, mc.head_dim)
    original = dict(info["config"])
    cfg = transformers.AutoConfig.for_model(original.pop("model_type"), **original)
    for k, v in fam.resize(arch.depth, arch.embed_dim, heads, ffn, heads // mc.kv_group).items():
        setattr(cfg, k, v)
    if mc.task != "image" and mc.positions == "learned":  # the table holds the positions fine-tuning used
        cfg.max_position_embeddings = mc.block_size
    if mc.pad_id is not None:  # the padding the subnet masks (its tokenizer's): hf_forward masks the same ids
        cfg.pad_token_id = mc.pad_id
    can = {k: v.detach().float().cpu() for k, v in sub.state_dict().items()}
    can = pad_canonical(can, arch, mc.kv_group, mc.head_dim, heads, ffn)
    if mc.task == "lm":
        # Fine-tuning updates the head and the token table apart: tie them only where they are still equal.
        cfg.tie_word_embeddings = bool(torch.equal(can["stem.table.weight"], can["head.fc.weight"]))
    cfg.architectures = [fam.name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = getattr(transformers, fam.name)(cfg).eval()
    state = fam.from_canonical(can, mc, arch.depth, heads)
    types = "bert.embeddings.token_type_embeddings.weight"
    if types in state:  # segment 0 is the one trained; the other segments' rows start at zero
        table = state[types].new_zeros(cfg.type_vocab_size, state[types].shape[1])
        table[0] = state[types][0]
        state[types] = table
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise ValueError(f"cannot write {fam.name}: {str(e).splitlines()[-1].strip()}") from None
    missing = [k for k in missing if not (cfg.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(
            f"export mapping for {fam.name} is incomplete: missing {missing[:3]}, extra {unexpected[:3]}"
        )
    return model


def save_hf(sub: StaticSubnet, info: dict[str, Any], out: str | Path, pad: bool = False) -> Path:
    """Write `sub` with `save_pretrained` to `out` (a directory `from_pretrained` loads), with the pretrained model's
    tokenizer beside it when its directory has one (text models: the directory is then complete)."""
    from supernet.data.tokenizer import has_tokenizer, load_tokenizer

    out = Path(out)
    hf_model(sub, info, pad).save_pretrained(str(out))
    if sub.config.task != "image" and has_tokenizer(info["source"]):
        load_tokenizer(info["source"]).save_pretrained(str(out))
    return out


def hf_forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits of a `transformers` model of a supported family on this project's input (images or token ids); a
    sequence classifier gets the attention mask `x != config.pad_token_id`, as this project's text models derive it."""
    if x.is_floating_point():
        return model(pixel_values=x).logits
    pad = getattr(model.config, "pad_token_id", None)
    if type(model).__name__.endswith("ForSequenceClassification") and pad is not None:
        return model(input_ids=x, attention_mask=(x != pad).long()).logits
    return model(input_ids=x).logits


def hf_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`hf_forward` without gradients."""
    with torch.no_grad():
        return hf_forward(model, x)
