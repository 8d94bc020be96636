"""A user-defined data module, plugged into nas-train through `data._target_` (see README, Custom datasets)."""

from __future__ import annotations

import numpy as np

from supernet.data import ImageArrayDataModule


class TinyStripes(ImageArrayDataModule):
    """12×12 two-channel images of horizontal vs vertical stripes (3 classes incl. blank), generated from a seed."""

    def __init__(self, n: int = 600, **kwargs) -> None:
        super().__init__(val_size=100, val_subset_size=100, **kwargs)
        self.n = n

    def load_arrays(self):
        rng = np.random.default_rng(self.seed)
        y = rng.integers(0, 3, self.n + 120)
        x = rng.normal(0, 0.3, (len(y), 2, 12, 12)).astype(np.float32)
        x[y == 1, :, ::3, :] += 1.0
        x[y == 2, :, :, ::3] += 1.0
        return x[: self.n], y[: self.n], x[self.n :], y[self.n :]
