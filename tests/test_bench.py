"""Every bench script has a smoke mode that runs in seconds, and every one of them runs here: a change that breaks a
benchmark fails CI instead of the next person reproducing a published figure. A smoke checks that the script runs
and prints its table, not its figures, and that it leaves the published results (bench/results/) alone."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.bench_smoke import BENCH, run_script, unchanged_results

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# script -> (smoke arguments, a line its output must hold); {run}: the tiny trained run, {tmp}: a temporary folder
SMOKE: dict[str, tuple[list[str], str]] = {
    "extraction_overhead.py": (["--smoke"], r"total +supernet/subnet: median [\d.]+, max [\d.]+"),
    "train_cost.py": (["--smoke"], r"sandwich / sum\(static\): median [\d.]+"),
    "latency_measurement.py": (["--smoke", "--run", "{run}"], r"re-measurement difference: median [\d.]+ %"),
    "quantized_runtime.py": (["--smoke", "--run", "{run}"], r"## 3\. Agreement with what the search saw"),
    "train_quality.py": (["--smoke", "--out", "{tmp}"], r"variant +mean gap"),
    "train_memory.py": (["--smoke"], r"\| chunked \(16 tokens\) \| [\d.]+ s, [\d.]+ GB \|"),
}
# Scripts whose smoke runs in another test module, beside the fixtures it needs.
ELSEWHERE = {
    "scale.py": "tests/test_scale.py::test_scale_ladder_stages_on_a_tiny_llama (--smoke)",
    "gpu_scale.py": "tests/test_gpu_scale.py (--tiny: the same pipeline on the CPU with a 2-layer Llama)",
    "hf_inherited.py": "tests/test_hf_cli.py::test_bench_hf_inherited_smoke (needs an imported, searched run)",
}


def other_smokes() -> set[str]:
    """The scripts tests/test_bench_search.py smoke-tests (its SMOKE table), if that module is there."""
    try:
        from tests.test_bench_search import SMOKE as SEARCH_SMOKE
    except ImportError:
        return set()
    return set(SEARCH_SMOKE)


def test_every_bench_script_has_a_smoke() -> None:
    scripts = {p.name for p in BENCH.glob("*.py") if not p.name.startswith("_")}
    covered = set(SMOKE) | set(ELSEWHERE) | other_smokes()
    assert scripts - covered == set(), f"bench scripts without a smoke test: {sorted(scripts - covered)}"
    assert covered - scripts == set(), f"smoke tests of scripts that are gone: {sorted(covered - scripts)}"
    for name in scripts:
        assert "--smoke" in (BENCH / name).read_text() or name == "gpu_scale.py", f"bench/{name} has no --smoke"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SMOKE))
def test_bench_smoke(name: str, bench_run: Path, tmp_path: Path) -> None:
    argv, expected = SMOKE[name]
    argv = [a.format(run=bench_run, tmp=tmp_path) for a in argv]
    with unchanged_results():
        out = run_script(name, *argv)
    assert re.search(expected, out), f"bench/{name} {' '.join(argv)} printed no line matching {expected!r}:\n{out}"
