"""Helpers shared by the conformance tests: timeouts, raw HTTP, waiting on events."""

from __future__ import annotations

import contextlib
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

from nacl.public import PrivateKey

from labkit import derp

#: How long something that should happen may take.
ARRIVE = 2.0
#: How long we watch for something that should not happen.
SILENCE = 0.5


def random_key() -> bytes:
    """A fresh public key nobody is connected with."""
    return bytes(PrivateKey.generate().public_key)


def uses_tls(relay: Any) -> bool:
    return relay.tls != "off"


def dial_to(relay: Any, timeout: float = ARRIVE) -> socket.socket:
    """A raw transport (TCP, or TLS verified against the relay's cert) to `relay`."""
    tls = uses_tls(relay)
    cert = getattr(relay, "cert_file", None) if tls else None
    return derp.dial(
        relay.host,
        relay.port,
        tls=tls,
        cafile=str(cert) if cert else None,
        insecure=tls and not cert,
        timeout=timeout,
    )


def connect_to(relay: Any, **kw: Any) -> derp.Client:
    """Client.connect to `relay`, with TLS (verified against its cert) when it uses TLS."""
    tls = uses_tls(relay)
    if tls and "insecure" not in kw and "cafile" not in kw:
        cert = getattr(relay, "cert_file", None)
        if cert:
            kw["cafile"] = str(cert)
        else:
            kw["insecure"] = True
    return derp.Client.connect(relay.host, relay.port, tls=tls, **kw)


def upgraded(relay: Any, **kw: Any) -> derp.Client:
    """A client that has read ServerKey but sent no ClientInfo yet."""
    return connect_to(relay, handshake=False, **kw)


def host_header(relay: Any) -> str:
    return f"{relay.host}:{relay.port}"


def http_exchange(
    relay: Any, request: bytes, *, head_only: bool = False
) -> tuple[derp.HttpHead, bytes]:
    """Send one raw HTTP request; return the response head and body.

    The body is read by Content-Length, or until the relay closes / goes quiet for
    SILENCE seconds when there is none. `head_only` (HEAD requests) reads no body.
    """
    sock = dial_to(relay)
    try:
        sock.sendall(request)
        buf = b""
        deadline = time.monotonic() + ARRIVE
        parsed = None
        while parsed is None:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = sock.recv(65536)
            if not data:
                raise AssertionError(f"relay closed before a full response head: {buf!r}")
            buf += data
            parsed = derp.parse_http_head(buf)
        head, body = parsed
        if head_only:
            return head, body
        if "content-length" in head.headers:
            want = int(head.headers["content-length"])
            while len(body) < want:
                sock.settimeout(ARRIVE)
                data = sock.recv(65536)
                if not data:
                    break
                body += data
            return head, body
        with contextlib.suppress(OSError):  # read until close or quiet
            sock.settimeout(SILENCE)
            while data := sock.recv(65536):
                body += data
        return head, body
    finally:
        sock.close()


def get_request(relay: Any, path: str, method: str = "GET", **headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host_header(relay)}"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def assert_silent(client: derp.Client, timeout: float = SILENCE) -> None:
    """Nothing but KeepAlives arrives within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            frame = client.recv(remaining)
        except TimeoutError:
            return
        if not isinstance(frame, derp.KeepAlive):
            raise AssertionError(f"expected silence, received {frame!r}")


def assert_closed(client: derp.Client, *sends: bytes, timeout: float = ARRIVE) -> None:
    """Write `sends` (tolerating a reset mid-way) and require the relay to close."""
    with contextlib.suppress(derp.ConnectionClosed):
        for data in sends:
            client.send_raw(data)
    assert client.expect_closed(timeout), (
        f"relay did not close the connection within {timeout} s "
        f"(frames seen meanwhile: {client.skipped_frames[:5]!r})"
    )


def assert_open(client: derp.Client) -> None:
    """The connection still works: a Ping gets its Pong."""
    data = secrets.token_bytes(8)
    assert client.ping(data, timeout=ARRIVE).data == data


def assert_delivers(a: derp.Client, b: derp.Client, packet: bytes | None = None,
                    timeout: float = ARRIVE) -> None:
    """A packet from `a` to `b` arrives intact with `a` as source (within `timeout`)."""
    packet = secrets.token_bytes(40) if packet is None else packet
    a.send(b.public_key, packet)
    got = b.recv_packet(timeout)
    assert (got.src, got.data) == (a.public_key, packet)


def frame(frame_type: int, payload: bytes = b"") -> bytes:
    return derp.encode_frame(frame_type, payload)


def disco_packet(size: int = derp.DISCO_MIN_LEN) -> bytes:
    """A packet the relay treats as disco (docs/protocol.md §5.1, §5.7) when size >= 62."""
    body = derp.DISCO_MAGIC + secrets.token_bytes(max(0, size - len(derp.DISCO_MAGIC)))
    return body[:size]


def wait_until(cond: Callable[[], bool], timeout: float = ARRIVE, what: str = "") -> None:
    """Poll `cond` every 10 ms until true; AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or cond}")
        time.sleep(0.01)


def counter(relay: Any, name: str) -> int:
    counters = relay.counters()
    assert name in counters, f"relay has no counter {name!r} (has {sorted(counters)})"
    return int(counters[name])


def wait_counter_above(relay: Any, name: str, baseline: int, timeout: float = ARRIVE) -> int:
    """Wait until counter `name` exceeds `baseline`; return its value."""
    wait_until(
        lambda: counter(relay, name) > baseline,
        timeout,
        f"counter {name} to rise above {baseline}",
    )
    return counter(relay, name)


def collect(client: derp.Client, want: Callable[[list[Any]], bool], timeout: float = ARRIVE):
    """Receive frames until `want(frames)` holds; return them (AssertionError on timeout)."""
    frames: list[Any] = []
    deadline = time.monotonic() + timeout
    while not want(frames):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"timed out; frames so far: {frames!r}")
        try:
            f = client.recv(remaining)
        except TimeoutError:
            continue
        if not isinstance(f, derp.KeepAlive):
            frames.append(f)
    return frames
