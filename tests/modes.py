"""The relay modes every conformance test runs against: the one place to extend.

Each entry is a pytest.param whose value is a dict of RelayConfig keyword arguments.
The matrix is io {epoll, uring} x workers {1, 2, 4} x TLS {off, user}, plus io_uring
with each of its switches off in turn, so a protocol rule that breaks under one
optimisation (or across shards) fails here by name.  Give a mode `marks=` with a skip
when the machine cannot run it.

Kernel TLS modes (io x workers x ktls) are not in the default matrix: most hosts have no
`tls` module, so tests/test_ktls.py runs them inside `labkit sandbox` (a UML kernel that
has one).  LABKIT_MODES selects modes by id instead of the default: a comma-separated
list of substrings, e.g. LABKIT_MODES=ktls (every kTLS mode) or
LABKIT_MODES=epoll-ktls-w1,uring-user-w2.
"""

import os

import pytest


def _matrix(tls_modes: tuple[str, ...]) -> list:
    return [
        pytest.param({"io": io, "tls": tls, "workers": workers}, id=f"{io}-{tls}-w{workers}")
        for io in ("epoll", "uring")
        for workers in (1, 2, 4)
        for tls in tls_modes
    ]


DEFAULT_MODES: list = _matrix(("off", "user")) + [
    # io_uring ablations: multishot recv needs provided buffers, so both go off together
    pytest.param({"io": "uring", "batch": False}, id="uring-nobatch"),
    pytest.param({"io": "uring", "multishot": False}, id="uring-nomultishot"),
    pytest.param(
        {"io": "uring", "multishot": False, "provided_buffers": False}, id="uring-nopbuf"
    ),
    pytest.param({"io": "uring", "coalesce": False}, id="uring-nocoalesce"),
    pytest.param({"io": "epoll", "coalesce": True, "workers": 2}, id="epoll-coalesce-w2"),
]
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
