"""Objectives and constraints of a search: names, directions, and where their values come from.

An objective is either *measured* (accuracy, LM loss, latency: only a real evaluation knows it, the search predicts
it from the measurements) or *analytic* (params, MACs, BitOPs, bytes: exact for any arch from supernet/costs.py, so
never predicted). Internally every objective is minimised: `sign` is -1 for the ones to maximise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Objective:
    """One objective: `name` in configs, `column` in measurement tables, optimisation `direction`, value `kind`."""

    name: str
    column: str
    direction: str  # "min" | "max"
    kind: str  # "measured" | "analytic"
    unit: str = ""

    @property
    def sign(self) -> float:
        """Multiplier that turns the value into a quantity to minimise."""
        return -1.0 if self.direction == "max" else 1.0

    @property
    def label(self) -> str:
        arrow = "↑" if self.direction == "max" else "↓"
        return f"{self.name}{f' ({self.unit})' if self.unit else ''} {arrow}"


OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in (
        Objective("accuracy", "accuracy", "max", "measured", "%"),
        Objective("loss", "loss", "min", "measured", "nats"),
        Objective("bpc", "bpc", "min", "measured", "bits/byte"),
        Objective("latency", "latency_ms", "min", "measured", "ms"),
        Objective("params", "params", "min", "analytic"),
        Objective("macs", "macs", "min", "analytic"),
        Objective("bitops", "bitops", "min", "analytic"),
        Objective("bytes", "bytes", "min", "analytic", "B"),
    )
}
TASK_METRICS = {"image": ("accuracy",), "text": ("accuracy",), "lm": ("loss", "bpc")}


def resolve_objectives(names: Sequence[str] | str, task: str) -> list[Objective]:
    """The `Objective`s for config names; one clear error for unknown names, repeats, or a metric of another task."""
    names = [names] if isinstance(names, str) else list(names)
    if len(names) < 2:
        raise ValueError(f"objectives={names}: a multi-objective search needs at least 2; e.g. [accuracy, latency]")
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown:
        raise ValueError(f"unknown objective(s) {unknown}; valid objectives: {sorted(OBJECTIVES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"objectives={names} lists an objective twice")
    for n in names:
        _check_task(n, task)
    return [OBJECTIVES[n] for n in names]


def _check_task(name: str, task: str) -> None:
    measured = {m for metrics in TASK_METRICS.values() for m in metrics}
    if name in measured and name not in TASK_METRICS.get(task, ()):
        raise ValueError(f"objective {name!r} does not exist for model.task={task!r}; use {list(TASK_METRICS[task])}")


@dataclass(frozen=True)
class Constraint:
    """`objective <= bound` (kind "max") or `objective >= bound` (kind "min"), in the objective's own units."""

    objective: Objective
    kind: str  # "max" | "min"
    bound: float

    def violation(self, values: np.ndarray) -> np.ndarray:
        """pymoo's inequality form: <= 0 where satisfied."""
        return values - self.bound if self.kind == "max" else self.bound - values

    def satisfied(self, values: np.ndarray) -> np.ndarray:
        return self.violation(np.asarray(values, dtype=float)) <= 0

    def __str__(self) -> str:
        return f"{self.objective.name} {'<=' if self.kind == 'max' else '>='} {self.bound:g}"


def resolve_constraints(cfg: Mapping[str, Any] | None, task: str) -> list[Constraint]:
    """Constraints from a mapping like `{latency: {max: 2.0}, accuracy: {min: 80}}`."""
    if cfg is not None and not isinstance(cfg, Mapping):
        raise ValueError(f"constraints={cfg!r} must be a mapping like {{latency: {{max: 2.0}}}}")
    out: list[Constraint] = []
    for name, spec in (cfg or {}).items():
        if name not in OBJECTIVES:
            raise ValueError(f"constraint on unknown objective {name!r}; valid objectives: {sorted(OBJECTIVES)}")
        _check_task(name, task)
        objective = OBJECTIVES[name]
        if not isinstance(spec, Mapping) or not spec or set(spec) - {"max", "min"}:
            raise ValueError(f"constraint {name}={spec!r} must be a mapping with 'max' and/or 'min', e.g. {{max: 2.0}}")
        for kind, bound in spec.items():
            try:
                out.append(Constraint(objective, kind, float(bound)))
            except (TypeError, ValueError):
                raise ValueError(f"constraint {name}.{kind}={bound!r} must be a number") from None
    return out
