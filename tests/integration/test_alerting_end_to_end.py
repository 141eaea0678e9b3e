"""Alerts reach people, end to end, with the real binaries (``make monitoring-tools``).

Real serving slots (the local deployer, which writes the file_sd targets file), paper trading that
pushes its metrics to a real Pushgateway, a real Prometheus scraping both and evaluating the
repository's rules, a real Alertmanager with the shipped routing tree sending to local receivers: an
HTTP server standing for PagerDuty's events endpoint and Slack's webhook, an SMTP server (aiosmtpd)
for email. The platform's events go through ``alert_delivery_sensor`` and the weekly report through
``job_notice_sensor``, the same calls the Dagster daemon makes.

Shortened for the test, and only these: the rules are the shipped files rendered by
``deploy_ops.alerting.rules.render_rules`` with every group evaluated each second and the ``for`` of
:data:`SHORTENED` cut from minutes to seconds; Prometheus scrapes each second; Alertmanager's group
waits are :data:`deploy_ops.alerting.amconfig.FAST_TIMINGS` (1 s / 2 s). Thresholds, expressions,
labels, routes and receivers are the shipped ones.

Asserted: every dashboard panel's query returns data from this Prometheus except the four node
exporter panels (no node exporter runs here) and the CloudWatch panel (database connections, no
Prometheus can answer it); a slot started with fault injection (half of /predict answered 500, 250 ms
added) makes PagerDuty receive a ServingErrorRateHigh trigger with severity, dedup key and the
runbook link, and Slack the ServingLatencyHigh warning; the breaker trip of the paper account, seen
by the pushed gauge's rule and by the trip event, is one PagerDuty incident, and its approved reset
resolves it; the weekly report arrives by email with its two charts (and its notice through
Alertmanager's email route).
"""

from __future__ import annotations

import dataclasses
import time

import dagster as dg
import duckdb
import pytest
import requests
from click.testing import CliRunner

from autotrader_assets.commands.breaker import group as breaker_cli
from autotrader_assets.defs.alerting.sensors import alert_delivery_sensor, job_notice_sensor
from autotrader_assets.monitor import MonitoringStack
from autotrader_assets.settings import SmtpSettings, get_settings
from deploy_ops.alerting import AlertmanagerClient
from deploy_ops.alerting.amconfig import FAST_TIMINGS, LocalEndpoints, render_local
from deploy_ops.alerting.rules import render_rules
from deploy_ops.db import make_engine
from deploy_ops.serving.faults import FaultConfig
from deploy_ops.slots.local import LocalDeployer
from deploy_ops.state import DEFAULT_ROUTE, DeploymentStateStore
from deploy_ops.trading.breaker import BreakerStore
from tests.support.alerting import Mailbox, Recorder
from tests.support.prometheus import (
    NODE_EXPORTER,
    ROOT,
    bar_features,
    free_port,
    materialize,
    panel_queries,
    query,
    save_bundle,
    serving_targets,
    tool,
    wait_for,
)

pytestmark = pytest.mark.slow

#: The rules' waits cut for the test (shipped: 5 min and 10 min); nothing else changes.
SHORTENED = {"ServingErrorRateHigh": "3s", "ServingLatencyHigh": "3s"}
RUNBOOK_BASE = "https://git.example.com/autotrader/blob/main/"
FAULTS = FaultConfig(error_rate=0.5, latency_ms=250.0)


def _pagerduty(http: Recorder, action: str, alertname: str) -> list[dict]:
    return [
        b
        for b in http.bodies("/v2/enqueue")
        if b["event_action"] == action and b["payload"]["custom_details"]["alertname"] == alertname
    ]


def test_alerts_reach_pagerduty_slack_and_email_end_to_end(tmp_path, monkeypatch):
    for name in ("prometheus", "prometheus-pushgateway", "prometheus-alertmanager"):
        tool(name)
    started = time.monotonic()
    http, mail = Recorder(), Mailbox()
    am_config = render_local(
        ROOT / "monitoring" / "alertmanager" / "alertmanager.yml",
        tmp_path / "am",
        LocalEndpoints(
            pagerduty_url=f"{http.url}/v2/enqueue",
            slack_webhook_url=f"{http.url}/slack",
            smtp_smarthost=mail.smarthost,
            timings=FAST_TIMINGS,
        ),
    )
    rules = tmp_path / "rules"
    render_rules(
        ROOT / "monitoring" / "prometheus" / "rules",
        rules,
        runbook_base_url=RUNBOOK_BASE,
        durations=SHORTENED,
        evaluation_interval="1s",
    )
    targets = tmp_path / "serving_targets.json"
    stack = MonitoringStack(
        workdir=tmp_path / "monitoring",
        targets_file=targets,
        prometheus_port=free_port(),
        pushgateway_port=free_port(),
        alertmanager_port=free_port(),
        alertmanager_config=am_config,
        rules_dir=rules,
        scrape_interval="1s",
    )
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    state = DeploymentStateStore(url)
    deployer = LocalDeployer(state, tmp_path / "slots", ready_timeout=90, stop_grace=5, targets_file=targets)
    sha = save_bundle(tmp_path / "v1.pt", 1)
    with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as con:
        con.register("_bf", bar_features())
        con.execute("create table bar_features as select * from _bf")
    world = {"root": tmp_path, "url": url, "warehouse": tmp_path / "warehouse.duckdb"}
    smtp = SmtpSettings(
        host="127.0.0.1", port=mail.port, sender="autotrader@localhost", recipients=("desk@localhost",), starttls=False
    )
    try:
        stack.start()
        settings = dataclasses.replace(
            get_settings(),
            registry_url=url,
            pushgateway_url=stack.pushgateway_url,
            alertmanager_url=stack.alertmanager_url,
            runbook_base_url=RUNBOOK_BASE,
            smtp=smtp,
        )
        am = AlertmanagerClient(stack.alertmanager_url)

        def deliver() -> str:  # one tick of the daemon's alert_delivery_sensor
            return alert_delivery_sensor(dg.build_sensor_context(resources={"settings": settings})).skip_message

        blue = deployer.start_slot("blue", tmp_path / "v1.pt", sha, "1")
        state.set_routes({DEFAULT_ROUTE: "blue"})
        wait_for(lambda: serving_targets(stack) == {blue.url.removeprefix("http://")}, what="blue scraped")

        # Paper trading pushes its metrics; fees on ~100 fills trip the breaker on the first day.
        (tmp_path / "dagster").mkdir()
        with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
            result = materialize(world, stack.pushgateway_url, instance, runbook_base_url=RUNBOOK_BASE)
            assert result.success
            assert BreakerStore(url).status().tripped
            # The last run's report, as job_notice_sensor sees a finished performance report.
            success = next(e for e in result.all_events if e.event_type_value == "PIPELINE_SUCCESS")
            note = job_notice_sensor(
                dg.build_run_status_sensor_context(
                    sensor_name="job_notice_sensor",
                    dagster_event=success,
                    dagster_instance=instance,
                    dagster_run=result.dagster_run,
                    resources={"settings": settings},
                )
            ).skip_message
        assert "mailed to desk@localhost with 2 chart(s)" in note, note

        # The breaker, from both sources: the pushed gauge's rule and the trip event. One incident.
        assert "delivered" in deliver()
        wait_for(
            lambda: (
                len(
                    {
                        a["labels"].get("job", "event")
                        for a in am.alerts()
                        if a["labels"]["alertname"] == "CircuitBreakerTripped"
                    }
                )
                == 2
            ),
            what="CircuitBreakerTripped from the rule and from the event",
        )
        breaker_pages = wait_for(lambda: _pagerduty(http, "trigger", "CircuitBreakerTripped"), what="the breaker page")
        assert breaker_pages[0]["payload"]["severity"] == "critical"

        # Live traffic on blue for rate(); then every panel but the node exporter's and CloudWatch's has data.
        for _ in range(12):
            answer = requests.post(
                f"{blue.url}/predict", json={"instrument": "BTCUSDT", "rows": [[0.0, 0.0, 50.0, 0.0]]}, timeout=5
            )
            assert answer.status_code == 200, answer.text
            time.sleep(0.25)
        wait_for(
            lambda: query(stack, 'sum(rate(autotrader_serving_requests_total{endpoint="/predict"}[5m])) > 0'),
            what="blue's requests in Prometheus",
        )
        without_data, cloudwatch = [], []
        for board, title, target in panel_queries():
            if target["datasource"]["type"] == "cloudwatch":
                cloudwatch.append(title)
            elif not query(stack, target["expr"]):
                without_data.append((board, title, target["expr"]))
        assert cloudwatch == ["Database connections"]
        assert all(NODE_EXPORTER in expr for _, _, expr in without_data), without_data
        assert {(b, t) for b, t, _ in without_data} == {
            ("system", "CPU"),
            ("system", "Memory"),
            ("system", "Disk"),
            ("system", "Network"),
        }

        # Fault injection on green: 5xx above 1% pages, p99 above 200 ms reaches Slack.
        green = deployer.start_slot("green", tmp_path / "v1.pt", sha, "1", faults=FAULTS)
        wait_for(lambda: green.url.removeprefix("http://") in serving_targets(stack), what="green scraped")
        codes = []
        for _ in range(16):
            codes.append(
                requests.post(
                    f"{green.url}/predict", json={"instrument": "ETHUSDT", "rows": [[0.0, 0.0, 50.0, 0.0]]}, timeout=5
                ).status_code
            )
        assert 500 in codes and 200 in codes, codes
        (page, *_) = wait_for(
            lambda: _pagerduty(http, "trigger", "ServingErrorRateHigh"),
            timeout=40,
            what="the ServingErrorRateHigh page",
        )
        assert page["payload"]["severity"] == "critical"
        assert page["dedup_key"] and page["payload"]["custom_details"]["incident"] == "serving-error-rate"
        assert page["links"][0]["href"] == f"{RUNBOOK_BASE}docs/runbooks/alerts.md#servingerrorratehigh"
        wait_for(
            lambda: [b for b in http.bodies("/slack") if "ServingLatencyHigh" in str(b)],
            timeout=40,
            what="ServingLatencyHigh on Slack",
        )

        # The approved reset (CLI: pushes the armed gauge, records the reset) resolves the one incident.
        monkeypatch.setenv("AUTOTRADER_REGISTRY_URL", url)
        monkeypatch.setenv("AUTOTRADER_PUSHGATEWAY_URL", stack.pushgateway_url)
        get_settings.cache_clear()
        try:
            done = CliRunner().invoke(breaker_cli, ["reset", "--approved-by", "risk officer", "--reason", "e2e test"])
        finally:
            monkeypatch.undo()
            get_settings.cache_clear()
        assert done.exit_code == 0, done.output
        deliver()
        resolves = wait_for(
            lambda: _pagerduty(http, "resolve", "CircuitBreakerTripped"),
            timeout=30,
            what="the breaker's incident resolved",
        )
        triggers = _pagerduty(http, "trigger", "CircuitBreakerTripped")
        assert {t["dedup_key"] for t in triggers} == {resolves[0]["dedup_key"]}, triggers

        # The weekly report: the mail with its charts, and its notice through the email route.
        report = next(m for m in mail.messages if "weekly performance" in str(m["Subject"]))
        charts = {part.get_filename(): part.get_content() for part in report.iter_attachments()}
        assert set(charts) == {"equity_curve.png", "drawdown.png"}
        assert all(data.startswith(b"\x89PNG") for data in charts.values())
        wait_for(
            lambda: [m for m in mail.messages if "WeeklyPerformanceReport" in str(m["Subject"])],
            what="the report's notice by email",
        )
        print(f"\nend to end in {time.monotonic() - started:.1f} s")
    finally:
        deployer.stop_all()
        stack.stop()
        http.close()
        mail.close()
        make_engine(url).dispose()
