"""Measurement of subnets: candidates, metrics on real data, the resumable measurements table."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from predictors.measure import (
    LatencyConfig,
    candidate_archs,
    check_device,
    current_reference_keys,
    evaluate,
    latency,
    measure_arch,
)
from predictors.measure_cli import changed_settings
from predictors.table import FIX, MeasurementTable
from supernet import ModelConfig, build_supernet, extract_subnet
from supernet.arch import Arch
from tests.conftest import digits_net_and_batches

COLUMNS = ["key", "accuracy", "latency_ms"]


def test_candidates_are_distinct_and_include_the_extremes(default_space, small_space) -> None:
    archs = candidate_archs(default_space, 60, seed=0)
    assert len(archs) == 60 == len({a.key() for a in archs})
    assert archs[0] == default_space.largest() and archs[1] == default_space.smallest()
    assert archs == candidate_archs(default_space, 60, seed=0)
    # Asking for more later extends the set (so the measurement cache is reused), it never reshuffles it.
    assert candidate_archs(default_space, 130, seed=0)[:60] == archs
    assert candidate_archs(default_space, 1, seed=0) == [default_space.largest()]
    # Space-filling: every depth and every embed width is represented.
    assert {a.depth for a in archs} == set(default_space.depth)
    assert {a.embed_dim for a in archs} == set(default_space.embed_dim)
    # Asking for more than the space holds gives the whole space, each arch once.
    everything = candidate_archs(small_space, 5000, seed=1)
    assert len(everything) == small_space.size() == len({a.key() for a in everything})
    with pytest.raises(ValueError, match="must be >= 1"):
        candidate_archs(default_space, 0)


def test_table_resumes_and_never_duplicates(tmp_path) -> None:
    path = tmp_path / "m.csv"
    t = MeasurementTable(path, COLUMNS)
    t.append({"key": "a", "accuracy": 90.5, "latency_ms": 1.25})
    t.append({"key": "b", "accuracy": 80.0, "latency_ms": 0.5})
    again = MeasurementTable(path, COLUMNS)
    assert len(again) == 2 and "a" in again and again.column("accuracy") == [90.5, 80.0]
    with pytest.raises(ValueError, match="already in"):
        again.append({"key": "a", "accuracy": 1, "latency_ms": 1})
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['latency_ms'\]"):
        again.append({"key": "c", "accuracy": 1})


def test_interrupted_last_row_is_dropped_and_remeasured(tmp_path) -> None:
    path = tmp_path / "m.csv"
    t = MeasurementTable(path, COLUMNS)
    t.append({"key": "a", "accuracy": 90.5, "latency_ms": 1.25})
    with path.open("a") as f:
        f.write("b,80.0,0.")  # the process died mid-write
    again = MeasurementTable(path, COLUMNS)
    assert again.dropped_partial_line and list(again.rows) == ["a"]
    again.append({"key": "b", "accuracy": 80.0, "latency_ms": 0.5})
    assert MeasurementTable(path, COLUMNS).column("latency_ms") == [1.25, 0.5]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("key,acc\na,1\n", "was written with other columns"),
        ("key,accuracy,latency_ms\na,1\n", r"row a \(line 2\), column latency_ms: 2 of 3 fields"),
        ("key,accuracy,latency_ms\na,1,2\na,3,4\n", r"row a \(line 3\): the arch appears twice"),
        ("key,accuracy,latency_ms\n,1,2\n", r"row \? \(line 2\) has no key"),
    ],
)
def test_corrupt_table_is_detected_not_overwritten(tmp_path, content, message) -> None:
    path = tmp_path / "m.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        MeasurementTable(path, COLUMNS)
    assert path.read_text() == content


def test_table_of_old_format_keys_is_read_with_todays_keys(tmp_path) -> None:
    """A table written before keys held FFN widths (`_r` ratios) loads with its rows keyed as today: looked up by
    `arch.key()`, nothing measured again, the file left as it is; rows appended after it are in today's format, and
    the mixed file reads back as one table (an arch written in both formats is a duplicate, refused)."""
    a = Arch(2, 96, (3, 3), (8 / 3, 4.0), (8, 32))
    b = Arch(3, 96, (3, 6, 6), (2.0, 2.0, 8 / 3), (4, 4, 4))
    old = {a: "d2_e96_a32_h3-3_r2.6666666666666665-4_w8-32", b: "d3_e96_a32_h3-6-6_r2-2-2.6666666666666665_w4-4-4"}
    path = tmp_path / "m.csv"
    content = "key,accuracy,latency_ms\n" + "".join(f"{old[x]},{90 - i},{1 + i}\n" for i, x in enumerate(old))
    path.write_text(content)
    table = MeasurementTable(path, COLUMNS)
    today = ["d2_e96_a32_h3*2_f256-384_w8-32", "d3_e96_a32_h3-6*2_f192*2-256_w4*3"]
    assert list(table.rows) == [a.key(), b.key()] == today
    assert a.key() in table and table.rows[b.key()]["accuracy"] == "89" and path.read_text() == content
    c = Arch(1, 96, (6,), (4.0,), (8,))
    table.append({"key": c.key(), "accuracy": 70, "latency_ms": 0.5})
    assert path.read_text() == content + f"{c.key()},70,0.5\n"
    again = MeasurementTable(path, COLUMNS)
    assert list(again.rows) == [a.key(), b.key(), c.key()] and again.column("latency_ms") == [1, 2, 0.5]
    with pytest.raises(ValueError, match="already in"):
        again.append({"key": a.key(), "accuracy": 1, "latency_ms": 1})
    path.write_text(content + f"{a.key()},1,1\n")
    with pytest.raises(ValueError, match=r"\(line 4\): the arch appears twice"):
        MeasurementTable(path, COLUMNS)
    path.write_text(content + f"{c.key()},70,0.")  # a row cut short: the file is rewritten, all in today's keys
    rewritten = MeasurementTable(path, COLUMNS)
    assert rewritten.dropped_partial_line and path.read_text().split()[1:] == [f"{a.key()},90,1", f"{b.key()},89,2"]
    path.write_text("key,accuracy,latency_ms\nd2_e96_a32_h3-3_rx-4_w8-32,1,1\n")
    with pytest.raises(ValueError, match=r"row d2_e96_a32_h3-3_rx-4_w8-32 \(line 2\): .* is not an arch key"):
        MeasurementTable(path, COLUMNS)


def test_settings_naming_the_reference_arch_in_the_old_key_format_compare_equal() -> None:
    """The paired estimator's reference arch is part of the settings a table, a search and a study record: one
    recorded before keys held FFN widths compares equal to today's, so they all continue."""
    ref = Arch(2, 96, (3, 3), (8 / 3, 8 / 3), (32, 32))
    now = {"latency": {"estimator": "paired"}, "latency_reference": {"arch": ref.key(), "ms": 1.5}}
    old = "d2_e96_a32_h3-3_r2.6666666666666665-2.6666666666666665_w32-32"
    saved = {"latency": {"estimator": "paired"}, "latency_reference": {"arch": old, "ms": 1.5}}
    assert changed_settings(saved, now) == []
    assert current_reference_keys({"evaluator": saved, "runs": [saved]}) == {"evaluator": now, "runs": [now]}
    assert changed_settings({**saved, "latency_reference": {"arch": "d2_e96_a32_h3-3_r2-2_w32-32", "ms": 1.5}}, now)
    assert changed_settings({**saved, "latency_reference": {"arch": "not a key", "ms": 1.5}}, now)


REAL_COLUMNS = ["key", "genes", "split", "iteration", "accuracy", "loss", "latency_ms", "latency_cv", "bytes",
                "pred_accuracy", "std_accuracy", "mine"]  # fmt: skip
GOOD_ROW = ["d2_x", "0 1 2", "fit", "3", "85.5", "0.4", "0.21", "0.01", "150872", "", "", "anything"]


@pytest.mark.parametrize(
    ("column", "value", "why"),
    [
        ("latency_ms", "notanumber", "'notanumber' is not a number"),
        ("latency_ms", "", "'' is not a number"),
        ("latency_ms", "nan", "'nan' is not a finite number"),
        ("bytes", "inf", "'inf' is not a finite number"),
        ("accuracy", "-5", "-5 is outside \\[0, 100\\]"),
        ("accuracy", "100.5", "100.5 is outside \\[0, 100\\]"),
        ("latency_ms", "0", "0 must be > 0"),
        ("bytes", "-1", "-1 must be > 0"),
        ("loss", "-0.1", "-0.1 is negative"),
        ("latency_cv", "-1e-3", "-1e-3 is negative"),
        ("iteration", "1.5", "'1.5' is not a non-negative integer"),
        ("split", "train", "'train' is not one of \\['fit', 'holdout'\\]"),
        ("genes", "0 x 2", "'0 x 2' is not a list of integer genes"),
        ("pred_accuracy", "zz", "'zz' is not a number"),
        ("std_accuracy", "-2", "-2 is negative"),
    ],
)
def test_damaged_value_is_refused_naming_file_row_and_column(tmp_path, column, value, why) -> None:
    """Every value is checked at load (type, finite, range); the error names file, row key and column, and the file
    is left as it is."""
    path = tmp_path / "measurements.csv"
    bad = list(GOOD_ROW)
    bad[REAL_COLUMNS.index(column)] = value
    bad[0] = "d3_y"
    content = "\n".join(",".join(r) for r in (REAL_COLUMNS, GOOD_ROW, bad, ["d4_z", *GOOD_ROW[1:]])) + "\n"
    path.write_text(content)
    with pytest.raises(ValueError) as e:
        MeasurementTable(path, REAL_COLUMNS)
    message = str(e.value)
    assert "\n" not in message
    expected = rf"{re.escape(str(path))}: row d3_y \(line 3\), column {column}: {why}; " + re.escape(FIX)
    assert re.fullmatch(expected, message), message
    assert path.read_text() == content


def test_valid_values_load_and_a_cut_last_row_is_still_dropped(tmp_path) -> None:
    path = tmp_path / "measurements.csv"
    content = "\n".join(",".join(r) for r in (REAL_COLUMNS, GOOD_ROW)) + "\nd3_y,0 1,fi"  # cut short mid-write
    path.write_text(content)
    table = MeasurementTable(path, REAL_COLUMNS)
    assert table.dropped_partial_line and list(table.rows) == ["d2_x"]  # that arch is measured again


def test_cuda_on_a_cpu_machine_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="no CUDA device is available here; use device=cpu"):
        check_device("cuda")
    with pytest.raises(ValueError, match="not supported"):
        check_device("tpu")


def test_measure_arch_on_real_digits(default_space) -> None:
    net, batches = digits_net_and_batches(default_space, 100)
    arch = default_space.sample(np.random.default_rng(0))
    row = measure_arch(net, arch, batches, batches[0][0][:1], LatencyConfig(repeats=5, warmup=1))
    assert 0 <= row["accuracy"] <= 100 and row["latency_ms"] > 0 and row["latency_cv"] >= 0
    assert row["params"] == sum(p.numel() for p in extract_subnet(net, arch).parameters())
    # The metric is the extracted module's accuracy, i.e. the supernet's at that arch.
    with torch.no_grad():
        direct = sum(int((net(x, arch).argmax(-1) == y).sum()) for x, y in batches) / 100 * 100
    assert row["accuracy"] == pytest.approx(direct)


def test_lm_metrics_are_loss_and_bits_per_byte(default_space) -> None:
    config = ModelConfig(task="lm", vocab_size=256, block_size=16)
    net = build_supernet(default_space, config).eval()
    x = torch.randint(0, 256, (4, 16))
    m = evaluate(extract_subnet(net, default_space.smallest()), [(x, x)], "lm")
    assert m["bpc"] == pytest.approx(m["loss"] / np.log(2))
    lat = latency(extract_subnet(net, default_space.smallest()), x[:1], LatencyConfig(repeats=3, warmup=1))
    assert lat["latency_ms"] > 0
