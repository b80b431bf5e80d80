"""/proc per-thread counters: cheap, per thread, and still there after the process exits."""

from __future__ import annotations

import subprocess
import sys
import time

from counters_helpers import wait_for

from labkit.counters.procfs import ProcThreads

# A child with a busy thread and a sleeping main thread; it exits when stdin closes.
CHILD = """
import sys, threading, time
sys.stdin.readline()
def spin():  # 0.3 s of this thread's CPU time, however busy the machine is
    while time.thread_time() < 0.3: pass
t = threading.Thread(target=spin, name="spinner"); t.start(); t.join()
print("spun", flush=True)
for _ in range(50): time.sleep(0.002)
sys.stdin.read()
"""


def test_threads_cpu_and_context_switches_then_gone() -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        procs = ProcThreads(child.pid)
        first = procs.sample()
        assert not first.gone and child.pid in first.threads
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write("go\n")
        child.stdin.flush()
        wait_for(procs.sample, lambda s: s.total.threads >= 2, 5.0, "the spinner thread")
        assert child.stdout.readline() == "spun\n"
        s = wait_for(procs.sample, lambda s: s.total.voluntary >= 50, 5.0,
                     "50 voluntary switches from the sleeps")
        # the spinner thread has exited: it stays listed (last values seen), and all its
        # CPU time stays in the totals (the kernel keeps exited threads' time per process)
        assert s.total.cpu_s >= 0.25, s.total
        assert [t for t in s.threads.values() if not t.alive], s.threads
        assert s.total.utime_s + s.total.stime_s >= 0.2  # the tick-resolution figures agree
        main = s.threads[child.pid]
        # most of the 50 sleeps switch the main thread out; on a busy machine a 1 ms sleep
        # can end before it is, so not every one counts
        assert main.voluntary >= 35 and main.comm.startswith("python")
        t0 = time.perf_counter()
        for _ in range(100):
            procs.sample()
        per_sample = (time.perf_counter() - t0) / 100
        assert per_sample < 0.005, f"a /proc sample took {per_sample * 1e3:.2f} ms"
        child.stdin.close()
        child.wait(10)
        gone = procs.sample()
        assert gone.gone and gone.total.threads == 0
        assert gone.total.voluntary >= s.total.voluntary >= 50  # last values kept
        assert gone.total.cpu_s >= s.total.cpu_s
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()


def test_unknown_pid_is_gone_at_once() -> None:
    with subprocess.Popen([sys.executable, "-c", "pass"]) as p:
        p.wait()
    s = ProcThreads(p.pid).sample()
    assert s.gone and s.threads == {}
