"""What a Dagster user expects on every asset page: owners, tags, a code version, and a freshness
policy where staleness matters."""

from __future__ import annotations

import dagster as dg
import pytest

from autotrader_assets.definitions import defs


def _specs() -> dict[str, dg.AssetSpec]:
    graph = defs.resolve_asset_graph()
    out = {}
    for key in graph.get_all_asset_keys():
        assets_def = graph.get(key).assets_def
        if assets_def.is_executable:
            out[key.to_user_string()] = next(s for s in assets_def.specs if s.key == key)
    return out


def test_every_asset_has_owners_tags_and_a_code_version():
    specs = _specs()
    assert len(specs) == 11, sorted(specs)
    missing = {
        name: [
            what
            for what, ok in (
                ("owners", spec.owners),
                ("code_version", spec.code_version),
                ("domain tag", spec.tags.get("domain")),
                ("tier tag", spec.tags.get("tier")),
            )
            if not ok
        ]
        for name, spec in specs.items()
    }
    assert {name: m for name, m in missing.items() if m} == {}
    assert all(o.startswith("team:") for spec in specs.values() for o in spec.owners)
    assert {spec.tags["tier"] for spec in specs.values()} == {"critical", "standard"}


@pytest.mark.parametrize(
    "name, kind",
    [
        ("market_bars", "CronFreshnessPolicy"),
        ("paper_trading", "CronFreshnessPolicy"),
        ("trading_performance", "CronFreshnessPolicy"),
        ("feature_drift", "TimeWindowFreshnessPolicy"),
        ("model_health", "TimeWindowFreshnessPolicy"),
    ],
)
def test_assets_whose_staleness_matters_have_a_freshness_policy(name, kind):
    assert type(_specs()[name].freshness_policy).__name__ == kind
