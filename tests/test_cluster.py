"""Relay and load on different hosts through dask.distributed (labkit/hosts/cluster.py,
testbed_cluster.py; run(cluster=...)): a LocalCluster's workers as hosts, then the
namespace testbed's (a worker in each host's namespace), then the sandbox guest's
testbed with netem delay.

What is compared is like with like: the relay's counters over the whole run against the
load generators' counts over the whole run (every phase: total_received), never the
relay's window against a load's window (their edges differ by the hosts' start times).
Figures that depend on the machine (throughput under a rate limit, RTT under a delay)
are asserted with margins that hold on a busy 2-core machine. The guest imports this
module to run guest_delay_through_dask() (cwd = tests/), so nothing at module level may
need root, a cluster or a guest.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from labkit.config import RelayConfig
from labkit.hosts import cluster, qdisc, sandbox, testbed
from labkit.hosts.qdisc import LinkShape
from labkit.lab import experiment
from labkit.procs.load import LoadConfig

TESTS = Path(__file__).parent
ROOT = TESTS.parent


def local_cluster(n: int) -> Any:
    from distributed import LocalCluster

    # processes: each worker is a host process of its own, as on separate machines
    return LocalCluster(n_workers=n, threads_per_worker=2, processes=True,
                        dashboard_address=None, silence_logs=40)


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    from distributed import Client

    with local_cluster(3) as lc, Client(lc) as c:
        yield c


def totals(result: Any) -> tuple[int, int]:
    """(packets the relay forwarded in the whole run, packets the load hosts received in
    the whole run)."""
    h = result.meta["hosts"]
    received = sum(r["total_received"] for r in h["load_results"])
    return int(h["relay_final_counters"]["packets_forwarded"]), int(received)


def assert_counts_agree(result: Any, size: int) -> None:
    forwarded, received = totals(result)
    fwd_bytes = result.meta["hosts"]["relay_final_counters"]["packet_bytes_forwarded"]
    assert received > 0 and forwarded == received, (forwarded, received)
    assert fwd_bytes == size * received  # payload only: frame headers are not counted


def pid_exits(pid: int, timeout: float) -> bool:
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


# ---- no cluster needed ------------------------------------------------------------------------

def test_pairs_split_evenly_and_refuse_more_hosts_than_pairs() -> None:
    assert cluster.split_pairs(5, 2) == [3, 2]
    assert cluster.split_pairs(4, 4) == [1, 1, 1, 1]
    with pytest.raises(cluster.ClusterError, match="load_hosts must be 1..pairs"):
        cluster.split_pairs(2, 3)


def test_check_run_refuses_a_placement_without_a_cluster_and_too_many_hosts() -> None:
    with pytest.raises(experiment.ConfigError) as e:
        experiment.check_run(RelayConfig(), LoadConfig(pairs=2), load_hosts=3)
    text = str(e.value)
    assert "needs a cluster" in text and "load_hosts must be 1..pairs (2), not 3" in text


def test_placement_puts_relay_and_load_on_different_workers() -> None:
    with pytest.raises(cluster.ClusterError, match="cannot run both"):
        cluster.Placement("tcp://10.0.0.1:1", ("tcp://10.0.0.1:1",))
    p = cluster.Placement("tcp://10.0.0.1:1", ("tcp://10.0.0.2:1", "tcp://10.0.0.3:1"))
    assert p.describe() == "relay on 10.0.0.1, load on 10.0.0.2, 10.0.0.3"
    shared = cluster.Placement("tcp://127.0.0.1:1", ("tcp://127.0.0.1:2",))
    assert shared.describe() == "relay on tcp://127.0.0.1:1, load on tcp://127.0.0.1:2"


def test_merge_timelines_aligns_clocks_and_sums_the_load_hosts() -> None:
    """A load host whose clock is 5 s ahead: its rows land where the relay's are."""
    relay = [{"wall": 100.0 + k / 10, "relay.packets_forwarded": 10 * k} for k in range(10)]
    ahead = [{"wall": 105.0 + k / 10, "load.load_received": 4 * k} for k in range(10)]
    exact = [{"wall": 100.0 + k / 10, "load.load_received": 6 * k} for k in range(10)]
    offsets = [cluster.ClockOffset(0.0, 0.001), cluster.ClockOffset(5.0, 0.001),
               cluster.ClockOffset(0.0, 0.001)]
    line = cluster.merge_timelines(relay, [ahead, exact], offsets, t0=100.0)
    assert line["t"].round(6).tolist() == [round(k / 10, 6) for k in range(10)]
    assert line["load.load_received"].tolist() == [10 * k for k in range(10)]
    assert line["host1.load.load_received"].tolist() == [4 * k for k in range(10)]


# ---- a LocalCluster: workers as hosts -------------------------------------------------------

def test_two_workers_one_time_line_and_every_byte_accounted(client: Any) -> None:
    """The relay on one worker, the load on another: one time line on the client's clock
    whose relay and load columns both move in the window, counts that agree over the
    whole run, clock offsets within their bounds (one machine: the true offset is 0)."""
    size = 1000
    placement = cluster.Placement.spread(client, 1)
    r = experiment.run(RelayConfig(io="epoll"), LoadConfig(pairs=2, size=size, rate_mbps=80),
                       duration=1.5, warmup=0.5, cluster=client, placement=placement)
    assert r.ok, r.error
    assert_counts_agree(r, size)
    h = r.meta["hosts"]
    assert h["workers"] == {"relay": placement.relay, "load": list(placement.load)}
    for c in h["clock"].values():
        assert abs(c["offset_s"]) <= c["bound_s"] + 0.005
    ts = r.timeseries
    assert ts["t"].is_monotonic_increasing and set(ts["phase"]) >= {"warmup", "window"}
    win = ts[ts["phase"] == "window"]
    assert (win["mbps"] > 0).mean() > 0.5 and (win["load_mbps"] > 0).mean() > 0.5
    assert ts["relay.packets_forwarded"].is_monotonic_increasing
    assert ts["load.load_received"].dropna().is_monotonic_increasing
    # the window's figures: offered 80 Mbit/s, delivered about that (a paced load loses
    # nothing), and the relay's syscalls per packet from the relay's own counters
    assert 0.7 * 80 <= r.summary["mbps"] <= 1.1 * 80
    # A paced load loses nothing in the relay: every packet it took in, it forwarded, and
    # the load received all of those. The window's loss figure can still count a few that
    # arrived after the generator's drain period (0.07 % once, with a CPU hog beside).
    fc = h["relay_final_counters"]
    assert fc["packets_in"] == fc["packets_forwarded"] and r.summary["drops"] == 0
    assert r.summary["loss_pct"] < 1
    assert r.summary["syscalls_per_packet"] > 0
    assert h["figure_hosts"]["syscalls_per_packet"] == h["relay"]
    assert h["figure_hosts"]["mbps"] == ",".join(h["load"])
    lo, hi = h["relay_window"]  # one window for all hosts, as long as asked
    assert hi - lo == pytest.approx(1.5) and h["start_allowance_s"] > 0


def test_pairs_and_rate_are_split_over_the_load_hosts(client: Any) -> None:
    r = experiment.run(RelayConfig(), LoadConfig(pairs=3, size=600, rate_mbps=60),
                       duration=1.0, warmup=0.4, cluster=client, load_hosts=2)
    assert r.ok, r.error
    h = r.meta["hosts"]
    assert h["pairs_per_load_host"] == [2, 1] and len(h["load_results"]) == 2
    assert all(x["total_received"] > 0 for x in h["load_results"])
    assert_counts_agree(r, 600)
    # 2/3 and 1/3 of the rate: what each host offered, from its own window
    offered = [x["sent"] * 600 * 8 / x["seconds"] / 1e6 for x in h["load_results"]]
    assert offered[0] == pytest.approx(40, rel=0.15) and offered[1] == pytest.approx(
        20, rel=0.15)
    assert r.summary["load_hosts"] == ",".join(h["load"])


def test_a_load_host_killed_mid_run_fails_the_run_and_the_cluster_serves_the_next() -> None:
    """SIGKILL to a load host's worker process once the run is going: the run is
    recorded as failed with the reason, the relay's task returns (its worker is free),
    the orphaned load process ends by itself, and the next run on the cluster is fine."""
    from distributed import Client

    with local_cluster(3) as lc, Client(lc) as c:
        placement = cluster.Placement.spread(c, 2)
        victim = placement.load[1]
        victim_pid = c.run(os.getpid, workers=[victim])[victim]
        seen: dict[str, Any] = {}

        def kill(ready: dict[str, Any]) -> None:
            seen.update(ready)
            os.kill(victim_pid, signal.SIGKILL)

        r = experiment.run(RelayConfig(), LoadConfig(pairs=2, rate_mbps=40), duration=3,
                           warmup=0.5, cluster=c, placement=placement, on_placed=kill,
                           check=False)
        assert r.status == "failed"
        assert f"the load host {victim}" in r.error and "left the cluster" in r.error
        assert r.meta["hosts"]["relay_exit_code"] == 0  # the relay task stopped it cleanly
        # beyond reach once its worker died: it ends when the relay it sent to is gone
        assert pid_exits(seen["load1"]["pid"], 20.0)
        again = experiment.run(RelayConfig(), LoadConfig(pairs=2, rate_mbps=40),
                               duration=0.8, warmup=0.3, cluster=c, load_hosts=1)
        assert again.ok, again.error
        assert_counts_agree(again, 1400)


def test_cli_runs_on_a_cluster_and_refuses_before_starting(client: Any,
                                                           tmp_path: Path) -> None:
    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "labkit", "run", *argv], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)

    address = client.scheduler.address
    p = cli("--cluster", address, "--pairs", "2", "--rate", "40", "--duration", "0.8",
            "--warmup", "0.3", "--store", str(tmp_path), "--no-progress", "--json")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("relay on tcp://") and ", load on tcp://" in lines[0]
    summary = json.loads(lines[-1])
    assert summary["status"] == "ok" and summary["relay_host"] in lines[0]
    assert len(list(tmp_path.glob("*.parquet"))) == 1
    p = cli("--cluster", address, "--pairs", "2", "--load-hosts", "3", "--no-store")
    assert p.returncode == 2 and "--load-hosts must be 1..pairs (2), not 3" in p.stderr
    p = cli("--load-hosts", "1", "--no-store")
    assert p.returncode == 2 and "needs a cluster" in p.stderr
    p = cli("--cluster", "tcp://127.0.0.1:9", "--no-store")
    assert p.returncode == 2 and "no dask scheduler reached at tcp://127.0.0.1:9" in p.stderr


# ---- the namespace testbed: a worker in each host -----------------------------------------

@pytest.fixture
def name() -> Iterator[str]:
    ok, why = testbed.available()
    if not ok:
        pytest.skip(why)
    chosen = f"c{secrets.token_hex(3)}"
    yield chosen
    testbed.Testbed(chosen).down()


def test_three_hosts_relay_and_load_in_different_namespaces(name: str) -> None:
    """Relay in host 1, loads in hosts 2 and 3, through dask: the relay process and the
    sampler that read its counters are in host 1's namespace, its clients came from
    hosts 2 and 3's addresses, and every packet is accounted for."""
    from labkit.hosts.testbed_cluster import testbed_client

    with testbed.Testbed(name, hosts=3, subnet="10.78.0.0/24", control=True) as tb, \
            testbed_client(tb) as c:
        hosts = {w: cluster.worker_host(w) for w in c.scheduler_info()["workers"]}
        assert sorted(hosts.values()) == [tb.address(i) for i in (1, 2, 3)]
        r = experiment.run(RelayConfig(io="uring"), LoadConfig(pairs=2, rate_mbps=60),
                           duration=1.0, warmup=0.4, cluster=c, load_hosts=2)
        h1 = os.stat(f"/run/netns/{tb.netns(1)}")
        assert r.ok, r.error
        h = r.meta["hosts"]
        assert h["relay"] == tb.address(1) and h["load"] == [tb.address(2), tb.address(3)]
        assert h["relay_netns"] == h["relay_sampler_netns"] == [h1.st_dev, h1.st_ino]
        assert h["relay_peers"] == [tb.address(2), tb.address(3)]
        assert_counts_agree(r, 1400)
        assert r.summary["placement"] == (f"relay on {tb.address(1)}, load on "
                                          f"{tb.address(2)}, {tb.address(3)}")


def test_rate_shaped_links_cap_a_placed_run(name: str) -> None:
    """tbf at 40 Mbit/s on every link: an unpaced placed run delivers at most that."""
    if qdisc.shaping_caps()["tbf"] is not True:
        pytest.skip(f"no tbf here: {qdisc.shaping_caps()['tbf']}")
    from labkit.hosts.testbed_cluster import testbed_client

    rate = 40.0
    with testbed.Testbed(name, hosts=2, subnet="10.78.1.0/24", control=True,
                         link=LinkShape(rate_mbit=rate)) as tb, testbed_client(tb) as c:
        r = experiment.run(RelayConfig(), LoadConfig(pairs=2, size=1200), duration=1.5,
                           warmup=0.5, cluster=c, load_hosts=1)
    assert r.ok, r.error
    print(f"placed run over 40 Mbit/s links: {r.summary['mbps']:.1f} Mbit/s delivered")
    # payload under the rate (headers take ~5 %); well above a fraction of it
    assert 0.5 * rate <= r.summary["mbps"] <= 1.02 * rate


def test_testbed_down_after_a_killed_notebook_leaves_nothing(name: str) -> None:
    """A kernel killed inside testbed_client(): its workers live on in the namespaces;
    `labkit testbed down` stops them and removes everything, checked."""
    script = (
        "import os, sys, time\n"
        "from labkit.hosts.testbed import Testbed\n"
        "from labkit.hosts.testbed_cluster import testbed_client\n"
        f"tb = Testbed({name!r}, hosts=2, subnet='10.78.2.0/24', control=True).up()\n"
        "cm = testbed_client(tb); c = cm.__enter__()\n"
        "print(' '.join(str(p.pid) for p in tb._procs), flush=True)\n"
        "time.sleep(120)\n")
    notebook = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, text=True,
                                stdout=subprocess.PIPE)
    assert notebook.stdout is not None
    workers = [int(p) for p in notebook.stdout.readline().split()]
    assert len(workers) == 2
    fds = [os.pidfd_open(p) for p in workers]
    notebook.kill()
    notebook.wait()
    p = subprocess.run([sys.executable, "-m", "labkit", "testbed", "down", "--name", name],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert all(select.select([fd], [], [], 0)[0] for fd in fds)  # every worker has exited
    for fd in fds:
        os.close(fd)
    assert not [n for n in os.listdir("/run/netns") if n.startswith(f"{name}-")]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert f"{name}-" not in links


# ---- in the sandbox guest, where netem exists -------------------------------------------------

DELAY_MS = 10.0  # per link: a host-to-host round trip is 20 ms


def guest_delay_through_dask() -> dict[str, Any]:
    """In the guest: a 3-host testbed with dask workers, one echo run unshaped and one
    with DELAY_MS on every link (reshaped in place), the relay in host 1 and the echo
    load in host 2. Returns both runs' latency and the hosts. (A process start in the
    one-CPU guest takes seconds: hence the long start_timeout.)"""
    from labkit.hosts.testbed_cluster import testbed_client

    out: dict[str, Any] = {"caps": qdisc.shaping_caps()}
    with testbed.Testbed("g", hosts=3, control=True) as tb, testbed_client(tb) as c:
        for label, shape in (("plain", LinkShape()), ("delay", LinkShape(delay_ms=DELAY_MS))):
            tb.reshape(shape)
            r = experiment.run(RelayConfig(), LoadConfig(mode="echo", pairs=1, size=200,
                                                         rate_mbps=0.5),
                               duration=2.0, warmup=0.5, cluster=c, load_hosts=1,
                               perf=False, check=False, start_timeout=60,
                               start_allowance=10)
            out[label] = {"status": r.status, "error": r.error,
                          "p50_ms": float(r.summary["lat_p50_us"]) / 1000,
                          "min_ms": float(r.meta["hosts"]["load_results"][0]["latency"]["min"])
                          / 1000 if r.ok else None,
                          "relay": r.meta["hosts"]["relay"], "load": r.meta["hosts"]["load"]}
    return out


GUEST_OK, GUEST_WHY = sandbox.available()
GUEST_TIMEOUT_S = 420  # a guest run took 80 s beside another suite, over 120 s once alone


@pytest.mark.skipif(not GUEST_OK or sandbox.inside_guest(),
                    reason=GUEST_WHY if not GUEST_OK else "already in the sandbox")
@pytest.mark.timeout(GUEST_TIMEOUT_S + 60)  # the guest's own bound, then teardown
def test_netem_delay_shows_in_the_ping_rtt_of_a_placed_run_in_the_guest() -> None:
    """An echo packet crosses four links (client to relay and back, relay to the echoing
    client and back): with DELAY_MS on each, every round trip takes 4 x DELAY_MS more
    than unshaped. Noise only adds time, so the fastest is at least that, and the fastest
    is where a delay applied twice would show: the median of a guest on a busy host
    carries its queueing too (71.6 ms for 40 + 0.6 in one run beside another suite), and
    so may the unshaped run's median, which is why the medians are not subtracted (one run
    beside another suite: unshaped 142.1 ms, shaped 89.4 ms)."""
    started = time.monotonic()
    f = testbed.in_guest("test_cluster:guest_delay_through_dask", cwd=TESTS,
                         timeout=GUEST_TIMEOUT_S)
    assert f["caps"]["netem"] is True
    plain, delay = f["plain"], f["delay"]
    assert plain["status"] == delay["status"] == "ok", (plain["error"], delay["error"])
    assert delay["relay"] == "10.77.0.1" and delay["load"] == ["10.77.0.2"]
    added = 4 * DELAY_MS
    print(f"guest ({time.monotonic() - started:.0f} s): echo RTT p50 unshaped "
          f"{plain['p50_ms']:.2f} ms, with {DELAY_MS:g} ms per link {delay['p50_ms']:.2f} ms "
          f"(fastest {delay['min_ms']:.2f})")
    assert added - 0.5 <= delay["min_ms"] <= added + 15
    assert delay["p50_ms"] >= added - 0.5
    assert plain["min_ms"] < 15
