"""Resources of the market-data domain: where bars come from and where they are archived."""
from __future__ import annotations

import dagster as dg

from autotrader_assets.defs.market_data.archive import open_archive


class MarketSourceResource(dg.ConfigurableResource):
    """Which source ``market_bars`` fetches from: the embedded replay (default) or a broker/file.

    Broker credentials are never part of this config: connectors read them from environment
    variables (``dg.EnvVar`` semantics) when they are built.
    """

    name: str = "replay"
    seed: int = 7
    replay_mode: str = "realistic"
    file_path: str | None = None
    base_url: str | None = None

    def get_source(self):
        from autotrader_assets.defs.market_data.connectors import get_source

        if self.name == "replay":
            return get_source("replay", seed=self.seed, mode=self.replay_mode)

        kwargs = {}
        if self.file_path:
            kwargs["path"] = self.file_path
        if self.base_url:
            kwargs["base_url"] = self.base_url
        return get_source(self.name, **kwargs)


class ArchiveResource(dg.ConfigurableResource):
    """The per-partition raw archive: a local folder, or ``s3://bucket/prefix`` in production."""

    uri: str
    region_name: str = "us-east-1"
    endpoint_url: str | None = None

    def store(self):
        if self.uri.startswith("s3://"):
            from dagster_aws.s3 import S3Resource

            client = S3Resource(region_name=self.region_name, endpoint_url=self.endpoint_url).get_client()
            return open_archive(self.uri, s3_client=client)
        return open_archive(self.uri)
