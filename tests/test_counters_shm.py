"""The relay's shared-memory counters under load (issue 5).

(iii) bytes forwarded by the relay (packet_bytes_forwarded) equal the payload bytes the
      load generator received, over every phase (warm-up, window, drain);
(iv)  snapshot consistency: read the counters as fast as Python can while the relay (and
      the load generator) update them; no monotonic counter ever goes backwards in a slot,
      and the invariants that hold inside one worker hold inside every snapshot.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
import time
from typing import Any

import pytest
from counters_helpers import settled, wait_for

from labkit import Relay, RelayConfig
from labkit.counters import kinds
from labkit.counters.shm import BUSY_RETRY_S, CounterLayoutError, ShmCounters, counter_names
from labkit.native import ffi, lib
from labkit.procs.load import Load, LoadConfig

# up and down (pool_size is constant); queue_depth_max only goes up
GAUGES = {"conns_current", "queue_depth", "pool_free", "pool_size", "reads_paused"}
IO_MODES = ["epoll", "uring"]


def test_counter_kinds_follow_the_enum() -> None:
    """kinds.info, from the contract's counter table: counters only grow, five are gauges
    and queue_depth_max is a gauge's high-water mark; the syscall and drop groups are the
    sys_* and drop_* counters."""
    names = counter_names()
    assert {n for n in names if kinds.info(n).kind == kinds.GAUGE} == GAUGES
    assert {n for n in names if kinds.info(n).kind == kinds.HIGH_WATER} == {"queue_depth_max"}
    assert set(kinds.in_group(names, kinds.SYSCALLS)) == {n for n in names if n[:4] == "sys_"}
    assert set(kinds.in_group(names, kinds.DROPS)) == {n for n in names if n[:5] == "drop_"}
    rows = [{"queue_depth_max": 3, "frames_in": 1, "ns": 5, "tid": 9},
            {"queue_depth_max": 2, "frames_in": 4, "ns": 6, "tid": 10}]
    assert kinds.sum_slots(rows) == {"queue_depth_max": 3, "frames_in": 5}


@pytest.mark.parametrize("io", IO_MODES)
def test_bytes_forwarded_equal_bytes_received(io: str) -> None:
    size = 1200
    with Relay(RelayConfig(io=io, workers=2)) as relay:
        before = settled(relay.counters)
        cfg = LoadConfig.for_relay(relay, pairs=3, size=size, rate_mbps=200, duration=1.0,
                                   warmup=0.2)
        with Load(cfg) as load:
            # our own view: it stays readable after the generator exits and unlinks it
            load_shm = ShmCounters(load.shm_name)
            result = load.wait()
        after = wait_for(relay.counters,
                         lambda c: c["packets_forwarded"] - before["packets_forwarded"]
                         >= (result.total_received or 0), 5.0, "the relay's last publication")
        got = sum(r["load_bytes_received"] for r in load_shm.snapshot())
        load_shm.close()
    forwarded = after["packet_bytes_forwarded"] - before["packet_bytes_forwarded"]
    assert result.lost == 0 and result.total_received
    assert forwarded == got, (
        f"relay forwarded {forwarded} payload bytes, load generator received {got}")
    assert got == size * result.total_received  # payload only: frame headers excluded
    assert result.bytes_received == size * result.received  # the window's share


def _check_slot(row: dict[str, Any], where: str) -> None:
    """Invariants that hold within one worker's consistent copy."""
    assert row["frames_in"] >= row["packets_in"], where
    assert row["frames_out"] >= row["packets_forwarded"], where
    assert row["bytes_out"] >= row["packet_bytes_forwarded"], where
    assert row["queue_depth_max"] >= row["queue_depth"], where
    assert row["conns_closed"] <= row["conns_accepted"] + row["conns_handshaked"], where


@pytest.mark.parametrize("io", IO_MODES)
def test_snapshots_are_consistent_and_monotonic(io: str) -> None:
    monotonic = [n for n in counter_names() if n not in GAUGES]
    with Relay(RelayConfig(io=io, workers=2)) as relay:
        cfg = LoadConfig.for_relay(relay, pairs=4, size=1400, duration=1.5, warmup=0.2)
        with Load(cfg) as load, ShmCounters(relay.shm_name) as rs, \
                ShmCounters(load.shm_name) as ls:
            prev: dict[tuple[str, int], dict[str, Any]] = {}
            reads = changes = 0
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:
                for name, shm in (("relay", rs), ("load", ls)):
                    for slot, row in enumerate(shm.snapshot()):
                        reads += 1
                        where = f"{name} slot {slot} read {reads}: {row}"
                        if name == "relay":
                            _check_slot(row, where)
                        old = prev.get((name, slot))
                        if old is not None:
                            if row["ns"] != old["ns"]:
                                changes += 1
                            assert row["ns"] >= old["ns"], where
                            back = {n: (old[n], row[n]) for n in monotonic if row[n] < old[n]}
                            assert not back, f"counters went backwards {back} at {where}"
                        prev[(name, slot)] = row
            load.stop()
    rate = reads / 1.5
    print(f"[{io}] {reads} slot reads ({rate:.0f}/s), {changes} saw a new publication")
    assert changes > 200, "the relay hardly published while we read: no hammering happened"


def _region_with_one_worker(seq: int) -> tuple[str, mmap.mmap]:
    """A counter region in /dev/shm written the way the native writer lays it out, whose
    single worker's seqlock reads `seq`: odd is a writer caught mid-publication."""
    name = f"/labkit-test-seqlock-{os.getpid()}-{seq}"
    header = ffi.new("lk_shm_header *")
    header.magic = lib.LK_SHM_MAGIC
    header.layout = lib.lk_counters_layout()
    header.header_size = ffi.sizeof("lk_shm_header")
    header.worker_size = ffi.sizeof("lk_worker_counters")
    header.n_workers = 1
    header.n_counters = len(counter_names())
    header.pid = os.getpid()
    size = ffi.sizeof("lk_shm_header") + ffi.sizeof("lk_worker_counters")
    path = os.path.join("/dev/shm", name.lstrip("/"))
    with open(path, "w+b") as f:
        f.truncate(size)
        region = mmap.mmap(f.fileno(), size)
    region[: ffi.sizeof("lk_shm_header")] = ffi.buffer(header)
    _set_seq(region, seq)
    return name, region


def _set_seq(region: mmap.mmap, seq: int) -> None:
    at = ffi.sizeof("lk_shm_header") + ffi.offsetof("lk_worker_counters", "seq")
    region[at : at + 8] = struct.pack("=Q", seq)


def test_a_reader_waits_out_a_writer_caught_mid_publication() -> None:
    """The C reader gives up after its spins (LK_ERR_RETRY); the snapshot sleeps and reads
    again, so a writer preempted with its seqlock odd delays a reader and does not fail
    it, and one that never finishes fails it with the reason, after a bounded wait."""
    name, region = _region_with_one_worker(seq=3)
    try:
        with ShmCounters(name) as shm:
            finish = threading.Timer(0.1, _set_seq, (region, 4))
            finish.start()
            started = time.monotonic()
            (row,) = shm.snapshot()
            finish.join()
            assert time.monotonic() - started >= 0.05, "read while the seqlock was odd"
            assert row["conns_current"] == 0
    finally:
        region.close()
        os.unlink(os.path.join("/dev/shm", name.lstrip("/")))


def test_a_writer_that_never_finishes_fails_the_reader_with_the_reason() -> None:
    name, region = _region_with_one_worker(seq=5)
    try:
        with ShmCounters(name) as shm:
            started = time.monotonic()
            with pytest.raises(CounterLayoutError, match="kept changing"):
                shm.snapshot()
            waited = time.monotonic() - started
            assert BUSY_RETRY_S <= waited < BUSY_RETRY_S + 5
    finally:
        region.close()
        os.unlink(os.path.join("/dev/shm", name.lstrip("/")))
