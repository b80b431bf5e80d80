"""A testbed of N hosts in network namespaces on one switch, each host's link shaped like a WAN.

    with Testbed(name="lk", hosts=3, link=LinkShape(rate_mbit=100)) as tb:
        server = tb.popen(1, [sys.executable, "-m", "http.server", "-b", tb.address(1)])
        tb.run(2, ["curl", "-s", f"http://{tb.address(1)}:8000/"])
        tb.reshape(LinkShape(rate_mbit=10))  # every link, in place; the server carries on
    # down() stopped the server and removed every namespace, or raised naming what is left

    python -m labkit.hosts.testbed up --hosts 3 --rate 1gbit     # `labkit testbed up ...`
    python -m labkit.hosts.testbed status
    python -m labkit.hosts.testbed down

Layout. Host i (numbered 1..N) is the namespace `lk-hi` with loopback and one interface,
also named `lk-hi`, at address i of `subnet` (10.77.0.i/24). The other end of that veth,
`lk-pi`, is a port of the bridge `lk-br`, which lives in a namespace of its own, `lk-br`.
Why a switch namespace rather than a bridge in the machine's root namespace: nothing of
the testbed is in the root namespace, so the machine's addresses, routes and firewall are
untouched and the hosts' traffic can go nowhere else (they have no default route);
testbeds of different names coexist even on the same subnet (a test's next to an
engineer's); and every veth pair is created with its ends already in their namespaces
and dies with either of them, so deleting the namespaces deletes every device, and what a
crashed run leaves is namespaces, found by name. The one exception is opt-in:
control=True adds a link from the root namespace to the switch (`lk-c`, the subnet's
last address), for a process that must reach the hosts from outside them, such as a
dask scheduler next to the notebook (issue 16, item 1). Then the subnet's route is in
the machine's table, where it must not shadow a real network; the subnet is checked
against the machine's routes without control too, so that turning control on never
changes what is accepted, and an address in a recorded result never also names a
machine of the real network.

Shaping (labkit/hosts/qdisc.py): netem on the switch's side of each host's link (delay,
jitter, loss of what the host receives, applied after the sender's kernel let the packet
go, as on a real path; two hosts see a round trip of 2 x delay), tbf on both sides
(rate, in each direction). Nothing but the experiment's packets crosses the shaped
links: every host knows every other's MAC address (fixed ones, permanent neighbour
entries) and the switch knows every port's (static forwarding entries), so there is no
ARP to lose -- at 50 % loss a host could otherwise stay unresolved for seconds, and
neighbour probes would go on being lost during a run -- and no flooding; interfaces get
no IPv6 link-local address, so no router solicitations or multicast reports either.

The sandbox guest. This host's kernel has no netem, so a testbed asking for delay,
jitter or loss is refused here before anything is made; it runs in the sandbox guest
instead, whose kernel has netem: in_guest("package.module:function", kwargs) boots the
guest (labkit/hosts/sandbox.py; the guest is root in itself, and its /run is its own
tmpfs, so `ip netns` works there as on a host), calls the function there and returns its
JSON result. From a shell: `labkit sandbox -- sh -c 'python -m labkit.hosts.testbed up
--delay 20ms && ... ; python -m labkit.hosts.testbed down'` (the guest powers off when
the command ends, so up, experiment and down are one command). Rate shaping works here.

Processes. popen() and run() start a program in a host with `ip netns exec`, which execs
it (the pid is the program's), in a session of its own. down() stops them by process
group while their leader is unreaped, so the id cannot have been reused: SIGTERM, then
SIGKILL after stop_grace. It then stops whatever else runs in the testbed's namespaces
(children that left their group, the processes of a crashed earlier run: `ip netns
pids`) through pidfds, deletes the namespaces, and checks the namespaces (`ip netns
list`), the root namespace's interfaces (`ip -o link`) and every pid it stopped: anything
left raises TestbedLeftovers. Nothing is ever stopped by name.

Everything that touches the kernel needs root (namespaces need CAP_SYS_ADMIN, links and
qdiscs CAP_NET_ADMIN) and says so before doing anything. up() and down() of one name are
serialized by a lock file in /run (removed by down()), so a CLI `down` and a notebook's
`up` do not interleave.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import importlib
import ipaddress
import json
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from labkit.hosts import sandbox
from labkit.hosts.qdisc import (
    CommandError,
    LinkShape,
    SettingError,
    ShapingUnavailable,
    apply_shape,
    command,
    command_json,
    describe_installed,
    require,
    scratch_namespace,
)

DEFAULT_NAME = "lk"
DEFAULT_HOSTS = 3
DEFAULT_SUBNET = "10.77.0.0/24"
# Short enough that the longest interface name, NAME-p65534, fits IFNAMSIZ (15 bytes);
# no "-" or "_", so one testbed's prefix never matches another's names (or the probes').
NAME_PATTERN = re.compile(r"[a-z][a-z0-9]{0,7}")
STOP_GRACE = 2.0  # seconds between SIGTERM and SIGKILL
KILL_WAIT = 5.0  # after SIGKILL, before a process counts as left behind
# A deleted namespace's devices go away in the kernel's cleanup work, a moment later.
DEVICES_GONE_WAIT = 10.0
RUN_TIMEOUT = 60.0
GUEST_TIMEOUT = 300.0
LOCK_DIR = Path("/run")
GUEST_RESULT_FILE = "testbed-call.json"
# What in_guest runs in the guest; `-c` puts the working directory on sys.path, as `-m` would.
_GUEST_CALL = ("import sys; from labkit.hosts.testbed import _call_entry; "
               "sys.exit(_call_entry(sys.argv[1], sys.argv[2]))")


class TestbedError(RuntimeError):
    """The testbed could not be set up, used or torn down; the message says what to do."""


class TestbedLeftovers(TestbedError):
    """down() finished but something with the testbed's prefix is still there."""


def _require_root(action: str) -> None:
    if os.geteuid() != 0:
        raise TestbedError(
            f"the testbed ({action}) needs root: it creates network namespaces, veth links "
            "and qdiscs (CAP_SYS_ADMIN, CAP_NET_ADMIN); run as root (e.g. `sudo "
            f"{sys.executable} -m labkit.hosts.testbed up`), or, without root on the host, "
            "inside the sandbox guest (in_guest), where the command is root")
    missing = [tool for tool in ("ip", "tc", "bridge") if shutil.which(tool) is None]
    if missing:
        raise TestbedError(f"testbed {action} needs {' and '.join(missing)}: install iproute2 "
                           "(apt-get install iproute2)")


def _namespaces() -> list[str]:
    return [str(n["name"]) for n in command_json(["ip", "-j", "netns", "list"])]


def _root_links() -> list[str]:
    return [str(link["ifname"]) for link in command_json(["ip", "-j", "link", "show"])]


def _mac(number: int) -> str:
    """The MAC address of host `number`'s interface (0: the control link's root end),
    locally administered and fixed, so hosts and switch can be told it in advance."""
    return f"02:6c:6b:{number >> 16 & 0xff:02x}:{number >> 8 & 0xff:02x}:{number & 0xff:02x}"


def _ip(netns: str | None) -> list[str]:
    """`ip` in a namespace, or in the root namespace for None."""
    return ["ip", "-n", netns] if netns else ["ip"]


def _link_exists(netns: str | None, dev: str) -> bool:
    try:
        command([*_ip(netns), "link", "show", "dev", dev])
    except CommandError:
        return False
    return True


def _addresses(netns: str | None, dev: str) -> tuple[str, ...]:
    """dev's IPv4 addresses with their prefix length ("10.77.0.1/24")."""
    return tuple(f"{a['local']}/{a['prefixlen']}"
                 for link in command_json([*_ip(netns), "-j", "addr", "show", "dev", dev])
                 for a in link.get("addr_info", []) if a.get("family") == "inet")


def _netns_pids(netns: str) -> list[int]:
    return [int(p) for p in command(["ip", "netns", "pids", netns]).split()]


def _netns_identity(netns: str) -> tuple[int, int]:
    st = os.stat(f"/run/netns/{netns}")
    return st.st_dev, st.st_ino


def _wait_exited(pidfds: Sequence[int], timeout: float) -> list[int]:
    """Wait until every pidfd's process has exited or timeout passed; the ones still running."""
    poller = select.poll()
    for fd in pidfds:
        poller.register(fd, select.POLLIN)  # readable once the process has exited
    running = set(pidfds)
    deadline = time.monotonic() + timeout
    while running:
        left_ms = (deadline - time.monotonic()) * 1000
        if left_ms <= 0:
            break
        for fd, _ in poller.poll(left_ms):
            running.discard(fd)
            poller.unregister(fd)
    return sorted(running)


def _signal(pidfd: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # it exited in the meantime
        signal.pidfd_send_signal(pidfd, sig)


def _killpg(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group has exited
        os.killpg(pid, sig)


@dataclasses.dataclass(frozen=True)
class HostState:
    """One host as the kernel has it."""

    number: int
    netns: str
    addresses: tuple[str, ...]  # "10.77.0.1/24"
    sends: tuple[str, ...]  # qdiscs on the host's side of its link (what it sends)
    receives: tuple[str, ...]  # qdiscs on the switch's side (what it receives)
    pids: tuple[int, ...]  # every process in the namespace


@dataclasses.dataclass(frozen=True)
class TestbedStatus:
    """What exists of a testbed, read from the kernel (not from a Testbed object)."""

    name: str
    switch: bool  # the switch namespace and its bridge exist
    hosts: tuple[HostState, ...]
    control: str | None  # the root namespace's control address, when the link exists
    stray: tuple[str, ...]  # namespaces with the prefix that are neither host nor switch

    @property
    def up(self) -> bool:
        return self.switch and bool(self.hosts)

    def __str__(self) -> str:
        if not (self.switch or self.hosts or self.control or self.stray):
            return f"testbed {self.name}: down (nothing named {self.name}-* exists)"
        lines = [f"testbed {self.name}: {'up' if self.up else 'partly there'}, "
                 f"{len(self.hosts)} host(s), switch {'present' if self.switch else 'MISSING'}"]
        for h in self.hosts:
            lines.append(f"  {h.netns:<10} {' '.join(h.addresses) or '(no address)':<15} "
                         f"pids {' '.join(map(str, h.pids)) or '-'}")
            lines.append(f"    sends:    {' | '.join(h.sends) or 'unshaped'}")
            lines.append(f"    receives: {' | '.join(h.receives) or 'unshaped'}")
        if self.control:
            lines.append(f"  control link {self.name}-c in the root namespace: {self.control}")
        if self.stray:
            lines.append(f"  stray namespaces (down() removes them): {' '.join(self.stray)}")
        return "\n".join(lines)


class Testbed:
    """N hosts in network namespaces on one switch; see the module docstring.

    Hosts are numbered 1..hosts, as their namespaces and addresses are. Constructing one
    changes nothing; up() makes the kernel's state exactly this testbed (idempotent),
    down() removes everything named NAME-* (this object's or a crashed run's).
    """

    def __init__(self, name: str = DEFAULT_NAME, hosts: int = DEFAULT_HOSTS,
                 link: LinkShape | None = None, *, subnet: str = DEFAULT_SUBNET,
                 control: bool = False, stop_grace: float = STOP_GRACE) -> None:
        if not NAME_PATTERN.fullmatch(name):
            raise SettingError("name", f"testbed name {name!r}: 1 to 8 lower-case letters "
                                       "and digits, starting with a letter (e.g. lk)")
        try:
            self.subnet = ipaddress.IPv4Network(subnet)
        except ValueError as e:
            raise SettingError("subnet", f"subnet {subnet!r}: {e}; write an IPv4 network "
                                         "such as 10.77.0.0/24") from None
        most = self.subnet.num_addresses - 2 - int(control)
        if not (isinstance(hosts, int) and 1 <= hosts <= most):
            raise SettingError("hosts", f"{hosts!r} hosts: give a whole number from 1 to "
                                        f"{most} (what {self.subnet} holds"
                                        f"{' besides the control address' if control else ''})")
        self.name = name
        self.hosts = hosts
        self.link = link if link is not None else LinkShape()
        self.control = control
        self.stop_grace = stop_grace
        self._procs: list[subprocess.Popen[Any]] = []

    # ---- names and addresses ----------------------------------------------------------

    @property
    def prefix(self) -> str:
        return f"{self.name}-"

    @property
    def numbers(self) -> range:
        return range(1, self.hosts + 1)

    @property
    def switch_netns(self) -> str:
        return f"{self.name}-br"

    @property
    def bridge(self) -> str:
        return f"{self.name}-br"

    @property
    def control_link(self) -> str:
        return f"{self.name}-c"

    @property
    def control_address(self) -> str:
        """The root namespace's address on the control link (the subnet's last one)."""
        return str(self.subnet.broadcast_address - 1)

    def _host(self, i: int) -> int:
        if not (isinstance(i, int) and 1 <= i <= self.hosts):
            raise ValueError(f"host {i!r}: testbed {self.name}'s hosts are numbered 1 to "
                             f"{self.hosts} ({self.netns(1)} ...)")
        return i

    def netns(self, i: int) -> str:
        """Host i's namespace, which is also the name of its interface."""
        return f"{self.name}-h{i}"

    def port(self, i: int) -> str:
        """Host i's port on the switch (in the switch namespace)."""
        return f"{self.name}-p{i}"

    def address(self, i: int) -> str:
        return str(self.subnet.network_address + self._host(i))

    def __repr__(self) -> str:
        return (f"Testbed(name={self.name!r}, hosts={self.hosts}, link={self.link}, "
                f"subnet='{self.subnet}', control={self.control})")

    # ---- up ---------------------------------------------------------------------------

    def __enter__(self) -> Testbed:
        self._preflight()  # a refusal leaves everything as it was, a same-named testbed too
        try:
            self._build()
        except BaseException:
            with contextlib.suppress(TestbedError):  # if down() fails too, say why up did
                self.down()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self) -> Testbed:
        """Create (or complete, or reconfigure) the testbed. Idempotent: on a testbed that
        is up as configured it changes nothing, and processes keep running. Refuses before
        changing anything without root, on a kernel that cannot shape as asked
        (ShapingUnavailable: delay and loss need netem), and on a subnet that overlaps one
        of the machine's routes."""
        self._preflight()
        self._build()
        return self

    def _preflight(self) -> None:
        """Every check that can refuse up(), before it changes anything."""
        _require_root("up")
        require(self.link)
        self._check_routes()

    def _build(self) -> None:
        with self._locked():
            wanted = [self.switch_netns, *(self.netns(i) for i in self.numbers)]
            present = [n for n in _namespaces() if n.startswith(self.prefix)]
            unwanted = [n for n in present if n not in wanted]
            if unwanted:  # hosts beyond this layout, left by a larger testbed of this name
                self._stop_namespace_processes(unwanted)
                for n in unwanted:
                    command(["ip", "netns", "del", n])
            for n in wanted:
                if n not in present:
                    command(["ip", "netns", "add", n])
            self._ensure_switch()
            for i in self.numbers:
                self._ensure_host(i)
            self._ensure_control()
            self._ensure_neighbours()

    def _check_routes(self) -> None:
        clashes = []
        for route in command_json(["ip", "-j", "-4", "route", "show", "table", "all"]):
            if route["dst"] == "default" or route.get("dev") == self.control_link:
                continue
            if ipaddress.ip_network(route["dst"], strict=False).overlaps(self.subnet):
                clashes.append(f"{route['dst']} dev {route.get('dev', '?')}"
                               f" (table {route.get('table', 'main')})")
        if clashes:
            raise TestbedError(
                f"testbed {self.name}'s subnet {self.subnet} overlaps this machine's routes "
                f"{', '.join(clashes)}: choose another private subnet (subnet=..., --subnet)")

    @contextlib.contextmanager
    def _locked(self, remove: bool = False) -> Iterator[None]:
        """Hold this name's lock file; remove=True (down) deletes it before letting go,
        so that a testbed that is down leaves no file behind either."""
        path = LOCK_DIR / f"labkit-testbed-{self.name}.lock"
        while True:
            lock = open(path, "a")
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                current = os.stat(path).st_ino == os.fstat(lock.fileno()).st_ino
            except FileNotFoundError:
                current = False
            if current:
                break
            lock.close()  # a down() removed the file while we waited: lock the new one
        try:
            yield
        finally:
            if remove:
                path.unlink(missing_ok=True)
            lock.close()

    def _ensure_switch(self) -> None:
        ns, br = self.switch_netns, self.bridge
        if not _link_exists(ns, br):
            command(["ip", "-n", ns, "link", "add", br, "type", "bridge"])
            self._quiet(ns, br)
        command(["ip", "-n", ns, "link", "set", br, "up"])

    @staticmethod
    def _quiet(netns: str | None, dev: str) -> None:
        """No IPv6 link-local address on dev, so no router solicitations or multicast
        reports of its own: the wire carries the experiment's packets only."""
        command([*_ip(netns), "link", "set", "dev", dev, "addrgenmode", "none"])

    def _ensure_pair(self, end: tuple[str | None, str], port: str, mac: str) -> None:
        """A veth pair between `end` (namespace or None for the root one, device) with
        address `mac` and the switch port `port`, created with both ends in place and
        attached to the bridge."""
        netns, dev = end
        sw = self.switch_netns
        if not (_link_exists(netns, dev) and _link_exists(sw, port)):
            for where, name in ((netns, dev), (sw, port)):  # half a pair, from a crash
                if _link_exists(where, name):
                    command([*_ip(where), "link", "del", name])
            # both ends created where they belong: none passes through the root namespace
            command(["ip", "link", "add", dev, "address", mac,
                     *(["netns", netns] if netns else []), "type", "veth", "peer", "name", port,
                     "netns", sw])
            self._quiet(netns, dev)
            self._quiet(sw, port)
        command(["ip", "-n", sw, "link", "set", port, "master", self.bridge, "up"])
        command(["bridge", "-n", sw, "fdb", "replace", mac, "dev", port, "master", "static"])

    def _ensure_address(self, netns: str | None, dev: str, address: str) -> None:
        """dev has exactly this IPv4 address (an old subnet's is removed)."""
        wanted = f"{address}/{self.subnet.prefixlen}"
        have = _addresses(netns, dev)
        for old in have:
            if old != wanted:
                command([*_ip(netns), "addr", "del", old, "dev", dev])
        if wanted not in have:
            command([*_ip(netns), "addr", "add", wanted, "dev", dev])
        command([*_ip(netns), "link", "set", dev, "up"])

    def _ensure_host(self, i: int) -> None:
        ns = self.netns(i)
        self._ensure_pair((ns, ns), self.port(i), _mac(i))
        command(["ip", "-n", ns, "link", "set", "lo", "up"])
        self._ensure_address(ns, ns, self.address(i))
        self._shape_link(i)

    def _shape_link(self, i: int) -> None:
        # netem on the switch's side: a packet is delayed or lost after it left its
        # sender, on the wire. On the sender's own interface a netem drop is a local
        # drop, which TCP takes as local congestion and resends at once (the path
        # would not act like a lossy one: WAN throughput came out far above TCP's).
        apply_shape(self.netns(i), self.netns(i), self.link.rate_only())
        apply_shape(self.switch_netns, self.port(i), self.link)

    def reshape(self, link: LinkShape) -> None:
        """Give every link of the testbed (up) this shape instead, in place: processes
        and their connections carry on, for a sweep over delays or losses with the relay
        running. ShapingUnavailable before anything changes, as in up()."""
        _require_root("reshape")
        require(link)
        with self._locked():
            self.link = link
            for i in self.numbers:
                self._shape_link(i)

    def _ensure_neighbours(self) -> None:
        """Each host (and the root namespace over the control link) has exactly the
        others as permanent neighbours: one `ip -batch` per namespace, flush included, so
        an entry of a host the layout no longer has goes too."""
        peers = [(self.address(j), _mac(j)) for j in self.numbers]
        if self.control:
            peers.append((self.control_address, _mac(0)))
        ends = [(self.netns(i), self.netns(i), self.address(i)) for i in self.numbers]
        if self.control:
            ends.append((None, self.control_link, self.control_address))
        for netns, dev, own in ends:
            batch = [f"neigh flush dev {dev} nud permanent"] + [
                f"neigh replace {address} lladdr {mac} dev {dev} nud permanent"
                for address, mac in peers if address != own]
            command([*_ip(netns), "-batch", "-"], input="\n".join(batch) + "\n")

    def _ensure_control(self) -> None:
        if self.control:
            self._ensure_pair((None, self.control_link), f"{self.name}-pc", _mac(0))
            self._ensure_address(None, self.control_link, self.control_address)
        elif _link_exists(None, self.control_link):  # up before with control=True
            command(["ip", "link", "del", self.control_link])

    # ---- processes --------------------------------------------------------------------

    def popen(self, host: int, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start argv in host `host` (subprocess.Popen's keyword arguments), tracked: down()
        stops it. It leads a session of its own, so it is stopped with all its children."""
        clashing = {"start_new_session", "process_group", "preexec_fn"} & kwargs.keys()
        if clashing:
            raise ValueError(f"popen: {', '.join(sorted(clashing))}: the testbed starts each "
                             "process in a session of its own (down() stops it by its group)")
        _require_root("popen")
        ns = self.netns(self._host(host))
        if ns not in _namespaces():
            raise TestbedError(f"host {host} ({ns}) does not exist: call up() first")
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], start_new_session=True,
                                **kwargs)
        self._procs.append(proc)
        return proc

    def run(self, host: int, argv: Sequence[str], *, timeout: float = RUN_TIMEOUT,
            check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run argv in host `host` to completion (stdout and stderr captured as text);
        stopped (with its children) and TestbedError after timeout; CommandError when it
        fails and check is true."""
        proc = self.popen(host, argv, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE,
                          stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL)
        line = shlex.join(argv)
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(proc)
            raise TestbedError(f"`{line}` in {self.netns(host)} did not finish within "
                               f"{timeout:g} s and was stopped") from None
        self._procs.remove(proc)
        if check and proc.returncode != 0:
            said = err.strip() or out.strip() or "(no message)"
            raise CommandError(f"`{line}` in {self.netns(host)} failed (exit "
                               f"{proc.returncode}): {said}", err)
        return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)

    def stop(self, proc: subprocess.Popen[Any]) -> int:
        """Stop one process started by popen(), with its group; its exit status."""
        self._stop_tracked([proc])
        return proc.returncode

    def _stop_tracked(self, procs: Sequence[subprocess.Popen[Any]]) -> None:
        """SIGTERM each group, SIGKILL what is left after stop_grace, reap the leaders.
        Signalled only while the leader is unreaped (running or a zombie), so its pid,
        which is the group's id, cannot belong to anyone else."""
        pidfds: dict[int, int] = {}
        for p in procs:
            if p.returncode is None:
                with contextlib.suppress(ProcessLookupError):  # reaped behind Popen's back
                    pidfds[p.pid] = os.pidfd_open(p.pid)
        live = [p for p in procs if p.pid in pidfds]
        try:
            for p in live:
                _killpg(p.pid, signal.SIGTERM)
            _wait_exited(list(pidfds.values()), self.stop_grace)
            for p in live:
                _killpg(p.pid, signal.SIGKILL)  # the group's stragglers, or a leader ignoring TERM
            for p in live:
                with contextlib.suppress(subprocess.TimeoutExpired):  # reported by down()
                    p.wait(KILL_WAIT)
        finally:
            for fd in pidfds.values():
                os.close(fd)
        for p in procs:
            if p in self._procs and p.returncode is not None:
                self._procs.remove(p)

    def _stop_namespace_processes(self, namespaces: Sequence[str]) -> list[str]:
        """Stop every process in these namespaces (SIGTERM, then SIGKILL) through pidfds;
        what is still running afterwards, described."""
        pidfds: dict[int, int] = {}
        for ns in namespaces:
            identity = _netns_identity(ns)
            for pid in _netns_pids(ns):
                try:
                    fd = os.pidfd_open(pid)
                except ProcessLookupError:
                    continue
                try:  # between the listing and the open, the pid may have been reused
                    st = os.stat(f"/proc/{pid}/ns/net")
                    ours = (st.st_dev, st.st_ino) == identity
                except OSError:
                    ours = False
                if ours:
                    pidfds[pid] = fd
                else:
                    os.close(fd)
        try:
            for fd in pidfds.values():
                _signal(fd, signal.SIGTERM)
            running = _wait_exited(list(pidfds.values()), self.stop_grace)
            for fd in running:
                _signal(fd, signal.SIGKILL)
            running = _wait_exited(running, KILL_WAIT)
            return [f"pid {pid} (does not die of SIGKILL: uninterruptible? see /proc/{pid}/stack)"
                    for pid, fd in pidfds.items() if fd in running]
        finally:
            for fd in pidfds.values():
                os.close(fd)

    # ---- down ---------------------------------------------------------------------------

    def down(self) -> None:
        """Stop every process in the testbed and remove everything named NAME-*, this
        object's or a crashed earlier run's; then check that nothing with the prefix is
        left (namespaces, root-namespace interfaces, pids): TestbedLeftovers if it is."""
        _require_root("down")
        with self._locked(remove=True):
            self._stop_tracked(list(self._procs))
            namespaces = [n for n in _namespaces() if n.startswith(self.prefix)]
            left = self._stop_namespace_processes(namespaces)
            left += [f"pid {p.pid} ({shlex.join(map(str, p.args))})" for p in self._procs]
            if not left:  # a namespace whose processes live on would only lose its name
                for n in namespaces:
                    command(["ip", "netns", "del", n])
            left += [f"namespace {n}" for n in _namespaces() if n.startswith(self.prefix)]
            deadline = time.monotonic() + DEVICES_GONE_WAIT
            links = [n for n in _root_links() if n.startswith(self.prefix)]
            while links and time.monotonic() < deadline:
                time.sleep(0.05)
                links = [n for n in _root_links() if n.startswith(self.prefix)]
            left += [f"interface {n} in the root namespace" for n in links]
        if left:
            raise TestbedLeftovers(
                f"testbed {self.name} down left {'; '.join(left)}: stop those processes by "
                "pid, then `ip netns del NAME` / `ip link del NAME`, and run down() again")

    def status(self) -> TestbedStatus:
        """What exists of the testbed named self.name, read from the kernel."""
        _require_root("status")
        namespaces = [n for n in _namespaces() if n.startswith(self.prefix)]
        sw = self.switch_netns
        switch = sw in namespaces and _link_exists(sw, self.bridge)
        numbered = {int(m[1]): n for n in namespaces
                    if (m := re.fullmatch(rf"{self.name}-h(\d+)", n))}
        hosts = []
        for i, ns in sorted(numbered.items()):
            here = _link_exists(ns, ns)
            hosts.append(HostState(
                number=i, netns=ns, addresses=_addresses(ns, ns) if here else (),
                sends=describe_installed(ns, ns) if here else ("(no link)",),
                receives=(describe_installed(sw, self.port(i))
                          if switch and _link_exists(sw, self.port(i)) else ("(no port)",)),
                pids=tuple(_netns_pids(ns))))
        control = None
        if _link_exists(None, self.control_link):
            control = " ".join(_addresses(None, self.control_link)) or "(no address)"
        stray = tuple(n for n in namespaces if n != sw and n not in numbered.values())
        return TestbedStatus(self.name, switch, tuple(hosts), control, stray)


def available() -> tuple[bool, str]:
    """(this machine can hold a testbed, why not): root, iproute2, and a namespace with a
    veth and a bridge really created (and removed again)."""
    try:
        _require_root("up")
        with scratch_namespace("testbed") as ns:
            command(["ip", "-n", ns, "link", "add", "probe0", "type", "veth", "peer", "name",
                     "probe1"])
            command(["ip", "-n", ns, "link", "add", "probe2", "type", "bridge"])
    except (TestbedError, CommandError) as e:
        return False, str(e)
    return True, "network namespaces, veth links and a bridge work"


# ---- the sandbox guest, where netem exists ---------------------------------------------------

def in_guest(entry: str, kwargs: Mapping[str, Any] | None = None, *,
             timeout: float = GUEST_TIMEOUT, cwd: str | os.PathLike[str] | None = None) -> Any:
    """Call entry ("package.module:function") with kwargs inside the sandbox guest and
    return what it returns (JSON-serializable, both ways). The function typically opens a
    Testbed with delay or loss, which this host's kernel cannot do, measures and returns
    the figures. cwd (default: this one) is the guest's working directory and is on its
    sys.path. Needs no root on the host. TestbedError with the guest's traceback when the
    function raised; sandbox.SandboxUnavailable when there is no guest kernel."""
    module, _, function = entry.partition(":")
    if not (module and function):
        raise ValueError(f"entry {entry!r}: write it as 'package.module:function'")
    with tempfile.TemporaryDirectory(prefix="labkit-testbed-guest-") as results:
        r = sandbox.run_in_sandbox(
            [sys.executable, "-c", _GUEST_CALL, entry, json.dumps(dict(kwargs or {}))],
            timeout, cwd=cwd, results_dir=results, capture_output=True)
        try:
            report = json.loads((Path(results) / GUEST_RESULT_FILE).read_text())
        except (OSError, ValueError):
            report = {}
    if r.returncode == 0 and "result" in report:
        return report["result"]
    why = report.get("error") or (r.stderr or "").strip()[-3000:] or "(no output)"
    raise TestbedError(f"{entry} failed in the sandbox guest (Linux {r.kernel}, exit "
                       f"{r.returncode}):\n{why}")


def _call_entry(entry: str, kwargs_json: str) -> int:
    """In the guest: call entry(**kwargs) and write its result, or the traceback, where
    in_guest reads it."""
    report = Path(os.environ["LABKIT_SANDBOX_RESULTS"]) / GUEST_RESULT_FILE
    try:
        module, _, function = entry.partition(":")
        result = getattr(importlib.import_module(module), function)(**json.loads(kwargs_json))
        report.write_text(json.dumps({"result": result}))
    except BaseException:
        report.write_text(json.dumps({"error": traceback.format_exc()}))
        return 1
    return 0


# ---- CLI: `labkit testbed up|down|status` ---------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The testbed's subcommands on `parser` (their choice lands in args.testbed_command)."""
    sub = parser.add_subparsers(dest="testbed_command", required=True,
                                metavar="{up,down,status}")
    up = sub.add_parser(
        "up", help="create the testbed (idempotent)",
        description="Create N hosts as network namespaces on one switch, each link shaped. "
                    "Delay, jitter and loss need netem: where the kernel lacks it, run this "
                    "inside `labkit sandbox -- ...`. Units: us, ms, s; %%; kbit, mbit, gbit.")
    down = sub.add_parser("down", help="stop everything in it and remove it, checked",
                          description="Stop every process in the testbed (by pid) and remove "
                                      "every namespace and link named NAME-*, also those of "
                                      "a crashed run; fails if anything is left.")
    status = sub.add_parser("status", help="what exists of the testbed, from the kernel")
    for p in (up, down, status):
        p.add_argument("--name", default=DEFAULT_NAME,
                       help=f"testbed name, the prefix of all its names (default {DEFAULT_NAME})")
    up.add_argument("--hosts", default=str(DEFAULT_HOSTS),
                    help=f"number of hosts (default {DEFAULT_HOSTS})")
    up.add_argument("--delay", help="one-way delay per link, e.g. 20ms (RTT = 2 x delay)")
    up.add_argument("--jitter", help="delay variation per packet, e.g. 2ms (needs --delay)")
    up.add_argument("--loss", help="packet loss per link, e.g. 0.5%%")
    up.add_argument("--rate", help="rate per link and direction, e.g. 1gbit")
    up.add_argument("--subnet", default=DEFAULT_SUBNET,
                    help=f"the hosts' IPv4 network (default {DEFAULT_SUBNET})")
    up.add_argument("--control", action="store_true",
                    help="also link the root namespace to the switch (its last address)")
    status.add_argument("--json", action="store_true", help="one JSON object")


def _from_args(args: argparse.Namespace) -> Testbed:
    """The Testbed the flags describe; SettingError names a wrong flag."""
    if args.testbed_command != "up":
        return Testbed(args.name)
    if not re.fullmatch(r"\d+", args.hosts):
        raise SettingError("hosts", f"{args.hosts!r} is not a whole number of hosts")
    shape = LinkShape.parse(delay=args.delay, jitter=args.jitter, loss=args.loss,
                            rate=args.rate)
    return Testbed(args.name, int(args.hosts), shape, subnet=args.subnet,
                   control=args.control)


def main(args: argparse.Namespace) -> int:
    """Run the subcommand add_arguments() parsed: 0 done, 2 a wrong flag (nothing changed),
    1 it could not be done (the message says why)."""
    try:
        tb = _from_args(args)
    except SettingError as e:
        print(f"labkit testbed: --{e.setting}: {e}", file=sys.stderr)
        return 2
    try:
        if args.testbed_command == "up":
            tb.up()
            print(tb.status())
            print(f"run programs in a host with `ip netns exec {tb.netns(1)} ...`; remove it "
                  f"with `labkit testbed down --name {tb.name}`")
        elif args.testbed_command == "down":
            tb.down()
            print(f"testbed {tb.name}: down; no namespace, interface or process of it is left")
        else:
            state = tb.status()
            print(json.dumps(dataclasses.asdict(state) | {"up": state.up}, indent=2)
                  if args.json else state)
    except (TestbedError, ShapingUnavailable, CommandError) as e:
        print(f"labkit testbed {args.testbed_command}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m labkit.hosts.testbed",
                                      description="A network-namespace testbed (labkit testbed).")
    add_arguments(_parser)
    sys.exit(main(_parser.parse_args()))
