"""docs/protocol.md §9, items 27-32: Ping/Pong, NotePreferred, unknown frames, mesh-only frames,
KeepAlive."""

from __future__ import annotations

import time
from typing import Any

import pytest

from labkit import derp
from labkit.derp import FrameType as T

from .helpers import (
    ARRIVE,
    assert_closed,
    assert_delivers,
    assert_open,
    assert_silent,
    counter,
    frame,
    random_key,
    wait_counter_above,
)


def test_ping_gets_pong_with_same_8_bytes(relay: Any, connect: Any) -> None:
    """27: Ping 01..08 -> Pong 01..08."""
    a = connect(relay)
    a.send_frame(T.PING, bytes(range(1, 9)))
    frame_type, payload = a.recv_raw(ARRIVE)
    assert (frame_type, payload) == (T.PONG, bytes(range(1, 9)))


@pytest.mark.parametrize("size", [20, 1000], ids=["20-bytes", "1000-bytes"])
def test_long_ping_is_answered_with_first_8_bytes(relay: Any, connect: Any, size: int) -> None:
    """28: a Ping of 20 (or the maximum 1 000) bytes -> Pong echoing only the first 8."""
    a = connect(relay)
    data = bytes(i % 251 for i in range(size))
    a.send_frame(T.PING, data)
    frame_type, payload = a.recv_raw(ARRIVE)
    assert (frame_type, payload) == (T.PONG, data[:8])


@pytest.mark.parametrize("size", [7, 1001], ids=["7-bytes", "1001-bytes"])
def test_ping_of_bad_length_is_closed(relay: Any, connect: Any, size: int) -> None:
    """28: Ping with 7 or 1 001 bytes -> closed."""
    a = connect(relay)
    assert_closed(a, frame(T.PING, bytes(size)))
    assert not any(isinstance(f, derp.Pong) for f in a.skipped_frames)


@pytest.mark.parametrize("value", [b"\x01", b"\x00"], ids=["preferred", "not-preferred"])
def test_note_preferred_keeps_connection_open(relay: Any, connect: Any, value: bytes) -> None:
    """29: NotePreferred 01 / 00 -> still open."""
    a = connect(relay)
    a.send_frame(T.NOTE_PREFERRED, value)
    assert_open(a)


@pytest.mark.parametrize("value", [b"\x01\x00", b""], ids=["2-bytes", "empty"])
def test_note_preferred_of_bad_length_is_closed(relay: Any, connect: Any, value: bytes) -> None:
    """29: NotePreferred whose payload is not exactly 1 byte -> closed."""
    a = connect(relay)
    assert_closed(a, frame(T.NOTE_PREFERRED, value))


SKIPPED_FRAMES = [
    pytest.param(0x7F, 3, id="unknown-0x7f"),
    pytest.param(0x0B, 3, id="unassigned-0x0b"),
    pytest.param(0xFF, 0, id="unknown-0xff-empty"),
    pytest.param(T.KEEP_ALIVE, 0, id="keepalive"),
    pytest.param(T.PONG, 8, id="pong"),
    pytest.param(T.RECV_PACKET, 40, id="recv-packet"),
    pytest.param(T.SERVER_KEY, 40, id="server-key"),
    pytest.param(T.CLIENT_INFO, 100, id="second-client-info"),
    pytest.param(T.SERVER_INFO, 53, id="server-info"),
    pytest.param(T.PEER_GONE, 33, id="peer-gone"),
    pytest.param(T.PEER_PRESENT, 51, id="peer-present"),
    pytest.param(T.HEALTH, 3, id="health"),
    pytest.param(T.RESTARTING, 8, id="restarting"),
    pytest.param(0x7F, 70_000, id="unknown-70000-bytes"),
]


@pytest.mark.parametrize(("frame_type", "size"), SKIPPED_FRAMES)
def test_unhandled_frame_types_are_skipped(
    relay: Any, connect: Any, frame_type: int, size: int
) -> None:
    """30: unknown types and client-sent relay frames are skipped by length, not closed."""
    a, b = connect(relay), connect(relay)
    a.send_frame(frame_type, bytes(i % 253 for i in range(size)))
    assert_open(a)
    assert_delivers(a, b)


def test_unknown_frame_body_is_not_parsed_as_frames(relay: Any, connect: Any) -> None:
    """30: the skipped payload may itself look like frames (a Ping); it must not be run."""
    a = connect(relay)
    inner = frame(T.PING, b"INNERPNG")
    a.send_frame(0x7F, inner)
    assert_open(a)
    assert_silent(a)  # no Pong for the inner Ping


@pytest.mark.parametrize(
    "mesh_frame",
    [
        frame(T.WATCH_CONNS),
        frame(T.CLOSE_PEER, bytes(32)),
        frame(T.FORWARD_PACKET, bytes(64) + b"x"),
    ],
    ids=["watch-conns", "close-peer", "forward-packet"],
)
def test_mesh_frames_from_non_mesh_client_close_it(
    relay: Any, connect: Any, mesh_frame: bytes
) -> None:
    """31: WatchConns / ClosePeer / ForwardPacket without the mesh key -> that client closed;
    other clients unaffected."""
    a, b, c = connect(relay), connect(relay), connect(relay)
    before = counter(relay, "close_mesh_denied")
    if mesh_frame[0] == T.CLOSE_PEER:  # aim it at a live client to prove nothing happens
        mesh_frame = frame(T.CLOSE_PEER, b.public_key)
    if mesh_frame[0] == T.FORWARD_PACKET:
        mesh_frame = frame(T.FORWARD_PACKET, random_key() + b.public_key + b"x")
    assert_closed(a, mesh_frame)
    assert_delivers(b, c)
    assert_delivers(c, b)
    wait_counter_above(relay, "close_mesh_denied", before)


def test_idle_client_receives_keepalive(make_relay: Any, connect: Any) -> None:
    """32: an idle client gets KeepAlive (06, empty) — 1 s period configured here."""
    r = make_relay(keepalive=1.0)
    a = connect(r)
    t0 = time.monotonic()
    # Period plus the most jitter the relay adds (period/12, docs/protocol.md §5.3), plus slack.
    frame_type, payload = a.recv_raw(1.0 + 5.0 + ARRIVE)
    assert (frame_type, payload) == (T.KEEP_ALIVE, b""), f"got 0x{frame_type:02x} instead"
    assert time.monotonic() - t0 > 0.5, "KeepAlive came long before the configured period"
    wait_counter_above(r, "keepalives", 0)
