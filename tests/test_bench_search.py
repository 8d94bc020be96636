"""The search and label benchmarks' smoke modes: each script runs its whole study at a tiny size (the tiny trained,
fully measured run of tests/bench_smoke.py, or a tiny Llama of its own), prints its table, writes results only
where its `--out`/`--json` points (a temporary folder here) and leaves the published ones (bench/results/) alone.
The two that start a PostgreSQL server and worker processes are skipped where PostgreSQL is not installed (failed
under NAS_REQUIRE_POSTGRES=1, as tests/conftest.py's `postgres` fixture does)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.bench_smoke import run_script, unchanged_results

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# script -> its smoke command line (after the script's name); {run}: the tiny trained run, {tmp}: a temporary folder
SMOKE: dict[str, list[str]] = {
    "search_groundtruth.py": ["--smoke", "--table", "{run}/predictors/measurements.csv", "--run", "{run}",
                              "--json", "{tmp}/search_groundtruth.json"],
    "search_speed.py": ["--smoke", "--run", "{run}"],
    "search_workers.py": ["--smoke", "--run", "{run}", "--out", "{tmp}/search_workers"],
    "scale_search.py": ["--smoke", "--out", "{tmp}/scale_search"],
    "label_budget.py": ["--smoke", "--run", "{run}", "--out", "{tmp}/label_budget.json"],
    "label_reliability.py": ["--smoke", "--run", "{run}", "--out", "{tmp}/label_reliability.json"],
}  # fmt: skip
# script -> lines its output must hold (its table's header and a row, or its summary)
EXPECTED: dict[str, list[str]] = {
    "search_groundtruth.py": [r"^method +@8 +@11 +@14 +recall@8 +recall@11 +recall@14 +s/seed$",
                              r"^refine +(1|0)\.\d{4} ± \d\.\d{4} \(\d\.\d{4}\)",
                              r"^  refine - random @8: [+-]\d\.\d{4} ± \d\.\d{4} \("],
    "search_speed.py": [r"^algorithm +evaluated +median s +cand/s", r"^agemoea +\d+ +[\d.]+ +\d+$",
                        r"^objectives \['accuracy', 'latency', 'bytes'\]: predictors accuracy=ridge"],
    "search_workers.py": [r"^configuration +threads +evals/min +speed-up",
                          r"^1 worker \(a\) +\d+ +[\d.]+ +1\.00x +nan% +nan% +nan +True$",
                          r"^one measurement: [\d.]+ s per arch"],
    "scale_search.py": [r"^model: tiny Llama", r"^measured_trials: 8$", r"^distinct_archs: 8$", r"^claims: 8$"],
    "label_budget.py": [r"^archs images seconds +label split-half τ +τ vs test acc +chosen$", r"^ +12 +128 ",
                        r"^  ridge [-\d.]+ ± [\d.]+  gp [-\d.]+ ± [\d.]+  ridge\+gp "],
    "label_reliability.py": [r"^score +split-half τ, val +split-half τ, test +τ\(val score, test acc\)$",
                             r"^label +ridge own/test +gp own/test +selected$", r"^logp_true +[-\d.]+/[-\d.]+ "],
}  # fmt: skip
# what each smoke writes where its --out/--json points
WRITES = {
    "search_groundtruth.py": ["search_groundtruth.json"],
    "search_workers.py": ["search_workers.json", "search_workers.txt"],
    "scale_search.py": ["scale_search.json", "scale_search.txt"],
    "label_budget.py": ["label_budget.json"],
    "label_reliability.py": ["label_reliability.json"],
}
NEEDS_POSTGRES = {"search_workers.py", "scale_search.py"}
NEEDS_RUN = {name for name, argv in SMOKE.items() if any("{run}" in a for a in argv)}


def test_smoke_table_is_complete() -> None:
    assert set(EXPECTED) == set(SMOKE) and set(WRITES) <= set(SMOKE)
    for name, argv in SMOKE.items():
        assert argv[0] == "--smoke", name
        doc = (Path(__file__).resolve().parents[1] / "bench" / name).read_text()
        assert re.search(rf"python bench/{re.escape(name)} .*--smoke", doc), f"bench/{name}: no --smoke usage line"


def _need_postgres() -> None:
    from tests.pgserver import HOW_TO_GET, REQUIRE_ENV, server_bin

    if server_bin() is None:
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"{REQUIRE_ENV} is set but no PostgreSQL server is installed: {HOW_TO_GET}")
        pytest.skip(f"no PostgreSQL server here: {HOW_TO_GET}")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SMOKE))
def test_bench_search_smoke(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if name in NEEDS_POSTGRES:
        _need_postgres()
    run = request.getfixturevalue("bench_run") if name in NEEDS_RUN else None
    argv = [a.format(run=run, tmp=tmp_path) for a in SMOKE[name]]
    with unchanged_results():
        out = run_script(name, *argv)
    for expected in EXPECTED[name]:
        assert re.search(expected, out, re.M), f"bench/{name} {' '.join(argv)}: no line matching {expected!r}:\n{out}"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(WRITES.get(name, [])), "written outside --out/--json"
