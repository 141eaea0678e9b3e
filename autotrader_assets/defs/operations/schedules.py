"""The hourly backup: meets the recovery point objective of 1 hour (docs/runbooks/disaster-recovery.md)."""

import dagster as dg

from autotrader_assets.defs.operations.jobs import backup_job

#: Minute 50: clear of the nightly data run (00:10) and the paper-trading run (00:40) that write
#: the warehouse, so the backup rarely waits for the warehouse lock. Created stopped, like every
#: schedule: an operator turns it on once AUTOTRADER_BACKUP_URI points at durable storage.
hourly_backup = dg.ScheduleDefinition(
    name="hourly_backup",
    job=backup_job,
    cron_schedule="50 * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Back up the registry database and the warehouse every hour (RPO 1 h).",
)
