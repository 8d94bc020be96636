"""The refinement loop: measure a batch -> refit predictors -> optimise on them -> pick the next batch -> repeat.

    iteration 0   measure the initial batch (largest, smallest, Latin-hypercube sample)
    iteration k   fit one predictor per measured objective on the rows of iterations < k;
                  run the algorithm on the predictors (`n_candidates` evaluations);
                  from everything it evaluated, minus what is already measured, take `batch_size` archs by
                  non-dominated rank and crowding of their optimistic predictions (mean - kappa·std);
                  measure them (each row lands in evaluations.csv as soon as it is measured)

Only measured values make the reported front. Iteration k depends only on the rows of iterations < k and seeds
derived from (seed, k), so an interrupted run recomputes the same batch and measures only what is missing.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from predictors.measure import candidate_archs, current_reference_keys
from predictors.table import MeasurementTable, writer_lock
from search.algorithms import build_algorithm, run_algorithm
from search.config import SearchConfig
from search.evaluators import Evaluator
from search.front import HVReference, pareto_indices, select_batch
from search.objectives import Constraint, Objective, resolve_constraints, resolve_objectives
from search.problem import SurrogateProblem
from search.report import write_outputs
from search.surrogate import Surrogate
from supernet.arch import Arch
from supernet.config import ModelConfig
from supernet.costs import arch_costs
from supernet.space import SearchSpace

TABLE_NAME = "evaluations.csv"
STATE_NAME = "search.json"
COST_COLUMNS = ("params", "macs", "bitops", "bytes")


def derived_seed(seed: int, iteration: int) -> int:
    """A 32-bit seed for (seed, iteration), as pymoo and numpy want."""
    return int(np.random.SeedSequence([seed, iteration]).generate_state(1)[0])


class RefinementSearch:
    """One search run in `out`: evaluations.csv (the cache), search.json (state and history), outputs and plots."""

    def __init__(
        self,
        space: SearchSpace,
        model_config: ModelConfig,
        evaluator: Evaluator,
        cfg: SearchConfig,
        out: str | Path,
        log: Callable[[str], None] | None = None,
        provenance: dict[str, Any] | None = None,
        progress: bool = True,
    ) -> None:
        self.space, self.model_config, self.evaluator, self.cfg = space, model_config, evaluator, cfg
        self.out, self.log = Path(out), log or (lambda s: print(s, flush=True))
        self.provenance, self.progress = provenance or {}, progress
        task = model_config.task
        self.objectives: list[Objective] = resolve_objectives(cfg.objectives, task)
        self.constraints: list[Constraint] = resolve_constraints(cfg.constraints, task)
        self.quantities = list(self.objectives)
        for c in self.constraints:
            if c.objective not in self.quantities:
                self.quantities.append(c.objective)
        self.measured = [q for q in self.quantities if q.kind == "measured"]
        missing = [q.column for q in self.measured if q.column not in evaluator.columns]
        if missing:
            raise ValueError(f"the evaluator measures {evaluator.columns}, not {missing}")
        self._check_analytic_constraints()
        self._check_settings()
        self.columns = ["key", "genes", "iteration", *evaluator.columns]
        self.columns += [c for c in COST_COLUMNS if c not in evaluator.columns]
        self.columns += [f"{p}_{q.column}" for q in self.measured for p in ("pred", "std")]
        self.out.mkdir(parents=True, exist_ok=True)
        self.state = self._load_state()
        self.table = MeasurementTable(self.out / TABLE_NAME, self.columns)

    # ---- checks and state -----------------------------------------------------------------------------------------

    def _check_analytic_constraints(self) -> None:
        """Analytic bounds are exact: the smallest arch has the least of every cost, the largest the most."""
        for c in self.constraints:
            if c.objective.kind != "analytic":
                continue
            arch = self.space.smallest() if c.kind == "max" else self.space.largest()
            best = getattr(arch_costs(arch, self.model_config), c.objective.column)
            if not c.satisfied(np.asarray([best]))[0]:
                raise ValueError(f"constraint {c} is infeasible: the best achievable {c.objective.name} in space "
                                 f"'{self.space.name}' is {best:g} ({arch.key()})")  # fmt: skip

    def _check_settings(self) -> None:
        """Settings that would otherwise fail only after the initial batch was measured."""
        if self.cfg.backend == "pymoo":
            build_algorithm(self.cfg.algorithm, self.space, len(self.objectives), self.cfg.pop_size)
        hv = self.cfg.hv
        if (hv.ideal is None) != (hv.nadir is None):
            raise ValueError("search.hv: give both ideal and nadir, or neither (then the initial batch sets them)")
        for name in ("ideal", "nadir"):
            v = getattr(hv, name)
            if v is not None and len(v) != len(self.objectives):
                raise ValueError(f"search.hv.{name}={list(v)} needs one value per objective {self.cfg.objectives}")
        if hv.ideal is not None and any(a == b for a, b in zip(hv.ideal, hv.nadir, strict=True)):
            raise ValueError(f"search.hv: ideal {list(hv.ideal)} and nadir {list(hv.nadir)} must differ everywhere")

    def settings(self) -> dict[str, Any]:
        return {"search": self.cfg.resume_key(), "space_fingerprint": self.space.fingerprint(),
                "model": self.model_config.to_dict(), "evaluator": self.evaluator.settings()}  # fmt: skip

    def _load_state(self) -> dict[str, Any]:
        path = self.out / STATE_NAME
        if not path.is_file():
            if (self.out / TABLE_NAME).is_file():
                raise ValueError(f"{self.out / TABLE_NAME} has no {STATE_NAME} beside it; move it away to start over")
            return {"settings": self.settings(), "iterations": []}
        state = json.loads(path.read_text())
        saved, now = current_reference_keys(state.get("settings", {})), self.settings()
        for key in now:
            if saved.get(key) != now[key]:
                diff = _first_difference(saved.get(key), now[key])
                raise ValueError(f"{self.out} holds a search with other settings ({key}: {diff}); use another out= "
                                 "directory to start a new search, or the same settings to continue it")  # fmt: skip
        return state

    def _save_state(self) -> None:
        path = self.out / STATE_NAME
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.state, indent=2, default=float) + "\n")
        os.replace(tmp, path)

    # ---- rows and objectives --------------------------------------------------------------------------------------

    def archs_and_rows(self, before: int | None = None) -> tuple[list[Arch], list[dict[str, str]]]:
        """Measured archs and their rows (those of iterations < `before` when given), in table order."""
        rows = [r for r in self.table.rows.values() if before is None or int(r["iteration"]) < before]
        return [self.space.decode([int(g) for g in r["genes"].split()]) for r in rows], rows

    def minimised(self, rows: list[dict[str, str]], quantities: list[Objective] | None = None) -> np.ndarray:
        """(n, k) measured values of `quantities` (default: the objectives), sign-flipped into minimisation form."""
        qs = self.objectives if quantities is None else quantities
        return np.asarray([[float(r[q.column]) * q.sign for q in qs] for r in rows], dtype=float).reshape(-1, len(qs))

    def feasible(self, rows: list[dict[str, str]]) -> np.ndarray:
        ok = np.ones(len(rows), dtype=bool)
        for c in self.constraints:
            ok &= c.satisfied(np.asarray([float(r[c.objective.column]) for r in rows]))
        return ok

    def reference_rows(self) -> list[dict[str, str]]:
        """Rows whose range normalises the hypervolume: the initial batch (it holds the largest and smallest arch)."""
        return self.archs_and_rows(before=1)[1]

    def hv_reference(self) -> HVReference:
        if "hv_reference" not in self.state:
            hv = self.cfg.hv
            if hv.ideal is not None and hv.nadir is not None:
                signs = np.asarray([o.sign for o in self.objectives])
                lo, hi = np.asarray(hv.ideal) * signs, np.asarray(hv.nadir) * signs
                ref = HVReference(tuple(np.minimum(lo, hi)), tuple(np.maximum(lo, hi)), hv.margin)
            else:
                ref = HVReference.from_points(self.minimised(self.reference_rows()), hv.margin)
            self.state["hv_reference"] = ref.to_dict()
        return HVReference(**{k: tuple(v) if isinstance(v, list) else v for k, v in self.state["hv_reference"].items()})

    def hypervolume(self, rows: list[dict[str, str]]) -> tuple[float, np.ndarray]:
        """HV of the measured feasible front of `rows`, and that front's indices."""
        F = self.minimised(rows)
        front = pareto_indices(F, self.feasible(rows))
        return self.hv_reference().hypervolume(F[front]), front

    def import_rows(self, rows: list[dict[str, str]]) -> None:
        """Take already measured rows (e.g. nas-measure's table, same supernet and settings) as iteration 0 of this
        search. They are copied when `run` starts, under the table's writer lock, and only while no iteration has
        been recorded; a copy cut short by an interruption is completed by the next run."""
        self._pending_import = rows

    def _import_pending(self) -> None:
        rows = getattr(self, "_pending_import", [])
        if not rows or self.state["iterations"] or self.state.get("import_done"):
            return
        for r in rows:
            arch = self.space.decode([int(g) for g in r["genes"].split()])
            if arch.key() in self.table:
                continue
            row = {"key": arch.key(), "genes": r["genes"], "iteration": 0, **{c: r[c] for c in self.evaluator.columns}}
            for c, v in arch_costs(arch, self.model_config).to_dict().items():
                row.setdefault(c, v)
            row.update({f"{p}_{q.column}": "" for q in self.measured for p in ("pred", "std")})
            self.table.append(row)
        # Counted once all are in: a run killed while copying has no count yet and copies the rest next time.
        self.state["imported"] = len(rows)
        self.state["import_done"] = True
        self._save_state()

    # ---- one iteration ---------------------------------------------------------------------------------------------

    def measure(self, archs: list[Arch], iteration: int, predicted: dict[str, tuple[np.ndarray, np.ndarray]]) -> float:
        """Measure the archs of `archs` not yet in the table; returns the seconds spent."""
        todo = [(i, a) for i, a in enumerate(archs) if a.key() not in self.table]
        t0 = time.perf_counter()
        for i, arch in tqdm(todo, desc=f"iteration {iteration}: measuring", unit="arch", leave=False,
                            disable=len(todo) < 2 or not self.progress):  # fmt: skip
            row: dict[str, Any] = {"key": arch.key(), "genes": " ".join(map(str, self.space.encode(arch))),
                                   "iteration": iteration, **self.evaluator.evaluate(arch)}  # fmt: skip
            for c, v in arch_costs(arch, self.model_config).to_dict().items():
                row.setdefault(c, v)
            for q in self.measured:
                mean, std = predicted.get(q.name, (None, None))
                row[f"pred_{q.column}"] = "" if mean is None or not np.isfinite(mean[i]) else f"{mean[i]:.6g}"
                row[f"std_{q.column}"] = "" if std is None or np.isnan(std[i]) else f"{std[i]:.6g}"
            self.table.append(row)
        return time.perf_counter() - t0

    def propose(self, iteration: int, n: int) -> tuple[list[Arch], dict[str, Any]]:
        """Fit on the rows of earlier iterations, optimise on the predictors, choose `n` unmeasured archs."""
        archs, rows = self.archs_and_rows(before=iteration)
        t0 = time.perf_counter()
        surrogate = Surrogate(self.space, self.model_config, self.quantities, self.cfg.predictor.candidates,
                              self.cfg.predictor.k_folds, seed=self.cfg.seed)  # fmt: skip
        fit_info = surrogate.fit(archs, rows)
        t1 = time.perf_counter()
        problem = SurrogateProblem(self.space, surrogate, self.objectives, self.constraints)
        run_algorithm(problem, self.cfg.algorithm, self.space, self.cfg.n_candidates, self.cfg.pop_size,
                      derived_seed(self.cfg.seed, iteration))  # fmt: skip
        t2 = time.perf_counter()
        G, mean, std = problem.evaluated()
        signs = np.asarray([q.sign for q in self.quantities])
        # The predicted front is over every candidate the optimiser evaluated, measured ones included (over the
        # unmeasured ones only it would sit behind the measured front by construction).
        all_violation = self._violation(mean)
        pred_front = pareto_indices(mean[:, problem.obj_idx] * signs[problem.obj_idx],
                                    None if all_violation is None else (all_violation <= 0).all(axis=1))  # fmt: skip
        predicted_front = [self._predicted_row(G[i], mean[i]) for i in pred_front]
        measured = {tuple(self.space.encode(a)) for a in archs}
        fresh = np.asarray([tuple(g) not in measured for g in G.tolist()], dtype=bool)
        G, mean, std = G[fresh], mean[fresh], std[fresh]
        optimistic = mean * signs - self.cfg.kappa * np.nan_to_num(std, nan=0.0)
        violation = self._violation(mean)
        chosen = select_batch(optimistic[:, problem.obj_idx], violation, n)
        self._check_measured_constraints(rows, mean)
        info = {"fit_seconds": t1 - t0, "search_seconds": t2 - t1, "candidates_evaluated": problem.n_evaluated,
                "candidates_distinct": int(fresh.size), "predictors": fit_info,
                "predicted_front": predicted_front}  # fmt: skip
        chosen_archs = [self.space.decode(G[i]) for i in chosen]
        predicted = {q.name: (mean[chosen, j], std[chosen, j]) for j, q in enumerate(self.quantities)}
        info["_predicted"] = predicted
        return chosen_archs, info

    def _violation(self, mean: np.ndarray) -> np.ndarray | None:
        if not self.constraints:
            return None
        names = [q.name for q in self.quantities]
        return np.column_stack([c.violation(mean[:, names.index(c.objective.name)]) for c in self.constraints])

    def _check_measured_constraints(self, rows: list[dict[str, str]], mean: np.ndarray) -> None:
        """A constraint that no measured arch meets and no candidate is predicted to meet is infeasible."""
        names = [q.name for q in self.quantities]
        for c in self.constraints:
            measured = np.asarray([float(r[c.objective.column]) for r in rows])
            predicted = mean[:, names.index(c.objective.name)]
            if c.satisfied(measured).any() or c.satisfied(predicted).any():
                continue
            best = measured.min() if c.kind == "max" else measured.max()
            raise ValueError(f"constraint {c} looks infeasible: no measured arch meets it and none is predicted to; "
                             f"the best measured {c.objective.name} is {best:g}")  # fmt: skip

    def _predicted_row(self, genes: np.ndarray, mean: np.ndarray) -> dict[str, Any]:
        arch = self.space.decode(genes)
        return {"key": arch.key(), **{q.column: float(v) for q, v in zip(self.quantities, mean, strict=True)}}

    # ---- the loop --------------------------------------------------------------------------------------------------

    @property
    def imported(self) -> int:
        """Rows reused from nas-measure (iteration 0): they do not count toward the budget."""
        return int(self.state.get("imported", 0))

    def run(self) -> dict[str, Any]:
        """Run (or continue) the search until `budget` real evaluations of its own (rows reused from nas-measure
        come on top); returns the final state."""
        with writer_lock(self.out / TABLE_NAME, "nas-search"):
            return self._run()

    def _run(self) -> dict[str, Any]:
        cfg, start = self.cfg, time.perf_counter()
        if self.state["iterations"]:
            self.log(f"nas-search: continuing in {self.out}: {len(self.table)} evaluations already measured")
        if not (self.out / STATE_NAME).is_file():
            # Written before the first row lands in evaluations.csv, so that a run killed at any point (its first
            # batch included) has its settings on disk and resumes with every row it measured.
            self._save_state()
        self._import_pending()
        initial = candidate_archs(self.space, min(cfg.initial, cfg.budget), seed=cfg.seed)
        before = len(self.table)
        seconds = self.measure(initial, 0, {})
        if len(self.table) > before or not self._recorded(0):  # a continued run keeps iteration 0's figures
            self._record(0, {"measure_seconds": seconds})
        iteration = 1
        while True:
            _, before = self.archs_and_rows(before=iteration)
            n = min(cfg.batch_size, cfg.budget - (len(before) - self.imported))
            done_here = sum(1 for r in self.table.rows.values() if int(r["iteration"]) == iteration)
            if n <= 0:
                break
            if done_here < n or not self._recorded(iteration):
                archs, info = self.propose(iteration, n)
                if not archs:
                    self.log("nas-search: the optimiser found no unmeasured candidate; stopping early")
                    break
                predicted = info.pop("_predicted")
                info["measure_seconds"] = self.measure(archs, iteration, predicted)
                self._record(iteration, info)
            iteration += 1
        self.state["timing"] = {"last_run_seconds": time.perf_counter() - start}
        self._save_state()
        write_outputs(self)
        return self.state

    def _recorded(self, iteration: int) -> bool:
        return any(e["iteration"] == iteration for e in self.state["iterations"])

    def _record(self, iteration: int, info: dict[str, Any]) -> None:
        """Store the iteration's figures in search.json and print its progress line."""
        _, rows = self.archs_and_rows(before=iteration + 1)
        hv, front = self.hypervolume(rows)
        entry = {
            "iteration": iteration,
            "n_evaluations": len(rows),
            "hypervolume": hv,
            "front_size": len(front),
            **info,
        }
        its = self.state["iterations"]
        its[:] = sorted([e for e in its if e["iteration"] != iteration] + [entry], key=lambda e: e["iteration"])
        self.state.update({"budget": self.cfg.budget, "n_evaluations": len(self.table), **self.provenance})
        self._save_state()
        preds = ", ".join(f"{k}={v['estimator']} (τ {v['cv_kendall_tau']:.2f})"
                          for k, v in info.get("predictors", {}).items())  # fmt: skip
        count = f"{len(rows) - self.imported}/{self.cfg.budget} evaluations"
        if self.imported:
            count += f" (+{self.imported} reused)"
        self.log(f"nas-search: iteration {iteration}: {count}, HV {hv:.4f}, "
                 f"front {len(front)} archs" + (f", predictors {preds}" if preds else ""))  # fmt: skip


def _first_difference(saved: Any, now: Any) -> str:
    if isinstance(saved, dict) and isinstance(now, dict):
        for k in sorted(set(saved) | set(now)):
            if saved.get(k) != now.get(k):
                return f"{k} was {saved.get(k)!r}, now {now.get(k)!r}"
    return f"was {saved!r}, now {now!r}"
