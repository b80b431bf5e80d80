"""Counter sources: the relay's own shared-memory counters (shm), perf, /proc, py-spy,
and the one Sampler that puts them on a single timeline.

Every name is loaded on first use: only shm needs the native module, so importing
labkit.counters.procfs (say) does not build or load it.
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
    "Sampler": "sampler", "RATE_KEYS": "sampler",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"labkit.counters.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'labkit.counters' has no attribute {name!r}")
