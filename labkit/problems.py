"""What is wrong with a configuration, said once and shown in the caller's own terms.

A config's validate() collects every Problem and raises one ConfigError. The same problem
reads differently to its two audiences:

    Python:        workers=0 must be an integer 1..64
    command line:  --workers 0 must be an integer 1..64

and so do its fixes, which name other fields in a small markup: `{io}` is the field
io, `{io=uring}` that field with a value. str(error) renders for Python (io='uring');
error.for_cli(flags) renders with the command's own flags (--io uring, --no-batch for
batch=False). A problem whose command-line fix is not a flag rewrite of its Python one
(None means "unpaced" to --rate) carries a cli_fix of its own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_REF = re.compile(r"\{([a-z_][a-z0-9_]*)(?:=([^}]*))?\}")


@dataclass(frozen=True)
class Problem:
    """One thing wrong. `form` says how its text starts: "=" gives `workers=0 must be …`,
    " " gives `cert_file '/x.pem' cannot be read …` (paths), "" means `why` is the whole
    sentence (it names fields in the markup itself)."""

    field: str  # the config field the problem is about
    value: Any  # its value
    why: str  # what is wrong, e.g. "must be an integer 1..64"
    fix: str = ""  # what to do; may name fields as {name} or {name=value}
    cli_fix: str | None = None  # the fix on the command line, where it differs
    form: str = "="

    def render(self) -> str:
        why = python_text(self.why)
        head = {"=": f"{self.field}={self.value!r} ", " ": f"{self.field} {self.value!r} ",
                "": ""}[self.form]
        fix = python_text(self.fix)
        return f"{head}{why}: {fix}" if fix else f"{head}{why}"

    def render_cli(self, flags: Mapping[str, str]) -> str:
        def ref(m: re.Match[str]) -> str:
            return _cli_ref(m, flags)

        why = _REF.sub(ref, self.why)
        flag = flags.get(self.field, "--" + self.field.replace("_", "-"))
        value = "" if isinstance(self.value, bool) else f" {_cli_value(self.value)}"
        head = f"{flag}{value} " if self.form else ""
        fix = self.cli_fix if self.cli_fix is not None else _REF.sub(ref, self.fix)
        return f"{head}{why}: {fix}" if fix else f"{head}{why}"


class ConfigError(ValueError):
    """A configuration that cannot run; the message lists every problem and its fix."""

    def __init__(self, problems: Sequence[Problem] | str, what: str = "config") -> None:
        self.problems: list[Problem] = [] if isinstance(problems, str) else list(problems)
        self.what = what
        text = problems if isinstance(problems, str) else (
            f"invalid {what}:\n  - " + "\n  - ".join(p.render() for p in self.problems))
        super().__init__(text)

    def for_cli(self, flags: Mapping[str, str]) -> list[str]:
        """One line per problem, in the command's flags (the plain message when the error
        was raised from text rather than problems)."""
        if not self.problems:
            return [str(self)]
        return [p.render_cli(flags) for p in self.problems]


def python_text(text: str) -> str:
    """Markup ({io}, {io=uring}) rendered as Python names it."""
    return _REF.sub(_python_ref, text)


def raise_if(problems: Sequence[Problem], what: str) -> None:
    if problems:
        raise ConfigError(problems, what)


def _python_ref(m: re.Match[str]) -> str:
    name, value = m.group(1), m.group(2)
    return name if value is None else f"{name}={_python_value(value)}"


def _python_value(text: str) -> str:
    if text in ("True", "False", "None") or _is_number(text):
        return text
    return repr(text)


def _cli_ref(m: re.Match[str], flags: Mapping[str, str]) -> str:
    name, value = m.group(1), m.group(2)
    flag = flags.get(name, "--" + name.replace("_", "-"))
    if value is None or value == "True":
        return flag
    if value == "False":
        return "--no-" + flag.removeprefix("--")
    return f"{flag} {value}"


def _cli_value(value: Any) -> str:
    return "unset" if value is None else str(value)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
