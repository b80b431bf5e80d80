"""Inter-processor interrupts taken by chosen CPUs, from /proc/interrupts.

    cpu_interrupts([0])   # {"RES": 3684364}: counts since boot

An io_uring ring set up without DEFER_TASKRUN runs the completion work of a socket's
receive as task work queued on the relay's thread, and the CPU where the packet arrived
(the sender's, on loopback) kicks the relay's CPU to run it: a rescheduling interrupt per
arrival when frames come one per segment. No counter inside the relay can see those, and
its syscall and context-switch counts barely move; the CPUs' interrupt counts do. They are
machine-wide per CPU, so they belong to the relay only while it is pinned to CPUs of its
own (a run's `pinned` column says whether it was).
"""

from __future__ import annotations

from collections.abc import Iterable

INTERRUPTS = "/proc/interrupts"
# The rows a figure reads: RES (rescheduling IPIs: another CPU asked this one to run
# something now).  Only rows a figure uses are required, so a kernel that lists RES but
# names its other IPI rows differently still gets the figure.
IPI_ROWS = ("RES",)


def cpu_interrupts(cpus: Iterable[int], path: str = INTERRUPTS) -> dict[str, int] | None:
    """IPI_ROWS summed over `cpus` (CPU numbers as the header names them), or None where
    the file or one of the CPUs is missing (a container may hide it)."""
    try:
        with open(path) as f:
            header = f.readline().split()
            rows = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].split()
                    for line in f if ":" in line}
    except OSError:
        return None
    column = {name: i for i, name in enumerate(header)}
    try:
        at = [column[f"CPU{c}"] for c in cpus]
    except KeyError:
        return None
    out = {}
    for row in IPI_ROWS:
        values = rows.get(row)
        if values is None or len(values) < len(header):
            return None
        out[row] = sum(int(values[i]) for i in at)
    return out
