"""Process liveness on Linux, shared by the local deployer and the rollout lease check."""

from __future__ import annotations

import os


def pid_running(pid: int | None) -> bool:
    """Whether ``pid`` exists and is not a zombie (a process owned by another user counts)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # The state letter follows the last ')' (the command name may itself contain parentheses).
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] not in (b"Z", b"X")
