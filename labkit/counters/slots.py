"""Combining the per-slot rows of a counter snapshot (no native module needed)."""

from typing import Any


def sum_slots(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Counters summed over a snapshot's slots (high-water gauges `*_max`: the maximum);
    the per-slot fields `ns` and `tid` are not counters and are left out."""
    total: dict[str, int] = {}
    for row in rows:
        for name, value in row.items():
            if name in ("ns", "tid") or not isinstance(value, int):
                continue
            if name.endswith("_max"):
                total[name] = max(total.get(name, 0), value)
            else:
                total[name] = total.get(name, 0) + value
    return total
