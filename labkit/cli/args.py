"""The command line's argument parsing: one-line errors that name the flag, and --help
that lists every default.

Every `labkit` command's parser is a `Parser`. A bad flag, whether argparse finds it
(`--workers two`) or a config's validate() does (`--workers 0`), ends the command before
anything starts or prints progress, with one line per problem that names the flag and
the fix, and exit status 2:

    labkit run: --workers 0 must be an integer 1..64
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn

from labkit.problems import ConfigError

EXIT_BAD_CONFIG = 2


class HelpFormatter(argparse.HelpFormatter):
    """Appends "(default: …)" to every option that has a default worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or default is argparse.SUPPRESS or default is None
                or action.nargs == 0 or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """argparse, with HelpFormatter and errors in one line (no usage dump)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        message = message.replace("argument ", "", 1)
        self.exit(EXIT_BAD_CONFIG, f"{self.prog}: {message} (see `{self.prog} --help`)\n")

    def flags(self) -> dict[str, str]:
        """Config field -> the flag that sets it (its dest, or a name set with
        set_defaults(_field_flags=...) where a flag's value maps to another field)."""
        names = {a.dest: next((o for o in a.option_strings if o.startswith("--")),
                              a.option_strings[0])
                 for a in self._actions if a.option_strings}
        return names | dict(self.get_default("_field_flags") or {})

    def exit_bad_config(self, e: ConfigError) -> NoReturn:
        """Print each problem of e in this command's flags, then exit 2."""
        for line in e.for_cli(self.flags()):
            print(f"{self.prog}: {line}", file=sys.stderr)
        self.exit(EXIT_BAD_CONFIG)
