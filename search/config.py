"""`SearchConfig`: the typed schema of a search (Hydra fills it from conf/search.yaml; tests build it directly)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class PredictorConfig:
    candidates: list[str] = field(default_factory=lambda: ["ridge", "gbrt", "gp"])  # cross-validated each refit
    k_folds: int = 5


@dataclass
class HVConfig:
    ideal: list[float] | None = None  # normalisation bounds in objective units; None: the initial batch's range
    nadir: list[float] | None = None
    margin: float = 0.1  # reference point = nadir + margin·(nadir - ideal)


@dataclass
class OptunaConfig:
    storage: str | None = None  # None: sqlite:///<out>/optuna.db; e.g. postgresql+psycopg2://user:pw@host/db
    study_name: str = "nas-search"
    sampler: str = "nsga2"  # nsga2 | tpe | random
    heartbeat_interval: int = 30  # seconds between a worker's heartbeats
    grace_period: int = 120  # seconds without a heartbeat after which a worker's trial is failed and its arch re-queued

    def __post_init__(self) -> None:
        for name in ("heartbeat_interval", "grace_period"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"search.optuna.{name}={v!r} must be a positive integer (seconds)")
        if self.grace_period < 2 * self.heartbeat_interval:
            raise ValueError(f"search.optuna.grace_period={self.grace_period} must be at least twice "
                             f"heartbeat_interval={self.heartbeat_interval}, or a live worker whose heartbeat is late "
                             "would count as dead")  # fmt: skip


@dataclass
class SearchConfig:
    objectives: list[str] = field(default_factory=lambda: ["accuracy", "latency"])
    constraints: dict[str, dict[str, float]] = field(default_factory=dict)  # e.g. {latency: {max: 2.0}}
    backend: str = "pymoo"  # pymoo (refinement loop on predictors) | optuna (shared study of real evaluations)
    algorithm: str = "nsga2"  # nsga2 | agemoea | nsga3 | unsga3 | random
    budget: int = (
        150  # real evaluations by the search (the initial batch included; rows reused from nas-measure on top)
    )
    initial: int = 50  # first batch: largest, smallest, then a Latin-hypercube sample
    batch_size: int = 25  # real evaluations per refinement iteration
    pop_size: int = 100
    n_candidates: int = 20_000  # predictor evaluations per iteration
    kappa: float = 1.0  # optimism: rank candidates by mean - kappa·std (minimisation form) where std is known
    seed: int = 0
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    hv: HVConfig = field(default_factory=HVConfig)
    optuna: OptunaConfig = field(default_factory=OptunaConfig)

    def __post_init__(self) -> None:
        for name in ("budget", "initial", "batch_size", "pop_size", "n_candidates"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"search.{name}={v!r} must be a positive integer")
        if self.initial > self.budget:
            raise ValueError(f"search.initial={self.initial} exceeds search.budget={self.budget}; lower initial")
        if self.initial < 7:
            raise ValueError(f"search.initial={self.initial} is too few to fit predictors; use at least 7")
        if isinstance(self.kappa, bool) or not isinstance(self.kappa, int | float) or not self.kappa >= 0:
            raise ValueError(f"search.kappa={self.kappa!r} must be a number >= 0")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"search.seed={self.seed!r} must be a non-negative integer")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchConfig:
        d = dict(d)
        for name, sub in (("predictor", PredictorConfig), ("hv", HVConfig), ("optuna", OptunaConfig)):
            if isinstance(d.get(name), dict):
                try:
                    d[name] = sub(**d[name])
                except TypeError as e:
                    raise ValueError(f"bad search.{name} config: {e}") from None
        try:
            return cls(**d)
        except TypeError as e:
            raise ValueError(f"bad search config: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def resume_key(self) -> dict[str, Any]:
        """Fields that must match to continue a run (the budget may grow; timing and plotting do not matter)."""
        d = self.to_dict()
        d.pop("budget")
        for name in ("heartbeat_interval", "grace_period"):  # how workers watch each other, not what is searched
            d["optuna"].pop(name)
        if d["optuna"]["storage"]:  # recorded in search.json and the study: never with its password
            from search.database import redact

            d["optuna"]["storage"] = redact(d["optuna"]["storage"])
        return d
