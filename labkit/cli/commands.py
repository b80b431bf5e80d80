"""The `labkit` command: its parser and dispatch. relay, load, doctor and sandbox are
handled here; run, sweep and report in labkit.cli.experiments."""

import argparse

from labkit import caps
from labkit.cli import experiments
from labkit.cli.args import Parser
from labkit.config import ConfigError, add_arguments, from_namespace
from labkit.hosts import sandbox
from labkit.procs import load, load_host, relay_host


def main(argv: list[str] | None = None) -> int:
    """Run one `labkit` command; its exit status (a bad flag: 2, after one line naming it)."""
    try:
        return _main(argv)
    except SystemExit as e:  # argparse's own exits (--help, a bad flag) return here too
        return e.code if isinstance(e.code, int) else 2


def _main(argv: list[str] | None) -> int:
    parser = Parser(prog="labkit", description="DERP relay performance lab")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=Parser)
    relay = sub.add_parser(
        "relay",
        help="run a relay in this process until SIGTERM/SIGINT",
        description="Run a DERP relay. Prints one JSON line on stdout once it listens.",
    )
    add_arguments(relay)
    load_cmd = sub.add_parser(
        "load",
        help="run a DERP load generator against a relay and report",
        description="P sender->receiver pairs of DERP clients against a relay. With --json: "
        "a ready line once connected, one result line at the end.",
    )
    load.add_arguments(load_cmd)
    experiments.add_commands(sub)  # run, sweep, report
    doctor = sub.add_parser(
        "doctor",
        help="what this machine can do: io_uring, kTLS, perf, py-spy, sandbox",
        description="Probe each capability the lab uses and say what to do about a missing one.",
    )
    doctor.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    doctor.add_argument("--fresh", action="store_true",
                        help="boot the sandbox guest again instead of reading the cached check")
    sandbox_cmd = sub.add_parser(
        "sandbox",
        help="run a command inside a UML kernel (kTLS where the host has none)",
        description="Boot the sandbox's guest kernel (User-Mode Linux, built by `make setup`) "
        "over this machine's files "
        "(read-only), run COMMAND in it and exit with COMMAND's status. Use `--` before "
        "COMMAND. Figures measured inside are UML figures: one CPU, slow syscalls, no AES-NI.",
    )
    sandbox_cmd.add_argument("--timeout", type=float, default=sandbox.DEFAULT_TIMEOUT,
                             metavar="S", help="seconds COMMAND may run")
    sandbox_cmd.add_argument("--results", metavar="DIR", default=None,
                             help="host directory mounted read-write in the guest "
                             "($LABKIT_SANDBOX_RESULTS); default: a new temporary one")
    sandbox_cmd.add_argument("--mem", default=sandbox.DEFAULT_MEM, metavar="SIZE",
                             help="guest memory, e.g. 512M or 2G")
    sandbox_cmd.add_argument("--quiet", action="store_true", help="no timing line on stderr")
    sandbox_cmd.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND ...")
    args = parser.parse_args(argv)
    if args.command == "doctor":
        return caps.main(["--json"] * args.json + ["--fresh"] * args.fresh)
    if args.command == "sandbox":
        command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        if not command:
            parser.exit(2, "labkit sandbox: give a command after --\n")
        return sandbox.main(command, args.timeout, args.results, args.mem, args.quiet)
    if args.command in experiments.COMMANDS:
        return experiments.main(args, sub.choices[args.command], argv)
    if args.command == "load":
        try:
            load_cfg = load.from_namespace(args).validate()
        except ConfigError as e:
            load_cmd.exit_bad_config(e)
        return load_host.main(load_cfg, args.json)
    try:
        cfg = from_namespace(args).validate()
    except ConfigError as e:
        relay.exit_bad_config(e)
    return relay_host.main(cfg)
