"""Where the external relays labkit has presets for are on this machine: found on PATH
or by an environment variable, their versions, and how a user installs a missing one.

    find("derper")     # its path, or None
    present()          # {preset: RelayBinary}: what `labkit doctor` lists

Nothing here starts a relay (labkit.procs.presets builds their command lines) or imports
the native module: the doctor uses it on a machine where nothing is built yet.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

DERPER_INSTALL = "go install tailscale.com/cmd/derper@latest (Go 1.23+; the binary lands " \
    "in $(go env GOPATH)/bin: put that on PATH, or set LABKIT_DERPER to its path)"
HYPER_DERP_INSTALL = "build it from the Hyper-DERP repository (CMake, liburing, OpenSSL " \
    "3: see its docs/building.md) or install its release package; then put hyper-derp on " \
    "PATH, or set LABKIT_HYPER_DERP to its path"

# preset -> (binary name, environment variable that may give its path, install hint)
BINARIES = {
    "derper": ("derper", "LABKIT_DERPER", DERPER_INSTALL),
    "hyper-derp": ("hyper-derp", "LABKIT_HYPER_DERP", HYPER_DERP_INSTALL),
}


def find(preset: str) -> str | None:
    """The preset's binary: $LABKIT_<NAME> when set (must be executable), else PATH."""
    name, var, _ = BINARIES[preset]
    given = os.environ.get(var)
    if given:
        return given if os.access(given, os.X_OK) else None
    return shutil.which(name)


@dataclass(frozen=True)
class RelayBinary:
    preset: str
    path: str | None  # None: not found
    version: str  # what `BINARY --version` said, or why not asked
    install: str


def version(path: str, flag: str) -> str:
    """The first line `path flag` prints (5 s at most), or why there is none."""
    try:
        done = subprocess.run([path, flag], capture_output=True, timeout=5, check=False,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"version unknown ({type(e).__name__})"
    text = (done.stdout or done.stderr).decode(errors="replace").strip()
    return text.splitlines()[0] if text else f"version unknown (exit {done.returncode})"


def present() -> dict[str, RelayBinary]:
    """Each external relay labkit knows: found (path) or not, its version, how to install."""
    out = {}
    for preset, (_, _, hint) in BINARIES.items():
        path = find(preset)
        flag = "-version" if preset == "derper" else "--version"
        out[preset] = RelayBinary(preset, path, version(path, flag) if path else "", hint)
    return out
