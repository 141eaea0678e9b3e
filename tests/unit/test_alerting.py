"""Alert delivery without Alertmanager: which events alert, the outbox's queue, retries and
resolutions (against a local HTTP server standing for Alertmanager's API), the settings, the
CLI, the runbook sections, the weekly report. The real Alertmanager: tests/integration/test_alertmanager.py."""

from __future__ import annotations

import base64
import datetime as dt
import re
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from autotrader_assets.cli import main
from autotrader_assets.defs.alerting.report import ReportError, build_report
from autotrader_assets.settings import SettingsError, get_settings, load_settings
from deploy_ops import events
from deploy_ops.alerting import (
    AlertmanagerClient,
    AlertmanagerError,
    Outbox,
    deliver_now,
)
from deploy_ops.alerting.catalog import (
    _RECORDED_SEVERITY,
    ALERTS,
    CONDITION_TTL,
    ONE_SHOT_TTL,
    QUIET,
    RESOLVERS,
    alert_for,
    all_alertnames,
)
from deploy_ops.alerting.outbox import BACKOFF_CAP, backoff, outbox_table
from deploy_ops.state import DeploymentStateStore
from deploy_ops.trading.breaker import BreakerStore
from tests.support.alerting import Recorder
from tests.support.docs import heading_anchors

ROOT = Path(__file__).resolve().parents[2]
ALERTS_PATH = "/api/v2/alerts"


def _exists(ref: str) -> bool:
    path, _, anchor = ref.partition("#")
    file = ROOT / path
    return file.is_file() and anchor in heading_anchors(file)


@pytest.fixture
def am():
    server = Recorder()
    yield server
    server.close()


@pytest.fixture
def store(tmp_path) -> DeploymentStateStore:
    return DeploymentStateStore(f"sqlite:///{tmp_path / 'registry.db'}")


def _sent(am: Recorder) -> list[dict]:
    return [alert for body in am.bodies(ALERTS_PATH) for alert in body]


# -- the catalog -------------------------------------------------------------------------------

_RECORDERS = (
    re.compile(r'record_event\(\s*"([a-z_]+)"'),
    re.compile(r'(?:events|ops_events)\.record\(\s*[\w.]+,\s*"([a-z_]+)"'),
    re.compile(r'\bevent="([a-z_]+)"'),
    re.compile(r'^[A-Z_]*EVENT = "([a-z_]+)"', re.MULTILINE),
)


def test_every_kind_the_code_records_is_classified():
    kinds = set()
    for folder in ("deploy_ops", "autotrader_assets"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            for pattern in _RECORDERS:
                kinds.update(pattern.findall(text))
    assert {"circuit_breaker_tripped", "slot_down", "run_failed", "rollout_succeeded"} <= kinds  # the scan works
    unclassified = sorted(k for k in kinds if k not in ALERTS and k not in RESOLVERS and k not in QUIET)
    assert not unclassified, f"add these event kinds to deploy_ops/alerting/catalog.py: {unclassified}"


def test_every_alert_has_a_runbook_section_and_every_link_resolves():
    missing = sorted(n for n in all_alertnames() if not _exists(f"docs/runbooks/alerts.md#{n.lower()}"))
    assert not missing, f"docs/runbooks/alerts.md needs a section for {missing}"
    assert _exists("docs/runbooks/alerts.md#unlisted-events")
    assert not [ref for ref in events.RUNBOOKS.values() if not _exists(ref)]
    links = re.findall(r"\]\(([a-z0-9-]+\.md#[a-z0-9-]+)\)", (ROOT / "docs/runbooks/alerts.md").read_text())
    assert links and not [link for link in links if not _exists(f"docs/runbooks/{link}")]


def test_every_alerting_kind_declares_the_severity_it_is_routed_with():
    for kind, spec in ALERTS.items():
        if kind != "alert_test" and not callable(spec.alertname) and spec.severity is None:
            assert kind in _RECORDED_SEVERITY, kind


def _event(kind: str, severity: str, details: dict | None = None, event_id: int = 7) -> events.OpsEvent:
    return events.OpsEvent(
        kind, severity, f"{kind} happened", dict(details or {}), "", event_id, "2024-01-02T00:00:00+00:00"
    )


def test_alert_labels_name_the_condition_and_runbook():
    alert = alert_for(_event("circuit_breaker_tripped", "critical", {"trip_id": 3}))
    assert alert.labels == {
        "alertname": "CircuitBreakerTripped",
        "severity": "critical",
        "dedup_key": "circuit-breaker-trip-3",
        "incident": "circuit-breaker",
        "service": "autotrader",
    }
    assert alert.conditional
    assert alert.annotations("https://example.com/repo/")["runbook_url"] == (
        "https://example.com/repo/docs/runbooks/alerts.md#circuitbreakertripped"
    )
    # The sensor's alert for the same trip is the same Alertmanager alert.
    assert alert_for(_event("circuit_breaker_alert", "critical", {"trip_id": 3})).labels == alert.labels
    health = alert_for(_event("model_health_finding", "warning", {"check": "win_rate", "date": "2024-01-01"}))
    assert health.alertname == "WinRateLow" and not health.conditional


def test_unlisted_kinds_warning_or_critical_still_alert_quiet_and_info_do_not():
    assert alert_for(_event("slot_exploded", "critical")).alertname == "SlotExploded"
    assert alert_for(_event("slot_exploded", "critical")).runbook_url == "docs/runbooks/alerts.md#unlisted-events"
    assert alert_for(_event("something_fine", "info")) is None
    assert alert_for(_event("rollout_stage_passed", "info")) is None
    assert alert_for(_event("slot_stopped", "info")) is None  # the normal retire of a slot
    assert alert_for(_event("slot_stopped", "warning")).alertname == "SlotStopped"


# -- the outbox ---------------------------------------------------------------------------------


def test_breaker_trip_fires_once_and_its_reset_resolves_it(tmp_path, store, am):
    breaker = BreakerStore(store.url)
    breaker.trip("daily_loss", {"equity": 94.0}, at=dt.datetime(2024, 1, 2, tzinfo=dt.timezone.utc))
    result = deliver_now(store.url, am.url)
    assert result.delivered == 1 and result.error is None
    (fire,) = _sent(am)
    assert fire["labels"]["alertname"] == "CircuitBreakerTripped"
    assert dt.datetime.fromisoformat(fire["endsAt"]) - dt.datetime.now(dt.timezone.utc) > CONDITION_TTL - dt.timedelta(
        minutes=1
    )
    # Nothing new: nothing sent again (the open alert is re-sent only after REFRESH).
    assert deliver_now(store.url, am.url).delivered == 0 and len(_sent(am)) == 1
    breaker.reset(approved_by="risk", reason="checked")
    result = deliver_now(store.url, am.url)
    assert result.resolved == 1 and result.delivered == 1
    resolve = _sent(am)[-1]
    assert resolve["labels"] == fire["labels"]
    assert dt.datetime.fromisoformat(resolve["endsAt"]) <= dt.datetime.now(dt.timezone.utc)
    assert Outbox(store).open_alerts() == []


def test_one_shot_alerts_expire_after_an_hour_and_info_events_of_the_catalog_are_sent(store, am):
    events.record(store, "run_failed", "warning", "run r1 failed", {"run_id": "r1"})
    events.record(store, "training_completed", "info", "training done", {"run_id": "r2"})
    store.record_event("rollout_stage_passed", "stage canary passed")  # quiet
    deliver_now(store.url, am.url)
    sent = {a["labels"]["alertname"]: a for a in _sent(am)}
    assert set(sent) == {"RunFailed", "TrainingCompleted"}
    ttl = dt.datetime.fromisoformat(sent["RunFailed"]["endsAt"]) - dt.datetime.now(dt.timezone.utc)
    assert ONE_SHOT_TTL - dt.timedelta(minutes=1) < ttl <= ONE_SHOT_TTL
    assert sent["TrainingCompleted"]["labels"]["severity"] == "info"


def test_alertmanager_down_keeps_alerts_pending_with_backoff_and_delivers_them_later(store, am):
    am.fail_with = 503
    events.record(store, "run_failed", "warning", "run r1 failed", {"run_id": "r1"})
    result = deliver_now(store.url, am.url)
    assert result.failed == 1 and result.pending == 1 and "503" in result.error
    (row,) = Outbox(store).rows(status="pending")
    assert row.attempts == 1 and "503" in row.last_error
    assert row.next_attempt_at > dt.datetime.now(dt.timezone.utc)
    am.fail_with = None
    # Not due yet: the backoff holds it ...
    assert deliver_now(store.url, am.url).delivered == 0 and _sent(am) == []
    # ... unless forced; then it arrives once.
    assert deliver_now(store.url, am.url, force=True).delivered == 1
    assert len(_sent(am)) == 1 and Outbox(store).pending_count() == 0


def test_backoff_doubles_and_is_capped():
    assert [backoff(n).total_seconds() for n in (1, 2, 3)] == [5, 10, 20]
    assert backoff(30) == BACKOFF_CAP


def test_an_unreachable_alertmanager_is_an_error_with_the_url():
    with pytest.raises(AlertmanagerError, match="127.0.0.1:9"):
        AlertmanagerClient("http://127.0.0.1:9").post_alerts([{"labels": {"alertname": "X"}}])
    with pytest.raises(AlertmanagerError, match="http:// or https://"):
        AlertmanagerClient("127.0.0.1:9093")


def test_drift_cleared_resolves_drift_of_that_day_and_before_only(store, am):
    events.record(store, "feature_drift_warning", "warning", "drift on 3rd", {"date": "2024-01-03"})
    deliver_now(store.url, am.url)
    events.record(store, "feature_drift_cleared", "info", "ok on 2nd", {"date": "2024-01-02"})
    assert deliver_now(store.url, am.url).resolved == 0
    events.record(store, "feature_drift_cleared", "info", "ok on 4th", {"date": "2024-01-04"})
    assert deliver_now(store.url, am.url).resolved == 1


def test_deployment_failure_resolves_with_the_next_successful_rollout(store, am):
    store.record_event(
        "rollout_rolled_back", "rollout 4 rolled back", severity="critical", details={"deployment_id": 4}
    )
    store.record_event(
        "production_serving_ensured", "traffic on blue", severity="warning"
    )  # not a recovery of the rollout
    store.record_event("rollout_succeeded", "version 5 serves 100%", details={"deployment_id": 5, "version": 5})
    result = deliver_now(store.url, am.url)
    assert result.resolved == 1
    names = [(a["labels"]["alertname"], a["labels"]["dedup_key"]) for a in _sent(am)]
    assert ("DeploymentFailed", "deployment-4") in names and ("DeploymentCompleted", "deployment-5") in names


def test_rows_are_queued_once_even_when_two_outboxes_flush(store):
    for i in range(3):
        events.record(store, "run_failed", "warning", f"run r{i} failed", {"run_id": f"r{i}"})
    a, b = Outbox(store), Outbox(DeploymentStateStore(store.url))
    a.flush(None)
    b.flush(None)
    a.flush(None)
    assert a.pending_count() == 3


def test_a_database_created_before_the_outbox_keeps_working_and_queues_its_history(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = DeploymentStateStore(url)
    old.record_event("slot_down", "slot blue is down", severity="critical", details={"slot": "blue"})
    with old.engine.connect() as conn:
        assert "alert_outbox" not in sa.inspect(conn).get_table_names()
    # Old readers of the log are unaffected; the outbox adds its tables beside it.
    result = deliver_now(url, None)
    assert result.enqueued == 1 and result.pending == 1
    assert [e.kind for e in DeploymentStateStore(url).events_since(0)] == ["slot_down"]
    with old.engine.connect() as conn:
        assert {"alert_outbox", "alert_outbox_cursor"} <= set(sa.inspect(conn).get_table_names())
        assert conn.execute(sa.select(sa.func.count()).select_from(outbox_table)).scalar_one() == 1


# -- settings and CLI ---------------------------------------------------------------------------


def test_settings_alertmanager_and_smtp(monkeypatch, tmp_path):
    monkeypatch.setenv("AUTOTRADER_ALERTMANAGER_URL", "localhost:9093")
    with pytest.raises(SettingsError, match="AUTOTRADER_ALERTMANAGER_URL"):
        load_settings()
    monkeypatch.setenv("AUTOTRADER_ALERTMANAGER_URL", "http://127.0.0.1:9093/")
    assert load_settings().alertmanager_url == "http://127.0.0.1:9093"
    monkeypatch.setenv("AUTOTRADER_SMTP_HOST", "smtp.example.com")
    with pytest.raises(SettingsError, match="AUTOTRADER_SMTP_FROM"):
        load_settings()
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    monkeypatch.setenv("AUTOTRADER_SMTP_FROM", "a@example.com")
    monkeypatch.setenv("AUTOTRADER_REPORT_EMAIL_TO", "b@example.com, c@example.com")
    monkeypatch.setenv("AUTOTRADER_SMTP_PASSWORD_FILE", str(secret))
    s = load_settings()
    assert s.smtp.recipients == ("b@example.com", "c@example.com") and s.smtp.password() == "s3cret"
    assert "s3cret" not in repr(s)


@pytest.fixture
def cli_env(monkeypatch, tmp_path):
    monkeypatch.setenv("AUTOTRADER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("AUTOTRADER_ALERTMANAGER_URL", raising=False)
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_cli_without_alertmanager_lists_what_would_be_sent(cli_env):
    runner = CliRunner()
    result = runner.invoke(main, ["alerts", "test", "--severity", "warning"])
    assert result.exit_code == 0, result.output
    assert "AUTOTRADER_ALERTMANAGER_URL is not set" in result.output
    listed = runner.invoke(main, ["alerts", "list"])
    assert listed.exit_code == 0 and "AlertTest" in listed.output and "pending" in listed.output


def test_cli_flush_and_test_deliver_through_alertmanager(cli_env, monkeypatch, am):
    monkeypatch.setenv("AUTOTRADER_ALERTMANAGER_URL", am.url)
    get_settings.cache_clear()
    runner = CliRunner()
    result = runner.invoke(main, ["alerts", "test", "--severity", "critical"])
    assert result.exit_code == 0, result.output
    (alert,) = _sent(am)
    assert alert["labels"]["alertname"] == "AlertTest" and alert["labels"]["severity"] == "critical"
    am.fail_with = 500
    state = DeploymentStateStore(get_settings().registry_url)
    events.record(state, "run_failed", "warning", "run r9 failed", {"run_id": "r9"})
    failed = runner.invoke(main, ["alerts", "flush"])
    assert failed.exit_code == 1 and "stay queued" in failed.output
    am.fail_with = None
    assert runner.invoke(main, ["alerts", "flush", "--force"]).exit_code == 0
    assert [a["labels"]["alertname"] for a in _sent(am)] == ["AlertTest", "RunFailed"]


# -- the weekly report --------------------------------------------------------------------------

_PNG = b"\x89PNG\r\n\x1a\nfake-but-bytes"


def test_weekly_report_takes_both_charts_from_the_materialization():
    uri = f"![x](data:image/png;base64,{base64.b64encode(_PNG).decode()})"
    report = build_report(
        {
            "equity_curve": uri,
            "drawdown_plot": uri,
            "current_equity": 101.5,
            "total_pnl": 1.5,
            "sharpe": 1.2,
            "max_drawdown": 0.03,
        },
        "run-1",
    )
    assert [a.filename for a in report.attachments] == ["equity_curve.png", "drawdown.png"]
    assert report.attachments[0].content == _PNG
    assert "equity 101.50" in report.summary
    with pytest.raises(ReportError, match="drawdown_plot"):
        build_report({"equity_curve": uri, "current_equity": 1.0}, "run-2")


def test_data_pipeline_completion_resolves_the_failure_of_the_same_partitions_only(store, am):
    events.record(store, "data_pipeline_failing", "critical", "3 failures", {"partitions": "2024-01-02|BTCUSDT"})
    deliver_now(store.url, am.url)
    events.record(store, "data_pipeline_completed", "info", "done", {"partitions": "2024-01-02|ETHUSDT", "run_id": "a"})
    assert deliver_now(store.url, am.url).resolved == 0
    events.record(store, "data_pipeline_completed", "info", "done", {"partitions": "2024-01-02|BTCUSDT", "run_id": "b"})
    assert deliver_now(store.url, am.url).resolved == 1
    assert Outbox(store).open_alerts() == []
