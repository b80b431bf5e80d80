"""labkit.views.fmt: one way to write a number (no exponents, no `None`)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from labkit.views import fmt


@pytest.mark.parametrize(("value", "text"), [
    (250_000.0, "250,000"), (99_880.4, "99,880"), (2154, "2,154"), (1_170_000, "1.17 M"),
    (2.5e9, "2.5 G"), (0.29, "0.29"), (0.0028, "0.0028"), (1.0, "1"), (0.0, "0"),
    (1.234, "1.23"), (-1766.0, "-1,766"), (None, "n/a"), (float("nan"), "n/a"),
    (pd.NA, "n/a"), ("epoll", "epoll"), (math.inf, "∞"),
])
def test_number(value: object, text: str) -> None:
    assert fmt.number(value) == text


def test_no_scientific_notation_anywhere() -> None:
    for v in (1e-5, 2.5e5, 9.988e4, 1.79e5, 2e3, 3.3e-7, 7e11):
        assert "e" not in fmt.number(v).replace(" ", ""), (v, fmt.number(v))


def test_pvalue_ratio_interval() -> None:
    assert fmt.pvalue(2e-5) == "p < 0.001"
    assert fmt.pvalue(0.0312) == "p = 0.031"
    assert fmt.pvalue(float("nan")) == "p n/a"
    assert fmt.ratio(1.523) == "1.52×"
    assert fmt.interval(0.19, 0.291, "CPU·s/Gbit") == "0.19–0.291 CPU·s/Gbit"
    assert fmt.interval(None, 1) == "n/a"


def test_table_writes_every_cell_and_no_none() -> None:
    df = pd.DataFrame({"mbps": [99_880.0, 2154.0], "lat": [None, 0.5]},
                      index=pd.Index(["epoll", "uring"], name="io"))
    page = fmt.html_table(df, {"mbps": "delivered (Mbit/s)", "lat": "p50 (µs)"}, "a caption")
    assert "99,880" in page and "2,154" in page and "n/a" in page
    assert "None" not in page and "e+" not in page and "delivered (Mbit/s)" in page
    assert "<caption>a caption</caption>" in page and "labkit-table" in page
    assert "99,880" in repr(fmt.Table(df))
