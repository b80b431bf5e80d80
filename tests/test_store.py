"""labkit.lab.store: atomic parquet per run, metadata, tidy load across files, clear errors."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from experiment_helpers import fake_result

from labkit.lab import store


def _files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    a, b = fake_result("epoll", 100, seed=1), fake_result("uring", 300, seed=2, status="failed")
    pa_, pb = store.save(a, tmp_path), store.save(b, tmp_path)
    assert pa_.name == f"{a.summary['run_id']}.parquet" and a.path == pa_
    assert _files(tmp_path) == sorted([pa_.name, pb.name]), "no temp file may remain"
    runs = store.load(tmp_path)
    assert len(runs) == 2 and set(runs["io"]) == {"epoll", "uring"}
    row = runs.set_index("io").loc["epoll"]
    assert row["syscalls_per_packet"] == pytest.approx(a.summary["syscalls_per_packet"])
    for col in ("kernel", "cpu_model", "cores", "labkit_version", "git_revision", "date",
                "schema_version", "path"):
        assert col in runs and runs[col].notna().all(), col
    failed = runs.set_index("io").loc["uring"]
    assert failed["status"] == "failed" and "killed" in failed["error"]
    assert np.isnan(failed["mbps"]), "NaN survives the JSON footer as NaN"
    summary, ts, meta = store.read_run(pa_)
    assert len(ts) == len(a.timeseries) and "phase" in ts
    assert meta["relay_config"]["io"] == "epoll"
    assert meta["sources"]["perf"].startswith("unavailable")
    assert meta["schema_version"] == store.SCHEMA_VERSION
    assert set(meta["machine"]) >= {"kernel", "cpu_model", "cores"}


def test_load_many_files_is_tidy_and_timeseries_long(tmp_path: Path) -> None:
    for i in range(4):
        store.save(fake_result("epoll" if i % 2 else "uring", 100 * (i + 1), seed=i), tmp_path)
    (tmp_path / ".x.parquet.tmp-1-abcd").write_bytes(b"half a file")  # a killed writer's
    runs = store.load(tmp_path)
    assert len(runs) == 4 and runs["run_id"].is_unique
    ts = store.load_timeseries(tmp_path)
    assert set(ts["run_id"]) == set(runs["run_id"]) and {"io", "rate_mbps", "t"} <= set(ts)
    assert store.load_meta(tmp_path).keys() == set(runs["run_id"])


def test_load_names_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(store.StoreError, match="no run file or directory"):
        store.load(tmp_path / "missing")
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"a": [1]}), plain)
    with pytest.raises(store.StoreError, match="not a labkit run"):
        store.load(plain)
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet")
    with pytest.raises(store.StoreError, match="not a readable parquet"):
        store.read_header(junk)


def test_newer_schema_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "SCHEMA_VERSION", store.SCHEMA_VERSION + 1)
    p = store.save(fake_result(), tmp_path)
    monkeypatch.undo()
    with pytest.raises(store.StoreError, match="newer than this labkit"):
        store.load(p)


def test_enospc_leaves_nothing_and_says_disk_full(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write
    calls = {"n": 0}

    def failing_write(fd: int, data: bytes) -> int:
        calls["n"] += 1
        if calls["n"] >= 2:  # part of the file is written, then the disk fills
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, bytes(data)[: max(1, len(data) // 3)])

    monkeypatch.setattr(store.os, "write", failing_write)
    with pytest.raises(store.StoreError, match="is full") as e:
        store.save(fake_result(), tmp_path)
    assert e.value.errno == errno.ENOSPC and "nothing was written" in str(e.value)
    assert _files(tmp_path) == [], "no partial parquet, no temp file"


def test_fsync_failure_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(store.os, "fsync", failing_fsync)
    with pytest.raises(store.StoreError, match="Input/output error"):
        store.save(fake_result(), tmp_path)
    assert _files(tmp_path) == []


def test_read_only_directory_simulated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open

    def ro_open(path: object, flags: int, *a: object) -> int:
        if flags & os.O_CREAT:
            raise OSError(errno.EROFS, "Read-only file system")
        return real_open(path, flags, *a)

    monkeypatch.setattr(store.os, "open", ro_open)
    with pytest.raises(store.StoreError, match="read-only file system"):
        store.save(fake_result(), tmp_path)
    assert _files(tmp_path) == []


@contextlib.contextmanager
def _tmpfs(path: Path, options: str) -> Iterator[bool]:
    """A real small/read-only file system where this process may mount one (root)."""
    path.mkdir()
    if os.geteuid() != 0:
        yield False
        return
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                       capture_output=True, timeout=10)
    if r.returncode != 0:
        yield False
        return
    try:
        yield True
    finally:
        subprocess.run(["umount", str(path)], capture_output=True, timeout=10)


def test_real_read_only_directory(tmp_path: Path) -> None:
    d = tmp_path / "ro"
    with _tmpfs(d, "ro,size=1m") as mounted:
        if not mounted:
            if os.geteuid() == 0:
                pytest.skip("cannot mount a read-only tmpfs here (and root ignores chmod)")
            d.chmod(0o555)
        with pytest.raises(store.StoreError, match="read-only|no permission"):
            store.save(fake_result(), d)
        assert _files(d) == []


def test_real_full_disk(tmp_path: Path) -> None:
    d = tmp_path / "full"
    with _tmpfs(d, "size=64k") as mounted:
        if not mounted:
            pytest.skip("cannot mount a small tmpfs here (needs root)")
        big = fake_result(ticks=20000)  # random floats: about 3 MB of parquet
        with pytest.raises(store.StoreError, match="is full"):
            store.save(big, d)
        assert _files(d) == [], "no partial parquet, no temp file"
        store.save(fake_result(ticks=5), d)  # a small one still fits afterwards
        assert len(store.load(d)) == 1


def test_provenance_names_machine_version_and_revision() -> None:
    p = store.provenance()
    assert p["machine"]["kernel"] == os.uname().release
    assert p["machine"]["cores"] >= 1 and p["machine"]["cpu_model"]
    assert p["labkit_version"] != ""
    assert p["git_revision"] == "unknown" or len(p["git_revision"].split("-")[0]) == 40
    assert pd.Timestamp(p["date"]).tzinfo is not None
