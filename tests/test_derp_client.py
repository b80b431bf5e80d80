"""Unit tests of labkit.derp without a relay: docs/protocol.md §8 worked bytes,
the streaming FrameReader, frame decoding and HTTP head parsing."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest
from nacl.public import PrivateKey

from labkit import derp
from labkit.derp import FrameType as T

# ---- docs/protocol.md §8: known-answer vectors ---------------------------------------------

RELAY_PRIV = bytes.fromhex("1011111111111111111111111111111111111111111111111111111111111151")
RELAY_PUB = bytes.fromhex("7b4e909bbe7ffe44c465a220037d608ee35897d31ef972f07f74892cb0f73f13")
CLIENT_PRIV = bytes.fromhex("2022222222222222222222222222222222222222222222222222222222222262")
CLIENT_PUB = bytes.fromhex("0faa684ed28867b97f4a6a2dee5df8ce974e76b7018e3f22a1c4cf2678570f20")


def _hex(*parts: str) -> bytes:
    """Bytes from hex pieces laid out as in docs/protocol.md §8 (spaces ignored)."""
    return bytes.fromhex(" ".join(parts))


SERVER_KEY_FRAME = _hex(
    "01 00000028 44455250f09f9491",
    "7b4e909bbe7ffe44c465a220037d608ee35897d31ef972f07f74892cb0f73f13",
)
CLIENT_INFO_FRAME = _hex(
    "02 00000068",
    "0faa684ed28867b97f4a6a2dee5df8ce974e76b7018e3f22a1c4cf2678570f20",  # client key
    "000102030405060708090a0b0c0d0e0f1011121314151617",  # nonce
    "a858a062bb55fbd0e565bf952225b5e2",  # tag
    "20ae6ff32ce093a7548f0f9efd7331db8b94711fe4546f1ed0d738121d94abe3",  # ciphertext
)
SERVER_INFO_FRAME = _hex(
    "03 00000035",
    "303132333435363738393a3b3c3d3e3f4041424344454647",  # nonce
    "e8445a0c4ac4b2002844c1eaaa643d9c",  # tag
    "e320c1e9340624bc9f901d8163",  # ciphertext
)
CLIENT_NONCE = bytes(range(0x00, 0x18))
SERVER_NONCE = bytes(range(0x30, 0x48))
K = bytes(range(0x40, 0x60))  # an arbitrary peer key


def test_clamped_keys_derive_the_vector_public_keys() -> None:
    assert bytes(PrivateKey(RELAY_PRIV).public_key) == RELAY_PUB
    assert bytes(PrivateKey(CLIENT_PRIV).public_key) == CLIENT_PUB
    # The unclamped 0x11*32 / 0x22*32 seeds give the same public keys.
    assert bytes(PrivateKey(b"\x11" * 32).public_key) == RELAY_PUB
    assert bytes(PrivateKey(b"\x22" * 32).public_key) == CLIENT_PUB


def test_server_key_frame_matches_vector() -> None:
    assert derp.encode_frame(T.SERVER_KEY, derp.MAGIC + RELAY_PUB) == SERVER_KEY_FRAME
    assert derp.decode_frame(T.SERVER_KEY, SERVER_KEY_FRAME[5:]) == derp.ServerKey(RELAY_PUB)


def test_client_info_frame_matches_vector() -> None:
    payload = derp.client_info_payload(
        CLIENT_PRIV, RELAY_PUB, {"version": 2, "CanAckPings": True}, nonce=CLIENT_NONCE
    )
    assert derp.encode_frame(T.CLIENT_INFO, payload) == CLIENT_INFO_FRAME
    assert derp.encode_json(derp.DEFAULT_CLIENT_INFO) == b'{"version":2,"CanAckPings":true}'


def test_client_info_opens_on_the_relay_side() -> None:
    payload = CLIENT_INFO_FRAME[5:]
    plaintext = derp.open_sealed(payload[32:], RELAY_PRIV, payload[:32])
    assert plaintext == b'{"version":2,"CanAckPings":true}'


def test_server_info_frame_matches_vector() -> None:
    payload = derp.server_info_payload(RELAY_PRIV, CLIENT_PUB, nonce=SERVER_NONCE)
    assert derp.encode_frame(T.SERVER_INFO, payload) == SERVER_INFO_FRAME


def test_server_info_vector_opens_on_the_client_side() -> None:
    assert derp.open_server_info(SERVER_INFO_FRAME[5:], CLIENT_PRIV, RELAY_PUB) == {"version": 2}


def test_server_info_with_a_flipped_bit_is_a_handshake_error() -> None:
    bad = bytearray(SERVER_INFO_FRAME[5:])
    bad[-1] ^= 1
    with pytest.raises(derp.HandshakeError, match="does not open"):
        derp.open_server_info(bytes(bad), CLIENT_PRIV, RELAY_PUB)


def test_box_precomputed_key_matches_vector() -> None:
    from nacl.public import Box, PublicKey

    shared = Box(PrivateKey(CLIENT_PRIV), PublicKey(RELAY_PUB)).shared_key()
    assert shared.hex() == "8abe7c8ae6800b76d4f5986b04b77f6e9b4f332403c90df02428336e8bd9b525"


@pytest.mark.parametrize(
    ("frame_type", "payload", "wire"),
    [
        (T.KEEP_ALIVE, b"", "0600000000"),
        (T.NOTE_PREFERRED, b"\x01", "070000000101"),
        (T.PING, bytes(range(1, 9)), "12000000080102030405060708"),
        (T.PONG, bytes(range(1, 9)), "13000000080102030405060708"),
        (T.HEALTH, b"BAD", "1400000003424144"),
        (T.HEALTH, b"", "1400000000"),
        (T.RESTARTING, bytes.fromhex("0000000100000002"), "15000000080000000100000002"),
        (T.WATCH_CONNS, b"", "1000000000"),
    ],
    ids=[
        "keepalive",
        "note-preferred",
        "ping",
        "pong",
        "health",
        "health-clear",
        "restarting",
        "watch-conns",
    ],
)
def test_plain_frames_match_vectors(frame_type: int, payload: bytes, wire: str) -> None:
    assert derp.encode_frame(frame_type, payload).hex() == wire


def test_peer_gone_vector_decodes() -> None:
    wire = bytes.fromhex("0800000021") + K + b"\x01"
    frame_type, payload = _one_frame(wire)
    assert derp.decode_frame(frame_type, payload) == derp.PeerGone(K, derp.PEER_GONE_NOT_HERE)


def test_peer_present_vector_decodes() -> None:
    wire = _hex("09 00000033", K.hex(), "00000000000000000000ffffc0000207 a2a9 01")
    frame = derp.decode_frame(*_one_frame(wire))
    assert isinstance(frame, derp.PeerPresent)
    assert frame.key == K
    assert frame.ip is not None and frame.ip.ipv4_mapped == IPv4Address("192.0.2.7")
    assert frame.port == 41641
    assert frame.flags == derp.PEER_PRESENT_REGULAR


def test_disco_vector_is_recognised() -> None:
    packet = bytes.fromhex("5453f09f92ac") + bytes(32) + bytes(24)
    assert len(packet) == 62 and derp.is_disco(packet)
    assert not derp.is_disco(packet[:61])
    assert not derp.is_disco(b"XX" + packet[2:])


# ---- decoding rules ----------------------------------------------------------


def test_old_relay_frames_decode_by_at_least_n_bytes() -> None:
    assert derp.decode_frame(T.PEER_GONE, K) == derp.PeerGone(K, 0)  # no reason byte
    assert derp.decode_frame(T.PEER_PRESENT, K) == derp.PeerPresent(K, None, None, None)
    with_extra = derp.decode_frame(T.SERVER_KEY, derp.MAGIC + K + b"future")
    assert with_extra == derp.ServerKey(K, b"future")


def test_recv_packet_splits_source_and_data() -> None:
    assert derp.decode_frame(T.RECV_PACKET, K + b"hi") == derp.RecvPacket(K, b"hi")
    assert derp.decode_frame(T.RECV_PACKET, K) == derp.RecvPacket(K, b"")


def test_unknown_types_are_kept_whole() -> None:
    assert derp.decode_frame(0x7F, b"abc") == derp.Unknown(0x7F, b"abc")


@pytest.mark.parametrize(
    ("frame_type", "payload"),
    [
        (T.SERVER_KEY, b"DERP" + bytes(36)),
        (T.SERVER_KEY, derp.MAGIC + bytes(31)),
        (T.RECV_PACKET, bytes(31)),
        (T.PING, bytes(7)),
        (T.PONG, bytes(7)),
        (T.RESTARTING, bytes(7)),
    ],
    ids=[
        "bad-magic",
        "short-server-key",
        "short-recv",
        "short-ping",
        "short-pong",
        "short-restarting",
    ],
)
def test_malformed_known_frames_raise(frame_type: int, payload: bytes) -> None:
    with pytest.raises(derp.ProtocolError):
        derp.decode_frame(frame_type, payload)


# ---- FrameReader -----------------------------------------------------------------


def _one_frame(wire: bytes) -> tuple[int, bytes]:
    reader = derp.FrameReader()
    reader.feed(wire)
    frames = list(reader)
    assert len(frames) == 1 and reader.buffered == 0
    return frames[0]


STREAM_FRAMES: list[tuple[int, bytes]] = [
    (T.SERVER_KEY, SERVER_KEY_FRAME[5:]),
    (T.SERVER_INFO, SERVER_INFO_FRAME[5:]),
    (T.KEEP_ALIVE, b""),
    (T.RECV_PACKET, K + b"hello"),
    (0x7F, bytes(300)),
    (T.PONG, bytes(range(1, 9))),
]
STREAM = b"".join(derp.encode_frame(t, p) for t, p in STREAM_FRAMES)


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_frame_reader_handles_a_split_at_every_byte(cut: int) -> None:
    reader = derp.FrameReader()
    reader.feed(STREAM[:cut])
    got = list(reader)
    reader.feed(STREAM[cut:])
    got += list(reader)
    assert got == STREAM_FRAMES
    assert reader.buffered == 0


def test_frame_reader_handles_one_byte_feeds() -> None:
    reader = derp.FrameReader()
    got = []
    for i in range(len(STREAM)):
        reader.feed(STREAM[i : i + 1])
        got += list(reader)
    assert got == STREAM_FRAMES


def test_frame_reader_returns_coalesced_frames_in_order() -> None:
    reader = derp.FrameReader()
    reader.feed(STREAM * 3)
    assert list(reader) == STREAM_FRAMES * 3


def test_frame_reader_keeps_a_partial_tail() -> None:
    reader = derp.FrameReader()
    reader.feed(STREAM + b"\x05\x00\x00")
    assert list(reader) == STREAM_FRAMES
    assert reader.buffered == 3
    assert reader.next_frame() is None


def test_frame_reader_rejects_oversize_announcements() -> None:
    reader = derp.FrameReader(max_payload=1 << 20)
    reader.feed(bytes.fromhex("05") + (1 << 20).to_bytes(4, "big"))
    assert reader.next_frame() is None  # exactly the limit is fine, just incomplete
    reader = derp.FrameReader(max_payload=1 << 20)
    reader.feed(bytes.fromhex("05") + ((1 << 20) + 1).to_bytes(4, "big"))
    with pytest.raises(derp.ProtocolError, match="announces"):
        reader.next_frame()


# ---- HTTP head ---------------------------------------------------------------

HEAD_101 = (
    b"HTTP/1.1 101 Switching Protocols\r\n"
    b"Upgrade: DERP\r\n"
    b"Connection: Upgrade\r\n"
    b"Derp-Version: 2\r\n"
    b"Derp-Public-Key: " + RELAY_PUB.hex().encode() + b"\r\n"
    b"\r\n"
)


def test_http_head_keeps_the_server_key_that_follows_in_the_same_read() -> None:
    parsed = derp.parse_http_head(HEAD_101 + SERVER_KEY_FRAME + SERVER_INFO_FRAME[:7])
    assert parsed is not None
    head, surplus = parsed
    assert head.status == 101
    assert head.status_line == "HTTP/1.1 101 Switching Protocols"
    assert head.headers["derp-public-key"] == RELAY_PUB.hex()
    assert head.headers["derp-version"] == "2"
    assert surplus == SERVER_KEY_FRAME + SERVER_INFO_FRAME[:7]


@pytest.mark.parametrize("cut", range(0, len(HEAD_101)))
def test_http_head_incomplete_until_blank_line(cut: int) -> None:
    assert derp.parse_http_head(HEAD_101[:cut]) is None


def test_http_head_rejects_non_http() -> None:
    with pytest.raises(derp.HandshakeError, match="not an HTTP response"):
        derp.parse_http_head(SERVER_KEY_FRAME + b"\r\n\r\n")


def test_upgrade_request_is_the_minimal_go_request() -> None:
    assert derp.build_upgrade_request("127.0.0.1:3340") == (
        b"GET /derp HTTP/1.1\r\nHost: 127.0.0.1:3340\r\n"
        b"Upgrade: DERP\r\nConnection: Upgrade\r\n\r\n"
    )
    no_upgrade = derp.build_upgrade_request("h", upgrade=None, extra_headers={"X-A": "1"})
    assert no_upgrade == b"GET /derp HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\r\n"
