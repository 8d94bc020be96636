"""nas-search end to end on a tiny supernet trained on digits: Hydra config, outputs, reuse of nas-measure rows, and
one clear error line for every kind of bad input (in process, and from a real `python -m search.cli`)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from predictors.measure_cli import measure_run
from search.cli import CONF_DIR, build_search, measurement_settings, reusable_rows
from search.loop import STATE_NAME, TABLE_NAME
from supernet import build_supernet
from supernet.artifact import load_supernet, save_supernet
from supernet.space import SearchSpace
from tests.conftest import ROOT
from tests.test_search import (
    EVAL_HEADER,
    MEASURE_OVERRIDES,
    ONE_THREAD_ENV,
    dominated_brute_force,
    minimised,
    read_csv,
    trained_run,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST_SEARCH = [
    "search.budget=20",
    "search.initial=10",
    "search.batch_size=5",
    "search.n_candidates=600",
    "search.pop_size=20",
    "search.predictor.candidates=[ridge,gbrt]",
    "search.predictor.k_folds=2",
]
CLI_COLUMNS = ["accuracy", "latency_ms", "latency_iqr_ms", "latency_cv"]


def search_args(run: Path, *overrides: str) -> list[str]:
    return [f"run={run}", *MEASURE_OVERRIDES, *FAST_SEARCH, *overrides]


def cfg(run: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return compose(config_name="search", overrides=search_args(run, *overrides))


def run_quietly(config) -> tuple[dict, str]:
    """build_search(config).run(), returning the state and what it printed."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        state = build_search(config).run()
    return state, buf.getvalue()


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return trained_run(tmp_path_factory)


@pytest.fixture(scope="module")
def measured(run, tmp_path_factory) -> Path:
    """nas-measure's table of 12 archs, measured with the same latency and data settings as the searches below."""
    out = tmp_path_factory.mktemp("measure")
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        mcfg = compose(config_name="measure", overrides=[f"run={run}", f"out={out}", "n_archs=12", *MEASURE_OVERRIDES])
    return measure_run(mcfg)


@pytest.fixture(scope="module")
def searched(run, measured, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("search") / "s"
    # The budget counts the search's own evaluations: 10 new on top of the 12 reused rows.
    state, printed = run_quietly(cfg(run, f"out={out}", f"init_from={measured}", "search.budget=10"))
    return {"out": out, "state": state, "printed": printed}


@pytest.fixture(scope="module")
def other_space_run(run, tmp_path_factory) -> Path:
    """A supernet artifact of another space (same task, data and model config), as a second nas-train run."""
    net, info = load_supernet(run)
    space = SearchSpace(
        depth=(1, 2), embed_dim=(32,), num_heads=(1, 2), mlp_ratio=(1.0,), w_bits=(8, 32), a_bits=(32,), name="other"
    )
    assert space.fingerprint() != net.space.fingerprint()
    other = tmp_path_factory.mktemp("other_run")
    save_supernet(other, build_supernet(space, net.config), info)
    return other


def test_search_writes_its_outputs(run, searched) -> None:
    out = searched["out"]
    for name in (TABLE_NAME, "pareto.csv", STATE_NAME, "pareto.png", "hypervolume.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    header, rows = read_csv(out / TABLE_NAME)
    assert header == EVAL_HEADER and len(rows) == 22 and len({r["key"] for r in rows}) == 22
    _, front = read_csv(out / "pareto.csv")
    expected = {rows[i]["key"] for i in dominated_brute_force(minimised(rows, ["accuracy", "latency"]))}
    assert {r["key"] for r in front} == expected
    saved = json.loads((out / STATE_NAME).read_text())
    sha = hashlib.sha256((run / "supernet.safetensors").read_bytes()).hexdigest()
    assert saved["run"] == str(run) and saved["supernet_sha256"] == sha
    assert saved["settings"]["evaluator"]["latency"]["repeats"] == 2
    assert saved["settings"]["evaluator"]["data_overrides"] == {"val_subset_size": 200}
    hv = [e["hypervolume"] for e in saved["iterations"]]
    assert all(b >= a for a, b in itertools.pairwise(hv))
    assert saved["final"]["n_evaluations"] == 22 and saved["final"]["front"] == [r["key"] for r in front]
    assert "nas-search: iteration 2: 10/10 evaluations (+12 reused)" in searched["printed"]


def test_init_from_reuses_nas_measure_rows(searched, measured) -> None:
    """Rows nas-measure measured with the same supernet and settings are iteration 0, copied, not measured again."""
    assert f"nas-search: reusing 12 archs measured by nas-measure in {measured}" in searched["printed"]
    _, m_rows = read_csv(measured)
    _, rows = read_csv(searched["out"] / TABLE_NAME)
    first = rows[:12]
    assert [r["key"] for r in first] == [r["key"] for r in m_rows]
    assert all(r["iteration"] == "0" for r in first) and all(r["iteration"] != "0" for r in rows[12:])
    for r, m in zip(first, m_rows, strict=True):
        # Latencies are noisy to many digits: equal values mean the row was copied, not measured again.
        assert [r[c] for c in (*CLI_COLUMNS, "genes", "bytes")] == [m[c] for c in (*CLI_COLUMNS, "genes", "bytes")]
    # The initial batch (10 archs) was all among the reused rows; the budget (10) was all spent searching.
    assert [int(r["iteration"]) for r in rows[12:]] == [1] * 5 + [2] * 5
    assert searched["state"]["imported"] == 12


def test_init_from_measured_with_other_settings_is_ignored(run, measured, tmp_path) -> None:
    out = tmp_path / "other_latency"
    config = cfg(run, f"out={out}", f"init_from={measured}", "latency.repeats=3", "search.budget=10")
    _, printed = run_quietly(config)
    assert f"nas-search: not reusing {measured}: measured with other latency" in printed
    _, rows = read_csv(out / TABLE_NAME)
    _, m_rows = read_csv(measured)
    assert len(rows) == 10 and {r["iteration"] for r in rows} == {"0"}
    by_key = {m["key"]: m for m in m_rows}
    assert all(r["latency_ms"] != by_key[r["key"]]["latency_ms"] for r in rows)  # measured anew
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        build_search(cfg(run, f"out={tmp_path / 'none'}", f"init_from={tmp_path / 'nothing.csv'}"))
    assert f"nas-search: no measurements to reuse: {tmp_path / 'nothing.csv'} does not exist" in buf.getvalue()
    # A table without its settings file is not "empty": the note says what is missing.
    bare = tmp_path / "bare" / measured.name
    bare.parent.mkdir()
    shutil.copy(measured, bare)
    rows, note = reusable_rows(cfg(run, f"init_from={bare}"), measurement_settings(cfg(run)), ["accuracy"])
    assert rows == [] and note == (f"not reusing {bare}: it has no measurements.json beside it, so what its rows were "
                                   "measured with is unknown")  # fmt: skip


def test_init_from_measured_on_another_kind_of_device_is_not_reused(run, measured, tmp_path) -> None:
    """Rows whose quality was scored on a GPU are not reused by a search scoring on the CPU, nor the other way round;
    a table written before accuracy_device existed was scored on the CPU."""
    table = tmp_path / "m" / measured.name
    shutil.copytree(measured.parent, table.parent, ignore=shutil.ignore_patterns(".*"))
    meta = table.with_name("measurements.json")
    saved = json.loads(meta.read_text())
    columns = ["accuracy", "latency_ms"]
    config = cfg(run, f"init_from={table}")
    assert saved["accuracy_device"] == "cpu" and "accuracy_device" not in measurement_settings(config)
    assert len(reusable_rows(config, measurement_settings(config), columns)[0]) == 12
    meta.write_text(json.dumps({**saved, "accuracy_device": "cuda"}))
    rows, note = reusable_rows(config, measurement_settings(config), columns)
    assert rows == [] and note == f"not reusing {table}: measured with other accuracy_device"
    meta.write_text(json.dumps({k: v for k, v in saved.items() if k not in ("accuracy_device", "accuracy_target")}))
    assert len(reusable_rows(config, measurement_settings(config), columns)[0]) == 12
    on_gpu = {**measurement_settings(config), "accuracy_device": "cuda"}  # what `accuracy_device=cuda` compares
    assert reusable_rows(config, on_gpu, columns)[1] == f"not reusing {table}: measured with other accuracy_device"


# ---- bad input -----------------------------------------------------------------------------------------------------

# Every kind of bad input: overrides for a valid run, and the error it must give.
BAD_INPUT = {
    "objective": (["search.objectives=[accuracy,speed]"], r"unknown objective\(s\) \['speed'\]; valid objectives"),
    "algorithm": (["search.algorithm=moead"], r"unknown search algorithm 'moead'; valid algorithms: \['nsga2'"),
    "backend": (["search.backend=ray"], r"unknown search\.backend 'ray'; valid backends: \['pymoo', 'optuna'\]"),
    "constraint": (["+search.constraints.bytes.max=1"], r"constraint bytes <= 1 is infeasible: the best achievable"),
    "postgres": (
        ["search.backend=optuna", "search.optuna.storage=postgresql://u:p@127.0.0.1:1/db"],
        r"(cannot open the optuna storage|needs the database driver)",
    ),
    "sqlite_dir": (
        ["search.backend=optuna", "search.optuna.storage=sqlite:////nonexistent/dir/study.db"],
        r"cannot open the optuna storage 'sqlite:////nonexistent/dir/study\.db'",
    ),
    # no machine has 100 GPUs: without CUDA "no CUDA device is available here", with it "this machine has N"
    "accuracy_device": (["accuracy_device=cuda:99"], r"accuracy_device='cuda:99'.*; use accuracy_device=cpu"),
}
PATTERNS = {name: m for name, (_, m) in BAD_INPUT.items()} | {
    "missing_run": r"no supernet artifact at",
    # A supernet trained on another space, pointed at an out= that holds a search of the first one.
    "other_space": r"holds a search with other settings \(space_fingerprint: was",
    # Damaged caches: nas-measure's table to reuse, and the search's own evaluations to continue from.
    "damaged_measurements": r"measurements\.csv: row \S+ \(line 4\), column latency_ms: 'notanumber' is not a number",
    "damaged_evaluations": r"evaluations\.csv: row \S+ \(line 3\), column accuracy: -5 is outside \[0, 100\]",
}
# Every case runs in process (test_bad_input_is_one_clear_value_error); these also run as real processes, one per
# kind of failure (config, database, missing input, damaged cache), to check the CLI turns each into one line. Each
# process costs seconds of imports, so the rest are not repeated there.
# As real processes: an error Hydra's config raises (and its unknown-choice variant) and one from a damaged file; the
# in-process test above checks every case's message (each process costs seconds of imports).
CLI_CASES = ["algorithm", "damaged_evaluations"]


def damaged_copy(folder: Path, table: str, line: int, column: str, value: str, dest: Path) -> Path:
    """A copy of `folder` whose `table` holds `value` in `column` at 1-based `line`."""
    if not dest.exists():
        shutil.copytree(folder, dest, ignore=shutil.ignore_patterns(".*"))
        lines = (dest / table).read_text().splitlines(keepends=True)
        header = lines[0].rstrip("\n").split(",")
        values = lines[line - 1].rstrip("\n").split(",")
        values[header.index(column)] = value
        lines[line - 1] = ",".join(values) + "\n"
        (dest / table).write_text("".join(lines))
    return dest / table


def bad_input_args(name: str, run: Path, searched_out: Path, other: Path, tmp: Path, measured: Path) -> list[str]:
    if name == "damaged_measurements":
        table = damaged_copy(measured.parent, measured.name, 4, "latency_ms", "notanumber", tmp / "damaged_m")
        return search_args(run, f"out={tmp / name}", f"init_from={table}")
    if name == "damaged_evaluations":
        damaged_copy(searched_out, TABLE_NAME, 3, "accuracy", "-5", tmp / name)
        return search_args(run, f"out={tmp / name}", "init_from=null", "search.budget=10")
    if name == "missing_run":
        return search_args(tmp / "no_such_run", f"out={tmp / name}")
    if name == "other_space":
        return search_args(other, f"out={searched_out}", "init_from=null")
    return search_args(run, f"out={tmp / name}", "init_from=null", *BAD_INPUT[name][0])


def test_bad_input_is_one_clear_value_error(run, searched, other_space_run, measured, tmp_path) -> None:
    before = {p.name: p.read_bytes() for p in searched["out"].iterdir() if p.is_file()}
    for name, pattern in PATTERNS.items():
        args = bad_input_args(name, run, searched["out"], other_space_run, tmp_path, measured)
        with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
            config = compose(config_name="search", overrides=args)
        with pytest.raises(ValueError, match=pattern), contextlib.redirect_stdout(io.StringIO()):
            build_search(config).run()
    # The refused search of another supernet left the existing search untouched, and a damaged cache is kept as is.
    assert {p.name: p.read_bytes() for p in searched["out"].iterdir() if p.is_file()} == before
    damaged = (tmp_path / "damaged_evaluations" / TABLE_NAME).read_text().splitlines()
    original = (searched["out"] / TABLE_NAME).read_text().splitlines()
    assert damaged[:2] == original[:2] and damaged[3:] == original[3:] and ",-5," in damaged[2]


@pytest.fixture(scope="module")
def cli_results(run, searched, other_space_run, measured, tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """The bad-input cases as real `python -m search.cli` processes, started together (most of their time is
    importing torch)."""
    tmp = tmp_path_factory.mktemp("cli")
    procs = {
        name: subprocess.Popen(
            [
                sys.executable,
                "-m",
                "search.cli",
                *bad_input_args(name, run, searched["out"], other_space_run, tmp, measured),
            ],
            cwd=ROOT,
            env=ONE_THREAD_ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in CLI_CASES
    }
    results = {}
    for name, p in procs.items():
        stdout, stderr = p.communicate(timeout=300)
        results[name] = subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr)
    return results


@pytest.mark.parametrize("name", list(CLI_CASES))
def test_cli_error_line(cli_results, name: str) -> None:
    res = cli_results[name]
    assert res.returncode == 2, (res.stdout[-1000:], res.stderr[-2000:])
    assert "Traceback" not in res.stderr
    assert res.stderr.startswith("nas-search: error:"), res.stderr[:500]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(PATTERNS[name], lines[0]), lines


def test_cli_unknown_algorithm_still_ends_in_one_error_line(cli_results) -> None:
    res = cli_results["algorithm"]
    assert res.returncode == 2 and "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1].split("\r")[-1]
    assert last.startswith("nas-search: error: unknown search algorithm 'moead'; valid algorithms")


def documented_examples() -> list[list[str]]:
    """The arguments of the `nas-search run=...` example commands in conf/search.yaml's header comment."""
    lines = (Path(CONF_DIR) / "search.yaml").read_text().splitlines()
    return [
        shlex.split(line.split("nas-search", 1)[1], comments=True)
        for line in lines
        if line.startswith("#") and "nas-search run=" in line
    ]


@pytest.mark.parametrize("args", documented_examples(), ids=lambda args: " ".join(args)[:60])
def test_documented_examples_compose(args: list[str]) -> None:
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        config = compose(config_name="search", overrides=args)
    assert config.run == "results/demo"
    if any("constraints" in a for a in args):
        assert config.search.constraints  # the documented constraint arrives


def test_lm_objectives_need_an_lm(run, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"objective 'loss' does not exist for model\.task='image'"):
        build_search(cfg(run, f"out={tmp_path}", "search.objectives=[loss,latency]"))
