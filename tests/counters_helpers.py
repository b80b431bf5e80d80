"""Helpers for the counter cross-check tests (tests/test_counters_*.py).

Every wait is a condition with a deadline; every process is stopped by pid (Relay, Load,
PerfStat do that themselves).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from labkit.counters.perf import perf_status


def require_perf() -> None:
    status = perf_status()
    if not status.ok:
        pytest.skip(f"perf unavailable: {status.reason} (fix: {status.fix})")


def wait_for(read: Callable[[], Any], ok: Callable[[Any], bool], timeout: float,
              what: str) -> Any:
    """Poll read() every 10 ms until ok(value); AssertionError naming `what` at the
    deadline."""
    deadline = time.monotonic() + timeout
    value = read()
    while not ok(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {value}")
        time.sleep(0.01)
        value = read()
    return value


def worker_tids(relay: Any, timeout: float = 3.0) -> list[int]:
    """The kernel TIDs of the relay's data workers and acceptor, once all published."""
    rows = wait_for(relay.worker_counters, lambda rows: all(r["tid"] for r in rows), timeout,
                    "every relay slot to publish its tid")
    return [int(r["tid"]) for r in rows]


def settled(read: Callable[[], dict[str, int]], quiet: float = 0.25,
            timeout: float = 10.0) -> dict[str, int]:
    """read() once its values have not changed for `quiet` seconds (a process at rest)."""
    deadline = time.monotonic() + timeout
    last = read()
    since = time.monotonic()
    while time.monotonic() - since < quiet:
        if time.monotonic() > deadline:
            raise AssertionError(f"counters did not settle within {timeout} s")
        time.sleep(0.02)
        cur = read()
        if cur != last:
            last, since = cur, time.monotonic()
    return last


def syscall_total(counters: dict[str, int]) -> int:
    return sum(v for k, v in counters.items() if k.startswith("sys_"))


def diff(a: dict[str, int], b: dict[str, int], prefix: str = "") -> dict[str, int]:
    return {k: b[k] - a.get(k, 0) for k in b if k.startswith(prefix) and b[k] != a.get(k, 0)}
