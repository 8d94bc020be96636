"""ONNX export of a standalone subnet (torch.onnx's exporter) and its check in ONNX Runtime."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from supernet.static import StaticSubnet


def export_onnx(sub: StaticSubnet, example: torch.Tensor, path: str | Path) -> Path:
    """Write `sub` as ONNX with a dynamic batch (and, for the LM, a dynamic sequence length up to block_size)."""
    path = Path(path)
    batch = torch.export.Dim("batch", min=1, max=65536)
    if sub.config.task == "image":
        names, dims = (["images"], ["logits"]), {"images": {0: batch}}
    else:
        seq = torch.export.Dim("seq", min=1, max=sub.config.block_size)
        names, dims = (["tokens"], ["logits"]), {"tokens": {0: batch, 1: seq}}
    # The exporter prints progress and warns about its own internals; the caller reports the result.
    quiet = [logging.getLogger(n) for n in ("onnx_ir", "onnxscript", "torch.onnx")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.WARNING)  # Hydra's INFO root logger would otherwise print every graph pass
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(sub.eval(), (example,), str(path), input_names=names[0], output_names=names[1],
                          dynamic_shapes=dims, verbose=False, external_data=False)  # fmt: skip
    for q, level in zip(quiet, levels, strict=True):
        q.setLevel(level)
    return path


def run_onnx(path: str | Path, x: torch.Tensor, threads: int = 1) -> np.ndarray:
    """Outputs of the ONNX model at `path` for input `x`, computed by ONNX Runtime on the CPU."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.cpu().numpy()})[0]
