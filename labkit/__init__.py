"""labkit: a performance lab around a DERP relay written in C.

Public entry points: `labkit.build()` rebuilds the native module, `RelayConfig` describes
a relay, `Relay` runs one in its own process, `ExternalRelay` any other DERP relay program
(derper, Hyper-DERP: labkit.procs.presets), `Load` runs the load generator against it,
`labkit.run()` measures one run and `labkit.sweep()` a grid of them, `labkit.summarize()`
and `labkit.welch()` compare runs, `labkit.caps()` says what this machine can do
(io_uring, kTLS, perf, py-spy, the UML sandbox), `labkit.profile()` draws a flame graph.
"""

import importlib
from typing import Any

from labkit.problems import ConfigError

# Loaded on first use. The configs, processes and their errors need the native module (the
# contract's tables), which `python -m labkit.build` must be able to make after importing
# this package; the rest import pandas, scipy or bokeh, and the relay and load hosts
# (`python -m labkit relay`, started for every run) import this package too.
_LAZY = {
    "RelayConfig": "labkit.config",
    "Relay": "labkit.procs.relay", "RelayCrashed": "labkit.procs.relay",
    "RelayError": "labkit.procs.relay", "RelayStartTimeout": "labkit.procs.relay",
    "ExternalRelay": "labkit.procs.external",  # any DERP relay program under test
    "ExternalRelayFailed": "labkit.procs.external",
    "Load": "labkit.procs.load", "LoadConfig": "labkit.procs.load",
    "LoadError": "labkit.procs.load", "LoadFailed": "labkit.procs.load",
    "LoadResult": "labkit.procs.load",
    "run": "labkit.lab.experiment", "sweep": "labkit.lab.experiment",
    "RunControl": "labkit.lab.experiment",
    "Result": "labkit.lab.result", "RunFailed": "labkit.lab.result",
    "SweepResult": "labkit.lab.result",
    "summarize": "labkit.lab.stats", "welch": "labkit.lab.stats",
    "Dashboard": "labkit.views.dashboard",
    "profile": "labkit.counters.pyspy",  # labkit.profile(relay, seconds) -> FlameGraph
    "BuildReport": "labkit.build",
}

__all__ = [
    "ConfigError",
    "Load",
    "LoadConfig",
    "LoadError",
    "LoadFailed",
    "LoadResult",
    "Relay",
    "RelayConfig",
    "RelayCrashed",
    "RelayError",
    "RelayStartTimeout",
    "build",
    "caps",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    # labkit.build and labkit.caps are callable modules (labkit.build() builds,
    # labkit.caps() probes), imported on first use so that `python -m labkit.build` runs
    # its module once (see labkit/build.py).
    if name in ("build", "caps"):
        return importlib.import_module(f"labkit.{name}")
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'labkit' has no attribute {name!r}")
