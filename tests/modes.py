"""The relay modes every conformance test runs against: the one place to extend.

Each entry is a pytest.param whose value is a dict of RelayConfig keyword arguments.
The matrix is io {epoll, uring} x workers {1, 2, 4} x TLS {off, user}, plus every switch
of the contract (labkit.native.contract.SWITCHES, from native/include/labkit.h) in its
non-default position, in each io mode it applies to: a switch on by default is turned
off (with the switches that need it), one off by default is turned on (with what it
needs, and with what it excludes off).  So a protocol rule that breaks under one
optimisation (or across shards) fails here by name, and a switch added to the header is
in the matrix without an edit here.

Kernel TLS modes (io x workers x ktls) are not in the default matrix: most hosts have no
`tls` module, so tests/test_ktls.py runs them inside `labkit sandbox` (a UML kernel that
has one).  LABKIT_MODES selects modes by id instead of the default: a comma-separated
list of substrings, e.g. LABKIT_MODES=ktls (every kTLS mode) or
LABKIT_MODES=epoll-ktls-w1,uring-user-w2.
"""

import os

import pytest

from labkit.native.contract import SWITCHES


def _matrix(tls_modes: tuple[str, ...]) -> list:
    return [
        pytest.param({"io": io, "tls": tls, "workers": workers}, id=f"{io}-{tls}-w{workers}")
        for io in ("epoll", "uring")
        for workers in (1, 2, 4)
        for tls in tls_modes
    ]


def _switch_modes() -> list:
    """One mode per (io mode, switch) with the switch away from its default."""
    modes = []
    for io in ("epoll", "uring"):
        for s in SWITCHES.values():
            if not s.applies_to(io):
                continue
            flag = s.name.replace("_", "-")
            if s.default[io]:  # off, and whatever needs it off too
                off = {t.name: False for t in SWITCHES.values() if s.name in t.requires}
                modes.append(pytest.param({"io": io, **off, s.name: False},
                                          id=f"{io}-no-{flag}"))
            else:  # on, with what it needs and without what it excludes; across two
                # shards where it is epoll's
                on = dict.fromkeys(s.requires, True) | dict.fromkeys(s.excludes, False)
                workers = {"workers": 2} if io == "epoll" else {}
                modes.append(pytest.param({"io": io, **workers, **on, s.name: True},
                                          id=f"{io}-{flag}" + ("-w2" if workers else "")))
    return modes


DEFAULT_MODES: list = _matrix(("off", "user")) + _switch_modes()
KTLS_MODES: list = _matrix(("ktls",))
ALL_MODES: list = DEFAULT_MODES + KTLS_MODES


def select(spec: str | None) -> list:
    """The modes whose id contains one of the comma-separated substrings of `spec`
    (the default matrix when spec is empty or None)."""
    wanted = [s.strip() for s in (spec or "").split(",") if s.strip()]
    if not wanted:
        return list(DEFAULT_MODES)
    chosen = [p for p in ALL_MODES if any(w in p.id for w in wanted)]
    if not chosen:
        raise ValueError(f"LABKIT_MODES={spec!r} matches no mode; ids: "
                         + ", ".join(p.id for p in ALL_MODES))
    return chosen


RELAY_MODES: list = select(os.environ.get("LABKIT_MODES"))
