"""What the drift sensor does about critical drift, without Dagster.

Critical drift means the served model's inputs no longer look like its training rows. Two ways
out, decided on the same day's rows:

* **rollback**: if the previous known-good version (``registry.last_known_good()``) has a
  reference of its own and every feature of the day is below ``psi_warn`` against it, that
  model was trained on data like today's: roll back to it (the ``model_rollback`` job, which
  starts and smoke-tests it in the idle slot);
* **retrain** otherwise: the ``training_job`` on the most recent window (the weekly recipe,
  last 28 days). The new candidate then goes through the promotion gates and a gated rollout
  like any other; nothing here deploys it.

One request per (date, model version): the run key is ``feature-drift-<date>-v<version>``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from autotrader_assets.defs.monitoring.psi import DriftResult

ROLLBACK_JOB = "model_rollback"
RETRAIN_JOB = "training_job"


@dataclass(frozen=True)
class DriftAlarm:
    """A critical ``feature_drift_psi`` result: which date, which served version, the numbers."""

    date: str
    version: int
    max_psi: float
    features_over: dict[str, float]
    check_run_id: str

    @property
    def run_key(self) -> str:
        return f"feature-drift-{self.date}-v{self.version}"


@dataclass(frozen=True)
class Decision:
    """The job to launch, its run config and tags, and the numbers the choice rests on."""

    action: str
    job_name: str
    run_key: str
    run_config: dict[str, Any]
    reason: str
    numbers: dict[str, Any] = field(default_factory=dict)

    def tags(self) -> dict[str, str]:
        return {
            "autotrader/trigger": "feature_drift",
            "autotrader/drift_action": self.action,
            "autotrader/reason": self.reason[:200],
        }


def decide(
    alarm: DriftAlarm,
    known_good: int | None,
    known_good_drift: DriftResult | None,
    known_good_problem: str | None,
    psi_warn: float,
    training_config: dict[str, Any],
) -> Decision:
    """Rollback to ``known_good`` when its own reference sees no drift today, else retrain."""
    numbers: dict[str, Any] = {
        "date": alarm.date,
        "served_version": alarm.version,
        "served_max_psi": round(alarm.max_psi, 6),
        "served_features_over": alarm.features_over,
        "psi_warn": psi_warn,
        "known_good_version": known_good,
    }
    if known_good_drift is not None:
        per_feature = {f.feature: (round(f.psi, 6) if f.psi is not None else None) for f in known_good_drift.features}
        numbers["known_good_psi"] = per_feature
        numbers["known_good_max_psi"] = known_good_drift.max_psi()
        scored = [f for f in known_good_drift.features if f.psi is not None]
        if scored and len(scored) == len(known_good_drift.features) and all(f.psi < psi_warn for f in scored):
            reason = (
                f"critical drift on {alarm.date} (v{alarm.version} max PSI {alarm.max_psi:.3f}); "
                f"known-good v{known_good} sees every feature below {psi_warn:g} "
                f"(max {known_good_drift.max_psi():.3f}): rolling back to it"
            )
            config = {
                "ops": {
                    "rollback_model": {
                        "config": {
                            "to_version": int(known_good),
                            "reason": reason,
                            "actor": "sensor:feature_drift_sensor",
                        }
                    }
                }
            }
            return Decision("rollback", ROLLBACK_JOB, alarm.run_key, config, reason, numbers)
        why = (
            f"known-good v{known_good} also drifts (max PSI {known_good_drift.max_psi():.3f} >= {psi_warn:g})"
            if scored
            else f"known-good v{known_good} could not be judged"
        )
    elif known_good is None:
        why = "no known-good version to roll back to"
    else:
        why = f"known-good v{known_good} cannot be judged: {known_good_problem}"
    numbers["why_not_rollback"] = why
    reason = f"critical drift on {alarm.date} (v{alarm.version} max PSI {alarm.max_psi:.3f}); {why}: retraining"
    return Decision("retrain", RETRAIN_JOB, alarm.run_key, copy.deepcopy(training_config), reason, numbers)


__all__ = ["Decision", "DriftAlarm", "RETRAIN_JOB", "ROLLBACK_JOB", "decide"]
