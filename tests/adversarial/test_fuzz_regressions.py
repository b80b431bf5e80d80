"""Replay every committed fuzz input (seed corpora and past findings) through the
libFuzzer harnesses, ASan + UBSan: each finding stays fixed (native/fuzz/regressions/).

Findings so far (native/fuzz/regressions/session/):
  ctrl-realloc-under-inflight-send  control frames queued while an io_uring send still
                                    read the control buffer grew it with realloc: the
                                    kernel would send freed memory (output.c)
  packet-overtakes-pending-ctrl     a full queue moved packets ahead of unsent control
                                    bytes: RecvPacket before ServerKey/ServerInfo, or in
                                    the middle of a control frame cut by a partial send
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FUZZ = ROOT / "native" / "fuzz"
HARNESSES = ("http", "client_info", "session", "websocket")


def _inputs(harness: str) -> list[Path]:
    dirs = [FUZZ / "corpus" / harness, FUZZ / "regressions" / harness]
    return sorted(p for d in dirs if d.is_dir() for p in d.iterdir() if p.is_file())


@pytest.mark.parametrize("harness", HARNESSES)
def test_committed_fuzz_inputs_replay_clean(harness: str) -> None:
    if shutil.which("clang") is None:
        pytest.skip("clang (libFuzzer) is not installed: `make setup` installs it")
    target = f"build/fuzz/fuzz_{harness}"
    build = subprocess.run(["make", "-s", target], cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
    assert build.returncode == 0, f"building {target} failed:\n{build.stderr[-4000:]}"
    inputs = _inputs(harness)
    assert inputs, f"no committed inputs for {harness}"
    # clang's sanitizer runtime is linked in: not gcc's, which the sanitizer pass preloads
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS")}
    run = subprocess.run([str(ROOT / target), *map(str, inputs)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"fuzz_{harness} failed on a committed input:\n" \
                                f"{run.stderr[-6000:]}"
    assert f"Executed {inputs[-1]}" in run.stderr
