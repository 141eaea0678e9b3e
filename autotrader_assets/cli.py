"""The ``autotrader`` operations CLI: registry, deployments, rollbacks, the circuit breaker,
data validation and alert tests.

Each command group lives in ``autotrader_assets/commands/<name>.py`` and exposes a click
group called ``group``; the CLI and the Dagster assets call the same domain functions.
"""

from __future__ import annotations

import importlib
import sys

import click

#: Command modules, one per group. Add a module name here when you add a group.
COMMAND_MODULES: tuple[str, ...] = ("data", "registry", "breaker", "deploy", "alerts", "backup", "drill")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="autotrader")
def main() -> None:
    """Operate the autotrader platform (registry, deploy, rollback, breaker, data, alerts, backup, drill)."""


for _name in COMMAND_MODULES:
    _module = importlib.import_module(f"autotrader_assets.commands.{_name}")
    main.add_command(_module.group)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
