"""The relay's WebSocket frame reader and writer (native/src/proto/websocket.c), through
lk_test_ws_parse: RFC 6455's server rules, each violation by name, at any cut of the
stream; and the Python client's framing (labkit.derp) read back by the C reader."""

import struct

import pytest

from labkit import derp
from labkit.derp import WS_BINARY, WS_CLOSE, WS_PING, WS_PONG, ws_frame
from labkit.native import ffi, lib

OK, UNMASKED, OPCODE, CONTROL, FRAGMENT, OVERSIZE = range(6)


def parse(data: bytes, chunk: int = 0, from_client: bool = True) -> tuple[int, object]:
    out = ffi.new("lk_ws_parsed *")
    rc = lib.lk_test_ws_parse(data, len(data), chunk, int(from_client), out)
    return rc, out


def fnv(data: bytes) -> int:
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    return h


@pytest.mark.parametrize("chunk", [0, 1, 2, 3, 7, 13])
def test_fragments_and_control_frames_deliver_the_payload(chunk: int) -> None:
    body = bytes(range(256)) * 300  # past the 16-bit length: a 64-bit header
    wire = (ws_frame(WS_BINARY, body[:100], fin=False) + ws_frame(WS_PING, b"hi")
            + ws_frame(0x0, body[100:70000], fin=False) + ws_frame(WS_PONG, b"")
            + ws_frame(0x0, body[70000:]) + ws_frame(WS_BINARY, b"")
            + ws_frame(WS_CLOSE, struct.pack(">H", 1000) + "ok ✓".encode()))
    rc, out = parse(wire, chunk)
    assert rc == 0 and out.violation == OK
    assert (out.data_bytes, out.data_fnv1a) == (len(body), fnv(body))
    assert (out.pings, out.pongs, out.closes) == (1, 1, 1)
    assert bytes(out.last_ping[0:out.last_ping_len]) == b"hi"


@pytest.mark.parametrize(("wire", "why"), [
    (ws_frame(WS_BINARY, b"x", mask=None), UNMASKED),
    (ws_frame(WS_BINARY, b"x", rsv=1), OPCODE),
    (ws_frame(0x1, b"text"), OPCODE),
    (ws_frame(0x7, b""), OPCODE),
    (ws_frame(0xF, b""), OPCODE),
    (ws_frame(WS_PING, b"p" * 126), CONTROL),
    (ws_frame(WS_PONG, b"", fin=False), CONTROL),
    (ws_frame(WS_CLOSE, b"\x03"), CONTROL),
    (ws_frame(WS_CLOSE, struct.pack(">H", 999)), CONTROL),
    (ws_frame(WS_CLOSE, struct.pack(">H", 1006)), CONTROL),
    (ws_frame(WS_CLOSE, struct.pack(">H", 1000) + b"\xed\xa0\x80"), CONTROL),  # surrogate
    (ws_frame(0x0, b"x"), FRAGMENT),
    (ws_frame(WS_BINARY, b"x", fin=False) + ws_frame(WS_BINARY, b"y"), FRAGMENT),
    (ws_frame(WS_BINARY, b"", length=(1 << 20) + 1), OVERSIZE),
    (ws_frame(WS_BINARY, b"", fin=False, length=1 << 19)[:8], OK),  # within the limit
    (bytes([0x82, 0xFF]) + struct.pack(">Q", 1 << 63) + b"mask", OVERSIZE),
])
def test_each_rule_fails_with_its_reason_at_any_cut(wire: bytes, why: int) -> None:
    for chunk in (0, 1, 5):
        rc, out = parse(wire, chunk)
        assert (rc, out.violation) == ((-1 if why else 0), why), chunk


def test_close_codes_and_utf8() -> None:
    for code in (1000, 1001, 1003, 1007, 1011, 1014, 3000, 4999):
        assert parse(ws_frame(WS_CLOSE, struct.pack(">H", code)))[0] == 0, code
    for code in (0, 1004, 1005, 1006, 1015, 1016, 2999, 5000):
        assert parse(ws_frame(WS_CLOSE, struct.pack(">H", code)))[1].violation == CONTROL
    assert parse(ws_frame(WS_CLOSE, b""))[0] == 0
    for bad in (b"\xc0\x80", b"\xe0\x80\x80", b"\xf4\x90\x80\x80", b"\xff", b"\xe2\x82"):
        wire = ws_frame(WS_CLOSE, struct.pack(">H", 1000) + bad)
        assert parse(wire)[1].violation == CONTROL, bad


def test_client_rules_refuse_masked_server_frames() -> None:
    """From the relay (the load generator's side) frames must not be masked."""
    assert parse(ws_frame(WS_BINARY, b"abc", mask=None), from_client=False)[0] == 0
    assert parse(ws_frame(WS_BINARY, b"abc"), from_client=False)[1].violation == UNMASKED


def test_accept_value_matches_python() -> None:
    key = b"x3JJHMbDL1EzLkh9GBhXDw=="
    buf = ffi.new("char[]", 512)
    n = lib.lk_http_build_ws_101(key, buf, 512)
    lines = ffi.unpack(buf, n).decode().split("\r\n")
    accept = [x.split(": ", 1)[1] for x in lines if x.startswith("Sec-WebSocket-Accept: ")]
    assert accept == [derp.ws_accept(key.decode())] == ["HSmrc0sMlYUkAGmm5OPpG2HaGWk="]


def test_python_reader_refuses_what_a_server_must_not_send() -> None:
    r = derp.WebSocketReader()
    assert r.feed(ws_frame(WS_BINARY, b"ab", mask=None) + ws_frame(0x0, b"c", mask=None)) \
        == b"abc"
    with pytest.raises(derp.ProtocolError):
        derp.WebSocketReader().feed(ws_frame(WS_BINARY, b"x"))
