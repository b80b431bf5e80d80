"""Clients that never finish, or garble, the set-up: slowloris, garbage, half-open.

Each is closed on its own; the pair exchanging packets meanwhile never notices; the
counters name the reason (close_timeout, close_http, close_tls, close_handshake,
close_peer).
"""

from __future__ import annotations

import secrets
import select
import socket
import time
from typing import Any

from conformance.helpers import assert_delivers, dial_to, frame, host_header, upgraded

from labkit import derp
from labkit.derp import FrameType as T

from .conftest import HANDSHAKE_TIMEOUT
from .helpers import (
    close_quietly,
    counters,
    peer_closed,
    tcp,
    wait_all_closed,
    wait_delta,
)


def test_slowloris_is_closed_at_the_handshake_deadline(relay: Any, connect: Any) -> None:
    """A request head trickled a line at a time, a half-sent ClientInfo and a bare TCP
    connection that says nothing are all closed at the one handshake deadline (the
    trickle does not extend it), and only they are."""
    a, b = connect(relay), connect(relay)
    before = counters(relay, "close_timeout", "close_http", "close_handshake", "close_tls")

    trickle = dial_to(relay)  # TLS modes: the TLS handshake completes, the HTTP never does
    trickle.sendall(f"GET /derp HTTP/1.1\r\nHost: {host_header(relay)}\r\n".encode())
    half_info = upgraded(relay)
    info = half_info._client_info_frame(None, half_info.server_key or b"")
    half_info.send_raw(info[: len(info) // 2])
    silent = tcp(relay)  # TLS modes: not even a ClientHello
    started = time.monotonic()

    # A header line every 0.1 s (or as soon as the relay closes) until the relay gives
    # up: it must not wait longer for a client that keeps sending a little.
    while not peer_closed(trickle):
        assert time.monotonic() - started < HANDSHAKE_TIMEOUT + 2.0, "trickle never closed"
        assert_delivers(a, b)  # others are served while the slow ones hang on
        if select.select([trickle.fileno()], [], [], 0.1)[0]:
            continue  # something arrived: the close, most likely
        try:
            trickle.sendall(b"X-Slow: 1\r\n")
        except OSError:
            break
    elapsed = time.monotonic() - started
    rest = wait_all_closed([half_info.sock, silent], HANDSHAKE_TIMEOUT + 2.0)
    assert elapsed >= HANDSHAKE_TIMEOUT * 0.8, f"closed after {elapsed:.2f} s, before the deadline"
    assert elapsed + rest <= HANDSHAKE_TIMEOUT + 2.0

    deltas = wait_delta(relay, before, {"close_timeout": 3})
    assert deltas == {"close_timeout": 3, "close_http": 0, "close_handshake": 0,
                      "close_tls": 0}
    close_quietly(trickle, silent)
    half_info.close()
    assert_delivers(b, a)


def test_garbage_before_and_during_the_handshake(relay: Any, connect: Any) -> None:
    """Garbage instead of TLS, instead of the HTTP request, and instead of ClientInfo:
    each connection is closed, for the reason its stage names."""
    a, b = connect(relay), connect(relay)
    before = counters(relay, "close_tls", "close_http", "close_handshake")
    socks = []
    want: dict[str, int] = {"close_http": 1, "close_handshake": 2}

    if relay.tls != "off":
        raw = tcp(relay)  # a record of type 0 and random bytes where the ClientHello belongs
        raw.sendall(bytes(5) + secrets.token_bytes(300))
        socks.append(raw)
        want["close_tls"] = 1

    http = dial_to(relay)  # a "request" that is not HTTP
    http.sendall(b"\x16\x03\x01" + secrets.token_bytes(200) + b"\r\n\r\n")
    socks.append(http)

    not_info = upgraded(relay)  # a frame type that is not ClientInfo
    not_info.send_raw(b"\xff" + secrets.token_bytes(120))
    bad_box = upgraded(relay)  # ClientInfo whose box is random bytes
    payload = bad_box.private_key.public_key.encode() + secrets.token_bytes(80)
    bad_box.send_raw(frame(T.CLIENT_INFO, payload))
    socks += [not_info.sock, bad_box.sock]

    wait_all_closed(socks, 3.0)
    deltas = wait_delta(relay, before, want)
    assert deltas == {"close_tls": want.get("close_tls", 0), **{k: want[k] for k in
                      ("close_http", "close_handshake")}}
    assert_delivers(a, b)
    assert_delivers(b, a)
    close_quietly(*socks)


def half_close(sock: socket.socket) -> None:
    """FIN our direction only. socket.socket's method, not SSLSocket's, which would also
    drop the TLS session we still read from."""
    socket.socket.shutdown(sock, socket.SHUT_WR)


def test_half_open_connections_are_closed_and_their_data_kept(relay: Any,
                                                               connect: Any) -> None:
    """A client that half-closes (FIN, still reading) at each stage: before the request,
    in the middle of ClientInfo, and right after a SendPacket. The relay delivers what
    arrived before the FIN, then closes its side; close_peer counts each."""
    a, b = connect(relay), connect(relay)
    before = counters(relay, "close_peer", "close_protocol", "close_handshake")

    early = tcp(relay)
    half_close(early)
    mid = upgraded(relay)
    info = mid._client_info_frame(None, mid.server_key or b"")
    mid.send_raw(info[:30])
    half_close(mid.sock)
    late = connect(relay)
    late.send(b.public_key, b"sent-before-fin")
    half_close(late.sock)

    got = b.recv_packet(2.0)
    assert (got.src, got.data) == (late.public_key, b"sent-before-fin")
    assert late.expect_closed(2.0)
    wait_all_closed([early, mid.sock], 3.0)
    deltas = wait_delta(relay, before, {"close_peer": 3})
    assert deltas["close_protocol"] == 0 and deltas["close_handshake"] == 0
    assert_delivers(a, b)
    close_quietly(early)
    mid.close()


def test_clients_keep_working_after_all_of_it(relay: Any, connect: Any) -> None:
    """After the abuse above, a fresh client still handshakes and exchanges packets, and
    fast start still works (the relay's set-up path is not wedged)."""
    a = connect(relay)
    b = connect(relay, fast_start_key=relay.public_key)
    assert_delivers(a, b)
    assert_delivers(b, a)
    assert isinstance(a.ping(b"12345678"), derp.Pong)
