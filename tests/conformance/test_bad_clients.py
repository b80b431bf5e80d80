"""Misbehaving clients are closed alone, and the relay's counters say why."""

from __future__ import annotations

import secrets
from typing import Any

from labkit.derp import FrameType as T

from .helpers import (
    assert_closed,
    assert_delivers,
    counter,
    dial_to,
    frame,
    upgraded,
    wait_counter_above,
)


def _counters(relay: Any, *names: str) -> dict[str, int]:
    return {n: counter(relay, n) for n in names}


def test_bad_clients_are_closed_while_others_keep_exchanging(relay: Any, connect: Any) -> None:
    """Garbage, an oversize frame and a bad box each close only their own connection,
    and raise close_http / close_protocol / close_handshake."""
    a, b = connect(relay), connect(relay)
    assert_delivers(a, b)

    # 1. Garbage instead of an HTTP request.
    before = _counters(relay, "close_http", "close_protocol")
    sock = dial_to(relay)
    try:
        sock.sendall(secrets.token_bytes(200) + b"\r\n\r\n")
        sock.settimeout(2.0)
        while sock.recv(65536):  # whatever it answers (400 or nothing), then EOF
            pass
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    assert_delivers(a, b)
    assert_delivers(b, a)
    wait_counter_above_any(relay, before)

    # 2. An oversize SendPacket after a good handshake.
    bad = connect(relay)
    before_protocol = counter(relay, "close_protocol")
    assert_closed(bad, frame(T.SEND_PACKET, b.public_key + bytes(65_537)))
    assert_delivers(a, b)
    wait_counter_above(relay, "close_protocol", before_protocol)

    # 3. A ClientInfo whose box does not open.
    before_handshake = counter(relay, "close_handshake")
    with upgraded(relay) as c:
        c.send_client_info(seal_to=bytes(range(32)))
        assert_closed(c)
    assert_delivers(b, a)
    wait_counter_above(relay, "close_handshake", before_handshake)

    # 4. A frame-level lie: SendPacket shorter than its destination key.
    bad = connect(relay)
    before_protocol = counter(relay, "close_protocol")
    assert_closed(bad, frame(T.SEND_PACKET, b"\xff" * 5))
    assert_delivers(a, b)
    wait_counter_above(relay, "close_protocol", before_protocol)


def wait_counter_above_any(relay: Any, before: dict[str, int]) -> None:
    """One of the counters in `before` rises (which one is the relay's choice)."""
    from .helpers import wait_until

    wait_until(
        lambda: any(counter(relay, n) > v for n, v in before.items()),
        what=f"one of {sorted(before)} to rise",
    )
