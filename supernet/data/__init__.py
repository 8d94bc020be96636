"""Lightning DataModules for the shipped tasks, and the contract a custom dataset follows.

A data module for `nas-train` is a `lightning.LightningDataModule` that also provides:

* `input_spec() -> dict`: the `ModelConfig` fields fixed by the data (`task` plus `in_channels`, `image_size`,
  `num_classes` for images, `vocab_size` for language modelling, or `vocab_size`, `block_size`, `num_classes` and
  the tokenizer's `pad_id` for text classification);
* `val_subset_dataloader()`: a fixed, seeded subset of the validation split used to evaluate many subnets quickly.

`TaskDataModule` (supernet/data/base.py) provides the loaders, the subset and resumable shuffling; subclass it, or
`ImageArrayDataModule` for in-memory images.

Plug in your own with a config whose `data._target_` names your class (see README, "Custom datasets").
"""

from supernet.data.base import EpochShuffleSampler, TaskDataModule
from supernet.data.genre import ShakespeareGenreDataModule
from supernet.data.images import DigitsDataModule, FashionMNISTDataModule, ImageArrayDataModule
from supernet.data.labelled import LabelledTextDataModule
from supernet.data.text import ShakespeareDataModule

__all__ = [
    "DigitsDataModule",
    "EpochShuffleSampler",
    "FashionMNISTDataModule",
    "ImageArrayDataModule",
    "LabelledTextDataModule",
    "ShakespeareDataModule",
    "ShakespeareGenreDataModule",
    "TaskDataModule",
]
