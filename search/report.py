"""Outputs of a search run: pareto.csv, pareto.png and hypervolume.png (search.json is kept by the loop).

* pareto.csv: the measured, feasible, non-dominated rows of evaluations.csv (same named columns, plus `rank` along
  the first objective), so every front point carries its genes, measured and predicted values and iteration.
* pareto.png: every evaluated arch (colour = iteration), the measured front highlighted, the last predicted front.
  With 3+ objectives, one panel per objective pair with the first objective.
* hypervolume.png: hypervolume of the measured front against the number of real evaluations.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np

from search.front import pareto_indices

matplotlib.use("Agg")
import matplotlib.pyplot as plt

if TYPE_CHECKING:
    from search.loop import RefinementSearch


def hypervolume_curve(search: RefinementSearch) -> list[tuple[int, float]]:
    """(number of evaluations, HV of the measured front) after every evaluation, in measurement order."""
    _, rows = search.archs_and_rows()
    ref = search.hv_reference()
    F, ok = search.minimised(rows), search.feasible(rows)
    curve = []
    for n in range(1, len(rows) + 1):
        front = pareto_indices(F[:n], ok[:n])
        curve.append((n, ref.hypervolume(F[front])))
    return curve


def write_pareto_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["rank", *columns])
        w.writerows([i, *(r[c] for c in columns)] for i, r in enumerate(rows))


def plot_pareto(search: RefinementSearch, path: Path) -> None:
    _, rows = search.archs_and_rows()
    objs = search.objectives
    values = np.asarray([[float(r[o.column]) for o in objs] for r in rows])
    iters = np.asarray([int(r["iteration"]) for r in rows])
    _, front = search.hypervolume(rows)
    predicted = (search.state["iterations"][-1].get("predicted_front") or []) if search.state["iterations"] else []
    pairs = [(0, j) for j in range(1, len(objs))]
    # With 3+ objectives a panel shows a projection of the front, which a connecting line would make zig-zag.
    line = "-" if len(objs) == 2 else ""
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.4 * len(pairs), 4.4), squeeze=False)
    for ax, (i, j) in zip(axes[0], pairs, strict=True):
        sc = ax.scatter(values[:, j], values[:, i], c=iters, cmap="viridis", s=14, alpha=0.7, label="evaluated")
        if predicted:
            pv = np.asarray([[p[objs[i].column], p[objs[j].column]] for p in predicted])
            order = np.argsort(pv[:, 1])
            ax.plot(pv[order, 1], pv[order, 0], "x--" if line else "x", color="tab:orange", ms=3, lw=0.8, alpha=0.6,
                    label="predicted front (all candidates)")  # fmt: skip
        fv = values[front]
        order = np.argsort(fv[:, j])
        ax.plot(fv[order, j], fv[order, i], "o" + line, color="tab:red", mfc="none", ms=7, lw=1.2,
                label="measured front")  # fmt: skip
        if values[:, j].min() > 0 and values[:, j].max() / values[:, j].min() > 20:
            ax.set_xscale("log")  # costs span orders of magnitude across a space
        ax.set(xlabel=objs[j].label, ylabel=objs[i].label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.colorbar(sc, ax=axes[0].tolist(), label="iteration")
    n = len(rows)
    fig.suptitle(f"{n} measured archs, {len(front)} on the measured front", fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_hypervolume(curve: list[tuple[int, float]], iterations: list[dict[str, Any]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.4, 3.8))
    if curve:
        n, hv = zip(*curve, strict=True)
        ax.plot(n, hv, lw=1.5)
    for e in iterations:
        ax.axvline(e["n_evaluations"], color="grey", lw=0.5, ls=":")
    ax.set(xlabel="real evaluations", ylabel="hypervolume (normalised objectives)",
           title="measured-front hypervolume (dotted: iteration ends)")  # fmt: skip
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(search: RefinementSearch) -> None:
    """pareto.csv, pareto.png, hypervolume.png, and the HV curve and final front summary in search.json."""
    _, rows = search.archs_and_rows()
    hv, front = search.hypervolume(rows)
    write_pareto_csv(search.out / "pareto.csv", search.columns, [rows[i] for i in front])
    curve = hypervolume_curve(search)
    search.state["hypervolume_curve"] = curve
    search.state["final"] = {"n_evaluations": len(rows), "hypervolume": hv, "front_size": len(front),
                             "front": [rows[i]["key"] for i in front]}  # fmt: skip
    search._save_state()
    plot_pareto(search, search.out / "pareto.png")
    plot_hypervolume(curve, search.state["iterations"], search.out / "hypervolume.png")
