"""One block linear of the deployment graph, emitted for a chosen kernel.

Every kernel computes the arithmetic of supernet/quant.py: weights per output channel (codes × scale), activations
per token (`scale = max(max|x_token|, 1e-8) / qmax`, `code = round_half_even(x / scale)`), so the choice between
kernels is a matter of speed only. The kernels:

    float        MatMul on float weights holding the quantized values; activations below 32 bits fake-quantized
                 with the same ops as the supernet (Abs, ReduceMax, Max, Div, Round, Mul)
    int8         a_bits 8, w_bits <= 8: per-token codes shifted to uint8 (zero point 128) times int8 weight codes
                 in MatMulInteger (U8S8; ORT fuses it with the scaling into MatMulIntegerToFloat)
    int8_u8u8    the same with weight codes shifted to uint8 too (U8U8: no int16 saturation on AVX2 without VNNI)
    nbits        a_bits 32, w_bits <= 8: com.microsoft MatMulNBits (2/4/8-bit blocks, fp32 compute); 1-bit and
                 ternary weights as 2-bit codes
    nbits_int8   a_bits 8: MatMulNBits with int8 compute (accuracy_level 4) and one block per row, so that its
                 internal activation quantization is per token, as in the supernet

Low-bit weights are stored low-bit in every kernel: `float` and `int8*` keep the bytes of supernet/packing.py and
unpack them with integer ops on constants, which ONNX Runtime folds once when the session is built (nothing of it
runs per call); `nbits*` store MatMulNBits' own block layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from supernet.packing import unpack_codes

KERNELS = ("float", "int8", "int8_u8u8", "nbits", "nbits_int8")
MS_DOMAIN = "com.microsoft"
OPSET = 21
_EPS = 1e-8  # supernet.quant._EPS: the per-token scale's floor
_NBITS_MAX_BLOCK = {2: 256, 4: 2048, 8: 2048}  # ORT refuses 2-bit blocks above 256


class LinearWeights(NamedTuple):
    """A block linear as stored: `bits` < 32 -> packed `codes` (supernet/packing.py) + per-row `scales`."""

    shape: tuple[int, int]  # (N out, K in)
    bits: int
    codes: np.ndarray | None
    scales: np.ndarray | None
    floats: np.ndarray | None  # (N*K,) when bits == 32
    bias: np.ndarray  # (N,)


def nbits_storage(w_bits: int) -> int:
    """MatMulNBits bit-width that holds `w_bits` codes exactly (1-bit and ternary as 2-bit)."""
    return 2 if w_bits <= 2 else w_bits


def next_pow2(k: int) -> int:
    return max(16, 1 << (k - 1).bit_length())


def supports(kernel: str, w_bits: int, a_bits: int, in_features: int) -> bool:
    """Whether `kernel` computes a linear with these bit-widths exactly as the supernet does."""
    if kernel == "float":
        return True
    if w_bits > 8:
        return False
    if kernel in ("int8", "int8_u8u8"):
        return a_bits == 8
    if kernel == "nbits":
        return a_bits >= 32
    if kernel == "nbits_int8":  # its activation blocks must cover the whole row: one block per token
        return a_bits == 8 and next_pow2(in_features) <= _NBITS_MAX_BLOCK[nbits_storage(w_bits)]
    raise ValueError(f"unknown kernel {kernel!r}; known: {KERNELS}")


def candidates(w_bits: int, a_bits: int, in_features: int) -> list[str]:
    """Kernels that can run a linear with these bit-widths."""
    return [k for k in KERNELS if supports(k, w_bits, a_bits, in_features)]


EXTERNAL_MIN_BYTES = 1024  # with external data, tensors from this size go to the data file (as onnx's own threshold)


class Graph:
    """Nodes and initializers of an ONNX graph under construction, with fresh names and shared constants.

    With `external` (a file opened for binary writing, named `<model file>.data` beside the model), each tensor of at
    least EXTERNAL_MIN_BYTES is written there as it is added and the graph keeps only its location: a model of any
    size is built without holding its weights in memory a second time (nor hitting protobuf's 2 GiB limit).
    """

    def __init__(self, external: BinaryIO | None = None) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._count = 0
        self._consts: dict[tuple, str] = {}
        self.external = external

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def init(self, array: np.ndarray, hint: str) -> str:
        name = self.fresh(hint)
        array = np.asarray(array)
        if not array.flags.c_contiguous:  # a copy only where the layout needs one (ascontiguousarray makes 0-d 1-d)
            array = np.ascontiguousarray(array)
        if self.external is None or array.nbytes < EXTERNAL_MIN_BYTES:
            self.inits.append(numpy_helper.from_array(array, name))
            return name
        f = self.external
        offset = f.seek(0, 2)
        f.write(memoryview(array).cast("B"))  # raw little-endian bytes (x86 and Arm are), as ONNX stores them
        tensor = onnx.TensorProto(name=name, dims=array.shape, data_type=helper.np_dtype_to_tensor_dtype(array.dtype))
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for k, v in (("location", Path(f.name).name), ("offset", str(offset)), ("length", str(array.nbytes))):
            tensor.external_data.add(key=k, value=v)
        self.inits.append(tensor)
        return name

    def const(self, value, dtype=np.float32) -> str:
        """A small constant, created once per (value, dtype)."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            self._consts[key] = self.init(arr, "c")
        return self._consts[key]

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, domain: str | None = None, **attrs) -> str:
        out = self.fresh(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], domain=domain, **attrs))
        return out


def _float_codes(g: Graph, w: LinearWeights, hint: str) -> str:
    """(N, K) float codes from the packed bytes, as constant-foldable ops (the file keeps the packed bytes)."""
    n_out, k_in = w.shape
    n = n_out * k_in
    if w.bits in (8, 16):
        ints = w.codes.view("<i1" if w.bits == 8 else "<i2").reshape(n_out, k_in)
        return g.op("Cast", [g.init(ints, f"{hint}_codes")], to=TensorProto.FLOAT)
    per_byte, mask = 8 // w.bits, (1 << w.bits) - 1
    packed = g.init(w.codes.astype(np.uint8, copy=False), f"{hint}_codes")
    fields = []
    for i in range(per_byte):  # field i of every byte sits at bits [i*bits, (i+1)*bits), lowest first
        shifted = g.op("BitShift", [packed, g.const(i * w.bits, np.uint8)], direction="RIGHT") if i else packed
        field = g.op("BitwiseAnd", [shifted, g.const(mask, np.uint8)])
        fields.append(g.op("Unsqueeze", [field, g.const([1], np.int64)]))
    flat = g.op("Reshape", [g.op("Concat", fields, axis=1), g.const([-1], np.int64)])
    mat = g.op(
        "Reshape",
        [g.op("Slice", [flat, g.const([0], np.int64), g.const([n], np.int64)]), g.const([n_out, k_in], np.int64)],
    )
    values = g.op("Cast", [mat], to=TensorProto.FLOAT)
    if w.bits == 1:  # sign bit: 1 -> +1, 0 -> -1
        return g.op("Sub", [g.op("Mul", [values, g.const(2.0)]), g.const(1.0)])
    return g.op("Sub", [values, g.const(float({2: 1, 4: 8}[w.bits]))])


def _token_scale(g: Graph, x: str, a_bits: int) -> tuple[str, str]:
    """(scale (…, 1), rounded codes as float) of per-token quantization, exactly supernet.quant's ops."""
    qmax = float(2 ** (a_bits - 1) - 1)
    amax = g.op("ReduceMax", [g.op("Abs", [x]), g.const([-1], np.int64)], keepdims=1)
    scale = g.op("Div", [g.op("Max", [amax, g.const(_EPS)]), g.const(qmax)], hint="a_scale")
    # |x| / scale <= qmax by construction, so the supernet's clamp never acts and is left out
    return scale, g.op("Round", [g.op("Div", [x, scale])])


def _nbits_blocks(codes: np.ndarray, bits: int, block: int) -> np.ndarray:
    """MatMulNBits' B: (N, blocks, block*bits/8) uint8, codes + 2**(bits-1) (its default zero point), low first."""
    n_out, k_in = codes.shape
    n_blocks = -(-k_in // block)
    zp = 2 ** (bits - 1)
    full = np.full((n_out, n_blocks * block), zp, np.uint8)  # padding decodes to 0
    full[:, :k_in] = (codes + zp).astype(np.uint8)
    per_byte = 8 // bits
    fields = full.reshape(n_out, n_blocks, block // per_byte, per_byte)
    out = np.zeros(fields.shape[:3], np.uint8)
    for i in range(per_byte):
        out |= (fields[..., i] << (bits * i)).astype(np.uint8)
    return out


def _nbits_block_size(bits: int, k_in: int, whole_row: bool) -> int:
    """One block per row when asked (per-token int8 compute), else the size that stores the fewest bytes."""
    if whole_row:
        return next_pow2(k_in)
    sizes = [b for b in (16, 32, 64, 128, 256, 512, 1024, 2048) if b <= min(next_pow2(k_in), _NBITS_MAX_BLOCK[bits])]
    return min(sizes, key=lambda b: (-(-k_in // b)) * (b * bits // 8 + 4))


def int_codes(w: LinearWeights) -> np.ndarray:
    """(N, K) integer codes of a packed matrix."""
    n = w.shape[0] * w.shape[1]
    return unpack_codes(w.codes, w.bits, n).numpy().astype(np.int16).reshape(w.shape)


def emit_linear(g: Graph, x: str, w: LinearWeights, a_bits: int, kernel: str, hint: str) -> str:
    """`x @ W.T + b` for input `x` (…, K) with activations at `a_bits`, computed by `kernel`."""
    n_out, k_in = w.shape
    if not supports(kernel, w.bits, a_bits, k_in):
        raise ValueError(f"kernel {kernel!r} cannot run w_bits={w.bits}, a_bits={a_bits} (K={k_in})")
    bias = g.init(w.bias.astype(np.float32, copy=False), f"{hint}_bias")
    if kernel == "float":
        if w.bits >= 32:
            weight_t = g.init(w.floats.reshape(n_out, k_in).T, f"{hint}_weight")
        else:
            scaled = g.op("Mul", [_float_codes(g, w, hint), g.init(w.scales.reshape(n_out, 1), f"{hint}_scales")])
            weight_t = g.op("Transpose", [scaled], perm=[1, 0])
        if a_bits < 32:
            scale, rounded = _token_scale(g, x, a_bits)
            x = g.op("Mul", [rounded, scale])
        return g.op("Add", [g.op("MatMul", [x, weight_t]), bias], hint=hint)
    if kernel in ("int8", "int8_u8u8"):
        codes = _float_codes(g, w, hint)
        zp = g.const(128, np.uint8)
        if kernel == "int8":
            weight_t, zps = g.op("Transpose", [g.op("Cast", [codes], to=TensorProto.INT8)], perm=[1, 0]), [zp]
        else:
            shifted = g.op("Cast", [g.op("Add", [codes, g.const(128.0)])], to=TensorProto.UINT8)
            weight_t, zps = g.op("Transpose", [shifted], perm=[1, 0]), [zp, zp]
        scale, rounded = _token_scale(g, x, 8)
        x_u8 = g.op("Cast", [g.op("Add", [rounded, g.const(128.0)])], to=TensorProto.UINT8)
        acc = g.op("Cast", [g.op("MatMulInteger", [x_u8, weight_t, *zps])], to=TensorProto.FLOAT)
        both = g.op("Mul", [scale, g.init(w.scales.astype(np.float32), f"{hint}_scales")])
        # Sum, not Add: ORT 1.32 fuses MatMulInteger->Cast->Mul->Add into MatMulIntegerToFloat and then drops the bias
        # (found by the kernel table's exactness check); Sum keeps the bias out of that fusion.
        return g.op("Sum", [g.op("Mul", [acc, both]), bias], hint=hint)
    # nbits, nbits_int8
    bits = nbits_storage(w.bits)
    block = _nbits_block_size(bits, k_in, whole_row=kernel == "nbits_int8")
    b = g.init(_nbits_blocks(int_codes(w), bits, block), f"{hint}_nbits")
    n_blocks = -(-k_in // block)
    scales = g.init(np.repeat(w.scales.astype(np.float32), n_blocks), f"{hint}_scales")
    if kernel == "nbits" and a_bits < 32:
        raise AssertionError("unreachable: supports() refuses nbits for quantized activations")
    return g.op(
        "MatMulNBits",
        [x, b, scales, "", "", bias],
        hint=hint,
        domain=MS_DOMAIN,
        K=k_in,
        N=n_out,
        bits=bits,
        block_size=block,
        accuracy_level=4 if kernel == "nbits_int8" else 0,
    )


def make_model(graph: onnx.GraphProto) -> onnx.ModelProto:
    """A model of `graph` at this project's opsets (default domain and com.microsoft)."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)],
                              producer_name="elastic-nas")  # fmt: skip
    model.ir_version = 10
    return model


def linear_model(weights: LinearWeights, a_bits: int, kernel: str, shape: list) -> onnx.ModelProto:
    """A one-linear runtime graph with input `x` of `shape` (e.g. (B, T, K)) and output `y`."""
    g = Graph()
    y = emit_linear(g, "x", weights, a_bits, kernel, "l")
    g.nodes.append(helper.make_node("Identity", [y], ["y"]))
    graph = helper.make_graph(g.nodes, "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], g.inits)  # fmt: skip
    return make_model(graph)
