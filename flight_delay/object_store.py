"""Where the aws profile keeps its files: one bucket, ``FLIGHT_DELAY_S3_BUCKET``, under one key
prefix, ``FLIGHT_DELAY_S3_PREFIX`` (``flight-delay`` when unset), laid out as the local data folder
is (``lake/``, ``offline/``, ``artifacts/``, ``feast/``, ``models/``). Two variables rather than one
URL, so that Dagster resources take each as a ``dg.EnvVar``.

Endpoint and credentials come only from the standard AWS environment, read by every AWS SDK:
``AWS_ENDPOINT_URL_S3`` (or ``AWS_ENDPOINT_URL``) for an S3-compatible server such as SeaweedFS or
MinIO, unset on AWS; ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` or the pod's IAM role (IRSA
on EKS); ``AWS_REGION``. boto3 reads them itself; pyarrow is given the endpoint here, as it does
not read ``AWS_ENDPOINT_URL_S3``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlparse

BUCKET_ENV: Final = "FLIGHT_DELAY_S3_BUCKET"
PREFIX_ENV: Final = "FLIGHT_DELAY_S3_PREFIX"
DEFAULT_PREFIX: Final = "flight-delay"
ENDPOINT_ENVS: Final = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


def endpoint_variable() -> str | None:
    """The variable that names an S3-compatible endpoint, None for AWS itself."""
    return next((name for name in ENDPOINT_ENVS if os.environ.get(name)), None)


def s3_endpoint() -> str | None:
    """The S3-compatible endpoint the environment names, None for AWS itself."""
    name = endpoint_variable()
    return os.environ[name] if name else None


@dataclass(frozen=True)
class S3Location:
    """A bucket and a key prefix (no leading or trailing slash; may be empty)."""

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, url: str) -> S3Location:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"{url!r}: expected s3://bucket[/prefix]")
        return cls(parsed.netloc, parsed.path.strip("/"))

    @classmethod
    def from_env(cls) -> S3Location:
        bucket = os.environ.get(BUCKET_ENV)
        if not bucket:
            raise ValueError(f"{BUCKET_ENV} is not set: the aws and k8s profiles keep their files in an S3 bucket")
        prefix = os.environ.get(PREFIX_ENV)
        return cls(bucket, (DEFAULT_PREFIX if prefix is None else prefix).strip("/"))

    def key(self, *parts: str) -> str:
        """The key of ``parts`` under the prefix."""
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p and p.strip("/"))

    def url(self, *parts: str) -> str:
        """``s3://bucket/prefix/parts...``."""
        return f"s3://{self.bucket}/{self.key(*parts)}".rstrip("/")

    def child(self, *parts: str) -> S3Location:
        return S3Location(self.bucket, self.key(*parts))

    def __str__(self) -> str:
        return self.url()


def s3_client() -> Any:
    """A boto3 S3 client from the environment (endpoint, keys, region as the AWS SDKs read them)."""
    import boto3

    return boto3.client("s3", endpoint_url=s3_endpoint())


def arrow_filesystem() -> Any:
    """A pyarrow S3 filesystem from the environment; paths on it are ``bucket/key``."""
    from pyarrow import fs

    endpoint = s3_endpoint()
    options: dict[str, Any] = {}
    if endpoint:
        options["endpoint_override"] = endpoint
        options["scheme"] = urlparse(endpoint).scheme or "https"
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options["region"] = region
    return fs.S3FileSystem(**options)
