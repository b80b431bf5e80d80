"""A dask cluster on a testbed: one worker inside each host's namespace, the scheduler
next to the notebook on the testbed's control address.

    with Testbed(hosts=3, control=True) as tb, testbed_client(tb) as client:
        labkit.run(..., cluster=client, load_hosts=2)   # relay in lk-h1, loads in h2, h3

The scheduler runs in this process (distributed.LocalCluster with no workers of its own,
listening on tb.control_address: the root namespace's end of the control link, the only
address the hosts can reach outside the testbed). Each worker is `dask worker` started in
its host with tb.popen (`ip netns exec`), listening on the host's testbed address, so a
task's processes and sockets are in that host's namespace and the worker's address names
the host (labkit.hosts.cluster.worker_host). Workers run without a nanny: a host whose
worker is killed stays gone, as a machine that died would, instead of being restarted
under a new address.

Leaving the block stops every worker by its process group (tb.stop, while the leader is
unreaped), checks that each pid has exited (ClusterError naming any left), then closes the
client and the scheduler. A notebook kernel killed inside the block leaves workers in the
namespaces: `labkit testbed down` stops them by pid through the namespaces and checks.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

from labkit.hosts.cluster import ClusterError
from labkit.hosts.testbed import Testbed

WORKER_THREADS = 2  # a run's task holds one for its whole run; the other serves the rest
WORKERS_TIMEOUT = 60.0


# `ip netns exec` gives the host a /sys of its own, without tracefs, where perf's syscall
# tracepoints live; the worker mounts it there (in that private mount namespace only: the
# machine's mounts do not change) so the relay's host has perf as a local run has.
_WITH_TRACEFS = ("mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev "
                 "/sys/kernel/tracing 2>/dev/null; exec \"$@\"")


def _worker_argv(scheduler: str, address: str, name: str, directory: str) -> list[str]:
    return ["sh", "-c", _WITH_TRACEFS, "sh",
            sys.executable, "-m", "distributed.cli.dask_worker", scheduler, "--host", address,
            "--name", name, "--nthreads", str(WORKER_THREADS), "--no-nanny",
            "--no-dashboard", "--local-directory", directory, "--death-timeout", "30"]


@contextlib.contextmanager
def testbed_client(tb: Testbed, hosts: Sequence[int] | None = None, *,
                   timeout: float = WORKERS_TIMEOUT) -> Iterator[Any]:
    """A distributed.Client whose workers are the testbed's hosts (default: all), the
    testbed up with its control link (Testbed(control=True)). The workers are named
    h1, h2, ... and listen on the hosts' addresses."""
    from distributed import Client, LocalCluster

    if not tb.control:
        raise ClusterError(f"testbed {tb.name} has no control link: the scheduler next to "
                           "the notebook cannot reach its hosts; use Testbed(control=True) "
                           "(`labkit testbed up --control`)")
    numbers = list(hosts) if hosts is not None else list(tb.numbers)
    procs: list[subprocess.Popen[Any]] = []
    with contextlib.ExitStack() as stack:
        directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="labkit-dask-"))
        cluster = stack.enter_context(LocalCluster(
            n_workers=0, host=tb.control_address, scheduler_port=0, dashboard_address=None,
            processes=False, protocol="tcp://"))
        client = stack.enter_context(Client(cluster))
        stack.callback(_stop_workers, tb, procs)
        for i in numbers:
            log = open(os.path.join(directory, f"h{i}.log"), "wb")
            stack.callback(log.close)
            procs.append(tb.popen(i, _worker_argv(cluster.scheduler_address, tb.address(i),
                                                  f"h{i}", directory),
                                  stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL))
        try:
            client.wait_for_workers(len(numbers), timeout=timeout)
        except TimeoutError:
            logs = "\n".join(_tail(os.path.join(directory, f"h{i}.log")) for i in numbers)
            raise ClusterError(f"the testbed's {len(numbers)} dask workers did not all join "
                               f"the scheduler at {cluster.scheduler_address} within "
                               f"{timeout:g} s; their logs:\n{logs}") from None
        yield client


def _stop_workers(tb: Testbed, procs: Sequence[subprocess.Popen[Any]]) -> None:
    for p in procs:
        tb.stop(p)
    left = [p.pid for p in procs if p.returncode is None]
    if left:
        raise ClusterError(f"dask worker pid(s) {left} did not exit; `labkit testbed down "
                           f"--name {tb.name}` stops them through their namespaces")


def _tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            text = f.read().splitlines()[-lines:]
    except OSError:
        return f"{path}: (no log)"
    return f"--- {os.path.basename(path)}\n" + "\n".join(text)
