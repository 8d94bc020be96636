"""User mistakes end in one clear ValueError naming what was wrong, for the supernet and the extracted module."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from supernet import Arch, ModelConfig, build_supernet, extract_subnet
from tests.conftest import TASK_CONFIGS, sample_input


@pytest.fixture(scope="module")
def vit(default_space):
    return build_supernet(default_space, TASK_CONFIGS["image"]).eval()


@pytest.fixture(scope="module")
def lm(default_space):
    return build_supernet(default_space, TASK_CONFIGS["lm"]).eval()


def test_arch_outside_space_is_refused(vit, default_space) -> None:
    arch = dataclasses.replace(default_space.largest(), num_heads=(4, 4, 3, 4, 4, 4))
    with pytest.raises(ValueError, match=r"num_heads\[2\]=3 not in \(1, 2, 4\)"):
        vit(sample_input(vit.config), arch)
    with pytest.raises(ValueError, match=r"embed_dim=100 not in \(64, 96, 128\)"):
        extract_subnet(vit, dataclasses.replace(default_space.smallest(), embed_dim=100))
    with pytest.raises(ValueError, match=r"depth=7 not in"):
        vit(sample_input(vit.config), Arch(7, 64, (1,) * 7, (1.0,) * 7, (8,) * 7, 8))
    with pytest.raises(ValueError, match="expected an Arch"):
        vit(sample_input(vit.config), default_space.largest().to_dict())


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (torch.zeros(2, 1, 32, 32), r"shape \(B, 1, 28, 28\), got \(2, 1, 32, 32\)"),
        (torch.zeros(1, 28, 28), r"shape \(B, 1, 28, 28\)"),
        (torch.zeros(2, 3, 28, 28), r"shape \(B, 1, 28, 28\)"),
        (torch.zeros(2, 1, 28, 28, dtype=torch.uint8), r"float tensor, got dtype torch.uint8"),
        ([[0.0]], "expected a torch.Tensor"),
    ],
)
def test_bad_images(vit, default_space, x, message) -> None:
    arch = default_space.smallest()
    with pytest.raises(ValueError, match=message):
        vit(x, arch)
    with pytest.raises(ValueError, match=message):
        extract_subnet(vit, arch)(x)


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (torch.tensor([[0, 5, 256]]), r"token ids must be in \[0, 256\), got values in \[0, 256\]"),
        (torch.tensor([[-1, 5]]), r"token ids must be in \[0, 256\), got values in \[-1, 5\]"),
        (torch.zeros(1, 33, dtype=torch.long), r"sequence length 33 exceeds block_size=32"),
        (torch.zeros(2, 4), r"integer tensor, got dtype torch.float32"),
        (torch.zeros(4, dtype=torch.long), r"shape \(B, T\)"),
        (torch.zeros(2, 0, dtype=torch.long), r"shape \(B, T\) with T >= 1"),
    ],
)
def test_bad_tokens(lm, default_space, x, message) -> None:
    arch = default_space.smallest()
    with pytest.raises(ValueError, match=message):
        lm(x, arch)
    with pytest.raises(ValueError, match=message):
        extract_subnet(lm, arch)(x)


def test_shorter_sequences_are_fine(lm, default_space) -> None:
    arch = default_space.largest()
    x = sample_input(lm.config, batch=2, seq_len=5)
    with torch.no_grad():
        assert torch.equal(lm(x, arch), extract_subnet(lm, arch)(x))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"task": "audio"}, r"model.task='audio' is not one of \('image', 'lm', 'text'\)"),
        ({"image_size": 30, "patch_size": 7}, "not divisible by model.patch_size=7"),
        ({"head_dim": 0}, "model.head_dim=0 must be a positive integer"),
        ({"vocab_size": 2.5}, "model.vocab_size=2.5 must be a positive integer"),
        ({"ln_eps": 0.0}, "ln_eps=0.0 must be > 0"),
    ],
)
def test_bad_model_config(overrides, message) -> None:
    with pytest.raises(ValueError, match=message):
        ModelConfig(**overrides)


def test_unknown_model_config_field() -> None:
    with pytest.raises(ValueError, match=r"unknown model field\(s\) \['patch'\]"):
        ModelConfig.from_config({"task": "image", "patch": 7})
