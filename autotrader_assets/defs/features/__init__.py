"""Features: the dbt-duckdb project as Dagster assets (dbt tests appear as asset checks)."""

from autotrader_assets.defs.features.assets import dbt_feature_models

feature_assets = [dbt_feature_models]

__all__ = ["dbt_feature_models", "feature_assets"]
