"""Counter sources: the relay's own shared-memory counters (shm), perf, /proc, py-spy,
and the one Sampler that puts them on a single timeline (its per-tick rates: ticks; what
each counter is: kinds).

Every name is loaded on first use: only shm needs the native module (and kinds, which
reads shm's enum when first asked), so importing labkit.counters.procfs (say) does not
build or load it.
"""

import importlib
from typing import Any

_LAZY = {
    "CounterLayoutError": "shm", "ShmCounters": "shm", "counter_names": "shm",
    "PerfStat": "perf", "PerfStatus": "perf", "PerfUnavailable": "perf",
    "perf_status": "perf", "available_events": "perf",
    "ProcThreads": "procfs", "ProcSample": "procfs", "ThreadStat": "procfs",
    "FlameGraph": "pyspy", "ProfileUnavailable": "pyspy", "profile": "pyspy",
    "ptrace_status": "pyspy",
    "Sampler": "sampler", "TICK_KEYS": "ticks", "TICKS": "ticks",
    "CounterInfo": "kinds", "sum_slots": "kinds",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"labkit.counters.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'labkit.counters' has no attribute {name!r}")
