"""Any DERP relay program as the relay under test: Tailscale's derper, Hyper-DERP, or
labkit's own relay started as a plain command line.

    spec = ExternalRelay(command=["derper", "-a", "{host}:{port}", ...], name="derper")
    with spec.process() as relay:          # started, answering DERP, stopped by pid
        relay.host, relay.port, relay.public_key, relay.pids()

`ExternalRelay` is what a run or sweep is given (a frozen description, validated before
anything starts); `ExternalRelayProcess` is one running instance. The program is opaque:
labkit knows only its pid, so every measurement that works on any process works on it
(/proc per thread, perf on its pid, py-spy/perf flame graphs) and the figures that only
labkit's own shared-memory counters give are "not available for this relay" (NaN,
never 0): `counters()` is empty and `shm_name` is None.

Start: the command's placeholders are filled ({port}: a free loopback port when port=0,
{host}, {state}: a fresh 0700 directory removed at stop, {cert}/{key}/{certdir}: a
certificate labkit makes there, key 0600), the program starts in its own session, and it
counts as ready only once (a) a process of its tree listens on the port (so a stranger
that took the port is never measured) and (b) a full DERP handshake (ServerKey,
ClientInfo, ServerInfo) succeeds. A bad command, a program that exits, or a port that
never opens raises with the tail of its output.

Stop: SIGTERM to its pid, SIGKILL after the grace period; then every descendant seen
while it ran that is still alive (same pid *and* start time, so never a recycled pid) is
stopped the same way and reported in `orphans`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labkit.problems import Problem, raise_if
from labkit.procs.child import ChildFailed, Tail, stop_pid
from labkit.procs.relay import RelayError, RelayStartTimeout

PLACEHOLDERS = ("port", "host", "state", "cert", "key", "certdir")
PROBE_TIMEOUT = 1.0  # seconds one DERP handshake attempt may take
PROBE_EVERY = 0.05  # seconds between attempts while the program starts


class ExternalRelayFailed(ChildFailed, RelayError):
    """The external relay program exited when it should have been running."""

    def __init__(self, name: str, exitcode: int | None, tail: str, what: str) -> None:
        super().__init__(f"external relay {name!r}", exitcode, tail, what)


@dataclass(frozen=True)
class ExternalRelay:
    """A DERP relay program to start and measure.

    command: argv, with {port} {host} {state} {cert} {key} {certdir} filled in at start.
    name: how results name it (unique within a sweep). port: 0 picks a free loopback port
    each start. tls: the program speaks TLS (the load generator then uses userspace TLS,
    verifying `ca_file`, or the certificate labkit made when ca_file is None).
    cert_name: file stem of that certificate ({certdir}/{cert_name}.crt/.key; derper's
    manual mode wants the hostname). cores: relay CPUs it gets when a run pins.
    settings: its own settings, printed beside its figures. install_hint: how a user gets
    the program, said when it is missing.
    """

    command: tuple[str, ...]
    name: str = "external"
    port: int = 0
    host: str = "127.0.0.1"
    tls: bool = False
    ca_file: str | None = None
    cert_name: str = "relay"
    cores: int = 1
    settings: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    install_hint: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.command, str | bytes):
            return  # validate() says so
        object.__setattr__(self, "command", tuple(self.command))

    # ---- what run() and pinning ask of a relay description ----------------------------

    @property
    def workers(self) -> int:
        """The relay cores a run gives it (pinning plans with this)."""
        return self.cores

    @property
    def pin_cpus(self) -> bool:
        """False: the program does not pin its own threads, so labkit pins it from outside."""
        return False

    def validate(self) -> ExternalRelay:
        """ConfigError listing every problem, before any process exists; self when valid."""
        raise_if(self._problems(), f"external relay {self.name!r}")
        return self

    def _problems(self) -> list[Problem]:
        p: list[Problem] = []
        cmd = self.command
        if isinstance(cmd, str | bytes) or not cmd or not all(
                isinstance(a, str) for a in cmd):
            p.append(Problem("command", cmd, "must be a non-empty list of strings (argv), "
                             "e.g. ['derper', '-a', '{host}:{port}']"))
            return p
        if shutil.which(cmd[0]) is None:
            hint = f"; {self.install_hint}" if self.install_hint else ""
            p.append(Problem("command", cmd[0], f"is not an executable on PATH or a path "
                             f"to one{hint}"))
        for arg in cmd:
            try:
                _fill(arg, dict.fromkeys(PLACEHOLDERS, "x"))
            except (KeyError, ValueError, IndexError) as e:
                p.append(Problem("command", arg, f"has a placeholder labkit does not fill "
                                 f"({e}); known, each written in braces: "
                                 f"{', '.join(PLACEHOLDERS)} (double a literal brace)"))
        if self.port == 0 and not any("{port}" in a for a in cmd):
            p.append(Problem("command", " ".join(cmd), "must contain the port placeholder, "
                             "written {port} with braces, when port=0 (labkit picks a "
                             "free port at each start)"))
        if not isinstance(self.port, int) or isinstance(self.port, bool) or \
                not 0 <= self.port <= 65535:
            p.append(Problem("port", self.port, "must be 0 (a free port) or 1..65535"))
        try:
            loopback = ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            p.append(Problem("host", self.host, "must be a loopback address (127.0.0.1): "
                             "a relay under test never listens beyond this machine"))
        if not isinstance(self.tls, bool):
            p.append(Problem("tls", self.tls, "must be True or False"))
        if self.ca_file is not None and not os.path.isfile(self.ca_file):
            p.append(Problem("ca_file", self.ca_file, "is not a readable file"))
        if self.ca_file is not None and self.tls is False:
            p.append(Problem("ca_file", self.ca_file, "only applies with {tls=True}"))
        if not isinstance(self.cores, int) or isinstance(self.cores, bool) or self.cores < 1:
            p.append(Problem("cores", self.cores, "must be an integer >= 1"))
        if not self.name or not isinstance(self.name, str):
            p.append(Problem("name", self.name, "must be a non-empty string"))
        return p

    def to_dict(self) -> dict[str, Any]:
        """Plain data for a run's metadata and summary columns (the labkit-relay columns a
        summary carries are filled as far as they mean anything here)."""
        return {
            "kind": "external", "name": self.name, "command": list(self.command),
            "port": self.port, "host": self.host, "tls": "user" if self.tls else "off",
            "ca_file": self.ca_file, "cert_name": self.cert_name, "cores": self.cores,
            "settings": dict(self.settings), "env": dict(self.env),
            # the summary's relay columns: what they mean for a program labkit did not build
            "io": "external", "workers": self.cores, "pin_cpus": False,
        }

    def settings_text(self) -> str:
        """"key=value, …": the relay's settings as printed beside its figures."""
        return ", ".join(f"{k}={v}" for k, v in self.settings.items()) or " ".join(self.command)

    def process(self, *, start_timeout: float = 15.0, stop_grace: float = 3.0
                ) -> ExternalRelayProcess:
        """A handle that start() (or `with`) runs; validated here."""
        return ExternalRelayProcess(self.validate(), start_timeout=start_timeout,
                                    stop_grace=stop_grace)


def _fill(arg: str, values: Mapping[str, str]) -> str:
    return arg.format_map(values)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now. Another process may take it before the relay binds:
    start() then finds the listener is not the relay's and says so."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# ---- the process tree, from /proc -------------------------------------------------------


def _start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks): with the pid, a name for one
    process that a recycled pid cannot share."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rpartition(")")[2].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def descendants(pid: int) -> dict[int, int]:
    """{pid: start time} of every live descendant of pid (children, theirs, …)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rpartition(")")[2].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out: dict[int, int] = {}
    todo = list(children.get(pid, []))
    while todo:
        p = todo.pop()
        st = _start_time(p)
        if st is not None:
            out[p] = st
            todo += children.get(p, [])
    return out


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on TCP `port` (IPv4 and IPv6), from /proc/net/tcp*."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                        found.add(cols[9])
        except (OSError, StopIteration):
            continue
    return found


def listener_pids(port: int, pids: Sequence[int]) -> list[int]:
    """Those of `pids` that hold a socket listening on `port`."""
    inodes = {f"socket:[{i}]" for i in _listening_inodes(port)}
    owners = []
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                        owners.append(pid)
                        break
    return owners


def derp_probe(host: str, port: int, *, tls: bool, ca_file: str | None,
               timeout: float = PROBE_TIMEOUT) -> bytes:
    """One full DERP handshake against host:port; the relay's public key. Raises OSError
    (nothing listens, TLS failed) or labkit.derp.DerpError (it listens but is no DERP
    relay, or not yet)."""
    from labkit import derp

    client = derp.Client.connect(host, port, tls=tls, cafile=ca_file, timeout=timeout)
    try:
        assert client.server_key is not None
        return client.server_key
    finally:
        client.close()


class ExternalRelayProcess:
    """One running external relay (see the module docstring). The attributes run() and
    the sampler read are the same as labkit.Relay's: pid, host, port, tls, cert_file,
    public_key, stderr_tail, returncode, wait(), check(), counters() (empty: no shared
    memory) and shm_name (None)."""

    shm_name = None  # the sampler's sign that there are no labkit counters to map

    def __init__(self, spec: ExternalRelay, *, start_timeout: float = 15.0,
                 stop_grace: float = 3.0) -> None:
        self.cfg = spec
        self.start_timeout = start_timeout
        self.stop_grace = stop_grace
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: Tail | None = None
        self._stdout: Tail | None = None
        self._finalizer: weakref.finalize | None = None
        self._state: Path | None = None
        self._seen: dict[int, int] = {}  # descendants seen while it ran: pid -> start time
        self._term_sent = False
        self.argv: list[str] = []
        self.port = spec.port
        self.host = spec.host
        self.cert_file: str | None = spec.ca_file
        self.public_key = b""
        self.orphans: list[int] = []  # descendants still alive after the relay stopped
        # the process that listens: not `pid` when the command is a wrapper that forks the
        # relay (then /proc and perf, which watch `pid`, miss the relay's work: run() says so)
        self.listener_pid: int | None = None

    # ---- lifecycle ---------------------------------------------------------------------

    def start(self) -> ExternalRelayProcess:
        if self._proc is not None:
            raise RelayError("this external relay was already started; make a new one")
        spec = self.cfg
        self._state = Path(tempfile.mkdtemp(prefix=f"labkit-ext-{_safe(spec.name)}-"))
        values = {"host": spec.host, "state": str(self._state), "certdir": str(self._state),
                  "cert": "", "key": ""}
        if spec.tls and spec.ca_file is None:
            from labkit import tlscert

            cert, key = tlscert.self_signed(self._state, stem=spec.cert_name)
            values |= {"cert": str(cert), "key": str(key)}
            self.cert_file = str(cert)
        self.port = spec.port or free_port(spec.host)
        values["port"] = str(self.port)
        self.argv = [_fill(a, values) for a in spec.command]
        try:
            # its own session: Ctrl-C in a notebook interrupts the cell, not the relay
            self._proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, env=dict(os.environ) | dict(spec.env),
                start_new_session=True, cwd=self._state)
        except OSError as e:
            self._remove_state()
            raise RelayError(f"external relay {spec.name!r}: cannot start {self.argv[0]!r}: "
                             f"{e.strerror}") from None
        self._finalizer = weakref.finalize(self, stop_pid, self._proc, self.stop_grace)
        self._stderr = Tail(self._proc.stderr, f"ext-{self._proc.pid}-stderr")
        self._stdout = Tail(self._proc.stdout, f"ext-{self._proc.pid}-stdout")
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self._proc is not None
        spec = self.cfg
        deadline = time.monotonic() + self.start_timeout
        why = "its port never opened"
        while True:
            code = self._proc.poll()
            if code is not None:
                self._join_tails()
                raise ExternalRelayFailed(spec.name, code, self.stderr_tail,
                                          f"exited before it answered DERP on port {self.port}")
            tree = [self._proc.pid, *self._remember_tree()]
            owners = listener_pids(self.port, tree)
            if owners:
                self.listener_pid = owners[0]
                try:
                    self.public_key = derp_probe(self.host, self.port, tls=spec.tls,
                                                 ca_file=self.cert_file)
                    return
                except Exception as e:  # not (yet) a DERP relay: say the last reason
                    why = f"port {self.port} is open but the DERP handshake fails: " \
                          f"{type(e).__name__}: {e}"
            elif _listening_inodes(self.port):
                why = f"port {self.port} is held by a process that is not this relay's"
            if time.monotonic() >= deadline:
                raise RelayStartTimeout(
                    f"external relay {spec.name!r} (pid {self._proc.pid}) did not answer "
                    f"DERP within {self.start_timeout} s ({why}); command: "
                    f"{' '.join(self.argv)}; output tail:\n{self.stderr_tail or '(none)'}")
            time.sleep(PROBE_EVERY)

    def _remember_tree(self) -> list[int]:
        assert self._proc is not None
        now = descendants(self._proc.pid)
        self._seen |= now
        return list(now)

    def pids(self) -> list[int]:
        """The relay's pid and its live descendants' (what pinning pins)."""
        if self._proc is None or self._proc.poll() is not None:
            return []
        return [self._proc.pid, *self._remember_tree()]

    def stop(self) -> int | None:
        """Stop it and anything it started; its exit code (0 also when it ended from the
        SIGTERM we sent, the clean stop of a program without a handler; None: never
        started). Safe to call twice."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self._remember_tree()
            self._term_sent = True
        assert self._finalizer is not None
        self._finalizer()
        code = self._proc.wait()
        self.orphans = self._stop_leftovers()
        self._join_tails()
        self._remove_state()
        if code == -signal.SIGTERM and self._term_sent:
            return 0
        return code

    def _stop_leftovers(self) -> list[int]:
        """Stop, by pid, the descendants that outlived the relay; their pids."""
        alive = [p for p, st in self._seen.items() if _start_time(p) == st]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for p in alive:
                if _start_time(p) == self._seen[p]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(p, sig)
            end = time.monotonic() + self.stop_grace
            while time.monotonic() < end and any(
                    _start_time(p) == self._seen[p] for p in alive):
                time.sleep(0.02)
        return alive

    def _join_tails(self) -> None:
        for tail in (self._stderr, self._stdout):
            if tail is not None:
                tail.join(self.stop_grace)

    def _remove_state(self) -> None:
        if self._state is not None:
            shutil.rmtree(self._state, ignore_errors=True)
            self._state = None

    def wait(self, timeout: float | None = None) -> int:
        if self._proc is None:
            raise RelayError("external relay not started")
        return self._proc.wait(timeout)

    def check(self) -> None:
        """ExternalRelayFailed if the program is no longer running."""
        if self._proc is None:
            raise RelayError("external relay not started")
        code = self._proc.poll()
        if code is not None:
            self._join_tails()
            raise ExternalRelayFailed(self.cfg.name, code, self.stderr_tail, "exited")

    def __enter__(self) -> ExternalRelayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- what a run reads ------------------------------------------------------------

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RelayError("external relay not started")
        return self._proc.pid

    @property
    def tls(self) -> str:
        """The load generator's TLS mode against it."""
        return "user" if self.cfg.tls else "off"

    @property
    def workers(self) -> int:
        return self.cfg.cores

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc else None

    @property
    def stderr_tail(self) -> str:
        """The program's stderr tail, or its stdout's when stderr is empty (some relays
        log to stdout)."""
        err = self._stderr.text() if self._stderr else ""
        return err or (self._stdout.text() if self._stdout else "")

    def counters(self) -> dict[str, int]:
        """Empty: an external relay has no labkit shared-memory counters."""
        return {}

    def __repr__(self) -> str:
        if self._proc is None:
            return f"ExternalRelayProcess({self.cfg.name}, not running)"
        state = "running" if self.returncode is None else f"exited {self.returncode}"
        return f"ExternalRelayProcess({self.cfg.name}, pid={self.pid}, " \
               f"{self.host}:{self.port}, {state})"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:32]
