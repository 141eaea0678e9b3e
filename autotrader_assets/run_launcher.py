"""``LocalRunLauncher``: Dagster's default launcher plus the run-worker health check that run
monitoring needs, for the local instance (``autotrader_assets/instance.py``).

Dagster's ``DefaultRunLauncher`` hands runs to the code server, which starts one worker process
per run; it cannot tell the monitoring daemon whether that worker still lives, so a worker that
died while its code server was gone too (``kill -9`` of the tree, a restarted ``dagster dev``)
leaves its run STARTED forever, holding the only local run slot. Every worker records its pid in
an engine event ("Started process for run (pid: N)"); this launcher looks that process up:
gone, or a different process with the same pid (started after the event), means the worker died.
"""

from __future__ import annotations

import os
import time

from dagster import DagsterEventType
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus
from dagster._core.launcher.default_run_launcher import DefaultRunLauncher
from dagster._core.storage.dagster_run import DagsterRun

from deploy_ops.procs import pid_running

#: Slack between a process's start and the event that names it (the event is written after).
_START_SLACK_SECONDS = 5.0


def worker_pid(instance, run_id: str) -> tuple[int, float] | None:
    """(pid, event timestamp) of the process running the run: its "Started process for run"
    event, else the first engine event naming a pid ("Executing steps in process": the process
    of a run executed in-process, such as `make run`'s)."""
    found = []
    for record in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
        event = record.dagster_event
        data = getattr(event, "engine_event_data", None) if event is not None else None
        pid = (data.metadata or {}).get("pid") if data is not None else None
        if pid is not None and str(getattr(pid, "value", pid)).isdigit():
            found.append(
                (
                    str(record.message or "").startswith("Started process for run"),
                    int(getattr(pid, "value", pid)),
                    record.timestamp,
                )
            )
    if not found:
        return None
    started = [f for f in found if f[0]]
    _, pid, at = (started or found)[0]
    return pid, at


def process_start_time(pid: int) -> float | None:
    """Epoch seconds at which ``pid`` started (Linux /proc), None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
        with open("/proc/stat", "rb") as fh:
            boot = next(int(line.split()[1]) for line in fh if line.startswith(b"btime "))
    except (OSError, StopIteration, ValueError):
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")


class LocalRunLauncher(DefaultRunLauncher):
    """DefaultRunLauncher whose workers the run-monitoring daemon can check (see module doc)."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        found = worker_pid(self._instance, run.run_id)
        if found is None:
            # A run that has not named its process yet: the start timeout covers one that never
            # does. Not knowing is not a failure.
            return CheckRunHealthResult(WorkerStatus.RUNNING, "no run worker pid recorded")
        pid, at = found
        if not pid_running(pid):
            return CheckRunHealthResult(WorkerStatus.FAILED, f"run worker process {pid} is gone")
        started = process_start_time(pid)
        if started is not None and started > at + _START_SLACK_SECONDS:
            return CheckRunHealthResult(
                WorkerStatus.FAILED,
                f"run worker process {pid} is gone (pid reused by a process started "
                f"{time.strftime('%H:%M:%S', time.localtime(started))})",
            )
        return CheckRunHealthResult(WorkerStatus.RUNNING, f"run worker process {pid} alive")
