"""The raw-bar archive: one Parquet file per (date, instrument) partition.

Layout ``<root>/<YYYY-MM-DD>/<INSTRUMENT>.parquet`` (the latest published version) on the local
disk or under an S3 prefix. A fetch lands first in ``<date>/.incoming/<INSTRUMENT>/<batch>.parquet``;
it becomes the latest only after it passed its audit and the warehouse commit succeeded
(:meth:`promote`), or moves to ``.quarantine/`` when it failed. The latest it replaces is kept
under ``.versions/``. It is what a data rollback restores from, so keys are validated strictly
(no path tricks).
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


_VERSION_RE = re.compile(r"^\d{8}T\d{12}Z$")


def is_version_stamp(text: str) -> bool:
    """Whether ``text`` names an archive version (as listed by ``versions``)."""
    return bool(_VERSION_RE.fullmatch(text))


def new_version_stamp() -> str:
    """A sortable UTC stamp naming a superseded archive file (microseconds keep them unique)."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def incoming_key(date: str, instrument: str, stamp: str, folder: str = ".incoming") -> str:
    """Where a fetch lands before its audit (``.incoming``), or stays when it failed (``.quarantine``)."""
    if not re.fullmatch(r"[0-9A-Za-z_-]{1,64}", stamp):
        raise ValueError(f"invalid batch stamp {stamp!r}")
    return f"{validate_date(date)}/{folder}/{validate_instrument(instrument)}/{stamp}.parquet"


def version_key(date: str, instrument: str, version: str) -> str:
    if not _VERSION_RE.fullmatch(version):
        raise ValueError(f"invalid archive version {version!r}: expected a stamp like 20240301T120000000000Z")
    return f"{validate_date(date)}/.versions/{validate_instrument(instrument)}/{version}.parquet"


class ArchiveStore(Protocol):
    uri: str

    def write(self, date: str, instrument: str, df: pd.DataFrame) -> str: ...

    def read(self, date: str, instrument: str, version: str | None = None) -> pd.DataFrame: ...

    def exists(self, date: str, instrument: str) -> bool: ...

    def versions(self, date: str, instrument: str) -> list[str]: ...

    def location(self, date: str, instrument: str) -> str: ...

    def stage(self, date: str, instrument: str, df: pd.DataFrame, stamp: str) -> bytes: ...

    def promote(self, date: str, instrument: str, stamp: str, data: bytes) -> str: ...

    def quarantine(self, date: str, instrument: str, stamp: str) -> str: ...


class _VersionedArchive:
    """Writes never destroy data: a partition whose new bytes differ from the archived ones has
    its old file kept under ``<date>/.versions/<instrument>/<stamp>.parquet`` first, so a data
    rollback can return to what was there before a bad re-fetch."""

    uri: str

    # storage primitives of the backend
    def _get(self, key: str) -> bytes | None: ...

    def _put(self, key: str, data: bytes) -> None: ...

    def _list(self, prefix: str) -> list[str]: ...

    def _where(self, key: str) -> str: ...

    def _move(self, src: str, dst: str) -> None: ...

    def location(self, date: str, instrument: str) -> str:
        return self._where(archive_key(date, instrument))

    def write(self, date: str, instrument: str, df: pd.DataFrame) -> str:
        key = archive_key(date, instrument)
        data = frame_to_parquet_bytes(df)
        current = self._get(key)
        if current == data:
            return self._where(key)
        if current is not None:
            self._put(version_key(date, instrument, new_version_stamp()), current)
        self._put(key, data)
        return self._where(key)

    def stage(self, date: str, instrument: str, df: pd.DataFrame, stamp: str) -> bytes:
        """Keep a fetch as it came, under ``<date>/.incoming/<instrument>/<stamp>.parquet``:
        nothing reads it until it passes the audit and :meth:`promote` makes it the latest."""
        data = frame_to_parquet_bytes(df)
        self._put(incoming_key(date, instrument, stamp), data)
        return data

    def promote(self, date: str, instrument: str, stamp: str, data: bytes) -> str:
        """Make a staged fetch (``data`` = its bytes) the latest file; the latest it replaces is
        kept under ``.versions`` (unless the bytes are the same, then the fetch adds nothing)."""
        key = archive_key(date, instrument)
        staged = incoming_key(date, instrument, stamp)
        current = self._get(key)
        if current is not None and current != data:
            self._put(version_key(date, instrument, new_version_stamp()), current)
        self._move(staged, key)
        return self._where(key)

    def quarantine(self, date: str, instrument: str, stamp: str) -> str:
        """Keep a staged fetch that failed its audit under ``.quarantine`` (latest unchanged)."""
        dst = incoming_key(date, instrument, stamp, folder=".quarantine")
        self._move(incoming_key(date, instrument, stamp), dst)
        return self._where(dst)

    def quarantined(self, date: str, instrument: str) -> list[str]:
        """Stamps of the quarantined fetches of a partition, oldest first."""
        prefix = f"{validate_date(date)}/.quarantine/{validate_instrument(instrument)}/"
        return sorted(k[len(prefix) : -len(".parquet")] for k in self._list(prefix) if k.endswith(".parquet"))

    def read(self, date: str, instrument: str, version: str | None = None) -> pd.DataFrame:
        """The archived partition; ``version`` = a stamp from :meth:`versions` or ``"previous"``."""
        if version in (None, "latest"):
            key = archive_key(date, instrument)
        else:
            if version == "previous":
                found = self.versions(date, instrument)
                if not found:
                    raise ArchiveError(f"no earlier archive version for {date} {instrument}")
                version = found[-1]
            key = version_key(date, instrument, version)
        data = self._get(key)
        if data is None:
            raise ArchiveError(f"no archive for {date} {instrument} at {self._where(key)}")
        return pd.read_parquet(io.BytesIO(data))

    def exists(self, date: str, instrument: str) -> bool:
        return self._get(archive_key(date, instrument)) is not None

    def versions(self, date: str, instrument: str) -> list[str]:
        """Stamps of the superseded files of a partition, oldest first."""
        prefix = f"{validate_date(date)}/.versions/{validate_instrument(instrument)}/"
        names = [k[len(prefix) : -len(".parquet")] for k in self._list(prefix) if k.endswith(".parquet")]
        return sorted(n for n in names if _VERSION_RE.fullmatch(n))


class LocalArchive(_VersionedArchive):
    """Archive on the local disk; writes are atomic (temp file + rename)."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self.uri = str(self.root)

    def _where(self, key: str) -> str:
        return str(self.root / key)

    def _get(self, key: str) -> bytes | None:
        path = self.root / key
        return path.read_bytes() if path.exists() else None

    def _put(self, key: str, data: bytes) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".parquet")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _move(self, src: str, dst: str) -> None:
        target = self.root / dst
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.root / src, target)
        # An emptied staging folder (<date>/.incoming/<INSTRUMENT>/, then .incoming/) goes too, so
        # a date folder holds only the latest files once everything was promoted.
        for folder in ((self.root / src).parent, (self.root / src).parent.parent):
            if folder == self.root:
                break
            try:
                folder.rmdir()
            except OSError:
                break

    def _list(self, prefix: str) -> list[str]:
        folder = self.root / prefix
        if not folder.is_dir():
            return []
        return [prefix + p.name for p in folder.iterdir() if p.is_file()]


class S3Archive(_VersionedArchive):
    """Archive under ``s3://bucket/prefix``; the client comes from dagster-aws' S3Resource or boto3."""

    def __init__(self, uri: str, client):
        if not uri.startswith("s3://"):
            raise ValueError(f"not an s3 uri: {uri!r}")
        bucket, _, prefix = uri[len("s3://") :].partition("/")
        if not bucket:
            raise ValueError(f"s3 uri without a bucket: {uri!r}")
        self.uri, self.bucket, self.prefix, self.client = uri, bucket, prefix.strip("/"), client

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _where(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._full(key)}"

    def _get(self, key: str) -> bytes | None:
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._full(key))
        except self.client.exceptions.NoSuchKey:
            return None
        return obj["Body"].read()

    def _put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._full(key), Body=data)

    def _move(self, src: str, dst: str) -> None:
        # S3 has no rename: a server-side copy, then the staged object goes.
        self.client.copy_object(
            Bucket=self.bucket, Key=self._full(dst), CopySource={"Bucket": self.bucket, "Key": self._full(src)}
        )
        self.client.delete_object(Bucket=self.bucket, Key=self._full(src))

    def _list(self, prefix: str) -> list[str]:
        full = self._full(prefix)
        keys: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
            keys += [prefix + obj["Key"][len(full) :] for obj in page.get("Contents", [])]
        return keys


def open_archive(uri: str, s3_client=None) -> LocalArchive | S3Archive:
    """The archive store for ``uri``: S3 for ``s3://`` (client required), the local disk otherwise."""
    if uri.startswith("s3://"):
        if s3_client is None:
            import boto3

            s3_client = boto3.client("s3")
        return S3Archive(uri, s3_client)
    return LocalArchive(uri)
