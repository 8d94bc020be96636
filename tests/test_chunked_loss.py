"""The chunked per-token loss (supernet/chunked_loss.py): the same loss and gradients as the dense one, for every
teacher, divergence, exit mode and chunk size, while a step keeps no tokens × vocabulary tensor for backward."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch

from supernet.config import ModelConfig
from supernet.extract import extract_subnet
from supernet.model import build_supernet
from supernet.sampling import build_sampler
from supernet.space import SearchSpace
from supernet.training import SubnetModule, SupernetModule
from tests.conftest import TASK_CONFIGS, randomize, sample_input

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPACE = SearchSpace(depth=[1, 2, 3], embed_dim=[16, 32], num_heads=[2, 4], mlp_ratio=[1, 2], w_bits=[8, 32])
VOCAB = 97  # a prime: no chunk size divides the rows × vocabulary evenly by accident


def lm_config(**kw) -> ModelConfig:
    return ModelConfig(task="lm", vocab_size=VOCAB, block_size=12, head_dim=8, **kw)


def step_grads(module: SupernetModule | SubnetModule, x: torch.Tensor, y: torch.Tensor):
    """The training step's loss and every parameter's gradient."""
    module.net.zero_grad(set_to_none=True)
    loss = module.training_step((x, y), 0)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in module.net.named_parameters() if p.grad is not None}


def supernet_module(config: ModelConfig, train: dict, seed: int) -> SupernetModule:
    module = SupernetModule(SPACE.to_dict(), config.to_dict(), {"reference_archs": 0, **train})
    randomize(module.net, seed)
    module.sampler = build_sampler("sandwich", module.space, num_random=2, seed=seed)
    module.log = lambda *a, **k: None
    if train.get("teacher") == "pretrained":
        module.set_pretrained_teacher(randomize(build_supernet(SPACE, config), seed + 1))
    return module


CASES = list(
    itertools.product(
        ["largest", "pretrained"],  # in-place distillation from the largest arch, or a frozen pretrained teacher
        ["kl", "alpha"],
        ["none", "all"],  # depth exits: the shallower depths read off the same pass, distilled too
        [1, 5, 2048],  # tokens per chunk: one, a non-divisor of the 3 × 12 rows, more than the rows
    )
)


@pytest.mark.parametrize(("teacher", "divergence", "exits", "chunk"), CASES)
def test_chunked_step_equals_the_dense_step(teacher, divergence, exits, chunk) -> None:
    seed = CASES.index((teacher, divergence, exits, chunk))
    config = lm_config(norm="rms", gated_ffn=True, positions="rope") if seed % 2 else lm_config()
    train = {"teacher": teacher, "kd_divergence": divergence, "depth_exits": exits, "kd_temperature": 2.0,
             "task_weight": 0.5}  # fmt: skip
    chunked = supernet_module(config, {**train, "loss_chunk_tokens": chunk}, seed)
    dense = supernet_module(config, {**train, "loss_chunk_tokens": None}, seed)
    assert chunked.deferred() and not dense.deferred()
    x = sample_input(config, batch=3, seed=seed)
    y = torch.roll(x, -1, 1)
    loss_c, grads_c = step_grads(chunked, x, y)
    loss_d, grads_d = step_grads(dense, x, y)
    torch.testing.assert_close(loss_c, loss_d, rtol=1e-5, atol=1e-6)
    assert grads_c.keys() == grads_d.keys() and len(grads_d) > 4
    for name in grads_d:
        torch.testing.assert_close(grads_c[name], grads_d[name], rtol=1e-4, atol=1e-6, msg=name)


def saved_bytes(fn) -> int:
    """Bytes of the tensors autograd saves for backward while `fn` runs (views of one storage counted once)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


@pytest.mark.parametrize("teacher", ["largest", "pretrained"])
def test_a_chunked_step_keeps_no_logits_for_backward(teacher) -> None:
    """What a step keeps for backward, dense against chunked: the dense loss keeps several float32 copies of every
    arch's logits (rows × vocabulary); the chunked one keeps hidden states and one chunk's logits at most."""
    config = ModelConfig(task="lm", vocab_size=4096, block_size=64, head_dim=8)
    rows, chunk = 4 * 64, 32
    x = sample_input(config, batch=4, seed=0)
    y = torch.roll(x, -1, 1)
    kept = {}
    for mode in (None, chunk):
        module = supernet_module(config, {"teacher": teacher, "loss_chunk_tokens": mode}, seed=3)
        kept[mode] = saved_bytes(lambda m=module: m.training_step((x, y), 0))
    logits_bytes = rows * config.vocab_size * 4  # one float32 logits tensor
    assert kept[None] > 4 * logits_bytes, kept  # four archs, each keeping at least one float32 copy
    # Inside the chunked loss only the hidden states and the labels are saved (the trunk is the same in both).
    assert kept[None] - kept[chunk] > 4 * logits_bytes - chunk * config.vocab_size * 4 * 4, kept
    assert kept[chunk] < logits_bytes, kept


def test_a_standalone_subnet_trains_alike_chunked() -> None:
    """SubnetModule (plain fine-tuning, nas-export's fine-tuning) takes the same chunked loss, teacher or not."""
    config = TASK_CONFIGS["lm_llama"]
    space = SearchSpace.from_config({**SPACE.to_dict(), "embed_dim": [32, 64], "num_heads": [2, 4]})
    net = randomize(build_supernet(space, config), 4)
    arch = space.sample(np.random.default_rng(0))
    teacher = copy.deepcopy(net).eval()
    for with_teacher in (False, True):
        kd = (lambda x: teacher(x, space.largest())) if with_teacher else None
        results = []
        for chunk in (7, None):
            module = SubnetModule(extract_subnet(net, arch), {"loss_chunk_tokens": chunk}, teacher=kd)
            module.log = lambda *a, **k: None
            x = sample_input(config, batch=2, seed=1)
            results.append(step_grads(module, x, torch.roll(x, -1, 1)))
        (loss_c, grads_c), (loss_d, grads_d) = results
        torch.testing.assert_close(loss_c, loss_d, rtol=1e-5, atol=1e-6)
        for name in grads_d:
            torch.testing.assert_close(grads_c[name], grads_d[name], rtol=1e-4, atol=1e-6, msg=name)


def test_loss_chunk_tokens_must_be_positive() -> None:
    from supernet.train_config import resolve_train_config

    with pytest.raises(ValueError, match=r"train.loss_chunk_tokens=0 must be >= 1, or null"):
        resolve_train_config({"loss_chunk_tokens": 0})
