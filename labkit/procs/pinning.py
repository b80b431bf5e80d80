"""Put a relay and its load generator on different CPUs, so that neither measures the
other's work: disjoint CPU sets where the machine has at least two, and a note that says
what was done (a run records it).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from labkit.procs.external import ExternalRelayProcess
from labkit.procs.load import Load
from labkit.procs.relay import Relay


@dataclass(frozen=True)
class Pinning:
    pinned: bool
    relay_cpus: tuple[int, ...]
    load_cpus: tuple[int, ...]
    note: str


def plan_pinning(relay_workers: int, cpus: Sequence[int] | None = None) -> tuple[
        tuple[int, ...], tuple[int, ...], str]:
    """(relay CPUs, load CPUs, note): disjoint sets when there are at least two CPUs."""
    cpus = sorted(os.sched_getaffinity(0)) if cpus is None else sorted(cpus)
    if len(cpus) < 2:
        return (), (), f"not pinned: only {len(cpus)} CPU usable, relay and load share it"
    n_relay = max(1, min(relay_workers, len(cpus) - 1))
    relay, load = tuple(cpus[:n_relay]), tuple(cpus[n_relay:])
    note = f"relay on CPU {cpu_list(relay)}, load on CPU {cpu_list(load)}"
    if relay_workers > n_relay:
        note += f" ({relay_workers} relay workers share {n_relay} CPU)"
    return relay, load, note


def cpu_list(cpus: Iterable[int]) -> str:
    """"0,1": how a note and a run's summary name CPUs."""
    return ",".join(str(c) for c in cpus)


def pin_process(pid: int, cpus: Iterable[int]) -> None:
    """Pin every thread of pid (threads started later inherit their creator's mask); a
    host of a placed run pins its own process with it (labkit.hosts.cluster)."""
    mask = set(cpus)
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError, FileNotFoundError):
            os.sched_setaffinity(int(tid), mask)


def pin(relay: Relay | ExternalRelayProcess, load: Load, want: bool) -> Pinning:
    """Pin two running processes apart (want=False: leave them, and say so)."""
    if not want:
        return Pinning(False, (), (), "not pinned (pin=False)")
    if relay.cfg.pin_cpus or load.cfg.pin_cpus:
        return Pinning(False, (), (), "not pinned by labkit: the config's pin_cpus pins "
                       "threads itself")
    relay_cpus, load_cpus, note = plan_pinning(relay.cfg.workers)
    if not relay_cpus:
        return Pinning(False, (), (), note)
    try:
        # an external relay may run several processes (a wrapper and the relay): pin all
        for pid in relay.pids() if hasattr(relay, "pids") else [relay.pid]:
            pin_process(pid, relay_cpus)
        pin_process(load.pid, load_cpus)
    except OSError as e:
        return Pinning(False, (), (), f"not pinned: sched_setaffinity failed ({e.strerror})")
    return Pinning(True, relay_cpus, load_cpus, note)
