"""The native load generator against the lab's relay: delivery, loss accounting that
agrees with the relay's own counters, latency figures, echo mode, early stop, failures.

Every run is short (about 1-2 s measured) and bounded by Load.wait's timeout; processes
are stopped by pid only (labkit.procs.child). Servers bind 127.0.0.1 only.
"""

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from modes import RELAY_MODES

from labkit import ConfigError, Relay, RelayConfig
from labkit.procs.load import Load, LoadConfig, LoadFailed, LoadResult

# io {epoll, uring} x TLS {off, user} from the shared matrix (tests/modes.py), one worker:
# a load run costs seconds, so the conformance suite covers the rest of the matrix.
LOAD_MODES = [p for p in RELAY_MODES if set(p.values[0]) == {"io", "tls", "workers"}
              and p.values[0]["workers"] == 1]


def _eventually(read: Callable[[], Any], ok: Callable[[Any], bool], timeout: float = 3.0) -> Any:
    """Poll read() until ok(value) or the deadline; return the last value. For counters
    that a process publishes on its own schedule (at most ~1 ms late when busy)."""
    deadline = time.monotonic() + timeout
    value = read()
    while not ok(value) and time.monotonic() < deadline:
        time.sleep(0.01)
        value = read()
    return value


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 that is bound (nobody else can take it) but not listening."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def _check_latency(r: LoadResult) -> None:
    lat = r.latency
    assert r.latency_samples == r.received
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p999"] <= lat["max"]
    assert lat["min"] <= lat["mean"] <= lat["max"]


# ---- delivery and accounting ---------------------------------------------------------


@pytest.mark.parametrize("mode", LOAD_MODES)
def test_paced_throughput_has_zero_loss_and_matches_relay_counters(mode: dict[str, Any]) -> None:
    with Relay(RelayConfig(**mode)) as relay:
        cfg = LoadConfig.for_relay(relay, pairs=2, size=1400, rate_mbps=50, duration=2,
                                   warmup=0.5)
        r = Load(cfg).run()
        assert r.lost == 0 and r.received == r.sent > 0
        assert r.seconds == pytest.approx(2.0, abs=0.01)
        # paced from the payload bytes: 50 Mbps is 4464 packets/s of 1400 B. On a busy
        # machine the generator can wake too late to send all of it; what it could not
        # send it counts, and sent + missed is the rate it was given.
        target_pps = 50e6 / 8 / 1400
        assert (r.sent + r.pace_missed) / r.seconds == pytest.approx(target_pps, rel=0.03)
        assert r.bytes_received == 1400 * r.received
        _check_latency(r)
        # The relay forwarded exactly what the generator received in all phases; the
        # difference to the window figure is the warm-up (0.5 s of 50 Mbps).
        assert r.total_sent is not None and r.total_received is not None
        counters = _eventually(relay.counters,
                               lambda c: c["packets_forwarded"] >= r.total_received)
        assert counters["packets_in"] == r.total_sent
        assert counters["packets_forwarded"] == r.total_received
        assert r.total_pace_missed is not None
        warmup_offered = (r.total_received - r.received) + (r.total_pace_missed - r.pace_missed)
        assert warmup_offered == pytest.approx(0.5 * target_pps, rel=0.05)
        for drop in ("drop_unknown_dest", "drop_queue_head", "drop_queue_tail",
                     "drop_pool_empty"):
            assert counters[drop] == 0, drop


def test_unpaced_saturates_and_reports_sane_latency() -> None:
    with Relay(RelayConfig()) as relay:
        cfg = LoadConfig.for_relay(relay, pairs=2, rate_mbps=None, duration=1, warmup=0.3)
        with Load(cfg) as load:
            live = _eventually(load.counters, lambda c: c["load_received"] > 0)
            r = load.wait()
        assert r.mbps > 0 and r.pps > 0 and r.received > 0
        assert r.received + r.lost == r.sent
        _check_latency(r)
        # batching: a syscall carries many packets (the generator must not be the bottleneck)
        assert live["load_sent"] > 10 * live["sys_write"]
        # whatever the relay dropped is loss; whatever it forwarded was received
        counters = _eventually(relay.counters,
                               lambda c: c["packets_forwarded"] >= r.total_received)
        assert counters["packets_forwarded"] == r.total_received
        dropped = sum(counters[k] for k in ("drop_queue_head", "drop_queue_tail",
                                            "drop_pool_empty", "drop_gone"))
        assert counters["packets_in"] == counters["packets_forwarded"] + dropped


@pytest.mark.parametrize("io", ["epoll", "uring"])
def test_frame_per_write_sender_writes_one_frame_per_send(io: str) -> None:
    """A real client's way of sending: the generator's own counters show one send() per
    frame (the batched sender carries many), and the relay's accounting still agrees."""
    with Relay(RelayConfig(io=io)) as relay:
        for rate in (30.0, None):  # paced and unpaced
            cfg = LoadConfig.for_relay(relay, pairs=2, rate_mbps=rate, duration=0.6,
                                       warmup=0.2, sender="frame-per-write")
            with Load(cfg) as load:
                live = _eventually(load.counters, lambda c: c["load_received"] > 100)
                r = load.wait()
            assert r.received > 0 and r.received + r.lost == r.sent
            _check_latency(r)
            # each packet its own send(): at least one call per frame; a full socket adds
            # at most one retry per frame (EAGAIN, or the rest of a partial send)
            assert live["load_received"] > 100
            assert 2 * live["load_sent"] + 20 >= live["sys_write"] >= live["load_sent"]
            if rate is not None:
                assert r.lost == 0


def test_echo_mode_measures_round_trips() -> None:
    with Relay(RelayConfig()) as relay:
        cfg = LoadConfig.for_relay(relay, mode="echo", pairs=2, rate_mbps=20, duration=1,
                                   warmup=0.3)
        r = Load(cfg).run()
        assert r.lost == 0 and r.received == r.sent > 0
        _check_latency(r)
        # both legs go through the relay: every packet is forwarded twice
        counters = _eventually(relay.counters,
                               lambda c: c["packets_forwarded"] >= r.total_received)
        assert counters["packets_forwarded"] == r.total_received == r.total_sent
        assert counters["packets_in"] == r.total_sent


@pytest.mark.parametrize("mode", LOAD_MODES)
@pytest.mark.parametrize("load_mode", ["throughput", "echo"])
def test_websocket_transport_upgrades_and_delivers(mode: dict[str, Any], load_mode: str) -> None:
    """transport=websocket: every client really upgrades to WebSocket (the relay counts
    them) and every packet arrives, one way and echoed."""
    with Relay(RelayConfig(**mode)) as relay:
        cfg = LoadConfig.for_relay(relay, mode=load_mode, pairs=2, rate_mbps=20, duration=1,
                                   warmup=0.3, transport="websocket")
        r = Load(cfg).run()
        assert r.lost == 0 and r.received == r.sent > 0
        counters = _eventually(relay.counters,
                               lambda c: c["packets_forwarded"] >= r.total_received)
        assert counters["conns_websocket"] == 4
        assert counters["packets_forwarded"] == r.total_received
        assert not any(v for k, v in counters.items() if k.startswith("close_ws"))


def test_stop_ends_the_window_early_and_still_reports() -> None:
    with Relay(RelayConfig()) as relay:
        cfg = LoadConfig.for_relay(relay, pairs=1, rate_mbps=10, duration=60, warmup=0)
        with Load(cfg) as load:
            _eventually(load.counters, lambda c: c["load_received"] >= 100)
            r = load.stop()
        assert load.returncode == 0
        assert r is not None and 0 < r.seconds < 10
        assert r.lost == 0 and r.received == r.sent > 0


def test_counters_and_ready_event_while_running() -> None:
    with Relay(RelayConfig()) as relay:
        cfg = LoadConfig.for_relay(relay, pairs=3, threads=2, rate_mbps=30, duration=1,
                                   warmup=0.2)
        with Load(cfg) as load:
            assert load.info["event"] == "ready" and load.info["pairs"] == 3
            rows = load.thread_counters()
            assert len(rows) == 2  # one counter block per thread
            c = _eventually(load.counters, lambda c: c["load_received"] > 0)
            assert c["conns_handshaked"] == 6
            assert c["sys_epoll_wait"] > 0 and c["loop_passes"] > 0
            r = load.wait()
        assert r.lost == 0 and r.received == r.sent > 0


# ---- failures --------------------------------------------------------------------------


def test_unreachable_target_fails_with_a_clear_message(closed_port: int) -> None:
    with pytest.raises(LoadFailed) as e:
        Load(LoadConfig(port=closed_port, pairs=2, duration=1)).start()
    assert e.value.exitcode == 2
    assert (f"labkit load: connection failed: pair 0 sender: connect to "
            f"127.0.0.1:{closed_port}: Connection refused") in e.value.stderr_tail


def test_silent_server_times_out_naming_the_step() -> None:
    # listens (the kernel completes the TCP handshake) but never answers the upgrade
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        port = s.getsockname()[1]
        start = time.monotonic()
        with pytest.raises(LoadFailed) as e:
            Load(LoadConfig(port=port, pairs=1, duration=1)).start()
        took = time.monotonic() - start
    assert 5.0 <= took < 12.0
    assert (f"no answer from 127.0.0.1:{port} within 5 s (waiting for the HTTP 101 "
            "response)") in e.value.stderr_tail


def test_non_derp_server_fails_the_handshake() -> None:
    reply = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        s.settimeout(0.05)  # so the loop sees `done` promptly
        done = threading.Event()

        def serve() -> None:
            conns = []
            while not done.is_set():
                try:
                    c, _ = s.accept()
                except TimeoutError:
                    continue
                conns.append(c)
                try:
                    c.settimeout(5)
                    c.recv(4096)
                    c.sendall(reply)
                except OSError:
                    pass  # the generator gave up on this one already
            for c in conns:
                c.close()

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        with pytest.raises(LoadFailed) as e:
            Load(LoadConfig(port=s.getsockname()[1], pairs=1, duration=1)).start()
        done.set()
        server.join(10)  # before the listener closes under its accept()
    assert e.value.exitcode == 2
    assert ('answered "HTTP/1.1 404 Not Found" instead of 101 Switching Protocols'
            in e.value.stderr_tail)


def test_cli_unreachable_target_exits_2(closed_port: int) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "labkit", "load", "--target", f"127.0.0.1:{closed_port}",
         "--pairs", "1", "--duration", "1", "--json"],
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert "connection failed" in proc.stderr and "Connection refused" in proc.stderr


def test_cli_reports_one_result_line() -> None:
    with Relay(RelayConfig()) as relay:
        proc = subprocess.run(
            [sys.executable, "-m", "labkit", "load", "--target", f"{relay.host}:{relay.port}",
             "--pairs", "1", "--size", "200", "--rate", "5", "--duration", "0.5",
             "--warmup", "0", "--json"],
            capture_output=True, text=True, timeout=30,
        )
    assert proc.returncode == 0, proc.stderr
    ready, result = (json.loads(line) for line in proc.stdout.splitlines())
    assert ready["event"] == "ready" and result["event"] == "result"
    assert set(result["latency_us"]) == {"p50", "p90", "p99", "p999", "min", "max", "mean"}
    assert result["lost"] == 0 and result["received"] == result["sent"] > 0


def test_tls_certificate_is_verified() -> None:
    with Relay(RelayConfig(tls="user")) as relay:
        # the lab's self-signed certificate is not in the system store
        with pytest.raises(LoadFailed) as e:
            Load(LoadConfig(port=relay.port, tls="user", pairs=1, duration=1)).start()
        assert "certificate verification failed" in e.value.stderr_tail
        r = Load(LoadConfig(port=relay.port, tls="user", insecure=True, pairs=1,
                            rate_mbps=5, duration=0.3, warmup=0)).run()
        assert r.received == r.sent > 0


def test_ktls_is_refused_with_a_reason() -> None:
    from labkit.caps import ktls_probe

    ok, why = ktls_probe()
    if ok:
        pytest.skip(f"this kernel has kTLS ({why}): nothing to refuse; tests/test_ktls.py "
                    "runs the kTLS load generator")
    with pytest.raises(LoadFailed) as e:
        Load(LoadConfig(port=1, tls="ktls", insecure=True, duration=1)).start()
    assert "not supported" in e.value.stderr_tail and "use tls=user" in e.value.stderr_tail


@pytest.mark.parametrize("bad, words", [
    ({"port": 0}, "port=0"),
    ({"pairs": 0}, "pairs=0"),
    ({"size": 8}, "size=8"),
    ({"rate_mbps": 0}, "None for unpaced"),
    ({"rate_mbps": float("nan")}, "rate_mbps"),
    ({"duration": 0}, "duration=0"),
    ({"warmup": -1}, "warmup=-1"),
    ({"pairs": 1, "threads": 3}, "threads <= 2"),
    ({"tls": "quic"}, "tls='quic'"),
    ({"mode": "flood"}, "mode='flood'"),
    ({"sender": "bursty"}, "sender='bursty'"),
    ({"insecure": True}, "only apply with TLS"),
    ({"tls": "user", "ca_file": "/nonexistent.pem"}, "cannot be read"),
    ({"first_cpu": 1}, "pin_cpus"),
])
def test_bad_config_is_rejected_before_start(bad: dict[str, Any], words: str) -> None:
    cfg = LoadConfig(**({"port": 3340} | bad))
    with pytest.raises(ConfigError, match="invalid load config") as e:
        Load(cfg)  # no process is started for a config that cannot run
    assert words in str(e.value)


def test_native_validation_names_the_field() -> None:
    from labkit.native import ffi, lib

    cfg, _keep = LoadConfig(port=3340).to_c(ffi, lib, ready_fd=-1, shm_name=None)
    cfg.size = 8
    out = ffi.new("lk_load_result *")
    assert lib.lk_load_run(cfg, out) == lib.LK_ERR_CONFIG
    assert "size must be 16..65536" in ffi.string(lib.lk_last_error()).decode()
    cfg.size = 1400
    cfg.sender = 7
    assert lib.lk_load_run(cfg, out) == lib.LK_ERR_CONFIG
    assert "sender must be batched (0) or frame-per-write (1)" in \
        ffi.string(lib.lk_last_error()).decode()


def test_config_round_trips_through_the_command_line() -> None:
    for cfg in (
        LoadConfig(port=3340),
        LoadConfig(host="::1", port=1, tls="user", insecure=True, mode="echo", pairs=7,
                   size=16, rate_mbps=12.5, duration=0.25, warmup=0, threads=3,
                   pin_cpus=True, first_cpu=1, sender="frame-per-write"),
    ):
        assert LoadConfig.from_args(cfg.to_args()) == cfg
