"""Receivers that do not keep up: memory stays bounded, the stalled one is closed by the
write deadline, and the stream a slow-but-alive reader finally reads is intact."""

from __future__ import annotations

import threading
import time
from typing import Any

from conformance.helpers import ARRIVE, SILENCE, assert_delivers, assert_open

from labkit import derp
from labkit.derp import FrameType as T

from .conftest import WRITE_TIMEOUT
from .helpers import counters, rss_kib, wait_delta

#: How long the flood runs: past the write deadline, so the stalled receiver is closed
#: and the flood goes on against an unknown destination.
FLOOD_SECONDS = WRITE_TIMEOUT + 1.5
#: Relay memory a flood may add, whatever its volume: the packet pool it can touch
#: (4096 small + 64 large buffers on the flooded worker, ~13 MiB) plus allocator slack.
RSS_BOUND_KIB = 40 * 1024


class Flooder(threading.Thread):
    """Sends SendPackets from `client` to `dst` as fast as the relay takes them."""

    def __init__(self, client: derp.Client, dst: bytes, size: int = 1200) -> None:
        super().__init__(name="flooder", daemon=True)
        self.client, self.dst = client, dst
        self.batch = derp.encode_frame(T.SEND_PACKET, dst + bytes(size)) * 32
        self.stop = threading.Event()
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.client.send_raw(self.batch)
                self.sent += len(self.batch)
        except BaseException as e:  # reported by the test
            self.error = e


def test_never_reading_client_under_flood(relay: Any, connect: Any) -> None:
    """B connects and never reads; A floods B for longer than the write deadline; C and D
    exchange throughout. A is never closed, B is closed for write_timeout, the drops are
    counted, and the relay's RSS stays within the pool it may touch."""
    a, c, d = connect(relay), connect(relay), connect(relay)
    b = connect(relay, recv_buffer=4096)
    before = counters(relay, "close_write_timeout", "close_protocol", "drop_queue_head",
                      "drop_unknown_dest", "drop_gone", "drop_pool_empty")
    rss_before = rss_kib(relay.pid)
    peak = rss_before
    flood = Flooder(a, b.public_key)
    flood.start()
    deadline = time.monotonic() + FLOOD_SECONDS
    exchanges = 0
    try:
        while time.monotonic() < deadline:
            assert_delivers(c, d)  # bystanders are served during the flood
            exchanges += 1
            peak = max(peak, rss_kib(relay.pid))
    finally:
        flood.stop.set()
        flood.join(ARRIVE + 5)
    assert flood.error is None, f"the flooding sender was hurt: {flood.error!r}"
    assert flood.sent > 10 * 1024 * 1024, f"flood too small to mean much: {flood.sent} B"
    assert exchanges >= 5

    deltas = wait_delta(relay, before, {"close_write_timeout": 1})
    assert deltas["close_write_timeout"] == 1 and deltas["close_protocol"] == 0
    dropped = sum(v for n, v in deltas.items() if n.startswith("drop_"))
    assert dropped > 0, f"a flood into a stalled receiver dropped nothing: {deltas}"
    assert b.expect_closed(ARRIVE), "the stalled receiver was not closed"
    assert peak - rss_before < RSS_BOUND_KIB, (
        f"relay RSS grew {(peak - rss_before) / 1024:.1f} MiB under a "
        f"{flood.sent / 2**20:.0f} MiB flood (bound {RSS_BOUND_KIB / 1024:.0f} MiB)")
    assert_delivers(a, c)  # the flooder itself is fine
    assert_delivers(d, c)


def test_slow_reader_gets_an_intact_stream(relay: Any, connect: Any) -> None:
    """B stops reading with Pongs and PeerGone owed to it while A bursts packets at it,
    then reads everything before the write deadline: every frame it gets is whole and of
    a relay->client type (no control frame cut by packets), its Pongs all arrive, packets
    arrive in order with drops only at the head of the queue."""
    a, b = connect(relay), connect(relay, recv_buffer=4096)
    gone = connect(relay)
    gone.send(b.public_key, b"seen")  # b will be owed PeerGone(gone) when it leaves
    assert b.recv_packet(ARRIVE).data == b"seen"
    pings = [b"ping%04d" % i for i in range(20)]
    for i, p in enumerate(pings):
        b.send_frame(T.PING, p)
        a.send_raw(b"".join(derp.encode_frame(T.SEND_PACKET, b.public_key + b"%06d" % (
            i * 50 + j) + bytes(1000)) for j in range(50)))
        if i == 10:
            gone.close()

    seqs: list[int] = []
    pongs: list[bytes] = []
    gones: list[bytes] = []
    deadline = time.monotonic() + 10 * ARRIVE
    while True:  # read until PeerGone came and the relay has nothing more for B
        try:
            f = b.recv(SILENCE)  # a ProtocolError here would be a broken stream
        except TimeoutError:
            if gones or time.monotonic() > deadline:
                break
            continue
        if isinstance(f, derp.RecvPacket):
            assert f.src == a.public_key and len(f.data) == 1006
            seqs.append(int(f.data[:6]))
        elif isinstance(f, derp.Pong):
            pongs.append(f.data)
        elif isinstance(f, derp.PeerGone):
            gones.append(f.key)
        elif not isinstance(f, derp.KeepAlive):
            raise AssertionError(f"unexpected frame {f!r}")
    # one Pong may be outstanding at a time (docs/protocol.md §5.4): some Pings go unanswered
    assert pongs and pongs == sorted(pongs) and set(pongs) <= set(pings)
    assert gones == [gone.public_key]
    assert seqs and seqs == sorted(seqs), "packets were all lost or overtook each other"
    assert_open(b)
    assert_delivers(a, b)
