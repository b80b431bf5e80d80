"""Record the reference data the notebooks fall back on where a capability is missing.

    python data/record.py ablation    # notebook 03's ten relay variants -> data/runs
    python data/record.py profiles    # notebook 07's three flame graphs -> data/profiles
    python data/record.py across-hosts  # notebook 08 in the sandbox guest -> data/across_hosts

(The epoll-vs-uring and kTLS-sandbox runs are plain `labkit sweep` files: see README.md.)
Every run file carries its machine, date, labkit version and git revision; the profiles
carry the same in data/profiles/profiles.json. Notebooks label all of it "RECORDED on
<machine>, <date>" and never show it as live.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from labkit import RelayConfig  # noqa: E402
from labkit.lab import experiment, store  # noqa: E402
from labkit.procs.load import Load, LoadConfig  # noqa: E402

OFF = dict(batch=False, multishot=False, provided_buffers=False, coalesce=False,
           poll_recv=False, backpressure=False)
ON = dict(batch=True, multishot=True, provided_buffers=True, coalesce=True, poll_recv=True,
          backpressure=True)
# The same variants as notebooks/03-ablation.ipynb (it matches runs to them by config).
ABLATION = [
    dict(io="epoll", coalesce=False),
    dict(io="epoll", coalesce=True),
    dict(io="uring", **OFF),
    dict(io="uring", **OFF | dict(batch=True)),
    dict(io="uring", **OFF | dict(multishot=True, provided_buffers=True)),
    dict(io="uring", **OFF | dict(coalesce=True)),
    dict(io="uring", **ON),
    dict(io="uring", **ON | dict(batch=False)),
    dict(io="uring", **ON | dict(poll_recv=False)),
    dict(io="uring", **ON | dict(multishot=False, poll_recv=False)),
    dict(io="uring", **ON | dict(coalesce=False)),
]
# The same relays and load as notebooks/07-flame-graphs.ipynb.
PROFILES = {"epoll": RelayConfig(io="epoll"), "io_uring": RelayConfig(io="uring"),
            "epoll + userspace TLS": RelayConfig(io="epoll", tls="user")}


def ablation(repeats: int) -> None:
    s = experiment.sweep(ABLATION, repeats=repeats, duration=2.0, warmup=0.5,
                         load=LoadConfig(pairs=4, size=1400, rate_mbps=2000),
                         store=HERE / "runs", name="ablation", recording=True)
    print(s)


def profiles(seconds: float) -> None:
    import labkit

    out = HERE / "profiles"
    out.mkdir(exist_ok=True)
    index: dict[str, object] = store.provenance() | {
        "how": "python data/record.py profiles: labkit.profile(relay, seconds, rate=199) "
               "under 4 pairs x 1,400 B at 800 Mbit/s", "profiles": {}}
    for name, cfg in PROFILES.items():
        with labkit.Relay(cfg) as relay:
            lc = LoadConfig.for_relay(relay, pairs=4, size=1400, rate_mbps=800,
                                      duration=seconds + 4, warmup=0)
            with Load(lc) as load:
                fg = labkit.profile(relay, seconds, rate=199, title=name)
                load.stop()
        file = name.replace(" + ", "-").replace(" ", "-") + ".folded"
        (out / file).write_text(fg.folded_path.read_text())
        index["profiles"][name] = {"file": file, "seconds": seconds, "samples": fg.samples,
                                   "sources": fg.sources, "relay_config": cfg.to_dict()}
        print(name, fg)
    (out / "profiles.json").write_text(json.dumps(index, indent=2) + "\n")


def across_hosts() -> None:
    """Notebook 08's full experiment where netem exists for sure: the sandbox guest (one
    CPU, so its rates are the guest's; the file says so)."""
    from labkit.hosts import testbed

    kwargs = {"duration": 2.0, "warmup": 0.5, "pairs": 4, "start_timeout": 60,
              "start_allowance": 10}
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    data = testbed.in_guest("labkit.lab.across_hosts:compare", kwargs, timeout=1800)
    host = store.machine()
    data |= {
        "guest_seconds": time.monotonic() - started,
        "where": f"sandbox guest (UML Linux {data['kernel']}, one CPU) on a "
                 f"{host['cores']}-core {host['cpu_model']} VM, Linux {platform.release()}, "
                 f"load average {load_before:.1f} when it started",
        "made_with": f"python data/record.py across-hosts: testbed.in_guest("
                     f"'labkit.lab.across_hosts:compare', {json.dumps(kwargs)})",
    }
    out = HERE / "across_hosts" / "wan-sandbox.json"
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, out)
    for row in data["rows"]:
        print(row["shape"], row["io"], row["kind"], row["status"], row["mbps"], row["drops"],
              row["lat_p50_us"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["ablation", "profiles", "across-hosts"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    if args.what == "ablation":
        ablation(args.repeats)
    elif args.what == "across-hosts":
        across_hosts()
    else:
        profiles(args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
