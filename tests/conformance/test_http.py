"""docs/protocol.md §9, items 1-7: the HTTP layer in front of DERP."""

from __future__ import annotations

from typing import Any

import pytest

from labkit import derp

from .helpers import (
    ARRIVE,
    assert_delivers,
    connect_to,
    dial_to,
    get_request,
    host_header,
    http_exchange,
)


def test_upgrade_answers_101_with_derp_headers_matching_server_key(relay: Any) -> None:
    """1: status line, Upgrade, Derp-Version and a Derp-Public-Key equal to ServerKey."""
    with connect_to(relay, handshake=False) as c:
        assert c.http is not None
        assert c.http.status_line == "HTTP/1.1 101 Switching Protocols"
        assert c.http.headers.get("upgrade", "").lower() == "derp"
        assert c.http.headers.get("derp-version") == "2"
        announced = c.http.headers.get("derp-public-key", "")
        assert len(announced) == 64 and announced == announced.lower()
        assert bytes.fromhex(announced) == c.server_key == relay.public_key


@pytest.mark.parametrize("upgrade", ["derp", "DeRp", "WebSocket"])
def test_upgrade_value_is_case_insensitive_and_bare_websocket_is_raw_derp(
    relay: Any, upgrade: str
) -> None:
    """2: `Upgrade: derp` and `Upgrade: WebSocket` without a derp subprotocol."""
    with derp.Client(dial_to(relay)) as c:
        c.upgrade(host_header(relay), upgrade=upgrade)
        assert c.http is not None and c.http.status == 101
        c.send_client_info()
        assert c.read_server_info(ARRIVE)["version"] == 2


def test_derp_path_without_upgrade_gets_426_and_no_derp_bytes(relay: Any) -> None:
    """3: `GET /derp` with no Upgrade header -> 426, no ServerKey."""
    request = derp.build_upgrade_request(host_header(relay), upgrade=None)
    head, body = http_exchange(relay, request)
    assert head.status == 426, head.status_line
    assert derp.MAGIC not in body
    assert "derp-public-key" not in head.headers


def test_fast_start_sends_no_http_response_and_keeps_pipelined_client_info(
    relay: Any, connect: Any
) -> None:
    """4: Derp-Fast-Start: 1 with ClientInfo in the same write as the request."""
    with connect_to(relay) as first:  # learn the key from an earlier connection
        key = first.server_key
    assert key is not None
    # Raw check: the very first byte is a ServerKey frame, not "HTTP/1.1".
    client = derp.Client(dial_to(relay))
    with client:
        request = derp.build_upgrade_request(
            host_header(relay), extra_headers={"Derp-Fast-Start": "1"}
        )
        payload = derp.client_info_payload(client.private_key, key, derp.DEFAULT_CLIENT_INFO)
        client.send_raw(request + derp.encode_frame(derp.FrameType.CLIENT_INFO, payload))
        frame_type, server_key = client.recv_raw(ARRIVE)
        assert frame_type == derp.FrameType.SERVER_KEY, (
            f"first bytes are type 0x{frame_type:02x} (HTTP response not suppressed?)"
        )
        assert server_key[8:40] == key
        client.server_key = key
        assert client.read_server_info(ARRIVE)["version"] == 2
    # The Client API does the same, and the connection then carries packets.
    a = connect(relay, fast_start_key=key)
    assert a.http is None and a.server_info == {"version": 2}
    b = connect(relay)
    assert_delivers(a, b)
    assert_delivers(b, a)


def test_request_written_one_byte_at_a_time_still_upgrades(relay: Any) -> None:
    """5: the relay's HTTP parser copes with a request split across many reads."""
    with derp.Client(dial_to(relay)) as c:
        c.upgrade(host_header(relay), request_chunk=1)
        c.send_client_info()
        assert c.read_server_info(ARRIVE)["version"] == 2


def test_server_key_in_same_read_as_101_is_parsed(relay: Any) -> None:
    """5: the client side; the relay normally writes 101 + ServerKey in one write."""
    with derp.Client(dial_to(relay)) as c:
        c.send_raw(derp.build_upgrade_request(host_header(relay)))
        buf = b""
        while (parsed := derp.parse_http_head(buf)) is None:
            c.sock.settimeout(ARRIVE)
            data = c.sock.recv(65536)
            assert data, "relay closed during the upgrade"
            buf += data
        head, surplus = parsed
        assert head.status == 101
        c.reader.feed(surplus)  # what Client.upgrade does with the surplus
        frame_type, payload = c.recv_raw(ARRIVE)
        assert frame_type == derp.FrameType.SERVER_KEY
        assert payload[:8] == derp.MAGIC


@pytest.mark.parametrize("path", ["/derp/probe", "/derp/latency-check"])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_probe_endpoints_answer_200_empty_with_cors(relay: Any, path: str, method: str) -> None:
    """6: GET/HEAD /derp/probe and /derp/latency-check -> 200, empty, ACAO *."""
    head, body = http_exchange(relay, get_request(relay, path, method), head_only=method == "HEAD")
    assert head.status == 200, head.status_line
    assert head.headers.get("access-control-allow-origin") == "*"
    assert head.headers.get("content-length", "0") == "0"
    if method == "GET":
        assert body == b""


@pytest.mark.parametrize("path", ["/derp/probe", "/derp/latency-check"])
def test_probe_endpoints_refuse_post_with_405(relay: Any, path: str) -> None:
    """6: POST to a probe endpoint -> 405."""
    request = get_request(relay, path, "POST", Content_Length="0")
    head, _ = http_exchange(relay, request)
    assert head.status == 405, head.status_line


NO_CACHE = "no-cache, no-store, must-revalidate, no-transform, max-age=0"


def test_generate_204_answers_204_no_cache(relay: Any) -> None:
    """7: /generate_204 -> 204 with the no-cache Cache-Control, no challenge echo."""
    head, body = http_exchange(relay, get_request(relay, "/generate_204"))
    assert head.status == 204, head.status_line
    assert head.headers.get("cache-control") == NO_CACHE
    assert "x-tailscale-response" not in head.headers
    assert body == b""


def test_generate_204_echoes_a_valid_challenge(relay: Any) -> None:
    """7: X-Tailscale-Challenge: ts_192.0.2.1 -> X-Tailscale-Response: response ts_192.0.2.1."""
    request = get_request(relay, "/generate_204", X_Tailscale_Challenge="ts_192.0.2.1")
    head, _ = http_exchange(relay, request)
    assert head.status == 204, head.status_line
    assert head.headers.get("x-tailscale-response") == "response ts_192.0.2.1"


def test_generate_204_echoes_a_64_char_challenge(relay: Any) -> None:
    """7: exactly 64 allowed characters is still valid."""
    challenge = "a-Z.0:_" * 9 + "x"
    assert len(challenge) == 64
    request = get_request(relay, "/generate_204", X_Tailscale_Challenge=challenge)
    head, _ = http_exchange(relay, request)
    assert head.headers.get("x-tailscale-response") == f"response {challenge}"


@pytest.mark.parametrize(
    "challenge", ["a" * 65, "ts 192.0.2.1", "ts/192.0.2.1"], ids=["65-chars", "space", "slash"]
)
def test_generate_204_ignores_an_invalid_challenge(relay: Any, challenge: str) -> None:
    """7: a 65-char challenge or one with a space or `/` -> no response header."""
    request = get_request(relay, "/generate_204", X_Tailscale_Challenge=challenge)
    head, _ = http_exchange(relay, request)
    assert head.status == 204, head.status_line
    assert "x-tailscale-response" not in head.headers


# Item 7 also asks for the port-80 side listener: a labkit relay listens on one port only.
