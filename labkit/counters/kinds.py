"""What each counter is, asked of one function: info(name) -> CounterInfo(kind, group).

Both come from the contract's counter table in native/include/labkit.h (each row's kind
and group, read through labkit.native.contract).

kind says how a counter's values combine:
- COUNTER only grows: slots add up, a window takes the difference;
- GAUGE goes up and down: slots add up to the relay's current total;
- HIGH_WATER is a gauge's peak: slots combine by their maximum.

group names what a counter is about; SYSCALLS (the relay's own syscall counts, summed
into syscalls/s and syscalls/packet) and DROPS (packets the relay dropped, summed into
drops) are the two the figures sum.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

COUNTER, GAUGE, HIGH_WATER = "counter", "gauge", "high_water"
SYSCALLS, DROPS = "syscall", "drop"  # group names of the table


@dataclass(frozen=True)
class CounterInfo:
    kind: str  # COUNTER, GAUGE or HIGH_WATER
    group: str  # the table's group: SYSCALLS, DROPS, "traffic", "close", ...


@cache
def _table() -> dict[str, CounterInfo]:
    from labkit.native import contract  # the table lives in the native module

    return {c.name: CounterInfo(c.kind, c.group) for c in contract.COUNTERS.values()}


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
