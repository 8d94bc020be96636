"""The optuna backend: a study of real evaluations in a shared database, driven by optuna's multi-objective samplers.

Every `nas-search search.backend=optuna` process is one worker: it asks the study for an arch (the sampler sees all
workers' results), measures it, and tells the values back, until the study holds `budget` distinct measured archs.
The study lives at `search.optuna.storage`: SQLite in the run directory by default, PostgreSQL
(`postgresql+psycopg2://user@host/db`, with `pip install "elastic-nas[postgres]"`) or any SQLAlchemy URL optuna
supports to share it between machines. The measured row of every arch is stored with its trial, so an
arch the sampler proposes again is answered from the study instead of being re-measured, and a restarted worker
continues the same study. Worker heartbeats let optuna fail the trial of a worker that died mid-measurement; its
arch is enqueued again and measured by another worker, which waits for that rather than stopping at the budget.
Latency is timed under the machine's device lock (supernet/device_lock.py), so workers sharing a machine never time
while another measures, and they split its cores for scoring accuracy (search/machine_workers.py).

evaluations.csv and the other outputs are views of the study, rewritten from it when a worker finishes.

The budget rule, in one place. The budget is a number of claim slots (search/claims.py): an arch is measured only by
the worker whose trial claims it, and no more than `budget` archs are ever claimed. A claim is released only when its
trial FAILs and is not given up: a worker that died (optuna's heartbeat fails its trial, and the retry callback
enqueues the arch again) or an evaluation error, after which the next worker that draws the arch tries it again. An
arch whose evaluation fails `MAX_FAILURES` times is given up: recorded with its error (search.json, `failed_archs`),
its claim kept, so no worker takes it again and its slot is spent. A worker stops once every slot is claimed and no
claimed trial is still running, so a study ends with `budget` archs measured or given up, never more.
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Any

import numpy as np
import optuna
import torch
from optuna.storages import RetryHeartbeatStaleTrialCallback
from sqlalchemy.exc import SQLAlchemyError

from predictors.measure import current_reference_keys
from predictors.table import MeasurementTable
from search.claims import BUDGET, TAKEN, Claims
from search.database import missing_driver_message, redact, resolve_url
from search.loop import TABLE_NAME, RefinementSearch
from search.machine_workers import MachineWorkers
from search.report import write_outputs
from supernet.arch import Arch, canonical_key
from supernet.costs import arch_costs

SAMPLERS = ("nsga2", "tpe", "random")
# Stop asking after this many proposals in a row that were all measured already (a small space can run dry).
MAX_REPEATS = 200
# Evaluations of one arch that may fail before it is given up (see the budget rule above).
MAX_FAILURES = 2


class ArchFailed(Exception):
    """An arch's evaluation raised: its trial fails and the worker goes on (optuna's `catch`)."""


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """optuna's sampler for `name`, seeded (constraints reach it through `Trial.set_constraint`)."""
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown search.optuna.sampler {name!r}; valid samplers: {list(SAMPLERS)}")


def open_storage(
    url: str, heartbeat_interval: int = 30, grace_period: int = 120, attempts: int = 4
) -> optuna.storages.RDBStorage:
    """The study storage at `url` (search/database.py resolves its driver), or one clear error when it cannot be
    reached.

    A worker's heartbeat every `heartbeat_interval` s lets any other worker fail its trial once `grace_period` s
    pass without one (it died); the failed trial's arch is enqueued again, so another worker measures it. Workers
    starting together on a new database race to create optuna's tables; the losers retry (with a short backoff)
    and then find the tables made.
    """
    resolved = resolve_url(url)
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats are "experimental"
                return optuna.storages.RDBStorage(
                    resolved,
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3),
                )
        except ImportError as e:  # optuna wraps the driver's ModuleNotFoundError in a message naming no module
            cause = e if e.name else e.__cause__ or e.__context__
            if isinstance(cause, ModuleNotFoundError) and cause.name and "." not in cause.name:
                raise ValueError(missing_driver_message(url, cause.name)) from None
            reason = (str(cause or e).strip().splitlines() or ["ImportError"])[0][:200]
            raise ValueError(
                f"cannot load the database driver of the optuna storage {redact(url)!r}: {reason}"
            ) from None
        except Exception as e:  # SQLAlchemy raises many types (OperationalError, ArgumentError, ...) for one problem
            if attempt + 1 < attempts:
                time.sleep(0.1 * 2**attempt)
                continue
            reason = str(e).strip().splitlines()[0][:200]
            raise ValueError(f"cannot open the optuna storage {redact(url)!r} ({reason}); check the URL and that the "
                             "database server is reachable, or leave search.optuna.storage unset for SQLite in the "
                             "run directory") from None  # fmt: skip
    raise AssertionError("unreachable")


class OptunaSearch(RefinementSearch):
    """A worker of a shared optuna study; outputs are written like the refinement loop's."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        opt = self.cfg.optuna
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # nas-search prints its own line per trial
        self.url = opt.storage or f"sqlite:///{(self.out / 'optuna.db').resolve()}"
        self._workers: MachineWorkers | None = None
        # Workers started together must not propose the same sequence: the process id joins the seed.
        sampler = make_sampler(opt.sampler, self.cfg.seed * 100_003 + os.getpid() % 100_003)
        self.study, created = self._open_study(sampler)
        if created:  # only the worker that created the study sets it up
            self.study.set_user_attr("settings", self.settings())
            for arch in {a.key(): a for a in (self.space.largest(), self.space.smallest())}.values():
                self.study.enqueue_trial(self._params(arch))  # the extremes span the hypervolume's bounds
        self.claims = Claims(self.url, opt.study_name)
        self.claims.backfill({canonical_key(t.user_attrs["key"]): t.number for t in self.measured_trials()})
        saved = self.study.user_attrs.get("settings")
        if saved is not None and _without_storage(saved) != _without_storage(self.settings()):
            raise ValueError(f"study {opt.study_name!r} in {self.url} was created with other settings (objectives, "
                             "space, supernet or measurement); use another study_name")  # fmt: skip

    def _open_study(self, sampler: optuna.samplers.BaseSampler) -> tuple[optuna.Study, bool]:
        """(the study, whether this worker created it): of workers starting together, one creates the study and the
        others load it."""
        directions = ["maximize" if o.direction == "max" else "minimize" for o in self.objectives]
        opt = self.cfg.optuna
        storage = open_storage(self.url, opt.heartbeat_interval, opt.grace_period)
        for attempt in range(5):
            try:
                try:
                    study = optuna.create_study(
                        storage=storage, study_name=opt.study_name, directions=directions, sampler=sampler
                    )
                    return study, True
                except optuna.exceptions.DuplicatedStudyError:
                    return optuna.load_study(study_name=opt.study_name, storage=storage, sampler=sampler), False
            except (SQLAlchemyError, KeyError) as e:  # the creator's insert is not visible yet: look again
                if attempt == 4:
                    reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                    raise ValueError(f"cannot create or load study {opt.study_name!r} in {redact(self.url)!r} "
                                     f"({reason})") from None  # fmt: skip
                time.sleep(0.2 * 2**attempt)
        raise AssertionError("unreachable")

    # ---- arch <-> trial ----------------------------------------------------------------------------------------------

    def _params(self, arch: Arch) -> dict[str, Any]:
        p: dict[str, Any] = {"depth": arch.depth, "embed_dim": arch.embed_dim, "a_bits": arch.a_bits}
        for i in range(arch.depth):
            p |= {
                f"num_heads_{i}": arch.num_heads[i],
                f"mlp_ratio_{i}": arch.mlp_ratio[i],
                f"w_bits_{i}": arch.w_bits[i],
            }
        return p

    def suggest(self, trial: optuna.Trial) -> Arch:
        """Define-by-run: per-layer choices are suggested only for active layers, so no gene is ever inactive."""
        s = self.space
        depth = trial.suggest_categorical("depth", list(s.depth))
        layers = [(trial.suggest_categorical(f"num_heads_{i}", list(s.num_heads)),
                   trial.suggest_categorical(f"mlp_ratio_{i}", list(s.mlp_ratio)),
                   trial.suggest_categorical(f"w_bits_{i}", list(s.w_bits))) for i in range(depth)]  # fmt: skip
        h, r, w = zip(*layers, strict=True)
        return Arch(depth, trial.suggest_categorical("embed_dim", list(s.embed_dim)), h, r, w,
                    trial.suggest_categorical("a_bits", list(s.a_bits)))  # fmt: skip

    def reference_rows(self) -> list[dict[str, str]]:
        """The first `initial` measured archs (the extremes were enqueued first) bound the hypervolume."""
        rows = sorted(self.table.rows.values(), key=lambda r: int(r["iteration"]))
        return rows[: self.cfg.initial]

    # ---- the worker loop -------------------------------------------------------------------------------------------

    def measured_trials(self) -> list[optuna.trial.FrozenTrial]:
        """Complete trials that measured a new arch (not answered from the study), in trial order."""
        done = self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        return [t for t in done if "row" in t.user_attrs and not t.user_attrs.get("repeat")]

    def objective(self, trial: optuna.Trial) -> list[float]:
        """One trial: suggest an arch, measure it (or answer from the study if any worker measured it already)."""
        arch = self.suggest(trial)
        trial.set_user_attr("key", arch.key())  # claimed at once: other workers see it while it is measured
        # keys as today's format writes them: a study begun before keys held FFN widths continues
        known = {canonical_key(t.user_attrs["key"]): t.user_attrs["row"] for t in self.measured_trials()}
        row = known.get(arch.key())
        if row is None:
            # A heartbeat before the claim: a worker that dies holding a claim always has one, so its trial goes
            # stale and is failed (optuna ignores running trials that never beat; its heartbeat thread starts with
            # the trial, racing this code).
            self.study._storage.record_heartbeat(trial._trial_id)
            # An atomic claim in the database (search/claims.py): no two workers measure one arch, and no more than
            # `budget` archs are ever claimed, however the workers interleave.
            verdict = self.claims.claim(arch.key(), trial.number, self.cfg.budget, self._failed)
            if verdict == BUDGET:
                if self._claims_unfinished():
                    # A claim may belong to a dead worker: its trial fails by the heartbeat (at the next trial's
                    # start), its arch is enqueued again, and this worker measures it. Until then, poll.
                    time.sleep(min(5.0, float(self.cfg.optuna.heartbeat_interval)))
                    raise optuna.TrialPruned("the budget is claimed; waiting for the running trials")
                self.study.stop()
                raise optuna.TrialPruned("the budget is claimed")
            if verdict == TAKEN:
                raise optuna.TrialPruned("another worker measures this arch")
        self._repeats = self._repeats + 1 if row is not None else 0
        if row is None:
            self._share_cores()
            try:
                row = {**self.evaluator.evaluate(arch), **arch_costs(arch, self.model_config).to_dict()}
            except Exception as e:  # a deterministic error must not crash every worker that draws this arch
                raise self._failure(trial, arch, e) from e
        violations = [float(c.violation(np.asarray(row[c.objective.column]))) for c in self.constraints]
        for name, value in (("arch", arch.to_dict()), ("row", row), ("repeat", self._repeats > 0)):
            trial.set_user_attr(name, value)
        for c, v in zip(self.constraints, violations, strict=True):
            trial.set_constraint(str(c), v)  # <= 0 where satisfied, as the samplers expect
        if not self._repeats:
            self.log(f"nas-search: trial {trial.number}: {len(known) + 1}/{self.cfg.budget} archs measured, "
                     + ", ".join(f"{o.name}={row[o.column]:.4g}" for o in self.objectives))  # fmt: skip
        return [float(row[o.column]) for o in self.objectives]

    def _share_cores(self) -> None:
        """Score accuracy on this worker's share of the machine's cores (search/machine_workers.py)."""
        n = self._workers.threads() if self._workers is not None else None
        if n is not None and n != torch.get_num_threads():
            torch.set_num_threads(n)
            self.log(f"nas-search: {self._workers.count()} workers on this machine: {n} torch thread(s) each")

    def _failure(self, trial: optuna.Trial, arch: Arch, error: Exception) -> ArchFailed:
        """Record a failed evaluation on its trial; give the arch up at its `MAX_FAILURES`-th failure."""
        text = (f"{type(error).__name__}: {error}".splitlines() or [type(error).__name__])[0][:300]
        failed = self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))
        n = 1 + sum(t.user_attrs.get("key") == arch.key() and "error" in t.user_attrs for t in failed)
        trial.set_user_attr("error", text)
        if n >= MAX_FAILURES:
            trial.set_user_attr("given_up", True)
        then = "given up: recorded as failed, its budget slot spent" if n >= MAX_FAILURES else "released for a retry"
        self.log(f"nas-search: trial {trial.number}: {arch.key()} failed ({text}); failure {n} of {MAX_FAILURES}, "
                 f"{then}")  # fmt: skip
        return ArchFailed(text)

    def failed_archs(self) -> dict[str, str]:
        """The archs given up, with their last error."""
        failed = self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))
        return {t.user_attrs["key"]: t.user_attrs["error"] for t in failed if t.user_attrs.get("given_up")}

    def _failed(self, trials) -> set[int]:
        """Which of the trial numbers `trials` failed and are not given up: their claims are released (optuna fails
        a dead worker's trial by its heartbeat; an evaluation error fails it here)."""
        failed = self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))
        return {t.number for t in failed if not t.user_attrs.get("given_up")} & set(trials)

    def _claims_unfinished(self) -> bool:
        """Whether some claimed arch's trial is still running (its worker measures it, or died doing so)."""
        running = self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        return bool(self.claims.trials() & {t.number for t in running})

    def _stop_at_budget(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        done = len(self.measured_trials()) >= self.cfg.budget
        # Proposals keep repeating measured archs: stop, unless a dead worker's arch may still come back
        dry = self._repeats >= MAX_REPEATS and not self._claims_unfinished()
        if done or dry:
            study.stop()

    def run(self) -> dict[str, Any]:
        start, self._repeats = time.perf_counter(), 0
        n = len(self.measured_trials())
        where = redact(self.url)
        self.log(f"nas-search: optuna study {self.cfg.optuna.study_name!r} in {where}: {n} archs measured")
        if n < self.cfg.budget:
            threads = torch.get_num_threads()
            try:
                with MachineWorkers() as self._workers:
                    # optimize (not ask/tell): optuna records this worker's heartbeats and fails a dead worker's trial
                    self.study.optimize(self.objective, callbacks=[self._stop_at_budget], catch=(ArchFailed,))
            finally:
                self._workers = None
                torch.set_num_threads(threads)
        self.sync_table()
        last = max((int(r["iteration"]) for r in self.table.rows.values()), default=0)
        self._record(last, {"backend": "optuna", "sampler": self.cfg.optuna.sampler, "storage": where})
        self.state["timing"] = {"last_run_seconds": time.perf_counter() - start}
        self.state["failed_archs"] = self.failed_archs()
        write_outputs(self)
        return self.state

    def sync_table(self) -> None:
        """Rewrite evaluations.csv from the study (all workers' measurements); iteration = trial number."""
        path = self.out / TABLE_NAME
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.unlink(missing_ok=True)
        table = MeasurementTable(tmp, self.columns)
        for t in self.measured_trials():
            arch = Arch.from_dict(t.user_attrs["arch"])
            row = {"key": arch.key(), "genes": " ".join(map(str, self.space.encode(arch))), "iteration": t.number,
                   **{c: t.user_attrs["row"][c] for c in self.columns if c in t.user_attrs["row"]}}  # fmt: skip
            row.update({f"{p}_{q.column}": "" for q in self.measured for p in ("pred", "std")})
            if row["key"] not in table:
                table.append(row)
        os.replace(tmp, path)
        self.table = MeasurementTable(path, self.columns)


def _without_storage(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings without the storage URL: workers may spell the same database differently (host names, driver)."""
    search = {**settings.get("search", {})}
    search["optuna"] = {k: v for k, v in search.get("optuna", {}).items() if k != "storage"}
    return current_reference_keys({**settings, "search": search})  # a study begun before keys held FFN widths too
