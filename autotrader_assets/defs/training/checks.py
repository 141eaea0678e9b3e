"""The six promotion gates as blocking checks on ``candidate_model`` (the rules: ``gates.py``)."""

import dagster as dg

from autotrader_assets.defs.training.assets import candidate_model, load_candidate_bundle, meta_dict
from autotrader_assets.defs.training.gates import GATE_DESCRIPTIONS, GATE_NAMES, run_gate
from autotrader_assets.resources import RegistryResource
from autotrader_assets.settings import Settings


def _gate_check(gate: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=candidate_model, name=gate, blocking=True, description=GATE_DESCRIPTIONS[gate])
    def _check(
        context: dg.AssetCheckExecutionContext,
        candidate_model: dict,
        registry: RegistryResource,
        settings: dg.ResourceParam[Settings],
    ) -> dg.AssetCheckResult:
        bundle = load_candidate_bundle(registry, candidate_model)
        passed, meta = run_gate(gate, candidate_model["report"], bundle, settings.thresholds)
        if not passed:
            context.log.error(f"promotion gate {gate} failed: {meta.get('reason')}")
        return dg.AssetCheckResult(passed=passed, severity=dg.AssetCheckSeverity.ERROR, metadata=meta_dict(meta))

    return _check


promotion_gate_checks: list[dg.AssetChecksDefinition] = [_gate_check(g) for g in GATE_NAMES]

training_checks: list[dg.AssetChecksDefinition] = list(promotion_gate_checks)
