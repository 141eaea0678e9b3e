"""Sensors that deliver alerts: the outbox to Alertmanager, and the notices of finished jobs.

``alert_delivery_sensor`` (every 30 s) queues the alerts of new events and delivers what is due
(``deploy_ops.alerting.deliver_now``: the same call as ``autotrader alerts flush``). Without
``AUTOTRADER_ALERTMANAGER_URL`` it only queues, and says so in its skip reason.

``job_notice_sensor`` turns successful runs into the info events people are mailed about:
``data_pipeline_completed`` (which also resolves that partition's ``DataPipelineFailing``),
``training_completed`` and ``model_promoted`` (the version ``registered_model`` wrote), and
``weekly_performance_report``, which is also mailed with its charts when the SMTP relay is set.
"""

import dagster as dg

from autotrader_assets.defs.alerting.report import ReportError, build_report
from autotrader_assets.defs.market_data.jobs import data_pipeline_job
from autotrader_assets.defs.monitoring.sensors import describe_partitions, partition_tags
from autotrader_assets.defs.trading.jobs import performance_report_job
from autotrader_assets.defs.training.jobs import training_job
from autotrader_assets.settings import Settings, SettingsError
from deploy_ops import events
from deploy_ops.alerting import deliver_now
from deploy_ops.alerting.mail import MailError, Relay, send
from deploy_ops.state import DeploymentStateStore


@dg.sensor(
    name="alert_delivery_sensor",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="New events -> alerts queued in the outbox -> delivered to Alertmanager "
    "(AUTOTRADER_ALERTMANAGER_URL), retried with backoff while it is down.",
)
def alert_delivery_sensor(context: dg.SensorEvaluationContext, settings: dg.ResourceParam[Settings]):
    result = deliver_now(
        settings.registry_url, settings.alertmanager_url or None, runbook_base_url=settings.runbook_base_url
    )
    text = result.describe()
    if result.error:
        # Not a failed tick: the rows stay queued and the next ticks retry them with backoff.
        context.log.warning(text)
    elif result.delivered or result.enqueued or result.resolved:
        context.log.info(text)
    if not settings.alertmanager_url:
        text += "; AUTOTRADER_ALERTMANAGER_URL is not set: alerts wait in the outbox (autotrader alerts list)"
    return dg.SkipReason(text)


def _materialization_metadata(context: dg.RunStatusSensorContext, asset: str) -> dict | None:
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset)), limit=20
    ).records
    for record in records:
        if record.run_id == context.dagster_run.run_id and record.asset_materialization is not None:
            return dict(record.asset_materialization.metadata)
    return None


def _relay(settings: Settings) -> Relay:
    smtp = settings.smtp
    return Relay(
        host=smtp.host,
        port=smtp.port,
        sender=smtp.sender,
        recipients=smtp.recipients,
        username=smtp.username,
        password=smtp.password() if smtp.username else None,
        starttls=smtp.starttls,
    )


def _weekly_report(context: dg.RunStatusSensorContext, state: DeploymentStateStore, settings: Settings) -> str:
    run_id = context.dagster_run.run_id
    metadata = _materialization_metadata(context, "trading_performance")
    if metadata is None:
        return f"performance_report run {run_id} materialized no trading_performance: no report"
    try:
        report = build_report(metadata, run_id)
    except ReportError as exc:
        events.record(
            state,
            "report_mail_failed",
            "warning",
            f"weekly report of run {run_id} not built: {exc}",
            {"run_id": run_id, "error": str(exc)},
        )
        return str(exc)
    mailed = "not mailed: AUTOTRADER_SMTP_HOST is not set"
    if settings.smtp.configured:
        try:
            send(_relay(settings), f"[autotrader] {report.summary}", report.body, report.attachments)
            mailed = f"mailed to {', '.join(settings.smtp.recipients)} with {len(report.attachments)} chart(s)"
        except (MailError, SettingsError) as exc:
            events.record(
                state,
                "report_mail_failed",
                "warning",
                f"weekly report of run {run_id} not mailed: {exc}",
                {"run_id": run_id, "error": str(exc)},
            )
            mailed = f"not mailed: {exc}"
    events.record(
        state, "weekly_performance_report", "info", report.summary, {"run_id": run_id, "mail": mailed, **report.numbers}
    )
    return f"weekly report: {report.summary}; {mailed}"


@dg.run_status_sensor(
    name="job_notice_sensor",
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[data_pipeline_job, training_job, performance_report_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Successful data_pipeline, training_job and performance_report runs -> info events "
    "(data pipeline completed, training completed, model promoted, weekly report mailed with charts).",
)
def job_notice_sensor(context: dg.RunStatusSensorContext, settings: dg.ResourceParam[Settings]):
    run = context.dagster_run
    state = DeploymentStateStore(settings.registry_url)
    if run.job_name == data_pipeline_job.name:
        where = (
            describe_partitions(partition_tags(dict(run.tags))) if partition_tags(dict(run.tags)) else "unpartitioned"
        )
        events.record(
            state,
            "data_pipeline_completed",
            "info",
            f"data_pipeline completed for {where} (run {run.run_id})",
            {"run_id": run.run_id, "partitions": where},
        )
        return dg.SkipReason(f"data_pipeline {run.run_id} completed for {where}")
    if run.job_name == training_job.name:
        events.record(
            state, "training_completed", "info", f"training_job completed (run {run.run_id})", {"run_id": run.run_id}
        )
        registered = _materialization_metadata(context, "registered_model")
        if registered and "version" in registered:
            version = getattr(registered["version"], "value", registered["version"])
            stage = getattr(registered.get("stage"), "value", registered.get("stage")) or "staging"
            events.record(
                state,
                "model_promoted",
                "info",
                f"model v{version} promoted to {stage} (run {run.run_id})",
                {"run_id": run.run_id, "version": version, "stage": stage},
            )
        return dg.SkipReason(f"training_job {run.run_id} completed")
    note = _weekly_report(context, state, settings)
    context.log.info(note)
    return dg.SkipReason(note)
