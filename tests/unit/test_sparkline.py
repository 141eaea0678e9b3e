"""The inline trading charts: SVG sparklines short enough for the Dagster UI's asset page to draw
in place (a Markdown value of 1000 characters or more is a "[Show Markdown]" button there)."""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest

from autotrader_assets.defs.trading.performance import (
    INLINE_MARKDOWN_LIMIT,
    drawdown_series,
    equity_png,
    png_markdown,
    sparkline_markdown,
)

SVG = "{http://www.w3.org/2000/svg}"


def _equity(n: int = 3 * 1440) -> pd.Series:
    idx = pd.date_range("2026-11-29", periods=n, freq="min", tz="UTC")
    steps = np.random.default_rng(1).normal(0.00002, 0.001, n)
    return pd.Series(100_000 * np.exp(np.cumsum(steps)), index=idx)


def _svg(markdown: str) -> ET.Element:
    prefix = "data:image/svg+xml;base64,"
    uri = markdown[markdown.index("(") + 1 : -1]
    assert uri.startswith(prefix)
    return ET.fromstring(base64.b64decode(uri[len(prefix) :]))


@pytest.mark.parametrize("n", [1, 2, 50, 3 * 1440, 200_000])
def test_the_charts_fit_the_inline_limit_whatever_the_history(n):
    equity = _equity(n)
    for md in (
        sparkline_markdown(equity, "equity", kind="equity", baseline=100_000.0),
        sparkline_markdown(drawdown_series(equity, 100_000.0), "drawdown", kind="drawdown"),
    ):
        assert len(md) < INLINE_MARKDOWN_LIMIT
        assert _svg(md).tag == f"{SVG}svg"
    # The full-size PNG does not fit: that is why the sparkline exists.
    assert len(png_markdown(equity_png(equity, 100_000.0), "equity curve")) > INLINE_MARKDOWN_LIMIT


def test_the_equity_chart_says_max_min_and_now_against_the_starting_capital():
    equity = pd.Series(
        [100_000.0, 103_000.0, 98_000.0, 101_800.0], index=pd.date_range("2026-12-01", periods=4, freq="h", tz="UTC")
    )
    svg = _svg(sparkline_markdown(equity, "equity", kind="equity", baseline=100_000.0))
    texts = [t.text for t in svg.iter(f"{SVG}text")]
    assert texts == ["max 103,000", "min 98,000", "now 101,800 (+1.8%)"]
    dd = _svg(sparkline_markdown(drawdown_series(equity, 100_000.0), "drawdown", kind="drawdown"))
    assert [t.text for t in dd.iter(f"{SVG}text")] == ["0%", "worst -4.9%", "now -1.2%"]


def test_no_history_and_unknown_kinds():
    assert sparkline_markdown(pd.Series([], dtype=float), "equity", kind="equity") == "*equity: no data yet*"
    with pytest.raises(ValueError, match="unknown sparkline kind 'candles'"):
        sparkline_markdown(_equity(10), "x", kind="candles")
