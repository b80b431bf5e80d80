"""Identity abuse: one key connecting many times at once, and mesh-only frames from
clients without the mesh key or with an almost-right one (docs/protocol.md §6.2, §6.6, §9 items
31, 40)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from conformance.helpers import (
    ARRIVE,
    SILENCE,
    assert_delivers,
    assert_silent,
    connect_to,
    random_key,
)
from nacl.public import PrivateKey

from labkit import derp
from labkit.derp import FrameType as T

from .helpers import counters, mesh_info, wait_all_closed, wait_delta, wrong_mesh_info

RACERS = 6


def _race(n: int, fn: Any) -> list[Any]:
    """Run fn(i) in n threads released together; return results (re-raising errors)."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(ARRIVE)
            results[i] = fn(i)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(ARRIVE * 5)
    if errors:
        raise errors[0]
    return results


def test_duplicate_keys_racing(relay: Any, connect: Any) -> None:
    """Six connections with one key handshake at the same instant: all are accepted and
    stay open, packets to the key reach exactly one of them each; then six threads
    connect, ping and hang up with that key in a loop while a sender keeps sending to
    it. Nothing but close_peer is counted, the key works normally afterwards, and a client
    that received from it gets PeerGone(Disconnected) when the last of them leaves."""
    key = PrivateKey.generate()
    sender, receiver = connect(relay), connect(relay)
    before = counters(relay, "close_protocol", "close_handshake", "close_timeout",
                      "close_mesh_denied")

    dups = _race(RACERS, lambda i: connect_to(relay, private_key=key))
    try:
        for d in dups:
            assert d.ping(b"dup-ping", ARRIVE).data == b"dup-ping"
        for i in range(10):
            sender.send(key.public_key.encode(), b"to-dup-%d" % i)
        got: list[bytes] = []
        for d in dups:  # the active one has them all; the others get nothing
            try:
                while True:
                    got.append(d.recv_packet(SILENCE).data)
            except TimeoutError:
                pass
        assert sorted(got) == sorted(b"to-dup-%d" % i for i in range(10))
        dups[0].send(receiver.public_key, b"from-dup")
        assert receiver.recv_packet(ARRIVE).data == b"from-dup"
    finally:
        for d in dups:
            d.close()

    stop = threading.Event()

    def spray() -> None:
        while not stop.is_set():
            sender.send(key.public_key, b"spray")

    sprayer = threading.Thread(target=spray, daemon=True)
    sprayer.start()
    try:
        def churn(i: int) -> None:
            for _ in range(5):
                with connect_to(relay, private_key=key) as c:
                    c.ping(b"churn!!!", ARRIVE)
        _race(RACERS, churn)
    finally:
        stop.set()
        sprayer.join(ARRIVE)

    last = connect(relay, private_key=key)
    last.send(receiver.public_key, b"still-me")
    assert receiver.recv_packet(ARRIVE).data == b"still-me"
    sender.send(last.public_key, b"to-last")
    assert last.recv_until(lambda f: isinstance(f, derp.RecvPacket) and f.data == b"to-last",
                           ARRIVE)
    last.close()
    gone = receiver.recv_until(lambda f: isinstance(f, derp.PeerGone), ARRIVE)
    assert isinstance(gone, derp.PeerGone) and gone.key == key.public_key.encode()
    assert gone.reason == derp.PEER_GONE_DISCONNECTED
    after = counters(relay, *before)
    assert after == before, f"racing duplicates closed someone: {before} -> {after}"


def test_mesh_frames_need_the_exact_mesh_key(relay: Any, connect: Any,
                                             mesh_key: bytes) -> None:
    """WatchConns, ClosePeer and ForwardPacket from a client with no mesh key and from
    one whose key differs in the last hex digit: each sender is closed (close_mesh_denied,
    exactly six), the target of the ClosePeer stays, nothing is forwarded, and no
    PeerPresent reaches them; a malformed meshKey fails the handshake. The real mesh key
    works."""
    a, b = connect(relay), connect(relay)
    before = counters(relay, "close_mesh_denied", "close_protocol", "close_handshake")
    frames = [derp.encode_frame(T.WATCH_CONNS),
              derp.encode_frame(T.CLOSE_PEER, b.public_key),
              derp.encode_frame(T.FORWARD_PACKET, random_key() + b.public_key + b"forged")]
    offenders = []
    for info in (None, wrong_mesh_info(mesh_key)):
        for data in frames:
            c = connect(relay, client_info=info)
            c.send_raw(data)
            offenders.append(c)
    wait_all_closed([c.sock for c in offenders], 3.0)
    for c in offenders:
        assert not any(isinstance(f, derp.PeerPresent) for f in c.skipped_frames)
    with pytest.raises(derp.HandshakeError):  # a meshKey that is not 64 hex digits
        connect_to(relay, client_info={"meshKey": "abc123", "version": 2})
    deltas = wait_delta(relay, before, {"close_mesh_denied": 6, "close_handshake": 1})
    assert deltas == {"close_mesh_denied": 6, "close_protocol": 0, "close_handshake": 1}
    assert_silent(b)  # neither closed by the ClosePeer nor handed the forged packet
    assert_delivers(a, b)

    watcher = connect(relay, client_info=mesh_info(mesh_key))
    watcher.watch_conns()
    seen = watcher.recv_until(
        lambda f: isinstance(f, derp.PeerPresent) and f.key == b.public_key, ARRIVE)
    assert isinstance(seen, derp.PeerPresent)
