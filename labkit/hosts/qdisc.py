"""What this kernel can shape, and the tc commands that give one testbed link its shape.

    shaping_caps()    # {"netem": "Error: Specified qdisc kind is unknown.", "tbf": True, ...}
    doctor_check()    # (ok, detail, todo) for `labkit doctor`
    shape = LinkShape.parse(delay="20ms", loss="0.5%", rate="1gbit")
    apply_shape("lk-h1", "lk-h1", shape)   # namespace, device

Why probe each qdisc by creating it: the qdiscs of this lab's kernels are built in, with
no module directory to look into (the host's kernel has none at all), and neither
/proc nor sysfs lists the qdisc kinds a kernel knows. The one reliable answer is to add
each kind to a throwaway veth in a throwaway namespace and keep tc's error text when it
fails. Checked on the lab host: `tbf` and `htb` are there, `netem` is not ("Specified
qdisc kind is unknown"), and neither is `dummy` (so the probe device is a veth, which
the testbed needs anyway). The sandbox guest's kernel has all three
(labkit/hosts/guest_kernel.py builds it with NET_SCH_NETEM).

netem does delay, jitter and loss; tbf does rate. When a link needs both, netem is the
root and tbf its child (handle 1: then 10:), the layout netem's own documentation gives:
packets are delayed (or dropped) first, then leave at the configured rate.

Delay, jitter and loss are never faked in userspace when netem is missing: a sleep in a
program delays that program, not the network, so the relay's queues, TCP's congestion
control and the kernel's counters would not see it. apply_shape() refuses instead, and
the refusal says where netem exists: the sandbox guest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from typing import Any

COMMAND_TIMEOUT = 30.0
# netem holds every delayed packet; its default limit of 1000 packets tail-drops (loss
# nobody asked for) once more than that are in flight: at 20 ms that is only 50 k pps, a
# rate the relay's small DERP frames exceed. 100 k packets is 20 ms at 5 M pps.
NETEM_LIMIT_PACKETS = 100_000
# tbf's bucket: 4 ms of traffic at the configured rate (a 64 KiB GSO packet fits at
# 1 gbit), never less than two full-size Ethernet frames (a frame larger than the
# bucket would be dropped, not delayed).
TBF_BURST_SECONDS = 0.004
TBF_MIN_BURST_BYTES = 2 * 1514
# tbf's queue: 50 ms of traffic, the buffer of a WAN bottleneck; beyond it packets are
# dropped, as a real link drops them.
TBF_QUEUE_MS = 50
PROBED_KINDS = ("netem", "tbf", "htb")
_PROBE_ARGS = {"netem": ["delay", "1ms"], "tbf": ["rate", "1mbit", "burst", "32kbit",
                                                   "latency", "50ms"],
               "htb": ["default", "1"]}
# Not a valid testbed name (those have no "_"), so no testbed's prefix ever matches it.
SCRATCH_PREFIX = "labkit_scratch_"
NETEM_HINT = ("run it inside the sandbox guest, where netem exists: "
              "labkit.hosts.testbed.in_guest('module:function'), or "
              "`labkit sandbox -- python -m labkit.hosts.testbed ...`; rate shaping alone "
              "(tbf) works here")


class CommandError(RuntimeError):
    """A command the testbed ran failed; the message has the command line and its stderr."""

    def __init__(self, message: str, stderr: str = "") -> None:
        super().__init__(message)
        self.stderr = stderr  # what the command itself said, "" when it did not run


class SettingError(ValueError):
    """A testbed or link setting is invalid. `setting` names it as the CLI flag does,
    without the dashes ("delay", "hosts"), so the CLI can say which flag to fix."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(message)
        self.setting = setting


class ShapingUnavailable(RuntimeError):
    """This kernel lacks the qdisc a requested shape needs; the message says where to go."""


def command(argv: Sequence[str], *, input: str | None = None,
            timeout: float = COMMAND_TIMEOUT) -> str:
    """Run an iproute2 command (with `input` on its stdin, for -batch) and return its
    stdout; CommandError (with the command and its stderr) if it fails, cannot start or
    hangs."""
    line = shlex.join(argv)
    try:
        r = subprocess.run(list(argv), input=input, capture_output=True, text=True,
                           timeout=timeout)
    except FileNotFoundError:
        raise CommandError(f"`{line}`: {argv[0]} is not installed: install iproute2 "
                           "(apt-get install iproute2)") from None
    except subprocess.TimeoutExpired:
        raise CommandError(f"`{line}` did not finish within {timeout:.0f} s") from None
    if r.returncode != 0:
        said = r.stderr.strip() or r.stdout.strip() or "(no message)"
        raise CommandError(f"`{line}` failed (exit {r.returncode}): {said}", said)
    return r.stdout


def command_json(argv: Sequence[str]) -> list[dict[str, Any]]:
    """An `ip -j`/`tc -j` listing; some print nothing at all when there is nothing."""
    out = command(argv).strip()
    return json.loads(out) if out else []


# ---- the shape of a link ----------------------------------------------------------------

_QUANTITY = re.compile(r"(?P<number>\d+(?:\.\d+)?)(?P<unit>[^\d.]*)")
_TIME_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3}
_RATE_UNITS_MBIT = {"kbit": 1e-3, "mbit": 1.0, "gbit": 1e3}


def _quantity(text: str, units: dict[str, float], example: str) -> float:
    """A number with one of `units` right after it, in the units' common scale; ValueError
    says what is wrong and how to write it."""
    names = ", ".join(units)
    match = _QUANTITY.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a number with a unit: write e.g. {example} "
                         f"(a number, then {names}, no space)")
    unit = match["unit"]
    if not unit:
        raise ValueError(f"{text!r} has no unit: write e.g. {text}{example.lstrip('0123456789.')}"
                         f" (units: {names})")
    if unit not in units:
        fixed = unit.strip().lower()
        hint = f"; write {match['number']}{fixed}" if fixed in units else ""
        raise ValueError(f"{text!r}: unknown unit {unit!r} (units: {names}){hint}")
    return float(match["number"]) * units[unit]


def parse_duration_ms(text: str) -> float:
    """'20ms' -> 20.0, '500us' -> 0.5, '1s' -> 1000.0; nothing else."""
    return _quantity(text, _TIME_UNITS_MS, "20ms")


def parse_percent(text: str) -> float:
    """'0.5%' -> 0.5; a bare number is refused (a fraction or a percentage?)."""
    return _quantity(text, {"%": 1.0}, "0.5%")


def parse_rate_mbit(text: str) -> float:
    """'1gbit' -> 1000.0, '50mbit' -> 50.0, '512kbit' -> 0.512 (bits per second, as tc
    counts them; 'mbps' and 'MB' are refused: bytes or bits?)."""
    return _quantity(text, _RATE_UNITS_MBIT, "100mbit")


@dataclasses.dataclass(frozen=True)
class LinkShape:
    """What one host's link does to its traffic; zero means "not shaped" for each field.

    delay_ms, jitter_ms and loss_pct apply once, where the host's packets leave the
    switch towards it (netem on the switch's side), so two testbed hosts see a round
    trip of 2 x delay_ms and
    a round trip survives with probability (1 - loss_pct/100)^2. Each packet's delay is
    drawn from delay_ms +- jitter_ms (uniform), so jitter reorders packets, as netem does.
    rate_mbit limits both directions of the link (tbf on both ends): a host can neither
    send nor receive faster, whoever the peers are.
    """

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0
    rate_mbit: float = 0.0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise SettingError(field.name.rsplit("_", 1)[0],
                                   f"LinkShape.{field.name} must be a finite number >= 0, "
                                   f"not {value!r}")
        if self.loss_pct > 100:
            raise SettingError("loss", f"a loss is a percentage, at most 100 %, not "
                                       f"{self.loss_pct:g} %")
        if self.jitter_ms > self.delay_ms:
            raise SettingError("jitter", f"a jitter of {self.jitter_ms:g} ms around a delay of "
                                         f"{self.delay_ms:g} ms would ask for negative delays: "
                                         "give a delay at least as large as the jitter")

    @classmethod
    def parse(cls, delay: str | None = None, jitter: str | None = None,
              loss: str | None = None, rate: str | None = None) -> LinkShape:
        """From strings with units ('20ms', '2ms', '0.5%', '1gbit'); None or "": not
        shaped. SettingError names the setting that is wrong."""
        parsed = {}
        for setting, text, parse in (("delay", delay, parse_duration_ms),
                                     ("jitter", jitter, parse_duration_ms),
                                     ("loss", loss, parse_percent),
                                     ("rate", rate, parse_rate_mbit)):
            try:
                parsed[setting] = parse(text) if text else 0.0
            except ValueError as e:
                raise SettingError(setting, str(e)) from None
        return cls(delay_ms=parsed["delay"], jitter_ms=parsed["jitter"],
                   loss_pct=parsed["loss"], rate_mbit=parsed["rate"])

    @property
    def needs_netem(self) -> bool:
        return self.delay_ms > 0 or self.loss_pct > 0

    def rate_only(self) -> LinkShape:
        """The part of this shape that the receiving end of the link applies."""
        return LinkShape(rate_mbit=self.rate_mbit)

    def describe(self) -> str:
        parts = []
        if self.delay_ms:
            parts.append(f"delay {self.delay_ms:g} ms"
                         + (f" +- {self.jitter_ms:g} ms" if self.jitter_ms else ""))
        if self.loss_pct:
            parts.append(f"loss {self.loss_pct:g} %")
        if self.rate_mbit:
            parts.append(f"rate {self.rate_mbit:g} Mbit/s")
        return ", ".join(parts) or "unshaped"


def _netem_args(shape: LinkShape) -> list[str]:
    args = ["netem", "limit", str(NETEM_LIMIT_PACKETS)]
    if shape.delay_ms:
        args += ["delay", f"{round(shape.delay_ms * 1000)}us"]
        if shape.jitter_ms:
            args.append(f"{round(shape.jitter_ms * 1000)}us")
    if shape.loss_pct:
        args += ["loss", "random", f"{shape.loss_pct:g}%"]
    return args


def _tbf_args(shape: LinkShape) -> list[str]:
    bits = round(shape.rate_mbit * 1e6)
    burst = max(TBF_MIN_BURST_BYTES, round(bits / 8 * TBF_BURST_SECONDS))
    return ["tbf", "rate", f"{bits}bit", "burst", str(burst), "latency", f"{TBF_QUEUE_MS}ms"]


def _layout(shape: LinkShape) -> list[tuple[list[str], str, list[str]]]:
    """(where, handle, qdisc arguments) from the root down; [] for an unshaped link."""
    layers: list[tuple[list[str], str, list[str]]] = []
    if shape.needs_netem:
        layers.append((["root"], "1:", _netem_args(shape)))
    if shape.rate_mbit:  # below netem when there is one: delayed first, then paced
        layers.append((["parent", "1:1"], "10:", _tbf_args(shape)) if layers
                      else (["root"], "1:", _tbf_args(shape)))
    return layers


def _installed(netns: str, dev: str) -> list[tuple[str, str]]:
    """(kind, handle) of the qdiscs on dev, root first; [] for the device's default."""
    found = [(str(q["kind"]), str(q["handle"]))
             for q in command_json(["tc", "-j", "-n", netns, "qdisc", "show", "dev", dev])]
    # veth's default is noqueue (handle 0:): nothing of ours, nothing to remove
    return [] if found in ([], [("noqueue", "0:")]) else found


def describe_installed(netns: str, dev: str) -> tuple[str, ...]:
    """The qdiscs on dev as tc prints them, without the noise: ("netem 1: root limit
    100000 delay 20ms", "tbf 10: parent 1:1 rate 40Mbit burst 20000b lat 50ms"); () for
    the device's default (noqueue)."""
    lines = command(["tc", "-n", netns, "qdisc", "show", "dev", dev]).splitlines()
    shown = tuple(re.sub(r"^qdisc | dev \S+| refcnt \d+", "", line).strip()
                  for line in lines if line.strip())
    return () if shown in ((), ("noqueue 0: root",)) else shown


def apply_shape(netns: str, dev: str, shape: LinkShape) -> None:
    """Give dev (in netns) exactly this shape. Idempotent: when the qdiscs already have
    this layout, their parameters are changed in place (queued packets stay queued);
    otherwise the old ones are removed first. ShapingUnavailable before anything is
    changed when this kernel lacks a qdisc the shape needs."""
    require(shape)
    layers = _layout(shape)
    current = _installed(netns, dev)
    same_layout = current == [(args[0], handle) for _, handle, args in layers]
    if current and not same_layout:
        command(["tc", "-n", netns, "qdisc", "del", "dev", dev, "root"])
    verb = "change" if same_layout else "add"
    for where, handle, args in layers:
        command(["tc", "-n", netns, "qdisc", verb, "dev", dev, *where, "handle", handle, *args])


# ---- what this kernel can shape -------------------------------------------------------------

@contextlib.contextmanager
def scratch_namespace(purpose: str) -> Iterator[str]:
    """A throwaway network namespace, deleted afterwards whatever happened."""
    name = f"{SCRATCH_PREFIX}{purpose}_{os.getpid()}"
    with contextlib.suppress(CommandError):  # a leftover of an earlier run with our pid
        command(["ip", "netns", "del", name])
    command(["ip", "netns", "add", name])
    try:
        yield name
    finally:
        command(["ip", "netns", "del", name])


@functools.cache
def shaping_caps() -> dict[str, bool | str]:
    """Each qdisc kind of PROBED_KINDS -> True if this kernel can add it, else why not
    (tc's error text). Probed once per process on a veth in a throwaway namespace."""
    if os.geteuid() != 0:
        return dict.fromkeys(PROBED_KINDS, "not probed: adding a qdisc needs root")
    if shutil.which("tc") is None or shutil.which("ip") is None:
        return dict.fromkeys(PROBED_KINDS, "not probed: ip and tc are missing (install "
                                           "iproute2)")
    caps: dict[str, bool | str] = {}
    try:
        with scratch_namespace("qdisc") as ns:
            command(["ip", "-n", ns, "link", "add", "probe0", "type", "veth", "peer", "name",
                     "probe1"])
            for kind in PROBED_KINDS:
                try:
                    command(["tc", "-n", ns, "qdisc", "add", "dev", "probe0", "root",
                             "handle", "1:", kind, *_PROBE_ARGS[kind]])
                except CommandError as e:
                    caps[kind] = e.stderr or str(e)
                    continue
                caps[kind] = True
                command(["tc", "-n", ns, "qdisc", "del", "dev", "probe0", "root"])
    except CommandError as e:
        return dict.fromkeys(PROBED_KINDS, f"not probed: {e}")
    return caps


def require(shape: LinkShape) -> None:
    """ShapingUnavailable unless this kernel has every qdisc `shape` needs."""
    caps = shaping_caps()
    if shape.needs_netem and caps["netem"] is not True:
        raise ShapingUnavailable(
            f"{shape.describe()}: delay, jitter and loss need the netem qdisc, and this "
            f"kernel (Linux {os.uname().release}) has none ({caps['netem']}): {NETEM_HINT}")
    if shape.rate_mbit and caps["tbf"] is not True:
        raise ShapingUnavailable(
            f"rate {shape.rate_mbit:g} Mbit/s needs the tbf qdisc, which this kernel cannot "
            f"add ({caps['tbf']}): run it inside the sandbox guest, where tbf exists")


def doctor_check() -> tuple[bool | None, str, str]:
    """(ok, detail, todo) for `labkit doctor`: ok is True when every probed qdisc works,
    False when one is missing, None when the probe could not run (not root)."""
    caps = shaping_caps()
    if all(isinstance(v, str) and v.startswith("not probed") for v in caps.values()):
        return None, str(caps["netem"]), "run `labkit doctor` as root to probe the qdiscs"
    works = [k for k, v in caps.items() if v is True]
    missing = {k: v for k, v in caps.items() if v is not True}
    detail = (f"qdiscs {', '.join(works) or 'none'} work" +
              "".join(f"; no {k} ({why})" for k, why in missing.items()))
    if not missing:
        return True, f"{detail}: delay, jitter, loss and rate can all be shaped here", ""
    todo = ""
    if "netem" in missing:
        todo = f"for delay, jitter and loss, {NETEM_HINT}"
    elif "tbf" in missing:
        todo = "rate shaping needs tbf: run rate experiments in the sandbox guest"
    return False, detail, todo
