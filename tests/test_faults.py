"""Faults at the process level (issue 8 item 4): a relay or load generator killed with
SIGKILL mid-run surfaces as the API's crash error with the stderr tail, and stopping
leaves no process behind (checked by pid and by session). Experiment-level faults (a
sweep recording the failure and going on, disk full, read-only data/) are covered by
tests/test_experiment.py and tests/test_store.py."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conformance.helpers import ARRIVE, connect_to, wait_until  # noqa: E402

from labkit import Relay, RelayConfig  # noqa: E402
from labkit.counters.procfs import process_alive  # noqa: E402
from labkit.procs.load import Load, LoadConfig, LoadFailed  # noqa: E402
from labkit.procs.relay import RelayCrashed  # noqa: E402


def _session_members(sid: int) -> list[int]:
    """Live pids whose session id is sid (our children start their own session)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(entry))
    return pids


@pytest.mark.parametrize("io", ["epoll", "uring"])
def test_relay_sigkilled_mid_run_raises_crashed_with_the_tail(io: str) -> None:
    r = Relay(RelayConfig(io=io, workers=2)).start()
    try:
        c = connect_to(r)
        c.ping(b"12345678", ARRIVE)
        pid = r.pid
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: r.returncode is not None, what="the relay to die")
        with pytest.raises(RelayCrashed) as e:
            r.check()
        assert e.value.exitcode == -signal.SIGKILL
        assert "killed by signal 9" in str(e.value) and "stderr tail" in str(e.value)
        assert isinstance(e.value.stderr_tail, str)
        c.close()
    finally:
        r.stop()
    assert not process_alive(pid) and not _session_members(pid)
    assert not os.path.exists("/dev/shm" + r.shm_name), "the killed relay's counters remain"


def test_relay_sigkilled_inside_with_fails_the_block() -> None:
    with pytest.raises(RelayCrashed, match="did not stop cleanly"), \
            Relay(RelayConfig()) as r:
        os.kill(r.pid, signal.SIGKILL)
        wait_until(lambda: r.returncode is not None, what="the relay to die")


def test_load_sigkilled_mid_run_raises_failed_with_the_tail() -> None:
    with Relay(RelayConfig(workers=2)) as r:
        load = Load(LoadConfig.for_relay(r, pairs=4, rate_mbps=20, duration=30, warmup=0))
        load.start()
        try:
            pid = load.pid
            wait_until(lambda: load.counters().get("load_sent", 0) > 0, 5.0,
                       "the load to start sending")
            os.kill(pid, signal.SIGKILL)
            with pytest.raises(LoadFailed) as e:
                load.wait(10)
            assert e.value.exitcode == -signal.SIGKILL
            assert "killed by signal 9" in str(e.value) and "stderr tail" in str(e.value)
        finally:
            load.stop()
        assert not process_alive(pid) and not _session_members(pid)
        c = connect_to(r)  # the relay shrugs off a generator that vanished mid-run
        c.ping(b"12345678", ARRIVE)
        c.close()
        wait_until(lambda: r.counters()["conns_current"] == 0, ARRIVE,
                   "the dead generator's connections to be closed")


def test_stop_leaves_no_process_behind() -> None:
    r = Relay(RelayConfig(io="uring", tls="user", workers=4)).start()
    with Load(LoadConfig.for_relay(r, pairs=8, rate_mbps=10, duration=30, warmup=0)) as load:
        load_pid = load.pid  # running: its ready line came before start() returned
        assert load.returncode is None
    relay_pid = r.pid
    assert r.stop() == 0
    for pid in (relay_pid, load_pid):
        assert not process_alive(pid), f"pid {pid} still runs after stop()"
        assert not _session_members(pid), f"session {pid} still has members"
