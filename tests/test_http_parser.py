"""The relay's HTTP request parser and response builders (native/src/http.c).

Covers the parser side of docs/protocol.md §9 items 1-3, 5-7 and §2.2-§2.6:
routing, upgrade detection, fast start, Ideal-Node, the /generate_204
challenge, byte-at-a-time arrival, surplus bytes after the head, the head
size cap, and the malformed requests Go's net/http answers with 400.
"""

from typing import Any

import pytest

from labkit.native import ffi, lib

MAX_HEAD = 16384
KEY = bytes(range(32))


def request(
    target: str = "/derp",
    *headers: str,
    method: str = "GET",
    version: str = "HTTP/1.1",
    host: bool = True,
) -> bytes:
    lines = [f"{method} {target} {version}"]
    if host:
        lines.append("Host: relay.example:3340")
    lines += headers
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def parse(raw: bytes, max_head: int = MAX_HEAD) -> tuple[int, Any]:
    req = ffi.new("lk_http_request *")
    n = lib.lk_http_parse_request(raw, len(raw), max_head, req)
    return n, req


def parsed(raw: bytes) -> Any:
    n, req = parse(raw)
    assert n == len(raw), f"parse returned {n} for {raw!r}"
    return req


def build_response(req: Any, cap: int = 4096) -> bytes:
    out = ffi.new("char[]", cap)
    n = lib.lk_http_build_response(req, out, cap)
    return ffi.unpack(out, n)


def split_response(resp: bytes) -> tuple[str, dict[str, str], bytes]:
    """(status line, headers with lower-case names, body)."""
    head, sep, body = resp.partition(b"\r\n\r\n")
    assert sep, f"no end of head in {resp!r}"
    status, *lines = head.decode().split("\r\n")
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(": ")
        assert name.lower() not in headers, f"duplicate header {name}"
        headers[name.lower()] = value
    return status, headers, body


def respond(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    resp = build_response(parsed(raw))
    assert resp, f"no response for {raw!r}"
    return split_response(resp)


# ---- docs/protocol.md §9 items 1 and 2: the DERP upgrade


@pytest.mark.parametrize("upgrade", ["DERP", "derp", "Derp", "WebSocket", "websocket"])
def test_derp_upgrade_values(upgrade: str) -> None:
    req = parsed(request("/derp", f"Upgrade: {upgrade}", "Connection: Upgrade"))
    assert req.route == lib.LK_ROUTE_DERP
    assert req.method == lib.LK_M_GET
    assert req.upgrade == 1
    assert req.websocket == 0


def test_websocket_with_other_subprotocol_is_raw_derp() -> None:
    req = parsed(request("/derp", "Upgrade: websocket", "Sec-WebSocket-Protocol: chat"))
    assert (req.upgrade, req.websocket) == (1, 0)


WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 §1.3's example key
WS_HEADERS = ("Upgrade: websocket", "Connection: keep-alive, Upgrade",
              "Sec-WebSocket-Protocol: derp", "Sec-WebSocket-Version: 13",
              f"Sec-WebSocket-Key: {WS_KEY}")


def test_real_websocket_is_accepted_with_rfc6455_accept() -> None:
    """§2.7: a valid handshake gets the 101 whose accept value RFC 6455 §1.3 gives."""
    req = parsed(request("/derp", *WS_HEADERS))
    assert (req.upgrade, req.websocket, req.ws_ok) == (0, 1, 1)
    assert ffi.string(req.ws_key).decode() == WS_KEY
    assert lib.lk_http_build_response(req, ffi.new("char[]", 1024), 1024) == 0
    out = ffi.new("char[]", 512)
    n = lib.lk_http_build_ws_101(req.ws_key, out, 512)
    head = ffi.unpack(out, n).decode()
    assert head.startswith("HTTP/1.1 101 Switching Protocols\r\n")
    assert "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in head
    assert "Sec-WebSocket-Protocol: derp\r\n" in head


@pytest.mark.parametrize("drop", range(1, len(WS_HEADERS)))
def test_websocket_without_a_required_header_gets_400(drop: int) -> None:
    headers = [h for i, h in enumerate(WS_HEADERS) if i != drop]
    raw = request("/derp", *headers)
    req = parsed(raw)
    if drop == 2:  # without the derp subprotocol it is not a DERP WebSocket at all
        assert (req.upgrade, req.websocket) == (1, 0)
        return
    assert (req.websocket, req.ws_ok) == (1, 0)
    status, headers_out, _ = respond(raw)
    assert status == "HTTP/1.1 400 Bad Request"
    assert headers_out["sec-websocket-version"] == "13"


@pytest.mark.parametrize("bad", [
    "Sec-WebSocket-Version: 8", "Sec-WebSocket-Key: short==", "Sec-WebSocket-Key: "
    "dGhlIHNhbXBsZSBub25jZQ=!", "Connection: keep-alive"])
def test_websocket_with_a_bad_header_gets_400(bad: str) -> None:
    name = bad.split(":")[0]
    headers = [h for h in WS_HEADERS if not h.startswith(name)] + [bad]
    req = parsed(request("/derp", *headers))
    assert (req.websocket, req.ws_ok) == (1, 0)


def test_websocket_must_be_get() -> None:
    assert parsed(request("/derp", *WS_HEADERS, method="POST")).ws_ok == 0


def test_subprotocol_match_is_case_sensitive_substring_like_go() -> None:
    assert (
        parsed(request("/derp", "Upgrade: websocket", "Sec-WebSocket-Protocol: x, derp")).websocket
        == 1
    )
    assert (
        parsed(request("/derp", "Upgrade: websocket", "Sec-WebSocket-Protocol: DERP")).upgrade == 1
    )


def test_upgrade_ignores_method_and_connection_header() -> None:
    req = parsed(request("/derp", "Upgrade: DERP", method="POST"))
    assert (req.method, req.upgrade) == (lib.LK_M_POST, 1)


def test_upgrading_request_has_no_plain_response() -> None:
    req = parsed(request("/derp", "Upgrade: DERP"))
    assert build_response(req) == b""


def test_build_101_exact_bytes() -> None:
    out = ffi.new("char[]", 512)
    n = lib.lk_http_build_101(KEY, out, 512)
    assert ffi.unpack(out, n) == (
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"Upgrade: DERP\r\n"
        b"Connection: Upgrade\r\n"
        b"Derp-Version: 2\r\n"
        b"Derp-Public-Key: " + KEY.hex().encode() + b"\r\n"
        b"\r\n"
    )


def test_build_101_short_buffer() -> None:
    out = ffi.new("char[]", 512)
    full = lib.lk_http_build_101(KEY, out, 512)
    assert lib.lk_http_build_101(KEY, out, full) == 0
    assert lib.lk_http_build_101(KEY, out, full + 1) == full


# ---- docs/protocol.md §9 item 3: /derp without an upgrade


@pytest.mark.parametrize(
    "headers",
    [(), ("Upgrade: h2c",), ("Upgrade: DERP/2",), ("Upgrade: derp, websocket",), ("Upgrade:",)],
)
def test_derp_without_upgrade_is_426(headers: tuple[str, ...]) -> None:
    raw = request("/derp", *headers)
    assert parsed(raw).upgrade == 0
    status, hdrs, body = respond(raw)
    assert status == "HTTP/1.1 426 Upgrade Required"
    assert body == b"DERP requires connection upgrade\n"
    assert hdrs["content-length"] == str(len(body))
    assert hdrs["connection"] == "close"


def test_426_for_head_has_no_body() -> None:
    status, hdrs, body = respond(request("/derp", method="HEAD"))
    assert status.startswith("HTTP/1.1 426")
    assert body == b""
    assert int(hdrs["content-length"]) > 0


def test_first_upgrade_header_counts() -> None:
    assert parsed(request("/derp", "Upgrade: h2c", "Upgrade: DERP")).upgrade == 0
    assert parsed(request("/derp", "Upgrade: DERP", "Upgrade: h2c")).upgrade == 1


# ---- docs/protocol.md §2.5: fast start, §2.4: Ideal-Node ---------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"), [("1", 1), (" 1\t", 1), ("0", 0), ("true", 0), ("11", 0), ("", 0)]
)
def test_fast_start_exactly_one(value: str, expected: int) -> None:
    req = parsed(request("/derp", "Upgrade: DERP", f"Derp-Fast-Start: {value}"))
    assert req.fast_start == expected


def test_fast_start_absent() -> None:
    assert parsed(request("/derp", "Upgrade: DERP")).fast_start == 0


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, 0),
        ("Ideal-Node:", 0),
        ("Ideal-Node:   ", 0),
        ("Ideal-Node: x", 1),
        ("ideal-node: relay-2a", 1),
    ],
)
def test_ideal_node(header: str | None, expected: int) -> None:
    extra = (header,) if header else ()
    assert parsed(request("/derp", "Upgrade: DERP", *extra)).not_ideal == expected


# ---- docs/protocol.md §9 item 6: probe endpoints


@pytest.mark.parametrize("path", ["/derp/probe", "/derp/latency-check"])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_probe_ok(path: str, method: str) -> None:
    raw = request(path, method=method)
    assert parsed(raw).route == lib.LK_ROUTE_PROBE
    status, headers, body = respond(raw)
    assert status == "HTTP/1.1 200 OK"
    assert headers["access-control-allow-origin"] == "*"
    assert headers["content-length"] == "0"
    assert headers["connection"] == "close"
    assert body == b""


@pytest.mark.parametrize("path", ["/derp/probe", "/derp/latency-check"])
@pytest.mark.parametrize("method", ["POST", "PUT", "OPTIONS"])
def test_probe_other_methods_405(path: str, method: str) -> None:
    status, headers, body = respond(request(path, method=method))
    assert status == "HTTP/1.1 405 Method Not Allowed"
    assert headers["connection"] == "close"
    assert headers["content-length"] == str(len(body))


def test_probe_wins_over_upgrade() -> None:
    req = parsed(request("/derp/probe", "Upgrade: DERP"))
    assert req.route == lib.LK_ROUTE_PROBE


# ---- docs/protocol.md §9 item 7: /generate_204

NO_CACHE = "no-cache, no-store, must-revalidate, no-transform, max-age=0"
VALID_64 = "aZ09._:-" * 8


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST"])
def test_generate_204_without_challenge(method: str) -> None:
    raw = request("/generate_204", method=method)
    req = parsed(raw)
    assert (req.route, req.challenge_ok) == (lib.LK_ROUTE_GENERATE_204, 0)
    status, headers, body = respond(raw)
    assert status == "HTTP/1.1 204 No Content"
    assert headers["cache-control"] == NO_CACHE
    assert headers["connection"] == "close"
    assert "x-tailscale-response" not in headers
    assert "content-length" not in headers  # RFC 9110 §8.6: none on a 204
    assert body == b""


@pytest.mark.parametrize("challenge", ["ts_192.0.2.1", VALID_64, "a", "ts_2001:db8::1"])
def test_generate_204_echoes_valid_challenge(challenge: str) -> None:
    raw = request("/generate_204", f"X-Tailscale-Challenge: {challenge}")
    req = parsed(raw)
    assert req.challenge_ok == 1
    assert ffi.string(req.challenge).decode() == challenge
    _, headers, _ = respond(raw)
    assert headers["x-tailscale-response"] == f"response {challenge}"


@pytest.mark.parametrize(
    "challenge",
    [VALID_64 + "a", "ts 192.0.2.1", "ts/192.0.2.1", "", "ts_192.0.2.1!", "caf\u00e9", "a\tb"],
)
def test_generate_204_ignores_bad_challenge(challenge: str) -> None:
    raw = (
        f"GET /generate_204 HTTP/1.1\r\nHost: h\r\nX-Tailscale-Challenge: {challenge}\r\n\r\n"
    ).encode()
    req = parsed(raw)
    assert req.challenge_ok == 0
    _, headers, _ = respond(raw)
    assert "x-tailscale-response" not in headers


def test_challenge_surrounding_whitespace_is_trimmed() -> None:
    req = parsed(request("/generate_204", "x-tailscale-challenge: \t ts_1 \t"))
    assert ffi.string(req.challenge) == b"ts_1"


# ---- other paths, methods and the home page ---------------------------------------------


@pytest.mark.parametrize(
    ("target", "route"),
    [
        ("/derp", lib.LK_ROUTE_DERP),
        ("/derp?token=abc", lib.LK_ROUTE_DERP),
        ("/derp?", lib.LK_ROUTE_DERP),
        ("/%64erp", lib.LK_ROUTE_DERP),
        ("http://relay.example/derp?x=1", lib.LK_ROUTE_DERP),
        ("HTTPS://relay.example:443/derp/probe", lib.LK_ROUTE_PROBE),
        ("/derp/probe?cachebust=1", lib.LK_ROUTE_PROBE),
        ("/derp/latency-check?", lib.LK_ROUTE_PROBE),
        ("/generate_204?x=/derp", lib.LK_ROUTE_GENERATE_204),
        ("/", lib.LK_ROUTE_OTHER),
        ("/derp/", lib.LK_ROUTE_OTHER),
        ("/derp/xyz", lib.LK_ROUTE_OTHER),
        ("/DERP", lib.LK_ROUTE_OTHER),
        ("/derpx", lib.LK_ROUTE_OTHER),
        ("//derp", lib.LK_ROUTE_OTHER),
        ("/robots.txt", lib.LK_ROUTE_OTHER),
        ("/" + "a" * 5000, lib.LK_ROUTE_OTHER),
        ("http://relay.example", lib.LK_ROUTE_OTHER),
        ("*", lib.LK_ROUTE_OTHER),
    ],
)
def test_routing_by_path(target: str, route: int) -> None:
    assert parsed(request(target)).route == route


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("GET", lib.LK_M_GET),
        ("HEAD", lib.LK_M_HEAD),
        ("POST", lib.LK_M_POST),
        ("PUT", lib.LK_M_OTHER),
        ("get", lib.LK_M_OTHER),
        ("OPTIONS", lib.LK_M_OTHER),
    ],
)
def test_methods(method: str, expected: int) -> None:
    assert parsed(request("/", method=method)).method == expected


def test_home_page() -> None:
    status, headers, body = respond(request("/"))
    assert status == "HTTP/1.1 200 OK"
    assert headers["content-type"].startswith("text/plain")
    assert headers["content-length"] == str(len(body))
    assert headers["connection"] == "close"
    assert b"labkit DERP relay" in body


def test_home_page_head_has_no_body() -> None:
    _, get_headers, _ = respond(request("/"))
    _, headers, body = respond(request("/", method="HEAD"))
    assert body == b""
    assert headers["content-length"] == get_headers["content-length"]


@pytest.mark.parametrize(
    "raw",
    [
        request("/derp"),
        request("/derp", method="HEAD"),
        request("/derp/probe"),
        request("/derp/probe", method="POST"),
        request("/generate_204", "X-Tailscale-Challenge: a"),
        request("/"),
        request("/derp", "Upgrade: websocket", "Sec-WebSocket-Protocol: derp"),  # 400
    ],
)
def test_response_short_buffer(raw: bytes) -> None:
    req = parsed(raw)
    full = build_response(req)
    out = ffi.new("char[]", len(full) + 1)
    for cap in (0, 1, len(full) // 2, len(full)):
        assert lib.lk_http_build_response(req, out, cap) == 0
    assert lib.lk_http_build_response(req, out, len(full) + 1) == len(full)
    assert ffi.unpack(out, len(full)) == full


# ---- header names and values -----------------------------------------------------------


@pytest.mark.parametrize("name", ["upgrade", "UPGRADE", "Upgrade", "uPgRaDe"])
def test_header_names_case_insensitive(name: str) -> None:
    raw = (
        f"GET /derp HTTP/1.1\r\nhOsT: x\r\n{name}: DERP\r\n"
        "DERP-FAST-START: 1\r\nIDEAL-NODE: n\r\n\r\n"
    ).encode()
    req = parsed(raw)
    assert (req.upgrade, req.fast_start, req.not_ideal) == (1, 1, 1)


def test_header_value_without_space_and_with_tabs() -> None:
    req = parsed(b"GET /derp HTTP/1.1\r\nHost:x\r\nUpgrade:\tDERP\t\r\n\r\n")
    assert req.upgrade == 1


def test_unrelated_and_obs_text_headers_are_fine() -> None:
    req = parsed(
        request(
            "/derp",
            "User-Agent: Go-http-client/1.1",
            "X-Thing: caf\u00e9",
            "Accept-Encoding: gzip",
            "Upgrade: DERP",
        )
    )
    assert req.upgrade == 1


# ---- docs/protocol.md §9 item 5: arrival in pieces, and the bytes behind the head

CLIENT_REQUEST = request(
    "/derp",
    "Upgrade: DERP",
    "Connection: Upgrade",
    "Derp-Fast-Start: 1",
    "User-Agent: Go-http-client/1.1",
)
CLIENT_INFO_FRAME = b"\x02\x00\x00\x00\x68" + bytes(range(104))


def test_incomplete_until_last_byte() -> None:
    for cut in range(len(CLIENT_REQUEST)):
        n, _ = parse(CLIENT_REQUEST[:cut])
        assert n == 0, f"cut at {cut} gave {n}"
    n, req = parse(CLIENT_REQUEST)
    assert n == len(CLIENT_REQUEST)
    assert (req.upgrade, req.fast_start) == (1, 1)


def test_surplus_bytes_are_left_to_the_caller() -> None:
    data = CLIENT_REQUEST + CLIENT_INFO_FRAME
    for end in range(len(CLIENT_REQUEST), len(data) + 1):
        n, req = parse(data[:end])
        assert n == len(CLIENT_REQUEST)
        assert req.fast_start == 1
    assert data[n:] == CLIENT_INFO_FRAME


def test_surplus_that_looks_like_http_is_not_parsed() -> None:
    data = CLIENT_REQUEST + b"GET / HTTP/1.1\r\n\r\n"
    assert parse(data)[0] == len(CLIENT_REQUEST)


# ---- the head size cap --------------------------------------------------------------------


def test_head_exactly_at_cap() -> None:
    assert parse(CLIENT_REQUEST, max_head=len(CLIENT_REQUEST))[0] == len(CLIENT_REQUEST)


def test_head_over_cap() -> None:
    assert parse(CLIENT_REQUEST, max_head=len(CLIENT_REQUEST) - 1)[0] == -1


def test_incomplete_head_reaching_cap() -> None:
    partial = CLIENT_REQUEST[:100]
    assert parse(partial, max_head=101)[0] == 0
    assert parse(partial, max_head=100)[0] == -1
    assert parse(partial, max_head=50)[0] == -1


def test_huge_header_is_refused() -> None:
    raw = request("/derp", "X-Padding: " + "a" * 20000)
    assert parse(raw, max_head=MAX_HEAD)[0] == -1
    assert parse(raw, max_head=len(raw))[0] == len(raw)


def test_empty_input_is_incomplete() -> None:
    assert parse(b"")[0] == 0


# ---- malformed requests (Go: 400 Bad Request; the relay closes) ---------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /derp HTTP/1.1\nHost: x\n\n",
        b"GET /derp HTTP/1.1\r\nHost: x\n\r\n",
        b"GET /derp HTTP/1.1\r\nHost: x\r\rUpgrade: DERP\r\n\r\n",
        b"\r\nGET /derp HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET  /derp HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /derp  HTTP/1.1\r\nHost: x\r\n\r\n",
        b" GET /derp HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /derp HTTP/1.1 \r\nHost: x\r\n\r\n",
        b"GET /derp\r\nHost: x\r\n\r\n",
        b"GET /derp HTTP/2.0\r\nHost: x\r\n\r\n",
        b"GET /derp HTTP/1.10\r\nHost: x\r\n\r\n",
        b"GET /derp http/1.1\r\nHost: x\r\n\r\n",
        b"G(T /derp HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET derp HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET ftp://h/derp HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /de\x01rp HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /derp%zz HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /derp% HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /derp%4 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /derp HTTP/1.1\r\n\r\n",
        b"GET /derp HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade DERP\r\n\r\n",
        b"GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade : DERP\r\n\r\n",
        b"GET /derp HTTP/1.1\r\nHost: x\r\n: DERP\r\n\r\n",
        b'GET /derp HTTP/1.1\r\nHost: x\r\nUp"grade: DERP\r\n\r\n',
        b"GET /derp HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded\r\n\r\n",
        b"GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: DE\x00RP\r\n\r\n",
        b"GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: DE\x7fRP\r\n\r\n",
    ],
)
def test_malformed(raw: bytes) -> None:
    assert parse(raw)[0] == -1


def test_bare_lf_rejected_before_head_completes() -> None:
    assert parse(b"GET /derp HTTP/1.1\nHo")[0] == -1


def test_http10_needs_no_host() -> None:
    raw = request("/derp", "Upgrade: DERP", version="HTTP/1.0", host=False)
    assert parsed(raw).upgrade == 1


def test_empty_host_is_present() -> None:
    assert parsed(b"GET / HTTP/1.1\r\nHost:\r\n\r\n").route == lib.LK_ROUTE_OTHER


def test_parse_overwrites_previous_result() -> None:
    req = ffi.new("lk_http_request *")
    first = request(
        "/generate_204",
        "X-Tailscale-Challenge: abc",
        "Upgrade: DERP",
        "Derp-Fast-Start: 1",
        "Ideal-Node: n",
    )
    second = request("/derp/probe")
    lib.lk_http_parse_request(first, len(first), MAX_HEAD, req)
    assert lib.lk_http_parse_request(second, len(second), MAX_HEAD, req) == len(second)
    assert (req.route, req.upgrade, req.fast_start, req.not_ideal, req.challenge_ok) == (
        lib.LK_ROUTE_PROBE,
        0,
        0,
        0,
        0,
    )
    assert ffi.string(req.challenge) == b""
