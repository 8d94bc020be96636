"""Image classification data: Fashion-MNIST (default) and scikit-learn's digits (zero-setup, for tests).

Splits are fixed by `split_seed` (independent of the training `seed`): the validation split is carved out of the
training set, the test split is the dataset's own (Fashion-MNIST) or a seeded hold-out (digits).
`val_subset_dataloader()` is a fixed subset of the validation split for fast evaluation of many subnets. Inputs are
normalised with the training split's statistics, which `preprocessing()` reports for the artifact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from supernet.data.base import TaskDataModule
from supernet.data.idx import read_idx

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)  # Debian package dataset-fashion-mnist
FASHION_MNIST_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


class ImageArrayDataModule(TaskDataModule):
    """Classification data held in memory as arrays. Subclasses implement `load_arrays()`."""

    def __init__(
        self,
        batch_size: int = 128,
        val_size: int = 5000,
        train_subset: int | None = None,
        val_subset_size: int = 1000,
        eval_batch_size: int = 512,
        num_workers: int = 0,
        seed: int = 0,
        split_seed: int = 0,
        normalize: dict | None = None,
    ) -> None:
        """`normalize`: fixed per-channel statistics ({"normalize_mean": [...], "normalize_std": [...]}, e.g. a supernet
        artifact's recorded ones) instead of the training split's own."""
        super().__init__(batch_size, eval_batch_size, val_subset_size, num_workers, seed, split_seed)
        if train_subset is not None and train_subset < 1:
            raise ValueError(f"data.train_subset={train_subset} must be a positive count or null")
        if normalize is not None and set(normalize) != {"normalize_mean", "normalize_std"}:
            raise ValueError(f"data.normalize={dict(normalize)} must hold exactly normalize_mean and normalize_std")
        self.val_size, self.train_subset, self.normalize = val_size, train_subset, normalize
        self._spec: dict | None = None
        self._norm: dict | None = None

    def load_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(train_x (N, C, H, W) or (N, H, W), train_y, test_x, test_y), any numeric dtype."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.train is not None:
            return
        train_x, train_y, test_x, test_y = self.load_arrays()
        train_x, test_x = (a[:, None] if a.ndim == 3 else a for a in (train_x, test_x))
        if self.val_size >= len(train_x):
            raise ValueError(f"data.val_size={self.val_size} must be smaller than the {len(train_x)} training images")
        perm = np.random.default_rng(self.split_seed).permutation(len(train_x))
        val_idx, train_idx = perm[: self.val_size], perm[self.val_size :]
        if self.train_subset is not None:
            train_idx = train_idx[: self.train_subset]
        if self.normalize is not None:
            mean, std = (np.asarray(self.normalize[k], np.float32).reshape(1, -1, 1, 1)
                         for k in ("normalize_mean", "normalize_std"))  # fmt: skip
        else:  # per-channel statistics of the training split only, so validation/test never leak into preprocessing
            x = train_x[train_idx].astype(np.float32)
            mean = x.mean(axis=(0, 2, 3), keepdims=True)
            std = x.std(axis=(0, 2, 3), keepdims=True) + 1e-6
        self._norm = {"normalize_mean": mean.ravel().tolist(), "normalize_std": std.ravel().tolist()}

        def tensors(xs: np.ndarray, ys: np.ndarray) -> TensorDataset:
            xs = (xs.astype(np.float32) - mean) / std
            return TensorDataset(torch.from_numpy(xs), torch.from_numpy(ys.astype(np.int64)))

        self.train = tensors(train_x[train_idx], train_y[train_idx])
        self.val = tensors(train_x[val_idx], train_y[val_idx])
        self.test = tensors(test_x, test_y)
        self._spec = {
            "task": "image",
            "in_channels": int(train_x.shape[1]),
            "image_size": int(train_x.shape[2]),
            "num_classes": int(max(train_y.max(), test_y.max()) + 1),
        }

    def input_spec(self) -> dict:
        """ModelConfig fields fixed by the data."""
        self.setup()
        assert self._spec is not None
        return dict(self._spec)

    def preprocessing(self) -> dict:
        """Per-channel mean/std (of the training split) applied to raw pixel values."""
        self.setup()
        return dict(self._norm or {})


class FashionMNISTDataModule(ImageArrayDataModule):
    """Fashion-MNIST from its IDX files: `data_dir`, or the Debian package's folder when `data_dir` is null."""

    def __init__(self, data_dir: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.data_dir = data_dir

    def _find(self, d: Path, stem: str) -> Path | None:
        return next((d / n for n in (stem, stem + ".gz") if (d / n).is_file()), None)

    def load_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        dirs = [Path(self.data_dir)] if self.data_dir else [Path(d) for d in FASHION_MNIST_DIRS]
        for d in dirs:
            found = {k: self._find(d, stem) for k, stem in FASHION_MNIST_FILES.items()}
            if all(found.values()):
                arrays = {k: read_idx(p) for k, p in found.items()}  # type: ignore[arg-type]
                return arrays["train_x"], arrays["train_y"], arrays["test_x"], arrays["test_y"]
        where = ", ".join(str(d) for d in dirs)
        raise ValueError(
            f"Fashion-MNIST not found in {where}: install it with `sudo apt-get install dataset-fashion-mnist` "
            f"(Debian/Ubuntu), or set data.data_dir to a folder holding {', '.join(FASHION_MNIST_FILES.values())} "
            "(optionally .gz), as published at github.com/zalandoresearch/fashion-mnist"
        )


class DigitsDataModule(ImageArrayDataModule):
    """scikit-learn's bundled 8×8 digits (1,797 images): no download, for tests and smoke runs."""

    def __init__(self, test_size: int = 297, val_size: int = 300, **kwargs) -> None:
        super().__init__(val_size=val_size, **kwargs)
        self.test_size = test_size

    def load_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        from sklearn.datasets import load_digits

        d = load_digits()
        x, y = d.images.astype(np.float32), d.target
        perm = np.random.default_rng([self.split_seed, 1]).permutation(len(x))
        test, train = perm[: self.test_size], perm[self.test_size :]
        return x[train], y[train], x[test], y[test]
