"""One DataLoader recipe for every data module: seeded shuffling, full batches for training."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset


def seeded_loader(ds: Dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0) -> DataLoader:
    """A DataLoader whose shuffle order depends only on `seed` (and the epoch), never on global RNG state."""
    g = torch.Generator().manual_seed(seed)
    return DataLoader(
        ds, batch_size=batch_size, shuffle=shuffle, generator=g, num_workers=num_workers, drop_last=shuffle
    )
