"""A dead run's children die with it: the guard dagster-dbt starts instead of dbt stops its
child when the process that started it is killed with SIGKILL, and passes exit codes and
signals through otherwise."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from autotrader_assets.child_guard import GRACE_SECONDS, POLL_SECONDS, guarded_executable
from deploy_ops.procs import pid_running

#: A stand-in run worker: starts the guard (as dagster-dbt starts dbt), prints the pids, waits.
_WORKER = """
import json, subprocess, sys, time
guard = subprocess.Popen([sys.argv[1], "-c", "import os, time; print(os.getpid(), flush=True); time.sleep(600)"],
                         stdout=subprocess.PIPE, text=True)
child = int(guard.stdout.readline())
print(json.dumps({"guard": guard.pid, "child": child}), flush=True)
time.sleep(600)
"""


def _wait_dead(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while pid_running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not pid_running(pid)


def test_the_child_dies_when_the_worker_is_killed(tmp_path):
    guard = guarded_executable(sys.executable, tmp_path)
    worker = subprocess.Popen([sys.executable, "-c", _WORKER, guard], stdout=subprocess.PIPE, text=True)
    try:
        pids = json.loads(worker.stdout.readline())
        assert pid_running(pids["child"])
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        started = time.monotonic()
        assert _wait_dead(pids["child"], POLL_SECONDS + GRACE_SECONDS + 5), "the child outlived the killed worker"
        assert _wait_dead(pids["guard"], 5)
        print(f"\nchild stopped {time.monotonic() - started:.1f} s after its worker was killed")
    finally:
        for pid in (locals().get("pids") or {}).values():
            if pid_running(pid):
                os.kill(pid, signal.SIGKILL)


def test_exit_codes_and_output_pass_through(tmp_path):
    guard = guarded_executable(sys.executable, tmp_path)
    done = subprocess.run(
        [guard, "-c", "print('dbt says hi'); raise SystemExit(3)"], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout) == (3, "dbt says hi\n")
    assert Path(guard).stat().st_mode & 0o111
    assert guarded_executable(sys.executable, tmp_path) == guard  # rewritten only when it changes


def test_a_terminate_reaches_the_child(tmp_path):
    guard = guarded_executable(sys.executable, tmp_path)
    proc = subprocess.Popen(
        [guard, "-c", "import os, time; print(os.getpid(), flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE,
        text=True,
    )
    child = int(proc.stdout.readline())
    proc.terminate()  # what dagster-dbt does on a run cancel
    assert proc.wait(15) == 128 + signal.SIGTERM
    assert _wait_dead(child, 5)
