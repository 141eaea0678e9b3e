"""Monitoring: feature drift and model health as date-partitioned assets, the drift check, the
health-check job and schedule, and the sensors that act on drift and failed runs."""

from autotrader_assets.defs.monitoring.assets import feature_drift, model_health
from autotrader_assets.defs.monitoring.jobs import health_check_job
from autotrader_assets.defs.monitoring.run_metrics import job_failure_metrics_sensor, job_success_metrics_sensor
from autotrader_assets.defs.monitoring.schedules import health_check_every_15_minutes
from autotrader_assets.defs.monitoring.sensors import data_pipeline_failure_sensor, feature_drift_sensor

monitoring_assets = [feature_drift, model_health]
monitoring_jobs = [health_check_job]
monitoring_schedules = [health_check_every_15_minutes]
monitoring_sensors = [
    feature_drift_sensor,
    data_pipeline_failure_sensor,
    job_success_metrics_sensor,
    job_failure_metrics_sensor,
]

__all__ = [
    "data_pipeline_failure_sensor",
    "feature_drift",
    "feature_drift_sensor",
    "health_check_every_15_minutes",
    "health_check_job",
    "job_failure_metrics_sensor",
    "job_success_metrics_sensor",
    "model_health",
    "monitoring_assets",
    "monitoring_jobs",
    "monitoring_schedules",
    "monitoring_sensors",
]
