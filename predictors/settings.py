"""What a measurement table's rows mean: the settings file beside the table and how two of them are compared.

A table's rows all mean the same thing (one supernet, one latency target and calibration, one kind of accuracy
device, one validation subset, one holdout split). `measurements.json` records those settings; resuming a table and
merging one made elsewhere both compare them with `changed_settings`, so the two can never disagree.
"""

from __future__ import annotations

from typing import Any

from predictors.measure import current_reference_keys

TABLE_NAME = "measurements.csv"
SETTINGS_NAME = "measurements.json"
# Settings added since tables were first written, at the value every older table was measured with: a table without
# the key compares as if it held this value (so it resumes), and one with it records it.
SETTING_DEFAULTS: dict[str, Any] = {"accuracy_device": "cpu"}
# Facts recorded beside the settings but not compared (which GPU or CPU evaluated the accuracy).
RECORDED_ONLY = ("accuracy_target",)


def changed_settings(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The keys of `current` whose value differs in `saved` (a key older tables lack compares at its default; a
    reference arch saved before keys held FFN widths compares by its current key)."""
    saved = current_reference_keys({**SETTING_DEFAULTS, **saved})
    return [k for k in current if k not in RECORDED_ONLY and saved.get(k) != current[k]]


def differing(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The compared settings on which two tables' settings differ, in either direction."""
    return changed_settings(a, current_reference_keys({**SETTING_DEFAULTS, **b})) or changed_settings(
        b, current_reference_keys({**SETTING_DEFAULTS, **a})
    )
