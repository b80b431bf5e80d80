"""Any DERP relay program as the relay under test (labkit.procs.external).

The generic path runs for real on every machine: labkit's own relay started as a plain
command line (`python -m labkit relay`), treated as opaque (no shared memory), is
started, probed with a DERP handshake, pinned, measured by /proc and perf on its pid,
and stopped by pid; its figures are cross-checked against the same relay run natively.
derper and Hyper-DERP run where their binaries are present and skip, saying so, where
they are not (they cannot be fetched on a machine without a Go toolchain).
"""

from __future__ import annotations

import math
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labkit import caps, derp, relay_binaries
from labkit.config import RelayConfig
from labkit.lab import experiment, window
from labkit.problems import ConfigError
from labkit.procs import presets
from labkit.procs.external import ExternalRelay, ExternalRelayFailed, descendants
from labkit.procs.load import LoadConfig
from labkit.procs.relay import RelayStartTimeout

RELAY = (sys.executable, "-m", "labkit", "relay", "--listen", "{host}:{port}")


def labkit_cli(*extra: str, name: str = "labkit-cli") -> ExternalRelay:
    return ExternalRelay(command=(*RELAY, *extra), name=name)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


# ---- descriptions: validated before anything starts ----------------------------------


def test_bad_descriptions_are_rejected_before_anything_starts() -> None:
    with pytest.raises(ConfigError, match="not an executable on PATH.*go install"):
        ExternalRelay(command=("no-such-relay-xyz", "{port}"),
                      install_hint="go install example").validate()
    with pytest.raises(ConfigError, match="port placeholder"):
        ExternalRelay(command=("sleep", "1")).validate()
    with pytest.raises(ConfigError, match="placeholder labkit does not fill"):
        ExternalRelay(command=("sleep", "{port}", "{nope}")).validate()
    with pytest.raises(ConfigError, match="loopback"):
        ExternalRelay(command=("sleep", "{port}"), host="0.0.0.0").validate()
    with pytest.raises(ConfigError, match="cores"):
        ExternalRelay(command=("sleep", "{port}"), cores=0).validate()
    with pytest.raises(ConfigError, match="non-empty list"):
        ExternalRelay(command="derper -a {port}").validate()  # type: ignore[arg-type]


def test_derper_presets_build_the_exact_command_lines() -> None:
    plain = presets.derper(path="/opt/go/bin/derper")
    assert plain.command == ("/opt/go/bin/derper", "-a", "{host}:{port}", "-stun=false",
                             "-http-port", "-1", "-mesh-psk-file", "", "-c",
                             "{state}/derper.key")
    assert (plain.name, plain.tls, plain.host) == ("derper", False, "127.0.0.1")
    assert "-dev" not in plain.command  # -dev would force :3340 on every interface
    tls = presets.derper(tls=True, path="/opt/go/bin/derper")
    assert tls.command == (*plain.command, "-certmode", "manual", "-certdir", "{certdir}",
                           "-hostname", "127.0.0.1")
    assert (tls.name, tls.tls, tls.cert_name, tls.ca_file) == ("derper-tls", True,
                                                               "127.0.0.1", None)
    assert tls.settings["stun"] == "off" and "0600" in tls.settings["tls"]


def test_hyper_derp_preset_builds_the_exact_command_line() -> None:
    hd = presets.hyper_derp(workers=2, path="/usr/local/bin/hyper-derp")
    assert hd.command == ("/usr/local/bin/hyper-derp", "--port", "{port}", "--workers", "2")
    assert (hd.name, hd.cores, hd.tls) == ("hyper-derp-2w", 2, False)
    assert "all interfaces" in hd.settings["listen"]  # it has no bind-address flag: said


def test_presets_find_binaries_on_path_or_by_variable(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "my-derper"
    fake.write_text("#!/bin/sh\necho 'fake derper 1.2.3'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("LABKIT_DERPER", str(fake))
    assert relay_binaries.find("derper") == str(fake)
    assert presets.derper().command[0] == str(fake)
    found = relay_binaries.present()["derper"]
    assert (found.path, found.version) == (str(fake), "fake derper 1.2.3")
    doctor = {c.name: c for c in caps.check_external_relays()}
    assert doctor["relay:derper"].ok is True and "fake derper 1.2.3" in doctor[
        "relay:derper"].detail
    monkeypatch.setenv("LABKIT_DERPER", str(tmp_path / "missing"))
    monkeypatch.setenv("LABKIT_HYPER_DERP", str(tmp_path / "missing"))
    doctor = {c.name: c for c in caps.check_external_relays()}
    assert doctor["relay:derper"].ok is None
    assert "go install tailscale.com/cmd/derper@latest" in doctor["relay:derper"].todo
    assert "hyper-derp" in doctor["relay:hyper-derp"].todo


# ---- the generic path, for real -------------------------------------------------------


def test_labkit_relay_as_an_external_program_answers_derp_and_stops_by_pid() -> None:
    proc = labkit_cli().process()
    with proc as relay:
        assert relay.host == "127.0.0.1" and relay.port > 0
        assert relay.counters() == {} and relay.shm_name is None
        assert relay.pids() == [relay.pid]
        # the key the readiness probe learned is the relay's: a second client sees it
        with derp.Client.connect(relay.host, relay.port) as c:
            assert c.server_key == relay.public_key
        pid = relay.pid
    assert not _alive(pid) and proc.orphans == []
    assert proc.stop() == 0  # twice is fine


def test_two_clients_talk_through_an_external_relay() -> None:
    """The pure-Python client (one frame per write) as the second kind of sender."""
    with labkit_cli().process() as relay:
        with derp.Client.connect(relay.host, relay.port) as a, \
                derp.Client.connect(relay.host, relay.port) as b:
            for i in range(50):
                a.send(b.public_key, b"p%03d" % i)
            got = [b.recv_packet(timeout=5).data for _ in range(50)]
    assert got == [b"p%03d" % i for i in range(50)]


def test_tls_relay_gets_a_labkit_certificate_with_a_0600_key() -> None:
    spec = ExternalRelay(command=(*RELAY, "--tls", "user", "--cert", "{cert}", "--key",
                                  "{key}"), name="labkit-cli-tls", tls=True,
                         cert_name="127.0.0.1")
    proc = spec.process()
    with proc as relay:
        assert relay.tls == "user"
        cert = Path(relay.cert_file or "")
        assert cert.name == "127.0.0.1.crt"
        key = cert.with_suffix(".key")
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert stat.S_IMODE(cert.parent.stat().st_mode) == 0o700
        with derp.Client.connect(relay.host, relay.port, tls=True, cafile=str(cert)) as c:
            assert c.server_key == relay.public_key
    assert not cert.parent.exists()  # the state directory goes with the relay


def test_leftover_children_are_stopped_and_reported() -> None:
    """A wrapper that dies on SIGTERM leaves its relay child behind: labkit finds it by
    pid and start time, stops it, and says so."""
    shell = f"{sys.executable} -m labkit relay --listen {{host}}:{{port}} & wait"
    proc = ExternalRelay(command=("sh", "-c", shell), name="wrapped").process()
    with proc as relay:
        tree = relay.pids()
        assert len(tree) == 2  # sh and the relay it started
        child = tree[1]
        assert child in descendants(relay.pid)
    assert proc.orphans == [child]
    assert not _alive(child)


def test_a_program_that_exits_fails_with_its_stderr_tail() -> None:
    spec = ExternalRelay(command=("sh", "-c", "echo 'bad flag -x' >&2; exit 3", "{port}"),
                         name="quitter")
    with pytest.raises(ExternalRelayFailed, match=r"(?s)exited before it answered DERP.*"
                       r"exit code 3.*bad flag -x"):
        spec.process().start()


def test_a_port_that_never_opens_times_out_with_the_reason() -> None:
    spec = ExternalRelay(command=("sh", "-c", "echo waiting >&2; exec sleep 30", "{port}"),
                         name="sleeper")
    proc = spec.process(start_timeout=1.0)
    with pytest.raises(RelayStartTimeout, match=r"(?s)port never opened.*waiting"):
        proc.start()
    assert not _alive(proc.pid)


def test_a_listener_that_is_not_derp_is_not_taken_for_a_relay() -> None:
    spec = ExternalRelay(command=(sys.executable, "-m", "http.server", "--bind", "{host}",
                                  "{port}"), name="web")
    with pytest.raises(RelayStartTimeout, match="open but the DERP handshake fails"):
        spec.process(start_timeout=2.0).start()


def test_a_port_held_by_a_stranger_is_said_so() -> None:
    with socket.socket() as stranger:
        stranger.bind(("127.0.0.1", 0))
        stranger.listen()
        port = stranger.getsockname()[1]
        spec = ExternalRelay(command=("sleep", "30"), port=port, name="late")
        with pytest.raises(RelayStartTimeout, match="held by a process that is not"):
            spec.process(start_timeout=1.0).start()


# ---- runs and sweeps ------------------------------------------------------------------


LOAD = LoadConfig(pairs=2, rate_mbps=200)


def test_external_and_native_runs_of_one_relay_agree() -> None:
    """The same relay (epoll) measured natively and as an opaque program: the figures
    both paths have agree, and the external run has no shm-only figures (NaN, never 0)."""
    runs = {}
    for rel in (labkit_cli("--io", "epoll"), RelayConfig(io="epoll")):
        r = experiment.run(rel, LOAD, duration=1.5, warmup=0.5, check=False)
        assert r.ok, r.summary["error"]
        runs[experiment.relay_name(rel)] = r
    ext, nat = runs["labkit-cli"].summary, runs["labkit-epoll"].summary
    assert ext["relay"] == "labkit-cli" and "not available" in ext["unavailable"]
    assert runs["labkit-cli"].meta["sources"]["relay"].startswith("not available")
    for k in window.SHM_ONLY:
        assert math.isnan(float(ext[k])), k
    assert nat["unavailable"] == "" and nat["drops"] == 0
    for s in (ext, nat):
        assert s["mbps"] > 0.8 * LOAD.rate_mbps and s["pinned"]
        assert s["relay_cpu_s"] > 0 and s["delivered_ctx_switches_per_packet"] > 0
    # CPU per delivered Gbit: the opaque run counts the relay host's Python threads too,
    # which idle in select(); the two stay within 2x on a busy machine
    ratio = ext["delivered_cpu_s_per_gbit"] / nat["delivered_cpu_s_per_gbit"]
    assert 0.5 < ratio < 2.0, ratio
    from labkit.counters.perf import perf_status

    if perf_status().ok:
        # perf on the whole pid (external) vs the relay's own syscall counters (native):
        # epoll paced costs about one syscall per packet either way
        e = ext["delivered_perf_syscalls_per_packet"]
        assert 0.6 * nat["syscalls_per_packet"] < e < 1.6 * nat["syscalls_per_packet"], e
        assert ext["perf_source"].startswith("live")


def test_a_relay_killed_mid_run_fails_with_its_stderr_tail_and_the_sweep_goes_on() -> None:
    loud = ExternalRelay(command=("sh", "-c", f"echo 'loud relay up' >&2; exec "
                                  f"{sys.executable} -m labkit relay --listen {{host}}:{{port}}"),
                         name="loud")
    killed = []

    def kill_loud(point: dict, rep: int, relay: object, load: object) -> None:
        if point["relay"] == "loud":
            os.kill(relay.pid, signal.SIGKILL)  # type: ignore[attr-defined]
            killed.append(relay.pid)  # type: ignore[attr-defined]

    res = experiment.sweep({"rate_mbps": [100]}, relays=[loud, RelayConfig(io="epoll")],
                           repeats=1, duration=1.0, warmup=0.3, store=False,
                           progress=False, on_start=kill_loud, load=LoadConfig(pairs=1))
    rows = res.runs.set_index("relay")
    assert killed and list(res.runs["relay"]) == ["loud", "labkit-epoll"]
    assert rows.loc["loud", "status"] == "failed"
    assert "died mid-run (killed by signal 9)" in rows.loc["loud", "error"]
    assert "loud relay up" in rows.loc["loud", "stderr_tail"]
    assert rows.loc["labkit-epoll", "status"] == "ok"
    assert res.fairness["relay_cores"] == {"loud": 1, "labkit-epoll": 1}
    assert res.fairness["unequal"] == []


def test_sweep_relays_are_checked_before_anything_runs() -> None:
    a = labkit_cli()
    with pytest.raises(ConfigError, match="two relays are named"):
        experiment.sweep({}, relays=[a, a], store=False, progress=False)
    with pytest.raises(ConfigError, match="may not vary io"):
        experiment.sweep({"io": ["epoll"]}, relays=[a], store=False, progress=False)
    with pytest.raises(ConfigError, match="not an executable"):
        experiment.sweep({}, relays=[ExternalRelay(command=("nope-xyz", "{port}"))],
                         store=False, progress=False)


def test_unequal_relay_cores_are_named_in_the_fairness_statement() -> None:
    resolved = [({}, labkit_cli(), LOAD, "a"), ({}, RelayConfig(workers=2), LOAD, "b")]
    fair = experiment._sweep_fairness(resolved, 10.0, "auto", True)
    assert fair["unequal"] == ["relay cores differ: {'labkit-cli': 1, 'labkit-epoll-2w': 2}"]


def test_labkit_run_relay_cmd_reports_a_bad_program() -> None:
    cmd = [sys.executable, "-m", "labkit", "run", "--relay-cmd",
           "sh -c 'echo cannot bind >&2; exit 4' {port}", "--no-store", "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "exited before it answered DERP" in done.stderr and "cannot bind" in done.stderr
    missing = subprocess.run([sys.executable, "-m", "labkit", "run", "--relay-cmd",
                              "no-such-relay-xyz {port}", "--no-store"],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "--relay-cmd no-such-relay-xyz" in missing.stderr


# ---- the real anchors, where present ---------------------------------------------------


def _preset_or_skip(preset: str) -> str:
    path = relay_binaries.find(preset)
    if path is None:
        pytest.skip(f"{preset} is not installed here (found neither on PATH nor by its "
                    f"variable); to run this test: {relay_binaries.BINARIES[preset][2]}")
    return path


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_derper_runs_under_the_lab_load(tls: bool) -> None:
    _preset_or_skip("derper")
    r = experiment.run(presets.derper(tls=tls), LOAD, duration=1.0, warmup=0.5, check=False)
    assert r.ok, f"{r.summary['error']}\n{r.summary['stderr_tail']}"
    assert r.summary["mbps"] > 0.5 * LOAD.rate_mbps
    assert math.isnan(float(r.summary["syscalls_per_packet"]))
    assert r.meta["external"]["orphans"] == []


def test_hyper_derp_runs_under_the_lab_load() -> None:
    _preset_or_skip("hyper-derp")
    r = experiment.run(presets.hyper_derp(workers=1), LOAD, duration=1.0, warmup=0.5,
                       check=False)
    assert r.ok, f"{r.summary['error']}\n{r.summary['stderr_tail']}"
    assert r.summary["mbps"] > 0.5 * LOAD.rate_mbps


def test_probe_waits_for_a_slow_starter() -> None:
    """Readiness is a DERP answer, not a sleep: a relay that binds a second late is
    still found, and no sooner than it listens."""
    shell = f"sleep 1; exec {sys.executable} -m labkit relay --listen {{host}}:{{port}}"
    t0 = time.monotonic()
    with ExternalRelay(command=("sh", "-c", shell), name="slow").process() as relay:
        assert time.monotonic() - t0 >= 1.0
        with derp.Client.connect(relay.host, relay.port) as c:
            assert c.server_key == relay.public_key


def test_a_flame_graph_of_an_external_relay() -> None:
    """py-spy and perf record any pid: the opaque relay gets its flame graph too."""
    import labkit
    from labkit.counters.pyspy import ProfileUnavailable
    from labkit.procs.load import Load

    with labkit_cli().process() as relay:
        load = Load(LoadConfig(host=relay.host, port=relay.port, pairs=2, rate_mbps=200,
                               duration=5, warmup=0)).start()
        try:
            fg = labkit.profile(relay, 1.0)
        except ProfileUnavailable as e:
            pytest.skip(f"no profiler can record here: {e}")
        finally:
            load.stop()
    assert any(v.startswith("live") for v in fg.sources.values()), fg.sources
    assert fg.top(1) and fg.top(1)[0][1] > 0


def test_a_sweep_file_lists_relays_of_every_kind(tmp_path: Path) -> None:
    from labkit.lab.sweepfile import sweep_args_from_toml

    f = tmp_path / "s.toml"
    f.write_text('[grid]\nrate_mbps = [100]\n\n[[relays]]\nio = "uring"\n\n[[relays]]\n'
                 'preset = "hyper-derp"\nworkers = 2\n\n[[relays]]\npreset = "derper-tls"\n\n'
                 '[[relays]]\nname = "mine"\ncommand = ["my-relay", "--port", "{port}"]\n'
                 'cores = 2\n')
    kw = sweep_args_from_toml(f)
    uring, hd, derper_tls, mine = kw["relays"]
    assert uring == RelayConfig(io="uring")
    assert hd.name == "hyper-derp-2w" and hd.command[1:] == ("--port", "{port}",
                                                             "--workers", "2")
    assert derper_tls.tls and "-certmode" in derper_tls.command
    assert (mine.name, mine.command, mine.cores) == ("mine", ("my-relay", "--port",
                                                              "{port}"), 2)
    f.write_text('[grid]\nrate_mbps = [100]\n[[relays]]\ncommand = ["x"]\nbogus = 1\n')
    with pytest.raises(ConfigError, match="unknown key.*bogus"):
        sweep_args_from_toml(f)
    f.write_text('[grid]\nrate_mbps = [100]\n[[relays]]\npreset = "nginx"\n')
    with pytest.raises(ConfigError, match="preset 'nginx' is not one of"):
        sweep_args_from_toml(f)


def test_a_run_says_when_a_wrapper_hides_the_relay_from_its_counters() -> None:
    """/proc and perf watch the started pid: a wrapper that forks the relay would leave
    the relay's work unmeasured, and the run says so instead of passing it off."""
    shell = f"{sys.executable} -m labkit relay --listen {{host}}:{{port}} & wait"
    r = experiment.run(ExternalRelay(command=("sh", "-c", shell), name="wrapped"),
                       LoadConfig(pairs=1, rate_mbps=50), duration=0.5, warmup=0.2,
                       check=False)
    assert r.ok
    assert "a child of the started pid" in r.summary["error"]
    assert "left 1 process(es) running" in r.summary["error"]
    assert len(r.meta["external"]["orphans"]) == 1
