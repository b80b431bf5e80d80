"""Sweep files: a TOML file (see bench/*.toml, data/sweeps/*.toml) -> keyword arguments
for labkit.lab.experiment.sweep(), with the same ConfigError messages as the Python API.

A `[[relays]]` array lists relays under test for sweep(relays=…): each entry is a labkit
relay (RelayConfig fields: io = "uring"), a preset (preset = "derper", "derper-tls" or
"hyper-derp", with workers = N for Hyper-DERP) or any program (command = [...], name,
tls, ca_file, cores; see labkit.procs.external.ExternalRelay).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from labkit.config import ConfigError, RelayConfig
from labkit.procs import presets
from labkit.procs.external import ExternalRelay
from labkit.procs.load import LoadConfig

_SWEEP_KEYS = {"name", "repeats", "duration", "warmup", "hz", "perf", "pin", "store",
               "compare", "relay", "load", "grid", "relays"}
_EXTERNAL_KEYS = {"command", "name", "port", "tls", "ca_file", "cert_name", "cores",
                  "settings", "env", "install_hint"}


def sweep_args_from_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Keyword arguments for sweep() from a TOML file (see bench/*.toml); ConfigError for
    anything unknown or invalid, with the same messages as the Python API."""
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read sweep config {str(p)!r}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None
    unknown = set(doc) - _SWEEP_KEYS
    if unknown:
        raise ConfigError(f"{p}: unknown key(s) {', '.join(sorted(unknown))}; known: "
                          + ", ".join(sorted(_SWEEP_KEYS)))
    if "grid" not in doc or not isinstance(doc["grid"], dict):
        raise ConfigError(f"{p}: a [grid] table is required, e.g. io = [\"epoll\", \"uring\"]")
    try:
        relay = RelayConfig(**doc.get("relay", {}))
    except TypeError as e:
        raise ConfigError(f"{p} [relay]: {e}") from None
    load_table = dict(doc.get("load", {}))
    for k in ("host", "port"):
        if k in load_table:
            raise ConfigError(f"{p} [load]: {k} follows the relay; remove it")
    try:
        load = LoadConfig(**load_table)
    except TypeError as e:
        raise ConfigError(f"{p} [load]: {e}") from None
    kw: dict[str, Any] = {"grid": doc["grid"], "relay": relay, "load": load}
    for k in ("name", "repeats", "duration", "warmup", "hz", "perf", "pin"):
        if k in doc:
            kw[k] = doc[k]
    if "store" in doc:
        kw["store"] = Path(doc["store"])  # relative: to the current directory, like the CLI
    if "relays" in doc:
        kw["relays"] = [_relay_entry(p, i, e) for i, e in enumerate(doc["relays"])]
    if "compare" in doc:
        c = doc["compare"]
        if not (isinstance(c, list) and len(c) == 3):
            raise ConfigError(f"{p}: compare must be [key, a, b], e.g. [\"io\", \"epoll\", "
                              "\"uring\"]")
        kw["compare"] = tuple(c)
    return kw


def _relay_entry(p: Path, i: int, entry: Any) -> RelayConfig | ExternalRelay:
    """One [[relays]] table: a preset, an external program or a labkit RelayConfig."""
    where = f"{p} [[relays]] #{i + 1}"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: must be a table (write [[relays]] entries)")
    e = dict(entry)
    try:
        if "preset" in e:
            name = e.pop("preset")
            if name == "hyper-derp":
                return presets.hyper_derp(**e)
            if name in ("derper", "derper-tls"):
                return presets.derper(tls=name == "derper-tls", **e)
            raise ConfigError(f"{where}: preset {name!r} is not one of "
                              f"{', '.join(sorted(presets.PRESETS))}")
        if "command" in e:
            unknown = set(e) - _EXTERNAL_KEYS
            if unknown:
                raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} for "
                                  f"an external relay; known: {', '.join(sorted(_EXTERNAL_KEYS))}")
            return ExternalRelay(**e)
        return RelayConfig(**e)
    except TypeError as err:
        raise ConfigError(f"{where}: {err}") from None
