"""The `labkit` command: its parser and dispatch. relay, load, doctor, sandbox and
testbed are handled here; run, sweep and report in labkit.cli.experiments.

doctor, sandbox and testbed work on a machine where the native module is not built yet
(that is when doctor matters most); the commands that need it (their flags come from the
contract's tables in the module) then say so and how to build it.
"""

import argparse
import sys
from typing import Any

from labkit import caps
from labkit.cli import experiments
from labkit.cli.args import Parser
from labkit.hosts import sandbox, testbed

NATIVE_COMMANDS = ("relay", "load", *experiments.COMMANDS)


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
    try:
        from labkit import native  # noqa: F401 - the flags below need its tables
    except ImportError as e:  # said when such a command is asked for; doctor still runs
        words = sys.argv[1:] if argv is None else argv
        if words[:1] and words[0] in NATIVE_COMMANDS:
            parser.exit(2, f"labkit {words[0]}: {e}\n")
    else:
        _add_native_commands(sub)
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
    testbed.add_arguments(sub.add_parser(
        "testbed", help="a testbed of hosts in network namespaces, with shaped links",
        description="Bring a testbed of N hosts (network namespaces on one bridge, each link "
        "shaped: delay, jitter, loss, rate) up or down, or say what stands. Needs root."))
    args = parser.parse_args(argv)
    if args.command == "doctor":
        return caps.main(["--json"] * args.json + ["--fresh"] * args.fresh)
    if args.command == "sandbox":
        command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        if not command:
            parser.exit(2, "labkit sandbox: give a command after --\n")
        return sandbox.main(command, args.timeout, args.results, args.mem, args.quiet)
    if args.command == "testbed":
        return testbed.main(args)
    if args.command in experiments.COMMANDS:
        return experiments.main(args, sub.choices[args.command], argv)
    return _run_process(args, sub.choices[args.command])


def _add_native_commands(sub: Any) -> None:
    from labkit.config import add_arguments
    from labkit.procs import load

    add_arguments(sub.add_parser(
        "relay",
        help="run a relay in this process until SIGTERM/SIGINT",
        description="Run a DERP relay. Prints one JSON line on stdout once it listens.",
    ))
    load.add_arguments(sub.add_parser(
        "load",
        help="run a DERP load generator against a relay and report",
        description="P sender->receiver pairs of DERP clients against a relay. With --json: "
        "a ready line once connected, one result line at the end.",
    ))
    experiments.add_commands(sub)  # run, sweep, report


def _run_process(args: argparse.Namespace, parser: Parser) -> int:
    """`labkit relay` or `labkit load`: this process becomes the relay (or load) host."""
    from labkit.config import ConfigError, from_namespace
    from labkit.procs import load, load_host, relay_host

    try:
        if args.command == "load":
            load_cfg = load.from_namespace(args).validate()
        else:
            relay_cfg = from_namespace(args).validate()
    except ConfigError as e:
        parser.exit_bad_config(e)
    return load_host.main(load_cfg, args.json) if args.command == "load" else \
        relay_host.main(relay_cfg)
