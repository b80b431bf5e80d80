"""`labkit run`, `labkit sweep CONFIG.toml`, `labkit report RUNS… -o report.html`.

The handlers build the same RelayConfig/LoadConfig the Python API does and let it validate
them, so a bad option fails with the API's own ConfigError text (exit 2). A failed run
exits 1 after it is recorded. Heavy imports (pandas, bokeh, scipy) happen inside the
handlers: `labkit relay` and `labkit load`, which start every child process, stay light.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from labkit.cli.args import EXIT_BAD_CONFIG, Parser
from labkit.problems import ConfigError

COMMANDS = ("run", "sweep", "report")
EXIT_FAILED_RUN = 1
_SUMMARY = (("mbps", "Mbit/s delivered", ".1f"), ("loss_pct", "% loss", ".2f"),
            ("syscalls_per_packet", "syscalls/packet (relay count)", ".3f"),
            ("perf_syscalls_per_packet", "syscalls/packet (perf)", ".3f"),
            ("ctx_switches_per_kpkt", "ctx switches/1000 packets", ".1f"),
            ("cpu_s_per_gbit", "relay CPU·s/Gbit", ".3f"),
            ("relay_cpu_pct", "relay CPU %", ".1f"),
            ("lat_p50_us", "latency p50 µs", ".1f"), ("lat_p99_us", "latency p99 µs", ".1f"))
# per packet the load generator received: the figures every relay, external too, has
_DELIVERED = (("delivered_perf_syscalls_per_packet", "syscalls/delivered packet (perf)", ".3f"),
              ("delivered_ctx_switches_per_packet", "ctx switches/delivered packet", ".4f"),
              ("delivered_cpu_s_per_gbit", "relay CPU·s/delivered Gbit", ".3f"))


def add_commands(sub: Any) -> None:
    """Register run, sweep and report on the `labkit` sub-parser."""
    from labkit.config import add_relay_arguments
    from labkit.procs.load import add_load_arguments

    run = sub.add_parser("run", help="one measured run: relay + load + sampler, stored",
                         description="Start a relay and a load generator (own processes, "
                         "pinned to different CPUs where possible), measure a window after "
                         "a warm-up, print the derived figures and store the run.")
    add_relay_arguments(run.add_argument_group("relay"))
    _add_external_args(run.add_argument_group(
        "external relay (instead of labkit's: any DERP relay program)"))
    g = run.add_argument_group("load")
    add_load_arguments(g)
    _add_measure_args(run)
    run.add_argument("--duration", type=float, default=2.0, metavar="S",
                     help="measured window, seconds")
    run.add_argument("--warmup", type=float, default=0.5, metavar="S",
                     help="seconds of load before the window, not measured")
    run.add_argument("--json", action="store_true", help="print the summary row as JSON")
    hosts = run.add_argument_group("across hosts (dask.distributed)")
    hosts.add_argument("--cluster", metavar="ADDRESS|SCHEDULER_FILE", default=None,
                       help="run the relay on one worker of this dask scheduler and the load "
                       "on others (tcp://HOST:PORT, or a scheduler file)")
    hosts.add_argument("--load-hosts", dest="load_hosts", type=int, default=None,
                       metavar="N", help="with --cluster: load generators on N workers, the "
                       "pairs split between them (default 1)")
    run.set_defaults(_field_flags={"rate_mbps": "--rate", "command": "--relay-cmd",
                                   "cores": "--relay-cores", "ca_file": "--relay-ca",
                                   "load_hosts": "--load-hosts"})

    sweep = sub.add_parser("sweep", help="a grid of runs with interleaved repeats",
                           description="Run the grid of a TOML sweep file (see bench/*.toml) "
                           "with interleaved repeats, store every run, print statistics "
                           "(mean, 95%% CI) and Welch's t-test between the compared modes. "
                           "Points this machine already stored are skipped (resume).")
    sweep.add_argument("config", metavar="CONFIG.toml")
    sweep.add_argument("--repeats", type=int, default=None, metavar="N",
                       help="override the file's repeats")
    sweep.add_argument("--name", default=None, help="sweep name (the resume key); overrides "
                       "the file's")
    sweep.add_argument("--no-resume", dest="resume", action="store_false",
                       help="run every point even if stored")
    sweep.add_argument("--report", metavar="HTML", help="also write a report of the sweep")
    sweep.add_argument("--record", action="store_true",
                       help="maintainers: store the runs as RECORDED reference runs in "
                       "data/runs (the notebooks' fallback); implies --no-resume")
    _add_measure_args(sweep, defaults=False)

    report = sub.add_parser("report", help="one self-contained HTML page of stored runs",
                            description="Read run files (or directories of them) and write "
                            "one HTML page with the comparison figures, statistics and "
                            "failures; bokeh's JavaScript is inlined (no network needed).")
    report.add_argument("runs", nargs="+", metavar="RUNS", help="parquet files or directories")
    report.add_argument("-o", "--output", required=True, metavar="report.html")
    report.add_argument("--title", default=None)


def _add_external_args(g: Any) -> None:
    from labkit.procs.presets import PRESETS

    g.add_argument("--relay-cmd", metavar="CMD", default=None,
                   help="run this relay program instead (shell words, no shell): {port} is "
                   "replaced by a free loopback port, {host} by 127.0.0.1, {state} by a "
                   "fresh directory, {cert}/{key}/{certdir} by labkit's certificate with "
                   "--relay-tls; e.g. 'derper -a {host}:{port} -stun=false -c "
                   "{state}/k.json'")
    g.add_argument("--relay-preset", choices=sorted(PRESETS), default=None,
                   help="a known relay on PATH: derper (plain), derper-tls (labkit's "
                   "certificate), hyper-derp (plain); `labkit doctor` says which are here")
    g.add_argument("--relay-name", default=None, metavar="NAME",
                   help="how results name the --relay-cmd relay (default: its program)")
    g.add_argument("--relay-tls", action="store_true",
                   help="the --relay-cmd relay speaks TLS (labkit makes its certificate "
                   "unless --relay-ca gives the one to trust)")
    g.add_argument("--relay-ca", default=None, metavar="PEM",
                   help="certificate the load generator trusts for a --relay-tls relay")
    g.add_argument("--relay-cores", type=int, default=1, metavar="N",
                   help="relay CPUs an external relay is pinned to")


def _external_relay(args: argparse.Namespace) -> Any:
    """The ExternalRelay of --relay-cmd/--relay-preset, or None for labkit's relay."""
    import shlex

    from labkit.procs.external import ExternalRelay
    from labkit.procs.presets import PRESETS

    if args.relay_cmd is not None and args.relay_preset is not None:
        raise ConfigError("give --relay-cmd or --relay-preset, not both")
    if args.relay_preset is not None:
        return PRESETS[args.relay_preset]()
    if args.relay_cmd is None:
        return None
    try:
        argv = shlex.split(args.relay_cmd)
    except ValueError as e:
        raise ConfigError(f"--relay-cmd {args.relay_cmd!r}: {e}") from None
    name = args.relay_name or (os.path.basename(argv[0]) if argv else "external")
    return ExternalRelay(command=tuple(argv), name=name, tls=args.relay_tls,
                         ca_file=args.relay_ca, cores=args.relay_cores)


def _add_measure_args(p: argparse.ArgumentParser, defaults: bool = True) -> None:
    from labkit.lab import store

    g = p.add_argument_group("measurement")
    g.add_argument("--hz", type=float, default=10.0 if defaults else None, metavar="HZ",
                   help="sampler ticks per second" + ("" if defaults else
                                                      " (default: the file's, else 10)"))
    g.add_argument("--perf", choices=("auto", "on", "off"), default="auto" if defaults else None,
                   help="perf syscall counts: auto (when available), on (required), off")
    g.add_argument("--no-pin", dest="pin", action="store_false", default=None,
                   help="do not pin relay and load to different CPUs")
    g.add_argument("--store", metavar="DIR", default=None,
                   help=f"where run files go (default: {store.default_dir()}, or $LABKIT_RUNS)")
    g.add_argument("--no-store", dest="no_store", action="store_true",
                   help="do not store runs")
    g.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar")
    g.add_argument("--sandbox", action="store_true",
                   help="run inside `labkit sandbox` (a UML kernel with kTLS): for --tls ktls "
                   "where this kernel has none; UML figures are counts, not speed")


def _perf(value: str | None) -> str | bool:
    return {"auto": "auto", "on": True, "off": False, None: "auto"}[value]


def _store_arg(args: argparse.Namespace, default: Any = True) -> Any:
    if args.no_store:
        return False
    return args.store if args.store is not None else default


def _in_sandbox(args: argparse.Namespace, argv: list[str]) -> int:
    """The same command inside the sandbox guest, its run files written back to the
    host's store; the guest command's exit status is returned."""
    from labkit.hosts import sandbox
    from labkit.lab import store

    inner = [sys.executable, "-m", "labkit", *(a for a in argv if a != "--sandbox")]
    writable = [] if args.no_store else [args.store or store.default_dir()]
    for d in writable:
        os.makedirs(d, exist_ok=True)
    print(f"labkit {args.command}: in the UML sandbox (one CPU, no AES-NI: its figures are "
          "counts, not speed)", file=sys.stderr)
    done = sandbox.run_in_sandbox(inner, writable=writable)
    return done.returncode


def main(args: argparse.Namespace, parser: Parser, argv: list[str] | None = None) -> int:
    """Run one of COMMANDS; `parser` is its sub-parser (its flags name the problems)."""
    prog = f"labkit {args.command}"
    if getattr(args, "sandbox", False):
        try:
            return _in_sandbox(args, list(sys.argv[1:] if argv is None else argv))
        except (OSError, RuntimeError) as e:  # SandboxUnavailable says what to install
            print(f"{prog}: {e}", file=sys.stderr)
            return EXIT_BAD_CONFIG
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "sweep":
            return _sweep(args)
        return _report(args)
    except ConfigError as e:
        parser.exit_bad_config(e)
    except OSError as e:  # StoreError and unreadable inputs: the message says what to do
        print(f"{prog}: {e}", file=sys.stderr)
        return EXIT_BAD_CONFIG


def _run(args: argparse.Namespace) -> int:
    from labkit.config import SWITCHES, RelayConfig
    from labkit.lab import experiment
    from labkit.procs.load import LoadConfig

    relay = _external_relay(args) or RelayConfig(
        io=args.io, tls=args.tls, workers=args.workers,
        **{s: getattr(args, s) for s in SWITCHES})
    load = LoadConfig(pairs=args.pairs, size=args.size, rate_mbps=args.rate,
                      threads=args.threads, duration=args.duration, warmup=args.warmup,
                      sender=args.sender)
    store = _store_arg(args)
    # everything is checked before the progress bar exists: a bad flag prints one line
    experiment.check_run(relay, load, hz=args.hz, store=store, cluster=args.cluster,
                         load_hosts=args.load_hosts)
    with _cluster_client(args.cluster) as client:
        return _run_measured(args, relay, load, store, client)


def _cluster_client(where: str | None) -> Any:
    """A distributed.Client for --cluster (an address or a scheduler file), or a null
    context without it; OSError "no dask scheduler reached" when there is none."""
    import contextlib

    if where is None:
        return contextlib.nullcontext(None)
    from distributed import Client

    as_file = os.path.isfile(where)
    try:
        return Client(scheduler_file=where, timeout=10) if as_file else \
            Client(where, timeout=10)
    except (OSError, TimeoutError, ValueError) as e:
        raise OSError(f"no dask scheduler reached at {where}: {e}") from None


def _run_measured(args: argparse.Namespace, relay: Any, load: Any, store: Any,
                  client: Any) -> int:
    import json

    from tqdm.auto import tqdm

    from labkit.lab import experiment

    placement = None
    if client is not None:
        from labkit.hosts.cluster import ClusterError, Placement

        try:
            placement = Placement.spread(client, args.load_hosts or 1)
        except ClusterError as e:
            raise OSError(str(e)) from None
        print(placement.describe())
    bar: Any = None

    def tick(row: dict[str, float]) -> None:
        nonlocal bar
        if bar is None:  # the run has started
            bar = tqdm(total=round(args.warmup + args.duration, 1),
                       desc=experiment.relay_name(relay), unit="s",
                       disable=not args.progress,
                       bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s {postfix}")
        bar.n = min(round(row["t"], 1), bar.total)
        bar.set_postfix_str(f"{row['mbps']:.0f} Mbit/s", refresh=True)

    try:
        result = experiment.run(relay, load, hz=args.hz, perf=_perf(args.perf),
                                pin=args.pin is not False, live=tick, store=store,
                                check=False, cluster=client, placement=placement)
    finally:
        if bar is not None:
            bar.close()
    s = result.summary
    if args.json:
        print(json.dumps({k: _jsonable(v) for k, v in s.items()}))
    else:
        print(f"run {s['run_id']}: {result.status}" + (f" ({s['pinning']})" if result.ok else ""))
        print(f"relay {s['relay']}: {s['relay_settings']}")
        if result.ok:
            for key, label, fmt in _SUMMARY + _DELIVERED:
                v = float(s[key])
                text = format(v, fmt) if v == v else "not available for this relay"
                print(f"  {label:<32} {text}")
        if result.path is not None:
            print(f"stored: {result.path}")
    if not result.ok:
        print(f"labkit run: {result.error}\n{s.get('stderr_tail') or ''}".rstrip(),
              file=sys.stderr)
        return EXIT_FAILED_RUN
    return 0


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and v != v:
        return None
    return v


def _sweep(args: argparse.Namespace) -> int:
    import pandas as pd

    from labkit.lab import experiment
    from labkit.lab.sweepfile import sweep_args_from_toml
    from labkit.views import report

    kw = sweep_args_from_toml(args.config)
    for key in ("repeats", "name", "hz"):
        if getattr(args, key) is not None:
            kw[key] = getattr(args, key)
    if args.perf is not None:
        kw["perf"] = _perf(args.perf)
    if args.pin is not None:
        kw["pin"] = args.pin
    if args.record:
        from labkit.lab import store

        kw["store"], kw["recording"], args.resume = store.RECORDED_DIR, True, False
    else:
        kw["store"] = _store_arg(args, kw.get("store", True))
    result = experiment.sweep(**kw, resume=args.resume, progress=args.progress)
    print(result)
    for name, settings in result.fairness.get("relays", {}).items():
        print(f"relay {name}: {settings}")
    if result.fairness:
        print("same for every relay: " + "; ".join(result.fairness["same_for_every_relay"]))
        for note in result.fairness["unequal"]:
            print(f"NOT EQUAL: {note}")
    if not result.stats.empty:
        headline = result.stats[result.stats["metric"].isin(
            ["mbps", "syscalls_per_packet", "cpu_s_per_gbit", "loss_pct",
             "delivered_cpu_s_per_gbit", "delivered_perf_syscalls_per_packet"])]
        with pd.option_context("display.width", 160, "display.max_columns", 20):
            print(headline.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if not result.comparisons.empty:
        c = result.comparisons
        c = c[c["metric"].isin(["syscalls_per_packet", "cpu_s_per_gbit", "mbps",
                                "delivered_cpu_s_per_gbit"])]
        print("\nWelch's t-test (b vs a):")
        with pd.option_context("display.width", 160, "display.max_columns", 20):
            print(c.drop(columns=["factor"]).to_string(index=False,
                                                        float_format=lambda v: f"{v:.4g}"))
    for _, f in result.failures.iterrows():
        print(f"not ok: {f['run_id']}: {f['status']}: {f['error']}", file=sys.stderr)
    if args.report:
        paths = [str(p) for p in result.runs.get("path", pd.Series(dtype=str)).dropna()]
        if paths:
            print(f"report: {report.write(paths, args.report, title=result.name)}")
    return 0 if result.failures.empty else EXIT_FAILED_RUN


def _report(args: argparse.Namespace) -> int:
    from labkit.views import report

    path = report.write(args.runs, args.output, title=args.title)
    print(f"report: {path}")
    return 0
