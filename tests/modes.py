"""The relay modes every conformance test runs against: the one place to extend.

Each entry is a pytest.param whose value is a dict of RelayConfig keyword arguments.
Adding a mode (io_uring, more workers, kTLS) is one line here; give it `marks=` with a
skip when the machine cannot run it.
"""

import pytest

RELAY_MODES: list = [
    pytest.param({"io": "epoll", "tls": "off", "workers": 1}, id="epoll-plain"),
    pytest.param({"io": "epoll", "tls": "user", "workers": 1}, id="epoll-tls"),
]
