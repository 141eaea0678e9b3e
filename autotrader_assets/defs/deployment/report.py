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


def rollout_markdown(report: RolloutReport) -> str:
    """One row per stage with the gate readings: for Dagster metadata and the CLI."""
    header = (
        "| stage | result | candidate instruments | weight % | requests (cand/live) | errors (cand/live) "
        "| error rate | p99 ms | health | Sharpe live | Sharpe cand | drop | note |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for s in report.stages:
        cand = s.traffic.get("candidate", {})
        live = s.traffic.get("live", {})
        health = s.health_checks.get("candidate", {})
        health_text = f"{health.get('ok', 0)}/{health.get('checks', 0)} ok" if health else "-"
        lines.append(
            "| {stage} | {result} | {instr} | {weight} | {rc}/{rl} | {ec}/{el} | {er} | {p99} | {health} "
            "| {sl} | {sc} | {drop} | {note} |".format(
                stage=s.stage,
                result="pass" if s.passed else "**FAIL**",
                instr=", ".join(s.candidate_instruments) or "-",
                weight="-" if s.weight_percent is None else s.weight_percent,
                rc=cand.get("requests", "-"), rl=live.get("requests", "-"),
                ec=cand.get("errors", "-"), el=live.get("errors", "-"),
                er=_fmt(cand.get("error_rate"), "{:.2%}"),
                p99=_fmt(cand.get("p99_ms"), "{:.1f}"),
                health=health_text,
                sl=_fmt(s.sharpe.get("live"), "{:.3f}"),
                sc=_fmt(s.sharpe.get("candidate"), "{:.3f}"),
                drop=_fmt(s.sharpe.get("relative_drop"), "{:.1%}"),
                note=truncate((s.reason or "").replace("|", "/").replace("\n", " "), NOTE_WIDTH),
            )
        )
    title = (
        f"**Rollout of version {report.version}: {report.outcome}** ({report.mode}; "
        f"live slot {report.live_slot or '-'}, candidate slot {report.candidate_slot or '-'})\n\n"
    )
    tail = f"\n\nReason: {report.reason}" if report.reason else ""
    return title + header + "\n".join(lines) + tail


def _fmt(value: Any, pattern: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return pattern.format(value)
