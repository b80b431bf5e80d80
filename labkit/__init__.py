"""labkit: a performance lab around a DERP relay written in C.

Public entry points: `labkit.build()` rebuilds the native module, `RelayConfig` describes
a relay, `Relay` runs one in its own process, `labkit.caps()` says what this machine can
do (io_uring, kTLS, perf, py-spy, the UML sandbox).
"""

import importlib
from typing import Any

from labkit.problems import ConfigError

# Imported on first use: they need the native module (the contract's tables), and
# `python -m labkit.build`, which makes it, must be able to import the package first.
_LAZY = {"RelayConfig": "labkit.config", "Relay": "labkit.relay",
         "RelayCrashed": "labkit.relay", "RelayError": "labkit.relay",
         "RelayStartTimeout": "labkit.relay"}

__all__ = [
    "BuildReport",
    "ConfigError",
    "Relay",
    "RelayConfig",
    "RelayCrashed",
    "RelayError",
    "RelayStartTimeout",
    "build",
    "caps",
    "profile",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    # labkit.build is imported on first use, not here, so that `python -m labkit.build`
    # runs it once; the module itself is callable (see labkit/build.py).
    if name == "profile":  # labkit.profile(relay, seconds) -> FlameGraph
        return importlib.import_module("labkit.counters.pyspy").profile
    if name in ("build", "BuildReport"):
        module = importlib.import_module("labkit.build")
        return module if name == "build" else module.BuildReport
    if name == "caps":  # callable module: labkit.caps() probes the machine
        return importlib.import_module("labkit.caps")
    raise AttributeError(f"module 'labkit' has no attribute {name!r}")
