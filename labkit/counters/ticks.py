"""The Sampler's per-tick rates, declared once: name, unit, label, and how each is derived.

Every tick of labkit.counters.sampler carries exactly TICK_KEYS; a run keeps them as its
time series (labkit.lab.experiment), and the live panel and the figures take their units
and legends from here (labkit.views.plots). Where a rate is simple (one cumulative column,
scaled, or the sum over one group of the relay's counters) this table is also what the
sampler computes it from.

A run's window figures (delivered Mbit/s, syscalls per packet, ...) are another table,
labkit.lab.window.FIGURES, kept apart on purpose: "mbps" in a tick is what the relay
forwarded, in a run's summary it is what the load generator received.
"""

from dataclasses import dataclass

from labkit.counters.kinds import DROPS, SYSCALLS


@dataclass(frozen=True)
class Tick:
    name: str
    unit: str
    label: str  # short: a legend entry beside the other series of its figure
    help: str  # what it measures
    rate_of: str = ""  # the cumulative sampler column whose rate this is, times `scale`
    scale: float = 1.0
    group: str = ""  # else: the summed rate of the relay's counters of this kinds group
    # with neither, the sampler computes it itself (t, perf's own rate)


TICKS: tuple[Tick, ...] = (
    Tick("t", "s", "time", "seconds since the sampler started"),
    Tick("mbps", "Mbit/s", "relay forwarded", "the relay's forwarded packet payload",
         rate_of="relay.packet_bytes_forwarded", scale=8 / 1e6),
    Tick("pps", "packets/s", "relay forwarded packets", "the relay's forwarded packets",
         rate_of="relay.packets_forwarded"),
    Tick("syscalls_per_s", "syscalls/s", "relay's own count",
         "the relay's own syscall counters, summed", group=SYSCALLS),
    Tick("perf_syscalls_per_s", "syscalls/s", "perf raw_syscalls",
         "perf raw_syscalls:sys_enter on the relay's threads (NaN without perf)"),
    Tick("ctx_switches_per_s", "switches/s", "relay context switches",
         "the relay process's voluntary + involuntary switches (/proc)",
         rate_of="proc.relay.ctx_switches"),
    Tick("relay_cpu_pct", "% of one core", "relay CPU", "the relay's user + system CPU",
         rate_of="proc.relay.cpu_s", scale=100),
    Tick("load_cpu_pct", "% of one core", "load generator CPU",
         "the load generator's user + system CPU", rate_of="proc.load.cpu_s", scale=100),
    Tick("drops_per_s", "packets/s", "relay drops", "the relay's drop counters, summed",
         group=DROPS),
    Tick("load_mbps", "Mbit/s", "load received",
         "the load generator's received payload (NaN without a load)",
         rate_of="load.load_bytes_received", scale=8 / 1e6),
)
TICK_KEYS = tuple(t.name for t in TICKS)
_BY_NAME = {t.name: t for t in TICKS}


def tick(name: str) -> Tick:
    return _BY_NAME[name]


def unit(name: str) -> str:
    """The unit of a tick key; "" for a column that is not one."""
    t = _BY_NAME.get(name)
    return t.unit if t else ""
