"""The deployment graph of a subnet, built directly from its arch and packed weights (no tracing).

`build_runtime_model(arch, config, arrays, plan)` returns an ONNX model that computes what `supernet(x, arch)`
computes (supernet/functional.py), with every block linear emitted by the kernel `plan` names for it
(supernet/runtime/linears.py). Embeddings, norms, attention score math and the head stay float. Building one takes
milliseconds, so measurement can build one per arch; `torch.onnx` would take seconds.

Inputs and outputs: `images` (B, C, H, W) float -> `logits` (B, classes), or `tokens` (B, T) int64 -> `logits`
(B, T, vocab), or (text) `logits` (B, classes), with T up to block_size; B (and T) are dynamic. A text model with a
`pad_id` derives its key mask from the tokens (`Equal`), as the supernet does, so padding needs no second input.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
from onnx import TensorProto, helper

from supernet.arch import Arch
from supernet.config import ModelConfig
from supernet.qat import QUANTIZED_LINEARS
from supernet.runtime.linears import Graph, LinearWeights, emit_linear, make_model
from supernet.subnet_io import iter_stored

FORMAT = "elastic-nas-runtime/1"
Plan = Sequence[Mapping[str, str]]  # per layer: {"qkv": kernel, "proj": ..., "fc1": ..., "fc2": ...}


def _tensors(arrays: dict[str, np.ndarray], arch: Arch, config: ModelConfig) -> dict:
    return {t.name: t for t in iter_stored(arrays, arch, config)}


def _floats(tensors: dict, name: str) -> np.ndarray:
    t = tensors[name]
    return t.floats.reshape(t.shape).astype(np.float32, copy=False)  # a view: no second copy of the weights


def _linear(tensors: dict, prefix: str) -> LinearWeights:
    t = tensors[f"{prefix}.weight"]
    # A layer without bias (Llama) gets zeros: adding 0.0 is exact, and every kernel keeps one code path.
    bias = _floats(tensors, f"{prefix}.bias") if f"{prefix}.bias" in tensors else np.zeros(t.shape[0], np.float32)
    return LinearWeights(t.shape, t.bits, t.codes, t.scales, t.floats, bias)


def _norm(g: Graph, x: str, tensors: dict, prefix: str, config: ModelConfig) -> str:
    """LayerNorm (bias optional) or RMSNorm (written out in float32, as supernet/functional.py computes it)."""
    w = g.init(_floats(tensors, f"{prefix}.weight"), f"{prefix}.weight")
    if config.norm == "rms":
        ms = g.op("ReduceMean", [g.op("Mul", [x, x]), g.const([-1], np.int64)], keepdims=1)
        inv = g.op("Reciprocal", [g.op("Sqrt", [g.op("Add", [ms, g.const(config.ln_eps)])])])
        return g.op("Mul", [w, g.op("Mul", [x, inv])])
    inputs = [x, w]
    if f"{prefix}.bias" in tensors:
        inputs.append(g.init(_floats(tensors, f"{prefix}.bias"), f"{prefix}.bias"))
    return g.op("LayerNormalization", inputs, axis=-1, epsilon=config.ln_eps)


def _plain_linear(g: Graph, x: str, tensors: dict, prefix: str, out: str | None = None) -> str:
    """A float linear outside the blocks (patch projection, pooler, head); `out` names its output."""
    y = g.op("MatMul", [x, g.init(_floats(tensors, f"{prefix}.weight").T, f"{prefix}.weight")])
    if f"{prefix}.bias" in tensors:
        y = g.op("Add", [y, g.init(_floats(tensors, f"{prefix}.bias"), f"{prefix}.bias")])
    if out is not None:
        g.nodes.append(helper.make_node("Identity", [y], [out]))
    return y


def _heads(g: Graph, t: str, n: int, head_dim: int) -> str:
    """(B, T, n*D) -> (B, n, T, D)."""
    return g.op("Transpose", [g.op("Reshape", [t, g.const([0, 0, n, head_dim], np.int64)])], perm=[0, 2, 1, 3])


def _rope_tables(config: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin at positions 0..block_size-1, from the shared forward's own function (bit-identical)."""
    from supernet.functional import rope_tables

    return tuple(t.numpy() for t in rope_tables(config.tokens(), config.head_dim, config.rope))


def _rope(g: Graph, x: str, cos: str, sin: str, head_dim: int) -> str:
    """x * cos + rotate_half(x) * sin on (B, h, T, D)."""
    half = g.const([head_dim // 2, head_dim // 2], np.int64)
    split = helper.make_node("Split", [x, half], [g.fresh("x1"), g.fresh("x2")], axis=-1)
    g.nodes.append(split)
    x1, x2 = split.output
    rotated = g.op("Concat", [g.op("Neg", [x2]), x1], axis=-1)
    return g.op("Add", [g.op("Mul", [x, cos]), g.op("Mul", [rotated, sin])])


def _attention(
    g: Graph, qkv: str, heads: int, config: ModelConfig, mask: str | None, rope: tuple[str, str] | None
) -> str:
    """(B, T, (h + 2g)D) fused projections -> (B, T, hD) attention output, as in supernet/functional.attention."""
    D, r = config.head_dim, config.kv_group
    kv = heads // r
    sizes = g.const([heads * D, kv * D, kv * D], np.int64)
    split = helper.make_node("Split", [qkv, sizes], [g.fresh("q"), g.fresh("k"), g.fresh("v")], axis=-1)
    g.nodes.append(split)
    q, k, v = (_heads(g, t, n, D) for t, n in zip(split.output, (heads, kv, kv), strict=True))
    if rope is not None:
        q, k = _rope(g, q, *rope, D), _rope(g, k, *rope, D)
    if r > 1:  # each key/value head serves r consecutive query heads
        rep = g.const([1, 1, r, 1, 1], np.int64)
        k, v = (g.op("Reshape", [g.op("Expand", [g.op("Unsqueeze", [t, g.const([2], np.int64)]), rep]),
                                 g.const([0, heads, -1, D], np.int64)]) for t in (k, v))  # fmt: skip
    scores = g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 1, 3, 2])])
    scores = g.op("Mul", [scores, g.const(1.0 / math.sqrt(D))])
    if mask is not None:
        scores = g.op("Add", [scores, mask])
    y = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])  # (B, h, T, D)
    return g.op("Reshape", [g.op("Transpose", [y], perm=[0, 2, 1, 3]), g.const([0, 0, heads * D], np.int64)])


def _activation(g: Graph, x: str, name: str) -> str:
    if name == "gelu":
        return g.op("Gelu", [x])  # exact (erf)
    if name == "gelu_tanh":
        return g.op("Gelu", [x], approximate="tanh")
    if name == "silu":
        return g.op("Mul", [x, g.op("Sigmoid", [x])])
    return g.op("Relu", [x])


def _block(g: Graph, x: str, tensors: dict, i: int, arch: Arch, config: ModelConfig, kernels, mask, rope) -> str:
    """One block with the config's options, as supernet/functional.block computes it."""
    p, a = f"blocks.{i}", arch.a_bits

    def lin(h: str, name: str) -> str:
        return emit_linear(g, h, _linear(tensors, f"{p}.{name}"), a, kernels[name], f"{p}.{name}")

    def attn(h: str) -> str:
        return lin(_attention(g, lin(h, "qkv"), arch.num_heads[i], config, mask, rope), "proj")

    def mlp(h: str) -> str:
        h = lin(h, "fc1")
        if config.gated_ffn:
            f = arch.ffn_hidden(i)
            split = helper.make_node("Split", [h, g.const([f, f], np.int64)], [g.fresh("gate"), g.fresh("up")], axis=-1)
            g.nodes.append(split)
            h = g.op("Mul", [_activation(g, split.output[0], config.activation), split.output[1]])
        else:
            h = _activation(g, h, config.activation)
        return lin(h, "fc2")

    if config.norm_position == "post":
        x = _norm(g, g.op("Add", [x, attn(x)]), tensors, f"{p}.ln1", config)
        return _norm(g, g.op("Add", [x, mlp(x)]), tensors, f"{p}.ln2", config)
    x = g.op("Add", [x, attn(_norm(g, x, tensors, f"{p}.ln1", config))])
    return g.op("Add", [x, mlp(_norm(g, x, tensors, f"{p}.ln2", config))], hint=f"{p}.out")


def _image_stem(g: Graph, tensors: dict, config: ModelConfig) -> tuple[onnx.ValueInfoProto, str]:
    c, s, p = config.in_channels, config.image_size, config.patch_size
    inp = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", c, s, s])
    grid = g.op("Reshape", ["images", g.const([0, c, s // p, p, s // p, p], np.int64)])
    patches = g.op(
        "Reshape",
        [
            g.op("Transpose", [grid], perm=[0, 2, 4, 1, 3, 5]),
            g.const([0, config.num_patches, config.patch_dim], np.int64),
        ],
    )
    x = _plain_linear(g, patches, tensors, "stem.proj")
    if "stem.cls" in tensors:  # the CLS token before the patches, one per image
        cls = g.init(_floats(tensors, "stem.cls").reshape(1, 1, -1), "cls")
        shape = g.op("Concat", [g.op("Shape", ["images"], start=0, end=1), g.const([1, 1], np.int64)], axis=0)
        x = g.op("Concat", [g.op("Expand", [cls, shape]), x], axis=1)
    return inp, g.op("Add", [x, g.init(_floats(tensors, "stem.pos"), "pos")])


def _token_stem(g: Graph, tensors: dict, config: ModelConfig) -> tuple[onnx.ValueInfoProto, str, str]:
    inp = helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", "seq"])
    seq = g.op("Shape", ["tokens"], start=1, end=2)  # (1,) = T
    x = g.op("Gather", [g.init(_floats(tensors, "stem.table.weight"), "table"), "tokens"], axis=0)
    zero = g.const([0], np.int64)
    if "stem.pos" in tensors:
        x = g.op("Add", [x, g.op("Slice", [g.init(_floats(tensors, "stem.pos"), "pos"), zero, seq, zero])])
    if "stem.type_row" in tensors:
        x = g.op("Add", [x, g.init(_floats(tensors, "stem.type_row"), "type_row")])
    if "stem.norm.weight" in tensors:
        x = _norm(g, x, tensors, "stem.norm", config)
    return inp, x, seq


def _causal_mask(g: Graph, seq: str) -> str:
    """(T, T) additive mask, -inf above the diagonal, built at run time from the sequence length: a constant table
    for the model's longest context would hold block_size² floats (64 GiB at Llama-3.2's 131,072 positions)."""
    end = g.op("Squeeze", [seq, g.const([0], np.int64)])  # T as a scalar
    pos = g.op("Range", [g.const(0, np.int64), end, g.const(1, np.int64)])  # (T,)
    later = g.op("Greater", [g.op("Unsqueeze", [pos, g.const([0], np.int64)]),
                             g.op("Unsqueeze", [pos, g.const([1], np.int64)])])  # (T, T): key after query  # fmt: skip
    return g.op("Where", [later, g.const(-np.inf), g.const(0.0)])


def _padding_mask(g: Graph, pad_id: int) -> tuple[str, str]:
    """(additive (B, 1, 1, T) scores: the float32 minimum at padded keys, as functional.mask_bias; (B, T, 1) float
    1/0 at real/padded tokens, for the pooling mean)."""
    pad = g.op("Equal", ["tokens", g.const(pad_id, np.int64)])  # (B, T)
    bias = g.op("Where", [pad, g.const(np.finfo(np.float32).min), g.const(0.0)])
    keep = g.op("Where", [pad, g.const(0.0), g.const(1.0)])
    return g.op("Unsqueeze", [bias, g.const([1, 2], np.int64)]), g.op("Unsqueeze", [keep, g.const([2], np.int64)])


def _pool(g: Graph, x: str, config: ModelConfig, keep: str | None) -> str:
    """(B, T, E) -> (B, E): the first (CLS) token, the mean, or the mean over real tokens (functional.classify)."""
    if config.pooling == "cls":
        return g.op("Gather", [x, g.const(0, np.int64)], axis=1)
    if keep is None:
        return g.op("ReduceMean", [x, g.const([1], np.int64)], keepdims=0)
    axis = g.const([1], np.int64)
    total = g.op("ReduceSum", [g.op("Mul", [x, keep]), axis], keepdims=0)
    count = g.op("Max", [g.op("ReduceSum", [keep, axis], keepdims=0), g.const(1.0)])
    return g.op("Div", [total, count])


def _rope_inputs(g: Graph, config: ModelConfig, seq: str | None) -> tuple[str, str] | None:
    if config.positions != "rope":
        return None
    zero = g.const([0], np.int64)
    end = seq if seq is not None else g.const([config.tokens()], np.int64)
    cos, sin = _rope_tables(config)
    return tuple(g.op("Slice", [g.init(t, name), zero, end, zero]) for t, name in ((cos, "cos"), (sin, "sin")))


def build_runtime_model(
    arch: Arch, config: ModelConfig, arrays: dict[str, np.ndarray], plan: Plan, external: BinaryIO | None = None
) -> onnx.ModelProto:
    """The ONNX model of `arch` from the arrays `pack_subnet` wrote, with each block linear on `plan`'s kernel. With
    `external` (a binary file `<model>.data` beside where the model will be saved), the tensors are written there as
    the graph is built (a model of any size, one copy of its weights in memory)."""
    if len(plan) != arch.depth or any(set(k) != set(QUANTIZED_LINEARS) for k in plan):
        raise ValueError(f"kernel plan must name a kernel for {QUANTIZED_LINEARS} of each of {arch.depth} layers")
    tensors = _tensors(arrays, arch, config)
    g = Graph(external)
    mask, seq, keep = None, None, None
    if config.task == "image":
        inp, x = _image_stem(g, tensors, config)
    else:
        inp, x, seq = _token_stem(g, tensors, config)
        if config.causal:
            mask = _causal_mask(g, seq)
        elif config.pad_id is not None:
            mask, keep = _padding_mask(g, config.pad_id)
    rope = _rope_inputs(g, config, seq)
    for i in range(arch.depth):
        x = _block(g, x, tensors, i, arch, config, plan[i], mask, rope)
    if config.task != "lm":  # classify the mean of the tokens or the first (CLS) token
        x = _pool(g, x, config, keep)
    if "head.norm.weight" in tensors:
        x = _norm(g, x, tensors, "head.norm", config)
    if "head.pool.weight" in tensors:
        x = g.op("Tanh", [_plain_linear(g, x, tensors, "head.pool")])
    _plain_linear(g, x, tensors, "head.fc", out="logits")
    out_shape = ["batch", "seq", config.vocab_size] if config.task == "lm" else ["batch", config.num_classes]
    graph = helper.make_graph(
        g.nodes,
        f"subnet_{arch.key()}",
        [inp],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, out_shape)],
        g.inits,
    )
    model = make_model(graph)
    meta = {"format": FORMAT, "arch": arch.key(), "kernels": json.dumps([dict(k) for k in plan])}
    helper.set_model_props(model, meta)
    return model


def write_runtime_model(
    arch: Arch, config: ModelConfig, arrays: dict[str, np.ndarray], plan: Plan, path: str | Path
) -> onnx.ModelProto:
    """Build the runtime model and save it at `path` (the deployed `model.onnx`). Weights past protobuf's limit go to
    `model.onnx.data` beside it, written as the graph is built: the weights are never in memory twice."""
    from supernet.runtime.session import EXTERNAL_DATA_BYTES, data_path, save_model

    path = Path(path)
    data = data_path(path)
    data.unlink(missing_ok=True)
    if sum(a.nbytes for a in arrays.values()) <= EXTERNAL_DATA_BYTES:
        model = build_runtime_model(arch, config, arrays, plan)
    else:
        with data.open("wb") as f:
            model = build_runtime_model(arch, config, arrays, plan, external=f)
    save_model(model, path)
    return model


def plan_of(model: onnx.ModelProto) -> list[dict[str, str]]:
    """The per-layer kernels recorded in a runtime model."""
    props = {p.key: p.value for p in model.metadata_props}
    if props.get("format") != FORMAT:
        raise ValueError(f"not a runtime model of this project (format {props.get('format')!r}, expected {FORMAT!r})")
    return json.loads(props["kernels"])


def runtime_model(net, arch: Arch, kernels) -> tuple[onnx.ModelProto, list[dict[str, str]]]:
    """(runtime model, kernel plan) of `arch` of supernet `net`: its packed weights (exactly what `nas-export`
    writes) on the kernels the table `kernels` (supernet/runtime/kernels.py) chooses for this machine."""
    from supernet.extract import extract_subnet
    from supernet.subnet_io import pack_subnet

    plan = kernels.plan(arch, net.config)
    return build_runtime_model(arch, net.config, pack_subnet(extract_subnet(net, arch, qat=True)), plan), plan
