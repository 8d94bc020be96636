"""Training curves: merge the per-attempt CSV logs of a run (one per resume) and plot them."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: CI and servers have no display
import matplotlib.pyplot as plt


def merge_metrics(log_root: Path, out_csv: Path) -> list[dict[str, float]]:
    """Rows of every `logs/version_*/metrics.csv` under `log_root`, later attempts winning per (step, key)."""
    merged: dict[tuple[int, str], float] = {}
    epochs: dict[int, float] = {}
    versions = sorted(log_root.glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[-1]))
    for path in versions:
        with path.open() as f:
            for row in csv.DictReader(f):
                step = int(float(row["step"]))
                for k, v in row.items():
                    if k not in ("step", "epoch") and v not in ("", None):
                        merged[(step, k)] = float(v)
                if row.get("epoch"):
                    epochs[step] = float(row["epoch"])
    keys = sorted({k for _, k in merged})
    steps = sorted({s for s, _ in merged})
    rows = [
        {"step": s, "epoch": epochs.get(s, math.nan), **{k: merged.get((s, k), math.nan) for k in keys}} for s in steps
    ]
    with out_csv.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["step", "epoch", *keys])
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
    return rows


def plot_curves(rows: list[dict[str, float]], metric: str, out_png: Path, title: str = "") -> None:
    """Training loss (left) and the validation metric per reference arch (right) against the optimizer step."""
    fig, (ax_l, ax_r) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("train/loss", "train/ce_largest", "train/ce_sampled"):
        pts = [(r["step"], r[key]) for r in rows if not math.isnan(r.get(key, math.nan))]
        if pts:
            ax_l.plot(*zip(*pts, strict=True), label=key, lw=1)
    ax_l.set(xlabel="step", ylabel="loss", title="training loss")
    ax_l.legend()
    val_keys = sorted({k for r in rows for k in r if k.startswith(f"val/{metric}/")})
    for key in val_keys:
        pts = [(r["step"], r[key]) for r in rows if not math.isnan(r.get(key, math.nan))]
        if pts:
            ax_r.plot(*zip(*pts, strict=True), marker="o", label=key.split("/")[-1], lw=2 if "mean" in key else 1)
    ax_r.set(xlabel="step", ylabel=f"validation {metric}", title="validation, per reference arch")
    ax_r.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
