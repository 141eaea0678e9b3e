"""The project's own Prometheus, Pushgateway and Alertmanager binaries (``make monitoring-tools``)
for tests: their paths, or a skip that says how to get them."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".tools" / "monitoring" / "usr" / "bin"


def tool(name: str) -> Path:
    """``promtool``, ``prometheus``, ``prometheus-pushgateway``, ...; skips the test when absent."""
    import pytest

    path = TOOLS / name
    if not path.is_file():
        pytest.skip(f"{path} is absent: run `make monitoring-tools` (make test does)")
    return path


