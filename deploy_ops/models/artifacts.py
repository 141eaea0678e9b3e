"""Content-addressed storage for model artifacts: local disk or S3.

An artifact lives at ``<root>/sha256/<first two hex digits>/<sha256>.pt``. Because the name is
the checksum, writing the same bytes twice is a no-op, and two models that serialise to the
same bytes share one object. Every read re-hashes the bytes and refuses anything that does not
match what the caller recorded, so a tampered or truncated file can never be served.

No Dagster imports here: the registry, the CLI and the serving app all use this module.
"""

from __future__ import annotations

import os
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from urllib.parse import urlparse

from deploy_ops.models.bundle import ArtifactIntegrityError, sha256_bytes

ARTIFACT_SUFFIX = ".pt"


class ArtifactNotFoundError(FileNotFoundError):
    """The artifact a registry row points at does not exist in the store."""


def artifact_relpath(sha256: str) -> str:
    """The store-relative key of an artifact: ``sha256/<ab>/<sha256>.pt``."""
    _check_sha(sha256)
    return f"sha256/{sha256[:2]}/{sha256}{ARTIFACT_SUFFIX}"


def _check_sha(sha256: str) -> None:
    if not isinstance(sha256, str) or len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError(f"not a lowercase hex sha256 digest: {sha256!r}")


def _verify(data: bytes, expected_sha256: str, uri: str) -> bytes:
    actual = sha256_bytes(data)
    if actual != expected_sha256:
        raise ArtifactIntegrityError(
            f"artifact {uri} failed its checksum: expected sha256 {expected_sha256}, got {actual}"
        )
    return data


class ArtifactStore(ABC):
    """Write bytes once, read them back only if they still hash to what was recorded."""

    @abstractmethod
    def uri_for(self, sha256: str) -> str:
        """The URI at which bytes with this checksum are (or would be) stored."""

    @abstractmethod
    def put(self, data: bytes) -> tuple[str, str]:
        """Store ``data`` and return ``(uri, sha256)``; storing the same bytes again is a no-op."""

    @abstractmethod
    def get(self, uri: str, expected_sha256: str) -> bytes:
        """Return the bytes at ``uri`` after checking they hash to ``expected_sha256``.

        Raises ``ArtifactNotFoundError`` if nothing is there and ``ArtifactIntegrityError`` if
        the bytes differ from the recorded checksum.
        """


class LocalArtifactStore(ArtifactStore):
    """Artifacts under a directory on the local disk (the embedded profile)."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).expanduser().resolve()

    def __repr__(self) -> str:
        return f"LocalArtifactStore({str(self.root)!r})"

    def uri_for(self, sha256: str) -> str:
        """Absolute path of the artifact with this checksum."""
        return str(self.root / artifact_relpath(sha256))

    def put(self, data: bytes) -> tuple[str, str]:
        """Write ``data`` atomically (temp file + rename) unless an intact copy already exists."""
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"artifact data must be bytes, got {type(data).__name__}")
        data = bytes(data)
        sha = sha256_bytes(data)
        path = Path(self.uri_for(sha))
        if path.exists():
            # An existing file with the right hash is the same artifact; a damaged one is
            # replaced so the store heals instead of pinning a corrupt object forever.
            with open(path, "rb") as fh:
                if sha256_bytes(fh.read()) == sha:
                    return str(path), sha
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{sha}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            # rename is atomic on POSIX: readers see the whole file or none of it
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return str(path), sha

    def get(self, uri: str, expected_sha256: str) -> bytes:
        """Read the file at ``uri`` (a path or ``file://`` URI) and verify its checksum."""
        _check_sha(expected_sha256)
        return _verify(self._read(uri), expected_sha256, uri)

    def _read(self, uri: str) -> bytes:
        path = _local_path(uri)
        try:
            with open(path, "rb") as fh:
                return fh.read()
        except FileNotFoundError as exc:
            raise ArtifactNotFoundError(f"artifact not found at {path}") from exc


class S3ArtifactStore(ArtifactStore):
    """Artifacts in an S3 bucket under a key prefix (the production profile)."""

    def __init__(
        self, bucket: str, prefix: str = "", region: str = "us-east-1", client=None, endpoint_url: str | None = None
    ):
        if not bucket:
            raise ValueError("S3 artifact store needs a bucket name")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.region = region
        # None: boto3 picks the endpoint (AWS's, or its own AWS_ENDPOINT_URL variables).
        self.endpoint_url = endpoint_url or None
        self._client = client

    def __repr__(self) -> str:
        return f"S3ArtifactStore(bucket={self.bucket!r}, prefix={self.prefix!r}, region={self.region!r})"

    @property
    def client(self):
        """The boto3 S3 client, created on first use so constructing a store never hits AWS."""
        if self._client is None:
            import boto3

            self._client = boto3.client("s3", region_name=self.region, endpoint_url=self.endpoint_url)
        return self._client

    def key_for(self, sha256: str) -> str:
        """The object key of the artifact with this checksum."""
        rel = artifact_relpath(sha256)
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def uri_for(self, sha256: str) -> str:
        """``s3://bucket/key`` of the artifact with this checksum."""
        return f"s3://{self.bucket}/{self.key_for(sha256)}"

    def put(self, data: bytes) -> tuple[str, str]:
        """Upload ``data`` under its checksum; S3 PUTs are atomic, so re-uploading is harmless."""
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"artifact data must be bytes, got {type(data).__name__}")
        data = bytes(data)
        sha = sha256_bytes(data)
        self.client.put_object(
            Bucket=self.bucket,
            Key=self.key_for(sha),
            Body=data,
            ContentType="application/octet-stream",
            Metadata={"sha256": sha},
        )
        return self.uri_for(sha), sha

    def get(self, uri: str, expected_sha256: str) -> bytes:
        """Download ``s3://bucket/key`` and verify its checksum."""
        _check_sha(expected_sha256)
        return _verify(self._read(uri), expected_sha256, uri)

    def _read(self, uri: str) -> bytes:
        bucket, key = parse_s3_uri(uri)
        from botocore.exceptions import ClientError

        try:
            response = self.client.get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NoSuchBucket", "NotFound"):
                raise ArtifactNotFoundError(f"artifact not found at {uri} ({code})") from exc
            raise
        return response["Body"].read()


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/key`` into ``(bucket, key)``."""
    parsed = urlparse(uri)
    key = parsed.path.lstrip("/")
    if parsed.scheme != "s3" or not parsed.netloc or not key:
        raise ValueError(f"not an s3://bucket/key URI: {uri!r}")
    return parsed.netloc, key


def _local_path(uri: str) -> Path:
    if uri.startswith("file://"):
        return Path(urlparse(uri).path)
    if "://" in uri:
        raise ValueError(f"local artifact store cannot read {uri!r}")
    return Path(uri)


def open_artifact_store(uri: str, aws_region: str = "us-east-1", endpoint_url: str | None = None) -> ArtifactStore:
    """The store for ``uri``: ``s3://bucket[/prefix]`` goes to S3, anything else is a local directory
    (a plain path or ``file://`` URI)."""
    if not uri:
        raise ValueError("artifact store URI is empty")
    if uri.startswith("s3://"):
        parsed = urlparse(uri)
        if not parsed.netloc:
            raise ValueError(f"S3 artifact URI has no bucket: {uri!r}")
        return S3ArtifactStore(parsed.netloc, parsed.path.strip("/"), aws_region, endpoint_url=endpoint_url)
    return LocalArtifactStore(_local_path(uri))
