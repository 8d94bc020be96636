"""Label reliability: split-half agreement of quality labels, and the halves nas-measure records."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from predictors.fit_cli import label_reliability
from predictors.measure import evaluate
from predictors.reliability import per_sample_scores, split_half_tau
from supernet import ModelConfig, build_supernet, extract_subnet
from tests.conftest import digits_net_and_batches


def test_split_half_tau_separates_signal_from_noise() -> None:
    rng = np.random.default_rng(0)
    true = np.linspace(0.6, 0.9, 30)[:, None]
    clear = (rng.random((30, 20000)) < true).astype(float)  # many samples: halves agree on the order
    noise = (rng.random((30, 200)) < 0.75).astype(float)  # every arch equally good: halves disagree at random
    assert split_half_tau(clear)[0] > 0.9
    assert abs(split_half_tau(noise)[0]) < 0.2
    with pytest.raises(ValueError, match="at least 3 archs"):
        split_half_tau(clear[:2])


def test_measured_halves_are_the_metric_on_each_half(default_space) -> None:
    """accuracy is the mean of its two halves (even/odd positions) and per_sample_scores agrees with it."""
    net, batches = digits_net_and_batches(default_space, 101)
    sub = extract_subnet(net, default_space.sample(np.random.default_rng(0)))
    m = evaluate(sub, batches, "image", halves=True)
    assert set(evaluate(sub, batches, "image")) == {"accuracy"}
    hits = per_sample_scores(sub, batches, "image")
    assert m["accuracy"] == pytest.approx(100 * hits.mean())
    assert m["accuracy_h1"] == pytest.approx(100 * hits[0::2].mean())
    assert m["accuracy_h2"] == pytest.approx(100 * hits[1::2].mean())


def test_lm_halves_average_to_the_loss(default_space) -> None:
    config = ModelConfig(task="lm", vocab_size=256, block_size=16)
    net = build_supernet(default_space, config).eval()
    x = torch.randint(0, 256, (6, 16), generator=torch.Generator().manual_seed(0))
    m = evaluate(extract_subnet(net, default_space.smallest()), [(x[:4], x[:4]), (x[4:], x[4:])], "lm", halves=True)
    assert m["loss"] == pytest.approx((m["loss_h1"] + m["loss_h2"]) / 2)  # equal-length halves
    assert -per_sample_scores(lambda t: net(t, default_space.smallest()), [(x, x)], "lm").mean() == pytest.approx(
        m["loss"], rel=1e-5
    )


def test_label_reliability_reads_the_halves() -> None:
    rows = [{"accuracy_h1": str(a), "accuracy_h2": str(a + 0.1), "latency_ms": "1"} for a in (80, 82, 81, 85)]
    assert label_reliability(rows, "accuracy") == pytest.approx(1.0)
    assert label_reliability(rows, "latency_ms") is None
