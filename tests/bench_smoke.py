"""What the bench scripts' smoke modes run on: a tiny trained run, and a way to run a script in this process.

The run is a supernet trained for seconds on digits over a space of 20 archs (small enough to measure whole, which
the ground-truth search benchmark needs), with every arch measured, so that each script
that reads a run (`--run`) finds what `make demo` would leave. It is built once per test session and shared by the
pytest-xdist workers (a file lock beside the workers' temporary folders).
"""

from __future__ import annotations

import contextlib
import io
import runpy
import sys
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
# 20 archs: depth 1 (2 FFN ratios x 2 weight bits) + depth 2 (4 x 4)
SPACE = ["space.name=bench_smoke", "space.depth=[1,2]", "space.embed_dim=[32]", "space.num_heads=[1]",
         "space.mlp_ratio=[1.0,2.0]", "space.w_bits=[8,32]", "space.a_bits=[32]"]  # fmt: skip
N_ARCHS = 20


def _build(run: Path) -> None:
    from hydra import compose, initialize_config_dir

    from predictors.measure_cli import measure_run
    from supernet.train_cli import CONF_DIR, train

    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose(config_name="train", overrides=["experiment=smoke", *SPACE, "trainer.max_epochs=1",
                                                       "trainer.limit_train_batches=4", "data.val_subset_size=64",
                                                       "trainer.enable_progress_bar=false"])  # fmt: skip
        train(cfg, run)
        measure = compose(config_name="measure", overrides=[f"run={run}", f"n_archs={N_ARCHS}", "latency.repeats=3",
                                                             "latency.warmup=1", "data_overrides.val_subset_size=64",
                                                             "holdout_fraction=0.3"])  # fmt: skip
        measure_run(measure)
    (run / "bench_smoke_done").touch()


def tiny_run(shared: Path) -> Path:
    """The tiny run under `shared` (a folder every worker sees), built by whichever worker comes first."""
    run = shared / "bench_smoke_run"
    with FileLock(str(shared / "bench_smoke_run.lock")):
        if not (run / "bench_smoke_done").is_file():
            _build(run)
    return run


def run_script(name: str, *argv: str) -> str:
    """Run bench/<name> as `python bench/<name> argv...` would, in this process (no second interpreter start);
    returns what it printed. A non-zero exit is an AssertionError carrying the output."""
    out = io.StringIO()
    saved = sys.argv
    sys.argv = [str(BENCH / name), *argv]
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(str(BENCH / name), run_name="__main__")
    except SystemExit as e:
        if e.code not in (0, None):
            raise AssertionError(f"bench/{name} {' '.join(argv)} exited with {e.code}:\n{out.getvalue()}") from None
    finally:
        sys.argv = saved
    return out.getvalue()


def _published() -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (BENCH / "results").rglob("*") if p.is_file()}


@contextlib.contextmanager
def unchanged_results() -> Iterator[None]:
    """Fail if the block wrote anything under bench/results/: a smoke run must never touch the published figures."""
    before = _published()
    yield
    after = _published()
    changed = sorted(str(p.relative_to(ROOT)) for p in set(before) | set(after) if before.get(p) != after.get(p))
    assert not changed, f"a smoke run changed published results: {changed}"
