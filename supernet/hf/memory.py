"""Memory estimated before a pretrained model is loaded: a model too large for this machine gets one line naming
what it needs and what there is, instead of the kernel killing the process halfway through an import."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Peak resident bytes of an import per parameter of the `transformers` model: its float32 weights, the float32
# supernet (an untied LM head adds one vocabulary table), and the concatenated canonical tensors in between.
# Measured by bench/scale.py's import stage: 10.2 (Llama-3.2-1B's shape) to 11.4 (BERT-base) bytes per parameter
# above the libraries' baseline; the estimate takes the upper end.
IMPORT_BYTES_PER_PARAM = 11.5
GB = 2**30


def count_params(cfg: Any, cls: type) -> int:
    """Parameters of model class `cls` built from config `cfg`, counted on the meta device (no memory, no weights;
    tied tables counted once)."""
    import torch

    with torch.device("meta"):
        model = cls(cfg)
    return sum(p.numel() for p in model.parameters())


def available_bytes() -> int:
    """Memory this process can still take without swapping: MemAvailable of /proc/meminfo (Linux), else the total."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_import_fits(source: str, params: int, available: int | None = None) -> None:
    """One line when importing a model of `params` parameters would need more memory than is available."""
    need = params * IMPORT_BYTES_PER_PARAM
    have = available_bytes() if available is None else available
    if need > have:
        raise ValueError(
            f"{source}: importing this model of {params / 1e9:.2f} B parameters needs about {need / GB:.1f} GB "
            f"({IMPORT_BYTES_PER_PARAM:g} bytes per parameter: the float32 model, the supernet and the copies in "
            f"between) but {have / GB:.1f} GB is available; free memory or import it on a machine with at least "
            f"{need / GB:.0f} GB"
        )
