"""The contract between Python and the relay, read from the native module's own tables.

native/include/labkit.h declares each switch, limit and counter once (LK_SWITCH_TABLE,
LK_LIMIT_TABLE, LK_COUNTER_TABLE); the compiled module exports them as arrays, and this
module turns them into Python values. RelayConfig's fields and defaults, the command
line's flags, the dashboard's checkboxes, the tests' mode matrix and the counter views
are all made from these, so a row added to a table in the header reaches all of them
without another edit.

    SWITCHES["multishot"].requires   # ("provided_buffers",)
    LIMITS["workers"].max            # 64
    COUNTERS["drop_queue_head"].group, .kind, .unit
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from labkit.native import ffi, lib

BACKENDS = {"epoll": lib.LK_BK_EPOLL, "uring": lib.LK_BK_URING}
KINDS = {lib.LK_KIND_COUNTER: "counter", lib.LK_KIND_GAUGE: "gauge",
         lib.LK_KIND_HIGH_WATER: "high_water"}


def _text(p: object) -> str:
    return ffi.string(p).decode()


@dataclass(frozen=True)
class Switch:
    """One optimisation switch (a row of LK_SWITCH_TABLE)."""

    name: str  # the RelayConfig field and the --flag
    bit: int
    backends: tuple[str, ...]  # io modes it applies to
    default: Mapping[str, bool]  # per io mode: on unless said otherwise?
    requires: tuple[str, ...]  # switches that must be on with it
    requires_why: str
    excludes: tuple[str, ...]  # switches that must be off with it
    excludes_why: str
    kernel: str  # what it needs from the kernel ("" nothing special)
    help: str

    def applies_to(self, io: str) -> bool:
        return io in self.backends


@dataclass(frozen=True)
class Limit:
    """An integer config field with a range (a row of LK_LIMIT_TABLE)."""

    name: str
    min: int
    max: int
    default: int
    unit: str
    help: str


@dataclass(frozen=True)
class Counter:
    """A shared-memory counter (a row of LK_COUNTER_TABLE)."""

    name: str
    kind: str  # "counter" (only grows), "gauge", "high_water" (a gauge's maximum)
    group: str  # "traffic", "drop", "close", "syscall", "conn", "queue", "pool", ...
    unit: str
    help: str


def _switches() -> dict[str, Switch]:
    rows = [lib.lk_switches[i] for i in range(lib.LK_SWITCH__COUNT)]
    names = {r.bit: _text(r.name).lower() for r in rows}
    out = {}
    for r in rows:
        name = names[r.bit]
        out[name] = Switch(
            name=name, bit=r.bit,
            backends=tuple(io for io, bit in BACKENDS.items() if r.backends & bit),
            default={"epoll": bool(r.default_on[0]), "uring": bool(r.default_on[1])},
            requires=tuple(n for bit, n in names.items() if r.requires & bit),
            requires_why=_text(r.requires_why),
            excludes=tuple(n for bit, n in names.items() if r.excludes & bit),
            excludes_why=_text(r.excludes_why), kernel=_text(r.kernel), help=_text(r.help))
    return out


def _limits() -> dict[str, Limit]:
    rows = (lib.lk_limits[i] for i in range(lib.LK_LIMIT__COUNT))
    return {_text(r.name): Limit(_text(r.name), r.min, r.max, r.default_value,
                                 _text(r.unit), _text(r.help)) for r in rows}


def _counters() -> dict[str, Counter]:
    rows = (lib.lk_counters[i] for i in range(lib.LK_C__COUNT))
    return {_text(r.name).lower(): Counter(_text(r.name).lower(), KINDS[r.kind], _text(r.group),
                                           _text(r.unit), _text(r.help)) for r in rows}


SWITCHES: dict[str, Switch] = _switches()
LIMITS: dict[str, Limit] = _limits()
COUNTERS: dict[str, Counter] = _counters()  # in the order of the shared-memory slots


def switch_bits(on: Mapping[str, bool]) -> int:
    """The LK_SW_* bits of the switches that are on."""
    return sum(SWITCHES[name].bit for name, value in on.items() if value)


def relay_config_problems(cfg: object) -> list[tuple[str, str, str]]:
    """The relay's own check of a filled lk_relay_config (lk_relay_config_check): one
    (field, what is wrong, what to do) per problem, the fix in problems.py's markup."""
    if lib.lk_relay_config_check(cfg) == lib.LK_OK:
        return []
    text = ffi.string(lib.lk_last_error()).decode()
    return [tuple(line.split("\t", 2)) for line in text.split("\n")]  # type: ignore[misc]
