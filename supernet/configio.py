"""Turn a Hydra/OmegaConf node or a plain mapping into a plain dict, checking its keys."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf


def plain_dict(cfg: Mapping[str, Any], what: str, allowed: Iterable[str], required: Iterable[str] = ()) -> dict:
    """A plain dict copy of `cfg`; one ValueError naming unknown or missing keys of `what`."""
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    if not isinstance(cfg, Mapping):
        raise ValueError(f"a {what} config must be a mapping, got {type(cfg).__name__}")
    allowed = set(allowed)
    unknown = set(cfg) - allowed
    if unknown:
        raise ValueError(f"unknown {what} field(s) {sorted(unknown)}; expected some of {sorted(allowed)}")
    missing = set(required) - set(cfg)
    if missing:
        raise ValueError(f"{what} config is missing field(s) {sorted(missing)}")
    return dict(cfg)
