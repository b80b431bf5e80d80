"""docs/protocol.md §9, items 33-34: PeerGone to earlier receivers and duplicate-key connections."""

from __future__ import annotations

import time
from typing import Any

from nacl.public import PrivateKey

from labkit import derp

from .helpers import ARRIVE, assert_delivers, assert_silent


def _deliver_eventually(sender: derp.Client, receiver: derp.Client, dst: bytes) -> None:
    """Send numbered packets to `dst` every 50 ms until `receiver` gets one.

    For routing changes the relay applies asynchronously (a connection closing): we wait
    for the concrete event "a packet arrives on the new route" instead of sleeping.
    """
    deadline = time.monotonic() + ARRIVE
    n = 0
    while time.monotonic() < deadline:
        sender.send(dst, b"retry-%d" % n)
        n += 1
        try:
            got = receiver.recv_packet(0.05)
        except TimeoutError:
            continue
        assert got.src == sender.public_key
        return
    raise AssertionError(f"none of {n} packets reached the expected connection")


def test_peer_gone_goes_to_earlier_receivers_only(relay: Any, connect: Any) -> None:
    """33: A -> B, A leaves: B gets PeerGone(A, Disconnected); C (never heard A) nothing."""
    a, b, c = connect(relay), connect(relay), connect(relay)
    assert_delivers(a, b)  # B has now seen A
    assert_delivers(c, a)  # C talked to A, but never received from A
    a.close()
    assert b.recv(ARRIVE) == derp.PeerGone(a.public_key, derp.PEER_GONE_DISCONNECTED)
    assert_silent(c)


def test_peer_gone_when_the_sender_leaves_before_its_packet_lands(relay: Any,
                                                                   connect: Any) -> None:
    """33, raced: senders that close right after one packet, before the relay delivered
    it. With several workers the packet may reach B's worker after the sender's worker
    has already said goodbye to everyone it knew of; B must still get the packet and
    then PeerGone for each sender, in that order."""
    b = connect(relay)
    for i in range(12):
        sender = connect(relay)
        sender.send(b.public_key, b"last words %d" % i)
        sender.close()
        got = b.recv_packet(ARRIVE)
        assert (got.src, got.data) == (sender.public_key, b"last words %d" % i)
        assert b.recv(ARRIVE) == derp.PeerGone(sender.public_key,
                                               derp.PEER_GONE_DISCONNECTED), f"sender {i}"


def test_duplicate_key_connections_coexist_last_writer_active(relay: Any, connect: Any) -> None:
    """34: A1 and A2 share a key: newest is active, a sender becomes active, closing one
    moves traffic to the other, and PeerGone only follows the last one."""
    key = PrivateKey.generate()
    a1 = connect(relay, private_key=key)
    a2 = connect(relay, private_key=key)
    b, c = connect(relay), connect(relay)
    a_key = a1.public_key

    # Newest connection (A2) receives; A1 stays open but silent.
    b.send(a_key, b"to newest")
    assert b.public_key == a2.recv_packet(ARRIVE).src
    assert_silent(a1)

    # A1 writes (a packet to C) -> A1 becomes the active one.
    assert_delivers(a1, c)  # C has now seen A
    b.send(a_key, b"to last writer")
    assert a1.recv_packet(ARRIVE).data == b"to last writer"

    # A1 leaves: traffic returns to A2, and nobody hears PeerGone(A) yet.
    a1.close()
    _deliver_eventually(b, a2, a_key)
    assert_silent(c)

    # Last connection leaves: C (received from A) gets PeerGone; B (only sent) does not.
    a2.close()
    assert c.recv(ARRIVE) == derp.PeerGone(a_key, derp.PEER_GONE_DISCONNECTED)
    assert_silent(b)
