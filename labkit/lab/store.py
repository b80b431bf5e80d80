"""Results on disk: one parquet file per run, written atomically.

    path = store.save(result)                  # <your store>/<run_id>.parquet
    runs = store.load()                        # one tidy row per run, across files
    ticks = store.load_timeseries()            # every run's time series, long form
    refs = store.load(store.RECORDED_DIR)      # the recorded reference runs (origin column)

Two kinds of run files, never mixed up:
- **your runs** go to a per-user store, `$LABKIT_RUNS` or `$XDG_DATA_HOME/labkit/runs`
  (`~/.local/share/labkit/runs`), outside the checkout;
- **recorded reference runs** live in the checkout's `data/runs/`: read-only inputs that
  notebooks fall back on where a capability is missing. save() refuses to write there
  unless asked to record (data/record.py does), and such runs carry `reference: true`.
load() gives every row an `origin`: "recorded" (a reference run), "this machine" or
"another machine" (by machine id), so a figure can say RECORDED and a sweep resumes only
from runs this machine made.

A file holds the run's time series as its table and, in the parquet key-value metadata,
the run's summary row (`labkit.summary`), its metadata (`labkit.meta`: configs, machine,
which capabilities were real and which fell back, labkit version, git revision, date) and
the schema version (`labkit.schema`). Reading every summary therefore needs only the
files' footers.

Atomicity: the file is written to a temporary name in the same directory, flushed,
fsync'ed, then os.replace()d over its final name, and the directory is fsync'ed. A crash,
a full disk or a read-only directory leaves either the complete file or nothing: never a
partial `*.parquet`. Temporary names start with a dot and do not end in `.parquet`, so
load() never sees one even if a process is killed mid-write.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import io
import json
import math
import os
import platform
import secrets
import subprocess
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from labkit.lab.result import Result

SCHEMA_VERSION = 1
SUFFIX = ".parquet"
_KEY_SUMMARY = b"labkit.summary"
_KEY_META = b"labkit.meta"
_KEY_SCHEMA = b"labkit.schema"
REPO_ROOT = Path(__file__).resolve().parents[2]  # labkit/lab/store.py -> the checkout


# The recorded reference runs: read-only inputs (see the module docstring).
RECORDED_DIR = REPO_ROOT / "data" / "runs"
ORIGIN_RECORDED, ORIGIN_HERE, ORIGIN_ELSEWHERE = "recorded", "this machine", "another machine"


def default_dir() -> Path:
    """Where your runs go: $LABKIT_RUNS, else $XDG_DATA_HOME/labkit/runs
    (~/.local/share/labkit/runs). Never the recorded reference folder data/runs."""
    env = os.environ.get("LABKIT_RUNS")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "labkit" / "runs"


def is_recorded_dir(directory: str | os.PathLike[str]) -> bool:
    d = Path(directory).resolve()
    return d == RECORDED_DIR.resolve() or d.is_relative_to(RECORDED_DIR.resolve())


class StoreError(OSError):
    """A result could not be written or read; the message says why and what to do."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()  # the message, without "[Errno n]"


# ---- machine metadata -------------------------------------------------------------------


@functools.cache
def machine() -> dict[str, Any]:
    """What a result must say about the machine it ran on (cached per process)."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.partition(":")[2].strip()
                    break
    except OSError:
        pass
    return {
        "machine_id": machine_id(),
        "kernel": platform.release(),
        "cpu_model": model or platform.processor() or "unknown",
        "cores": os.cpu_count() or 0,
        "cores_usable": len(os.sched_getaffinity(0)),
        "hostname": platform.node(),
        "python": platform.python_version(),
    }


def machine_id() -> str:
    """A stable, non-identifying id of this machine: a hash of /etc/machine-id (systemd's
    per-installation id) with the host name, or of the host name and CPU alone where there
    is no machine-id (a minimal chroot)."""
    ident = ""
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            ident = Path(path).read_text().strip()
        except OSError:
            continue
        if ident:
            break
    cpu = ""
    if not ident:
        with contextlib.suppress(OSError):
            cpu = next((line for line in Path("/proc/cpuinfo").read_text().splitlines()
                        if line.startswith("model name")), "")
    blob = f"{ident}|{platform.node()}|{cpu}".encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def labkit_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("labkit")
    except PackageNotFoundError:
        return "unknown"


@functools.cache
def git_revision() -> str:
    """HEAD of this checkout, with `-dirty` when the tree has changes; 'unknown' outside git."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO_ROOT, capture_output=True, text=True, timeout=5,
                               check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + ("-dirty" if dirty else "")


def provenance() -> dict[str, Any]:
    """machine + labkit version + git revision + date: the part of metadata every run shares."""
    return {
        "machine": machine(),
        "labkit_version": labkit_version(),
        "git_revision": git_revision(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "schema_version": SCHEMA_VERSION,
    }


# ---- writing ----------------------------------------------------------------------------


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):  # numpy scalars
        return o.item()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, pd.Timestamp | datetime):
        return o.isoformat()
    return str(o)


def _clean(value: Any) -> Any:
    """JSON has no NaN: store it as null (read back as NaN by pandas)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        return _clean(value.item())
    return value


def _explain(e: OSError, path: Path) -> StoreError:
    if e.errno == errno.ENOSPC or e.errno == errno.EDQUOT:
        why = (f"the disk holding {path.parent} is full ({e.strerror}): free some space or "
               "choose another directory (store=..., or LABKIT_RUNS)")
    elif e.errno == errno.EROFS:
        why = (f"{path.parent} is on a read-only file system: choose a writable directory "
               "(store=..., or LABKIT_RUNS)")
    elif e.errno in (errno.EACCES, errno.EPERM):
        why = (f"no permission to write in {path.parent} ({e.strerror}): fix its permissions "
               "or choose another directory")
    else:
        why = f"{e.strerror or e} while writing into {path.parent}"
    err = StoreError(e.errno, f"cannot store {path.name}: {why}; nothing was written")
    err.filename = str(path)
    return err


def write_atomic(path: Path, data: bytes) -> Path:
    """Write `data` to `path` so that it appears whole or not at all."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _explain(e, path) from e
    # the rename itself must reach the disk too (best effort: some file systems refuse)
    with contextlib.suppress(OSError):
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return path


def encode(summary: Mapping[str, Any], timeseries: pd.DataFrame,
           meta: Mapping[str, Any]) -> bytes:
    """The parquet bytes of one run (see the module docstring for the layout)."""
    table = pa.Table.from_pandas(timeseries.reset_index(drop=True), preserve_index=False)
    extra = {
        _KEY_SUMMARY: json.dumps({k: _clean(v) for k, v in summary.items()},
                                 default=_json_default).encode(),
        _KEY_META: json.dumps(meta, default=_json_default).encode(),
        _KEY_SCHEMA: str(SCHEMA_VERSION).encode(),
    }
    table = table.replace_schema_metadata((table.schema.metadata or {}) | extra)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def check_writable(directory: str | os.PathLike[str], recording: bool = False) -> None:
    """StoreError unless runs may be written into `directory`: the recorded reference
    folder takes runs only when recording=True."""
    if is_recorded_dir(directory) and not recording:
        raise StoreError(
            f"{directory} holds the recorded reference runs, which are read-only inputs: "
            f"store your runs elsewhere (by default {default_dir()}, or set LABKIT_RUNS); "
            "maintainers record new references with `labkit sweep --record` or "
            "data/record.py")


def save(result: Result, directory: str | os.PathLike[str] | None = None,
         recording: bool = False) -> Path:
    """Store one run as `<directory>/<run_id>.parquet` (default: your store, default_dir()).
    Returns the path; sets result.path. StoreError (nothing written) when the disk is full
    or read-only, or when directory is the recorded reference folder and recording is not
    set (recording marks the run `reference: true`)."""
    d = Path(directory) if directory is not None else default_dir()
    check_writable(d, recording)
    run_id = str(result.summary["run_id"])
    meta = dict(result.meta) | ({"reference": True} if recording else {})
    data = encode(result.summary.to_dict(), result.timeseries, meta)
    path = write_atomic(d / f"{run_id}{SUFFIX}", data)
    result.path = path
    return path


# ---- reading ----------------------------------------------------------------------------


def run_files(*sources: str | os.PathLike[str]) -> list[Path]:
    """Every run file named by `sources` (files or directories; default: your store),
    sorted by name. A default store that does not exist yet holds no runs."""
    if not sources:
        if not default_dir().is_dir():
            return []
        sources = (default_dir(),)
    files: list[Path] = []
    for s in sources:
        p = Path(s)
        if p.is_dir():
            files += [f for f in p.glob(f"*{SUFFIX}") if not f.name.startswith(".")]
        elif p.is_file():
            files.append(p)
        else:
            raise StoreError(errno.ENOENT, f"no run file or directory {str(p)!r}")
    return sorted(set(files))


def read_header(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(summary, meta) of one run file, from its footer only."""
    path = Path(path)
    try:
        md = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowInvalid) as e:
        raise StoreError(errno.EINVAL, f"{path} is not a readable parquet file: {e}") from e
    if _KEY_SUMMARY not in md:
        raise StoreError(errno.EINVAL, f"{path} is parquet but not a labkit run (no summary)")
    version = int(md.get(_KEY_SCHEMA, b"0"))
    if version > SCHEMA_VERSION:
        raise StoreError(errno.EINVAL, f"{path} has schema {version}, newer than this labkit "
                         f"({SCHEMA_VERSION}): update labkit to read it")
    return json.loads(md[_KEY_SUMMARY]), json.loads(md.get(_KEY_META, b"{}"))


def origin(meta: Mapping[str, Any], path: str | os.PathLike[str]) -> str:
    """"recorded", "this machine" or "another machine" (a run without a machine id, from
    before ids were recorded, counts as another machine's)."""
    if meta.get("reference") or is_recorded_dir(Path(path).parent):
        return ORIGIN_RECORDED
    mid = meta.get("machine", {}).get("machine_id")
    return ORIGIN_HERE if mid is not None and mid == machine_id() else ORIGIN_ELSEWHERE


def _meta_columns(meta: Mapping[str, Any]) -> dict[str, Any]:
    m = meta.get("machine", {})
    return {
        "machine_id": m.get("machine_id"),
        "kernel": m.get("kernel"),
        "cpu_model": m.get("cpu_model"),
        "cores": m.get("cores"),
        "labkit_version": meta.get("labkit_version"),
        "git_revision": meta.get("git_revision"),
        "date": meta.get("date"),
        "schema_version": meta.get("schema_version"),
    }


def load(*sources: str | os.PathLike[str]) -> pd.DataFrame:
    """One tidy DataFrame, one row per run, across every run file in `sources`
    (files or directories; default: your store). Columns: the summary's (config, derived
    figures, status) plus machine_id, kernel, cpu_model, cores, labkit_version,
    git_revision, date, schema_version, `origin` (see origin()) and `path`."""
    rows = []
    for f in run_files(*sources):
        summary, meta = read_header(f)
        rows.append(summary | _meta_columns(meta) | {"origin": origin(meta, f),
                                                     "path": str(f)})
    return pd.DataFrame(rows)


def load_meta(*sources: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """run_id -> full metadata (configs, machine, capabilities) of every run file."""
    out = {}
    for f in run_files(*sources):
        summary, meta = read_header(f)
        out[str(summary["run_id"])] = meta
    return out


def load_timeseries(*sources: str | os.PathLike[str],
                    columns: Iterable[str] | None = None) -> pd.DataFrame:
    """Every run's time series in long form, with run_id and the run's grouping columns
    (io, tls, workers, rate_mbps, repeat, status) added to each tick."""
    frames = []
    keep = ("run_id", "io", "tls", "workers", "rate_mbps", "size", "pairs", "repeat",
            "sweep", "status")
    for f in run_files(*sources):
        summary, _ = read_header(f)
        df = pq.read_table(f, columns=list(columns) if columns else None).to_pandas()
        for k in keep:
            if k in summary:
                df[k] = summary[k]
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def read_run(path: str | os.PathLike[str]) -> tuple[dict[str, Any], pd.DataFrame,
                                                      dict[str, Any]]:
    """(summary, timeseries, meta) of one run file."""
    summary, meta = read_header(path)
    return summary, pq.read_table(path).to_pandas(), meta
