"""market_bars archives to S3 through dagster-aws in the production profile (moto, no network)."""

from __future__ import annotations

import io

import boto3
import dagster as dg
import pandas as pd
from moto import mock_aws

from autotrader_assets.defs.market_data import market_bars
from autotrader_assets.defs.market_data.partitions import partition_key
from autotrader_assets.defs.market_data.replay import ReplaySource
from autotrader_assets.defs.market_data.resources import ArchiveResource
from tests.support.pipeline import temp_resources


def test_market_bars_archives_partitions_to_s3(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="autotrader-archive")
        resources = temp_resources(tmp_path, archive=ArchiveResource(uri="s3://autotrader-archive/bars"))
        result = dg.materialize(
            [market_bars],
            resources=resources,
            partition_key=str(partition_key("2024-06-03", "ETHUSDT")),
            instance=dg.DagsterInstance.ephemeral(),
        )
        assert result.success
        body = s3.get_object(Bucket="autotrader-archive", Key="bars/2024-06-03/ETHUSDT.parquet")["Body"].read()
        archived = pd.read_parquet(io.BytesIO(body))
        pd.testing.assert_frame_equal(archived, ReplaySource(seed=11).day_bars("ETHUSDT", "2024-06-03"))
        mat = result.asset_materializations_for_node("market_bars")[0]
        assert mat.metadata["archive"].value == "s3://autotrader-archive/bars"
