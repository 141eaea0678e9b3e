"""A dead run's children die with it: a tiny launcher script between a run worker and a
long-running child (dbt), so ``kill -9`` of the worker does not leave the child writing to the
warehouse on its own.

dagster-dbt starts dbt with a plain ``subprocess.Popen`` (no process group, no parent-death
signal), so when the run worker is killed, dbt is re-parented and keeps running. The resource
is given this script as its ``dbt_executable`` instead: it starts the real dbt as its child,
forwards SIGINT/SIGTERM to it (dagster-dbt's cancel), passes its exit code through, and every
``POLL_SECONDS`` checks that its own parent (the run worker) is still the one that started it;
when the worker is gone it terminates dbt (SIGTERM, then SIGKILL after a grace) and exits.
A poll rather than ``PR_SET_PDEATHSIG``: that signal follows the *thread* that forked, and a
worker thread ending would kill a healthy dbt.
"""

from __future__ import annotations

import sys
from pathlib import Path

POLL_SECONDS = 1.0
GRACE_SECONDS = 5.0

_SCRIPT = """#!{python}
# Written by autotrader_assets/child_guard.py; do not edit. Runs {real} as a child that dies
# with the process that started this script.
import os, signal, subprocess, sys, time
REAL = {real!r}
PARENT = os.getppid()
child = subprocess.Popen([REAL] + sys.argv[1:])

def forward(signum, frame):
    if child.poll() is None:
        child.send_signal(signum)

signal.signal(signal.SIGINT, forward)
signal.signal(signal.SIGTERM, forward)
while True:
    try:
        code = child.wait(timeout={poll})
        sys.exit(code if code >= 0 else 128 - code)
    except subprocess.TimeoutExpired:
        pass
    if os.getppid() != PARENT:
        sys.stderr.write("child_guard: parent %d is gone; stopping %s\\n" % (PARENT, REAL))
        child.terminate()
        try:
            child.wait(timeout={grace})
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        sys.exit(137)
"""


def guarded_executable(real: str | Path, folder: str | Path, name: str = "dbt-guarded") -> str:
    """Write (or refresh) the guard script for ``real`` in ``folder``; returns its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    content = _SCRIPT.format(python=sys.executable, real=str(real), poll=POLL_SECONDS, grace=GRACE_SECONDS)
    target = folder / name
    if not target.exists() or target.read_text() != content:
        tmp = folder / f".{name}.tmp"
        tmp.write_text(content)
        tmp.chmod(0o755)
        tmp.replace(target)  # atomic: a run starting dbt meanwhile never sees half a script
    return str(target)
