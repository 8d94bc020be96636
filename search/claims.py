"""Atomic arch claims for the workers of one optuna study, in the study's own database.

A worker must own an arch before it measures it, and the study must not hand out more archs than the budget. Both
are unique inserts into one table (`nas_arch_claims`): the primary key (study, arch key) makes a second claim of an
arch fail, and the unique (study, slot) with slots numbered below the budget makes the claims past the budget fail,
however the workers interleave. A claim whose trial failed (its worker died, so optuna's heartbeat marked the trial
FAIL) is released, so another worker measures that arch.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from search.database import resolve_url

_META = sa.MetaData()
# Keyed by a fixed-length digest of the arch key, with the readable key beside it in a text column: an arch key
# grows with depth (a random 30-layer arch of SmolLM-135M's shape took 735 characters in the format before FFN
# widths), and PostgreSQL enforces a VARCHAR's length where SQLite ignores it. The first table (`nas_arch_claims`,
# VARCHAR(512) keys) is left as it was: a study continued from it backfills its measured archs into this one.
CLAIMS = sa.Table(
    "nas_arch_claims_v2",
    _META,
    sa.Column("study", sa.String(255), primary_key=True),
    sa.Column("arch_digest", sa.String(64), primary_key=True),
    sa.Column("arch_key", sa.Text, nullable=False),
    sa.Column("slot", sa.Integer, nullable=False),
    sa.Column("trial", sa.Integer, nullable=False),
    sa.UniqueConstraint("study", "slot", name="nas_arch_claims_v2_slot"),
)


def digest(key: str) -> str:
    """The claims table's key of an arch: the SHA-256 of its canonical key, 64 hex characters at any depth."""
    return hashlib.sha256(key.encode()).hexdigest()


MINE, TAKEN, BUDGET = "mine", "taken", "budget"


class Claims:
    """The claims of study `study` in the database at `url` (any SQLAlchemy URL optuna's RDB storage accepts)."""

    def __init__(self, url: str, study: str) -> None:
        args = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
        self.engine = sa.create_engine(resolve_url(url), **args)
        self.study = study
        for attempt in range(5):  # workers starting together race to create the table
            try:
                _META.create_all(self.engine, checkfirst=True)
                break
            except (OperationalError, IntegrityError, ProgrammingError):  # PostgreSQL: "already exists"
                if attempt == 4:
                    raise
                time.sleep(0.1 * 2**attempt)

    def claim(self, key: str, trial: int, budget: int, failed: Callable[[Iterable[int]], set[int]]) -> str:
        """MINE when `trial` now owns arch `key`; TAKEN when another trial does; BUDGET when the budget's slots are
        all claimed. `failed(trials)` says which of those trial numbers failed: their claims are released first."""
        for _ in range(1000):  # each retry follows another worker's successful insert
            with self.engine.begin() as conn:
                rows = conn.execute(sa.select(CLAIMS.c.arch_digest, CLAIMS.c.slot, CLAIMS.c.trial)
                                    .where(CLAIMS.c.study == self.study)).all()  # fmt: skip
                dead = failed({r.trial for r in rows})
                if dead:
                    conn.execute(sa.delete(CLAIMS).where(CLAIMS.c.study == self.study, CLAIMS.c.trial.in_(dead)))
                    rows = [r for r in rows if r.trial not in dead]
                owner = next((r.trial for r in rows if r.arch_digest == digest(key)), None)
                if owner is not None:
                    return MINE if owner == trial else TAKEN
                free = sorted(set(range(budget)) - {r.slot for r in rows})
                if not free:
                    return BUDGET
            try:
                with self.engine.begin() as conn:
                    conn.execute(sa.insert(CLAIMS).values(study=self.study, arch_digest=digest(key), arch_key=key,
                                                          slot=free[0], trial=trial))  # fmt: skip
                return MINE
            except IntegrityError:
                continue  # the arch or the slot went to another worker in between: look again
        raise RuntimeError(f"could not claim arch {key} after 1000 attempts")

    def backfill(self, owned: dict[str, int]) -> None:
        """Claims for archs measured before claims existed ({key: trial}), so a continued study counts them."""
        for key, trial in owned.items():
            for _ in range(100):
                with self.engine.begin() as conn:
                    rows = conn.execute(sa.select(CLAIMS.c.arch_digest, CLAIMS.c.slot)
                                        .where(CLAIMS.c.study == self.study)).all()  # fmt: skip
                if any(r.arch_digest == digest(key) for r in rows):
                    break
                try:  # a transaction of its own: a failed insert must not abort anything else
                    with self.engine.begin() as conn:
                        slot = max((r.slot for r in rows), default=-1) + 1
                        conn.execute(sa.insert(CLAIMS).values(study=self.study, arch_digest=digest(key), arch_key=key,
                                                              slot=slot, trial=trial))  # fmt: skip
                    break
                except IntegrityError:
                    continue  # another worker backfilled it or took that slot: look again

    def trials(self) -> set[int]:
        """The trial numbers that hold claims."""
        with self.engine.begin() as conn:
            return set(conn.execute(sa.select(CLAIMS.c.trial).where(CLAIMS.c.study == self.study)).scalars())

    def count(self) -> int:
        with self.engine.begin() as conn:
            return conn.execute(
                sa.select(sa.func.count()).select_from(CLAIMS).where(CLAIMS.c.study == self.study)
            ).scalar_one()
