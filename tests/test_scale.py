"""Connection scale (issue 8 item 3): 1,000 DERP clients handshake and forward pairwise
through each io mode, with the relay's memory per connection reported and bounded.
The measurement is bench/scale.py's, so the test and the figures agree."""

from __future__ import annotations

import importlib.util
import resource
import sys
from pathlib import Path
from typing import Any

import pytest

from labkit import Relay, RelayConfig

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = 1000
#: Plain connections cost ~9 KiB of relay RSS each here (slot, queues, buffers, peer
#: entry); TLS adds OpenSSL's state (~38 KiB). Bounds with room for allocator noise.
KIB_PER_CONN = {"off": 24.0, "user": 64.0}


def _bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_scale", ROOT / "bench" / "scale.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_scale"] = module
    spec.loader.exec_module(module)
    return module


scale = _bench()


def test_open_file_limit_error_is_clear(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda _: (256, 512))
    with pytest.raises(scale.LimitError, match=r"hard limit is 512: raise it"):
        scale.ensure_open_files(CLIENTS)


@pytest.mark.parametrize(("io", "workers", "tls"), [
    ("epoll", 1, "off"), ("epoll", 4, "off"), ("uring", 1, "off"), ("uring", 4, "off"),
    ("uring", 4, "user"),
])
def test_thousand_clients_forward_pairwise(io: str, workers: int, tls: str) -> None:
    with Relay(RelayConfig(io=io, workers=workers, tls=tls)) as relay:
        result = scale.run_scale(relay, CLIENTS)
        print(result.line())
        assert result.conns_current >= CLIENTS
        assert 0 < result.kib_per_conn < KIB_PER_CONN[tls], result.line()
        relay.check()
