"""The measurements table: one CSV row per measured arch, named columns, keyed by the canonical arch key.

It is also the cache: an arch whose key is in the table is never measured again, so an interrupted measurement
resumes where it stopped. Each row is written and flushed on its own. On load, a table written with other columns,
a duplicated key, a row with too few fields or an invalid value (predictors/columns.py: not a number, not finite,
out of range) is refused with one line naming the file, the row's key and the column (never silently overwritten);
only a last line cut short by an interruption is dropped, since that arch was never finished.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from predictors.columns import check_row
from supernet.arch import canonical_key

# How to recover from a damaged row, said with every refusal: the file itself is never changed.
FIX = "fix or delete that row (a deleted arch is measured again); the file was left as it is"


@contextlib.contextmanager
def writer_lock(table: str | Path, command: str, instead: str = "write to another out= directory") -> Iterator[None]:
    """Hold the one-writer lock of `table` (an flock on `.<name>.lock` beside it, released by the OS even after
    kill -9); a second writer gets one clear error instead of interleaving rows with the first."""
    table = Path(table)
    path = table.with_name(f".{table.name}.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"another {command} is writing {table}: wait for it to finish, or {instead}") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class MeasurementTable:
    """Append-only CSV of measurements with a fixed header."""

    def __init__(self, path: str | Path, columns: Sequence[str]) -> None:
        if not columns or columns[0] != "key":
            raise ValueError("a measurement table's first column must be 'key'")
        self.path = Path(path)
        self.columns = list(columns)
        self.rows: dict[str, dict[str, str]] = {}
        self.dropped_partial_line = False
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        text = self.path.read_text()
        if not text:
            return
        lines = text.splitlines(keepends=True)
        if not lines[-1].endswith("\n"):  # the write of the last row was interrupted: that arch is re-measured
            lines = lines[:-1]
            self.dropped_partial_line = True
        reader = csv.reader(io.StringIO("".join(lines)))
        header = next(reader, None)
        if header != self.columns:
            raise ValueError(
                f"{self.path} was written with other columns ({header}); it is kept as is: move it away to "
                "measure again, or use the settings that wrote it"
            )
        for lineno, values in enumerate(reader, start=2):
            where = f"{self.path}: row {values[0] if values and values[0] else '?'} (line {lineno})"
            if not values or not values[0]:
                raise ValueError(f"{where} has no key; {FIX}")
            if len(values) != len(self.columns):
                column = self.columns[min(len(values), len(self.columns) - 1)]
                raise ValueError(f"{where}, column {column}: {len(values)} of {len(self.columns)} fields; {FIX}")
            row = dict(zip(self.columns, values, strict=True))
            try:  # a table written before keys held FFN widths is read with today's keys (its file is kept)
                row["key"] = canonical_key(row["key"])
            except ValueError as e:
                raise ValueError(f"{where}: {e}; {FIX}") from None
            if row["key"] in self.rows:
                raise ValueError(f"{where}: the arch appears twice; {FIX}")
            bad = check_row(row)
            if bad is not None:
                raise ValueError(f"{where}, column {bad[0]}: {bad[1]}; {FIX}")
            self.rows[row["key"]] = row
        if self.dropped_partial_line:
            self._rewrite()

    def _rewrite(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(self.columns)
            w.writerows([r[c] for c in self.columns] for r in self.rows.values())
        tmp.replace(self.path)

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def __len__(self) -> int:
        return len(self.rows)

    def append(self, row: dict[str, Any]) -> None:
        """Write one measured arch (all columns required) and flush it to disk."""
        missing = set(self.columns) - set(row)
        if missing:
            raise ValueError(f"measurement row lacks column(s) {sorted(missing)}")
        if row["key"] in self.rows:
            raise ValueError(f"arch {row['key']} is already in {self.path}")
        new = not self.path.exists() or self.path.stat().st_size == 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(self.columns)
            w.writerow([row[c] for c in self.columns])
            f.flush()
            os.fsync(f.fileno())
        self.rows[row["key"]] = {c: str(row[c]) for c in self.columns}

    def column(self, name: str) -> list[float]:
        """A numeric column, in table order."""
        return [float(r[name]) for r in self.rows.values()]
