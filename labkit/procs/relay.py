"""Start, watch and stop a relay process from Python (a notebook or a test).

    with Relay(RelayConfig(io="epoll")) as relay:
        ...connect to relay.host, relay.port...
        relay.counters()["packets_forwarded"]

The relay never runs in the caller's process: a crash cannot take the kernel down, and
perf, /proc and py-spy see the relay alone. It is stopped by pid (SIGTERM, then SIGKILL
after a grace period), never by name.
"""

import glob
import json
import os
import subprocess
import sys
import time
import weakref
from typing import Any

from labkit.config import RelayConfig, secret_env
from labkit.counters.kinds import sum_slots
from labkit.hosts import sandbox
from labkit.procs.child import ChildFailed, LineReader, Tail, child_env, stop_pid, unlink_shm

SHM_DIR = "/dev/shm"


def default_start_timeout() -> float:
    """The bound on a relay's start (a bound on a failure, not a wait): 10 s, or 60 s inside
    the UML sandbox guest (one CPU, every syscall a ptrace round trip of the host), where
    on a host running two test suites a relay took over 10 s to start."""
    return 60.0 if sandbox.inside_guest() else 10.0


class RelayError(RuntimeError):
    """The relay process did not start or did not behave."""


class RelayCrashed(ChildFailed, RelayError):
    """The relay process exited when it should have been running."""

    def __init__(self, exitcode: int | None, stderr_tail: str, what: str = "exited") -> None:
        super().__init__("relay", exitcode, stderr_tail, what)


class RelayStartTimeout(RelayError):
    """The relay did not report that it listens within start_timeout."""


class Relay:
    """A relay process for `cfg`: started by start() or `with`, stopped by stop().

    start_timeout: seconds to wait for the relay's announcement (default: see
    default_start_timeout). stop_grace: seconds
    between SIGTERM and SIGKILL. env: variables set for the relay on top of this
    process's environment (LABKIT_SANITIZE=1 selects the sanitizer build).
    """

    def __init__(self, cfg: RelayConfig, *, start_timeout: float | None = None,
                 stop_grace: float = 3.0, env: dict[str, str] | None = None) -> None:
        self.cfg = cfg.validate()  # ConfigError here, before any process exists
        self.start_timeout = default_start_timeout() if start_timeout is None else start_timeout
        self.stop_grace = stop_grace
        self._env = env or {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: Tail | None = None
        self._stdout: Tail | None = None
        self._shm: Any = None
        self._crash_reported = False
        self._finalizer: weakref.finalize | None = None
        self.info: dict[str, Any] = {}

    # ---- lifecycle ---------------------------------------------------------------

    def start(self) -> "Relay":
        if self._proc is not None:
            raise RelayError("this Relay was already started; make a new one")
        env = child_env(secret_env(self.cfg) | self._env)
        # A new session: Ctrl-C in a notebook interrupts the cell, not the relay.
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "labkit", "relay", *self.cfg.to_args()],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=env, start_new_session=True,
        )
        # If the caller forgets stop(), the relay still goes when this object or the
        # interpreter does.
        self._finalizer = weakref.finalize(self, stop_pid, self._proc, self.stop_grace)
        self._stderr = Tail(self._proc.stderr, f"relay-{self._proc.pid}-stderr")
        try:
            line = self._read_announcement()
        except BaseException:
            self._finalizer()
            self._unlink_shm()
            raise
        self.info = json.loads(line)
        self._stdout = Tail(self._proc.stdout, f"relay-{self._proc.pid}-stdout")
        return self

    def _read_announcement(self) -> bytes:
        assert self._proc is not None and self._proc.stdout is not None
        try:
            line = LineReader(self._proc.stdout).readline(time.monotonic() + self.start_timeout)
        except TimeoutError:
            raise RelayStartTimeout(
                f"relay pid {self._proc.pid} did not report listening within "
                f"{self.start_timeout} s; stderr tail:\n{self.stderr_tail}"
            ) from None
        if line is None or not line.endswith(b"\n"):
            code = self._proc.wait()
            assert self._stderr is not None
            self._stderr.join(self.stop_grace)
            self._crash_reported = True
            raise RelayCrashed(code, self.stderr_tail, "exited before it was ready")
        return line

    def stop(self) -> int | None:
        """Stop the relay (SIGTERM, then SIGKILL after stop_grace); return its exit code
        (negative: the signal that ended it; None: never started). Safe to call twice."""
        if self._proc is None:
            return None
        if self._shm is not None:
            self._shm.close()
            self._shm = None
        assert self._finalizer is not None
        self._finalizer()
        code = self._proc.wait()
        for tail in (self._stderr, self._stdout):
            if tail is not None:
                tail.join(self.stop_grace)
        self._unlink_shm()
        return code

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the relay to exit by itself; its exit code, or TimeoutExpired."""
        if self._proc is None:
            raise RelayError("relay not started")
        return self._proc.wait(timeout)

    def check(self) -> None:
        """Raise RelayCrashed if the relay process is no longer running."""
        if self._proc is None:
            raise RelayError("relay not started")
        code = self._proc.poll()
        if code is not None:
            assert self._stderr is not None
            self._stderr.join(self.stop_grace)
            self._crash_reported = True
            raise RelayCrashed(code, self.stderr_tail)

    def _unlink_shm(self) -> None:
        # A relay that was killed could not remove its counter region; nobody else will.
        # Before its announcement the name is unknown, but it starts with the relay's pid.
        assert self._proc is not None
        name = self.info.get("shm")
        names = [name] if name else [
            os.path.basename(p)
            for p in glob.glob(os.path.join(SHM_DIR, f"labkit-relay-{self._proc.pid}-*"))
        ]
        for n in names:
            unlink_shm(n)

    def __enter__(self) -> "Relay":
        return self.start()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        code = self.stop()
        # A relay that failed its clean stop (error exit, sanitizer report, hang) fails the
        # with-block, unless a crash was already reported or another error is propagating.
        if exc_type is None and code != 0 and not self._crash_reported:
            raise RelayCrashed(code, self.stderr_tail, "did not stop cleanly")

    # ---- what the relay reported --------------------------------------------------

    @property
    def pid(self) -> int:
        return int(self.info["pid"])

    @property
    def host(self) -> str:
        return str(self.info["host"])

    @property
    def port(self) -> int:
        return int(self.info["port"])

    @property
    def public_key(self) -> bytes:
        return bytes.fromhex(self.info["public_key"])

    @property
    def tls(self) -> str:
        return str(self.info["tls"])

    @property
    def io(self) -> str:
        return str(self.info["io"])

    @property
    def workers(self) -> int:
        return int(self.info["workers"])

    @property
    def cert_file(self) -> str | None:
        return self.info["cert_file"]

    @property
    def shm_name(self) -> str:
        return str(self.info["shm"])

    @property
    def stderr_tail(self) -> str:
        return self._stderr.text() if self._stderr else ""

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc else None

    # ---- counters -----------------------------------------------------------------

    def worker_counters(self) -> list[dict[str, Any]]:
        """Per-slot counters from the relay's shared memory: data workers, then the
        relay's own counting threads (see ShmCounters.snapshot)."""
        if self._shm is None:
            from labkit.counters.shm import ShmCounters  # loads the native module

            self._shm = ShmCounters(self.shm_name)
        return self._shm.snapshot()

    def counters(self) -> dict[str, int]:
        """Counters and gauges summed over all slots (high-water gauges: the maximum)."""
        return sum_slots(self.worker_counters())

    def __repr__(self) -> str:
        if not self.info:
            return f"Relay({self.cfg.io}, not running)"
        state = "running" if self.returncode is None else f"exited {self.returncode}"
        return (f"Relay(pid={self.pid}, {self.host}:{self.port}, io={self.io}, "
                f"tls={self.tls}, workers={self.workers}, {state})")
