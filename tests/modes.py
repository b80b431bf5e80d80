"""The relay modes every conformance test runs against: the one place to extend.

Each entry is a pytest.param whose value is a dict of RelayConfig keyword arguments.
The matrix is io {epoll, uring} x workers {1, 2, 4} x TLS {off, user}, plus io_uring
with each of its switches off in turn, so a protocol rule that breaks under one
optimisation (or across shards) fails here by name.  Give a mode `marks=` with a skip
when the machine cannot run it.
"""

import pytest

RELAY_MODES: list = [
    pytest.param({"io": io, "tls": tls, "workers": workers}, id=f"{io}-{tls}-w{workers}")
    for io in ("epoll", "uring")
    for workers in (1, 2, 4)
    for tls in ("off", "user")
] + [
    # io_uring ablations: multishot recv needs provided buffers, so both go off together
    pytest.param({"io": "uring", "batch": False}, id="uring-nobatch"),
    pytest.param({"io": "uring", "multishot": False}, id="uring-nomultishot"),
    pytest.param(
        {"io": "uring", "multishot": False, "provided_buffers": False}, id="uring-nopbuf"
    ),
    pytest.param({"io": "uring", "coalesce": False}, id="uring-nocoalesce"),
    pytest.param({"io": "epoll", "coalesce": True, "workers": 2}, id="epoll-coalesce-w2"),
]
