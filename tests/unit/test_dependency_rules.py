"""The house rule: dependencies point one way. deploy_ops never imports Dagster or the code location."""

from __future__ import annotations

import ast
import re
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


#: Uses of the process environment outside settings.py that read no configuration, by the exact
#: source line (so a move keeps them, and any new read fails), with the reason each may stay.
ENVIRONMENT_ALLOWED = {
    'if venv_bin not in os.environ.get("PATH", "").split(os.pathsep):': "features/project.py puts the venv's bin on PATH so dbt's subprocesses find `dbt`: it "
    "checks PATH only to avoid adding the folder twice",
    'os.environ["PATH"] = venv_bin + os.pathsep + os.environ.get("PATH", "")': "the same PATH fix: writing the environment the dbt child processes inherit",
    "return run(os.environ)": "container entrypoint: the ECS task definition's contract (deploy_ops/serving/container.py reads "
    "the model URI, sha256, version, slot and token the task definition passes; a container has no "
    "other channel)",
    "child = dict(os.environ)": "the local deployer hands its own environment on to a serving process (then overrides "
    "PYTHONPATH and the caller's extras); it passes the environment through, reads nothing from it",
    "env = dict(os.environ)": "pg_dump/pg_restore inherit the backup process's environment (PATH, locale) with "
    "PGPASSWORD added, so the password never appears on a command line; nothing is read from it",
}


def _environment_uses(path: Path) -> list[tuple[int, str]]:
    """(line, source line) of every os.environ / os.getenv / os.environb use in ``path``."""
    source = path.read_text()
    lines = source.splitlines()
    hits: set[int] = set()
    for node in ast.walk(ast.parse(source, filename=str(path))):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in {"environ", "environb", "getenv", "getenvb"}
            and isinstance(node.value, ast.Name)
            and node.value.id == "os"
        ):
            hits.add(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            if {a.name for a in node.names} & {"environ", "environb", "getenv", "getenvb"}:
                hits.add(node.lineno)
    return [(n, lines[n - 1].strip()) for n in sorted(hits)]


def test_only_settings_reads_the_environment():
    settings = ROOT / "autotrader_assets" / "settings.py"
    used_allowances: set[str] = set()
    offenders = []
    for package in ("autotrader_assets", "deploy_ops"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == settings:
                continue
            for line_no, line in _environment_uses(path):
                if line in ENVIRONMENT_ALLOWED:
                    used_allowances.add(line)
                else:
                    offenders.append(f"{path.relative_to(ROOT)}:{line_no}: {line}")
    assert offenders == [], (
        "only autotrader_assets/settings.py reads the environment; take the value from Settings "
        "(or add the line to ENVIRONMENT_ALLOWED with the reason it reads no configuration):\n" + "\n".join(offenders)
    )
    assert used_allowances == set(ENVIRONMENT_ALLOWED), (
        f"stale allowances: {set(ENVIRONMENT_ALLOWED) - used_allowances}"
    )


def test_the_environment_scan_sees_every_form(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os\nfrom os import getenv\na = os.environ['X']\nb = os.getenv('Y')\nc = os.environ.get('Z')\nd = 1\n"
    )
    assert [n for n, _ in _environment_uses(sample)] == [2, 3, 4, 5]


#: Test modules another test module may import, with the reason: importing test functions collects
#: them again in the importer (not helpers, which live in tests/support/).
TEST_MODULE_IMPORTS_ALLOWED = {
    (
        "test_registry_postgres.py",
        "tests.unit.test_registry",
    ): "runs the registry's unit tests a second time against PostgreSQL",
}


def _imported_modules(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    # The controller subprocess of the interrupted-rollout test imports through a script string.
    modules |= set(re.findall(r"^from (tests\.\S+) import", path.read_text(), flags=re.MULTILINE))
    return modules


@pytest.mark.parametrize("path", sorted((ROOT / "tests").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_tests_import_helpers_from_tests_support_not_from_test_modules(path):
    imported = {
        m for m in _imported_modules(path) if m.startswith("tests.") and m.rsplit(".", 1)[-1].startswith("test_")
    }
    bad = sorted(m for m in imported if (path.name, m) not in TEST_MODULE_IMPORTS_ALLOWED)
    assert not bad, f"{path.name} imports test modules {bad}; move the shared helpers to tests/support/"


@pytest.mark.parametrize("path", sorted((ROOT / "benchmarks").rglob("*.py")), ids=lambda p: p.name)
def test_benchmarks_import_nothing_from_tests(path):
    bad = sorted(m for m in _imported_modules(path) if m == "tests" or m.startswith("tests."))
    assert not bad, f"{path.name} imports {bad}: a benchmark runs the package code, not test helpers"
