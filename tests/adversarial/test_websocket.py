"""DERP over WebSocket, broken on purpose: every RFC 6455 rule a server enforces closes
only the offending connection, with the counter that names why, while bystanders (one
WebSocket and one raw client) keep their packets (docs/protocol.md §2.7, §7.2)."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conformance.helpers import ARRIVE, assert_delivers, connect_to, frame

from labkit import derp
from labkit.derp import WS_BINARY, WS_CLOSE, WS_PING, WS_PONG, ws_frame
from labkit.derp import FrameType as T

from .helpers import counters, wait_delta

CTRL_BURST = 100  # control frames a client may send at once (session.c LK_WS_CTL_BURST)


@pytest.fixture
def ws_connect() -> Iterator[Callable[..., derp.Client]]:
    """connect_to(relay, transport=...) whose clients are closed after the test."""
    clients: list[derp.Client] = []

    def make(relay: Any, transport: str = "websocket", **kw: Any) -> derp.Client:
        c = connect_to(relay, transport=transport, **kw)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


PING = frame(T.PING, b"12345678")  # a valid DERP frame to wrap wrongly


def _remasked(data: bytes) -> bytes:
    good = ws_frame(WS_BINARY, data, mask=b"\x11\x22\x33\x44")
    return good[:2] + b"\x11\x22\x33\x54" + good[6:]


def _notes(n: int) -> bytes:
    """n bytes of valid DERP: NotePreferred frames (6 bytes each)."""
    note = frame(T.NOTE_PREFERRED, b"\x01")
    assert n % len(note) == 0
    return note * (n // len(note))


# (name, WebSocket bytes the offender writes after its handshake, counter that must rise)
CASES: list[tuple[str, bytes, str]] = [
    ("unmasked", ws_frame(WS_BINARY, PING, mask=None), "close_ws_unmasked"),
    ("unmasked-ping", ws_frame(WS_PING, b"x", mask=None), "close_ws_unmasked"),
    ("rsv-bit", ws_frame(WS_BINARY, PING, rsv=4), "close_ws_opcode"),
    ("text", ws_frame(0x1, b"hello"), "close_ws_opcode"),
    ("reserved-data-op", ws_frame(0x3, b"x"), "close_ws_opcode"),
    ("reserved-ctrl-op", ws_frame(0xB, b""), "close_ws_opcode"),
    ("ping-126", ws_frame(WS_PING, b"p" * 126), "close_ws_control"),
    ("fragmented-ping", ws_frame(WS_PING, b"p", fin=False), "close_ws_control"),
    ("close-1-byte", ws_frame(WS_CLOSE, b"\x03"), "close_ws_control"),
    ("close-code-1005", ws_frame(WS_CLOSE, struct.pack(">H", 1005)),
     "close_ws_control"),
    ("close-bad-utf8", ws_frame(WS_CLOSE, struct.pack(">H", 1000) + b"\xc0\xaf"),
     "close_ws_control"),
    ("orphan-continuation", ws_frame(0x0, PING), "close_ws_fragment"),
    ("message-inside-message",
     ws_frame(WS_BINARY, b"\x12", fin=False) + ws_frame(WS_BINARY, b"\x00"),
     "close_ws_fragment"),
    ("frame-over-1mib", ws_frame(WS_BINARY, b"", length=(1 << 20) + 1)[:14],
     "close_ws_oversize"),
    ("fragments-over-1mib",  # each fragment is under the limit, their sum is not
     ws_frame(WS_BINARY, _notes(600_000), fin=False)
     + ws_frame(0x0, b"", length=600_000), "close_ws_oversize"),
    ("length-msb", bytes([0x82, 0xFF]) + struct.pack(">Q", 1 << 63) + b"mask",
     "close_ws_oversize"),
    ("ping-flood", ws_frame(WS_PING, b"f") * (CTRL_BURST + 50), "close_ws_flood"),
    ("pong-flood", ws_frame(WS_PONG, b"") * (CTRL_BURST + 50), "close_ws_flood"),
    # a frame masked with one key but announcing another: the relay unmasks garbage
    # (NotePreferred claiming 4 097 bytes), so DERP's own length rule closes it
    ("wrong-mask", _remasked(frame(T.NOTE_PREFERRED, b"\x01")), "close_protocol"),
]


@pytest.mark.parametrize(("name", "wire", "reason"), CASES, ids=[c[0] for c in CASES])
def test_bad_websocket_closes_only_that_connection(
        relay: Any, ws_connect: Callable[..., derp.Client], name: str, wire: bytes,
        reason: str) -> None:
    a, b = ws_connect(relay), ws_connect(relay)
    raw = ws_connect(relay, transport="raw")
    bad = ws_connect(relay)
    before = counters(relay, reason, "conns_closed")
    bad.send_ws(wire)
    assert bad.expect_closed(ARRIVE), f"{name}: the relay kept the connection open"
    wait_delta(relay, before, {reason: 1, "conns_closed": 1})
    assert_delivers(a, b)
    assert_delivers(b, raw)
    assert_delivers(raw, a)


def test_fragmented_message_and_split_frames_deliver(
        relay: Any, ws_connect: Callable[..., derp.Client]) -> None:
    """A DERP frame spread over three fragments, with a Ping between them, written one
    byte at a time, arrives whole, and the Ping is answered."""
    a, b = ws_connect(relay), ws_connect(relay)
    payload = b"fragmented!"
    data = frame(T.SEND_PACKET, b.public_key + payload)
    wire = (ws_frame(WS_BINARY, data[:3], fin=False) + ws_frame(WS_PING, b"mid")
            + ws_frame(0x0, data[3:20], fin=False) + ws_frame(0x0, data[20:]))
    for i in range(len(wire)):
        a.send_ws(wire[i:i + 1])
    got = b.recv_packet(ARRIVE)
    assert (got.src, got.data) == (a.public_key, payload)
    assert_delivers(a, b)  # and the stream is still in step


def test_close_handshake_is_echoed(relay: Any, ws_connect: Callable[..., derp.Client]) -> None:
    """A client's Close gets a Close with its status code back, then the relay hangs up
    and counts close_ws_closed."""
    c = ws_connect(relay)
    before = counters(relay, "close_ws_closed")
    c.send_ws(ws_frame(WS_CLOSE, struct.pack(">H", 1000) + b"bye"))
    assert c.expect_closed(ARRIVE)
    assert c.ws is not None and c.ws.closed == struct.pack(">H", 1000)
    wait_delta(relay, before, {"close_ws_closed": 1})


def test_ping_is_answered_with_its_body(relay: Any,
                                        ws_connect: Callable[..., derp.Client]) -> None:
    c = ws_connect(relay)
    before = counters(relay, "ws_pings")
    c.send_ws(ws_frame(WS_PING, b"body-123"))
    c.ping(timeout=ARRIVE)  # a DERP round trip after it: the Pong is in by then
    wait_delta(relay, before, {"ws_pings": 1})
    assert c.ws is not None and c.ws.pongs == [b"body-123"]
