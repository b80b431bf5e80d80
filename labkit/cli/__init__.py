"""The `labkit` command line (`labkit = "labkit.cli:main"`, and `python -m labkit`)."""

from labkit.cli.commands import main

__all__ = ["main"]
