"""Process-control pieces shared by the lab's child processes (relay, load generator).

Every child is a `python -m labkit ...` host that prints JSON lines on stdout and
diagnostics on stderr. The parent drains stderr into a bounded tail (a full pipe would
block the child), reads stdout lines against a deadline, and stops the child by pid only:
SIGTERM, then SIGKILL after a grace period, and only while the child is unreaped.
"""

import collections
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import IO

STDERR_TAIL_LINES = 200


class ChildFailed(RuntimeError):
    """A child process (relay, load generator) ended when it should not have; the
    message carries how it ended and the tail of its stderr."""

    def __init__(self, who: str, exitcode: int | None, stderr_tail: str, what: str) -> None:
        self.exitcode = exitcode
        self.stderr_tail = stderr_tail
        how = f"killed by signal {-exitcode}" if exitcode is not None and exitcode < 0 \
            else f"exit code {exitcode}"
        tail = stderr_tail.rstrip() or "(no stderr)"
        super().__init__(f"{who} {what} ({how}); stderr tail:\n{tail}")


def first_line(fd: int, done_fd: int, wait: Callable[[list[int]], list[int]]) -> bytes | None:
    """The first line a child host's C side writes to fd (its ready pipe), or None if
    done_fd (the run thread finished) becomes readable first. `wait(fds)` blocks until
    some of fds are readable and returns them (a host may repeat a stop while waiting)."""
    buf = b""
    while not buf.endswith(b"\n"):
        readable = wait([fd, done_fd])
        if fd in readable:
            chunk = os.read(fd, 64)
            if not chunk:
                return None
            buf += chunk
        elif done_fd in readable:
            return None
    return buf


def sanitizer_env() -> dict[str, str]:
    """Environment for a child that loads labkit._native_asan."""
    from labkit.build import sanitizer_preload

    return {
        "LABKIT_SANITIZE": "1",
        "LD_PRELOAD": sanitizer_preload(),
        # Python's own allocations are never freed at exit: leak reports would be noise.
        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0",
    }


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """os.environ plus `extra`, with the sanitizer preload when LABKIT_SANITIZE=1."""
    env = dict(os.environ) | extra
    if env.get("LABKIT_SANITIZE") == "1":
        env |= sanitizer_env() | extra
    return env


class Tail:
    """A drained pipe's last lines. Draining matters: a full pipe would block the child."""

    def __init__(self, stream: IO[bytes], name: str, lines: int = STDERR_TAIL_LINES) -> None:
        self._lines: collections.deque[str] = collections.deque(maxlen=lines)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._drain, args=(stream,), name=name,
                                        daemon=True)
        self._thread.start()

    def _drain(self, stream: IO[bytes]) -> None:
        with stream:
            for raw in stream:
                with self._lock:
                    self._lines.append(raw.decode(errors="replace"))

    def text(self) -> str:
        with self._lock:
            return "".join(self._lines)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


class LineReader:
    """Read whole lines from a child's stdout against a deadline.

    os.read on the raw descriptor, not the buffered file object: select() must see every
    byte that is still unread.
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._fd = stream.fileno()
        self._buf = b""
        self.eof = False

    def readline(self, deadline: float) -> bytes | None:
        """The next line (with its newline); None at EOF; TimeoutError at the deadline
        (time.monotonic())."""
        while b"\n" not in self._buf:
            if self.eof:
                return None
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._fd], [], [], left)[0]:
                raise TimeoutError("no complete line before the deadline")
            chunk = os.read(self._fd, 65536)
            if not chunk:
                self.eof = True
                rest, self._buf = self._buf, b""
                return rest or None
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line + b"\n"

    def close(self) -> None:
        self._stream.close()


def stop_pid(proc: subprocess.Popen[bytes], grace: float) -> int:
    """SIGTERM, wait up to grace, SIGKILL; returns the exit code. Signals go to proc's pid
    only, and only while it is unreaped (so the pid cannot belong to another process)."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            return proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
    return proc.wait()


def unlink_shm(name: str | None) -> None:
    """Remove a POSIX shm region a killed child could not remove itself."""
    if name:
        try:
            os.unlink(os.path.join("/dev/shm", name.lstrip("/")))
        except FileNotFoundError:
            pass


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (and its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        # the command name may hold spaces and parentheses: split after the last ')'
        fields = f.read().rpartition(")")[2].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")
