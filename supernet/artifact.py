"""The self-describing supernet artifact: one safetensors file holding weights, search space and model config.

Later stages (measurement, search, export) load a supernet from this file alone, without the training config. The
metadata (strings, as safetensors requires) holds the space, the model config, the space fingerprint and free-form
training info; the tensors are the supernet's state dict.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from supernet.config import ModelConfig
from supernet.model import Supernet, build_supernet
from supernet.space import SearchSpace

FORMAT = "elastic-nas-supernet/1"
FILENAME = "supernet.safetensors"


def save_supernet(path: str | Path, net: Supernet, info: dict[str, Any] | None = None) -> Path:
    """Write `net` (weights, space, config, `info`) to `path`: a file, or a folder that gets supernet.safetensors."""
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path / FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": FORMAT,
        "space": json.dumps(net.space.to_dict()),
        "model": json.dumps(net.config.to_dict()),
        "space_fingerprint": net.space.fingerprint(),
        "info": json.dumps(info or {}),
    }
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata=meta)
    tmp.replace(path)  # atomic: an interrupted save never leaves a half-written artifact
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Space, model config and info of an artifact, without loading its weights."""
    path = _resolve(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path} is not a readable supernet artifact ({e}); re-export it with nas-train") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a supernet artifact (format {meta.get('format')!r}, expected {FORMAT!r})")
    try:
        out = {
            "space": SearchSpace.from_config(json.loads(meta["space"])),
            "model": ModelConfig.from_config(json.loads(meta["model"])),
            "info": json.loads(meta.get("info", "{}")),
        }
    except KeyError as e:
        raise ValueError(f"{path} is a damaged supernet artifact: metadata field {e} is missing") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is a damaged supernet artifact: unreadable metadata ({e})") from None
    if meta.get("space_fingerprint") != out["space"].fingerprint():
        raise ValueError(f"{path} is a damaged supernet artifact: its space does not match its recorded fingerprint")
    return out


def load_supernet(path: str | Path, space: SearchSpace | None = None) -> tuple[Supernet, dict[str, Any]]:
    """(supernet in eval mode, info) from an artifact; with `space`, refuse an artifact trained on another space."""
    path = _resolve(path)
    meta = read_metadata(path)
    if space is not None and meta["space"].fingerprint() != space.fingerprint():
        raise ValueError(
            f"{path} was trained on space '{meta['space'].name}' ({meta['space'].fingerprint()}), not on "
            f"'{space.name}' ({space.fingerprint()}); use a supernet trained on this space"
        )
    # Built on the meta device and given the file's tensors as its parameters: one copy of the weights in memory,
    # not a random initialisation plus the loaded state (twice the model, 12 GB at 1.5 B parameters).
    with torch.device("meta"):
        net = build_supernet(meta["space"], meta["model"])
    try:
        net.load_state_dict(load_file(str(path)), strict=True, assign=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not match its own space/model description ({e})") from None
    return net.eval(), meta["info"]


def _resolve(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / FILENAME
    if not path.is_file():
        raise ValueError(f"no supernet artifact at {path}: train one with `nas-train` or pass its run directory")
    return path
