"""Padded text: a classifier with a `pad_id` never reads padded positions, so a padded row's logits are those of its
real tokens alone, in the supernet, the extracted subnet and the runtime graph (the mask is derived from the ids in
each of them). Both poolings: BERT's CLS token and the mean over the real tokens."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from supernet import build_supernet, extract_subnet
from supernet.runtime.graph import build_runtime_model
from supernet.runtime.kernels import float_plan
from supernet.runtime.session import run
from supernet.subnet_io import pack_subnet
from supernet.tolerance import RTOL, relative_error
from tests.conftest import TASK_CONFIGS, padded_tokens, randomize

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CONFIGS = {
    "cls": TASK_CONFIGS["text_bert"],
    "mean": dataclasses.replace(TASK_CONFIGS["text_bert"], pooling="mean", pooler=False, final_norm=True, pad_id=3),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def text_net(request, small_space):
    torch.manual_seed(0)
    return randomize(build_supernet(small_space, CONFIGS[request.param])).eval()


def _close(got, want) -> bool:
    got, want = np.asarray(got), np.asarray(want)
    return relative_error(got, want) <= RTOL


def _archs(net, n: int = 6) -> list:
    rng = np.random.default_rng(0)
    return [net.space.largest(), net.space.smallest(), *(net.space.sample(rng) for _ in range(n))]


def test_padding_does_not_change_the_real_tokens_logits(text_net) -> None:
    """Each padded row gives what its unpadded tokens give alone, in the supernet and the extracted subnet."""
    c = text_net.config
    x = padded_tokens(c, 5, c.block_size, torch.Generator().manual_seed(1))
    lengths = (x != c.pad_id).sum(1).tolist()
    assert min(lengths) < c.block_size  # really padded
    for arch in _archs(text_net):
        sub = extract_subnet(text_net, arch)
        with torch.no_grad():
            padded, extracted = text_net(x, arch), sub(x)
            alone = torch.cat([text_net(x[i : i + 1, :n], arch) for i, n in enumerate(lengths)])
        assert torch.equal(extracted, padded), arch.key()
        assert _close(padded, alone), arch.key()


def test_the_runtime_graph_masks_padding_like_the_supernet(text_net) -> None:
    c = text_net.config
    x = padded_tokens(c, 6, c.block_size, torch.Generator().manual_seed(2))
    for arch in _archs(text_net):
        model = build_runtime_model(arch, c, pack_subnet(extract_subnet(text_net, arch, qat=True)), float_plan(arch))
        with torch.no_grad():
            want = text_net(x, arch).numpy()
        assert _close(run(model, x), want), arch.key()
        assert _close(run(model, x[:, :5]), text_net(x[:, :5], arch).detach().numpy())  # dynamic length


def test_without_a_pad_id_every_token_is_read(small_space) -> None:
    c = dataclasses.replace(CONFIGS["cls"], pad_id=None)
    torch.manual_seed(0)
    net = randomize(build_supernet(small_space, c)).eval()
    x = padded_tokens(CONFIGS["cls"], 3, c.block_size, torch.Generator().manual_seed(3))
    i = int((x != 0).sum(1).argmin())
    assert (x[i] == 0).any()
    arch = net.space.largest()
    with torch.no_grad():
        short = net(x[i : i + 1, : int((x[i] != 0).sum())], arch)
        assert not _close(net(x[i : i + 1], arch), short)  # the padding is attended to: the mask is what removes it


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"task": "lm"}, r"model.pad_id is for task 'text'"),
        ({"pad_id": 256}, r"model.pad_id=256 must be a token id in \[0, 256\) or null"),
        ({"pad_id": -1}, r"model.pad_id=-1 must be a token id"),
    ],
)
def test_bad_pad_id(overrides, message) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(CONFIGS["cls"], **overrides)
