"""Presets for the two real relays the lab's headline is about, as ExternalRelays.

    derper()                 # Tailscale's derper, plain HTTP, on a free loopback port
    derper(tls=True)         # the same over TLS, with a certificate labkit makes (key 0600)
    hyper_derp(workers=2)    # Hyper-DERP, plain, 2 workers

derper is run with what matters for a fair lab run turned off: STUN (-stun=false), the
extra HTTP listener of its TLS mode (-http-port -1), meshing (-mesh-psk-file ''), and
bound to 127.0.0.1. Its -dev flag is *not* used although the plain preset is what -dev
serves: -dev forces -a :3340, every interface on a fixed port; `-a 127.0.0.1:PORT`
without -certmode manual serves the same plain HTTP on loopback. Its node key goes to a
fresh 0600 file in the run's state directory (-c).

Hyper-DERP (`hyper-derp`) takes --port and --workers; it has no bind-address flag, so it
listens on every interface of this machine for the length of a run (the settings say so).
"""

from __future__ import annotations

from labkit.procs.external import ExternalRelay
from labkit.relay_binaries import BINARIES, DERPER_INSTALL, HYPER_DERP_INSTALL, find


def _binary(preset: str, path: str | None) -> str:
    """An explicit path, the one found, or the bare name (validate() then says it is
    missing, with the install hint)."""
    return path or find(preset) or BINARIES[preset][0]


def derper(*, tls: bool = False, path: str | None = None, cores: int = 1) -> ExternalRelay:
    """Tailscale's derper, plain or TLS (manual certificates labkit makes for 127.0.0.1)."""
    argv = [_binary("derper", path), "-a", "{host}:{port}", "-stun=false", "-http-port",
            "-1", "-mesh-psk-file", "", "-c", "{state}/derper.key"]
    settings = {"listen": "127.0.0.1 (free port)", "stun": "off", "http-port": "off",
                "mesh": "off", "verify-clients": "off (default)"}
    if tls:
        # manual mode reads {certdir}/{hostname}.crt and .key; an IP hostname skips SNI
        argv += ["-certmode", "manual", "-certdir", "{certdir}", "-hostname", "127.0.0.1"]
        settings |= {"tls": "manual cert by labkit (EC P-256, key 0600)"}
    else:
        settings |= {"tls": "off (plain HTTP, what -dev serves)"}
    return ExternalRelay(command=tuple(argv), name="derper-tls" if tls else "derper",
                         tls=tls, cert_name="127.0.0.1", cores=cores, settings=settings,
                         install_hint=f"install: {DERPER_INSTALL}")


def hyper_derp(*, workers: int = 1, path: str | None = None) -> ExternalRelay:
    """Hyper-DERP, plain, with `workers` worker threads (and as many relay cores)."""
    argv = [_binary("hyper-derp", path), "--port", "{port}", "--workers", str(workers)]
    settings = {"workers": str(workers), "tls": "off",
                "listen": "all interfaces (no bind-address flag), free port"}
    return ExternalRelay(command=tuple(argv), name=f"hyper-derp-{workers}w", cores=workers,
                         settings=settings, install_hint=f"install: {HYPER_DERP_INSTALL}")


PRESETS = {"derper": lambda: derper(), "derper-tls": lambda: derper(tls=True),
           "hyper-derp": lambda: hyper_derp()}
