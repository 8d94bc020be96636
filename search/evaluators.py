"""Real evaluations of archs for the search: the `Evaluator` interface and its two implementations.

* `SupernetEvaluator` measures an arch on the trained supernet (extracted module: task metric on the fixed
  validation subset, latency, analytic costs) with predictors/measure.py, exactly like `nas-measure`.
* `TableEvaluator` looks archs up in a measurements CSV written earlier (`nas-measure` over a whole small space):
  the ground-truth oracle of the search benchmark, and a fast real evaluator for tests.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from predictors.measure import LatencyConfig, measure_arch
from predictors.table import MeasurementTable
from supernet.arch import Arch
from supernet.model import Supernet
from supernet.runtime.kernels import KernelTable


class Evaluator(ABC):
    """Measures archs. Call order: read `columns` (fixed for the evaluator's life) -> `evaluate(arch)` any number of
    times; every call returns a value for every column."""

    columns: list[str]

    @abstractmethod
    def evaluate(self, arch: Arch) -> dict[str, float]:
        """Measured values of `arch`, one per column."""

    def settings(self) -> dict[str, Any]:
        """What the values depend on; a resumed search refuses rows measured under other settings."""
        return {}


class SupernetEvaluator(Evaluator):
    """Measures archs of a supernet: task metric on fixed batches (on `accuracy_device`), latency on `example`,
    analytic costs."""

    def __init__(
        self,
        net: Supernet,
        batches: Sequence,
        example: torch.Tensor,
        latency: LatencyConfig,
        columns: Sequence[str],
        settings: dict[str, Any] | None = None,
        kernels: KernelTable | None = None,
        accuracy_device: str = "cpu",
    ) -> None:
        self.net, self.batches, self.example, self.latency = net, batches, example, latency
        self.kernels, self.accuracy_device = kernels, accuracy_device
        self.columns = list(columns)
        self._settings = settings or {}

    def evaluate(self, arch: Arch) -> dict[str, float]:
        row = measure_arch(self.net, arch, self.batches, self.example, self.latency, self.kernels, self.accuracy_device)
        return {c: float(row[c]) for c in self.columns}

    def settings(self) -> dict[str, Any]:
        return self._settings


class TableEvaluator(Evaluator):
    """Looks archs up in a measurements table (by canonical key); an arch missing from it is an error."""

    def __init__(self, path: str | Path, columns: Sequence[str] | None = None) -> None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"no measurements table at {path}: run nas-measure over the space first")
        header = path.read_text().split("\n", 1)[0].split(",")
        self.table = MeasurementTable(path, header)
        numeric = [c for c in header if c not in ("key", "genes", "split")]
        self.columns = list(columns) if columns is not None else numeric
        missing = [c for c in self.columns if c not in header]
        if missing:
            raise ValueError(f"{path} has no column(s) {missing}; it has {numeric}")
        self.path = path
        self.calls = 0

    def evaluate(self, arch: Arch) -> dict[str, float]:
        row = self.table.rows.get(arch.key())
        if row is None:
            raise ValueError(f"arch {arch.key()} is not in {self.path}; measure the whole space first")
        self.calls += 1
        return {c: float(row[c]) for c in self.columns}

    def settings(self) -> dict[str, Any]:
        return {"table": str(self.path)}
