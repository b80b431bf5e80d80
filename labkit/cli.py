"""The `labkit` command line."""

import argparse

from labkit import relay_host
from labkit.config import ConfigError, add_arguments, from_namespace


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="labkit", description="DERP relay performance lab")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    relay = sub.add_parser(
        "relay",
        help="run a relay in this process until SIGTERM/SIGINT",
        description="Run a DERP relay. Prints one JSON line on stdout once it listens.",
    )
    add_arguments(relay)
    args = parser.parse_args(argv)
    try:
        cfg = from_namespace(args)
    except ConfigError as e:
        parser.exit(relay_host.EXIT_FAILED, f"labkit relay: {e}\n")
    return relay_host.main(cfg)
