"""Synthetic token sequences for **cost benchmarks at real model sizes only** (bench/gpu_scale.py).

A real model's vocabulary (SmolLM's 49,152 tokens, Llama's 128,256) has no tokenizer or corpus offline here, so
this module makes seeded token sequences of any vocabulary and length: a fixed random bigram process. Every token
has `branching` successors, drawn once from `split_seed`, followed with Zipf probabilities (1, 1/2, …, 1/k,
normalised); a sequence starts at a random token. The process's entropy per token (`bigram_entropy()`, about
1.8 nats for 8 successors) is far below log(vocab_size) (10.8 nats for 49,152), so a model that learns anything
shows its loss fall, and training and evaluation cost exactly what they would on text of that vocabulary and
length. Nothing measured on it says anything about quality on real data.

Splits are independent draws of the same process (train, validation and test seeded apart by `split_seed`);
`seed` orders the training batches, as in every data module.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset

from supernet.data.base import TaskDataModule


class _Sequences(Dataset):
    """(input, target) pairs: a (n, block_size + 1) array of token ids shifted by one."""

    def __init__(self, tokens: np.ndarray) -> None:
        self.tokens = torch.from_numpy(tokens)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        chunk = self.tokens[i].long()
        return chunk[:-1], chunk[1:]


def zipf_weights(branching: int) -> np.ndarray:
    """Probabilities of a token's successors: 1, 1/2, …, 1/k, normalised."""
    w = 1.0 / np.arange(1, branching + 1)
    return w / w.sum()


class RandomTokensDataModule(TaskDataModule):
    """Language-modelling data of any vocabulary and sequence length from a seeded random bigram process (for cost
    benchmarks at real sizes; see the module's docstring)."""

    def __init__(
        self,
        vocab_size: int = 49152,
        block_size: int = 2048,
        n_train: int = 512,
        n_val: int = 64,
        n_test: int = 64,
        branching: int = 8,
        batch_size: int = 8,
        eval_batch_size: int = 8,
        val_subset_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        split_seed: int = 0,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, val_subset_size, num_workers, seed, split_seed)
        for name, v, low in (("vocab_size", vocab_size, 2), ("block_size", block_size, 1), ("n_train", n_train, 1),
                             ("n_val", n_val, 1), ("n_test", n_test, 1), ("branching", branching, 1)):  # fmt: skip
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ValueError(f"data.{name}={v!r} must be an integer >= {low}")
        if branching > vocab_size:
            raise ValueError(f"data.branching={branching} exceeds data.vocab_size={vocab_size}")
        self.vocab_size, self.block_size, self.branching = vocab_size, block_size, branching
        self.sizes = {"train": n_train, "val": n_val, "test": n_test}

    def successors(self) -> np.ndarray:
        """(vocab_size, branching) successor ids of every token: the process, fixed by `split_seed`."""
        rng = np.random.default_rng([self.split_seed, 0])
        return rng.integers(0, self.vocab_size, size=(self.vocab_size, self.branching), dtype=np.int64)

    def bigram_entropy(self) -> float:
        """Entropy per token of the process (nats): the loss a perfect model reaches (when a token's successors
        happen to repeat, a little less)."""
        p = zipf_weights(self.branching)
        return float(-(p * np.log(p)).sum())

    def sample(self, n: int, stream: int) -> np.ndarray:
        """(n, block_size + 1) token ids of the process, drawn from the seeded `stream`."""
        succ, p = self.successors(), zipf_weights(self.branching)
        rng = np.random.default_rng([self.split_seed, stream])
        choice = rng.choice(self.branching, size=(n, self.block_size), p=p)
        out = np.empty((n, self.block_size + 1), dtype=np.int64)
        out[:, 0] = rng.integers(0, self.vocab_size, size=n)
        for t in range(self.block_size):  # one vectorised step per position over all n sequences
            out[:, t + 1] = succ[out[:, t], choice[:, t]]
        dtype = np.int32 if self.vocab_size <= np.iinfo(np.int32).max else np.int64
        return out.astype(dtype)

    def setup(self, stage: str | None = None) -> None:
        if self.train is not None:
            return
        self.train, self.val, self.test = (
            _Sequences(self.sample(self.sizes[name], stream)) for stream, name in enumerate(("train", "val", "test"), 1)
        )

    def input_spec(self) -> dict:
        return {"task": "lm", "vocab_size": self.vocab_size, "block_size": self.block_size}

    def preprocessing(self) -> dict:
        return {
            "encoding": f"synthetic ids of a random bigram process (vocab {self.vocab_size}): cost benchmarks only",
            "bigram_entropy_nats": round(self.bigram_entropy(), 4),
            "uniform_entropy_nats": round(math.log(self.vocab_size), 4),
        }
