"""Operations: the platform's own upkeep. The backup job and the ``hourly_backup`` schedule (RPO 1 h)
beside the plain backup code they call (``deploy_ops/backup.py``), and ``run_launch_failure_sensor``,
which requests again a run that failed to launch."""

from autotrader_assets.defs.operations.jobs import backup_job
from autotrader_assets.defs.operations.schedules import hourly_backup
from autotrader_assets.defs.operations.sensors import run_launch_failure_sensor

operations_jobs = [backup_job]
operations_schedules = [hourly_backup]
operations_sensors = [run_launch_failure_sensor]

__all__ = [
    "backup_job",
    "hourly_backup",
    "operations_jobs",
    "operations_schedules",
    "operations_sensors",
    "run_launch_failure_sensor",
]
