"""The backup job: the registry/deployment-state database and the warehouse, with a manifest of
checksums, to AUTOTRADER_BACKUP_URI (``deploy_ops/backup.py`` does the work; the CLI's
``autotrader backup create`` calls the same function)."""

import functools

import dagster as dg

from autotrader_assets.resources import RegistryResource, WarehouseResource, connect_waiting
from autotrader_assets.settings import Settings
from deploy_ops.backup import create_backup, open_destination


@dg.op(description="Back up the registry database and the warehouse; the manifest's checksums go in the metadata.")
def create_backup_op(
    context: dg.OpExecutionContext,
    settings: dg.ResourceParam[Settings],
    registry: RegistryResource,
    warehouse: WarehouseResource,
) -> dg.Output[str]:
    # Errors propagate: a failed backup is a failed run, which the run-failure sensors report.
    destination = open_destination(settings.backup_uri, region=settings.aws_region)
    manifest = create_backup(
        destination,
        registry.url,
        warehouse.path,
        connect_warehouse=functools.partial(connect_waiting, timeout_s=warehouse.lock_timeout_s),
        progress=lambda label: context.log.info(label),
    )
    return dg.Output(
        manifest.backup_id,
        metadata={
            "backup_id": manifest.backup_id,
            "destination": destination.uri,
            "components": ", ".join(manifest.components),
            "bytes": manifest.size,
            "files": dg.MetadataValue.json({f.name: {"size": f.size, "sha256": f.sha256} for f in manifest.files}),
        },
    )


@dg.job(description="Back up the registry/deployment-state database and the warehouse (autotrader backup create).")
def backup_job() -> None:
    create_backup_op()
