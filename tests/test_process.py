"""Relay process control: start, the JSON announcement, stop by pid, crashes, refusals."""

import gc
import json
import os
import re
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labkit import ConfigError, Relay, RelayConfig, RelayCrashed
from labkit.counters.shm import CounterLayoutError, ShmCounters

SHM = Path("/dev/shm")
ANNOUNCEMENT_KEYS = {"event", "host", "port", "public_key", "pid", "tls", "io", "workers",
                     "shm", "cert_file"}


def _gone(pid: int) -> bool:
    """True once pid is neither running nor a zombie awaiting its parent."""
    return not Path(f"/proc/{pid}").exists()


def _relay_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "labkit", "relay", *args]


def test_start_announce_stop_by_pid() -> None:
    with Relay(RelayConfig()) as r:
        assert r.returncode is None
        assert r.host == "127.0.0.1" and 0 < r.port < 65536
        assert len(r.public_key) == 32
        assert (r.io, r.tls, r.workers, r.cert_file) == ("epoll", "off", 1, None)
        assert re.fullmatch(rf"/labkit-relay-{r.pid}-[0-9a-f]{{8}}", r.shm_name)
        assert (SHM / r.shm_name.lstrip("/")).exists()
        assert Path(f"/proc/{r.pid}/cmdline").read_bytes().split(b"\0")[1:4] == [
            b"-m", b"labkit", b"relay"]
        with socket.create_connection((r.host, r.port), timeout=2):
            pass
        pid, shm = r.pid, SHM / r.shm_name.lstrip("/")
    assert r.returncode == 0  # SIGTERM -> lk_relay_stop -> clean exit
    assert _gone(pid)
    assert not shm.exists()


def test_announcement_is_exactly_one_json_line_and_sigint_stops() -> None:
    proc = subprocess.Popen(_relay_cmd("--listen", "127.0.0.1:0"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        line = proc.stdout.readline()
        event = json.loads(line)
        assert set(event) == ANNOUNCEMENT_KEYS
        assert event["event"] == "listening" and event["pid"] == proc.pid
        assert re.fullmatch(r"[0-9a-f]{64}", event["public_key"])
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert out == b"", "nothing but the announcement may reach stdout"
    assert proc.returncode == 0, err.decode()


def test_sigkilled_relay_is_reported_with_stderr_tail() -> None:
    # -X importtime output makes stderr non-empty, so the tail has something to carry.
    r = Relay(RelayConfig(), env={"PYTHONPROFILEIMPORTTIME": "1"})
    with r:
        r.check()
        os.kill(r.pid, signal.SIGKILL)
        assert r.wait(timeout=10) == -signal.SIGKILL
        with pytest.raises(RelayCrashed) as e:
            r.check()
    assert e.value.exitcode == -signal.SIGKILL
    assert "killed by signal 9" in str(e.value)
    assert "import time:" in e.value.stderr_tail and "import time:" in str(e.value)
    assert not (SHM / r.shm_name.lstrip("/")).exists(), "the parent unlinks a dead relay's shm"


def test_hung_relay_is_killed_after_grace() -> None:
    r = Relay(RelayConfig(), stop_grace=0.5).start()
    os.kill(r.pid, signal.SIGSTOP)  # a stopped process cannot act on SIGTERM
    with pytest.raises(RelayCrashed, match="did not stop cleanly"):
        r.__exit__(None, None, None)
    assert r.returncode == -signal.SIGKILL
    assert _gone(r.pid)


def test_forgotten_relay_goes_with_its_object() -> None:
    r = Relay(RelayConfig()).start()
    pid = r.pid
    del r
    gc.collect()
    assert _gone(pid)


def test_port_in_use_is_refused_clearly() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RelayCrashed) as e:
            Relay(RelayConfig(port=port)).start()
    assert e.value.exitcode == 2
    assert f"127.0.0.1:{port} is already in use" in e.value.stderr_tail
    assert "port 0" in e.value.stderr_tail


def test_address_not_on_this_machine_is_refused() -> None:
    # 192.0.2.0/24 is TEST-NET-1: never assigned to a local interface.
    proc = subprocess.run(_relay_cmd("--listen", "192.0.2.1:0"), capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 2
    assert "192.0.2.1 is not an address of this machine" in proc.stderr
    assert proc.stdout == ""


def test_unreadable_cert_is_refused(tmp_path: Path) -> None:
    missing = str(tmp_path / "none.pem")
    with pytest.raises(ConfigError, match="cert_file .* cannot be read"):
        Relay(RelayConfig(tls="user", cert_file=missing, key_file=missing))
    proc = subprocess.run(_relay_cmd("--tls", "user", "--cert", missing, "--key", missing),
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "cannot be read (No such file or directory)" in proc.stderr
    assert proc.stdout == ""


def test_relay_failure_before_ready_exits_2_with_its_reason(tmp_path: Path) -> None:
    # PEM-shaped but not a certificate: Python's checks pass, OpenSSL in the relay refuses.
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(RelayCrashed) as e:
        Relay(RelayConfig(tls="user", cert_file=str(bogus), key_file=str(bogus))).start()
    assert e.value.exitcode == 2
    assert "labkit relay: TLS set-up failed: " in e.value.stderr_tail


def test_tls_user_makes_a_private_self_signed_cert() -> None:
    with Relay(RelayConfig(tls="user")) as r:
        cert = Path(r.cert_file)
        key = cert.parent / "relay.key"
        assert stat.S_IMODE(cert.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        ctx = ssl.create_default_context(cafile=str(cert))  # verifies SAN 127.0.0.1
        with socket.create_connection((r.host, r.port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
    assert r.returncode == 0
    assert not cert.parent.exists(), "the host removes the certificate it made"


def test_counters_from_shared_memory() -> None:
    with Relay(RelayConfig()) as r:
        with socket.create_connection((r.host, r.port), timeout=2):
            pass
        # Workers publish once per loop pass, so the accept appears shortly after it.
        deadline = time.monotonic() + 5
        while r.counters()["conns_accepted"] < 1:
            assert time.monotonic() < deadline, r.worker_counters()
            time.sleep(0.01)
        rows = r.worker_counters()
        # One slot per data worker; the relay may add slots for its own threads
        # (the acceptor, currently last), which count towards the totals too.
        assert len(rows) >= r.workers
        row = rows[0]
        assert row["ns"] > 0
        assert len(row["completions_hist"]) == 16
        for name in ("loop_passes", "conns_accepted", "bytes_in", "conns_current", "pool_free"):
            assert isinstance(row[name], int)
        total = r.counters()
        assert set(total) == set(row) - {"ns", "tid", "completions_hist"}
        assert total["pool_free"] > 0 and total["conns_accepted"] >= 1


def test_counter_region_with_a_foreign_layout_is_refused() -> None:
    name = f"/labkit-test-{os.getpid()}"
    path = SHM / name.lstrip("/")
    path.write_bytes(b"\0" * 4096)
    try:
        with pytest.raises(CounterLayoutError, match="bad magic"):
            ShmCounters(name)
    finally:
        path.unlink()
    with pytest.raises(CounterLayoutError, match="has exited"):
        ShmCounters(name)


def test_sanitizer_module_runs_a_relay() -> None:
    with Relay(RelayConfig(), env={"LABKIT_SANITIZE": "1"}) as r:
        maps = Path(f"/proc/{r.pid}/maps").read_text()
        assert "_native_asan" in maps and "libasan" in maps
    assert r.returncode == 0, r.stderr_tail
