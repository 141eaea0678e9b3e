"""Where a registered model came from: data window and partitions, dbt manifest, features, code.

No Dagster imports.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any, Mapping, Sequence


def file_sha256(path: str | Path) -> str | None:
    """sha256 of a file, or None when it does not exist (e.g. a checkout where dbt never ran)."""
    path = Path(path)
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def git_revision(repo_dir: str | Path) -> str | None:
    """``git rev-parse HEAD`` of ``repo_dir``, or None where there is no git or no repository
    (a container image built without ``.git``): lineage then says so instead of guessing."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=str(repo_dir), capture_output=True, text=True, timeout=10, check=True
        )
    except (FileNotFoundError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return None
    rev = out.stdout.strip()
    return rev or None


def build_lineage(
    dataset: Mapping[str, Any],
    feature_names: Sequence[str],
    manifest_path: str | Path,
    code_version: str | None,
    run_id: str | None,
    candidate_sha256: str,
) -> dict[str, Any]:
    """The registry ``lineage`` document of a model trained on ``dataset`` (the training_dataset ref)."""
    return {
        "training_data": {
            "table": dataset["table"],
            "fingerprint": dataset["fingerprint"],
            "start_date": dataset["start_date"],
            "end_date": dataset["end_date"],
            "first_ts": dataset["first_ts"],
            "last_ts": dataset["last_ts"],
            "rows": dataset["rows"],
            "instruments": list(dataset["instruments"]),
            "label_horizon_bars": dataset["horizon"],
            "partitions": list(dataset["partitions"]),
        },
        "features": list(feature_names),
        "dbt_manifest": {"path": str(manifest_path), "sha256": file_sha256(manifest_path)},
        "code_version": code_version,
        "dagster_run_id": run_id,
        "artifact_sha256": candidate_sha256,
    }
