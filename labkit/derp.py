"""A pure-Python reference DERP client (see docs/protocol.md).

DERP ("Designated Encrypted Relay for Packets") is how Tailscale nodes reach
each other when no direct UDP path exists: every node keeps one TCP (usually
TLS) connection to a relay, and the relay forwards opaque, already-encrypted
WireGuard packets between connections by destination public key.

This module is written to be read. A connection goes through four steps:

1. ``dial``: TCP, optionally wrapped in TLS (ALPN ``http/1.1``).
2. HTTP upgrade: ``GET /derp`` with ``Upgrade: DERP``; the relay answers
   ``101`` and the DERP byte stream starts right after the blank line.
3. Handshake: relay sends ServerKey, client sends ClientInfo sealed with a
   NaCl box, relay answers with a sealed ServerInfo.
4. Steady state: frames of ``type (1 byte) | length (4 bytes, BE) | payload``.

With ``transport="websocket"`` step 2 is an RFC 6455 upgrade (subprotocol ``derp``) and
the same byte stream travels in WebSocket binary messages, as browser clients reach
derper (docs/protocol.md §2.7).

Example::

    with Client.connect("127.0.0.1", 3340) as a, Client.connect("127.0.0.1", 3340) as b:
        a.send(b.public_key, b"hello")
        print(b.recv_packet(timeout=2.0))
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import ssl
import struct
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv6Address
from types import TracebackType
from typing import Any, Self

from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey

# --------------------------------------------------------------------------
# Protocol constants (docs/protocol.md §3, §7)
# --------------------------------------------------------------------------

#: First 8 bytes of a ServerKey payload: ASCII "DERP" + UTF-8 of U+1F511 (key).
MAGIC = b"DERP\xf0\x9f\x94\x91"
#: Protocol version sent in ClientInfo, ServerInfo and the Derp-Version header.
PROTOCOL_VERSION = 2
#: Frame header: 1-byte type + uint32 big-endian payload length.
FRAME_HEADER_LEN = 5
#: Raw Curve25519 public key length; keys travel as these 32 bytes.
KEY_LEN = 32
#: NaCl box nonce length (random per sealed message).
NONCE_LEN = 24
#: NaCl box overhead: the Poly1305 tag, placed before the ciphertext.
BOX_OVERHEAD = 16
#: Most user bytes in one Send/Recv/Forward packet (keys not counted).
MAX_PACKET_SIZE = 65_536
#: Smallest and largest ClientInfo payload a relay accepts.
MIN_CLIENT_INFO_LEN = KEY_LEN + NONCE_LEN
MAX_CLIENT_INFO_LEN = 256 * 1024
#: Largest ServerKey payload a Go client accepts (relays send exactly 40).
MAX_SERVER_KEY_LEN = 1024
#: Largest incoming frame payload this client accepts (same as Go clients).
MAX_FRAME_PAYLOAD = 1 << 20
#: Ping payload bounds enforced by the relay (only the first 8 are echoed).
PING_DATA_LEN = 8
MAX_PING_LEN = 1000
#: Start of a disco packet ("TS" + UTF-8 of U+1F4AC); full header is 62 bytes.
DISCO_MAGIC = b"TS\xf0\x9f\x92\xac"
DISCO_MIN_LEN = len(DISCO_MAGIC) + KEY_LEN + NONCE_LEN
#: Cap on the HTTP response head we are willing to buffer.
MAX_HTTP_HEAD = 16 * 1024


class FrameType:
    """Frame type bytes (docs/protocol.md §3.3). Values 0x0b-0x0f and 0x16+ are unassigned."""

    SERVER_KEY = 0x01  # relay -> client: magic + relay public key
    CLIENT_INFO = 0x02  # client -> relay: client key + sealed JSON
    SERVER_INFO = 0x03  # relay -> client: sealed JSON {"version":2}
    SEND_PACKET = 0x04  # client -> relay: dst key + packet
    RECV_PACKET = 0x05  # relay -> client: src key + packet
    KEEP_ALIVE = 0x06  # relay -> client: empty, every ~60 s
    NOTE_PREFERRED = 0x07  # client -> relay: 1 byte, "this is my home relay"
    PEER_GONE = 0x08  # relay -> client: key + reason byte
    PEER_PRESENT = 0x09  # relay -> mesh watcher: key + ip16 + port + flags
    FORWARD_PACKET = 0x0A  # mesh peer -> relay: src key + dst key + packet
    WATCH_CONNS = 0x10  # mesh peer -> relay: empty, subscribe to presence
    CLOSE_PEER = 0x11  # mesh peer -> relay: key whose connections to close
    PING = 0x12  # either way: 8 opaque bytes
    PONG = 0x13  # either way: the 8 bytes of the Ping
    HEALTH = 0x14  # relay -> client: UTF-8 problem text, empty = healthy
    RESTARTING = 0x15  # relay -> client: reconnect-in ms + try-for ms


#: PeerGone reasons (docs/protocol.md §3.4, §5.6).
PEER_GONE_DISCONNECTED = 0x00  # the peer's last connection left
PEER_GONE_NOT_HERE = 0x01  # reply to a disco send to an unknown key

#: PeerPresent flag bits (docs/protocol.md §3.4, §5.8).
PEER_PRESENT_REGULAR = 0x01  # only when no other bit applies
PEER_PRESENT_MESH = 0x02  # presented the correct mesh key
PEER_PRESENT_PROBER = 0x04  # ClientInfo had IsProber
PEER_PRESENT_NOT_IDEAL = 0x08  # request carried an Ideal-Node header

# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


class DerpError(Exception):
    """Base class of this module's errors."""


class HandshakeError(DerpError):
    """The HTTP upgrade or the ServerKey/ClientInfo/ServerInfo exchange failed."""


class ProtocolError(DerpError):
    """The relay sent bytes that break the framing or a frame's size rule."""


class ConnectionClosed(DerpError):
    """The relay closed (or reset) the connection."""


# --------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerKey:
    """0x01: the relay's public key (after the magic); ``extra`` is reserved."""

    key: bytes
    extra: bytes = b""


@dataclass(frozen=True)
class ServerInfo:
    """0x03: ``sealed`` is nonce||tag||ct; ``info`` is the JSON once opened."""

    sealed: bytes
    info: dict[str, Any] | None = None


@dataclass(frozen=True)
class RecvPacket:
    """0x05: a packet relayed from ``src``."""

    src: bytes
    data: bytes


@dataclass(frozen=True)
class KeepAlive:
    """0x06: the relay is still there."""


@dataclass(frozen=True)
class PeerGone:
    """0x08: ``key`` is gone (``reason`` 0) or was never here (``reason`` 1)."""

    key: bytes
    reason: int


@dataclass(frozen=True)
class PeerPresent:
    """0x09: ``key`` connected from ``ip``:``port`` (IPv4 appears IPv4-mapped)."""

    key: bytes
    ip: IPv6Address | None
    port: int | None
    flags: int | None


@dataclass(frozen=True)
class Ping:
    """0x12: 8 opaque bytes to be echoed."""

    data: bytes


@dataclass(frozen=True)
class Pong:
    """0x13: the echoed bytes of a Ping."""

    data: bytes


@dataclass(frozen=True)
class Health:
    """0x14: problem text; empty means healthy again."""

    message: str


@dataclass(frozen=True)
class Restarting:
    """0x15: reconnect after ``reconnect_in_ms``, keep trying ``try_for_ms``."""

    reconnect_in_ms: int
    try_for_ms: int


@dataclass(frozen=True)
class Unknown:
    """Any frame type a client does not interpret."""

    type: int
    payload: bytes


Frame = (
    ServerKey
    | ServerInfo
    | RecvPacket
    | KeepAlive
    | PeerGone
    | PeerPresent
    | Ping
    | Pong
    | Health
    | Restarting
    | Unknown
)

# --------------------------------------------------------------------------
# Encoding and decoding
# --------------------------------------------------------------------------

_HEADER = struct.Struct(">BI")


def encode_frame(frame_type: int, payload: bytes = b"") -> bytes:
    """Return one frame: type byte, uint32 BE length, payload."""
    return _HEADER.pack(frame_type, len(payload)) + payload


def _need(payload: bytes, n: int, name: str) -> None:
    if len(payload) < n:
        raise ProtocolError(f"{name} payload is {len(payload)} bytes, need at least {n}")


def decode_frame(frame_type: int, payload: bytes) -> Frame:
    """Turn one relay->client frame into its dataclass ("at least N bytes" rules)."""
    t = FrameType
    if frame_type == t.SERVER_KEY:
        _need(payload, len(MAGIC) + KEY_LEN, "ServerKey")
        if payload[: len(MAGIC)] != MAGIC:
            raise ProtocolError(f"ServerKey magic is {payload[:8].hex()}, want {MAGIC.hex()}")
        return ServerKey(payload[8:40], payload[40:])
    if frame_type == t.SERVER_INFO:
        _need(payload, NONCE_LEN, "ServerInfo")
        return ServerInfo(payload)
    if frame_type == t.RECV_PACKET:
        _need(payload, KEY_LEN, "RecvPacket")
        return RecvPacket(payload[:KEY_LEN], payload[KEY_LEN:])
    if frame_type == t.KEEP_ALIVE:
        return KeepAlive()
    if frame_type == t.PEER_GONE:
        _need(payload, KEY_LEN, "PeerGone")
        reason = payload[KEY_LEN] if len(payload) > KEY_LEN else PEER_GONE_DISCONNECTED
        return PeerGone(payload[:KEY_LEN], reason)
    if frame_type == t.PEER_PRESENT:
        _need(payload, KEY_LEN, "PeerPresent")
        ip = port = flags = None
        if len(payload) >= KEY_LEN + 18:
            ip = IPv6Address(payload[32:48])
            port = int.from_bytes(payload[48:50], "big")
        if len(payload) >= KEY_LEN + 19:
            flags = payload[50]
        return PeerPresent(payload[:KEY_LEN], ip, port, flags)
    if frame_type == t.PING:
        _need(payload, PING_DATA_LEN, "Ping")
        return Ping(payload[:PING_DATA_LEN])
    if frame_type == t.PONG:
        _need(payload, PING_DATA_LEN, "Pong")
        return Pong(payload[:PING_DATA_LEN])
    if frame_type == t.HEALTH:
        return Health(payload.decode("utf-8", "replace"))
    if frame_type == t.RESTARTING:
        _need(payload, 8, "Restarting")
        reconnect_in, try_for = struct.unpack(">II", payload[:8])
        return Restarting(reconnect_in, try_for)
    return Unknown(frame_type, payload)


class FrameReader:
    """Streaming frame parser: ``feed`` any chunks, iterate complete frames.

    Frames may be split across or coalesced within reads; the reader keeps the
    unconsumed tail. A header announcing more than ``max_payload`` bytes
    raises ProtocolError (a Go client would drop the connection too).
    """

    def __init__(self, max_payload: int = MAX_FRAME_PAYLOAD) -> None:
        self.max_payload = max_payload
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet form a complete frame (or are unread)."""
        return len(self._buf)

    def next_frame(self) -> tuple[int, bytes] | None:
        """Pop one complete (type, payload), or None if more bytes are needed."""
        if len(self._buf) < FRAME_HEADER_LEN:
            return None
        frame_type, length = _HEADER.unpack_from(self._buf)
        if length > self.max_payload:
            raise ProtocolError(
                f"frame type 0x{frame_type:02x} announces {length} bytes (limit {self.max_payload})"
            )
        end = FRAME_HEADER_LEN + length
        if len(self._buf) < end:
            return None
        payload = bytes(self._buf[FRAME_HEADER_LEN:end])
        del self._buf[:end]
        return frame_type, payload

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        while (frame := self.next_frame()) is not None:
            yield frame


# --------------------------------------------------------------------------
# Crypto: ClientInfo and ServerInfo (docs/protocol.md §4.3-§4.5)
# --------------------------------------------------------------------------


def _private(key: bytes | PrivateKey) -> PrivateKey:
    return key if isinstance(key, PrivateKey) else PrivateKey(bytes(key))


def encode_json(obj: Mapping[str, Any]) -> bytes:
    """Compact JSON, as Go's encoder writes it."""
    return json.dumps(obj, separators=(",", ":")).encode()


def seal(
    plaintext: bytes,
    my_private: bytes | PrivateKey,
    peer_public: bytes,
    nonce: bytes | None = None,
) -> bytes:
    """NaCl box: nonce||tag||ciphertext (random nonce unless given)."""
    box = Box(_private(my_private), PublicKey(peer_public))
    return bytes(box.encrypt(plaintext, nonce))


def open_sealed(sealed: bytes, my_private: bytes | PrivateKey, peer_public: bytes) -> bytes:
    """Open nonce||tag||ciphertext; raises nacl CryptoError on a bad box."""
    return bytes(Box(_private(my_private), PublicKey(peer_public)).decrypt(sealed))


def client_info_payload(
    private_key: bytes | PrivateKey,
    relay_public: bytes,
    info: Mapping[str, Any] | bytes,
    nonce: bytes | None = None,
) -> bytes:
    """ClientInfo payload: client public key || seal(JSON) to the relay."""
    priv = _private(private_key)
    plaintext = info if isinstance(info, bytes) else encode_json(info)
    return bytes(priv.public_key) + seal(plaintext, priv, relay_public, nonce)


def server_info_payload(
    relay_private: bytes | PrivateKey,
    client_public: bytes,
    info: Mapping[str, Any] | None = None,
    nonce: bytes | None = None,
) -> bytes:
    """ServerInfo payload as a relay builds it (for tests and teaching)."""
    info = {"version": PROTOCOL_VERSION} if info is None else info
    return seal(encode_json(info), relay_private, client_public, nonce)


def open_server_info(
    payload: bytes, private_key: bytes | PrivateKey, relay_public: bytes
) -> dict[str, Any]:
    """Open and decode a ServerInfo payload; HandshakeError if it fails."""
    try:
        plaintext = open_sealed(payload, private_key, relay_public)
    except CryptoError as e:
        raise HandshakeError("ServerInfo box does not open with our key") from e
    try:
        info = json.loads(plaintext)
    except ValueError as e:
        raise HandshakeError(f"ServerInfo is not JSON: {plaintext[:80]!r}") from e
    if not isinstance(info, dict):
        raise HandshakeError(f"ServerInfo JSON is not an object: {plaintext[:80]!r}")
    return info


def is_disco(packet: bytes) -> bool:
    """True if the relay would treat ``packet`` as disco (docs/protocol.md §5.1, §5.7)."""
    return len(packet) >= DISCO_MIN_LEN and packet.startswith(DISCO_MAGIC)


# --------------------------------------------------------------------------
# Transport and HTTP upgrade (docs/protocol.md §2)
# --------------------------------------------------------------------------


@dataclass
class HttpHead:
    """A parsed HTTP response head; header names are lower-cased."""

    status_line: str
    status: int
    headers: dict[str, str] = field(default_factory=dict)


def parse_http_head(buf: bytes) -> tuple[HttpHead, bytes] | None:
    """Split ``buf`` into (head, surplus) at the first blank line, or None.

    The surplus is the start of whatever follows the head: for a 101 it is
    the DERP stream (normally the ServerKey frame), which must not be lost.
    """
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > MAX_HTTP_HEAD:
            raise HandshakeError(f"no end of HTTP head within {MAX_HTTP_HEAD} bytes")
        return None
    lines = buf[:end].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise HandshakeError(f"not an HTTP response: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise HandshakeError(f"malformed header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return HttpHead(lines[0], int(parts[1]), headers), buf[end + 4 :]


# --------------------------------------------------------------------------
# DERP over WebSocket (docs/protocol.md §2.7; RFC 6455)
# --------------------------------------------------------------------------

#: Transports a client may use: raw DERP after ``Upgrade: DERP``, or DERP in
#: WebSocket binary messages (subprotocol ``derp``), as browsers reach derper.
TRANSPORTS = ("raw", "websocket")
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
WS_BINARY, WS_CLOSE, WS_PING, WS_PONG = 0x2, 0x8, 0x9, 0xA


def ws_accept(key: str) -> str:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key: base64(SHA-1(key + GUID))."""
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()


def ws_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bytes | None = b"",
             rsv: int = 0, length: int | None = None) -> bytes:
    """One WebSocket frame as a client writes it: masked with a random key, or with
    ``mask`` (4 bytes); ``mask=None`` sends it unmasked. ``rsv`` and ``length`` (the
    announced payload length) exist to break the rules on purpose."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv & 7) << 4 | opcode])
    bit = 0 if mask is None else 0x80
    if n < 126:
        head += bytes([bit | n])
    elif n <= 0xFFFF:
        head += bytes([bit | 126]) + struct.pack(">H", n)
    else:
        head += bytes([bit | 127]) + struct.pack(">Q", n)
    if mask is None:
        return head + payload
    key = mask or os.urandom(4)
    return head + key + _ws_xor(payload, key)


def _ws_xor(data: bytes, key: bytes) -> bytes:
    if not data:
        return b""
    whole = (key * (len(data) // 4 + 1))[: len(data)]
    return (int.from_bytes(data, "big") ^ int.from_bytes(whole, "big")).to_bytes(len(data), "big")


class WebSocketReader:
    """The client side of the stream: server frames (never masked) in, DERP bytes out.

    Binary payload is returned; Pings and Pongs are collected in ``pings`` for the client to
    answer; a Close ends the stream (``closed`` holds its body). Anything RFC 6455
    forbids from a server raises ProtocolError."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.pings: list[bytes] = []
        self.pongs: list[bytes] = []  # bodies of Pongs, kept for whoever pinged
        self.closed: bytes | None = None

    def feed(self, data: bytes) -> bytes:
        """Append received bytes; return the DERP bytes they complete."""
        self._buf += data
        out = bytearray()
        while self.closed is None and len(self._buf) >= 2:
            b0, b1 = self._buf[0], self._buf[1]
            n, at = b1 & 0x7F, 2
            if n == 126:
                if len(self._buf) < 4:
                    break
                n, at = struct.unpack_from(">H", self._buf, 2)[0], 4
            elif n == 127:
                if len(self._buf) < 10:
                    break
                n, at = struct.unpack_from(">Q", self._buf, 2)[0], 10
            if b1 & 0x80:
                raise ProtocolError("the relay sent a masked WebSocket frame")
            if b0 & 0x70:
                raise ProtocolError("the relay set a WebSocket RSV bit")
            if len(self._buf) < at + n:
                break
            payload = bytes(self._buf[at : at + n])
            del self._buf[: at + n]
            opcode = b0 & 0x0F
            if opcode in (WS_BINARY, 0x0):
                out += payload
            elif opcode == WS_PING:
                self.pings.append(payload)
            elif opcode == WS_CLOSE:
                self.closed = payload
            elif opcode == WS_PONG:
                self.pongs.append(payload)
            else:
                raise ProtocolError(f"unexpected WebSocket opcode 0x{opcode:x} from the relay")
        return bytes(out)


def build_upgrade_request(
    host_header: str,
    *,
    upgrade: str | None = "DERP",
    path: str = "/derp",
    extra_headers: Mapping[str, str] | None = None,
) -> bytes:
    """The ``GET /derp`` upgrade request (``upgrade=None`` omits the header)."""
    lines = [f"GET {path} HTTP/1.1", f"Host: {host_header}"]
    if upgrade is not None:
        lines += [f"Upgrade: {upgrade}", "Connection: Upgrade"]
    lines += [f"{k}: {v}" for k, v in (extra_headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def dial(
    host: str,
    port: int,
    *,
    tls: bool = False,
    server_hostname: str | None = None,
    cafile: str | None = None,
    insecure: bool = False,
    timeout: float = 5.0,
    recv_buffer: int | None = None,
) -> socket.socket:
    """Open TCP (and TLS with ALPN http/1.1 if ``tls``) to the relay.

    ``insecure`` skips certificate and hostname checks (self-signed lab
    certs); ``recv_buffer`` sets SO_RCVBUF before connecting (slow-reader
    tests).
    """
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if recv_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, recv_buffer)
        sock.settimeout(timeout)
        sock.connect((host, port))
        if not tls:
            return sock
        ctx = ssl.create_default_context(cafile=cafile)
        ctx.set_alpn_protocols(["http/1.1"])
        if insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx.wrap_socket(sock, server_hostname=server_hostname or host)
    except BaseException:
        sock.close()
        raise


# --------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------

#: What a default client says about itself (tailscaled sends the same).
DEFAULT_CLIENT_INFO: dict[str, Any] = {"version": PROTOCOL_VERSION, "CanAckPings": True}


class Client:
    """One DERP connection. Use ``Client.connect``; the pieces are public
    (``upgrade``, ``send_client_info``, ``read_server_info``) so tests can
    run the handshake step by step or break it on purpose."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        private_key: bytes | PrivateKey | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.sock = sock
        self.timeout = timeout
        self.private_key = PrivateKey.generate() if private_key is None else _private(private_key)
        self.reader = FrameReader()
        self.http: HttpHead | None = None  # the 101 head (None with fast start)
        self.server_key: bytes | None = None  # relay public key from ServerKey
        self.server_info: dict[str, Any] | None = None
        self.can_ack_pings = False
        self.keepalives = 0  # KeepAlives seen (and dropped) by recv_packet/ping
        self.skipped_frames: list[Frame] = []  # frames seen inside expect_closed
        self._backlog: deque[Frame] = deque()  # frames read while waiting for others
        self._client_info_sent = False
        self._closed = False
        self.ws: WebSocketReader | None = None  # set by upgrade(transport="websocket")

    # ---- set-up ----------------------------------------------------------

    @classmethod
    def connect(
        cls,
        host: str,
        port: int,
        *,
        tls: bool = False,
        server_hostname: str | None = None,
        cafile: str | None = None,
        insecure: bool = False,
        private_key: bytes | PrivateKey | None = None,
        client_info: Mapping[str, Any] | None = None,
        fast_start_key: bytes | None = None,
        extra_headers: Mapping[str, str] | None = None,
        timeout: float = 5.0,
        handshake: bool = True,
        recv_buffer: int | None = None,
        transport: str = "raw",
    ) -> Self:
        """Dial, upgrade, and (unless ``handshake=False``) finish the handshake.

        With ``fast_start_key`` (the relay key learned earlier) the request
        carries ``Derp-Fast-Start: 1`` and the ClientInfo in the same write.
        With ``handshake=False`` it stops after reading ServerKey.
        ``transport="websocket"`` carries DERP in WebSocket binary messages, one per
        write (so a frame-per-write sender).
        """
        sock = dial(
            host,
            port,
            tls=tls,
            server_hostname=server_hostname,
            cafile=cafile,
            insecure=insecure,
            timeout=timeout,
            recv_buffer=recv_buffer,
        )
        client = cls(sock, private_key=private_key, timeout=timeout)
        try:
            host_header = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            client.upgrade(
                host_header,
                extra_headers=extra_headers,
                fast_start_key=fast_start_key,
                client_info=client_info,
                transport=transport,
            )
            if handshake:
                if not client._client_info_sent:
                    client.send_client_info(client_info)
                client.read_server_info()
        except BaseException:
            client.close()
            raise
        return client

    def upgrade(
        self,
        host_header: str,
        *,
        extra_headers: Mapping[str, str] | None = None,
        fast_start_key: bytes | None = None,
        client_info: Mapping[str, Any] | None = None,
        upgrade: str = "DERP",
        request_chunk: int | None = None,
        transport: str = "raw",
    ) -> ServerKey:
        """Send the upgrade request, read the 101 (if any) and the ServerKey.

        ``request_chunk`` writes the request in pieces of that many bytes
        (to exercise the relay's incremental HTTP parser).
        """
        if transport not in TRANSPORTS:
            raise ValueError(f"transport {transport!r} is not one of {TRANSPORTS}")
        headers = dict(extra_headers or {})
        ws_key = ""
        if transport == "websocket":
            ws_key = base64.b64encode(os.urandom(16)).decode()
            upgrade = "websocket"
            headers = {"Sec-WebSocket-Protocol": "derp", "Sec-WebSocket-Version": "13",
                       "Sec-WebSocket-Key": ws_key} | headers
            fast_start_key = None  # a WebSocket client needs the 101 to finish its handshake
        pipelined = b""
        if fast_start_key is not None:
            headers["Derp-Fast-Start"] = "1"
            self.server_key = fast_start_key
            pipelined = self._client_info_frame(client_info, fast_start_key)
        request = build_upgrade_request(host_header, upgrade=upgrade, extra_headers=headers)
        if request_chunk:
            for i in range(0, len(request), request_chunk):
                self._send(request[i : i + request_chunk])
                time.sleep(0.001)  # let each piece leave as its own segment
            self._send(pipelined)
        else:
            self._send(request + pipelined)
        self._client_info_sent = bool(pipelined)

        if fast_start_key is None:
            if ws_key:
                self.ws = WebSocketReader()  # the bytes after the 101 are framed
            self.http = self.read_http_head()
            if self.http.status != 101:
                raise HandshakeError(f"relay answered {self.http.status_line!r}, not 101")
            if ws_key and self.http.headers.get("sec-websocket-accept") != ws_accept(ws_key):
                raise HandshakeError("the relay's Sec-WebSocket-Accept does not match our key")
        frame_type, payload = self._handshake_frame("ServerKey", self.timeout)
        if frame_type != FrameType.SERVER_KEY:
            raise HandshakeError(f"expected ServerKey (0x01) first, got type 0x{frame_type:02x}")
        if len(payload) > MAX_SERVER_KEY_LEN:
            raise HandshakeError(f"ServerKey payload is {len(payload)} bytes (max 1024)")
        try:
            server_key = decode_frame(frame_type, payload)
        except ProtocolError as e:
            raise HandshakeError(str(e)) from e
        assert isinstance(server_key, ServerKey)
        if self.http is not None and "derp-public-key" in self.http.headers:
            announced = self.http.headers["derp-public-key"].lower()
            if announced != server_key.key.hex():
                raise HandshakeError(
                    f"Derp-Public-Key {announced} differs from ServerKey {server_key.key.hex()}"
                )
        if fast_start_key is not None and server_key.key != fast_start_key:
            raise HandshakeError("fast start: relay key differs from the one we sealed to")
        self.server_key = server_key.key
        return server_key

    def _handshake_frame(self, waiting_for: str, timeout: float | None) -> tuple[int, bytes]:
        """recv_raw, with failures turned into HandshakeErrors that say the stage."""
        try:
            return self.recv_raw(timeout)
        except ConnectionClosed as e:
            raise HandshakeError(f"relay closed the connection before {waiting_for}") from e
        except TimeoutError as e:
            raise HandshakeError(f"no {waiting_for} from the relay in time") from e
        except ProtocolError as e:
            raise HandshakeError(f"garbled stream while waiting for {waiting_for}: {e}") from e

    def _client_info_frame(
        self, client_info: Mapping[str, Any] | bytes | None, relay_public: bytes
    ) -> bytes:
        info = DEFAULT_CLIENT_INFO if client_info is None else client_info
        if isinstance(info, Mapping):
            self.can_ack_pings = bool(info.get("CanAckPings"))
        payload = client_info_payload(self.private_key, relay_public, info)
        return encode_frame(FrameType.CLIENT_INFO, payload)

    def send_client_info(
        self,
        client_info: Mapping[str, Any] | bytes | None = None,
        *,
        seal_to: bytes | None = None,
    ) -> None:
        """Send ClientInfo (dict -> JSON, bytes = raw plaintext).

        ``seal_to`` seals to another key than the relay's (negative tests).
        """
        relay_public = seal_to or self.server_key
        if relay_public is None:
            raise HandshakeError("no relay key yet: call upgrade() first")
        self._send(self._client_info_frame(client_info, relay_public))
        self._client_info_sent = True

    def read_server_info(self, timeout: float | None = None) -> dict[str, Any]:
        """Read the next frame, which must be ServerInfo, and open it."""
        frame_type, payload = self._handshake_frame("ServerInfo", timeout)
        if frame_type != FrameType.SERVER_INFO:
            raise HandshakeError(f"expected ServerInfo (0x03), got type 0x{frame_type:02x}")
        assert self.server_key is not None
        self.server_info = open_server_info(payload, self.private_key, self.server_key)
        return self.server_info

    # ---- properties ------------------------------------------------------

    @property
    def public_key(self) -> bytes:
        """Our 32-byte public key: the address peers send to."""
        return bytes(self.private_key.public_key)

    @property
    def closed(self) -> bool:
        """True once the connection is known to be closed."""
        return self._closed

    # ---- sending -----------------------------------------------------------

    def _send(self, data: bytes, *, framed: bool = True) -> None:
        """Write data; over WebSocket (once upgraded) in one binary message unless
        ``framed`` is False (the caller wrote WebSocket frames itself)."""
        if self.ws is not None and framed and data:
            data = ws_frame(WS_BINARY, data)
        if self._closed:
            raise ConnectionClosed("connection already closed")
        try:
            self.sock.settimeout(self.timeout)
            self.sock.sendall(data)
        except TimeoutError as e:
            raise TimeoutError(f"relay did not accept {len(data)} bytes in {self.timeout} s") from e
        except OSError as e:  # EPIPE, ECONNRESET, SSL errors
            self._mark_closed()
            raise ConnectionClosed(f"send failed: {e}") from e

    def send_raw(self, data: bytes) -> None:
        """Write DERP bytes as they are (adversarial tests); over WebSocket they still
        travel in one binary message."""
        self._send(data)

    def send_ws(self, frames: bytes) -> None:
        """Write WebSocket frames as they are (see ``ws_frame``; adversarial tests)."""
        self._send(frames, framed=False)

    def send_frame(self, frame_type: int, payload: bytes = b"") -> None:
        """Write one frame."""
        self._send(encode_frame(frame_type, payload))

    def send(self, dst_key: bytes, packet: bytes) -> None:
        """SendPacket: ask the relay to deliver ``packet`` to ``dst_key``."""
        self.send_frame(FrameType.SEND_PACKET, bytes(dst_key) + packet)

    def note_preferred(self, preferred: bool) -> None:
        """NotePreferred: tell the relay whether it is our home relay."""
        self.send_frame(FrameType.NOTE_PREFERRED, b"\x01" if preferred else b"\x00")

    def watch_conns(self) -> None:
        """WatchConns (mesh peers only): subscribe to PeerPresent/PeerGone."""
        self.send_frame(FrameType.WATCH_CONNS)

    def close_peer(self, key: bytes) -> None:
        """ClosePeer (mesh peers only): close every connection of ``key``."""
        self.send_frame(FrameType.CLOSE_PEER, bytes(key))

    def forward(self, src: bytes, dst: bytes, packet: bytes) -> None:
        """ForwardPacket (mesh peers only): deliver ``packet`` as if from ``src``."""
        self.send_frame(FrameType.FORWARD_PACKET, bytes(src) + bytes(dst) + packet)

    # ---- receiving -------------------------------------------------------

    def _mark_closed(self) -> None:
        self._closed = True

    def _read_more(self, deadline: float) -> None:
        """Block until some bytes arrive (TimeoutError at ``deadline``)."""
        if self._closed:
            raise ConnectionClosed("connection closed by the relay")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out waiting for the relay")
        try:
            self.sock.settimeout(remaining)
            data = self.sock.recv(256 * 1024)
        except TimeoutError:
            raise TimeoutError("timed out waiting for the relay") from None
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError) as e:
            self._mark_closed()
            raise ConnectionClosed(f"relay closed the TLS session: {e}") from e
        except OSError as e:
            self._mark_closed()
            raise ConnectionClosed(f"connection lost: {e}") from e
        if not data:
            self._mark_closed()
            raise ConnectionClosed("relay closed the connection")
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        """Received stream bytes to the frame reader, out of WebSocket if it is on."""
        if self.ws is None:
            self.reader.feed(data)
            return
        self.reader.feed(self.ws.feed(data))
        while self.ws.pings:  # RFC 6455 §5.5.2: answer with the same body
            self._send(ws_frame(WS_PONG, self.ws.pings.pop(0)), framed=False)
        if self.ws.closed is not None:
            self._mark_closed()  # frames already buffered are still returned

    def read_http_head(self) -> HttpHead:
        """Read the HTTP response head; bytes after it go to the frame reader."""
        deadline = time.monotonic() + self.timeout
        self.sock.settimeout(self.timeout)
        buf = b""
        while True:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                raise HandshakeError("timed out waiting for the HTTP response") from None
            except OSError as e:
                raise HandshakeError(f"connection failed during upgrade: {e}") from e
            if not data:
                raise HandshakeError(f"relay closed during the HTTP upgrade after {buf[:200]!r}")
            buf += data
            parsed = parse_http_head(buf)
            if parsed is not None:
                head, surplus = parsed
                if self.ws is not None and head.status != 101:
                    self.ws = None  # refused: nothing after the head is framed
                self._feed(surplus)  # the DERP stream starts here
                return head
            self.sock.settimeout(max(0.001, deadline - time.monotonic()))

    def recv_raw(self, timeout: float | None = None) -> tuple[int, bytes]:
        """Next frame off the wire as (type, payload); ignores the backlog."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            frame = self.reader.next_frame()
            if frame is not None:
                return frame
            self._read_more(deadline)

    def _next(self, deadline: float) -> Frame:
        if self._backlog:
            return self._backlog.popleft()
        remaining = max(0.0, deadline - time.monotonic())
        frame_type, payload = self.recv_raw(remaining)
        frame = decode_frame(frame_type, payload)
        if isinstance(frame, Ping) and self.can_ack_pings:
            self.send_frame(FrameType.PONG, frame.data)  # we promised CanAckPings
        return frame

    def recv(self, timeout: float | None = None) -> Frame:
        """Next frame of any type (TimeoutError if none in ``timeout`` s)."""
        return self._next(time.monotonic() + (self.timeout if timeout is None else timeout))

    def recv_until(self, match: Callable[[Frame], bool], timeout: float | None = None) -> Frame:
        """First frame for which ``match`` is true; others are kept for later
        ``recv`` calls, except KeepAlives, which are counted and dropped."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        for i, frame in enumerate(self._backlog):
            if match(frame):
                del self._backlog[i]
                return frame
        pending: list[Frame] = []
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("timed out waiting for a matching frame")
                frame_type, payload = self.recv_raw(remaining)
                frame = decode_frame(frame_type, payload)
                if isinstance(frame, Ping) and self.can_ack_pings:
                    self.send_frame(FrameType.PONG, frame.data)
                if match(frame):
                    return frame
                if isinstance(frame, KeepAlive):
                    self.keepalives += 1
                else:
                    pending.append(frame)
        finally:
            self._backlog.extend(pending)

    def recv_packet(self, timeout: float | None = None) -> RecvPacket:
        """Next RecvPacket; other frames stay queued for ``recv``."""
        frame = self.recv_until(lambda f: isinstance(f, RecvPacket), timeout)
        assert isinstance(frame, RecvPacket)
        return frame

    def ping(self, data: bytes = b"labkit!!", timeout: float | None = None) -> Pong:
        """Send Ping(``data``, 8 bytes) and wait for the matching Pong."""
        if len(data) != PING_DATA_LEN:
            raise ValueError("ping data must be exactly 8 bytes")
        self.send_frame(FrameType.PING, data)
        frame = self.recv_until(lambda f: isinstance(f, Pong) and f.data == data, timeout)
        assert isinstance(frame, Pong)
        return frame

    def expect_closed(self, timeout: float = 2.0) -> bool:
        """True if the relay closes the connection within ``timeout`` s.

        Frames that arrive first are appended to ``skipped_frames``.
        """
        deadline = time.monotonic() + timeout
        self.skipped_frames.extend(self._backlog)
        self._backlog.clear()
        while True:
            try:
                frame_type, payload = self.recv_raw(max(0.0, deadline - time.monotonic()))
            except ConnectionClosed:
                return True
            except TimeoutError:
                return False
            except ProtocolError:  # a broken stream counts as a dead one
                return True
            try:
                self.skipped_frames.append(decode_frame(frame_type, payload))
            except ProtocolError:
                self.skipped_frames.append(Unknown(frame_type, payload))

    # ---- teardown --------------------------------------------------------

    def close(self) -> None:
        """Close the socket (idempotent)."""
        self._closed = True
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<derp.Client {self.public_key.hex()[:16]}… {state}>"
