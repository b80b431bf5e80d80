"""Relay configuration: validated, serialisable, and mapped to the C struct in one place.

`RelayConfig` is what a notebook, the CLI (`labkit relay ...`) and stored results share:
`to_args()`/`from_args()` round-trip through the command line that starts a relay
process, `to_dict()` is what a result records, and `to_c()` fills `lk_relay_config`.

Its optimisation switches and its integer limits are not written here: they are the
rows of the contract tables in native/include/labkit.h (labkit.native.contract), so a
switch added there is a RelayConfig field, a `--flag` and a dashboard checkbox at once.
validate() checks what only Python knows (addresses, files, keys, seconds) and then asks
the relay's own check (lk_relay_config_check), so a config it passes is one the relay
takes, refused with the relay's own words where not.
"""

import argparse
import dataclasses
import ipaddress
import os
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from labkit import keys
from labkit.native import contract
from labkit.native.cstrings import c_string
from labkit.problems import ConfigError, Problem, raise_if

IO_MODES = ("epoll", "uring")
TLS_MODES = ("off", "user", "ktls")
# How a relay's node key reaches its process (never argv: ps shows argv to every user).
PRIVATE_KEY_ENV = "LABKIT_RELAY_PRIVATE_KEY"

SWITCHES: tuple[str, ...] = tuple(contract.SWITCHES)
URING_ONLY = frozenset(s.name for s in contract.SWITCHES.values() if not s.applies_to("epoll"))
# What an unset (None) switch means in each mode: the table's defaults. io_uring's are the
# optimisations that cost nothing at idle (each worker owns its ring, so single_issuer and
# defer_taskrun constrain nothing). Opt-in: sqpoll spins a kernel thread; poll_recv costs
# throughput once defer_taskrun is on; gather_wait saves wake-ups under load but costs
# CPU and latency at a trickle (bench/modes.py measures each).
MODE_DEFAULTS: dict[str, dict[str, bool]] = {
    io: {s.name: s.default[io] for s in contract.SWITCHES.values()} for io in IO_MODES}
MAX_WORKERS = contract.LIMITS["workers"].max
_MAX_SECONDS = (2**32 - 1) / 1000  # the C struct holds milliseconds in a uint32_t
_UINT32_MAX = 2**32 - 1


@dataclass(frozen=True)
class _RelayConfigBase:
    """RelayConfig without its switches (added from the contract below)."""

    host: str = "127.0.0.1"
    port: int = 0  # 0: the kernel picks a free port; the relay reports it
    io: Literal["epoll", "uring"] = "epoll"
    tls: Literal["off", "user", "ktls"] = "off"
    workers: int = contract.LIMITS["workers"].default
    pin_cpus: bool = False
    cert_file: str | None = None  # None in a TLS mode: a fresh self-signed pair
    key_file: str | None = None
    key_file_relay: str | None = None  # node key file; None (and no private_key): random key
    # node key as 64 hex digits: a secret, so never in repr, stored results or argv
    private_key: str | None = field(default=None, repr=False)
    mesh_key_file: str | None = None
    handshake_timeout: float = 10.0
    write_timeout: float = 2.0  # 0: no per-destination write deadline
    keepalive: float = 60.0
    queue_depth: int = contract.LIMITS["queue_depth"].default
    max_conns: int = contract.LIMITS["max_conns"].default
    pool_packets: int = contract.LIMITS["pool_packets"].default
    accept_limit: int = contract.LIMITS["accept_limit"].default  # 0: no accept limit
    accept_burst: int = contract.LIMITS["accept_burst"].default

    def __post_init__(self) -> None:
        # Paths are stored as str so to_dict()/to_args() need no conversion.
        for name in ("cert_file", "key_file", "key_file_relay", "mesh_key_file"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                object.__setattr__(self, name, os.fspath(value))

    def replace(self, **changes: Any) -> "RelayConfig":
        return dataclasses.replace(self, **changes)

    def switches(self) -> dict[str, bool]:
        """Every switch resolved: the explicit value, else the io mode's default."""
        defaults = MODE_DEFAULTS.get(self.io, MODE_DEFAULTS["epoll"])
        return {
            s: defaults[s] if getattr(self, s) is None else bool(getattr(self, s))
            for s in SWITCHES
        }

    # ---- validation ------------------------------------------------------------

    def validate(self) -> "RelayConfig":
        """Raise ConfigError listing every problem and its fix; return self when valid."""
        raise_if(self._problems(), "relay config")
        return self

    def _problems(self) -> list[Problem]:
        p: list[Problem] = []
        for name, choices in (("io", IO_MODES), ("tls", TLS_MODES)):
            if getattr(self, name) not in choices:
                p.append(Problem(name, getattr(self, name), "is not known",
                                 "choose one of " + ", ".join(repr(c) for c in choices),
                                 cli_fix="choose one of " + ", ".join(choices)))
        if self.host != "localhost":
            try:
                ipaddress.ip_address(self.host)
            except ValueError:
                p.append(Problem("host", self.host, "is not an IP address",
                                 "use 127.0.0.1 (this machine only) or another address of "
                                 "this machine"))
        if not _is_int(self.port) or not 0 <= self.port <= 65535:
            p.append(Problem("port", self.port, "must be an integer 0..65535 (0 = any free "
                             "port)"))
        for name in contract.LIMITS:
            if not _is_int(getattr(self, name)):
                p.append(Problem(name, getattr(self, name), "must be an integer"))
        for s in SWITCHES:
            value = getattr(self, s)
            if value is not None and not isinstance(value, bool):
                p.append(Problem(s, value, "must be True, False or None (the io mode's "
                                 "default)"))
        if not isinstance(self.pin_cpus, bool):
            p.append(Problem("pin_cpus", self.pin_cpus, "must be True or False"))
        p += self._tls_problems()
        p += self._key_problems()
        for name in ("handshake_timeout", "keepalive"):
            value = getattr(self, name)
            if not _is_number(value) or not 0.0 < value <= _MAX_SECONDS:
                p.append(Problem(name, value, f"must be seconds > 0 (default "
                                 f"{_default(name)})"))
        if not _is_number(self.write_timeout) or not 0 <= self.write_timeout <= _MAX_SECONDS:
            p.append(Problem("write_timeout", self.write_timeout,
                             "must be seconds >= 0 (0 = no write deadline)"))
        return p + self._relay_problems(flagged={x.field for x in p})

    def _relay_problems(self, flagged: set[str]) -> list[Problem]:
        """The relay's check (limits, which switches apply, what needs what), in its words.
        Fields already refused above go in as their defaults, so the rest is still checked
        and every problem is listed at once."""
        from labkit.native import ffi, lib

        base = RelayConfig()
        checked = self.replace(**{f: getattr(base, f) for f in flagged if hasattr(base, f)})
        cfg = ffi.new("lk_relay_config *")
        lib.lk_relay_config_defaults(cfg)
        checked._fill_checked_fields(cfg, lib)
        values = vars(self) | self.switches()  # a switch as it runs: None means its default
        return [Problem(name, values.get(name), why, fix)
                for name, why, fix in contract.relay_config_problems(cfg)
                if name not in flagged]

    def _fill_checked_fields(self, cfg: Any, lib: Any) -> None:
        """The fields lk_relay_config_check reads. Integers outside a uint32 are clamped to
        its ends, which are outside every limit, so the check still refuses them."""
        cfg.io = {"epoll": lib.LK_IO_EPOLL, "uring": lib.LK_IO_URING}[self.io]
        cfg.tls = {"off": lib.LK_TLS_OFF, "user": lib.LK_TLS_USER, "ktls": lib.LK_TLS_KTLS}[
            self.tls]
        cfg.workers = max(-1, min(self.workers, contract.LIMITS["workers"].max + 1))
        for name in contract.LIMITS:
            if name != "workers":
                setattr(cfg, name, max(0, min(getattr(self, name), _UINT32_MAX)))
        cfg.switches = contract.switch_bits(self.switches())
        cfg.pin_cpus = int(self.pin_cpus)
        cfg.handshake_timeout_ms = round(self.handshake_timeout * 1000)
        cfg.write_timeout_ms = round(self.write_timeout * 1000)
        cfg.keepalive_ms = round(self.keepalive * 1000)

    def _tls_problems(self) -> list[Problem]:
        given = [n for n in ("cert_file", "key_file") if getattr(self, n) is not None]
        if not given:
            return []
        if self.tls == "off":
            names = " and ".join(f"{{{g}}}" for g in given)
            return [Problem(given[0], getattr(self, given[0]),
                            f"{names} only apply with TLS", "set {tls=user} or drop them",
                            form="")]
        if len(given) == 1:
            return [Problem(given[0], getattr(self, given[0]),
                            "give both {cert_file} and {key_file}, or neither (then a "
                            "self-signed pair is made)", form="")]
        p = []
        for name in ("cert_file", "key_file"):
            path = getattr(self, name)
            try:
                with open(path, "rb") as f:
                    head = f.read(1 << 16)
            except OSError as e:
                p.append(Problem(name, path, f"cannot be read ({e.strerror})",
                                 "fix the path or its permissions, or leave {cert_file} and "
                                 "{key_file} unset for a self-signed pair", form=" "))
                continue
            if b"-----BEGIN " not in head:
                p.append(Problem(name, path, "is not PEM (no '-----BEGIN' line)",
                                 "convert it with openssl, or leave {cert_file} and "
                                 "{key_file} unset", form=" "))
        return p

    def _key_problems(self) -> list[Problem]:
        p = []
        if self.key_file_relay is not None and self.private_key is not None:
            p.append(Problem("private_key", "<redacted>",
                             "give {key_file_relay} or {private_key}, not both", form=""))
        if self.private_key is not None:
            try:
                keys.parse_hex_key(str(self.private_key), "private_key")
            except keys.KeyFormatError as e:
                p.append(Problem("private_key", "<redacted>", str(e),
                                 "generate one with `openssl rand -hex 32`, or leave it unset",
                                 form=""))
        if self.key_file_relay is not None:
            try:
                keys.load_private_key(self.key_file_relay)
            except OSError as e:
                p.append(Problem("key_file_relay", self.key_file_relay,
                                 f"cannot be read ({e.strerror})", form=" "))
            except keys.KeyFormatError as e:
                p.append(Problem("key_file_relay", self.key_file_relay,
                                 f"{{key_file_relay}}: {e} (or a derper JSON config with "
                                 "PrivateKey)", form=""))
        if self.mesh_key_file is not None:
            try:
                keys.load_mesh_key(self.mesh_key_file)
            except OSError as e:
                p.append(Problem("mesh_key_file", self.mesh_key_file,
                                 f"cannot be read ({e.strerror})", form=" "))
            except keys.KeyFormatError as e:
                p.append(Problem("mesh_key_file", self.mesh_key_file,
                                 f"{{mesh_key_file}}: {e}",
                                 "write one with `openssl rand -hex 32 > FILE`", form=""))
        return p

    # ---- serialisation ----------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain values for storage, with switches resolved: a result must say what ran,
        not that a default did."""
        plain = dataclasses.asdict(self) | self.switches()
        if plain["private_key"] is not None:
            plain["private_key"] = "<redacted>"
        return plain

    def to_args(self) -> list[str]:
        """Command-line arguments for `labkit relay` that from_args() turns back into self.
        Only fields that differ from the defaults are written. private_key is never
        written (any user can read argv with ps): secret_env() passes it in PRIVATE_KEY_ENV,
        which from_namespace() reads."""
        args = ["--listen", _format_listen(self.host, self.port)]
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("host", "port", "private_key") or value == f.default:
                continue
            flag = "--" + _FLAG_NAMES.get(f.name, f.name).replace("_", "-")
            if f.name in SWITCHES:
                args.append(flag if value else f"--no-{flag[2:]}")
            elif f.name == "pin_cpus":
                args.append(flag)
            else:
                args += [flag, str(value)]
        return args

    @classmethod
    def from_args(cls, argv: list[str]) -> "RelayConfig":
        """Parse `labkit relay` arguments; bad syntax raises ConfigError (never exits)."""
        parser = _RaisingParser(prog="labkit relay", add_help=False)
        add_arguments(parser)
        return from_namespace(parser.parse_args(argv))

    # ---- the C side -------------------------------------------------------------

    def resolve_private_key(self) -> bytes:
        """The node key this config names: private_key, key_file_relay, or a fresh one."""
        if self.private_key is not None:
            return keys.clamp(keys.parse_hex_key(self.private_key, "private_key"))
        if self.key_file_relay is not None:
            return keys.load_private_key(self.key_file_relay)
        return keys.generate_private_key()

    def to_c(self, ffi: Any, lib: Any, *, listen_fd: int, ready_fd: int,
             private_key: bytes, shm_name: str | None, cert_file: str | None,
             key_file: str | None) -> tuple[Any, list[Any]]:
        """Fill an `lk_relay_config` (the one place that knows its fields).

        Returns (cfg, keepalive): the C struct points into the keepalive objects, which the
        caller must hold until lk_relay_run returns.
        """
        cfg = ffi.new("lk_relay_config *")
        lib.lk_relay_config_defaults(cfg)
        keepalive: list[Any] = [cfg]

        def cstr(s: str | None) -> Any:
            return c_string(ffi, keepalive, s)

        cfg.listen_fd = listen_fd
        cfg.ready_fd = ready_fd
        self._fill_checked_fields(cfg, lib)
        cfg.cert_file = cstr(cert_file)
        cfg.key_file = cstr(key_file)
        ffi.memmove(cfg.private_key, private_key, keys.KEY_LEN)
        if self.mesh_key_file is not None:
            cfg.has_mesh_key = 1
            ffi.memmove(cfg.mesh_key, keys.load_mesh_key(self.mesh_key_file), keys.KEY_LEN)
        cfg.shm_name = cstr(shm_name)
        return cfg, keepalive


# The switches are fields too, one per row of the contract's switch table; None means
# the io mode's default (MODE_DEFAULTS).
RelayConfig = dataclasses.make_dataclass(
    "RelayConfig", [(name, bool | None, field(default=None)) for name in SWITCHES],
    bases=(_RelayConfigBase,), frozen=True)
RelayConfig.__module__ = __name__  # for pickling and repr: it lives here
RelayConfig.__doc__ = (
    "A relay: its address, io mode, TLS, workers, limits, keys, timeouts, and one field per "
    "optimisation switch of the contract (" + ", ".join(SWITCHES) + "; None: the io "
    "mode's default). validate() refuses what the relay would refuse.")


# ---- command line ----------------------------------------------------------------

# Fields whose flag is not simply the field name: --cert/--key follow derper.
_FLAG_NAMES = {"cert_file": "cert", "key_file": "key", "key_file_relay": "relay_key_file"}


class _RaisingParser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise ConfigError(f"labkit relay: {message}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `labkit relay` options (shared by the CLI and RelayConfig.from_args)."""
    d = RelayConfig()
    parser.add_argument("--listen", default=_format_listen(d.host, d.port),
                        metavar="HOST:PORT", help="address to bind (default %(default)s)")
    add_relay_arguments(parser)
    parser.add_argument("--pin-cpus", action="store_true",
                        help="pin worker i to CPU (i mod the CPU count)")
    parser.add_argument("--cert", dest="cert_file", metavar="FILE", help="PEM certificate")
    parser.add_argument("--key", dest="key_file", metavar="FILE", help="PEM private key")
    parser.add_argument("--relay-key-file", dest="key_file_relay", metavar="FILE",
                        help="node key: derper config JSON or 64 hex digits")
    parser.add_argument("--private-key", metavar="HEX",
                        help="node key, 64 hex digits (visible in ps: lab keys only)")
    parser.add_argument("--mesh-key-file", metavar="FILE", help="64 hex digits")
    parser.add_argument("--handshake-timeout", type=float, default=d.handshake_timeout,
                        metavar="S")
    parser.add_argument("--write-timeout", type=float, default=d.write_timeout, metavar="S")
    parser.add_argument("--keepalive", type=float, default=d.keepalive, metavar="S")
    for name, limit in contract.LIMITS.items():
        if name != "workers":
            parser.add_argument("--" + name.replace("_", "-"), type=int, default=limit.default,
                                metavar="N", help=f"{limit.help} ({limit.unit}, "
                                f"{limit.min}..{limit.max})")


def add_relay_arguments(parser: argparse.ArgumentParser | Any) -> None:
    """What a relay is (io mode, TLS, workers, one --flag/--no-flag per switch of the
    contract): shared by `labkit relay` and `labkit run`."""
    workers = contract.LIMITS["workers"]
    parser.add_argument("--io", default="epoll", choices=IO_MODES, help="event loop")
    parser.add_argument("--tls", default="off", choices=TLS_MODES, help="TLS on the relay")
    parser.add_argument("--workers", type=int, default=workers.default, metavar="N",
                        help=f"{workers.help} ({workers.min}..{workers.max})")
    for s in contract.SWITCHES.values():
        where = "io_uring only" if not s.applies_to("epoll") else "both io modes"
        on = [io for io in IO_MODES if s.default[io]]
        default = f"on with {' and '.join(on)}" if on else "off"
        needs = f"; needs {s.kernel}" if s.kernel else ""
        parser.add_argument("--" + s.name.replace("_", "-"), dest=s.name,
                            action=argparse.BooleanOptionalAction, default=None,
                            help=f"{s.help} ({where}{needs}; default: {default})")


def from_namespace(ns: argparse.Namespace) -> RelayConfig:
    host, port = _parse_listen(ns.listen)
    values = {f.name: getattr(ns, f.name) for f in fields(RelayConfig)
              if f.name not in ("host", "port")}
    if values["private_key"] is None:
        values["private_key"] = os.environ.get(PRIVATE_KEY_ENV)
    return RelayConfig(host=host, port=port, **values)


def secret_env(cfg: RelayConfig) -> dict[str, str]:
    """Environment entries a relay process for cfg needs beyond its arguments."""
    return {PRIVATE_KEY_ENV: cfg.private_key} if cfg.private_key is not None else {}


def _format_listen(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"--listen {text!r} must be HOST:PORT, e.g. 127.0.0.1:0 or [::1]:3340")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _default(name: str) -> Any:
    return next(f.default for f in fields(RelayConfig) if f.name == name)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)
