"""The alerting sensors through Dagster: alert_delivery_sensor delivers the outbox (or says why it
holds it), job_notice_sensor turns a finished performance report into an info event and a mail
with both charts, and a finished data_pipeline run into the notice that resolves its failure."""

from __future__ import annotations

import base64
import dataclasses

import dagster as dg
import pytest

from autotrader_assets.defs.alerting.sensors import alert_delivery_sensor, job_notice_sensor
from autotrader_assets.settings import SmtpSettings, load_settings
from deploy_ops import events
from deploy_ops.alerting import Outbox
from deploy_ops.state import DeploymentStateStore
from tests.support.alerting import Mailbox, Recorder

_PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(32))
_URI = f"![chart](data:image/png;base64,{base64.b64encode(_PNG).decode()})"


@pytest.fixture
def settings(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOTRADER_HOME", str(tmp_path / "home"))
    return load_settings()


def test_alert_delivery_sensor_holds_alerts_without_alertmanager_and_delivers_with_it(settings):
    state = DeploymentStateStore(settings.registry_url)
    events.record(state, "run_failed", "warning", "run r1 failed", {"run_id": "r1"})
    held = alert_delivery_sensor(dg.build_sensor_context(resources={"settings": settings}))
    assert "AUTOTRADER_ALERTMANAGER_URL is not set" in held.skip_message and "1 pending" in held.skip_message
    am = Recorder()
    try:
        with_am = dataclasses.replace(settings, alertmanager_url=am.url)
        out = alert_delivery_sensor(dg.build_sensor_context(resources={"settings": with_am}))
        assert "1 delivered" in out.skip_message
        (body,) = am.bodies("/api/v2/alerts")
        assert body[0]["labels"]["alertname"] == "RunFailed"
    finally:
        am.close()


@dg.asset(name="trading_performance")
def _performance() -> dg.MaterializeResult:
    return dg.MaterializeResult(
        metadata={
            "equity_curve": dg.MetadataValue.md(_URI),
            "drawdown_plot": dg.MetadataValue.md(_URI),
            "current_equity": 101.25,
            "total_pnl": 1.25,
            "sharpe": 1.4,
            "max_drawdown": 0.02,
        }
    )


def _notice(instance: dg.DagsterInstance, result, settings) -> str:
    event = next(e for e in result.all_events if e.event_type_value == "PIPELINE_SUCCESS")
    context = dg.build_run_status_sensor_context(
        sensor_name="job_notice_sensor",
        dagster_event=event,
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        resources={"settings": settings},
    )
    return job_notice_sensor(context).skip_message


def test_weekly_report_is_an_info_event_and_a_mail_with_both_charts(settings):
    mail = Mailbox()
    try:
        smtp = SmtpSettings(
            host="127.0.0.1",
            port=mail.port,
            sender="autotrader@localhost",
            recipients=("desk@localhost",),
            starttls=False,
        )
        with dg.instance_for_test() as instance:
            result = dg.materialize([_performance], instance=instance)
            note = _notice(instance, result, dataclasses.replace(settings, smtp=smtp))
        assert "mailed to desk@localhost with 2 chart(s)" in note
        (msg,) = mail.messages
        assert {p.get_filename() for p in msg.iter_attachments()} == {"equity_curve.png", "drawdown.png"}
        assert "equity 101.25" in msg["Subject"]
    finally:
        mail.close()
    (event,) = DeploymentStateStore(settings.registry_url).events_since(0, kinds=["weekly_performance_report"])
    assert event.severity == "info" and event.details["current_equity"] == 101.25
    rows = Outbox(DeploymentStateStore(settings.registry_url)).flush(None)
    assert rows.enqueued == 1  # the WeeklyPerformanceReport notice for the email route


def test_a_failed_report_mail_is_a_warning_not_a_lost_report(settings):
    smtp = SmtpSettings(
        host="127.0.0.1", port=9, sender="autotrader@localhost", recipients=("desk@localhost",), starttls=False
    )
    with dg.instance_for_test() as instance:
        result = dg.materialize([_performance], instance=instance)
        note = _notice(instance, result, dataclasses.replace(settings, smtp=smtp))
    assert "not mailed" in note
    kinds = [e.kind for e in DeploymentStateStore(settings.registry_url).events_since(0)]
    assert kinds == ["report_mail_failed", "weekly_performance_report"]
