"""Search workers sharing one optuna study for real: `nas-search` processes against SQLite and a throwaway PostgreSQL
server (tests/pgserver.py), a worker killed with SIGKILL mid-measurement, and the device lock that keeps workers on
one machine from timing latency while another measures, and the count of live workers that splits a machine's
cores between them."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
from optuna.storages import RetryHeartbeatStaleTrialCallback
from sqlalchemy.engine import make_url

from search import machine_workers
from search.claims import BUDGET, MINE, Claims
from search.cli import build_search
from search.database import resolve_url
from search.loop import TABLE_NAME
from search.machine_workers import MachineWorkers
from search.optuna_backend import open_storage
from supernet.device_lock import LOCK_DIR_ENV, measuring, timing
from tests.conftest import ROOT
from tests.test_search import MEASURE_OVERRIDES, ONE_THREAD_ENV, read_csv, search_cfg, trained_run

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return trained_run(tmp_path_factory)


def worker_args(out: Path, url: str, budget: int, *extra: str) -> list[str]:
    return [f"out={out}", "init_from=null", "search.backend=optuna", f"search.optuna.storage={url}",
            f"search.budget={budget}", "search.initial=7", *extra]  # fmt: skip


def start_worker(run: Path, args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "search.cli", f"run={run}", *MEASURE_OVERRIDES, *args], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def finish(procs: list[subprocess.Popen], timeout: float) -> list[tuple[str, str]]:
    """(stdout, stderr) of each process; all are killed if one outlives `timeout`."""
    try:
        return [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def measured_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    return [t for t in done if "row" in t.user_attrs and not t.user_attrs["repeat"]]


def test_two_workers_share_one_study(run, study_url, tmp_path) -> None:
    """Two `nas-search` processes on one study (SQLite file or PostgreSQL database): together they measure exactly the
    budget, each arch once."""
    out, budget = tmp_path / "shared", 10
    args = worker_args(out, study_url, budget)
    # Constructing a worker creates the study and enqueues the extremes (it measures nothing): the study exists
    # before the workers start, as when an earlier worker created it.
    build_search(search_cfg(run, *args))
    env = {**ONE_THREAD_ENV, LOCK_DIR_ENV: str(tmp_path / "locks")}
    procs = [start_worker(run, args, env) for _ in range(2)]
    results = finish(procs, timeout=400)
    for p, (stdout, stderr) in zip(procs, results, strict=True):
        assert p.returncode == 0, stderr[-3000:]
        assert "nas-search: optuna study 'nas-search'" in stdout
    study = optuna.load_study(study_name="nas-search", storage=resolve_url(study_url))
    keys = [t.user_attrs["key"] for t in measured_trials(study)]
    assert len(set(keys)) == len(keys), "an arch was measured twice"
    assert len(keys) == budget  # together, not each: claims are unique inserts with budget-numbered slots
    assert sum(stdout.count("archs measured,") for stdout, _ in results) == budget  # one line per measurement
    # A third worker in this process continues: nothing left to measure, the outputs show the whole study.
    build_search(search_cfg(run, *args)).run()
    assert len(measured_trials(study)) == budget
    _, rows = read_csv(out / TABLE_NAME)
    assert sorted(r["key"] for r in rows) == sorted(keys)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_worker_killed_mid_measurement_loses_nothing(run, postgres, tmp_path, monkeypatch) -> None:
    """kill -9 of a worker while it measures: its trial is failed by the heartbeat, another worker measures that
    arch, and the study ends with every arch counted once."""
    url, out, budget = postgres.create_database("killed"), tmp_path / "out", 7
    args = worker_args(out, url, budget, "search.optuna.heartbeat_interval=1", "search.optuna.grace_period=3")
    build_search(search_cfg(run, *args))
    env = {**ONE_THREAD_ENV, LOCK_DIR_ENV: str(tmp_path / "locks")}
    monkeypatch.setenv(LOCK_DIR_ENV, env[LOCK_DIR_ENV])
    study = optuna.load_study(study_name="nas-search", storage=url)
    claims = Claims(url, "nas-search")
    # This process measures on the device (shared) meanwhile: the worker scores its arch, then waits to time it.
    with measuring("cpu"):
        victim = start_worker(run, args, env)
        try:
            deadline = time.monotonic() + 120
            while not claims.trials() and victim.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert victim.poll() is None, victim.communicate()[1][-3000:]
            (killed,) = claims.trials()
            time.sleep(1.0)  # well inside the measurement: it cannot time before this block ends
        finally:
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=30)
    trial = study.get_trials()[killed]
    assert trial.state == optuna.trial.TrialState.RUNNING and "row" not in trial.user_attrs
    survivor = start_worker(run, args, env)
    ((_, stderr),) = finish([survivor], timeout=300)
    assert survivor.returncode == 0, stderr[-3000:]

    trials = study.get_trials()
    assert trials[killed].state == optuna.trial.TrialState.FAIL  # failed by the heartbeat
    measured = measured_trials(study)
    keys = [t.user_attrs["key"] for t in measured]
    assert len(keys) == budget and len(set(keys)) == budget  # every arch counted once
    lost_key = trials[killed].user_attrs["key"]
    (redo,) = [t for t in measured if t.user_attrs["key"] == lost_key]  # re-measured, by the other worker
    assert RetryHeartbeatStaleTrialCallback.retried_trial_number(redo) == killed
    assert claims.count() == budget and claims.trials() == {t.number for t in measured}
    _, rows = read_csv(out / TABLE_NAME)
    assert sorted(r["key"] for r in rows) == sorted(keys)


def test_claims_race_on_a_real_database(study_url) -> None:
    """Eight workers' claims at once: exactly the budget's worth succeed, each arch has one owner."""
    budget, barrier, verdicts = 5, threading.Barrier(8), {}
    none_failed = lambda trials: set()  # noqa: E731

    errors: list[BaseException] = []

    def claim(i: int) -> None:
        try:
            handle = Claims(study_url, "race")
            barrier.wait()
            verdicts[i] = handle.claim(f"arch{i % 6}", i, budget, none_failed)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert len(verdicts) == 8
    mine = sorted(i % 6 for i, v in verdicts.items() if v == MINE)
    assert len(mine) == budget and len(set(mine)) == budget
    assert all(v in (MINE, "taken", BUDGET) for v in verdicts.values())
    with sa.create_engine(resolve_url(study_url)).connect() as conn:
        assert conn.execute(sa.text("select count(*) from nas_arch_claims_v2 where study = 'race'")).scalar_one() == 5


def test_claims_of_long_keys_on_a_real_database(study_url) -> None:
    """Keys of any length (here 800-character keys: deep models) are claimed by their digest; the readable key is
    kept beside it. The first claims table (VARCHAR(512) keys) refused such keys on PostgreSQL."""
    from search.claims import digest

    none_failed = lambda trials: set()  # noqa: E731
    claims = Claims(study_url, "deep")
    keys = [f"d80_e2048_a32_h{'-'.join(['32', str(8 * i)] * 40)}_f{'8192-' * 79}8192_w{'32-' * 79}32" for i in range(3)]
    assert min(map(len, keys)) > 800
    # The case: a 30-layer arch of SmolLM-135M's shape keyed in the format before FFN widths (705 characters)
    # is refused by the first table's VARCHAR(512) on PostgreSQL (SQLite ignores lengths).
    ratios = "-".join(["2.6666666666666665", "1.3333333333333333", "0.6666666666666666"] * 10)
    smollm = f"d30_e576_a32_h{'-'.join(['9', '6', '3'] * 10)}_r{ratios}_w{'-'.join(['8', '4', '2'] * 10)}"
    assert len(smollm) > 512
    if study_url.startswith("postgresql"):
        first = sa.Table("nas_arch_claims", sa.MetaData(), sa.Column("arch_key", sa.String(512), primary_key=True))
        engine = sa.create_engine(resolve_url(study_url))
        first.create(engine)
        with pytest.raises(sa.exc.DataError, match="value too long for type character varying"), engine.begin() as c:
            c.execute(sa.insert(first).values(arch_key=smollm))
    keys[2] = smollm
    assert [claims.claim(k, n, 3, none_failed) for n, k in enumerate(keys)] == [MINE] * 3
    assert claims.claim(keys[0], 9, 3, none_failed) == "taken"
    with sa.create_engine(resolve_url(study_url)).connect() as conn:
        rows = conn.execute(sa.text("select arch_digest, arch_key from nas_arch_claims_v2 where study = 'deep'")).all()
    assert sorted(rows) == sorted((digest(k), k) for k in keys)


def test_missing_driver_is_one_line_naming_the_package(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg2", None)  # as if the postgres extra were not installed
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(ValueError) as e:
        open_storage("postgresql+psycopg2://user@127.0.0.1:1/db")
    assert str(e.value) == (
        "the optuna storage 'postgresql+psycopg2://user@127.0.0.1:1/db' needs the database driver 'psycopg2': "
        'pip install "elastic-nas[postgres]" (it installs psycopg2-binary)'
    )
    default = make_url("postgresql://").get_dialect().driver  # SQLAlchemy 2.1: psycopg (3); 2.0: psycopg2
    with pytest.raises(ValueError, match=rf"user:\*\*\*@.* needs the database driver '{default}': pip install"):
        open_storage("postgresql://user:secret@127.0.0.1:1/db")


def test_the_readme_url_form_works_with_the_extra(postgres) -> None:
    """The documented `postgresql+psycopg2://` and a bare `postgresql://` both reach the server with psycopg2."""
    url = postgres.create_database("readme")
    assert url.startswith("postgresql+psycopg2://")
    for form in (url, url.replace("+psycopg2", "")):
        storage = open_storage(form)
        optuna.create_study(storage=storage, study_name=form[:40])
        storage.engine.dispose()


def test_timing_waits_for_measurements_and_has_priority(tmp_path, monkeypatch) -> None:
    """The device lock: a timing waits until the shared measurements in progress end, and no new measurement starts
    while a timing waits (a second process's locks behave like another thread's)."""
    monkeypatch.setenv(LOCK_DIR_ENV, str(tmp_path))
    events: list[str] = []
    measuring_started, timer_waiting = threading.Event(), threading.Event()

    def measure(name: str, hold_s: float) -> None:
        with measuring("cpu"):
            events.append(f"{name} in")
            measuring_started.set()
            time.sleep(hold_s)
            events.append(f"{name} out")

    def time_it() -> None:
        timer_waiting.set()
        with timing("cpu"):
            events.append("timing in")
            time.sleep(0.2)
            events.append("timing out")

    first = threading.Thread(target=measure, args=("a", 0.6))
    first.start()
    measuring_started.wait()
    timer = threading.Thread(target=time_it)
    timer.start()
    timer_waiting.wait()
    gate = os.open(tmp_path / "cpu.gate", os.O_RDONLY | os.O_CREAT)
    try:  # wait until the timer holds the gate (and waits for "a")
        while True:
            try:
                fcntl.flock(gate, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                break
            fcntl.flock(gate, fcntl.LOCK_UN)
            time.sleep(0.01)
    finally:
        os.close(gate)
    late = threading.Thread(target=measure, args=("b", 0.0))
    late.start()
    for t in (first, timer, late):
        t.join(timeout=10)
    assert events == ["a in", "a out", "timing in", "timing out", "b in", "b out"]
    with timing("cpu"), timing("cpu"):  # re-entrant within a thread
        pass
    with measuring("cpu"), pytest.raises(RuntimeError, match="would wait for itself"), timing("cpu"):
        pass


def test_workers_on_a_machine_split_its_cores(tmp_path, monkeypatch) -> None:
    """Each live worker takes cores / workers torch threads; a killed worker stops counting; OMP_NUM_THREADS wins."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(machine_workers, "machine_cores", lambda: 4)
    d = tmp_path / "workers"
    code = (f"import sys, time; sys.path.insert(0, {str(ROOT)!r}); from search.machine_workers import MachineWorkers; "
            f"w = MachineWorkers({str(d)!r}).__enter__(); print('in', flush=True); time.sleep(120)")  # fmt: skip
    with MachineWorkers(d) as a:
        assert a.count() == 1 and a.threads() == 4
        other = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        try:
            assert other.stdout.readline() == "in\n"
            with MachineWorkers(d) as b:
                assert a.count() == b.count() == 3 and a.threads() == 1
            assert a.count() == 2 and a.threads() == 2
        finally:
            other.kill()  # SIGKILL: its file stays, its lock goes
            other.wait()
        assert len(list(d.glob("[!.]*"))) == 2
        assert a.count() == 1 and a.threads() == 4
        assert len(list(d.glob("[!.]*"))) == 1  # the dead worker's file was removed by the count
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert a.threads() is None  # the user's setting decides
    assert not list(d.iterdir())
