"""The rollout report as markdown: one row per stage with its gate readings, for the
``production_deployment`` metadata and the ``autotrader deploy rollout`` output. Presentation
only; the report itself is :class:`deploy_ops.rollout.reports.RolloutReport`."""

from __future__ import annotations

import math
from typing import Any

from deploy_ops.rollout.reports import RolloutReport
from deploy_ops.text import truncate

#: A stage's note in the markdown table: one table cell, the full reason is in the report's JSON.
NOTE_WIDTH = 160


#: The gate table's columns (Markdown for Dagster metadata, a terminal table in the CLI).
GATE_HEADERS = [
    "stage",
    "result",
    "candidate instruments",
    "weight %",
    "requests (cand/live)",
    "errors (cand/live)",
    "error rate",
    "p99 ms",
    "health",
    "Sharpe live",
    "Sharpe cand",
    "Sharpe returns",
    "vs live",
    "note",
]


def gate_rows(report: RolloutReport) -> list[list[str]]:
    """One row of plain cells per stage, in :data:`GATE_HEADERS` order. The Sharpe columns come
    with the number of bar returns behind them, marked when too few to mean anything."""
    rows = []
    for s in report.stages:
        cand = s.traffic.get("candidate", {})
        live = s.traffic.get("live", {})
        health = s.health_checks.get("candidate", {})
        n = s.sharpe.get("n_returns")
        if n is None:
            n_text = "-"
        else:
            n_text = f"{n} {s.sharpe.get('returns', 'bars')}"
            if not s.sharpe.get("meaningful", True):
                n_text += f" (not meaningful below {s.sharpe.get('min_returns')})"
        drop = s.sharpe.get("relative_drop")
        rows.append(
            [
                s.stage,
                "pass" if s.passed else "FAIL",
                ", ".join(s.candidate_instruments) or "-",
                "-" if s.weight_percent is None else str(s.weight_percent),
                f"{cand.get('requests', '-')}/{live.get('requests', '-')}",
                f"{cand.get('errors', '-')}/{live.get('errors', '-')}",
                _fmt(cand.get("error_rate"), "{:.2%}"),
                _fmt(cand.get("p99_ms"), "{:.1f}"),
                f"{health.get('ok', 0)}/{health.get('checks', 0)} ok" if health else "-",
                _fmt(s.sharpe.get("live"), "{:.1f}"),
                _fmt(s.sharpe.get("candidate"), "{:.1f}"),
                n_text,
                "-" if drop is None else (f"{drop:.0%} below" if drop > 0 else f"{-drop:.0%} above"),
                truncate((s.reason or "").replace("\n", " "), NOTE_WIDTH),
            ]
        )
    return rows


def rollout_title(report: RolloutReport) -> str:
    return (
        f"Rollout of version {report.version}: {report.outcome} ({report.mode}; "
        f"live slot {report.live_slot or '-'}, candidate slot {report.candidate_slot or '-'})"
    )


def rollout_markdown(report: RolloutReport) -> str:
    """One row per stage with the gate readings: for Dagster metadata and the CLI."""
    header = "| " + " | ".join(GATE_HEADERS) + " |\n" + "|" + "---|" * len(GATE_HEADERS) + "\n"
    lines = []
    for row in gate_rows(report):
        cells = [c.replace("|", "/") for c in row]
        if cells[1] == "FAIL":
            cells[1] = "**FAIL**"
        lines.append("| " + " | ".join(cells) + " |")
    tail = f"\n\nReason: {report.reason}" if report.reason else ""
    return f"**{rollout_title(report)}**\n\n" + header + "\n".join(lines) + tail


def _fmt(value: Any, pattern: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return pattern.format(value)
