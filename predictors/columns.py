"""What a valid value is in each named column of a measurements table (measurements.csv, evaluations.csv).

A cache that holds `notanumber`, an accuracy of -5 or a latency of 0 would be fitted, searched and plotted as if it
were measured: the table refuses it at load instead, naming the column and saying what the value should be.
Columns not named here (a user's own) are not checked.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

SPLITS = ("fit", "holdout")
PERCENT = ("accuracy", "accuracy_h1", "accuracy_h2")
NON_NEGATIVE = ("loss", "loss_h1", "loss_h2", "bpc", "latency_iqr_ms", "latency_cv", "seconds")
POSITIVE = ("latency_ms", "params", "macs", "bitops", "bytes")


def _number(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a number") from None
    if not math.isfinite(x):
        raise ValueError(f"{value!r} is not a finite number")
    return x


def _percent(value: str) -> None:
    if not 0 <= _number(value) <= 100:
        raise ValueError(f"{value} is outside [0, 100]")


def _non_negative(value: str) -> None:
    if not _number(value) >= 0:
        raise ValueError(f"{value} is negative")


def _positive(value: str) -> None:
    if not _number(value) > 0:
        raise ValueError(f"{value} must be > 0")


def _optional_number(value: str) -> None:
    """Predictions are blank where none was made (the initial batch)."""
    if value != "":
        _number(value)


def _optional_non_negative(value: str) -> None:
    if value != "":
        _non_negative(value)


def _count(value: str) -> None:
    if not re.fullmatch(r"[0-9]+", value):
        raise ValueError(f"{value!r} is not a non-negative integer")


def _genes(value: str) -> None:
    if not re.fullmatch(r"-?[0-9]+( -?[0-9]+)*", value):
        raise ValueError(f"{value!r} is not a list of integer genes")


def _split(value: str) -> None:
    if value not in SPLITS:
        raise ValueError(f"{value!r} is not one of {list(SPLITS)}")


def check_for(column: str) -> Callable[[str], None] | None:
    """The check of `column`'s values (raises ValueError saying what is wrong), or None for a column not known."""
    if column in PERCENT:
        return _percent
    if column in NON_NEGATIVE:
        return _non_negative
    if column in POSITIVE:
        return _positive
    if column.startswith("pred_"):
        return _optional_number
    if column.startswith("std_"):
        return _optional_non_negative
    return {"iteration": _count, "genes": _genes, "split": _split}.get(column)


def check_row(row: dict[str, str]) -> tuple[str, str] | None:
    """(column, what is wrong) for the first invalid value of `row`, or None when every value is valid."""
    for column, value in row.items():
        check = check_for(column)
        if check is None:
            continue
        try:
            check(value)
        except ValueError as e:
            return column, str(e)
    return None
