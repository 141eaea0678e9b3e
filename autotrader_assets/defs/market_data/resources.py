"""Resources of the market-data domain: where bars come from and where they are archived."""

from __future__ import annotations

import dagster as dg

from autotrader_assets.defs.market_data.archive import open_archive
from autotrader_assets.settings import FILE_SOURCE_HELP, Settings


class MarketSourceResource(dg.ConfigurableResource):
    """Which source ``market_bars`` fetches from: the embedded replay (default) or a broker/file.

    Built from settings by :meth:`from_settings` (``AUTOTRADER_MARKET_SOURCE`` and, for files,
    the ``AUTOTRADER_FILE_*`` variables). Broker credentials are never part of this config:
    connectors read them through ``settings.secret`` when they call the broker.

    The ``file_*`` fields describe where the file source finds each instrument's bars: one
    ``file_path`` (one instrument, or every instrument with ``file_symbol_column``),
    ``file_paths`` (instrument -> files) or ``file_directory`` + ``file_pattern``.
    """

    name: str = "replay"
    seed: int = 7
    replay_mode: str = "realistic"
    file_path: str | None = None
    file_paths: dict[str, list[str]] | None = None
    file_directory: str | None = None
    file_pattern: str | None = None
    file_symbol_column: str | None = None
    file_columns: dict[str, str] | None = None
    #: The configured instruments: lets the file source refuse an ambiguous layout up front.
    instruments: list[str] | None = None
    base_url: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> MarketSourceResource:
        files = settings.file_source
        return cls(
            name=settings.market_source,
            seed=settings.replay_seed,
            file_path=files.path,
            file_paths={i: list(p) for i, p in files.paths} or None,
            file_directory=files.directory,
            file_pattern=files.pattern,
            file_symbol_column=files.symbol_column,
            file_columns=dict(files.columns) or None,
            instruments=list(settings.instruments),
        )

    def get_source(self):
        from autotrader_assets.defs.market_data.connectors import get_source

        if self.name == "replay":
            return get_source("replay", seed=self.seed, mode=self.replay_mode)
        if self.name == "file":
            return self._file_source(get_source)

        kwargs = {}
        if self.base_url:
            kwargs["base_url"] = self.base_url
        return get_source(self.name, **kwargs)

    def _file_source(self, get_source):
        given = [
            n
            for n, v in (
                ("file_path", self.file_path),
                ("file_paths", self.file_paths),
                ("file_directory", self.file_directory),
            )
            if v
        ]
        if len(given) != 1:
            problem = "no file is configured" if not given else f"{' and '.join(given)} are set together"
            raise ValueError(
                f"the file market source needs exactly one of file_path, file_paths, file_directory: "
                f"{problem}; " + FILE_SOURCE_HELP
            )
        kwargs = {
            "symbol_column": self.file_symbol_column,
            "columns": self.file_columns,
            "instruments": self.instruments,
        }
        if self.file_directory:
            return get_source("file", directory=self.file_directory, pattern=self.file_pattern, **kwargs)
        return get_source("file", path=self.file_paths or self.file_path, **kwargs)


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
