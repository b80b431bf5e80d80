"""Counter sources: the relay's own shared-memory counters (shm)."""

from labkit.counters.shm import CounterLayoutError, ShmCounters, counter_names

__all__ = ["CounterLayoutError", "ShmCounters", "counter_names"]
