"""The house rule: dependencies point one way. deploy_ops never imports Dagster or the code location."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted((ROOT / "deploy_ops").rglob("*.py")), ids=lambda p: p.name)
def test_deploy_ops_is_free_of_dagster(path):
    forbidden = {"dagster", "dagster_dbt", "dagster_aws", "dagster_postgres", "autotrader_assets"}
    assert not (_imports(path) & forbidden), f"{path.name} imports {sorted(_imports(path) & forbidden)}"


def test_settings_reads_no_dagster():
    # the CLI and deploy_ops callers load settings without paying for Dagster's import
    assert "dagster" not in _imports(ROOT / "autotrader_assets" / "settings.py")
