"""The dbt project handle: manifest preparation and a profiles.yml bound to our warehouse."""

from __future__ import annotations

import functools
import os
import shutil
import sys
from pathlib import Path

from dagster_dbt import DbtCliResource, DbtProject

from autotrader_assets.child_guard import guarded_executable
from autotrader_assets.settings import PROJECT_ROOT

DBT_PROJECT_DIR = PROJECT_ROOT / "dbt_project"

_PROFILE_TEMPLATE = """# Written by autotrader_assets.defs.features.project; do not edit.
autotrader:
  target: dagster
  outputs:
    dagster:
      type: duckdb
      path: "{path}"
      threads: 1
"""


@functools.lru_cache(maxsize=1)
def dbt_project() -> DbtProject:
    """The dbt project, its manifest prepared (``dbt parse``) when missing or under ``dagster dev``."""
    # dagster-dbt's manifest preparer looks for `dbt` on PATH; a venv that is not activated
    # (``.venv/bin/dagster ...``) still has it beside the interpreter.
    venv_bin = str(Path(sys.executable).parent)
    if venv_bin not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = venv_bin + os.pathsep + os.environ.get("PATH", "")
    project = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR)
    project.prepare_if_dev()
    if not project.manifest_path.exists():
        # A fresh clone without CI artefacts: build the manifest now rather than fail to load.
        project.preparer.prepare(project)
    return project


def write_profiles(warehouse_path: str | Path, profiles_dir: str | Path) -> Path:
    """Write a profiles.yml pointing dbt at ``warehouse_path``; returns the folder."""
    profiles_dir = Path(profiles_dir)
    profiles_dir.mkdir(parents=True, exist_ok=True)
    content = _PROFILE_TEMPLATE.format(path=str(Path(warehouse_path).resolve()).replace('"', '\\"'))
    target = profiles_dir / "profiles.yml"
    if not target.exists() or target.read_text() != content:
        target.write_text(content)
    return profiles_dir


def dbt_executable() -> str:
    """The dbt installed beside this interpreter (the venv), even when the venv is not on PATH."""
    beside = Path(sys.executable).parent / "dbt"
    if beside.exists():
        return str(beside)
    found = shutil.which("dbt")
    if found is None:
        raise RuntimeError("dbt is not installed: run `make install` (dbt-core + dbt-duckdb)")
    return found


class WritableTargetDbtResource(DbtCliResource):
    """dbt whose invocations write their ``target/`` (run_results.json, compiled SQL, partial
    parse) and logs under ``target_dir``, never into the project checkout.

    In the production image the checkout is read-only for the run's user and is the same for every
    run; only the manifest the assets are built from (``dbt_project/target/manifest.json``, made at
    image build) stays there. Each invocation gets its own folder (dagster-dbt's unique name), and
    dagster-dbt still seeds it with the checkout's ``partial_parse.msgpack``.
    """

    target_dir: str

    def cli(
        self,
        args,
        *,
        raise_on_error=True,
        manifest=None,
        dagster_dbt_translator=None,
        context=None,
        target_path: Path | None = None,
    ):
        if target_path is None:
            target_path = Path(self.target_dir) / self._get_unique_target_path(context=context).name
        return super().cli(
            args,
            raise_on_error=raise_on_error,
            manifest=manifest,
            dagster_dbt_translator=dagster_dbt_translator,
            context=context,
            target_path=target_path,
        )


def dbt_resource(
    warehouse_path: str | Path, profiles_dir: str | Path, target_dir: str | Path | None = None
) -> DbtCliResource:
    """A dbt CLI resource that reads and writes the given DuckDB warehouse; its target/ and logs go
    to ``target_dir`` (default: ``dbt_target`` beside ``profiles_dir``, i.e. under AUTOTRADER_HOME)."""
    profiles = write_profiles(warehouse_path, profiles_dir)
    target = Path(target_dir) if target_dir is not None else Path(profiles_dir).parent / "dbt_target"
    return WritableTargetDbtResource(
        project_dir=str(DBT_PROJECT_DIR),
        profiles_dir=str(profiles),
        # dbt dies with the run worker that started it (kill -9 included): autotrader_assets/child_guard.py
        dbt_executable=guarded_executable(dbt_executable(), profiles),
        target_dir=str(target.resolve()),
    )
