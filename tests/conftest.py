"""Shared fixtures: relays per mode (tests/modes.py) and DERP clients connected to them.

labkit.procs.relay is imported lazily so unit tests still collect where the native module is
not built.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

_TESTS = str(Path(__file__).parent)
if _TESTS not in sys.path:  # `modes` and `conformance.helpers` under any import mode
    sys.path.insert(0, _TESTS)

from conformance.helpers import connect_to  # noqa: E402
from modes import RELAY_MODES  # noqa: E402

from labkit import derp  # noqa: E402


@pytest.fixture(scope="session")
def mesh_key() -> bytes:
    """The mesh key every test relay is configured with (32 random bytes)."""
    return secrets.token_bytes(32)


@pytest.fixture(scope="session")
def mesh_key_file(tmp_path_factory: pytest.TempPathFactory, mesh_key: bytes) -> Path:
    path = tmp_path_factory.mktemp("mesh") / "mesh.key"
    path.write_text(mesh_key.hex() + "\n")
    return path


@pytest.fixture(scope="session", params=RELAY_MODES)
def relay_mode(request: pytest.FixtureRequest) -> dict[str, Any]:
    """RelayConfig keyword arguments of the mode under test."""
    return dict(request.param)


def _start_relay(mode: dict[str, Any], **overrides: Any) -> Any:
    from labkit import Relay, RelayConfig

    return Relay(RelayConfig(**(mode | overrides)))


@pytest.fixture(scope="session")
def relay(relay_mode: dict[str, Any], mesh_key_file: Path) -> Iterator[Any]:
    """One relay per mode shared by the session: default timeouts, with a mesh key.

    Tests use fresh random client keys, so they do not see each other's traffic.
    """
    with _start_relay(relay_mode, mesh_key_file=str(mesh_key_file)) as r:
        yield r


@pytest.fixture
def make_relay(relay_mode: dict[str, Any]) -> Iterator[Callable[..., Any]]:
    """Factory for a fresh relay of the current mode with config overrides."""
    started: list[Any] = []

    def make(**overrides: Any) -> Any:
        r = _start_relay(relay_mode, **overrides)
        r.__enter__()
        started.append(r)
        return r

    yield make
    for r in reversed(started):
        r.__exit__(None, None, None)


# LABKIT_TRANSPORTS picks transports (comma-separated) like LABKIT_MODES picks modes.
_TRANSPORTS = [t.strip() for t in os.environ.get("LABKIT_TRANSPORTS", "").split(",")
               if t.strip()] or list(derp.TRANSPORTS)


@pytest.fixture(params=_TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    """How `connect` clients carry DERP: raw, or inside WebSocket (every test that uses
    `connect` runs over both)."""
    return str(request.param)


@pytest.fixture
def connect(transport: str) -> Iterator[Callable[..., derp.Client]]:
    """`connect(relay, **kw)` -> connected Client over the test's transport; all are
    closed after the test."""
    clients: list[derp.Client] = []

    def _connect(relay: Any, **kw: Any) -> derp.Client:
        kw.setdefault("transport", transport)
        if kw["transport"] == "websocket" and "fast_start_key" in kw:
            pytest.skip("fast start is raw DERP only: a WebSocket client needs the 101")
        c = connect_to(relay, **kw)
        clients.append(c)
        return c

    yield _connect
    for c in clients:
        c.close()


_relay_deaths: dict[int, str] = {}  # id(shared relay) -> test during which it died


@pytest.fixture(autouse=True)
def _shared_relay_alive(request: pytest.FixtureRequest) -> Iterator[None]:
    """Name the test during which a shared relay died, and fail later tests fast."""
    if "relay" not in request.fixturenames:
        yield
        return
    r = request.getfixturevalue("relay")
    if id(r) in _relay_deaths:
        pytest.fail(f"the shared relay died earlier, during {_relay_deaths[id(r)]}")
    yield
    if r.returncode is not None:
        _relay_deaths[id(r)] = request.node.nodeid
        pytest.fail(
            f"relay exited with code {r.returncode} during this test; stderr tail:\n{r.stderr_tail}"
        )
