"""The network-namespace testbed (labkit/hosts/testbed.py, qdisc.py): hosts on a switch,
idempotent up, a down that leaves no namespace, interface or process (also after a crash),
shaping probed per qdisc, delay and loss refused where the kernel has no netem and real
in the sandbox guest, rate shaping on the host.

Tests that touch the kernel skip, with the reason, without root or where network
namespaces do not work; the guest ones where there is no guest kernel. Every figure is
measured by the kernel's own path between two namespaces (UDP echo, TCP transfer) and
asserted as a median or a count over many packets, with margins for a busy 2-core
machine. The guest imports this module to run guest_rtt_and_loss() (cwd = tests/), so
nothing at module level may need root or a guest.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import select
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from labkit.hosts import qdisc, sandbox, testbed
from labkit.hosts.qdisc import LinkShape

TESTS = Path(__file__).parent
READY_TIMEOUT = 20.0  # a server prints its port within this, even on a loaded machine

# ---- programs run inside the hosts (python -c), each bounded in time ----------------------

UDP_ECHO = """
import socket, sys, time
addr, lifetime = sys.argv[1], float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((addr, 0))
print(s.getsockname()[1], flush=True)
deadline = time.monotonic() + lifetime
while (left := deadline - time.monotonic()) > 0:
    s.settimeout(left)
    try:
        data, peer = s.recvfrom(64)
    except TimeoutError:
        break
    s.sendto(data, peer)
"""

# Sends `count` numbered datagrams every `interval` s, collects the echoes until `wait` s
# after the last one (or all came back): the RTT of each that did, in ms. Sends block (a
# full send buffer waits, it does not fail); receives do not.
UDP_PROBE = """
import json, select, socket, struct, sys, time
src, dst, port, count, interval, wait = sys.argv[1], sys.argv[2], int(sys.argv[3]), \\
    int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, 0))
sent, rtts = {}, {}
next_send, end = time.monotonic(), None
while end is None or (time.monotonic() < end and len(rtts) < count):
    now = time.monotonic()
    if len(sent) < count and now >= next_send:
        sent[len(sent)] = now
        s.sendto(struct.pack("!I", len(sent) - 1), (dst, port))
        next_send += interval
        if len(sent) == count:
            end = now + wait
    until = next_send if len(sent) < count else end
    if select.select([s], [], [], max(0.0, until - time.monotonic()))[0]:
        while True:
            try:
                seq = struct.unpack("!I", s.recv(64, socket.MSG_DONTWAIT))[0]
            except BlockingIOError:
                break
            rtts.setdefault(seq, (time.monotonic() - sent[seq]) * 1000)
print(json.dumps({"sent": count, "rtts_ms": sorted(rtts.values())}))
"""

TCP_RECEIVER = """
import json, socket, sys, time
addr, lifetime = sys.argv[1], float(sys.argv[2])
srv = socket.create_server((addr, 0))
srv.settimeout(lifetime)
print(srv.getsockname()[1], flush=True)
conn, _ = srv.accept()
conn.settimeout(lifetime)
total, first = 0, None
while chunk := conn.recv(1 << 16):
    first = first or time.monotonic()
    total += len(chunk)
print(json.dumps({"bytes": total, "seconds": time.monotonic() - first}))
"""

TCP_SENDER = """
import socket, sys, time
src, dst, port, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
s = socket.create_connection((dst, port), timeout=30, source_address=(src, 0))
block = bytes(1 << 16)
end = time.monotonic() + seconds
while time.monotonic() < end:
    s.sendall(block)
s.close()
"""

CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], 9), timeout=5)
except OSError as e:
    print(type(e).__name__)
"""


def start_server(tb: testbed.Testbed, host: int, code: str, *args: object
                 ) -> tuple[subprocess.Popen[str], int]:
    """A server program in `host`, bound to its address; (process, the port it printed)."""
    proc = tb.popen(host, [sys.executable, "-c", code, tb.address(host), *map(str, args)],
                    stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], READY_TIMEOUT)
    assert ready, f"the server in host {host} did not start within {READY_TIMEOUT} s"
    return proc, int(proc.stdout.readline())


def udp_probe(tb: testbed.Testbed, port: int, count: int, interval: float) -> dict[str, Any]:
    """Host 1 probes the UDP echo server on host 2: {"sent": n, "rtts_ms": [...]}."""
    wait = 2.0
    r = tb.run(1, [sys.executable, "-c", UDP_PROBE, tb.address(1), tb.address(2), str(port),
                   str(count), str(interval), str(wait)], timeout=count * interval + 30)
    return json.loads(r.stdout)


def tcp_mbit(tb: testbed.Testbed, dst: int, src: int | None, seconds: float) -> float:
    """Goodput of one TCP transfer into host dst, measured by the receiver: from host src,
    or from the root namespace over the control link when src is None."""
    receiver, port = start_server(tb, dst, TCP_RECEIVER, seconds + 30)
    if src is None:
        subprocess.run([sys.executable, "-c", TCP_SENDER, tb.control_address, tb.address(dst),
                        str(port), str(seconds)], check=True, timeout=seconds + 30)
    else:
        tb.run(src, [sys.executable, "-c", TCP_SENDER, tb.address(src), tb.address(dst),
                     str(port), str(seconds)], timeout=seconds + 30)
    out, _ = receiver.communicate(timeout=30)
    got = json.loads(out)
    return got["bytes"] * 8 / got["seconds"] / 1e6


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


# ---- run in the sandbox guest (by in_guest) ----------------------------------------------

def guest_rtt_and_loss() -> dict[str, Any]:
    """In the guest, where netem exists: UDP echo between two hosts unshaped, with a 20 ms
    delay per link, with 20 +- 5 ms, and with 50 % loss per link; one testbed and one
    echo server, reshaped in between (so the guest's slow process starts are paid once)."""
    figures: dict[str, Any] = {"caps": qdisc.shaping_caps(),
                               "timer_ms": time.clock_getres(time.CLOCK_MONOTONIC) * 1000}
    with testbed.Testbed("g", hosts=2) as tb:
        echo, port = start_server(tb, 2, UDP_ECHO, 120)
        for label, shape, count, interval in (
                ("plain", LinkShape(), 60, 0.01),
                ("delay", LinkShape(delay_ms=20), 60, 0.01),
                ("jitter", LinkShape(delay_ms=20, jitter_ms=5), 60, 0.01),
                ("loss", LinkShape(loss_pct=50), 200, 0.002)):
            tb.reshape(shape)
            figures[label] = udp_probe(tb, port, count, interval)
            figures[label]["receives"] = tb.status().hosts[0].receives
        figures["echo_alive"] = echo.poll() is None  # reshaping did not disturb it
    return figures


# ---- fixtures and checks ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def netns_ok() -> None:
    ok, why = testbed.available()
    if not ok:
        pytest.skip(why)


@pytest.fixture
def name(netns_ok: None) -> Iterator[str]:
    """A testbed name of this test alone (others may run tests on this machine at the same
    time), torn down afterwards whatever the test left."""
    chosen = f"t{secrets.token_hex(3)}"
    yield chosen
    testbed.Testbed(chosen).down()


def netns_names() -> list[str]:
    """The named network namespaces (/run/netns, as `ip netns list` reads it)."""
    return os.listdir("/run/netns") if os.path.isdir("/run/netns") else []


def neighbours(tb: testbed.Testbed, host: int) -> set[str]:
    """The addresses host `host` has permanent neighbour entries for."""
    shown = tb.run(host, ["ip", "neigh", "show", "nud", "permanent"]).stdout
    return {line.split()[0] for line in shown.splitlines()}


def exited(pidfd: int) -> bool:
    return bool(select.select([pidfd], [], [], 0)[0])


def assert_nothing_left(name: str, pidfds: list[int]) -> None:
    """Checked as a user would: ip netns list, ip -o link, and each pid (by pidfd: a pid
    number alone could have been reused)."""
    prefix = f"{name}-"
    namespaces = [line.split()[0] for line in subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout.splitlines()]
    links = [line.split(":")[1].strip().split("@")[0] for line in subprocess.run(
        ["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout.splitlines()]
    assert not [n for n in namespaces if n.startswith(prefix)], namespaces
    assert not [n for n in links if n.startswith(prefix)], links
    assert all(exited(fd) for fd in pidfds)
    for fd in pidfds:
        os.close(fd)


GUEST_OK, GUEST_WHY = sandbox.available()
needs_guest = pytest.mark.skipif(not GUEST_OK or sandbox.inside_guest(),
                                 reason=GUEST_WHY if not GUEST_OK else "already in the sandbox")


def cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "labkit.hosts.testbed", *argv],
                          capture_output=True, text=True, timeout=60)


# ---- no root needed ---------------------------------------------------------------------------

@pytest.mark.parametrize(("flags", "says"), [
    (["--delay", "20"], "--delay: '20' has no unit: write e.g. 20ms"),
    (["--delay", "20 ms"], "--delay: '20 ms': unknown unit ' ms' (units: us, ms, s); write 20ms"),
    (["--jitter", "2msec", "--delay", "5ms"], "--jitter: '2msec': unknown unit 'msec'"),
    (["--loss", "0.5"], "--loss: '0.5' has no unit: write e.g. 0.5%"),
    (["--loss", "150%"], "--loss: a loss is a percentage, at most 100 %"),
    (["--rate", "1Gbit"], "--rate: '1Gbit': unknown unit 'Gbit' (units: kbit, mbit, gbit); "
                          "write 1gbit"),
    (["--rate", "100mbps"], "--rate: '100mbps': unknown unit 'mbps'"),
    (["--rate=-5mbit"], "--rate: '-5mbit' is not a number with a unit"),
    (["--delay", "1ms", "--jitter", "2ms"], "--jitter: a jitter of 2 ms around a delay of 1 ms"),
    (["--hosts", "two"], "--hosts: 'two' is not a whole number of hosts"),
    (["--hosts", "255"], "--hosts: 255 hosts: give a whole number from 1 to 254"),
    (["--name", "Lab-1"], "--name: testbed name 'Lab-1': 1 to 8 lower-case letters"),
    (["--subnet", "10.77.0.1/24"], "--subnet: subnet '10.77.0.1/24'"),
])
def test_cli_parses_units_strictly_and_says_which_flag(flags: list[str], says: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    testbed.add_arguments(parser)
    # a name of its own: were a flag accepted by mistake, no one else's testbed is touched
    name = f"t{secrets.token_hex(3)}"
    assert testbed.main(parser.parse_args(["up", "--name", name, *flags])) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"labkit testbed: {says}") and err.count("\n") == 1, err
    assert not [n for n in netns_names() if n.startswith(f"{name}-")]  # nothing was made


def test_units_parse_to_the_numbers_tc_gets() -> None:
    shape = LinkShape.parse(delay="20ms", jitter="500us", loss="0.5%", rate="1gbit")
    assert shape == LinkShape(delay_ms=20, jitter_ms=0.5, loss_pct=0.5, rate_mbit=1000)
    assert (qdisc.parse_duration_ms("1s"), qdisc.parse_rate_mbit("512kbit")) == (1000, 0.512)
    assert qdisc._netem_args(shape) == ["netem", "limit", "100000", "delay", "20000us",
                                        "500us", "loss", "random", "0.5%"]
    assert qdisc._tbf_args(shape)[:4] == ["tbf", "rate", "1000000000bit", "burst"]
    assert LinkShape.parse().describe() == "unshaped" and not LinkShape(rate_mbit=5).needs_netem


def test_without_root_it_refuses_before_doing_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process, as any user: up and down refuse before touching anything."""
    with monkeypatch.context() as m:
        m.setattr(os, "geteuid", lambda: 65534)
        with pytest.raises(testbed.TestbedError, match=r"needs root.*run as root"):
            testbed.Testbed("tnoroot", 2).up()
        with pytest.raises(testbed.TestbedError, match="needs root"):
            testbed.Testbed("tnoroot").down()
    assert not [n for n in netns_names() if n.startswith("tnoroot-")]


def _unprivileged_argv() -> list[str] | None:
    """A prefix that runs a command as uid 65534 with no capability on the host, able to
    read this checkout: a user namespace of its own (the files are still read as their
    owner), else setpriv where every folder above the checkout lets others in."""
    if os.geteuid() != 0:
        return []
    if shutil.which("unshare") and subprocess.run(["unshare", "--user", "true"],
                                                  capture_output=True).returncode == 0:
        return ["unshare", "--user"]
    root = Path(testbed.__file__).parents[2]
    if shutil.which("setpriv") and all(p.stat().st_mode & 0o001 for p in (root, *root.parents)):
        return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    return None


def test_cli_without_root_refuses_in_one_line() -> None:
    """`labkit.hosts.testbed up` run by an unprivileged user: exit 1, one line naming root."""
    prefix = _unprivileged_argv()
    if prefix is None:
        pytest.skip("no way to run unprivileged here: user namespaces are refused (inside a "
                    "chroot) and the checkout is not readable by other users")
    p = subprocess.run([*prefix, sys.executable, "-m", "labkit.hosts.testbed", "up", "--name",
                        "tnoroot"], capture_output=True, text=True, timeout=60,
                       cwd=Path(testbed.__file__).parents[2])
    assert p.returncode == 1 and "needs root" in p.stderr, p.stderr
    assert p.stderr.count("\n") == 1, p.stderr
    assert not [n for n in netns_names() if n.startswith("tnoroot-")]


# ---- on this machine's kernel (root) -------------------------------------------------------

def test_shaping_caps_probe_each_qdisc(netns_ok: None) -> None:
    caps = qdisc.shaping_caps()
    assert set(caps) == {"netem", "tbf", "htb"}
    assert all(v is True or (isinstance(v, str) and v) for v in caps.values()), caps
    assert f"{qdisc.SCRATCH_PREFIX}qdisc_{os.getpid()}" not in netns_names()  # probe's is gone
    ok, detail, todo = qdisc.doctor_check()
    if caps["netem"] is not True:
        assert ok is False and "no netem" in detail and "sandbox guest" in todo
    print(f"shaping here: {caps}; doctor: {detail}")


def test_up_twice_is_the_same_testbed_and_down_leaves_nothing(name: str) -> None:
    tb = testbed.Testbed(name, hosts=3, link=LinkShape(rate_mbit=100))
    tb.up()
    sleeper = tb.popen(2, ["sleep", "30"])
    pidfd = os.pidfd_open(sleeper.pid)
    first = tb.status()
    tb.up()
    assert tb.status() == first and sleeper.poll() is None  # nothing changed, still running
    assert first.up and [h.addresses for h in first.hosts] == [
        (f"10.77.0.{i}/24",) for i in (1, 2, 3)]
    assert first.hosts[1].pids == (sleeper.pid,)
    assert all("tbf" in h.sends[0] and "rate 100Mbit" in h.receives[0] for h in first.hosts)
    # each host reaches the others (refused: nothing listens on port 9) and nothing outside
    assert tb.run(1, [sys.executable, "-c", CONNECT, tb.address(3)]).stdout.strip() == \
        "ConnectionRefusedError"
    assert tb.run(1, [sys.executable, "-c", CONNECT, "192.0.2.1"]).stdout.strip() == "OSError"
    routes = tb.run(3, ["ip", "-4", "route"]).stdout
    assert routes.startswith("10.77.0.0/24") and "default" not in routes, routes
    # no ARP on the wire: the others are permanent neighbours, and only they
    assert neighbours(tb, 1) == {"10.77.0.2", "10.77.0.3"}
    testbed.Testbed(name, hosts=2, link=LinkShape(rate_mbit=100)).up()  # a host fewer
    assert [h.netns for h in tb.status().hosts] == [tb.netns(1), tb.netns(2)]
    assert neighbours(tb, 1) == {"10.77.0.2"} and sleeper.poll() is None
    tb.down()
    assert sleeper.returncode == -15  # SIGTERM was enough
    assert_nothing_left(name, [pidfd])
    tb.down()  # down twice is no error either
    assert not testbed.Testbed(name).status().up


def test_down_stops_every_process_started_inside(name: str) -> None:
    """One that obeys SIGTERM, one that ignores it, and one that left its process group."""
    with testbed.Testbed(name, hosts=2, stop_grace=0.5) as tb:
        obeys = tb.popen(1, ["sleep", "30"])
        ignores = tb.popen(2, ["sh", "-c", 'trap "" TERM; sleep 30 & setsid sleep 30 & wait'])
        deadline = time.monotonic() + READY_TIMEOUT
        while len(pids := tb.status().hosts[1].pids) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(pids) == 3, pids
        pidfds = [os.pidfd_open(p) for p in (obeys.pid, *pids)]
        started = time.monotonic()
    took = time.monotonic() - started
    assert obeys.returncode == -15 and ignores.returncode == -9
    assert_nothing_left(name, pidfds)
    print(f"down with a TERM-ignoring group and an escaped child: {took:.2f} s")


def test_down_after_a_crash_removes_the_stale_testbed(name: str) -> None:
    """A process brings a testbed up, starts a server inside and is killed (a notebook
    kernel dying): `labkit testbed down` (a fresh Testbed of the same name) tears it all
    down."""
    script = ("import sys, time; from labkit.hosts.testbed import Testbed; "
              "tb = Testbed(sys.argv[1], 2).up(); "
              "p = tb.popen(1, ['sleep', '30']); print(p.pid, flush=True); time.sleep(30)")
    crashed = subprocess.Popen([sys.executable, "-c", script, name], stdout=subprocess.PIPE,
                               text=True)
    assert crashed.stdout is not None
    assert select.select([crashed.stdout], [], [], READY_TIMEOUT)[0]
    orphan = int(crashed.stdout.readline())
    pidfd = os.pidfd_open(orphan)
    crashed.kill()
    crashed.wait()
    status = cli("status", "--name", name, "--json")
    stale = json.loads(status.stdout)
    assert stale["up"] and stale["hosts"][0]["pids"] == [orphan], status.stderr
    down = cli("down", "--name", name)
    assert down.returncode == 0 and "no namespace, interface or process" in down.stdout, \
        down.stderr
    assert_nothing_left(name, [pidfd])


def test_delay_and_loss_need_netem(name: str) -> None:
    """Refused, before anything changes, where the probe says netem is missing; shaped
    where it is there."""
    shaped = testbed.Testbed(name, 2, LinkShape(delay_ms=20, loss_pct=1))
    if qdisc.shaping_caps()["netem"] is True:
        with shaped as tb:
            assert "netem" in tb.status().hosts[0].receives[0]
        return
    with testbed.Testbed(name, 2) as plain:  # a testbed of that name is up: left alone
        before = plain.status()
        with pytest.raises(qdisc.ShapingUnavailable,
                           match="run it inside the sandbox guest, where netem exists"):
            with shaped:
                pass
        with pytest.raises(qdisc.ShapingUnavailable, match="need the netem qdisc"):
            plain.reshape(LinkShape(loss_pct=1))
        assert plain.status() == before and plain.link == LinkShape()
    p = cli("up", "--name", name, "--delay", "20ms", "--loss", "0.5%")
    assert p.returncode == 1 and "netem" in p.stderr and "sandbox guest" in p.stderr, p.stderr
    assert not testbed.Testbed(name).status().hosts


def test_a_subnet_on_the_machines_routes_is_refused(name: str) -> None:
    with pytest.raises(testbed.TestbedError, match=r"overlaps this machine's routes 127\.0\.0"):
        testbed.Testbed(name, 2, subnet="127.0.0.0/24").up()
    assert not testbed.Testbed(name).status().hosts


def test_rate_shaping_limits_tcp_throughput_both_ways(name: str) -> None:
    """tbf on the host's side limits what it sends, tbf on the switch's side what it
    receives (from the root namespace over the control link, which only that one shapes);
    reshaped to unshaped, the same transfer is several times faster."""
    if qdisc.shaping_caps()["tbf"] is not True:
        pytest.skip(f"no tbf here: {qdisc.shaping_caps()['tbf']}")
    rate = 40.0
    with testbed.Testbed(name, hosts=2, link=LinkShape(rate_mbit=rate), control=True) as tb:
        host_to_host = statistics.median(tcp_mbit(tb, 2, 1, 0.8) for _ in range(3))
        into_host = statistics.median(tcp_mbit(tb, 2, None, 0.8) for _ in range(3))
        tb.reshape(LinkShape())
        assert tb.status().hosts[1].receives == ()
        unshaped = statistics.median(tcp_mbit(tb, 2, 1, 0.3) for _ in range(3))
    print(f"TCP goodput at rate {rate:g} Mbit/s: host to host {host_to_host:.1f}, root "
          f"namespace into a host {into_host:.1f}; unshaped {unshaped:.0f} Mbit/s")
    # goodput is at most the rate less the headers' share (about 5 %)
    assert 0.7 * rate <= host_to_host <= 1.02 * rate
    assert 0.7 * rate <= into_host <= 1.02 * rate
    assert unshaped >= 3 * rate


# ---- in the sandbox guest, where netem exists -------------------------------------------------

@needs_guest
@pytest.mark.timeout(240 + 60)  # in_guest's own bound below, then teardown
def test_delay_jitter_and_loss_are_real_in_the_guest() -> None:
    started = time.monotonic()
    f = testbed.in_guest("test_testbed:guest_rtt_and_loss", cwd=TESTS, timeout=240)
    took = time.monotonic() - started
    assert f["caps"] == {"netem": True, "tbf": True, "htb": True}
    plain, delay, jitter, loss = (f[k] for k in ("plain", "delay", "jitter", "loss"))
    assert "netem" in delay["receives"][0] and "delay 20ms" in delay["receives"][0]
    assert plain["receives"] == [] and f["echo_alive"]
    assert "loss 50%" in loss["receives"][0] and "delay" not in loss["receives"][0]  # in place
    for probe in (plain, delay, jitter):
        assert len(probe["rtts_ms"]) == probe["sent"]  # nothing lost without loss
    base, rtt = statistics.median(plain["rtts_ms"]), statistics.median(delay["rtts_ms"])
    # netem releases a packet at the first timer event after its time: with a periodic
    # tick and no high-resolution timers (the guest's HZ=100: 10 ms) that is up to one
    # tick late per link; the clock's resolution says which kind of guest this is
    tick = f["timer_ms"] if f["timer_ms"] >= 1 else 0.0
    # 20 ms on each host's link: a round trip crosses two; noise only adds time, so the
    # fastest round trip is 40 ms and a tick or two more (80 if a link delayed twice)
    fastest = min(delay["rtts_ms"])
    assert 39.5 <= fastest <= 40 + 2 * tick + 5 and rtt <= 40 + 2 * tick + base + 20
    assert base < 15
    # +-5 ms per link: no round trip below 30 ms; where the timer resolves it, a spread
    # well beyond the delay's own and round trips faster than any without jitter
    spread = percentile(jitter["rtts_ms"], 90) - percentile(jitter["rtts_ms"], 10)
    delay_spread = percentile(delay["rtts_ms"], 90) - percentile(delay["rtts_ms"], 10)
    assert min(jitter["rtts_ms"]) >= 29.5
    # the faster round trips need a guest whose own noise is below the 5 ms jitter: on a
    # busy host the delay-only run scattered by 18 ms (P10-P90) and no jittered round
    # trip came in under 42.8 ms, which says the host, not netem, set the fastest
    noise_hides = delay_spread >= 5
    if not tick:
        assert spread >= delay_spread + 4, (spread, delay_spread)
        if not noise_hides:
            assert min(jitter["rtts_ms"]) < fastest - 2, (min(jitter["rtts_ms"]), fastest)
    # 50 % per link: a round trip survives with 1/4 (50 of 200 expected, sd 6)
    replies = len(loss["rtts_ms"])
    assert 20 <= replies <= 90, replies
    print(f"guest ({took:.1f} s, timer {f['timer_ms']:g} ms): RTT median unshaped {base:.2f} "
          f"ms, delay 20 ms {rtt:.2f} ms (min {fastest:.2f}); jitter 5 ms: P10-P90 spread "
          f"{spread:.1f} ms (delay alone {delay_spread:.1f}), min "
          f"{min(jitter['rtts_ms']):.2f} ms; loss 50 %: {replies}/{loss['sent']} echoes back"
          + (f"; the guest's {tick:g} ms timer tick hides the jitter" if tick else
             "; the host's noise hides the faster round trips" if noise_hides else ""))


@needs_guest
def test_in_guest_returns_the_result_or_the_guests_traceback() -> None:
    assert testbed.in_guest("json:loads", {"s": "[1, 2]"}, timeout=60) == [1, 2]
    with pytest.raises(testbed.TestbedError, match="JSONDecodeError"):
        testbed.in_guest("json:loads", {"s": "not json"}, timeout=60)
