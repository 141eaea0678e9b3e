"""The raw-bar archive: one Parquet file per (date, instrument) partition.

Layout ``<root>/<YYYY-MM-DD>/<INSTRUMENT>.parquet`` on the local disk or under an S3 prefix.
The archive is written before anything downstream reads a partition, and it is what a data
rollback restores from, so keys are validated strictly (no path tricks).
"""
from __future__ import annotations

import datetime as dt
import io
import os
import re
import tempfile
from pathlib import Path
from typing import Protocol

import pandas as pd

_INSTRUMENT_RE = re.compile(r"^[A-Z0-9][A-Z0-9._-]{0,31}$")


class ArchiveError(RuntimeError):
    """An archive read or write failed, or a partition is missing from the archive."""


def validate_date(date: str) -> str:
    """Return ``date`` if it is a real ISO calendar date (YYYY-MM-DD), else raise ValueError."""
    if not isinstance(date, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", date):
        raise ValueError(f"invalid date {date!r}: expected YYYY-MM-DD")
    dt.date.fromisoformat(date)
    return date


def validate_instrument(instrument: str) -> str:
    """Return ``instrument`` if it is a plain symbol (upper-case letters, digits, . _ -)."""
    if not isinstance(instrument, str) or not _INSTRUMENT_RE.fullmatch(instrument) or ".." in instrument:
        raise ValueError(f"invalid instrument {instrument!r}: expected a symbol like BTCUSDT")
    return instrument


def archive_key(date: str, instrument: str) -> str:
    return f"{validate_date(date)}/{validate_instrument(instrument)}.parquet"


def frame_to_parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False, compression="zstd")
    return buf.getvalue()


class ArchiveStore(Protocol):
    uri: str

    def write(self, date: str, instrument: str, df: pd.DataFrame) -> str: ...

    def read(self, date: str, instrument: str) -> pd.DataFrame: ...

    def exists(self, date: str, instrument: str) -> bool: ...

    def location(self, date: str, instrument: str) -> str: ...


class LocalArchive:
    """Archive on the local disk; writes are atomic (temp file + rename)."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self.uri = str(self.root)

    def location(self, date: str, instrument: str) -> str:
        return str(self.root / archive_key(date, instrument))

    def write(self, date: str, instrument: str, df: pd.DataFrame) -> str:
        path = Path(self.location(date, instrument))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".parquet")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(frame_to_parquet_bytes(df))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return str(path)

    def read(self, date: str, instrument: str) -> pd.DataFrame:
        path = Path(self.location(date, instrument))
        if not path.exists():
            raise ArchiveError(f"no archive for {date} {instrument} at {path}")
        return pd.read_parquet(path)

    def exists(self, date: str, instrument: str) -> bool:
        return Path(self.location(date, instrument)).exists()


class S3Archive:
    """Archive under ``s3://bucket/prefix``; the client comes from dagster-aws' S3Resource or boto3."""

    def __init__(self, uri: str, client):
        if not uri.startswith("s3://"):
            raise ValueError(f"not an s3 uri: {uri!r}")
        bucket, _, prefix = uri[len("s3://"):].partition("/")
        if not bucket:
            raise ValueError(f"s3 uri without a bucket: {uri!r}")
        self.uri, self.bucket, self.prefix, self.client = uri, bucket, prefix.strip("/"), client

    def _key(self, date: str, instrument: str) -> str:
        key = archive_key(date, instrument)
        return f"{self.prefix}/{key}" if self.prefix else key

    def location(self, date: str, instrument: str) -> str:
        return f"s3://{self.bucket}/{self._key(date, instrument)}"

    def write(self, date: str, instrument: str, df: pd.DataFrame) -> str:
        self.client.put_object(Bucket=self.bucket, Key=self._key(date, instrument), Body=frame_to_parquet_bytes(df))
        return self.location(date, instrument)

    def read(self, date: str, instrument: str) -> pd.DataFrame:
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._key(date, instrument))
        except self.client.exceptions.NoSuchKey as exc:
            raise ArchiveError(f"no archive for {date} {instrument} at {self.location(date, instrument)}") from exc
        return pd.read_parquet(io.BytesIO(obj["Body"].read()))

    def exists(self, date: str, instrument: str) -> bool:
        resp = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self._key(date, instrument), MaxKeys=1)
        return resp.get("KeyCount", 0) > 0


def open_archive(uri: str, s3_client=None) -> LocalArchive | S3Archive:
    """The archive store for ``uri``: S3 for ``s3://`` (client required), the local disk otherwise."""
    if uri.startswith("s3://"):
        if s3_client is None:
            import boto3

            s3_client = boto3.client("s3")
        return S3Archive(uri, s3_client)
    return LocalArchive(uri)
