"""What each counter is, asked of one function: info(name) -> CounterInfo(kind, group).

kind says how a counter's values combine:
- COUNTER (LK_C_* in labkit.h) only grows: slots add up, a window takes the difference;
- GAUGE (LK_G_*) goes up and down: slots add up to the relay's current total;
- HIGH_WATER (a gauge named *_MAX) is a gauge's peak: slots combine by their maximum.

group names the figure a counter feeds: SYSCALLS (the relay's own syscall counts, summed
into syscalls/s and syscalls/packet), DROPS (packets the relay dropped, summed into drops)
or "" for none.

This module is the only place that works either out, so that the C contract table
(lk_counters[i].kind and .group, once the native module carries them) can replace the
rules in _table() without a caller changing. Today kind comes from the enum's prefix and
group from the counter's name (sys_*, drop_*).
"""

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

COUNTER, GAUGE, HIGH_WATER = "counter", "gauge", "high_water"
SYSCALLS, DROPS = "syscalls", "drops"


@dataclass(frozen=True)
class CounterInfo:
    kind: str  # COUNTER, GAUGE or HIGH_WATER
    group: str  # SYSCALLS, DROPS or ""


@cache
def _table() -> dict[str, CounterInfo]:
    from labkit.counters.shm import counter_enum  # the enum lives in the native module

    table = {}
    for element, name in counter_enum():
        if element.startswith("LK_C_"):
            kind = COUNTER
        else:
            kind = HIGH_WATER if element.endswith("_MAX") else GAUGE
        group = SYSCALLS if name.startswith("sys_") else DROPS if name.startswith("drop_") else ""
        table[name] = CounterInfo(kind, group)
    return table


def info(name: str) -> CounterInfo:
    """The kind and group of one counter, by its name in a snapshot ("sys_read")."""
    try:
        return _table()[name]
    except KeyError:
        raise KeyError(f"{name!r} is not a counter of this build (see labkit.h)") from None


def in_group(names: Iterable[str], group: str) -> list[str]:
    """The names among `names` that are counters of `group` (SYSCALLS or DROPS)."""
    table = _table()
    return [n for n in names if n in table and table[n].group == group]


def sum_slots(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Counters summed over a snapshot's slots (high-water gauges: the maximum); the
    per-slot fields `ns` and `tid` are not counters and are left out."""
    total: dict[str, int] = {}
    for row in rows:
        for name, value in row.items():
            if name in ("ns", "tid") or not isinstance(value, int):
                continue
            if info(name).kind == HIGH_WATER:
                total[name] = max(total.get(name, 0), value)
            else:
                total[name] = total.get(name, 0) + value
    return total
