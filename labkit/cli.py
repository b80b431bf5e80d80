"""The `labkit` command line."""

import argparse

from labkit import load, load_host, relay_host
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
    load_cmd = sub.add_parser(
        "load",
        help="run a DERP load generator against a relay and report",
        description="P sender->receiver pairs of DERP clients against a relay. With --json: "
        "a ready line once connected, one result line at the end.",
    )
    load.add_arguments(load_cmd)
    args = parser.parse_args(argv)
    if args.command == "load":
        try:
            load_cfg = load.from_namespace(args)
        except ConfigError as e:
            parser.exit(load_host.EXIT_FAILED, f"labkit load: {e}\n")
        return load_host.main(load_cfg, args.json)
    try:
        cfg = from_namespace(args)
    except ConfigError as e:
        parser.exit(relay_host.EXIT_FAILED, f"labkit relay: {e}\n")
    return relay_host.main(cfg)
