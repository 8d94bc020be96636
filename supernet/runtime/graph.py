"""The deployment graph of a subnet, built directly from its arch and packed weights (no tracing).

`build_runtime_model(arch, config, arrays, plan)` returns an ONNX model that computes what `supernet(x, arch)`
computes (supernet/functional.py), with every block linear emitted by the kernel `plan` names for it
(supernet/runtime/linears.py). Embeddings, norms, attention score math and the head stay float. Building one takes
milliseconds, so measurement can build one per arch; `torch.onnx` would take seconds.

Inputs and outputs: `images` (B, C, H, W) float -> `logits` (B, classes), or `tokens` (B, T) int64 -> `logits`
(B, T, vocab) with T up to block_size; B (and T) are dynamic.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

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
    return t.floats.reshape(t.shape).astype(np.float32)


def _linear(tensors: dict, prefix: str) -> LinearWeights:
    t = tensors[f"{prefix}.weight"]
    return LinearWeights(t.shape, t.bits, t.codes, t.scales, t.floats, _floats(tensors, f"{prefix}.bias"))


def _layer_norm(g: Graph, x: str, tensors: dict, prefix: str, eps: float) -> str:
    w, b = (g.init(_floats(tensors, f"{prefix}.{p}"), f"{prefix}.{p}") for p in ("weight", "bias"))
    return g.op("LayerNormalization", [x, w, b], axis=-1, epsilon=eps)


def _plain_linear(g: Graph, x: str, tensors: dict, prefix: str) -> str:
    """A float linear outside the blocks (patch projection, head)."""
    w_t = g.init(_floats(tensors, f"{prefix}.weight").T, f"{prefix}.weight")
    return g.op("Add", [g.op("MatMul", [x, w_t]), g.init(_floats(tensors, f"{prefix}.bias"), f"{prefix}.bias")])


def _attention(g: Graph, x: str, qkv: str, heads: int, head_dim: int, mask: str | None) -> str:
    """(B, T, 3hD) fused projections -> (B, T, hD) attention output, as in F.scaled_dot_product_attention."""
    split = g.op(
        "Transpose", [g.op("Reshape", [qkv, g.const([0, 0, 3, heads, head_dim], np.int64)])], perm=[2, 0, 3, 1, 4]
    )  # (3, B, h, T, D)
    q, k, v = (g.op("Gather", [split, g.const(i, np.int64)], axis=0) for i in range(3))  # each (B, h, T, D)
    scores = g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 1, 3, 2])])
    scores = g.op("Mul", [scores, g.const(1.0 / math.sqrt(head_dim))])
    if mask is not None:
        scores = g.op("Add", [scores, mask])
    y = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])  # (B, h, T, D)
    return g.op("Reshape", [g.op("Transpose", [y], perm=[0, 2, 1, 3]), g.const([0, 0, heads * head_dim], np.int64)])


def _block(g: Graph, x: str, tensors: dict, i: int, arch: Arch, config: ModelConfig, kernels, mask) -> str:
    """Pre-norm block: x + proj(attn(qkv(ln1(x)))), then + fc2(gelu(fc1(ln2(x))))."""
    p, a = f"blocks.{i}", arch.a_bits

    def lin(h: str, name: str) -> str:
        return emit_linear(g, h, _linear(tensors, f"{p}.{name}"), a, kernels[name], f"{p}.{name}")

    qkv = lin(_layer_norm(g, x, tensors, f"{p}.ln1", config.ln_eps), "qkv")
    y = _attention(g, x, qkv, arch.num_heads[i], config.head_dim, mask)
    x = g.op("Add", [x, lin(y, "proj")])
    hidden = g.op("Gelu", [lin(_layer_norm(g, x, tensors, f"{p}.ln2", config.ln_eps), "fc1")])  # exact (erf)
    return g.op("Add", [x, lin(hidden, "fc2")], hint=f"{p}.out")


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
    x = g.op("Add", [_plain_linear(g, patches, tensors, "stem.proj"), g.init(_floats(tensors, "stem.pos"), "pos")])
    return inp, x


def _token_stem(g: Graph, tensors: dict) -> tuple[onnx.ValueInfoProto, str, str]:
    inp = helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", "seq"])
    seq = g.op("Shape", ["tokens"], start=1, end=2)  # (1,) = T
    emb = g.op("Gather", [g.init(_floats(tensors, "stem.table.weight"), "table"), "tokens"], axis=0)
    zero = g.const([0], np.int64)
    pos = g.op("Slice", [g.init(_floats(tensors, "stem.pos"), "pos"), zero, seq, zero])
    return inp, g.op("Add", [emb, pos]), seq


def _causal_mask(g: Graph, seq: str, block_size: int) -> str:
    full = np.triu(np.full((block_size, block_size), -np.inf, np.float32), k=1)
    ends = g.op("Concat", [seq, seq], axis=0)
    return g.op("Slice", [g.init(full, "causal_mask"), g.const([0, 0], np.int64), ends, g.const([0, 1], np.int64)])


def build_runtime_model(arch: Arch, config: ModelConfig, arrays: dict[str, np.ndarray], plan: Plan) -> onnx.ModelProto:
    """The ONNX model of `arch` from the arrays `pack_subnet` wrote, with each block linear on `plan`'s kernel."""
    if len(plan) != arch.depth or any(set(k) != set(QUANTIZED_LINEARS) for k in plan):
        raise ValueError(f"kernel plan must name a kernel for {QUANTIZED_LINEARS} of each of {arch.depth} layers")
    tensors = _tensors(arrays, arch, config)
    g = Graph()
    mask = None
    if config.task == "image":
        inp, x = _image_stem(g, tensors, config)
    else:
        inp, x, seq = _token_stem(g, tensors)
        mask = _causal_mask(g, seq, config.block_size)
    for i in range(arch.depth):
        x = _block(g, x, tensors, i, arch, config, plan[i], mask)
    if config.task == "image":
        x = g.op("ReduceMean", [x, g.const([1], np.int64)], keepdims=0)  # mean-pool the tokens
    h = _layer_norm(g, x, tensors, "head.norm", config.ln_eps)
    g.nodes.append(
        helper.make_node(
            "Add",
            [
                g.op("MatMul", [h, g.init(_floats(tensors, "head.fc.weight").T, "head.fc.weight")]),
                g.init(_floats(tensors, "head.fc.bias"), "head.fc.bias"),
            ],
            ["logits"],
        )
    )
    out_shape = ["batch", config.num_classes] if config.task == "image" else ["batch", "seq", config.vocab_size]
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
