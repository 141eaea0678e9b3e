"""The shipped routing tree with the real Alertmanager 0.25 and amtool (``make monitoring-tools``).

* ``amtool check-config`` accepts ``monitoring/alertmanager/alertmanager.yml``;
* ``amtool config routes test``: every alert name (the platform's events and the Prometheus rules)
  reaches the receiver of its severity;
* a live Alertmanager, rendered from the shipped file (``deploy_ops.alerting.amconfig``) with local
  receivers: an HTTP server for PagerDuty's events endpoint and Slack's webhook, an SMTP server.
  Alertmanager is down while events are raised; it starts; every event arrives once per dedup key,
  the breaker's reset resolves its incident, and the breaker inhibits the win-rate warning.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml

from deploy_ops import events
from deploy_ops.alerting import AlertmanagerClient, Outbox
from deploy_ops.alerting.amconfig import (
    FAST_TIMINGS,
    LocalEndpoints,
    load,
    receiver_for_severity,
    relocated_alertmanager,
    render_local,
)
from deploy_ops.alerting.catalog import all_alertnames
from deploy_ops.alerting.mail import Attachment, Relay, send
from deploy_ops.slots.local import free_port
from deploy_ops.state import DeploymentStateStore
from deploy_ops.trading.breaker import BreakerStore
from tests.support.alerting import Mailbox, Recorder

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".tools" / "monitoring" / "usr" / "bin"
AMTOOL = BIN / "amtool"
ALERTMANAGER = BIN / "prometheus-alertmanager"
CONFIG = ROOT / "monitoring" / "alertmanager" / "alertmanager.yml"
RULES = ROOT / "monitoring" / "prometheus" / "rules"

pytestmark = pytest.mark.skipif(
    not (AMTOOL.exists() and ALERTMANAGER.exists()),
    reason="Alertmanager/amtool not unpacked: run `make monitoring-tools` (make test does)",
)


def _rule_alerts() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for path in sorted(RULES.glob("*.yml")):
        for group in (yaml.safe_load(path.read_text()) or {}).get("groups", []):
            for rule in group.get("rules", []):
                if "alert" in rule:
                    out.setdefault(rule["alert"], set()).add(rule.get("labels", {}).get("severity", ""))
    return out


def test_amtool_accepts_the_shipped_config():
    result = subprocess.run([str(AMTOOL), "check-config", str(CONFIG)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 inhibit rules" in result.stdout and "3 receivers" in result.stdout


def test_every_alertname_reaches_the_receiver_of_its_severity():
    receivers = receiver_for_severity(load(CONFIG))
    assert receivers == {"critical": "pagerduty", "warning": "slack", "info": "email"}
    names = all_alertnames()
    for name, severities in _rule_alerts().items():
        assert severities <= set(receivers), f"rule {name} has severity {severities}"
        names.setdefault(name, set()).update(severities)
    assert {"CircuitBreakerTripped", "ServingErrorRateHigh", "WeeklyPerformanceReport"} <= set(names)
    cases = [(name, severity, receivers[severity]) for name, sevs in sorted(names.items()) for severity in sorted(sevs)]
    cases.append(("SomethingWithoutSeverity", None, "slack"))  # the default route: never dropped
    for name, severity, expected in cases:
        labels = [f"alertname={name}"] + ([f"severity={severity}"] if severity else [])
        result = subprocess.run(
            [
                str(AMTOOL),
                "config",
                "routes",
                "test",
                f"--config.file={CONFIG}",
                f"--verify.receivers={expected}",
                *labels,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, f"{labels} -> {result.stdout.strip()} (expected {expected})"


@pytest.fixture
def receivers():
    http, mail = Recorder(), Mailbox()
    yield http, mail
    http.close()
    mail.close()


def _start_alertmanager(config: Path, port: int, tmp_path: Path) -> subprocess.Popen:
    log = open(tmp_path / "alertmanager.log", "wb")
    binary, cwd = relocated_alertmanager(ALERTMANAGER)
    proc = subprocess.Popen(
        [
            str(binary),
            f"--config.file={config}",
            f"--storage.path={tmp_path / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
            "--log.level=debug",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=cwd,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/-/ready", timeout=1).status_code == 200:
                return proc
        except requests.RequestException:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"Alertmanager did not start: {(tmp_path / 'alertmanager.log').read_text()[-2000:]}")


def _wait(predicate, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _pagerduty(http: Recorder) -> list[dict]:
    return http.bodies("/v2/enqueue")


def test_events_raised_while_alertmanager_is_down_arrive_once_per_dedup_key(tmp_path, receivers):
    http, mail = receivers
    port = free_port()
    config = render_local(
        CONFIG,
        tmp_path / "am",
        LocalEndpoints(
            pagerduty_url=f"{http.url}/v2/enqueue",
            slack_webhook_url=f"{http.url}/slack",
            smtp_smarthost=mail.smarthost,
            timings=FAST_TIMINGS,
        ),
    )
    state = DeploymentStateStore(f"sqlite:///{tmp_path / 'registry.db'}")
    outbox = Outbox(state, runbook_base_url="https://git.example.com/autotrader/blob/main/")
    client = AlertmanagerClient(f"http://127.0.0.1:{port}")

    # Alertmanager is down: the events are raised and queued, the delivery fails and is kept.
    breaker = BreakerStore(state.url)
    breaker.trip("daily_loss", {"equity": 94.0})
    trip_id = breaker.status().trip_id
    events.record(
        state,
        "circuit_breaker_alert",
        "critical",
        "breaker tripped; requesting emergency_rollback",
        {"trip_id": trip_id},
    )  # the sensor's alert for the same trip: the same dedup key
    state.record_event("slot_down", "slot green is down", severity="critical", details={"slot": "green"})
    events.record(state, "run_failed", "warning", "run r1 of data_pipeline failed", {"run_id": "r1"})
    events.record(state, "training_completed", "info", "training_job completed (run r2)", {"run_id": "r2"})
    down = outbox.flush(client)
    assert down.error and down.pending == 5 and down.delivered == 0

    proc = _start_alertmanager(config, port, tmp_path)
    try:
        up = outbox.flush(client, force=True)
        assert up.error is None and up.delivered == 5 and up.pending == 0

        triggers = _wait(
            lambda: (lambda t: t if len(t) >= 2 else None)(
                [b for b in _pagerduty(http) if b["event_action"] == "trigger"]
            ),
            "two PagerDuty triggers",
        )
        slack = _wait(lambda: http.bodies("/slack"), "a Slack message")
        mails = _wait(lambda: mail.messages, "an email")
        time.sleep(5)  # several group intervals: any duplicate would have arrived by now
        outbox.flush(client, force=True)
        triggers = [b for b in _pagerduty(http) if b["event_action"] == "trigger"]
        keys = sorted(t["payload"]["custom_details"]["dedup_key"] for t in triggers)
        assert keys == sorted([f"circuit-breaker-trip-{trip_id}", "slot-down-green"]), triggers
        assert len({t["dedup_key"] for t in triggers}) == 2
        breaker_page = next(t for t in triggers if "circuit-breaker" in t["payload"]["custom_details"]["dedup_key"])
        assert breaker_page["payload"]["severity"] == "critical"
        assert breaker_page["links"][0]["href"].startswith(
            "https://git.example.com/autotrader/blob/main/docs/runbooks/"
        )
        assert breaker_page["routing_key"] == "local-routing-key"
        assert len(http.bodies("/slack")) == 1 and "RunFailed" in str(slack[0])
        assert len(mail.messages) == 1 and "TrainingCompleted" in mails[0]["Subject"]

        # The tripped breaker inhibits the win-rate warning it causes.
        events.record(
            state,
            "model_health_finding",
            "warning",
            "2024-01-02 win_rate: 41% over 4 h",
            {"check": "win_rate", "date": "2024-01-02"},
        )
        outbox.flush(client)
        win = _wait(lambda: [a for a in client.alerts() if a["labels"]["alertname"] == "WinRateLow"], "WinRateLow")
        assert win[0]["status"]["inhibitedBy"], win

        # The reset resolves the breaker's incident.
        breaker.reset(approved_by="risk officer", reason="post-mortem done")
        assert outbox.flush(client).resolved == 1
        resolves = _wait(lambda: [b for b in _pagerduty(http) if b["event_action"] == "resolve"], "a resolve")
        assert resolves[0]["dedup_key"] == breaker_page["dedup_key"]
        # Once the breaker no longer inhibits it, the win-rate warning reaches Slack.
        _wait(lambda: [b for b in http.bodies("/slack") if "WinRateLow" in str(b)], "WinRateLow on Slack")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_the_weekly_report_mail_carries_its_charts(receivers):
    _, mail = receivers
    relay = Relay(
        host="127.0.0.1", port=mail.port, sender="autotrader@localhost", recipients=("desk@localhost",), starttls=False
    )
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(64))
    send(
        relay,
        "[autotrader] weekly performance",
        "numbers",
        [Attachment("equity_curve.png", png), Attachment("drawdown.png", png)],
    )
    (msg,) = _wait(lambda: mail.messages, "the report mail")
    attachments = {part.get_filename(): part.get_content() for part in msg.iter_attachments()}
    assert attachments == {"equity_curve.png": png, "drawdown.png": png}


def test_a_breaker_trip_seen_by_the_rule_and_the_event_pages_once_and_resolves_once(tmp_path, receivers):
    """The pushed gauge's rule (posted here as Prometheus posts it: the series' job label, the rule's
    labels, its relative runbook link) and the trip event share alertname and incident: one group,
    one PagerDuty trigger with a runbook link, and one resolve only after both have cleared."""
    import datetime as dt

    from deploy_ops.db import utcnow

    http, _ = receivers
    port = free_port()
    config = render_local(
        CONFIG,
        tmp_path / "am",
        LocalEndpoints(
            pagerduty_url=f"{http.url}/v2/enqueue",
            slack_webhook_url=f"{http.url}/slack",
            smtp_smarthost="127.0.0.1:9",
            timings=FAST_TIMINGS,
        ),
    )
    state = DeploymentStateStore(f"sqlite:///{tmp_path / 'registry.db'}")
    outbox = Outbox(state)
    client = AlertmanagerClient(f"http://127.0.0.1:{port}")
    rule = next(
        r
        for r in yaml.safe_load((RULES / "batch.yml").read_text())["groups"][0]["rules"]
        if r["alert"] == "CircuitBreakerTripped"
    )

    def rule_alert(ends: dt.datetime) -> dict:
        labels = {"alertname": "CircuitBreakerTripped", "job": "circuit_breaker", **rule["labels"]}
        return {
            "labels": labels,
            "annotations": dict(rule["annotations"]),
            "startsAt": (utcnow() - dt.timedelta(seconds=30)).isoformat(),
            "endsAt": ends.isoformat(),
        }

    proc = _start_alertmanager(config, port, tmp_path)
    try:
        client.post_alerts([rule_alert(utcnow() + dt.timedelta(minutes=5))])  # Prometheus is first
        breaker = BreakerStore(state.url)
        breaker.trip("daily_loss", {"equity": 94.0})
        outbox.flush(client, force=True)
        both = _wait(
            lambda: (lambda a: a if len(a) == 2 else None)(
                [a for a in client.alerts() if a["labels"]["alertname"] == "CircuitBreakerTripped"]
            ),
            "both alerts",
        )
        assert {a["labels"].get("job", "event") for a in both} == {"circuit_breaker", "event"}
        time.sleep(5)  # group_wait 1 s, group_interval 2 s: a second page would be here by now
        triggers = [b for b in _pagerduty(http) if b["event_action"] == "trigger"]
        assert len({t["dedup_key"] for t in triggers}) == 1, triggers
        assert triggers[0]["payload"]["custom_details"]["incident"] == "circuit-breaker"
        assert triggers[0]["links"][0]["href"].startswith("docs/runbooks/"), triggers[0]["links"]

        breaker.reset(approved_by="risk officer", reason="drill over")
        outbox.flush(client, force=True)  # the event resolves; the rule still fires: no resolve yet
        time.sleep(4)
        assert not [b for b in _pagerduty(http) if b["event_action"] == "resolve"]
        client.post_alerts([rule_alert(utcnow())])  # the gauge back at 0: Prometheus resolves
        resolves = _wait(lambda: [b for b in _pagerduty(http) if b["event_action"] == "resolve"], "the resolve")
        assert resolves[0]["dedup_key"] == triggers[0]["dedup_key"]
        time.sleep(3)
        assert len({b["dedup_key"] for b in _pagerduty(http)}) == 1
    finally:
        proc.terminate()
        proc.wait(timeout=10)
