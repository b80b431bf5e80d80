"""The overload policy (the `backpressure` switch) and its fairness consequences.

One sender S floods two receivers: A, which does not read (a tiny receive buffer, so
its socket fills at once), and B, which reads. Another sender T sends to B as well.

- drop (backpressure off, derper's policy): S is never slowed; B gets everything S sent
  it while A stalls, and A's queue drops its oldest packets.
- backpressure: the relay stops reading S once A's queue is full, so S's packets to B
  wait behind A's (head-of-line blocking: the fairness cost, shown here), while T, which
  sends nothing to A, still reaches B. Once A reads, S resumes, and nothing was lost.

Every wait is bounded and polls a condition; processes are stopped by pid (Relay).
"""

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from labkit import Relay, RelayConfig, derp

PKT = 16 * 1024  # 600 x 16 KiB to A: far more than A's and the relay's socket buffers
ROUNDS = 600
WAIT = 30.0  # generous: two shared cores


def _connect(relay: Relay, **kw: Any) -> derp.Client:
    c = derp.Client.connect(relay.host, relay.port, **kw)
    c.timeout = WAIT
    return c


def _packet(i: int) -> bytes:
    return i.to_bytes(4, "big") + bytes(PKT - 4)


def _flood(s: derp.Client, dsts: list[bytes], errors: list[BaseException]) -> None:
    try:
        for i in range(ROUNDS):
            for d in dsts:
                s.send(d, _packet(i))
    except BaseException as e:  # reported by the test, not lost in the thread
        errors.append(e)


def _collect(c: derp.Client, src: bytes, want: int, seconds: float,
             got: list[int] | None = None) -> list[int]:
    """Sequence numbers of packets from src that c receives (appended to `got` as they
    come) until it has `want`, `seconds` pass or the connection ends."""
    got = [] if got is None else got
    deadline = time.monotonic() + seconds
    while len(got) < want:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            p = c.recv_packet(left)
        except (TimeoutError, derp.ConnectionClosed):
            break
        if p.src == src:
            got.append(int.from_bytes(p.data[:4], "big"))
    return got


def _eventually(relay: Relay, name: str, at_least: int = 1) -> dict[str, int]:
    deadline = time.monotonic() + WAIT
    counters = relay.counters()
    while counters[name] < at_least and time.monotonic() < deadline:
        time.sleep(0.02)
        counters = relay.counters()
    return counters


DROPS = ("drop_queue_head", "drop_queue_tail", "drop_pool_empty", "drop_gone")


@pytest.fixture(params=[
    pytest.param({"io": "epoll"}, id="epoll"),
    pytest.param({"io": "uring"}, id="uring"),
    pytest.param({"io": "uring", "poll_recv": True}, id="uring-poll-recv"),
    pytest.param({"io": "uring", "workers": 2}, id="uring-w2"),
])
def mode(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    yield request.param


def _clients(relay: Relay) -> tuple[derp.Client, ...]:
    a = _connect(relay, recv_buffer=4096)
    b, s, t = _connect(relay), _connect(relay), _connect(relay)
    return a, b, s, t


def _clients_with_flood(relay: Any) -> tuple[tuple[Any, ...], threading.Thread,
                                              list[BaseException]]:
    """A (not reading), B, S, T; S floods A and B from a thread that is already running."""
    a, b, s, t = _clients(relay)
    errors: list[BaseException] = []
    flood = threading.Thread(target=_flood, args=(s, [a.public_key, b.public_key], errors),
                             daemon=True)
    flood.start()
    return (a, b, s, t), flood, errors


def test_backpressure_loses_nothing_and_blocks_the_senders_other_destinations(
        mode: dict[str, Any]) -> None:
    cfg = RelayConfig(**mode, backpressure=True, queue_depth=8, write_timeout=0)
    with Relay(cfg) as relay:
        (a, b, s, t), flood, errors = _clients_with_flood(relay)
        counters = _eventually(relay, "reads_paused")
        assert counters["reads_paused"] >= 1, "the relay never paused the flooding sender"
        # Head-of-line: with A not reading, S's packets to B stop too.
        early = _collect(b, s.public_key, ROUNDS, 1.0)
        assert len(early) < ROUNDS // 2, "S reached B at full speed: S was not paused"
        # Fairness to other senders: T (nothing for A) still reaches B.
        for i in range(50):
            t.send(b.public_key, _packet(i))
        assert _collect(b, t.public_key, 50, WAIT) == list(range(50))
        # A reads: S resumes, and every packet arrives, in order.
        got_a: list[int] = []
        reader = threading.Thread(
            target=lambda: got_a.extend(_collect(a, s.public_key, ROUNDS, WAIT)), daemon=True)
        reader.start()
        rest = _collect(b, s.public_key, ROUNDS - len(early), WAIT)
        reader.join(WAIT)
        flood.join(WAIT)
        assert not errors, errors
        assert got_a == list(range(ROUNDS))
        assert early + rest == list(range(ROUNDS))
        counters = relay.counters()
        assert all(counters[d] == 0 for d in DROPS), {d: counters[d] for d in DROPS}
        assert counters["read_pauses"] >= 1
        for c in (a, b, s, t):
            c.close()


def test_drop_policy_keeps_senders_flowing_and_drops_for_the_stalled_receiver(
        mode: dict[str, Any]) -> None:
    cfg = RelayConfig(**mode, backpressure=False, queue_depth=8, write_timeout=0)
    with Relay(cfg) as relay:
        (a, b, s, t), flood, errors = _clients_with_flood(relay)
        # A never reads, yet S gets everything out (it is not slowed) and B, reading,
        # gets most of it (a 8-deep queue drops for a Python reader too, in order).
        got_b: list[int] = []
        reader = threading.Thread(target=_collect, args=(b, s.public_key, ROUNDS, WAIT, got_b),
                                  daemon=True)
        reader.start()
        flood.join(WAIT)
        assert not flood.is_alive(), "S was blocked: the drop policy must not slow a sender"
        assert not errors, errors
        seen = -1
        while seen != len(got_b):  # until B's packets stop coming
            seen = len(got_b)
            time.sleep(0.5)
        b.sock.shutdown(2)  # ends the reader
        reader.join(WAIT)
        assert len(got_b) > ROUNDS // 2 and got_b == sorted(got_b)
        counters = relay.counters()
        assert sum(counters[d] for d in DROPS) > 0, "A's packets should have been dropped"
        assert counters["read_pauses"] == 0
        got_a = _collect(a, s.public_key, ROUNDS, 2.0)
        assert len(got_a) < ROUNDS and got_a == sorted(got_a)
        for c in (a, b, s, t):
            c.close()
