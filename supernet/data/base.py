"""What every data module shares: seeded loaders whose order depends only on (seed, epoch), and a fixed
validation subset for fast subnet evaluation. Splits use `split_seed`, independent of the training `seed`, so
changing the training seed never moves images between train, validation and test."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset, Sampler, Subset


class EpochShuffleSampler(Sampler[int]):
    """A permutation drawn from `(seed, epoch)`; Lightning calls `set_epoch`, so a resumed run sees the same order."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        return iter(np.random.default_rng([self.seed, self.epoch]).permutation(self.n).tolist())

    def __len__(self) -> int:
        return self.n


class TaskDataModule(L.LightningDataModule):
    """Base class: subclasses set `self.train`, `self.val`, `self.test` in `setup` and implement `input_spec`."""

    def __init__(self, batch_size: int, eval_batch_size: int, val_subset_size: int, num_workers: int = 0,
                 seed: int = 0, split_seed: int = 0) -> None:  # fmt: skip
        super().__init__()
        self.batch_size, self.eval_batch_size, self.val_subset_size = batch_size, eval_batch_size, val_subset_size
        self.num_workers, self.seed, self.split_seed = num_workers, seed, split_seed
        self.train = self.val = self.test = None

    def input_spec(self) -> dict:
        """The ModelConfig fields the data fixes (task, geometry or vocabulary)."""
        raise NotImplementedError

    def preprocessing(self) -> dict:
        """What an exported model's caller must do to raw inputs (stored in the supernet artifact)."""
        return {}

    def val_subset_indices(self) -> Sequence[int]:
        """Indices of the fixed validation subset (default: the first `val_subset_size`)."""
        return range(min(self.val_subset_size, len(self.val)))

    def _loader(self, ds: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        sampler = EpochShuffleSampler(len(ds), self.seed) if shuffle else None
        return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=self.num_workers,
                          drop_last=shuffle)  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        if len(self.train) < self.batch_size:
            raise ValueError(
                f"data.batch_size={self.batch_size} is larger than the {len(self.train)} training samples; "
                "lower it or use more training data"
            )
        return self._loader(self.train, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test, self.eval_batch_size, shuffle=False)

    def val_subset_dataloader(self) -> DataLoader:
        """A fixed subset of the validation split, the same in every run with the same `split_seed`."""
        self.setup()
        return self._loader(Subset(self.val, list(self.val_subset_indices())), self.eval_batch_size, shuffle=False)
