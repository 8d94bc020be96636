"""Depth exits (deep supervision), bit-specific norms and depth-specific heads: what the training recipe adds to the
supernet."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from supernet import ModelConfig, build_supernet, extract_subnet
from supernet.arch import Arch
from supernet.train_config import resolve_train_config
from tests.conftest import ce_by_hand, kl_by_hand, randomize, sample_input, sandwich_module


def test_truncate_keeps_the_first_layers() -> None:
    a = Arch(3, 64, (1, 2, 4), (1.0, 2.0, 3.0), (1, 8, 32), a_bits=8)
    assert a.truncate(2) == Arch(2, 64, (1, 2), (1.0, 2.0), (1, 8), a_bits=8)
    assert a.truncate(3) == a
    for bad in (0, 4):
        with pytest.raises(ValueError, match="must lie in"):
            a.truncate(bad)


def test_every_exit_is_the_truncated_arch(task_net) -> None:
    """Property over random archs: the exit after d blocks equals supernet(x, arch.truncate(d)) exactly."""
    rng = np.random.default_rng(1)
    x = sample_input(task_net.config, batch=2, seq_len=8)
    with torch.no_grad():
        for _ in range(25):
            arch = task_net.space.sample(rng)
            depths = tuple(d for d in task_net.space.depth if d <= arch.depth)
            outs = task_net.forward_exits(x, arch, depths)
            assert sorted(outs) == sorted(depths)
            for d in depths:
                assert torch.equal(outs[d], task_net(x, arch.truncate(d)))
    with pytest.raises(ValueError, match="exit depths"):
        task_net.forward_exits(x, arch, (arch.depth + 1,))


@pytest.mark.parametrize("mode", ["teacher", "all"])
def test_exit_losses_join_the_sandwich_loss(default_space, mode) -> None:
    """total = the sandwich loss + per arch with exits: exit_weight/n_exits × mean-scale × student loss of each exit."""
    module = sandwich_module(default_space, {"depth_exits": mode, "exit_weight": 0.7, "task_weight": 0.5}, seed=5)
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        total = module.training_step((x, y), 0)
        picks = module.sampler.picks(0)
        teacher = module.net(x, picks[0].arch)
        scale = 1 / (len(picks) - 1)

        def student(logits):
            return kl_by_hand(logits, teacher, 1.0) + 0.5 * ce_by_hand(logits, y)

        want = ce_by_hand(teacher, y) + sum(scale * student(module.net(x, p.arch)) for p in picks[1:])
        for p in picks if mode == "all" else picks[:1]:
            exits = [d for d in default_space.depth if d < p.arch.depth]
            for d in exits:
                want = want + scale * 0.7 / len(exits) * student(module.net(x, p.arch.truncate(d)))
    torch.testing.assert_close(total, want)


def test_exit_modes_are_validated() -> None:
    assert resolve_train_config({"depth_exits": "all"})["depth_exits"] == "all"
    with pytest.raises(ValueError, match=r"train\.depth_exits='some' is not one of"):
        resolve_train_config({"depth_exits": "some"})
    with pytest.raises(ValueError, match="exit_weight"):
        resolve_train_config({"exit_weight": -1.0})


def test_bit_norms_are_per_bit_width_and_extract_exactly(default_space) -> None:
    """With bit_norms each w_bits choice has its own ln1/ln2 row; the extracted subnet keeps its layers' rows."""
    config = ModelConfig(task="image", bit_norms=True)
    net = randomize(build_supernet(default_space, config)).eval()
    assert net.blocks[0].ln1.weight.shape == (len(default_space.w_bits), default_space.embed_dim[-1])
    rng = np.random.default_rng(2)
    x = sample_input(config, batch=3)
    with torch.no_grad():
        for _ in range(25):
            arch = default_space.sample(rng)
            assert torch.equal(extract_subnet(net, arch).eval()(x), net(x, arch))
        # Two archs that differ only in one layer's bit-width use different norms (not just other weights).
        a = default_space.largest()
        w = net.blocks[0].materialize(a.embed_dim, a.num_heads[0], a.ffn_hidden(0), 8)
        assert not torch.equal(w.ln1_w, net.blocks[0].materialize(a.embed_dim, 4, a.ffn_hidden(0), 32).ln1_w)
    with pytest.raises(ValueError, match="has no norm of its own"):
        net.blocks[0].norm_variant(3)


@pytest.mark.parametrize("task", ["image", "lm"])
def test_depth_heads_are_per_depth_and_extract_exactly(default_space, task) -> None:
    """With depth_heads each depth choice has its own final norm and head; the extracted subnet keeps its depth's,
    and a depth exit reads the head of its own depth."""
    config = ModelConfig(task=task, vocab_size=64, block_size=8, depth_heads=True)
    net = randomize(build_supernet(default_space, config)).eval()
    n, e = len(default_space.depth), default_space.embed_dim[-1]
    assert net.head.fc.weight.shape == (n, config.num_outputs, e)
    assert net.head.norm.weight.shape == (n, e)
    rng = np.random.default_rng(3)
    x = sample_input(config, batch=3)
    with torch.no_grad():
        for _ in range(25):
            arch = default_space.sample(rng)
            assert torch.equal(extract_subnet(net, arch).eval()(x), net(x, arch)), arch.key()
        a = default_space.largest()
        exits = net.forward_exits(x, a, (2, a.depth))
        assert torch.equal(exits[2], net(x, a.truncate(2)))
        # The same features under another depth's head give other logits: the heads are not shared.
        assert not torch.equal(net.head_weights(a, 2).fc_w, net.head_weights(a).fc_w)
    with pytest.raises(ValueError, match="depth 1 has no head of its own"):
        net.head_weights(a, 1)


@pytest.mark.parametrize("option", ["bit_norms", "depth_heads"])
def test_recipe_options_must_be_booleans(option: str) -> None:
    with pytest.raises(ValueError, match=rf"model\.{option}='maybe' must be true or false"):
        ModelConfig(task="image", **{option: "maybe"})


def test_layer_rank_keeps_the_ranked_blocks_and_extracts_exactly(default_space) -> None:
    """model.layer_rank on the project's own ViT (the README's end-keeping variant): depth d runs the d best-ranked
    blocks in model order, and the extracted subnet equals the supernet for random archs."""
    config = ModelConfig(task="image", bit_norms=True, layer_rank=[0, 5, 3, 1, 4, 2])
    net = randomize(build_supernet(default_space, config)).eval()
    assert [config.kept_layers(d) for d in (2, 3, 6)] == [[0, 5], [0, 3, 5], [0, 1, 2, 3, 4, 5]]
    rng = np.random.default_rng(4)
    x = sample_input(config, batch=3)
    with torch.no_grad():
        for _ in range(25):
            arch = default_space.sample(rng)
            sub = extract_subnet(net, arch).eval()
            assert torch.equal(sub(x), net(x, arch)), arch.key()
        arch = default_space.smallest()  # depth 2: its second layer holds block 5's weights
        sub = extract_subnet(net, arch)
        assert torch.equal(sub.blocks[1].ln1.weight, net.blocks[5].materialize(
            arch.embed_dim, arch.num_heads[1], arch.ffn_hidden(1), arch.w_bits[1]).ln1_w)  # fmt: skip
        with pytest.raises(ValueError, match="depth exits need elastic depth to drop the last layers"):
            net.forward_exits(x, default_space.largest(), (2, 6))
    with pytest.raises(ValueError, match=r"must be a permutation of 0\.\.n-1"):
        ModelConfig(task="image", layer_rank=[0, 5, 5, 1, 4, 2])
    with pytest.raises(ValueError, match="ranks 3 layers but the space is 6 deep"):
        build_supernet(default_space, ModelConfig(task="image", layer_rank=[0, 2, 1]))
