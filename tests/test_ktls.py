"""Kernel TLS: the relay's `tls=ktls` mode, on this kernel or inside the UML sandbox.

Three layers:
- on a host without kTLS, the relay refuses `tls=ktls` with the reason and what to do;
- the tests marked `needs_ktls` exercise the kTLS data path in-process (the kernel they
  run on must have the tls ULP);
- on a host without kTLS, test_in_sandbox boots `labkit sandbox` (a UML 6.1 kernel with
  tls.ko) and runs those tests there, plus the conformance suite against the kTLS modes
  of tests/modes.py. Everything skips, with the reason, only where neither the host nor
  the sandbox can provide kTLS.

Timing figures from UML are UML figures: one CPU, slow syscalls, AES-GCM without AES-NI.
"""

from __future__ import annotations

import os
import random
import select
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from labkit import Relay, RelayConfig, RelayCrashed, caps, derp, tlscert
from labkit.hosts import sandbox
from labkit.procs.load import Load, LoadConfig

ROOT = Path(__file__).resolve().parent.parent
KTLS_HERE, KTLS_WHY = caps.ktls_probe()
SANDBOX_OK, SANDBOX_WHY = sandbox.available()
IN_SANDBOX = sandbox.inside_guest()

needs_ktls = pytest.mark.skipif(
    not KTLS_HERE,
    reason=f"this kernel has no kTLS ({KTLS_WHY}); "
    + ("test_in_sandbox runs these inside the UML sandbox" if SANDBOX_OK
       else f"and the sandbox is unavailable ({SANDBOX_WHY})"),
)
IOS = [pytest.param("epoll"), pytest.param("uring")]


def _eventually(read: Callable[[], Any], ok: Callable[[Any], bool], timeout: float = 5.0) -> Any:
    """Poll read() until ok(value) or the deadline; return the last value (counters are
    published by the relay on its own schedule)."""
    deadline = time.monotonic() + timeout
    value = read()
    while not ok(value) and time.monotonic() < deadline:
        time.sleep(0.01)
        value = read()
    return value


def tls_stat() -> dict[str, int]:
    """/proc/net/tls_stat as {name: value} (exists once the tls module is loaded)."""
    rows = Path("/proc/net/tls_stat").read_text().split("\n")
    return {k: int(v) for k, v in (r.split() for r in rows if r.strip())}


def connect(relay: Relay, **kw: Any) -> derp.Client:
    """A DERP client over Python's ssl (userspace TLS), trusting the relay's certificate."""
    return derp.Client.connect(relay.host, relay.port, tls=True, cafile=relay.cert_file, **kw)


# ---- host: refused with the reason ---------------------------------------------------


@pytest.mark.skipif(KTLS_HERE, reason="this kernel has kTLS: the refusal needs one without")
def test_relay_refuses_ktls_without_the_tls_ulp() -> None:
    with pytest.raises(RelayCrashed) as e, Relay(RelayConfig(tls="ktls")):
        pass
    tail = e.value.stderr_tail
    assert e.value.exitcode == 2
    assert 'no tls ULP (setsockopt TCP_ULP "tls": ENOENT)' in tail
    assert "modprobe tls" in tail and "labkit sandbox" in tail and "tls=user" in tail


@pytest.mark.skipif(KTLS_HERE, reason="this kernel has kTLS: the refusal needs one without")
def test_doctor_says_ktls_no_and_why() -> None:
    c = caps.probe()["ktls"]
    assert c.ok is False and "tls ULP" in c.detail and c.todo


# ---- the kTLS data path (this kernel has kTLS: a capable host, or the sandbox) ------------


@needs_ktls
@pytest.mark.parametrize("io", IOS)
def test_tls_stat_shows_both_directions_offloaded_per_connection(io: str) -> None:
    """Each relay-side connection holds a kernel TX and RX context (software crypto here:
    no NIC offload), and gives them back when it closes."""
    with Relay(RelayConfig(tls="ktls", io=io, workers=2)) as relay:
        before = tls_stat()
        clients = [connect(relay) for _ in range(4)]
        assert_delivers_both_ways(clients[0], clients[1])
        counters = _eventually(relay.counters, lambda c: c["conns_ktls"] == 4)
        assert counters["conns_ktls"] == 4 and counters["close_tls"] == 0
        during = tls_stat()
        assert during["TlsCurrTxSw"] - before["TlsCurrTxSw"] == 4
        assert during["TlsCurrRxSw"] - before["TlsCurrRxSw"] == 4
        assert during["TlsTxSw"] - before["TlsTxSw"] == 4
        assert during["TlsRxSw"] - before["TlsRxSw"] == 4
        assert during["TlsDecryptError"] == before["TlsDecryptError"]
        for c in clients:
            c.close()
        after = _eventually(tls_stat, lambda s: s["TlsCurrRxSw"] == before["TlsCurrRxSw"])
        assert after["TlsCurrTxSw"] == before["TlsCurrTxSw"]
        assert after["TlsCurrRxSw"] == before["TlsCurrRxSw"]


def assert_delivers_both_ways(a: derp.Client, b: derp.Client) -> None:
    a.send(b.public_key, b"ping over ktls")
    assert b.recv_packet(5).data == b"ping over ktls"
    b.send(a.public_key, b"pong over ktls")
    assert a.recv_packet(5).data == b"pong over ktls"


@needs_ktls
@pytest.mark.parametrize("io", IOS)
def test_userspace_tls_clients_and_ktls_relay_exchange_10000_packets_intact(io: str) -> None:
    """10,000 packets each way between two Python-ssl clients through a kTLS relay, sizes
    from 0 to 64 KiB (kernel records are at most 16 KiB, so big ones span records), every
    byte checked. A window of 16 keeps the relay's per-destination queue from dropping."""
    rng = random.Random(4)
    with Relay(RelayConfig(tls="ktls", io=io)) as relay:
        a, b = connect(relay), connect(relay)
        assert isinstance(a.sock, ssl.SSLSocket)
        assert a.sock.cipher()[0] == "TLS_AES_128_GCM_SHA256"  # type: ignore[index]
        total, window = 10_000, 16
        for src, dst in ((a, b), (b, a)):
            sent = 0
            while sent < total:
                batch = []
                for i in range(sent, min(sent + window, total)):
                    size = 65_532 if i % 1000 == 999 else rng.randrange(0, 1400)
                    batch.append(i.to_bytes(4, "big") + rng.randbytes(size))
                for p in batch:
                    src.send(dst.public_key, p)
                for p in batch:
                    got = dst.recv_packet(10)
                    assert got.src == src.public_key and got.data == p, f"packet {sent}"
                    sent += 1
        counters = _eventually(relay.counters, lambda c: c["packets_forwarded"] == 2 * total)
        assert counters["packets_forwarded"] == 2 * total
        assert counters["conns_ktls"] == 2
        for drop in ("drop_queue_head", "drop_queue_tail", "drop_pool_empty"):
            assert counters[drop] == 0


def _handshake_in_memory(sock: socket.socket, server_hostname: str,
                         cafile: str | None) -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]:
    """A TLS 1.3 client handshake whose last flight (Finished) is NOT sent: it stays in
    the outgoing BIO so the caller can put application records behind it in one write."""
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.set_alpn_protocols(["http/1.1"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    while True:
        try:
            obj.do_handshake()
            return obj, incoming, outgoing
        except ssl.SSLWantReadError:
            sock.sendall(outgoing.read())
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("relay closed during the handshake") from None
            incoming.write(data)


def _read_plain(sock: socket.socket, obj: ssl.SSLObject, incoming: ssl.MemoryBIO,
                want: int) -> bytes:
    out = b""
    while len(out) < want:
        try:
            out += obj.read(65536)
            continue
        except ssl.SSLWantReadError:
            pass
        data = sock.recv(65536)
        if not data:
            break
        incoming.write(data)
    return out


@needs_ktls
@pytest.mark.parametrize("io", IOS)
@pytest.mark.parametrize("split", ["whole", "partial"])
def test_application_records_pipelined_behind_finished_reach_the_kernel(io: str,
                                                                        split: str) -> None:
    """The record-boundary case: the client's Finished and its first application records
    (the HTTP upgrade and ClientInfo) arrive in one segment. The relay must hand the kernel
    the stream exactly after Finished, at sequence number 0 -- also when only part of
    the first application record has arrived ("partial": the rest comes after the
    relay has switched, which its conns_ktls counter shows)."""
    with Relay(RelayConfig(tls="ktls", io=io)) as relay:
        sock = socket.create_connection((relay.host, relay.port), timeout=10)
        with sock:
            obj, incoming, outgoing = _handshake_in_memory(sock, relay.host, relay.cert_file)
            finished = outgoing.read()
            me = derp.Client(sock)  # for its key and the ClientInfo payload only
            request = derp.build_upgrade_request(f"{relay.host}:{relay.port}",
                                                 extra_headers={"Derp-Fast-Start": "1"})
            server_key = bytes.fromhex(relay.info["public_key"])
            info = derp.encode_frame(derp.FrameType.CLIENT_INFO,
                                     derp.client_info_payload(me.private_key, server_key,
                                                              derp.DEFAULT_CLIENT_INFO))
            obj.write(request)
            obj.write(info)
            records = outgoing.read()
            if split == "whole":
                sock.sendall(finished + records)
            else:
                sock.sendall(finished + records[:9])  # 9 bytes into the first record
                _eventually(relay.counters, lambda c: c["conns_ktls"] == 1)
                assert relay.counters()["conns_ktls"] == 1
                sock.sendall(records[9:])
            # fast start: no 101; ServerKey, then ServerInfo, all decrypted by the kernel's peer
            reader = derp.FrameReader()
            reader.feed(_read_plain(sock, obj, incoming, 5 + 40))
            frame = reader.next_frame()
            assert frame is not None and frame[0] == derp.FrameType.SERVER_KEY
            assert frame[1][8:] == server_key
        counters = relay.counters()
        assert counters["conns_ktls"] == 1 and counters["close_tls"] == 0


@needs_ktls
@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl binary")
def test_client_without_aes_128_gcm_is_refused_not_downgraded() -> None:
    """The kernel path here is AES-128-GCM only, so the relay offers only that suite: a
    client that insists on AES-256-GCM fails the handshake (never a userspace fallback)."""
    with Relay(RelayConfig(tls="ktls")) as relay:
        r = subprocess.run(
            ["openssl", "s_client", "-connect", f"{relay.host}:{relay.port}", "-tls1_3",
             "-ciphersuites", "TLS_AES_256_GCM_SHA384", "-brief"],
            input=b"", capture_output=True, timeout=30)
        # the relay closes a failed handshake at once (as in tls=user), so the client
        # may see the alert or just the end of the stream
        assert r.returncode != 0
        assert b"Ciphersuite:" not in r.stdout + r.stderr  # -brief prints it on success
        c = _eventually(relay.counters, lambda c: c["close_tls"] == 1)
        assert c["close_tls"] == 1 and c["conns_ktls"] == 0
        a, b = connect(relay), connect(relay)  # still serving
        assert_delivers_both_ways(a, b)


@needs_ktls
@pytest.mark.parametrize("io", IOS)
def test_load_generator_with_userspace_tls_against_ktls_relay(io: str) -> None:
    with Relay(RelayConfig(tls="ktls", io=io)) as relay:
        cfg = LoadConfig.for_relay(relay, tls="user", pairs=2, size=1200, rate_mbps=20,
                                   duration=1, warmup=0.2)
        r = Load(cfg).run()
        assert r.sent > 0 and r.received == r.sent and r.lost == 0
        counters = _eventually(relay.counters, lambda c: c["conns_ktls"] == 4)
        assert counters["conns_ktls"] == 4 and counters["close_tls"] == 0


@needs_ktls
@pytest.mark.parametrize("relay_tls", ["user", "ktls"])
def test_ktls_load_generator_against_relay(relay_tls: str) -> None:
    """The load generator's own kTLS client (keys installed after its handshake) against
    a userspace-TLS relay and against a kTLS relay: no loss, every connection offloaded."""
    pairs = 2
    with Relay(RelayConfig(tls=relay_tls, io="uring")) as relay:
        before = tls_stat()
        cfg = LoadConfig.for_relay(relay, tls="ktls", pairs=pairs, size=1200, rate_mbps=20,
                                   duration=1, warmup=0.2)
        r = Load(cfg).run()
        assert r.sent > 0 and r.received == r.sent and r.lost == 0
        after = tls_stat()
        relay_side = 2 * pairs if relay_tls == "ktls" else 0
        # + 1: the load generator's start-up probe installs keys on a loopback socket too
        assert after["TlsTxSw"] - before["TlsTxSw"] == 2 * pairs + relay_side + 1
        assert after["TlsRxSw"] - before["TlsRxSw"] == 2 * pairs + relay_side + 1
        assert after["TlsDecryptError"] == before["TlsDecryptError"]


class TicketingTlsFront:
    """A TLS 1.3 front for a plain relay on Python's ssl (OpenSSL), which sends two
    session tickets after each handshake, as Go's derper (crypto/tls) does: records a
    kTLS client meets after its keys moved to the kernel. One thread per connection
    moves bytes both ways; stopped (and its threads ended) by close()."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.cert_file, key_file = tlscert.self_signed()
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        self.ctx.load_cert_chain(self.cert_file, key_file)
        self.ctx.num_tickets = 2
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        self.listener.settimeout(0.1)
        while not self.stopping.is_set():
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            t = threading.Thread(target=self._pump, args=(sock,), daemon=True)
            self.threads.append(t)
            t.start()

    def _pump(self, sock: socket.socket) -> None:
        with self.ctx.wrap_socket(sock, server_side=True) as front, \
                socket.create_connection((self.relay.host, self.relay.port)) as back:
            while not self.stopping.is_set():
                ready, _, _ = select.select([front, back], [], [], 0.1)
                if front in ready or front.pending():
                    try:
                        data = front.recv(65536)
                    except ssl.SSLWantReadError:
                        data = None
                    if data == b"":
                        return
                    if data:
                        back.sendall(data)
                if back in ready:
                    data = back.recv(65536)
                    if not data:
                        return
                    front.sendall(data)

    def close(self) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(5)
        self.listener.close()


@needs_ktls
def test_ktls_load_generator_takes_session_tickets_after_the_switch() -> None:
    """A server that sends TLS 1.3 session tickets (Go's derper does; labkit's relay does
    not): they arrive after the load generator gave its keys to the kernel, as records
    that are not application data. The generator takes them and goes on, no loss."""
    with Relay(RelayConfig(tls="off")) as relay:
        front = TicketingTlsFront(relay)
        try:
            # A low rate: the front is Python relaying TLS by hand, inside a one-CPU guest
            # on a host that may be busy; at 20 Mbit/s its queue outgrew the generator's
            # 0.5 s drain there (half "lost", 0.9 s mean latency). The tickets come at the
            # start whatever the rate, and that is what this test is about.
            cfg = LoadConfig(port=front.port, tls="ktls", ca_file=str(front.cert_file),
                             pairs=2, size=1200, rate_mbps=2, duration=1, warmup=0.2)
            r = Load(cfg).run()
        finally:
            front.close()
        assert r.sent > 0 and r.received == r.sent and r.lost == 0


# ---- host without kTLS: run the above, and the conformance suite, in the sandbox ----------

# group -> (pytest arguments, LABKIT_MODES, whether a skipped test is acceptable)
SANDBOX_GROUPS: dict[str, tuple[list[str], str, bool]] = {
    # the conformance suite (docs/protocol.md §9) against a kTLS relay, one mode per backend
    "conformance": (["tests/conformance"], "epoll-ktls-w1,uring-ktls-w2", True),
    # this file's kTLS data-path tests (test_in_sandbox itself skips in the guest, which
    # has kTLS); the other tests here must all run there
    "data-path": (["tests/test_ktls.py", "-k", "not test_in_sandbox and not refuses and "
                   "not says_ktls_no"], "", False),
}


@pytest.mark.skipif(KTLS_HERE, reason="this kernel has kTLS: the kTLS tests ran directly"
                    + (" (inside the sandbox)" if IN_SANDBOX else ""))
@pytest.mark.skipif(not SANDBOX_OK, reason=f"no kTLS here ({KTLS_WHY}) and no sandbox "
                    f"({SANDBOX_WHY})")
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("group", list(SANDBOX_GROUPS))
def test_in_sandbox(group: str, tmp_path: Path) -> None:
    args, modes, may_skip = SANDBOX_GROUPS[group]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", LABKIT_MODES=modes)
    env.pop("PYTEST_CURRENT_TEST", None)
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--color=no",
            "-rs", *args]
    r = sandbox.run_in_sandbox(argv, timeout=1000, cwd=ROOT, env=env, results_dir=tmp_path,
                               capture_output=True)
    out = (r.stdout or "") + (r.stderr or "")
    print(f"UML sandbox ({r.kernel}): boot {r.boot_seconds:.2f} s, pytest "
          f"{r.command_seconds:.1f} s\n{out[-3000:]}")
    assert r.returncode == 0, f"pytest in the sandbox failed:\n{out[-8000:]}"
    summary = out.strip().splitlines()[-1]
    assert " passed" in summary, summary
    if not may_skip:
        assert "skipped" not in summary, f"kTLS tests skipped inside the sandbox:\n{out[-3000:]}"
