"""Save and load standalone subnets: `model.safetensors` (packed low-bit weights) beside `arch.yaml`.

The weights file holds three flat tensors, in the order of the standalone module's `state_dict` (which the arch
and model config fix, so no per-tensor names or shapes need storing):

    codes   uint8    every quantized block matrix (qkv, proj, fc1, fc2 of layers below 32 bits), bit-packed at its
                     layer's w_bits (supernet/packing.py), one after another
    scales  float32  one per output channel of those matrices
    floats  float32  everything else: embeddings, norms, biases, the head, 32-bit matrices

so the file is the cost model's `bytes` plus a header of a few hundred bytes. `arch.yaml` holds the arch, the model
config and the file's SHA-256; `load_subnet` rebuilds the module from these two files alone (no supernet, no training
config) and refuses a weights file whose hash does not match.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file
from torch.nn.utils import parametrize

from supernet.arch import Arch, canonical_key
from supernet.config import ModelConfig
from supernet.packing import pack_codes, packed_size, unpack_codes
from supernet.qat import QUANTIZED_LINEARS
from supernet.quant import weight_codes
from supernet.static import StaticSubnet, build_subnet

FORMAT = "elastic-nas-subnet/1"
WEIGHTS_NAME = "model.safetensors"
ARCH_NAME = "arch.yaml"


def _layout(arch: Arch, config: ModelConfig) -> Iterator[tuple[str, tuple[int, ...], int]]:
    """(state-dict name, shape, bits) of every tensor, in file order; bits < 32 marks a packed matrix."""
    with torch.device("meta"):
        template = build_subnet(arch, config)
    for name, t in template.state_dict().items():
        parts = name.split(".")
        packed = len(parts) == 4 and parts[0] == "blocks" and parts[2] in QUANTIZED_LINEARS and parts[3] == "weight"
        bits = arch.w_bits[int(parts[1])] if packed else 32
        yield name, tuple(t.shape), bits


def _latent(sub: StaticSubnet, name: str) -> torch.Tensor:
    """The float tensor behind `name`: the latent weight of a quantization-aware layer, else the parameter."""
    *path, attr = name.split(".")
    module = sub.get_submodule(".".join(path))
    if parametrize.is_parametrized(module, attr):
        return getattr(module.parametrizations, attr).original
    return getattr(module, attr)


@torch.no_grad()
def pack_subnet(sub: StaticSubnet) -> dict[str, np.ndarray]:
    """The three flat arrays of the weights file for `sub`, in quantization-aware form (`extract_subnet(...,
    qat=True)`, possibly fine-tuned): its low-bit layers hold latent float weights behind their quantizer.

    Codes and scales are computed from the latent weights with the same `weight_codes` the supernet uses, so
    unpacking reproduces the quantized weights bit for bit. (Re-quantizing already quantized weights would not: the
    recomputed scales can differ in the last bits, so a module without quantizers on its low-bit layers is refused.)
    """
    codes, scales, floats = [], [], []
    for name, shape, bits in _layout(sub.arch, sub.config):
        *path, attr = name.split(".")
        if bits < 32 and not parametrize.is_parametrized(sub.get_submodule(".".join(path)), attr):
            raise ValueError(f"{name} has no weight quantizer: save the quantization-aware module, "
                             "extract_subnet(net, arch, qat=True), not an extracted or baked one")  # fmt: skip
        t = _latent(sub, name).detach().float().cpu()
        if tuple(t.shape) != shape:
            raise ValueError(f"{name}: module shape {tuple(t.shape)} does not match arch {sub.arch.key()} ({shape})")
        if bits < 32:
            c, s = weight_codes(t, bits)
            codes.append(pack_codes(c, bits))
            scales.append(s.reshape(-1).numpy())
        else:
            floats.append(t.reshape(-1).numpy())
    cat = lambda parts, dtype: np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)  # noqa: E731
    return {"codes": cat(codes, np.uint8), "scales": cat(scales, np.float32), "floats": cat(floats, np.float32)}


class StoredTensor(NamedTuple):
    """One tensor of a weights file: a packed low-bit matrix (`codes` bytes + per-row `scales`) or plain floats."""

    name: str
    shape: tuple[int, ...]
    bits: int  # < 32: `codes` holds bit-packed codes (supernet/packing.py) and `scales` one float per row
    codes: np.ndarray | None
    scales: np.ndarray | None
    floats: np.ndarray | None  # bits == 32: the values, flat


def iter_stored(arrays: dict[str, np.ndarray], arch: Arch, config: ModelConfig) -> Iterator[StoredTensor]:
    """The tensors of the arrays `pack_subnet` wrote, in state-dict order, still packed (what the runtime graph and
    `unpack_subnet` both read); a file with too few or too many values for `arch` is refused."""
    if set(arrays) != {"codes", "scales", "floats"}:
        raise ValueError(f"weights file holds arrays {sorted(arrays)}, expected codes, scales, floats")
    pos = {"codes": 0, "scales": 0, "floats": 0}

    def take(key: str, n: int) -> np.ndarray:
        out = arrays[key][pos[key] : pos[key] + n]
        if len(out) != n:
            raise ValueError(f"weights file too short for arch {arch.key()} (array {key!r})")
        pos[key] += n
        return out

    for name, shape, bits in _layout(arch, config):
        n = int(np.prod(shape))
        if bits < 32:
            yield StoredTensor(name, shape, bits, take("codes", packed_size(n, bits)), take("scales", shape[0]), None)
        else:
            yield StoredTensor(name, shape, bits, None, None, take("floats", n))
    left = {k: len(v) - pos[k] for k, v in arrays.items() if len(v) != pos[k]}
    if left:
        raise ValueError(f"weights file has {left} values more than arch {arch.key()} needs: another arch's file?")


def unpack_subnet(arrays: dict[str, np.ndarray], arch: Arch, config: ModelConfig) -> StaticSubnet:
    """A standalone module (eval mode, float32, CPU) from the arrays `pack_subnet` wrote."""
    with torch.device("meta"):
        sub = build_subnet(arch, config)
    state: dict[str, torch.Tensor] = {}
    for t in iter_stored(arrays, arch, config):
        if t.bits < 32:
            codes = unpack_codes(t.codes, t.bits, int(np.prod(t.shape))).reshape(t.shape)
            scale = torch.from_numpy(t.scales.copy()).reshape(t.shape[0], 1)
            state[t.name] = codes.mul_(scale)  # the same op as supernet.quant.quantize_weight: identical values
        else:  # a view of the file's float array where it is ours to write to: the weights are held once
            floats = t.floats if t.floats.flags.writeable else t.floats.copy()
            state[t.name] = torch.from_numpy(floats).reshape(t.shape)
    sub.load_state_dict(state, strict=True, assign=True)  # the meta module takes these tensors as its parameters
    return sub.eval()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:  # streamed: a weights file may be larger than the memory left
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def save_subnet(sub: StaticSubnet, out: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write `model.safetensors` and `arch.yaml` (arch, model config, weights hash, plus `extra`) into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / WEIGHTS_NAME
    save_file(pack_subnet(sub), str(weights), metadata={"format": FORMAT, "arch": sub.arch.key()})
    doc = {
        "format": FORMAT,
        "arch": sub.arch.to_dict(),
        "key": sub.arch.key(),
        "model": sub.config.to_dict(),
        "weights": {"file": WEIGHTS_NAME, "sha256": sha256(weights), "bytes": weights.stat().st_size},
        **(extra or {}),
    }
    (out / ARCH_NAME).write_text(yaml.safe_dump(doc, sort_keys=False, default_flow_style=None))
    return out


def read_arch_yaml(path: str | Path) -> dict[str, Any]:
    """The parsed `arch.yaml` of an exported subnet directory (or the file itself)."""
    p = Path(path)
    p = p / ARCH_NAME if p.is_dir() else p
    if not p.is_file():
        raise ValueError(f"no exported subnet at {path}: expected {ARCH_NAME} (write one with nas-export)")
    try:
        doc = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{p} is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{p} is not an exported subnet description (format {FORMAT!r})")
    weights = doc.get("weights")
    missing = [k for k in ("arch", "model", "key") if k not in doc]
    if missing or not isinstance(weights, dict) or not {"file", "sha256"} <= set(weights):
        raise ValueError(f"{p} lacks {missing or ['weights.file/sha256']}: re-export the subnet with nas-export")
    return doc


def read_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a weights file, each read once from the memory-mapped file (safetensors' `load_file` holds the
    whole file as bytes while it builds the arrays: twice the weights at the peak)."""
    with safe_open(str(path), framework="numpy") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (a safetensors handle, not a dict)


def _current_key(key: str | None) -> str | None:
    """An arch key as today's format writes it (anything else as it is)."""
    try:
        return canonical_key(key) if key else key
    except ValueError:
        return key


def load_subnet(path: str | Path) -> StaticSubnet:
    """Rebuild an exported subnet from its directory (`arch.yaml` + `model.safetensors`), checking the weights hash."""
    doc = read_arch_yaml(path)
    root = Path(path) if Path(path).is_dir() else Path(path).parent
    weights = root / doc["weights"]["file"]
    if not weights.is_file():
        raise ValueError(f"weights file {weights} is missing beside {ARCH_NAME}")
    if sha256(weights) != doc["weights"]["sha256"]:
        raise ValueError(f"{weights} does not match the SHA-256 in {root / ARCH_NAME}: it was changed or damaged")
    arch, config = Arch.from_dict(doc["arch"]), ModelConfig.from_config(doc["model"])
    try:
        with safe_open(str(weights), framework="numpy") as f:
            meta = f.metadata() or {}
        arrays = read_arrays(weights)
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{weights} is not a readable weights file ({e})") from None
    # Two archs can need arrays of the same sizes (e.g. two layers' bit-widths swapped): the file names its arch (in
    # the key format of its day: files written before keys held FFN widths name it with ratios).
    if meta.get("format") != FORMAT or _current_key(meta.get("arch")) != arch.key():
        raise ValueError(f"weights file {weights} holds the weights of {meta.get('arch')!r}, not of {arch.key()}")
    return unpack_subnet(arrays, arch, config)
