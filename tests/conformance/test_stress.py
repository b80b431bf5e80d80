"""docs/protocol.md §9, item 42: many clients connecting and disconnecting (bounded, loopback
only)."""

from __future__ import annotations

import time
from typing import Any

from labkit import derp

from .helpers import ARRIVE, assert_open, connect_to, counter, wait_until

CLIENTS = 200
CHURN_SECONDS = 3.0  # keep starting rounds for this long (at least MIN_ROUNDS)
MIN_ROUNDS = 3
MAX_ROUNDS = 50
MAX_SECONDS = 30.0


def test_connect_disconnect_churn_leaks_nothing(
    make_relay: Any, mesh_key: bytes, mesh_key_file: Any
) -> None:
    """42: 200 clients connect and disconnect in rounds; the relay keeps answering Pings
    and every closed client disappears from a watcher's view."""
    r = make_relay(mesh_key_file=str(mesh_key_file))
    info = {"meshKey": mesh_key.hex(), "version": 2}
    with connect_to(r, client_info=info) as w, connect_to(r) as steady:
        w.watch_conns()
        view: set[bytes] = set()

        def drain(timeout: float) -> None:
            deadline = time.monotonic() + timeout
            while (remaining := deadline - time.monotonic()) > 0:
                try:
                    f = w.recv(remaining)
                except TimeoutError:
                    return
                if isinstance(f, derp.PeerPresent):
                    view.add(f.key)
                elif isinstance(f, derp.PeerGone):
                    view.discard(f.key)
                if view == expected:
                    return

        expected = {w.public_key, steady.public_key}
        drain(ARRIVE)
        assert view == expected

        t0 = time.monotonic()
        rounds = 0
        while rounds < MIN_ROUNDS or (
            time.monotonic() - t0 < CHURN_SECONDS and rounds < MAX_ROUNDS
        ):
            rounds += 1
            clients = [connect_to(r) for _ in range(CLIENTS)]
            assert_open(steady)  # the relay still answers while 200 extra are connected
            for c in clients:
                c.close()
            drain(0.02)  # keep the watcher reading so its socket never fills up
            assert time.monotonic() - t0 < MAX_SECONDS, "churn is far slower than expected"
        assert_open(steady)

        wait_until(lambda: (drain(0.05), view == expected)[1], 3 * ARRIVE, "watcher view")
        if "conns_current" in r.counters():
            wait_until(lambda: counter(r, "conns_current") == 2, ARRIVE, "conns_current == 2")
