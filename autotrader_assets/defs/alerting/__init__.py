"""Alerting: the sensor that delivers the event outbox to Alertmanager, and the one that turns
finished jobs into info notices (the weekly report mailed with its charts)."""

from autotrader_assets.defs.alerting.sensors import alert_delivery_sensor, job_notice_sensor

alerting_sensors = [alert_delivery_sensor, job_notice_sensor]

__all__ = ["alert_delivery_sensor", "alerting_sensors", "job_notice_sensor"]
