"""labkit.views.report and the CLI end to end: `labkit sweep` over {epoll, uring} x 3 rates x 3
repeats stores parquet, `labkit report` writes one self-contained page, and headless
Chromium renders it (the screenshot goes to build/screenshots/)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from experiment_helpers import fake_result, fake_sweep

from labkit.lab import store
from labkit.views import report

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "build" / "screenshots"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def labkit(*args: str, timeout: float = 150) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "labkit", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def _self_contained(page: str) -> None:
    assert not re.search(r"<script[^>]+src=", page), "every script is inline"
    assert not re.search(r"<link[^>]+href=", page), "every stylesheet is inline"


def screenshot(html: Path, png: Path, height: int = 2000) -> None:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (make setup installs it)")
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                        "--disable-background-networking", "--disable-component-update",
                        "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                        "--virtual-time-budget=5000", f"--screenshot={png}",
                        f"--window-size=1400,{height}", html.resolve().as_uri()],
                       capture_output=True, timeout=60, check=True)
    assert png.stat().st_size > 50_000, "a rendered page, not a blank one"


def test_build_report_from_fake_runs(tmp_path: Path) -> None:
    for r in fake_sweep(repeats=3):
        store.save(r, tmp_path)
    store.save(fake_result("uring", 300, repeat=9, seed=99, status="failed"), tmp_path)
    out = report.write([tmp_path], tmp_path / "r.html", title="fake sweep")
    page = out.read_text()
    _self_contained(page)
    for text in ("fake sweep", "Syscalls per packet", "Relay CPU-seconds per Gbit",
                 "Offered vs delivered", "One-way latency CDF", "Welch", "relay: boom",
                 "Measurement sources", "labkit-caption", "Bokeh"):
        assert text in page, text
    assert "13 runs (12 ok, 1 not ok)" in page


def test_report_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from labkit.cli import main

    assert main(["report", str(tmp_path / "nothing"), "-o", str(tmp_path / "r.html")]) == 2
    assert "no run file or directory" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty), "-o", str(tmp_path / "r.html")]) == 2
    assert "no run files" in capsys.readouterr().err


def test_cli_run_validation_matches_the_api(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from labkit.cli import main
    from labkit.config import ConfigError, RelayConfig

    # the same problem the API finds, said once, in the command's flags, exit 2
    with pytest.raises(ConfigError) as e:
        RelayConfig(workers=0).validate()
    assert main(["run", "--workers", "0", "--store", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == f"labkit run: {e.value.for_cli({})[0]}\n" == (
        "labkit run: --workers 0 must be an integer 1..64 (default 1)\n")
    for argv, says in ((["--io", "kqueue"], "labkit run: --io: invalid choice: 'kqueue'"),
                       (["--rate", "fast"], "labkit run: --rate: 'fast' is not megabits"),
                       (["--duration", "-3"], "labkit run: --duration -3.0 must be seconds"),
                       (["--batch"], "labkit run: --batch applies to io_uring only")):
        assert main(["run", *argv, "--no-store"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(says) and err.count("\n") == 1, err  # one line, no progress
    bad = tmp_path / "bad.toml"
    bad.write_text("[grid]\nio = ['epoll', 'kqueue']\n")
    with pytest.raises(ConfigError) as e:
        RelayConfig(io="kqueue").validate()
    assert main(["sweep", str(bad), "--store", str(tmp_path)]) == 2
    assert e.value.problems[0].render() in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["bad.toml"], "nothing ran"


def test_cli_run_stores_one_run(tmp_path: Path) -> None:
    r = labkit("run", "--io", "uring", "--rate", "100", "--pairs", "2", "--duration", "0.4",
               "--warmup", "0.2", "--store", str(tmp_path), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "syscalls/packet (relay count)" in r.stdout and "stored:" in r.stdout
    runs = store.load(tmp_path)
    assert len(runs) == 1 and runs.iloc[0]["io"] == "uring" and runs.iloc[0]["status"] == "ok"


@pytest.mark.timeout(240)
def test_cli_sweep_then_report_renders(tmp_path: Path) -> None:
    cfg = tmp_path / "sweep.toml"
    text = (ROOT / "bench" / "sweep-epoll-vs-uring.toml").read_text()
    # the bench file with short windows so the test stays bounded
    text = text.replace("duration = 2.0", "duration = 0.4").replace("warmup = 0.5",
                                                                     "warmup = 0.2")
    cfg.write_text(text)
    runs_dir = tmp_path / "runs"
    # perf off: the perf path is covered by test_experiment; here it would only add start-up
    r = labkit("sweep", str(cfg), "--store", str(runs_dir), "--perf", "off", timeout=200)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Welch" in r.stdout and "18 runs, 18 ok" in r.stdout
    files = sorted(runs_dir.iterdir())
    assert len(files) == 18 and all(f.suffix == ".parquet" for f in files)
    runs = store.load(runs_dir)
    assert set(runs["io"]) == {"epoll", "uring"} and runs["rate_mbps"].nunique() == 3
    assert runs.groupby(["io", "rate_mbps"]).size().eq(3).all()
    order = runs.sort_values("started_at")["io"].tolist()
    assert order[:4] == ["epoll", "uring", "epoll", "uring"], "interleaved"
    again = labkit("sweep", str(cfg), "--store", str(runs_dir), "--no-progress", "--perf",
                   "off")
    assert again.returncode == 0 and "18 resumed from the store" in again.stdout
    assert len(list(runs_dir.iterdir())) == 18

    out = tmp_path / "report.html"
    r = labkit("report", str(runs_dir), "-o", str(out))
    assert r.returncode == 0, r.stderr
    page = out.read_text()
    _self_contained(page)
    for text in ("Syscalls per packet", "Relay CPU-seconds per Gbit", "Offered vs delivered",
                 "One-way latency CDF", "epoll vs io_uring"):
        assert text in page, text
    shot = SHOTS / "report-test.png"
    screenshot(out, shot, height=2400)


def test_stats_table_numbers_are_readable() -> None:
    page = report._table(pd.DataFrame({"mbps": [12345.6, None], "p": [0.123456, 2e-5]}))
    assert "12,346" in page and "0.123" in page and "0.00002" in page and "n/a" in page
    assert "e-05" not in page and "None" not in page
    assert isinstance(report._sources({"a": {"sources": {"perf": "live: x"}}}), pd.DataFrame)
