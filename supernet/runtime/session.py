"""ONNX Runtime sessions for runtime models: options, capability checks and what ORT actually runs."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch

MIN_VERSION = (1, 20)
# protobuf serializes at most 2 GiB; past this size (with headroom for the graph) tensors go to an external data file
EXTERNAL_DATA_BYTES = 1_800_000_000  # MatMulNBits with 2/8 bits and a bias input
FALLBACK = "measure with latency.runtime=torch (a float simulation) instead"


def ort():
    """The onnxruntime module, or one clear error naming what to install."""
    try:
        import onnxruntime
    except ImportError:
        raise ValueError(f"onnxruntime is not installed: pip install 'onnxruntime>=1.20', or {FALLBACK}") from None
    onnxruntime.set_default_logger_severity(3)  # its warnings about unused initializers are not the user's business
    return onnxruntime


def version() -> str:
    return ort().__version__


def session_options(threads: int, optimized_path: str | None = None):
    so = ort().SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort().ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort().GraphOptimizationLevel.ORT_ENABLE_ALL
    if optimized_path:
        so.optimized_model_filepath = optimized_path
    return so


def is_large(model: onnx.ModelProto) -> bool:
    """Whether `model` is past what protobuf can serialize in one message (so its tensors must go to a file)."""
    # Summed per tensor: ByteSize() of the whole message itself fails past 2 GiB.
    return sum(t.ByteSize() for t in model.graph.initializer) > EXTERNAL_DATA_BYTES


def has_external_data(model: onnx.ModelProto) -> bool:
    """Whether `model`'s tensors live in a data file (built with `external=`): load it from its path, not its proto."""
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def initializer_bytes(model: onnx.ModelProto) -> int:
    """Bytes of `model`'s tensors, in the proto or in its data file."""
    return sum(int({e.key: e.value for e in t.external_data}["length"]) if t.external_data else len(t.raw_data)
               for t in model.graph.initializer)  # fmt: skip


def data_path(path: str | Path) -> Path:
    """The external data file of the model saved at `path`: `<name>.data` beside it."""
    path = Path(path)
    return path.with_name(path.name + ".data")


def save_model(model: onnx.ModelProto, path: str | Path) -> Path:
    """Write `model` to `path`; past protobuf's 2 GiB its tensors go to `<name>.data` beside it (ONNX external
    data, which `onnx.load` and ONNX Runtime read from the same folder). `model` holds its tensors again after. A
    model built with its tensors already in `<name>.data` (`external=`) is written as the graph alone."""
    path, data = Path(path), data_path(path)
    if has_external_data(model):
        onnx.save(model, str(path))
        return path
    data.unlink(missing_ok=True)  # external data is appended to: a stale file would grow
    if not is_large(model):
        onnx.save(model, str(path))
        return path
    # Saving moves the tensors out of the proto in place (no second copy of a model this size); read them back.
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name,
                    size_threshold=1024)  # fmt: skip
    onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
    return path


def make_session(model: onnx.ModelProto | bytes | str | Path, threads: int = 1):
    """A CPU session for `model` (a proto, its bytes, or a path); a proto past 2 GiB is loaded through a temporary
    file with external data."""
    if isinstance(model, onnx.ModelProto):
        if is_large(model):
            with tempfile.TemporaryDirectory() as tmp:
                path = save_model(model, Path(tmp) / "model.onnx")
                return ort().InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
        model = model.SerializeToString()
    elif isinstance(model, Path):
        model = str(model)
    return ort().InferenceSession(model, session_options(threads), providers=["CPUExecutionProvider"])


def feed(session, x: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return {session.get_inputs()[0].name: arr}


def run(model, x: torch.Tensor, threads: int = 1) -> np.ndarray:
    """The model's output for `x` in ONNX Runtime on the CPU."""
    session = make_session(model, threads)
    return session.run(None, feed(session, x))[0]


def executed_ops(model: onnx.ModelProto | str | Path, threads: int = 1) -> list[str]:
    """Op types of the graph ONNX Runtime runs after its optimizations (constant folding, fusions)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "optimized.onnx")
        if not isinstance(model, onnx.ModelProto):
            source = str(model)  # a saved model (its external data beside it)
        elif is_large(model):
            source = str(save_model(model, Path(tmp) / "model.onnx"))
        else:
            source = model.SerializeToString()
        ort().InferenceSession(source, session_options(threads, path), providers=["CPUExecutionProvider"])
        return [n.op_type for n in onnx.load(path, load_external_data=False).graph.node]


@functools.cache
def check_runtime() -> str:
    """The ONNX Runtime version, after checking it runs the kernels the runtime graph uses; one clear error if not."""
    rt = ort()
    have = tuple(int(p) for p in rt.__version__.split(".")[:2])
    if have < MIN_VERSION:
        raise ValueError(
            f"onnxruntime {rt.__version__} lacks MatMulNBits with 2/8-bit weights (needs >= "
            f"{'.'.join(map(str, MIN_VERSION))}): pip install -U onnxruntime, or {FALLBACK}"
        )
    from supernet.runtime.linears import LinearWeights, linear_model  # a tiny probe of each kernel

    codes = np.full(16 * 16 // 2, 0b01100110, np.uint8)  # 4-bit codes, two per byte
    w = LinearWeights((16, 16), 4, codes, np.ones(16, np.float32), None, np.zeros(16, np.float32))
    for kernel, a_bits in (("int8", 8), ("nbits", 32), ("nbits_int8", 8)):
        model = linear_model(w, a_bits, kernel, [1, 16])
        try:
            run(model, torch.ones(1, 16))
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise ValueError(
                f"onnxruntime {rt.__version__} cannot run the {kernel} kernel ({first}); {FALLBACK}"
            ) from None
    return rt.__version__
