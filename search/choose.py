"""Choosing one subnet from a search run's measured Pareto front (`pareto.csv`), for `nas-export`.

Ways to choose (`select`):
* `knee`   the front point closest to the ideal point once every objective is scaled to [0, 1] over the front (the
           balanced trade-off); `where` filters the front first
* `index`  row `index` of pareto.csv (0-based, as its `rank` column)
* `best`   the best front point for one objective among those meeting `where`, e.g. `best=accuracy` with
           `where={latency: {max: 1.0}}` ("most accurate with latency <= 1 ms") or `best=bytes` with
           `where={accuracy: {min: 84}}` ("smallest with accuracy >= 84 %")
A rule no front point satisfies is an error naming the closest point.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from search.objectives import OBJECTIVES, Objective, resolve_constraints

SELECTIONS = ("knee", "index", "best")


def read_front(search_dir: str | Path) -> tuple[list[dict[str, str]], list[Objective], dict[str, Any]]:
    """(pareto.csv rows, the run's objectives, search.json) of a nas-search output directory."""
    d = Path(search_dir)
    if not (d / "pareto.csv").is_file() or not (d / "search.json").is_file():
        raise ValueError(f"no search results in {d} (pareto.csv, search.json): run nas-search first, or set search=")
    state = json.loads((d / "search.json").read_text())
    names = state["settings"]["search"]["objectives"]
    with (d / "pareto.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{d / 'pareto.csv'} is empty: the search measured no feasible arch")
    return rows, [OBJECTIVES[n] for n in names], state


def _describe(row: dict[str, str], objectives: list[Objective]) -> str:
    values = ", ".join(f"{o.name} {float(row[o.column]):.4g}" for o in objectives)
    return f"index {row['rank']} ({row['key']}: {values})"


def _closest(rows: list[dict[str, str]], where: list, objectives: list[Objective]) -> str:
    """The row that violates `where` least (relative to each bound), described."""

    def miss(r: dict[str, str]) -> float:
        return sum(max(0.0, float(c.violation(np.asarray(float(r[c.objective.column]))))) / max(abs(c.bound), 1e-12)
                   for c in where)  # fmt: skip

    return _describe(min(rows, key=miss), list(dict.fromkeys([*objectives, *(c.objective for c in where)])))


def choose(
    rows: list[dict[str, str]],
    objectives: list[Objective],
    select: str = "knee",
    index: int | None = None,
    best: str | None = None,
    where: Mapping[str, Any] | None = None,
    task: str = "image",
) -> tuple[dict[str, str], str]:
    """(the chosen pareto.csv row, a sentence saying why) for one selection rule."""
    if select not in SELECTIONS:
        raise ValueError(f"unknown select={select!r}; choose from {list(SELECTIONS)} (or give arch=<yaml>)")
    if select == "index":
        if index is None or not 0 <= int(index) < len(rows):
            raise ValueError(f"index={index} is out of range: pareto.csv has {len(rows)} rows (0..{len(rows) - 1})")
        return rows[int(index)], f"row {index} of pareto.csv"
    constraints = resolve_constraints(dict(where or {}), task)
    missing = [c.objective.column for c in constraints if c.objective.column not in rows[0]]
    if missing:
        raise ValueError(f"where= names {missing}, which pareto.csv does not record")
    ok = [r for r in rows if all(c.satisfied(np.asarray(float(r[c.objective.column]))) for c in constraints)]
    rule = " and ".join(map(str, constraints))
    if not ok:
        raise ValueError(f"no front point has {rule}; the closest is {_closest(rows, constraints, objectives)}")
    if select == "best":
        if best not in OBJECTIVES or OBJECTIVES[best].column not in rows[0]:
            raise ValueError(
                f"best={best!r} must be an objective pareto.csv records, e.g. {[o.name for o in objectives]}"
            )
        o = OBJECTIVES[best]
        row = min(ok, key=lambda r: o.sign * float(r[o.column]))
        return row, f"the {'highest' if o.direction == 'max' else 'lowest'} {o.name}" + (
            f" with {rule}" if rule else ""
        )
    F = np.asarray([[o.sign * float(r[o.column]) for o in objectives] for r in ok])
    lo, hi = F.min(axis=0), F.max(axis=0)
    dist = np.linalg.norm((F - lo) / np.where(hi > lo, hi - lo, 1.0), axis=1)
    return ok[int(np.argmin(dist))], "the knee point (closest to the ideal point, objectives scaled over the front)" + (
        f" among points with {rule}" if rule else ""
    )
