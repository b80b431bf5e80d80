"""Run the native DERP load generator against a relay, from Python (a notebook or a test).

    with Relay(RelayConfig()) as relay:
        with Load(LoadConfig.for_relay(relay, pairs=2, rate_mbps=50, duration=2)) as load:
            result = load.wait()
        result.mbps, result.lost, result.latency["p99"]

Like the relay, the generator never runs in the caller's process: `Load` starts
`python -m labkit load ... --json` (labkit.procs.load_host), waits for its ready line,
reads its counters from shared memory, and parses the one result line it prints at the
end. It is stopped by pid (SIGTERM ends the window early and still reports), never by
name.

`LoadConfig` is validated and serialisable the same way as `RelayConfig`: `to_args()`
/`from_args()` round-trip through the command line, `to_c()` fills `lk_load_config`.
Nothing at module level imports the native module.
"""

import argparse
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
import weakref
from dataclasses import dataclass, fields
from typing import Any, Literal

from labkit.config import ConfigError
from labkit.counters.kinds import sum_slots
from labkit.native.cstrings import c_string
from labkit.problems import Problem, raise_if
from labkit.procs import child
from labkit.procs.child import ChildFailed

TLS_MODES = ("off", "user", "ktls")
LOAD_MODES = ("throughput", "echo")
TRANSPORTS = ("raw", "websocket")  # as labkit.derp.TRANSPORTS (not imported: no PyNaCl here)
# How a sender writes (enum lk_load_sender): many frames per send(), or one frame per
# send() as a real client writes one WireGuard packet at a time.
SENDERS = ("batched", "frame-per-write")
MAX_PAIRS = 4096  # LK_LOAD_MAX_PAIRS in native/src/load.h
MAX_THREADS = 64  # LK_MAX_WORKERS
MIN_SIZE, MAX_SIZE = 16, 65536  # sequence + stamp .. a DERP packet's limit
MAX_SECONDS = 86400.0
DRAIN_SECONDS = 0.5  # LK_LOAD_DRAIN_NS: after the window, wait this long for stragglers
CONNECT_SECONDS = 5.0  # LK_LOAD_CONNECT_NS: connect + handshake budget
PERCENTILES = ("p50", "p90", "p99", "p999", "min", "max", "mean")  # lk_load_result order


@dataclass(frozen=True)
class LoadConfig:
    host: str = "127.0.0.1"
    port: int = 0  # the relay's port: required
    tls: Literal["off", "user", "ktls"] = "off"
    insecure: bool = False  # TLS: do not verify the relay's certificate
    ca_file: str | None = None  # TLS: trust this PEM (e.g. Relay.cert_file)
    mode: Literal["throughput", "echo"] = "throughput"
    pairs: int = 4
    size: int = 1400  # packet bytes (payload of SendPacket after the key)
    rate_mbps: float | None = None  # over all senders, payload bytes; None = unpaced
    duration: float = 5.0  # measured window, seconds
    warmup: float = 1.0  # sent first, excluded from every figure
    threads: int = 1
    pin_cpus: bool = False
    first_cpu: int = 0
    # how DERP travels: raw after Upgrade: DERP, or inside WebSocket binary messages
    # (one per batch the senders write), as browser clients reach derper
    transport: Literal["raw", "websocket"] = "raw"
    sender: Literal["batched", "frame-per-write"] = "batched"

    def __post_init__(self) -> None:
        if isinstance(self.ca_file, os.PathLike):
            object.__setattr__(self, "ca_file", os.fspath(self.ca_file))

    @classmethod
    def for_relay(cls, relay: Any, **kw: Any) -> "LoadConfig":
        """A config aimed at a running labkit.Relay: its address, TLS mode and certificate."""
        base: dict[str, Any] = {"host": relay.host, "port": relay.port}
        tls = relay.tls
        if tls != "off":
            base |= {"tls": tls, "ca_file": relay.cert_file}
        return cls(**(base | kw))

    def replace(self, **changes: Any) -> "LoadConfig":
        return dataclasses.replace(self, **changes)

    @property
    def unpaced(self) -> bool:
        return self.rate_mbps is None

    # ---- validation ------------------------------------------------------------

    def validate(self) -> "LoadConfig":
        """Raise ConfigError listing every problem and its fix; return self when valid."""
        raise_if(self._problems(), "load config")
        return self

    def _problems(self) -> list[Problem]:
        p: list[Problem] = []
        if not isinstance(self.host, str) or not self.host or self.host != self.host.strip():
            p.append(Problem("host", self.host, "must be the relay's address, e.g. "
                             "'127.0.0.1'"))
        if not _is_int(self.port) or not 1 <= self.port <= 65535:
            p.append(Problem("port", self.port, "must be the relay's port 1..65535 "
                             "(Relay.port; LoadConfig.for_relay(relay) fills it)"))
        for name, choices in (("tls", TLS_MODES), ("mode", LOAD_MODES),
                              ("transport", TRANSPORTS), ("sender", SENDERS)):
            if getattr(self, name) not in choices:
                p.append(Problem(name, getattr(self, name), "is not known",
                                 "choose one of " + ", ".join(repr(c) for c in choices),
                                 cli_fix="choose one of " + ", ".join(choices)))
        for name in ("insecure", "pin_cpus"):
            if not isinstance(getattr(self, name), bool):
                p.append(Problem(name, getattr(self, name), "must be True or False"))
        p += self._tls_problems()
        if not _is_int(self.pairs) or not 1 <= self.pairs <= MAX_PAIRS:
            p.append(Problem("pairs", self.pairs, f"must be an integer 1..{MAX_PAIRS}"))
        if not _is_int(self.size) or not MIN_SIZE <= self.size <= MAX_SIZE:
            p.append(Problem("size", self.size, f"must be {MIN_SIZE}..{MAX_SIZE} bytes (a "
                             "packet carries an 8-byte sequence and an 8-byte send stamp)"))
        if self.rate_mbps is not None and (
                not _is_number(self.rate_mbps) or not 0 < self.rate_mbps <= 1e7
                or not math.isfinite(self.rate_mbps)):
            p.append(Problem("rate_mbps", self.rate_mbps, "must be megabits per second > 0",
                             "give one, or None for unpaced (as fast as the relay takes it)",
                             cli_fix="give one (e.g. --rate 500), or --rate unpaced for as "
                             "fast as the relay takes it"))
        if not _is_number(self.duration) or not 0.001 <= self.duration <= MAX_SECONDS:
            p.append(Problem("duration", self.duration,
                             f"must be seconds, 0.001..{MAX_SECONDS:g}"))
        if not _is_number(self.warmup) or not 0 <= self.warmup <= MAX_SECONDS:
            p.append(Problem("warmup", self.warmup, "must be seconds >= 0 (0 = no warm-up)"))
        if not _is_int(self.threads) or not 1 <= self.threads <= MAX_THREADS:
            p.append(Problem("threads", self.threads, f"must be an integer 1..{MAX_THREADS}"))
        elif _is_int(self.pairs) and self.pairs >= 1 and self.threads > 2 * self.pairs:
            p.append(Problem("threads", self.threads, f"exceeds the {2 * self.pairs} "
                             f"connections of {self.pairs} pairs",
                             f"use {{threads}} <= {2 * self.pairs} or more {{pairs}}"))
        if not _is_int(self.first_cpu) or self.first_cpu < 0:
            p.append(Problem("first_cpu", self.first_cpu, "must be a CPU number >= 0"))
        elif self.first_cpu != 0 and not self.pin_cpus:
            p.append(Problem("first_cpu", self.first_cpu, "{first_cpu} only applies with "
                             "{pin_cpus=True}", "set {pin_cpus} or drop {first_cpu}", form=""))
        return p

    def _tls_problems(self) -> list[Problem]:
        p: list[Problem] = []
        if self.tls == "off":
            given = [n for n in ("insecure", "ca_file") if getattr(self, n)]
            if given:
                names = " and ".join(f"{{{g}}}" for g in given)
                p.append(Problem(given[0], getattr(self, given[0]),
                                 f"{names} only apply with TLS", "set {tls=user} or drop them",
                                 form=""))
            return p
        if self.insecure and self.ca_file is not None:
            p.append(Problem("ca_file", self.ca_file, "give {ca_file} (verify against it) or "
                             "{insecure=True} (no verification), not both", form=""))
        if self.ca_file is not None:
            try:
                with open(self.ca_file, "rb") as f:
                    head = f.read(1 << 16)
            except OSError as e:
                p.append(Problem("ca_file", self.ca_file, f"cannot be read ({e.strerror})",
                                 "fix the path, or use Relay.cert_file for the lab relay",
                                 form=" "))
            else:
                if b"-----BEGIN " not in head:
                    p.append(Problem("ca_file", self.ca_file,
                                     "is not PEM (no '-----BEGIN' line)", form=" "))
        return p

    # ---- serialisation ----------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_args(self) -> list[str]:
        """Arguments for `labkit load` that from_args() turns back into self (without
        --json, which the caller adds when it wants machine-readable output)."""
        rate = "unpaced" if self.rate_mbps is None else repr(float(self.rate_mbps))
        args = [
            "--target", _format_target(self.host, self.port),
            "--tls", self.tls,
            "--mode", self.mode,
            "--pairs", str(self.pairs),
            "--size", str(self.size),
            "--rate", rate,
            "--duration", repr(float(self.duration)),
            "--warmup", repr(float(self.warmup)),
            "--threads", str(self.threads),
            "--transport", self.transport,
            "--sender", self.sender,
        ]
        if self.insecure:
            args.append("--insecure")
        if self.ca_file is not None:
            args += ["--ca-file", self.ca_file]
        if self.pin_cpus:
            args.append("--pin")
        if self.first_cpu:
            args += ["--first-cpu", str(self.first_cpu)]
        return args

    @classmethod
    def from_args(cls, argv: list[str]) -> "LoadConfig":
        """Parse `labkit load` arguments; bad syntax raises ConfigError (never exits)."""
        parser = _RaisingParser(prog="labkit load", add_help=False)
        add_arguments(parser)
        return from_namespace(parser.parse_args(argv))

    # ---- the C side -------------------------------------------------------------

    def to_c(self, ffi: Any, lib: Any, *, ready_fd: int,
             shm_name: str | None) -> tuple[Any, list[Any]]:
        """Fill an `lk_load_config`. Returns (cfg, keepalive): the struct points into the
        keepalive objects, which the caller must hold until lk_load_run returns."""
        cfg = ffi.new("lk_load_config *")
        lib.lk_load_config_defaults(cfg)
        keepalive: list[Any] = [cfg]

        def cstr(s: str | None) -> Any:
            return c_string(ffi, keepalive, s)

        cfg.host = cstr(self.host)
        cfg.port = self.port
        cfg.tls = {"off": lib.LK_TLS_OFF, "user": lib.LK_TLS_USER, "ktls": lib.LK_TLS_KTLS}[
            self.tls]
        cfg.insecure = int(self.insecure)
        cfg.ca_file = cstr(self.ca_file)
        cfg.mode = {"throughput": lib.LK_LOAD_THROUGHPUT, "echo": lib.LK_LOAD_ECHO}[self.mode]
        cfg.pairs = self.pairs
        cfg.size = self.size
        cfg.rate_mbps = 0.0 if self.rate_mbps is None else float(self.rate_mbps)
        cfg.duration_s = float(self.duration)
        cfg.warmup_s = float(self.warmup)
        cfg.threads = self.threads
        cfg.pin_cpus = int(self.pin_cpus)
        cfg.first_cpu = self.first_cpu
        cfg.shm_name = cstr(shm_name)
        cfg.ready_fd = ready_fd
        cfg.transport = {"raw": lib.LK_TRANSPORT_RAW,
                         "websocket": lib.LK_TRANSPORT_WEBSOCKET}[self.transport]
        cfg.sender = {"batched": lib.LK_SENDER_BATCHED,
                      "frame-per-write": lib.LK_SENDER_FRAME_PER_WRITE}[self.sender]
        return cfg, keepalive


@dataclass(frozen=True)
class LoadResult:
    """What one run measured (lk_load_result). Window figures only: warm-up excluded."""

    sent: int  # packets sent in the measured window
    received: int  # of those, received (throughput) or echoed back (echo)
    lost: int  # sent - received after the drain
    bytes_received: int  # packet payload bytes of those
    seconds: float  # the measured window actually achieved
    mbps: float  # payload megabits per second received
    pps: float  # packets per second received
    latency: dict[str, float]  # µs: one-way (throughput) or round trip (echo); PERCENTILES
    latency_samples: int
    handshake_failures: int = 0
    # paced: packets of the window's rate never sent (the generator woke late or its
    # socket stayed full): offered = received + lost + pace_missed. 0 when unpaced.
    pace_missed: int = 0
    # every phase (warm-up, window, drain), from the generator's counters: what a relay's
    # packets_in / packets_forwarded should match. None when not reported.
    total_sent: int | None = None
    total_received: int | None = None
    total_pace_missed: int | None = None

    @property
    def loss_pct(self) -> float:
        return 100.0 * self.lost / self.sent if self.sent else 0.0

    @classmethod
    def from_c(cls, ffi: Any, out: Any, **extra: Any) -> "LoadResult":
        lat = ffi.unpack(out.latency_us, len(PERCENTILES))
        return cls(
            sent=out.sent, received=out.received, lost=out.lost,
            bytes_received=out.bytes_received, seconds=out.seconds, mbps=out.mbps,
            pps=out.pps, latency=dict(zip(PERCENTILES, lat, strict=True)),
            latency_samples=out.latency_samples, handshake_failures=out.handshake_failures,
            pace_missed=out.pace_missed,
            **extra,
        )

    def to_json(self) -> dict[str, Any]:
        """The host's result line (labkit.procs.load_host)."""
        d = dataclasses.asdict(self)
        d["latency_us"] = d.pop("latency")
        return {"event": "result"} | d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "LoadResult":
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in names}
        values["latency"] = {k: float(d["latency_us"][k]) for k in PERCENTILES}
        return cls(**values)


# ---- process control ---------------------------------------------------------------


class LoadError(RuntimeError):
    """The load generator did not start or did not behave."""


class LoadFailed(ChildFailed, LoadError):
    """The load process failed (bad target, handshake failure, crash); stderr says why."""

    def __init__(self, exitcode: int | None, stderr_tail: str, what: str = "failed") -> None:
        super().__init__("load generator", exitcode, stderr_tail, what)


class LoadTimeout(LoadError):
    """The load process did not report in time (it is left running: stop() it)."""


class Load:
    """A load-generator process for `cfg`: start() or `with`, then wait() for the result."""

    def __init__(self, cfg: LoadConfig, *, start_timeout: float | None = None,
                 stop_grace: float = 3.0, env: dict[str, str] | None = None) -> None:
        self.cfg = cfg.validate()  # ConfigError here, before any process exists
        # connect + handshake have their own 5 s budget; interpreter start comes on top
        self.start_timeout = start_timeout if start_timeout is not None \
            else CONNECT_SECONDS + 10.0
        self.stop_grace = stop_grace
        self._env = env or {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._stdout: child.LineReader | None = None
        self._stderr: child.Tail | None = None
        self._shm: Any = None
        self._finalizer: weakref.finalize | None = None
        self._result: LoadResult | None = None
        self.info: dict[str, Any] = {}

    # ---- lifecycle ---------------------------------------------------------------

    def start(self) -> "Load":
        if self._proc is not None:
            raise LoadError("this Load was already started; make a new one")
        # A new session: Ctrl-C in a notebook interrupts the cell, not the load.
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "labkit", "load", *self.cfg.to_args(), "--json"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=child.child_env(self._env), start_new_session=True,
        )
        self._finalizer = weakref.finalize(self, child.stop_pid, self._proc, self.stop_grace)
        self._stderr = child.Tail(self._proc.stderr, f"load-{self._proc.pid}-stderr")
        assert self._proc.stdout is not None
        self._stdout = child.LineReader(self._proc.stdout)
        try:
            event = self._next_event(time.monotonic() + self.start_timeout, "ready")
        except BaseException:
            self._finalizer()
            self._stderr.join(self.stop_grace)
            raise
        self.info = event
        return self

    def _next_event(self, deadline: float, want: str) -> dict[str, Any]:
        """The next JSON line of kind `want`; LoadFailed if the process ends first."""
        assert self._proc is not None and self._stdout is not None
        while True:
            try:
                line = self._stdout.readline(deadline)
            except TimeoutError:
                raise LoadTimeout(
                    f"load pid {self._proc.pid} did not report {want!r} in time; stderr tail:"
                    f"\n{self.stderr_tail}") from None
            if line is None:
                code = self._proc.wait()
                assert self._stderr is not None
                self._stderr.join(self.stop_grace)
                child.unlink_shm(self.info.get("shm"))
                raise LoadFailed(code, self.stderr_tail, f"exited before {want!r}")
            event = json.loads(line)
            if event.get("event") == want:
                return event

    def wait(self, timeout: float | None = None) -> LoadResult:
        """Wait for the run to finish and return its result. Default timeout: warm-up +
        duration + drain + 10 s. LoadFailed when it fails; LoadTimeout if it overruns."""
        if self._proc is None:
            raise LoadError("load not started")
        if self._result is not None:
            return self._result
        if timeout is None:
            timeout = self.cfg.warmup + self.cfg.duration + DRAIN_SECONDS + 10.0
        event = self._next_event(time.monotonic() + timeout, "result")
        code = self._proc.wait(self.stop_grace + 5.0)
        self._close_shm()
        if code != 0:
            assert self._stderr is not None
            self._stderr.join(self.stop_grace)
            raise LoadFailed(code, self.stderr_tail, "did not exit cleanly")
        self._result = LoadResult.from_json(event)
        return self._result

    def run(self, timeout: float | None = None) -> LoadResult:
        """start() + wait() + clean-up in one call."""
        with self:
            return self.wait(timeout)

    def stop(self) -> LoadResult | None:
        """End the run early (SIGTERM: the window ends now, the host still reports) and
        return the result, or None if there was none (killed after stop_grace, or never
        started). Safe to call twice."""
        if self._proc is None:
            return None
        if self._result is None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)  # our unreaped child: the pid is its own
            try:
                self.wait(self.stop_grace + DRAIN_SECONDS)
            except LoadError:
                pass
        assert self._finalizer is not None
        self._finalizer()  # SIGKILL after grace if it still runs
        self._proc.wait()
        self._close_shm()
        if self._stderr is not None:
            self._stderr.join(self.stop_grace)
        child.unlink_shm(self.info.get("shm"))
        return self._result

    def _close_shm(self) -> None:
        if self._shm is not None:
            self._shm.close()
            self._shm = None

    def __enter__(self) -> "Load":
        return self.start()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.stop()

    # ---- what the process reported ---------------------------------------------------

    @property
    def pid(self) -> int:
        return int(self.info["pid"])

    @property
    def shm_name(self) -> str:
        return str(self.info["shm"])

    @property
    def stderr_tail(self) -> str:
        return self._stderr.text() if self._stderr else ""

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc else None

    def cpu_seconds(self) -> float:
        """CPU seconds the load process has used so far (/proc/<pid>/stat)."""
        return child.cpu_seconds(self.pid)

    def thread_counters(self) -> list[dict[str, Any]]:
        """Per-thread counters from shared memory (while the process runs)."""
        if self._shm is None:
            from labkit.counters.shm import ShmCounters  # loads the native module

            self._shm = ShmCounters(self.shm_name)
        return self._shm.snapshot()

    def counters(self) -> dict[str, int]:
        """Counters summed over threads: load_sent, load_received, bytes_out, sys_write..."""
        return sum_slots(self.thread_counters())

    def __repr__(self) -> str:
        state = "not running" if not self.info else (
            "running" if self.returncode is None else f"exited {self.returncode}")
        return (f"Load({_format_target(self.cfg.host, self.cfg.port)}, pairs={self.cfg.pairs}, "
                f"mode={self.cfg.mode}, {state})")


# ---- command line ----------------------------------------------------------------


class _RaisingParser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise ConfigError(f"labkit load: {message}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `labkit load` options (shared by the CLI and LoadConfig.from_args)."""
    d = LoadConfig()
    parser.add_argument("--target", required=True, metavar="HOST:PORT",
                        help="the relay, e.g. 127.0.0.1:3340 or [::1]:3340")
    parser.add_argument("--tls", default=d.tls, choices=TLS_MODES, help="TLS to the relay")
    parser.add_argument("--insecure", action="store_true",
                        help="TLS: do not verify the relay's certificate")
    parser.add_argument("--ca-file", metavar="FILE", help="TLS: trust this PEM certificate")
    parser.add_argument("--mode", default=d.mode, choices=LOAD_MODES,
                        help="throughput: one-way; echo: receivers send each packet back")
    add_load_arguments(parser)
    parser.add_argument("--duration", type=float, default=d.duration, metavar="S",
                        help="measured window, seconds")
    parser.add_argument("--warmup", type=float, default=d.warmup, metavar="S",
                        help="seconds sent before the window, excluded from every figure")
    parser.add_argument("--pin", dest="pin_cpus", action="store_true",
                        help="pin thread i to CPU (first-cpu + i) mod ncpu")
    parser.add_argument("--first-cpu", type=int, default=d.first_cpu, metavar="CPU",
                        help="with --pin: the first thread's CPU")
    parser.add_argument("--json", action="store_true",
                        help="JSON lines on stdout: a ready event, then one result event")


def add_load_arguments(parser: argparse.ArgumentParser | Any) -> None:
    """The load's shape (pairs, size, rate, threads): shared by `labkit load` and `labkit
    run`. --rate maps to the field rate_mbps."""
    d = LoadConfig()
    parser.add_argument("--pairs", type=int, default=d.pairs, metavar="N",
                        help="sender->receiver pairs (2 connections each)")
    parser.add_argument("--size", type=int, default=d.size, metavar="BYTES",
                        help="packet payload bytes")
    parser.add_argument("--rate", type=rate_arg, default="unpaced", metavar="MBIT/S|unpaced",
                        help="offered payload megabits per second over all senders, or "
                        "unpaced (as fast as the relay takes it)")
    parser.add_argument("--threads", type=int, default=d.threads, metavar="N",
                        help="load generator event-loop threads")
    parser.add_argument("--transport", default=d.transport, choices=TRANSPORTS,
                        help="raw DERP, or DERP inside WebSocket binary messages")
    parser.add_argument("--sender", default=d.sender, choices=SENDERS,
                        help="batched: many frames per send(); frame-per-write: one send() "
                        "per frame, as a real client writes")
    parser.set_defaults(_field_flags={"rate_mbps": "--rate"})


def from_namespace(ns: argparse.Namespace) -> LoadConfig:
    host, port = _parse_target(ns.target)
    return LoadConfig(
        host=host, port=port, tls=ns.tls, insecure=ns.insecure, ca_file=ns.ca_file,
        mode=ns.mode, pairs=ns.pairs, size=ns.size, rate_mbps=ns.rate,
        duration=ns.duration, warmup=ns.warmup, threads=ns.threads, pin_cpus=ns.pin_cpus,
        first_cpu=ns.first_cpu, transport=ns.transport, sender=ns.sender,
    )


def rate_arg(text: str) -> float | None:
    """--rate: megabits per second, or 'unpaced' (None)."""
    if text.strip().lower() == "unpaced":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not megabits per second: give a number (e.g. --rate 500) or "
            "--rate unpaced") from None


def _format_target(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_target(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"--target {text!r} must be HOST:PORT, e.g. 127.0.0.1:3340 or "
                          "[::1]:3340")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)
