"""docs/protocol.md §9, items 35-40: mesh peers and watchers (the test relays have a mesh key)."""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address
from typing import Any

import pytest
from nacl.public import PrivateKey

from labkit import derp
from labkit.derp import FrameType as T

from .helpers import (
    ARRIVE,
    SILENCE,
    assert_closed,
    assert_open,
    collect,
    counter,
    frame,
    random_key,
    wait_counter_above,
)

LOOPBACK = IPv4Address("127.0.0.1")


def mesh_info(mesh_key: bytes) -> dict[str, Any]:
    return {"meshKey": mesh_key.hex(), "version": 2, "CanAckPings": False}


def about(keys: set[bytes]) -> Callable[[Any], bool]:
    """Frames naming one of `keys` (the shared relay may report other tests' clients)."""
    return lambda f: isinstance(f, derp.PeerPresent | derp.PeerGone) and f.key in keys


def presence(w: derp.Client, keys: set[bytes], n: int) -> list[Any]:
    """The next `n` presence frames about `keys`, in arrival order."""
    match = about(keys)
    frames = collect(w, lambda fs: sum(map(match, fs)) >= n)
    return [f for f in frames if match(f)]


def quiet_about(w: derp.Client, keys: set[bytes], timeout: float = SILENCE) -> None:
    """No presence frame about `keys` within `timeout`."""
    try:
        frames = collect(w, lambda fs: any(map(about(keys), fs)), timeout)
    except AssertionError:
        return
    raise AssertionError(f"unexpected presence frames: {frames!r}")


@pytest.fixture
def watcher(relay: Any, connect: Any, mesh_key: bytes) -> derp.Client:
    """A mesh peer that has sent WatchConns and seen its own PeerPresent."""
    w = connect(relay, client_info=mesh_info(mesh_key))
    w.watch_conns()
    presence(w, {w.public_key}, 1)
    return w


def test_watch_conns_lists_every_connected_key_with_address_and_flags(
    relay: Any, connect: Any, mesh_key: bytes
) -> None:
    """35: PeerPresent for each key incl. the watcher: 51 bytes, IPv4-mapped IP, source
    port, flags 0x02 for the mesh watcher and 0x01 for regular clients."""
    a, b = connect(relay), connect(relay)
    w = connect(relay, client_info=mesh_info(mesh_key))
    w.watch_conns()
    want = {c.public_key: c for c in (a, b, w)}
    seen: dict[bytes, derp.PeerPresent] = {}
    while set(want) - set(seen):
        frame_type, payload = w.recv_raw(ARRIVE)
        if frame_type != T.PEER_PRESENT or payload[:32] not in want:
            continue
        assert len(payload) == 51, f"PeerPresent is {len(payload)} bytes, want 51"
        present = derp.decode_frame(frame_type, payload)
        assert isinstance(present, derp.PeerPresent)
        seen[present.key] = present
    for key, client in want.items():
        p = seen[key]
        assert p.ip is not None and p.ip.ipv4_mapped == LOOPBACK, p
        assert p.port == client.sock.getsockname()[1], p
        expected = derp.PEER_PRESENT_MESH if client is w else derp.PEER_PRESENT_REGULAR
        assert p.flags == expected, p


def test_watcher_sees_connects_disconnects_and_duplicates(
    relay: Any, connect: Any, watcher: derp.Client
) -> None:
    """36: new client -> PeerPresent; it leaves -> PeerGone(0x00); a second connection of a
    key -> another PeerPresent; closing one of the two -> no PeerGone."""
    w = watcher
    c = connect(relay)
    (p,) = presence(w, {c.public_key}, 1)
    assert isinstance(p, derp.PeerPresent)
    c.close()
    (g,) = presence(w, {c.public_key}, 1)
    assert g == derp.PeerGone(c.public_key, derp.PEER_GONE_DISCONNECTED)

    key = PrivateKey.generate()
    d1 = connect(relay, private_key=key)
    d2 = connect(relay, private_key=key)
    frames = presence(w, {d1.public_key}, 2)
    assert all(isinstance(f, derp.PeerPresent) for f in frames), frames
    d1.close()
    quiet_about(w, {d1.public_key})
    assert_open(d2)
    d2.close()
    (g,) = presence(w, {d2.public_key}, 1)
    assert g == derp.PeerGone(d2.public_key, derp.PEER_GONE_DISCONNECTED)


def test_peer_present_flags_not_ideal_and_prober(
    relay: Any, connect: Any, watcher: derp.Client
) -> None:
    """37: `Ideal-Node: x` -> flag 0x08; IsProber -> 0x04, and neither has 0x01."""
    not_ideal = connect(relay, extra_headers={"Ideal-Node": "x"})
    (p,) = presence(watcher, {not_ideal.public_key}, 1)
    assert p.flags is not None and p.flags & derp.PEER_PRESENT_NOT_IDEAL, p
    assert not p.flags & derp.PEER_PRESENT_REGULAR, p

    prober = connect(relay, client_info={"version": 2, "IsProber": True})
    (p,) = presence(watcher, {prober.public_key}, 1)
    assert p.flags is not None and p.flags & derp.PEER_PRESENT_PROBER, p
    assert not p.flags & derp.PEER_PRESENT_REGULAR, p


def test_close_peer_closes_all_connections_of_the_key(
    relay: Any, connect: Any, mesh_key: bytes
) -> None:
    """38: ClosePeer(C) from a mesh peer closes both of C's connections; W stays open."""
    w = connect(relay, client_info=mesh_info(mesh_key))
    key = PrivateKey.generate()
    c1 = connect(relay, private_key=key)
    c2 = connect(relay, private_key=key)
    w.close_peer(c1.public_key)
    assert c1.expect_closed(ARRIVE), "first connection of the key still open"
    assert c2.expect_closed(ARRIVE), "second connection of the key still open"
    assert_open(w)
    w.close_peer(random_key())  # unknown target: just ignored
    assert_open(w)


def test_forward_packet_from_mesh_peer_is_delivered_with_given_source(
    relay: Any, connect: Any, mesh_key: bytes
) -> None:
    """39: ForwardPacket(src=S, dst=B, "x") -> B gets RecvPacket(S, "x")."""
    w = connect(relay, client_info=mesh_info(mesh_key))
    b = connect(relay)
    s = random_key()
    w.forward(s, b.public_key, b"x")
    got = b.recv_packet(ARRIVE)
    assert (got.src, got.data) == (s, b"x")
    w.forward(s, b.public_key, bytes(65_536))  # the largest packet is fine
    assert len(b.recv_packet(ARRIVE).data) == 65_536


def test_forward_packet_over_65536_closes_mesh_peer(
    relay: Any, connect: Any, mesh_key: bytes
) -> None:
    """39: ForwardPacket carrying 65 537 bytes -> the mesh peer is closed."""
    w = connect(relay, client_info=mesh_info(mesh_key))
    b = connect(relay)
    assert_closed(w, frame(T.FORWARD_PACKET, random_key() + b.public_key + bytes(65_537)))


def test_mesh_key_differing_in_last_digit_is_not_a_mesh_peer(
    relay: Any, connect: Any, mesh_key: bytes
) -> None:
    """40: the full 32 bytes are compared: WatchConns with a near-miss key closes."""
    wrong = mesh_key[:31] + bytes([mesh_key[31] ^ 0x01])  # last hex digit differs
    assert wrong.hex()[:63] == mesh_key.hex()[:63]
    w = connect(relay, client_info=mesh_info(wrong))
    before = counter(relay, "close_mesh_denied")
    assert_closed(w, frame(T.WATCH_CONNS))
    wait_counter_above(relay, "close_mesh_denied", before)


def test_relay_without_mesh_key_has_no_mesh_peers(make_relay: Any, connect: Any) -> None:
    """docs/protocol.md §6.6: a relay with no mesh key treats any presented meshKey as not
    matching."""
    r = make_relay()  # no mesh_key_file
    w = connect(r, client_info=mesh_info(bytes(range(32))))
    assert_closed(w, frame(T.WATCH_CONNS))
