"""The weekly performance report as an info event and a mail with its charts (plain Python).

The ``trading_performance`` materialization of a ``performance_report`` run already holds
everything: the summary numbers and the equity and drawdown charts (PNG, as data URIs in its
markdown metadata). The report is built from that, so the mail shows exactly what the run
computed.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from typing import Any, Mapping

from deploy_ops.alerting.mail import Attachment

_DATA_URI = re.compile(r"data:image/png;base64,([A-Za-z0-9+/=]+)")
#: Metadata entries of trading_performance holding the charts, and the file name each gets.
CHARTS = (("equity_curve", "equity_curve.png"), ("drawdown_plot", "drawdown.png"))
_NUMBERS = (
    "current_equity",
    "total_pnl",
    "daily_pnl",
    "total_return",
    "sharpe",
    "win_rate",
    "max_drawdown",
    "profit_factor",
    "n_trades",
)


class ReportError(ValueError):
    """The materialization lacks what the report needs (a chart, the summary)."""


@dataclass(frozen=True)
class Report:
    summary: str
    body: str
    numbers: dict[str, Any]
    attachments: tuple[Attachment, ...]


def _plain(value: Any) -> Any:
    return getattr(value, "value", value)


def build_report(metadata: Mapping[str, Any], run_id: str) -> Report:
    """The report of one ``trading_performance`` materialization's metadata."""
    attachments = []
    for key, filename in CHARTS:
        text = str(_plain(metadata.get(key, "")) or "")
        match = _DATA_URI.search(text)
        if not match:
            raise ReportError(f"trading_performance metadata has no {key} chart (PNG data URI)")
        attachments.append(Attachment(filename, base64.b64decode(match.group(1))))
    numbers = {k: _plain(metadata[k]) for k in _NUMBERS if k in metadata}
    if "current_equity" not in numbers:
        raise ReportError("trading_performance metadata has no current_equity: not a performance report")

    def fmt(key: str, spec: str) -> str:
        value = numbers.get(key)
        return format(value, spec) if isinstance(value, (int, float)) else str(value if value is not None else "-")

    summary = (
        f"weekly performance: equity {fmt('current_equity', ',.2f')}, PnL {fmt('total_pnl', ',.2f')}, "
        f"Sharpe {fmt('sharpe', '.2f')}, max drawdown {fmt('max_drawdown', '.2%')}"
    )
    lines = ["The paper account's weekly performance report (run " + run_id + ").", ""]
    lines += [f"{k.replace('_', ' ')}: {fmt(k, ',.4g')}" for k in _NUMBERS if k in numbers]
    lines += ["", "Attached: the equity curve and the drawdown chart."]
    return Report(summary, "\n".join(lines), numbers, tuple(attachments))


__all__ = ["CHARTS", "Report", "ReportError", "build_report"]
