"""labkit.views.captions: conclusions computed from the runs, including the runs where this
machine contradicts the expected story, and those where it cannot tell."""

from __future__ import annotations

import numpy as np
import pandas as pd

from labkit.views import captions

CHEAPER = captions.Expect("lower", "io_uring costs less relay CPU per Gbit than epoll",
                          reason="the relay was not CPU-bound",
                          what_if="run unpaced (rate_mbps=None)")


def _runs(epoll: list[float], uring: list[float], metric: str = "cpu_s_per_gbit",
          **extra: list[float]) -> pd.DataFrame:
    n_e, n_u = len(epoll), len(uring)
    df = pd.DataFrame({"io": ["epoll"] * n_e + ["uring"] * n_u, metric: epoll + uring,
                       "status": ["ok"] * (n_e + n_u)})
    for k, v in extra.items():
        df[k] = v
    return df


def test_agrees_when_the_data_agrees() -> None:
    c = captions.compare(_runs([0.30, 0.31, 0.29], [0.15, 0.16, 0.14]), "cpu_s_per_gbit",
                         "epoll", "uring", label_b="io_uring", expect=CHEAPER)
    assert c.verdict == "agrees" and not c.disagrees
    assert "io_uring is lower than epoll" in c.text and "As expected" in c.text
    assert 0.45 < c.ratio < 0.55 and c.ratio_low < c.ratio < c.ratio_high
    assert "0.15 CPU·s/Gbit against 0.3 CPU·s/Gbit" in c.text and "p < 0.001" in c.text


def test_disagrees_when_io_uring_costs_more() -> None:
    """The 03 case: io_uring 0.29 CPU·s/Gbit against epoll's 0.19."""
    c = captions.compare(_runs([0.19, 0.20, 0.18], [0.29, 0.30, 0.28]), "cpu_s_per_gbit",
                         "epoll", "uring", label_b="io_uring", expect=CHEAPER)
    assert c.verdict == "disagrees"
    assert "io_uring is higher than epoll" in c.text
    assert "This machine disagrees with the expected story" in c.text
    assert "Likely reason: the relay was not CPU-bound." in c.text
    assert "What-if that tests it: run unpaced" in c.text
    assert c.ratio > 1 and c.ratio_low > 1, "the CI of a clear ratio excludes 1"


def test_not_significant_says_so_in_either_direction() -> None:
    rng = np.random.default_rng(1)
    e = list(0.2 + 0.05 * rng.standard_normal(3))
    u = list(0.2 + 0.05 * rng.standard_normal(3))
    c = captions.compare(_runs(e, u), "cpu_s_per_gbit", "epoll", "uring", expect=CHEAPER)
    assert c.verdict == "not significant"
    assert "not significant" in c.text and "cannot say" in c.text
    assert "disagrees" not in c.text and "As expected" not in c.text
    one = captions.compare(_runs([0.2], [0.3]), "cpu_s_per_gbit", "epoll", "uring")
    assert one.verdict == "not significant" and "too few runs" in one.text


def test_no_data_and_failed_runs_do_not_count() -> None:
    df = _runs([0.2, 0.21], [0.1, 0.11])
    df.loc[df["io"] == "uring", "status"] = "failed"
    c = captions.compare(df, "cpu_s_per_gbit", "epoll", "uring")
    assert c.verdict == "no data" and "says nothing" in c.text


def test_ratio_ci_never_goes_negative() -> None:
    c = captions.compare(_runs([100.0, 5000.0], [90.0, 6000.0], metric="lat_p99_us"),
                         "lat_p99_us", "epoll", "uring")
    assert c.ratio_low > 0


def test_follows_agrees_disagrees_and_not_significant() -> None:
    groups = [f"v{i}" for i in range(6)]

    def frame(ys: list[float]) -> pd.DataFrame:
        return pd.DataFrame({"variant": groups, "syscalls_per_packet": [1, 2, 3, 4, 5, 6],
                             "cpu_s_per_gbit": ys, "status": "ok"})

    claim = "CPU follows the syscall count"
    up = captions.follows(frame([1, 2, 3, 4, 5, 6]), "syscalls_per_packet", "cpu_s_per_gbit",
                          "variant", claim)
    down = captions.follows(frame([6, 5, 4, 3, 2, 1]), "syscalls_per_packet",
                            "cpu_s_per_gbit", "variant", claim)
    flat = captions.follows(frame([3, 1, 4, 1, 5, 2]), "syscalls_per_packet",
                            "cpu_s_per_gbit", "variant", claim)
    assert up.verdict == "agrees" and "on this machine" in up.text
    assert down.verdict == "disagrees" and "contradicts" in down.text
    assert flat.verdict == "not significant" and "not supported" in flat.text


def test_headroom_and_kept_up_read_the_runs() -> None:
    paced = pd.DataFrame({"io": ["epoll", "uring"], "rate_mbps": [2000.0, 2000.0],
                          "offered_mbps": [2000.0, 2000.0], "mbps": [1999.0, 2000.0],
                          "loss_pct": [0.0, 0.0], "relay_cpu_pct": [23.0, 38.0],
                          "status": "ok"})
    assert "not CPU-bound" in captions.headroom(paced)
    assert "23–38 % of one core" in captions.headroom(paced)
    assert "keeps up in every mode" in captions.kept_up(paced).text
    sat = paced.assign(mbps=[1200.0, 2000.0], loss_pct=[40.0, 0.0])
    assert "could not carry" in captions.kept_up(sat).text
    assert "capacity" in captions.headroom(sat)


def test_share_against_a_prediction() -> None:
    low = captions.share_vs([0.26, 0.29, 0.27], 0.75, "cross-shard share at 4 workers",
                            reason="pairs share a shard")
    assert low.verdict == "disagrees" and "Likely reason: pairs share a shard." in low.text
    assert "predicted 0.75" in low.text
    near = captions.share_vs([0.70, 0.80, 0.74], 0.75, "cross-shard share")
    assert near.verdict == "agrees"
    one = captions.share_vs([0.5], 0.75, "cross-shard share")
    assert one.verdict == "not significant" and "too few" in one.text
    # counted in pairs: 4 of 8 pairs in one run is well within chance of 0.75
    pairs = captions.share_vs([0.5], 0.75, "cross-shard share", trials=8)
    assert pairs.verdict == "agrees" and "4 of 8 draws" in pairs.text
    many = captions.share_vs([0.5] * 6, 0.75, "cross-shard share", trials=8)
    assert many.verdict == "disagrees" and "24 of 48" in many.text


def test_pays_from_finds_where_io_uring_starts_to_pay() -> None:
    rows = []
    # equal at 250 Mbit/s; io_uring cheaper at 1,000 and unpaced
    for rate, e, u in ((250.0, 0.40, 0.40), (1000.0, 0.30, 0.15), (float("nan"), 0.25, 0.1)):
        for i in range(3):
            jitter = 0.01 * (i - 1)
            rows += [{"io": "epoll", "rate_mbps": rate, "cpu_s_per_gbit": e + jitter},
                     {"io": "uring", "rate_mbps": rate, "cpu_s_per_gbit": u - jitter / 2}]
    df = pd.DataFrame(rows).assign(status="ok")
    c = captions.pays_from(df, "epoll", "uring", label_b="io_uring")
    assert "from 1,000 Mbit/s offered on" in c.text, c.text
    assert "250 Mbit/s: 1×, CI 0.9" in c.text and "cannot tell at 250 Mbit/s" in c.text
    assert "unpaced: 0.4×" in c.text
    never = captions.pays_from(df.assign(cpu_s_per_gbit=np.where(
        df["io"] == "uring", df["cpu_s_per_gbit"] * 5, df["cpu_s_per_gbit"])), "epoll", "uring")
    assert "at no rate measured here; more at 250 Mbit/s, 1,000 Mbit/s, unpaced" in never.text
    # cheaper in the middle only: said where, not "from … on"
    gap = df[df["rate_mbps"] != 250].copy()
    gap.loc[gap["rate_mbps"].isna(), "cpu_s_per_gbit"] = 0.25
    mid = captions.pays_from(gap, "epoll", "uring", label_b="io_uring")
    assert "less relay CPU-seconds per Gbit than epoll at 1,000 Mbit/s;" in mid.text, mid.text


def test_extremes_names_the_cheapest_and_dearest() -> None:
    df = pd.DataFrame({"variant": ["epoll", "epoll + coalesce", "io_uring"],
                       "cpu_s_per_gbit": [0.19, 0.15, 0.29], "status": "ok"})
    c = captions.extremes(df, "cpu_s_per_gbit", "variant")
    assert c.text.startswith("Lowest relay CPU-seconds per Gbit: epoll + coalesce, 0.15")
    assert "highest: io_uring, 0.29 CPU·s/Gbit" in c.text
