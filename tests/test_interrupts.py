"""labkit.counters.interrupts: the IPI rows of chosen CPUs, and the run figure made of them."""

import math
from pathlib import Path

import pytest

from labkit import LoadConfig, RelayConfig, run
from labkit.counters.interrupts import cpu_interrupts

SAMPLE = """\
           CPU0       CPU1       CPU2
  0:         44          0          0   IO-APIC    2-edge      timer
LOC:    1603831     522436      10000   Local timer interrupts
RES:    3684364      18115          7   Rescheduling interrupts
CAL:    1071788    1471294          3   Function call interrupts
"""


def test_rows_are_summed_over_the_chosen_cpus(tmp_path: Path) -> None:
    path = tmp_path / "interrupts"
    path.write_text(SAMPLE)
    assert cpu_interrupts([0], str(path)) == {"RES": 3684364}
    assert cpu_interrupts([1, 2], str(path)) == {"RES": 18122}


def test_a_row_no_figure_reads_is_not_required(tmp_path: Path) -> None:
    path = tmp_path / "interrupts"
    path.write_text("".join(line for line in SAMPLE.splitlines(keepends=True)
                            if not line.startswith("CAL:")))
    assert cpu_interrupts([0], str(path)) == {"RES": 3684364}


@pytest.mark.parametrize("text", [SAMPLE.replace("RES:", "XYZ:"), "", "garbage\n"])
def test_a_missing_row_or_file_is_none_not_zero(tmp_path: Path, text: str) -> None:
    path = tmp_path / "interrupts"
    path.write_text(text)
    assert cpu_interrupts([0], str(path)) is None
    assert cpu_interrupts([0], str(tmp_path / "absent")) is None


def test_a_cpu_the_file_does_not_list_is_none(tmp_path: Path) -> None:
    path = tmp_path / "interrupts"
    path.write_text(SAMPLE)
    assert cpu_interrupts([5], str(path)) is None


def test_a_pinned_run_carries_the_figure_and_an_unpinned_one_says_nan() -> None:
    """The figure is the relay's only while it has its CPUs to itself: NaN otherwise,
    never a machine-wide count passed off as the relay's."""
    if cpu_interrupts([0]) is None:
        pytest.skip("/proc/interrupts lists no IPI rows here (a container may hide them)")
    load = LoadConfig(pairs=2, size=1400, rate_mbps=50)
    pinned = run(RelayConfig(io="uring"), load, duration=0.5, warmup=0.2, perf=False)
    unpinned = run(RelayConfig(io="uring"), load, duration=0.5, warmup=0.2, perf=False,
                   pin=False)
    figure = float(unpinned.summary["resched_ipis_per_packet"])
    assert math.isnan(figure)
    figure = float(pinned.summary["resched_ipis_per_packet"])
    if bool(pinned.summary["pinned"]):
        assert math.isfinite(figure) and figure >= 0
    else:  # one usable CPU
        assert math.isnan(figure)
