"""RelayConfig: validation messages name the fix, CLI round trip, the C struct mapping."""

import json
import math
from pathlib import Path
from typing import Any

import pytest

from labkit import keys
from labkit.config import (
    PRIVATE_KEY_ENV,
    SWITCHES,
    URING_ONLY,
    ConfigError,
    RelayConfig,
    secret_env,
)
from labkit.native import contract

HEX64 = "ab" * 32


@pytest.fixture
def pem_pair(tmp_path: Path) -> tuple[str, str]:
    from labkit import tlscert

    cert, key = tlscert.self_signed(tmp_path)
    return str(cert), str(key)


def test_defaults_are_valid() -> None:
    cfg = RelayConfig()
    assert cfg.validate() is cfg
    assert (cfg.host, cfg.port, cfg.io, cfg.tls, cfg.workers) == ("127.0.0.1", 0, "epoll", "off", 1)
    assert (cfg.handshake_timeout, cfg.write_timeout, cfg.keepalive) == (10.0, 2.0, 60.0)
    assert (cfg.queue_depth, cfg.max_conns, cfg.pool_packets) == (32, 4096, 16384)


@pytest.mark.parametrize(
    ("changes", "fix"),
    [
        ({"io": "kqueue"}, "io='kqueue' is not known: choose one of 'epoll', 'uring'"),
        ({"tls": "ssl"}, "choose one of 'off', 'user', 'ktls'"),
        ({"host": "relay.example"}, "is not an IP address: use 127.0.0.1"),
        ({"port": 70000}, "port=70000 must be an integer 0..65535"),
        ({"port": -1}, "0..65535 (0 = any free port)"),
        ({"port": "80"}, "port='80' must be an integer"),
        ({"workers": 0}, "workers=0 must be an integer 1..64"),
        ({"workers": 65}, "workers=65 must be an integer 1..64"),
        ({"batch": "yes"}, "batch='yes' must be True, False or None"),
        ({"pin_cpus": 1}, "pin_cpus=1 must be True or False"),
        ({"handshake_timeout": 0}, "handshake_timeout=0 must be seconds > 0 (default 10.0)"),
        ({"keepalive": math.nan}, "keepalive=nan must be seconds > 0"),
        ({"write_timeout": -1.0}, "write_timeout=-1.0 must be seconds >= 0 (0 = no write"),
        ({"queue_depth": 0}, "queue_depth=0 must be an integer 1..65536"),
        ({"max_conns": 2**21}, "max_conns=2097152 must be an integer 1..1048576"),
        ({"pool_packets": 10}, "pool_packets=10 must be an integer 64.."),
        ({"private_key": "abc"}, "private_key must be exactly 64 hex digits"),
        ({"private_key": HEX64, "key_file_relay": "/x"}, "key_file_relay or private_key, not both"),
        ({"cert_file": "/a.pem", "key_file": "/b.pem"}, "only apply with TLS: set tls='user'"),
        ({"tls": "user", "cert_file": "/a.pem"}, "give both cert_file and key_file, or neither"),
        ({"mesh_key_file": "/nonexistent/mesh"}, "mesh_key_file '/nonexistent/mesh' cannot be"),
    ],
)
def test_bad_field_message_names_the_fix(changes: dict[str, Any], fix: str) -> None:
    with pytest.raises(ConfigError) as e:
        RelayConfig(**changes).validate()
    assert fix in str(e.value)


@pytest.mark.parametrize("switch", sorted(URING_ONLY))
def test_uring_only_switch_with_epoll_says_so(switch: str) -> None:
    with pytest.raises(ConfigError, match=f"{switch}=True applies to io_uring only: set "
                                          f"io='uring' or leave {switch} unset"):
        RelayConfig(io="epoll", **{switch: True}).validate()
    excluded = dict.fromkeys(contract.SWITCHES[switch].excludes, False)
    RelayConfig(io="uring", **{switch: True}, **excluded).validate()
    RelayConfig(io="epoll", **{switch: False}).validate()


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(ConfigError) as e:
        RelayConfig(io="x", port=-5, workers=0).validate()
    msg = str(e.value)
    assert "io='x'" in msg and "port=-5" in msg and "workers=0" in msg


def test_unreadable_cert_is_refused(tmp_path: Path, pem_pair: tuple[str, str]) -> None:
    cert, key = pem_pair
    missing = str(tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match=r"cert_file '.*missing.pem' cannot be read \(No such"):
        RelayConfig(tls="user", cert_file=missing, key_file=key).validate()
    # A directory cannot be read either; root ignores file modes, so this stands in for 0000.
    with pytest.raises(ConfigError, match=r"key_file '.*' cannot be read \(Is a directory\)"):
        RelayConfig(tls="user", cert_file=cert, key_file=str(tmp_path)).validate()
    not_pem = tmp_path / "cert.der"
    not_pem.write_bytes(b"\x30\x82\x01\x0a")
    with pytest.raises(ConfigError, match="is not PEM"):
        RelayConfig(tls="user", cert_file=str(not_pem), key_file=key).validate()
    RelayConfig(tls="user", cert_file=cert, key_file=key).validate()


@pytest.mark.parametrize(
    ("content", "ok"),
    [(HEX64 + "\n", True), ("  " + HEX64.upper() + "  ", True), (HEX64[:-2], False),
     ("zz" * 32, False), ("", False)],
    ids=["hex-newline", "upper-spaces", "short", "not-hex", "empty"],
)
def test_mesh_key_file_must_be_64_hex_digits(tmp_path: Path, content: str, ok: bool) -> None:
    path = tmp_path / "mesh.key"
    path.write_text(content)
    cfg = RelayConfig(mesh_key_file=path)
    assert cfg.mesh_key_file == str(path)  # Path accepted, stored as str
    if ok:
        cfg.validate()
    else:
        with pytest.raises(ConfigError, match="exactly 64 hex digits.*`openssl rand"):
            cfg.validate()


def test_relay_key_file_formats(tmp_path: Path) -> None:
    priv = keys.generate_private_key()
    derper = tmp_path / "derper.key"
    derper.write_text(json.dumps({"PrivateKey": "privkey:" + priv.hex()}))
    plain = tmp_path / "plain.key"
    plain.write_text(priv.hex() + "\n")
    for path in (derper, plain):
        cfg = RelayConfig(key_file_relay=str(path)).validate()
        assert cfg.resolve_private_key() == priv
    bad = tmp_path / "bad.key"
    bad.write_text('{"PrivateKey": "privkey:12"}')
    with pytest.raises(ConfigError, match="key_file_relay: private key in .* must be exactly 64"):
        RelayConfig(key_file_relay=str(bad)).validate()


def test_private_key_is_clamped_and_fresh_when_unset() -> None:
    k = RelayConfig(private_key="ff" * 32).resolve_private_key()
    assert k[0] & 7 == 0 and k[31] & 0x80 == 0 and k[31] & 0x40
    a, b = RelayConfig().resolve_private_key(), RelayConfig().resolve_private_key()
    assert a != b and len(a) == 32
    assert keys.public_key(a) != keys.public_key(b)


def test_switch_defaults_per_mode() -> None:
    uring = RelayConfig(io="uring").switches()
    assert uring == {
        "batch": True, "multishot": True, "provided_buffers": True, "coalesce": True,
        "sqpoll": False, "defer_taskrun": True, "single_issuer": True, "poll_recv": False,
        "backpressure": True, "gather_wait": False,
    }
    assert RelayConfig(io="epoll").switches() == dict.fromkeys(SWITCHES, False)
    assert RelayConfig(io="epoll", coalesce=True).switches()["coalesce"] is True
    assert RelayConfig(io="uring", multishot=False).switches()["multishot"] is False


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (RelayConfig(io="uring", multishot=True, provided_buffers=False, poll_recv=False),
         r"multishot=True needs provided_buffers: .*turn provided_buffers on too"),
        (RelayConfig(io="uring", single_issuer=False),
         r"defer_taskrun=True needs single_issuer: io_uring defers completion work only"),
        (RelayConfig(io="uring", sqpoll=True),
         r"sqpoll=True cannot be on with defer_taskrun: .*set defer_taskrun=False with it"),
    ],
)
def test_switch_combinations_the_kernel_refuses_are_refused_first(
        cfg: RelayConfig, message: str) -> None:
    """From the contract's requires/excludes columns, before any ring is made."""
    with pytest.raises(ConfigError, match=message):
        cfg.validate()


def test_sqpoll_validates_once_defer_taskrun_is_off() -> None:
    assert RelayConfig(io="uring", sqpoll=True, defer_taskrun=False).validate()


@pytest.mark.parametrize(
    "cfg",
    [
        RelayConfig(),
        RelayConfig(host="::1", port=3340, workers=4, pin_cpus=True),
        RelayConfig(io="uring", batch=False, sqpoll=True, multishot=None, coalesce=False,
                    provided_buffers=True, defer_taskrun=False, single_issuer=False),
        RelayConfig(tls="user", cert_file="/c.pem", key_file="/k.pem", mesh_key_file="/m",
                    key_file_relay="/r.key"),
        RelayConfig(private_key=HEX64, handshake_timeout=0.25, write_timeout=0,
                    keepalive=1.5, queue_depth=7, max_conns=9, pool_packets=100),
    ],
)
def test_args_round_trip(cfg: RelayConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    """argv plus the environment a Relay gives its child make the same config again."""
    args = cfg.to_args()
    assert all(isinstance(a, str) for a in args)
    for name, value in secret_env(cfg).items():
        monkeypatch.setenv(name, value)
    assert RelayConfig.from_args(args) == cfg


def test_private_key_stays_out_of_argv_repr_and_storage() -> None:
    cfg = RelayConfig(private_key=HEX64)
    assert HEX64 not in " ".join(cfg.to_args())
    assert HEX64 not in repr(cfg)
    assert cfg.to_dict()["private_key"] == "<redacted>"
    assert secret_env(cfg) == {PRIVATE_KEY_ENV: HEX64}


def test_to_args_writes_only_what_differs() -> None:
    assert RelayConfig().to_args() == ["--listen", "127.0.0.1:0"]
    assert RelayConfig(io="uring", sqpoll=False).to_args() == [
        "--listen", "127.0.0.1:0", "--io", "uring", "--no-sqpoll"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--listen", "127.0.0.1"], "must be HOST:PORT"),
        (["--listen", "127.0.0.1:http"], "must be HOST:PORT"),
        (["--workers", "two"], "invalid int value"),
        (["--frobnicate"], "unrecognized arguments"),
    ],
)
def test_from_args_raises_config_error(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RelayConfig.from_args(argv)


def test_to_dict_resolves_switches_for_storage() -> None:
    d = RelayConfig(io="uring", sqpoll=True).to_dict()
    assert d["batch"] is True and d["sqpoll"] is True and d["io"] == "uring"
    assert json.loads(json.dumps(d)) == d


def test_to_c_fills_the_struct(tmp_path: Path) -> None:
    from labkit.config import MAX_WORKERS
    from labkit.native import ffi, lib

    assert lib.LK_MAX_WORKERS == MAX_WORKERS
    for s in SWITCHES:
        assert getattr(lib, "LK_SW_" + s.upper()) > 0
    mesh = tmp_path / "mesh"
    mesh.write_text("cd" * 32)
    cfg = RelayConfig(io="uring", workers=3, sqpoll=True, multishot=False, poll_recv=False,
                      defer_taskrun=False, pin_cpus=True,
                      mesh_key_file=str(mesh), write_timeout=0.0015,
                      keepalive=30, queue_depth=8, max_conns=10, pool_packets=99)
    priv = keys.generate_private_key()
    c, keep = cfg.to_c(ffi, lib, listen_fd=7, ready_fd=8, private_key=priv,
                       shm_name="/labkit-x", cert_file="/c.pem", key_file=None)
    assert (c.listen_fd, c.ready_fd, c.io, c.workers) == (7, 8, lib.LK_IO_URING, 3)
    expected = (lib.LK_SW_BATCH | lib.LK_SW_PROVIDED_BUFFERS | lib.LK_SW_COALESCE
                | lib.LK_SW_SQPOLL | lib.LK_SW_SINGLE_ISSUER | lib.LK_SW_BACKPRESSURE)
    assert c.switches == expected and c.pin_cpus == 1
    assert c.tls == lib.LK_TLS_OFF
    assert ffi.string(c.cert_file) == b"/c.pem" and c.key_file == ffi.NULL
    assert ffi.string(c.shm_name) == b"/labkit-x"
    assert bytes(c.private_key) == priv
    assert c.has_mesh_key == 1 and bytes(c.mesh_key) == bytes.fromhex("cd" * 32)
    assert (c.handshake_timeout_ms, c.write_timeout_ms, c.keepalive_ms) == (10000, 2, 30000)
    assert (c.queue_depth, c.max_conns, c.pool_packets) == (8, 10, 99)
    assert keep[0] is c
