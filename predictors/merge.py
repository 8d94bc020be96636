"""Merge a measurement table made elsewhere into a run's table, without measuring anything.

At real sizes quality is measured where the compute is and the work may be split over machines: each runs
`nas-measure` on a copy of the run directory (the supernet artifact, and `kernels.json` so that every machine times
against the same latency calibration), and the tables come back here. A table merges only if it was measured of the
same supernet (SHA-256 of the artifact) with the same settings (latency target and calibration, kind of accuracy
device, data overrides, holdout split): otherwise its rows would mean something else, and it is refused with one
line naming the setting. Rows already here are kept (nothing measured is lost or overwritten); the others are
appended and flushed one by one, under the table's one-writer lock.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from predictors.settings import SETTINGS_NAME, TABLE_NAME, differing
from predictors.table import MeasurementTable, writer_lock


def source_paths(source: Path) -> tuple[Path, Path]:
    """(table, settings) of `source`: a predictors directory, or the measurements.csv inside one."""
    table = source / TABLE_NAME if source.is_dir() else source
    settings = table.with_name(SETTINGS_NAME)
    if not table.is_file():
        raise ValueError(f"merge={source}: no {TABLE_NAME} there; name the other machine's predictors directory "
                         f"(or its {TABLE_NAME})")  # fmt: skip
    if not settings.is_file():
        raise ValueError(f"merge={source}: no {SETTINGS_NAME} beside {table}: its settings are unknown; copy the "
                         "whole predictors directory from the machine that measured it")  # fmt: skip
    return table, settings


def merge_table(source: Path, out: Path, artifact: Path) -> tuple[int, int]:
    """Append the rows of the table at `source` that `out`'s table lacks; returns (added, already here). Settings
    are compared as a resumed table's are (predictors/settings.py)."""
    src_table, src_settings = source_paths(Path(source))
    theirs = json.loads(src_settings.read_text())
    digest = hashlib.sha256(artifact.read_bytes()).hexdigest()
    if theirs.get("supernet_sha256") != digest:
        other = str(theirs.get("supernet_sha256"))[:12]
        raise ValueError(f"{src_table} was measured of another supernet (sha256 {other}…, this run's is "
                         f"{digest[:12]}…): measure a copy of {artifact} there")  # fmt: skip
    out_settings = out / SETTINGS_NAME
    if out_settings.is_file():
        ours = json.loads(out_settings.read_text())
        keys = differing(ours, theirs)
        if keys:
            k = keys[0]
            raise ValueError(f"{src_table}: {k} was {theirs.get(k)} there but {ours.get(k)} for the rows in "
                             f"{out / TABLE_NAME}; merge only tables measured with the same settings")  # fmt: skip
    elif (out / TABLE_NAME).is_file():
        raise ValueError(f"{out / TABLE_NAME} has no {SETTINGS_NAME} beside it: its settings are unknown; move it away")
    columns = src_table.read_text().split("\n", 1)[0].strip().split(",")
    incoming = MeasurementTable(src_table, columns)  # validated like any table: a damaged row is refused, named
    with writer_lock(out / TABLE_NAME, "nas-measure"):
        if not out_settings.is_file():
            out.mkdir(parents=True, exist_ok=True)
            out_settings.write_text(json.dumps(theirs, indent=2))
        table = MeasurementTable(out / TABLE_NAME, columns)
        added = 0
        for key, row in incoming.rows.items():
            if key not in table:
                table.append(row)
                added += 1
    return added, len(incoming) - added
