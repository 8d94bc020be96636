"""nas-measure and nas-fit end to end on a tiny supernet trained on digits: resume, audit outputs, bad input."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import save_file

from export.cli import fitted_prediction
from predictors.fit_cli import fit_run
from predictors.measure_cli import CONF_DIR, TABLE_NAME, measure_run
from predictors.models import SklearnPredictor
from predictors.table import MeasurementTable, writer_lock
from supernet.artifact import read_metadata
from supernet.runtime.kernels import cpu_name
from supernet.train_cli import train
from tests.conftest import ROOT
from tests.test_training import FAST, make_cfg


def measure_cfg(run: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return compose(config_name="measure", overrides=[f"run={run}", "latency.repeats=3", "latency.warmup=1",
                                                         "holdout_fraction=0.3", *overrides])  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    train(make_cfg(*FAST, "trainer.max_epochs=2", "trainer.limit_train_batches=1.0"), run)
    return run


def test_measure_then_fit(trained) -> None:
    path = measure_run(measure_cfg(trained, "n_archs=40"))
    table = MeasurementTable(path, path.read_text().splitlines()[0].split(","))
    assert len(table) == 40
    assert {r["split"] for r in table.rows.values()} == {"fit", "holdout"}
    # Asking for more measures only the new archs: the first 40 rows are untouched.
    before = path.read_text()
    measure_run(measure_cfg(trained, "n_archs=46"))
    after = path.read_text()
    assert after.startswith(before) and len(after.splitlines()) == 1 + 46

    report = fit_run(measure_cfg(trained, "fit.k_folds=3"))
    out = trained / "predictors"
    assert set(report["objectives"]) == {"accuracy", "latency_ms"}
    for objective, entry in report["objectives"].items():
        assert (out / f"scatter_{objective}.png").is_file()
        assert -1 <= entry["holdout_kendall_tau"] <= 1 and entry["holdout_mape"] >= 0
        assert any(row["chosen"] for row in entry["cv"])
    # What a working accuracy predictor reaches on this run's held-out archs (measured: τ 0.87, MAPE 3.5 %); one that
    # ignored the arch would rank at τ ≈ 0. (Latency is timed live on these sub-0.1 ms archs: its held-out τ ranged
    # from 0.33 to 0.83 between two runs here, too noisy for a bound that could not fail by chance.)
    acc = report["objectives"]["accuracy"]
    assert acc["holdout_kendall_tau"] >= 0.5 and acc["holdout_mape"] <= 0.25, acc
    assert json.loads((out / "report.json").read_text())["n_holdout"] == report["n_holdout"]
    meta = read_metadata(trained)
    p = SklearnPredictor.load(out, "latency_ms", meta["space"], meta["model"])
    assert p.predict([meta["space"].largest()]).shape == (1,)

    # nas-export's "predicted" latency: labelled in-sample on a fit row, out-of-sample on a holdout row, and not
    # used at all when the predictor belongs to another supernet or other latency settings.
    sha = hashlib.sha256((trained / "supernet.safetensors").read_bytes()).hexdigest()
    lat = json.loads((out / "measurements.json").read_text())["latency"]
    by_split = {r["split"]: r for r in table.rows.values()}
    for split, word in (("fit", "in-sample"), ("holdout", "out-of-sample")):
        arch = meta["space"].decode([int(g) for g in by_split[split]["genes"].split()])
        value, note = fitted_prediction(trained, arch, meta, sha, lat)
        assert value["latency_ms"] > 0 and note.startswith(word)
    assert fitted_prediction(trained, arch, meta, "0" * 64, lat)[0] == {}
    assert fitted_prediction(trained, arch, meta, sha, {**lat, "threads": 2})[0] == {}


def test_bad_input_is_one_clear_error(trained, tmp_path) -> None:
    with pytest.raises(ValueError, match="no supernet artifact at"):
        measure_run(measure_cfg(tmp_path / "nowhere"))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    save_file({"w": torch.zeros(2)}, str(foreign / "supernet.safetensors"))  # a safetensors file, not ours
    with pytest.raises(ValueError, match="is not a supernet artifact"):
        measure_run(measure_cfg(foreign))
    with pytest.raises(ValueError, match="no CUDA device is available here"):
        measure_run(
            measure_cfg(
                trained,
                "latency.runtime=torch",
                "latency.estimator=min",
                "latency.device=cuda",
                f"out={tmp_path / 'o'}",
            )
        )
    with pytest.raises(ValueError, match="no measurements at"):
        fit_run(measure_cfg(trained, f"out={tmp_path / 'empty'}"))
    few = tmp_path / "few"
    measure_run(measure_cfg(trained, "n_archs=6", f"out={few}", "holdout_fraction=0.0"))
    with pytest.raises(ValueError, match="held-out archs measured; measure more"):
        fit_run(measure_cfg(trained, f"out={few}"))
    with pytest.raises(ValueError, match=r"unknown objective\(s\) \['speed'\]"):
        fit_run(measure_cfg(trained, f"out={few}", "fit.objectives=[speed]"))
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / TABLE_NAME).write_text("key,acc\nx,1\n")
    with pytest.raises(ValueError, match=r"has no measurements\.json beside it"):
        measure_run(measure_cfg(trained, f"out={corrupt}"))
    with pytest.raises(ValueError, match=r"latency.repeats=0 must be an integer >= 2"):
        measure_run(measure_cfg(trained, "latency.repeats=0"))
    with pytest.raises(ValueError, match="bad latency config"):
        measure_run(measure_cfg(trained, "+latency.speed=1"))


@pytest.mark.parametrize(
    ("column", "value", "why"),
    [("latency_ms", "notanumber", "'notanumber' is not a number"), ("accuracy", "-5", r"-5 is outside \[0, 100\]")],
)
def test_damaged_table_is_refused_by_measure_and_fit(trained, tmp_path, column, value, why) -> None:
    """nas-measure (resuming) and nas-fit refuse a damaged measurements.csv at load, naming file, row and column, and
    leave it as it is."""
    out = tmp_path / "m"
    path = measure_run(measure_cfg(trained, "n_archs=8", f"out={out}", "holdout_fraction=0.5"))
    lines = path.read_text().splitlines(keepends=True)
    header, values = lines[0].rstrip("\n").split(","), lines[5].rstrip("\n").split(",")
    values[header.index(column)] = value
    lines[5] = ",".join(values) + "\n"
    path.write_text("".join(lines))
    expected = rf"{re.escape(str(path))}: row {re.escape(values[0])} \(line 6\), column {column}: {why}; fix or"
    for stage in (measure_run, fit_run):
        with pytest.raises(ValueError, match=expected):
            stage(measure_cfg(trained, "n_archs=10", f"out={out}", "holdout_fraction=0.5", "fit.k_folds=2"))
        assert path.read_text() == "".join(lines)


def test_a_second_writer_is_refused(trained, tmp_path) -> None:
    """Two nas-measure processes on one folder would interleave rows: the second one is refused with one line and
    the table is left as the first writer has it; the lock goes with its holder."""
    out = tmp_path / "busy"
    measure_run(measure_cfg(trained, "n_archs=3", f"out={out}"))
    table = out / "measurements.csv"
    before = table.read_bytes()
    # another writer holds the lock (flock: a second open conflicts within one process too)
    busy = pytest.raises(ValueError, match=r"another nas-measure is writing .*measurements.csv: wait for it")
    with writer_lock(table, "nas-measure"), busy:
        measure_run(measure_cfg(trained, "n_archs=5", f"out={out}"))
    assert table.read_bytes() == before
    measure_run(measure_cfg(trained, "n_archs=5", f"out={out}"))  # released: the next writer continues
    assert len(table.read_text().splitlines()) == 1 + 5


def test_resume_refuses_other_settings(trained, tmp_path) -> None:
    """A table's rows all mean the same thing: other latency settings or another supernet are refused."""
    out = tmp_path / "settings"
    measure_run(measure_cfg(trained, "n_archs=4", f"out={out}"))
    with pytest.raises(ValueError, match=r"latency was .* for the rows already measured"):
        measure_run(measure_cfg(trained, "n_archs=6", f"out={out}", "latency.threads=2"))
    artifact = trained / "supernet.safetensors"
    saved = artifact.read_bytes()
    try:
        from supernet.artifact import load_supernet, save_supernet

        net, info = load_supernet(trained)
        with torch.no_grad():
            net.head.fc.bias.add_(1.0)
        save_supernet(trained, net, info)
        with pytest.raises(ValueError, match="the supernet changed since the rows already measured"):
            measure_run(measure_cfg(trained, "n_archs=6", f"out={out}"))
    finally:
        artifact.write_bytes(saved)


def test_cli_error_line(tmp_path) -> None:
    res = subprocess.run([sys.executable, "-m", "predictors.measure_cli", f"run={tmp_path}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 2 and "nas-measure: error: no supernet artifact at" in res.stderr
    assert "Traceback" not in res.stderr


def test_accuracy_device_is_recorded_and_a_table_keeps_one(trained, tmp_path) -> None:
    """measurements.json records where quality was evaluated (accuracy_device, and which device it was) next to the
    latency target; a table measured on another kind of device is refused, one written before the setting existed
    resumes (it was measured on the CPU)."""
    out = tmp_path / "where"
    measure_run(measure_cfg(trained, "n_archs=3", f"out={out}", "accuracy_device=cpu"))
    saved = json.loads((out / "measurements.json").read_text())
    assert saved["accuracy_device"] == "cpu"
    assert saved["accuracy_target"] == {"device": "cpu", "name": cpu_name(), "torch": torch.__version__}
    assert saved["latency_target"]["runtime"].startswith("onnxruntime ")
    on_gpu = {**saved, "accuracy_device": "cuda"}
    (out / "measurements.json").write_text(json.dumps(on_gpu))
    with pytest.raises(ValueError, match=r"accuracy_device was cuda for the rows already measured \(now cpu\)"):
        measure_run(measure_cfg(trained, "n_archs=4", f"out={out}"))
    older = {k: v for k, v in saved.items() if k not in ("accuracy_device", "accuracy_target")}
    (out / "measurements.json").write_text(json.dumps(older))
    measure_run(measure_cfg(trained, "n_archs=4", f"out={out}"))
    assert len((out / TABLE_NAME).read_text().splitlines()) == 1 + 4


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_accuracy_device_without_a_gpu_is_one_clear_error(trained, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"accuracy_device='cuda' requested but no CUDA device is available here; "
                                         r"use accuracy_device=cpu"):  # fmt: skip
        measure_run(measure_cfg(trained, "accuracy_device=cuda", f"out={tmp_path / 'o'}"))
    with pytest.raises(ValueError, match=r"accuracy_device='tpu' is not supported; use cpu, cuda or cuda:<index>"):
        measure_run(measure_cfg(trained, "accuracy_device=tpu", f"out={tmp_path / 'o'}"))
    assert not (tmp_path / "o").exists()  # refused before anything was measured or written
    res = subprocess.run([sys.executable, "-m", "predictors.measure_cli", f"run={trained}", "accuracy_device=cuda",
                          f"out={tmp_path / 'o'}"], cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1] == (
        "nas-measure: error: accuracy_device='cuda' requested but no CUDA device is available here; "
        "use accuracy_device=cpu"
    )


def test_a_table_measured_elsewhere_merges_without_measuring(trained, tmp_path) -> None:
    """`merge=`: the rows of a table measured of the same supernet with the same settings (another machine's, here
    another out=) join this one as they were measured; rows already here are kept; anything else is refused."""
    here, there = tmp_path / "here", tmp_path / "there"
    measure_run(measure_cfg(trained, "n_archs=5", f"out={here}"))
    measure_run(measure_cfg(trained, "n_archs=9", f"out={there}"))  # e.g. another machine measured more archs
    columns = (here / TABLE_NAME).read_text().splitlines()[0].split(",")
    mine, theirs = MeasurementTable(here / TABLE_NAME, columns), MeasurementTable(there / TABLE_NAME, columns)
    before = (here / TABLE_NAME).read_text()
    settings = json.loads((there / "measurements.json").read_text())
    (there / "measurements.json").write_text(json.dumps({**settings, "holdout_fraction": 0.5}))
    with pytest.raises(ValueError, match=r"holdout_fraction was 0.5 there but 0.3 for the rows in"):
        measure_run(measure_cfg(trained, f"out={here}", f"merge={there}"))
    (there / "measurements.json").write_text(json.dumps(settings))
    path = measure_run(measure_cfg(trained, f"out={here}", f"merge={there}"))
    merged = MeasurementTable(path, columns)
    shared = set(mine.rows) & set(theirs.rows)
    assert path.read_text().startswith(before)  # nothing already here changed
    assert set(merged.rows) == set(mine.rows) | set(theirs.rows) and len(merged) > len(mine)
    for key, row in merged.rows.items():  # copied as measured there (seconds included: nothing was re-measured)
        assert row == (mine.rows[key] if key in mine.rows else theirs.rows[key])
    assert len(shared) == len(mine) + len(theirs) - len(merged)
    measure_run(measure_cfg(trained, f"out={here}", f"merge={there / TABLE_NAME}"))  # again: nothing to add
    assert len(MeasurementTable(path, columns)) == len(merged)
    # Into a new directory: the table and its settings are taken over.
    fresh = measure_run(measure_cfg(trained, f"out={tmp_path / 'fresh'}", f"merge={there}"))
    assert MeasurementTable(fresh, columns).rows == theirs.rows
    # Refused: another supernet, other latency settings, a table without its settings, no table at all.
    (there / "measurements.json").write_text(json.dumps({**settings, "supernet_sha256": "0" * 64}))
    with pytest.raises(ValueError, match=r"was measured of another supernet \(sha256 000000000000…"):
        measure_run(measure_cfg(trained, f"out={here}", f"merge={there}"))
    latency = {**settings["latency"], "threads": 2}
    (there / "measurements.json").write_text(json.dumps({**settings, "latency": latency}))
    with pytest.raises(ValueError, match=r"latency was .*'threads': 2.* there but .*'threads': 1.* for the rows in"):
        measure_run(measure_cfg(trained, f"out={here}", f"merge={there}"))
    (there / "measurements.json").unlink()
    with pytest.raises(ValueError, match=r"no measurements.json beside .*: its settings are unknown"):
        measure_run(measure_cfg(trained, f"out={here}", f"merge={there}"))
    with pytest.raises(ValueError, match=r"merge=.*nowhere: no measurements.csv there"):
        measure_run(measure_cfg(trained, f"out={here}", f"merge={tmp_path / 'nowhere'}"))
    assert len(MeasurementTable(path, columns)) == len(merged)  # the refusals changed nothing
