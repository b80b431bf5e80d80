"""The adversarial suite's relays: io {epoll, uring} x workers {1, 4} x TLS {off, user}.

One relay per mode is shared by the whole package (tests use fresh random keys), with
short deadlines so slow clients are closed in about a second: handshake_timeout 1 s,
write_timeout 1 s, and a smaller packet pool (4096 buffers per worker) so the memory a
flood can touch stays small and measurable. The fixture names override tests/conftest.py,
so `relay`, `connect` and the shared-relay health check work as in tests/conformance.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ADV_MODES: list = [
    pytest.param({"io": io, "workers": workers, "tls": tls}, id=f"{io}-{tls}-w{workers}")
    for io in ("epoll", "uring")
    for workers in (1, 4)
    for tls in ("off", "user")
]

#: What every adversarial relay runs with (seconds / buffers).
HANDSHAKE_TIMEOUT = 1.0
WRITE_TIMEOUT = 1.0
POOL_PACKETS = 4096


@pytest.fixture(scope="session", params=ADV_MODES)
def relay_mode(request: pytest.FixtureRequest) -> dict[str, Any]:
    return dict(request.param)


@pytest.fixture(scope="session")
def relay(relay_mode: dict[str, Any], mesh_key_file: Path) -> Iterator[Any]:
    from labkit import Relay, RelayConfig

    cfg = RelayConfig(**relay_mode, mesh_key_file=str(mesh_key_file),
                      handshake_timeout=HANDSHAKE_TIMEOUT, write_timeout=WRITE_TIMEOUT,
                      pool_packets=POOL_PACKETS)
    with Relay(cfg) as r:
        yield r
