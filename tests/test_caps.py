"""labkit.caps.Caps.allows: the one question the dashboard asks of the machine."""

from __future__ import annotations

from labkit.caps import Capability, Caps


def test_allows_says_what_is_missing_and_what_to_do() -> None:
    caps = Caps([Capability("io_uring", False, "io_uring_setup: EPERM", "sysctl it"),
                 Capability("ktls", None, "this is the sandbox"),
                 Capability("perf", True, "/usr/bin/perf")])
    assert caps.allows("io:uring") == (False, "io_uring_setup: EPERM (to do: sysctl it)")
    assert caps.allows("tls:ktls") == (True, "")  # unknown ("?") forbids nothing
    assert caps.allows("perf") == (True, "")
    assert caps.allows("io:epoll") == (True, "")  # needs nothing a probe can see
    assert caps.allows("switch:sqpoll") == (True, "")
    bare = Caps([Capability("ktls", False, "")])
    assert bare.allows("tls:ktls") == (False, "not available on this machine")
