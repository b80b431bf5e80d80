"""The relay host: the process behind `labkit relay ...` (see labkit.procs.relay for the
parent).

A thin Python host around one blocking C call. It does the parts that are easier and
safer in Python (argument checks, binding with clear errors, keys, self-signed certs),
then runs lk_relay_run() in a thread. cffi releases the GIL for the call, so the main
thread stays free to handle SIGTERM/SIGINT, which it turns into lk_relay_stop().

Protocol with the parent: exactly one JSON line on stdout once the relay serves
({"event": "listening", ...}); diagnostics on stderr; exit 0 after a clean stop, 2 when
the config, the bind or the relay fails.
"""

import errno
import faulthandler
import ipaddress
import json
import os
import resource
import secrets
import select
import shutil
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

from labkit import keys, tlscert
from labkit.config import ConfigError, RelayConfig
from labkit.procs.child import first_line

EXIT_FAILED = 2
LISTEN_BACKLOG = 4096  # the kernel caps it at net.core.somaxconn


class HostError(RuntimeError):
    """A start-up failure outside the C relay (bind, files); the message says what to do."""


def bind_listener(host: str, port: int) -> socket.socket:
    """A bound, listening, non-blocking TCP socket (non-blocking: every worker's event
    loop may race for the same accept)."""
    try:
        family, _, _, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM,
            flags=socket.AI_PASSIVE | socket.AI_NUMERICSERV,
        )[0]
    except socket.gaierror as e:
        raise HostError(f"cannot use address {host!r}: {e.strerror}") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    # Lets a restarted relay reuse a port whose old connections sit in TIME_WAIT; on
    # Linux it never lets two listeners share a port.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(LISTEN_BACKLOG)
    except OSError as e:
        sock.close()
        where = f"{host}:{port}"
        if e.errno == errno.EADDRINUSE:
            msg = f"{where} is already in use: stop what listens there, or use port 0 (any free)"
        elif e.errno == errno.EADDRNOTAVAIL:
            msg = f"{host} is not an address of this machine: use 127.0.0.1"
        elif e.errno == errno.EACCES:
            msg = f"binding {where} needs privileges: use a port >= 1024, or 0 (any free)"
        else:
            msg = f"cannot listen on {where}: {e.strerror}"
        raise HostError(msg) from None
    sock.setblocking(False)
    warn_if_exposed(sock.getsockname()[0])
    return sock


def warn_if_exposed(bound: str) -> bool:
    """Warn on stderr when the relay listens beyond this machine; True if it warned."""
    if ipaddress.ip_address(bound).is_loopback:
        return False
    print(f"labkit relay: warning: listening on {bound}, reachable from other machines; "
          "the lab relay is meant for 127.0.0.1", file=sys.stderr, flush=True)
    return True


# Descriptors beside the connections: listener, pipes, eventfds, epoll/io_uring, stdio.
NOFILE_SLACK = 64


def raise_open_file_limit(cfg: RelayConfig) -> int:
    """Raise the soft RLIMIT_NOFILE so every data worker's connection slot can hold a
    socket; returns the limit now in force. It never
    exceeds the hard limit: when that is lower, warn with what to change, since the
    relay then refuses connections (accept fails with EMFILE) before its slots run out."""
    want = cfg.workers * cfg.max_conns + NOFILE_SLACK
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return want if soft == resource.RLIM_INFINITY else soft
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < want:
        print(f"labkit relay: warning: the open-file limit is {target} (hard limit), so "
              f"about {max(0, target - NOFILE_SLACK)} clients fit, not the "
              f"{cfg.workers * cfg.max_conns} that workers x max_conns allow: raise "
              "the hard limit (ulimit -Hn, /etc/security/limits.conf) or lower max_conns",
              file=sys.stderr, flush=True)
    return target


def serve(cfg: RelayConfig) -> int:
    """Run a relay for cfg until SIGTERM/SIGINT. Returns the process exit code."""
    cfg.validate()
    if os.environ.get("LABKIT_SANITIZE") != "1":
        # A crash in C then leaves every thread's Python stack in the parent's stderr
        # tail. Not under ASan, whose own SEGV handler reports the C stack instead.
        faulthandler.enable(all_threads=True)
    from labkit.native import error_text, ffi, lib  # here: --help and config errors need no build

    raise_open_file_limit(cfg)
    sock = bind_listener(cfg.host, cfg.port)
    private_key = cfg.resolve_private_key()
    cert_file, key_file, tls_dir = cfg.cert_file, cfg.key_file, None
    if cfg.tls != "off" and cert_file is None:
        cert, key = tlscert.self_signed()
        cert_file, key_file, tls_dir = str(cert), str(key), cert.parent
    shm_name = f"/labkit-relay-{os.getpid()}-{secrets.token_hex(4)}"
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    c_cfg, _keepalive = cfg.to_c(
        ffi, lib, listen_fd=sock.fileno(), ready_fd=ready_w, private_key=private_key,
        shm_name=shm_name, cert_file=cert_file, key_file=key_file,
    )
    outcome: dict[str, Any] = {}

    def run() -> None:
        rc = lib.lk_relay_run(c_cfg)
        outcome["rc"] = rc
        if rc != lib.LK_OK:
            # Read the detail on this thread, right after the failure that set it.
            outcome["error"] = error_text(rc)
        os.write(done_w, b"x")

    stop_requested = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop_requested.set()
        lib.lk_relay_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    relay_thread = threading.Thread(target=run, name="lk_relay_run")
    relay_thread.start()
    try:
        line = first_line(ready_r, done_r, lambda fds: select.select(fds, [], [])[0])
        if line is not None:
            if stop_requested.is_set():
                # The signal may have come before lk_relay_run armed its stop flag.
                lib.lk_relay_stop()
            else:
                announce(cfg, sock, private_key, shm_name, cert_file)
        select.select([done_r], [], [])  # signals interrupt it, run on_signal, and resume
        relay_thread.join()
    finally:
        for fd in (ready_r, ready_w, done_r, done_w):
            os.close(fd)
        sock.close()
        if tls_dir is not None:
            shutil.rmtree(tls_dir, ignore_errors=True)
    if outcome["rc"] != lib.LK_OK:
        print(f"labkit relay: {outcome['error']}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def announce(cfg: RelayConfig, sock: socket.socket, private_key: bytes, shm_name: str,
             cert_file: str | None) -> None:
    """The one stdout line the parent waits for."""
    host, port = sock.getsockname()[:2]
    event = {
        "event": "listening",
        "host": host,
        "port": port,
        "public_key": keys.public_key(private_key).hex(),
        "pid": os.getpid(),
        "tls": cfg.tls,
        "io": cfg.io,
        "workers": cfg.workers,
        "shm": shm_name,
        "cert_file": str(Path(cert_file).resolve()) if cert_file else None,
    }
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def main(cfg: RelayConfig) -> int:
    try:
        return serve(cfg)
    except (ConfigError, HostError, ImportError, keys.KeyFormatError) as e:
        print(f"labkit relay: {e}", file=sys.stderr)
        return EXIT_FAILED
