"""Asset bodies push their batch metrics through here: one call, a warning in the run's log when
the Pushgateway did not take them, and the outcome as metadata (``pushgateway``) either way.

The samples come from ``deploy_ops/metrics_push.py`` (the catalogue, the groups, the builders);
this module only adds what a Dagster step has: its logger and its metadata.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import dagster as dg

from autotrader_assets.settings import Settings
from deploy_ops import metrics_push

#: The metadata key every pushing asset uses for the outcome.
METADATA_KEY = "pushgateway"


def push_from_step(
    context: Any,
    settings: Settings,
    group_job: str,
    samples: Iterable[metrics_push.Sample],
    **grouping: str,
) -> dict[str, Any]:
    """Push ``samples`` as the Pushgateway group ``group_job`` + ``grouping`` and return the
    metadata entry describing the outcome. Never raises for the Pushgateway's sake.

    ``group_job`` is fixed per source (``metrics_push.GROUPS``), not the Dagster job: the same
    asset runs in several jobs (``trading_performance`` in ``paper_trading_job`` and
    ``performance_report``), and one group per source means one current series per metric."""
    outcome = metrics_push.push(settings.pushgateway_url, group_job, samples, grouping)
    if outcome.warning:
        context.log.warning(outcome.warning)
    elif outcome.status == "pushed":
        context.log.info(f"pushed {outcome.n_samples} sample(s) to {outcome.url} (group {dict(outcome.grouping)})")
    return {METADATA_KEY: dg.MetadataValue.json(outcome.to_dict())}


def market_data_groups(fractions: Mapping[str, float], outliers: list[Any]) -> dict[str, list[metrics_push.Sample]]:
    """instrument -> samples of its latest published date in this run: the missing fraction
    (``CompletenessAudit.fractions``, keyed ``date|instrument``) and the outlier bars of that date
    (``OutlierAudit.found`` frames with ``ts`` and ``instrument``). One Pushgateway group per
    instrument, because the daily schedule runs one instrument per run."""
    import pandas as pd

    latest: dict[str, tuple[str, float]] = {}
    for key, fraction in fractions.items():
        date, instrument = key.split("|", 1)
        if instrument not in latest or date > latest[instrument][0]:
            latest[instrument] = (date, fraction)
    found = pd.concat(outliers, ignore_index=True) if outliers else pd.DataFrame(columns=["ts", "instrument"])
    days = pd.to_datetime(found["ts"], utc=True).dt.strftime("%Y-%m-%d") if len(found) else pd.Series(dtype=str)
    groups = {}
    for instrument, (date, fraction) in sorted(latest.items()):
        n = int(((found["instrument"] == instrument) & (days == date)).sum()) if len(found) else 0
        groups[instrument] = metrics_push.market_data_samples(instrument, fraction, n)
    return groups
