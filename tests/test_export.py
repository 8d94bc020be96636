"""nas-export end to end on a tiny supernet trained on digits and searched for real, plus `search.choose` on a
hand-made front.

Every export goes through Hydra's composition of conf/export.yaml and `export_run`, with real validation data, the
real ONNX exporter and ONNX Runtime. Exports are the slow part (seconds each), so each selection rule is exported once.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir

from export.cli import export_run, finetune, replace_dir
from predictors.measure_cli import CONF_DIR
from search.choose import choose, read_front
from search.cli import build_search
from search.objectives import OBJECTIVES
from supernet.arch import Arch
from supernet.artifact import load_supernet
from supernet.costs import arch_costs
from supernet.extract import extract_subnet
from supernet.onnx_export import run_onnx
from supernet.subnet_io import load_subnet
from supernet.tolerance import MIN_AGREEMENT_QUANTIZED_ACT, RTOL, RTOL_QUANTIZED_ACT
from supernet.train_cli import train
from tests.conftest import ROOT
from tests.test_training import FAST, make_cfg

# Cheap but real measurement settings, shared by the search and every export.
MEASURE = ["latency.repeats=2", "latency.warmup=0", "latency.min_repeat_ms=0", "data_overrides.val_subset_size=200"]
SEARCH = ["search.budget=16", "search.initial=10", "search.batch_size=3", "search.n_candidates=300",
          "search.pop_size=20", "search.predictor.candidates=[ridge]"]  # fmt: skip
FILES = {"arch.yaml", "model.safetensors", "model.onnx", "report.md"}
# A low-bit arch of the smoke space (w_bits {2, 8, 32}, a_bits {8, 32}); float activations keep ONNX Runtime exact.
LOW_BIT = Arch(2, 64, (2, 1), (2.0, 1.0), (2, 8), 32)


def export_cfg(run: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return compose(config_name="export", overrides=[f"run={run}", "verify.batch=64", *MEASURE, *overrides])


def read_doc(folder: Path) -> dict:
    return yaml.safe_load((folder / "arch.yaml").read_text())


def pareto_rows(run: Path) -> list[dict[str, str]]:
    with (run / "search" / "pareto.csv").open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> Path:
    """A digits supernet (smoke space) and a small real nas-search on it."""
    run = tmp_path_factory.mktemp("export_run")
    train(make_cfg(*FAST, "trainer.max_epochs=1", "trainer.limit_train_batches=1.0"), run)
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose(config_name="search", overrides=[f"run={run}", *SEARCH, *MEASURE])
    build_search(cfg).run()
    assert pareto_rows(run), "the search found no front"
    return run


@pytest.fixture(scope="module")
def knee(searched) -> Path:
    return export_run(export_cfg(searched))


@pytest.fixture(scope="module")
def arch_file(searched) -> Path:
    path = searched / "low_bit.yaml"
    LOW_BIT.to_yaml(path)
    return path


def check_export(folder: Path, run: Path, arch: Arch) -> dict:
    """What every successful export must hold; returns the parsed arch.yaml."""
    assert {p.name for p in folder.iterdir()} == FILES
    assert not list(folder.parent.glob(".*.tmp")), "a temporary export folder was left behind"
    doc = read_doc(folder)
    assert Arch.from_dict(doc["arch"]) == arch and doc["key"] == arch.key()
    prov = doc["provenance"]
    assert prov["supernet_sha256"] == hashlib.sha256((run / "supernet.safetensors").read_bytes()).hexdigest()
    assert prov["supernet"] == str(run / "supernet.safetensors") and prov["seed"] == 0
    v = doc["verification"]
    assert v["passed"] is True and v["inputs"] == 64
    t = v["torch"]
    assert (t["rtol"], t["min_argmax_agreement"], t["passed"]) == (RTOL, 1.0, True)
    assert t["relative_error"] <= RTOL and t["argmax_agreement"] == 1.0
    want = (RTOL, 1.0) if arch.a_bits >= 32 else (RTOL_QUANTIZED_ACT, MIN_AGREEMENT_QUANTIZED_ACT)
    o = v["onnx"]
    assert (o["rtol"], o["min_argmax_agreement"], o["passed"]) == (*want, True)
    assert o["relative_error"] <= want[0] and o["argmax_agreement"] >= want[1]
    # report.md states each check with the tolerance it was held to
    report = (folder / "report.md").read_text()
    line = f"- onnx: max |Δ| {o['max_abs_diff']:.2e} (relative {o['relative_error']:.1e}, at most {want[0]:g})"
    assert line in report, report
    net, _ = load_supernet(run)
    size = (folder / "model.safetensors").stat().st_size
    cost = arch_costs(arch, net.config).bytes
    assert doc["size"]["weights_file_bytes"] == size == doc["weights"]["bytes"]
    assert doc["size"]["cost_model_bytes"] == cost and 1.0 < size / cost <= 1.05
    assert doc["size"]["onnx_file_bytes"] == (folder / "model.onnx").stat().st_size
    # the runtime model stores low-bit weights low-bit: its tensors take about the packed weights file's bytes
    assert doc["size"]["onnx_initializer_bytes"] <= 1.10 * size
    assert doc["size"]["onnx_file_bytes"] <= 1.10 * size + 16_000  # plus the graph itself
    assert set(doc["metrics"]["measured_at_export"]) == set(doc["metrics"]["runtime_at_export"]) == {"accuracy"}
    rt = doc["runtime"]
    assert len(rt["kernels"]) == arch.depth and all(set(k) == {"qkv", "proj", "fc1", "fc2"} for k in rt["kernels"])
    assert rt["target"]["runtime"].startswith("onnxruntime") and rt["executed_ops"]
    assert not {"BitShift", "BitwiseAnd"} & set(rt["executed_ops"])  # unpacking folded at session build
    lat = doc["latency"]
    assert lat["runtime_ms"] > 0 and lat["runtime_float_kernels_ms"] > 0 and lat["float_module_ms"] > 0
    assert lat["supernet_at_arch_ms"] > 0 and lat["settings"]["repeats"] == 2
    assert doc["preprocessing"]["normalize_mean"] and doc["preprocessing"]["normalize_std"]
    report = (folder / "report.md").read_text()
    assert arch.key() in report and "**passed**" in report and "load_subnet" in report
    return doc


def test_default_export_is_the_knee_and_reproduces_the_supernet(searched, knee) -> None:
    assert knee == searched / "subnets" / "knee"
    rows = pareto_rows(searched)
    # The knee, computed here independently: objectives scaled to [0, 1] over the front, nearest to the ideal point.
    acc = np.array([float(r["accuracy"]) for r in rows])
    lat = np.array([float(r["latency_ms"]) for r in rows])
    scale = lambda v: (v - v.min()) / (v.max() - v.min() if v.max() > v.min() else 1.0)  # noqa: E731
    want = rows[int(np.argmin(np.hypot(scale(-acc), scale(lat))))]
    net, _ = load_supernet(searched)
    arch = net.space.decode([int(g) for g in want["genes"].split()])
    doc = check_export(knee, searched, arch)
    v = doc["verification"]
    assert v["reference"] == "supernet(x, arch)" and v["torch"]["max_abs_diff"] == 0.0
    prov = doc["provenance"]
    assert prov["search"] == str(searched / "search") and prov["selection"].startswith("the knee point")
    m = doc["metrics"]
    # Same arch, same validation subset: the exported module scores exactly what the search measured.
    assert m["measured_at_export"]["accuracy"] == m["search_measured"]["accuracy"] == float(want["accuracy"])
    assert m["search_measured"]["bytes"] == arch_costs(arch, net.config).bytes
    assert not {"key", "genes", "rank", "iteration"} & set(m["search_measured"])
    # The folder alone, as a user gets it, reproduces the supernet at that arch, in PyTorch and ONNX Runtime.
    sub = load_subnet(knee)
    x = torch.randn(7, net.config.in_channels, net.config.image_size, net.config.image_size)
    with torch.no_grad():
        ref = net(x, arch)
        assert torch.equal(sub(x), ref)
    got = run_onnx(knee / "model.onnx", x)
    assert np.abs(got - ref.numpy()).max() <= (1e-4 if arch.a_bits >= 32 else 5e-2)


def test_select_index_and_best(searched) -> None:
    rows = pareto_rows(searched)
    net, _ = load_supernet(searched)
    decode = lambda row: net.space.decode([int(g) for g in row["genes"].split()])  # noqa: E731

    out = export_run(export_cfg(searched, "select=index", "index=0"))
    assert out.name == "index0"
    assert check_export(out, searched, decode(rows[0]))["provenance"]["selection"] == "row 0 of pareto.csv"

    out = export_run(export_cfg(searched, "select=best", "best=accuracy"))
    top = max(rows, key=lambda r: float(r["accuracy"]))
    assert out.name == "best_accuracy"
    assert check_export(out, searched, decode(top))["provenance"]["selection"] == "the highest accuracy"

    # Smallest file among the points at least as accurate as the front's second-best accuracy level.
    levels = sorted({float(r["accuracy"]) for r in rows}, reverse=True)
    bound = levels[min(1, len(levels) - 1)]
    meeting = [r for r in rows if float(r["accuracy"]) >= bound]
    want = min(meeting, key=lambda r: float(r["bytes"]))
    out = export_run(export_cfg(searched, "select=best", "best=bytes", f"+where.accuracy.min={bound}"))
    assert out.name == "best_bytes"
    doc = check_export(out, searched, decode(want))
    assert doc["provenance"]["selection"] == f"the lowest bytes with accuracy >= {bound:g}"
    assert float(doc["metrics"]["measured_at_export"]["accuracy"]) >= bound


def test_arch_file_export_refuses_then_overwrites(searched, arch_file) -> None:
    """arch=<yaml> exports that arch (low-bit layers included, bit for bit); an existing folder needs overwrite=true,
    which replaces it whole."""
    target = searched / "subnets" / "mine"
    target.mkdir(parents=True)
    (target / "stale.txt").write_text("from an earlier export")
    with pytest.raises(ValueError, match=r"mine already exists; pass overwrite=true"):
        export_run(export_cfg(searched, f"arch={arch_file}", "name=mine"))
    assert (target / "stale.txt").is_file()
    out = export_run(export_cfg(searched, f"arch={arch_file}", "name=mine", "overwrite=true"))
    assert out == target
    doc = check_export(out, searched, LOW_BIT)  # the stale file is gone with the old folder
    assert doc["verification"]["torch"]["max_abs_diff"] == 0.0
    assert doc["provenance"]["search"] is None and doc["provenance"]["selection"] == f"the arch in {arch_file}"
    assert doc["metrics"]["search_measured"] == {} and doc["metrics"]["predicted"] == {}
    net, _ = load_supernet(searched)
    x = torch.randn(5, 1, net.config.image_size, net.config.image_size)
    with torch.no_grad():
        assert torch.equal(load_subnet(out)(x), net(x, LOW_BIT))


# ---- fine-tuning ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finetuned(searched, arch_file) -> Path:
    return export_run(export_cfg(searched, f"arch={arch_file}", "name=ft", "finetune.epochs=1",
                                 "finetune.train_subset=256"))  # fmt: skip


def test_finetune_records_before_after_and_verifies_against_the_tuned_module(searched, finetuned) -> None:
    doc = check_export(finetuned, searched, LOW_BIT)
    ft = doc["metrics"]["finetune"]
    assert ft["epochs"] == 1 and set(ft["before"]) == set(ft["after"]) == {"accuracy"}
    # also scored on the test split (not the validation subset that chose the arch), next to the largest arch
    t = ft["test"]
    assert set(t["before"]) == set(t["after"]) == set(t["largest_arch"]) == {"accuracy"} and t["examples"] > 0
    assert "fine-tuning, test split" in (finetuned / "report.md").read_text()
    assert doc["metrics"]["measured_at_export"] == ft["after"]
    v = doc["verification"]
    assert v["reference"] == "fine-tuned module" and v["passed"] is True
    assert v["torch"]["max_abs_diff"] <= 1e-4
    assert "fine-tuning (1 epochs)" in (finetuned / "report.md").read_text()
    # Fine-tuning changed the weights: the export no longer equals the supernet at that arch.
    net, _ = load_supernet(searched)
    x = torch.randn(16, 1, net.config.image_size, net.config.image_size)
    with torch.no_grad():
        assert not torch.equal(load_subnet(finetuned)(x), net(x, LOW_BIT))


def test_finetuned_export_is_bit_exact(searched, finetuned) -> None:
    """The exported weights, reloaded on their own, compute exactly what the fine-tuned module computed: the same
    fine-tuning repeated here (seeded; one thread) gives the module, and both score the validation images alike."""
    from predictors.measure import fixed_batches
    from predictors.measure_cli import build_data

    net, info = load_supernet(searched)
    cfg = export_cfg(searched, "finetune.epochs=1", "finetune.train_subset=256")
    tuned = extract_subnet(net, LOW_BIT, qat=True)
    finetune(net, tuned, info, cfg)
    reloaded = load_subnet(finetuned)
    dm = build_data(info, {"val_subset_size": 200})
    dm.setup()
    with torch.no_grad():
        for x, _ in fixed_batches(dm.val_subset_dataloader()):
            assert torch.equal(reloaded(x), tuned(x))
    assert read_doc(finetuned)["verification"]["torch"]["max_abs_diff"] == 0.0  # and the export said so


def test_finetune_trains_the_subnet_in_train_mode(searched) -> None:
    """The subnet is extracted from a supernet in eval mode; Lightning keeps a module's mode, so fine-tuning must set
    it (it warns otherwise, and any mode-dependent layer would train as at inference)."""
    net, info = load_supernet(searched)
    sub = extract_subnet(net, LOW_BIT, qat=True)
    assert not sub.training  # extracted from an eval-mode supernet
    modes: list[bool] = []  # the mode of the subnet and every submodule at each forward with gradients
    hook = sub.register_forward_pre_hook(
        lambda m, args: modes.append(all(x.training for x in m.modules())) if torch.is_grad_enabled() else None
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        finetune(net, sub, info, export_cfg(searched, "finetune.epochs=1", "finetune.train_subset=64"))
    hook.remove()
    assert modes and all(modes), modes  # every training step ran in train mode
    assert not sub.training  # and the tuned subnet is handed back in eval mode
    assert not [w for w in caught if "eval mode" in str(w.message)]


# ---- bad input -----------------------------------------------------------------------------------------------------


def test_bad_input_is_one_clear_error(searched, knee, tmp_path) -> None:
    rows = pareto_rows(searched)
    before = sorted(p.name for p in (searched / "subnets").iterdir())
    n = len(rows)
    with pytest.raises(ValueError, match=rf"index=99 is out of range: pareto.csv has {n} rows \(0..{n - 1}\)"):
        export_run(export_cfg(searched, "select=index", "index=99"))
    with pytest.raises(ValueError, match=r"no front point has accuracy >= 101; the closest is index \d+ \("):
        export_run(export_cfg(searched, "select=best", "best=latency", "+where.accuracy.min=101"))
    with pytest.raises(ValueError, match="unknown select='pareto'"):
        export_run(export_cfg(searched, "select=pareto"))
    with pytest.raises(ValueError, match=r"best=None must be an objective"):
        export_run(export_cfg(searched, "select=best"))
    outside = tmp_path / "outside.yaml"
    Arch(2, 48, (1, 1), (1.0, 1.0), (8, 8), 32).to_yaml(outside)  # embed_dim 48 is not a smoke-space choice
    with pytest.raises(ValueError, match=rf"arch={re.escape(str(outside))}: embed_dim=48 not in \(32, 64\)"):
        export_run(export_cfg(searched, f"arch={outside}"))
    with pytest.raises(ValueError, match=r"arch=.*nowhere.yaml: arch file .* does not exist"):
        export_run(export_cfg(searched, f"arch={tmp_path / 'nowhere.yaml'}"))
    with pytest.raises(ValueError, match=r"run directory .*no_run does not exist"):
        export_run(export_cfg(tmp_path / "no_run"))
    with pytest.raises(ValueError, match=r"knee already exists; pass overwrite=true"):
        export_run(export_cfg(searched))
    with pytest.raises(ValueError, match=r"no search results in .*no_search \(pareto.csv, search.json\)"):
        export_run(export_cfg(searched, f"search={tmp_path / 'no_search'}"))
    other = tmp_path / "other_search"
    shutil.copytree(searched / "search", other)
    state = json.loads((other / "search.json").read_text())
    state["supernet_sha256"] = "0" * 64
    (other / "search.json").write_text(json.dumps(state))
    with pytest.raises(ValueError, match="was searched on another supernet"):
        export_run(export_cfg(searched, f"search={other}"))
    # Nothing was written by any refused export.
    assert sorted(p.name for p in (searched / "subnets").iterdir()) == before
    assert not (tmp_path / "no_run").exists()


@pytest.fixture(scope="module")
def refused(searched) -> ValueError:
    """An export whose verification cannot pass (a negative tolerance): everything runs, then it is refused."""
    with pytest.raises(ValueError) as info:
        export_run(export_cfg(searched, "verify.rtol=-1.0", "name=refused"))
    return info.value


def test_failed_verification_is_refused(searched, refused) -> None:
    # Every check is named with what was found and what it was held to, the failing one included.
    assert re.search(r"verification failed: torch: max \|Δ\| \S+ \(relative \S+, at most -1\), argmax agreement "
                     r"100\.0 % \(at least 100 %\): FAILED; onnx: .*: FAILED; nothing was written to .*refused",
                     str(refused)), str(refused)  # fmt: skip
    assert not (searched / "subnets" / "refused").exists()


def test_failed_verification_leaves_no_temporary_folder(searched, refused) -> None:
    assert not (searched / "subnets" / ".refused.tmp").exists()


def test_documented_where_override_composes(tmp_path) -> None:
    cfg = export_cfg(tmp_path, "select=best", "best=accuracy", "+where.latency.max=1.0")
    assert cfg.where.latency.max == 1.0


@pytest.fixture(scope="module")
def cli_missing_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    missing = tmp_path_factory.mktemp("cli") / "no_such_run"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    res = subprocess.run([sys.executable, "-m", "export.cli", f"run={missing}"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    return res, missing


def test_cli_error_line(cli_missing_run) -> None:
    res, _ = cli_missing_run
    assert res.returncode == 2, res.stderr[-3000:]
    assert res.stderr.startswith("nas-export: error:"), res.stderr[-3000:]
    assert "Traceback" not in res.stderr


def test_cli_leaves_a_missing_run_alone(cli_missing_run) -> None:
    res, missing = cli_missing_run
    assert "run directory" in res.stderr and "does not exist" in res.stderr
    assert not missing.exists()


# ---- choose() on a hand-made front ---------------------------------------------------------------------------------

ACC_LAT = [OBJECTIVES["accuracy"], OBJECTIVES["latency"]]


def front() -> list[dict[str, str]]:
    """Four points trading accuracy (max) for latency (min); values as pareto.csv stores them (strings)."""
    table = [(90, 10, 1000), (85, 4, 600), (70, 2, 300), (50, 1, 100)]
    return [{"rank": str(i), "key": f"arch{i}", "accuracy": str(a), "latency_ms": str(t), "bytes": str(b)}
            for i, (a, t, b) in enumerate(table)]  # fmt: skip


def test_choose_knee_is_nearest_the_normalised_ideal() -> None:
    # Scaled over the front: accuracy 90..50 -> 0..1 (as a loss), latency 1..10 -> 0..1. Distances to (0, 0):
    # arch0 (0, 1) = 1, arch1 (0.125, 0.333) = 0.36, arch2 (0.5, 0.111) = 0.51, arch3 (1, 0) = 1.
    row, why = choose(front(), ACC_LAT)
    assert row["key"] == "arch1" and why.startswith("the knee point")
    # Rescaling a unit (ms -> s) must not move the knee: only the scaled values count.
    seconds = [{**r, "latency_ms": str(float(r["latency_ms"]) / 1000)} for r in front()]
    assert choose(seconds, ACC_LAT)[0]["key"] == "arch1"
    # `where` filters first and the scaling is over the remaining points:
    # latency <= 5 keeps arch1..3, accuracy 85..50, latency 1..4: distances 1, 0.54, 1.
    row, why = choose(front(), ACC_LAT, where={"latency": {"max": 5}})
    assert row["key"] == "arch2" and "among points with latency <= 5" in why
    assert choose(front()[:1], ACC_LAT)[0]["key"] == "arch0"  # a one-point front is its own knee


def test_choose_best_respects_where() -> None:
    assert choose(front(), ACC_LAT, "best", best="accuracy")[0]["key"] == "arch0"
    assert choose(front(), ACC_LAT, "best", best="latency")[0]["key"] == "arch3"
    row, why = choose(front(), ACC_LAT, "best", best="accuracy", where={"latency": {"max": 5}})
    assert row["key"] == "arch1" and why == "the highest accuracy with latency <= 5"
    row, why = choose(front(), ACC_LAT, "best", best="bytes", where={"accuracy": {"min": 70}})
    assert row["key"] == "arch2" and why == "the lowest bytes with accuracy >= 70"
    both = {"accuracy": {"min": 60}, "latency": {"max": 4}}
    assert choose(front(), ACC_LAT, "best", best="bytes", where=both)[0]["key"] == "arch2"
    assert choose(front(), ACC_LAT, "index", index=2)[0]["key"] == "arch2"


def test_choose_rule_nobody_meets_names_the_closest_point() -> None:
    with pytest.raises(ValueError, match=r"no front point has accuracy >= 95; the closest is index 0 \(arch0: "):
        choose(front(), ACC_LAT, "best", best="bytes", where={"accuracy": {"min": 95}})
    # Misses relative to each bound: arch0 latency 7/3 = 2.33; arch1 3/88 + 1/3 = 0.37; arch2 18/88 = 0.20.
    with pytest.raises(ValueError, match=r"accuracy >= 88 and latency <= 3; the closest is index 2 \(arch2: "):
        choose(front(), ACC_LAT, "knee", where={"accuracy": {"min": 88}, "latency": {"max": 3}})


@pytest.mark.parametrize("index", [4, -1, None, 100])
def test_choose_index_out_of_range(index) -> None:
    with pytest.raises(ValueError, match=rf"index={index} is out of range: pareto.csv has 4 rows \(0..3\)"):
        choose(front(), ACC_LAT, "index", index=index)


def test_choose_refuses_unknown_rules() -> None:
    with pytest.raises(ValueError, match=r"unknown select='pareto'; choose from \['knee', 'index', 'best'\]"):
        choose(front(), ACC_LAT, "pareto")
    with pytest.raises(ValueError, match=r"best='speed' must be an objective pareto.csv records"):
        choose(front(), ACC_LAT, "best", best="speed")
    with pytest.raises(ValueError, match=r"where= names \['macs'\], which pareto.csv does not record"):
        choose(front(), ACC_LAT, "best", best="accuracy", where={"macs": {"max": 5}})
    with pytest.raises(ValueError, match="constraint on unknown objective 'speed'"):
        choose(front(), ACC_LAT, where={"speed": {"max": 5}})
    with pytest.raises(ValueError, match=r"objective 'bpc' does not exist for model.task='image'"):
        choose(front(), ACC_LAT, where={"bpc": {"max": 5}})


def test_read_front_refuses_missing_and_empty_results(tmp_path) -> None:
    with pytest.raises(ValueError, match="no search results in"):
        read_front(tmp_path)
    (tmp_path / "search.json").write_text(json.dumps({"settings": {"search": {"objectives": ["accuracy", "bytes"]}}}))
    (tmp_path / "pareto.csv").write_text("rank,key,genes,accuracy,bytes\n")
    with pytest.raises(ValueError, match=r"pareto\.csv is empty"):
        read_front(tmp_path)
    (tmp_path / "pareto.csv").write_text("rank,key,genes,accuracy,bytes\n0,k,1 2,80.5,1000\n")
    rows, objectives, _ = read_front(tmp_path)
    assert rows[0]["accuracy"] == "80.5" and [o.name for o in objectives] == ["accuracy", "bytes"]


def test_overwrite_keeps_the_old_export_until_the_new_one_is_in_place(tmp_path, monkeypatch) -> None:
    """nas-export overwrite=true moves the old folder aside and deletes it only after the new one is in place; a
    failure in between puts the old one back."""
    out, new = tmp_path / "knee", tmp_path / ".knee.tmp"
    out.mkdir()
    (out / "old.txt").write_text("old")
    new.mkdir()
    (new / "new.txt").write_text("new")
    real_rename = Path.rename

    def failing(self, target):
        if self == new:
            raise OSError("disk full")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", failing)
    with pytest.raises(OSError, match="disk full"):
        replace_dir(new, out)
    assert (out / "old.txt").read_text() == "old" and not (tmp_path / ".knee.old").exists()
    monkeypatch.setattr(Path, "rename", real_rename)
    replace_dir(new, out)
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"] and not (tmp_path / ".knee.old").exists()


def test_finetuning_a_subset_keeps_the_supernets_input_statistics(searched, monkeypatch) -> None:
    """finetune.train_subset draws fewer images, normalised with the statistics the supernet recorded (not the
    subset's own); the schedule warms up over finetune.warmup_fraction of the steps."""
    import export.cli as export_cli

    net, info = load_supernet(searched)
    seen = []
    build = export_cli.build_data

    def recording(info_, overrides):
        dm = build(info_, overrides)
        seen.append(dm)
        return dm

    monkeypatch.setattr(export_cli, "build_data", recording)
    sub = extract_subnet(net, LOW_BIT, qat=True)
    finetune(net, sub, info, export_cfg(searched, "finetune.epochs=1", "finetune.train_subset=64"))
    (dm,) = seen
    assert len(dm.train) == 64
    recorded = info["data"]["preprocessing"]
    assert dm.preprocessing()["normalize_mean"] == pytest.approx(recorded["normalize_mean"], rel=1e-6)
    assert dm.preprocessing()["normalize_std"] == pytest.approx(recorded["normalize_std"], rel=1e-6)
    assert export_cfg(searched).finetune.warmup_fraction == 0.05


def test_an_export_in_progress_holds_its_target(searched, arch_file, tmp_path) -> None:
    """Two exports to one name cannot both pass the existence check: while one holds the target (from the check to
    the final move), a second is refused at once, naming what to do; once it is done, overwrite=false refuses."""
    from predictors.table import writer_lock

    out = tmp_path / "subnets"
    args = (f"out={out}", f"arch={arch_file}", "name=racy")
    refused = r"another nas-export is writing .*racy: wait for it to finish, or export under another name=<name>"
    # another export of the same name, in progress
    with writer_lock(out / "racy", "nas-export"), pytest.raises(ValueError, match=refused):
        export_run(export_cfg(searched, *args))
    assert not (out / "racy").exists()
    export_run(export_cfg(searched, *args))  # released: this one goes through
    with pytest.raises(ValueError, match=r"racy already exists; pass overwrite=true"):
        export_run(export_cfg(searched, *args))
    assert export_run(export_cfg(searched, *args, "overwrite=true")) == out / "racy"
    assert sorted(p.name for p in out.iterdir()) == [".racy.lock", "racy"]  # no backup or temporary folder left
