"""One way to write a number, for every figure, table and caption the lab shows.

A workshop reads `99,880 packets/s`, `1.2 M`, `0.0028` and `n/a`; never `9.988e+04`,
`2.500e+5` or a literal `None`. The rule, in Python (number()) and in the browser
(tick_formatter(), the same rule in JavaScript for bokeh's axes):

- missing (None, NaN, pandas NA) -> "n/a";
- |v| >= 1,000,000 -> an SI prefix with 3 significant digits ("1.17 M", "2.5 G");
- otherwise 3 significant digits in fixed point, with thousands separators ("99,880",
  "2,154", "0.29", "0.0028"); integers stay whole.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

NA = "n/a"
_SI = ((1e12, "T"), (1e9, "G"), (1e6, "M"))


def missing(v: Any) -> bool:
    """None, NaN or pandas NA (anything a table would otherwise print as `None`/`nan`)."""
    if v is None:
        return True
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):  # an array-like: not one missing number
        return False


def _decimals(v: float, digits: int) -> int:
    """Decimal places that show `digits` significant digits of v in fixed point."""
    if v == 0:
        return 0
    return max(0, digits - 1 - math.floor(math.log10(abs(v))))


def number(v: Any, digits: int = 3) -> str:
    """v as the lab writes it (see the module docstring); non-numbers as str()."""
    if missing(v):
        return NA
    if isinstance(v, bool) or not isinstance(v, int | float) and not hasattr(v, "__float__"):
        return str(v)
    x = float(v)
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    for scale, prefix in _SI:
        if abs(x) >= scale:
            return f"{number(x / scale, digits)} {prefix}"
    if float(x).is_integer() and abs(x) >= 1:
        return f"{int(x):,}"
    d = _decimals(x, digits)
    out = f"{x:,.{d}f}"
    return out.rstrip("0").rstrip(".") if "." in out and abs(x) < 1000 else out


def with_unit(v: Any, unit: str, digits: int = 3) -> str:
    """"2,000 Mbit/s"; "n/a" carries no unit; "%" sticks to nothing but a space."""
    s = number(v, digits)
    return s if s == NA or not unit else f"{s} {unit}"


def ratio(r: Any) -> str:
    """"1.52×" ("n/a" when unknown)."""
    return NA if missing(r) else f"{number(r)}×"


def interval(lo: Any, hi: Any, unit: str = "") -> str:
    """"0.19–0.29 CPU·s/Gbit" (an en dash; "n/a" when either end is unknown)."""
    if missing(lo) or missing(hi):
        return NA
    span = number(lo) if number(lo) == number(hi) else f"{number(lo)}–{number(hi)}"
    return span + (f" {unit}" if unit else "")


def pvalue(p: Any) -> str:
    """"p = 0.03", "p < 0.001" (never `2e-05`)."""
    if missing(p):
        return "p n/a"
    return "p < 0.001" if p < 0.001 else f"p = {number(p, 2)}"


def frame(df: pd.DataFrame, headers: Mapping[str, str] | None = None) -> pd.DataFrame:
    """A copy of df with every cell written by number() (strings pass through), and its
    columns renamed by `headers` (column -> header with its unit)."""
    out = df.map(lambda v: v if isinstance(v, str) else number(v))
    if isinstance(out.index, pd.MultiIndex) or out.index.dtype != object:
        out.index = out.index.map(lambda v: v if isinstance(v, tuple) else number(v)
                                  if isinstance(v, int | float) and not isinstance(v, bool)
                                  else v)
    return out.rename(columns=dict(headers or {}))


# Tables sit inside the notebook's text column: small type, headers that wrap, no overflow
TABLE_CSS = ("<style>.labkit-table{border-collapse:collapse;font-size:12px;max-width:100%;"
             "table-layout:auto}.labkit-table th,.labkit-table td{padding:2px 6px;"
             "text-align:right;border-bottom:1px solid #e5e5e5}.labkit-table th{"
             "white-space:normal;max-width:9em;vertical-align:bottom;background:#f6f6f6}"
             ".labkit-table td:first-child,.labkit-table th:first-child{text-align:left}"
             ".labkit-table caption{caption-side:top;text-align:left;color:#444;"
             "font-size:12.5px;padding-bottom:4px}</style>")


def html_table(df: pd.DataFrame, headers: Mapping[str, str] | None = None,
               caption: str = "", index: bool = True) -> str:
    """df as a narrow HTML table (TABLE_CSS) with every number written by number()."""
    import html as _html

    body = frame(df, headers).to_html(index=index, border=0, escape=True,
                                      classes="labkit-table", na_rep=NA)
    if caption:
        body = body.replace(">", f"><caption>{_html.escape(caption)}</caption>", 1)
    return TABLE_CSS + body


class Table:
    """A table a notebook displays: `display(fmt.Table(df, headers, caption))`."""

    def __init__(self, df: pd.DataFrame, headers: Mapping[str, str] | None = None,
                 caption: str = "", index: bool = True) -> None:
        self.df, self.headers, self.caption, self.index = df, headers, caption, index

    def _repr_html_(self) -> str:
        return html_table(self.df, self.headers, self.caption, self.index)

    def __repr__(self) -> str:
        text = frame(self.df, self.headers).to_string(index=self.index)
        return f"{self.caption}\n{text}" if self.caption else text


# The same rule as number(), for bokeh axes (bokeh runs it in the browser per tick).
_JS = """
function num(x) {
  if (x === null || isNaN(x)) { return "n/a"; }
  const si = [[1e12, "T"], [1e9, "G"], [1e6, "M"]];
  for (const [s, p] of si) { if (Math.abs(x) >= s) { return num(x / s) + " " + p; } }
  if (Number.isInteger(x)) { return x.toLocaleString("en-US"); }
  const d = x === 0 ? 0 : Math.max(0, 2 - Math.floor(Math.log10(Math.abs(x))));
  let out = x.toLocaleString("en-US", {minimumFractionDigits: d, maximumFractionDigits: d});
  if (out.includes(".") && Math.abs(x) < 1000) { out = out.replace(/0+$/, "").replace(/[.]$/, ""); }
  return out;
}
return num(tick);
"""


def tick_formatter() -> Any:
    """A bokeh tick formatter writing ticks by number()'s rule (no `2.500e+5`)."""
    from bokeh.models import CustomJSTickFormatter

    return CustomJSTickFormatter(code=_JS)


def style_axes(fig: Any) -> Any:
    """Every numeric (linear or log) axis of a bokeh figure written by tick_formatter();
    categorical and datetime axes keep their own."""
    from bokeh.models import LinearAxis, LogAxis

    for ax in (*fig.xaxis, *fig.yaxis):
        if type(ax) in (LinearAxis, LogAxis):
            ax.formatter = tick_formatter()
    return fig
