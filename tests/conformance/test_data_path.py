"""docs/protocol.md §9, items 17-26: SendPacket -> RecvPacket, sizes, unknown destinations,
ordering."""

from __future__ import annotations

import time
from typing import Any

from labkit import derp
from labkit.derp import FrameType as T

from .helpers import (
    ARRIVE,
    SILENCE,
    assert_closed,
    assert_delivers,
    assert_open,
    assert_silent,
    collect,
    disco_packet,
    frame,
    random_key,
)


def test_packet_is_delivered_with_sender_key_and_not_echoed(relay: Any, connect: Any) -> None:
    """17: A -> B "hello": B gets RecvPacket(src=A, "hello"); A gets nothing."""
    a, b = connect(relay), connect(relay)
    a.send(b.public_key, b"hello")
    frame_type, payload = b.recv_raw(ARRIVE)
    assert frame_type == T.RECV_PACKET
    assert payload[:32] == a.public_key and payload[32:] == b"hello"
    assert_silent(a)


def test_zero_length_packet_is_delivered_as_32_bytes(relay: Any, connect: Any) -> None:
    """18: an empty packet -> RecvPacket payload of exactly 32 bytes (the source key)."""
    a, b = connect(relay), connect(relay)
    a.send(b.public_key, b"")
    frame_type, payload = b.recv_raw(ARRIVE)
    assert (frame_type, payload) == (T.RECV_PACKET, a.public_key)


def test_largest_packet_of_65536_bytes_is_delivered_intact(relay: Any, connect: Any) -> None:
    """19: MaxPacketSize itself is legal."""
    a, b = connect(relay), connect(relay)
    assert_delivers(a, b, bytes(range(256)) * 256)


def test_packet_of_65537_bytes_closes_sender_only(relay: Any, connect: Any) -> None:
    """20: one byte over MaxPacketSize closes A; B still receives from C."""
    a, b, c = connect(relay), connect(relay), connect(relay)
    assert_closed(a, frame(T.SEND_PACKET, b.public_key + bytes(65_537)))
    assert not any(isinstance(f, derp.RecvPacket) for f in b.skipped_frames)
    assert_delivers(c, b)
    assert_delivers(b, c)


def test_send_packet_shorter_than_a_key_closes_sender(relay: Any, connect: Any) -> None:
    """21: SendPacket payload of 31 bytes -> closed."""
    a = connect(relay)
    assert_closed(a, frame(T.SEND_PACKET, bytes(31)))


def test_packet_to_own_key_comes_back(relay: Any, connect: Any) -> None:
    """22: sending to one's own key is delivered back with source = self."""
    a = connect(relay)
    assert_delivers(a, a, b"to myself")


def test_non_disco_packet_to_unknown_key_is_dropped_silently(relay: Any, connect: Any) -> None:
    """23: unknown destination, non-disco payload: A stays open, nothing comes back."""
    a = connect(relay)
    a.send(random_key(), b"nobody home")
    assert_open(a)
    assert_silent(a)


def test_disco_to_unknown_key_gets_rate_limited_not_here(relay: Any, connect: Any) -> None:
    """24: PeerGone(K, NotHere) for disco sends to unknown K; burst 3 of 6 sends."""
    a = connect(relay)
    unknown = random_key()
    a.send(unknown, disco_packet())
    first = a.recv(ARRIVE)
    assert first == derp.PeerGone(unknown, derp.PEER_GONE_NOT_HERE)
    for _ in range(5):
        a.send(unknown, disco_packet())
    # The bucket refills 1 token/s: the two further replies must come, a third must not.
    frames = collect(a, lambda fs: len(fs) >= 2)
    assert frames == [derp.PeerGone(unknown, derp.PEER_GONE_NOT_HERE)] * 2
    assert_silent(a)


def test_61_byte_disco_prefix_to_unknown_key_gets_no_not_here(relay: Any, connect: Any) -> None:
    """24: a 61-byte packet with the disco prefix is not disco: no PeerGone."""
    a = connect(relay)  # fresh connection: its NotHere bucket is full
    a.send(random_key(), disco_packet(61))
    assert_open(a)
    assert_silent(a)


def test_burst_of_100_packets_arrives_in_order(relay: Any, connect: Any) -> None:
    """25: 100 packets A -> B written in one burst arrive complete and in order."""
    a, b = connect(relay), connect(relay)
    a.send_raw(
        b"".join(frame(T.SEND_PACKET, b.public_key + i.to_bytes(4, "big")) for i in range(100))
    )
    got = [b.recv_packet(ARRIVE) for _ in range(100)]
    assert [int.from_bytes(p.data, "big") for p in got] == list(range(100))
    assert {p.src for p in got} == {a.public_key}


def test_stalled_receiver_never_blocks_sender(relay: Any, connect: Any) -> None:
    """26: B stops reading while A floods it: A is not closed, A -> C flows, and B ends up
    closed (write deadline) or with only a subset of the packets. Under the drop policy
    (derper's) A is never held; under `backpressure` (relay/overload.c) the relay stops
    reading A while B's queue is full, so A is held until B's write deadline closes B."""
    a, c = connect(relay), connect(relay)
    b = connect(relay, recv_buffer=4096)  # small window so the relay's writes to B stall
    packet = bytes(1400)
    count = 6000  # ~8.5 MB: far beyond what B's socket and the relay's send buffer hold
    burst = b"".join(frame(T.SEND_PACKET, b.public_key + packet) for _ in range(200))
    t0 = time.monotonic()
    for _ in range(count // 200):
        a.send_raw(burst)  # Client's send timeout (5 s) fails the test if A blocks
    flood_seconds = time.monotonic() - t0
    assert flood_seconds < 10, f"A was held up for {flood_seconds:.1f} s"
    # With backpressure, A's packet to C queues behind the rest of A's flood, which the
    # relay reads (and drops as to a gone B) only once the write deadline closed B.
    held = relay.cfg.write_timeout + ARRIVE if relay.cfg.switches()["backpressure"] else 0.0
    assert_delivers(a, c, timeout=ARRIVE + held)
    assert_open(a)
    # Now drain B: either the relay closed it, or it got fewer packets than were sent.
    received = 0
    closed = False
    while True:
        try:
            f = b.recv(SILENCE)
        except TimeoutError:
            break
        except derp.ConnectionClosed:
            closed = True
            break
        received += isinstance(f, derp.RecvPacket)
    assert closed or received < count, f"B received all {received} packets though stalled"
