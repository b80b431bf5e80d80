"""docs/protocol.md §9, items 8-16: ServerKey, ClientInfo, ServerInfo."""

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
    counter,
    dial_to,
    frame,
    host_header,
    random_key,
    upgraded,
    wait_counter_above,
)


def test_server_key_has_magic_and_at_least_40_bytes(relay: Any) -> None:
    """8: ServerKey payload >= 40 bytes starting with DERP + key emoji (read raw)."""
    with derp.Client(dial_to(relay)) as c:
        c.send_raw(derp.build_upgrade_request(host_header(relay)))
        head = c.read_http_head()
        assert head.status == 101
        frame_type, payload = c.recv_raw(ARRIVE)
        assert frame_type == T.SERVER_KEY
        assert len(payload) >= 40
        assert payload[:8] == bytes.fromhex("44455250f09f9491")
        assert payload[8:40] == relay.public_key


def test_valid_client_info_gets_server_info_next_with_version_2(relay: Any) -> None:
    """9: ServerInfo is the next frame; it opens with (client priv, relay pub); version 2."""
    with upgraded(relay) as c:
        c.send_client_info()
        frame_type, payload = c.recv_raw(ARRIVE)
        assert frame_type == T.SERVER_INFO
        info = derp.open_server_info(payload, c.private_key, relay.public_key)
        assert info["version"] == 2


def test_client_info_sealed_to_wrong_key_is_closed(relay: Any) -> None:
    """10: ClientInfo sealed to another relay key -> closed, no ServerInfo."""
    with upgraded(relay) as c:
        c.send_client_info(seal_to=random_key())
        assert_closed(c)
        assert c.skipped_frames == []


def test_client_info_with_flipped_ciphertext_bit_is_closed(relay: Any) -> None:
    """10: one flipped ciphertext bit -> closed, no ServerInfo."""
    with upgraded(relay) as c:
        payload = bytearray(
            derp.client_info_payload(c.private_key, relay.public_key, derp.DEFAULT_CLIENT_INFO)
        )
        payload[-1] ^= 0x01
        assert_closed(c, frame(T.CLIENT_INFO, bytes(payload)))
        assert c.skipped_frames == []


def test_first_frame_not_client_info_is_closed(relay: Any) -> None:
    """11: a Ping instead of ClientInfo -> closed."""
    with upgraded(relay) as c:
        assert_closed(c, frame(T.PING, bytes(8)))
        assert c.skipped_frames == []


def test_client_info_of_55_bytes_is_closed(relay: Any) -> None:
    """12: ClientInfo payload below 56 bytes -> closed."""
    with upgraded(relay) as c:
        assert_closed(c, frame(T.CLIENT_INFO, c.public_key + bytes(23)))


def test_client_info_announcing_262145_bytes_is_closed_without_waiting(relay: Any) -> None:
    """12: a header announcing 262 145 bytes, then a stall -> closed by the length rule
    (well before the 10 s handshake deadline)."""
    with upgraded(relay) as c:
        t0 = time.monotonic()
        assert_closed(c, bytes([T.CLIENT_INFO]) + (262_145).to_bytes(4, "big"))
        assert time.monotonic() - t0 < ARRIVE


def test_client_info_of_262144_bytes_is_accepted(relay: Any) -> None:
    """12 (boundary): the largest allowed ClientInfo still completes the handshake."""
    with upgraded(relay) as c:
        # Pad the JSON with spaces (valid whitespace) to fill 262 144 payload bytes.
        body = b'{"version":2}'
        pad = 262_144 - 32 - 24 - 16 - len(body)
        c.send_client_info(body + b" " * pad)
        assert c.read_server_info(ARRIVE)["version"] == 2


def test_zero_client_key_is_closed_and_relay_keeps_serving(relay: Any) -> None:
    """13: ClientInfo claiming the all-zero key -> closed; new clients still work."""
    with upgraded(relay) as c:
        sealed = derp.seal(b"{}", c.private_key, relay.public_key)
        assert_closed(c, frame(T.CLIENT_INFO, bytes(32) + sealed))
    with upgraded(relay) as c:
        c.send_client_info()
        assert c.read_server_info(ARRIVE)["version"] == 2
        assert_open(c)


@pytest.mark.parametrize(
    "plaintext",
    [
        b"{}",
        b'{"Version":2}',
        b'{"version":2,"CanAckPings":true,"AppName":"labkit","x":[1,{"y":null}]}',
        b' { "VERSION" : 2 } ',
    ],
    ids=["empty-object", "capitalised-key", "unknown-keys", "whitespace-upper"],
)
def test_client_info_json_variants_are_accepted(relay: Any, plaintext: bytes) -> None:
    """14: {} / capitalised keys / unknown keys are valid ClientInfo."""
    with upgraded(relay) as c:
        c.send_client_info(plaintext)
        assert c.read_server_info(ARRIVE)["version"] == 2
        assert_open(c)


@pytest.mark.parametrize(
    "plaintext",
    [
        b'{"meshKey":""}',
        b'{"meshKey":"0123456789"}',
        b'{"meshKey":"' + b"g" * 64 + b'"}',
        b"not json",
        b"",
        b"[]",
        b"{} trailing",
        b'{"version":2',
    ],
    ids=[
        "empty-mesh-key",
        "short-mesh-key",
        "non-hex-mesh-key",
        "non-json",
        "empty",
        "array",
        "trailing-garbage",
        "truncated",
    ],
)
def test_client_info_json_invalid_is_closed(relay: Any, plaintext: bytes) -> None:
    """14 (and docs/protocol.md §4.4): malformed meshKey, non-JSON, empty, array, trailing
    garbage."""
    with upgraded(relay) as c:
        c.send_client_info(plaintext)
        assert_closed(c)
        assert not any(isinstance(f, derp.ServerInfo) for f in c.skipped_frames)


def test_handshake_times_out_without_client_info(make_relay: Any) -> None:
    """15: no ClientInfo -> closed by the handshake deadline (1 s configured here)."""
    r = make_relay(handshake_timeout=1.0)
    before = counter(r, "close_timeout")
    with upgraded(r) as c:
        t0 = time.monotonic()
        assert c.expect_closed(1.0 + ARRIVE), "not closed after the handshake deadline"
        elapsed = time.monotonic() - t0
    assert elapsed > 0.5, f"closed after {elapsed:.2f} s, before the 1 s deadline"
    wait_counter_above(r, "close_timeout", before)


def test_send_packet_right_after_client_info_is_delivered(relay: Any, connect: Any) -> None:
    """16: SendPacket written before ServerInfo arrives is still delivered."""
    b = connect(relay)
    with upgraded(relay) as a:
        a.send_client_info()
        a.send(b.public_key, b"early bird")
        got = b.recv_packet(ARRIVE)
        assert (got.src, got.data) == (a.public_key, b"early bird")
        assert a.read_server_info(ARRIVE)["version"] == 2  # still the first frame
        assert_delivers(b, a)
