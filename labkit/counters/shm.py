"""Read the relay's per-worker counters from its POSIX shared-memory region.

The region is mapped read-only and read through lk_counters_read (a seqlock copy), so a
reader costs the relay nothing: no syscalls on its side, no locks it waits on. One
snapshot is one memcpy-sized copy per worker, cheap enough for a 10 Hz plot.
"""

import mmap
import os
import time
from typing import Any

from labkit.native import contract, ffi, last_error, lib

SHM_DIR = "/dev/shm"
BUSY_RETRY_S = 0.5  # how long a snapshot waits for a writer preempted mid-publication


class CounterLayoutError(RuntimeError):
    """The region is not a labkit counter region this build can read."""


def counter_names() -> tuple[str, ...]:
    """Counter names in slot order, from the contract's counter table (labkit.h): a new
    counter there needs no Python."""
    return tuple(contract.COUNTERS)


class ShmCounters:
    """A read-only view of one relay's (or load generator's) counter region.

    `name` is the POSIX shm name the relay reported ("/labkit-relay-…").
    """

    def __init__(self, name: str) -> None:
        self.name = name
        path = os.path.join(SHM_DIR, name.lstrip("/"))
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise CounterLayoutError(
                f"no counter region {name!r} ({path}): the process that owned it has exited"
            ) from None
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                raise CounterLayoutError(f"counter region {name!r} is empty")
            self._map = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        self._base = ffi.from_buffer("const char[]", self._map)
        self._len = size
        self._check()
        self._header = ffi.cast("const lk_shm_header *", self._base)
        self.n_workers: int = self._header.n_workers
        self.pid: int = self._header.pid
        self._out = ffi.new("lk_worker_counters *")
        self._names = counter_names()

    def _check(self) -> None:
        if lib.lk_counters_check(self._base, self._len) != lib.LK_OK:
            raise CounterLayoutError(
                f"{self.name}: {last_error()}"
            )

    def snapshot(self) -> list[dict[str, Any]]:
        """One dict per published slot: every counter by name, plus `ns` (CLOCK_MONOTONIC
        of the slot's last publication), `tid` (the publishing thread's kernel TID, 0
        until its first publication) and `completions_hist` (LK_HIST_BUCKETS ints).

        Slots are the relay's data workers in order, then any thread of its own that
        counts (the acceptor), as the header's n_workers says."""
        out = self._out
        n = len(self._names)
        workers = []
        for w in range(self.n_workers):
            rc = lib.lk_counters_read(self._base, self._len, w, out)
            # LK_ERR_RETRY: the writer was mid-publication (its seqlock odd, or bumped
            # during the copy) for all of the C reader's spins; on a busy 2-core box, or
            # a writer republishing every loop pass, that happens. Sleep so a preempted
            # writer can finish, and try again for up to BUSY_RETRY_S.
            deadline = time.monotonic() + BUSY_RETRY_S
            while rc == lib.LK_ERR_RETRY and time.monotonic() < deadline:
                time.sleep(0.0002)
                rc = lib.lk_counters_read(self._base, self._len, w, out)
            if rc != lib.LK_OK:
                raise CounterLayoutError(
                    f"{self.name} worker {w}: "
                    f"{last_error()}"
                )
            row: dict[str, Any] = dict(zip(self._names, ffi.unpack(out.c, n), strict=True))
            row["ns"] = out.ns
            row["tid"] = out.tid
            row["completions_hist"] = ffi.unpack(out.completions_hist, lib.LK_HIST_BUCKETS)
            workers.append(row)
        return workers

    def close(self) -> None:
        if self._map.closed:
            return
        # The cffi buffer must go before the mmap, which refuses to close while exported.
        ffi.release(self._base)
        self._map.close()

    def __enter__(self) -> "ShmCounters":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

