"""labkit: a performance lab around a DERP relay written in C.

Public entry points: `labkit.build()` rebuilds the native module, `RelayConfig` describes
a relay, `Relay` runs one in its own process.
"""

import importlib
from typing import Any

from labkit.config import ConfigError, RelayConfig
from labkit.relay import Relay, RelayCrashed, RelayError, RelayStartTimeout

__all__ = [
    "BuildReport",
    "ConfigError",
    "Relay",
    "RelayConfig",
    "RelayCrashed",
    "RelayError",
    "RelayStartTimeout",
    "build",
]


def __getattr__(name: str) -> Any:
    # labkit.build is imported on first use, not here, so that `python -m labkit.build`
    # runs it once; the module itself is callable (see labkit/build.py).
    if name in ("build", "BuildReport"):
        module = importlib.import_module("labkit.build")
        return module if name == "build" else module.BuildReport
    raise AttributeError(f"module 'labkit' has no attribute {name!r}")
