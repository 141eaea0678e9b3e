"""One materialization as its own process, the way an ECS task runs it: the production profile from
the environment, its own DAGSTER_HOME and AUTOTRADER_HOME, nothing shared with other steps but the
stores the profile names (PostgreSQL, S3, the EFS warehouse).

    python -m tests.support.production_step training_dataset,candidate_model '<run config JSON>'

``--filesystem-io`` keeps Dagster's default filesystem IO manager (under this process's own
DAGSTER_HOME), which is what production used before values went to S3. Prints one JSON line.
"""

from __future__ import annotations

import json
import sys

import dagster as dg

from autotrader_assets.defs.training import training_assets
from autotrader_assets.resources import default_resources
from autotrader_assets.settings import load_settings


def main(argv: list[str]) -> int:
    args = [a for a in argv if a != "--filesystem-io"]
    selection = args[0].split(",")
    run_config = json.loads(args[1]) if len(args) > 1 else {}
    settings = load_settings()
    resources = {**default_resources(settings), "settings": settings}
    if "--filesystem-io" in argv:
        resources.pop("io_manager", None)
    # An instance on this task's own disk: nothing of another step's DAGSTER_HOME is visible.
    local = settings.dagster_home / "instance"
    local.mkdir(exist_ok=True)
    with dg.DagsterInstance.local_temp(tempdir=str(local)) as instance:
        result = dg.materialize(
            training_assets,
            selection=selection,
            resources=resources,
            instance=instance,
            run_config=run_config,
            raise_on_error=False,
        )
        errors = [
            str(e.event_specific_data.error.cause or e.event_specific_data.error)
            for e in result.all_events
            if e.event_type_value == "STEP_FAILURE"
        ]
        print(
            json.dumps(
                {
                    "success": result.success,
                    "run_id": result.run_id,
                    "materialized": sorted(
                        m.asset_key.to_user_string() for m in result.get_asset_materialization_events()
                    ),
                    "errors": errors,
                }
            )
        )
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
