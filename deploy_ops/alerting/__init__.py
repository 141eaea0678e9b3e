"""Alert delivery: the events table as an outbox for Alertmanager (one routing tree for the
platform's events and the Prometheus rules), and the weekly report by email.

``catalog.py`` says which events alert and which resolve; ``outbox.py`` queues and delivers
them; ``client.py`` talks to Alertmanager's v2 API; ``amconfig.py`` renders the repository's
``monitoring/alertmanager/alertmanager.yml`` for a local Alertmanager; ``mail.py`` sends the
weekly performance report with its charts. No Dagster here: the sensor and the CLI call
:func:`deliver_now`.
"""

from __future__ import annotations

from deploy_ops.alerting.client import AlertmanagerClient, AlertmanagerError
from deploy_ops.alerting.outbox import FlushResult, Outbox
from deploy_ops.state import DeploymentStateStore


def deliver_now(
    registry_url: str, alertmanager_url: str | None, *, runbook_base_url: str = "", force: bool = False
) -> FlushResult:
    """Queue every new event's alert and, when ``alertmanager_url`` is given, deliver what is due
    (everything pending with ``force``). Without a URL the alerts stay queued for
    ``autotrader alerts list``."""
    outbox = Outbox(DeploymentStateStore(registry_url), runbook_base_url=runbook_base_url)
    client = AlertmanagerClient(alertmanager_url) if alertmanager_url else None
    return outbox.flush(client, force=force)


__all__ = ["AlertmanagerClient", "AlertmanagerError", "FlushResult", "Outbox", "deliver_now"]
