"""Security defaults (issue 8 item 5): loopback by default and a warning otherwise, TLS
key files private, the mesh key compared in constant time, peer lists only for mesh
peers, and no secret in the relay's output."""

from __future__ import annotations

import re
import secrets
import stat
import sys
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conformance.helpers import ARRIVE, connect_to  # noqa: E402

from labkit import derp, tlscert  # noqa: E402
from labkit.config import RelayConfig  # noqa: E402
from labkit.procs import relay_host  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def test_default_listen_address_is_loopback() -> None:
    assert RelayConfig().host == "127.0.0.1"
    assert RelayConfig.from_args([]).host == "127.0.0.1"


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "192.0.2.10", "10.1.2.3"])
def test_binding_beyond_this_machine_warns(address: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert relay_host.warn_if_exposed(address)
    assert "reachable from other machines" in capsys.readouterr().err


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.2", "::1"])
def test_binding_loopback_is_quiet(address: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert not relay_host.warn_if_exposed(address)
    assert capsys.readouterr().err == ""


def test_self_signed_key_is_0600_in_a_0700_directory() -> None:
    cert, key = tlscert.self_signed()
    try:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
        assert key.parent == cert.parent
    finally:
        for p in (cert, key):
            p.unlink()
        key.parent.rmdir()


def test_relay_tls_files_private_while_running_and_gone_after() -> None:
    from labkit import Relay

    with Relay(RelayConfig(tls="user")) as r:
        cert = Path(r.cert_file or "")
        key = cert.parent / "relay.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert stat.S_IMODE(cert.parent.stat().st_mode) == 0o700
    assert not cert.parent.exists(), "the relay left its generated TLS key behind"


def test_mesh_key_compared_in_constant_time() -> None:
    """The relay compares the mesh key with sodium_memcmp (a wrong last digit being
    refused is tests/conformance/test_mesh.py and tests/adversarial/test_identity.py)."""
    src = (ROOT / "native" / "src" / "relay" / "session.c").read_text()
    assert re.search(r"sodium_memcmp\(info\.mesh_key,\s*w->relay->cfg\.mesh_key,\s*32\)", src)
    assert not re.search(r"\bmemcmp\([^)]*mesh_key", src.replace("sodium_memcmp", ""))


@pytest.fixture(scope="module")
def secret_relay(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A TLS relay whose node key and mesh key come from files, so neither is on the
    command line; yields (relay, private key hex, mesh key hex)."""
    from labkit import Relay

    d = tmp_path_factory.mktemp("secrets")
    private_hex, mesh_hex = secrets.token_hex(32), secrets.token_hex(32)
    (d / "node.key").write_text(f"privkey:{private_hex}\n")
    (d / "mesh.key").write_text(mesh_hex + "\n")
    cfg = RelayConfig(tls="user", workers=2, key_file_relay=str(d / "node.key"),
                      mesh_key_file=str(d / "mesh.key"), handshake_timeout=1.0)
    with Relay(cfg) as r:
        yield r, private_hex, mesh_hex


def test_peer_lists_never_reach_regular_clients(secret_relay: Any) -> None:
    """Clients come and go around a regular client and one with a wrong mesh key: neither
    ever gets a PeerPresent; the wrong-key one asking with WatchConns is closed before
    any; a real mesh peer gets them."""
    r, _, mesh_hex = secret_relay
    regular = connect_to(r)
    wrong = connect_to(r, client_info={"meshKey": mesh_hex[:-1] + (
        "0" if mesh_hex[-1] != "0" else "1")})
    mesh = connect_to(r, client_info={"meshKey": mesh_hex})
    mesh.watch_conns()
    wrong.watch_conns()
    assert wrong.expect_closed(ARRIVE)
    assert not any(isinstance(f, derp.PeerPresent) for f in wrong.skipped_frames)
    churn = [connect_to(r) for _ in range(3)]
    for c in churn:
        c.close()
    seen = mesh.recv_until(lambda f: isinstance(f, derp.PeerGone)
                           and f.key == churn[-1].public_key, ARRIVE)
    assert seen is not None
    deadline = time.monotonic() + 0.5
    while (left := deadline - time.monotonic()) > 0:
        try:
            f = regular.recv(left)
        except TimeoutError:
            break
        assert not isinstance(f, derp.PeerPresent | derp.PeerGone), f"leaked {f!r}"
    for c in (regular, mesh):
        c.close()


def test_no_secret_in_the_relay_output(secret_relay: Any) -> None:
    """After good clients, bad boxes, wrong mesh keys and a stalled handshake, neither the
    relay's stderr nor its announcement nor its command line holds the node key, the
    mesh key or the TLS private key."""
    r, private_hex, mesh_hex = secret_relay
    c = connect_to(r)
    c.ping(b"12345678", ARRIVE)
    bad = connect_to(r, handshake=False)
    bad.send_client_info(seal_to=bytes(range(32)))
    assert bad.expect_closed(ARRIVE)
    stalled = connect_to(r, handshake=False)
    assert stalled.expect_closed(3.0)
    with pytest.raises(derp.HandshakeError):
        connect_to(r, client_info={"meshKey": mesh_hex[:10]})
    c.close()

    tls_key = (Path(r.cert_file).parent / "relay.key").read_text()
    tls_body = "".join(tls_key.strip().splitlines()[1:-1])
    with open(f"/proc/{r.pid}/cmdline", "rb") as f:
        cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
    out = "\n".join([r.stderr_tail, str(r.info), repr(r), cmdline])
    for name, secret in (("node key", private_hex), ("mesh key", mesh_hex),
                         ("TLS key", tls_body[:40])):
        for form in (secret, secret.upper()):
            assert form not in out, f"the {name} appears in the relay's output"
    assert bytes.fromhex(private_hex) not in out.encode(errors="replace")


def test_private_key_on_the_command_line_is_documented_as_visible() -> None:
    """--private-key HEX is visible in ps; the flag says so, and a key file avoids it."""
    help_text = " ".join(a.help or "" for a in _relay_parser()._actions)
    assert "visible in ps" in help_text


def _relay_parser() -> Any:
    import argparse

    from labkit.config import add_arguments

    p = argparse.ArgumentParser(add_help=False)
    add_arguments(p)
    return p
