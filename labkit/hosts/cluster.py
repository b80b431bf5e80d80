"""Relay and load generators on different hosts, placed through dask.distributed.

    from distributed import Client
    client = Client("tcp://10.77.0.254:8786")        # or LocalCluster(), SSHCluster([...])
    placement = Placement.spread(client, load_hosts=2)  # relay on one worker, loads on others
    r = labkit.run(relay=..., load=..., cluster=client, placement=placement)
    r.meta["hosts"]                                     # the host of every figure

No RPC, scheduler or SSH code of labkit's own: a run is dask tasks. relay_task runs on the
relay's worker and load_task on each load worker; each starts its native process there
through labkit.procs (the same Relay and Load a local run uses: own process, stopped by
pid), pins it on its host (labkit.procs.pinning's plan: relay CPUs apart from load CPUs,
which matters where hosts share a machine, as the testbed's namespaces do), runs a
labkit Sampler on its host (the relay's: shared memory, /proc and perf of the relay's
threads; a load's: its own counters and /proc) and streams the sampler's rows back
through a distributed.Queue. The notebook side (run_placed) coordinates through
distributed Variables, Queues and one Event per run, named by the run:

- readiness: a task puts one "ready" message first on its queue; the client polls
  Queue.qsize (a timed-out get would log an error in dask);
- the relay window: where every load is in its own window (each starts its warm-up when
  it reports connected); the relay's figures over it come from its host's sampler rows,
  interpolated at the window's edges (labkit.lab.experiment), so they do not depend on
  when a task wakes up on a busy machine;
- stop: the client sets the run's stop Event; every task waits on it in 0.25 s slices
  and returns when it is set, so a failed run (a load host gone, a relay dead) frees its
  workers' threads: left running, a failed run's tasks would hold the next run's workers.

Clocks. Each host stamps its rows with its own time.time(). clock_offsets() measures
each worker against the client with round trips (t0 = client, remote = worker, t1 =
client): offset = remote - (t0 + t1) / 2, bounded by half the round trip; the sample
with the shortest round trip of a few is kept, and a run records offset and bound per
host. merge_timelines() puts every host's rows on the client's clock (t - offset) and
on the relay's tick grid: one time line with the relay's columns and the loads' summed.
On one machine (LocalCluster, the testbed) all clocks are one and the offsets measure
the method's error, which the bound must cover.

A load host that leaves the cluster mid-run (its worker killed) fails the run with that
reason; its load process, started in a session of its own, is then beyond reach and
ends by its bounded run time, or when the relay it sends to stops (a testbed's down()
stops it too, by pid, through its namespace).

May import: labkit.procs and labkit.counters (what a task starts and samples), besides
this folder; labkit.lab turns a PlacedRun into a Result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import secrets
import socket
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import pandas as pd

from labkit.procs.relay import default_start_timeout

SLICE = 0.25  # seconds: how long a task waits on the stop Event before looking again
READY_TIMEOUT = 30.0  # seconds for a task's process to start and report on its host
CLOCK_SAMPLES = 7
STOP_WAIT = 20.0  # seconds for every task to return after the stop Event
SETTLE = 0.1  # seconds between the relay's last counter reads: equal twice = settled
SETTLE_LIMIT = 2.0
# A worker whose connection to the scheduler stalls (a heartbeat stuck behind a shaped
# link's queue on a busy machine) drops out of the scheduler's list and comes back; one
# missing for this long is gone.
LOST_GRACE = 3.0
START_ALLOWANCE = 2.0  # seconds the load hosts may connect apart (see run_placed)


class ClusterError(RuntimeError):
    """The cluster cannot place or run this experiment; the message says why."""


# ---- where things run ---------------------------------------------------------------------


def worker_host(address: str) -> str:
    """The host part of a worker address: 'tcp://10.77.0.2:40123' -> '10.77.0.2'."""
    host = urlsplit(address).hostname
    if not host:
        raise ClusterError(f"worker address {address!r} names no host")
    return host


@dataclasses.dataclass(frozen=True)
class Placement:
    """Which worker runs the relay and which the load generators (worker addresses)."""

    relay: str
    load: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.load:
            raise ClusterError("a placement needs at least one load worker")
        if self.relay in self.load:
            raise ClusterError(f"worker {self.relay} cannot run both the relay and a load: "
                               "a placed run puts them on different workers")
        if len(set(self.load)) != len(self.load):
            raise ClusterError(f"load workers {list(self.load)} name one worker twice")

    @classmethod
    def spread(cls, client: Any, load_hosts: int = 1, *,
               workers: Sequence[str] | None = None) -> Placement:
        """The relay on the first worker, loads on the next `load_hosts` (sorted by
        address, so the same cluster gives the same placement); workers: choose among
        these instead of all the cluster's."""
        available = sorted(workers) if workers is not None else sorted(
            client.scheduler_info()["workers"])
        if not isinstance(load_hosts, int) or load_hosts < 1:
            raise ClusterError(f"load_hosts={load_hosts!r} must be an integer >= 1")
        if len(available) < 1 + load_hosts:
            raise ClusterError(
                f"the cluster has {len(available)} worker(s); a relay and {load_hosts} load "
                f"host(s) need {1 + load_hosts} (start more workers, or fewer load hosts)")
        return cls(available[0], tuple(available[1:1 + load_hosts]))

    @property
    def workers(self) -> tuple[str, ...]:
        return (self.relay, *self.load)

    def label(self, worker: str) -> str:
        """How a run names a worker's host: its address's host, or the whole worker
        address where two placed workers share a host (a LocalCluster)."""
        host = worker_host(worker)
        shared = sum(worker_host(w) == host for w in self.workers) > 1
        return worker if shared else host

    def describe(self) -> str:
        return (f"relay on {self.label(self.relay)}, load on "
                + ", ".join(self.label(w) for w in self.load))


def split_pairs(pairs: int, hosts: int) -> list[int]:
    """pairs over hosts as evenly as they go, the first hosts taking the remainder."""
    if not 1 <= hosts <= pairs:
        raise ClusterError(f"{pairs} pair(s) cannot be split over {hosts} load host(s): "
                           "load_hosts must be 1..pairs")
    return [pairs // hosts + (i < pairs % hosts) for i in range(hosts)]


# ---- clocks -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClockOffset:
    """A worker's time.time() minus the client's, and the bound on its error."""

    offset_s: float
    bound_s: float  # half the round trip of the sample kept

    def to_client(self, t: float) -> float:
        return t - self.offset_s


def clock_offsets(client: Any, workers: Sequence[str],
                  samples: int = CLOCK_SAMPLES) -> dict[str, ClockOffset]:
    """Each worker's clock against the client's, by round trips (see the module text)."""
    out: dict[str, ClockOffset] = {}
    for w in workers:
        best: ClockOffset | None = None
        for _ in range(samples):
            t0 = time.time()
            remote = client.run(time.time, workers=[w])[w]
            t1 = time.time()
            sample = ClockOffset(remote - (t0 + t1) / 2, (t1 - t0) / 2)
            if best is None or sample.bound_s < best.bound_s:
                best = sample
        assert best is not None
        out[w] = best
    return out


# ---- on the workers -----------------------------------------------------------------------


def _names(run_key: str) -> dict[str, str]:
    return {"stop": f"{run_key}-stop", "relay": f"{run_key}-relay",
            "address": f"{run_key}-address", "go": f"{run_key}-go"}


def _load_queue(run_key: str, i: int) -> str:
    return f"{run_key}-load{i}"


def _prime() -> None:
    import labkit.counters.sampler  # noqa: F401
    import labkit.procs.load  # noqa: F401
    import labkit.procs.relay  # noqa: F401


def _this_worker() -> tuple[Any, str, str]:
    from distributed import get_worker

    w = get_worker()
    return w, w.address, worker_host(w.address)


class _Streamer:
    """Sends a Sampler's new rows, stamped with this host's wall clock, to a Queue."""

    def __init__(self, sampler: Any, queue: Any) -> None:
        self.sampler = sampler
        self.queue = queue
        self.sent = 0
        # the sampler's t counts from its start on the monotonic clock: to wall time
        self.wall0 = time.time() - (time.monotonic() - sampler.started_monotonic)

    def flush(self) -> None:
        rows = self.sampler.rows_since(self.sent)
        if rows:
            self.sent += len(rows)
            for r in rows:
                r["wall"] = self.wall0 + r["t"]
            self.queue.put({"kind": "rows", "rows": rows})


def _pin(pid: int, cpus: Sequence[int], what: str) -> str:
    from labkit.procs import pinning

    if not cpus:
        return f"{what} not pinned: one CPU on this host"
    try:
        pinning.pin_process(pid, cpus)
    except OSError as e:
        return f"{what} not pinned: sched_setaffinity failed ({e.strerror})"
    return f"{what} on CPU {pinning.cpu_list(cpus)}"


def relay_task(run_key: str, relay_args: Mapping[str, Any], hz: float, perf: str | bool,
               start_timeout: float, stop_grace: float) -> dict[str, Any]:
    """On the relay's worker: start the relay on this host's address, pin it, sample it
    and stream the rows, noting where its clients connect from; stop by pid when the
    run's stop Event is set. Returns the relay's final state."""
    from distributed import Event, Queue

    from labkit.config import RelayConfig
    from labkit.counters.sampler import Sampler
    from labkit.procs import pinning
    from labkit.procs.relay import Relay

    names = _names(run_key)
    stop, out = Event(names["stop"]), Queue(names["relay"])
    _, address, host = _this_worker()
    cfg = RelayConfig(**relay_args).replace(host=host, port=0)
    relay = Relay(cfg, start_timeout=start_timeout, stop_grace=stop_grace)
    sampler = None
    state: dict[str, Any] = {"worker": address, "host": host, "hostname": socket.gethostname()}
    try:
        try:
            relay.start()
        except Exception as e:  # a refusal to start is the run's reason, sent as such
            out.put({"kind": "error", "error": f"the relay did not start on {host}: "
                     f"{str(e).splitlines()[0] if str(e) else type(e).__name__}",
                     "stderr_tail": getattr(e, "stderr_tail", "") or str(e)})
            return state | {"status": "failed"}
        relay_cpus, _, _ = pinning.plan_pinning(cfg.workers)
        state["pinning"] = "not pinned (pin_cpus in the config)" if cfg.pin_cpus else \
            _pin(relay.pid, relay_cpus, "relay")
        sampler = Sampler(relay=relay, load=None, hz=hz, run_id=run_key, perf=perf)
        sampler.start()
        cert = None
        if relay.cert_file:
            with open(relay.cert_file) as f:
                cert = f.read()
        out.put({"kind": "ready", "host": host, "port": relay.port, "tls": relay.tls,
                 "pid": relay.pid, "cert_pem": cert, "pinning": state["pinning"],
                 "netns": _netns(relay.pid), "sampler_netns": _netns(os.getpid()),
                 "sources": dict(sampler.sources), "wall": time.time()})
        streamer = _Streamer(sampler, out)
        peers: set[str] = set()
        while not stop.is_set():
            peers |= set(_peers(relay.pid, relay.port))
            streamer.flush()
            if relay.returncode is not None:
                code = relay.wait(stop_grace)
                how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
                out.put({"kind": "error", "error": f"the relay on {host} died mid-run ({how})",
                         "stderr_tail": relay.stderr_tail})
                break
            stop.wait(SLICE)
        state["peers"] = sorted(peers)
        state["final_counters"] = _settled(relay) if relay.returncode is None else {}
        sampler.stop()
        streamer.flush()
        state["sources"] = dict(sampler.sources)
        state["sampler_errors"] = list(sampler.errors)
    finally:
        if sampler is not None:
            sampler.stop()
        code = relay.stop()
    state |= {"status": "ok", "exit_code": code, "stderr_tail": relay.stderr_tail[-4000:]}
    return state


def _netns(pid: int) -> list[int]:
    """(device, inode) of pid's network namespace: what /run/netns/NAME of the testbed
    host it runs in has too."""
    st = os.stat(f"/proc/{pid}/ns/net")
    return [st.st_dev, st.st_ino]


def _peers(pid: int, port: int) -> list[str]:
    """The remote addresses of the established TCP connections to `port`, as the relay's
    own network namespace sees them (/proc/PID/net/tcp): where its clients really are."""
    peers = set()
    with contextlib.suppress(OSError), open(f"/proc/{pid}/net/tcp") as f:
        for line in f.readlines()[1:]:
            local, remote, state = line.split()[1:4]
            if state == "01" and int(local.split(":")[1], 16) == port:
                ip = bytes.fromhex(remote.split(":")[0])[::-1]  # little-endian on x86/arm
                peers.add(socket.inet_ntoa(ip))
    return sorted(peers)


def _settled(relay: Any) -> dict[str, int]:
    """The relay's counters once its workers have published their last packets (two
    reads SETTLE apart agree, or SETTLE_LIMIT passed)."""
    last = relay.counters()
    deadline = time.monotonic() + SETTLE_LIMIT
    while time.monotonic() < deadline:
        time.sleep(SETTLE)
        now = relay.counters()
        if now == last:
            break
        last = now
    return last


def load_task(run_key: str, index: int, load_args: Mapping[str, Any], hz: float,
              start_timeout: float, stop_grace: float) -> dict[str, Any]:
    """On a load worker: start the load generator against the relay (its address from
    the run's Variable), pin it, sample and stream; return its result, or why it failed.
    Stopped early (SIGTERM by pid) when the run's stop Event is set."""
    from distributed import Event, Queue, Variable

    from labkit.counters.sampler import Sampler
    from labkit.procs import pinning
    from labkit.procs.load import Load, LoadConfig, LoadError

    names = _names(run_key)
    stop, out = Event(names["stop"]), Queue(_load_queue(run_key, index))
    relay = Variable(names["address"]).get()
    _, address, host = _this_worker()
    state: dict[str, Any] = {"worker": address, "host": host, "hostname": socket.gethostname()}
    with contextlib.ExitStack() as stack:
        changes: dict[str, Any] = {"host": relay["host"], "port": relay["port"],
                                   "tls": relay["tls"]}
        if relay["tls"] != "off" and relay["cert_pem"] and not load_args.get("insecure") \
                and load_args.get("ca_file") is None:
            # the relay's certificate lives on its host: this host verifies against a copy
            d = stack.enter_context(tempfile.TemporaryDirectory(prefix="labkit-cluster-"))
            path = os.path.join(d, "relay.pem")
            with open(path, "w") as f:
                f.write(relay["cert_pem"])
            changes["ca_file"] = path
        cfg = LoadConfig(**load_args).replace(**changes)
        load = Load(cfg, start_timeout=start_timeout, stop_grace=stop_grace)
        sampler = None
        # every load host spawns its process at the client's "go", once all are here: a
        # load that started first would send through its warm-up while the others still
        # start (on a one-CPU guest, starving them), and the windows would drift apart
        out.put({"kind": "armed"})
        go = Event(names["go"])
        while not go.wait(SLICE):
            if stop.is_set():
                return state | {"status": "stopped"}
        try:
            try:
                load.start()
            except (LoadError, OSError) as e:
                out.put({"kind": "error", "error": f"the load generator on {host} did not "
                         f"start: {str(e).splitlines()[0]}",
                         "stderr_tail": getattr(e, "stderr_tail", "") or str(e)})
                return state | {"status": "failed"}
            ready_wall = time.time()
            _, load_cpus, _ = pinning.plan_pinning(1)
            state["pinning"] = _pin(load.pid, load_cpus, "load")
            sampler = Sampler(relay=None, load=load, hz=hz, run_id=run_key, perf=False)
            sampler.start()
            out.put({"kind": "ready", "host": host, "pid": load.pid, "wall": ready_wall,
                     "pinning": state["pinning"]})
            streamer = _Streamer(sampler, out)
            while load.returncode is None and not stop.wait(min(SLICE, 1.0 / hz)):
                streamer.flush()
            if stop.is_set() and load.returncode is None:
                state["stopped"] = True
                load.stop()
            try:
                res = load.wait(stop_grace + 5.0)
            except LoadError as e:
                out.put({"kind": "error", "error": f"the load generator on {host} failed "
                         f"({type(e).__name__})",
                         "stderr_tail": getattr(e, "stderr_tail", "") or str(e)})
                return state | {"status": "failed"}
            finally:
                sampler.stop()
                streamer.flush()
            state["result"] = dataclasses.asdict(res)
        finally:
            if sampler is not None:
                sampler.stop()
            load.stop()
    return state | {"status": "ok", "stderr_tail": load.stderr_tail[-4000:]}


# ---- on the client ------------------------------------------------------------------------


@dataclasses.dataclass
class PlacedRun:
    """What run_placed() brings back; labkit.lab.experiment turns it into a Result."""

    status: str  # ok, failed, stopped
    error: str | None
    stderr_tail: str | None
    t0: float  # client wall clock of t = 0
    window: tuple[float, float]  # the relay window's edges, client wall clock
    load_results: list[dict[str, Any]]  # LoadResult fields, per load host
    timeline: pd.DataFrame
    hosts: dict[str, Any]
    sources: dict[str, str]


def _drain(queue: Any) -> list[dict[str, Any]]:
    return list(queue.get(batch=True)) if queue.qsize() else []


def run_placed(client: Any, placement: Placement, relay_args: Mapping[str, Any],
               load_args: Mapping[str, Any], *, hz: float = 10.0, perf: str | bool = "auto",
               start_timeout: float | None = None, stop_grace: float = 1.0,
               should_stop: Callable[[], bool] = lambda: False,
               on_ready: Callable[[dict[str, Any]], None] | None = None,
               on_row: Callable[[pd.DataFrame], None] | None = None,
               start_allowance: float = START_ALLOWANCE) -> PlacedRun:
    """One run on the cluster: the relay on placement.relay, the load's pairs split over
    placement.load. relay_args/load_args: RelayConfig/LoadConfig fields (addresses are
    filled in on the hosts). should_stop() is asked every slice (a RunControl); on_ready
    gets the hosts' ready messages once all are up (tests kill a host there); on_row the
    merged time line so far, once per slice (a live panel). start_timeout: each process's
    start bound (default: the relay's, wider inside the sandbox guest).

    The window. Each load host starts its warm-up when it has connected, and the hosts
    connect at different times (a process start takes longer on a busy host). So every
    load runs `start_allowance` seconds longer than asked, and the run's window is one
    for all: from the last host's end of warm-up, `duration` long, inside every host's
    own window as long as they connected less than start_allowance apart (else the run
    fails, saying so). The window's figures are taken over it from the hosts' counters
    (labkit.lab.experiment), never from windows that differ per host."""
    from distributed import Event, Queue, Variable, wait

    workers = set(client.scheduler_info()["workers"])
    missing = [w for w in placement.workers if w not in workers]
    if missing:
        raise ClusterError(f"worker(s) {', '.join(missing)} are not in the cluster "
                           f"(it has {', '.join(sorted(workers)) or 'none'})")
    if start_timeout is None:
        start_timeout = default_start_timeout()
    # what the tasks import, imported on every placed worker first: a worker's first
    # import of pandas and labkit takes a second or more on a busy machine, which would
    # otherwise start one load host's window that much later than another's
    client.run(_prime, workers=list(placement.workers))
    offsets = clock_offsets(client, placement.workers)
    run_key = f"labkit-{secrets.token_hex(6)}"
    names = _names(run_key)
    # client= every time: the default client is the newest one made in this process,
    # which need not be this run's cluster (a notebook may hold several)
    stop, relay_q = Event(names["stop"], client=client), Queue(names["relay"], client=client)
    address = Variable(names["address"], client=client)
    go = Event(names["go"], client=client)
    armed: set[str] = set()
    load_qs = [Queue(_load_queue(run_key, i), client=client)
               for i in range(len(placement.load))]
    split = split_pairs(int(load_args["pairs"]), len(placement.load))
    info: dict[str, Any] = {"status": "ok", "error": None, "stderr_tail": None}
    relay_rows: list[dict[str, Any]] = []
    load_rows: list[list[dict[str, Any]]] = [[] for _ in placement.load]
    ready: dict[str, Any] = {}
    futures: list[Any] = []
    t0 = time.time()
    window = (math.nan, math.nan)
    results: list[dict[str, Any]] = []
    relay_state: dict[str, Any] = {}

    def fail(error: str, tail: str | None = None) -> None:
        if info["status"] == "ok":
            info.update(status="failed", error=error, stderr_tail=tail)

    def pump() -> None:
        """Take what the hosts sent; a host's error fails the run."""
        for msg in _drain(relay_q):
            _take(msg, "relay", relay_rows)
        for i, q in enumerate(load_qs):
            for msg in _drain(q):
                _take(msg, f"load{i}", load_rows[i])

    def _take(msg: dict[str, Any], who: str, rows: list[dict[str, Any]]) -> None:
        kind = msg["kind"]
        if kind == "rows":
            rows.extend(msg["rows"])
        elif kind == "armed":
            armed.add(who)
        elif kind == "ready":
            ready[who] = msg | {"worker": placement.relay if who == "relay" else
                                placement.load[int(who.removeprefix("load"))]}
        elif kind == "error":
            fail(msg["error"], msg.get("stderr_tail"))

    missing_since: dict[str, float] = {}

    def lost_host() -> str | None:
        here = set(client.scheduler_info()["workers"])
        now = time.monotonic()
        for w in placement.workers:
            if w in here:
                missing_since.pop(w, None)
            elif now - missing_since.setdefault(w, now) >= LOST_GRACE:
                role = "relay" if w == placement.relay else "load"
                return f"the {role} host {w} left the cluster mid-run"
        for f in futures:
            if f.status == "error":
                return f"a task failed on the cluster: {f.exception()!r}"
        return None

    def slice_until(done: Callable[[], bool], deadline: float, what: str) -> bool:
        while not done():
            pump()
            if info["status"] != "ok":
                return False
            if should_stop():
                info.update(status="stopped", error="stopped by request")
                return False
            gone = lost_host()
            if gone:
                fail(gone)
                return False
            if time.monotonic() > deadline:
                fail(f"timed out waiting for {what}")
                return False
            if on_row is not None and relay_rows:
                on_row(merge_timelines(relay_rows, load_rows, offsets_for(), t0))
            time.sleep(min(SLICE, 1.0 / hz))
        return True

    def offsets_for() -> list[ClockOffset]:
        return [offsets[w] for w in placement.workers]

    try:
        futures.append(client.submit(
            relay_task, run_key, dict(relay_args), hz, perf, start_timeout, stop_grace,
            workers=[placement.relay], allow_other_workers=False, pure=False,
            key=f"{run_key}-relay-task"))
        # the task's own start on its worker, then the relay's start bound inside it
        ok = slice_until(lambda: "relay" in ready,
                         time.monotonic() + READY_TIMEOUT + start_timeout,
                         f"the relay to start on {worker_host(placement.relay)}")
        if ok:
            address.set(ready["relay"])
            rate = load_args.get("rate_mbps")
            for i, (w, pairs) in enumerate(zip(placement.load, split, strict=True)):
                share = {"pairs": pairs,
                         "duration": load_args["duration"] + start_allowance}
                if rate is not None:  # the offered rate is over all senders: split it too
                    share["rate_mbps"] = rate * pairs / sum(split)
                futures.append(client.submit(
                    load_task, run_key, i, dict(load_args) | share, hz,
                    start_timeout, stop_grace, workers=[w], allow_other_workers=False,
                    pure=False, key=f"{run_key}-load{i}-task"))
            ok = slice_until(lambda: len(armed) == len(load_qs),
                             time.monotonic() + READY_TIMEOUT, "the load hosts to arm")
            if ok:
                go.set()
            ok = ok and slice_until(
                lambda: all(f"load{i}" in ready for i in range(len(load_qs))),
                             time.monotonic() + READY_TIMEOUT + start_timeout,
                             "the load generators to connect")
        if ok:
            # load i's own window starts warmup after it connected and lasts duration +
            # start_allowance; the run's window starts at the last of them
            starts = [offsets[w].to_client(ready[f"load{i}"]["wall"]) + load_args["warmup"]
                      for i, w in enumerate(placement.load)]
            window = (max(starts), max(starts) + load_args["duration"])
            if max(starts) - min(starts) > start_allowance:
                fail(f"the load hosts connected {max(starts) - min(starts):.2f} s apart, "
                     f"more than the start allowance of {start_allowance:g} s")
            else:
                if on_ready is not None:
                    on_ready(dict(ready))
                total = (load_args["warmup"] + load_args["duration"] + start_allowance
                         + 10.0 + 4 * stop_grace)
                slice_until(lambda: all(f.done() for f in futures[1:]),
                            time.monotonic() + total, "the load generators to finish")
        pump()
    finally:
        stop.set()
        # a task whose worker is gone never returns: cancel it, wait for the others
        here = set(client.scheduler_info()["workers"])
        placed_on = [placement.relay, *placement.load]
        alive = [f for f, w in zip(futures, placed_on, strict=False) if w in here]
        with contextlib.suppress(TimeoutError):
            wait(alive, timeout=STOP_WAIT)
        for f in futures:
            if f.done() and f.status == "finished":
                continue
            fail(f"a task did not return after the stop Event: {f.key} is {f.status}")
            f.cancel()
        for i, f in enumerate(futures):
            if f.status != "finished":
                continue
            state = f.result()
            if i == 0:
                relay_state = state
            elif "result" in state:
                results.append(state["result"] | {"host": state["host"]})
        pump()
        for q in (relay_q, *load_qs):
            with contextlib.suppress(Exception):
                _drain(q)
            with contextlib.suppress(Exception):
                q.close()
        with contextlib.suppress(Exception):
            address.delete()
        for event in (stop, go):
            with contextlib.suppress(Exception):
                event.clear()
    if info["status"] == "ok" and len(results) != len(placement.load):
        fail("a load host returned no result")
    label = placement.label
    hosts = {
        "relay": label(placement.relay),
        "load": [label(w) for w in placement.load],
        "workers": {"relay": placement.relay, "load": list(placement.load)},
        "pairs_per_load_host": split,
        "clock": {label(w): {"offset_s": offsets[w].offset_s, "bound_s": offsets[w].bound_s}
                  for w in placement.workers},
        "clock_method": "scheduler round trips: offset = worker time.time() - (t0+t1)/2, "
                        "bound = (t1-t0)/2, shortest of "
                        f"{CLOCK_SAMPLES} round trips kept",
        "relay_window": [window[0] - t0, window[1] - t0],
        "start_allowance_s": start_allowance,
        # how much later each load's window began than the earliest's
        "load_lateness_s": _lateness(ready, placement, offsets),
        "pinning": {f"{label(m['worker'])} ({who.rstrip('0123456789')})": m.get("pinning")
                    for who, m in ready.items()},
        "relay_exit_code": relay_state.get("exit_code"),
        # lists, as the stored run's JSON has them (the queues deliver tuples)
        "relay_netns": list(ready.get("relay", {}).get("netns") or []),
        "relay_sampler_netns": list(ready.get("relay", {}).get("sampler_netns") or []),
        "relay_peers": list(relay_state.get("peers", [])),
        "relay_final_counters": relay_state.get("final_counters", {}),
    }
    sources = {f"relay@{hosts['relay']}:{k}": v
               for k, v in (relay_state.get("sources") or {}).items()}
    timeline = merge_timelines(relay_rows, load_rows, offsets_for(), t0)
    return PlacedRun(info["status"], info["error"], info["stderr_tail"], t0, window,
                     results, timeline, hosts, sources)


def _lateness(ready: Mapping[str, Any], placement: Placement,
              offsets: Mapping[str, ClockOffset]) -> dict[str, float]:
    starts = {placement.label(w): offsets[w].to_client(ready[f"load{i}"]["wall"])
              for i, w in enumerate(placement.load) if f"load{i}" in ready}
    first = min(starts.values(), default=0.0)
    return {host: t - first for host, t in starts.items()}


def merge_timelines(relay_rows: Sequence[Mapping[str, Any]],
                    load_rows: Sequence[Sequence[Mapping[str, Any]]],
                    offsets: Sequence[ClockOffset], t0: float) -> pd.DataFrame:
    """One time line from per-host sampler rows: offsets[0] is the relay host's clock,
    offsets[1:] the load hosts'. Each row's `wall` goes to the client's clock and `t`
    becomes seconds since t0; the relay's rows set the grid, and each load host's
    cumulative columns (load.*, proc.load.*) are taken at its last row at or before each
    grid time and summed over hosts (per host too, as host.<address>.<column>). Columns
    are the sampler's cumulative ones (relay.*, proc.relay.*, perf.*, load.*,
    proc.load.*); labkit.lab.experiment derives the tick rates from them."""
    if not relay_rows:
        return pd.DataFrame(columns=["t"])
    relay = pd.DataFrame([_cumulative(r, ("relay.", "proc.relay", "perf.")) for r in relay_rows])
    relay["t"] = [offsets[0].to_client(r["wall"]) - t0 for r in relay_rows]
    relay = relay.sort_values("t").reset_index(drop=True)
    summed: dict[str, Any] = {}
    for i, rows in enumerate(load_rows):
        if not rows:
            continue
        lo = pd.DataFrame([_cumulative(r, ("load.", "proc.load.")) for r in rows])
        lo["t"] = [offsets[1 + i].to_client(r["wall"]) - t0 for r in rows]
        lo = lo.sort_values("t")
        at = pd.merge_asof(relay[["t"]], lo, on="t", direction="backward")
        for c in lo.columns:
            if c == "t":
                continue
            summed[c] = summed.get(c, 0) + at[c]
            summed[f"host{i + 1}.{c}"] = at[c]
    return pd.concat([relay, pd.DataFrame(summed)], axis=1)


def _cumulative(row: Mapping[str, Any], prefixes: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k.startswith(prefixes)}
