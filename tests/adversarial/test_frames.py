"""Frames with lying lengths, frames cut at every byte, garbage after the handshake, and
clients that vanish in the middle of a frame (docs/protocol.md §3.3, §7.2, §3.2)."""

from __future__ import annotations

import secrets
from typing import Any

from conformance.helpers import (
    ARRIVE,
    assert_delivers,
    assert_open,
    counter,
    frame,
    upgraded,
    wait_until,
)

from labkit import derp
from labkit.derp import FrameType as T

from .helpers import (
    counters,
    header,
    mesh_info,
    pools_full,
    reset,
    wait_all_closed,
    wait_delta,
)

MAXP = derp.MAX_PACKET_SIZE
KEY = 32


def _cases(peer: bytes) -> list[tuple[str, bool, bytes, str]]:
    """(name, mesh client?, bytes to send, expected outcome) for every frame type the
    relay reads: lengths one below and one above each rule, and header-only lies."""
    k = peer
    return [
        # SendPacket: 32 + P, P <= 65 536
        ("send-empty", False, header(T.SEND_PACKET, 0), "close_protocol"),
        ("send-31", False, frame(T.SEND_PACKET, k[:31]), "close_protocol"),
        ("send-over", False, header(T.SEND_PACKET, KEY + MAXP + 1), "close_protocol"),
        ("send-4g", False, header(T.SEND_PACKET, 0xFFFFFFFF), "close_protocol"),
        # ForwardPacket (mesh): 64 + P
        ("fwd-63", True, frame(T.FORWARD_PACKET, k + k[:31]), "close_protocol"),
        ("fwd-over", True, header(T.FORWARD_PACKET, 2 * KEY + MAXP + 1), "close_protocol"),
        # NotePreferred: exactly 1
        ("pref-0", False, frame(T.NOTE_PREFERRED), "close_protocol"),
        ("pref-2", False, frame(T.NOTE_PREFERRED, b"\x01\x01"), "close_protocol"),
        ("pref-huge", False, header(T.NOTE_PREFERRED, 1 << 30), "close_protocol"),
        # WatchConns (mesh): exactly 0
        ("watch-1", True, frame(T.WATCH_CONNS, b"\x00"), "close_protocol"),
        # ClosePeer (mesh): exactly 32
        ("closepeer-31", True, frame(T.CLOSE_PEER, k[:31]), "close_protocol"),
        ("closepeer-33", True, frame(T.CLOSE_PEER, k + b"\x00"), "close_protocol"),
        # Ping: 8 .. 1000
        ("ping-0", False, frame(T.PING), "close_protocol"),
        ("ping-7", False, frame(T.PING, b"1234567"), "close_protocol"),
        ("ping-1001", False, frame(T.PING, bytes(1001)), "close_protocol"),
        ("ping-4g", False, header(T.PING, 0xFFFFFFFF), "close_protocol"),
        # Frames the relay does not handle are skipped by length, whatever it is (docs/protocol.md
        # §3.5)
        ("server-key", False, frame(T.SERVER_KEY, bytes(5)), "open"),
        ("client-info-again", False, frame(T.CLIENT_INFO, bytes(100)), "open"),
        ("server-info", False, frame(T.SERVER_INFO, bytes(7)), "open"),
        ("recv-packet-10", False, frame(T.RECV_PACKET, bytes(10)), "open"),
        ("keepalive-3", False, frame(T.KEEP_ALIVE, b"abc"), "open"),
        ("peer-gone-0", False, frame(T.PEER_GONE), "open"),
        ("peer-present-2", False, frame(T.PEER_PRESENT, b"\x00\x01"), "open"),
        ("pong-3", False, frame(T.PONG, b"abc"), "open"),
        ("pong-20", False, frame(T.PONG, bytes(20)), "open"),
        ("health-5", False, frame(T.HEALTH, b"hello"), "open"),
        ("restarting-3", False, frame(T.RESTARTING, b"abc"), "open"),
        ("unknown-70000", False, frame(0x7F, secrets.token_bytes(70_000)), "open"),
        ("unknown-0", False, frame(0x0B), "open"),
    ]


def test_every_length_rule_closes_only_the_liar(relay: Any, connect: Any,
                                                 mesh_key: bytes) -> None:
    """Each case on its own connection, all at once: the rule-breakers are closed (counted
    as close_protocol, exactly), the skipped types stay open and answer a Ping, and a pair
    of bystanders keeps exchanging."""
    a, b = connect(relay), connect(relay)
    cases = _cases(b.public_key)
    clients = {name: connect(relay, client_info=mesh_info(mesh_key) if mesh else None)
               for name, mesh, _, _ in cases}
    before = counters(relay, "close_protocol", "close_mesh_denied", "close_handshake")
    for name, _, data, _ in cases:
        clients[name].send_raw(data)
    assert_delivers(a, b)

    closing = [n for n, _, _, want in cases if want == "close_protocol"]
    wait_all_closed([clients[n].sock for n in closing], 3.0)
    deltas = wait_delta(relay, before, {"close_protocol": len(closing)})
    assert deltas == {"close_protocol": len(closing), "close_mesh_denied": 0,
                      "close_handshake": 0}
    for name, _, _, want in cases:
        if want == "open":
            assert_open(clients[name])
    assert_delivers(b, a)


def test_client_info_length_lies_close_the_handshake(relay: Any, connect: Any) -> None:
    """ClientInfo of 0 and 55 bytes, and a header claiming 256 KiB + 1: close_handshake."""
    a, b = connect(relay), connect(relay)
    before = counters(relay, "close_handshake", "close_timeout")
    sent = []
    for data in (header(T.CLIENT_INFO, 0), frame(T.CLIENT_INFO, bytes(55)),
                 header(T.CLIENT_INFO, derp.MAX_CLIENT_INFO_LEN + 1)):
        c = upgraded(relay)
        c.send_raw(data)
        sent.append(c)
    wait_all_closed([c.sock for c in sent], 3.0)
    assert wait_delta(relay, before, {"close_handshake": 3}) == {"close_handshake": 3,
                                                                  "close_timeout": 0}
    assert_delivers(a, b)
    for c in sent:
        c.close()


def _mixed_stream(a: derp.Client, b: derp.Client, tag: bytes) -> bytes:
    """Every frame a regular client may send, in one stream."""
    return b"".join([
        frame(T.SEND_PACKET, b.public_key + tag + b"-1"),
        frame(T.NOTE_PREFERRED, b"\x01"),
        frame(T.SEND_PACKET, b.public_key),  # zero-length packet
        frame(0x7F, b"skip me"),
        frame(T.PING, tag[:8].ljust(8, b".")),
        frame(T.SEND_PACKET, b.public_key + derp.DISCO_MAGIC + bytes(60)),
        frame(T.KEEP_ALIVE),
        frame(T.SEND_PACKET, b.public_key + tag + b"-2"),
    ])


def _expect_mixed(a: derp.Client, b: derp.Client, tag: bytes) -> None:
    disco = derp.DISCO_MAGIC + bytes(60)
    want = [tag + b"-1", b"", tag + b"-2"]
    got = [b.recv_packet(ARRIVE) for _ in range(len(want) + 1)]
    assert {p.src for p in got} == {a.public_key}
    # disco packets have their own queue, drained first (docs/protocol.md §6.4): order holds per
    # queue
    assert [p.data for p in got if p.data != disco] == want
    assert sum(p.data == disco for p in got) == 1
    pong = a.recv_until(lambda f: isinstance(f, derp.Pong), ARRIVE)
    assert isinstance(pong, derp.Pong) and pong.data == tag[:8].ljust(8, b".")


def test_frames_split_at_every_byte_boundary(relay: Any, connect: Any) -> None:
    """A stream of every client frame type written one byte per send (TCP_NODELAY: one
    segment, TLS: one record each), then a SendPacket cut in two at each of its byte
    boundaries in turn: every packet arrives intact and in order."""
    a, b = connect(relay), connect(relay)
    stream = _mixed_stream(a, b, b"bytewise")
    for i in range(len(stream)):
        a.send_raw(stream[i:i + 1])
    _expect_mixed(a, b, b"bytewise")

    for cut in range(1, derp.FRAME_HEADER_LEN + KEY + 12):
        data = frame(T.SEND_PACKET, b.public_key + b"cut-%05d" % cut)
        a.send_raw(data[:cut])
        a.send_raw(data[cut:])
        got = b.recv_packet(ARRIVE)
        assert (got.src, got.data) == (a.public_key, b"cut-%05d" % cut)
    assert_delivers(b, a)


def test_garbage_after_the_handshake(relay: Any, connect: Any) -> None:
    """Random bytes behind a header of a handled type with an impossible length: closed
    for protocol, whatever follows; the garbage never reaches anyone."""
    a, b = connect(relay), connect(relay)
    before = counter(relay, "close_protocol")
    liars = []
    for frame_type, length in ((T.SEND_PACKET, 7), (T.NOTE_PREFERRED, 3), (T.PING, 3),
                               (T.SEND_PACKET, 1 << 31)):
        c = connect(relay)
        c.send_raw(header(frame_type, length) + secrets.token_bytes(4096))
        liars.append(c)
    wait_all_closed([c.sock for c in liars], 3.0)
    wait_until(lambda: counter(relay, "close_protocol") - before >= len(liars),
               what="close_protocol to count every liar")
    assert counter(relay, "close_protocol") - before == len(liars)
    assert_delivers(a, b)
    try:
        frames = b.recv(0.3)
    except TimeoutError:
        frames = None
    assert not isinstance(frames, derp.RecvPacket), f"garbage was delivered: {frames!r}"


def test_abrupt_disconnects_mid_frame_leak_nothing(relay: Any, connect: Any) -> None:
    """Connections reset (RST) inside a frame header, inside a large SendPacket whose
    buffer is half filled, and inside ClientInfo: closed as close_peer, every packet
    buffer returns to its pool, and the bystanders keep exchanging."""
    a, b = connect(relay), connect(relay)
    assert_delivers(a, b)
    # a buffer that crossed shards goes home through a ring, after the receiver wrote it:
    # only pool_free == pool_size says that every buffer is back
    wait_until(lambda: pools_full(relay), what="every packet buffer to return to its pool")
    before = counters(relay, "close_peer", "close_protocol", "close_handshake")

    in_header = connect(relay)
    bytes_in = counter(relay, "bytes_in")
    in_header.send_raw(header(T.SEND_PACKET, 100)[:3])
    in_packet = connect(relay)
    in_packet.send_raw(header(T.SEND_PACKET, KEY + 50_000) + b.public_key + bytes(1000))
    in_small = connect(relay)
    in_small.send_raw(header(T.SEND_PACKET, KEY + 900) + b.public_key + bytes(100))
    in_info = upgraded(relay)
    info = in_info._client_info_frame(None, in_info.server_key or b"")
    in_info.send_raw(info[:40])
    victims = [in_header, in_packet, in_small, in_info]
    # the relay holds every half frame (bytes_in counts them) before the resets land
    sent = 3 + (5 + KEY + 1000) + (5 + KEY + 100) + 40
    wait_until(lambda: counter(relay, "bytes_in") - bytes_in >= sent,
               what="the relay to read the partial frames")
    for c in victims:
        reset(c.sock)

    wait_delta(relay, before, {"close_peer": len(victims)})
    wait_until(lambda: pools_full(relay), 3.0,
               "every packet buffer (the half-filled ones too) to return to its pool")
    after = counters(relay, "close_protocol", "close_handshake")
    assert after == {n: before[n] for n in after}
    assert_delivers(a, b)
    assert_delivers(b, a)
